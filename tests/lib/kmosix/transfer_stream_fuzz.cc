// Fuzz target: arbitrary bytes fed to the transfer stream decoder, landing in
// a temporary directory. The decoder must never crash, and never write
// outside the landing (checked after every input: a sentinel directory next
// to the landing must stay empty).
//
// Built two ways:
//  - with clang and -DKMX_FUZZ=ON: a libFuzzer binary (transfer_stream_fuzz);
//  - always: a regression runner (transfer_stream_fuzz_regress, ctest label
//    "fuzz") with the main() below, which runs every file of the given
//    corpus directories; with --generate DIR it writes the synthetic seeds,
//    with --from-dump it encodes a real CRIU dump into seeds
//    (make_transfer_stream_seeds.sh, next to this file, makes the dump).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kmosix/transfer_stream.h"

namespace fs = std::filesystem;

namespace {

const std::string& Base() {
  static const std::string base = [] {
    char tmpl[] = "/tmp/kmx-fuzz-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) std::abort();
    fs::create_directories(std::string(tmpl) + "/outside");
    return std::string(tmpl);
  }();
  return base;
}

void DecodeOne(const uint8_t* data, size_t size) {
  const std::string& base = Base();
  std::string land = base + "/land";
  std::error_code ec;
  fs::remove_all(land, ec);
  fs::create_directories(land);
  kmosix::Landing landing{{{"rootfs", land + "/rootfs", false},
                           {"criu", land + "/criu", false},
                           {"criu-pages", land + "/criu", false},
                           {"log", land + "/log.txt", true}}};
  kmosix::DecoderOptions options;
  options.max_bytes = 16 << 20;
  options.max_files = 1000;
  options.max_entries = 10000;
  // Streams without file digests are what a TLS carrier sends; accept them
  // for most inputs (so that their bodies and metadata are reached) and
  // refuse them for the rest.
  options.accept_undigested = size % 8 != 0;
  kmosix::StreamDecoder decoder(landing, options);
  // Feed in chunks whose size depends on the input, to exercise resumption.
  size_t chunk = 1 + size % 61;
  const char* p = reinterpret_cast<const char*>(data);
  for (size_t off = 0; off < size; off += chunk) {
    if (!decoder.Feed(p + off, std::min(chunk, size - off)).ok()) break;
  }
  (void)decoder.Finish();
  if (!fs::is_empty(base + "/outside")) {
    std::fprintf(stderr, "decoder wrote outside its landing\n");
    std::abort();
  }
  std::vector<std::string> top;
  for (const auto& e : fs::directory_iterator(base)) top.push_back(e.path().filename());
  if (top.size() != 2) {
    std::fprintf(stderr, "decoder wrote next to its landing\n");
    std::abort();
  }
  fs::remove_all(land, ec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  DecodeOne(data, size);
  return 0;
}

#ifdef KMX_FUZZ_REGRESSION_MAIN

namespace {

std::string Encode(const std::vector<kmosix::Section>& sections,
                   kmosix::EncoderOptions options = {}) {
  auto enc = kmosix::StreamEncoder::Create(sections, options);
  if (!enc.ok()) {
    std::fprintf(stderr, "encode: %s\n", enc.status().ToString().c_str());
    std::exit(1);
  }
  std::string out;
  char buf[65536];
  for (;;) {
    auto n = (*enc)->Read(buf, sizeof(buf));
    if (!n.ok()) {
      std::fprintf(stderr, "encode: %s\n", n.status().ToString().c_str());
      std::exit(1);
    }
    if (*n == 0) break;
    out.append(buf, *n);
  }
  return out;
}

void Put(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
}

void ReplaceAll(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
}

int Generate(const std::string& out) {
  fs::create_directories(out);
  std::string src = Base() + "/seed-src";
  fs::create_directories(src + "/rootfs/etc/AAAA");
  fs::create_directories(src + "/rootfs/opq");
  fs::create_directories(src + "/criu");
  std::ofstream(src + "/rootfs/etc/hosts") << "127.0.0.1 localhost\n";
  std::ofstream(src + "/rootfs/etc/AAAA/BBBB") << "payload";
  std::ofstream(src + "/rootfs/empty");
  std::ofstream(src + "/criu/pages-1.img") << std::string(3000, 'p');
  std::ofstream(src + "/log.txt") << "log line\n";
  fs::create_symlink("/etc/passwd", src + "/rootfs/LLLL");
  ::mknod((src + "/rootfs/etc/wh").c_str(), S_IFCHR, makedev(0, 0));
  ::mkfifo((src + "/rootfs/fifo").c_str(), 0600);
  ::setxattr((src + "/rootfs/opq").c_str(), "trusted.overlay.opaque", "y", 1, 0);
  std::vector<kmosix::Section> all = {{"rootfs", src + "/rootfs", false},
                                      {"criu", src + "/criu", false},
                                      {"log", src + "/log.txt", true}};
  std::string valid = Encode(all);
  Put(out, "valid-all", valid);
  Put(out, "valid-log-only", Encode({{"log", src + "/log.txt", true}}));
  Put(out, "valid-empty", Encode({}));
  Put(out, "truncated-half", valid.substr(0, valid.size() / 2));
  Put(out, "header-only", valid.substr(0, kmosix::kTransferHeaderSize));
  std::string flipped = valid;
  size_t body = flipped.find("payload");
  flipped[body + 3] ^= 1;
  Put(out, "flipped-body", flipped);
  std::string s = valid;
  ReplaceAll(s, "AAAA", "../A");
  Put(out, "dotdot", s);
  s = valid;
  ReplaceAll(s, "criu", "ciru");
  Put(out, "unknown-section", s);
  s = valid;
  ReplaceAll(s, "etc/AAAA", "LLLL/AAA");  // a directory below the symlink
  Put(out, "through-symlink", s);
  s = valid;
  s[8] = 2;  // version
  Put(out, "bad-version", s);

  // Open totals: CRIU's page images through pipes (pages-1 then the empty
  // pages-2; pages-3 never opened), the rest of the images after the dump.
  std::string pipes = src + "/pipes";
  fs::create_directories(pipes);
  for (const char* name : {"pages-1.img", "pages-2.img", "pages-3.img"}) {
    ::mkfifo((pipes + "/" + name).c_str(), 0600);
  }
  std::atomic<bool> done{false};
  const std::string pages(3000, 'Q');  // one atomic write, so one chunk
  std::thread writer([&] {
    int fd = ::open((pipes + "/pages-1.img").c_str(), O_WRONLY | O_CLOEXEC);
    if (::write(fd, pages.data(), pages.size()) != static_cast<ssize_t>(pages.size())) std::abort();
    ::close(fd);
    ::close(::open((pipes + "/pages-2.img").c_str(), O_WRONLY | O_CLOEXEC));
    done = true;
  });
  kmosix::Section pipes_section;
  pipes_section.name = "criu-pages";
  pipes_section.path = pipes;
  pipes_section.pipes = true;
  pipes_section.producer_done = [&] { return done.load(); };
  kmosix::Section rest;
  rest.name = "criu";
  rest.path = src + "/criu-rest";
  rest.before_read = [&] {
    writer.join();
    fs::create_directories(rest.path);
    std::ofstream(rest.path + "/core-1.img") << "core";
    return kmosix::Status::Ok();
  };
  std::string open = Encode({pipes_section, rest, {"log", src + "/log.txt", true}});
  Put(out, "open-valid", open);
  size_t chunk = open.find(pages);
  Put(out, "open-truncated-chunk", open.substr(0, chunk + pages.size() / 2));
  s = open;
  s[chunk + 10] ^= 1;
  Put(out, "open-flipped-chunk", s);
  s = open;
  s[chunk - 1] = 0x7f;  // chunk length far beyond kMaxChunk
  Put(out, "open-huge-chunk", s);
  s = open;
  s[16] = 1;  // declared files in an open-totals header
  Put(out, "open-declared", s);
  s = open;
  s[12] = 0;  // chunked files in a stream with declared totals
  Put(out, "open-chunked-in-sized", s);
  fs::remove_all(src);
  std::printf("wrote seeds to %s\n", out.c_str());
  return 0;
}

// Seeds from a real dump: IMAGES is a CRIU images directory, ROOTFS a real
// overlayfs upperdir (whiteouts, opaque directories), LOG a file. Every image
// is cut to its first kSeedFileMax bytes (the decoder's logic is in headers
// and records, not page bytes; this keeps seeds within the fuzzer's
// -max_len) and *.log files (CRIU's own) are left out. Writes, digested and
// undigested (as over TLS):
//   dump-sized*: declared totals, sections criu, rootfs, log (a migration
//                that dumps before it sends);
//   dump-open*:  open totals, the page images through FIFOs as chunked files
//                of "criu-pages", then the other images as "criu", rootfs,
//                log (a migration that streams the dump).
constexpr size_t kSeedFileMax = 4096;  // at most PIPE_BUF: one chunk per pipe

int FromDump(const std::string& images, const std::string& rootfs, const std::string& log,
             const std::string& out) {
  fs::create_directories(out);
  std::string stage = Base() + "/dump-stage";
  fs::create_directories(stage + "/criu");
  fs::create_directories(stage + "/criu-rest");
  fs::create_directories(stage + "/pipes");
  std::vector<std::pair<std::string, std::string>> pages;  // name, bytes
  std::vector<fs::path> names;
  for (const auto& e : fs::directory_iterator(images)) {
    if (e.is_regular_file() && e.path().extension() != ".log") names.push_back(e.path());
  }
  std::sort(names.begin(), names.end());
  for (const fs::path& f : names) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes(kSeedFileMax, '\0');
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    bytes.resize(static_cast<size_t>(in.gcount()));
    std::string name = f.filename();
    std::ofstream(stage + "/criu/" + name, std::ios::binary) << bytes;
    if (name.rfind("pages-", 0) == 0) {
      pages.emplace_back(name, bytes);
    } else {
      std::ofstream(stage + "/criu-rest/" + name, std::ios::binary) << bytes;
    }
  }
  if (pages.empty()) {
    std::fprintf(stderr, "%s holds no pages-*.img: not a CRIU dump\n", images.c_str());
    return 1;
  }
  std::vector<kmosix::Section> sized = {
      {"criu", stage + "/criu", false}, {"rootfs", rootfs, false}, {"log", log, true}};
  kmosix::EncoderOptions undigested;
  undigested.content_digests = false;
  std::vector<std::pair<std::string, std::string>> seeds = {
      {"dump-sized", Encode(sized)}, {"dump-sized-undigested", Encode(sized, undigested)}};

  for (bool digests : {true, false}) {
    // As StopAndCopyEngine streams a dump: one FIFO per page image, opened
    // by the writer in turn (a last one never opened), the other images
    // once it is done.
    std::string pipes = stage + "/pipes";
    fs::remove_all(pipes);
    fs::create_directories(pipes);
    for (size_t i = 0; i <= pages.size(); ++i) {
      std::string name = i < pages.size() ? pages[i].first : "pages-unused.img";
      if (::mkfifo((pipes + "/" + name).c_str(), 0600) != 0) std::abort();
    }
    std::atomic<bool> done{false};
    std::thread writer([&] {
      for (const auto& [name, bytes] : pages) {
        int fd = ::open((pipes + "/" + name).c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0) std::abort();
        if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
          std::abort();
        }
        ::close(fd);
      }
      done = true;
    });
    kmosix::Section pipes_section{"criu-pages", pipes, false};
    pipes_section.pipes = true;
    pipes_section.producer_done = [&] { return done.load(); };
    kmosix::Section rest{"criu", stage + "/criu-rest", false};
    rest.before_read = [&] {
      writer.join();
      return kmosix::Status::Ok();
    };
    kmosix::EncoderOptions options;
    options.content_digests = digests;
    seeds.emplace_back(
        digests ? "dump-open" : "dump-open-undigested",
        Encode({pipes_section, rest, {"rootfs", rootfs, false}, {"log", log, true}}, options));
  }
  for (const auto& [name, bytes] : seeds) {
    Put(out, name, bytes);
    std::printf("%s: %zu bytes%s\n", name.c_str(), bytes.size(),
                bytes.size() % 8 == 0 ? " (size % 8 == 0: decoded as refusing undigested)" : "");
  }
  fs::remove_all(stage);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--generate") return Generate(argv[2]);
  if (argc == 6 && std::string(argv[1]) == "--from-dump") {
    return FromDump(argv[2], argv[3], argv[4], argv[5]);
  }
  size_t runs = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<fs::path> files;
    if (fs::is_directory(argv[i])) {
      for (const auto& e : fs::directory_iterator(argv[i])) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.push_back(argv[i]);
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), {});
      DecodeOne(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++runs;
    }
  }
  fs::remove_all(Base());
  std::printf("ran %zu inputs\n", runs);
  return runs > 0 ? 0 : 1;
}

#endif  // KMX_FUZZ_REGRESSION_MAIN
