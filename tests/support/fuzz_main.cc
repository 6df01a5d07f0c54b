// main() for the regression runners of fuzz targets (kmx_fuzz in
// tests/CMakeLists.txt): runs the target's LLVMFuzzerTestOneInput on every
// regular file of the given corpus directories (or on the given files), in
// name order, and prints how many inputs ran.
//
// Usage: <name>_regress DIR_OR_FILE...
// Exits 1 if no argument is given, if an argument is missing, or if a
// directory holds no regular file: an empty corpus must not pass. A failing
// input crashes the runner (the targets abort on a broken contract), after
// the input's path has been printed to stderr.
//
// Each input is copied into a heap buffer of exactly its size, so that a
// sanitizer build catches reads past its end as libFuzzer would.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

bool ReadFile(const fs::path& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

// Appends the inputs named by `arg` to `files`; false (after printing why) if
// there are none.
bool Collect(const char* arg, std::vector<fs::path>& files) {
  std::error_code ec;
  fs::file_status st = fs::status(arg, ec);
  if (ec || !fs::exists(st)) {
    std::fprintf(stderr, "fuzz_main: %s: no such file or directory\n", arg);
    return false;
  }
  if (fs::is_regular_file(st)) {
    files.emplace_back(arg);
    return true;
  }
  if (!fs::is_directory(st)) {
    std::fprintf(stderr, "fuzz_main: %s: not a file or directory\n", arg);
    return false;
  }
  std::vector<fs::path> found;
  for (fs::directory_iterator it(arg, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) found.push_back(it->path());
  }
  if (ec) {
    std::fprintf(stderr, "fuzz_main: %s: %s\n", arg, ec.message().c_str());
    return false;
  }
  if (found.empty()) {
    std::fprintf(stderr, "fuzz_main: %s: corpus directory is empty\n", arg);
    return false;
  }
  std::sort(found.begin(), found.end());
  files.insert(files.end(), found.begin(), found.end());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 1;
  }
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    if (!Collect(argv[i], files)) return 1;
  }
  size_t bytes = 0;
  for (const fs::path& f : files) {
    std::string content;
    if (!ReadFile(f, content)) {
      std::fprintf(stderr, "fuzz_main: %s: cannot read\n", f.c_str());
      return 1;
    }
    std::fprintf(stderr, "running %s (%zu bytes)\n", f.c_str(), content.size());
    auto buf = std::make_unique<uint8_t[]>(content.size());
    std::memcpy(buf.get(), content.data(), content.size());
    LLVMFuzzerTestOneInput(buf.get(), content.size());
    bytes += content.size();
  }
  std::printf("ran %zu inputs (%zu bytes) from %d path(s)\n", files.size(), bytes, argc - 1);
  return 0;
}
