// A private containerd daemon for integration tests: own root, state, opt,
// gRPC and ttrpc sockets under a temp dir, CRI disabled, empty debug/metrics
// addresses, plus its own runc root and cgroup parent. Several simulated nodes
// may share one daemon, each in its own containerd namespace with its own runc
// root and cgroup parent (Config(ns)). Stop() (also run by the destructor)
// deletes its containers in every namespace used, stops the daemon, kills its
// shims and leftover runc containers, unmounts everything under the temp dir
// and removes it and the cgroup parents.
//
// Thread-safety: none; one test owns one instance.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "containerd/containerd_runtime.h"

namespace kmosix::testing {

// Why the integration tests cannot run here, or "" when they can.
std::string MissingCapability();
// Why CRIU cannot checkpoint here (`criu check` output), or "" when it can.
std::string CriuProblem();

// The namespace of a daemon's default node.
inline constexpr char kDefaultNamespace[] = "kmosix";

class PrivateContainerd {
 public:
  // `tag` distinguishes nodes ("src", "dst"); it is part of paths and cgroups.
  explicit PrivateContainerd(std::string tag);
  ~PrivateContainerd();
  PrivateContainerd(const PrivateContainerd&) = delete;
  PrivateContainerd& operator=(const PrivateContainerd&) = delete;

  // Starts the daemon and waits until it answers. Error text on failure.
  std::string Start();
  void Stop();
  // What a node reboot leaves: SIGKILLs the daemon, its shims and every
  // container runc runs for it, empties its state dir (tmpfs /run after a
  // reboot), then starts it again over the same root: containers, images
  // and snapshots are still there, no task is. Error text on failure.
  std::string CrashAndRestart();

  // Builds (once per process) and imports the busybox test image into
  // namespace `ns`; error text.
  std::string ImportTestImage(const std::string& image_name,
                              const std::string& ns = kDefaultNamespace);
  // Imports an OCI image-layout tarball into namespace `ns` (which Stop()
  // then cleans up too); error text.
  std::string ImportImage(const std::string& tarball, const std::string& ns = kDefaultNamespace);

  // The node living in namespace `ns`: kDefaultNamespace uses the daemon's
  // runc root and cgroup parent, any other namespace its own ones.
  ContainerdConfig Config(const std::string& ns = kDefaultNamespace) const;
  std::unique_ptr<ContainerdRuntime> NewRuntime(const std::string& ns = kDefaultNamespace) const;

  const std::string& dir() const { return dir_; }
  const std::string& socket() const { return socket_; }
  std::string DaemonLogTail() const;

 private:
  std::string tag_;
  std::string dir_;
  std::string socket_;
  std::string runc_root_;
  std::string cgroup_parent_;
  std::set<std::string> namespaces_{kDefaultNamespace};
  pid_t pid_ = -1;
};

// Runs a shell command; returns its exit status (or -1) and captures output.
int RunCommand(const std::string& cmd, std::string* output = nullptr);

// Whole content of a file ("" if unreadable).
std::string ReadFile(const std::string& path);

// Polls pred every 50 ms until it holds or timeout passes; its last value.
template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

}  // namespace kmosix::testing
