// WorkloadNetwork: one network namespace per workload on this node, wired to
// a per-node bridge with an address, a default route and masquerade out.
//
// Layout for workload W on node N with config {bridge B, cidr C}:
//   - namespace "kmx_<N>_<W>" at <netns_dir>/kmx_<N>_<W> (as `ip netns add`
//     makes it; N and W are a-z0-9- names, so '_' keeps the name unique even
//     when several nodes share one machine's /run/netns);
//   - a veth pair: "kv<13 hex of FNV-1a(N/W)>" on the node side, enslaved to
//     B, and "eth0" inside the namespace (both fit IFNAMSIZ);
//   - inside: lo up, eth0 up with the leased address /prefix of C, default
//     route via the gateway (C's first host address, on B), and
//     net.ipv4.ping_group_range "0 2147483647" so ping works without
//     CAP_NET_RAW (as Docker does);
//   - on first use (per process): B is created if missing (bridge, gateway
//     address, up), net.ipv4.ip_forward=1, and the nftables table
//     "ip kmosix_<B>" (replaced whole) masquerades C's traffic that leaves
//     through any interface but B.
// A workload reaches its node's addresses (and so its agent's ports) only as
// any other client on the network would: through the gateway, with its own
// source address, not through the node's loopback.
//
// Addresses come from a lease file (JSON, mode 0600, written atomically) so
// they survive agent restarts; a name keeps its address until Remove. When
// the pool is full, leases whose namespace no longer exists are reclaimed.
//
// Commands (`ip`, `nft`, `sysctl`) go through a CommandRunner seam so unit
// tests fake them; SystemCommandRunner runs them (fork/exec, no shell).
//
// Thread-safety: every method may be called from several threads; the lease
// table and the one-time node setup are under a mutex, per-workload commands
// are not (the caller serialises operations on one name, like the runtime).
// Errors are values: kInvalid for a bad config or name, kConflict when the
// address pool is exhausted, kFailed when a command fails (its argv, exit
// status and output in the message). Nothing throws.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/status.h"

namespace kmosix {

struct CommandResult {
  int exit_code = 0;   // 0 = success; -1 = killed by a signal
  std::string output;  // stdout and stderr, interleaved
};

// Runs one program without a shell. Thread-safe implementations only.
class CommandRunner {
 public:
  virtual ~CommandRunner() = default;
  // argv[0] is looked up on PATH plus /usr/local/sbin:/usr/sbin:/sbin.
  // `input` is written to the program's stdin. A program that ran (whatever
  // its exit code) is ok; kFailed only when it could not be started.
  virtual StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                                      std::string_view input = {}) = 0;
};

class SystemCommandRunner : public CommandRunner {
 public:
  StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                              std::string_view input = {}) override;
};

struct WorkloadNetworkConfig {
  std::string node;                   // this node's name (part of namespace names)
  std::string bridge = "kmx0";        // per-node bridge, made on demand
  std::string cidr = "10.88.0.0/24";  // workload subnet; gateway = first host address
  std::string lease_file;             // e.g. <state-dir>/workload-network.json (required)
  std::string netns_dir = "/run/netns";
};

// A workload's network as made by Create.
struct WorkloadNetworkInfo {
  std::string netns_name;  // "kmx_<node>_<name>"
  std::string netns_path;  // <netns_dir>/<netns_name>: what the OCI spec joins
  std::string host_veth;   // node side of the veth pair
  std::string address;     // e.g. "10.88.0.2"
  std::string gateway;     // e.g. "10.88.0.1"
  int prefix_len = 0;      // e.g. 24
};

class WorkloadNetwork {
 public:
  // Validates the config (kInvalid) and loads the lease file (kFailed when
  // unreadable or corrupt; a missing file is an empty table).
  static StatusOr<std::unique_ptr<WorkloadNetwork>> Create(WorkloadNetworkConfig config,
                                                           CommandRunner& runner);

  // Makes the namespace of `name` from scratch: leftovers of an earlier
  // attempt (namespace, veth) are removed first; the address lease is kept
  // or a new one taken. On failure everything made here is undone and the
  // lease released.
  StatusOr<WorkloadNetworkInfo> Setup(const std::string& name);
  // Removes the namespace and the veth of `name` and releases its lease.
  // Idempotent: ok when nothing is there.
  Status Teardown(const std::string& name);

  // What Setup makes for `name` (names and the leased address, if any);
  // no commands run.
  WorkloadNetworkInfo Describe(const std::string& name) const;
  // Name -> address of every lease.
  std::map<std::string, std::string> Leases() const;
  const WorkloadNetworkConfig& config() const { return config_; }

 private:
  WorkloadNetwork(WorkloadNetworkConfig config, CommandRunner& runner, uint32_t network,
                  int prefix_len);
  Status LoadLeases();
  Status SaveLeasesLocked() const;
  StatusOr<std::string> LeaseLocked(const std::string& name);
  void ReleaseLease(const std::string& name);
  Status EnsureNodeSetup();
  // Runs argv; kFailed with argv, exit code and output unless it exits 0.
  Status Must(const std::vector<std::string>& argv, std::string_view input = {});
  bool NetnsExists(const std::string& netns_name) const;

  WorkloadNetworkConfig config_;
  CommandRunner& runner_;
  uint32_t network_;  // host byte order
  int prefix_len_;
  mutable std::mutex mu_;
  bool node_ready_ = false;                    // guarded by mu_
  std::map<std::string, std::string> leases_;  // guarded by mu_
};

// Parses "a.b.c.d/len" (len 8..30) into the network address (host order,
// host bits must be zero) and the prefix length.
Status ParseCidr(std::string_view cidr, uint32_t* network, int* prefix_len);
std::string FormatIpv4(uint32_t addr);
// Dotted quad -> host order; false when malformed.
bool ParseIpv4(const std::string& addr, uint32_t* out);
// "kmx_<node>_<name>" and "kv<13 hex>".
std::string WorkloadNetnsName(const std::string& node, const std::string& name);
std::string WorkloadVethName(const std::string& node, const std::string& name);

}  // namespace kmosix
