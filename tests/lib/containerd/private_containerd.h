// A private containerd daemon for integration tests: own root, state, opt,
// gRPC and ttrpc sockets under a temp dir, CRI disabled, empty debug/metrics
// addresses, plus its own runc root and cgroup parent. Stop() (also run by the
// destructor) deletes its containers, stops the daemon, kills its shims and
// leftover runc containers, unmounts everything under the temp dir and removes
// it and the cgroup parent.
//
// Thread-safety: none; one test owns one instance.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "containerd/containerd_runtime.h"

namespace kmosix::testing {

// Why the integration tests cannot run here, or "" when they can.
std::string MissingCapability();

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

  // Builds (once per process) and imports the busybox test image; error text.
  std::string ImportTestImage(const std::string& image_name);

  ContainerdConfig Config() const;
  std::unique_ptr<ContainerdRuntime> NewRuntime() const;

  const std::string& dir() const { return dir_; }
  const std::string& socket() const { return socket_; }
  std::string DaemonLogTail() const;

 private:
  std::string tag_;
  std::string dir_;
  std::string socket_;
  std::string runc_root_;
  std::string cgroup_parent_;
  pid_t pid_ = -1;
};

// Runs a shell command; returns its exit status (or -1) and captures output.
int RunCommand(const std::string& cmd, std::string* output = nullptr);

}  // namespace kmosix::testing
