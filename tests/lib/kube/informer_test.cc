// Tests of the Informer (lib/kube/informer.h) against the FakeClient: the
// first sync, adds/updates/deletes, the relist on 410 with synthetic
// changes, resuming after a bookmark, jittered exponential backoff through
// the injected Clock, and the status-write conflict/re-read/retry pattern.
#include "kube/informer.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "fakes/fake_clock.h"
#include "fakes/fake_kube_client.h"

namespace kmosix::kube {
namespace {

using nlohmann::json;

// A FakeClock that records every sleep.
class RecordingClock : public kmosix::testing::FakeClock {
 public:
  void SleepFor(Duration d) override {
    {
      std::lock_guard lock(mu_);
      sleeps_.push_back(d);
    }
    FakeClock::SleepFor(d);
    std::this_thread::yield();
  }
  std::vector<Duration> sleeps() const {
    std::lock_guard lock(mu_);
    return sleeps_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Duration> sleeps_;
};

class FixedRandom : public Random {
 public:
  explicit FixedRandom(uint64_t v) : v_(v) {}
  uint64_t Next() override { return v_; }

 private:
  uint64_t v_;
};

// Records on_change calls; waits for a condition (real time, generous).
class Changes {
 public:
  Informer::Handler Handler() {
    return [this](const std::string& key, const json* obj) {
      std::lock_guard lock(mu_);
      log_.push_back(key + (obj ? "=" + obj->value("spec", json::object()).dump() : " deleted"));
      cv_.notify_all();
    };
  }
  // Waits until `what` was reported (at most 20 s), then returns the whole log.
  bool WaitFor(const std::string& what) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20),
                        [&] { return std::find(log_.begin(), log_.end(), what) != log_.end(); });
  }
  std::vector<std::string> log() const {
    std::lock_guard lock(mu_);
    return log_;
  }
  void Clear() {
    std::lock_guard lock(mu_);
    log_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> log_;
};

json Obj(const std::string& name, int x) {
  return {{"metadata", {{"name", name}}}, {"spec", {{"x", x}}}};
}

bool WaitUntil(const std::function<bool()>& f) {
  for (int i = 0; i < 4000 && !f(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return f();
}

struct Fixture {
  Fixture() : informer(client, Migrations(), clock, random, changes.Handler(), Options()) {}
  static Informer::Options Options() {
    Informer::Options o;
    o.ns = "ns";
    o.min_backoff = std::chrono::milliseconds(100);
    o.max_backoff = std::chrono::milliseconds(400);
    return o;
  }
  FakeClient client;
  RecordingClock clock;
  FixedRandom random{0};
  Changes changes;
  Informer informer;
};

TEST(Informer, SyncsThenFollowsAddsUpdatesDeletes) {
  Fixture f;
  ASSERT_TRUE(f.client.Create(Migrations(), "ns", Obj("a", 1)).ok());
  ASSERT_TRUE(f.client.Create(Migrations(), "elsewhere", Obj("z", 1)).ok());
  f.informer.Start();
  ASSERT_TRUE(f.changes.WaitFor("ns/a={\"x\":1}"));
  EXPECT_TRUE(f.informer.HasSynced());
  ASSERT_TRUE(WaitUntil([&] { return f.client.ActiveWatches() == 1; }));
  auto b = f.client.Create(Migrations(), "ns", Obj("b", 2));
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(f.changes.WaitFor("ns/b={\"x\":2}"));
  json u = *b;
  u["spec"]["x"] = 3;
  ASSERT_TRUE(f.client.Update(Migrations(), "ns", u).ok());
  ASSERT_TRUE(f.changes.WaitFor("ns/b={\"x\":3}"));
  ASSERT_TRUE(f.client.Delete(Migrations(), "ns", "a", "").ok());
  ASSERT_TRUE(f.changes.WaitFor("ns/a deleted"));
  EXPECT_FALSE(f.informer.Get("ns/a"));
  ASSERT_TRUE(f.informer.Get("ns/b"));
  EXPECT_EQ((*f.informer.Get("ns/b"))["spec"]["x"], 3);
  EXPECT_EQ(f.informer.List().size(), 1u);
  EXPECT_FALSE(f.informer.Get("elsewhere/z"));  // another namespace
  EXPECT_EQ(f.informer.ResourceVersion(), f.client.ResourceVersion());
  f.informer.Stop();
  EXPECT_EQ(f.client.ActiveWatches(), 0);
  EXPECT_EQ(f.informer.Lists(), 1);
}

TEST(Informer, RelistsOn410AndReportsNothingUnchanged) {
  Fixture f;
  ASSERT_TRUE(f.client.Create(Migrations(), "ns", Obj("a", 1)).ok());
  f.informer.Start();
  ASSERT_TRUE(f.changes.WaitFor("ns/a={\"x\":1}"));
  ASSERT_TRUE(WaitUntil([&] { return f.client.ActiveWatches() == 1; }));
  // The running watch ends with 410 (an ERROR event from the server).
  f.client.EndWatches(ConflictError("410 Gone: too old resource version"));
  ASSERT_TRUE(WaitUntil([&] { return f.informer.Lists() == 2; }));
  ASSERT_TRUE(WaitUntil([&] { return f.client.ActiveWatches() == 1; }));
  ASSERT_TRUE(f.client.Create(Migrations(), "ns", Obj("b", 1)).ok());
  ASSERT_TRUE(f.changes.WaitFor("ns/b={\"x\":1}"));
  f.informer.Stop();
  std::vector<std::string> want = {"ns/a={\"x\":1}", "ns/b={\"x\":1}"};
  EXPECT_EQ(f.changes.log(), want);       // the relist found "a" unchanged
  EXPECT_TRUE(f.clock.sleeps().empty());  // a relist is no failure: no backoff
}

TEST(Informer, RelistAfterCompactionReportsWhatChangedMeanwhile) {
  FakeClient client;
  FixedRandom random{0};
  Changes changes;
  ASSERT_TRUE(client.Create(Migrations(), "ns", Obj("keep", 1)).ok());
  ASSERT_TRUE(client.Create(Migrations(), "ns", Obj("gone", 1)).ok());
  ASSERT_TRUE(client.Create(Migrations(), "ns", Obj("changed", 1)).ok());
  // The first watch fails at once with a plain error: the informer backs off
  // (on the recording clock) and resumes from the list's version — which by
  // then has been compacted away: 410, relist.
  std::atomic<bool> compacted{false};
  client.FailNext("Watch", RetryError("connection refused"));
  Informer::Options o = Fixture::Options();
  // Between the failing watch and the next one, mutate and compact (from
  // the handler of the first sync we cannot; use the clock's sleep instead).
  class MutatingClock : public RecordingClock {
   public:
    std::function<void()> on_first_sleep;
    void SleepFor(Duration d) override {
      if (on_first_sleep) {
        auto f = std::move(on_first_sleep);
        on_first_sleep = nullptr;
        f();
      }
      RecordingClock::SleepFor(d);
    }
  } mclock;
  mclock.on_first_sleep = [&] {
    ASSERT_TRUE(client.Delete(Migrations(), "ns", "gone", "").ok());
    json c = *client.Get(Migrations(), "ns", "changed");
    c["spec"]["x"] = 2;
    ASSERT_TRUE(client.Update(Migrations(), "ns", c).ok());
    ASSERT_TRUE(client.Create(Migrations(), "ns", Obj("new", 1)).ok());
    client.Compact();
    compacted = true;
  };
  Informer informer(client, Migrations(), mclock, random, changes.Handler(), o);
  informer.Start();
  ASSERT_TRUE(changes.WaitFor("ns/new={\"x\":1}"));
  ASSERT_TRUE(WaitUntil([&] { return informer.Lists() == 2; }));
  informer.Stop();
  EXPECT_TRUE(compacted);
  auto log = changes.log();
  // First sync: three adds; after the relist: gone deleted, changed updated,
  // new added, keep not reported again.
  std::vector<std::string> want = {"ns/changed={\"x\":1}", "ns/gone={\"x\":1}",
                                   "ns/keep={\"x\":1}",    "ns/gone deleted",
                                   "ns/changed={\"x\":2}", "ns/new={\"x\":1}"};
  EXPECT_EQ(log, want);
  EXPECT_EQ(informer.List().size(), 3u);
  EXPECT_EQ(client.Calls("List"), 2);
}

TEST(Informer, ResumesFromABookmark) {
  Fixture f;
  f.informer.Start();
  ASSERT_TRUE(WaitUntil([&] { return f.client.ActiveWatches() == 1; }));
  // Writes to another resource move the global version on without events
  // for this informer; only a bookmark tells it the new version.
  ASSERT_TRUE(f.client.Create(Nodes(), "", Obj("node-a", 1)).ok());
  ASSERT_TRUE(f.client.Create(Nodes(), "", Obj("node-b", 1)).ok());
  f.client.SendBookmark();
  ASSERT_TRUE(
      WaitUntil([&] { return f.informer.ResourceVersion() == f.client.ResourceVersion(); }));
  // History before the bookmark's version is dropped and the stream ends:
  // resuming from the bookmark is fine (no relist); from the list's version
  // it would be 410.
  f.client.Compact();
  f.client.EndWatches(Status::Ok());
  ASSERT_TRUE(
      WaitUntil([&] { return f.client.Calls("Watch") >= 2 && f.client.ActiveWatches() == 1; }));
  ASSERT_TRUE(f.client.Create(Migrations(), "ns", Obj("after", 1)).ok());
  ASSERT_TRUE(f.changes.WaitFor("ns/after={\"x\":1}"));
  EXPECT_EQ(f.informer.Lists(), 1);
  f.informer.Stop();
}

TEST(Informer, BacksOffExponentiallyWithJitterThenRecovers) {
  Fixture f;  // min 100 ms, max 400 ms, Random 0 => exactly half of each step
  for (int i = 0; i < 5; ++i) f.client.FailNext("List", RetryError("apiserver down"));
  ASSERT_TRUE(f.client.Create(Migrations(), "ns", Obj("a", 1)).ok());
  f.informer.Start();
  ASSERT_TRUE(f.changes.WaitFor("ns/a={\"x\":1}"));
  f.informer.Stop();
  auto sleeps = f.clock.sleeps();
  std::vector<std::chrono::nanoseconds> want = {
      std::chrono::milliseconds(50), std::chrono::milliseconds(100), std::chrono::milliseconds(200),
      std::chrono::milliseconds(200), std::chrono::milliseconds(200)};
  ASSERT_GE(sleeps.size(), 5u);
  sleeps.resize(5);
  EXPECT_EQ(sleeps, want);
  EXPECT_EQ(f.client.Calls("List"), 6);
  EXPECT_NE(f.informer.LastError().message().find("apiserver down"), std::string::npos);
}

TEST(Informer, JitterUsesTheRandomHalf) {
  FakeClient client;
  RecordingClock clock;
  FixedRandom random{30'000'000};  // 30 ms into the random half
  Changes changes;
  client.FailNext("List", RetryError("down"));
  Informer informer(client, Migrations(), clock, random, changes.Handler(), Fixture::Options());
  informer.Start();
  ASSERT_TRUE(WaitUntil([&] { return informer.HasSynced(); }));
  informer.Stop();
  ASSERT_GE(clock.sleeps().size(), 1u);
  EXPECT_EQ(clock.sleeps()[0], std::chrono::milliseconds(80));  // 50 fixed + 30 random
}

TEST(Informer, StatusWriteConflictThenReReadAndRetry) {
  Fixture f;
  ASSERT_TRUE(f.client.Create(Migrations(), "ns", Obj("m", 1)).ok());
  f.informer.Start();
  ASSERT_TRUE(f.changes.WaitFor("ns/m={\"x\":1}"));
  json cached = *f.informer.Get("ns/m");
  // Someone else writes first: the cached copy is stale.
  json other = cached;
  other["status"] = {{"phase", "Other"}};
  ASSERT_TRUE(f.client.UpdateStatus(Migrations(), "ns", other).ok());
  json mine = cached;
  mine["status"] = {{"phase", "Mine"}};
  auto first = f.client.UpdateStatus(Migrations(), "ns", mine);
  ASSERT_EQ(first.status().code(), Code::kConflict);
  auto fresh = f.client.Get(Migrations(), "ns", "m");
  ASSERT_TRUE(fresh.ok());
  json retry = *fresh;
  retry["status"] = {{"phase", "Mine"}};
  auto second = f.client.UpdateStatus(Migrations(), "ns", retry);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  ASSERT_TRUE(WaitUntil([&] {
    auto o = f.informer.Get("ns/m");
    return o && o->value("status", json::object()).value("phase", "") == "Mine";
  }));
  EXPECT_EQ(f.client.Calls("UpdateStatus"), 3);
  f.informer.Stop();
}

}  // namespace
}  // namespace kmosix::kube
