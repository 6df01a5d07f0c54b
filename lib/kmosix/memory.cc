#include "kmosix/memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <utility>

namespace kmosix {
namespace {

namespace fs = std::filesystem;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// The value of a "Key:   123 kB" line, in bytes.
std::optional<uint64_t> KbField(std::string_view line, std::string_view key) {
  if (line.substr(0, key.size()) != key || line.size() <= key.size() || line[key.size()] != ':') {
    return std::nullopt;
  }
  std::string_view rest = line.substr(key.size() + 1);
  size_t start = rest.find_first_not_of(" \t");
  if (start == std::string_view::npos) return std::nullopt;
  rest = rest.substr(start);
  uint64_t kb = 0;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), kb);
  if (ec != std::errc() || std::string_view(end, rest.data() + rest.size() - end) != " kB") {
    return std::nullopt;
  }
  return kb * 1024;
}

uint64_t ResidentBytes(const fs::path& status) {
  std::ifstream in(status);
  uint64_t sum = 0;
  for (std::string line; std::getline(in, line);) {
    for (std::string_view key : {"RssAnon", "RssShmem"}) {
      if (auto v = KbField(line, key)) sum += *v;
    }
  }
  return sum;
}

std::string PidNamespace(const fs::path& proc_pid) {
  std::error_code ec;
  return fs::read_symlink(proc_pid / "ns" / "pid", ec).string();
}

}  // namespace

uint64_t ContainerResidentBytes(uint32_t pid, const std::string& proc) {
  if (pid == 0) return 0;
  const fs::path root(proc);
  const std::string ns = PidNamespace(root / std::to_string(pid));
  if (ns.empty()) return 0;
  if (ns == PidNamespace(root / "self")) {
    return ResidentBytes(root / std::to_string(pid) / "status");
  }
  uint64_t sum = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (PidNamespace(e.path()) == ns) sum += ResidentBytes(e.path() / "status");
  }
  return sum;
}

std::optional<uint64_t> MemAvailableBytes(const std::string& proc) {
  std::ifstream in(fs::path(proc) / "meminfo");
  for (std::string line; std::getline(in, line);) {
    if (auto v = KbField(line, "MemAvailable")) return v;
  }
  return std::nullopt;
}

PrefaultedMemory PrefaultedMemory::Take(uint64_t bytes, const std::function<bool()>& go_on) {
  PrefaultedMemory m;
  if (bytes == 0) return m;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  bytes = (bytes + page - 1) / page * page;
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (addr == MAP_FAILED) return m;
  m.addr_ = addr;
  m.bytes_ = bytes;
  (void)::madvise(addr, bytes, MADV_HUGEPAGE);  // fewer faults; best effort
  constexpr uint64_t kStep = uint64_t{64} << 20;
  auto* base = static_cast<char*>(addr);
  while (m.faulted_ < bytes && (m.faulted_ == 0 || !go_on || go_on())) {
    const uint64_t n = std::min(kStep, bytes - m.faulted_);
    char* p = base + m.faulted_;
    if (::madvise(p, n, MADV_POPULATE_WRITE) != 0) {
      // Older kernels: touch every page.
      for (uint64_t off = 0; off < n; off += page) static_cast<volatile char*>(p)[off] = 0;
    }
    m.faulted_ += n;
  }
  return m;
}

PrefaultedMemory::PrefaultedMemory(PrefaultedMemory&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      faulted_(std::exchange(other.faulted_, 0)) {}

PrefaultedMemory& PrefaultedMemory::operator=(PrefaultedMemory&& other) noexcept {
  if (this != &other) {
    Release();
    addr_ = std::exchange(other.addr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    faulted_ = std::exchange(other.faulted_, 0);
  }
  return *this;
}

void PrefaultedMemory::Release() {
  if (addr_ != nullptr) ::munmap(addr_, bytes_);
  addr_ = nullptr;
  bytes_ = 0;
  faulted_ = 0;
}

}  // namespace kmosix
