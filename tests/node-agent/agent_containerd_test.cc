// The agent over a real containerd (a private daemon, runc; issue 13, hole
// 3): a workload whose process is killed with SIGKILL behind the agent's
// back is started again by the agent's reconcile, counted once, and runs
// exactly once (one RUNNING task in containerd). Needs root, containerd and
// runc; skips loudly without them.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

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

}  // namespace
}  // namespace kmosix::agent
