// LeaderElection against a real etcd (private, started by the test): one
// leader of two, hand-over on Stop, on a lease revoked from outside, and when
// the leader freezes (its keep-alive stops: the lease expires after its TTL
// and the other candidate takes over); a deposed leader's fenced write fails.
#include <gtest/gtest.h>

#include <iostream>
#include <memory>
#include <thread>

#include "cluster/leader_election.h"
#include "cluster/records.h"
#include "etcd/etcd_state_store.h"
#include "lib/cluster/candidate.h"
#include "lib/cluster/gated_store.h"
#include "support/private_etcd.h"

namespace kmosix::cluster {
namespace {

using kmosix::testing::Candidate;
using kmosix::testing::EtcdSkipReason;
using kmosix::testing::Eventually;
using kmosix::testing::GatedStore;
using kmosix::testing::PrivateEtcd;
using kmosix::testing::TestEtcdConfig;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr seconds kTtl{2};  // etcd's minimum with default settings

class LeaderElectionEtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = EtcdSkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
    etcd_ = std::make_unique<PrivateEtcd>();
    ASSERT_TRUE(etcd_->Start()) << "log: " << etcd_->dir() << "/etcd.log";
    // Each candidate has its own client, as separate controller processes would.
    store_a_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
    store_b_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
    admin_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
    gated_a_ = std::make_unique<GatedStore>(*store_a_);
  }

  bool FencedWrite(const Compare& fence, const std::string& value) {
    auto r = admin_->Commit(Txn{{fence}, {TxnOp::Put("/kmosix/fenced", value)}, {}});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() && r->succeeded;
  }
  GetResult MustGet(const std::string& k) {
    auto got = admin_->Get(k);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    return got.ok() ? *got : GetResult{};
  }

  SystemClock clock_;
  const std::string key_ = KeyLayout{}.Leader();
  std::unique_ptr<PrivateEtcd> etcd_;
  std::unique_ptr<EtcdStateStore> store_a_;
  std::unique_ptr<EtcdStateStore> store_b_;
  std::unique_ptr<EtcdStateStore> admin_;
  std::unique_ptr<GatedStore> gated_a_;
};

TEST_F(LeaderElectionEtcdTest, OneOfTwoLeadsAndStopHandsOver) {
  auto a = std::make_unique<Candidate>(*gated_a_, clock_, key_, "a", false, kTtl);
  auto b = std::make_unique<Candidate>(*store_b_, clock_, key_, "b", false, kTtl);
  ASSERT_TRUE(Eventually([&] { return a->leading() || b->leading(); }));
  std::this_thread::sleep_for(milliseconds(300));
  ASSERT_NE(a->leading(), b->leading());
  Candidate& first = a->leading() ? *a : *b;
  Candidate& second = a->leading() ? *b : *a;
  GetResult held = MustGet(key_);
  ASSERT_TRUE(held.kv);
  EXPECT_EQ(held.kv->value, first.identity);
  EXPECT_EQ(held.kv->create_revision, first.Revisions().back());
  Compare old_fence = first.LastFence();
  EXPECT_TRUE(FencedWrite(old_fence, "first"));

  first.StopAndJoin();
  ASSERT_TRUE(Eventually([&] { return second.leading(); }));
  EXPECT_FALSE(FencedWrite(old_fence, "late write from the deposed leader"));
  EXPECT_TRUE(FencedWrite(second.LastFence(), "second"));
  EXPECT_EQ(*second.election.CurrentLeader(), second.identity);

  second.StopAndJoin();
  EXPECT_FALSE(MustGet(key_).kv) << "the last leader's lease was revoked on Stop";
}

TEST_F(LeaderElectionEtcdTest, RevokedLeaseEndsTheTermAndTheOtherTakesOver) {
  Candidate a(*gated_a_, clock_, key_, "a", false, kTtl);
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  Candidate b(*store_b_, clock_, key_, "b", false, kTtl);
  Compare a_fence = a.LastFence();
  // Keep a out of the next round, so that b is the one to take over.
  GetResult held = MustGet(key_);
  ASSERT_TRUE(held.kv);
  gated_a_->Block(true);
  ASSERT_TRUE(admin_->RevokeLease(held.kv->lease).ok());
  ASSERT_TRUE(Eventually([&] { return a.ended() == 1; })) << "a never noticed";
  ASSERT_TRUE(Eventually([&] { return b.leading(); }));
  EXPECT_FALSE(FencedWrite(a_fence, "late write from a"));
  EXPECT_TRUE(FencedWrite(b.LastFence(), "from b"));
  gated_a_->Block(false);
}

TEST_F(LeaderElectionEtcdTest, FrozenLeadersLeaseExpiresAndTheOtherTakesOver) {
  Candidate a(*gated_a_, clock_, key_, "a", false, kTtl);
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  Candidate b(*store_b_, clock_, key_, "b", false, kTtl);
  std::this_thread::sleep_for(seconds(3));  // past a TTL: the keep-alive holds the lease
  ASSERT_TRUE(a.leading());
  ASSERT_FALSE(b.leading());
  Compare a_fence = a.LastFence();
  GetResult held = MustGet(key_);
  ASSERT_TRUE(held.kv);
  EXPECT_EQ(held.kv->value, "a");

  // a freezes: its keep-alive stops refreshing and it can make no new calls.
  gated_a_->DropKeepAlives();
  gated_a_->Block(true);
  // b takes over once the lease expires (~TTL); the deadline is generous.
  auto frozen_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(Eventually([&] { return b.leading(); }, seconds(30)));
  std::cout << "[ info ] b took over " << Seconds(std::chrono::steady_clock::now() - frozen_at)
            << " s after a froze (TTL " << kTtl.count() << " s)\n";
  GetResult now = MustGet(key_);
  ASSERT_TRUE(now.kv);
  EXPECT_EQ(now.kv->value, "b");
  EXPECT_NE(now.kv->lease, held.kv->lease);
  EXPECT_FALSE(FencedWrite(a_fence, "late write from frozen a"));
  EXPECT_TRUE(FencedWrite(b.LastFence(), "from b"));
  // a learns its term is over (it still sees the key's deletion through its watch).
  EXPECT_TRUE(Eventually([&] { return a.ended() == 1; }, seconds(30)));
  gated_a_->Block(false);
}

}  // namespace
}  // namespace kmosix::cluster
