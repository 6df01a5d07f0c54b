// End-to-end test of restartPolicy FromCheckpoint (issue 13) on a local
// three-node cluster (scripts/cluster) with a real etcd and two controllers:
// the owner's agent checkpoints the demo workload every 10 s to a keeper
// node; `kill-node 3` (power loss) makes the controller restore it on that
// keeper, where its tick counter continues from the checkpoint's (not from
// 1, as a start from the image would), and its record says how much progress
// was lost (status.recovery.progressLostMs).
//
// The controllers run with --node-loss-restart-delay 10 (> lease TTL 5 s +
// the agents' --fence-after 4 s) and a long --min-residency (no balancing
// moves). Deadlines are generous bounds on waits, never assertions about
// speed; the times are printed. A sampler of every node's tasks (every
// ~100 ms, from before the kill) must never see two RUNNING copies. Cluster and skip rules as the
// other e2e binaries (e2e_environment.h).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"
#include "e2e_environment.h"
#include "task_sampler.h"

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

constexpr int kNodes = 3;
constexpr int kControllers = 2;
constexpr int kRestartDelaySeconds = 10;
constexpr int kIntervalSeconds = 10;
const std::vector<std::string> kLight = {"--mem", "16", "--verify-mib", "4"};

class CheckpointE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = ClusterForTest();
    if (c_ == nullptr) return;
    auto lead =
        WaitFor("exactly one controller to lead", milliseconds(60'000), [&]() -> Observation {
          std::string why;
          return {c_->Leader(&why) != nullptr, why};
        });
    ASSERT_TRUE(lead.ok) << lead.message;
  }
  void TearDown() override {
    if (c_ == nullptr) return;
    if (HasFailure()) {
      for (const auto& ctl : c_->Controllers()) std::cerr << c_->ControllerLogTail(ctl, 40) << "\n";
      for (const auto& n : c_->Nodes()) std::cerr << c_->AgentLogTail(n, 60) << "\n";
    }
    for (int i : killed_) EXPECT_EQ(c_->StartNode(i, /*keep=*/true), "") << "node" << i;
    for (const auto& name : names_) (void)HttpDelete(Api(), "/v1/workloads/" + name);
    for (const auto& name : names_) {
      auto w = WaitFor(
          name + " to be gone", milliseconds(90'000),
          [&]() -> Observation {
            if (HttpGet(Api(), "/v1/workloads/" + name).status != 404) return {false, "listed"};
            std::string left = CheckGoneEverywhere(*c_, name);
            return {left.empty(), left};
          },
          milliseconds(1000));
      EXPECT_TRUE(w.ok) << w.message;
    }
  }
  Endpoint Api() const { return AnyController(*c_); }
  json AwaitRecord(const std::string& name, const std::string& what, milliseconds timeout,
                   const std::function<bool(const json&)>& pred) {
    auto w = AwaitWorkloadRecord(*c_, name, what, timeout, pred);
    EXPECT_TRUE(w.wait.ok) << w.wait.message;
    return w.last;
  }
  uint64_t LastTick(const std::string& name) {
    std::string err;
    auto log = FetchLogFrom(Api(), name, &err);
    return log && !log->ticks.empty() ? log->ticks.back().tick : 0;
  }

  Cluster* c_ = nullptr;
  std::vector<std::string> names_;
  std::vector<int> killed_;
};

TEST_F(CheckpointE2E, KilledNodeRestoresOnTheKeeperFromTheLatestCheckpoint) {
  const std::string name = "keepsake";
  json spec = DemoWorkloadSpec(name, kLight, "node3");
  spec["restartPolicy"] = "FromCheckpoint";
  spec["checkpointIntervalSeconds"] = kIntervalSeconds;
  names_.push_back(name);
  auto r = HttpPost(Api(), "/v1/workloads", spec);
  ASSERT_EQ(r.status, 201) << r.Describe();
  json w = AwaitRecord(name, "to run on node3", milliseconds(120'000), [](const json& j) {
    return StatusStr(j, "phase") == "Running" && StatusStr(j, "node") == "node3";
  });
  ASSERT_EQ(StatusStr(w, "phase"), "Running") << w.dump();
  auto t = WaitForTickAt(Api(), name, 3, milliseconds(60'000));
  ASSERT_TRUE(t.ok) << t.message;
  // Two and a half intervals: at least one checkpoint is kept and recorded.
  std::this_thread::sleep_for(seconds(kIntervalSeconds * 5 / 2));
  const uint64_t tick_before = LastTick(name);
  ASSERT_GT(tick_before, 0u);

  // Every node's tasks sampled from here on: never two running copies.
  TaskSampler sampler(*c_, name);
  sampler.AwaitSamples(3);
  const auto killed_at = SteadyClock::now();
  ASSERT_EQ(c_->KillNode(3), "");
  killed_.push_back(3);
  w = AwaitRecord(name, "to run again on another node", milliseconds(150'000), [](const json& j) {
    return StatusStr(j, "phase") == "Running" && !StatusStr(j, "node").empty() &&
           StatusStr(j, "node") != "node3";
  });
  const std::string now_on = StatusStr(w, "node");
  ASSERT_NE(now_on, "node3") << w.dump();
  ASSERT_TRUE(w["status"].contains("recovery")) << w.dump();
  const json& rec = w["status"]["recovery"];
  EXPECT_EQ(JsonStr(rec, "policy"), "FromCheckpoint") << w.dump();
  EXPECT_EQ(JsonStr(rec, "lostNode"), "node3") << rec.dump();
  EXPECT_FALSE(JsonStr(rec, "checkpoint").empty()) << rec.dump();
  EXPECT_GT(JsonInt(rec, "checkpointTakenMs"), 0) << rec.dump();
  EXPECT_GT(JsonInt(rec, "progressLostMs"), 0) << rec.dump();
  EXPECT_EQ(StatusStr(w, "restoreCheckpoint"), "") << "cleared with the Running write";
  EXPECT_NE(StatusStr(w, "message").find("restored on " + now_on + " from checkpoint"),
            std::string::npos)
      << w.dump();

  // Its counter continues from the checkpoint's: the first tick of the
  // restored copy is not 1, and not beyond what ran before the loss.
  const int64_t restarted_ms = JsonInt(rec, "restartedMs");
  auto more = WaitForTickAt(Api(), name, tick_before + 20, milliseconds(90'000));
  ASSERT_TRUE(more.ok) << more.message;
  std::string err;
  auto log = FetchLogFrom(Api(), name, &err);
  ASSERT_TRUE(log.has_value()) << err;
  uint64_t first_after = 0;
  for (const Tick& tk : log->ticks) {
    if (tk.t_ms > restarted_ms) {
      first_after = tk.tick;
      break;
    }
  }
  sampler.Stop();
  EXPECT_EQ(sampler.NeverTwice(), "");
  EXPECT_GT(first_after, 1u) << "started from the image, not from the checkpoint";
  EXPECT_LE(first_after, tick_before + 1) << "a checkpoint cannot be newer than the loss";
  std::printf(
      "[ checkpoint ] %s restored on %s %.1f s after node3 was killed: tick %llu before the "
      "loss, %llu first after the restore, progress lost %.1f s (checkpoint %s)\n",
      name.c_str(), now_on.c_str(),
      std::chrono::duration_cast<milliseconds>(SteadyClock::now() - killed_at).count() / 1000.0,
      static_cast<unsigned long long>(tick_before), static_cast<unsigned long long>(first_after),
      JsonInt(rec, "progressLostMs") / 1000.0, JsonStr(rec, "checkpoint").c_str());
}

}  // namespace
}  // namespace kmosix::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kmosix::e2e::ClusterOptions opts;
  opts.nodes = kmosix::e2e::kNodes;
  opts.etcd = true;
  opts.controllers = kmosix::e2e::kControllers;
  opts.controller_args = {"--node-loss-restart-delay",
                          std::to_string(kmosix::e2e::kRestartDelaySeconds), "--min-residency",
                          "600"};
  opts.node_cpus = 1;
  opts.node_memory_mib = 2048;
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
