// The agent restarts a workload whose task is gone (issue 13, hole 3): after
// a node reboot or a containerd restart the container is still there but its
// task is not (FakeRuntime::LoseTask), after a crash or an OOM kill the task
// is stopped with a non-zero status (FakeRuntime::EndTask). Such a workload
// must not be reported running: the agent's reconcile (Start, Tick) starts
// it afresh from its image, counts the restart and says why, backs off on a
// crash loop, leaves a clean exit (status 0) alone, and never touches a
// workload a migration owns (leaving as a source, arriving as a target).
// Fake clock, fake runtime: nothing here waits for real time.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "kmosix/files.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeTransport;

constexpr char kImage[] = "kmosix.local/demo:latest";

api::WorkloadSpec Spec(const std::string& name) {
  api::WorkloadSpec s;
  s.name = name;
  s.image = kImage;
  s.args = {"/bin/tick"};
  return s;
}

class AgentRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-restart-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    runtime_.AddImage(kImage);
    transport_.SetNotAnAgent();
    agent_ = NewAgent();
    ASSERT_TRUE(agent_->Start().ok());
  }
  void TearDown() override {
    agent_.reset();
    fs::remove_all(root_);
  }
  AgentOptions Options() {
    AgentOptions opts;
    opts.node = "node1";
    opts.advertise_url = "http://node1:7700";
    opts.state_dir = root_ / "state";
    opts.scratch_dir = root_ / "scratch";
    return opts;
  }
  std::unique_ptr<Agent> NewAgent() {
    return std::make_unique<Agent>(Options(), runtime_, engine_, transport_, clock_, random_,
                                   nullptr);
  }
  // One upkeep round, a reconcile period later.
  void TickLater(Clock::Duration d = std::chrono::seconds(2)) {
    clock_.Advance(d);
    agent_->Tick();
  }
  api::AgentWorkloadView View(const std::string& name) {
    auto v = agent_->GetWorkload(name);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    return v.ok() ? *v : api::AgentWorkloadView{};
  }
  size_t Containers() {
    auto names = runtime_.ListContainers();
    return names.ok() ? names->size() : 0;
  }

  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  FakeRuntime runtime_{"node1", "/tmp/kmx-restart-layers-" + std::to_string(::getpid())};
  StopAndCopyEngine engine_{runtime_, clock_};
  FakeTransport transport_{nullptr};
  std::unique_ptr<Agent> agent_;
};

TEST_F(AgentRestartTest, ATaskThatVanishedIsStartedAgainOnceAndCounted) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  const uint32_t first_pid = View("w1").pid;
  runtime_.LoseTask("w1");  // say containerd restarted without its shims
  TickLater();
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  api::AgentWorkloadView v = View("w1");
  EXPECT_EQ(v.state, "running");
  EXPECT_EQ(v.task, "running");
  EXPECT_NE(v.pid, first_pid);
  EXPECT_EQ(v.restarts, 1);
  EXPECT_NE(v.last_restart_reason.find("task"), std::string::npos) << v.last_restart_reason;
  EXPECT_EQ(v.last_restart_ms, clock_.WallMillis());
  EXPECT_EQ(Containers(), 1u);
  // Once running again, further rounds leave it alone.
  const int starts = runtime_.Calls("StartTask");
  TickLater();
  TickLater();
  EXPECT_EQ(runtime_.Calls("StartTask"), starts);
  EXPECT_EQ(View("w1").restarts, 1);
}

TEST_F(AgentRestartTest, AnAgentStartingAfterARebootRestartsWhatItRanAndRemembersTheCount) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  agent_.reset();
  runtime_.LoseTask("w1");  // the node rebooted: containers stay, tasks do not
  agent_ = NewAgent();
  ASSERT_TRUE(agent_->Start().ok());
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 1);
  // The count is part of the workload's record.
  agent_.reset();
  agent_ = NewAgent();
  ASSERT_TRUE(agent_->Start().ok());
  EXPECT_EQ(View("w1").restarts, 1);
  EXPECT_EQ(View("w1").state, "running");
}

TEST_F(AgentRestartTest, ACrashLoopBacksOff) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  runtime_.EndTask("w1", 137);  // SIGKILL, e.g. the OOM killer
  TickLater();
  ASSERT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 1);
  EXPECT_NE(View("w1").last_restart_reason.find("137"), std::string::npos);

  // It crashes again at once: the next start waits 10 s, then 20 s.
  runtime_.EndTask("w1", 1);
  TickLater(std::chrono::seconds(1));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped);
  api::AgentWorkloadView v = View("w1");
  EXPECT_EQ(v.state, "restarting") << "a crashed workload is not reported running";
  EXPECT_EQ(v.restarts, 1);
  TickLater(std::chrono::seconds(5));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped);
  TickLater(std::chrono::seconds(5));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 2);

  runtime_.EndTask("w1", 1);
  TickLater(std::chrono::seconds(1));
  TickLater(std::chrono::seconds(15));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped) << "the second back-off is 20 s";
  TickLater(std::chrono::seconds(5));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 3);
  EXPECT_EQ(Containers(), 1u);

  // Running for longer than the reset period forgives the crash loop.
  TickLater(std::chrono::minutes(11));
  runtime_.EndTask("w1", 1);
  TickLater(std::chrono::seconds(1));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 4);
}

// The back-off is part of the workload's record: a crash-looping workload is
// not restarted any sooner because its agent restarted (before: a
// "restarting" workload started at once at the agent's Start, and its crash
// streak began again at 0, so the next back-off was 10 s instead of 20 s).
TEST_F(AgentRestartTest, AnAgentRestartKeepsTheCrashLoopBackOff) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  runtime_.EndTask("w1", 137);
  TickLater();
  ASSERT_EQ(View("w1").restarts, 1);
  runtime_.EndTask("w1", 1);  // again at once: the next start waits 10 s
  TickLater(std::chrono::seconds(1));
  ASSERT_EQ(View("w1").state, "restarting");
  const int starts = runtime_.Calls("StartTask");

  // The agent restarts 2 s into the back-off.
  clock_.Advance(std::chrono::seconds(2));
  agent_.reset();
  agent_ = NewAgent();
  ASSERT_TRUE(agent_->Start().ok());
  EXPECT_EQ(runtime_.Calls("StartTask"), starts) << "restarted at once by the agent's Start";
  EXPECT_EQ(View("w1").state, "restarting");
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped);
  TickLater(std::chrono::seconds(6));  // 8 s of the 10
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped);
  TickLater(std::chrono::seconds(3));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 2);

  // Restarted again while it runs: the streak stays, the next back-off is
  // 20 s.
  agent_.reset();
  agent_ = NewAgent();
  ASSERT_TRUE(agent_->Start().ok());
  runtime_.EndTask("w1", 1);
  TickLater(std::chrono::seconds(1));
  TickLater(std::chrono::seconds(15));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped) << "the crash streak was forgotten";
  TickLater(std::chrono::seconds(5));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 3);
}

TEST_F(AgentRestartTest, ACleanExitIsNotRestarted) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  const int starts = runtime_.Calls("StartTask");
  runtime_.EndTask("w1", 0);  // a batch job that finished
  TickLater();
  TickLater(std::chrono::minutes(5));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kStopped);
  EXPECT_EQ(runtime_.Calls("StartTask"), starts);
  api::AgentWorkloadView v = View("w1");
  EXPECT_EQ(v.state, "exited");
  EXPECT_EQ(v.restarts, 0);
  EXPECT_EQ(v.exit_status, std::optional<uint32_t>(0));
  // An exited workload can still be deleted.
  EXPECT_TRUE(agent_->DeleteWorkload("w1").ok());
}

TEST_F(AgentRestartTest, AFailedRestartIsRetriedWithBackoffAndNothingIsLeftBehind) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  runtime_.LoseTask("w1");
  runtime_.Fail("StartTask", FailedError("runc: exec failed"));
  TickLater();
  api::AgentWorkloadView v = View("w1");
  EXPECT_EQ(v.state, "restarting");
  EXPECT_NE(v.last_restart_reason.find("runc: exec failed"), std::string::npos)
      << v.last_restart_reason;
  runtime_.Fail("StartTask", Status::Ok());
  TickLater(std::chrono::seconds(1));
  EXPECT_NE(runtime_.State("w1"), TaskState::kRunning) << "backing off";
  TickLater(std::chrono::seconds(10));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").state, "running");
  EXPECT_EQ(Containers(), 1u);
}

TEST_F(AgentRestartTest, ContainerdUnreachableChangesNothing) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  runtime_.Fail("Inspect", RetryError("containerd unreachable"));
  const int starts = runtime_.Calls("StartTask");
  TickLater();
  EXPECT_EQ(runtime_.Calls("StartTask"), starts);
  EXPECT_EQ(runtime_.Calls("Delete"), 0);
  runtime_.Fail("Inspect", Status::Ok());
  EXPECT_EQ(View("w1").restarts, 0);
  EXPECT_EQ(View("w1").state, "running");
}

// The agent died after the target committed and the source released its
// copy, before the journal said Succeeded: the record still says running,
// the container is gone. The unfinished journal is the migration's to settle
// (the target runs the workload): never started again here.
TEST_F(AgentRestartTest, AWorkloadWhoseMigrationIsUnresolvedIsNeverRestarted) {
  ASSERT_TRUE(agent_->CreateWorkload(Spec("w1")).ok());
  agent_.reset();
  ASSERT_TRUE(runtime_.Delete("w1").ok());
  auto record = ReadFile((root_ / "state" / "workloads" / "w1.json").string());
  ASSERT_TRUE(record.ok());
  nlohmann::json journal = nlohmann::json::parse(*record);
  MigrationReport r;
  r.id = "m-1";
  r.workload = "w1";
  r.source_node = "node1";
  r.target_node = "node2";
  r.target_url = "http://node2:7700";
  r.phase = MigrationPhase::kCommitting;
  r.started_ms = clock_.WallMillis();
  journal = {{"spec", journal["spec"]},
             {"logPath", journal["logPath"]},
             {"report", MigrationReportToJson(r)}};
  ASSERT_TRUE(WriteFileAtomic((root_ / "state" / "migrations" / "out" / "m-1.json").string(),
                              journal.dump())
                  .ok());
  transport_.Down(true);  // the target cannot be asked yet
  const int starts = runtime_.Calls("StartTask");
  agent_ = NewAgent();
  ASSERT_TRUE(agent_->Start().ok());
  EXPECT_FALSE(runtime_.Has("w1")) << "a second copy of a workload the target runs";
  TickLater();
  TickLater(std::chrono::minutes(1));
  EXPECT_FALSE(runtime_.Has("w1"));
  EXPECT_EQ(runtime_.Calls("StartTask"), starts);
}

// While w1 migrates from node0 to node1, the source's task vanishes and the
// target holds a container without a task (it is being restored): both
// agents' reconcile rounds must leave them to the migration. It then ends
// with exactly one copy, on the target.
TEST_F(AgentRestartTest, AWorkloadInAMigrationIsTheMigrationsBusiness) {
  FakeRuntime runtime0{"node0", "/tmp/kmx-restart-layers-" + std::to_string(::getpid())};
  runtime0.AddImage(kImage);
  StopAndCopyEngine engine0{runtime0, clock_};

  // Calls Tick on both agents (from another thread: the migration's thread
  // holds the source workload's lock) right before the restore.
  class TickingTransport : public Transport {
   public:
    TickingTransport(MigrationTarget* target, std::function<void()> before_restore)
        : inner_(target), before_restore_(std::move(before_restore)) {}
    StatusOr<PeerInfo> Hello(const std::string& t) override { return inner_.Hello(t); }
    Status Prepare(const std::string& t, const MigrationOffer& o) override {
      return inner_.Prepare(t, o);
    }
    StatusOr<TransferStats> Send(const std::string& t, const std::string& id,
                                 const std::vector<Section>& s) override {
      return inner_.Send(t, id, s);
    }
    StatusOr<RestoreReport> Restore(const std::string& t, const std::string& id) override {
      before_restore_();
      return inner_.Restore(t, id);
    }
    StatusOr<TargetPhase> Commit(const std::string& t, const std::string& id) override {
      return inner_.Commit(t, id);
    }
    StatusOr<TargetPhase> Abort(const std::string& t, const std::string& id) override {
      return inner_.Abort(t, id);
    }
    StatusOr<TargetPhase> Query(const std::string& t, const std::string& id) override {
      return inner_.Query(t, id);
    }

   private:
    FakeTransport inner_;
    std::function<void()> before_restore_;
  };

  std::unique_ptr<Agent> node0;
  std::string source_state, target_state;
  TaskState target_task = TaskState::kUnknown;
  TickingTransport to_node1(&agent_->Target(), [&] {
    runtime0.LoseTask("w1");  // the frozen source's task is gone
    target_task = runtime_.State("w1");
    std::thread ticker([&] {
      clock_.Advance(std::chrono::seconds(2));
      node0->Tick();
      agent_->Tick();
    });
    ticker.join();
    source_state = node0->Local("w1", false)->state;
    target_state = agent_->Local("w1", false)->state;
  });
  AgentOptions opts = Options();
  opts.node = "node0";
  opts.advertise_url = "http://node0:7700";
  opts.state_dir = root_ / "state0";
  opts.scratch_dir = root_ / "scratch0";
  node0 = std::make_unique<Agent>(opts, runtime0, engine0, to_node1, clock_, random_, nullptr);
  ASSERT_TRUE(node0->Start().ok());
  ASSERT_TRUE(node0->CreateWorkload(Spec("w1")).ok());
  const int source_starts = runtime0.Calls("StartTask");
  const int target_starts = runtime_.Calls("StartTask");

  auto report = node0->Migrate("w1", {"http://node1:7700"});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(target_task, TaskState::kNone) << "the target's container waited for its restore";
  EXPECT_EQ(source_state, "migrating");
  EXPECT_EQ(target_state, "incoming");
  EXPECT_EQ(runtime0.Calls("StartTask"), source_starts) << "the source was restarted";
  EXPECT_EQ(runtime_.Calls("StartTask"), target_starts) << "the target was started fresh";
  EXPECT_EQ(report->phase, MigrationPhase::kSucceeded) << report->error.ToString();
  EXPECT_FALSE(runtime0.Has("w1"));
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  EXPECT_EQ(View("w1").restarts, 0);
}

}  // namespace
}  // namespace kmosix::agent
