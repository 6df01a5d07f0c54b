// Conformance suite for StateStore implementations (the contract in
// kmosix/state_store.h): MVCC revisions, ranges, deletes, transactions (CAS,
// races), watches (live, replayed, compacted, cancelled), leases (expiry,
// revoke, keep-alive, loss reporting).
//
// Header-only. Use (tests/ on the include path):
//   #include "lib/kmosix/state_store_conformance.h"
//   KMX_INSTANTIATE_STATE_STORE_CONFORMANCE(Fake, kmosix::testing::StateStoreConformanceParam{
//       "fake", [] { return MakeHarness(); }});
//
// Each case uses its own key prefix and only relative revisions, so a real
// server may be shared by the cases of one process. Time-dependent cases let
// time pass through the harness (a fake advances its clock, a real store
// sleeps), in steps of 250 ms, polling the condition.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kmosix/state_store.h"
#include "kmosix/status.h"

namespace kmosix::testing {

struct StateStoreHarness {
  std::shared_ptr<void> keep_alive;  // whatever the store needs (clock, server); dies last
  std::unique_ptr<StateStore> store;
  // Lets `d` of time pass for leases (fake: advance the clock; real: sleep).
  std::function<void(std::chrono::milliseconds)> let_time_pass;
};

struct StateStoreConformanceParam {
  std::string label;  // test name suffix: [A-Za-z0-9_]
  std::function<StateStoreHarness()> make;
  // Non-empty: why the suite cannot run for this param (cases GTEST_SKIP).
  std::function<std::string()> skip_reason = nullptr;
};

inline void PrintTo(const StateStoreConformanceParam& p, std::ostream* os) { *os << p.label; }

inline std::string StateStoreConformanceName(
    const ::testing::TestParamInfo<StateStoreConformanceParam>& info) {
  return info.param.label;
}

class StateStoreConformance : public ::testing::TestWithParam<StateStoreConformanceParam> {
 protected:
  using ms = std::chrono::milliseconds;

  void SetUp() override {
    const auto& p = GetParam();
    if (p.skip_reason) {
      std::string why = p.skip_reason();
      if (!why.empty())
        GTEST_SKIP() << "STATE STORE CONFORMANCE SKIPPED for " << p.label << ": " << why;
    }
    h_ = p.make();
    ASSERT_NE(h_.store, nullptr) << "harness has no store";
    s_ = h_.store.get();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info->name();  // "Case/label"
    for (auto& c : name)
      if (c == '/') c = '_';
    prefix_ = "/kmx-conformance/" + name + "/";
    auto cleared = s_->DeletePrefix(prefix_);
    ASSERT_TRUE(cleared.ok()) << cleared.status().ToString();
  }

  void TearDown() override {
    s_ = nullptr;
    h_.store.reset();
  }

  std::string K(const std::string& name) const { return prefix_ + name; }

  int64_t MustPut(const std::string& key, const std::string& value, int64_t lease = 0) {
    auto r = s_->Put(key, value, PutOptions{lease});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : 0;
  }

  std::optional<KeyValue> MustGet(const std::string& key) {
    auto r = s_->Get(key);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->kv : std::nullopt;
  }

  // Polls `cond`, letting time pass in 250 ms steps, for up to `limit`.
  bool Eventually(const std::function<bool()>& cond, ms limit) {
    for (ms waited{0}; waited <= limit; waited += ms(250)) {
      if (cond()) return true;
      h_.let_time_pass(ms(250));
    }
    return cond();
  }

  // Collects events until `n` arrived or `limit` passed (real time).
  std::vector<WatchEvent> Collect(Watcher& w, size_t n, ms limit = ms(5000)) {
    std::vector<WatchEvent> out;
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      auto batch = w.Next(ms(100));
      if (!batch.ok()) {
        ADD_FAILURE() << "watch ended: " << batch.status().ToString();
        break;
      }
      out.insert(out.end(), batch->begin(), batch->end());
    }
    return out;
  }

  StateStoreHarness h_;
  StateStore* s_ = nullptr;
  std::string prefix_;
};

TEST_P(StateStoreConformance, PutGetTracksRevisionsAndVersions) {
  auto missing = s_->Get(K("a"));
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  EXPECT_FALSE(missing->kv.has_value());
  EXPECT_GT(missing->revision, 0);

  int64_t r1 = MustPut(K("a"), "one");
  EXPECT_GT(r1, missing->revision);
  auto kv = MustGet(K("a"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->key, K("a"));
  EXPECT_EQ(kv->value, "one");
  EXPECT_EQ(kv->create_revision, r1);
  EXPECT_EQ(kv->mod_revision, r1);
  EXPECT_EQ(kv->version, 1);
  EXPECT_EQ(kv->lease, 0);

  int64_t r2 = MustPut(K("a"), "two");
  EXPECT_EQ(r2, r1 + 1);
  kv = MustGet(K("a"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->value, "two");
  EXPECT_EQ(kv->create_revision, r1);
  EXPECT_EQ(kv->mod_revision, r2);
  EXPECT_EQ(kv->version, 2);

  // Binary values survive.
  std::string bin("\0\xff\x01z", 4);
  MustPut(K("bin"), bin);
  kv = MustGet(K("bin"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->value, bin);

  auto got = s_->Get(K("a"));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->revision, r2 + 1);
}

TEST_P(StateStoreConformance, GetAtPastRevision) {
  int64_t r1 = MustPut(K("a"), "one");
  MustPut(K("a"), "two");
  auto old = s_->Get(K("a"), r1);
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  ASSERT_TRUE(old->kv);
  EXPECT_EQ(old->kv->value, "one");
  auto before = s_->Get(K("a"), r1 - 1);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_FALSE(before->kv);
  auto future = s_->Get(K("a"), r1 + 100);
  EXPECT_EQ(future.status().code(), Code::kInvalid) << future.status().ToString();
}

TEST_P(StateStoreConformance, ListByPrefixIsSortedAndLimited) {
  MustPut(K("n/b"), "2");
  MustPut(K("n/a"), "1");
  MustPut(K("n/c"), "3");
  MustPut(K("n"), "not under n/");
  int64_t last = MustPut(K("m/a"), "other");

  auto all = s_->List(K("n/"));
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->kvs.size(), 3u);
  EXPECT_EQ(all->kvs[0].key, K("n/a"));
  EXPECT_EQ(all->kvs[1].key, K("n/b"));
  EXPECT_EQ(all->kvs[2].key, K("n/c"));
  EXPECT_EQ(all->revision, last);
  EXPECT_FALSE(all->more);

  auto two = s_->List(K("n/"), ListOptions{0, 2});
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  ASSERT_EQ(two->kvs.size(), 2u);
  EXPECT_EQ(two->kvs[1].key, K("n/b"));
  EXPECT_TRUE(two->more);

  auto none = s_->List(K("zzz/"));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->kvs.empty());

  // As of an older revision.
  s_->Delete(K("n/a")).status().ok();
  auto past = s_->List(K("n/"), ListOptions{last, 0});
  ASSERT_TRUE(past.ok()) << past.status().ToString();
  EXPECT_EQ(past->kvs.size(), 3u);
}

// More keys than the etcd adapter reads in one Range page (500): the listing
// is whole, sorted, at one revision; a limit spans pages; a past revision too.
TEST_P(StateStoreConformance, ListOfMoreKeysThanAPageIsWhole) {
  auto name = [](int i) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "p/%05d", i);
    return std::string(buf);
  };
  int64_t first_batch = 0;
  for (int i = 0; i < 1300; i += 100) {
    Txn txn;
    for (int j = i; j < i + 100; ++j) txn.then_ops.push_back(TxnOp::Put(K(name(j)), "v"));
    auto r = s_->Commit(txn);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    if (i == 1100) first_batch = r->revision - 1;  // before the last two batches
  }
  auto all = s_->List(K("p/"));
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->kvs.size(), 1300u);
  for (int i = 0; i < 1300; ++i) ASSERT_EQ(all->kvs[i].key, K(name(i)));
  EXPECT_FALSE(all->more);

  auto limited = s_->List(K("p/"), ListOptions{0, 1050});
  ASSERT_TRUE(limited.ok()) << limited.status().ToString();
  ASSERT_EQ(limited->kvs.size(), 1050u);
  EXPECT_EQ(limited->kvs.back().key, K(name(1049)));
  EXPECT_TRUE(limited->more);
  EXPECT_EQ(limited->revision, all->revision);

  auto past = s_->List(K("p/"), ListOptions{first_batch, 0});
  ASSERT_TRUE(past.ok()) << past.status().ToString();
  EXPECT_EQ(past->kvs.size(), 1100u);
  ASSERT_TRUE(s_->DeletePrefix(K("p/")).ok());
}

TEST_P(StateStoreConformance, DeleteAndRecreate) {
  int64_t r1 = MustPut(K("a"), "1");
  MustPut(K("a"), "2");
  auto del = s_->Delete(K("a"));
  ASSERT_TRUE(del.ok()) << del.status().ToString();
  EXPECT_EQ(del->deleted, 1);
  EXPECT_EQ(del->revision, r1 + 2);
  EXPECT_FALSE(MustGet(K("a")));

  auto again = s_->Delete(K("a"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->deleted, 0);
  EXPECT_EQ(again->revision, del->revision) << "deleting nothing must not bump the revision";

  int64_t r3 = MustPut(K("a"), "3");
  auto kv = MustGet(K("a"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->create_revision, r3);
  EXPECT_EQ(kv->version, 1);

  MustPut(K("p/x"), "");
  MustPut(K("p/y"), "");
  MustPut(K("q"), "");
  auto dp = s_->DeletePrefix(K("p/"));
  ASSERT_TRUE(dp.ok()) << dp.status().ToString();
  EXPECT_EQ(dp->deleted, 2);
  EXPECT_TRUE(MustGet(K("q")));
}

TEST_P(StateStoreConformance, EmptyKeyIsInvalid) {
  EXPECT_EQ(s_->Get("").status().code(), Code::kInvalid);
  EXPECT_EQ(s_->Put("", "x").status().code(), Code::kInvalid);
  EXPECT_EQ(s_->Delete("").status().code(), Code::kInvalid);
  Txn txn;
  txn.then_ops.push_back(TxnOp::Put("", "x"));
  EXPECT_EQ(s_->Commit(txn).status().code(), Code::kInvalid);
}

TEST_P(StateStoreConformance, TxnComparesAndBranches) {
  // Create-if-absent succeeds once.
  Txn create{{Compare::Absent(K("a"))}, {TxnOp::Put(K("a"), "v1")}, {}};
  auto c1 = s_->Commit(create);
  ASSERT_TRUE(c1.ok()) << c1.status().ToString();
  EXPECT_TRUE(c1->succeeded);
  auto c2 = s_->Commit(create);
  ASSERT_TRUE(c2.ok()) << c2.status().ToString();
  EXPECT_FALSE(c2->succeeded);
  EXPECT_EQ(c2->revision, c1->revision) << "a txn that writes nothing keeps the revision";

  auto kv = MustGet(K("a"));
  ASSERT_TRUE(kv);

  // Else branch runs when a compare fails.
  Txn swap{{Compare::Value(K("a"), Compare::Op::kEqual, "nope")},
           {TxnOp::Put(K("a"), "then")},
           {TxnOp::Put(K("else"), "ran"), TxnOp::Delete(K("missing"))}};
  auto r = s_->Commit(swap);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->succeeded);
  EXPECT_EQ(MustGet(K("a"))->value, "v1");
  auto e = MustGet(K("else"));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->value, "ran");
  EXPECT_EQ(e->mod_revision, r->revision);

  // Every target and op.
  auto holds = [&](Compare c) {
    auto res = s_->Commit(Txn{{std::move(c)}, {}, {}});
    EXPECT_TRUE(res.ok()) << res.status().ToString();
    return res.ok() && res->succeeded;
  };
  using Op = Compare::Op;
  EXPECT_TRUE(holds(Compare::Unchanged(K("a"), kv->mod_revision)));
  EXPECT_FALSE(holds(Compare::Unchanged(K("a"), kv->mod_revision - 1)));
  EXPECT_TRUE(holds(Compare::ModRevision(K("a"), Op::kLess, kv->mod_revision + 1)));
  EXPECT_TRUE(holds(Compare::ModRevision(K("a"), Op::kGreater, kv->mod_revision - 1)));
  EXPECT_TRUE(holds(Compare::ModRevision(K("a"), Op::kNotEqual, 0)));
  EXPECT_TRUE(holds(Compare::CreateRevision(K("a"), Op::kEqual, kv->create_revision)));
  EXPECT_TRUE(holds(Compare::Version(K("a"), Op::kEqual, 1)));
  EXPECT_TRUE(holds(Compare::Value(K("a"), Op::kEqual, "v1")));
  EXPECT_TRUE(holds(Compare::Value(K("a"), Op::kGreater, "v0")));
  EXPECT_TRUE(holds(Compare::Value(K("a"), Op::kLess, "v2")));
  // A missing key: revisions and version are 0, value compares are false.
  EXPECT_TRUE(holds(Compare::Absent(K("missing"))));
  EXPECT_TRUE(holds(Compare::Version(K("missing"), Op::kEqual, 0)));
  EXPECT_TRUE(holds(Compare::ModRevision(K("missing"), Op::kEqual, 0)));
  EXPECT_FALSE(holds(Compare::Value(K("missing"), Op::kEqual, "")));
  EXPECT_FALSE(holds(Compare::Value(K("missing"), Op::kNotEqual, "x")));

  // Multiple writes share one revision.
  Txn multi{{Compare::Version(K("a"), Op::kEqual, 1)},
            {TxnOp::Put(K("a"), "v2"), TxnOp::Put(K("b"), "b"), TxnOp::Delete(K("else"))},
            {}};
  auto m = s_->Commit(multi);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->succeeded);
  EXPECT_EQ(MustGet(K("a"))->mod_revision, m->revision);
  EXPECT_EQ(MustGet(K("b"))->mod_revision, m->revision);
  EXPECT_FALSE(MustGet(K("else")));
}

TEST_P(StateStoreConformance, TxnWritingAKeyTwiceIsInvalid) {
  Txn twice{{}, {TxnOp::Put(K("a"), "1"), TxnOp::Put(K("a"), "2")}, {}};
  EXPECT_EQ(s_->Commit(twice).status().code(), Code::kInvalid);
  Txn put_del{{}, {TxnOp::Put(K("a"), "1"), TxnOp::Delete(K("a"))}, {}};
  EXPECT_EQ(s_->Commit(put_del).status().code(), Code::kInvalid);
  EXPECT_FALSE(MustGet(K("a")));
}

TEST_P(StateStoreConformance, CasOnModRevisionRaceHasExactlyOneWinner) {
  MustPut(K("epoch"), "0");
  for (int round = 0; round < 20; ++round) {
    auto kv = MustGet(K("epoch"));
    ASSERT_TRUE(kv);
    std::atomic<int> winners{0}, errors{0};
    std::barrier sync(2);
    auto writer = [&](const std::string& who) {
      sync.arrive_and_wait();
      auto r = s_->Commit(Txn{
          {Compare::Unchanged(K("epoch"), kv->mod_revision)}, {TxnOp::Put(K("epoch"), who)}, {}});
      if (!r.ok())
        ++errors;
      else if (r->succeeded)
        ++winners;
    };
    std::thread a(writer, "a" + std::to_string(round));
    std::thread b(writer, "b" + std::to_string(round));
    a.join();
    b.join();
    ASSERT_EQ(errors.load(), 0);
    ASSERT_EQ(winners.load(), 1) << "round " << round;
    auto after = MustGet(K("epoch"));
    ASSERT_TRUE(after);
    EXPECT_EQ(after->version, kv->version + 1);
  }
}

TEST_P(StateStoreConformance, ConcurrentCasIncrementsLoseNoUpdate) {
  MustPut(K("counter"), "0");
  constexpr int kThreads = 4, kEach = 10;
  std::atomic<int> errors{0};
  auto worker = [&] {
    for (int i = 0; i < kEach; ++i) {
      for (;;) {
        auto got = s_->Get(K("counter"));
        if (!got.ok() || !got->kv) {
          ++errors;
          return;
        }
        int n = std::stoi(got->kv->value);
        auto r = s_->Commit(Txn{{Compare::Unchanged(K("counter"), got->kv->mod_revision)},
                                {TxnOp::Put(K("counter"), std::to_string(n + 1))},
                                {}});
        if (!r.ok()) {
          ++errors;
          return;
        }
        if (r->succeeded) break;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  auto kv = MustGet(K("counter"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->value, std::to_string(kThreads * kEach));
  EXPECT_EQ(kv->version, 1 + kThreads * kEach);
}

TEST_P(StateStoreConformance, WatchKeyReportsPutsAndDeletesWithPrevKv) {
  auto w = s_->Watch(WatchOptions{K("a"), false, 0, true});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  int64_t r1 = MustPut(K("a"), "1");
  MustPut(K("other"), "x");
  int64_t r2 = MustPut(K("a"), "2");
  ASSERT_TRUE(s_->Delete(K("a")).ok());

  auto events = Collect(**w, 3);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[0].kv.value, "1");
  EXPECT_EQ(events[0].kv.mod_revision, r1);
  EXPECT_EQ(events[0].kv.version, 1);
  EXPECT_FALSE(events[0].prev_kv);
  EXPECT_EQ(events[1].kv.value, "2");
  EXPECT_EQ(events[1].kv.create_revision, r1);
  ASSERT_TRUE(events[1].prev_kv);
  EXPECT_EQ(events[1].prev_kv->value, "1");
  EXPECT_EQ(events[2].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[2].kv.key, K("a"));
  EXPECT_EQ(events[2].kv.mod_revision, r2 + 1);
  ASSERT_TRUE(events[2].prev_kv);
  EXPECT_EQ(events[2].prev_kv->value, "2");
  EXPECT_EQ((*w)->next_revision(), r2 + 2);

  // Nothing more.
  auto idle = (*w)->Next(ms(200));
  ASSERT_TRUE(idle.ok()) << idle.status().ToString();
  EXPECT_TRUE(idle->empty());
}

TEST_P(StateStoreConformance, WatchPrefixDeliversTxnAtOneRevision) {
  auto w = s_->Watch(WatchOptions{K("dir/"), true, 0, false});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto r = s_->Commit(Txn{
      {}, {TxnOp::Put(K("dir/a"), "1"), TxnOp::Put(K("dir/b"), "2"), TxnOp::Put(K("x"), "")}, {}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto events = Collect(**w, 2);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kv.key, K("dir/a"));
  EXPECT_EQ(events[1].kv.key, K("dir/b"));
  EXPECT_EQ(events[0].kv.mod_revision, r->revision);
  EXPECT_EQ(events[1].kv.mod_revision, r->revision);
  EXPECT_FALSE(events[0].prev_kv) << "prev_kv not asked for";
}

TEST_P(StateStoreConformance, WatchFromOldRevisionReplaysHistory) {
  int64_t r1 = MustPut(K("a"), "1");
  MustPut(K("a"), "2");
  ASSERT_TRUE(s_->Delete(K("a")).ok());
  int64_t r4 = MustPut(K("a"), "4");

  auto w = s_->Watch(WatchOptions{K("a"), false, r1 + 1, false});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto events = Collect(**w, 3);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].kv.value, "2");
  EXPECT_EQ(events[0].kv.mod_revision, r1 + 1);
  EXPECT_EQ(events[1].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[2].kv.value, "4");
  EXPECT_EQ(events[2].kv.mod_revision, r4);
  EXPECT_EQ(events[2].kv.version, 1);

  // Then live events.
  int64_t r5 = MustPut(K("a"), "5");
  events = Collect(**w, 1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kv.mod_revision, r5);
}

TEST_P(StateStoreConformance, CompactionIsReported) {
  int64_t r1 = MustPut(K("a"), "1");
  MustPut(K("a"), "2");
  int64_t r3 = MustPut(K("a"), "3");

  EXPECT_EQ(s_->Compact(r3 + 100).code(), Code::kInvalid);
  Status compact = s_->Compact(r3);
  ASSERT_TRUE(compact.ok()) << compact.ToString();
  EXPECT_EQ(s_->Compact(r3).code(), Code::kConflict) << "already compacted";

  // The latest state survives; old revisions are gone.
  auto kv = MustGet(K("a"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->value, "3");
  auto old = s_->Get(K("a"), r1);
  EXPECT_EQ(old.status().code(), Code::kConflict) << old.status().ToString();
  auto old_list = s_->List(K(""), ListOptions{r1, 0});
  EXPECT_EQ(old_list.status().code(), Code::kConflict) << old_list.status().ToString();
  auto at = s_->Get(K("a"), r3);
  ASSERT_TRUE(at.ok()) << at.status().ToString();

  // A watch from a compacted revision ends with kConflict.
  auto w = s_->Watch(WatchOptions{K("a"), false, r1, false});
  if (!w.ok()) {
    EXPECT_EQ(w.status().code(), Code::kConflict) << w.status().ToString();
    return;
  }
  StatusOr<std::vector<WatchEvent>> next = std::vector<WatchEvent>{};
  for (int i = 0; i < 50 && next.ok(); ++i) {
    next = (*w)->Next(ms(100));
    if (next.ok()) {
      EXPECT_TRUE(next->empty()) << "no events from a compacted revision";
    }
  }
  ASSERT_FALSE(next.ok()) << "compaction not reported";
  EXPECT_EQ(next.status().code(), Code::kConflict) << next.status().ToString();
  EXPECT_NE(next.status().message().find("compacted"), std::string::npos);
  EXPECT_EQ((*w)->compact_revision(), r3);
  // Terminal.
  EXPECT_EQ((*w)->Next(ms(10)).status().code(), Code::kConflict);

  // Relist and watch from there: works.
  auto list = s_->List(K(""));
  ASSERT_TRUE(list.ok());
  auto w2 = s_->Watch(WatchOptions{K("a"), false, list->revision + 1, false});
  ASSERT_TRUE(w2.ok()) << w2.status().ToString();
  int64_t r4 = MustPut(K("a"), "4");
  auto events = Collect(**w2, 1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kv.mod_revision, r4);
}

TEST_P(StateStoreConformance, CancelledWatchReportsCancellation) {
  auto w = s_->Watch(WatchOptions{K("a"), false, 0, false});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::thread canceller([&] {
    std::this_thread::sleep_for(ms(100));
    (*w)->Cancel();
  });
  auto start = std::chrono::steady_clock::now();
  StatusOr<std::vector<WatchEvent>> r = std::vector<WatchEvent>{};
  while (r.ok() && std::chrono::steady_clock::now() - start < ms(5000)) r = (*w)->Next(ms(5000));
  canceller.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailed) << r.status().ToString();
  EXPECT_NE(r.status().message().find("cancelled"), std::string::npos);
  (*w)->Cancel();  // idempotent
  MustPut(K("a"), "after");
}

TEST_P(StateStoreConformance, UnknownLeaseIsNotFound) {
  constexpr int64_t kBogus = 0x7eadbeef;
  EXPECT_EQ(s_->Put(K("a"), "x", PutOptions{kBogus}).status().code(), Code::kNotFound);
  EXPECT_EQ(s_->RevokeLease(kBogus).code(), Code::kNotFound);
  EXPECT_EQ(s_->LeaseTimeToLive(kBogus).status().code(), Code::kNotFound);
  EXPECT_EQ(s_->KeepAlive(kBogus).status().code(), Code::kNotFound);
  EXPECT_EQ(s_->GrantLease(std::chrono::seconds(0)).status().code(), Code::kInvalid);
  EXPECT_FALSE(MustGet(K("a")));
}

TEST_P(StateStoreConformance, LeaseTtlHasAFloor) {
  auto g = s_->GrantLease(std::chrono::seconds(1));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_GE(g->ttl.count(), 1);
  auto left = s_->LeaseTimeToLive(g->id);
  ASSERT_TRUE(left.ok()) << left.status().ToString();
  EXPECT_LE(left->count(), g->ttl.count());
  EXPECT_TRUE(s_->RevokeLease(g->id).ok());
}

TEST_P(StateStoreConformance, LeaseExpiryDeletesAttachedKeys) {
  auto g = s_->GrantLease(std::chrono::seconds(2));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto w = s_->Watch(WatchOptions{K(""), true, 0, false});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  MustPut(K("node/n1"), "load", g->id);
  MustPut(K("node/n2"), "load", g->id);
  MustPut(K("plain"), "stays");
  EXPECT_EQ(MustGet(K("node/n1"))->lease, g->id);

  EXPECT_TRUE(Eventually([&] { return !MustGet(K("node/n1")); }, ms(10000)))
      << "lease-attached key survived its TTL";
  EXPECT_FALSE(MustGet(K("node/n2")));
  EXPECT_TRUE(MustGet(K("plain")));
  EXPECT_EQ(s_->LeaseTimeToLive(g->id).status().code(), Code::kNotFound);
  EXPECT_EQ(s_->Put(K("late"), "x", PutOptions{g->id}).status().code(), Code::kNotFound);

  auto events = Collect(**w, 5);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[3].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[4].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[3].kv.mod_revision, events[4].kv.mod_revision)
      << "a lease's keys go in one revision";
}

TEST_P(StateStoreConformance, RevokeDeletesKeysAndEndsKeepAlive) {
  auto g = s_->GrantLease(std::chrono::seconds(6));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  MustPut(K("leader"), "me", g->id);
  std::atomic<int> calls{0};
  std::atomic<Code> seen{Code::kOk};
  auto ka = s_->KeepAlive(g->id, [&](const Status& s) {
    seen = s.code();
    ++calls;
  });
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  EXPECT_TRUE((*ka)->status().ok());
  EXPECT_EQ((*ka)->lease(), g->id);

  ASSERT_TRUE(s_->RevokeLease(g->id).ok());
  EXPECT_FALSE(MustGet(K("leader")));
  Status lost;
  for (int i = 0; i < 60 && lost.ok(); ++i) {
    lost = (*ka)->WaitLost(ms(250));
    if (lost.ok()) h_.let_time_pass(ms(250));
  }
  EXPECT_EQ(lost.code(), Code::kNotFound) << lost.ToString();
  for (int i = 0; i < 40 && calls.load() == 0; ++i) std::this_thread::sleep_for(ms(50));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(seen.load(), Code::kNotFound);
  EXPECT_EQ(s_->RevokeLease(g->id).code(), Code::kNotFound);
}

TEST_P(StateStoreConformance, KeepAliveKeepsKeyBeyondTtl) {
  auto g = s_->GrantLease(std::chrono::seconds(2));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  MustPut(K("node/n1"), "load", g->id);
  auto ka = s_->KeepAlive(g->id);
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  // Three TTLs.
  for (int i = 0; i < 4 * 3 * static_cast<int>(g->ttl.count()); ++i) h_.let_time_pass(ms(250));
  EXPECT_TRUE(MustGet(K("node/n1"))) << "kept-alive lease expired";
  EXPECT_TRUE((*ka)->status().ok()) << (*ka)->status().ToString();
  auto left = s_->LeaseTimeToLive(g->id);
  ASSERT_TRUE(left.ok()) << left.status().ToString();
  EXPECT_GT(left->count(), 0);

  // Stopping the keep-alive lets the lease expire.
  ka->reset();
  EXPECT_TRUE(Eventually([&] { return !MustGet(K("node/n1")); }, ms(10000)));
}

}  // namespace kmosix::testing

// At global scope, once per binary.
#define KMX_INSTANTIATE_STATE_STORE_CONFORMANCE(prefix, ...)                              \
  namespace kmosix::testing {                                                             \
  INSTANTIATE_TEST_SUITE_P(prefix, StateStoreConformance, ::testing::Values(__VA_ARGS__), \
                           StateStoreConformanceName);                                    \
  }                                                                                       \
  static_assert(true, "")
