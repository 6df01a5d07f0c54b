// The agent's hold failpoints (node-agent/failpoints.h) that the phase-kill
// e2e test (e2e/phase_kill_e2e_test.cc) stands on: phase.hang.<Phase> holds
// the source at the entry of each phase it drives, transfer.hang holds its
// stream mid-way, each until disarmed (bounded), listed in Holding() while it
// waits. The clock is a stepping one: each SleepFor advances it and runs the
// test's probe, so "it waited until disarmed" is counted in sleeps, never
// measured. The agent's wiring (AgentOptions::phase_entered) runs on two
// agents over fake runtimes and the fake transport.
#include "failpoints.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using api::MigrationPhase;
using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeTransport;

// A clock whose SleepFor advances it and then calls on_sleep (if set) with
// the number of sleeps so far.
class SteppingClock final : public Clock {
 public:
  TimePoint Now() const override { return now_; }
  int64_t WallMillis() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(now_.time_since_epoch()).count();
  }
  void SleepFor(Duration d) override {
    now_ += d;
    ++sleeps;
    if (on_sleep) on_sleep(sleeps);
  }
  int sleeps = 0;
  std::function<void(int)> on_sleep;

 private:
  TimePoint now_{std::chrono::seconds(1000)};
};

MigrationReport At(MigrationPhase p) {
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  r.phase = p;
  return r;
}

constexpr MigrationPhase kSourcePhases[] = {
    MigrationPhase::kPreparing, MigrationPhase::kCheckpointing, MigrationPhase::kTransferring,
    MigrationPhase::kRestoring, MigrationPhase::kCommitting,    MigrationPhase::kResolving,
};

TEST(FailpointsTest, AHoldExistsAtTheEntryOfEachPhaseTheSourceDrives) {
  for (MigrationPhase p : kSourcePhases) {
    const std::string name = Failpoints::PhaseHang(p);
    EXPECT_EQ(name, "phase.hang." + std::string(api::MigrationPhaseName(p)));
    EXPECT_TRUE(Failpoints::Known(name)) << name;
  }
  EXPECT_TRUE(Failpoints::Known("transfer.hang"));
  // Ends and the order's first phase are nothing the source enters to work in.
  for (MigrationPhase p : {MigrationPhase::kPending, MigrationPhase::kSucceeded,
                           MigrationPhase::kRolledBack, MigrationPhase::kFailed}) {
    EXPECT_FALSE(Failpoints::Known(Failpoints::PhaseHang(p))) << Failpoints::PhaseHang(p);
  }
  EXPECT_FALSE(Failpoints::Known("phase.hang."));
  EXPECT_FALSE(Failpoints::Known("phase.hang.restoring"));
  // The older ones are still there.
  for (const char* old : {"restore.corrupt-images", "checkpoint.fail", "commit.hang",
                          "restore.hang", "offer.understate", "stream.cut"}) {
    EXPECT_TRUE(Failpoints::Known(old)) << old;
  }
}

TEST(FailpointsTest, APhaseHoldWaitsUntilDisarmedListedAsHolding) {
  for (MigrationPhase p : kSourcePhases) {
    Failpoints fp;
    SteppingClock clock;
    const std::string name = Failpoints::PhaseHang(p);
    fp.Arm(name);
    std::vector<std::string> holding_seen;
    clock.on_sleep = [&](int n) {
      if (n == 1) holding_seen = fp.Holding();
      if (n == 7) fp.Disarm(name);
    };
    fp.HoldAtPhase(At(p), clock);
    EXPECT_EQ(clock.sleeps, 7) << name << ": held until the disarm, no longer";
    EXPECT_EQ(holding_seen, std::vector<std::string>{name}) << name;
    EXPECT_TRUE(fp.Holding().empty()) << name;
    // Disarmed: the next migration goes through.
    fp.HoldAtPhase(At(p), clock);
    EXPECT_EQ(clock.sleeps, 7) << name;
  }
}

TEST(FailpointsTest, OnlyTheArmedPhaseIsHeld) {
  Failpoints fp;
  SteppingClock clock;
  fp.Arm(Failpoints::PhaseHang(MigrationPhase::kCommitting));
  for (MigrationPhase p : kSourcePhases) {
    if (p == MigrationPhase::kCommitting) continue;
    fp.HoldAtPhase(At(p), clock);
    EXPECT_EQ(clock.sleeps, 0) << api::MigrationPhaseName(p) << " was held";
  }
  fp.HoldStream(64 << 20, clock);
  EXPECT_EQ(clock.sleeps, 0) << "the stream was held";
}

TEST(FailpointsTest, AHoldNeverDisarmedEndsAtItsLimitAndHoldsTheNextOneAgain) {
  Failpoints fp;
  SteppingClock clock;
  fp.Arm("phase.hang.Committing");
  const auto start = clock.Now();
  fp.HoldAtPhase(At(MigrationPhase::kCommitting), clock);
  EXPECT_GE(clock.Now() - start, Failpoints::kHoldLimit);
  EXPECT_LT(clock.Now() - start, Failpoints::kHoldLimit + std::chrono::seconds(1));
  EXPECT_TRUE(fp.IsArmed("phase.hang.Committing")) << "the limit does not disarm it";
  EXPECT_TRUE(fp.Holding().empty());
  // A hold is not taken by the migration it held: the next one waits too.
  const int first = clock.sleeps;
  fp.HoldAtPhase(At(MigrationPhase::kCommitting), clock);
  EXPECT_EQ(clock.sleeps, 2 * first);
}

TEST(FailpointsTest, TheStreamIsHeldOnlyOnceEightMiBWereWritten) {
  Failpoints fp;
  SteppingClock clock;
  fp.Arm("transfer.hang");
  std::vector<std::string> holding_seen;
  clock.on_sleep = [&](int n) {
    if (n == 1) holding_seen = fp.Holding();
    if (n == 4) fp.Disarm("transfer.hang");
  };
  fp.HoldStream(Failpoints::kTransferHangBytes - 1, clock);
  EXPECT_EQ(clock.sleeps, 0) << "held before 8 MiB";
  fp.HoldStream(Failpoints::kTransferHangBytes, clock);
  EXPECT_EQ(clock.sleeps, 4);
  EXPECT_EQ(holding_seen, std::vector<std::string>{"transfer.hang"});
  fp.HoldStream(Failpoints::kTransferHangBytes * 2, clock);
  EXPECT_EQ(clock.sleeps, 4) << "held after the disarm";
}

// The agent calls phase_entered at the entry of each phase of an outgoing
// migration, after its journal says that phase, before the phase's work.
class AgentPhaseHoldTest : public ::testing::Test {
 protected:
  static constexpr char kImage[] = "kmosix.local/demo:latest";

  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-failpoints-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    runtime0_.AddImage(kImage);
    runtime1_.AddImage(kImage);
    target_ = std::make_unique<Agent>(Options("node1"), runtime1_, engine1_, no_peer_, clock_,
                                      random_, nullptr);
    ASSERT_TRUE(target_->Start().ok());
    to_node1_ = std::make_unique<FakeTransport>(&target_->Target());
    AgentOptions opts = Options("node0");
    opts.phase_entered = [this](const MigrationReport& r) { Entered(r); };
    source_ =
        std::make_unique<Agent>(opts, runtime0_, engine0_, *to_node1_, clock_, random_, nullptr);
    ASSERT_TRUE(source_->Start().ok());
    api::WorkloadSpec spec;
    spec.name = "work";
    spec.image = kImage;
    auto created = source_->CreateWorkload(spec);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    for (int i = 0; i < 5; ++i) runtime0_.Tick("work");
  }
  void TearDown() override {
    source_.reset();
    target_.reset();
    fs::remove_all(root_);
    fs::remove_all(layers_);
  }
  AgentOptions Options(const std::string& node) {
    AgentOptions opts;
    opts.node = node;
    opts.advertise_url = "http://" + node + ":7700";
    opts.state_dir = (root_ / node / "state").string();
    opts.scratch_dir = root_ / node / "scratch";
    opts.resolve_timeout = std::chrono::seconds(5);
    return opts;
  }

  // What the source looked like at the entry of a phase.
  struct Entry {
    MigrationPhase phase;
    MigrationPhase journal;  // its journal's phase then
    TaskState source_task;   // the workload's task on the source then
    bool target_has = false;
  };
  void Entered(const MigrationReport& r) {
    Entry e{r.phase, MigrationPhase::kPending, runtime0_.State("work"), runtime1_.Has("work")};
    if (auto j = source_->OutgoingReport(r.id)) e.journal = j->phase;
    entries_.push_back(e);
    if (on_entry_) on_entry_(r);
    // The real agent holds here (Failpoints::HoldAtPhase); so do we.
    fp_.HoldAtPhase(r, hold_clock_);
  }
  StatusOr<MigrationReport> Migrate() {
    return source_->Migrate("work", api::AgentMigrateRequest{.target = "http://node1:7700"});
  }
  std::vector<MigrationPhase> Phases() const {
    std::vector<MigrationPhase> out;
    for (const auto& e : entries_) out.push_back(e.phase);
    return out;
  }

  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  const std::string layers_ = "/tmp/kmx-failpoints-layers-" + std::to_string(::getpid());
  FakeRuntime runtime0_{"node0", layers_};
  FakeRuntime runtime1_{"node1", layers_};
  StopAndCopyEngine engine0_{runtime0_, clock_};
  StopAndCopyEngine engine1_{runtime1_, clock_};
  FakeTransport no_peer_{nullptr};
  std::unique_ptr<FakeTransport> to_node1_;
  std::unique_ptr<Agent> target_;
  std::unique_ptr<Agent> source_;
  Failpoints fp_;
  SteppingClock hold_clock_;
  std::vector<Entry> entries_;
  std::function<void(const MigrationReport&)> on_entry_;
};

TEST_F(AgentPhaseHoldTest, EachPhaseIsEnteredJournaledAndBeforeItsWork) {
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->phase, MigrationPhase::kSucceeded) << done->error.ToString();
  EXPECT_EQ(Phases(),
            (std::vector<MigrationPhase>{MigrationPhase::kPreparing, MigrationPhase::kCheckpointing,
                                         MigrationPhase::kTransferring, MigrationPhase::kRestoring,
                                         MigrationPhase::kCommitting}))
      << "the ends are not held";
  ASSERT_EQ(entries_.size(), 5u);
  for (const auto& e : entries_) {
    EXPECT_EQ(e.journal, e.phase) << api::MigrationPhaseName(e.phase) << ": not journaled first";
  }
  // Before the phase's work: nothing prepared at Preparing, not frozen at
  // Checkpointing, frozen from Transferring on, not yet committed at
  // Committing (the source still holds its frozen copy).
  EXPECT_FALSE(entries_[0].target_has) << "the target was asked before Preparing's entry";
  EXPECT_EQ(entries_[1].source_task, TaskState::kRunning) << "frozen before Checkpointing's entry";
  EXPECT_NE(entries_[2].source_task, TaskState::kRunning) << "not frozen at Transferring";
  EXPECT_NE(entries_[4].source_task, TaskState::kRunning) << "thawed before Committing";
}

TEST_F(AgentPhaseHoldTest, AnArmedPhaseHoldsTheSourceThereUntilDisarmed) {
  fp_.Arm("phase.hang.Committing");
  struct Seen {
    MigrationPhase journal = MigrationPhase::kPending;
    TaskState source = TaskState::kUnknown;
    bool target_has = false;
  } seen;
  std::string id;
  on_entry_ = [&](const MigrationReport& r) { id = r.id; };
  hold_clock_.on_sleep = [&](int n) {
    if (n == 1) {
      auto j = source_->OutgoingReport(id);
      if (j) seen.journal = j->phase;
      seen.source = runtime0_.State("work");
      seen.target_has = runtime1_.Has("work");
    }
    if (n == 10) fp_.Disarm("phase.hang.Committing");
  };
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(hold_clock_.sleeps, 10) << "held until the disarm";
  // While held: the journal says Committing, the source keeps its frozen
  // copy, the target its restored one.
  EXPECT_EQ(seen.journal, MigrationPhase::kCommitting);
  EXPECT_NE(seen.source, TaskState::kRunning) << TaskStateName(seen.source);
  EXPECT_TRUE(seen.target_has);
  EXPECT_EQ(done->phase, MigrationPhase::kSucceeded) << done->error.ToString();
  EXPECT_EQ(runtime1_.State("work"), TaskState::kRunning);
  EXPECT_FALSE(runtime0_.Has("work"));
}

// A target gone while the source is held at Committing: the source resolves
// (Resolving, held there too), and the recovery after the target is back is
// not held again (phase_entered is the first run's).
TEST_F(AgentPhaseHoldTest, ATargetGoneAtCommittingLeadsTheSourceIntoAHeldResolving) {
  fp_.Arm("phase.hang.Resolving");
  on_entry_ = [&](const MigrationReport& r) {
    if (r.phase == MigrationPhase::kCommitting) to_node1_->Down(true);
  };
  bool held_frozen = false;
  hold_clock_.on_sleep = [&](int n) {
    if (n == 1) held_frozen = runtime0_.State("work") != TaskState::kRunning;
    if (n == 5) fp_.Disarm("phase.hang.Resolving");
  };
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->phase, MigrationPhase::kResolving) << done->error.ToString();
  ASSERT_FALSE(entries_.empty());
  EXPECT_EQ(entries_.back().phase, MigrationPhase::kResolving);
  EXPECT_EQ(entries_.back().journal, MigrationPhase::kResolving);
  EXPECT_EQ(hold_clock_.sleeps, 5);
  EXPECT_TRUE(held_frozen) << "the source copy ran while held in Resolving";
  // The target is back: the agent's upkeep finishes it, without a hold.
  const size_t entered = entries_.size();
  fp_.Arm("phase.hang.Resolving");
  to_node1_->Heal();
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(std::chrono::seconds(2));
    source_->Tick();
  }
  EXPECT_EQ(entries_.size(), entered) << "a recovery was held";
  auto j = source_->OutgoingReport(done->id);
  ASSERT_TRUE(j.has_value());
  EXPECT_TRUE(IsFinal(j->phase)) << api::MigrationPhaseName(j->phase);
  const int running = (runtime0_.State("work") == TaskState::kRunning ? 1 : 0) +
                      (runtime1_.State("work") == TaskState::kRunning ? 1 : 0);
  EXPECT_EQ(running, 1) << "copies running after the recovery";
}

}  // namespace
}  // namespace kmosix::agent
