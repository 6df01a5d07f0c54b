#include "containerd/oci_spec.h"

#include <openssl/sha.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <set>

#include "containerd/seccomp_default.h"

namespace kmosix {
namespace {

using json = nlohmann::json;

// Reads an optional array of strings; false if present with a wrong type.
bool ReadStringArray(const json& obj, const char* key, std::vector<std::string>* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return true;
  if (!it->is_array()) return false;
  for (const auto& v : *it) {
    if (!v.is_string()) return false;
    out->push_back(v.get<std::string>());
  }
  return true;
}

bool ReadString(const json& obj, const char* key, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return true;
  if (!it->is_string()) return false;
  *out = it->get<std::string>();
  return true;
}

bool ParseUint32(std::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 10) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > UINT32_MAX) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  std::string hex;
  hex.reserve(2 * SHA256_DIGEST_LENGTH);
  static const char kDigits[] = "0123456789abcdef";
  for (unsigned char b : md) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 0xf]);
  }
  return hex;
}

json Mount(const char* dest, const char* type, const char* source,
           std::vector<std::string> options) {
  return json{{"destination", dest}, {"type", type}, {"source", source}, {"options", options}};
}

// containerd's default set (oci.defaultUnixCaps) minus CAP_NET_RAW: a
// workload may not open raw or packet sockets (spoofing, sniffing its
// neighbours on the bridge). ICMP echo still works through datagram ping
// sockets where the namespace's net.ipv4.ping_group_range allows them.
const std::vector<std::string>& DefaultCapabilities() {
  static const std::vector<std::string> caps = {
      "CAP_CHOWN",      "CAP_DAC_OVERRIDE", "CAP_FSETID",     "CAP_FOWNER",  "CAP_MKNOD",
      "CAP_SETGID",     "CAP_SETUID",       "CAP_SETFCAP",    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
      "CAP_SYS_CHROOT", "CAP_KILL",         "CAP_AUDIT_WRITE"};
  return caps;
}

constexpr char kDefaultPath[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

}  // namespace

StatusOr<OciImageConfig> ParseOciImageConfig(std::string_view blob) {
  json j = json::parse(blob, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidError("image config is not a JSON object");
  OciImageConfig out;
  auto cfg = j.find("config");
  if (cfg != j.end() && !cfg->is_null()) {
    if (!cfg->is_object()) return InvalidError("image config: \"config\" is not an object");
    if (!ReadStringArray(*cfg, "Entrypoint", &out.entrypoint))
      return InvalidError("image config: bad config.Entrypoint");
    if (!ReadStringArray(*cfg, "Cmd", &out.cmd))
      return InvalidError("image config: bad config.Cmd");
    if (!ReadStringArray(*cfg, "Env", &out.env))
      return InvalidError("image config: bad config.Env");
    if (!ReadString(*cfg, "WorkingDir", &out.working_dir))
      return InvalidError("image config: bad config.WorkingDir");
    if (!ReadString(*cfg, "User", &out.user)) return InvalidError("image config: bad config.User");
  }
  auto rootfs = j.find("rootfs");
  if (rootfs == j.end() || !rootfs->is_object())
    return InvalidError("image config: missing \"rootfs\" object");
  if (!ReadStringArray(*rootfs, "diff_ids", &out.diff_ids))
    return InvalidError("image config: bad rootfs.diff_ids");
  return out;
}

StatusOr<std::string> ComputeChainId(const std::vector<std::string>& diff_ids) {
  if (diff_ids.empty()) return InvalidError("image has no layers (rootfs.diff_ids is empty)");
  std::string chain;
  for (const auto& d : diff_ids) {
    if (d.rfind("sha256:", 0) != 0 || d.size() != 7 + 64)
      return InvalidError("unsupported diff_id \"" + d + "\" (want sha256:<64 hex>)");
    if (chain.empty()) {
      chain = d;
    } else {
      chain = "sha256:" + Sha256Hex(chain + " " + d);
    }
  }
  return chain;
}

StatusOr<nlohmann::json> BuildOciSpec(const ContainerSpec& spec, const OciImageConfig& image,
                                      const OciSpecOptions& options) {
  try {
    if (spec.name.empty()) return InvalidError("container name is empty");
    if (spec.memory_mib < 0) return InvalidError("memoryMiB must not be negative");
    if (spec.cpus < 0 || !std::isfinite(spec.cpus)) return InvalidError("cpus must be >= 0");

    std::vector<std::string> args = spec.args;
    if (args.empty()) {
      args = image.entrypoint;
      args.insert(args.end(), image.cmd.begin(), image.cmd.end());
    }
    if (args.empty()) return InvalidError("no command: args empty and image has no Entrypoint/Cmd");

    // Environment: image first, spec.env overrides by key, new keys appended.
    std::vector<std::string> env;
    std::set<std::string> overridden;
    bool have_path = false;
    for (const auto& kv : image.env) {
      std::string key = kv.substr(0, kv.find('='));
      auto it = spec.env.find(key);
      if (it != spec.env.end()) {
        env.push_back(key + "=" + it->second);
        overridden.insert(key);
      } else {
        env.push_back(kv);
      }
      if (key == "PATH") have_path = true;
    }
    for (const auto& [k, v] : spec.env) {
      if (k.empty() || k.find('=') != std::string::npos)
        return InvalidError("env: bad variable name \"" + k + "\"");
      if (overridden.count(k)) continue;
      env.push_back(k + "=" + v);
      if (k == "PATH") have_path = true;
    }
    if (!have_path) env.insert(env.begin(), kDefaultPath);

    uint32_t uid = 0, gid = 0;
    if (!image.user.empty()) {
      std::string_view u = image.user;
      auto colon = u.find(':');
      bool ok = ParseUint32(u.substr(0, colon), &uid);
      if (ok && colon != std::string_view::npos) ok = ParseUint32(u.substr(colon + 1), &gid);
      if (!ok)
        return InvalidError("image User \"" + image.user +
                            "\" is not numeric uid[:gid] (user names are not supported)");
    }

    const auto& caps = DefaultCapabilities();
    json process = {
        {"terminal", false},
        {"user", {{"uid", uid}, {"gid", gid}}},
        {"args", args},
        {"env", env},
        {"cwd", image.working_dir.empty() ? std::string("/") : image.working_dir},
        {"capabilities", {{"bounding", caps}, {"effective", caps}, {"permitted", caps}}},
        {"rlimits", json::array({{{"type", "RLIMIT_NOFILE"}, {"hard", 1024}, {"soft", 1024}}})},
        {"noNewPrivileges", true},
    };

    json mounts = json::array({
        Mount("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"}),
        Mount("/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"}),
        Mount("/dev/pts", "devpts", "devpts",
              {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}),
        Mount("/dev/shm", "tmpfs", "shm",
              {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}),
        Mount("/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"}),
        Mount("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"}),
        Mount("/run", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"}),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup",
              {"nosuid", "noexec", "nodev", "relatime", "ro"}),
    });

    json resources = {
        {"devices", json::array({{{"allow", false}, {"access", "rwm"}}})},
    };
    if (spec.memory_mib > 0) {
      resources["memory"] = {{"limit", spec.memory_mib * int64_t{1024} * 1024}};
    }
    if (spec.cpus > 0) {
      constexpr uint64_t kPeriod = 100000;
      int64_t quota = static_cast<int64_t>(std::llround(spec.cpus * kPeriod));
      if (quota < 1000) quota = 1000;  // kernel minimum is 1 ms
      resources["cpu"] = {{"quota", quota}, {"period", kPeriod}};
    }

    std::string parent = options.cgroup_parent;
    while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
    if (!parent.empty() && parent.front() != '/') parent.insert(parent.begin(), '/');
    std::string cgroups_path = (parent.empty() || parent == "/" ? "" : parent) + "/" + spec.name;

    json namespaces =
        json::array({{{"type", "pid"}}, {{"type", "ipc"}}, {{"type", "uts"}}, {{"type", "mount"}}});
    if (!options.network_namespace_path.empty()) {
      if (options.network_namespace_path.front() != '/')
        return InvalidError("network namespace path must be absolute: " +
                            options.network_namespace_path);
      namespaces.push_back({{"type", "network"}, {"path", options.network_namespace_path}});
    }
    json linux_obj = {
        {"resources", resources},
        {"cgroupsPath", cgroups_path},
        {"namespaces", namespaces},
        {"seccomp", DefaultSeccompProfile(caps)},
        {"maskedPaths",
         {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi"}},
        {"readonlyPaths",
         {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}},
    };

    json out = {
        {"ociVersion", "1.0.2-dev"}, {"process", process}, {"root", {{"path", "rootfs"}}},
        {"hostname", spec.name},     {"mounts", mounts},   {"linux", linux_obj},
    };
    if (!options.annotations.empty()) out["annotations"] = options.annotations;
    return out;
  } catch (const std::exception& e) {
    return FailedError(std::string("building OCI spec: ") + e.what());
  }
}

}  // namespace kmosix
