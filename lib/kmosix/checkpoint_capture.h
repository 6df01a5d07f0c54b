// Periodic checkpoints (restartPolicy FromCheckpoint, issue 13): the capture
// of a running container that leaves it running, and the copy of a stored
// capture into a restore's landing.
//
// CaptureRunning is the stop-and-copy engine's capture with a thaw instead of
// a release, and without the transfer inside the freeze: pause the task, dump
// it with CRIU into files (the task stays in place, paused), copy its
// writable layer (so the files match the memory), resume it; then, with the
// task running again, copy the log's prefix as it was at the pause (the log
// only grows). The freeze is pause + dump to local files + layer copy, never
// the transfer or the restore a stop-and-copy migration holds the source
// frozen for.
//
// CopySections moves sections through the transfer stream's encoder and
// decoder in memory (kmosix/transfer_stream.h): the same entry kinds
// (overlay whiteouts, opaque directories), the same hostile-path rules and
// checksums as a migration's stream, so a stored checkpoint is restored
// exactly as a migration's landing is.
//
// Ownership: borrows the runtime and clock; the capture's files are the
// caller's (under the scratch dir it gave; remove them when done).
// Thread-safety: free functions; calls for different containers may run
// concurrently; the caller keeps other operations on the same container
// away (the agent's per-workload lock).
// Errors: the runtime's (kNotFound: no such container; kConflict: task not
// running; kRetry: containerd unreachable), annotated with the step; kFailed
// for local I/O. On any error the task is running again (or the error says
// that resuming it failed too: "left paused").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/runtime.h"
#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix {

struct CaptureOptions {
  // A log larger than this at the pause is not carried (the restored copy
  // starts a fresh log).
  uint64_t max_log_bytes = uint64_t{64} << 20;
  // Resume attempts after the dump (a busy cgroup v1 freezer can refuse).
  int resume_attempts = 3;
};

struct RunningCapture {
  // Under the scratch dir: criu/ (CRIU images), rootfs/ (the writable layer
  // as of the pause), log (the log's prefix), work/ (CRIU's logs).
  std::vector<Section> sections;  // "criu", "rootfs" and, if carried, "log"
  int64_t taken_ms = 0;           // wall clock at the pause
  double freeze_seconds = 0;      // paused -> resumed (what the workload felt)
  double dump_seconds = 0;        // CRIU, inside the freeze
  double layer_seconds = 0;       // writable layer copy, inside the freeze
  uint64_t bytes = 0;             // payload bytes of every section
  uint64_t files = 0;             // regular files of every section
  uint64_t entries = 0;           // entries of any kind
};

// Captures the running container spec.name into scratch_dir (made; emptied
// first if it exists). See the file comment.
StatusOr<RunningCapture> CaptureRunning(ContainerRuntime& runtime, Clock& clock,
                                        const ContainerSpec& spec, const std::string& scratch_dir,
                                        const CaptureOptions& options = {});

// Copies `from` into the places `to` names (by section name; every section
// of `from` must have one) through an in-memory transfer stream. Returns
// what landed. On error what was written stays (the caller discards it).
StatusOr<TransferStats> CopySections(const std::vector<Section>& from, const Landing& to);

// Payload bytes, regular files and entries under `sections` (a walk; 0s for
// a missing path). Used to declare a stream's limits and to size scratch.
struct TreeSize {
  uint64_t bytes = 0;
  uint64_t files = 0;
  uint64_t entries = 0;
};
TreeSize SizeOf(const std::vector<Section>& sections);

// Bytes free for an unprivileged writer on the filesystem holding `path`
// (statvfs f_bavail * f_frsize); nullopt if it cannot be asked.
std::optional<uint64_t> FreeBytes(const std::string& path);

}  // namespace kmosix
