// The agent's CRIU readiness check: does this node's runc find a CRIU it can
// checkpoint and restore with? runc (run by containerd's shim on the node,
// never by the agent) runs the criu its --criu option names (the agent's
// --criu-path, passed in the runc options) or the first "criu" on the shim's
// PATH. The agent asks that same criu:
//   criu --version   "Version: X.Y[.Z]" must say X >= 4 (min_major);
//   criu check       must exit 0 (the kernel has what CRIU needs).
// Where it runs (CriuCheckMode):
//   kLocal    here, in the agent's own mount namespace (an agent on the host);
//   kNsenter  `nsenter -t PID -m -- criu ...`: in the mount namespace of the
//             containerd serving --containerd-socket (PID from the socket's
//             SO_PEERCRED), which is where its shims run runc and runc runs
//             CRIU: the node's, when the agent is a pod with hostPID (the
//             agent's image has no criu). PID 1 when containerd cannot be
//             asked. (PID 1 is the wrong choice when containerd runs in a
//             mount namespace of its own, and some hosts forbid opening PID
//             1's namespaces even to root.)
//   kAuto     kNsenter when that process's mount namespace is readable and
//             differs from /proc/self/ns/mnt (a container with hostPID),
//             else kLocal;
//   kOff      no check: the node is always ready.
// A failed check does not stop the agent: it logs one line, and the cluster
// link publishes the reason in the node record (api::NodeLoad::
// not_ready_reason), so the controller places nothing on the node and
// migrates nothing to or from it; workloads already here keep running and the
// REST API keeps serving. While the check fails it is run again every
// `recheck` (a CRIU installed later makes the node ready without a restart).
//
// Seams: CommandCriuProbe runs the commands through a CommandRunner
// (containerd/workload_network.h; tests fake it); CriuReadiness takes any
// CriuProbe and the Clock.
// Thread-safety: CommandCriuProbe is as thread-safe as its runner;
// CriuReadiness: every method may be called from any thread.
// Errors: a probe never fails as a call: what went wrong is the result's
// `reason` (a missing binary, an old version, a failed check, with the
// command's output).
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "containerd/workload_network.h"
#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::agent {

enum class CriuCheckMode { kAuto, kOff, kNsenter, kLocal };
// "auto", "off", "nsenter", "local"; kInvalid otherwise.
StatusOr<CriuCheckMode> ParseCriuCheckMode(std::string_view s);
std::string CriuCheckModeName(CriuCheckMode m);

struct CriuVersion {
  int major = 0;
  int minor = 0;
  int sublevel = 0;
  std::string text;  // as printed, e.g. "4.1.1"
};
// The version in `criu --version` output ("Version: 4.1.1\nGitID: ...").
// kInvalid when there is no "Version: N.N[.N]" line.
StatusOr<CriuVersion> ParseCriuVersion(std::string_view output);

struct CriuProbeResult {
  bool ok = false;
  std::string reason;   // why not (empty when ok), one line
  std::string version;  // as criu printed it ("" if unknown)
  std::string where;    // "local" or "nsenter" (how it was asked)
};

// The seam: what the readiness tracker asks.
class CriuProbe {
 public:
  virtual ~CriuProbe() = default;
  virtual CriuProbeResult Probe() = 0;
};

struct CriuProbeOptions {
  CriuCheckMode mode = CriuCheckMode::kAuto;  // kOff is handled by the caller
  std::string criu_path;                      // as passed to runc; "" = "criu" on PATH
  int min_major = 4;
  // containerd's socket: its server's PID is the namespace to enter.
  std::string containerd_socket;
  // kAuto's decision: compared as symlink targets (mnt:[inode]). Empty
  // host_mnt_ns: /proc/<containerd's PID>/ns/mnt.
  std::string host_mnt_ns;
  std::string self_mnt_ns = "/proc/self/ns/mnt";
};

// The PID of the process listening on the unix socket `path` (SO_PEERCRED of
// a connection to it); 0 when it cannot be connected.
int SocketServerPid(const std::string& path);

class CommandCriuProbe final : public CriuProbe {
 public:
  CommandCriuProbe(CriuProbeOptions options, CommandRunner& runner);
  CriuProbeResult Probe() override;
  // kLocal or kNsenter: what kAuto resolves to here (the others as given).
  CriuCheckMode EffectiveMode() const;

 private:
  std::vector<std::string> Command(std::vector<std::string> args) const;
  // containerd's PID (asked once per call), or 1.
  int RuncPid() const;
  CriuProbeOptions options_;
  CommandRunner& runner_;
};

class CriuReadiness {
 public:
  CriuReadiness(CriuProbe& probe, Clock& clock, Clock::Duration recheck = std::chrono::seconds(60));
  // Probes now and logs the result (info when ready, one error line when not).
  void Check();
  // Probes again when the last probe failed and `recheck` has passed.
  void Tick();
  // Why this node cannot checkpoint or restore; nullopt when it can (or
  // before the first Check).
  std::optional<std::string> NotReadyReason() const;

 private:
  CriuProbe& probe_;
  Clock& clock_;
  const Clock::Duration recheck_;
  mutable std::mutex mu_;
  std::optional<std::string> reason_;  // guarded by mu_
  Clock::TimePoint last_{};            // guarded by mu_
  bool checked_ = false;               // guarded by mu_
};

}  // namespace kmosix::agent
