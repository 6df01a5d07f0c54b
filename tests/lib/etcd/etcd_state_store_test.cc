// EtcdStateStore against a real etcd: the StateStore conformance suite, plus
// the restart case (etcd stopped: calls return kRetry; started again on the
// same data dir and ports: calls succeed, a broken watch says where to resume,
// a keep-alive survives).
//
// Each test process starts its own etcd on free loopback ports with a private
// data dir under $TMPDIR, and stops it at the end. Needs the `etcd` binary
// (Debian package etcd-server) on PATH or in $KMX_ETCD_BIN; the cases skip
// loudly without it.
#include "etcd/etcd_state_store.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "lib/kmosix/state_store_conformance.h"
#include "support/private_etcd.h"

namespace kmosix::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::string SkipReason() { return EtcdSkipReason(); }

EtcdConfig TestConfig(const std::string& endpoint) { return TestEtcdConfig(endpoint); }

// One etcd per test process, shared by the conformance cases; stopped by the
// test environment's TearDown.
std::shared_ptr<PrivateEtcd>& SharedEtcd() {
  static std::shared_ptr<PrivateEtcd> etcd;
  return etcd;
}

class EtcdEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { SharedEtcd().reset(); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new EtcdEnvironment);

}  // namespace

StateStoreHarness MakeEtcdHarness() {
  auto& etcd = SharedEtcd();
  if (!etcd) {
    etcd = std::make_shared<PrivateEtcd>();
    if (!etcd->Start()) {
      ADD_FAILURE() << "etcd did not start; log in " << etcd->dir() << "/etcd.log";
      return {};
    }
  }
  StateStoreHarness h;
  h.keep_alive = etcd;
  h.store = std::make_unique<EtcdStateStore>(TestConfig(etcd->endpoint()));
  h.let_time_pass = [](milliseconds d) { std::this_thread::sleep_for(d); };
  return h;
}

namespace {

TEST(EtcdStateStoreTest, UnreachableEndpointIsRetry) {
  EtcdConfig cfg = TestConfig("127.0.0.1:" + std::to_string(FreePort()));
  EtcdStateStore store(cfg);
  EXPECT_EQ(store.Get("/k").status().code(), Code::kRetry);
  EXPECT_EQ(store.Put("/k", "v").status().code(), Code::kRetry);
  EXPECT_EQ(store.Watch(WatchOptions{"/k", false, 0, false}).status().code(), Code::kRetry);
  EXPECT_EQ(store.GrantLease(seconds(5)).status().code(), Code::kRetry);
}

TEST(EtcdStateStoreTest, SecondEndpointIsUsedWhenTheFirstIsDown) {
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdConfig cfg = TestConfig("127.0.0.1:" + std::to_string(FreePort()));
  cfg.endpoints.push_back(etcd.endpoint());
  EtcdStateStore store(cfg);
  auto first = store.Put("/k", "v");
  EXPECT_EQ(first.status().code(), Code::kRetry);
  auto second = store.Put("/k", "v");
  EXPECT_TRUE(second.ok()) << second.status().ToString();
}

TEST(EtcdStateStoreTest, RestartOnSameDataDir) {
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdStateStore store(TestConfig(etcd.endpoint()));

  auto r1 = store.Put("/r/a", "1");
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  auto w = store.Watch(WatchOptions{"/r/", true, 0, false});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto lease = store.GrantLease(seconds(10));
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  ASSERT_TRUE(store.Put("/r/node", "alive", PutOptions{lease->id}).ok());
  auto ka = store.KeepAlive(lease->id);
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  auto first = (*w)->Next(milliseconds(3000));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_EQ(first->size(), 1u);
  const int64_t resume = (*w)->next_revision();

  etcd.Stop();
  EXPECT_EQ(store.Get("/r/a").status().code(), Code::kRetry);
  EXPECT_EQ(store.Put("/r/a", "2").status().code(), Code::kRetry);
  EXPECT_EQ(
      store.Commit(Txn{{Compare::Absent("/r/x")}, {TxnOp::Put("/r/x", "")}, {}}).status().code(),
      Code::kRetry);
  StatusOr<std::vector<WatchEvent>> broken = std::vector<WatchEvent>{};
  for (int i = 0; i < 100 && broken.ok(); ++i) broken = (*w)->Next(milliseconds(100));
  ASSERT_FALSE(broken.ok()) << "the watch did not notice etcd going away";
  EXPECT_EQ(broken.status().code(), Code::kRetry) << broken.status().ToString();
  EXPECT_EQ((*w)->next_revision(), resume);

  ASSERT_TRUE(etcd.Start()) << "restart failed; log: " << etcd.dir() << "/etcd.log";
  StatusOr<GetResult> got = RetryError("not yet");
  for (int i = 0; i < 100 && !got.ok(); ++i) {
    got = store.Get("/r/a");
    if (!got.ok()) std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(got.ok()) << "still failing after restart: " << got.status().ToString();
  ASSERT_TRUE(got->kv);
  EXPECT_EQ(got->kv->value, "1");

  // Resume the watch where it broke: nothing is lost.
  auto w2 = store.Watch(WatchOptions{"/r/", true, resume, false});
  ASSERT_TRUE(w2.ok()) << w2.status().ToString();
  auto r3 = store.Put("/r/b", "after");
  ASSERT_TRUE(r3.ok()) << r3.status().ToString();
  std::vector<WatchEvent> events;
  for (int i = 0; i < 30 && events.empty(); ++i) {
    auto b = (*w2)->Next(milliseconds(100));
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    events = *b;
  }
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kv.key, "/r/b");
  EXPECT_EQ(events[0].kv.mod_revision, *r3);

  // The keep-alive reconnected by itself; the lease and its key survived.
  std::this_thread::sleep_for(seconds(2));
  EXPECT_TRUE((*ka)->status().ok()) << (*ka)->status().ToString();
  auto node = store.Get("/r/node");
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  EXPECT_TRUE(node->kv) << "lease-attached key vanished across the restart";
}

TEST(EtcdStateStoreTest, KeepAliveReportsLossWhenEtcdStaysDown) {
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdStateStore store(TestConfig(etcd.endpoint()));
  auto lease = store.GrantLease(seconds(3));
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  auto ka = store.KeepAlive(lease->id);
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  etcd.Stop();
  Status lost = (*ka)->WaitLost(milliseconds(15000));
  EXPECT_EQ(lost.code(), Code::kRetry) << lost.ToString();
}

}  // namespace
}  // namespace kmosix::testing

KMX_INSTANTIATE_STATE_STORE_CONFORMANCE(Etcd, StateStoreConformanceParam{"etcd", MakeEtcdHarness,
                                                                         SkipReason});
