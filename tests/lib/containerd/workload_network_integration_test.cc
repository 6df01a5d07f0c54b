// Integration test of isolated workloads through the real runtime adapter:
// ContainerdRuntime + WorkloadNetwork (real `ip`, `nft`, `sysctl`) over a
// private containerd, runc and CRIU, with the demo image (busybox + the
// kmosix-demo program).
//
// The test process first moves into a network namespace of its own (the
// "node"), so the bridges, the nftables table and ip_forward it sets up never
// touch the machine's own network; its loopback holds an
// "outside" address (192.0.2.1, TEST-NET-1) the workload can only reach
// through its default route. Workload namespaces live in /run/netns as on a
// real node and are removed by Delete.
//
// Needs root, containerd/runc, `ip` and `nft`, the demo image (ninja
// kmosix-demo-image) and, for the migration case, CRIU; skips loudly.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "containerd/containerd_runtime.h"
#include "containerd/workload_network.h"
#include "private_containerd.h"

#ifndef KMX_DEMO_IMAGE
#error "KMX_DEMO_IMAGE must point at the demo image tarball"
#endif

namespace kmosix::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

constexpr char kDemoImage[] = "kmosix.local/demo:latest";
constexpr char kOutside[] = "192.0.2.1";

std::string Tail(const std::string& s, size_t n = 6000) {
  return s.size() <= n ? s : s.substr(s.size() - n);
}

ino_t Inode(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// A TCP server on 0.0.0.0 of the test's namespace: records "<peer> <line>"
// for each connection, then closes it.
class LineServer {
 public:
  LineServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 16);
    thread_ = std::thread([this] { Loop(); });
  }
  ~LineServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  std::vector<std::string> Lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }

 private:
  void Loop() {
    while (!stop_) {
      sockaddr_in peer{};
      socklen_t len = sizeof(peer);
      int c = ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{3, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      std::string data;
      char buf[256];
      while (data.find('\n') == std::string::npos) {
        ssize_t n = ::read(c, buf, sizeof(buf));
        if (n <= 0) break;
        data.append(buf, static_cast<size_t>(n));
      }
      ::close(c);
      char ip[INET_ADDRSTRLEN] = "";
      ::inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
      std::lock_guard<std::mutex> lock(mu_);
      lines_.push_back(std::string(ip) + " " + data.substr(0, data.find('\n')));
    }
  }
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> lines_;
};

class WorkloadNetworkIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = MissingCapability();
    for (const char* bin : {"ip", "nft", "sysctl"}) {
      if (skip_reason_.empty() && RunCommand(std::string("command -v ") + bin) != 0)
        skip_reason_ = std::string(bin) + " not on PATH";
    }
    if (skip_reason_.empty() && !fs::exists(KMX_DEMO_IMAGE))
      skip_reason_ = std::string("demo image ") + KMX_DEMO_IMAGE +
                     " missing (build it: ninja kmosix-demo-image)";
    if (!skip_reason_.empty()) return;
    // The "node": a network namespace of this process (threads and children
    // made from here on, containerd and its shims included, inherit it).
    if (::unshare(CLONE_NEWNET) != 0) {
      skip_reason_ = std::string("unshare(CLONE_NEWNET): ") + strerror(errno);
      return;
    }
    std::string out;
    if (RunCommand("ip link set lo up && ip addr add " + std::string(kOutside) + "/32 dev lo",
                   &out) != 0) {
      start_error_ = "node namespace setup: " + out;
      return;
    }
    daemon_ = std::make_unique<PrivateContainerd>("wnet");
    start_error_ = daemon_->Start();
    for (const char* ns : {"src", "dst"}) {
      if (start_error_.empty()) start_error_ = daemon_->ImportImage(KMX_DEMO_IMAGE, ns);
    }
    if (!start_error_.empty()) start_error_ += "\n" + daemon_->DaemonLogTail();
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty())
      GTEST_SKIP() << "WORKLOAD NETWORK INTEGRATION SKIPPED: " << skip_reason_;
    ASSERT_TRUE(start_error_.empty()) << start_error_;
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::transform(name_.begin(), name_.end(), name_.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    base_ = daemon_->dir() + "/" + name_;
    fs::create_directories(base_);
  }

  void TearDown() override {
    for (auto& [rt, wn] : nodes_) (void)rt->Delete(name_);
  }

  // A node: namespace `ns` of the daemon with its own bridge and subnet.
  ContainerdRuntime* Node(const std::string& ns, const std::string& bridge,
                          const std::string& cidr) {
    WorkloadNetworkConfig c;
    c.node = "it-" + ns;
    c.bridge = bridge;
    c.cidr = cidr;
    c.lease_file = base_ + "/" + ns + "-leases.json";
    auto wn = WorkloadNetwork::Create(c, runner_);
    EXPECT_TRUE(wn.ok()) << wn.status().ToString();
    if (!wn.ok()) return nullptr;
    ContainerdConfig cfg = daemon_->Config(ns);
    cfg.network = wn->get();
    auto rt = std::make_unique<ContainerdRuntime>(cfg);
    ContainerdRuntime* out = rt.get();
    nodes_.emplace_back(std::move(rt), std::move(*wn));
    return out;
  }
  WorkloadNetwork& NetworkOf(size_t i) { return *nodes_[i].second; }

  ContainerSpec Spec(std::string script) {
    ContainerSpec s;
    s.name = name_;
    s.image = kDemoImage;
    s.args = {"/bin/sh", "-c", std::move(script)};
    s.memory_mib = 64;
    s.log_path = base_ + "/" + name_ + ".log";
    return s;
  }

  // Pid of the container's init as the host sees it.
  uint32_t Pid(ContainerdRuntime& rt) {
    auto info = rt.Inspect(name_);
    return info.ok() ? info->pid : 0;
  }

  static inline std::string skip_reason_;
  static inline std::string start_error_;
  static inline std::unique_ptr<PrivateContainerd> daemon_;
  SystemCommandRunner runner_;
  std::vector<std::pair<std::unique_ptr<ContainerdRuntime>, std::unique_ptr<WorkloadNetwork>>>
      nodes_;
  std::string name_;
  std::string base_;
};

TEST_F(WorkloadNetworkIntegrationTest, OwnAddressRouteOutAndNoRawSockets) {
  ContainerdRuntime* rt = Node("src", "kmxit0", "10.210.0.0/24");
  ASSERT_NE(rt, nullptr);
  LineServer server;
  const std::string port = std::to_string(server.port());
  ContainerSpec spec = Spec(
      "ip -4 addr show dev eth0; ip route; "
      "echo hello-gateway | nc -w 3 10.210.0.1 " +
      port +
      "; "
      "echo hello-outside | nc -w 3 " +
      std::string(kOutside) + " " + port +
      "; "
      "echo hello-loopback | nc -w 3 127.0.0.1 " +
      port +
      " && echo loopback=reached || echo loopback=refused; "
      "/bin/kmosix-demo --probe-raw-socket; echo probe-done; exec sleep 1000");
  Status s = rt->CreateContainer(spec);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string netns = "/run/netns/kmx_it-src_" + name_;
  EXPECT_TRUE(fs::exists(netns)) << "namespace made before the task";
  s = rt->StartTask(name_);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << daemon_->DaemonLogTail();
  ASSERT_TRUE(WaitFor(
      [&] { return ReadFile(spec.log_path).find("probe-done") != std::string::npos; }, seconds(20)))
      << "log: " << ReadFile(spec.log_path);
  const std::string log = ReadFile(spec.log_path);

  // Its own namespace: the one WorkloadNetwork made, not the node's.
  uint32_t pid = Pid(*rt);
  ASSERT_GT(pid, 0u);
  const std::string pid_ns = "/proc/" + std::to_string(pid) + "/ns/net";
  EXPECT_EQ(Inode(pid_ns), Inode(netns));
  EXPECT_NE(Inode(pid_ns), Inode("/proc/self/ns/net"));
  // Its own address and a default route via the bridge.
  EXPECT_NE(log.find("inet 10.210.0.2/24"), std::string::npos) << log;
  EXPECT_TRUE(std::regex_search(log, std::regex("default via 10\\.210\\.0\\.1 dev eth0"))) << log;
  // It reaches the node's bridge address and, through its default route, an
  // address outside its subnet; the node sees the workload's own address.
  auto lines = server.Lines();
  EXPECT_NE(std::find(lines.begin(), lines.end(), "10.210.0.2 hello-gateway"), lines.end()) << log;
  EXPECT_NE(std::find(lines.begin(), lines.end(), "10.210.0.2 hello-outside"), lines.end()) << log;
  // The node's loopback (where an agent listens by default) is not the
  // workload's: 127.0.0.1 inside is its own, nothing listens there.
  EXPECT_NE(log.find("loopback=refused"), std::string::npos) << log;
  for (const auto& l : lines) EXPECT_EQ(l.find("hello-loopback"), std::string::npos) << l;
  // No CAP_NET_RAW: packet and raw IP sockets are refused with EPERM; ICMP
  // datagram sockets (ping) are allowed by the namespace's ping_group_range.
  EXPECT_NE(log.find("demo: raw_packet=EPERM raw_inet=EPERM icmp_dgram=ok"), std::string::npos)
      << log;

  // Delete removes the namespace, the veth and the lease.
  const std::string veth = WorkloadVethName("it-src", name_);
  EXPECT_EQ(RunCommand("ip link show dev " + veth + " >/dev/null 2>&1"), 0);
  ASSERT_TRUE(rt->Delete(name_).ok());
  EXPECT_FALSE(fs::exists(netns));
  EXPECT_NE(RunCommand("ip link show dev " + veth + " >/dev/null 2>&1"), 0);
  EXPECT_TRUE(NetworkOf(0).Leases().empty());
  EXPECT_TRUE(rt->Delete(name_).ok()) << "idempotent";
}

TEST_F(WorkloadNetworkIntegrationTest, MigrationRecreatesTheNamespaceOnTheTarget) {
  std::string problem = CriuProblem();
  if (!problem.empty()) GTEST_SKIP() << "CRIU TESTS SKIPPED: " << problem;
  ContainerdRuntime* src = Node("src", "kmxit1", "10.211.0.0/24");
  ContainerdRuntime* dst = Node("dst", "kmxit2", "10.212.0.0/24");
  ASSERT_TRUE(src != nullptr && dst != nullptr);
  // A counter in shell memory that prints its address every tick and, once
  // the address changed (it runs on the target), reports to its gateway.
  // (No listening socket: CRIU 4.1.1 cannot dump inet sockets on kernel
  // >= 6.16, getsockopt(SO_PASSCRED) answers EOPNOTSUPP there.)
  LineServer server;
  ContainerSpec spec = Spec(
      "addr() { ip -4 -o addr show dev eth0 | awk '{print $4}'; }; a0=$(addr); i=0; sent=0; "
      "while true; do i=$((i+1)); a=$(addr); echo \"tick $i $a\"; "
      "if [ \"$a\" != \"$a0\" ] && [ $sent = 0 ]; then "
      "gw=$(ip route | awk '/^default/ {print $3}'); "
      "echo \"moved $i\" | nc -w 3 $gw " +
      std::to_string(server.port()) + " && sent=1; fi; sleep 0.1; done");
  ASSERT_TRUE(src->CreateContainer(spec).ok());
  Status s = src->StartTask(name_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(WaitFor(
      [&] { return ReadFile(spec.log_path).find("tick 5 10.211.0.2/24") != std::string::npos; },
      seconds(15)))
      << ReadFile(spec.log_path);

  ASSERT_TRUE(src->Pause(name_).ok());
  fs::create_directories(base_ + "/images");
  fs::create_directories(base_ + "/dump-work");
  fs::create_directories(base_ + "/restore-work");
  s = src->CheckpointTask(name_, {base_ + "/images", base_ + "/dump-work", true});
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(ReadFile(base_ + "/dump-work/dump.log"));
  std::string dump_log = ReadFile(base_ + "/dump-work/dump.log");

  ContainerSpec tspec = spec;
  tspec.log_path = base_ + "/" + name_ + "-dst.log";
  ASSERT_TRUE(dst->CreateContainer(tspec).ok());
  const std::string dst_ns = "/run/netns/kmx_it-dst_" + name_;
  const std::string src_ns = "/run/netns/kmx_it-src_" + name_;
  ASSERT_TRUE(fs::exists(dst_ns)) << "target namespace made before the restore";
  auto src_layer = src->WritableLayerDir(name_);
  auto dst_layer = dst->WritableLayerDir(name_);
  ASSERT_TRUE(src_layer.ok() && dst_layer.ok());
  ASSERT_EQ(RunCommand("cp -a " + *src_layer + "/. " + *dst_layer + "/"), 0);
  auto t0 = std::chrono::steady_clock::now();
  s = dst->RestoreTask(name_, {base_ + "/images", base_ + "/restore-work"});
  auto restore_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n"
                      << Tail(ReadFile(base_ + "/restore-work/restore.log"));
  std::cout << "restore into the prepared namespace took " << restore_ms << " ms\n";
  // runc named the source's namespace to CRIU as external (--external
  // net[<inode>]): its interfaces and addresses were not dumped, and the
  // restore went into the namespace the target prepared.
  const std::string external = "net[" + std::to_string(Inode(src_ns)) + "] netns is external";
  EXPECT_NE(dump_log.find(external), std::string::npos) << Tail(dump_log);

  // The restored task lives in the target's namespace, with its address.
  uint32_t pid = Pid(*dst);
  ASSERT_GT(pid, 0u);
  EXPECT_EQ(Inode("/proc/" + std::to_string(pid) + "/ns/net"), Inode(dst_ns));
  ASSERT_TRUE(
      WaitFor([&] { return ReadFile(tspec.log_path).find("10.212.0.2/24") != std::string::npos; },
              seconds(10)))
      << "target log: " << ReadFile(tspec.log_path);
  // The counter continued (memory came along), not restarted.
  std::smatch m;
  std::string tlog = ReadFile(tspec.log_path);
  ASSERT_TRUE(std::regex_search(tlog, m, std::regex("tick ([0-9]+)")));
  EXPECT_GT(std::stol(m[1].str()), 5);
  // And it reaches out from its new namespace, with its new address.
  EXPECT_TRUE(WaitFor(
      [&] {
        for (const auto& l : server.Lines())
          if (l.rfind("10.212.0.2 moved", 0) == 0) return true;
        return false;
      },
      seconds(10)))
      << "target log: " << ReadFile(tspec.log_path);
  // The source keeps its namespace until its copy is deleted (a rollback
  // would resume it there).
  EXPECT_TRUE(fs::exists(src_ns));
  Status deleted = src->Delete(name_);
  ASSERT_TRUE(deleted.ok()) << deleted.ToString();
  EXPECT_FALSE(fs::exists(src_ns));
  EXPECT_TRUE(fs::exists(dst_ns));
  EXPECT_EQ(NetworkOf(1).Leases().count(name_), 1u);
  deleted = dst->Delete(name_);
  ASSERT_TRUE(deleted.ok()) << deleted.ToString();
  EXPECT_FALSE(fs::exists(dst_ns));
}

}  // namespace
}  // namespace kmosix::testing
