// PrefixCache against the in-memory FakeStateStore: list, watch, relist after
// a compaction while not watching, re-watch after a broken watch, Stop().
#include "cluster/prefix_cache.h"

#include <gtest/gtest.h>

#include <thread>

#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"
#include "lib/cluster/cache_recorder.h"
#include "lib/cluster/gated_store.h"

namespace kmosix::cluster {
namespace {

using kmosix::testing::CacheRecorder;
using kmosix::testing::FakeClock;
using kmosix::testing::FakeStateStore;
using kmosix::testing::GatedStore;
using kmosix::testing::RunningCache;
using kmosix::testing::ValuesOf;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Map = std::map<std::string, std::string>;

class PrefixCacheTest : public ::testing::Test {
 protected:
  // Waits until the cache (not only the handler) reflects `want` too.
  static bool WaitItems(const PrefixCache& cache, const Map& want) {
    for (int i = 0; i < 2000; ++i) {
      if (ValuesOf(cache.Items()) == want) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }
  // Waits until the cache has opened `n` watches (so BreakWatches hits one).
  static bool WaitWatches(const GatedStore& gated, int64_t n) {
    for (int i = 0; i < 2000; ++i) {
      if (gated.watches_opened() >= n) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }

  FakeClock clock;
  FakeStateStore store{clock};
};

TEST_F(PrefixCacheTest, InitialListReportsEveryKey) {
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  ASSERT_TRUE(store.Put("/p/b", "2").ok());
  ASSERT_TRUE(store.Put("/p/c/d", "3").ok());
  ASSERT_TRUE(store.Put("/q/x", "other").ok());
  ASSERT_TRUE(store.Put("/p", "not under the prefix").ok());
  RunningCache rc(store, clock, "/p/");
  ASSERT_TRUE(rc.cache.WaitSynced(seconds(20)));
  EXPECT_TRUE(rc.cache.Synced());
  Map want = {{"/p/a", "1"}, {"/p/b", "2"}, {"/p/c/d", "3"}};
  EXPECT_TRUE(rc.recorder.WaitState(want));
  EXPECT_EQ(rc.recorder.Events().size(), 3u);
  EXPECT_EQ(ValuesOf(rc.cache.Items()), want);
  EXPECT_EQ(rc.cache.Revision(), store.revision());
  EXPECT_EQ(rc.cache.Lists(), 1);
  auto a = rc.cache.Get("/p/a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->value, "1");
  EXPECT_FALSE(rc.cache.Get("/q/x"));
}

TEST_F(PrefixCacheTest, EmptyPrefixIsSyncedWithNoEvents) {
  RunningCache rc(store, clock, "/p/");
  ASSERT_TRUE(rc.cache.WaitSynced(seconds(20)));
  EXPECT_TRUE(rc.cache.Items().empty());
  EXPECT_TRUE(rc.recorder.Events().empty());
}

TEST_F(PrefixCacheTest, PutsAndDeletesAreReported) {
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  ASSERT_TRUE(store.Put("/p/b", "2").ok());
  RunningCache rc(store, clock, "/p/");
  ASSERT_TRUE(rc.cache.WaitSynced(seconds(20)));
  ASSERT_TRUE(rc.recorder.WaitState({{"/p/a", "1"}, {"/p/b", "2"}}));
  rc.recorder.Clear();

  ASSERT_TRUE(store.Put("/p/c", "3").ok());
  ASSERT_TRUE(store.Put("/p/a", "1b").ok());
  ASSERT_TRUE(store.Delete("/p/b").ok());
  ASSERT_TRUE(store.Put("/q/ignored", "x").ok());
  Map want = {{"/p/a", "1b"}, {"/p/c", "3"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  ASSERT_TRUE(WaitItems(rc.cache, want));
  auto events = rc.recorder.Events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].key, "/p/c");
  EXPECT_EQ(events[1].key, "/p/a");
  EXPECT_EQ(events[2].key, "/p/b");
  EXPECT_FALSE(events[2].now.has_value());
  // A transaction's writes arrive together.
  ASSERT_TRUE(
      store
          .Commit(Txn{
              {}, {TxnOp::Put("/p/t1", "x"), TxnOp::Put("/p/t2", "y"), TxnOp::Delete("/p/c")}, {}})
          .ok());
  want = {{"/p/a", "1b"}, {"/p/t1", "x"}, {"/p/t2", "y"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  ASSERT_TRUE(WaitItems(rc.cache, want));
  for (int i = 0; i < 1000 && rc.cache.Revision() != store.revision(); ++i) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_EQ(rc.cache.Revision(), store.revision());
  EXPECT_EQ(rc.cache.Lists(), 1);
}

TEST_F(PrefixCacheTest, HandlerSeesTheUpdatedCache) {
  PrefixCache cache(store, clock, "/p/");
  std::mutex mu;
  std::vector<std::string> seen;
  std::thread t([&] {
    cache.Run([&](const std::string& key, const std::optional<KeyValue>& now) {
      auto got = cache.Get(key);  // no deadlock: the lock is not held
      std::lock_guard lock(mu);
      seen.push_back(key + "=" + (got ? got->value : "-") + "/" + (now ? now->value : "-"));
    });
  });
  ASSERT_TRUE(cache.WaitSynced(seconds(20)));
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  ASSERT_TRUE(store.Delete("/p/a").ok());
  for (int i = 0; i < 2000; ++i) {
    {
      std::lock_guard lock(mu);
      if (seen.size() >= 2) break;
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  cache.Stop();
  t.join();
  ASSERT_EQ(seen.size(), 2u);
  // The put's handler ran after the cache had it (or had already moved on to the delete).
  EXPECT_TRUE(seen[0] == "/p/a=1/1" || seen[0] == "/p/a=-/1") << seen[0];
  EXPECT_EQ(seen[1], "/p/a=-/-");
}

TEST_F(PrefixCacheTest, RelistAfterCompactionReportsTheDiffIncludingDeletions) {
  GatedStore gated(store);
  for (const char* k : {"/p/a", "/p/b", "/p/c", "/p/d"}) ASSERT_TRUE(store.Put(k, "v1").ok());
  RunningCache rc(gated, clock, "/p/");
  ASSERT_TRUE(
      rc.recorder.WaitState({{"/p/a", "v1"}, {"/p/b", "v1"}, {"/p/c", "v1"}, {"/p/d", "v1"}}));
  rc.recorder.Clear();

  // The cache loses its watch and cannot reach the store...
  ASSERT_TRUE(WaitWatches(gated, 1));
  gated.Block(true);
  gated.BreakWatches(RetryError("connection lost"));
  // ...while the store changes and compacts the history it would resume from.
  ASSERT_TRUE(store.Put("/p/a", "v2").ok());
  ASSERT_TRUE(store.Delete("/p/b").ok());
  ASSERT_TRUE(store.Put("/p/e", "new").ok());
  ASSERT_TRUE(store.Delete("/p/c").ok());
  ASSERT_TRUE(store.Put("/p/c", "recreated").ok());
  ASSERT_TRUE(store.Put("/p/gone", "x").ok());
  ASSERT_TRUE(store.Delete("/p/gone").ok());
  ASSERT_TRUE(store.Compact(store.revision()).ok());
  EXPECT_EQ(rc.cache.Lists(), 1);
  gated.Block(false);

  Map want = {{"/p/a", "v2"}, {"/p/c", "recreated"}, {"/p/d", "v1"}, {"/p/e", "new"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  ASSERT_TRUE(WaitItems(rc.cache, want));
  EXPECT_EQ(rc.cache.Lists(), 2);
  // Exactly the difference: a, c changed, e added, b deleted; d unchanged, gone never seen.
  std::map<std::string, std::optional<std::string>> diff;
  for (const auto& e : rc.recorder.Events()) {
    diff[e.key] = e.now ? std::optional<std::string>(e.now->value) : std::nullopt;
  }
  std::map<std::string, std::optional<std::string>> want_diff = {
      {"/p/a", "v2"}, {"/p/b", std::nullopt}, {"/p/c", "recreated"}, {"/p/e", "new"}};
  EXPECT_EQ(diff, want_diff);
  EXPECT_EQ(rc.recorder.Events().size(), 4u);

  // And it keeps watching afterwards.
  ASSERT_TRUE(store.Put("/p/f", "later").ok());
  want["/p/f"] = "later";
  EXPECT_TRUE(rc.recorder.WaitState(want));
}

TEST_F(PrefixCacheTest, WithoutValuesKeepsMetadataAndStillDiffsOnRelist) {
  GatedStore gated(store);
  ASSERT_TRUE(store.Put("/p/a", "v1").ok());
  ASSERT_TRUE(store.Put("/p/b", "v1").ok());
  RunningCache rc(gated, clock, "/p/", /*keep_values=*/false);
  ASSERT_TRUE(rc.recorder.WaitState({{"/p/a", "v1"}, {"/p/b", "v1"}}));  // handler: full values
  auto a = rc.cache.Get("/p/a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->value, "") << "the cache keeps no values";
  EXPECT_GT(a->mod_revision, 0);
  rc.recorder.Clear();

  ASSERT_TRUE(WaitWatches(gated, 1));
  gated.Block(true);
  gated.BreakWatches(RetryError("connection lost"));
  ASSERT_TRUE(store.Put("/p/a", "v2").ok());
  ASSERT_TRUE(store.Compact(store.revision()).ok());
  gated.Block(false);
  ASSERT_TRUE(rc.recorder.WaitState({{"/p/a", "v2"}, {"/p/b", "v1"}}));
  // Only a changed on the relist: b's metadata matched, so it was not reported again.
  ASSERT_EQ(rc.recorder.Events().size(), 1u);
  EXPECT_EQ(rc.recorder.Events()[0].key, "/p/a");
  EXPECT_EQ(rc.recorder.Events()[0].now->value, "v2");
}

TEST_F(PrefixCacheTest, WatchEndingInConflictRelists) {
  GatedStore gated(store);
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  ASSERT_TRUE(store.Put("/p/b", "2").ok());
  RunningCache rc(gated, clock, "/p/");
  ASSERT_TRUE(rc.recorder.WaitState({{"/p/a", "1"}, {"/p/b", "2"}}));
  ASSERT_TRUE(WaitWatches(gated, 1));
  gated.Block(true);
  gated.BreakWatches(ConflictError("watch cancelled: compacted"));
  ASSERT_TRUE(store.Delete("/p/a").ok());
  ASSERT_TRUE(store.Put("/p/b", "2b").ok());
  gated.Block(false);
  Map want = {{"/p/b", "2b"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  ASSERT_TRUE(WaitItems(rc.cache, want));
  EXPECT_EQ(rc.cache.Lists(), 2);
}

TEST_F(PrefixCacheTest, BrokenWatchResumesFromNextRevisionWithoutRelisting) {
  GatedStore gated(store);
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  RunningCache rc(gated, clock, "/p/");
  ASSERT_TRUE(rc.recorder.WaitState({{"/p/a", "1"}}));
  rc.recorder.Clear();
  ASSERT_TRUE(WaitWatches(gated, 1));
  gated.Block(true);
  gated.BreakWatches(RetryError("etcd restarted"));
  ASSERT_TRUE(store.Put("/p/b", "2").ok());
  ASSERT_TRUE(store.Put("/p/a", "1b").ok());
  ASSERT_TRUE(store.Delete("/p/b").ok());
  gated.Block(false);
  Map want = {{"/p/a", "1b"}};
  // Every intermediate event is replayed (the history is still there).
  for (int i = 0; i < 2000 && rc.recorder.Events().size() < 3; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_TRUE(rc.recorder.WaitState(want));
  ASSERT_TRUE(WaitItems(rc.cache, want));
  auto events = rc.recorder.Events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].key, "/p/b");
  EXPECT_EQ(events[1].key, "/p/a");
  EXPECT_EQ(events[2].key, "/p/b");
  EXPECT_FALSE(events[2].now);
  EXPECT_EQ(rc.cache.Lists(), 1);
  EXPECT_GE(gated.watches_opened(), 2);
}

TEST_F(PrefixCacheTest, SurvivesTheStoreGoingAway) {
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  RunningCache rc(store, clock, "/p/");
  ASSERT_TRUE(rc.recorder.WaitState({{"/p/a", "1"}}));
  store.SetUnavailable(true);
  std::this_thread::sleep_for(milliseconds(50));  // let it fail a few times
  store.SetUnavailable(false);
  ASSERT_TRUE(store.Put("/p/b", "2").ok());
  ASSERT_TRUE(store.Delete("/p/a").ok());
  Map want = {{"/p/b", "2"}};
  EXPECT_TRUE(rc.recorder.WaitState(want));
  EXPECT_TRUE(WaitItems(rc.cache, want));
}

TEST_F(PrefixCacheTest, ListFailuresAreRetriedUntilSynced) {
  GatedStore gated(store);
  ASSERT_TRUE(store.Put("/p/a", "1").ok());
  gated.Block(true);
  RunningCache rc(gated, clock, "/p/");
  EXPECT_FALSE(rc.cache.WaitSynced(milliseconds(50)));
  EXPECT_FALSE(rc.cache.Synced());
  gated.Block(false);
  EXPECT_TRUE(rc.cache.WaitSynced(seconds(20)));
  EXPECT_TRUE(rc.recorder.WaitState({{"/p/a", "1"}}));
}

TEST_F(PrefixCacheTest, StopMakesRunReturn) {
  {
    RunningCache rc(store, clock, "/p/");
    ASSERT_TRUE(rc.cache.WaitSynced(seconds(20)));
    rc.StopAndJoin();  // while watching
  }
  {
    GatedStore gated(store);
    gated.Block(true);
    RunningCache rc(gated, clock, "/p/");
    std::this_thread::sleep_for(milliseconds(20));
    rc.StopAndJoin();  // while backing off
    EXPECT_FALSE(rc.cache.Synced());
    EXPECT_FALSE(rc.cache.WaitSynced(milliseconds(1)));
  }
  {
    PrefixCache cache(store, clock, "/p/");
    cache.Stop();  // before Run
    cache.Run([](const std::string&, const std::optional<KeyValue>&) {});
  }
}

}  // namespace
}  // namespace kmosix::cluster
