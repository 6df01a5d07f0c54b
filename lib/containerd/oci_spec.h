// OCI runtime spec and OCI image config helpers for the containerd adapter.
//
// Pure functions: no I/O, no shared state, safe from any thread. Errors are
// values (kInvalid for malformed input); nothing throws.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/runtime.h"
#include "kmosix/status.h"

namespace kmosix {

// The parts of an OCI image config ("config" object of the config blob) the
// runtime spec needs.
struct OciImageConfig {
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env;  // "KEY=value"
  std::string working_dir;
  std::string user;                   // as in the image; only numeric "uid[:gid]" is honoured
  std::vector<std::string> diff_ids;  // rootfs.diff_ids, bottom layer first
};

// Parses an OCI (or Docker v2) image config blob.
StatusOr<OciImageConfig> ParseOciImageConfig(std::string_view blob);

// ChainID of a layer stack (OCI image spec): chain[0] = diff[0],
// chain[i] = "sha256:" + hex(sha256(chain[i-1] + " " + diff[i])).
StatusOr<std::string> ComputeChainId(const std::vector<std::string>& diff_ids);

// Node-specific inputs of the runtime spec.
struct OciSpecOptions {
  std::string cgroup_parent;  // e.g. "/kmosix-node1"; cgroupsPath = parent + "/" + name
  // Network namespace the container joins (e.g. "/run/netns/kmx_node1_web",
  // made by WorkloadNetwork); empty: it shares the node's network namespace.
  std::string network_namespace_path;
  std::map<std::string, std::string> annotations;
};

// Builds the OCI runtime spec (config.json) for `spec` on top of `image`:
// containerd-like Linux defaults, namespaces pid/ipc/uts/mount plus network
// when options.network_namespace_path is set (joined by path; otherwise the
// container shares the node's netns), containerd's default capabilities
// without CAP_NET_RAW (in every set), the runtime's default seccomp profile
// (seccomp_default.h), RLIMIT_NOFILE 1024, masked and read-only /proc paths,
// memory and CPU limits.
// args = spec.args if non-empty, else entrypoint + cmd (kInvalid if both are
// empty); env = image env overridden/extended by spec.env.
StatusOr<nlohmann::json> BuildOciSpec(const ContainerSpec& spec, const OciImageConfig& image,
                                      const OciSpecOptions& options);

}  // namespace kmosix
