// End-to-end tests of node loss (issue 13) on a local three-node cluster
// (scripts/cluster) with a real etcd and two controllers: a workload whose
// restartPolicy is FromImage runs again on another node when its node is
// lost, never twice at once; a node cut off from etcd freezes its copy
// (self-fencing, the agents' --fence-after) before the controller restarts it
// elsewhere, and deletes it once it is back; restartPolicy Never leaves the
// workload Lost.
//
//   KilledNodeRestartsElsewhereOnce  `kill-node 3` (power loss): the workload
//       runs again on node1 or node2 exactly once (no two RUNNING tasks in any
//       sample of every node's containerd), its record shows the recovery;
//       `start-node 3 --keep` (a reboot on the old disk): the old copy is
//       never started there again and its container goes
//   PartitionFromEtcdFreezesBeforeTheRestart  `partition 2 etcd`: node2's
//       copy is PAUSED before any other node runs one (sampled every
//       ~100 ms, never two RUNNING), the workload runs elsewhere; `heal 2`:
//       node2 deletes its old copy
//   ShortPartitionThawsInPlace  `partition 1 etcd`, healed once node1's
//       copy is PAUSED (well before the restart delay): the copy is thawed
//       on node1, the same process with its counter going on, and never
//       started elsewhere
//   NeverStaysLost  restartPolicy Never: `kill-node 3` leaves it Lost, not
//       running anywhere, past the restart delay
//
// The controllers run with --node-loss-restart-delay 10 (it must exceed the
// lease TTL 5 s + the agents' --fence-after 4 s) and a long --min-residency
// (no balancing moves). A background sampler asks each node's containerd for
// its tasks (`ctr tasks ls`, all nodes at once) every 100 ms; a sample in
// which two nodes run the workload is a failure. Deadlines are generous
// bounds on waits, never assertions about speed; the times are printed.
// Cluster and skip rules as the other e2e binaries (e2e_environment.h).
// KMX_NODE_LOSS_AGENT_ARGS (words split on spaces) adds agent flags, e.g.
// "--fence-after 0" to watch the partition test fail without fencing.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
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
constexpr int kRestartDelaySeconds = 10;  // > lease TTL 5 s + --fence-after 4 s
constexpr auto kRunningTimeout = milliseconds(120'000);
// NotReady (a lease TTL) + the restart delay + a start, with room to spare.
constexpr auto kRecoveryTimeout = milliseconds(120'000);
const std::vector<std::string> kLight = {"--mem", "16", "--verify-mib", "4"};

double SecondsSince(SteadyClock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(SteadyClock::now() - t).count() / 1000.0;
}

class NodeLossE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = ClusterForTest();
    if (c_ == nullptr) return;
    ASSERT_TRUE(AwaitLeader());
    for (const auto& n : c_->Nodes()) {
      auto w = AwaitNodeReady(n.name, true, milliseconds(90'000));
      ASSERT_TRUE(w.ok) << w.message;
    }
  }

  void TearDown() override {
    if (c_ == nullptr) return;
    if (sampler_) sampler_->Stop();
    if (HasFailure()) DumpDiagnostics();
    // Whatever a test broke comes back, even when it failed.
    EXPECT_EQ(c_->Heal(), "");
    for (int i : killed_) EXPECT_EQ(c_->StartNode(i, /*keep=*/true), "") << "node" << i;
    for (const auto& name : names_) {
      auto r = HttpDelete(Api(), "/v1/workloads/" + name);
      if (r.status != 200 && r.status != 404) {
        ADD_FAILURE() << "DELETE /v1/workloads/" << name << ": " << r.Describe();
      }
    }
    for (const auto& name : names_) {
      auto w = WaitFor(
          name + " to be gone from the API and every node", milliseconds(90'000),
          [&]() -> Observation {
            auto r = HttpGet(Api(), "/v1/workloads/" + name);
            if (r.status != 404) return {false, "controller: " + r.Describe()};
            std::string left = CheckGoneEverywhere(*c_, name);
            return {left.empty(), left};
          },
          milliseconds(1000));
      EXPECT_TRUE(w.ok) << w.message;
    }
  }

  void DumpDiagnostics() {
    for (const auto& ctl : c_->Controllers()) std::cerr << c_->ControllerLogTail(ctl, 40) << "\n";
    for (const auto& n : c_->Nodes()) std::cerr << c_->AgentLogTail(n, 40) << "\n";
    std::string err;
    if (auto ws = GetItems(Api(), "/v1/workloads", &err)) {
      std::cerr << "--- GET /v1/workloads ---\n" << ws->dump(1).substr(0, 8000) << "\n";
    }
  }

  Endpoint Api() const { return AnyController(*c_); }

  bool AwaitLeader() {
    auto w = WaitFor("exactly one controller to lead", milliseconds(60'000), [&]() -> Observation {
      std::string why;
      return {c_->Leader(&why) != nullptr, why};
    });
    EXPECT_TRUE(w.ok) << w.message;
    return w.ok;
  }

  WaitResult AwaitNodeReady(const std::string& name, bool ready, milliseconds timeout) {
    return WaitFor(name + (ready ? " to be Ready" : " to be NotReady"), timeout,
                   [&]() -> Observation {
                     std::string err;
                     auto items = GetItems(Api(), "/v1/nodes", &err);
                     if (!items) return {false, err};
                     for (const auto& n : *items) {
                       if (JsonStr(n, "name") != name) continue;
                       bool is = n.value("ready", false);
                       return {is == ready, std::string("ready=") + (is ? "true" : "false")};
                     }
                     return {!ready, name + " is not listed"};
                   });
  }

  std::optional<json> Workload(const std::string& name, std::string* error) {
    return GetObject(Api(), "/v1/workloads/" + name, error);
  }

  // Waits until `pred` holds for the workload record; returns the last one.
  json AwaitRecord(const std::string& name, const std::string& what, milliseconds timeout,
                   const std::function<bool(const json&)>& pred) {
    auto w = AwaitWorkloadRecord(*c_, name, what, timeout, pred);
    EXPECT_TRUE(w.wait.ok) << w.wait.message;
    return w.last;
  }

  // Creates a light demo with the restart policy on `node`; waits until it
  // runs there and ticked.
  void StartDemo(const std::string& name, const std::string& policy, const std::string& node) {
    json spec = DemoWorkloadSpec(name, kLight, node);
    spec["restartPolicy"] = policy;
    names_.push_back(name);
    auto r = HttpPost(Api(), "/v1/workloads", spec);
    ASSERT_EQ(r.status, 201) << "POST /v1/workloads " << spec.dump() << ": " << r.Describe();
    json w = AwaitRecord(name, "to run on " + node, kRunningTimeout, [&](const json& j) {
      return StatusStr(j, "phase") == "Running" && StatusStr(j, "node") == node;
    });
    ASSERT_EQ(StatusStr(w, "phase"), "Running") << w.dump();
    auto t = WaitForTickAt(Api(), name, 3, milliseconds(60'000));
    ASSERT_TRUE(t.ok) << t.message;
  }

  std::string KillNode(int i) {
    std::string err = c_->KillNode(i);
    if (err.empty()) killed_.insert(i);
    return err;
  }
  std::string StartNode(int i, bool keep) {
    std::string err = c_->StartNode(i, keep);
    if (err.empty()) killed_.erase(i);
    return err;
  }

  void CheckNeverTwice() {
    ASSERT_TRUE(sampler_);
    EXPECT_EQ(sampler_->NeverTwice(), "");
  }

  Cluster* c_ = nullptr;
  std::vector<std::string> names_;
  std::set<int> killed_;
  std::unique_ptr<TaskSampler> sampler_;
};

TEST_F(NodeLossE2E, KilledNodeRestartsElsewhereOnce) {
  ASSERT_NO_FATAL_FAILURE(StartDemo("lossy", "FromImage", "node3"));
  std::string err;
  const int64_t epoch = JsonInt(Workload("lossy", &err).value_or(json{})["status"], "epoch");
  sampler_ = std::make_unique<TaskSampler>(*c_, "lossy");
  sampler_->AwaitSamples(3);
  ASSERT_EQ(sampler_->Last("node3"), "RUNNING");

  const auto killed_at = SteadyClock::now();
  ASSERT_EQ(KillNode(3), "");
  json w =
      AwaitRecord("lossy", "to run again on another node", kRecoveryTimeout, [](const json& j) {
        return StatusStr(j, "phase") == "Running" && StatusStr(j, "node") != "node3" &&
               !StatusStr(j, "node").empty();
      });
  const std::string now_on = StatusStr(w, "node");
  ASSERT_NE(now_on, "node3") << w.dump();
  std::printf("[ node-loss ] lossy runs on %s %.1f s after node3 was killed (restart delay %d s)\n",
              now_on.c_str(), SecondsSince(killed_at), kRestartDelaySeconds);
  EXPECT_GT(JsonInt(w["status"], "epoch"), epoch) << w.dump();
  // The record shows the recovery.
  ASSERT_TRUE(w["status"].contains("recovery")) << w.dump();
  const json& rec = w["status"]["recovery"];
  EXPECT_EQ(JsonStr(rec, "policy"), "FromImage") << rec.dump();
  EXPECT_EQ(JsonStr(rec, "lostNode"), "node3") << rec.dump();
  EXPECT_EQ(JsonInt(rec, "count"), 1) << rec.dump();
  EXPECT_GT(JsonInt(rec, "restartedMs"), 0) << rec.dump();
  // It ticks there, started once there.
  auto t = WaitForTickAt(Api(), "lossy", 5, milliseconds(60'000));
  EXPECT_TRUE(t.ok) << t.message;
  sampler_->AwaitSamples(5);
  EXPECT_EQ(sampler_->Last(now_on), "RUNNING");
  int running = 0;
  for (const auto& n : c_->Nodes()) running += sampler_->Last(n.name) == "RUNNING" ? 1 : 0;
  EXPECT_EQ(running, 1) << "running copies in the last sample";

  // node3 boots on its old disk: its copy (a container whose task died with
  // the node) is never started again there, and is removed.
  sampler_->Mark();
  ASSERT_EQ(StartNode(3, /*keep=*/true), "");
  auto gone = WaitFor(
      "node3's old copy to be deleted", milliseconds(60'000),
      [&]() -> Observation {
        auto v = c_->Ctr(c_->node(3), "lossy");
        if (!v.error.empty()) return {false, v.error};
        return {
            !v.container && v.task_status.empty(),
            std::string("container=") + (v.container ? "yes" : "no") + " task=" + v.task_status};
      },
      milliseconds(500));
  EXPECT_TRUE(gone.ok) << gone.message;
  sampler_->AwaitSamples(20);  // ~2 s more
  EXPECT_FALSE(sampler_->FirstSeen("node3", "RUNNING").has_value())
      << "the old copy ran again on node3 after start-node --keep";
  std::string e2;
  auto after = Workload("lossy", &e2);
  ASSERT_TRUE(after.has_value()) << e2;
  EXPECT_EQ(StatusStr(*after, "node"), now_on) << after->dump();
  EXPECT_EQ(StatusStr(*after, "phase"), "Running") << after->dump();
  CheckNeverTwice();
}

TEST_F(NodeLossE2E, PartitionFromEtcdFreezesBeforeTheRestart) {
  ASSERT_NO_FATAL_FAILURE(StartDemo("cutoff", "FromImage", "node2"));
  sampler_ = std::make_unique<TaskSampler>(*c_, "cutoff");
  sampler_->AwaitSamples(3);
  ASSERT_EQ(sampler_->Last("node2"), "RUNNING");
  sampler_->Mark();

  const auto cut_at = SteadyClock::now();
  ASSERT_EQ(c_->Partition(2, "etcd"), "");
  json w =
      AwaitRecord("cutoff", "to run again on another node", kRecoveryTimeout, [](const json& j) {
        return StatusStr(j, "phase") == "Running" && StatusStr(j, "node") != "node2" &&
               !StatusStr(j, "node").empty();
      });
  const std::string now_on = StatusStr(w, "node");
  ASSERT_NE(now_on, "node2") << w.dump();
  sampler_->AwaitSamples(5);
  auto paused = sampler_->FirstSeen("node2", "PAUSED");
  auto elsewhere = sampler_->FirstSeen(now_on, "RUNNING");
  EXPECT_TRUE(paused.has_value()) << "node2's copy was never seen PAUSED (fenced)";
  ASSERT_TRUE(elsewhere.has_value()) << "no RUNNING copy seen on " << now_on;
  if (paused) {
    EXPECT_LT(*paused, *elsewhere)
        << "node2's copy was frozen only after " << now_on << " ran the new one";
    std::printf(
        "[ node-loss ] partition of node2 from etcd: frozen after %.1f s, running on %s after "
        "%.1f s\n",
        std::chrono::duration_cast<milliseconds>(*paused - cut_at).count() / 1000.0, now_on.c_str(),
        std::chrono::duration_cast<milliseconds>(*elsewhere - cut_at).count() / 1000.0);
  }
  EXPECT_EQ(sampler_->Last("node2"), "PAUSED") << "still frozen while cut off";
  // The record shows the recovery.
  ASSERT_TRUE(w["status"].contains("recovery")) << w.dump();
  EXPECT_EQ(JsonStr(w["status"]["recovery"], "lostNode"), "node2") << w.dump();

  // Healed: node2 learns another node owns it and deletes its copy.
  ASSERT_EQ(c_->Heal(2), "");
  auto gone = WaitFor(
      "node2's old copy to be deleted", milliseconds(60'000),
      [&]() -> Observation {
        auto v = c_->Ctr(c_->node(2), "cutoff");
        if (!v.error.empty()) return {false, v.error};
        return {
            !v.container && v.task_status.empty(),
            std::string("container=") + (v.container ? "yes" : "no") + " task=" + v.task_status};
      },
      milliseconds(250));
  EXPECT_TRUE(gone.ok) << gone.message;
  auto ready = AwaitNodeReady("node2", true, milliseconds(60'000));
  EXPECT_TRUE(ready.ok) << ready.message;
  std::string err;
  auto after = Workload("cutoff", &err);
  ASSERT_TRUE(after.has_value()) << err;
  EXPECT_EQ(StatusStr(*after, "node"), now_on) << after->dump();
  EXPECT_EQ(StatusStr(*after, "phase"), "Running") << after->dump();
  CheckNeverTwice();
}

TEST_F(NodeLossE2E, ShortPartitionThawsInPlace) {
  ASSERT_NO_FATAL_FAILURE(StartDemo("brief", "FromImage", "node1"));
  sampler_ = std::make_unique<TaskSampler>(*c_, "brief");
  sampler_->AwaitSamples(3);
  ASSERT_EQ(sampler_->Last("node1"), "RUNNING");
  sampler_->Mark();
  const auto cut_at = SteadyClock::now();
  ASSERT_EQ(c_->Partition(1, "etcd"), "");
  auto frozen = WaitFor(
      "node1's copy to be frozen", milliseconds(30'000),
      [&]() -> Observation {
        return {sampler_->Last("node1") == "PAUSED", "task " + sampler_->Last("node1")};
      },
      milliseconds(100));
  ASSERT_TRUE(frozen.ok) << frozen.message;
  const double frozen_after = SecondsSince(cut_at);
  // Back well before the restart delay: the copy is still node1's, thawed.
  ASSERT_EQ(c_->Heal(1), "");
  json w = AwaitRecord("brief", "to run on node1 again", milliseconds(60'000), [&](const json& j) {
    return StatusStr(j, "phase") == "Running" && StatusStr(j, "node") == "node1" &&
           sampler_->Last("node1") == "RUNNING";
  });
  ASSERT_EQ(StatusStr(w, "node"), "node1") << w.dump();
  std::printf("[ node-loss ] short partition of node1: frozen after %.1f s, thawed after %.1f s\n",
              frozen_after, SecondsSince(cut_at));
  for (const char* other : {"node2", "node3"}) {
    EXPECT_FALSE(sampler_->FirstSeen(other, "RUNNING").has_value())
        << "it was restarted on " << other;
  }
  EXPECT_FALSE(w["status"].contains("recovery")) << w.dump();
  // The same process goes on: no restart, its counter continues.
  std::string err;
  auto before = FetchLogFrom(Api(), "brief", &err);
  ASSERT_TRUE(before.has_value()) << err;
  const uint64_t last = before->ticks.empty() ? 0 : before->ticks.back().tick;
  auto t = WaitForTickAt(Api(), "brief", last + 5, milliseconds(60'000));
  EXPECT_TRUE(t.ok) << t.message;
  auto log = FetchLogFrom(Api(), "brief", &err);
  ASSERT_TRUE(log.has_value()) << err;
  EXPECT_EQ(log->start_lines, 1) << "the demo started again";
  EXPECT_EQ(CheckConsecutive(log->ticks), "");
  CheckNeverTwice();
}

TEST_F(NodeLossE2E, NeverStaysLost) {
  ASSERT_NO_FATAL_FAILURE(StartDemo("stays", "Never", "node3"));
  sampler_ = std::make_unique<TaskSampler>(*c_, "stays");
  ASSERT_EQ(KillNode(3), "");
  json w = AwaitRecord("stays", "to be Lost", kRecoveryTimeout,
                       [](const json& j) { return StatusStr(j, "phase") == "Lost"; });
  ASSERT_EQ(StatusStr(w, "phase"), "Lost") << w.dump();
  const auto lost_at = SteadyClock::now();
  // Well past the restart delay: still Lost, on node3, running nowhere.
  sampler_->Mark();
  while (SecondsSince(lost_at) < kRestartDelaySeconds + 10) {
    std::this_thread::sleep_for(milliseconds(500));
  }
  std::string err;
  auto now = Workload("stays", &err);
  ASSERT_TRUE(now.has_value()) << err;
  EXPECT_EQ(StatusStr(*now, "phase"), "Lost") << now->dump();
  EXPECT_EQ(StatusStr(*now, "node"), "node3") << now->dump();
  for (const auto& n : c_->Nodes()) {
    EXPECT_FALSE(sampler_->FirstSeen(n.name, "RUNNING").has_value())
        << "restartPolicy Never, yet it ran on " << n.name;
  }
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
  if (const char* extra = std::getenv("KMX_NODE_LOSS_AGENT_ARGS")) {
    std::istringstream words(extra);
    for (std::string w; words >> w;) opts.agent_args.push_back(w);
  }
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
