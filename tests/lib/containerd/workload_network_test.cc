// Unit tests of WorkloadNetwork's command plan, address leases and errors,
// with a fake command runner (no root, no network changes).
#include "containerd/workload_network.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kmosix {
namespace {

namespace fs = std::filesystem;

std::string Str(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Records every command; `ip netns add/delete` make/remove the file under
// netns_dir like the real `ip` does. `fail` picks commands to fail.
class FakeRunner : public CommandRunner {
 public:
  explicit FakeRunner(std::string netns_dir) : netns_dir_(std::move(netns_dir)) {}

  StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                              std::string_view input) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string cmd = Str(argv);
    calls.push_back(cmd);
    inputs.push_back(std::string(input));
    if (fail) {
      if (auto r = fail(cmd); r.exit_code != 0) return r;
    }
    if (argv.size() == 4 && argv[0] == "ip" && argv[1] == "netns" && argv[2] == "add")
      std::ofstream(netns_dir_ + "/" + argv[3]).put('x');
    if (argv.size() == 4 && argv[0] == "ip" && argv[1] == "netns" && argv[2] == "delete")
      fs::remove(netns_dir_ + "/" + argv[3]);
    if (cmd == "ip link show dev kmx0" && !bridge_exists) return CommandResult{1, "no such"};
    return CommandResult{0, ""};
  }

  size_t Count(const std::string& prefix) const {
    size_t n = 0;
    for (const auto& c : calls) n += c.rfind(prefix, 0) == 0;
    return n;
  }
  // Index of the first call starting with prefix, or -1.
  int Index(const std::string& prefix) const {
    for (size_t i = 0; i < calls.size(); ++i)
      if (calls[i].rfind(prefix, 0) == 0) return static_cast<int>(i);
    return -1;
  }

  std::vector<std::string> calls;
  std::vector<std::string> inputs;
  bool bridge_exists = false;
  std::function<CommandResult(const std::string&)> fail;

 private:
  std::string netns_dir_;
  std::mutex mu_;
};

class WorkloadNetworkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kmx-wn-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    fs::create_directories(dir_ + "/netns");
    runner_ = std::make_unique<FakeRunner>(dir_ + "/netns");
  }
  void TearDown() override { fs::remove_all(dir_); }

  WorkloadNetworkConfig Config(std::string cidr = "10.88.0.0/24") {
    WorkloadNetworkConfig c;
    c.node = "node1";
    c.cidr = std::move(cidr);
    c.lease_file = dir_ + "/state/workload-network.json";
    c.netns_dir = dir_ + "/netns";
    fs::create_directories(dir_ + "/state");
    return c;
  }

  std::unique_ptr<WorkloadNetwork> Make(WorkloadNetworkConfig c) {
    auto wn = WorkloadNetwork::Create(std::move(c), *runner_);
    EXPECT_TRUE(wn.ok()) << wn.status().ToString();
    return wn.ok() ? std::move(*wn) : nullptr;
  }

  std::string dir_;
  std::unique_ptr<FakeRunner> runner_;
};

TEST_F(WorkloadNetworkTest, NamesFitInterfaceLimitsAndDifferPerNode) {
  EXPECT_EQ(WorkloadNetnsName("node1", "web"), "kmx_node1_web");
  std::string v = WorkloadVethName("node1", "web");
  EXPECT_EQ(v.size(), 15u) << "IFNAMSIZ is 16 with the NUL";
  EXPECT_EQ(v.rfind("kv", 0), 0u);
  EXPECT_EQ(v, WorkloadVethName("node1", "web")) << "stable";
  EXPECT_NE(v, WorkloadVethName("node2", "web")) << "nodes sharing a machine";
  EXPECT_NE(v, WorkloadVethName("node1", "web2"));
  // "a_b" vs "a" + "b" cannot collide: '_' is not allowed in names.
  EXPECT_NE(WorkloadNetnsName("a-b", "c"), WorkloadNetnsName("a", "b-c"));
}

TEST_F(WorkloadNetworkTest, RejectsBadConfig) {
  auto bad = [&](WorkloadNetworkConfig c) {
    return WorkloadNetwork::Create(std::move(c), *runner_).status().code();
  };
  EXPECT_EQ(bad(Config("10.88.0.1/24")), Code::kInvalid) << "host bits set";
  EXPECT_EQ(bad(Config("10.88.0.0/31")), Code::kInvalid) << "no room for gateway + workload";
  EXPECT_EQ(bad(Config("10.88.0.0")), Code::kInvalid);
  EXPECT_EQ(bad(Config("10.888.0.0/24")), Code::kInvalid);
  auto c = Config();
  c.lease_file = "relative.json";
  EXPECT_EQ(bad(c), Code::kInvalid);
  c = Config();
  c.bridge = "a-bridge-name-too-long";
  EXPECT_EQ(bad(c), Code::kInvalid);
  c = Config();
  c.node = "";
  EXPECT_EQ(bad(c), Code::kInvalid);
  EXPECT_TRUE(runner_->calls.empty()) << "nothing runs for a bad config";
}

TEST_F(WorkloadNetworkTest, FirstSetupMakesBridgeMasqueradeThenNamespace) {
  auto wn = Make(Config());
  ASSERT_NE(wn, nullptr);
  auto info = wn->Setup("web");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->address, "10.88.0.2");
  EXPECT_EQ(info->gateway, "10.88.0.1");
  EXPECT_EQ(info->prefix_len, 24);
  EXPECT_EQ(info->netns_path, dir_ + "/netns/kmx_node1_web");
  EXPECT_TRUE(fs::exists(info->netns_path));

  const auto& r = *runner_;
  std::string veth = WorkloadVethName("node1", "web");
  EXPECT_EQ(r.Count("ip link add name kmx0 type bridge"), 1u);
  EXPECT_EQ(r.Count("ip addr replace 10.88.0.1/24 dev kmx0"), 1u);
  EXPECT_EQ(r.Count("ip link set dev kmx0 up"), 1u);
  EXPECT_EQ(r.Count("sysctl -qw net.ipv4.ip_forward=1"), 1u);
  int nft = r.Index("nft -f -");
  ASSERT_GE(nft, 0);
  const std::string& script = r.inputs[nft];
  EXPECT_NE(script.find("delete table ip kmosix_kmx0"), std::string::npos) << "replaced whole";
  EXPECT_NE(script.find("ip saddr 10.88.0.0/24 oifname != \"kmx0\" masquerade"), std::string::npos)
      << script;
  EXPECT_NE(script.find("hook postrouting"), std::string::npos);

  int add = r.Index("ip netns add kmx_node1_web");
  int veth_add =
      r.Index("ip link add name " + veth + " type veth peer name eth0 netns kmx_node1_web");
  int master = r.Index("ip link set dev " + veth + " master kmx0 up");
  int inside = r.Index("ip -n kmx_node1_web -batch -");
  int ping =
      r.Index("ip netns exec kmx_node1_web sysctl -qw net.ipv4.ping_group_range=0 2147483647");
  ASSERT_GE(add, 0);
  EXPECT_LT(nft, add) << "node setup first";
  EXPECT_LT(add, veth_add);
  EXPECT_LT(veth_add, master);
  EXPECT_LT(master, inside);
  EXPECT_LT(inside, ping);
  const std::string& in = r.inputs[inside];
  EXPECT_NE(in.find("link set dev lo up"), std::string::npos);
  EXPECT_NE(in.find("addr add 10.88.0.2/24 dev eth0"), std::string::npos);
  EXPECT_NE(in.find("link set dev eth0 up"), std::string::npos);
  EXPECT_NE(in.find("route add default via 10.88.0.1 dev eth0"), std::string::npos);

  // A second workload: next address, node setup not repeated.
  runner_->calls.clear();
  auto info2 = wn->Setup("db");
  ASSERT_TRUE(info2.ok());
  EXPECT_EQ(info2->address, "10.88.0.3");
  EXPECT_EQ(runner_->Count("nft"), 0u);
  EXPECT_EQ(runner_->Count("ip link show dev kmx0"), 0u);
}

TEST_F(WorkloadNetworkTest, ExistingBridgeIsReused) {
  runner_->bridge_exists = true;
  auto wn = Make(Config());
  ASSERT_TRUE(wn->Setup("web").ok());
  EXPECT_EQ(runner_->Count("ip link add name kmx0"), 0u);
  EXPECT_EQ(runner_->Count("ip addr replace 10.88.0.1/24 dev kmx0"), 1u);
}

TEST_F(WorkloadNetworkTest, LeasesSurviveRestartAndFileIsPrivate) {
  auto c = Config("10.99.1.0/24");
  {
    auto wn = Make(c);
    ASSERT_EQ(wn->Setup("a")->address, "10.99.1.2");
    ASSERT_EQ(wn->Setup("b")->address, "10.99.1.3");
    ASSERT_EQ(wn->Setup("c")->address, "10.99.1.4");
    ASSERT_TRUE(wn->Teardown("b").ok());
  }
  struct stat st;
  ASSERT_EQ(stat(c.lease_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A new agent process: same table.
  auto wn = Make(c);
  auto leases = wn->Leases();
  EXPECT_EQ(leases.size(), 2u);
  EXPECT_EQ(leases["a"], "10.99.1.2");
  EXPECT_EQ(leases["c"], "10.99.1.4");
  EXPECT_EQ(wn->Describe("c").address, "10.99.1.4");
  EXPECT_EQ(wn->Setup("c")->address, "10.99.1.4") << "a name keeps its address";
  EXPECT_EQ(wn->Setup("d")->address, "10.99.1.3") << "lowest free address";
  // Leases outside a changed CIDR are dropped.
  auto moved = Make(Config("10.42.0.0/24"));
  EXPECT_TRUE(moved->Leases().empty());
}

TEST_F(WorkloadNetworkTest, CorruptLeaseFileIsAnError) {
  auto c = Config();
  std::ofstream(c.lease_file) << "not json";
  auto wn = WorkloadNetwork::Create(c, *runner_);
  EXPECT_EQ(wn.status().code(), Code::kFailed);
  EXPECT_NE(wn.status().message().find(c.lease_file), std::string::npos);
}

TEST_F(WorkloadNetworkTest, FailedStepUndoesAndReleasesLease) {
  auto wn = Make(Config());
  runner_->fail = [](const std::string& cmd) {
    if (cmd.find("type veth") != std::string::npos) return CommandResult{2, "RTNETLINK: boom\n"};
    return CommandResult{0, ""};
  };
  auto info = wn->Setup("web");
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), Code::kFailed);
  EXPECT_NE(info.status().message().find("type veth"), std::string::npos)
      << info.status().message();
  EXPECT_NE(info.status().message().find("RTNETLINK: boom"), std::string::npos);
  EXPECT_NE(info.status().message().find("exited 2"), std::string::npos);
  EXPECT_GE(runner_->Count("ip netns delete kmx_node1_web"), 1u) << "namespace undone";
  EXPECT_FALSE(fs::exists(dir_ + "/netns/kmx_node1_web"));
  EXPECT_TRUE(wn->Leases().empty()) << "lease released";
  runner_->fail = nullptr;
  EXPECT_EQ(wn->Setup("web")->address, "10.88.0.2");
}

TEST_F(WorkloadNetworkTest, NodeSetupFailureIsRetriedNextTime) {
  auto wn = Make(Config());
  runner_->fail = [](const std::string& cmd) {
    if (cmd.rfind("nft", 0) == 0) return CommandResult{1, "nft: no such table family"};
    return CommandResult{0, ""};
  };
  auto info = wn->Setup("web");
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("nft -f -"), std::string::npos);
  EXPECT_EQ(runner_->Count("ip netns add"), 0u);
  runner_->fail = nullptr;
  ASSERT_TRUE(wn->Setup("web").ok());
  EXPECT_EQ(runner_->Count("nft -f -"), 2u);
}

TEST_F(WorkloadNetworkTest, LeftoversOfAnEarlierAttemptAreRemovedFirst) {
  auto wn = Make(Config());
  std::ofstream(dir_ + "/netns/kmx_node1_web").put('x');  // an agent died mid-way
  ASSERT_TRUE(wn->Setup("web").ok());
  int del = runner_->Index("ip netns delete kmx_node1_web");
  int add = runner_->Index("ip netns add kmx_node1_web");
  ASSERT_GE(del, 0);
  EXPECT_LT(del, add);
  EXPECT_LT(runner_->Index("ip link delete dev " + WorkloadVethName("node1", "web")), add);
}

TEST_F(WorkloadNetworkTest, TeardownIsIdempotentAndReportsRealFailures) {
  auto wn = Make(Config());
  ASSERT_TRUE(wn->Setup("web").ok());
  ASSERT_TRUE(wn->Teardown("web").ok());
  EXPECT_EQ(runner_->Count("ip netns delete kmx_node1_web"), 1u);
  EXPECT_EQ(runner_->Count("ip link delete dev " + WorkloadVethName("node1", "web")), 2u)
      << "once before the setup (leftovers), once in teardown";
  EXPECT_FALSE(fs::exists(dir_ + "/netns/kmx_node1_web"));
  EXPECT_TRUE(wn->Leases().empty());

  // Nothing there: the veth is already gone.
  runner_->fail = [](const std::string& cmd) {
    if (cmd.rfind("ip link delete", 0) == 0)
      return CommandResult{1, "Cannot find device \"kv0\"\n"};
    return CommandResult{0, ""};
  };
  EXPECT_TRUE(wn->Teardown("web").ok());
  EXPECT_EQ(runner_->Count("ip netns delete kmx_node1_web"), 1u) << "no namespace, no delete";

  runner_->fail = [](const std::string& cmd) {
    if (cmd.rfind("ip link delete", 0) == 0) return CommandResult{2, "Operation not permitted"};
    return CommandResult{0, ""};
  };
  Status s = wn->Teardown("web");
  EXPECT_EQ(s.code(), Code::kFailed);
  EXPECT_NE(s.message().find("Operation not permitted"), std::string::npos);
  EXPECT_EQ(wn->Teardown("a_b").code(), Code::kInvalid);
}

TEST_F(WorkloadNetworkTest, FullPoolIsConflictUntilAStaleLeaseIsReclaimed) {
  auto wn = Make(Config("10.88.0.0/30"));  // gateway .1, one workload address .2
  auto a = wn->Setup("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->address, "10.88.0.2");
  auto b = wn->Setup("b");
  EXPECT_EQ(b.status().code(), Code::kConflict);
  EXPECT_NE(b.status().message().find("no free address"), std::string::npos);
  // a's namespace vanished behind the agent's back (reboot): reclaimed.
  fs::remove(dir_ + "/netns/kmx_node1_a");
  b = wn->Setup("b");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->address, "10.88.0.2");
}

TEST(SystemCommandRunner, FeedsStdinCapturesOutputAndExitCode) {
  SystemCommandRunner r;
  auto res = r.Run({"sh", "-c", "cat; echo err >&2; exit 3"}, "hello\n");
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->exit_code, 3);
  EXPECT_EQ(res->output, "hello\nerr\n");
  // Large input and output do not deadlock.
  std::string big(1 << 20, 'x');
  res = r.Run({"cat"}, big);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->exit_code, 0);
  EXPECT_EQ(res->output.size(), big.size());
  auto missing = r.Run({"kmx-no-such-program"});
  EXPECT_EQ(missing.status().code(), Code::kFailed);
}

}  // namespace
}  // namespace kmosix
