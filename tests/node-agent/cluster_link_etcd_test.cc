// ClusterLink against a real etcd (private, on free loopback ports) with the
// fake runtime: the node key lives under the agent's lease and vanishes a TTL
// after the link stops; a workload the cluster schedules here is started and
// reported Running through etcd.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "agent.h"
#include "cluster_link.h"
#include "etcd/etcd_state_store.h"
#include "fake_load_sampler.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "kmosix/stop_and_copy.h"
#include "support/private_etcd.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using testing::EtcdSkipReason;
using testing::FakeLoadSampler;
using testing::FakeRuntime;
using testing::FakeTransport;
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
  auto load = cluster::ParseRecord<cluster::NodeLoad>(kv->value, cluster::NodeLoadFromJson);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  EXPECT_EQ(load->url, "http://127.0.0.1:7700");

  // The cluster schedules a workload here: it runs, and etcd says so.
  cluster::WorkloadRecord w;
  w.spec.name = "work";
  w.spec.image = kImage;
  w.status.node = "node1";
  w.status.phase = cluster::WorkloadPhase::kScheduled;
  w.status.epoch = 1;
  ASSERT_TRUE(store.Put(lo.keys.Workload("work"), cluster::WorkloadRecordToJson(w).dump()).ok());
  ASSERT_TRUE(Eventually([&] {
    auto got = store.Get(lo.keys.Workload("work"));
    if (!got.ok() || !got->kv) return false;
    auto rec = cluster::ParseRecord<cluster::WorkloadRecord>(got->kv->value,
                                                             cluster::WorkloadRecordFromJson);
    return rec.ok() && rec->status.phase == cluster::WorkloadPhase::kRunning;
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

}  // namespace
}  // namespace kmosix::agent
