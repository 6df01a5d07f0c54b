// The migration state machine and its rollback decisions, source driver and
// target records together, over fakes at ContainerRuntime and Transport.
// After every scenario the workload must run exactly once, with its state.
#include "kmosix/migration.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
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
    hooks.adopt = [this](const MigrationOffer& o, uint32_t) { adopted_.push_back(o.spec.name); };
    hooks.persist = [this](const IncomingRecord& r) { target_phases_.push_back(r.phase); };
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

  MigrationReport Migrate() {
    MigrationReport r;
    r.id = "m-1";
    r.workload = "work";
    r.source_node = "node1";
    r.target_url = "http://node2";
    return driver_->Run(spec_, r,
                        [this](const MigrationReport& rep) { phases_.push_back(rep.phase); });
  }

  // The invariant: exactly one running copy, carrying the state it had.
  void ExpectRunsOnceOn(FakeRuntime& where, int64_t counter) {
    int running = (source_.State("work") == TaskState::kRunning) +
                  (target_.State("work") == TaskState::kRunning);
    EXPECT_EQ(running, 1) << "source " << TaskStateName(source_.State("work")) << ", target "
                          << TaskStateName(target_.State("work"));
    EXPECT_EQ(where.State("work"), TaskState::kRunning);
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
  std::unique_ptr<IncomingMigrations> incoming_;
  std::unique_ptr<FakeTransport> transport_;
  std::unique_ptr<MigrationDriver> driver_;
  ContainerSpec spec_;
  std::set<std::string> reserved_;
  std::vector<std::string> adopted_;
  std::vector<MigrationPhase> phases_;
  std::vector<TargetPhase> target_phases_;
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
}

TEST_F(MigrationTest, WorkloadLifeTravelsWithTheOffer) {
  std::vector<MigrationOffer> offers;
  IncomingMigrations::Hooks hooks;
  hooks.adopt = [&](const MigrationOffer& o, uint32_t) { offers.push_back(o); };
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
  r = driver_->Recover(spec_, r, [](const MigrationReport&) {});
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
  r = driver_->Recover(spec_, r, [](const MigrationReport&) {});
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
  r = driver_->Recover(spec_, r, [](const MigrationReport&) {});
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
  r = driver_->Recover(spec_, r, [](const MigrationReport&) {});
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
  r = driver_->Recover(spec_, r, [](const MigrationReport&) {});
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack);
  ExpectRunsOnceOn(source_, 42);
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

}  // namespace
}  // namespace kmosix
