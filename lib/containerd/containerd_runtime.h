// ContainerdRuntime: the ContainerRuntime seam over containerd's gRPC API
// (containerd 1.6, shim io.containerd.runc.v2, runc 1.1, CRIU >= 4).
//
// Ownership: the caller owns the ContainerdRuntime; it owns one gRPC channel
// to the daemon (pimpl, no gRPC/containerd types in this header). It does not
// own the daemon, its shims or the log files.
//
// Thread-safety: all methods may be called concurrently (gRPC stubs are
// thread-safe; no mutable state besides them). Operations on one container
// name are not ordered: the caller serialises them.
//
// Error contract (never throws; every gRPC status is mapped):
//   UNAVAILABLE, DEADLINE_EXCEEDED          -> kRetry
//   NOT_FOUND                               -> kNotFound
//   ALREADY_EXISTS, FAILED_PRECONDITION     -> kConflict
//   INVALID_ARGUMENT                        -> kInvalid
//   anything else                           -> kFailed
// plus the seam's rules: unknown container/image -> kNotFound, wrong task
// state (pause a paused task, start without a created container, ...) ->
// kConflict, Delete is idempotent.
//
// Per-node layout: each node has its own containerd (socket), runc root and
// cgroup parent. Containers are created with:
//   - OCI spec from oci_spec.h, cgroupsPath "<cgroup_parent>/<name>",
//     annotation "io.kmosix.incarnation" (unique per CreateContainer, so two
//     containers never have byte-identical specs);
//   - labels: spec.labels + "io.kmosix.node", "io.kmosix.log-path";
//   - runtime options runc Options{root = runc_root, criu_path}, repeated in
//     every task Create (task options replace the container's).
// Task stdio: stdout and stderr are both "file://<log_path>"; the runc shim
// opens that file O_APPEND once and copies both pipes into it.
//
// Checkpoint: only to a directory (CheckpointOptions.image_path): containerd
// then does not write the checkpoint into its content store. A paused task
// checkpointed with leave_running stays paused (CRIU freezes through the
// freezer cgroup and restores its original FROZEN state); Resume continues it.
// If containerd still answers "already exists" after the dump ran and
// image_dir/inventory.img exists, the checkpoint is treated as a success.
//
// Delete: kills the task, deletes it, the container, its snapshot (and its
// network), then checks that runc's state of it (<runc_root>/<namespace>/
// <name>, the shim's runc root) is gone too. containerd's clean-up of a dead
// shim (containerd killed or restarted during a restore) only logs "failed to
// remove runc container" when runc cannot: a restore cut short leaves CRIU's
// root mount ("criu-root") in that dir, whose removal fails EBUSY, and every
// later task of that name then fails "container with given ID already
// exists" (the fault soak's B3). Delete unmounts it and runs `runc delete
// --force`; kRetry if the state is still there.
//
// Restore with lazy_pages: the same file (below) says "lazy-pages" (with
// "leave-stopped" too when both are asked), nothing else: a network-lock
// setting there crashes CRIU 4.1.1 in RPC mode.
// Restore with leave_stopped: the container's spec gets the annotation
// "org.criu.config" naming a file "leave-stopped" in the restore's work_dir,
// which exists only during the restore (runc gives it to CRIU, CRIU's RPC
// configuration file overrides the RPC settings); CRIU sends SIGSTOP to every
// process while it still holds them at their sigreturn, so none runs an
// instruction before Continue (SIGCONT to all, through Kill). Measured here
// (CRIU 4.1.1, runc 1.1.5, 64 MiB demo, one run each): the restore takes as
// long (0.47 s stopped, 0.46 s running). Rejected: restoring
// the image's FROZEN freezer state ("manage-cgroups=props") hangs, because
// runc puts CRIU itself into the container's cgroups and CRIU freezes itself
// before it lets the tasks go.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "kmosix/runtime.h"
#include "kmosix/status.h"

namespace kmosix {

class WorkloadNetwork;

struct ContainerdConfig {
  // containerd's gRPC socket, absolute path (the target is "unix://" + path).
  std::string socket_path = "/run/containerd/containerd.sock";
  // containerd namespace sent as "containerd-namespace" metadata on every call.
  std::string containerd_namespace = "kmosix";
  std::string node_name;
  // runc --root for this node's containers (must differ between nodes).
  std::string runc_root;
  // Cgroup parent of this node's containers, e.g. "/kmosix-node1".
  std::string cgroup_parent;
  std::string snapshotter = "overlayfs";
  std::string runtime = "io.containerd.runc.v2";
  // Path of the criu binary passed to runc (--criu); empty: runc looks up
  // "criu" on the shim's PATH.
  std::string criu_path;
  // The runc binary Delete runs to remove a container's runc state that
  // containerd left behind (see Delete); looked up on PATH and the sbin
  // directories.
  std::string runc_binary = "runc";
  // Deadline of ordinary calls.
  std::chrono::milliseconds rpc_timeout{30000};
  // Deadline of Checkpoint and Restore calls (they copy memory).
  std::chrono::milliseconds criu_timeout{600000};
  // How long Delete waits for a killed task to exit.
  std::chrono::milliseconds kill_timeout{10000};
  // Per-workload network namespaces (not owned; must outlive the runtime).
  // Set: CreateContainer makes the workload's namespace (WorkloadNetwork::
  // Setup) and the container joins it, also when it is restored from a
  // checkpoint (runc hands the prepared namespace to CRIU as external);
  // Delete removes it. Null: containers share the node's network namespace.
  WorkloadNetwork* network = nullptr;
};

// runc could not freeze the task's cgroup in time (busy processes on a
// loaded machine; runc thawed it again and the task runs): worth another try.
bool IsTransientFreezeFailure(const Status& s);
// Pause tries this many times on a transient freeze failure.
inline constexpr int kPauseAttempts = 3;

class ContainerdRuntime : public ContainerRuntime {
 public:
  // Does not connect yet (the channel connects lazily); never fails.
  explicit ContainerdRuntime(ContainerdConfig config);
  ~ContainerdRuntime() override;
  ContainerdRuntime(const ContainerdRuntime&) = delete;
  ContainerdRuntime& operator=(const ContainerdRuntime&) = delete;

  const ContainerdConfig& config() const;

  // Ok when the daemon answers Version within rpc_timeout.
  Status Ping();

  std::string NodeName() const override;
  Status ImageExists(const std::string& image) override;
  StatusOr<std::vector<std::string>> ListImages() override;
  Status CreateContainer(const ContainerSpec& spec) override;
  Status StartTask(const std::string& name) override;
  StatusOr<TaskInfo> Inspect(const std::string& name) override;
  StatusOr<std::vector<std::string>> ListContainers() override;
  Status Pause(const std::string& name) override;
  Status Resume(const std::string& name) override;
  Status Delete(const std::string& name) override;
  StatusOr<std::string> WritableLayerDir(const std::string& name) override;
  Status CheckpointTask(const std::string& name, const CheckpointRequest& req) override;
  Status RestoreTask(const std::string& name, const RestoreRequest& req) override;
  Status Continue(const std::string& name) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kmosix
