// controller/retention.h against a real etcd (private, started by the test):
// finished records are removed in passes with compare-and-swap deletes (a
// record rewritten between read and delete stays), hundreds at a time; the
// Compactor (on a fake clock) compacts etcd past a watch cache's revision
// while the cache is cut off, and the cache relists and stays correct.
// Skips loudly without the etcd binary.
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "cluster/prefix_cache.h"
#include "cluster/records.h"
#include "controller/controller.h"
#include "controller/retention.h"
#include "etcd/etcd_state_store.h"
#include "fakes/fake_clock.h"
#include "lib/cluster/cache_recorder.h"
#include "lib/cluster/gated_store.h"
#include "support/private_etcd.h"

namespace kmosix::controller {
namespace {

using kmosix::testing::EtcdSkipReason;
using kmosix::testing::GatedStore;
using kmosix::testing::PrivateEtcd;
using kmosix::testing::RunningCache;
using kmosix::testing::TestEtcdConfig;
using kmosix::testing::ValuesOf;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

#define SKIP_WITHOUT_ETCD()                          \
  do {                                               \
    if (auto why = EtcdSkipReason(); !why.empty()) { \
      GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;  \
    }                                                \
  } while (0)

constexpr int64_t kNow = 1'800'000'000'000;
constexpr int64_t kDay = 24 * 3600 * 1000;

std::string Id(int i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "m-%04d", i);
  return buf;
}

class RetentionEtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdSkipReason().empty()) return;
    etcd_ = std::make_unique<PrivateEtcd>();
    ASSERT_TRUE(etcd_->Start()) << "log: " << etcd_->dir() << "/etcd.log";
    store_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
    auto leader = store_->Put(keys_.Leader(), "c1");
    ASSERT_TRUE(leader.ok()) << leader.status().ToString();
    fence_ = Compare::CreateRevision(keys_.Leader(), Compare::Op::kEqual, *leader);
  }
  std::map<std::string, api::Migration> Read() {
    std::map<std::string, api::Migration> out;
    auto l = store_->List(keys_.Migrations());
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    if (!l.ok()) return out;
    for (const auto& kv : l->kvs) {
      auto m = cluster::ParseRecord<api::Migration>(kv.value, &cluster::MigrationFromJson);
      if (m.ok()) out[m->id] = *m;
    }
    return out;
  }

  std::unique_ptr<PrivateEtcd> etcd_;
  std::unique_ptr<EtcdStateStore> store_;
  cluster::KeyLayout keys_;
  Compare fence_;
};

TEST_F(RetentionEtcdTest, RemovesHundredsInPassesAndSparesARecordRewrittenMeanwhile) {
  SKIP_WITHOUT_ETCD();
  api::Workload w;
  w.spec.name = "w";
  w.spec.image = "demo";
  std::map<std::string, api::Workload> ws = {{"w", w}};
  // 700 finished records, 8 to 9 days old, written 100 per transaction.
  for (int i = 0; i < 700; i += 100) {
    Txn txn;
    for (int j = i; j < i + 100; ++j) {
      api::Migration m;
      m.id = Id(j);
      m.workload = "w";
      m.source = "n1";
      m.target = "n2";
      m.phase = api::MigrationPhase::kSucceeded;
      m.requested_by = "api";
      m.finished_ms = m.updated_ms = kNow - 9 * kDay + j * 60'000;
      m.created_ms = m.finished_ms - 1000;
      txn.then_ops.push_back(TxnOp::Put(keys_.Migration(m.id), cluster::MigrationToJson(m).dump()));
    }
    ASSERT_TRUE(store_->Commit(txn).ok());
  }
  RetentionOptions o;  // 20 per workload, 7 days
  auto plan = PlanMigrationRetention(Read(), ws, kNow, o);
  ASSERT_EQ(plan.size(), 699u);  // all but the newest

  // A store that rewrites m-0000 (same bytes, new revision) just before the
  // delete transaction the trimmer sends for it.
  class Interposer : public GatedStore {
   public:
    Interposer(StateStore& inner, std::string key) : GatedStore(inner), inner_(inner), key_(key) {}
    StatusOr<TxnResult> Commit(const Txn& txn) override {
      if (!done_ && !txn.then_ops.empty() && txn.then_ops[0].key == key_) {
        done_ = true;
        auto got = inner_.Get(key_);
        if (got.ok() && got->kv) (void)inner_.Put(key_, got->kv->value);
      }
      return GatedStore::Commit(txn);
    }

   private:
    StateStore& inner_;
    std::string key_;
    bool done_ = false;
  } interposer(*store_, keys_.Migration(Id(0)));

  auto first = TrimMigrations(interposer, keys_, plan, fence_, 500);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->deleted, 499u);
  EXPECT_EQ(first->skipped, 1u);
  EXPECT_TRUE(Read().count(Id(0))) << "a record rewritten between read and delete was deleted";

  for (int pass = 0; pass < 5; ++pass) {
    plan = PlanMigrationRetention(Read(), ws, kNow, o);
    if (plan.empty()) break;
    ASSERT_TRUE(TrimMigrations(*store_, keys_, plan, fence_, 500).ok());
  }
  auto left = Read();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left.begin()->first, Id(699));
}

TEST_F(RetentionEtcdTest, CompactionPastACutOffWatchCacheMakesItRelistAndStayCorrect) {
  SKIP_WITHOUT_ETCD();
  auto put = [&](const std::string& k, const std::string& v) {
    auto r = store_->Put(k, v);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  };
  for (const char* k : {"/kmx/w/a", "/kmx/w/b", "/kmx/w/c"}) put(k, "v1");
  EtcdStateStore reader(TestEtcdConfig(etcd_->endpoint()));
  GatedStore gated(reader);
  SystemClock cache_clock;
  RunningCache rc(gated, cache_clock, "/kmx/w/");
  using Map = std::map<std::string, std::string>;
  ASSERT_TRUE(rc.recorder.WaitState({{"/kmx/w/a", "v1"}, {"/kmx/w/b", "v1"}, {"/kmx/w/c", "v1"}}));
  for (int i = 0; i < 2000 && gated.watches_opened() < 1; ++i)
    std::this_thread::sleep_for(milliseconds(10));
  ASSERT_GE(gated.watches_opened(), 1);

  testing::FakeClock clock;
  CompactionOptions o;
  o.retain = minutes(60);
  o.min_revisions = 1;
  Compactor compactor(*store_, clock, o, keys_.Leader());
  ASSERT_EQ(*compactor.Step(), 0);  // first sample

  // Cut the cache off (its watch breaks; re-watching answers kRetry).
  gated.Block(true);
  gated.BreakWatches(RetryError("cut off by the test"));
  const int64_t cut_at = rc.cache.Revision();
  put("/kmx/w/a", "v2");
  ASSERT_TRUE(store_->Delete("/kmx/w/b").ok());
  put("/kmx/w/d", "new");
  clock.Advance(minutes(61));
  ASSERT_TRUE(compactor.Step().ok());  // compacts to the first sample: not past the cache yet
  put("/kmx/unrelated", "bump");
  clock.Advance(minutes(61));
  auto compacted = compactor.Step();  // to the sample after the changes
  ASSERT_TRUE(compacted.ok()) << compacted.status().ToString();
  ASSERT_GT(*compacted, cut_at + 1) << "the compaction must pass the cache's revision";
  EXPECT_EQ(store_->Get("/kmx/w/a", cut_at).status().code(), Code::kConflict);
  gated.Block(false);

  Map want = {{"/kmx/w/a", "v2"}, {"/kmx/w/c", "v1"}, {"/kmx/w/d", "new"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  for (int i = 0; i < 2000 && ValuesOf(rc.cache.Items()) != want; ++i)
    std::this_thread::sleep_for(milliseconds(10));
  EXPECT_EQ(ValuesOf(rc.cache.Items()), want);
  EXPECT_EQ(rc.cache.Lists(), 2) << "relisted once after the compaction";
  // And it watches again.
  put("/kmx/w/e", "later");
  want["/kmx/w/e"] = "later";
  EXPECT_TRUE(rc.recorder.WaitState(want));
}

// The symptom end to end: a controller over etcd holding 3000
// finished ~2 KiB migration records (more than one gRPC message) starts,
// and trims them to the newest of each workload.
TEST_F(RetentionEtcdTest, AControllerStartsOverThousandsOfRecordsAndTrimsThem) {
  SKIP_WITHOUT_ETCD();
  const int64_t now = SystemClock().WallMillis();
  const std::string padding(2000, 'r');
  for (int w = 0; w < 30; ++w) {
    api::Workload wl;
    wl.spec.name = "w" + std::to_string(w);
    wl.spec.image = "demo";
    wl.status.phase = api::WorkloadPhase::kRunning;
    wl.status.node = "n1";
    wl.status.epoch = 1;
    ASSERT_TRUE(store_->Put(keys_.Workload(wl.spec.name), cluster::WorkloadToJson(wl).dump()).ok());
    Txn txn;
    for (int j = 0; j < 100; ++j) {
      api::Migration m;
      m.id = wl.spec.name + "-" + Id(j);
      m.workload = wl.spec.name;
      m.source = "n1";
      m.target = "n2";
      m.phase = api::MigrationPhase::kSucceeded;
      m.requested_by = "policy";
      m.reason = padding;
      m.finished_ms = m.updated_ms = now - 8 * kDay + j * 60'000;
      m.created_ms = m.finished_ms - 1000;
      txn.then_ops.push_back(TxnOp::Put(keys_.Migration(m.id), cluster::MigrationToJson(m).dump()));
    }
    ASSERT_TRUE(store_->Commit(txn).ok());
  }
  ASSERT_TRUE(store_->Delete(keys_.Leader()).ok());  // the fixture's; the controller elects

  SystemClock clock;
  SystemRandom random;
  ControllerOptions o;
  o.identity = "c1";
  o.balance = false;
  o.leader_ttl = seconds(2);
  Controller c(*store_, clock, random, o, nullptr);
  c.Start();
  bool ready = false;
  for (int i = 0; i < 600 && !ready; ++i) {
    ready = c.Ready() && c.IsLeader();
    if (!ready) std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(ready) << "the controller never listed its caches";
  size_t left = 0;
  for (int i = 0; i < 1200; ++i) {
    auto l = store_->List(keys_.Migrations());
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    left = l->kvs.size();
    if (left == 30) break;
    std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_EQ(left, 30u) << "one finished record per workload stays";
  for (int w = 0; w < 30; ++w) {
    auto m = c.GetMigration("w" + std::to_string(w) + "-" + Id(99));
    EXPECT_TRUE(m.ok()) << "the newest of w" << w << ": " << m.status().ToString();
  }
  c.Stop();
}

}  // namespace
}  // namespace kmosix::controller
