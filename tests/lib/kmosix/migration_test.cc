// The migration state machine and its rollback decisions, source driver and
// target records together, over fakes at ContainerRuntime and Transport.
// After every scenario the workload must run exactly once, with its state.
#include "kmosix/migration.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "kmosix/migration_target.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix {
namespace {

using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeTransport;
namespace fs = std::filesystem;

constexpr char kImage[] = "kmosix.local/demo:latest";

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-migration-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "logs");
    source_.AddImage(kImage);
    target_.AddImage(kImage);
    IncomingMigrations::Options topts{"node2", "test", root_ / "target-scratch", root_ / "logs",
                                      std::chrono::seconds(60)};
    IncomingMigrations::Hooks hooks;
    hooks.reserve = [this](const std::string& n) -> Status {
      if (!reserved_.insert(n).second) return ConflictError(n + " in use");
      return Status::Ok();
    };
    hooks.unreserve = [this](const std::string& n) { reserved_.erase(n); };
    // The target's registry and disk: a write that "fails" is refused like
    // a full disk; once the target is "dead" its writes never happen (a
    // process that crashed writes nothing), though the test's object goes on.
    hooks.adopt = [this](const MigrationOffer& o, uint32_t) -> Status {
      if (target_dead_) return Status::Ok();
      if (adopt_fails_) return FailedError("write workload record: No space left on device");
      adopted_.push_back(o.spec.name);
      return Status::Ok();
    };
    hooks.persist = [this](const IncomingRecord& r) -> Status {
      if (target_dead_) return Status::Ok();
      if (target_write_fails_ && target_write_fails_(r)) {
        return FailedError("write incoming record: No space left on device");
      }
      target_phases_.push_back(r.phase);
      target_disk_[r.offer.id] = r;
      if (die_after_ && die_after_(r)) target_dead_ = true;
      return Status::Ok();
    };
    hooks_ = hooks;
    incoming_ = std::make_unique<IncomingMigrations>(target_engine_, target_, clock_, topts, hooks);
    transport_ = std::make_unique<FakeTransport>(incoming_.get());
    MigrationDriver::Options dopts{"http://node1", root_ / "source-scratch",
                                   std::chrono::seconds(5), std::chrono::milliseconds(500)};
    driver_ = std::make_unique<MigrationDriver>(source_engine_, *transport_, clock_, dopts);

    spec_.name = "work";
    spec_.image = kImage;
    spec_.log_path = root_ / "source.log";
    { std::ofstream(spec_.log_path) << "tick=1\n"; }
    ASSERT_TRUE(source_.CreateContainer(spec_).ok());
    ASSERT_TRUE(source_.StartTask("work").ok());
    for (int i = 0; i < 42; ++i) source_.Tick("work");
  }
  void TearDown() override { fs::remove_all(root_); }

  // Rebuilds the target (same runtime and hooks) with an ownership oracle,
  // and the transport and a standalone driver over it.
  void UseTargetOracle(std::function<StatusOr<bool>(const IncomingRecord&)> oracle) {
    IncomingMigrations::Options topts{"node2", "test", root_ / "target-scratch", root_ / "logs",
                                      std::chrono::seconds(60)};
    IncomingMigrations::Hooks hooks = hooks_;
    hooks.owned_here = std::move(oracle);
    incoming_ = std::make_unique<IncomingMigrations>(target_engine_, target_, clock_, topts, hooks);
    transport_ = std::make_unique<FakeTransport>(incoming_.get());
    MigrationDriver::Options dopts{"http://node1", root_ / "source-scratch",
                                   std::chrono::seconds(5), std::chrono::milliseconds(500)};
    driver_ = std::make_unique<MigrationDriver>(source_engine_, *transport_, clock_, dopts);
  }

  MigrationReport Migrate(const MigrationDriver::CancelFn& cancelled = {}) {
    MigrationReport r;
    r.id = "m-1";
    r.workload = "work";
    r.source_node = "node1";
    r.target_url = "http://node2";
    return driver_->Run(spec_, r, SourceJournal(), {}, cancelled);
  }
  // The source's journal: phases_ holds what was written; a write that
  // source_write_fails_ picks is refused like a full disk.
  MigrationDriver::PersistFn SourceJournal() {
    return [this](const MigrationReport& rep) -> Status {
      if (source_write_fails_ && source_write_fails_(rep)) {
        return FailedError("write journal: No space left on device");
      }
      phases_.push_back(rep.phase);
      return Status::Ok();
    };
  }
  // The target agent restarts over its disk (target_disk_): a new
  // IncomingMigrations on the same runtime takes its records back.
  void RestartTarget() {
    target_dead_ = false;
    IncomingMigrations::Options topts{"node2", "test", root_ / "target-scratch", root_ / "logs",
                                      std::chrono::seconds(60)};
    incoming_ =
        std::make_unique<IncomingMigrations>(target_engine_, target_, clock_, topts, hooks_);
    transport_ = std::make_unique<FakeTransport>(incoming_.get());
    MigrationDriver::Options dopts{"http://node1", root_ / "source-scratch",
                                   std::chrono::seconds(5), std::chrono::milliseconds(500)};
    driver_ = std::make_unique<MigrationDriver>(source_engine_, *transport_, clock_, dopts);
    std::vector<IncomingRecord> records;
    for (const auto& [_, rec] : target_disk_) records.push_back(rec);
    incoming_->Recover(records);
  }
  // Runs a migration whose cancel check answers true from its n-th poll on
  // (1-based; the driver polls at five points, see MigrationDriver::Run).
  MigrationReport MigrateCancelledAtCheck(int n) {
    polls_ = 0;
    return Migrate([this, n] { return ++polls_ >= n; });
  }
  bool Entered(MigrationPhase p) const {
    return std::find(phases_.begin(), phases_.end(), p) != phases_.end();
  }
  void ExpectCancelled(const MigrationReport& r) {
    EXPECT_EQ(r.error.code(), Code::kFailed);
    EXPECT_NE(r.error.message().find("cancelled"), std::string::npos) << r.error.ToString();
  }

  // The invariant: exactly one running copy, carrying the state it had (a
  // copy restored stopped and not resumed does not run).
  void ExpectRunsOnceOn(FakeRuntime& where, int64_t counter) {
    auto runs = [](FakeRuntime& rt) {
      return rt.State("work") == TaskState::kRunning && !rt.Stopped("work");
    };
    int running = runs(source_) + runs(target_);
    EXPECT_EQ(running, 1) << "source " << TaskStateName(source_.State("work")) << ", target "
                          << TaskStateName(target_.State("work"))
                          << (target_.Stopped("work") ? " (stopped)" : "");
    EXPECT_TRUE(runs(where));
    EXPECT_EQ(where.Counter("work"), counter);
  }
  void ExpectTargetClean() {
    EXPECT_FALSE(target_.Has("work"));
    EXPECT_FALSE(reserved_.contains("work"));
    EXPECT_TRUE(adopted_.empty());
    EXPECT_FALSE(fs::exists(root_ / "target-scratch" / "in-m-1"));
  }

  fs::path root_;
  FakeClock clock_;
  FakeRuntime source_{"node1", "/tmp/kmx-fake-layers-" + std::to_string(::getpid())};
  FakeRuntime target_{"node2", "/tmp/kmx-fake-layers-" + std::to_string(::getpid())};
  StopAndCopyEngine source_engine_{source_, clock_};
  StopAndCopyEngine target_engine_{target_, clock_};
  IncomingMigrations::Hooks hooks_;
  std::unique_ptr<IncomingMigrations> incoming_;
  std::unique_ptr<FakeTransport> transport_;
  std::unique_ptr<MigrationDriver> driver_;
  ContainerSpec spec_;
  std::set<std::string> reserved_;
  std::vector<std::string> adopted_;
  std::vector<MigrationPhase> phases_;
  std::vector<TargetPhase> target_phases_;
  int polls_ = 0;  // MigrateCancelledAtCheck
  // Durable-write faults (see SetUp and SourceJournal).
  std::function<bool(const MigrationReport&)> source_write_fails_;
  std::function<bool(const IncomingRecord&)> target_write_fails_;
  std::function<bool(const IncomingRecord&)> die_after_;
  bool target_dead_ = false;
  bool adopt_fails_ = false;
  std::map<std::string, IncomingRecord> target_disk_;  // id -> last record written
};

TEST_F(MigrationTest, HappyPathMovesStateAndRemovesSourceCopy) {
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_TRUE(r.error.ok());
  EXPECT_EQ(r.target_node, "node2");
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  EXPECT_EQ(phases_,
            (std::vector<MigrationPhase>{MigrationPhase::kPreparing, MigrationPhase::kCheckpointing,
                                         MigrationPhase::kTransferring, MigrationPhase::kRestoring,
                                         MigrationPhase::kCommitting, MigrationPhase::kSucceeded}));
  EXPECT_EQ(target_phases_.back(), TargetPhase::kCommitted);
  // The log travelled with it.
  std::ifstream log(root_ / "logs" / "work.log");
  std::string line;
  EXPECT_TRUE(std::getline(log, line));
  EXPECT_EQ(line, "tick=1");
  EXPECT_GT(r.files, 0u);
  EXPECT_FALSE(fs::exists(root_ / "source-scratch" / "out-m-1"));
  // The dump streamed its pages through a pipe; the restore checked them.
  EXPECT_EQ(target_.PagesRestored(), 1);
  EXPECT_GE(r.bytes, FakeRuntime::PagesOf(42).size());
}

TEST_F(MigrationTest, EngineWithoutPipesDumpsIntoFilesFirst) {
  StopAndCopyEngine files_engine(source_, clock_, {.pipes = 0});
  MigrationDriver::Options dopts{"http://node1", root_ / "source-scratch", std::chrono::seconds(5),
                                 std::chrono::milliseconds(500)};
  driver_ = std::make_unique<MigrationDriver>(files_engine, *transport_, clock_, dopts);
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectRunsOnceOn(target_, 42);
  EXPECT_EQ(target_.PagesRestored(), 0);
}

TEST_F(MigrationTest, EngineRecoverUnblocksADumpLeftStreaming) {
  // A previous run died while CRIU (here a thread) was opening a page pipe
  // nobody reads: Recover unblocks it and removes the pipes.
  const fs::path images = root_ / "source-scratch" / "out-m-0" / "criu";
  fs::create_directories(images);
  const std::string pipe = (images / "pages-1.img").string();
  ASSERT_EQ(::mkfifo(pipe.c_str(), 0600), 0);
  std::atomic<int> write_errno{-1};
  std::atomic<bool> recovered{false};
  std::atomic<pid_t> writer_tid{0};
  std::thread writer([&] {
    writer_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    int fd = ::open(pipe.c_str(), O_WRONLY | O_CLOEXEC);  // blocks until Recover
    while (!recovered) std::this_thread::yield();
    write_errno = fd < 0 ? -2 : ::write(fd, "x", 1) < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);
  });
  // Recover only once the writer sits in the pipe's open (as CRIU would).
  while (writer_tid == 0) std::this_thread::yield();
  const std::string wchan = "/proc/self/task/" + std::to_string(writer_tid.load()) + "/wchan";
  std::string in;
  for (int i = 0; i < 10000 && in != "wait_for_partner"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::ifstream(wchan) >> in;
  }
  EXPECT_EQ(in, "wait_for_partner") << "the writer never blocked opening the pipe";
  SystemClock real_clock;
  StopAndCopyEngine engine(source_, real_clock);
  EXPECT_TRUE(engine.Recover((root_ / "source-scratch").string()).ok());
  recovered = true;
  writer.join();
  EXPECT_FALSE(fs::exists(pipe));
  EXPECT_EQ(write_errno.load(), EPIPE);
}

TEST_F(MigrationTest, WorkloadLifeTravelsWithTheOffer) {
  std::vector<MigrationOffer> offers;
  IncomingMigrations::Hooks hooks;
  hooks.adopt = [&](const MigrationOffer& o, uint32_t) -> Status {
    offers.push_back(o);
    return Status::Ok();
  };
  MigrationReport r;
  r.id = "m-2";
  r.workload = "work";
  r.source_node = "node1";
  r.target_url = "http://node2";
  incoming_ = std::make_unique<IncomingMigrations>(
      target_engine_, target_, clock_,
      IncomingMigrations::Options{"node2", "test", root_ / "target-scratch", root_ / "logs"},
      hooks);
  transport_ = std::make_unique<FakeTransport>(incoming_.get());
  driver_ = std::make_unique<MigrationDriver>(
      source_engine_, *transport_, clock_,
      MigrationDriver::Options{"http://node1", root_ / "source-scratch"});
  r = driver_->Run(spec_, r, {}, {1234, {"m-0", "m-1"}});
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_EQ(offers[0].created_ms, 1234);
  EXPECT_EQ(offers[0].history, (std::vector<std::string>{"m-0", "m-1"}));
}

TEST_F(MigrationTest, NotAnAgentFailsWithoutTouchingTheWorkload) {
  transport_->SetNotAnAgent();
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.failed_phase, "Preparing");
  EXPECT_EQ(r.error.code(), Code::kInvalid);
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, TargetWithoutTheImageRefusesAndNothingChanges) {
  target_.Fail("ImageExists", NotFoundError("image"));
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.error.code(), Code::kNotFound);
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, TargetNameConflictRefused) {
  reserved_.insert("work");
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.error.code(), Code::kConflict);
  ExpectRunsOnceOn(source_, 42);
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(MigrationTest, CheckpointFailureThawsTheSource) {
  source_.Fail("CheckpointTask", FailedError("criu dump failed"));
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Checkpointing");
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, TransferCutRollsBackAndCleansTarget) {
  transport_->CutTransfer();
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Transferring");
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
  EXPECT_EQ(target_phases_.back(), TargetPhase::kAborted);
  // Still runs and counts after the rollback.
  source_.Tick("work");
  EXPECT_EQ(source_.Counter("work"), 43);
}

TEST_F(MigrationTest, TransferToUnreachableTargetRollsBack) {
  transport_->DropRequest("Send");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
  // The target heard nothing; its idle timeout cleans up what Prepare made.
  EXPECT_TRUE(target_.Has("work"));
  EXPECT_NE(target_.State("work"), TaskState::kRunning);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  ExpectTargetClean();
}

TEST_F(MigrationTest, RestoreFailureOnTargetRollsBack) {
  target_.Fail("RestoreTask", FailedError("criu restore failed"));
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Restoring");
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, LostRestoreAnswerIsResolvedByAbortingTheTargetCopy) {
  transport_->DropResponse("Restore");  // target restored; the source never heard
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, LostCommitAnswerIsResolvedAsSucceeded) {
  transport_->DropResponse("Commit");  // target committed; the source never heard
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, SilentTargetKeepsWorkloadFrozenUntilItAnswers) {
  transport_->DropResponse("Restore");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kResolving);
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);   // frozen, not running
  EXPECT_EQ(target_.State("work"), TaskState::kRunning);  // restored, uncommitted
  // The target times out the uncommitted copy; the source then learns it aborted.
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  EXPECT_FALSE(target_.Has("work"));
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
}

TEST_F(MigrationTest, CommitAfterTargetTimeoutThawsSource) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  transport_->Heal();
  // A late commit must not revive what the target aborted.
  auto late = transport_->Commit("http://node2", "m-1");
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(*late, TargetPhase::kAborted);
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
}

TEST_F(MigrationTest, RecoverAfterCrashWhileTransferringThaws) {
  ASSERT_TRUE(source_.Pause("work").ok());  // the crash left it frozen
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  r.source_node = "node1";
  r.target_url = "http://node2";
  r.phase = MigrationPhase::kTransferring;
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
}

TEST_F(MigrationTest, RecoverAfterCrashWhileCommittingFollowsTheTarget) {
  transport_->DropResponse("Commit");
  MigrationReport r;
  // Run until the target committed, then "crash" the source before it released.
  transport_->DropRequest("Abort");
  r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded);
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, TargetRestartAbortsUncommittedCopy) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  // The target agent restarts: its records come back and the uncommitted copy goes.
  auto records = incoming_->List();
  incoming_->Recover(records);
  EXPECT_FALSE(target_.Has("work"));
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
}

// Issue 13, hole 8: the target's copy does not run before the commit.
TEST_F(MigrationTest, TargetCopyStaysStoppedUntilTheCommit) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ASSERT_EQ(*incoming_->Query("m-1"), TargetPhase::kRestored);
  EXPECT_TRUE(target_.Stopped("work")) << "the uncommitted copy runs";
  target_.Tick("work");
  EXPECT_EQ(target_.Counter("work"), 42);
  EXPECT_FALSE(target_disk_["m-1"].resumed);

  auto committed = incoming_->Commit("m-1");
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(*committed, TargetPhase::kCommitted);
  ExpectRunsOnceOn(target_, 42);  // the source stays frozen
  EXPECT_TRUE(target_disk_["m-1"].resumed);
  target_.Tick("work");
  EXPECT_EQ(target_.Counter("work"), 43);
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
}

TEST_F(MigrationTest, AbortedTargetCopyWasNeverResumed) {
  transport_->DropResponse("Restore");  // restored there; the source aborts it
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
  EXPECT_EQ(target_.Calls("Continue"), 0) << "the aborted copy was resumed";
}

TEST_F(MigrationTest, CommittedCopyThatCouldNotBeResumedIsResumedAtTheNextExpiry) {
  target_.Fail("Continue", RetryError("containerd unreachable"));
  MigrationReport r = Migrate();
  // The verdict stands (the source released its copy); the copy waits.
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
  EXPECT_TRUE(target_.Stopped("work"));
  EXPECT_FALSE(target_disk_["m-1"].resumed);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  clock_.Advance(std::chrono::hours(48));
  EXPECT_TRUE(incoming_->ForgetFinished(std::chrono::hours(24)).empty())
      << "a verdict whose copy still waits was forgotten";

  target_.Fail("Continue", Status::Ok());
  incoming_->ExpireIdle();
  ExpectRunsOnceOn(target_, 42);
  EXPECT_TRUE(target_disk_["m-1"].resumed);
}

TEST_F(MigrationTest, CommittedCopyPausedBeforeItsResumeIsResumedOnceThawed) {
  target_.Fail("Continue", RetryError("containerd unreachable"));
  ASSERT_EQ(Migrate().phase, MigrationPhase::kSucceeded);
  ASSERT_TRUE(target_.Stopped("work"));
  target_.Fail("Continue", Status::Ok());
  ASSERT_TRUE(target_.Pause("work").ok());  // frozen meanwhile (a fenced agent)
  incoming_->ExpireIdle();
  EXPECT_FALSE(target_disk_["m-1"].resumed) << "a frozen copy, still stopped, taken as resumed";
  EXPECT_TRUE(target_.Stopped("work"));
  ASSERT_TRUE(target_.Resume("work").ok());  // thawed: still stopped until resumed
  incoming_->ExpireIdle();
  EXPECT_TRUE(target_disk_["m-1"].resumed);
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, TargetRestartResumesACommittedCopyLeftStopped) {
  // The agent dies right after writing the verdict, before the resume.
  die_after_ = [](const IncomingRecord& rec) { return rec.phase == TargetPhase::kCommitted; };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ASSERT_FALSE(target_disk_["m-1"].resumed);
  ASSERT_FALSE(target_disk_["m-1"].adopted);
  // (the dead agent's objects went on and resumed it; a fresh task, restored
  // stopped again, stands for the copy a real crash leaves stopped)
  ASSERT_TRUE(target_.Delete("work").ok());
  ASSERT_TRUE(target_.CreateContainer(spec_).ok());
  {
    const fs::path images = root_ / "restart-images";
    fs::create_directories(images);
    std::ofstream(images / "state") << 42;
    RestoreRequest req{images.string(), images.string()};
    req.leave_stopped = true;
    ASSERT_TRUE(target_.RestoreTask("work", req).ok());
  }
  adopted_.clear();
  RestartTarget();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  EXPECT_FALSE(target_.Stopped("work"));
  EXPECT_TRUE(target_disk_["m-1"].resumed);
  EXPECT_TRUE(target_disk_["m-1"].adopted);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
}

TEST_F(MigrationTest, AbortOfUnknownIdIsRememberedAgainstLatePrepare) {
  auto a = incoming_->Abort("m-9");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, TargetPhase::kAborted);
  MigrationOffer offer{"m-9", "node1", "http://node1", spec_, 0, {}};
  EXPECT_EQ(incoming_->Prepare(offer).code(), Code::kConflict);
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(MigrationTest, FinishedRecordsAreForgottenOnlyAfterTheirAge) {
  transport_->CutTransfer();
  ASSERT_EQ(Migrate().phase, MigrationPhase::kRolledBack);
  ASSERT_TRUE(incoming_->Abort("m-7").ok());  // a tombstone
  EXPECT_TRUE(incoming_->ForgetFinished(std::chrono::hours(1)).empty());
  clock_.Advance(std::chrono::hours(2));
  auto forgotten = incoming_->ForgetFinished(std::chrono::hours(1));
  std::sort(forgotten.begin(), forgotten.end());
  EXPECT_EQ(forgotten, (std::vector<std::string>{"m-1", "m-7"}));
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kUnknown);
}

// ---- ownership ledger (cluster mode) -----------------------------------------

// ---- cancellation -------------------------------------------------------------

TEST_F(MigrationTest, UncancelledRunPollsTheCancelCheckAtFivePoints) {
  int polls = 0;
  MigrationReport r = Migrate([&] {
    ++polls;
    return false;
  });
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(polls, 5);
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, CancelBeforePrepareFailsAndTheTargetNeverHearsOfIt) {
  MigrationReport r = MigrateCancelledAtCheck(1);
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.failed_phase, "Preparing");
  ExpectCancelled(r);
  EXPECT_TRUE(target_phases_.empty());  // never prepared
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, CancelBeforeTheFreezeFailsAndAbortsThePreparedTarget) {
  MigrationReport r = MigrateCancelledAtCheck(2);
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.failed_phase, "Preparing");
  ExpectCancelled(r);
  EXPECT_FALSE(Entered(MigrationPhase::kCheckpointing));
  ASSERT_FALSE(target_phases_.empty());
  EXPECT_EQ(target_phases_.back(), TargetPhase::kAborted);
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, CancelAfterTheCheckpointRollsBack) {
  MigrationReport r = MigrateCancelledAtCheck(3);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Checkpointing");
  ExpectCancelled(r);
  EXPECT_FALSE(Entered(MigrationPhase::kTransferring));
  EXPECT_EQ(source_.Calls("Pause"), 1);
  EXPECT_EQ(target_phases_.back(), TargetPhase::kAborted);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
  EXPECT_FALSE(fs::exists(root_ / "source-scratch" / "out-m-1"));
}

TEST_F(MigrationTest, CancelAfterTheTransferRollsBack) {
  MigrationReport r = MigrateCancelledAtCheck(4);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Transferring");
  ExpectCancelled(r);
  EXPECT_GT(r.bytes, 0u);  // it was sent, never restored
  EXPECT_FALSE(Entered(MigrationPhase::kRestoring));
  EXPECT_EQ(target_phases_.back(), TargetPhase::kAborted);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, CancelAfterTheRestoreAbortsTheTargetCopyAndThaws) {
  MigrationReport r = MigrateCancelledAtCheck(5);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Restoring");
  ExpectCancelled(r);
  EXPECT_FALSE(Entered(MigrationPhase::kCommitting));
  EXPECT_EQ(target_phases_.back(), TargetPhase::kAborted);
  EXPECT_TRUE(adopted_.empty());
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
  // It still runs and counts here.
  source_.Tick("work");
  EXPECT_EQ(source_.Counter("work"), 43);
}

// The cluster's ownership record of "work", in memory: Transfer and Revert
// with the ledger's semantics, plus scripted unknown answers and hooks that
// see the world at the moment of each call.
class FakeLedger : public OwnershipLedger {
 public:
  std::string node = "node1";
  std::string migration = "m-1";
  int64_t epoch = 1;
  bool deleted = false;
  // Answers kRetry this many times before doing anything (lost requests).
  int transfer_unknown = 0;
  int revert_unknown = 0;
  // Applies the transfer, then answers kRetry (lost response).
  bool transfer_answer_lost = false;
  std::function<void()> on_transfer;
  std::function<void()> on_revert;
  std::vector<std::string> calls;

  Status Transfer(const MigrationReport& r) override {
    calls.push_back("Transfer");
    if (on_transfer) on_transfer();
    if (transfer_unknown > 0) {
      --transfer_unknown;
      return RetryError("store unreachable");
    }
    if (deleted) return ConflictError("workload deleted");
    if (migration == r.id && node == r.target_node) return Status::Ok();
    if (migration != r.id || node != r.source_node) {
      return ConflictError("owner is " + node + " for migration " + migration);
    }
    node = r.target_node;
    ++epoch;
    if (transfer_answer_lost) return RetryError("answer lost");
    return Status::Ok();
  }
  Status Revert(const MigrationReport& r) override {
    calls.push_back("Revert");
    if (on_revert) on_revert();
    if (revert_unknown > 0) {
      --revert_unknown;
      return RetryError("store unreachable");
    }
    if (deleted || node == r.source_node) return Status::Ok();
    if (node == r.target_node && migration == r.id) {
      node = r.source_node;
      ++epoch;
      return Status::Ok();
    }
    return ConflictError("owner is " + node);
  }
  // What the records say when the target has forgotten the migration.
  int in_doubt = 0;
  StatusOr<InDoubtAnswer> InDoubt(const MigrationReport& r) override {
    ++in_doubt;
    if (deleted) return InDoubtAnswer{Answer::kSuperseded, "the workload was deleted"};
    if (node == r.target_node && migration == r.id) {
      return InDoubtAnswer{Answer::kCommitted, "the target owns it"};
    }
    if (node == r.source_node) return InDoubtAnswer{Answer::kNotCommitted, "the source owns it"};
    return InDoubtAnswer{Answer::kSuperseded, "owner is " + node};
  }
  int Count(const std::string& call) const {
    return static_cast<int>(std::count(calls.begin(), calls.end(), call));
  }
};

class LedgerMigrationTest : public MigrationTest {
 protected:
  void SetUp() override {
    MigrationTest::SetUp();
    UseDriverLedger(&ledger_);
  }
  void UseDriverLedger(OwnershipLedger* ledger) {
    MigrationDriver::Options dopts{"http://node1", root_ / "source-scratch",
                                   std::chrono::seconds(5), std::chrono::milliseconds(500), ledger};
    driver_ = std::make_unique<MigrationDriver>(source_engine_, *transport_, clock_, dopts);
  }
  MigrationReport Recover(MigrationReport r) {
    return driver_->Recover(spec_, std::move(r), SourceJournal());
  }
  FakeLedger ledger_;
};

TEST_F(LedgerMigrationTest, OwnershipMovesToTheTargetBeforeItCommits) {
  TargetPhase target_at_transfer = TargetPhase::kUnknown;
  ledger_.on_transfer = [&] { target_at_transfer = *incoming_->Query("m-1"); };
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(target_at_transfer, TargetPhase::kRestored);  // restored, not yet committed
  EXPECT_EQ(ledger_.node, "node2");
  EXPECT_EQ(ledger_.epoch, 2);
  EXPECT_EQ(ledger_.calls, std::vector<std::string>{"Transfer"});
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, UnknownTransferIsRetriedUntilItAnswers) {
  ledger_.transfer_unknown = 2;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.Count("Transfer"), 3);
  EXPECT_EQ(ledger_.node, "node2");
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, TransferStillUnknownKeepsTheSourceFrozenUntilRecover) {
  ledger_.transfer_unknown = 1000;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  EXPECT_EQ(r.error.code(), Code::kFailed);
  EXPECT_NE(r.error.message().find("kept frozen"), std::string::npos) << r.error.message();
  // Nobody runs it for now, and nothing was decided: the target's copy is
  // restored but uncommitted; the source's is frozen.
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kRestored);
  EXPECT_TRUE(adopted_.empty());
  // Recovering again while still unknown changes nothing (and the message
  // does not grow).
  const std::string message = r.error.message();
  r = Recover(r);
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  EXPECT_EQ(r.error.message().size(), message.size());
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);
  // The store is back: the next Recover transfers and commits.
  ledger_.transfer_unknown = 0;
  r = Recover(r);
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.node, "node2");
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, TransferAnswerLostIsSettledByAskingAgain) {
  ledger_.transfer_answer_lost = true;  // applied, but the driver never heard
  ledger_.on_transfer = [&] {
    if (ledger_.Count("Transfer") == 2) ledger_.transfer_answer_lost = false;
  };
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.epoch, 2);  // moved once
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, RefusedTransferAbortsTheTargetAndThawsWithoutRevert) {
  ledger_.migration = "m-other";  // the controller moved on to another order
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.error.code(), Code::kConflict);
  EXPECT_NE(r.error.message().find("ownership transfer refused"), std::string::npos)
      << r.error.message();
  EXPECT_EQ(r.failed_phase, "Committing");
  EXPECT_EQ(ledger_.calls, std::vector<std::string>{"Transfer"});
  EXPECT_EQ(ledger_.node, "node1");
  EXPECT_FALSE(r.source_released);  // thawed: the copy runs on
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

// A deleted workload is nobody's to run: the transfer is refused, the target
// aborts, and the frozen source copy is released rather than thawed.
TEST_F(LedgerMigrationTest, TransferOfADeletedWorkloadIsRefused) {
  ledger_.deleted = true;
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed) << r.error.ToString();
  EXPECT_NE(r.error.message().find("deleted"), std::string::npos) << r.error.ToString();
  EXPECT_NE(r.error.message().find("released, not thawed"), std::string::npos)
      << r.error.ToString();
  EXPECT_TRUE(r.source_released);  // the agent forgets its copy on this
  EXPECT_FALSE(source_.Has("work"));
  ExpectTargetClean();
}

TEST_F(LedgerMigrationTest, CommitAnswerLostAfterTransferEndsSucceeded) {
  transport_->DropResponse("Commit");  // target committed; the source never heard
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.node, "node2");
  EXPECT_EQ(ledger_.Count("Revert"), 0);
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, CommitRequestLostIsCommittedOnTheNextRound) {
  transport_->DropRequest("Commit");
  int rounds = 0;
  ledger_.on_transfer = [&] {
    if (++rounds == 2) transport_->Heal();
  };
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.epoch, 2);
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, TargetAbortedAfterTransferRevertsBeforeThawing) {
  // The target gives up on its copy (say, its idle timeout) just after the
  // ownership moved: the commit is answered Aborted.
  ledger_.on_transfer = [&] { ASSERT_TRUE(incoming_->Abort("m-1").ok()); };
  TaskState source_at_revert = TaskState::kUnknown;
  ledger_.on_revert = [&] { source_at_revert = source_.State("work"); };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(ledger_.calls, (std::vector<std::string>{"Transfer", "Revert"}));
  EXPECT_EQ(source_at_revert, TaskState::kPaused);  // reverted while still frozen
  EXPECT_EQ(ledger_.node, "node1");
  EXPECT_EQ(ledger_.epoch, 3);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(LedgerMigrationTest, UnknownRevertKeepsTheSourceFrozenUntilRecover) {
  ledger_.on_transfer = [&] { ASSERT_TRUE(incoming_->Abort("m-1").ok()); };
  ledger_.revert_unknown = 1000;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);  // never thawed while it may be node2's
  EXPECT_EQ(ledger_.node, "node2");
  ExpectTargetClean();
  ledger_.revert_unknown = 0;
  r = Recover(r);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_EQ(ledger_.node, "node1");
  ExpectRunsOnceOn(source_, 42);
}

TEST_F(LedgerMigrationTest, FailureBeforeRestoreNeedsNoLedger) {
  transport_->CutTransfer();
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_TRUE(ledger_.calls.empty());
  ExpectRunsOnceOn(source_, 42);
}

TEST_F(LedgerMigrationTest, LostRestoreAnswerGoesForwardThroughTheLedger) {
  transport_->DropResponse("Restore");  // restored there; the source never heard
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.node, "node2");
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, TargetAnsweringUnderAnotherNameIsRefusedBeforeFreezing) {
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  r.source_node = "node1";
  r.target_node = "node3";  // what the order said; the URL answers as node2
  r.target_url = "http://node2";
  r = driver_->Run(spec_, r, {});
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.error.code(), Code::kInvalid);
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
}

// The source dies after the ownership moved and before the commit: the
// target asks the ownership oracle and keeps the workload; the source, back,
// follows the target.
TEST_F(LedgerMigrationTest, SourceSilentAfterTransferTargetAdoptsThroughTheOracle) {
  UseTargetOracle([this](const IncomingRecord& rec) -> StatusOr<bool> {
    return ledger_.node == "node2" && ledger_.migration == rec.offer.id;
  });
  UseDriverLedger(&ledger_);
  transport_->DropRequest("Commit");
  transport_->DropRequest("Query");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  EXPECT_EQ(ledger_.node, "node2");
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  transport_->Heal();
  r = Recover(r);
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LedgerMigrationTest, CancelAfterTheRestoreNeverTransfersOrCommits) {
  MigrationReport r = MigrateCancelledAtCheck(5);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  EXPECT_EQ(r.failed_phase, "Restoring");
  ExpectCancelled(r);
  EXPECT_TRUE(ledger_.calls.empty());  // no Transfer, so no Revert either
  EXPECT_EQ(ledger_.node, "node1");
  EXPECT_FALSE(Entered(MigrationPhase::kCommitting));
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

// The check is not polled from the commit point on: a cancel that arrives
// once the ownership moved (the controller refuses it then) changes nothing.
TEST_F(LedgerMigrationTest, CancelAfterTheTransferChangesNothing) {
  bool cancelled = false;
  int polls_after = 0;
  ledger_.on_transfer = [&] { cancelled = true; };
  MigrationReport r = Migrate([&] {
    if (cancelled) ++polls_after;
    return cancelled;
  });
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(polls_after, 0);
  EXPECT_EQ(ledger_.node, "node2");
  EXPECT_EQ(ledger_.Count("Revert"), 0);
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

// ---- target-side ownership oracle --------------------------------------------

TEST_F(MigrationTest, IdleRestoredCopyOwnedHereIsCommitted) {
  int asked = 0;
  UseTargetOracle([&](const IncomingRecord& rec) -> StatusOr<bool> {
    ++asked;
    EXPECT_EQ(rec.offer.id, "m-1");
    return true;
  });
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  incoming_->ExpireIdle();  // not idle yet: not asked
  EXPECT_EQ(asked, 0);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  EXPECT_EQ(target_phases_.back(), TargetPhase::kCommitted);
  transport_->Heal();
  r = driver_->Recover(spec_, r, {});
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded);
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, IdleRestoredCopyNotOwnedHereIsAborted) {
  UseTargetOracle([](const IncomingRecord&) -> StatusOr<bool> { return false; });
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kAborted);
  ExpectTargetClean();
  transport_->Heal();
  r = driver_->Recover(spec_, r, {});
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
}

TEST_F(MigrationTest, OracleThatCannotTellKeepsTheCopyAndAsksAgain) {
  StatusOr<bool> answer = RetryError("store unreachable");
  int asked = 0;
  UseTargetOracle([&](const IncomingRecord&) -> StatusOr<bool> {
    ++asked;
    return answer;
  });
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kResolving);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  incoming_->ExpireIdle();
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kRestored);
  EXPECT_EQ(target_.State("work"), TaskState::kRunning);
  answer = true;
  incoming_->ExpireIdle();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
}

TEST_F(MigrationTest, OracleIsNotAskedBeforeTheCopyRuns) {
  int asked = 0;
  UseTargetOracle([&](const IncomingRecord&) -> StatusOr<bool> {
    ++asked;
    return true;
  });
  transport_->DropRequest("Send");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kRolledBack);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  EXPECT_EQ(asked, 0);
  ExpectTargetClean();
}

TEST_F(MigrationTest, TargetRestartPutsARunningRestoredCopyToTheOracle) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kResolving);
  auto records = incoming_->List();
  // Restarted target, and the cluster says it owns the workload now.
  UseTargetOracle([](const IncomingRecord&) -> StatusOr<bool> { return true; });
  incoming_->Recover(records);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  EXPECT_EQ(target_.State("work"), TaskState::kRunning);
}

TEST_F(MigrationTest, TargetRestartAbortsARestoredCopyTheClusterGaveBack) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kResolving);
  auto records = incoming_->List();
  UseTargetOracle([](const IncomingRecord&) -> StatusOr<bool> { return false; });
  incoming_->Recover(records);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kAborted);
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(MigrationTest, TargetRestartWithAnOracleThatCannotTellAsksAgainAtTheNextExpiry) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kResolving);
  auto records = incoming_->List();
  StatusOr<bool> answer = RetryError("store unreachable");
  UseTargetOracle([&](const IncomingRecord&) -> StatusOr<bool> { return answer; });
  incoming_->Recover(records);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kRestored);
  EXPECT_TRUE(reserved_.contains("work"));  // the name stays taken
  answer = true;
  incoming_->ExpireIdle();  // no need to wait a whole idle timeout again
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
}

TEST_F(MigrationTest, TargetRestartAbortsARestoredCopyWhoseTaskIsGone) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kResolving);
  auto records = incoming_->List();
  ASSERT_TRUE(target_.Delete("work").ok());  // the node rebooted, say
  int asked = 0;
  UseTargetOracle([&](const IncomingRecord&) -> StatusOr<bool> {
    ++asked;
    return true;
  });
  incoming_->Recover(records);
  EXPECT_EQ(asked, 0);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kAborted);
}

// ---- durable writes (issue 13, holes 1 and 2) ---------------------------------
// A journal, verdict or record that cannot be written is not acted on; after
// every failure the workload runs exactly once.

TEST_F(MigrationTest, SourceJournalThatCannotBeWrittenFailsBeforeAnythingIsAsked) {
  source_write_fails_ = [](const MigrationReport&) { return true; };  // disk full
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_NE(r.error.message().find("No space left"), std::string::npos) << r.error.ToString();
  EXPECT_EQ(source_.Calls("Pause"), 0);  // never frozen
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
  EXPECT_TRUE(target_phases_.empty());  // the target never heard of it
}

TEST_F(MigrationTest, JournalThatCannotRecordTheCheckpointNeverFreezes) {
  source_write_fails_ = [](const MigrationReport& rep) {
    return rep.phase == MigrationPhase::kCheckpointing;
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();  // the prepared target was aborted
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kAborted);
}

TEST_F(MigrationTest, JournalThatCannotRecordTheTransferRollsBack) {
  source_write_fails_ = [](const MigrationReport& rep) {
    return rep.phase == MigrationPhase::kTransferring;
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, JournalThatCannotRecordTheCommitNeverCommits) {
  source_write_fails_ = [](const MigrationReport& rep) {
    return rep.phase == MigrationPhase::kCommitting;
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_EQ(std::count(target_phases_.begin(), target_phases_.end(), TargetPhase::kCommitted), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(LedgerMigrationTest, JournalThatCannotRecordTheCommitNeverTransfers) {
  source_write_fails_ = [](const MigrationReport& rep) {
    return rep.phase == MigrationPhase::kCommitting;
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_EQ(ledger_.Count("Transfer"), 0);
  EXPECT_EQ(ledger_.node, "node1");
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, TargetThatCannotRecordThePrepareRefusesIt) {
  target_write_fails_ = [](const IncomingRecord&) { return true; };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(source_.Calls("Pause"), 0);
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
}

TEST_F(MigrationTest, TargetThatCannotRecordTheRestoreAbortsItsCopy) {
  target_write_fails_ = [](const IncomingRecord& rec) {
    return rec.phase == TargetPhase::kRestored;
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  ExpectRunsOnceOn(source_, 42);
  ExpectTargetClean();
  // A restart of the target changes nothing.
  RestartTarget();
  ExpectRunsOnceOn(source_, 42);
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(MigrationTest, CommitVerdictThatCannotBeWrittenIsNotGiven) {
  target_write_fails_ = [](const IncomingRecord& rec) {
    return rec.phase == TargetPhase::kCommitted;
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_TRUE(adopted_.empty());
  ExpectRunsOnceOn(source_, 42);
  // The target restarts over what it wrote: still exactly one copy.
  RestartTarget();
  ExpectRunsOnceOn(source_, 42);
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(LedgerMigrationTest, CommitVerdictThatCannotBeWrittenKeepsTheSourceFrozenUntilItCan) {
  target_write_fails_ = [](const IncomingRecord& rec) {
    return rec.phase == TargetPhase::kCommitted;
  };
  MigrationReport r = Migrate();
  // The ledger names the target, which cannot commit: neither copy is given
  // up; the source stays frozen, the target's copy uncommitted.
  ASSERT_EQ(r.phase, MigrationPhase::kResolving) << r.error.ToString();
  EXPECT_EQ(ledger_.node, "node2");
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kRestored);
  EXPECT_TRUE(adopted_.empty());
  target_write_fails_ = nullptr;  // the target's disk has room again
  r = Recover(r);
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, OracleCommitThatCannotBeWrittenKeepsTheCopyUncommitted) {
  UseTargetOracle([](const IncomingRecord&) -> StatusOr<bool> { return true; });
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ASSERT_EQ(Migrate().phase, MigrationPhase::kResolving);
  target_write_fails_ = [](const IncomingRecord& rec) {
    return rec.phase == TargetPhase::kCommitted;
  };
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kRestored);
  EXPECT_TRUE(adopted_.empty());
  target_write_fails_ = nullptr;  // the disk has room again
  incoming_->ExpireIdle();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
}

TEST_F(MigrationTest, RollbackOfATargetThatCommittedDoesNotThaw) {
  // The target committed and the source heard nothing; its journal says an
  // earlier phase (written by an agent that ignored a failed journal write).
  transport_->DropResponse("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ASSERT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  transport_->Heal();
  r.phase = MigrationPhase::kTransferring;
  r = driver_->Recover(spec_, r, SourceJournal());
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, TargetThatDiesAfterItsCommitVerdictAdoptsTheCopyAtRestart) {
  // The target persists Committed, then dies before its registry records the
  // workload; the source hears Committed and releases its copy.
  die_after_ = [](const IncomingRecord& rec) { return rec.phase == TargetPhase::kCommitted; };
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ASSERT_FALSE(source_.Has("work"));
  ASSERT_TRUE(adopted_.empty());
  RestartTarget();
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});  // the registry owns it now
  ExpectRunsOnceOn(target_, 42);
  // Adopted once: a second restart does not adopt it again.
  RestartTarget();
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
}

TEST_F(MigrationTest, RecordThatCannotBeWrittenAtTheCommitIsCompletedAtRestart) {
  adopt_fails_ = true;  // the workload record cannot be written
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ASSERT_TRUE(adopted_.empty());
  adopt_fails_ = false;
  RestartTarget();
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(MigrationTest, CommitVerdictNotAdoptedIsNeverForgottenBeforeARestartAdoptsIt) {
  adopt_fails_ = true;  // the workload record cannot be written at the commit
  ASSERT_EQ(Migrate().phase, MigrationPhase::kSucceeded);
  adopt_fails_ = false;
  clock_.Advance(std::chrono::hours(25));
  // Forgotten, a restart would find a container no record or verdict names.
  EXPECT_TRUE(incoming_->ForgetFinished(std::chrono::hours(24)).empty());
  RestartTarget();
  EXPECT_EQ(adopted_, std::vector<std::string>{"work"});
  ExpectRunsOnceOn(target_, 42);
  clock_.Advance(std::chrono::hours(25));
  EXPECT_EQ(incoming_->ForgetFinished(std::chrono::hours(24)),
            std::vector<std::string>{"m-1"});  // adopted: forgotten in its time
}

TEST_F(MigrationTest, CommittedRecordWithoutACopyIsNotAdoptedAtRestart) {
  die_after_ = [](const IncomingRecord& rec) { return rec.phase == TargetPhase::kCommitted; };
  ASSERT_EQ(Migrate().phase, MigrationPhase::kSucceeded);
  ASSERT_TRUE(target_.Delete("work").ok());  // gone while the agent was down
  RestartTarget();
  EXPECT_TRUE(adopted_.empty());
  EXPECT_TRUE(target_disk_.at("m-1").adopted);  // settled: forgotten in its time
}

TEST_F(MigrationTest, SourceCopyGoneWhenTheTargetAbortedEndsTheMigration) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ASSERT_TRUE(source_.Delete("work").ok());  // the source node lost its container
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();  // the target aborts its uncommitted copy
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  // Nothing to thaw and nothing runs it: the migration ends (the agent's
  // lost-workload checks take over) instead of waiting in Resolving forever.
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_NE(r.error.message().find("source copy is gone"), std::string::npos) << r.error.ToString();
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(LedgerMigrationTest, SourceCopyGoneWhenTheTargetAbortedEndsTheMigration) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  ledger_.transfer_unknown = 1000;  // never moved
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ASSERT_TRUE(source_.Delete("work").ok());
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  transport_->Heal();
  ledger_.transfer_unknown = 0;
  r = Recover(r);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_NE(r.error.message().find("source copy is gone"), std::string::npos) << r.error.ToString();
  EXPECT_EQ(ledger_.node, "node1");
}

TEST_F(MigrationTest, TargetThatForgotACommittedMigrationIsNotTakenForAborted) {
  transport_->DropResponse("Commit");  // target committed; the source never heard
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  // The source stays away longer than the target keeps finished records.
  clock_.Advance(std::chrono::hours(25));
  ASSERT_EQ(incoming_->ForgetFinished(std::chrono::hours(24)), std::vector<std::string>{"m-1"});
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  // "Never heard of it" is no answer: the copy stays frozen, never thawed
  // beside the target's.
  EXPECT_EQ(r.phase, MigrationPhase::kResolving) << r.error.ToString();
  EXPECT_NE(r.error.message().find("no record of migration m-1"), std::string::npos)
      << r.error.ToString();
  EXPECT_EQ(source_.State("work"), TaskState::kPaused);
  ExpectRunsOnceOn(target_, 42);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kUnknown);  // no tombstone made
}

// Hole 5 with a ledger: the target committed, the source was away longer than
// the target's history; the ledger's records (not the target's "not found")
// say the target owns it: the source copy is released, never thawed.
TEST_F(LedgerMigrationTest, TargetThatForgotACommitIsAnsweredByTheLedger) {
  transport_->DropResponse("Commit");  // committed there; the source never heard
  transport_->DropRequest("Query");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ASSERT_EQ(ledger_.node, "node2");
  clock_.Advance(std::chrono::hours(25));
  ASSERT_EQ(incoming_->ForgetFinished(std::chrono::hours(24)), std::vector<std::string>{"m-1"});
  transport_->Heal();
  r = Recover(r);
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(ledger_.in_doubt, 1);
  EXPECT_EQ(ledger_.Count("Revert"), 0);
  EXPECT_FALSE(source_.Has("work"));
  ExpectRunsOnceOn(target_, 42);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kUnknown);  // no tombstone made
}

// The ledger names a third owner (the workload was restarted elsewhere while
// the source was away) and the target forgot: released, never thawed.
TEST_F(LedgerMigrationTest, TargetThatForgotAndAThirdOwnerReleasesTheSourceCopy) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Query");
  transport_->DropRequest("Abort");
  ledger_.transfer_unknown = 1000;  // never moved
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();  // no oracle: aborted
  clock_.Advance(std::chrono::hours(25));
  incoming_->ForgetFinished(std::chrono::hours(24));
  ASSERT_EQ(*incoming_->Query("m-1"), TargetPhase::kUnknown);
  ledger_.node = "node3";
  ledger_.migration = "";
  ledger_.transfer_unknown = 0;
  transport_->Heal();
  r = Recover(r);
  EXPECT_EQ(r.phase, MigrationPhase::kFailed) << r.error.ToString();
  EXPECT_NE(r.error.message().find("released, not thawed"), std::string::npos)
      << r.error.ToString();
  EXPECT_FALSE(source_.Has("work"));
  EXPECT_FALSE(target_.Has("work"));
}

// The ownership never moved and the target forgot its abort: the ledger says
// the source owns it, so it thaws.
TEST_F(LedgerMigrationTest, TargetThatForgotAnAbortLetsTheSourceThawOnTheLedgersWord) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Query");
  transport_->DropRequest("Abort");
  ledger_.transfer_unknown = 1000;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  clock_.Advance(std::chrono::hours(25));
  incoming_->ForgetFinished(std::chrono::hours(24));
  ledger_.transfer_unknown = 0;
  transport_->Heal();
  r = Recover(r);
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  ExpectRunsOnceOn(source_, 42);
}

// A Revert the ledger refuses because another node owns the workload: the
// source is never thawed beside it.
TEST_F(LedgerMigrationTest, RevertRefusedForAThirdOwnerReleasesInsteadOfThawing) {
  // The target aborts its restored copy as the ownership moves (so it answers
  // the commit Aborted), and a third node owns the workload by the revert.
  ledger_.on_transfer = [&] { (void)incoming_->Abort("m-1"); };
  ledger_.on_revert = [&] {
    ledger_.node = "node3";
    ledger_.migration = "";
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed) << r.error.ToString();
  EXPECT_EQ(ledger_.Count("Revert"), 1);
  EXPECT_FALSE(source_.Has("work")) << "thawed beside node3's copy";
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(MigrationTest, ReportSurvivesJsonRoundTrip) {
  transport_->CutTransfer();
  MigrationReport r = Migrate();
  auto back = MigrationReportFromJson(MigrationReportToJson(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->phase, r.phase);
  EXPECT_EQ(back->error.code(), r.error.code());
  EXPECT_EQ(back->error.message(), r.error.message());
  EXPECT_EQ(back->failed_phase, r.failed_phase);
  EXPECT_EQ(MigrationReportToJson(*back), MigrationReportToJson(r));
}

TEST_F(MigrationTest, AReleasedSourceSurvivesJsonRoundTrip) {
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  r.phase = MigrationPhase::kFailed;
  r.error = FailedError("owner is node3; the source copy was released, not thawed");
  EXPECT_FALSE(MigrationReportToJson(r).contains("sourceReleased"));
  auto back = MigrationReportFromJson(MigrationReportToJson(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_FALSE(back->source_released);
  r.source_released = true;
  EXPECT_EQ(MigrationReportToJson(r)["sourceReleased"], true);
  back = MigrationReportFromJson(MigrationReportToJson(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->source_released);
}

// ---- what an abort could not remove (the fault soak's B3) ---------------------
// containerd killed during the restore: the restore fails, and so does the
// discard (containerd still down), leaving the container (and its runc
// state) under the workload's name on the target.
class LeftoverTest : public MigrationTest {
 protected:
  void AbortWithContainerdDown() {
    target_.Fail("RestoreTask", RetryError("restore: start task work: Socket closed"));
    target_.Fail("Delete", RetryError("discard: get task work: Connection refused"));
    MigrationReport r = Migrate();
    ASSERT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
    ExpectRunsOnceOn(source_, 42);
    ASSERT_TRUE(target_.Has("work"));  // left behind
    ASSERT_TRUE(target_disk_.contains("m-1"));
    ASSERT_EQ(target_disk_["m-1"].phase, TargetPhase::kAborted);
    EXPECT_TRUE(target_disk_["m-1"].discard_pending);
  }
  void ContainerdBack() {
    target_.Fail("RestoreTask", Status::Ok());
    target_.Fail("Delete", Status::Ok());
  }
  MigrationReport MigrateAgain(const std::string& id) {
    MigrationReport r;
    r.id = id;
    r.workload = "work";
    r.source_node = "node1";
    r.target_url = "http://node2";
    return driver_->Run(spec_, r, SourceJournal(), {}, {});
  }
  void ExpectLeftoversGone() {
    EXPECT_FALSE(target_.Has("work"));
    EXPECT_FALSE(fs::exists(root_ / "target-scratch" / "in-m-1"));
    EXPECT_FALSE(target_disk_["m-1"].discard_pending);
    EXPECT_FALSE(reserved_.contains("work"));
  }
};

TEST_F(LeftoverTest, AFailedDiscardIsRetriedUntilTheCopyIsGone) {
  AbortWithContainerdDown();
  // Still down: tried again, kept for later.
  clock_.Advance(std::chrono::seconds(5));
  incoming_->ExpireIdle();
  EXPECT_TRUE(target_.Has("work"));
  EXPECT_TRUE(target_disk_["m-1"].discard_pending);
  // Never forgotten while something is left.
  clock_.Advance(std::chrono::hours(48));
  EXPECT_TRUE(incoming_->ForgetFinished(std::chrono::hours(1)).empty());
  ContainerdBack();
  incoming_->ExpireIdle();
  ExpectLeftoversGone();
  // And the next migration of the workload to this node succeeds.
  MigrationReport r = MigrateAgain("m-2");
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LeftoverTest, TheNextPrepareRemovesWhatAFailedDiscardLeftFirst) {
  AbortWithContainerdDown();
  ContainerdBack();
  // No upkeep ran yet: the next migration's Prepare clears it first.
  MigrationReport r = MigrateAgain("m-2");
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectRunsOnceOn(target_, 42);
  EXPECT_FALSE(target_disk_["m-1"].discard_pending);
  EXPECT_FALSE(fs::exists(root_ / "target-scratch" / "in-m-1"));
}

TEST_F(LeftoverTest, APrepareThatCannotClearWhatWasLeftRefusesAndChangesNothing) {
  AbortWithContainerdDown();
  target_.Fail("RestoreTask", Status::Ok());  // Delete still fails
  MigrationReport r = MigrateAgain("m-2");
  EXPECT_EQ(r.phase, MigrationPhase::kFailed) << r.error.ToString();
  EXPECT_EQ(r.error.code(), Code::kRetry) << r.error.ToString();
  EXPECT_EQ(source_.Calls("Pause"), 1);  // only m-1 froze it
  ExpectRunsOnceOn(source_, 42);
  EXPECT_TRUE(target_disk_["m-1"].discard_pending);
  EXPECT_FALSE(target_disk_.contains("m-2"));
  EXPECT_FALSE(reserved_.contains("work"));
}

TEST_F(LeftoverTest, PrepareDeletesAStaleContainerNothingClaims) {
  // A container of the workload's name that no record here names (an abort
  // of an older agent that logged "discard failed" and forgot it).
  ContainerSpec stale = spec_;
  stale.log_path.clear();
  ASSERT_TRUE(target_.CreateContainer(stale).ok());
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LeftoverTest, WhatAClaimedNameLeftIsKeptUntilTheNameIsFree) {
  AbortWithContainerdDown();
  ContainerdBack();
  reserved_.insert("work");  // a workload of that name is created here
  clock_.Advance(std::chrono::seconds(5));
  incoming_->ExpireIdle();
  EXPECT_TRUE(target_.Has("work")) << "deleted the container of a name claimed here";
  EXPECT_TRUE(target_disk_["m-1"].discard_pending);
  reserved_.erase("work");
  clock_.Advance(std::chrono::seconds(5));
  incoming_->ExpireIdle();
  ExpectLeftoversGone();
}

TEST_F(LeftoverTest, WhatTheClusterNamesOwnedHereIsNeverRemoved) {
  bool owned = true;
  bool answers = true;
  UseTargetOracle([&](const IncomingRecord&) -> StatusOr<bool> {
    if (!answers) return RetryError("etcd unreachable");
    return owned;
  });
  AbortWithContainerdDown();
  ContainerdBack();
  clock_.Advance(std::chrono::seconds(5));
  incoming_->ExpireIdle();
  EXPECT_TRUE(target_.Has("work")) << "deleted a copy the cluster names owned here";
  answers = false;
  clock_.Advance(std::chrono::seconds(5));
  incoming_->ExpireIdle();
  EXPECT_TRUE(target_.Has("work")) << "deleted a copy whose owner nobody could tell";
  answers = true;
  owned = false;
  clock_.Advance(std::chrono::seconds(5));
  incoming_->ExpireIdle();
  ExpectLeftoversGone();
}

TEST_F(LeftoverTest, ARestartedTargetRemovesWhatAFailedDiscardLeft) {
  AbortWithContainerdDown();
  ContainerdBack();
  RestartTarget();
  ExpectLeftoversGone();
  MigrationReport r = MigrateAgain("m-2");
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectRunsOnceOn(target_, 42);
}

TEST_F(LeftoverTest, ACommittedCopyNotAdoptedYetIsNeverTakenForALeftover) {
  // m-1 committed here, but its workload record was not written (adopt
  // failed): the copy under the name is this node's.
  adopt_fails_ = true;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ASSERT_TRUE(target_.Has("work"));
  // Another migration of the name finds it free in the registry (whose
  // record was not written) and is refused all the same.
  reserved_.erase("work");
  ASSERT_TRUE(source_.CreateContainer(spec_).ok());
  ASSERT_TRUE(source_.StartTask("work").ok());
  r = MigrateAgain("m-2");
  EXPECT_NE(r.phase, MigrationPhase::kSucceeded);
  EXPECT_EQ(r.error.code(), Code::kConflict) << r.error.ToString();
  EXPECT_TRUE(target_.Has("work"));
  EXPECT_EQ(target_.Counter("work"), 42) << "the committed copy was replaced";
}

TEST_F(LeftoverTest, TheRecordSaysWhatIsPending) {
  IncomingRecord rec;
  rec.offer.id = "m-1";
  rec.offer.spec.name = "work";
  rec.offer.spec.image = kImage;
  rec.phase = TargetPhase::kAborted;
  rec.discard_pending = true;
  auto back = IncomingRecordFromJson(IncomingRecordToJson(rec));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->discard_pending);
  nlohmann::json older = IncomingRecordToJson(rec);
  older.erase("discardPending");
  back = IncomingRecordFromJson(older);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_FALSE(back->discard_pending);
}

// ---- which fault a migration met, and how it ended (issue 13, "Also") ----------

using api::Decider;
using api::FaultKind;
using api::MigrationOutcome;

// The fault the report names (kind, phase, node) and its resolution.
void ExpectFault(const MigrationReport& r, FaultKind kind, MigrationPhase phase,
                 const std::string& node) {
  ASSERT_TRUE(r.fault.has_value()) << "no fault in a report ending " << MigrationPhaseName(r.phase)
                                   << ": " << r.error.ToString();
  EXPECT_EQ(api::FaultKindName(r.fault->kind), api::FaultKindName(kind)) << r.fault->message;
  EXPECT_EQ(MigrationPhaseName(r.fault->phase), MigrationPhaseName(phase)) << r.fault->message;
  EXPECT_EQ(r.fault->node, node);
  EXPECT_FALSE(r.fault->message.empty());
  EXPECT_GT(r.fault->at_ms, 0);
}
void ExpectResolution(const MigrationReport& r, MigrationOutcome outcome, Decider by) {
  ASSERT_TRUE(r.resolution.has_value()) << "no resolution in " << MigrationPhaseName(r.phase);
  EXPECT_EQ(api::MigrationOutcomeName(r.resolution->outcome), api::MigrationOutcomeName(outcome));
  EXPECT_EQ(api::DeciderName(r.resolution->decided_by), api::DeciderName(by));
  EXPECT_EQ(r.resolution->at_ms, r.finished_ms);
}

TEST_F(MigrationTest, ASuccessMeetsNoFaultAndIsCommittedByTheSource) {
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded);
  EXPECT_FALSE(r.fault.has_value());
  ExpectResolution(r, MigrationOutcome::kCommitted, Decider::kSource);
}

TEST_F(MigrationTest, FaultOfAFailedHelloIsAnInvalidOrder) {
  transport_->SetNotAnAgent();
  MigrationReport r = Migrate();
  ExpectFault(r, FaultKind::kInvalidOrder, MigrationPhase::kPreparing, "");
  ExpectResolution(r, MigrationOutcome::kUntouched, Decider::kSource);
}

TEST_F(MigrationTest, FaultOfARefusedPrepareIsTheTargets) {
  target_.Fail("ImageExists", NotFoundError("image"));
  MigrationReport r = Migrate();
  ExpectFault(r, FaultKind::kTargetRefused, MigrationPhase::kPreparing, "node2");
  ExpectResolution(r, MigrationOutcome::kUntouched, Decider::kSource);
}

TEST_F(MigrationTest, FaultOfAFailedCheckpointIsTheSources) {
  source_.Fail("CheckpointTask", FailedError("criu dump failed"));
  MigrationReport r = Migrate();
  ExpectFault(r, FaultKind::kCheckpointFailed, MigrationPhase::kCheckpointing, "node1");
  ExpectResolution(r, MigrationOutcome::kRolledBack, Decider::kSource);
}

TEST_F(MigrationTest, FaultOfACutStreamIsATransferFailure) {
  transport_->CutTransfer();
  MigrationReport r = Migrate();
  ExpectFault(r, FaultKind::kTransferFailed, MigrationPhase::kTransferring, "node2");
  ExpectResolution(r, MigrationOutcome::kRolledBack, Decider::kSource);
}

TEST_F(MigrationTest, FaultOfAFailedRestoreIsTheTargetsAndTheTargetDecides) {
  target_.Fail("RestoreTask", FailedError("criu restore failed"));
  MigrationReport r = Migrate();
  ExpectFault(r, FaultKind::kRestoreFailed, MigrationPhase::kRestoring, "node2");
  ExpectResolution(r, MigrationOutcome::kRolledBack, Decider::kTarget);
}

TEST_F(MigrationTest, ALostCommitAnswerIsCommittedOnTheTargetsWord) {
  transport_->DropResponse("Commit");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectFault(r, FaultKind::kTargetUnreachable, MigrationPhase::kCommitting, "node2");
  ExpectResolution(r, MigrationOutcome::kCommitted, Decider::kTarget);
}

TEST_F(MigrationTest, FaultOfAJournalThatCannotBeWrittenIsStorage) {
  source_write_fails_ = [](const MigrationReport& rep) {
    return rep.phase == MigrationPhase::kCheckpointing;
  };
  MigrationReport r = Migrate();
  ExpectFault(r, FaultKind::kStorageFailed, MigrationPhase::kCheckpointing, "node1");
  ExpectResolution(r, MigrationOutcome::kUntouched, Decider::kSource);
}

TEST_F(MigrationTest, FaultOfACancelIsTheClusters) {
  MigrationReport r = MigrateCancelledAtCheck(3);  // after the checkpoint
  ExpectFault(r, FaultKind::kCancelled, MigrationPhase::kCheckpointing, "");
  ExpectResolution(r, MigrationOutcome::kRolledBack, Decider::kSource);
}

TEST_F(MigrationTest, ARecoveredJournalSaysTheSourceRestarted) {
  ASSERT_TRUE(source_.Pause("work").ok());  // the crash left it frozen
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  r.source_node = "node1";
  r.target_url = "http://node2";
  r.phase = MigrationPhase::kTransferring;
  r = driver_->Recover(spec_, r, SourceJournal());
  ASSERT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectFault(r, FaultKind::kSourceRestarted, MigrationPhase::kTransferring, "node1");
  ExpectResolution(r, MigrationOutcome::kRolledBack, Decider::kSource);
}

TEST_F(MigrationTest, AResolvingMigrationKeepsItsFirstFaultWhenRecovered) {
  transport_->DropResponse("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ExpectFault(r, FaultKind::kTargetUnreachable, MigrationPhase::kCommitting, "node2");
  EXPECT_FALSE(r.resolution.has_value());  // not ended yet
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded);
  ExpectFault(r, FaultKind::kTargetUnreachable, MigrationPhase::kCommitting, "node2");
  ExpectResolution(r, MigrationOutcome::kCommitted, Decider::kTarget);
}

TEST_F(MigrationTest, ASourceCopyGoneEndsWithOutcomeSourceGone) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Abort");
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  ASSERT_TRUE(source_.Delete("work").ok());
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  transport_->Heal();
  r = driver_->Recover(spec_, r, SourceJournal());
  ASSERT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  ExpectResolution(r, MigrationOutcome::kSourceGone, Decider::kTarget);
}

TEST_F(LedgerMigrationTest, FaultOfAnUnreachableLedgerIsEtcd) {
  ledger_.transfer_unknown = 2;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectFault(r, FaultKind::kEtcdUnavailable, MigrationPhase::kCommitting, "");
  ExpectResolution(r, MigrationOutcome::kCommitted, Decider::kTarget);
}

TEST_F(LedgerMigrationTest, ARefusedTransferIsSupersededAndTheSourceDecides) {
  ledger_.migration = "m-other";
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectFault(r, FaultKind::kSuperseded, MigrationPhase::kCommitting, "");
  ExpectResolution(r, MigrationOutcome::kRolledBack, Decider::kSource);
}

TEST_F(LedgerMigrationTest, ATransferRefusedForACancelSaysCancelled) {
  // The cancel lands after Run's last check: the transfer is refused.
  int polls = 0;
  ledger_.migration = "m-other";
  MigrationReport r = Migrate([&] { return ++polls > 5; });
  ASSERT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectFault(r, FaultKind::kCancelled, MigrationPhase::kCommitting, "");
}

TEST_F(LedgerMigrationTest, AThirdOwnerReleasesTheCopyOnTheRecordsWord) {
  transport_->DropRequest("Commit");
  transport_->DropRequest("Query");
  transport_->DropRequest("Abort");
  ledger_.transfer_unknown = 1000;
  MigrationReport r = Migrate();
  ASSERT_EQ(r.phase, MigrationPhase::kResolving);
  clock_.Advance(std::chrono::seconds(61));
  incoming_->ExpireIdle();
  clock_.Advance(std::chrono::hours(25));
  incoming_->ForgetFinished(std::chrono::hours(24));
  ledger_.node = "node3";
  ledger_.migration = "";
  ledger_.transfer_unknown = 0;
  transport_->Heal();
  r = Recover(r);
  ASSERT_EQ(r.phase, MigrationPhase::kFailed) << r.error.ToString();
  ExpectFault(r, FaultKind::kEtcdUnavailable, MigrationPhase::kCommitting, "");
  ExpectResolution(r, MigrationOutcome::kReleased, Decider::kRecords);
}

TEST_F(MigrationTest, FaultAndResolutionSurviveJsonRoundTrip) {
  transport_->CutTransfer();
  MigrationReport r = Migrate();
  ASSERT_TRUE(r.fault && r.resolution);
  nlohmann::json j = MigrationReportToJson(r);
  EXPECT_EQ(j["fault"]["kind"], "TransferFailed");
  EXPECT_EQ(j["fault"]["phase"], "Transferring");
  EXPECT_EQ(j["fault"]["node"], "node2");
  EXPECT_EQ(j["resolution"]["outcome"], "RolledBack");
  EXPECT_EQ(j["resolution"]["decidedBy"], "Source");
  auto back = MigrationReportFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->fault, r.fault);
  EXPECT_EQ(back->resolution, r.resolution);
  // A journal written before they existed has neither, and still parses.
  j.erase("fault");
  j.erase("resolution");
  back = MigrationReportFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_FALSE(back->fault || back->resolution);
}

TEST(MigrationFaultCodecTest, BadValuesAreRefusedNamingTheField) {
  const nlohmann::json good = {{"kind", "TargetUnreachable"},
                               {"phase", "Committing"},
                               {"node", "node2"},
                               {"message", "timed out"},
                               {"atMs", 5}};
  ASSERT_TRUE(MigrationFaultFromJson(good).ok());
  auto with = [&](const std::string& key, const nlohmann::json& v) {
    nlohmann::json j = good;
    j[key] = v;
    return MigrationFaultFromJson(j).status();
  };
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"kind", "DiskOnFire"},
                                                           {"kind", 3},
                                                           {"phase", "Teleporting"},
                                                           {"node", "Not A Name"},
                                                           {"message", std::string(5000, 'x')},
                                                           {"atMs", -1},
                                                           {"extra", 1}}) {
    Status s = with(key, value);
    EXPECT_EQ(s.code(), Code::kInvalid) << key << "=" << value.dump();
    EXPECT_NE(s.message().find(key), std::string::npos) << s.message();
  }
  nlohmann::json missing = good;
  missing.erase("kind");
  EXPECT_EQ(MigrationFaultFromJson(missing).status().code(), Code::kInvalid);

  const nlohmann::json res = {{"outcome", "Released"}, {"decidedBy", "Records"}, {"atMs", 7}};
  ASSERT_TRUE(MigrationResolutionFromJson(res).ok());
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"outcome", "Vanished"}, {"decidedBy", "Oracle"}, {"atMs", -2}, {"extra", true}}) {
    nlohmann::json j = res;
    j[key] = value;
    Status s = MigrationResolutionFromJson(j).status();
    EXPECT_EQ(s.code(), Code::kInvalid) << key;
    EXPECT_NE(s.message().find(key), std::string::npos) << s.message();
  }
  // A report carrying a bad fault is refused, not read without it.
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  nlohmann::json j = MigrationReportToJson(r);
  j["fault"] = {{"kind", "DiskOnFire"}, {"phase", "Pending"}};
  EXPECT_EQ(MigrationReportFromJson(j).status().code(), Code::kInvalid);
}

TEST(MigrationFaultCodecTest, LongMessagesAreCutAtACharacterBoundary) {
  std::string message(api::kMaxFaultMessageBytes - 1, 'x');
  message += "\xc3\xa9tag";  // a two-byte character across the limit
  api::MigrationFault f =
      api::MakeFault(FaultKind::kInternal, MigrationPhase::kPending, "", message, 1);
  EXPECT_EQ(f.message.size(), api::kMaxFaultMessageBytes - 1);
  EXPECT_TRUE(MigrationFaultFromJson(MigrationFaultToJson(f)).ok());
}

}  // namespace
}  // namespace kmosix
