// ContainerRuntime seam: the container engine of one node (containerd in
// production, a fake in unit tests). No gRPC or containerd types here.
//
// Ownership: the caller owns the runtime; implementations hold their own
// connections. Thread-safety: every method may be called from several threads
// at once; operations on the same container name are not ordered by the
// runtime (the agent serialises them).
// Errors: kNotFound for an unknown container or image, kConflict for a name in
// use or a wrong task state, kRetry when the engine is unreachable, kFailed for
// anything else. Delete is idempotent.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "api/types.h"
#include "kmosix/status.h"

namespace kmosix {

// What the runtime runs: the runtime's part of an api::WorkloadSpec (built
// from one by ContainerSpecFor) plus where its output goes and its labels.
struct ContainerSpec {
  std::string name;               // container id, unique per node
  std::string image;              // image reference, already in the node's store
  std::vector<std::string> args;  // whole command line; empty = image default
  std::map<std::string, std::string> env;
  int64_t memory_mib = 0;  // 0 = no limit
  double cpus = 0;         // 0 = no limit
  std::string log_path;    // stdout and stderr are appended to this file
  std::map<std::string, std::string> labels;
};

// The runtime's part of a workload spec (log_path and labels empty).
ContainerSpec ContainerSpecFor(const api::WorkloadSpec& spec);
// The inverse, for the agent's face of a spec: name, image, args, env,
// memory and cpus (the rest of api::WorkloadSpec is the cluster's).
api::WorkloadSpec WorkloadSpecOf(const ContainerSpec& c);

enum class TaskState { kNone, kCreated, kRunning, kPaused, kStopped, kUnknown };
std::string_view TaskStateName(TaskState s);

struct TaskInfo {
  TaskState state = TaskState::kNone;  // kNone: container exists, no task
  uint32_t pid = 0;
  uint32_t exit_status = 0;  // valid when kStopped
};

// Options for capturing a task with CRIU.
struct CheckpointRequest {
  std::string image_dir;  // CRIU images are written here (must exist, empty)
  std::string work_dir;   // CRIU logs and scratch (must exist)
  // true: the task is left in place after the dump (paused if it was paused);
  // false: CRIU kills it after a successful dump.
  bool leave_running = true;
};

struct RestoreRequest {
  std::string image_dir;  // CRIU images written by a checkpoint
  std::string work_dir;   // CRIU logs and scratch
  // true: every restored process is left stopped (SIGSTOP, CRIU's
  // leave-stopped) before it executes one instruction after the dump; the
  // task still reports kRunning. Continue runs it; Delete removes it without
  // it ever running.
  bool leave_stopped = false;
  // true: memory is restored lazily (CRIU's lazy-pages): the restore hands
  // each process's userfaultfd to a `criu lazy-pages` daemon, which must be
  // listening on "lazy-pages.socket" in work_dir before the call (see
  // kmosix/lazy_pages.h); pages the daemon has not yet filled fault there.
  bool lazy_pages = false;
};

class ContainerRuntime {
 public:
  virtual ~ContainerRuntime() = default;

  // Node name this runtime serves (for messages and labels).
  virtual std::string NodeName() const = 0;

  virtual Status ImageExists(const std::string& image) = 0;
  // Names of the images this node holds, sorted (what the scheduler may place
  // here without a pull). kRetry when the runtime is unreachable.
  virtual StatusOr<std::vector<std::string>> ListImages() = 0;

  // Creates the container and its writable snapshot, without a task.
  virtual Status CreateContainer(const ContainerSpec& spec) = 0;
  // Creates and starts the task of a created container.
  virtual Status StartTask(const std::string& name) = 0;
  virtual StatusOr<TaskInfo> Inspect(const std::string& name) = 0;
  virtual StatusOr<std::vector<std::string>> ListContainers() = 0;
  virtual Status Pause(const std::string& name) = 0;
  virtual Status Resume(const std::string& name) = 0;
  // Kills the task (if any), deletes it, the container and its snapshot.
  // Idempotent: deleting what is not there is ok.
  virtual Status Delete(const std::string& name) = 0;

  // Directory holding the container's writable layer (overlay upperdir), on
  // this machine's filesystem. The container must exist.
  virtual StatusOr<std::string> WritableLayerDir(const std::string& name) = 0;

  // Dumps the running or paused task with CRIU into req.image_dir.
  virtual Status CheckpointTask(const std::string& name, const CheckpointRequest& req) = 0;
  // Creates the task of a created container from CRIU images; on success the
  // task is running. On failure no task is left behind.
  virtual Status RestoreTask(const std::string& name, const RestoreRequest& req) = 0;
  // Sends SIGCONT to every process of the task: runs a task restored with
  // leave_stopped (a no-op for processes already running). kConflict when
  // the container has no task, kNotFound when there is no container.
  virtual Status Continue(const std::string& name) = 0;
};

}  // namespace kmosix
