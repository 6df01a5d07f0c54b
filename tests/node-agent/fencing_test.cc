// Self-fencing of the agent in cluster mode (issue 13, node loss): a node
// whose lease is not confirmed for --fence-after freezes every managed
// workload before the controller may restart it elsewhere, keeps it frozen
// while the lease is out, and once the lease is confirmed again thaws the
// ones the cluster still gives it and deletes the others. One node (agent and
// link over a fake runtime) on the in-memory StateStore behind a store the
// test can cut the node off from; a fake clock; the link's steps
// (PublishOnce, ProbeLeaseOnce, FenceOnce, Reconcile) driven one by one.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>

#include "agent.h"
#include "cluster_link.h"
#include "fake_load_sampler.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_state_store.h"
#include "fakes/fake_transport.h"
#include "gated_state_store.h"
#include "kmosix/stop_and_copy.h"
#include "metrics.h"
#include "rest_codec.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using api::WorkloadPhase;
using testing::FakeClock;
using testing::FakeLoadSampler;
using testing::FakeRuntime;
using testing::FakeStateStore;
using testing::FakeTransport;
using testing::GatedStateStore;
using namespace std::chrono_literals;

constexpr char kImage[] = "kmosix.local/demo:latest";

// The node's view of etcd. cut_all: nothing answers (a partition from etcd);
// cut_lease: only the lease calls fail (GrantLease, LeaseTimeToLive,
// KeepAlive, writes under a lease), reads and transactions still work (a
// keep-alive that fails while the rest of etcd answers).
class CutOffStore : public GatedStateStore {
 public:
  explicit CutOffStore(StateStore& inner) : GatedStateStore(inner) {}
  std::atomic<bool> cut_all{false};
  std::atomic<bool> cut_lease{false};

  StatusOr<GetResult> Get(const std::string& key, int64_t revision = 0) override {
    if (cut_all) return Cut();
    return GatedStateStore::Get(key, revision);
  }
  StatusOr<ListResult> List(const std::string& prefix, const ListOptions& options = {}) override {
    if (cut_all) return Cut();
    return GatedStateStore::List(prefix, options);
  }
  StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                        const PutOptions& options = {}) override {
    if (cut_all || (cut_lease && options.lease != 0)) return Cut();
    return GatedStateStore::Put(key, value, options);
  }
  StatusOr<TxnResult> Commit(const Txn& txn) override {
    if (cut_all) return Cut();
    return GatedStateStore::Commit(txn);
  }
  StatusOr<LeaseGrant> GrantLease(std::chrono::seconds ttl) override {
    if (cut_all || cut_lease) return Cut();
    return GatedStateStore::GrantLease(ttl);
  }
  StatusOr<std::chrono::seconds> LeaseTimeToLive(int64_t id) override {
    if (cut_all || cut_lease) return Cut();
    return GatedStateStore::LeaseTimeToLive(id);
  }
  StatusOr<std::unique_ptr<LeaseKeepAlive>> KeepAlive(int64_t id,
                                                      LeaseLostCallback on_lost = {}) override {
    if (cut_all || cut_lease) return Cut();
    return GatedStateStore::KeepAlive(id, std::move(on_lost));
  }

 private:
  static Status Cut() { return RetryError("etcd unreachable (cut off by the test)"); }
};

class FencingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-fencing-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    runtime_ = std::make_unique<FakeRuntime>("node1", (root_ / "layers").string());
    runtime_->AddImage(kImage);
    engine_ = std::make_unique<StopAndCopyEngine>(*runtime_, clock_);
    AgentOptions opts;
    opts.node = "node1";
    opts.advertise_url = "http://node1:7700";
    opts.state_dir = root_ / "state";
    opts.scratch_dir = root_ / "scratch";
    agent_ =
        std::make_unique<Agent>(opts, *runtime_, *engine_, transport_, clock_, random_, nullptr);
    ClusterLinkOptions lo;
    lo.node = "node1";
    lo.url = opts.advertise_url;
    lo.lease_ttl = 5s;
    lo.fence_after = fence_after_;
    link_ = std::make_unique<ClusterLink>(lo, *agent_, cut_, sampler_, clock_, random_);
    agent_->SetClusterHooks(link_->Hooks());
    ASSERT_TRUE(agent_->Start().ok());
    // The lease is granted (a confirmation) and "work" runs here at epoch 3.
    ASSERT_TRUE(link_->PublishOnce().ok());
    ASSERT_NE(link_->Lease(), 0);
    Put(Workload("node1", WorkloadPhase::kScheduled, 3));
    ASSERT_TRUE(link_->Reconcile("w/work").ok());
    ASSERT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
    ASSERT_EQ(runtime_->State("work"), TaskState::kRunning);
    for (int i = 0; i < 7; ++i) runtime_->Tick("work");  // progress a fresh start would lack
  }
  void TearDown() override {
    link_.reset();
    agent_.reset();
    fs::remove_all(root_);
  }

  api::Workload Workload(const std::string& node, WorkloadPhase phase, int64_t epoch,
                         const std::string& name = "work") {
    api::Workload w;
    w.spec.name = name;
    w.spec.image = kImage;
    w.spec.args = {"/bin/tick"};
    w.status.node = node;
    w.status.phase = phase;
    w.status.epoch = epoch;
    w.status.created_ms = 1234;
    return w;
  }
  void Put(const api::Workload& w) {
    ASSERT_TRUE(store_.Put(keys_.Workload(w.spec.name), cluster::WorkloadToJson(w).dump()).ok());
  }
  api::Workload GetWorkload(const std::string& name = "work") {
    auto got = store_.Get(keys_.Workload(name));
    EXPECT_TRUE(got.ok() && got->kv.has_value());
    if (!got.ok() || !got->kv) return {};
    auto w = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    return w.ok() ? *w : api::Workload{};
  }
  std::string LocalState(const std::string& name = "work") {
    auto l = agent_->Local(name, /*inspect=*/false);
    return l ? l->state : "(none)";
  }
  // One round of the link's background work at the current time.
  void Round() {
    (void)link_->ProbeLeaseOnce();
    link_->FenceOnce();
  }
  // Cuts the node off, then lets `d` pass with a round every 100 ms.
  void Pass(Clock::Duration d) {
    for (Clock::Duration t{}; t < d; t += 100ms) {
      clock_.Advance(100ms);
      Round();
    }
  }
  // Fenced: cut off (all of etcd) for 4 s after the last confirmation.
  void FenceNode() {
    cut_.cut_all = true;
    Pass(4s);
    ASSERT_TRUE(link_->Fenced());
    ASSERT_EQ(runtime_->State("work"), TaskState::kPaused);
  }
  // The node reaches etcd again and its lease is confirmed.
  void Renew() {
    cut_.cut_all = false;
    cut_.cut_lease = false;
    clock_.Advance(100ms);
    ASSERT_TRUE(link_->ProbeLeaseOnce().ok());
    link_->FenceOnce();
    ASSERT_FALSE(link_->Fenced());
  }

  Clock::Duration fence_after_ = 4s;
  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  FakeStateStore store_{clock_};
  CutOffStore cut_{store_};
  FakeTransport transport_{nullptr};
  FakeLoadSampler sampler_;
  std::unique_ptr<FakeRuntime> runtime_;
  std::unique_ptr<StopAndCopyEngine> engine_;
  std::unique_ptr<Agent> agent_;
  std::unique_ptr<ClusterLink> link_;
  cluster::KeyLayout keys_;
};

TEST_F(FencingTest, FrozenAtFenceAfterNotBefore) {
  cut_.cut_all = true;
  Pass(3900ms);  // 3.9 s since the last confirmation (the lease grant)
  EXPECT_FALSE(link_->Fenced());
  EXPECT_EQ(runtime_->State("work"), TaskState::kRunning);
  EXPECT_EQ(LocalState(), "running");

  Pass(100ms);  // 4 s: --fence-after
  EXPECT_TRUE(link_->Fenced());
  EXPECT_EQ(runtime_->State("work"), TaskState::kPaused);
  EXPECT_EQ(LocalState(), "fenced");
  auto local = agent_->Local("work", /*inspect=*/false);
  ASSERT_TRUE(local.has_value());
  EXPECT_NE(local->fence_reason.find("lease was not renewed"), std::string::npos)
      << local->fence_reason;
  // Its REST face says so, and that the task is paused.
  auto view = agent_->GetWorkload("work");
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_EQ(view->state, "fenced");
  EXPECT_EQ(view->task.value_or(""), "paused");
  // Nothing of it moves while fenced.
  const int64_t counter = runtime_->Counter("work");
  runtime_->Tick("work");
  EXPECT_EQ(runtime_->Counter("work"), counter);
}

TEST_F(FencingTest, OnlyALeaseRenewalCountsNotOtherAnswers) {
  // etcd answers reads and transactions, but the lease is not renewed: the
  // fence comes all the same, on time.
  cut_.cut_lease = true;
  Pass(3900ms);
  EXPECT_FALSE(link_->Fenced());
  Pass(100ms);
  EXPECT_TRUE(link_->Fenced());
  EXPECT_EQ(runtime_->State("work"), TaskState::kPaused);
}

TEST_F(FencingTest, ConfirmationsPostponeTheFence) {
  // A probe answered at 3 s counts from then: no fence at 4 s, one at 7 s.
  Pass(3s);
  cut_.cut_all = true;
  Pass(3900ms);
  EXPECT_FALSE(link_->Fenced());
  Pass(100ms);
  EXPECT_TRUE(link_->Fenced());
}

TEST_F(FencingTest, NeverThawedNorRestartedWhileTheLeaseIsOut) {
  cut_.cut_lease = true;  // reads work: the record says this node still owns it
  Pass(4s);
  ASSERT_TRUE(link_->Fenced());
  ASSERT_EQ(runtime_->State("work"), TaskState::kPaused);
  for (int i = 0; i < 30; ++i) {
    clock_.Advance(1s);
    Round();
    (void)link_->Reconcile("w/work");
    agent_->Tick();
    EXPECT_EQ(runtime_->State("work"), TaskState::kPaused) << "round " << i;
    EXPECT_EQ(LocalState(), "fenced") << "round " << i;
  }
  // Its task dies while fenced: the agent's dead-task loop leaves it alone.
  const int starts = runtime_->Calls("StartTask");
  runtime_->EndTask("work", 137);
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(2s);
    agent_->Tick();
    (void)link_->Reconcile("w/work");
  }
  EXPECT_EQ(runtime_->Calls("StartTask"), starts);
  EXPECT_EQ(LocalState(), "fenced");
  // Nothing new starts here either.
  Put(Workload("node1", WorkloadPhase::kScheduled, 7, "other"));
  Status s = link_->Reconcile("w/other");
  EXPECT_EQ(s.code(), Code::kRetry) << s.ToString();
  EXPECT_FALSE(runtime_->Has("other"));
  EXPECT_EQ(GetWorkload("other").status.phase, WorkloadPhase::kScheduled);
  // Nor does any migration order run from here.
  EXPECT_EQ(link_->Reconcile("m/some-order").code(), Code::kRetry);
}

TEST_F(FencingTest, ThawedWhenStillOwnedAfterRenewal) {
  FenceNode();
  Renew();
  EXPECT_EQ(runtime_->State("work"), TaskState::kPaused);  // the record decides, not the probe
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  EXPECT_EQ(runtime_->State("work"), TaskState::kRunning);
  EXPECT_EQ(LocalState(), "running");
  EXPECT_EQ(GetWorkload().status.node, "node1");
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
}

// The agent's REST view and /metrics show a fenced workload and why, until
// the record thaws it.
TEST_F(FencingTest, TheViewAndTheGaugeShowAFencedWorkloadAndWhy) {
  AgentMetrics metrics("node1");
  auto gauge_line = [&] {
    metrics.SetFencedWorkloads(static_cast<double>(agent_->FencedCount()));
    const std::string text = metrics.Render();
    const size_t at = text.find("\nkmosix_agent_fenced_workloads{");
    return at == std::string::npos ? std::string("(absent)")
                                   : text.substr(at + 1, text.find('\n', at + 1) - at - 1);
  };
  EXPECT_EQ(gauge_line(), "kmosix_agent_fenced_workloads{node=\"node1\"} 0");
  const int64_t before_ms = clock_.WallMillis();
  FenceNode();
  auto v = agent_->GetWorkload("work");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->state, "fenced");
  EXPECT_NE(v->fence_reason.find("lease"), std::string::npos) << v->fence_reason;
  EXPECT_GE(v->fenced_ms, before_ms);
  nlohmann::json j = AgentWorkloadViewToJson(*v);
  EXPECT_EQ(j["state"], "fenced");
  EXPECT_EQ(j["fenceReason"], v->fence_reason);
  EXPECT_EQ(j["fencedMs"], v->fenced_ms);
  EXPECT_EQ(gauge_line(), "kmosix_agent_fenced_workloads{node=\"node1\"} 1");
  // Still this node's: thawed, and neither shows the fence any more.
  Renew();
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  v = agent_->GetWorkload("work");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->state, "running");
  EXPECT_EQ(v->fence_reason, "");
  EXPECT_FALSE(AgentWorkloadViewToJson(*v).contains("fenceReason"));
  EXPECT_EQ(gauge_line(), "kmosix_agent_fenced_workloads{node=\"node1\"} 0");
}

TEST_F(FencingTest, ANewLeaseEndsTheFenceToo) {
  FenceNode();
  // The old lease expired meanwhile; the link is granted a new one.
  ASSERT_TRUE(store_.RevokeLease(link_->Lease()).ok());
  cut_.cut_all = false;
  clock_.Advance(100ms);
  link_->FenceOnce();
  EXPECT_TRUE(link_->Fenced());  // a lost lease is no confirmation
  ASSERT_TRUE(link_->PublishOnce().ok());
  link_->FenceOnce();
  EXPECT_FALSE(link_->Fenced());
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  EXPECT_EQ(runtime_->State("work"), TaskState::kRunning);
}

TEST_F(FencingTest, LostButStillOursIsTakenBackBeforeTheThaw) {
  FenceNode();
  // The controller saw the node go NotReady and marked the workload Lost.
  api::Workload lost = GetWorkload();
  lost.status.phase = WorkloadPhase::kLost;
  Put(lost);
  Renew();
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  EXPECT_EQ(runtime_->State("work"), TaskState::kRunning);
  api::Workload now = GetWorkload();
  EXPECT_EQ(now.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(now.status.node, "node1");
  EXPECT_EQ(now.status.epoch, 3);
}

TEST_F(FencingTest, DeletedWhenOwnedElsewhere) {
  FenceNode();
  // Restarted elsewhere by the controller meanwhile (a new owner, a new epoch).
  Put(Workload("node2", WorkloadPhase::kRunning, 4));
  Renew();
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  EXPECT_FALSE(runtime_->Has("work"));
  EXPECT_EQ(LocalState(), "(none)");
  EXPECT_EQ(GetWorkload().status.node, "node2");  // never written by the fenced node
}

TEST_F(FencingTest, DeletedWhenRestartedHereUnderANewEpoch) {
  FenceNode();
  Put(Workload("node1", WorkloadPhase::kScheduled, 9));
  Renew();
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  // The old copy went; the new placement starts afresh (queued again).
  EXPECT_FALSE(agent_->Local("work", false).has_value());
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  auto local = agent_->Local("work", false);
  ASSERT_TRUE(local.has_value());
  EXPECT_EQ(local->epoch, 9);
  EXPECT_EQ(local->state, "running");
  EXPECT_EQ(runtime_->State("work"), TaskState::kRunning);
  EXPECT_EQ(runtime_->Counter("work"), 0);  // a fresh start, not the old copy thawed
}

TEST_F(FencingTest, DeletedWhenTheRecordIsGoneEvenWhileFenced) {
  cut_.cut_lease = true;
  Pass(4s);
  ASSERT_TRUE(link_->Fenced());
  // (the cluster knows this node: the record is gone, not under another prefix)
  ASSERT_TRUE(store_.Put(keys_.Member("node1"), "{}").ok());
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  ASSERT_TRUE(link_->Reconcile("w/work").ok());
  EXPECT_FALSE(runtime_->Has("work"));
}

class NoFencingTest : public FencingTest {
 protected:
  NoFencingTest() { fence_after_ = Clock::Duration::zero(); }
};

TEST_F(NoFencingTest, ZeroFenceAfterNeverFences) {
  cut_.cut_all = true;
  Pass(20s);
  EXPECT_FALSE(link_->Fenced());
  EXPECT_EQ(runtime_->State("work"), TaskState::kRunning);
}

}  // namespace
}  // namespace kmosix::agent
