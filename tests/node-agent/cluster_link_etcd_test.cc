// ClusterLink against a real etcd (private, on free loopback ports) with the
// fake runtime: the node key lives under the agent's lease and vanishes a TTL
// after the link stops; a workload the cluster schedules here is started and
// reported Running through etcd; Transfer's ownership CAS also compares the
// migration record, so a cancel written in between is refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "agent.h"
#include "cluster_link.h"
#include "etcd/etcd_state_store.h"
#include "fake_load_sampler.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "gated_state_store.h"
#include "kmosix/stop_and_copy.h"
#include "support/private_etcd.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using testing::EtcdSkipReason;
using testing::FakeLoadSampler;
using testing::FakeRuntime;
using testing::FakeTransport;
using testing::GatedStateStore;
using testing::PrivateEtcd;
using testing::TestEtcdConfig;

constexpr char kImage[] = "kmosix.local/demo:latest";

// Polls `done` until it holds or `limit` of real time passed (a guard against
// hangs, not a speed assertion).
template <typename F>
bool Eventually(F done, std::chrono::seconds limit = std::chrono::seconds(30)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

TEST(ClusterLinkEtcdTest, NodeKeyLivesUnderTheLeaseAndWorkloadsStart) {
  if (auto why = EtcdSkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdStateStore store(TestEtcdConfig(etcd.endpoint()));

  const fs::path root = fs::temp_directory_path() / ("kmx-link-etcd-" + std::to_string(::getpid()));
  fs::remove_all(root);
  SystemClock clock;
  SystemRandom random;
  FakeRuntime runtime("node1", (root / "layers").string());
  runtime.AddImage(kImage);
  StopAndCopyEngine engine(runtime, clock);
  FakeTransport transport(nullptr);
  AgentOptions opts;
  opts.node = "node1";
  opts.advertise_url = "http://127.0.0.1:7700";
  opts.state_dir = root / "state";
  opts.scratch_dir = root / "scratch";
  Agent agent(opts, runtime, engine, transport, clock, random, nullptr);
  FakeLoadSampler sampler;
  ClusterLinkOptions lo;
  lo.node = "node1";
  lo.url = opts.advertise_url;
  lo.keys.prefix = "/kmx-link-test/";
  lo.lease_ttl = std::chrono::seconds(2);
  lo.sample_interval = std::chrono::milliseconds(100);
  auto link = std::make_unique<ClusterLink>(lo, agent, store, sampler, clock, random);
  agent.SetClusterHooks(link->Hooks());
  ASSERT_TRUE(agent.Start().ok());
  link->Start();

  const std::string node_key = lo.keys.Node("node1");
  std::optional<KeyValue> kv;
  ASSERT_TRUE(Eventually([&] {
    auto got = store.Get(node_key);
    if (got.ok()) kv = got->kv;
    return kv.has_value();
  }));
  ASSERT_NE(kv->lease, 0);
  EXPECT_EQ(kv->lease, link->Lease());
  auto ttl = store.LeaseTimeToLive(kv->lease);
  ASSERT_TRUE(ttl.ok()) << ttl.status().ToString();
  auto load = cluster::ParseRecord<api::NodeLoad>(kv->value, cluster::NodeLoadFromJson);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  EXPECT_EQ(load->url, "http://127.0.0.1:7700");

  // The cluster schedules a workload here: it runs, and etcd says so.
  api::Workload w;
  w.spec.name = "work";
  w.spec.image = kImage;
  w.status.node = "node1";
  w.status.phase = api::WorkloadPhase::kScheduled;
  w.status.epoch = 1;
  ASSERT_TRUE(store.Put(lo.keys.Workload("work"), cluster::WorkloadToJson(w).dump()).ok());
  ASSERT_TRUE(Eventually([&] {
    auto got = store.Get(lo.keys.Workload("work"));
    if (!got.ok() || !got->kv) return false;
    auto rec = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
    return rec.ok() && rec->status.phase == api::WorkloadPhase::kRunning;
  }));
  EXPECT_EQ(runtime.State("work"), TaskState::kRunning);

  // The link stops (agent shutdown): the key outlives it by about a TTL.
  const int64_t lease = kv->lease;
  link->Stop();
  ASSERT_TRUE(Eventually([&] {
    auto got = store.Get(node_key);
    return got.ok() && !got->kv.has_value();
  }));
  EXPECT_EQ(store.LeaseTimeToLive(lease).status().code(), Code::kNotFound);
  link.reset();
  fs::remove_all(root);
}

// A cancel written after Transfer read the records and before its CAS makes
// the real etcd transaction fail (it compares the migration record's
// mod_revision); the re-read refuses. A missing migration record compares as
// mod_revision 0 and does not stop a transfer.
TEST(ClusterLinkEtcdTest, TransferComparesTheMigrationRecord) {
  if (auto why = EtcdSkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdStateStore etcd_store(TestEtcdConfig(etcd.endpoint()));
  GatedStateStore store(etcd_store);

  const fs::path root =
      fs::temp_directory_path() / ("kmx-link-etcd-transfer-" + std::to_string(::getpid()));
  fs::remove_all(root);
  SystemClock clock;
  SystemRandom random;
  FakeRuntime runtime("node1", (root / "layers").string());
  StopAndCopyEngine engine(runtime, clock);
  FakeTransport transport(nullptr);
  AgentOptions opts;
  opts.node = "node1";
  opts.advertise_url = "http://127.0.0.1:7700";
  opts.state_dir = root / "state";
  opts.scratch_dir = root / "scratch";
  Agent agent(opts, runtime, engine, transport, clock, random, nullptr);
  FakeLoadSampler sampler;
  ClusterLinkOptions lo;
  lo.node = "node1";
  lo.url = opts.advertise_url;
  lo.keys.prefix = "/kmx-link-transfer-test/";
  ClusterLink link(lo, agent, store, sampler, clock, random);
  const cluster::KeyLayout& keys = lo.keys;

  auto put_workload = [&](const std::string& migration) {
    api::Workload w;
    w.spec.name = "work";
    w.spec.image = kImage;
    w.status.node = "node1";
    w.status.phase = api::WorkloadPhase::kMigrating;
    w.status.epoch = 1;
    w.status.migration = migration;
    ASSERT_TRUE(store.Put(keys.Workload("work"), cluster::WorkloadToJson(w).dump()).ok());
  };
  auto get_workload = [&] {
    auto got = store.Get(keys.Workload("work"));
    EXPECT_TRUE(got.ok() && got->kv);
    auto rec = cluster::ParseRecord<api::Workload>(
        got.ok() && got->kv ? got->kv->value : std::string(), cluster::WorkloadFromJson);
    EXPECT_TRUE(rec.ok());
    return rec.ok() ? *rec : api::Workload{};
  };
  api::Migration order;
  order.id = "m-1";
  order.workload = "work";
  order.source = "node1";
  order.target = "node2";
  order.phase = api::MigrationPhase::kRestoring;
  put_workload("m-1");
  ASSERT_TRUE(store.Put(keys.Migration("m-1"), cluster::MigrationToJson(order).dump()).ok());
  MigrationReport r;
  r.id = "m-1";
  r.workload = "work";
  r.source_node = "node1";
  r.target_node = "node2";
  r.target_pid = 77;

  int transfers = 0;
  store.before_commit = [&](const Txn& txn) {
    if (!GatedStateStore::Compares(txn, keys.Workload("work")) ||
        !GatedStateStore::Compares(txn, keys.Migration("m-1")) || ++transfers != 1) {
      return;
    }
    api::Migration cancelled = order;  // the controller's write
    cancelled.cancel_requested_ms = 5555;
    cancelled.cancelled_by = "api";
    EXPECT_TRUE(
        etcd_store.Put(keys.Migration("m-1"), cluster::MigrationToJson(cancelled).dump()).ok());
  };
  Status s = link.Transfer(r);
  EXPECT_EQ(s.code(), Code::kConflict) << s.ToString();
  EXPECT_NE(s.message().find("cancelled by api"), std::string::npos) << s.ToString();
  EXPECT_EQ(transfers, 1);  // etcd refused that CAS; the re-read refused the transfer
  EXPECT_EQ(get_workload().status.node, "node1");
  EXPECT_EQ(get_workload().status.epoch, 1);

  // Another migration with no record at all: the compare holds, it moves.
  store.before_commit = {};
  put_workload("m-2");
  r.id = "m-2";
  ASSERT_TRUE(link.Transfer(r).ok());
  EXPECT_EQ(get_workload().status.node, "node2");
  EXPECT_EQ(get_workload().status.epoch, 2);
  fs::remove_all(root);
}

}  // namespace
}  // namespace kmosix::agent
