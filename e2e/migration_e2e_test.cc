// End-to-end migration tests on a local two-node cluster (scripts/cluster):
// real agents, containerd, runc and CRIU, the demo workload
// (images/demo/kmosix-demo.c) as the thing being migrated.
//
// The cluster comes up once for the binary (ClusterEnvironment, e2e_environment.h) with
// --enable-failpoints and is torn down at the end, on failure, and on
// SIGINT/SIGTERM. A machine that cannot run it makes every test skip with the
// reason (and "KMOSIX-E2E-SKIPPED", which ctest reports as a skip).
//
// Every test checks "exactly once" after every step: the workload runs on
// exactly one node, by both agents' REST API and both containerds (ctr).
// Downtime is measured from the demo's ticks and reported (RecordProperty and
// a "[ downtime ]" line), never asserted.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <regex>
#include <string>

#include "cluster.h"
#include "e2e_environment.h"

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr auto kTickTimeout = std::chrono::milliseconds(90'000);
constexpr auto kMigrateTimeout = seconds(600);
constexpr uint64_t kTicksAfter = 20;  // ticks to watch after each step

struct Migration {
  HttpReply reply;
  json report;  // the body (a report, plus code/message on errors)
  std::string Outcome() const { return report.is_object() ? report.value("outcome", "") : ""; }
  double AgentDowntime() const {
    return report.is_object() && report.contains("timings")
               ? report["timings"].value("downtime", -1.0)
               : -1.0;
  }
};

class MigrationE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = ClusterForTest();
    if (c_ == nullptr) return;
    a_ = &c_->node(1);
    b_ = &c_->node(2);
  }

  void TearDown() override {
    if (c_ == nullptr) return;
    if (HasFailure()) {
      for (const auto& n : c_->Nodes()) std::cerr << c_->AgentLogTail(n, 40) << "\n";
      for (const auto& name : names_) {
        for (const auto& n : c_->Nodes()) {
          auto logs = HttpGet(n, "/v1/workloads/" + name + "/logs");
          if (logs.status == 200) {
            std::string tail =
                logs.body.size() > 3000 ? logs.body.substr(logs.body.size() - 3000) : logs.body;
            std::cerr << "--- log of " << name << " on " << n.name << " (tail) ---\n"
                      << tail << "\n";
          }
        }
      }
    }
    for (const auto& n : c_->Nodes()) {
      for (const char* fp : {"restore.corrupt-images", "checkpoint.fail"}) {
        (void)HttpDelete(n, std::string("/v1/debug/failpoints/") + fp);
      }
    }
    for (const auto& name : names_) {
      for (const auto& n : c_->Nodes()) (void)HttpDelete(n, "/v1/workloads/" + name);
      EXPECT_EQ(CheckGoneEverywhere(*c_, name), "") << "after deleting " << name;
    }
  }

  // Starts the demo on `n`, waits until it ticked a few times.
  std::string Start(const Node& n, const std::string& name, std::vector<std::string> extra) {
    names_.push_back(name);
    std::string err = CreateDemo(n, name, extra);
    EXPECT_EQ(err, "");
    if (!err.empty()) return "";
    auto w = WaitForTick(n, name, 10, kTickTimeout);
    EXPECT_TRUE(w.ok) << w.message;
    return name;
  }

  Migration Migrate(const Node& from, const std::string& name, const std::string& target) {
    Migration m;
    m.reply =
        HttpPost(from, "/v1/workloads/" + name + "/migrate", {{"target", target}}, kMigrateTimeout);
    m.report = m.reply.Json();
    return m;
  }

  // The last tick the workload has logged on n (0 if none / unreadable).
  uint64_t LastTick(const Node& n, const std::string& name) {
    std::string err;
    auto log = FetchLog(n, name, &err);
    EXPECT_TRUE(log.has_value()) << err;
    return log && !log->ticks.empty() ? log->ticks.back().tick : 0;
  }

  // Waits for kTicksAfter more ticks on `owner` after `pre_tick`, then checks
  // the whole history it serves: started once, ticks 1,2,3,... without a gap
  // or restart, one pid, memory intact on every line. Returns the log.
  DemoLog CheckHistory(const Node& owner, const std::string& name, uint64_t pre_tick) {
    auto w = WaitForTick(owner, name, pre_tick + kTicksAfter, kTickTimeout);
    EXPECT_TRUE(w.ok) << w.message;
    std::string err;
    auto log = FetchLog(owner, name, &err);
    if (!log) {
      ADD_FAILURE() << err;
      return {};
    }
    EXPECT_EQ(log->start_lines, 1) << "the demo started more than once (restarted instead of "
                                      "restored?)";
    EXPECT_EQ(log->corruption_lines, 0) << "the demo reported MEMORY CORRUPTION";
    EXPECT_EQ(log->malformed_lines, 0);
    EXPECT_FALSE(log->ticks.empty());
    if (log->ticks.empty()) return *log;
    EXPECT_EQ(log->ticks.front().tick, 1u)
        << "the log served by " << owner.name << " does not start at tick 1 (history lost)";
    EXPECT_EQ(CheckConsecutive(log->ticks), "") << "ticks in the log served by " << owner.name;
    EXPECT_GT(log->ticks.back().tick, pre_tick) << "no ticks after the migration";
    int64_t pid = log->ticks.front().pid;
    for (const Tick& t : log->ticks) {
      if (t.mem_ok != 1 || t.pid != pid) {
        ADD_FAILURE() << "tick " << t.tick << ": mem_ok=" << t.mem_ok << " pid=" << t.pid
                      << " (first pid " << pid << ")";
        break;
      }
    }
    return *log;
  }

  // Records the downtime seen in the ticks after `pre_tick`.
  void ReportDowntime(const std::string& step, const DemoLog& log, uint64_t pre_tick,
                      const Migration& m) {
    Gap g = MaxGap(log.ticks, pre_tick > 5 ? pre_tick - 5 : 0);
    RecordProperty(step + "_tick_gap_ms", std::to_string(g.ms));
    RecordProperty(step + "_agent_downtime_ms",
                   std::to_string(static_cast<int64_t>(m.AgentDowntime() * 1000)));
    std::printf(
        "[ downtime ] %s: largest tick gap %lld ms (after tick %llu), agent-reported %.3f s,"
        " %s bytes\n",
        step.c_str(), static_cast<long long>(g.ms), static_cast<unsigned long long>(g.after_tick),
        m.AgentDowntime(),
        m.report.is_object() ? m.report.value("bytes", json(0)).dump().c_str() : "?");
    std::fflush(stdout);
  }

  // A migration that must succeed, then "exactly once" on the target.
  void MigrateOk(const Node& from, const Node& to, const std::string& name, Migration* out) {
    Migration m = Migrate(from, name, to.url);
    ASSERT_EQ(m.reply.status, 200) << "migrate " << name << " " << from.name << " -> " << to.name
                                   << ": " << m.reply.Describe();
    EXPECT_EQ(m.Outcome(), "Succeeded") << m.reply.body;
    EXPECT_EQ(m.report.value("phase", ""), "Succeeded") << m.reply.body;
    EXPECT_EQ(m.report.value("targetNode", ""), to.name) << m.reply.body;
    EXPECT_GT(m.report.value("bytes", 0ull), 0ull) << m.reply.body;
    ASSERT_EQ(CheckRunsExactlyOn(*c_, name, to), "")
        << "after migrating " << name << " " << from.name << " -> " << to.name;
    if (out != nullptr) *out = m;
  }

  // A migration that must roll back, having failed in `failed_phase`.
  void MigrateRollsBack(const Node& from, const std::string& target, const std::string& name,
                        const std::string& failed_phase, Migration* out) {
    Migration m = Migrate(from, name, target);
    EXPECT_NE(m.reply.status, 200) << m.reply.Describe();
    EXPECT_NE(m.reply.status, 0) << m.reply.Describe();
    ASSERT_TRUE(m.report.is_object()) << "no JSON report: " << m.reply.Describe();
    EXPECT_EQ(m.Outcome(), "RolledBack") << m.reply.body;
    EXPECT_EQ(m.report.value("phase", ""), "RolledBack") << m.reply.body;
    EXPECT_EQ(m.report.value("failedPhase", ""), failed_phase) << m.reply.body;
    EXPECT_TRUE(m.report.contains("error")) << m.reply.body;
    std::printf("[ rollback ] %s: %s\n", name.c_str(),
                m.report.value("message", m.report.value("error", json()).dump()).c_str());
    ASSERT_EQ(CheckRunsExactlyOn(*c_, name, from), "")
        << "after the rolled-back migration of " << name;
    if (out != nullptr) *out = m;
  }

  Cluster* c_ = nullptr;
  const Node* a_ = nullptr;
  const Node* b_ = nullptr;
  std::vector<std::string> names_;
};

// (a) A stateful workload keeps counting from where it was and its memory
// checks out; the source copy is gone.
TEST_F(MigrationE2E, StatefulWorkloadContinuesWithItsMemory) {
  std::string name = Start(*a_, "stateful", {"--mem", "64", "--interval-ms", "100"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "after creating " << name;

  uint64_t pre = LastTick(*a_, name);
  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m));
  // CheckRunsExactlyOn covered it; say it explicitly too: the source is clean.
  EXPECT_EQ(HttpGet(*a_, "/v1/workloads/" + name).status, 404);
  EXPECT_FALSE(c_->Ctr(*a_, name).container) << "source containerd still has the container";

  DemoLog log = CheckHistory(*b_, name, pre);
  ASSERT_FALSE(log.ticks.empty());
  // Whole verify passes completed after the restore, all with mem_ok=1.
  int64_t passes_at_pre = 0;
  for (const Tick& t : log.ticks) {
    if (t.tick == pre) passes_at_pre = t.mem_passes;
  }
  EXPECT_EQ(log.ticks.back().mem_mib, 64);
  EXPECT_GE(log.ticks.back().mem_passes, passes_at_pre + 3)
      << "the memory was not verified in full after the migration";
  ReportDowntime("a_to_b", log, pre, m);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *b_), "") << "a while after the migration";
}

// (b) A child process and an open append-mode file survive.
TEST_F(MigrationE2E, ChildProcessAndOpenFileSurvive) {
  std::string name =
      Start(*a_, "child-file", {"--mem", "16", "--child", "--append-file", "/tmp/append.log"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "");

  std::string err;
  auto before = FetchLog(*a_, name, &err);
  ASSERT_TRUE(before.has_value()) << err;
  ASSERT_FALSE(before->ticks.empty());
  const uint64_t pre = before->ticks.back().tick;
  const int64_t child_pre = before->ticks.back().child_tick;
  ASSERT_GT(child_pre, 0) << "the child never ticked before the migration";
  const uint64_t child_lines_pre = before->child_ticks.size();

  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m));
  DemoLog log = CheckHistory(*b_, name, pre);
  ASSERT_FALSE(log.ticks.empty());

  int64_t last_child = -1;
  for (const Tick& t : log.ticks) {
    EXPECT_EQ(t.child_alive, 1) << "tick " << t.tick << ": the child is not alive";
    EXPECT_EQ(t.file_ok, 1) << "tick " << t.tick << ": the append file does not check out";
    EXPECT_GE(t.child_tick, last_child) << "tick " << t.tick << ": child_tick went back";
    bool bad = t.child_alive != 1 || t.file_ok != 1 || t.child_tick < last_child;
    last_child = t.child_tick;
    if (bad) break;
  }
  EXPECT_GE(log.ticks.back().child_tick, child_pre + static_cast<int64_t>(kTicksAfter) / 2)
      << "the child's counter did not keep going after the migration";
  // The child's own lines: one sequence 1,2,3,... across the migration.
  EXPECT_EQ(CheckConsecutive(log.child_ticks), "") << "child lines in the log on " << b_->name;
  EXPECT_GT(log.child_ticks.size(), child_lines_pre + kTicksAfter / 2);
  if (!log.child_ticks.empty()) {
    EXPECT_EQ(log.child_ticks.front().tick, 1u);
  }
  ReportDowntime("a_to_b", log, pre, m);
}

// (c) A file the workload wrote into its own rootfs is there after.
TEST_F(MigrationE2E, FileWrittenIntoRootfsSurvives) {
  std::string name = Start(*a_, "rootfs", {"--mem", "16", "--write-rootfs", "/tmp/kmosix-marker"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "");
  uint64_t pre = LastTick(*a_, name);

  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m));
  DemoLog log = CheckHistory(*b_, name, pre);
  ASSERT_FALSE(log.ticks.empty());
  size_t after = 0;
  for (const Tick& t : log.ticks) {
    if (t.rootfs_ok != 1) {
      ADD_FAILURE() << "tick " << t.tick << ": rootfs_ok=" << t.rootfs_ok
                    << " (the marker file is missing or changed)";
      break;
    }
    if (t.tick > pre) ++after;
  }
  EXPECT_GE(after, kTicksAfter);
  ReportDowntime("a_to_b", log, pre, m);
}

// (d1) The target's restore fails (its CRIU images are truncated): rolled
// back, the workload keeps running on the source with its state, the target is
// clean; a normal migration afterwards succeeds.
TEST_F(MigrationE2E, RestoreFailureOnTargetRollsBack) {
  std::string name = Start(*a_, "rollback-restore", {"--mem", "64"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "");

  auto armed = HttpPut(*b_, "/v1/debug/failpoints/restore.corrupt-images");
  ASSERT_EQ(armed.status, 200) << armed.Describe();
  uint64_t pre = LastTick(*a_, name);
  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateRollsBack(*a_, b_->url, name, "Restoring", &m));
  // The failpoint fired (the failure was the injected one, not another).
  auto fps = HttpGet(*b_, "/v1/debug/failpoints");
  EXPECT_EQ(fps.Json().value("armed", json::array()), json::array())
      << "restore.corrupt-images did not fire: " << fps.Describe();

  DemoLog log = CheckHistory(*a_, name, pre);
  ReportDowntime("rolled_back", log, pre, m);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "a while after the rollback";

  // The same workload migrates fine now.
  uint64_t pre2 = LastTick(*a_, name);
  Migration m2;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m2));
  DemoLog log2 = CheckHistory(*b_, name, pre2);
  ReportDowntime("a_to_b_after_rollback", log2, pre2, m2);
}

// (d2) The transfer is cut halfway (the source drops the connection after half
// the memory, failpoint stream.cut): rolled back in Transferring, state
// intact on the source, target clean; a normal migration afterwards succeeds.
TEST_F(MigrationE2E, TransferCutHalfwayRollsBack) {
  std::string name = Start(*a_, "rollback-cut", {"--mem", "64"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "");

  // The source drops its data-channel connection after 32 MiB of the ~64 MiB
  // stream (failpoint stream.cut: TCP closed without TLS close_notify, as a
  // network cut; a middlebox cannot cut a mutual-TLS stream whose server
  // certificate must name the address dialled).
  auto armed = HttpPut(*a_, "/v1/debug/failpoints/stream.cut");
  ASSERT_EQ(armed.status, 200) << armed.Describe();

  uint64_t pre = LastTick(*a_, name);
  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateRollsBack(*a_, b_->url, name, "Transferring", &m));
  EXPECT_NE(m.report.dump().find("stream.cut"), std::string::npos) << m.report.dump();
  EXPECT_EQ(HttpGet(*b_, "/v1/workloads/" + name).status, 404);
  EXPECT_FALSE(c_->Ctr(*b_, name).container) << "target containerd kept the container";

  DemoLog log = CheckHistory(*a_, name, pre);
  ReportDowntime("cut_rolled_back", log, pre, m);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "a while after the rollback";

  uint64_t pre2 = LastTick(*a_, name);
  Migration m2;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m2));
  DemoLog log2 = CheckHistory(*b_, name, pre2);
  ReportDowntime("a_to_b_after_cut", log2, pre2, m2);
}

// (d3) Bounded intake: a source whose offer understates its stream (failpoint
// offer.understate: it declares 1 MiB) has the stream cut by the target at
// the declared bound: rolled back in Transferring, state intact on the
// source, nothing left on the target; a normal migration afterwards succeeds.
TEST_F(MigrationE2E, StreamLargerThanItsOfferIsCutAndRolledBack) {
  std::string name = Start(*a_, "understated", {"--mem", "32"});
  ASSERT_FALSE(name.empty());
  auto armed = HttpPut(*a_, "/v1/debug/failpoints/offer.understate");
  ASSERT_EQ(armed.status, 200) << armed.Describe();
  uint64_t pre = LastTick(*a_, name);
  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateRollsBack(*a_, b_->url, name, "Transferring", &m));
  EXPECT_EQ(HttpGet(*b_, "/v1/workloads/" + name).status, 404);
  EXPECT_FALSE(c_->Ctr(*b_, name).container) << "target containerd kept the container";
  auto metrics = HttpGet(*b_, "/metrics");
  const std::string key = "reason=\"stream_over_limits\"} ";
  const auto at = metrics.body.find(key);
  ASSERT_NE(at, std::string::npos) << metrics.body;
  EXPECT_GE(std::atof(metrics.body.c_str() + at + key.size()), 1.0)
      << "the target did not count the cut";
  DemoLog log = CheckHistory(*a_, name, pre);
  ReportDowntime("understated_rolled_back", log, pre, m);
  Migration m2;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m2));
}

// (e) A -> B -> A: state continues across both.
TEST_F(MigrationE2E, MigratesThereAndBackAgain) {
  std::string name = Start(*a_, "round-trip", {"--mem", "64", "--child"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "");

  uint64_t pre1 = LastTick(*a_, name);
  Migration m1;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m1));
  DemoLog log1 = CheckHistory(*b_, name, pre1);
  ReportDowntime("a_to_b", log1, pre1, m1);

  uint64_t pre2 = LastTick(*b_, name);
  Migration m2;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*b_, *a_, name, &m2));
  DemoLog log2 = CheckHistory(*a_, name, pre2);
  ReportDowntime("b_to_a", log2, pre2, m2);
  ASSERT_FALSE(log2.ticks.empty());
  for (const Tick& t : log2.ticks) {
    if (t.child_alive != 1) {
      ADD_FAILURE() << "tick " << t.tick << ": child_alive=" << t.child_alive;
      break;
    }
  }
  EXPECT_EQ(CheckConsecutive(log2.child_ticks), "");
  // Both migrations are in the workload's record on its final node.
  auto w = HttpGet(*a_, "/v1/workloads/" + name);
  ASSERT_EQ(w.status, 200) << w.Describe();
  EXPECT_GE(w.Json().value("migrations", json::array()).size(), 1u) << w.body;
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "");
}

// The harness's own parts, without a cluster.
TEST(DemoLogParser, ParsesTickAndChildLinesAndIgnoresTornLastLine) {
  std::string text =
      "demo: start pid=1 mem_mib=64 interval_ms=100 child=1 append_file=- write_rootfs=- "
      "status=- t_ms=1\n"
      "tick=1 t_ms=1000 mem_ok=1 mem_mib=64 mem_passes=0 child_tick=1 child_alive=1 file_ok=-1 "
      "rootfs_ok=-1 pid=1\n"
      "child_tick=2 t_ms=1050 pid=7\n"
      "tick=2 t_ms=1100 mem_ok=0 mem_mib=64 mem_passes=1 child_tick=2 child_alive=1 file_ok=-1 "
      "rootfs_ok=-1 pid=1\n"
      "demo: MEMORY CORRUPTION at byte offset 8: got 0 want 1\n"
      "tick=3 t_ms=1500 mem_ok=1 mem_mib=64 mem_pas";
  DemoLog log = ParseDemoLog(text);
  ASSERT_EQ(log.ticks.size(), 2u);
  EXPECT_EQ(log.ticks[1].tick, 2u);
  EXPECT_EQ(log.ticks[1].mem_ok, 0);
  EXPECT_EQ(log.ticks[1].mem_passes, 1);
  EXPECT_EQ(log.ticks[0].file_ok, -1);
  ASSERT_EQ(log.child_ticks.size(), 1u);
  EXPECT_EQ(log.child_ticks[0].pid, 7);
  EXPECT_EQ(log.start_lines, 1);
  EXPECT_EQ(log.corruption_lines, 1);
  EXPECT_EQ(log.malformed_lines, 0);
  EXPECT_FALSE(ParseTickLine("tick=3 t_ms=1500 mem_ok=1").has_value());
}

TEST(DemoLogParser, ConsecutiveAndGap) {
  std::vector<Tick> ticks(4);
  for (size_t i = 0; i < ticks.size(); ++i) {
    ticks[i].tick = i + 1;
    ticks[i].t_ms = 1000 + 100 * static_cast<int64_t>(i);
  }
  ticks[3].t_ms = 2500;
  EXPECT_EQ(CheckConsecutive(ticks), "");
  Gap g = MaxGap(ticks);
  EXPECT_EQ(g.ms, 2500 - 1200);
  EXPECT_EQ(g.after_tick, 3u);
  ticks[3].tick = 1;  // a restart
  EXPECT_NE(CheckConsecutive(ticks), "");
}

TEST(Waiter, ReportsWhatItSawOnTimeout) {
  int n = 0;
  auto r = WaitFor(
      "n to reach 100", std::chrono::milliseconds(50),
      [&]() -> Observation {
        return {false, "n=" + std::to_string(++n)};
      },
      std::chrono::milliseconds(5));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("n to reach 100"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("n=" + std::to_string(n)), std::string::npos) << r.message;
  auto ok = WaitFor("now", std::chrono::milliseconds(50), [] { return Observation{true, ""}; });
  EXPECT_TRUE(ok.ok);
}

// (g) Workloads are isolated (agent default --workload-network isolated):
// own network namespace with an address from the node's workload subnet
// (scripts/cluster: 10.88.<i>.0/24) and a default route, no raw sockets; a
// migration recreates the namespace on the target, where the same process
// (its counter continues) has the target's address and gateway.
TEST_F(MigrationE2E, IsolatedWorkloadGetsTheTargetsNetworkAfterMigration) {
  const std::string name = "isolated";
  names_.push_back(name);
  const std::string script =
      "/bin/kmosix-demo --probe-raw-socket; i=0; while true; do i=$((i+1)); "
      "a=$(ip -4 -o addr show dev eth0 | awk '{print $4}'); "
      "gw=$(ip route | awk '/^default/ {print $3}'); "
      "echo \"net i=$i addr=$a gw=$gw\"; sleep 0.2; done";
  json body = {{"name", name},
               {"image", Cluster::kDemoImage},
               {"args", {"/bin/sh", "-c", script}},
               {"env", json::object()}};
  auto r = HttpPost(*a_, "/v1/workloads", body, seconds(60));
  ASSERT_EQ(r.status, 201) << r.Describe();
  auto log_of = [&](const Node& n) {
    auto l = HttpGet(n, "/v1/workloads/" + name + "/logs");
    return l.status == 200 ? l.body : std::string();
  };
  auto wait_for = [&](const Node& n, const std::string& needle) {
    for (int i = 0; i < 300; ++i) {
      if (log_of(n).find(needle) != std::string::npos) return true;
      usleep(100'000);
    }
    return false;
  };
  ASSERT_TRUE(wait_for(*a_, "addr=10.88.1.")) << log_of(*a_);
  std::string before = log_of(*a_);
  EXPECT_NE(before.find("demo: raw_packet=EPERM raw_inet=EPERM icmp_dgram=ok"), std::string::npos)
      << before;
  EXPECT_NE(before.find("gw=10.88.1.1"), std::string::npos) << before;

  Migration m;
  ASSERT_NO_FATAL_FAILURE(MigrateOk(*a_, *b_, name, &m));
  ASSERT_TRUE(wait_for(*b_, "addr=10.88.2.")) << log_of(*b_);
  std::string after = log_of(*b_);
  // The same shell, restored: one probe line (not restarted), the counter
  // goes on from the source's last value into lines with the new address.
  size_t probes = 0;
  for (size_t at = after.find("demo: raw_packet="); at != std::string::npos;
       at = after.find("demo: raw_packet=", at + 1))
    ++probes;
  EXPECT_EQ(probes, 1u) << "the workload started again instead of being restored\n" << after;
  std::smatch first_dst;
  std::regex src_re("net i=([0-9]+) addr=10\\.88\\.1\\.");
  std::regex dst_re("net i=([0-9]+) addr=10\\.88\\.2\\.[0-9]+/24 gw=10\\.88\\.2\\.1");
  uint64_t src_i = 0;
  for (auto it = std::sregex_iterator(after.begin(), after.end(), src_re);
       it != std::sregex_iterator(); ++it)
    src_i = std::stoull((*it)[1].str());
  ASSERT_TRUE(std::regex_search(after, first_dst, dst_re)) << after;
  EXPECT_GT(src_i, 0u) << after;
  EXPECT_EQ(std::stoull(first_dst[1].str()), src_i + 1)
      << "the counter continues in the target's namespace\n"
      << after;
  std::printf("[ downtime ] isolated a_to_b: agent-reported %.3f s\n", m.AgentDowntime());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *b_), "");
}

}  // namespace

}  // namespace kmosix::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kmosix::e2e::ClusterOptions opts;
  opts.nodes = 2;
  // --max-outgoing 3: the intake test sends three at once from node1.
  opts.agent_args = {"--enable-failpoints", "--max-outgoing", "3"};
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
