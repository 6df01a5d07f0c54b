#include "containerd/workload_network.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

extern char** environ;

namespace kmosix {
namespace {

using json = nlohmann::json;

std::string Joined(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a.find(' ') == std::string::npos ? a : "'" + a + "'";
  }
  return out;
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// argv[0] resolved on PATH plus the sbin directories (daemons often run with
// a PATH that lacks them); "" when not found.
std::string ResolveProgram(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return prog;
  std::string path;
  if (const char* p = std::getenv("PATH")) path = p;
  path += ":/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin";
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    std::string full = dir + "/" + prog;
    if (::access(full.c_str(), X_OK) == 0) return full;
  }
  return "";
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

constexpr char kLeaseVersionKey[] = "version";
constexpr char kLeasesKey[] = "leases";
constexpr char kCidrKey[] = "cidr";

}  // namespace

StatusOr<CommandResult> SystemCommandRunner::Run(const std::vector<std::string>& argv,
                                                 std::string_view input) {
  if (argv.empty()) return InvalidError("empty command");
  std::string prog = ResolveProgram(argv[0]);
  if (prog.empty()) return FailedError(argv[0] + ": not found on PATH or in the sbin directories");
  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) return FailedError(std::string("pipe: ") + strerror(errno));
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    return FailedError(std::string("pipe: ") + strerror(e));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t dfl;
  sigemptyset(&dfl);
  sigaddset(&dfl, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &dfl);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, prog.c_str(), &fa, &attr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (rc != 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    return FailedError("cannot run " + prog + ": " + strerror(rc));
  }
  // Feed stdin and drain stdout/stderr together, so neither side can block
  // the other whatever the sizes.
  size_t written = 0;
  int in_fd = in_pipe[1];
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  } else {
    ::fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  CommandResult result;
  char buf[4096];
  bool out_open = true;
  while (out_open || in_fd >= 0) {
    pollfd fds[2];
    int n = 0;
    if (out_open) fds[n++] = {out_pipe[0], POLLIN, 0};
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    if (::poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (fds[i].fd == out_pipe[0] && (fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t r = ::read(out_pipe[0], buf, sizeof(buf));
        if (r > 0) {
          if (result.output.size() < (1u << 20)) result.output.append(buf, static_cast<size_t>(r));
        } else if (r == 0 || errno != EINTR) {
          out_open = false;
        }
      } else if (fds[i].fd == in_fd && (fds[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t w = ::write(in_fd, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if ((w < 0 && errno != EINTR && errno != EAGAIN) || written == input.size()) {
          ::close(in_fd);  // EPIPE: the program did not read it all; its exit code tells
          in_fd = -1;
        }
      }
    }
  }
  if (in_fd >= 0) ::close(in_fd);
  ::close(out_pipe[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return FailedError("waitpid " + prog + ": " + strerror(errno));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool ParseIpv4(const std::string& addr, uint32_t* out) {
  unsigned a, b, c, d;
  char tail;
  if (addr.find_first_not_of("0123456789.") != std::string::npos ||
      std::sscanf(addr.c_str(), "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) != 4 || a > 255 ||
      b > 255 || c > 255 || d > 255)
    return false;
  *out = (a << 24) | (b << 16) | (c << 8) | d;
  return true;
}

Status ParseCidr(std::string_view cidr, uint32_t* network, int* prefix_len) {
  auto slash = cidr.find('/');
  if (slash == std::string_view::npos)
    return InvalidError("workload CIDR \"" + std::string(cidr) + "\" has no /prefix");
  std::string addr(cidr.substr(0, slash));
  std::string len(cidr.substr(slash + 1));
  uint32_t ip = 0;
  if (!ParseIpv4(addr, &ip))
    return InvalidError("workload CIDR \"" + std::string(cidr) + "\": bad IPv4 address");
  if (len.empty() || len.size() > 2 || len.find_first_not_of("0123456789") != std::string::npos)
    return InvalidError("workload CIDR \"" + std::string(cidr) + "\": bad prefix length");
  int p = std::stoi(len);
  if (p < 8 || p > 30)
    return InvalidError("workload CIDR \"" + std::string(cidr) +
                        "\": prefix length must be 8 to 30");
  uint32_t mask = p == 0 ? 0 : ~uint32_t{0} << (32 - p);
  if ((ip & ~mask) != 0)
    return InvalidError("workload CIDR \"" + std::string(cidr) + "\" has host bits set");
  *network = ip;
  *prefix_len = p;
  return Status::Ok();
}

std::string FormatIpv4(uint32_t addr) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%u.%u.%u.%u", addr >> 24, (addr >> 16) & 0xff,
                (addr >> 8) & 0xff, addr & 0xff);
  return buf;
}

std::string WorkloadNetnsName(const std::string& node, const std::string& name) {
  return "kmx_" + node + "_" + name;
}

std::string WorkloadVethName(const std::string& node, const std::string& name) {
  char buf[20];
  std::snprintf(buf, sizeof(buf), "kv%013llx",
                static_cast<unsigned long long>(Fnv1a64(node + "/" + name) >> 12));
  return buf;  // 2 + 13 = 15 characters: IFNAMSIZ - 1
}

WorkloadNetwork::WorkloadNetwork(WorkloadNetworkConfig config, CommandRunner& runner,
                                 uint32_t network, int prefix_len)
    : config_(std::move(config)), runner_(runner), network_(network), prefix_len_(prefix_len) {}

StatusOr<std::unique_ptr<WorkloadNetwork>> WorkloadNetwork::Create(WorkloadNetworkConfig config,
                                                                   CommandRunner& runner) {
  if (config.node.empty()) return InvalidError("workload network: node name is empty");
  if (config.bridge.empty() || config.bridge.size() > 15 ||
      config.bridge.find_first_of(" /:\t\n") != std::string::npos)
    return InvalidError("workload network: bridge name \"" + config.bridge +
                        "\" must be 1 to 15 characters without spaces, '/' or ':'");
  if (config.lease_file.empty() || config.lease_file.front() != '/')
    return InvalidError("workload network: lease file must be an absolute path");
  if (config.netns_dir.empty() || config.netns_dir.front() != '/')
    return InvalidError("workload network: netns dir must be an absolute path");
  uint32_t network = 0;
  int prefix = 0;
  KMX_RETURN_IF_ERROR(ParseCidr(config.cidr, &network, &prefix));
  std::unique_ptr<WorkloadNetwork> wn(
      new WorkloadNetwork(std::move(config), runner, network, prefix));
  KMX_RETURN_IF_ERROR(wn->LoadLeases());
  return wn;
}

Status WorkloadNetwork::LoadLeases() {
  struct stat st;
  if (::stat(config_.lease_file.c_str(), &st) != 0 && errno == ENOENT) return Status::Ok();
  std::ifstream in(config_.lease_file, std::ios::binary);
  if (!in) return FailedError("workload network: cannot read " + config_.lease_file);
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains(kLeasesKey) || !j[kLeasesKey].is_object())
    return FailedError("workload network: " + config_.lease_file +
                       " is not a lease table (remove it to start afresh)");
  uint32_t bcast = network_ | ~(~uint32_t{0} << (32 - prefix_len_));
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, v] : j[kLeasesKey].items()) {
    if (!v.is_string()) continue;
    uint32_t ip = 0;
    if (!ParseIpv4(v.get<std::string>(), &ip)) continue;
    // A lease outside today's CIDR (the flag changed) is dropped: the
    // workload gets a new address when its namespace is made again.
    if (ip <= network_ + 1 || ip >= bcast) continue;
    leases_[name] = v.get<std::string>();
  }
  return Status::Ok();
}

Status WorkloadNetwork::SaveLeasesLocked() const {
  json j = {{kLeaseVersionKey, 1}, {kCidrKey, config_.cidr}, {kLeasesKey, leases_}};
  std::string content = j.dump(1) + "\n";
  std::string tmp = config_.lease_file + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return FailedError("workload network: open " + tmp + ": " + strerror(errno));
  ::fchmod(fd, 0600);
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return FailedError("workload network: write " + tmp + ": " + strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    return FailedError("workload network: fsync " + tmp + ": " + strerror(errno));
  if (::rename(tmp.c_str(), config_.lease_file.c_str()) != 0)
    return FailedError("workload network: rename " + tmp + ": " + strerror(errno));
  return Status::Ok();
}

bool WorkloadNetwork::NetnsExists(const std::string& netns_name) const {
  struct stat st;
  return ::stat((config_.netns_dir + "/" + netns_name).c_str(), &st) == 0;
}

StatusOr<std::string> WorkloadNetwork::LeaseLocked(const std::string& name) {
  auto it = leases_.find(name);
  if (it != leases_.end()) return it->second;
  uint32_t bcast = network_ | ~(~uint32_t{0} << (32 - prefix_len_));
  for (int pass = 0; pass < 2; ++pass) {
    std::map<std::string, bool> used;
    for (const auto& [n, a] : leases_) used[a] = true;
    for (uint32_t ip = network_ + 2; ip < bcast; ++ip) {
      std::string a = FormatIpv4(ip);
      if (used.count(a)) continue;
      leases_[name] = a;
      Status s = SaveLeasesLocked();
      if (!s.ok()) {
        leases_.erase(name);
        return s;
      }
      return a;
    }
    // Full: reclaim leases whose namespace is gone (a workload removed
    // while no agent ran, a machine reboot), then try once more.
    for (auto l = leases_.begin(); l != leases_.end();) {
      if (!NetnsExists(WorkloadNetnsName(config_.node, l->first))) {
        l = leases_.erase(l);
      } else {
        ++l;
      }
    }
  }
  return ConflictError("workload network: no free address in " + config_.cidr + " (" +
                       std::to_string(leases_.size()) + " workloads hold one)");
}

void WorkloadNetwork::ReleaseLease(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (leases_.erase(name) > 0) (void)SaveLeasesLocked();
}

Status WorkloadNetwork::Must(const std::vector<std::string>& argv, std::string_view input) {
  KMX_ASSIGN_OR_RETURN(CommandResult r, runner_.Run(argv, input));
  if (r.exit_code == 0) return Status::Ok();
  return FailedError("workload network: `" + Joined(argv) + "` exited " +
                     std::to_string(r.exit_code) + ": " + Trimmed(r.output));
}

Status WorkloadNetwork::EnsureNodeSetup() {
  // Caller holds mu_.
  if (node_ready_) return Status::Ok();
  const std::string& br = config_.bridge;
  std::string gw = FormatIpv4(network_ + 1) + "/" + std::to_string(prefix_len_);
  KMX_ASSIGN_OR_RETURN(CommandResult show, runner_.Run({"ip", "link", "show", "dev", br}));
  if (show.exit_code != 0) {
    KMX_RETURN_IF_ERROR(Must({"ip", "link", "add", "name", br, "type", "bridge"}));
  }
  KMX_RETURN_IF_ERROR(Must({"ip", "addr", "replace", gw, "dev", br}));
  KMX_RETURN_IF_ERROR(Must({"ip", "link", "set", "dev", br, "up"}));
  KMX_RETURN_IF_ERROR(Must({"sysctl", "-qw", "net.ipv4.ip_forward=1"}));
  // One transaction: make sure the table exists, delete it, make it again.
  std::string table = "kmosix_" + br;
  std::string nft = "table ip " + table + "\ndelete table ip " + table + "\ntable ip " + table +
                    " {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; "
                    "policy accept;\n    ip saddr " +
                    config_.cidr + " oifname != \"" + br + "\" masquerade\n  }\n}\n";
  KMX_RETURN_IF_ERROR(Must({"nft", "-f", "-"}, nft));
  node_ready_ = true;
  return Status::Ok();
}

WorkloadNetworkInfo WorkloadNetwork::Describe(const std::string& name) const {
  WorkloadNetworkInfo info;
  info.netns_name = WorkloadNetnsName(config_.node, name);
  info.netns_path = config_.netns_dir + "/" + info.netns_name;
  info.host_veth = WorkloadVethName(config_.node, name);
  info.gateway = FormatIpv4(network_ + 1);
  info.prefix_len = prefix_len_;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = leases_.find(name);
  if (it != leases_.end()) info.address = it->second;
  return info;
}

std::map<std::string, std::string> WorkloadNetwork::Leases() const {
  std::lock_guard<std::mutex> lock(mu_);
  return leases_;
}

StatusOr<WorkloadNetworkInfo> WorkloadNetwork::Setup(const std::string& name) {
  try {
    if (name.empty() || name.find_first_of("/_ \t\n") != std::string::npos)
      return InvalidError("workload network: bad workload name \"" + name + "\"");
    WorkloadNetworkInfo info = Describe(name);
    {
      std::lock_guard<std::mutex> lock(mu_);
      KMX_RETURN_IF_ERROR(EnsureNodeSetup());
      KMX_ASSIGN_OR_RETURN(info.address, LeaseLocked(name));
    }
    // Leftovers of an earlier attempt (an agent killed mid-way).
    if (NetnsExists(info.netns_name)) {
      KMX_RETURN_IF_ERROR(Must({"ip", "netns", "delete", info.netns_name}));
    }
    (void)runner_.Run({"ip", "link", "delete", "dev", info.host_veth});

    Status s = [&]() -> Status {
      KMX_RETURN_IF_ERROR(Must({"ip", "netns", "add", info.netns_name}));
      KMX_RETURN_IF_ERROR(Must({"ip", "link", "add", "name", info.host_veth, "type", "veth", "peer",
                                "name", "eth0", "netns", info.netns_name}));
      KMX_RETURN_IF_ERROR(
          Must({"ip", "link", "set", "dev", info.host_veth, "master", config_.bridge, "up"}));
      std::string inside =
          "link set dev lo up\naddr add " + info.address + "/" + std::to_string(prefix_len_) +
          " dev eth0\nlink set dev eth0 up\nroute add default via " + info.gateway + " dev eth0\n";
      KMX_RETURN_IF_ERROR(Must({"ip", "-n", info.netns_name, "-batch", "-"}, inside));
      // Datagram ICMP sockets for every group: ping without CAP_NET_RAW.
      return Must({"ip", "netns", "exec", info.netns_name, "sysctl", "-qw",
                   "net.ipv4.ping_group_range=0 2147483647"});
    }();
    if (!s.ok()) {
      (void)runner_.Run({"ip", "netns", "delete", info.netns_name});
      (void)runner_.Run({"ip", "link", "delete", "dev", info.host_veth});
      ReleaseLease(name);
      return s;
    }
    return info;
  } catch (const std::exception& e) {
    return FailedError(std::string("workload network: unexpected exception: ") + e.what());
  }
}

Status WorkloadNetwork::Teardown(const std::string& name) {
  try {
    if (name.empty() || name.find_first_of("/_ \t\n") != std::string::npos)
      return InvalidError("workload network: bad workload name \"" + name + "\"");
    WorkloadNetworkInfo info = Describe(name);
    if (NetnsExists(info.netns_name)) {
      KMX_RETURN_IF_ERROR(Must({"ip", "netns", "delete", info.netns_name}));
    }
    // Deleting the namespace destroys the veth pair once nothing holds the
    // namespace; delete the node's end now so the name is free at once.
    KMX_ASSIGN_OR_RETURN(CommandResult r,
                         runner_.Run({"ip", "link", "delete", "dev", info.host_veth}));
    // Gone already is fine: the kernel destroys the pair by itself once the
    // namespace is released, and can do so between ip's lookup and its
    // delete ("RTNETLINK answers: No such device").
    if (r.exit_code != 0 && r.output.find("Cannot find device") == std::string::npos &&
        r.output.find("does not exist") == std::string::npos &&
        r.output.find("No such device") == std::string::npos) {
      return FailedError("workload network: `ip link delete dev " + info.host_veth + "` exited " +
                         std::to_string(r.exit_code) + ": " + Trimmed(r.output));
    }
    ReleaseLease(name);
    return Status::Ok();
  } catch (const std::exception& e) {
    return FailedError(std::string("workload network: unexpected exception: ") + e.what());
  }
}

}  // namespace kmosix
