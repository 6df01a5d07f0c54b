// Memory of the node and of a container's processes, read from /proc, and
// memory faulted in ahead of time.
//
// Why prefaulting: on a virtual machine whose host backs guest memory lazily
// or takes freed memory back (free page reporting, ballooning), the first
// touch of a page is a host fault; restoring 1 GiB then took 3 s here
// against 0.8 s with pages the guest had touched just before. A migration
// target therefore faults in the memory the landing and the restore will
// need while the source still runs, and frees it right before each needs
// it: their allocations then reuse those pages (the kernel hands out
// recently freed pages first and reports free pages to the host only after
// a delay).
//
// Thread-safety: the functions are pure reads of `proc`; PrefaultedMemory is
// a move-only owner, not shared. Errors: readers return nullopt/0 when the
// files are missing or malformed (these figures are hints).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace kmosix {

// Resident anonymous and shared-memory bytes (RssAnon + RssShmem) of every
// process in the PID namespace of `pid`, roughly what a CRIU dump of that
// container writes as pages. Only `pid` itself when it shares the caller's
// PID namespace. 0 when unknown.
uint64_t ContainerResidentBytes(uint32_t pid, const std::string& proc = "/proc");

// MemAvailable of proc/meminfo in bytes; nullopt when unreadable.
std::optional<uint64_t> MemAvailableBytes(const std::string& proc = "/proc");

// Anonymous memory mapped and faulted in by Take, given back to the kernel by
// Release or the destructor.
class PrefaultedMemory {
 public:
  PrefaultedMemory() = default;
  // Faults in `bytes` (rounded up to pages), in steps of 64 MiB, and stops
  // early once `go_on` (when given) returns false between two steps. Holds
  // nothing when bytes is 0 or the mapping fails.
  static PrefaultedMemory Take(uint64_t bytes, const std::function<bool()>& go_on = {});
  ~PrefaultedMemory() { Release(); }
  PrefaultedMemory(PrefaultedMemory&& other) noexcept;
  PrefaultedMemory& operator=(PrefaultedMemory&& other) noexcept;
  PrefaultedMemory(const PrefaultedMemory&) = delete;
  PrefaultedMemory& operator=(const PrefaultedMemory&) = delete;

  uint64_t bytes() const { return faulted_; }  // faulted in so far
  void Release();

 private:
  void* addr_ = nullptr;
  uint64_t bytes_ = 0;  // mapped
  uint64_t faulted_ = 0;
};

}  // namespace kmosix
