// CheckpointEngine seam: how a container is frozen, captured and brought back.
// The first engine is stop-and-copy through ContainerRuntime (containerd/runc
// + CRIU); post-copy (lazy pages) can come later behind the same interface.
//
// Ownership: engines borrow the ContainerRuntime they are given.
// Thread-safety: calls for different containers may run concurrently.
// Errors: see status.h; kFailed means the step failed and the caller must roll
// back (source: Thaw; target: Discard).
// Never twice: a live migration's target restores stopped (RestoreStopped)
// and resumes only at the commit, so a copy the migration aborts never ran.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kmosix/runtime.h"
#include "kmosix/status.h"

namespace kmosix {

// One named part of a captured container, as laid out on disk. A transfer
// sends every section; the receiver maps each name to a directory or file.
//
// Source side, a capture may still be in the making while it is sent (the
// dump streams straight into the transfer):
// - `pipes`: `path` is a directory of named pipes (FIFOs) that a producer
//   (CRIU) writes while the transfer runs. Each pipe a writer opened is sent
//   as a regular file whose size is not known in advance, in the order the
//   producer fills them; pipes never opened once `producer_done()` is true are
//   not sent. The receiver lands them as regular files.
// - `before_read`: called once, right before the section is walked; an error
//   ends the transfer with that error (used to wait for the producer to finish
//   the files a pipes section does not carry).
struct Section {
  Section() = default;
  Section(std::string name, std::string path, bool is_file = false)
      : name(std::move(name)), path(std::move(path)), is_file(is_file) {}

  std::string name;  // "criu", "criu-pages", "rootfs", "log"
  std::string path;  // directory (or single file when is_file)
  bool is_file = false;
  bool pipes = false;
  std::function<bool()> producer_done;  // required when pipes
  std::function<Status()> before_read;
};

struct Capture {
  std::vector<Section> sections;
  double freeze_seconds = 0;      // pause
  double checkpoint_seconds = 0;  // CRIU dump, when it ended before Freeze returned
  // Set when the dump streams during the transfer (see Section):
  // - streamed_dump_error: never blocks; the dump's own failure when it
  //   failed while the transfer was still reading it (the transfer then
  //   failed with it too), ok otherwise;
  // - streamed_checkpoint_seconds: the dump's duration, once a transfer has
  //   read all of the capture.
  std::function<Status()> streamed_dump_error;
  std::function<double()> streamed_checkpoint_seconds;
};

// The most a transfer stream may carry: regular files, their payload bytes,
// entries of any kind. 0 in a field: not bounded by this value.
struct StreamLimits {
  uint64_t files = 0;
  uint64_t bytes = 0;
  uint64_t entries = 0;
  bool operator==(const StreamLimits&) const = default;
};

// Where a target wants each section written. Sections it does not name are
// rejected by the receiver.
struct Landing {
  std::vector<Section> sections;
};

class CheckpointEngine {
 public:
  virtual ~CheckpointEngine() = default;

  // Source side. Freezes the running container `spec.name` and captures its
  // state under scratch_dir. On success the container no longer executes on
  // this node but is kept, frozen, until Release or Thaw; the capture may
  // still be in the making (see Section) and is complete once a transfer has
  // read all of it. On failure it is running again (the engine thaws it
  // before returning).
  virtual StatusOr<Capture> Freeze(const ContainerSpec& spec, const std::string& scratch_dir) = 0;
  // Source side, rollback: the frozen container runs again, state intact.
  virtual Status Thaw(const std::string& name) = 0;
  // Source side, after the target committed: deletes the frozen container.
  virtual Status Release(const std::string& name) = 0;
  // Source side, once at start, before any Thaw: ends what a previous run of
  // this process left in flight under scratch_root (a dump streaming into
  // pipes nobody reads any more). Default: nothing to do.
  virtual Status Recover(const std::string& scratch_root) {
    (void)scratch_root;
    return Status::Ok();
  }

  // Source side, before Freeze: the memory the container's processes hold,
  // a hint of how much the capture carries (0: unknown). Default: 0.
  virtual uint64_t MemoryBytes(const std::string& name) {
    (void)name;
    return 0;
  }

  // Source side, before Freeze: upper bounds of what a transfer of `spec`'s
  // capture will carry (files, payload bytes, entries), declared in the
  // migration's offer; the target cuts a stream that goes beyond them (the
  // migration rolls back). memory_bytes is MemoryBytes(spec.name). Default:
  // nothing declared (the target holds the stream to its ceiling only).
  virtual StreamLimits StreamBound(const ContainerSpec& spec, uint64_t memory_bytes) {
    (void)spec;
    (void)memory_bytes;
    return {};
  }

  // Target side. Creates the container for `spec` (no task yet) and says
  // where each incoming section must be written (scratch_dir holds what is
  // not written in place). memory_bytes is the source's MemoryBytes (0:
  // unknown): what the restore will allocate, which the engine may get ready
  // while the source still runs.
  virtual StatusOr<Landing> Prepare(const ContainerSpec& spec, const std::string& scratch_dir,
                                    uint64_t memory_bytes) = 0;
  // Target side: restores the task from the landed sections; on success it
  // is running. On failure nothing runs (the container is still there for
  // Discard). For a copy that no other node may be running (a checkpoint
  // of a lost node); a live migration uses RestoreStopped.
  virtual Status Restore(const ContainerSpec& spec, const Landing& landing) = 0;
  // Target side, live migration: restores the task like Restore, but on
  // success none of its processes has executed an instruction since the
  // dump, and none does until Resume (so a copy that is then discarded had
  // no side effects). On failure nothing runs.
  virtual Status RestoreStopped(const ContainerSpec& spec, const Landing& landing) = 0;
  // Target side, at the commit: the task RestoreStopped left runs.
  // Idempotent (ok for a task already running).
  virtual Status Resume(const std::string& name) = 0;
  // Target side, rollback: removes everything Prepare/Restore made. Idempotent.
  virtual Status Discard(const std::string& name) = 0;
};

}  // namespace kmosix
