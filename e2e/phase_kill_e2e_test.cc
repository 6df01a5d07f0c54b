// End-to-end test of faults at each phase of a migration in cluster mode
// (issue 13): a local three-node cluster (scripts/cluster) with a real etcd,
// two controllers, agents with --enable-failpoints. Each scenario orders a
// migration of a small demo workload from node1 to node2 through the
// controller's REST API, holds the source at the entry of one phase (agent
// failpoint phase.hang.<Phase>; Transferring is held mid-stream after 8 MiB,
// transfer.hang), waits until the source's GET /v1/debug/failpoints says a
// migration is holding there, and then injects one fault:
//
//   SourceAt<Phase>  `kill-agent 1` (SIGKILL; containerd and the containers
//       keep running), a second later `start-agent 1`: the new agent finishes
//       the migration from its journal (its failpoints are fresh: no hold);
//   TargetAt<Phase>  `kill-agent 2`, the hold released while node2's agent
//       is down (so the source meets a dead target in that phase), two
//       seconds later `start-agent 2`;
//   LeaderAtRestoring  the leading controller SIGKILLed while the source is
//       held at Restoring (a later phase, not the first one seen), the hold
//       released while it is down, the other controller takes over; the
//       killed one is started again once the migration ended;
//   EtcdDownAtCommitting  etcd SIGKILLed while the source is held at
//       Committing, the hold released (the ownership transfer meets etcd
//       down), etcd started again four seconds later.
//
// Resolving is reached the way a real fault reaches it: the source held at
// Committing, the target's agent killed, the hold released; the source's
// commit gets no answer for --resolve-timeout (5 s here) and it enters
// Resolving, where phase.hang.Resolving holds it; node2's agent is started
// again. Then the scenario's own fault: SourceAtResolving kills and restarts
// node1's agent; TargetAtResolving kills node2's agent once more (released
// while it is down, started again).
//
// Every scenario ends with: the migration record final; the workload record
// Running on node1 or node2 with no migration in flight; it runs there once
// (its agent's REST says running, the other agents 404, its containerd has a
// RUNNING task and the others neither container nor task:
// CheckRunsExactlyOn); a sampler of every node's tasks (every ~100 ms, from
// before the order to the end) never saw two RUNNING copies; the demo's log
// (through the controller) started once, ticks 1,2,3,... without a gap or a
// reset, memory intact, one pid, ticking on. The outcome (Succeeded,
// RolledBack or Failed) and the times are printed, not asserted: which one a
// fault leads to is the protocol's choice, never twice or lost is the rule.
//
// The agents run with --resolve-timeout 5 (Resolving within seconds) and
// --idle-timeout 30 (a target's leftover prepared copy goes within the
// scenario's bound); the controllers with --no-balance (no moves of their
// own). Deadlines are generous bounds on waits, never assertions about
// speed. Cluster and skip rules as the other e2e binaries (e2e_environment.h).
// Run one scenario: --gtest_filter='*SourceAtCommitting'.
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <set>
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
constexpr int kSource = 1;  // node1
constexpr int kTarget = 2;  // node2
constexpr int kResolveTimeoutSeconds = 5;
constexpr auto kRunningTimeout = milliseconds(120'000);
constexpr auto kHoldTimeout = milliseconds(90'000);
constexpr auto kEndTimeout = milliseconds(180'000);
constexpr uint64_t kTicksAfter = 15;
// 32 MiB of memory: a stream well past transfer.hang's 8 MiB, still quick.
const std::vector<std::string> kDemo = {"--mem", "32", "--verify-mib", "4"};

enum class Fault { kSourceAgent, kTargetAgent, kLeader, kEtcd };

struct Scenario {
  const char* name;  // the gtest name
  Fault fault;
  const char* phase;  // the phase the source is held at
};

const Scenario kScenarios[] = {
    {"SourceAtPreparing", Fault::kSourceAgent, "Preparing"},
    {"SourceAtCheckpointing", Fault::kSourceAgent, "Checkpointing"},
    {"SourceAtTransferring", Fault::kSourceAgent, "Transferring"},
    {"SourceAtRestoring", Fault::kSourceAgent, "Restoring"},
    {"SourceAtCommitting", Fault::kSourceAgent, "Committing"},
    {"SourceAtResolving", Fault::kSourceAgent, "Resolving"},
    {"TargetAtPreparing", Fault::kTargetAgent, "Preparing"},
    {"TargetAtCheckpointing", Fault::kTargetAgent, "Checkpointing"},
    {"TargetAtTransferring", Fault::kTargetAgent, "Transferring"},
    {"TargetAtRestoring", Fault::kTargetAgent, "Restoring"},
    {"TargetAtCommitting", Fault::kTargetAgent, "Committing"},
    {"TargetAtResolving", Fault::kTargetAgent, "Resolving"},
    {"LeaderAtRestoring", Fault::kLeader, "Restoring"},
    {"EtcdDownAtCommitting", Fault::kEtcd, "Committing"},
};

// The failpoint that holds the source at `phase` (mid-stream for Transferring).
std::string HoldFor(const std::string& phase) {
  return phase == "Transferring" ? "transfer.hang" : "phase.hang." + phase;
}

double SecondsSince(SteadyClock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(SteadyClock::now() - t).count() / 1000.0;
}

class PhaseKillE2E : public ::testing::TestWithParam<Scenario> {
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
    for (const auto& n : c_->Nodes()) {
      auto w = WaitFor(n.name + " to be Ready", milliseconds(60'000), [&]() -> Observation {
        std::string err;
        auto items = GetItems(AnyController(*c_), "/v1/nodes", &err);
        if (!items) return {false, err};
        for (const auto& item : *items) {
          if (JsonStr(item, "name") == n.name) {
            return {item.value("ready", false), item.dump().substr(0, 200)};
          }
        }
        return {false, n.name + " not listed"};
      });
      ASSERT_TRUE(w.ok) << w.message;
    }
  }

  void TearDown() override {
    if (c_ == nullptr) return;
    if (sampler_) sampler_->Stop();
    if (HasFailure()) DumpDiagnostics();
    // Whatever the scenario broke comes back, even when it failed.
    if (etcd_down_) {
      EXPECT_EQ(c_->StartEtcd(), "");
    }
    for (int j : std::set<int>(killed_controllers_)) EXPECT_EQ(c_->StartController(j), "");
    for (int i : std::set<int>(killed_agents_)) EXPECT_EQ(c_->StartAgent(i), "") << "node" << i;
    for (const auto& n : c_->Nodes()) {
      auto armed = HttpGet(n, "/v1/debug/failpoints").Json();
      if (armed.is_object() && armed.contains("armed") && armed["armed"].is_array()) {
        for (const auto& fp : armed["armed"]) {
          if (fp.is_string()) (void)HttpDelete(n, "/v1/debug/failpoints/" + fp.get<std::string>());
        }
      }
    }
    if (name_.empty()) return;
    auto r = HttpDelete(AnyController(*c_), "/v1/workloads/" + name_);
    if (r.status != 200 && r.status != 404) {
      ADD_FAILURE() << "DELETE /v1/workloads/" << name_ << ": " << r.Describe();
    }
    auto gone = WaitFor(
        name_ + " to be gone from the API and every node", milliseconds(90'000),
        [&]() -> Observation {
          auto g = HttpGet(AnyController(*c_), "/v1/workloads/" + name_);
          if (g.status != 404) return {false, "controller: " + g.Describe()};
          std::string left = CheckGoneEverywhere(*c_, name_);
          return {left.empty(), left};
        },
        milliseconds(1000));
    EXPECT_TRUE(gone.ok) << gone.message;
  }

  void DumpDiagnostics() {
    for (const auto& ctl : c_->Controllers()) std::cerr << c_->ControllerLogTail(ctl, 30) << "\n";
    for (const auto& n : c_->Nodes()) std::cerr << c_->AgentLogTail(n, 40) << "\n";
    std::string err;
    if (auto ms = GetItems(AnyController(*c_), "/v1/migrations", &err)) {
      std::cerr << "--- GET /v1/migrations ---\n" << ms->dump(1).substr(0, 6000) << "\n";
    }
  }

  const Node& Source() const { return c_->node(kSource); }
  const Node& Target() const { return c_->node(kTarget); }

  std::string Arm(const std::string& fp) {
    auto r = HttpPut(Source(), "/v1/debug/failpoints/" + fp);
    return r.status == 200 ? "" : "arming " + fp + ": " + r.Describe();
  }
  // Releases a hold on the source (an agent started again has none: a no-op).
  void Disarm(const std::string& fp) {
    auto r = HttpDelete(Source(), "/v1/debug/failpoints/" + fp);
    EXPECT_EQ(r.status, 200) << "disarming " << fp << ": " << r.Describe();
  }
  // Waits until a migration holds at `fp` on the source.
  WaitResult AwaitHolding(const std::string& fp) {
    return WaitFor(
        "the source to hold a migration at " + fp, kHoldTimeout,
        [&]() -> Observation {
          auto r = HttpGet(Source(), "/v1/debug/failpoints", seconds(5));
          json j = r.Json();
          if (!j.is_object() || !j.contains("holding")) return {false, r.Describe()};
          for (const auto& h : j["holding"]) {
            if (h == fp) return {true, ""};
          }
          return {false, "holding " + j["holding"].dump()};
        },
        milliseconds(100));
  }
  // Waits until the migration record says `phase` (the source reported it
  // before holding).
  WaitResult AwaitRecordPhase(const std::string& id, const std::string& phase) {
    return WaitFor(
        "migration " + id + " to be " + phase, milliseconds(30'000),
        [&]() -> Observation {
          std::string err;
          auto m = GetObject(AnyController(*c_), "/v1/migrations/" + id, &err);
          if (!m) return {false, err};
          return {JsonStr(*m, "phase") == phase, "phase=" + JsonStr(*m, "phase")};
        },
        milliseconds(200));
  }

  std::string KillAgent(int i) {
    std::string err = c_->KillAgent(i);
    if (err.empty()) killed_agents_.insert(i);
    return err;
  }
  std::string StartAgent(int i) {
    std::string err = c_->StartAgent(i);
    if (err.empty()) killed_agents_.erase(i);
    return err;
  }

  // Creates the demo on node1; waits until it runs there and ticked.
  void StartDemo() {
    name_ = std::string("pk-") + GetParam().name;
    for (auto& ch : name_) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    auto r = HttpPost(AnyController(*c_), "/v1/workloads",
                      DemoWorkloadSpec(name_, kDemo, Source().name));
    ASSERT_EQ(r.status, 201) << "POST /v1/workloads: " << r.Describe();
    auto w =
        AwaitWorkloadRecord(*c_, name_, "to run on node1", kRunningTimeout, [&](const json& j) {
          return StatusStr(j, "phase") == "Running" && StatusStr(j, "node") == Source().name;
        });
    ASSERT_TRUE(w.wait.ok) << w.wait.message;
    auto t = WaitForTickAt(AnyController(*c_), name_, 5, milliseconds(60'000));
    ASSERT_TRUE(t.ok) << t.message;
  }

  uint64_t LastTick() {
    std::string err;
    auto log = FetchLogFrom(AnyController(*c_), name_, &err);
    EXPECT_TRUE(log.has_value()) << err;
    return log && !log->ticks.empty() ? log->ticks.back().tick : 0;
  }

  // The demo's history through the controller's log proxy: started once,
  // ticks 1,2,3,... with no gap or reset, memory intact, one pid; ticking on.
  void CheckCounter(uint64_t pre_tick) {
    auto w = WaitForTickAt(AnyController(*c_), name_, pre_tick + kTicksAfter, milliseconds(90'000));
    EXPECT_TRUE(w.ok) << w.message;
    std::string err;
    auto log = FetchLogFrom(AnyController(*c_), name_, &err);
    ASSERT_TRUE(log.has_value()) << err;
    EXPECT_EQ(log->start_lines, 1) << "the demo started more than once";
    EXPECT_EQ(log->corruption_lines, 0) << "the demo reported MEMORY CORRUPTION";
    EXPECT_EQ(log->malformed_lines, 0);
    ASSERT_FALSE(log->ticks.empty());
    EXPECT_EQ(log->ticks.front().tick, 1u) << "the log does not start at tick 1";
    EXPECT_EQ(CheckConsecutive(log->ticks), "");
    EXPECT_GT(log->ticks.back().tick, pre_tick);
    const int64_t pid = log->ticks.front().pid;
    for (const Tick& t : log->ticks) {
      if (t.mem_ok != 1 || t.pid != pid) {
        ADD_FAILURE() << "tick " << t.tick << ": mem_ok=" << t.mem_ok << " pid=" << t.pid
                      << " (first pid " << pid << ")";
        break;
      }
    }
  }

  Cluster* c_ = nullptr;
  std::string name_;
  std::unique_ptr<TaskSampler> sampler_;
  std::set<int> killed_agents_;
  std::set<int> killed_controllers_;
  bool etcd_down_ = false;
};

TEST_P(PhaseKillE2E, OneCopyRunsAfterAFaultAtThePhase) {
  const Scenario& s = GetParam();
  ASSERT_NO_FATAL_FAILURE(StartDemo());
  sampler_ = std::make_unique<TaskSampler>(*c_, name_);
  sampler_->AwaitSamples(3);
  ASSERT_EQ(sampler_->Last(Source().name), "RUNNING");
  const uint64_t pre = LastTick();
  const std::string phase = s.phase;
  const bool resolving = phase == "Resolving";
  // Resolving is reached through a target lost at Committing (see the top).
  const std::string hold = resolving ? "phase.hang.Committing" : HoldFor(phase);
  ASSERT_EQ(Arm(hold), "");
  if (resolving) {
    ASSERT_EQ(Arm("phase.hang.Resolving"), "");
  }

  const auto ordered_at = SteadyClock::now();
  auto r = HttpPost(AnyController(*c_), "/v1/migrations",
                    {{"workload", name_}, {"target", Target().name}});
  ASSERT_EQ(r.status, 201) << "POST /v1/migrations: " << r.Describe();
  const std::string id = JsonStr(r.Json(), "id");
  ASSERT_FALSE(id.empty()) << r.body;
  auto held = AwaitHolding(hold);
  ASSERT_TRUE(held.ok) << held.message;
  // The hold above proves where the source is; the record's mirror of the
  // phase can lag it (seen once in a CI-like run: still Transferring 30 s
  // into a Restoring hold), so a lag is reported, not failed on.
  auto reported = AwaitRecordPhase(id, resolving ? "Committing" : phase);
  if (!reported.ok) {
    std::cout << "[ phase-kill ] NOTE: the migration record never showed the held phase: "
              << reported.message << std::endl;
  }

  if (resolving) {
    // The target lost at Committing: the source's commit gets no answer,
    // and after --resolve-timeout it enters Resolving (held there).
    ASSERT_EQ(KillAgent(kTarget), "");
    Disarm(hold);
    auto in_resolving = AwaitHolding("phase.hang.Resolving");
    ASSERT_TRUE(in_resolving.ok) << in_resolving.message;
    ASSERT_EQ(StartAgent(kTarget), "");
  }
  const std::string fault_hold = resolving ? "phase.hang.Resolving" : hold;

  const auto fault_at = SteadyClock::now();
  std::string what;
  switch (s.fault) {
    case Fault::kSourceAgent:
      ASSERT_EQ(KillAgent(kSource), "");
      std::this_thread::sleep_for(seconds(1));
      ASSERT_EQ(StartAgent(kSource), "");
      Disarm(fault_hold);  // a fresh agent: nothing armed any more
      what = "node1's agent killed and started again";
      break;
    case Fault::kTargetAgent:
      ASSERT_EQ(KillAgent(kTarget), "");
      Disarm(fault_hold);  // the source goes on against a dead target
      std::this_thread::sleep_for(seconds(2));
      ASSERT_EQ(StartAgent(kTarget), "");
      what = "node2's agent killed, the source released, node2's agent started again";
      break;
    case Fault::kLeader: {
      std::string why;
      const ControllerProc* leader = c_->Leader(&why);
      ASSERT_NE(leader, nullptr) << why;
      const int index = leader->index;
      ASSERT_EQ(c_->KillController(index), "");
      killed_controllers_.insert(index);
      Disarm(fault_hold);
      what = "leader controller" + std::to_string(index) + " killed, the source released";
      break;
    }
    case Fault::kEtcd:
      ASSERT_EQ(c_->KillEtcd(), "");
      etcd_down_ = true;
      Disarm(fault_hold);
      std::this_thread::sleep_for(seconds(4));
      ASSERT_EQ(c_->StartEtcd(), "");
      etcd_down_ = false;
      what = "etcd killed, the source released, etcd started again after 4 s";
      break;
  }

  // The migration ends; the workload runs on one of the two nodes.
  auto ended = AwaitMigrationEnd(*c_, id, kEndTimeout);
  ASSERT_TRUE(ended.wait.ok) << ended.wait.message;
  for (int j : std::set<int>(killed_controllers_)) {
    ASSERT_EQ(c_->StartController(j), "");
    killed_controllers_.erase(j);
  }
  auto settled = AwaitWorkloadRecord(
      *c_, name_, "to run with no migration in flight", kEndTimeout, [&](const json& j) {
        const std::string node = StatusStr(j, "node");
        return StatusStr(j, "phase") == "Running" && StatusStr(j, "migration").empty() &&
               (node == Source().name || node == Target().name);
      });
  ASSERT_TRUE(settled.wait.ok) << settled.wait.message;
  const std::string owner = StatusStr(settled.last, "node");
  const std::string outcome = JsonStr(ended.last, "phase");
  if (outcome == "Succeeded") {
    EXPECT_EQ(owner, Target().name) << "Succeeded, yet the record names " << owner;
  } else {
    EXPECT_EQ(owner, Source().name) << outcome << ", yet the record names " << owner;
  }
  const Node& on = owner == Target().name ? Target() : Source();
  // Both agents' REST and all containerds agree (a target's leftover copy
  // may take until its idle timeout to go).
  auto once = WaitFor(
      name_ + " to run exactly on " + owner, milliseconds(90'000),
      [&]() -> Observation {
        std::string problems = CheckRunsExactlyOn(*c_, name_, on);
        return {problems.empty(), problems};
      },
      milliseconds(1000));
  EXPECT_TRUE(once.ok) << once.message;
  ASSERT_NO_FATAL_FAILURE(CheckCounter(pre));
  // The source agent's journal of the migration is final too.
  auto journal = HttpGet(Source(), "/v1/migrations/" + id);
  EXPECT_EQ(journal.status, 200) << "node1's journal of " << id << ": " << journal.Describe();
  EXPECT_TRUE(IsFinalMigrationPhase(JsonStr(journal.Json(), "phase")))
      << "node1's journal: " << journal.body.substr(0, 600);
  sampler_->AwaitSamples(3);
  sampler_->Stop();
  EXPECT_EQ(sampler_->NeverTwice(), "");
  std::printf(
      "[ phase-kill ] %-22s %s; migration %s (%s) %.1f s after the fault, %.1f s after the "
      "order; runs on %s; %d samples, never two copies%s\n",
      s.name, what.c_str(), outcome.c_str(), JsonStr(ended.last, "error").substr(0, 120).c_str(),
      std::chrono::duration_cast<milliseconds>(SteadyClock::now() - fault_at).count() / 1000.0,
      SecondsSince(ordered_at), owner.c_str(), sampler_->Samples(),
      sampler_->NeverTwice().empty() ? "" : " (NOT SO)");
  std::fflush(stdout);
}

INSTANTIATE_TEST_SUITE_P(Phases, PhaseKillE2E, ::testing::ValuesIn(kScenarios),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace kmosix::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kmosix::e2e::ClusterOptions opts;
  opts.nodes = kmosix::e2e::kNodes;
  opts.etcd = true;
  opts.controllers = kmosix::e2e::kControllers;
  opts.controller_args = {"--no-balance"};
  opts.agent_args = {"--enable-failpoints", "--resolve-timeout",
                     std::to_string(kmosix::e2e::kResolveTimeoutSeconds), "--idle-timeout", "30"};
  opts.node_cpus = 1;
  opts.node_memory_mib = 2048;
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
