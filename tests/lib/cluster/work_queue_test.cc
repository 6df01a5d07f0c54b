#include "cluster/work_queue.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "fakes/fake_clock.h"

namespace kmosix::cluster {
namespace {

using kmosix::testing::FakeClock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Deterministic Random: returns `value` every time.
class FixedRandom : public Random {
 public:
  explicit FixedRandom(uint64_t value) : value_(value) {}
  uint64_t Next() override { return value_.load(); }
  void Set(uint64_t v) { value_ = v; }

 private:
  std::atomic<uint64_t> value_;
};

WorkQueue::Options Opts() {
  WorkQueue::Options o;
  o.base_backoff = milliseconds(100);
  o.max_backoff = seconds(2);
  return o;
}

TEST(WorkQueueTest, DeduplicatesQueuedKeys) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.Add("a");
  q.Add("b");
  q.Add("a");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "a");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "b");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
  q.Done("a");
  q.Done("b");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
}

TEST(WorkQueueTest, ReAddWhileProcessingIsDeliveredAfterDone) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.Add("a");
  ASSERT_EQ(q.Get(Clock::Duration::zero()), "a");
  q.Add("a");
  q.Add("a");
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);  // held by a worker
  q.Done("a");
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "a");
  q.Done("a");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);  // delivered once
}

TEST(WorkQueueTest, AddAfterDeliversWhenDue) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.AddAfter("a", seconds(1));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
  clock.Advance(milliseconds(999));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
  clock.Advance(milliseconds(1));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "a");
  q.Done("a");
  clock.Advance(seconds(10));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
}

TEST(WorkQueueTest, AddAfterEarlierPendingAddWins) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.AddAfter("late-then-early", seconds(5));
  q.AddAfter("late-then-early", seconds(1));
  q.AddAfter("early-then-late", seconds(1));
  q.AddAfter("early-then-late", seconds(5));
  clock.Advance(seconds(1));
  std::set<std::string> got;
  while (auto k = q.Get(Clock::Duration::zero())) got.insert(*k);
  EXPECT_EQ(got, (std::set<std::string>{"late-then-early", "early-then-late"}));
  for (const auto& k : got) q.Done(k);
  clock.Advance(seconds(10));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);  // no second delivery

  // A plain Add beats a pending delayed add, and cancels it.
  q.AddAfter("x", seconds(3));
  q.Add("x");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "x");
  q.Done("x");
  clock.Advance(seconds(3));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);

  // A queued key ignores a later delayed add.
  q.Add("y");
  q.AddAfter("y", seconds(1));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "y");
  q.Done("y");
  clock.Advance(seconds(1));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
}

TEST(WorkQueueTest, RetryBackoffDoublesUpToMax) {
  FakeClock clock;
  FixedRandom random(0);  // no jitter
  WorkQueue q(clock, random, Opts());
  std::vector<int64_t> delays;
  for (int i = 0; i < 8; ++i) {
    delays.push_back(std::chrono::duration_cast<milliseconds>(q.Retry("a")).count());
  }
  EXPECT_EQ(delays, (std::vector<int64_t>{100, 200, 400, 800, 1600, 2000, 2000, 2000}));
  EXPECT_EQ(q.Retries("a"), 8);
  EXPECT_EQ(q.Retries("b"), 0);
}

TEST(WorkQueueTest, JitterOnlyLengthensByAtMostAQuarter) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  for (uint64_t r : {uint64_t{1}, uint64_t{12345678}, uint64_t{25'000'000}, ~uint64_t{0},
                     uint64_t{0x9e3779b97f4a7c15}}) {
    random.Set(r);
    q.Forget("a");
    Clock::Duration backoff = milliseconds(100);
    for (int i = 0; i < 7; ++i) {
      Clock::Duration d = q.Retry("a");
      EXPECT_GE(d, backoff) << "retry " << i << " random " << r;
      EXPECT_LE(d, backoff + backoff / 4) << "retry " << i << " random " << r;
      backoff = std::min<Clock::Duration>(backoff * 2, seconds(2));
    }
  }
  // The largest draw lengthens by exactly a quarter: r % (quarter+1) == quarter.
  random.Set(25'000'000);  // 100 ms / 4 = 25'000'000 ns
  q.Forget("b");
  EXPECT_EQ(q.Retry("b"), milliseconds(125));
}

TEST(WorkQueueTest, RetryRedeliversAfterBackoffAndForgetResets) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.Add("a");
  ASSERT_EQ(q.Get(Clock::Duration::zero()), "a");
  EXPECT_EQ(q.Retry("a"), milliseconds(100));
  q.Done("a");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
  clock.Advance(milliseconds(100));
  ASSERT_EQ(q.Get(Clock::Duration::zero()), "a");
  EXPECT_EQ(q.Retry("a"), milliseconds(200));
  q.Done("a");
  clock.Advance(milliseconds(199));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
  clock.Advance(milliseconds(1));
  ASSERT_EQ(q.Get(Clock::Duration::zero()), "a");
  q.Forget("a");
  EXPECT_EQ(q.Retries("a"), 0);
  q.Done("a");
  EXPECT_EQ(q.Retry("a"), milliseconds(100));
}

TEST(WorkQueueTest, DelayedKeyDueWhileProcessingWaitsForDone) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.Add("a");
  ASSERT_EQ(q.Get(Clock::Duration::zero()), "a");
  q.Retry("a");
  clock.Advance(seconds(1));
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);  // still held
  q.Done("a");
  EXPECT_EQ(q.Get(Clock::Duration::zero()), "a");
}

TEST(WorkQueueTest, ShutDownWakesBlockedGet) {
  FakeClock clock;  // never advanced: Get would wait forever
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  std::optional<std::string> got = "unset";
  std::thread t([&] { got = q.Get(std::chrono::hours(1)); });
  std::this_thread::sleep_for(milliseconds(20));
  q.ShutDown();
  t.join();
  EXPECT_EQ(got, std::nullopt);
  q.Add("a");  // ignored after shutdown
  EXPECT_EQ(q.Get(Clock::Duration::zero()), std::nullopt);
}

TEST(WorkQueueTest, AddWakesBlockedGet) {
  FakeClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  std::optional<std::string> got;
  std::thread t([&] { got = q.Get(std::chrono::hours(1)); });
  std::this_thread::sleep_for(milliseconds(20));
  q.Add("a");
  t.join();
  EXPECT_EQ(got, "a");
}

TEST(WorkQueueTest, RealClockGetReturnsDelayedKeyBeforeItsTimeout) {
  SystemClock clock;
  FixedRandom random(0);
  WorkQueue q(clock, random, Opts());
  q.AddAfter("a", milliseconds(30));
  // A blocked Get wakes for the delayed key's due time (not only on Add).
  EXPECT_EQ(q.Get(std::chrono::minutes(10)), "a");
  q.Done("a");
  std::optional<std::string> got;
  std::thread t([&] { got = q.Get(std::chrono::minutes(10)); });
  std::this_thread::sleep_for(milliseconds(10));
  q.AddAfter("b", milliseconds(30));  // added while a worker already waits
  t.join();
  EXPECT_EQ(got, "b");
}

TEST(WorkQueueTest, WorkersNeverHoldTheSameKeyAtOnce) {
  SystemClock clock;
  SystemRandom random;
  WorkQueue q(clock, random, Opts());
  constexpr int kKeys = 8;
  constexpr int kAddsPerKey = 300;
  std::array<std::atomic<int>, kKeys> active{};
  std::atomic<int> overlaps{0};
  std::atomic<int> processed{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 6; ++w) {
    workers.emplace_back([&] {
      while (auto key = q.Get(seconds(5))) {
        int i = std::stoi(*key);
        if (active[i].fetch_add(1) != 0) overlaps++;
        std::this_thread::yield();
        active[i].fetch_sub(1);
        processed++;
        q.Done(*key);
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < 3; ++p) {
    producers.emplace_back([&] {
      for (int n = 0; n < kAddsPerKey; ++n) {
        for (int i = 0; i < kKeys; ++i) q.Add(std::to_string(i));
      }
    });
  }
  for (auto& t : producers) t.join();
  // Every key is delivered at least once after its last Add: wait for the queue to drain.
  while (q.Len() > 0) std::this_thread::sleep_for(milliseconds(1));
  std::this_thread::sleep_for(milliseconds(50));
  q.ShutDown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_GE(processed.load(), kKeys);
  EXPECT_LE(processed.load(), kKeys * kAddsPerKey * 3);
}

}  // namespace
}  // namespace kmosix::cluster

namespace kmosix::cluster {
namespace {

// RunLeaderWorker: nothing while not leading; on winning the lead everything
// is enqueued once and reconciled; a key that throws or fails is a failure of
// that key (retried after its backoff), never the end of the worker.
TEST(LeaderWorkerTest, ReconcilesOnlyWhileLeadingAndSurvivesThrowingKeys) {
  SystemClock clock;  // the worker sleeps and waits on real time here
  FixedRandom random(0);
  WorkQueue::Options o;
  o.base_backoff = milliseconds(20);
  o.max_backoff = milliseconds(40);
  WorkQueue queue(clock, random, o);
  std::atomic<bool> stop{false}, lead{false};
  std::atomic<int> enqueued_all{0}, ok{0}, throws{0}, fails{0};
  LeaderWorker w{.name = "test worker",
                 .lead = [&] { return lead.load(); },
                 .enqueue_all =
                     [&] {
                       ++enqueued_all;
                       queue.Add("ok");
                       queue.Add("throws");
                       queue.Add("fails");
                     },
                 .reconcile = [&](const std::string& key) -> Status {
                   if (key == "throws") {
                     ++throws;
                     throw std::runtime_error("boom");
                   }
                   if (key == "fails") {
                     ++fails;
                     return InvalidError("no");
                   }
                   ++ok;
                   return Status::Ok();
                 },
                 .resync = std::chrono::hours(1)};
  std::thread t([&] { RunLeaderWorker(queue, clock, stop, w); });
  queue.Add("ok");
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(ok.load(), 0) << "reconciled while not leading";
  EXPECT_EQ(enqueued_all.load(), 0);
  lead = true;
  auto until = [](const std::function<bool()>& done) {
    for (int i = 0; i < 400 && !done(); ++i) std::this_thread::sleep_for(milliseconds(10));
    return done();
  };
  EXPECT_TRUE(until([&] { return ok.load() >= 1 && throws.load() >= 2 && fails.load() >= 2; }))
      << "ok " << ok << " throws " << throws << " fails " << fails;
  EXPECT_EQ(enqueued_all.load(), 1) << "enqueue_all runs once per lead won (resync 1 h)";
  EXPECT_GE(queue.Retries("throws"), 1);
  stop = true;
  queue.ShutDown();
  t.join();
}

}  // namespace
}  // namespace kmosix::cluster
