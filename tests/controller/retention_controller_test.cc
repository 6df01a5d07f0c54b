// The leading controller keeps etcd bounded (controller/retention.h): with
// its default options it removes finished migration records beyond the
// newest 20 of a workload and those finished over 7 days ago, never a record
// in flight and never the newest finished one of an existing workload; and it
// compacts the store's history periodically.
// Over the fake store, controllers on the system clock (controller_fixture.h).
#include <gtest/gtest.h>

#include <set>

#include "controller_fixture.h"

namespace kmosix::controller {
namespace {

using api::MigrationPhase;
using std::chrono::hours;

constexpr int64_t kHourMs = 3600 * 1000;
constexpr int64_t kDayMs = 24 * kHourMs;

class RetentionControllerTest : public ControllerTest {
 protected:
  // No balancer: it would order migrations of its own.
  ControllerOptions Quiet() {
    ControllerOptions o = Options("c1");
    o.balance = false;
    return o;
  }
  void PutWorkload(const std::string& name, const std::string& in_flight = "") {
    WorkloadRecord w;
    w.spec.name = name;
    w.spec.image = "demo";
    w.status.phase = in_flight.empty() ? WorkloadPhase::kRunning : WorkloadPhase::kMigrating;
    w.status.node = "n1";
    w.status.epoch = 1;
    w.status.migration = in_flight;
    ASSERT_TRUE(store_.Put(keys_.Workload(name), cluster::WorkloadToJson(w).dump()).ok());
  }
  void PutMigration(const std::string& id, const std::string& workload, MigrationPhase phase,
                    int64_t finished_ms) {
    MigrationRecord m;
    m.id = id;
    m.workload = workload;
    m.source = "n1";
    m.target = "n2";
    m.phase = phase;
    m.requested_by = "api";
    m.epoch = 1;
    m.created_ms = finished_ms - 1000;
    m.updated_ms = finished_ms;
    m.finished_ms = api::IsFinal(phase) ? finished_ms : 0;
    ASSERT_TRUE(store_.Put(keys_.Migration(id), cluster::MigrationToJson(m).dump()).ok());
  }
  std::set<std::string> Ids() {
    std::set<std::string> out;
    for (const auto& m : Migrations()) out.insert(m.id);
    return out;
  }
  static std::string Id(const std::string& prefix, int i) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%s-%03d", prefix.c_str(), i);
    return buf;
  }
};

TEST_F(RetentionControllerTest, FinishedRecordsOlderThanTheTtlGoButTheNewestOfAWorkloadStays) {
  PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  const int64_t now = clock_.WallMillis();
  // w1: 30 finished 8 to 9 days ago, and one in flight (older still).
  ASSERT_NO_FATAL_FAILURE(PutWorkload("w1", "m-flight"));
  for (int i = 0; i < 30; ++i)
    ASSERT_NO_FATAL_FAILURE(PutMigration(
        Id("m-w1", i), "w1", i % 3 ? MigrationPhase::kSucceeded : MigrationPhase::kFailed,
        now - 9 * kDayMs + i * kHourMs));
  ASSERT_NO_FATAL_FAILURE(
      PutMigration("m-flight", "w1", MigrationPhase::kTransferring, now - 10 * kDayMs));
  // w2: its only record, old: it stays (what kmosixctl shows of w2).
  ASSERT_NO_FATAL_FAILURE(PutWorkload("w2"));
  ASSERT_NO_FATAL_FAILURE(
      PutMigration("m-w2", "w2", MigrationPhase::kSucceeded, now - 30 * kDayMs));
  // A deleted workload's old records all go; its recent one stays.
  ASSERT_NO_FATAL_FAILURE(
      PutMigration("m-gone-old", "gone", MigrationPhase::kFailed, now - 8 * kDayMs));
  ASSERT_NO_FATAL_FAILURE(
      PutMigration("m-gone-new", "gone", MigrationPhase::kSucceeded, now - kDayMs));

  Controller& c = StartController(Quiet());
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  std::set<std::string> want = {Id("m-w1", 29), "m-flight", "m-w2", "m-gone-new"};
  EXPECT_TRUE(Eventually([&] { return Ids() == want; })) << ::testing::PrintToString(Ids());
}

TEST_F(RetentionControllerTest, AtMostTwentyFinishedRecordsPerWorkloadOldestGoFirst) {
  PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  const int64_t now = clock_.WallMillis();
  ASSERT_NO_FATAL_FAILURE(PutWorkload("w1"));
  ASSERT_NO_FATAL_FAILURE(PutWorkload("w2"));
  // Finished 1 to 25 hours ago (within the TTL); id order is finish order.
  for (int i = 0; i < 25; ++i)
    ASSERT_NO_FATAL_FAILURE(
        PutMigration(Id("m-w1", i), "w1", MigrationPhase::kRolledBack, now - (26 - i) * kHourMs));
  for (int i = 0; i < 5; ++i)
    ASSERT_NO_FATAL_FAILURE(
        PutMigration(Id("m-w2", i), "w2", MigrationPhase::kSucceeded, now - (26 - i) * kHourMs));

  Controller& c = StartController(Quiet());
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  std::set<std::string> want;
  for (int i = 5; i < 25; ++i) want.insert(Id("m-w1", i));
  for (int i = 0; i < 5; ++i) want.insert(Id("m-w2", i));
  EXPECT_TRUE(Eventually([&] { return Ids() == want; })) << ::testing::PrintToString(Ids());
}

TEST_F(RetentionControllerTest, TheLeaderCompactsTheStoresHistory) {
  PublishNode("n1", 0.1);
  auto first = store_.Put("/kmosix/scratch", "v1");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(store_.Put("/kmosix/scratch", "v2").ok());
  ASSERT_TRUE(store_.Get("/kmosix/scratch", *first).ok());  // history is there
  ControllerOptions o = Quiet();
  o.compaction.interval = std::chrono::milliseconds(100);
  o.compaction.retain = std::chrono::milliseconds(300);
  o.compaction.min_revisions = 1;
  Controller& c = StartController(o);
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  EXPECT_TRUE(Eventually([&] {
    return store_.Get("/kmosix/scratch", *first).status().code() == Code::kConflict;
  })) << "the revision of v1 was never compacted";
  // The controller carries on (its caches relist if they must).
  ASSERT_NO_FATAL_FAILURE(PutWorkload("w9"));
  EXPECT_TRUE(Eventually([&] { return c.GetWorkload("w9").ok(); }));
}

}  // namespace
}  // namespace kmosix::controller
