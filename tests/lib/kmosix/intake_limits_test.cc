// Bounded intake (kmosix/intake_limits.h) alone, and through a real
// IncomingMigrations and MigrationDriver over fake runtimes and the in-process
// transport: a third concurrent incoming migration is refused busy and then
// succeeds once a slot frees; a stream larger than its offer is cut and the
// migration rolls back with the workload running on the source; the prefault
// budget is shared; an offer over the ceiling is refused before any freeze.
#include "kmosix/intake_limits.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>

#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "kmosix/migration.h"
#include "kmosix/migration_target.h"
#include "kmosix/spec_json.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix {
namespace {

using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeTransport;
namespace fs = std::filesystem;
using std::chrono::seconds;

constexpr char kImage[] = "kmosix.local/demo:latest";

MigrationOffer Offer(const std::string& id, const std::string& name, uint64_t memory = 0) {
  MigrationOffer o;
  o.id = id;
  o.source_node = "node1";
  o.source_url = "http://node1";
  o.spec.name = name;
  o.spec.image = kImage;
  o.memory_bytes = memory;
  return o;
}

// ---- the limiter alone ------------------------------------------------------

TEST(IntakeLimiterTest, AdmitsUpToTheLimitThenRefusesBusyUntilASlotFrees) {
  IntakeOptions o;
  o.max_incoming = 2;
  o.retry_after = seconds(7);
  IntakeLimiter l(o);
  ASSERT_TRUE(l.Admit("a").ok());
  ASSERT_TRUE(l.Admit("b").ok());
  EXPECT_TRUE(l.Admit("a").ok()) << "a slot holder is admitted again";
  Status busy = l.Admit("c");
  EXPECT_EQ(busy.code(), Code::kRetry);
  ASSERT_TRUE(RetryAfterOf(busy).has_value()) << busy.ToString();
  EXPECT_EQ(*RetryAfterOf(busy), seconds(7));
  EXPECT_EQ(l.Snapshot().incoming, 2);
  EXPECT_EQ(l.Snapshot().refused_busy_total, 1u);
  l.Release("a");
  l.Release("a");  // twice: nothing more
  EXPECT_TRUE(l.Admit("c").ok());
  EXPECT_EQ(l.Snapshot().incoming, 2);
  EXPECT_EQ(l.Snapshot().admitted_total, 3u);
}

TEST(IntakeLimiterTest, ZeroMeansNoLimitOnIncoming) {
  IntakeOptions o;
  o.max_incoming = 0;
  IntakeLimiter l(o);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(l.Admit("m" + std::to_string(i)).ok());
}

TEST(IntakeLimiterTest, PrefaultBudgetIsSharedAndComesBackWithTheSlot) {
  IntakeOptions o;
  o.prefault_budget_bytes = 10;
  IntakeLimiter l(o);
  EXPECT_EQ(l.GrantPrefault("a", 4), 0u) << "no slot, no grant";
  ASSERT_TRUE(l.Admit("a").ok());
  ASSERT_TRUE(l.Admit("b").ok());
  EXPECT_EQ(l.GrantPrefault("a", 6), 6u);
  EXPECT_EQ(l.GrantPrefault("b", 6), 4u);
  EXPECT_EQ(l.Snapshot().prefault_bytes, 10u);
  l.Release("a");
  EXPECT_EQ(l.Snapshot().prefault_bytes, 4u);
  ASSERT_TRUE(l.Admit("c").ok());
  EXPECT_EQ(l.GrantPrefault("c", 100), 6u);
}

TEST(IntakeLimiterTest, OffersOverTheCeilingAreInvalidAndLimitsAreTheTightest) {
  IntakeOptions o;
  o.ceiling = {100, 1000, 0};
  IntakeLimiter l(o);
  MigrationOffer offer = Offer("m", "w");
  EXPECT_TRUE(l.CheckOffer(offer).ok()) << "nothing declared";
  EXPECT_EQ(l.LimitsFor(offer), (StreamLimits{100, 1000, 0}));
  offer.stream = {10, 2000, 5};
  Status s = l.CheckOffer(offer);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_NE(s.message().find("bytes 2000"), std::string::npos) << s.ToString();
  EXPECT_EQ(l.Snapshot().refused_offer_total, 1u);
  offer.stream = {10, 500, 5};
  EXPECT_TRUE(l.CheckOffer(offer).ok());
  EXPECT_EQ(l.LimitsFor(offer), (StreamLimits{10, 500, 5}));
}

TEST(IntakeErrorsTest, RetryAfterSurvivesAnnotateAndTheWireButNotOtherCodes) {
  Status busy = BusyError("busy: 2 in flight", seconds(3));
  EXPECT_EQ(*RetryAfterOf(busy.Annotate("prepare")), seconds(3));
  // Across the peer protocol: {"code","message"} back into a Status.
  nlohmann::json j = ErrorJson(busy.Annotate("node b"));
  Status back(Code::kRetry, j["message"].get<std::string>());
  EXPECT_EQ(*RetryAfterOf(back.Annotate("prepare: target refused")), seconds(3));
  EXPECT_FALSE(RetryAfterOf(RetryError("timed out")).has_value());
  EXPECT_FALSE(RetryAfterOf(FailedError(busy.message())).has_value());
  EXPECT_FALSE(RetryAfterOf(RetryError("x; retry after 5 s and more")).has_value());
  EXPECT_FALSE(RetryAfterOf(RetryError("x; retry after -5 s")).has_value());
  Status cut = StreamLimitError(InvalidError("file x goes beyond the 3 bytes allowed"));
  EXPECT_TRUE(IsStreamLimitError(cut));
  EXPECT_TRUE(IsStreamLimitError(cut.Annotate("transfer")));
  EXPECT_EQ(StreamLimitError(cut).message(), cut.message());
  EXPECT_FALSE(IsStreamLimitError(InvalidError("bad magic")));
  EXPECT_EQ(TightestLimits({0, 5, 9}, {3, 0, 4}), (StreamLimits{3, 5, 4}));
}

// ---- through the target and the driver --------------------------------------

// A FakeClock whose sleeps first run a hook (what happens meanwhile).
class HookClock : public FakeClock {
 public:
  void SleepFor(Duration d) override {
    ++sleeps;
    if (on_sleep) on_sleep();
    FakeClock::SleepFor(d);
  }
  std::function<void()> on_sleep;
  int sleeps = 0;
};

// The source's engine, but declaring `declared` as its stream bound, and
// recording (target side) the memory hint Prepare was given.
class DeclaringEngine final : public CheckpointEngine {
 public:
  explicit DeclaringEngine(CheckpointEngine& inner) : inner_(inner) {}
  StatusOr<Capture> Freeze(const ContainerSpec& spec, const std::string& dir) override {
    ++freezes;
    return inner_.Freeze(spec, dir);
  }
  Status Thaw(const std::string& name) override { return inner_.Thaw(name); }
  Status Release(const std::string& name) override { return inner_.Release(name); }
  uint64_t MemoryBytes(const std::string&) override { return memory; }
  StreamLimits StreamBound(const ContainerSpec&, uint64_t) override { return declared; }
  StatusOr<Landing> Prepare(const ContainerSpec& spec, const std::string& dir,
                            uint64_t memory_bytes) override {
    prefault_hints.push_back(memory_bytes);
    return inner_.Prepare(spec, dir, memory_bytes);
  }
  Status Restore(const ContainerSpec& spec, const Landing& landing) override {
    return inner_.Restore(spec, landing);
  }
  Status RestoreStopped(const ContainerSpec& spec, const Landing& landing) override {
    return inner_.RestoreStopped(spec, landing);
  }
  Status Resume(const std::string& name) override { return inner_.Resume(name); }
  Status Discard(const std::string& name) override { return inner_.Discard(name); }

  StreamLimits declared;
  uint64_t memory = 0;
  int freezes = 0;
  std::vector<uint64_t> prefault_hints;

 private:
  CheckpointEngine& inner_;
};

class IntakeMigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-intake-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "logs");
    source_.AddImage(kImage);
    target_.AddImage(kImage);
    Build({});
    spec_.name = "work";
    spec_.image = kImage;
    spec_.log_path = root_ / "source.log";
    { std::ofstream(spec_.log_path) << "tick=1\n"; }
    ASSERT_TRUE(source_.CreateContainer(spec_).ok());
    ASSERT_TRUE(source_.StartTask("work").ok());
    for (int i = 0; i < 42; ++i) source_.Tick("work");
  }
  void TearDown() override { fs::remove_all(root_); }

  void Build(IntakeOptions intake) {
    limiter_ = std::make_unique<IntakeLimiter>(intake);
    IncomingMigrations::Options topts{"node2",        "test",      root_ / "target-scratch",
                                      root_ / "logs", seconds(60), limiter_.get()};
    IncomingMigrations::Hooks hooks;
    hooks.reserve = [this](const std::string& n) -> Status {
      if (!reserved_.insert(n).second) return ConflictError(n + " in use");
      return Status::Ok();
    };
    hooks.unreserve = [this](const std::string& n) { reserved_.erase(n); };
    incoming_ =
        std::make_unique<IncomingMigrations>(target_declaring_, target_, clock_, topts, hooks);
    transport_ = std::make_unique<FakeTransport>(incoming_.get());
    MigrationDriver::Options dopts{"http://node1", root_ / "source-scratch", seconds(5),
                                   std::chrono::milliseconds(500)};
    dopts.busy_wait = seconds(60);
    driver_ = std::make_unique<MigrationDriver>(source_declaring_, *transport_, clock_, dopts);
  }

  MigrationReport Migrate() {
    MigrationReport r;
    r.id = "m-1";
    r.workload = "work";
    r.source_node = "node1";
    r.target_url = "http://node2";
    return driver_->Run(spec_, r, [](const MigrationReport&) { return Status::Ok(); });
  }

  // Exactly one running copy of "work", with its state.
  void ExpectRunsOnceOn(FakeRuntime& where) {
    int running = (source_.State("work") == TaskState::kRunning) +
                  (target_.State("work") == TaskState::kRunning);
    EXPECT_EQ(running, 1);
    EXPECT_EQ(where.State("work"), TaskState::kRunning);
    EXPECT_EQ(where.Counter("work"), 42);
  }

  fs::path root_;
  HookClock clock_;
  FakeRuntime source_{"node1", "/tmp/kmx-intake-layers-" + std::to_string(::getpid()) + "-1"};
  FakeRuntime target_{"node2", "/tmp/kmx-intake-layers-" + std::to_string(::getpid()) + "-2"};
  StopAndCopyEngine source_engine_{source_, clock_};
  StopAndCopyEngine target_engine_{target_, clock_};
  DeclaringEngine source_declaring_{source_engine_};
  DeclaringEngine target_declaring_{target_engine_};
  std::unique_ptr<IntakeLimiter> limiter_;
  std::unique_ptr<IncomingMigrations> incoming_;
  std::unique_ptr<FakeTransport> transport_;
  std::unique_ptr<MigrationDriver> driver_;
  ContainerSpec spec_;
  std::set<std::string> reserved_;
};

TEST_F(IntakeMigrationTest, ThirdConcurrentIncomingIsRefusedBusyThenSucceeds) {
  IntakeOptions o;
  o.max_incoming = 2;
  Build(o);
  // Two migrations of other workloads are being received here.
  ASSERT_TRUE(incoming_->Prepare(Offer("in-a", "a")).ok());
  ASSERT_TRUE(incoming_->Prepare(Offer("in-b", "b")).ok());
  // The third waits (the source sleeps its Retry-After); meanwhile one of
  // the two ends.
  clock_.on_sleep = [&] {
    if (clock_.sleeps == 2) (void)incoming_->Abort("in-a");
  };
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(clock_.sleeps, 2) << "asked three times: busy, busy, admitted";
  EXPECT_EQ(limiter_->Snapshot().refused_busy_total, 2u);
  EXPECT_EQ(source_declaring_.freezes, 1) << "nothing frozen while the target was busy";
  ExpectRunsOnceOn(target_);
  // in-b still holds its slot; m-1 gave its back when restored.
  EXPECT_EQ(limiter_->Snapshot().incoming, 1);
}

TEST_F(IntakeMigrationTest, TargetBusyPastTheWaitFailsWithNothingFrozenOrBarred) {
  IntakeOptions o;
  o.max_incoming = 1;
  Build(o);
  ASSERT_TRUE(incoming_->Prepare(Offer("in-a", "a")).ok());
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.error.code(), Code::kRetry) << r.error.ToString();
  EXPECT_TRUE(RetryAfterOf(r.error).has_value()) << r.error.ToString();
  EXPECT_EQ(source_declaring_.freezes, 0);
  ExpectRunsOnceOn(source_);
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kUnknown) << "no abort tombstone left there";
  // Once the slot frees, the same migration goes through.
  ASSERT_TRUE(incoming_->Abort("in-a").ok());
  r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  ExpectRunsOnceOn(target_);
}

TEST_F(IntakeMigrationTest, StreamLargerThanItsOfferIsCutAndRolledBack) {
  Build({});
  source_declaring_.declared = {0, 1, 0};  // one payload byte: the pages are more
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_EQ(r.failed_phase, "Transferring");
  EXPECT_TRUE(IsStreamLimitError(r.error)) << r.error.ToString();
  ExpectRunsOnceOn(source_);
  EXPECT_FALSE(target_.Has("work"));
  EXPECT_FALSE(reserved_.contains("work"));
  EXPECT_FALSE(fs::exists(root_ / "target-scratch" / "in-m-1"));
  EXPECT_EQ(*incoming_->Query("m-1"), TargetPhase::kAborted);
  const IntakeSnapshot snap = limiter_->Snapshot();
  EXPECT_EQ(snap.streams_cut_total, 1u);
  EXPECT_EQ(snap.incoming, 0) << "the slot came back with the abort";
}

TEST_F(IntakeMigrationTest, StreamWithinItsOfferGoesThrough) {
  Build({});
  source_declaring_.declared = {100, 1 << 20, 1000};
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kSucceeded) << r.error.ToString();
  EXPECT_EQ(incoming_->ReceiveLimits("m-1"), (StreamLimits{100, 1 << 20, 1000}));
  ExpectRunsOnceOn(target_);
}

TEST_F(IntakeMigrationTest, StreamOverTheCeilingIsCutEvenIfTheOfferDeclaredNothing) {
  IntakeOptions o;
  o.ceiling = {0, 1, 0};
  Build(o);
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kRolledBack) << r.error.ToString();
  EXPECT_TRUE(IsStreamLimitError(r.error)) << r.error.ToString();
  ExpectRunsOnceOn(source_);
  EXPECT_FALSE(target_.Has("work"));
}

TEST_F(IntakeMigrationTest, OfferOverTheCeilingFailsBeforeAnyFreeze) {
  IntakeOptions o;
  o.ceiling = {0, 1000, 0};
  Build(o);
  source_declaring_.declared = {0, 5000, 0};
  MigrationReport r = Migrate();
  EXPECT_EQ(r.phase, MigrationPhase::kFailed);
  EXPECT_EQ(r.error.code(), Code::kInvalid) << r.error.ToString();
  EXPECT_EQ(source_declaring_.freezes, 0);
  ExpectRunsOnceOn(source_);
  EXPECT_EQ(limiter_->Snapshot().refused_offer_total, 1u);
  EXPECT_EQ(limiter_->Snapshot().incoming, 0);
}

TEST_F(IntakeMigrationTest, PrefaultHintsComeFromTheSharedBudget) {
  IntakeOptions o;
  o.prefault_budget_bytes = 8 << 20;
  Build(o);
  ASSERT_TRUE(incoming_->Prepare(Offer("in-a", "a", 6 << 20)).ok());
  ASSERT_TRUE(incoming_->Prepare(Offer("in-b", "b", 6 << 20)).ok());
  EXPECT_EQ(target_declaring_.prefault_hints, (std::vector<uint64_t>{6 << 20, 2 << 20}));
  ASSERT_TRUE(incoming_->Abort("in-a").ok());
  ASSERT_TRUE(incoming_->Abort("in-b").ok());
  EXPECT_EQ(limiter_->Snapshot().prefault_bytes, 0u);
  EXPECT_EQ(limiter_->Snapshot().incoming, 0);
}

TEST_F(IntakeMigrationTest, OfferDeclarationSurvivesTheWireAndTheJournal) {
  MigrationOffer o = Offer("m-9", "w");
  o.stream = {3, 4096, 7};
  auto back = ParseMigrationOffer(MigrationOfferToJson(o).dump());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->stream, o.stream);
  o.stream = {};
  EXPECT_FALSE(MigrationOfferToJson(o).contains("stream")) << "older targets see no new field";
  EXPECT_FALSE(ParseMigrationOffer(R"({"id":"m","sourceNode":"a","sourceUrl":"http://a",
    "spec":{"name":"w","image":"i"},"stream":{"bytes":-1}})")
                   .ok());
  EXPECT_FALSE(ParseMigrationOffer(R"({"id":"m","sourceNode":"a","sourceUrl":"http://a",
    "spec":{"name":"w","image":"i"},"stream":{"pages":1}})")
                   .ok());
}

}  // namespace
}  // namespace kmosix
