// controller/retention.h over the fake store and a fake clock (no sleeping):
// which finished migration records the plan removes (count, age, the newest
// of a workload, records in flight or still named, the minimum age), that
// deletes are compare-and-swap on the record's mod revision and the leader's
// fence, that passes cut short anywhere converge to the same end; and when
// the Compactor compacts (the newest sample at least `retain` old, never
// within min_revisions of the head, an already compacted revision is fine).
#include "controller/retention.h"

#include <gtest/gtest.h>

#include <set>

#include "cluster/records.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"
#include "lib/cluster/gated_store.h"

namespace kmosix::controller {
namespace {

using api::MigrationPhase;
using cluster::KeyLayout;
using std::chrono::hours;
using std::chrono::minutes;

constexpr int64_t kNow = 1'800'000'000'000;
constexpr int64_t kHour = 3600 * 1000;
constexpr int64_t kDay = 24 * kHour;

api::Migration Mig(const std::string& id, const std::string& workload, MigrationPhase phase,
                   int64_t finished_ms) {
  api::Migration m;
  m.id = id;
  m.workload = workload;
  m.source = "n1";
  m.target = "n2";
  m.phase = phase;
  m.requested_by = "api";
  m.created_ms = finished_ms - 1000;
  m.updated_ms = finished_ms;
  m.finished_ms = api::IsFinal(phase) ? finished_ms : 0;
  return m;
}

api::Workload Wl(const std::string& name, const std::string& in_flight = "") {
  api::Workload w;
  w.spec.name = name;
  w.spec.image = "demo";
  w.status.phase = api::WorkloadPhase::kRunning;
  w.status.node = "n1";
  w.status.epoch = 1;
  w.status.migration = in_flight;
  return w;
}

std::set<std::string> IdsOf(const std::vector<RetentionDelete>& plan) {
  std::set<std::string> out;
  for (const auto& d : plan) out.insert(d.id);
  return out;
}

std::string Id(const std::string& prefix, int i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s-%03d", prefix.c_str(), i);
  return buf;
}

// ---- the plan ---------------------------------------------------------------

TEST(RetentionPlanTest, KeepsTheNewestNPerWorkloadAndRemovesTheOldestFirst) {
  std::map<std::string, api::Migration> ms;
  for (int i = 0; i < 8; ++i)
    ms[Id("a", i)] = Mig(Id("a", i), "wa", MigrationPhase::kSucceeded, kNow - (10 - i) * kHour);
  for (int i = 0; i < 3; ++i)
    ms[Id("b", i)] = Mig(Id("b", i), "wb", MigrationPhase::kFailed, kNow - (10 - i) * kHour);
  std::map<std::string, api::Workload> ws = {{"wa", Wl("wa")}, {"wb", Wl("wb")}};
  RetentionOptions o;
  o.keep_finished = 3;
  auto plan = PlanMigrationRetention(ms, ws, kNow, o);
  ASSERT_EQ(plan.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(plan[i].id, Id("a", i));  // oldest first
    EXPECT_EQ(plan[i].why, "count");
  }
}

TEST(RetentionPlanTest, RemovesRecordsOlderThanTheTtlButNeverTheNewestOfAWorkload) {
  std::map<std::string, api::Migration> ms = {
      {"old1", Mig("old1", "w", MigrationPhase::kSucceeded, kNow - 9 * kDay)},
      {"old2", Mig("old2", "w", MigrationPhase::kRolledBack, kNow - 8 * kDay)},
      {"new", Mig("new", "w", MigrationPhase::kSucceeded, kNow - 6 * kDay)},
      {"only", Mig("only", "lonely", MigrationPhase::kFailed, kNow - 300 * kDay)},
  };
  std::map<std::string, api::Workload> ws = {{"w", Wl("w")}, {"lonely", Wl("lonely")}};
  RetentionOptions o;
  auto plan = PlanMigrationRetention(ms, ws, kNow, o);
  EXPECT_EQ(IdsOf(plan), (std::set<std::string>{"old1", "old2"}));
  for (const auto& d : plan) EXPECT_EQ(d.why, "age");
  // The newest of an existing workload stays, however old.
  ms.erase("new");
  plan = PlanMigrationRetention(ms, ws, kNow, o);
  EXPECT_EQ(IdsOf(plan), (std::set<std::string>{"old1"}));
}

TEST(RetentionPlanTest, NeverARecordInFlightOrStillNamedByItsWorkloadOrTooYoung) {
  std::map<std::string, api::Migration> ms;
  for (auto phase :
       {MigrationPhase::kPending, MigrationPhase::kCheckpointing, MigrationPhase::kTransferring,
        MigrationPhase::kRestoring, MigrationPhase::kCommitting}) {
    std::string id = "flight-" + std::string(api::MigrationPhaseName(phase));
    ms[id] = Mig(id, "w", phase, kNow - 100 * kDay);
  }
  // Finished, but the workload record still names it (the agent has not
  // closed it yet).
  ms["named"] = Mig("named", "w", MigrationPhase::kSucceeded, kNow - 50 * kDay);
  ms["newest"] = Mig("newest", "w", MigrationPhase::kSucceeded, kNow - 40 * kDay);
  // Finished a minute ago, over the count: too young to go.
  for (int i = 0; i < 4; ++i)
    ms[Id("young", i)] = Mig(Id("young", i), "v", MigrationPhase::kFailed, kNow - 60'000 + i);
  std::map<std::string, api::Workload> ws = {{"w", Wl("w", "named")}, {"v", Wl("v")}};
  RetentionOptions o;
  o.keep_finished = 1;
  EXPECT_TRUE(PlanMigrationRetention(ms, ws, kNow, o).empty());
  o.min_age = std::chrono::seconds(30);
  EXPECT_EQ(IdsOf(PlanMigrationRetention(ms, ws, kNow, o)),
            (std::set<std::string>{Id("young", 0), Id("young", 1), Id("young", 2)}));
}

TEST(RetentionPlanTest, ADeletedWorkloadsRecordsGoByCountAndAgeAlike) {
  std::map<std::string, api::Migration> ms = {
      {"g1", Mig("g1", "gone", MigrationPhase::kSucceeded, kNow - 9 * kDay)},
      {"g2", Mig("g2", "gone", MigrationPhase::kSucceeded, kNow - 8 * kDay)},
      {"g3", Mig("g3", "gone", MigrationPhase::kSucceeded, kNow - 2 * kDay)},
  };
  RetentionOptions o;
  EXPECT_EQ(IdsOf(PlanMigrationRetention(ms, {}, kNow, o)), (std::set<std::string>{"g1", "g2"}));
  o.keep_finished = 1;
  o.finished_ttl = Clock::Duration::zero();
  EXPECT_EQ(IdsOf(PlanMigrationRetention(ms, {}, kNow, o)), (std::set<std::string>{"g1", "g2"}));
}

TEST(RetentionPlanTest, NoLimitsRemoveNothing) {
  std::map<std::string, api::Migration> ms;
  for (int i = 0; i < 50; ++i)
    ms[Id("a", i)] = Mig(Id("a", i), "w", MigrationPhase::kSucceeded, kNow - 400 * kDay + i);
  RetentionOptions o;
  o.keep_finished = 0;
  o.finished_ttl = Clock::Duration::zero();
  EXPECT_TRUE(PlanMigrationRetention(ms, {{"w", Wl("w")}}, kNow, o).empty());
}

// ---- deletes against the store ------------------------------------------------

class RetentionStoreTest : public ::testing::Test {
 protected:
  RetentionStoreTest() : store_(clock_) {}
  void SetUp() override {
    auto leader = store_.Put(keys_.Leader(), "c1");
    ASSERT_TRUE(leader.ok());
    fence_ = Compare::CreateRevision(keys_.Leader(), Compare::Op::kEqual, *leader);
  }
  void Put(const api::Migration& m) {
    ASSERT_TRUE(store_.Put(keys_.Migration(m.id), cluster::MigrationToJson(m).dump()).ok());
  }
  std::map<std::string, api::Migration> Read() {
    std::map<std::string, api::Migration> out;
    auto l = store_.List(keys_.Migrations());
    EXPECT_TRUE(l.ok());
    for (const auto& kv : l->kvs) {
      auto m = cluster::ParseRecord<api::Migration>(kv.value, &cluster::MigrationFromJson);
      if (m.ok()) out[m->id] = *m;
    }
    return out;
  }
  std::set<std::string> Ids() {
    std::set<std::string> out;
    for (const auto& [id, m] : Read()) out.insert(id);
    return out;
  }

  testing::FakeClock clock_;
  testing::FakeStateStore store_;
  KeyLayout keys_;
  Compare fence_;
};

TEST_F(RetentionStoreTest, ARecordChangedAfterItWasReadIsNotDeleted) {
  for (int i = 0; i < 3; ++i)
    Put(Mig(Id("m", i), "w", MigrationPhase::kSucceeded, kNow - 9 * kDay + i));
  RetentionOptions o;
  auto plan = PlanMigrationRetention(Read(), {{"w", Wl("w")}}, kNow, o);
  ASSERT_EQ(IdsOf(plan), (std::set<std::string>{Id("m", 0), Id("m", 1)}));

  // Between the trimmer's read of m-000 and its delete, someone writes it.
  class Interposer : public testing::GatedStore {
   public:
    Interposer(StateStore& inner, std::string key) : GatedStore(inner), inner_(inner), key_(key) {}
    StatusOr<TxnResult> Commit(const Txn& txn) override {
      if (!done_ && !txn.then_ops.empty() && txn.then_ops[0].key == key_) {
        done_ = true;
        auto got = inner_.Get(key_);
        if (got.ok() && got->kv)
          (void)inner_.Put(key_, got->kv->value);  // same bytes, new revision
      }
      return GatedStore::Commit(txn);
    }

   private:
    StateStore& inner_;
    std::string key_;
    bool done_ = false;
  } interposer(store_, keys_.Migration(Id("m", 0)));

  auto r = TrimMigrations(interposer, keys_, plan, fence_, 100);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->deleted, 1u);
  EXPECT_EQ(r->skipped, 1u);
  EXPECT_EQ(Ids(), (std::set<std::string>{Id("m", 0), Id("m", 2)}));
  // The next pass takes it.
  plan = PlanMigrationRetention(Read(), {{"w", Wl("w")}}, kNow, o);
  r = TrimMigrations(store_, keys_, plan, fence_, 100);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(Ids(), (std::set<std::string>{Id("m", 2)}));
}

TEST_F(RetentionStoreTest, ARecordNoLongerAsPlannedIsLeft) {
  Put(Mig("a", "w", MigrationPhase::kSucceeded, kNow - 9 * kDay));
  Put(Mig("b", "w", MigrationPhase::kSucceeded, kNow - 8 * kDay));
  Put(Mig("c", "w", MigrationPhase::kSucceeded, kNow - kDay));
  auto plan = PlanMigrationRetention(Read(), {{"w", Wl("w")}}, kNow, RetentionOptions{});
  ASSERT_EQ(IdsOf(plan), (std::set<std::string>{"a", "b"}));
  // Since planned: "a" was rewritten as another record (not final), "b" is gone.
  Put(Mig("a", "w", MigrationPhase::kTransferring, kNow));
  ASSERT_TRUE(store_.Delete(keys_.Migration("b")).ok());
  auto r = TrimMigrations(store_, keys_, plan, fence_, 100);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, 0u);
  EXPECT_EQ(r->skipped, 2u);
  EXPECT_EQ(Ids(), (std::set<std::string>{"a", "c"}));
}

TEST_F(RetentionStoreTest, ADeposedLeaderDeletesNothing) {
  Put(Mig("a", "w", MigrationPhase::kSucceeded, kNow - 9 * kDay));
  Put(Mig("b", "w", MigrationPhase::kSucceeded, kNow - kDay));
  auto plan = PlanMigrationRetention(Read(), {{"w", Wl("w")}}, kNow, RetentionOptions{});
  ASSERT_EQ(plan.size(), 1u);
  ASSERT_TRUE(store_.Delete(keys_.Leader()).ok());
  ASSERT_TRUE(store_.Put(keys_.Leader(), "c2").ok());  // another term
  auto r = TrimMigrations(store_, keys_, plan, fence_, 100);
  EXPECT_EQ(r.status().code(), Code::kConflict) << r.status().ToString();
  EXPECT_EQ(Ids(), (std::set<std::string>{"a", "b"}));
}

// Passes cut short after any number of deletes (a controller killed at any
// line) converge to what one whole pass leaves; a pass on that is a no-op.
TEST_F(RetentionStoreTest, PassesCutShortAnywhereConvergeAndRepeatIsANoOp) {
  std::map<std::string, api::Workload> ws = {{"w1", Wl("w1")}, {"w2", Wl("w2", "w2-flight")}};
  auto fill = [&] {
    ASSERT_TRUE(store_.DeletePrefix(keys_.Migrations()).ok());
    for (int i = 0; i < 30; ++i)
      Put(Mig(Id("w1", i), "w1", MigrationPhase::kSucceeded, kNow - (40 - i) * kHour));
    for (int i = 0; i < 12; ++i)
      Put(Mig(Id("w2", i), "w2", MigrationPhase::kFailed, kNow - (12 - i) * kDay));
    Put(Mig("w2-flight", "w2", MigrationPhase::kRestoring, kNow - 20 * kDay));
  };
  RetentionOptions o;
  o.keep_finished = 10;
  ASSERT_NO_FATAL_FAILURE(fill());
  auto whole =
      TrimMigrations(store_, keys_, PlanMigrationRetention(Read(), ws, kNow, o), fence_, 1000);
  ASSERT_TRUE(whole.ok());
  const std::set<std::string> want = Ids();
  // w1: the newest 10; w2: those finished at most 7 days ago (7 records) and
  // the one in flight.
  EXPECT_EQ(want.size(), 10u + 7u + 1u);
  EXPECT_TRUE(want.count("w2-flight"));
  EXPECT_TRUE(want.count(Id("w1", 29)) && !want.count(Id("w1", 19)));

  for (size_t cut : {1u, 2u, 7u}) {
    ASSERT_NO_FATAL_FAILURE(fill());
    for (int pass = 0; pass < 100; ++pass) {
      auto plan = PlanMigrationRetention(Read(), ws, kNow, o);
      if (plan.empty()) break;
      ASSERT_TRUE(TrimMigrations(store_, keys_, plan, fence_, cut).ok());
    }
    EXPECT_EQ(Ids(), want) << "cut after " << cut;
    auto again =
        TrimMigrations(store_, keys_, PlanMigrationRetention(Read(), ws, kNow, o), fence_, 1000);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->deleted, 0u);
  }
}

// ---- compaction ---------------------------------------------------------------

class CompactorTest : public ::testing::Test {
 protected:
  CompactorTest() : store_(clock_) {}
  int64_t Write(int n) {
    int64_t rev = 0;
    for (int i = 0; i < n; ++i) rev = *store_.Put("/kmx/k", std::to_string(i));
    return rev;
  }
  bool Compacted(int64_t revision) {
    return store_.Get("/kmx/k", revision).status().code() == Code::kConflict;
  }
  testing::FakeClock clock_;
  testing::FakeStateStore store_;
};

TEST_F(CompactorTest, CompactsToTheNewestSampleAtLeastRetainOld) {
  CompactionOptions o;
  o.retain = hours(1);
  o.min_revisions = 10;
  Compactor c(store_, clock_, o, "/kmx/leader");
  const int64_t r0 = Write(50);
  auto step = c.Step();  // sample (t0, r0)
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(*step, 0);
  clock_.Advance(minutes(30));
  const int64_t r1 = Write(50);
  ASSERT_EQ(*c.Step(), 0);  // (t0+30m, r1): nothing an hour old yet
  clock_.Advance(minutes(31));
  Write(50);
  step = c.Step();  // t0 is 61 min old
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(*step, r0);
  EXPECT_TRUE(Compacted(r0 - 1));
  EXPECT_FALSE(Compacted(r0));
  EXPECT_FALSE(Compacted(r1));
  ASSERT_EQ(*c.Step(), 0);  // again at once: nothing newer is an hour old
  clock_.Advance(minutes(30));
  step = c.Step();
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(*step, r1);
  EXPECT_EQ(c.compacted(), r1);
}

TEST_F(CompactorTest, NeverWithinMinRevisionsOfTheHead) {
  CompactionOptions o;
  o.retain = minutes(5);
  o.min_revisions = 1000;
  Compactor c(store_, clock_, o, "/kmx/leader");
  Write(100);
  ASSERT_TRUE(c.Step().ok());
  clock_.Advance(minutes(10));
  ASSERT_EQ(*c.Step(), 0);  // head ~100 < 1000
  const int64_t head = Write(1500);
  clock_.Advance(minutes(10));
  auto step = c.Step();
  ASSERT_TRUE(step.ok());
  EXPECT_GT(*step, 0);
  EXPECT_LE(*step, head - 1000);
}

TEST_F(CompactorTest, AnAlreadyCompactedRevisionIsFineAndResetForgetsSamples) {
  CompactionOptions o;
  o.retain = minutes(5);
  o.min_revisions = 1;
  Compactor c(store_, clock_, o, "/kmx/leader");
  Write(20);
  ASSERT_TRUE(c.Step().ok());
  const int64_t head = Write(20);
  ASSERT_TRUE(store_.Compact(head).ok());  // etcd's own auto-compaction went further
  clock_.Advance(minutes(6));
  auto step = c.Step();
  ASSERT_TRUE(step.ok()) << step.status().ToString();
  EXPECT_EQ(*step, 0);

  c.Reset();  // a new term
  Write(20);
  ASSERT_EQ(*c.Step(), 0);  // its first sample is new
  clock_.Advance(minutes(6));
  Write(5);
  step = c.Step();
  ASSERT_TRUE(step.ok());
  EXPECT_GT(*step, head);
}

}  // namespace
}  // namespace kmosix::controller
