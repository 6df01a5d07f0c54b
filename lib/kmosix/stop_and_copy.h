// Stop-and-copy CheckpointEngine over a ContainerRuntime (containerd/runc +
// CRIU): pause the task, dump it with CRIU while it stays paused, ship the
// CRIU images, the writable layer and the log; restore from the landed images
// on the target (for a live migration stopped, resumed at the commit).
//
// The dump streams: before it starts, the page images CRIU will write
// (pages-1.img .. pages-N.img, one per dumped process in dump order) are made
// named pipes, so the transfer reads process memory while CRIU dumps it and
// the source never stores it (section "criu-pages"); the other, small images
// follow once the dump has ended (section "criu", behind before_read). A
// process tree larger than `pipes` dumps its extra page images as files,
// sent with the small ones. If the reader goes away, CRIU's next write fails
// with EPIPE and the dump ends cleanly; Thaw first unblocks and waits for a
// dump still in flight, so a paused task is never resumed under CRIU.
//
// On the target, Prepare faults in as much memory as the source says the
// container holds, twice (capped, see Options): one share it frees on return,
// for the landing images, one it frees right before the restore. So the
// allocations inside the downtime find pages the guest already has from its
// host (see kmosix/memory.h).
//
// Ownership: borrows the runtime and clock; owns one thread per dump in
// flight (joined by Thaw, Release or the destructor) and the memory held for
// each prepared restore (freed by Restore, Discard or the destructor). Thread-safety: calls for
// different containers may run concurrently. Errors: the runtime's, annotated
// with the step.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/memory.h"
#include "kmosix/runtime.h"

namespace kmosix {

class StopAndCopyEngine final : public CheckpointEngine {
 public:
  struct Options {
    // Page images made pipes per dump; 0 dumps into files and sends them
    // after the dump (the engine's first, slower form).
    int pipes = 8;
    // Recover: how long to wait for CRIU processes still writing under the
    // scratch root after their pipes were unblocked.
    std::chrono::milliseconds recover_wait{10000};
    // Most memory Prepare faults in for one restore, and again for its
    // landing; 0: none. Prepare leaves 256 MiB of MemAvailable alone.
    uint64_t prefault_max_bytes = uint64_t{16} << 30;
    // Prepare stops faulting in after this long (the source waits for its
    // answer; about 2.4 s per GiB of memory the host took back, here).
    std::chrono::milliseconds prefault_budget{10000};
    // Where MemoryBytes and Prepare read processes and meminfo (tests).
    std::string proc_root = "/proc";
  };
  StopAndCopyEngine(ContainerRuntime& runtime, Clock& clock)
      : StopAndCopyEngine(runtime, clock, Options{}) {}
  StopAndCopyEngine(ContainerRuntime& runtime, Clock& clock, Options options)
      : runtime_(runtime), clock_(clock), options_(std::move(options)) {}
  ~StopAndCopyEngine() override;
  StopAndCopyEngine(const StopAndCopyEngine&) = delete;
  StopAndCopyEngine& operator=(const StopAndCopyEngine&) = delete;

  StatusOr<Capture> Freeze(const ContainerSpec& spec, const std::string& scratch_dir) override;
  Status Thaw(const std::string& name) override;
  Status Release(const std::string& name) override;
  Status Recover(const std::string& scratch_root) override;
  uint64_t MemoryBytes(const std::string& name) override;
  // Twice the writable layer, log and memory (the larger of memory_bytes and
  // the spec's limit) now, plus 256 MiB, 16384 files, 32768 entries; nothing
  // declared when the memory is unknown or the layer cannot be walked.
  StreamLimits StreamBound(const ContainerSpec& spec, uint64_t memory_bytes) override;
  StatusOr<Landing> Prepare(const ContainerSpec& spec, const std::string& scratch_dir,
                            uint64_t memory_bytes) override;
  Status Restore(const ContainerSpec& spec, const Landing& landing) override;
  // The runtime's restore with leave_stopped: CRIU stops every process
  // (SIGSTOP) before it runs an instruction; Resume is the runtime's
  // Continue (SIGCONT to all). The workload can see this as a job-control
  // stop and continue (a SIGCONT handler, a parent's waitpid WCONTINUED),
  // and a process that was stopped when dumped runs after Resume.
  Status RestoreStopped(const ContainerSpec& spec, const Landing& landing) override;
  Status Resume(const std::string& name) override;
  Status Discard(const std::string& name) override;

 private:
  Status RestoreTask(const ContainerSpec& spec, const Landing& landing, bool stopped);
  struct Dump;
  // Removes the dump in flight for `name` (if any) and waits for it to end,
  // unblocking its pipes first when `disarm`.
  void EndDump(const std::string& name, bool disarm);
  void ReleasePrefaulted(const std::string& name);

  ContainerRuntime& runtime_;
  Clock& clock_;
  Options options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Dump>> dumps_;
  std::map<std::string, PrefaultedMemory> prefaulted_;  // by container name
};

}  // namespace kmosix
