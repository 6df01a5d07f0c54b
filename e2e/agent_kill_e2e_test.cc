// End-to-end tests of agent crashes in the middle of a migration: an agent
// (source or target) is SIGKILLed (`scripts/cluster kill-agent N`; containerd
// and the containers keep running) at a chosen point of a migration, then
// started again on the same state (`scripts/cluster start-agent N`). Whatever
// the point, the workload must end running exactly once, with its state:
//
//   (f) source killed mid-transfer            -> runs on the source again
//   (g) source killed after the target restored, before the commit
//                                             -> runs on the source again
//   (h) target killed after it restored, before the commit
//                                             -> rolled back, runs on the source
//   (i) target killed mid-transfer            -> rolled back, runs on the source
//
// Linked into migration_e2e_test, whose Environment brings the cluster up
// once (e2e_environment.h). Every test checks "exactly once" after every step
// (both agents' REST API and both containerds); while an agent is down, the
// check uses containerd alone. A sampler also watches both containerds during
// the whole migration: the two tasks must never be RUNNING at the same time.
// Every agent a test kills is started again, even if the test fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"
#include "e2e_environment.h"

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

constexpr auto kTickTimeout = milliseconds(90'000);
// The migrate call (it returns when the migration ended; it fails when the
// source agent is killed).
constexpr auto kMigrateCallTimeout = seconds(240);
// Until the target's record reaches the phase a test kills at. The stream of
// a 512 MiB workload takes about a second, so Receiving is polled fast.
constexpr auto kPhaseTimeout = milliseconds(120'000);
constexpr auto kFastPoll = milliseconds(10);
// Until a restarted agent has finished what the crash interrupted (its upkeep
// loop retries within ~5 s; resolving may take a few round trips).
constexpr auto kRecoverTimeout = milliseconds(60'000);
constexpr uint64_t kTicksAfter = 20;  // ticks to watch after each scenario

int64_t MsSince(SteadyClock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(SteadyClock::now() - t).count();
}

std::string ClusterScript() { return ShellQuote(Cluster::RepoDir() + "/scripts/cluster"); }

// containerd's view of one task, with a single ctr call (cheap enough to
// sample both nodes many times a second).
struct TaskView {
  std::string status;  // "" when there is no task; else ctr's STATUS
  std::string error;
};
TaskView TaskOf(const Node& n, const std::string& name) {
  TaskView v;
  auto r = RunCommand("timeout 20 ctr -a " + ShellQuote(n.sock) + " -n " + Cluster::kNamespace +
                      " tasks ls");
  if (r.exit_code != 0) {
    v.error =
        "ctr tasks ls on " + n.name + " (exit " + std::to_string(r.exit_code) + "): " + r.output;
    return v;
  }
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string id, pid, status;
    if (words >> id >> pid >> status && id == name) v.status = status;
  }
  return v;
}

// Watches both nodes' containerd from a thread until Stop(): the workload's
// task must never be RUNNING on two nodes at once. Samples one node after the
// other (a few ms apart; no migration step is that fast, so a sample never
// straddles a whole freeze-to-restore).
class DoubleRunSampler {
 public:
  struct Result {
    int samples = 0;
    std::vector<std::string> violations;  // "t=..ms node1=RUNNING node2=RUNNING"
    std::vector<std::string> errors;      // ctr failures (first few)
    std::string transitions;              // "[node1/node2] RUNNING/- -> PAUSED/- -> ..."
  };

  DoubleRunSampler(std::vector<Node> nodes, std::string name)
      : nodes_(std::move(nodes)), name_(std::move(name)) {
    start_ = SteadyClock::now();
    thread_ = std::thread([this] { Loop(); });
  }
  ~DoubleRunSampler() { (void)Stop(); }
  DoubleRunSampler(const DoubleRunSampler&) = delete;
  DoubleRunSampler& operator=(const DoubleRunSampler&) = delete;

  Result Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    std::lock_guard lock(mu_);
    return result_;
  }

 private:
  void Loop() {
    std::string last;
    std::string header = "[";
    for (size_t i = 0; i < nodes_.size(); ++i) header += (i ? "/" : "") + nodes_[i].name;
    {
      std::lock_guard lock(mu_);
      result_.transitions = header + "]";
    }
    while (!stop_) {
      int running = 0;
      std::string state;
      bool failed = false;
      for (size_t i = 0; i < nodes_.size(); ++i) {
        TaskView v = TaskOf(nodes_[i], name_);
        if (!v.error.empty()) {
          failed = true;
          std::lock_guard lock(mu_);
          if (result_.errors.size() < 5) result_.errors.push_back(v.error);
        }
        if (v.status == "RUNNING") ++running;
        state += (i ? "/" : "") + (v.error.empty() ? (v.status.empty() ? "-" : v.status) : "?");
      }
      {
        std::lock_guard lock(mu_);
        if (!failed) ++result_.samples;
        if (running > 1) {
          result_.violations.push_back("t=" + std::to_string(MsSince(start_)) + "ms " + state);
        }
        if (state != last) {
          result_.transitions += " -> " + state;
          last = state;
        }
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
  }

  std::vector<Node> nodes_;
  std::string name_;
  SteadyClock::time_point start_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  Result result_;
  std::thread thread_;
};

// The migrate call, made from a thread (it blocks until the migration ends,
// or fails when the source agent dies under it).
class BackgroundMigration {
 public:
  BackgroundMigration(const Node& from, const std::string& name, const std::string& target) {
    started_ = SteadyClock::now();
    thread_ = std::thread([this, url = Endpoint(from), name, target] {
      HttpReply r = HttpPost(url, "/v1/workloads/" + name + "/migrate", {{"target", target}},
                             std::chrono::duration_cast<seconds>(kMigrateCallTimeout));
      std::lock_guard lock(mu_);
      reply_ = r;
      took_ms_ = MsSince(started_);
      done_ = true;
    });
  }
  ~BackgroundMigration() { Join(); }
  BackgroundMigration(const BackgroundMigration&) = delete;
  BackgroundMigration& operator=(const BackgroundMigration&) = delete;

  SteadyClock::time_point Started() const { return started_; }
  bool Done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  // Waits (bounded) until the call returned; then Reply() is its answer.
  WaitResult Await(milliseconds timeout) {
    auto w = WaitFor(
        "the background migrate call to return", timeout,
        [this]() -> Observation {
          return {Done(), "still waiting for the answer"};
        },
        milliseconds(20));
    if (w.ok) Join();
    return w;
  }
  HttpReply Reply() {
    std::lock_guard lock(mu_);
    return reply_;
  }
  int64_t TookMs() {
    std::lock_guard lock(mu_);
    return took_ms_;
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  SteadyClock::time_point started_;
  std::mutex mu_;
  bool done_ = false;
  HttpReply reply_;
  int64_t took_ms_ = 0;
  std::thread thread_;
};

// The scope guard for killed agents: every agent killed through it is started
// again by RestartAll() or, at the latest, by the destructor.
class AgentKiller {
 public:
  AgentKiller() = default;
  ~AgentKiller() { (void)RestartAll(); }
  AgentKiller(const AgentKiller&) = delete;
  AgentKiller& operator=(const AgentKiller&) = delete;

  // scripts/cluster kill-agent; returns an error message or "".
  std::string Kill(const Node& n) {
    auto r = RunCommand(ClusterScript() + " kill-agent " + std::to_string(n.index));
    if (r.exit_code != 0) {
      return "scripts/cluster kill-agent " + std::to_string(n.index) + " failed (exit " +
             std::to_string(r.exit_code) + "):\n" + r.output;
    }
    killed_.insert(n.index);
    return "";
  }
  // scripts/cluster start-agent (waits until it answers /healthz).
  std::string Start(const Node& n) { return StartIndex(n.index); }
  std::string RestartAll() {
    std::string errors;
    for (int i : std::set<int>(killed_)) errors += StartIndex(i);
    return errors;
  }
  bool IsKilled(const Node& n) const { return killed_.contains(n.index); }

 private:
  std::string StartIndex(int i) {
    auto r = RunCommand(ClusterScript() + " start-agent " + std::to_string(i));
    if (r.exit_code != 0) {
      return "scripts/cluster start-agent " + std::to_string(i) + " failed (exit " +
             std::to_string(r.exit_code) + "):\n" + r.output;
    }
    killed_.erase(i);
    return "";
  }
  std::set<int> killed_;
};

// The migrations of workload `name` a node lists with `role`.
std::vector<json> MigrationsOf(const Node& n, const std::string& role, const std::string& name,
                               std::string* error) {
  std::vector<json> out;
  auto r = HttpGet(n, "/v1/migrations", seconds(5));
  json j = r.Json();
  if (r.status != 200 || !j.is_object() || !j.contains("items")) {
    if (error != nullptr) *error = "GET /v1/migrations on " + n.name + ": " + r.Describe();
    return out;
  }
  for (const auto& item : j["items"]) {
    if (item.value("role", "") == role && item.value("workload", "") == name) out.push_back(item);
  }
  return out;
}

std::set<std::string> MigrationIds(const Node& n, const std::string& role,
                                   const std::string& name) {
  std::set<std::string> ids;
  for (const auto& m : MigrationsOf(n, role, name, nullptr)) ids.insert(m.value("id", ""));
  return ids;
}

// Target phases in protocol order (Aborted may follow any before Committed).
int TargetPhaseRank(const std::string& phase) {
  static const std::vector<std::string> kOrder = {"Prepared",  "Receiving", "Received",
                                                  "Restoring", "Restored",  "Committed"};
  auto it = std::find(kOrder.begin(), kOrder.end(), phase);
  return it == kOrder.end() ? 100 : static_cast<int>(it - kOrder.begin());
}

class AgentKillE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = ClusterForTest();
    if (c_ == nullptr) return;
    a_ = &c_->node(1);
    b_ = &c_->node(2);
    // A test that failed earlier left nothing armed; say so if it did.
    for (const auto& n : c_->Nodes()) {
      auto fps = HttpGet(n, "/v1/debug/failpoints");
      ASSERT_EQ(fps.status, 200) << n.name << ": " << fps.Describe();
    }
  }

  void TearDown() override {
    if (c_ == nullptr) return;
    // 1. Every agent this test killed runs again (the scope guard).
    if (std::string err = killer_.RestartAll(); !err.empty()) ADD_FAILURE() << err;
    // 2. Nothing stays armed, so a hanging commit proceeds.
    for (const auto& n : c_->Nodes()) {
      for (const char* fp : {"commit.hang", "restore.corrupt-images", "checkpoint.fail"}) {
        (void)HttpDelete(n, std::string("/v1/debug/failpoints/") + fp);
      }
    }
    // 3. The background call and the sampler end.
    if (migration_) {
      auto w = migration_->Await(kMigrateCallTimeout + seconds(10));
      if (!w.ok) ADD_FAILURE() << w.message;
      migration_.reset();
    }
    sampler_.reset();
    if (HasFailure()) DumpDiagnostics();
    // 4. The workloads go, wherever they are (a frozen one is refused until
    //    its migration is resolved: retry for a while).
    for (const auto& name : names_) {
      auto w = WaitFor(
          "workload " + name + " deleted from every node", kRecoverTimeout,
          [&]() -> Observation {
            std::string seen;
            for (const auto& n : c_->Nodes()) {
              auto r = HttpDelete(n, "/v1/workloads/" + name);
              if (r.status != 204 && r.status != 200 && r.status != 404) {
                seen += n.name + ": DELETE " + r.Describe() + "; ";
              }
            }
            std::string left = CheckGoneEverywhere(*c_, name);
            return {seen.empty() && left.empty(), seen + left};
          },
          milliseconds(500));
      EXPECT_TRUE(w.ok) << w.message;
    }
  }

  void DumpDiagnostics() {
    for (const auto& n : c_->Nodes()) std::cerr << c_->AgentLogTail(n, 60) << "\n";
    for (const auto& name : names_) {
      for (const auto& n : c_->Nodes()) {
        auto logs = HttpGet(n, "/v1/workloads/" + name + "/logs");
        if (logs.status == 200) {
          std::string tail =
              logs.body.size() > 2000 ? logs.body.substr(logs.body.size() - 2000) : logs.body;
          std::cerr << "--- log of " << name << " on " << n.name << " (tail) ---\n" << tail << "\n";
        }
        auto ms = HttpGet(n, "/v1/migrations");
        std::cerr << "--- GET /v1/migrations on " << n.name << " ---\n" << ms.Describe() << "\n";
      }
    }
  }

  // Starts the demo on `n` and waits until it ticked a few times. Empty on
  // failure (reported).
  std::string Start(const Node& n, const std::string& name, const std::vector<std::string>& extra) {
    names_.push_back(name);
    std::string err = CreateDemo(n, name, extra);
    EXPECT_EQ(err, "");
    if (!err.empty()) return "";
    auto w = WaitForTick(n, name, 10, kTickTimeout);
    EXPECT_TRUE(w.ok) << w.message;
    return w.ok ? name : "";
  }

  uint64_t LastTick(const Node& n, const std::string& name) {
    std::string err;
    auto log = FetchLog(n, name, &err);
    EXPECT_TRUE(log.has_value()) << err;
    return log && !log->ticks.empty() ? log->ticks.back().tick : 0;
  }

  // Starts the migration of `name` from `from` to `to` in the background,
  // with the sampler watching both containerds.
  void MigrateInBackground(const Node& from, const Node& to, const std::string& name) {
    known_in_ = MigrationIds(to, "target", name);
    sampler_ = std::make_unique<DoubleRunSampler>(c_->Nodes(), name);
    migration_ = std::make_unique<BackgroundMigration>(from, name, to.url);
  }

  // Waits until `to` has an incoming record of this test's migration of
  // `name` in `phase`; fails at once if it went past that phase (the window
  // to kill in was missed). Returns the record.
  json AwaitTargetPhase(const Node& to, const std::string& name, const std::string& phase,
                        milliseconds interval) {
    json found;
    bool overshot = false;
    auto w = WaitFor(
        to.name + "'s incoming record of " + name + " to be " + phase, kPhaseTimeout,
        [&]() -> Observation {
          std::string err;
          auto items = MigrationsOf(to, "target", name, &err);
          if (!err.empty()) return {false, err};
          for (const auto& m : items) {
            if (known_in_.contains(m.value("id", ""))) continue;
            const std::string p = m.value("phase", "");
            if (p == phase) {
              found = m;
              return {true, ""};
            }
            if (TargetPhaseRank(p) > TargetPhaseRank(phase)) {
              found = m;
              overshot = true;
              return {true, ""};
            }
            return {false, "phase " + p};
          }
          if (migration_ && migration_->Done()) {
            overshot = true;  // the call ended before the record appeared
            return {true, ""};
          }
          return {false, "no incoming record yet"};
        },
        interval);
    EXPECT_TRUE(w.ok) << w.message;
    EXPECT_FALSE(overshot) << "missed the window: " << to.name << "'s record went past " << phase
                           << " before the test could act: " << found.dump()
                           << (migration_ && migration_->Done()
                                   ? "\nmigrate call: " + migration_->Reply().Describe()
                                   : "");
    return (w.ok && !overshot) ? found : json();
  }

  // Waits until `n`'s incoming record `id` is Aborted (and returns its error).
  void AwaitTargetAborted(const Node& n, const std::string& name, const std::string& id) {
    auto w =
        WaitFor(n.name + "'s incoming record " + id + " to be Aborted", kRecoverTimeout,
                [&]() -> Observation {
                  std::string err;
                  for (const auto& m : MigrationsOf(n, "target", name, &err)) {
                    if (m.value("id", "") != id) continue;
                    return {m.value("phase", "") == "Aborted", "phase " + m.value("phase", "")};
                  }
                  return {false, err.empty() ? "no record " + id : err};
                });
    EXPECT_TRUE(w.ok) << w.message;
  }

  // The outcome the source journaled for migration `id` (after its restart).
  json AwaitSourceFinal(const Node& n, const std::string& id) {
    json found;
    auto w = WaitFor(
        n.name + "'s outgoing migration " + id + " to end", kRecoverTimeout, [&]() -> Observation {
          auto r = HttpGet(n, "/v1/migrations/" + id, seconds(5));
          json j = r.Json();
          if (r.status != 200 || !j.is_object()) return {false, r.Describe()};
          found = j;
          return {j.value("outcome", "") != "InProgress",
                  "phase " + j.value("phase", "") + " outcome " + j.value("outcome", "")};
        });
    EXPECT_TRUE(w.ok) << w.message;
    return found;
  }

  // Waits until the workload runs exactly on `owner` (agents + containerd).
  void AwaitRunsExactlyOn(const std::string& name, const Node& owner, const std::string& when) {
    auto w = WaitFor("workload " + name + " to run exactly on " + owner.name + " " + when,
                     kRecoverTimeout, [&]() -> Observation {
                       std::string p = CheckRunsExactlyOn(*c_, name, owner);
                       return {p.empty(), p};
                     });
    EXPECT_TRUE(w.ok) << w.message;
  }

  // While one agent is down: what containerd says on both nodes. Expected
  // task status on each ("" = no task) and whether the container may exist.
  std::string CtrState(const std::string& name) {
    std::string s;
    for (const auto& n : c_->Nodes()) {
      auto v = c_->Ctr(n, name);
      s += n.name + ": container=" + (v.container ? "yes" : "no") +
           " task=" + (v.task_status.empty() ? "-" : v.task_status) +
           (v.error.empty() ? "" : " error=" + v.error) + "; ";
    }
    return s;
  }
  void ExpectCtr(const Node& n, const std::string& name, bool container, const std::string& task,
                 const std::string& when) {
    auto v = c_->Ctr(n, name);
    EXPECT_EQ(v.error, "") << n.name << " " << when;
    EXPECT_EQ(v.container, container)
        << n.name << " container of " << name << " " << when << " [" << CtrState(name) << "]";
    EXPECT_EQ(v.task_status, task)
        << n.name << " task of " << name << " " << when << " [" << CtrState(name) << "]";
  }

  // The sampler's verdict: never RUNNING on both nodes.
  void CheckNeverRanTwice(const std::string& step) {
    ASSERT_TRUE(sampler_);
    DoubleRunSampler::Result r = sampler_->Stop();
    std::printf("[ sampler ] %s: %d samples, %s\n", step.c_str(), r.samples, r.transitions.c_str());
    std::fflush(stdout);
    RecordProperty(step + "_sampler_samples", std::to_string(r.samples));
    EXPECT_GT(r.samples, 10) << "the sampler hardly sampled; errors: "
                             << (r.errors.empty() ? "none" : r.errors.front());
    EXPECT_TRUE(r.violations.empty())
        << "the task was RUNNING on both nodes at once (" << r.violations.size()
        << " samples), first: " << (r.violations.empty() ? "" : r.violations.front())
        << "\ntransitions: " << r.transitions;
  }

  // The history the owner serves: started once, ticks 1,2,3,... with no gap
  // or restart, one pid, memory intact; kTicksAfter new ticks after
  // `pre_tick`. Returns the log.
  DemoLog CheckHistory(const Node& owner, const std::string& name, uint64_t pre_tick) {
    auto w = WaitForTick(owner, name, pre_tick + kTicksAfter, kTickTimeout);
    EXPECT_TRUE(w.ok) << w.message;
    std::string err;
    auto log = FetchLog(owner, name, &err);
    if (!log) {
      ADD_FAILURE() << err;
      return {};
    }
    EXPECT_EQ(log->start_lines, 1) << "the demo started more than once (restarted?)";
    EXPECT_EQ(log->corruption_lines, 0) << "the demo reported MEMORY CORRUPTION";
    EXPECT_EQ(log->malformed_lines, 0);
    EXPECT_FALSE(log->ticks.empty());
    if (log->ticks.empty()) return *log;
    EXPECT_EQ(log->ticks.front().tick, 1u)
        << "the log on " << owner.name << " does not start at tick 1";
    EXPECT_EQ(CheckConsecutive(log->ticks), "") << "ticks in the log on " << owner.name;
    EXPECT_GT(log->ticks.back().tick, pre_tick) << "no ticks after the crash";
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

  void Report(const std::string& step, const std::vector<std::pair<std::string, int64_t>>& ms,
              const DemoLog& log, uint64_t pre_tick) {
    Gap g = MaxGap(log.ticks, pre_tick > 5 ? pre_tick - 5 : 0);
    std::string line = "[ timing ] " + step + ":";
    for (const auto& [what, v] : ms) {
      line += " " + what + "=" + std::to_string(v) + "ms";
      RecordProperty(step + "_" + what + "_ms", std::to_string(v));
    }
    line += " largest_tick_gap=" + std::to_string(g.ms) + "ms(after tick " +
            std::to_string(g.after_tick) + ")";
    RecordProperty(step + "_tick_gap_ms", std::to_string(g.ms));
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }

  Cluster* c_ = nullptr;
  const Node* a_ = nullptr;
  const Node* b_ = nullptr;
  std::vector<std::string> names_;
  std::set<std::string> known_in_;  // the target's incoming ids before this migration
  // Destroyed in reverse order: the call and sampler end before the guard
  // (which TearDown runs first anyway) would restart agents.
  AgentKiller killer_;
  std::unique_ptr<DoubleRunSampler> sampler_;
  std::unique_ptr<BackgroundMigration> migration_;
};

// (f) The source agent dies while it streams the checkpoint: the target
// aborts the half-received migration; the restarted source finds Transferring
// in its journal, rolls back and thaws. The workload keeps counting on the
// source, memory intact; the target has nothing.
TEST_F(AgentKillE2E, SourceKilledMidTransferResumesOnSource) {
  const std::string name = Start(*a_, "kill-src-transfer", {"--mem", "512", "--verify-mib", "1"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "after creating " << name;
  const uint64_t pre = LastTick(*a_, name);

  MigrateInBackground(*a_, *b_, name);
  json rec = AwaitTargetPhase(*b_, name, "Receiving", kFastPoll);
  ASSERT_TRUE(rec.is_object()) << "no Receiving record to kill at";
  const std::string id = rec.value("id", "");
  const int64_t receiving_ms = MsSince(migration_->Started());

  auto killed_at = SteadyClock::now();
  ASSERT_EQ(killer_.Kill(*a_), "");
  const int64_t kill_ms = MsSince(migration_->Started());
  // The call dies with its agent.
  auto w = migration_->Await(milliseconds(30'000));
  ASSERT_TRUE(w.ok) << w.message;
  HttpReply call = migration_->Reply();
  EXPECT_EQ(call.status, 0) << "the migrate call answered although its agent was killed: "
                            << call.Describe();
  std::printf("[ call ] migrate call ended with the source agent: %s\n", call.Describe().c_str());

  // Source agent down: the workload is frozen on the source, the target
  // threw its half-received copy away. The dump streamed into pipes the dead
  // agent read: CRIU got EPIPE and ended (PAUSED), or it is still blocked
  // opening its next page pipe (the shim then reports UNKNOWN) until the
  // restarted agent unblocks it. Either way it does not run.
  AwaitTargetAborted(*b_, name, id);
  {
    auto v = c_->Ctr(*a_, name);
    EXPECT_TRUE(v.container) << "while the source agent is down [" << CtrState(name) << "]";
    EXPECT_TRUE(v.task_status == "PAUSED" || v.task_status == "UNKNOWN")
        << "while the source agent is down [" << CtrState(name) << "]";
    std::printf("[ source ] task %s while its agent was down\n", v.task_status.c_str());
  }
  ExpectCtr(*b_, name, false, "", "after the target aborted the half-received migration");
  EXPECT_EQ(HttpGet(*b_, "/v1/workloads/" + name).status, 404);

  ASSERT_EQ(killer_.Start(*a_), "");
  const int64_t down_ms = MsSince(killed_at);
  auto back_at = SteadyClock::now();
  AwaitRunsExactlyOn(name, *a_, "after the source agent restarted");
  const int64_t recover_ms = MsSince(back_at);
  json out = AwaitSourceFinal(*a_, id);
  EXPECT_EQ(out.value("outcome", ""), "RolledBack") << out.dump();
  EXPECT_EQ(out.value("failedPhase", ""), "Transferring") << out.dump();
  EXPECT_TRUE(MigrationIds(*b_, "target", name).contains(id));

  DemoLog log = CheckHistory(*a_, name, pre);
  ASSERT_FALSE(log.ticks.empty());
  EXPECT_EQ(log.ticks.back().mem_mib, 512);
  CheckNeverRanTwice("f");
  Report("f",
         {{"receiving_after", receiving_ms},
          {"killed_at", kill_ms},
          {"agent_down", down_ms},
          {"running_again_after_restart", recover_ms}},
         log, pre);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "at the end";
}

// (g) The source agent dies after the target restored (its copy runs, the
// source's is paused) and before it committed. The restarted source asks the
// target to abort (it does: it never committed, so it kills its copy), then
// thaws its own.
TEST_F(AgentKillE2E, SourceKilledBeforeCommitResumesOnSource) {
  const std::string name = Start(*a_, "kill-src-commit", {"--mem", "64"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "after creating " << name;
  const uint64_t pre = LastTick(*a_, name);

  auto armed = HttpPut(*a_, "/v1/debug/failpoints/commit.hang");
  ASSERT_EQ(armed.status, 200) << armed.Describe();
  MigrateInBackground(*a_, *b_, name);
  json rec = AwaitTargetPhase(*b_, name, "Restored", milliseconds(100));
  ASSERT_TRUE(rec.is_object()) << "no Restored record to kill at";
  const std::string id = rec.value("id", "");
  const int64_t restored_ms = MsSince(migration_->Started());

  // The window: the target's copy is restored but uncommitted (restored
  // stopped: a RUNNING task to containerd whose processes run no instruction
  // until the commit continues them), the source's is paused, the source
  // hangs before its commit.
  ExpectCtr(*a_, name, true, "PAUSED", "while the source hangs before the commit");
  ExpectCtr(*b_, name, true, "RUNNING", "after the target restored");
  auto src = HttpGet(*a_, "/v1/migrations/" + id);
  EXPECT_EQ(src.Json().value("phase", ""), "Committing") << src.Describe();
  EXPECT_FALSE(migration_->Done());

  auto killed_at = SteadyClock::now();
  ASSERT_EQ(killer_.Kill(*a_), "");
  auto w = migration_->Await(milliseconds(30'000));
  ASSERT_TRUE(w.ok) << w.message;
  EXPECT_EQ(migration_->Reply().status, 0)
      << "the migrate call answered although its agent was killed: "
      << migration_->Reply().Describe();
  // Nobody decided yet: the target's copy still restored stopped (RUNNING to
  // containerd), the source's paused.
  std::this_thread::sleep_for(milliseconds(500));
  ExpectCtr(*a_, name, true, "PAUSED", "while the source agent is down");
  ExpectCtr(*b_, name, true, "RUNNING", "while the source agent is down (uncommitted copy)");

  ASSERT_EQ(killer_.Start(*a_), "");
  const int64_t down_ms = MsSince(killed_at);
  auto back_at = SteadyClock::now();
  AwaitRunsExactlyOn(name, *a_, "after the source agent restarted");
  const int64_t recover_ms = MsSince(back_at);
  AwaitTargetAborted(*b_, name, id);
  json out = AwaitSourceFinal(*a_, id);
  EXPECT_EQ(out.value("outcome", ""), "RolledBack") << out.dump();

  DemoLog log = CheckHistory(*a_, name, pre);
  CheckNeverRanTwice("g");
  Report("g",
         {{"restored_after", restored_ms},
          {"agent_down", down_ms},
          {"running_again_after_restart", recover_ms}},
         log, pre);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "at the end";
}

// (h) The target agent dies after it restored, before the commit. Started
// again, it aborts the uncommitted migration and kills its restored copy;
// when the source then asks it to commit, it answers Aborted and the source
// thaws: rolled back.
TEST_F(AgentKillE2E, TargetKilledBeforeCommitRollsBack) {
  const std::string name = Start(*a_, "kill-tgt-commit", {"--mem", "64"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "after creating " << name;
  const uint64_t pre = LastTick(*a_, name);

  auto armed = HttpPut(*a_, "/v1/debug/failpoints/commit.hang");
  ASSERT_EQ(armed.status, 200) << armed.Describe();
  MigrateInBackground(*a_, *b_, name);
  json rec = AwaitTargetPhase(*b_, name, "Restored", milliseconds(100));
  ASSERT_TRUE(rec.is_object()) << "no Restored record to kill at";
  const std::string id = rec.value("id", "");
  const int64_t restored_ms = MsSince(migration_->Started());
  ExpectCtr(*a_, name, true, "PAUSED", "while the source hangs before the commit");
  ExpectCtr(*b_, name, true, "RUNNING", "after the target restored");

  auto killed_at = SteadyClock::now();
  ASSERT_EQ(killer_.Kill(*b_), "");
  // containerd keeps the uncommitted copy (restored stopped: a RUNNING task
  // whose processes wait for the commit) while its agent is down.
  ExpectCtr(*b_, name, true, "RUNNING", "while the target agent is down");
  ExpectCtr(*a_, name, true, "PAUSED", "while the target agent is down");

  ASSERT_EQ(killer_.Start(*b_), "");
  const int64_t down_ms = MsSince(killed_at);
  // On start it aborted the migration and removed its copy.
  AwaitTargetAborted(*b_, name, id);
  ExpectCtr(*b_, name, false, "", "after the restarted target aborted");
  EXPECT_EQ(HttpGet(*b_, "/v1/workloads/" + name).status, 404);
  // The source still waits before its commit, frozen.
  ExpectCtr(*a_, name, true, "PAUSED", "before the commit is released");
  EXPECT_FALSE(migration_->Done()) << migration_->Reply().Describe();

  auto released_at = SteadyClock::now();
  auto disarmed = HttpDelete(*a_, "/v1/debug/failpoints/commit.hang");
  ASSERT_EQ(disarmed.status, 200) << disarmed.Describe();
  auto w = migration_->Await(milliseconds(60'000));
  ASSERT_TRUE(w.ok) << w.message;
  const int64_t answer_ms = MsSince(released_at);
  HttpReply call = migration_->Reply();
  json report = call.Json();
  EXPECT_NE(call.status, 200) << call.Describe();
  EXPECT_NE(call.status, 0) << call.Describe();
  ASSERT_TRUE(report.is_object()) << "no JSON report: " << call.Describe();
  EXPECT_EQ(report.value("outcome", ""), "RolledBack") << call.body;
  EXPECT_EQ(report.value("id", ""), id) << call.body;
  std::printf("[ rollback ] %s: failed in %s: %s\n", name.c_str(),
              report.value("failedPhase", "").c_str(), report.value("message", "").c_str());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "after the rolled-back migration";

  DemoLog log = CheckHistory(*a_, name, pre);
  CheckNeverRanTwice("h");
  Report("h",
         {{"restored_after", restored_ms},
          {"agent_down", down_ms},
          {"call_answered_after_release", answer_ms}},
         log, pre);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "at the end";
}

// (i) The target agent dies while it receives: the source's send fails, it
// rolls back (the target cannot even be told) and thaws. Started again, the
// target cleans up its half-prepared container.
TEST_F(AgentKillE2E, TargetKilledMidTransferRollsBack) {
  const std::string name = Start(*a_, "kill-tgt-transfer", {"--mem", "512", "--verify-mib", "1"});
  ASSERT_FALSE(name.empty());
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "after creating " << name;
  const uint64_t pre = LastTick(*a_, name);

  MigrateInBackground(*a_, *b_, name);
  json rec = AwaitTargetPhase(*b_, name, "Receiving", kFastPoll);
  ASSERT_TRUE(rec.is_object()) << "no Receiving record to kill at";
  const std::string id = rec.value("id", "");
  const int64_t receiving_ms = MsSince(migration_->Started());

  auto killed_at = SteadyClock::now();
  ASSERT_EQ(killer_.Kill(*b_), "");
  auto w = migration_->Await(milliseconds(90'000));
  ASSERT_TRUE(w.ok) << w.message;
  const int64_t answer_ms = MsSince(killed_at);
  HttpReply call = migration_->Reply();
  json report = call.Json();
  EXPECT_NE(call.status, 200) << call.Describe();
  EXPECT_NE(call.status, 0) << call.Describe();
  ASSERT_TRUE(report.is_object()) << "no JSON report: " << call.Describe();
  EXPECT_EQ(report.value("outcome", ""), "RolledBack") << call.body;
  EXPECT_EQ(report.value("failedPhase", ""), "Transferring") << call.body;
  EXPECT_EQ(report.value("id", ""), id) << call.body;
  std::printf("[ rollback ] %s: failed in %s: %s\n", name.c_str(),
              report.value("failedPhase", "").c_str(), report.value("message", "").c_str());

  // Target agent down: the source runs it again; the target's containerd may
  // still hold the half-prepared container, but no task.
  auto src = HttpGet(*a_, "/v1/workloads/" + name);
  EXPECT_EQ(src.status, 200) << src.Describe();
  EXPECT_EQ(src.Json().value("state", ""), "running") << src.Describe();
  EXPECT_EQ(src.Json().value("task", ""), "running") << src.Describe();
  ExpectCtr(*a_, name, true, "RUNNING", "after the rollback, target agent down");
  EXPECT_EQ(TaskOf(*b_, name).status, "") << "a task on the target while its agent is down";
  const bool partial_left = c_->Ctr(*b_, name).container;

  ASSERT_EQ(killer_.Start(*b_), "");
  const int64_t down_ms = MsSince(killed_at);
  AwaitTargetAborted(*b_, name, id);
  AwaitRunsExactlyOn(name, *a_, "after the target agent restarted");

  DemoLog log = CheckHistory(*a_, name, pre);
  ASSERT_FALSE(log.ticks.empty());
  EXPECT_EQ(log.ticks.back().mem_mib, 512);
  CheckNeverRanTwice("i");
  std::printf("[ target ] the half-prepared container was %s while the target agent was down\n",
              partial_left ? "still there" : "already gone");
  Report("i",
         {{"receiving_after", receiving_ms},
          {"call_answered_after_kill", answer_ms},
          {"agent_down", down_ms}},
         log, pre);
  ASSERT_EQ(CheckRunsExactlyOn(*c_, name, *a_), "") << "at the end";
}

// Bounded intake (issue 11): node2 takes at most 2 incoming migrations at
// once. Two are held on the source before their restore (failpoint
// restore.hang), so both hold node2's slots; a third is answered busy (503,
// Retry-After) and its source waits and asks again; once the two are let go
// all three succeed, each workload running exactly once on node2.
TEST_F(AgentKillE2E, ThirdConcurrentIncomingMigrationWaitsThenSucceeds) {
  const std::vector<std::string> names = {"intake-1", "intake-2", "intake-3"};
  for (const auto& name : names) ASSERT_FALSE(Start(*a_, name, {"--mem", "16"}).empty());
  auto busy_count = [&]() -> double {
    auto m = HttpGet(*b_, "/metrics");
    const std::string key = "reason=\"busy\"} ";
    const auto at = m.body.find(key);
    return at == std::string::npos ? 0 : std::atof(m.body.c_str() + at + key.size());
  };
  const double busy_before = busy_count();
  auto armed = HttpPut(*a_, "/v1/debug/failpoints/restore.hang");
  ASSERT_EQ(armed.status, 200) << armed.Describe();
  struct Disarm {
    Endpoint agent;
    ~Disarm() { (void)HttpDelete(agent, "/v1/debug/failpoints/restore.hang"); }
  } disarm{*a_};
  BackgroundMigration first(*a_, names[0], b_->url);
  BackgroundMigration second(*a_, names[1], b_->url);
  for (int k = 0; k < 2; ++k) (void)AwaitTargetPhase(*b_, names[k], "Received", milliseconds(50));
  BackgroundMigration third(*a_, names[2], b_->url);
  auto refused =
      WaitFor("node2 to answer the third migration busy", seconds(30), [&]() -> Observation {
        const double now = busy_count();
        return {now > busy_before, "busy refusals: " + std::to_string(now)};
      });
  EXPECT_TRUE(refused.ok) << refused.message;
  EXPECT_FALSE(third.Done()) << "the third call returned while node2 was full: "
                             << third.Reply().Describe();
  (void)HttpDelete(*a_, "/v1/debug/failpoints/restore.hang");
  for (BackgroundMigration* m : {&first, &second, &third}) {
    ASSERT_TRUE(m->Await(milliseconds(180'000)).ok);
    EXPECT_EQ(m->Reply().status, 200) << m->Reply().Describe();
  }
  for (const auto& name : names) EXPECT_EQ(CheckRunsExactlyOn(*c_, name, *b_), "") << name;
}

}  // namespace
}  // namespace kmosix::e2e
