// The agent over a real containerd (a private daemon, runc; issue 13, hole
// 3): a workload whose process is killed with SIGKILL behind the agent's
// back is started again by the agent's reconcile, counted once, and runs
// exactly once (one RUNNING task in containerd). Needs root, containerd and
// runc; skips loudly without them.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <regex>
#include <sstream>
#include <thread>

#include "agent.h"
#include "fakes/fake_transport.h"
#include "kmosix/stop_and_copy.h"
#include "private_containerd.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using testing::FakeTransport;
using testing::PrivateContainerd;
using testing::RunCommand;
using testing::WaitFor;

constexpr char kImage[] = "kmosix.test/busybox:latest";

// A live process (a zombie waiting for its reaper is dead).
bool Alive(uint32_t pid) {
  if (pid == 0 || ::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  const std::string stat = testing::ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

class AgentContainerdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = testing::MissingCapability();
    if (!missing.empty()) GTEST_SKIP() << "CONTAINERD INTEGRATION SKIPPED: " << missing;
    node_ = std::make_unique<PrivateContainerd>("agent");
    std::string err = node_->Start();
    if (err.empty()) err = node_->ImportTestImage(kImage);
    ASSERT_TRUE(err.empty()) << err << "\n" << node_->DaemonLogTail();
    runtime_ = node_->NewRuntime();
    engine_ = std::make_unique<StopAndCopyEngine>(*runtime_, clock_);
    AgentOptions opts;
    opts.node = "node1";
    opts.advertise_url = "http://127.0.0.1:1";
    opts.state_dir = node_->dir() + "/agent-state";
    opts.scratch_dir = node_->dir() + "/agent-scratch";
    opts.reconcile_interval = std::chrono::milliseconds(0);  // every Tick
    agent_ =
        std::make_unique<Agent>(opts, *runtime_, *engine_, transport_, clock_, random_, nullptr);
    ASSERT_TRUE(agent_->Start().ok());
  }
  void TearDown() override {
    agent_.reset();
    if (node_) node_->Stop();
  }
  // The tasks containerd lists in the agent's namespace, as `ctr` sees them:
  // "<id> <pid> <status>" lines.
  std::vector<std::string> CtrTasks() {
    std::string out;
    RunCommand(
        "ctr --address " + node_->socket() + " -n " + testing::kDefaultNamespace + " tasks ls 2>&1",
        &out);
    std::vector<std::string> rows;
    std::istringstream in(out);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      if (!line.empty()) rows.push_back(line);
    }
    return rows;
  }

  SystemClock clock_;
  SystemRandom random_;
  FakeTransport transport_{nullptr};
  std::unique_ptr<PrivateContainerd> node_;
  std::unique_ptr<ContainerdRuntime> runtime_;
  std::unique_ptr<StopAndCopyEngine> engine_;
  std::unique_ptr<Agent> agent_;
};

TEST_F(AgentContainerdTest, AWorkloadKilledBehindTheAgentsBackRunsAgainExactlyOnce) {
  api::WorkloadSpec spec;
  spec.name = "victim";
  spec.image = kImage;
  spec.args = {"/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"};
  auto created = agent_->CreateWorkload(spec);
  ASSERT_TRUE(created.ok()) << created.status().ToString() << "\n" << node_->DaemonLogTail();
  const uint32_t first_pid = created->pid;
  ASSERT_TRUE(Alive(first_pid));

  ASSERT_EQ(::kill(static_cast<pid_t>(first_pid), SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto info = runtime_->Inspect("victim");
        return info.ok() && info->state == TaskState::kStopped;
      },
      std::chrono::seconds(20)))
      << "containerd never saw the task stop";
  // Until the agent's next round it is seen as dead, never as running.
  auto before = agent_->GetWorkload("victim");
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->task, "stopped");
  EXPECT_EQ(before->exit_status, std::optional<uint32_t>(137));

  agent_->Tick();
  auto after = agent_->GetWorkload("victim");
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->state, "running") << after->last_restart_reason;
  EXPECT_EQ(after->task, "running");
  EXPECT_EQ(after->restarts, 1);
  EXPECT_NE(after->last_restart_reason.find("137"), std::string::npos)
      << after->last_restart_reason;
  EXPECT_NE(after->pid, first_pid);
  EXPECT_TRUE(Alive(after->pid));
  EXPECT_FALSE(Alive(first_pid));

  // More rounds change nothing: it is started once.
  for (int i = 0; i < 3; ++i) agent_->Tick();
  auto later = agent_->GetWorkload("victim");
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->restarts, 1);
  EXPECT_EQ(later->pid, after->pid);

  // One container, one RUNNING task in containerd: the new one.
  auto names = runtime_->ListContainers();
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  EXPECT_EQ(*names, std::vector<std::string>{"victim"});
  std::vector<std::string> tasks = CtrTasks();
  ASSERT_EQ(tasks.size(), 1u) << ::testing::PrintToString(tasks);
  EXPECT_TRUE(std::regex_search(tasks[0],
                                std::regex("^victim +" + std::to_string(after->pid) + " +RUNNING")))
      << tasks[0];
  // It runs its program again, appending to the same log.
  const std::string log = node_->dir() + "/agent-state/logs/victim.log";
  EXPECT_TRUE(WaitFor(
      [&] {
        std::string text = testing::ReadFile(log);
        size_t first = text.find("tick 1\n");
        return first != std::string::npos && text.find("tick 1\n", first + 1) != std::string::npos;
      },
      std::chrono::seconds(10)))
      << testing::ReadFile(log);

  EXPECT_TRUE(agent_->DeleteWorkload("victim").ok());
  EXPECT_TRUE(CtrTasks().empty());
}

// The node rebooted (or its containerd died with its shims): the container
// is still there, its task is not. The agent starting afterwards starts it
// again, once.
TEST_F(AgentContainerdTest, AfterARebootTheAgentStartsItsWorkloadAgainExactlyOnce) {
  api::WorkloadSpec spec;
  spec.name = "survivor";
  spec.image = kImage;
  spec.args = {"/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"};
  auto created = agent_->CreateWorkload(spec);
  ASSERT_TRUE(created.ok()) << created.status().ToString() << "\n" << node_->DaemonLogTail();
  const uint32_t first_pid = created->pid;
  const AgentOptions opts = agent_->Options();
  agent_.reset();
  engine_.reset();
  runtime_.reset();

  std::string err = node_->CrashAndRestart();
  ASSERT_TRUE(err.empty()) << err;
  EXPECT_FALSE(Alive(first_pid));
  runtime_ = node_->NewRuntime();
  auto info = runtime_->Inspect("survivor");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ASSERT_EQ(info->state, TaskState::kNone) << "the container stays, its task is gone";

  engine_ = std::make_unique<StopAndCopyEngine>(*runtime_, clock_);
  agent_ = std::make_unique<Agent>(opts, *runtime_, *engine_, transport_, clock_, random_, nullptr);
  ASSERT_TRUE(agent_->Start().ok());
  auto after = agent_->GetWorkload("survivor");
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->state, "running") << after->last_restart_reason;
  EXPECT_EQ(after->task, "running");
  EXPECT_EQ(after->restarts, 1);
  EXPECT_NE(after->last_restart_reason.find("task is gone"), std::string::npos)
      << after->last_restart_reason;
  EXPECT_TRUE(Alive(after->pid));
  for (int i = 0; i < 3; ++i) agent_->Tick();
  EXPECT_EQ(agent_->GetWorkload("survivor")->restarts, 1);
  std::vector<std::string> tasks = CtrTasks();
  ASSERT_EQ(tasks.size(), 1u) << ::testing::PrintToString(tasks);
  EXPECT_TRUE(std::regex_search(
      tasks[0], std::regex("^survivor +" + std::to_string(after->pid) + " +RUNNING")))
      << tasks[0];
  EXPECT_TRUE(agent_->DeleteWorkload("survivor").ok());
}

// The real runtime, whose Delete can be made to fail as with containerd
// down (the fault soak's B3: killed while a target restored).
class DeleteFailsWhileDown : public ContainerRuntime {
 public:
  explicit DeleteFailsWhileDown(ContainerRuntime& real) : real_(real) {}
  std::atomic<bool> down{false};

  std::string NodeName() const override { return real_.NodeName(); }
  Status ImageExists(const std::string& image) override { return real_.ImageExists(image); }
  StatusOr<std::vector<std::string>> ListImages() override { return real_.ListImages(); }
  Status CreateContainer(const ContainerSpec& spec) override { return real_.CreateContainer(spec); }
  Status StartTask(const std::string& name) override { return real_.StartTask(name); }
  StatusOr<TaskInfo> Inspect(const std::string& name) override { return real_.Inspect(name); }
  StatusOr<std::vector<std::string>> ListContainers() override { return real_.ListContainers(); }
  Status Pause(const std::string& name) override { return real_.Pause(name); }
  Status Resume(const std::string& name) override { return real_.Resume(name); }
  Status Delete(const std::string& name) override {
    if (down) return RetryError("delete " + name + ": containerd.sock: Connection refused");
    return real_.Delete(name);
  }
  StatusOr<std::string> WritableLayerDir(const std::string& name) override {
    return real_.WritableLayerDir(name);
  }
  Status CheckpointTask(const std::string& name, const CheckpointRequest& req) override {
    return real_.CheckpointTask(name, req);
  }
  Status RestoreTask(const std::string& name, const RestoreRequest& req) override {
    return real_.RestoreTask(name, req);
  }
  Status Continue(const std::string& name) override { return real_.Continue(name); }

 private:
  ContainerRuntime& real_;
};

// B3 over a real containerd: an incoming migration aborted while its discard
// fails leaves its container in containerd; the agent's upkeep removes it
// once containerd answers again, and the next migration of that workload to
// this node is prepared (it failed "container ... already exists" for good).
TEST_F(AgentContainerdTest, WhatAFailedDiscardLeftIsRemovedAndTheNextMigrationIsTaken) {
  const AgentOptions opts = agent_->Options();
  agent_.reset();
  DeleteFailsWhileDown flaky(*runtime_);
  StopAndCopyEngine engine(flaky, clock_);
  agent_ = std::make_unique<Agent>(opts, flaky, engine, transport_, clock_, random_, nullptr);
  ASSERT_TRUE(agent_->Start().ok());
  MigrationOffer offer;
  offer.id = "m-b3-1";
  offer.source_node = "node0";
  offer.source_url = "http://127.0.0.1:2";
  offer.spec.name = "b3";
  offer.spec.image = kImage;
  offer.spec.args = {"/bin/sh", "-c", "exec sleep 3600"};
  Status s = agent_->Target().Prepare(offer);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << node_->DaemonLogTail();
  ASSERT_TRUE(runtime_->Inspect("b3").ok()) << "Prepare made no container";
  flaky.down = true;
  auto aborted = agent_->Target().Abort(offer.id);
  ASSERT_TRUE(aborted.ok()) << aborted.status().ToString();
  EXPECT_EQ(*aborted, TargetPhase::kAborted);
  EXPECT_TRUE(runtime_->Inspect("b3").ok()) << "nothing was left: the fault did not happen";
  flaky.down = false;
  // The upkeep tries again every few seconds.
  EXPECT_TRUE(WaitFor(
      [&] {
        agent_->Tick();
        return runtime_->Inspect("b3").status().code() == Code::kNotFound;
      },
      std::chrono::seconds(30)))
      << "the leftover container is still there";
  EXPECT_FALSE(fs::exists(opts.scratch_dir + "/in-" + offer.id));
  offer.id = "m-b3-2";
  s = agent_->Target().Prepare(offer);
  EXPECT_TRUE(s.ok()) << s.ToString();
  aborted = agent_->Target().Abort(offer.id);
  ASSERT_TRUE(aborted.ok()) << aborted.status().ToString();
  EXPECT_EQ(runtime_->Inspect("b3").status().code(), Code::kNotFound);
  agent_.reset();
}

}  // namespace
}  // namespace kmosix::agent
