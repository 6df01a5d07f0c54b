// The StateStore conformance suite against the in-memory fake, plus the
// fake's own simulation hooks.
#include "fakes/fake_state_store.h"

#include <gtest/gtest.h>

#include <memory>

#include "fakes/fake_clock.h"
#include "lib/kmosix/state_store_conformance.h"

namespace kmosix::testing {

StateStoreHarness MakeFake() {
  auto clock = std::make_shared<FakeClock>();
  auto store = std::make_unique<FakeStateStore>(*clock);
  FakeStateStore* raw = store.get();
  StateStoreHarness h;
  h.keep_alive = clock;
  h.store = std::move(store);
  h.let_time_pass = [clock, raw](std::chrono::milliseconds d) {
    clock->Advance(d);
    raw->ExpireLeases();
  };
  return h;
}

namespace {

TEST(FakeStateStoreTest, UnavailableEndsWatchesAndFailsCalls) {
  FakeClock clock;
  FakeStateStore store(clock);
  ASSERT_TRUE(store.Put("/a", "1").ok());
  auto w = store.Watch(WatchOptions{"/a", false, 0, false});
  ASSERT_TRUE(w.ok());
  store.SetUnavailable(true);
  EXPECT_EQ(store.Get("/a").status().code(), Code::kRetry);
  EXPECT_EQ(store.Put("/a", "2").status().code(), Code::kRetry);
  auto next = (*w)->Next(std::chrono::milliseconds(10));
  EXPECT_EQ(next.status().code(), Code::kRetry);
  EXPECT_EQ((*w)->next_revision(), 3);
  store.SetUnavailable(false);
  auto again = store.Get("/a");
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->kv);
  EXPECT_EQ(again->kv->value, "1");
}

TEST(FakeStateStoreTest, KeepAliveLostWhileUnavailable) {
  FakeClock clock;
  FakeStateStore store(clock);
  auto g = store.GrantLease(std::chrono::seconds(5));
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(store.Put("/n", "x", PutOptions{g->id}).ok());
  auto ka = store.KeepAlive(g->id);
  ASSERT_TRUE(ka.ok());
  clock.Advance(std::chrono::seconds(20));
  store.ExpireLeases();
  EXPECT_TRUE((*ka)->status().ok());
  store.SetUnavailable(true);
  clock.Advance(std::chrono::seconds(6));
  store.ExpireLeases();
  EXPECT_EQ((*ka)->status().code(), Code::kNotFound);
  store.SetUnavailable(false);
  auto got = store.Get("/n");
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->kv);
}

TEST(FakeStateStoreTest, RevisionsStartAtOneAndTtlFloorIsTwoSeconds) {
  FakeClock clock;
  FakeStateStore store(clock);
  EXPECT_EQ(store.revision(), 1);
  auto g = store.GrantLease(std::chrono::seconds(1));
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->ttl, std::chrono::seconds(2));
}

}  // namespace
}  // namespace kmosix::testing

KMX_INSTANTIATE_STATE_STORE_CONFORMANCE(Fake, StateStoreConformanceParam{"fake", MakeFake});
