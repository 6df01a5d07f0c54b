// LeaderElection against the in-memory FakeStateStore: one leader at a time,
// hand-over when the leader stops, loses its lease or its key, fencing of a
// deposed leader's writes, Stop().
#include "cluster/leader_election.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "cluster/records.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"
#include "lib/cluster/candidate.h"

namespace kmosix::cluster {
namespace {

using kmosix::testing::Candidate;
using kmosix::testing::Eventually;
using kmosix::testing::FakeClock;
using kmosix::testing::FakeStateStore;
using std::chrono::milliseconds;
using std::chrono::seconds;

class LeaderElectionTest : public ::testing::Test {
 protected:
  // A write guarded by `fence` (as the controller makes them).
  bool FencedWrite(const Compare& fence, const std::string& value) {
    auto r = store.Commit(Txn{{fence}, {TxnOp::Put("/kmosix/fenced", value)}, {}});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() && r->succeeded;
  }
  int64_t LeaderLease() {
    auto got = store.Get(key);
    return got.ok() && got->kv ? got->kv->lease : 0;
  }

  FakeClock clock;
  FakeStateStore store{clock};
  const std::string key = KeyLayout{}.Leader();
};

TEST_F(LeaderElectionTest, ExactlyOneOfTwoLeads) {
  Candidate a(store, clock, key, "a");
  Candidate b(store, clock, key, "b");
  ASSERT_TRUE(Eventually([&] { return a.leading() || b.leading(); }));
  std::this_thread::sleep_for(milliseconds(100));  // give a second leader every chance
  EXPECT_NE(a.leading(), b.leading());
  EXPECT_NE(a.election.IsLeader(), b.election.IsLeader());
  EXPECT_EQ(a.terms() + b.terms(), 1);
  Candidate& leader = a.leading() ? a : b;
  auto current = a.election.CurrentLeader();
  ASSERT_TRUE(current.ok()) << current.status().ToString();
  EXPECT_EQ(*current, leader.identity);
  auto kv = store.Get(key);
  ASSERT_TRUE(kv.ok() && kv->kv);
  EXPECT_EQ(kv->kv->create_revision, leader.Revisions().back());
  EXPECT_NE(kv->kv->lease, 0);
}

TEST_F(LeaderElectionTest, StoppingTheLeaderHandsOver) {
  auto a = std::make_unique<Candidate>(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a->leading(); }));
  Candidate b(store, clock, key, "b");
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(b.leading());
  Compare a_fence = a->LastFence();
  a->StopAndJoin();  // lead saw Lost(); the lease was revoked, so the key went at once
  EXPECT_EQ(a->ended(), 1);
  EXPECT_FALSE(a->election.IsLeader());
  ASSERT_TRUE(Eventually([&] { return b.leading(); }));
  EXPECT_EQ(*b.election.CurrentLeader(), "b");
  EXPECT_FALSE(FencedWrite(a_fence, "from a"));
  EXPECT_TRUE(FencedWrite(b.LastFence(), "from b"));
}

TEST_F(LeaderElectionTest, RevokingTheLeadersLeaseEndsItsTermAndFencesIt) {
  Candidate a(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  Candidate b(store, clock, key, "b");
  Compare a_fence = a.LastFence();
  EXPECT_TRUE(FencedWrite(a_fence, "a while leading"));
  int64_t lease = LeaderLease();
  ASSERT_NE(lease, 0);
  ASSERT_TRUE(store.RevokeLease(lease).ok());  // from outside
  ASSERT_TRUE(Eventually([&] { return a.ended() == 1; }));
  ASSERT_TRUE(Eventually([&] { return a.leading() || b.leading(); }));
  // Whoever leads now holds a new term; a's old fence no longer holds.
  EXPECT_FALSE(FencedWrite(a_fence, "late write from deposed a"));
  Candidate& now = a.leading() ? a : b;
  EXPECT_TRUE(FencedWrite(now.LastFence(), "from the new leader"));
  EXPECT_GT(now.Revisions().back(), a.Revisions().front());
  auto fenced = store.Get("/kmosix/fenced");
  ASSERT_TRUE(fenced.ok() && fenced->kv);
  EXPECT_EQ(fenced->kv->value, "from the new leader");
}

TEST_F(LeaderElectionTest, RevokedLeaderAloneCampaignsAgain) {
  Candidate a(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  ASSERT_TRUE(store.RevokeLease(LeaderLease()).ok());
  ASSERT_TRUE(Eventually([&] { return a.terms() == 2 && a.leading(); }));
  auto revs = a.Revisions();
  EXPECT_GT(revs[1], revs[0]);
}

TEST_F(LeaderElectionTest, DeletingTheKeyEndsTheTerm) {
  Candidate a(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  Compare fence = a.LastFence();
  ASSERT_TRUE(store.Delete(key).ok());
  ASSERT_TRUE(Eventually([&] { return a.ended() == 1; }));
  ASSERT_TRUE(Eventually([&] { return a.terms() == 2 && a.leading(); }));
  EXPECT_FALSE(FencedWrite(fence, "old term"));
  EXPECT_TRUE(FencedWrite(a.LastFence(), "new term"));
}

TEST_F(LeaderElectionTest, KeyRecreatedByAnotherEndsTheTerm) {
  Candidate a(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  // An intruder deletes and re-creates the key. If `a` campaigns again in
  // between, the intruder's put overwrites its new key: that ends the new
  // term too.
  ASSERT_TRUE(store.Commit(Txn{{}, {TxnOp::Delete(key)}, {}}).ok());
  ASSERT_TRUE(store.Put(key, "intruder").ok());
  ASSERT_TRUE(Eventually([&] { return a.ended() >= 1 && !a.leading(); }));
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(a.leading());  // the intruder's key (no lease) blocks a new term
  EXPECT_EQ(*a.election.CurrentLeader(), "intruder");
  ASSERT_TRUE(store.Delete(key).ok());
  EXPECT_TRUE(Eventually([&] { return a.leading(); }));
}

TEST_F(LeaderElectionTest, KeyOverwrittenByAnotherEndsTheTerm) {
  Candidate a(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  ASSERT_TRUE(store.Put(key, "intruder").ok());  // same create revision, no lease
  ASSERT_TRUE(Eventually([&] { return a.ended() == 1; }));
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(a.leading());
  EXPECT_EQ(*a.election.CurrentLeader(), "intruder");
  ASSERT_TRUE(store.Delete(key).ok());
  EXPECT_TRUE(Eventually([&] { return a.leading(); }));
}

TEST_F(LeaderElectionTest, LeaseExpiringWhileTheStoreIsAwayEndsTheTerm) {
  Candidate a(store, clock, key, "a");
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  store.SetUnavailable(true);  // keep-alives stop refreshing
  clock.Advance(seconds(6));   // past the 5 s TTL
  store.ExpireLeases();        // the lease ends; the keep-alive reports the loss
  store.SetUnavailable(false);
  ASSERT_TRUE(Eventually([&] { return a.ended() == 1; }));
  EXPECT_TRUE(Eventually([&] { return a.terms() == 2 && a.leading(); }));
}

TEST_F(LeaderElectionTest, LeadReturningEndsTheTermAndRevokesTheLease) {
  Candidate a(store, clock, key, "a", /*give_up_at_first=*/true);
  ASSERT_TRUE(Eventually([&] { return a.terms() >= 2; }));
  a.give_up = false;
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  auto revs = a.Revisions();
  for (size_t i = 1; i < revs.size(); ++i) EXPECT_GT(revs[i], revs[i - 1]);
  a.StopAndJoin();
  auto got = store.Get(key);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->kv) << "the lease was revoked, so the key is gone at once";
}

TEST_F(LeaderElectionTest, StopWhileCampaigningReturns) {
  ASSERT_TRUE(store.Put(key, "someone-else").ok());  // held forever (no lease)
  Candidate a(store, clock, key, "a");
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(a.leading());
  EXPECT_FALSE(a.election.IsLeader());
  a.StopAndJoin();
  EXPECT_EQ(a.terms(), 0);
  EXPECT_EQ(*a.election.CurrentLeader(), "someone-else");
}

TEST_F(LeaderElectionTest, StopWhileTheStoreIsDownReturns) {
  store.SetUnavailable(true);
  Candidate a(store, clock, key, "a");
  std::this_thread::sleep_for(milliseconds(50));
  a.StopAndJoin();
  EXPECT_EQ(a.terms(), 0);
  EXPECT_EQ(a.election.CurrentLeader().status().code(), Code::kRetry);
}

TEST_F(LeaderElectionTest, StopBeforeRunReturnsAtOnce) {
  LeaderElection e(store, clock, {key, "x", seconds(5)});
  e.Stop();
  e.Stop();  // idempotent
  bool led = false;
  e.Run([&](const LeaderTerm&) { led = true; });
  EXPECT_FALSE(led);
}

}  // namespace
}  // namespace kmosix::cluster
