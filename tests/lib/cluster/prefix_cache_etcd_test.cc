// PrefixCache against a real etcd (private, started by the test): initial
// list, live events, etcd restarted under it (re-watch from next_revision,
// nothing lost), history compacted while it could not watch (relist and
// report the difference, deletions included), Stop().
#include <gtest/gtest.h>

#include <thread>

#include "cluster/prefix_cache.h"
#include "etcd/etcd_state_store.h"
#include "lib/cluster/cache_recorder.h"
#include "lib/cluster/gated_store.h"
#include "support/private_etcd.h"

namespace kmosix::cluster {
namespace {

using kmosix::testing::EtcdSkipReason;
using kmosix::testing::GatedStore;
using kmosix::testing::PrivateEtcd;
using kmosix::testing::RunningCache;
using kmosix::testing::TestEtcdConfig;
using kmosix::testing::ValuesOf;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Map = std::map<std::string, std::string>;

#define SKIP_WITHOUT_ETCD()                          \
  do {                                               \
    if (auto why = EtcdSkipReason(); !why.empty()) { \
      GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;  \
    }                                                \
  } while (0)

class PrefixCacheEtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdSkipReason().empty()) return;
    etcd_ = std::make_unique<PrivateEtcd>();
    ASSERT_TRUE(etcd_->Start()) << "log: " << etcd_->dir() << "/etcd.log";
    writer_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
    reader_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
    gated_ = std::make_unique<GatedStore>(*reader_);
  }
  void TearDown() override {
    gated_.reset();
    reader_.reset();
    writer_.reset();
    etcd_.reset();
  }

  // Retries a write until etcd answers (just after a restart it may not yet).
  void MustPut(const std::string& k, const std::string& v) {
    StatusOr<int64_t> r = RetryError("not tried");
    for (int i = 0; i < 100 && !r.ok(); ++i) {
      r = writer_->Put(k, v);
      if (!r.ok()) std::this_thread::sleep_for(milliseconds(100));
    }
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  void MustDelete(const std::string& k) {
    StatusOr<DeleteResult> r = RetryError("not tried");
    for (int i = 0; i < 100 && !r.ok(); ++i) {
      r = writer_->Delete(k);
      if (!r.ok()) std::this_thread::sleep_for(milliseconds(100));
    }
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  static bool WaitItems(const PrefixCache& cache, const Map& want) {
    for (int i = 0; i < 2000; ++i) {
      if (ValuesOf(cache.Items()) == want) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }
  bool WaitWatches(int64_t n) {
    for (int i = 0; i < 2000; ++i) {
      if (gated_->watches_opened() >= n) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }

  SystemClock clock_;
  std::unique_ptr<PrivateEtcd> etcd_;
  std::unique_ptr<EtcdStateStore> writer_;
  std::unique_ptr<EtcdStateStore> reader_;
  std::unique_ptr<GatedStore> gated_;
};

TEST_F(PrefixCacheEtcdTest, ListsThenReportsPutsAndDeletes) {
  SKIP_WITHOUT_ETCD();
  MustPut("/kmx/w/a", "1");
  MustPut("/kmx/w/b", "2");
  MustPut("/kmx/other", "x");
  RunningCache rc(*gated_, clock_, "/kmx/w/");
  ASSERT_TRUE(rc.cache.WaitSynced(seconds(20)));
  ASSERT_TRUE(rc.recorder.WaitState({{"/kmx/w/a", "1"}, {"/kmx/w/b", "2"}}));
  EXPECT_EQ(rc.recorder.Events().size(), 2u);
  MustPut("/kmx/w/c", "3");
  MustPut("/kmx/w/a", "1b");
  MustDelete("/kmx/w/b");
  Map want = {{"/kmx/w/a", "1b"}, {"/kmx/w/c", "3"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  EXPECT_TRUE(WaitItems(rc.cache, want));
  EXPECT_EQ(rc.recorder.Events().size(), 5u);
  EXPECT_EQ(rc.cache.Lists(), 1);
}

TEST_F(PrefixCacheEtcdTest, EtcdRestartLosesNothing) {
  SKIP_WITHOUT_ETCD();
  MustPut("/kmx/w/a", "1");
  MustPut("/kmx/w/b", "2");
  RunningCache rc(*gated_, clock_, "/kmx/w/");
  ASSERT_TRUE(rc.recorder.WaitState({{"/kmx/w/a", "1"}, {"/kmx/w/b", "2"}}));
  ASSERT_TRUE(WaitWatches(1));
  rc.recorder.Clear();

  // Keep the cache away from etcd until the writes after the restart are in,
  // so it must resume the broken watch from history to see them.
  gated_->Block(true);
  etcd_->Stop();
  ASSERT_TRUE(etcd_->Start()) << "restart failed; log: " << etcd_->dir() << "/etcd.log";
  MustPut("/kmx/w/c", "3");
  MustPut("/kmx/w/a", "1b");
  MustDelete("/kmx/w/b");
  gated_->Block(false);

  Map want = {{"/kmx/w/a", "1b"}, {"/kmx/w/c", "3"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  EXPECT_TRUE(WaitItems(rc.cache, want));
  for (int i = 0; i < 500 && rc.recorder.Events().size() < 3; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(rc.recorder.Events().size(), 3u);  // every change, in order
  EXPECT_EQ(rc.cache.Lists(), 1) << "resumed the watch without relisting";

  // Unblocked restart: the cache finds etcd again by itself.
  etcd_->Stop();
  ASSERT_TRUE(etcd_->Start()) << "restart failed; log: " << etcd_->dir() << "/etcd.log";
  MustPut("/kmx/w/d", "4");
  want["/kmx/w/d"] = "4";
  EXPECT_TRUE(rc.recorder.WaitState(want));
  EXPECT_TRUE(WaitItems(rc.cache, want));
}

TEST_F(PrefixCacheEtcdTest, CompactionWhileAwayRelistsAndReportsDeletions) {
  SKIP_WITHOUT_ETCD();
  for (const char* k : {"/kmx/w/a", "/kmx/w/b", "/kmx/w/c"}) MustPut(k, "v1");
  RunningCache rc(*gated_, clock_, "/kmx/w/");
  ASSERT_TRUE(rc.recorder.WaitState({{"/kmx/w/a", "v1"}, {"/kmx/w/b", "v1"}, {"/kmx/w/c", "v1"}}));
  ASSERT_TRUE(WaitWatches(1));
  rc.recorder.Clear();

  gated_->Block(true);
  etcd_->Stop();
  ASSERT_TRUE(etcd_->Start()) << "restart failed; log: " << etcd_->dir() << "/etcd.log";
  MustPut("/kmx/w/a", "v2");
  MustDelete("/kmx/w/b");
  MustPut("/kmx/w/d", "new");
  auto head = writer_->Put("/kmx/unrelated", "bump");
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  ASSERT_TRUE(writer_->Compact(*head).ok());
  gated_->Block(false);

  Map want = {{"/kmx/w/a", "v2"}, {"/kmx/w/c", "v1"}, {"/kmx/w/d", "new"}};
  ASSERT_TRUE(rc.recorder.WaitState(want));
  EXPECT_TRUE(WaitItems(rc.cache, want));
  EXPECT_EQ(rc.cache.Lists(), 2);
  std::map<std::string, std::optional<std::string>> diff;
  for (const auto& e : rc.recorder.Events()) {
    diff[e.key] = e.now ? std::optional<std::string>(e.now->value) : std::nullopt;
  }
  std::map<std::string, std::optional<std::string>> want_diff = {
      {"/kmx/w/a", "v2"}, {"/kmx/w/b", std::nullopt}, {"/kmx/w/d", "new"}};
  EXPECT_EQ(diff, want_diff);

  // Watching again after the relist.
  MustPut("/kmx/w/e", "later");
  want["/kmx/w/e"] = "later";
  EXPECT_TRUE(rc.recorder.WaitState(want));
}

TEST_F(PrefixCacheEtcdTest, StopReturnsWhileWatchingAndWhileEtcdIsDown) {
  SKIP_WITHOUT_ETCD();
  {
    RunningCache rc(*gated_, clock_, "/kmx/w/");
    ASSERT_TRUE(rc.cache.WaitSynced(seconds(20)));
    ASSERT_TRUE(WaitWatches(1));
    rc.StopAndJoin();
  }
  etcd_->Stop();
  {
    RunningCache rc(*gated_, clock_, "/kmx/w/");
    std::this_thread::sleep_for(milliseconds(300));
    rc.StopAndJoin();
    EXPECT_FALSE(rc.cache.Synced());
  }
}

}  // namespace
}  // namespace kmosix::cluster
