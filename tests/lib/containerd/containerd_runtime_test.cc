// Integration tests of ContainerdRuntime against private containerd daemons
// (one per simulated node). Needs root, containerd 1.6, runc, CRIU >= 4 and
// busybox-static; skips loudly when something is missing.
#include "containerd/containerd_runtime.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "private_containerd.h"
#include "runtime_conformance.h"

namespace kmosix::testing {
namespace {

constexpr char kImage[] = "kmosix.test/busybox:latest";

// Daemons shared by the tests of one process, started on first use.
class Nodes {
 public:
  static Nodes& Get() {
    static Nodes* n = new Nodes;
    return *n;
  }
  // Returns the node or sets *error.
  PrivateContainerd* Node(const std::string& tag, std::string* error) {
    auto& slot = tag == "dst" ? dst_ : src_;
    if (slot) return slot.get();
    if (!start_error_[tag].empty()) {
      *error = start_error_[tag];
      return nullptr;
    }
    auto node = std::make_unique<PrivateContainerd>(tag);
    std::string err = node->Start();
    if (err.empty()) err = node->ImportTestImage(kImage);
    if (!err.empty()) {
      start_error_[tag] = "private containerd '" + tag + "': " + err;
      *error = start_error_[tag];
      node->Stop();
      return nullptr;
    }
    slot = std::move(node);
    return slot.get();
  }
  void StopAll() {
    src_.reset();
    dst_.reset();
  }

 private:
  std::unique_ptr<PrivateContainerd> src_, dst_;
  std::map<std::string, std::string> start_error_;
};

class StopNodesEnv : public ::testing::Environment {
 public:
  void TearDown() override { Nodes::Get().StopAll(); }
};
[[maybe_unused]] auto* const kEnv = ::testing::AddGlobalTestEnvironment(new StopNodesEnv);

bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// Highest "tick N" in a log (0 if none).
long LastTick(const std::string& log_path) {
  std::string s = ReadFile(log_path);
  static const std::regex re("tick ([0-9]+)");
  long last = 0;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), re); it != std::sregex_iterator(); ++it)
    last = std::max(last, std::stol((*it)[1].str()));
  return last;
}

// Lowest "tick N" in a log (0 if none).
long FirstTick(const std::string& log_path) {
  std::string s = ReadFile(log_path);
  static const std::regex re("tick ([0-9]+)");
  std::smatch m;
  if (!std::regex_search(s, m, re)) return 0;
  return std::stol(m[1].str());
}

class ContainerdRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = MissingCapability();
    if (!missing.empty()) GTEST_SKIP() << "CONTAINERD INTEGRATION SKIPPED: " << missing;
    std::string err;
    src_ = Nodes::Get().Node("src", &err);
    ASSERT_NE(src_, nullptr) << err;
    rt_ = src_->NewRuntime();
    logs_ = src_->dir() + "/logs";
    mkdir(logs_.c_str(), 0755);
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (auto& c : name_) c = (c == '_') ? '-' : static_cast<char>(std::tolower(c));
  }
  void TearDown() override {
    if (rt_) (void)rt_->Delete(name_);
  }

  void RequireCriu() {
    std::string p = CriuProblem();
    if (!p.empty()) GTEST_SKIP() << "CRIU TESTS SKIPPED: " << p;
  }

  ContainerSpec Spec(const std::string& name, std::vector<std::string> args = {}) {
    ContainerSpec s;
    s.name = name;
    s.image = kImage;
    s.args = std::move(args);
    s.log_path = logs_ + "/" + name + ".log";
    s.memory_mib = 64;
    s.cpus = 0.5;
    s.env["KMX_TEST"] = "1";
    return s;
  }

  // Makes a checkpoint/work dir pair under the node dir.
  std::pair<std::string, std::string> CheckpointDirs(const std::string& tag) {
    std::string base = src_->dir() + "/ckpt-" + name_ + "-" + tag;
    mkdir(base.c_str(), 0700);
    mkdir((base + "/images").c_str(), 0700);
    mkdir((base + "/work").c_str(), 0700);
    return {base + "/images", base + "/work"};
  }

  void StartCounter(const ContainerSpec& spec, long min_ticks = 3) {
    ASSERT_TRUE(rt_->CreateContainer(spec).ok());
    Status s = rt_->StartTask(spec.name);
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << src_->DaemonLogTail();
    ASSERT_TRUE(
        WaitFor([&] { return LastTick(spec.log_path) >= min_ticks; }, std::chrono::seconds(10)))
        << "log: " << ReadFile(spec.log_path);
  }

  // The runc shim serving container `name` of this daemon (0: none).
  pid_t ShimOf(const std::string& name) {
    const std::string address = std::string("-address") + '\0' + src_->socket() + '\0';
    const std::string id = std::string("-id") + '\0' + name + '\0';
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string pid = entry.path().filename().string();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      const std::string cmd = ReadFile(entry.path().string() + "/cmdline");
      if (cmd.find("containerd-shim") != std::string::npos && cmd.find(id) != std::string::npos &&
          cmd.find(address) != std::string::npos) {
        return static_cast<pid_t>(std::stol(pid));
      }
    }
    return 0;
  }

  std::string FreezerState(const std::string& name) {
    std::string p =
        "/sys/fs/cgroup/freezer" + src_->Config().cgroup_parent + "/" + name + "/freezer.state";
    std::string s = ReadFile(p);
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }

  PrivateContainerd* src_ = nullptr;
  std::unique_ptr<ContainerdRuntime> rt_;
  std::string logs_;
  std::string name_;
};

// runc's message when its cgroup v1 freezer times out (seen on a loaded
// machine: "OCI runtime pause failed: unable to freeze: unknown") is the one
// failure Pause tries again; anything else is final at once.
TEST(PauseRetryTest, OnlyRuncsFreezeTimeoutIsTransient) {
  EXPECT_TRUE(IsTransientFreezeFailure(
      FailedError("pause task hot-1: OCI runtime pause failed: unable to freeze: unknown")));
  EXPECT_FALSE(IsTransientFreezeFailure(NotFoundError("pause task x: no such task")));
  EXPECT_FALSE(IsTransientFreezeFailure(ConflictError("pause x: task is not running")));
  EXPECT_FALSE(IsTransientFreezeFailure(Status::Ok()));
}

TEST_F(ContainerdRuntimeTest, RunsWorkloadLogsOutputAndInspects) {
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec));
  auto info = rt_->Inspect(name_);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->state, TaskState::kRunning);
  EXPECT_GT(info->pid, 0u);
  EXPECT_TRUE(Exists("/proc/" + std::to_string(info->pid))) << "pid is a host pid";
  // Limits reached the cgroup.
  std::string cg = src_->Config().cgroup_parent + "/" + name_;
  EXPECT_EQ(ReadFile("/sys/fs/cgroup/memory" + cg + "/memory.limit_in_bytes"),
            std::to_string(64 << 20) + "\n");
  EXPECT_EQ(ReadFile("/sys/fs/cgroup/cpu" + cg + "/cpu.cfs_quota_us"), "50000\n");
}

TEST_F(ContainerdRuntimeTest, StdoutAndStderrBothAppendToLog) {
  ContainerSpec spec = Spec(name_, {"/bin/sh", "-c",
                                    "echo out-line-$KMX_TEST; echo err-line >&2; "
                                    "echo out-again; exec sleep 3600"});
  // Pre-existing content must survive (append, not truncate).
  { std::ofstream(spec.log_path) << "previous-content\n"; }
  ASSERT_TRUE(rt_->CreateContainer(spec).ok());
  ASSERT_TRUE(rt_->StartTask(name_).ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string l = ReadFile(spec.log_path);
        return l.find("out-again") != std::string::npos && l.find("err-line") != std::string::npos;
      },
      std::chrono::seconds(10)))
      << "log: " << ReadFile(spec.log_path);
  std::string l = ReadFile(spec.log_path);
  EXPECT_EQ(l.rfind("previous-content\n", 0), 0u) << l;
  EXPECT_NE(l.find("out-line-1"), std::string::npos) << "spec.env reached the process: " << l;
}

TEST_F(ContainerdRuntimeTest, PauseStopsCounterResumeContinues) {
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec));
  ASSERT_TRUE(rt_->Pause(name_).ok());
  EXPECT_EQ(rt_->Inspect(name_)->state, TaskState::kPaused);
  EXPECT_EQ(FreezerState(name_), "FROZEN");
  long n = LastTick(spec.log_path);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(LastTick(spec.log_path), n) << "counter advanced while paused";
  ASSERT_TRUE(rt_->Resume(name_).ok());
  EXPECT_TRUE(WaitFor([&] { return LastTick(spec.log_path) > n + 2; }, std::chrono::seconds(5)));
}

TEST_F(ContainerdRuntimeTest, DeleteIsIdempotentAndRemovesEverything) {
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec));
  auto layer = rt_->WritableLayerDir(name_);
  ASSERT_TRUE(layer.ok());
  uint32_t pid = rt_->Inspect(name_)->pid;
  ASSERT_TRUE(rt_->Delete(name_).ok());
  EXPECT_FALSE(Exists("/proc/" + std::to_string(pid) + "/cmdline") &&
               ReadFile("/proc/" + std::to_string(pid) + "/cmdline").find("sh") !=
                   std::string::npos)
      << "workload still alive";
  EXPECT_EQ(rt_->Inspect(name_).status().code(), Code::kNotFound);
  EXPECT_EQ(rt_->WritableLayerDir(name_).status().code(), Code::kNotFound);
  // containerd removes the snapshot's directory asynchronously (GC).
  EXPECT_TRUE(WaitFor([&] { return !Exists(*layer); }, std::chrono::seconds(10)))
      << "snapshot dir not removed: " << *layer;
  EXPECT_TRUE(rt_->Delete(name_).ok());
  // The name is free again.
  ASSERT_TRUE(rt_->CreateContainer(spec).ok());
  EXPECT_TRUE(rt_->Delete(name_).ok());
}

TEST_F(ContainerdRuntimeTest, WritableLayerHoldsFilesWrittenByWorkload) {
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec));
  auto layer = rt_->WritableLayerDir(name_);
  ASSERT_TRUE(layer.ok()) << layer.status().ToString();
  // The loop rewrites /counter every 100 ms (truncate + write): wait for a value.
  EXPECT_TRUE(WaitFor([&] { return std::atol(ReadFile(*layer + "/counter").c_str()) > 0; },
                      std::chrono::seconds(5)))
      << "no counter file in writable layer " << *layer;
}

TEST_F(ContainerdRuntimeTest, CheckpointOfPausedTaskLeavesItPausedAndResumable) {
  RequireCriu();
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec));
  ASSERT_TRUE(rt_->Pause(name_).ok());
  long n = LastTick(spec.log_path);
  auto [images, work] = CheckpointDirs("a");
  Status s = rt_->CheckpointTask(name_, {images, work, /*leave_running=*/true});
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << ReadFile(work + "/dump.log").substr(0, 4000);
  EXPECT_TRUE(Exists(images + "/inventory.img"));
  auto info = rt_->Inspect(name_);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, TaskState::kPaused) << "containerd's view after checkpoint";
  EXPECT_EQ(FreezerState(name_), "FROZEN") << "kernel's view after checkpoint";
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  EXPECT_EQ(LastTick(spec.log_path), n) << "counter advanced after checkpoint of a paused task";
  // Rollback path: Resume continues with its state.
  ASSERT_TRUE(rt_->Resume(name_).ok());
  ASSERT_TRUE(WaitFor([&] { return LastTick(spec.log_path) >= n + 3; }, std::chrono::seconds(5)))
      << ReadFile(spec.log_path);
  EXPECT_NE(ReadFile(spec.log_path).find("tick " + std::to_string(n + 1) + "\n"), std::string::npos)
      << "counter continued from " << n;
}

TEST_F(ContainerdRuntimeTest, CheckpointTwiceAndOfRunningTask) {
  RequireCriu();
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec));
  auto [i1, w1] = CheckpointDirs("1");
  Status s = rt_->CheckpointTask(name_, {i1, w1, true});
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << ReadFile(w1 + "/dump.log").substr(0, 4000);
  EXPECT_EQ(rt_->Inspect(name_)->state, TaskState::kRunning) << "running task stays running";
  long n = LastTick(spec.log_path);
  EXPECT_TRUE(WaitFor([&] { return LastTick(spec.log_path) > n; }, std::chrono::seconds(5)));
  ASSERT_TRUE(rt_->Pause(name_).ok());
  auto [i2, w2] = CheckpointDirs("2");
  s = rt_->CheckpointTask(name_, {i2, w2, true});
  ASSERT_TRUE(s.ok()) << "second checkpoint: " << s.ToString();
  EXPECT_EQ(rt_->Inspect(name_)->state, TaskState::kPaused);
  // leave_running=false: CRIU kills the task after the dump.
  ASSERT_TRUE(rt_->Resume(name_).ok());
  auto [i3, w3] = CheckpointDirs("3");
  s = rt_->CheckpointTask(name_, {i3, w3, false});
  ASSERT_TRUE(s.ok()) << "exit checkpoint: " << s.ToString();
  EXPECT_TRUE(WaitFor([&] { return rt_->Inspect(name_)->state == TaskState::kStopped; },
                      std::chrono::seconds(5)));
}

TEST_F(ContainerdRuntimeTest, CheckpointErrors) {
  EXPECT_EQ(rt_->CheckpointTask("no-such-container", {"/tmp", "/tmp", true}).code(),
            Code::kNotFound);
  ContainerSpec spec = Spec(name_);
  ASSERT_TRUE(rt_->CreateContainer(spec).ok());
  auto [images, work] = CheckpointDirs("x");
  EXPECT_EQ(rt_->CheckpointTask(name_, {images, work, true}).code(), Code::kConflict) << "no task";
  EXPECT_EQ(rt_->CheckpointTask(name_, {"relative", work, true}).code(), Code::kInvalid);
  EXPECT_EQ(rt_->RestoreTask(name_, {images, work}).code(), Code::kInvalid) << "no images";
}

TEST_F(ContainerdRuntimeTest, RestoreOnAnotherNodeContinuesCounter) {
  RequireCriu();
  std::string err;
  PrivateContainerd* dst = Nodes::Get().Node("dst", &err);
  ASSERT_NE(dst, nullptr) << err;
  auto dst_rt = dst->NewRuntime();
  ASSERT_NE(dst_rt->config().runc_root, rt_->config().runc_root);

  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec, 5));
  ASSERT_TRUE(rt_->Pause(name_).ok());
  long n = LastTick(spec.log_path);
  auto [images, work] = CheckpointDirs("mig");
  Status s = rt_->CheckpointTask(name_, {images, work, true});
  ASSERT_TRUE(s.ok()) << s.ToString();

  // Target: same spec, its own log; copy the writable layer like the protocol.
  ContainerSpec tspec = spec;
  tspec.log_path = dst->dir() + "/" + name_ + ".log";
  ASSERT_TRUE(dst_rt->CreateContainer(tspec).ok());
  auto src_layer = rt_->WritableLayerDir(name_);
  auto dst_layer = dst_rt->WritableLayerDir(name_);
  ASSERT_TRUE(src_layer.ok() && dst_layer.ok());
  ASSERT_EQ(RunCommand("cp -a " + *src_layer + "/. " + *dst_layer + "/"), 0);
  std::string rwork = dst->dir() + "/restore-work";
  mkdir(rwork.c_str(), 0700);
  s = dst_rt->RestoreTask(name_, {images, rwork});
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n"
                      << ReadFile(rwork + "/restore.log").substr(0, 6000) << "\n"
                      << dst->DaemonLogTail();
  auto info = dst_rt->Inspect(name_);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, TaskState::kRunning);
  EXPECT_TRUE(WaitFor([&] { return LastTick(tspec.log_path) >= n + 3; }, std::chrono::seconds(10)))
      << "target log: " << ReadFile(tspec.log_path);
  EXPECT_EQ(FirstTick(tspec.log_path), n + 1) << "restored counter continues where it stopped";
  EXPECT_EQ(LastTick(spec.log_path), n) << "source stays paused";
  EXPECT_EQ(rt_->Inspect(name_)->state, TaskState::kPaused);
  // Commit: the source goes away; the target keeps running.
  EXPECT_TRUE(rt_->Delete(name_).ok());
  long m = LastTick(tspec.log_path);
  EXPECT_TRUE(WaitFor([&] { return LastTick(tspec.log_path) > m; }, std::chrono::seconds(5)));
  // Target pause/resume still works on the restored task.
  EXPECT_TRUE(dst_rt->Pause(name_).ok());
  EXPECT_TRUE(dst_rt->Resume(name_).ok());
  EXPECT_TRUE(dst_rt->Delete(name_).ok());
}

// Restored with leave_stopped (a live migration's target before its
// commit): every process stopped, no tick, until Continue; a later dump of
// the task works (the restore's CRIU configuration file is gone).
TEST_F(ContainerdRuntimeTest, RestoreLeftStoppedRunsOnlyAfterContinue) {
  RequireCriu();
  std::string err;
  PrivateContainerd* dst = Nodes::Get().Node("dst", &err);
  ASSERT_NE(dst, nullptr) << err;
  auto dst_rt = dst->NewRuntime();

  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec, 5));
  ASSERT_TRUE(rt_->Pause(name_).ok());
  long n = LastTick(spec.log_path);
  auto [images, work] = CheckpointDirs("stopped");
  Status s = rt_->CheckpointTask(name_, {images, work, true});
  ASSERT_TRUE(s.ok()) << s.ToString();

  ContainerSpec tspec = spec;
  tspec.log_path = dst->dir() + "/" + name_ + ".log";
  ASSERT_TRUE(dst_rt->CreateContainer(tspec).ok());
  auto src_layer = rt_->WritableLayerDir(name_);
  auto dst_layer = dst_rt->WritableLayerDir(name_);
  ASSERT_TRUE(src_layer.ok() && dst_layer.ok());
  ASSERT_EQ(RunCommand("cp -a " + *src_layer + "/. " + *dst_layer + "/"), 0);
  std::string rwork = dst->dir() + "/restore-stopped-work";
  mkdir(rwork.c_str(), 0700);
  RestoreRequest req{images, rwork};
  req.leave_stopped = true;
  s = dst_rt->RestoreTask(name_, req);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n"
                      << ReadFile(rwork + "/restore.log").substr(0, 6000) << "\n"
                      << dst->DaemonLogTail();
  EXPECT_FALSE(std::filesystem::exists(rwork + "/kmosix-restore.conf"))
      << "the CRIU configuration file outlived the restore";
  auto info = dst_rt->Inspect(name_);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, TaskState::kRunning);  // containerd's view: stopped is running
  const std::string status = ReadFile("/proc/" + std::to_string(info->pid) + "/status");
  EXPECT_NE(status.find("State:\tT (stopped)"), std::string::npos) << status.substr(0, 300);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // 15 ticks if it ran
  EXPECT_EQ(LastTick(tspec.log_path), 0) << "the stopped copy ticked: " << ReadFile(tspec.log_path);

  s = dst_rt->Continue(name_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(WaitFor([&] { return LastTick(tspec.log_path) >= n + 3; }, std::chrono::seconds(10)))
      << "target log: " << ReadFile(tspec.log_path);
  EXPECT_EQ(FirstTick(tspec.log_path), n + 1) << "restored counter continues where it stopped";
  EXPECT_TRUE(rt_->Delete(name_).ok());

  // The restored task migrates on: pause and dump it again.
  ASSERT_TRUE(dst_rt->Pause(name_).ok());
  auto [images2, work2] = CheckpointDirs("stopped-again");
  s = dst_rt->CheckpointTask(name_, {images2, work2, true});
  EXPECT_TRUE(s.ok()) << s.ToString() << "\n" << ReadFile(work2 + "/dump.log").substr(0, 4000);
  EXPECT_TRUE(dst_rt->Resume(name_).ok());
  EXPECT_TRUE(dst_rt->Delete(name_).ok());
}

TEST_F(ContainerdRuntimeTest, RestoreFailureLeavesNoTask) {
  RequireCriu();
  // A corrupt image dir: the restore must fail and leave no task behind.
  std::string images = src_->dir() + "/bogus-images";
  std::string work = src_->dir() + "/bogus-work";
  mkdir(images.c_str(), 0700);
  mkdir(work.c_str(), 0700);
  { std::ofstream(images + "/inventory.img") << "garbage"; }
  ASSERT_TRUE(rt_->CreateContainer(Spec(name_)).ok());
  Status s = rt_->RestoreTask(name_, {images, work});
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kFailed) << s.ToString();
  auto info = rt_->Inspect(name_);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, TaskState::kNone) << "half-created task was deleted";
  EXPECT_TRUE(rt_->StartTask(name_).ok()) << "container still usable";
}

// The fault soak's B3: containerd killed during a restore; its clean-up of
// the dead shim runs `runc delete`, which fails on CRIU's root mount left in
// runc's state dir ("criu-root": EBUSY), and containerd only logs it. Its
// task is gone to containerd, but runc's state stays, and every later task
// of that name failed "container with given ID already exists". Here the
// mount is made by hand and the shim killed, as the soak's fault left them.
TEST_F(ContainerdRuntimeTest, DeleteRemovesRuncStateADeadShimLeft) {
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec, 1));
  const ContainerdConfig cfg = src_->Config();
  const std::string state = cfg.runc_root + "/" + cfg.containerd_namespace + "/" + name_;
  ASSERT_TRUE(Exists(state + "/state.json")) << "runc state not where expected: " << state;
  const std::string held = src_->dir() + "/criu-root-" + name_;
  mkdir(held.c_str(), 0700);
  mkdir((state + "/criu-root").c_str(), 0700);
  ASSERT_EQ(RunCommand("mount --bind " + held + " " + state + "/criu-root"), 0);
  // The shim dies (as with containerd killed under it): containerd cleans
  // up after it, and runc cannot remove its state.
  const pid_t shim = ShimOf(name_);
  ASSERT_GT(shim, 0) << "no shim process of " << name_;
  ASSERT_EQ(::kill(shim, SIGKILL), 0);
  // containerd's clean-up ends with the task's bundle removed.
  const std::string bundle = src_->dir() + "/state/io.containerd.runtime.v2.task/" +
                             cfg.containerd_namespace + "/" + name_;
  ASSERT_TRUE(WaitFor([&] { return !Exists(bundle); }, std::chrono::seconds(20)))
      << "containerd kept the task of a dead shim\n"
      << src_->DaemonLogTail();
  ASSERT_TRUE(Exists(state)) << "runc removed its state (the fault did not happen):\n"
                             << src_->DaemonLogTail();
  Status s = rt_->Delete(name_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(Exists(state)) << "runc state left behind";
  // The name can run again.
  ASSERT_TRUE(rt_->CreateContainer(spec).ok());
  s = rt_->StartTask(name_);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

// containerd killed and started again under a runtime that keeps calling it
// (the fault soak's containerd-restart): every answer meanwhile is an answer
// (kRetry while it is down; the channel's gRPC retry filter, which aborted
// processes in gRPC 1.51 when a server died mid-call, is off), and the same
// runtime object works again once it is back.
TEST_F(ContainerdRuntimeTest, TheSameRuntimeAnswersAgainAfterTheDaemonRestarts) {
  ContainerSpec spec = Spec(name_);
  ASSERT_NO_FATAL_FAILURE(StartCounter(spec, 1));
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0};
  std::mutex mu;
  std::vector<std::string> unexpected;
  std::thread poller([&] {
    while (!stop) {
      auto info = rt_->Inspect(name_);
      calls++;
      const Code code = info.ok() ? Code::kOk : info.status().code();
      if (code != Code::kOk && code != Code::kRetry && code != Code::kNotFound) {
        std::lock_guard l(mu);
        unexpected.push_back(info.status().ToString());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  std::string err = src_->CrashAndRestart();
  stop = true;
  poller.join();
  ASSERT_TRUE(err.empty()) << err;
  EXPECT_GT(calls.load(), 0);
  EXPECT_TRUE(unexpected.empty()) << ::testing::PrintToString(unexpected);
  // The same runtime: the container is still there, its task is not (as
  // after a reboot), and it runs again.
  auto info = rt_->Inspect(name_);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->state, TaskState::kNone);
  Status s = rt_->StartTask(name_);
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = rt_->Delete(name_);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(ContainerdRuntimeNoDaemon, UnreachableDaemonIsRetry) {
  ContainerdConfig c;
  c.socket_path = "/tmp/kmx-no-such-containerd.sock";
  c.rpc_timeout = std::chrono::milliseconds(300);
  ContainerdRuntime rt(c);
  EXPECT_EQ(rt.Inspect("x").status().code(), Code::kRetry);
  EXPECT_EQ(rt.ImageExists("busybox").code(), Code::kRetry);
  EXPECT_EQ(rt.Delete("x").code(), Code::kRetry);
}

}  // namespace

}  // namespace kmosix::testing

KMX_INSTANTIATE_RUNTIME_CONFORMANCE(Containerd, kmosix::testing::RuntimeConformanceParam{
                                                    "containerd",
                                                    []() -> std::unique_ptr<ContainerRuntime> {
                                                      std::string err;
                                                      auto* n = Nodes::Get().Node("src", &err);
                                                      if (n == nullptr) return nullptr;
                                                      return n->NewRuntime();
                                                    },
                                                    kImage,
                                                    []() -> std::string {
                                                      std::string m = MissingCapability();
                                                      if (!m.empty()) return m;
                                                      return "";
                                                    },
                                                    []() -> std::string {
                                                      std::string err;
                                                      auto* n = Nodes::Get().Node("src", &err);
                                                      std::string d =
                                                          n ? n->dir() + "/conf-logs" : "/tmp";
                                                      mkdir(d.c_str(), 0755);
                                                      return d;
                                                    }});
