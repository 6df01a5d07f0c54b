// The agent in cluster mode (ClusterLink) over the in-memory StateStore, with
// two real Agents on fake runtimes (node1, node2; the fake transport carries
// node1's migrations to node2) and a fake load sampler. Reconcilers are
// driven step by step (Reconcile, PublishOnce); one test runs the threads.
#include "cluster_link.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include "agent.h"
#include "fake_load_sampler.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_state_store.h"
#include "fakes/fake_transport.h"
#include "gated_state_store.h"
#include "kmosix/stop_and_copy.h"
#include "rest_face.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using MigrationRecord = api::Migration;
using api::WorkloadPhase;
using WorkloadRecord = api::Workload;
using testing::FakeClock;
using testing::FakeLoadSampler;
using testing::FakeRuntime;
using testing::FakeStateStore;
using testing::FakeTransport;
using testing::Gate;
using testing::GatedStateStore;

// Unmanaged workloads come in as REST bodies, as on a real agent.
AgentRestFace Rest(Agent& agent) { return AgentRestFace(agent); }

constexpr char kImage[] = "kmosix.local/demo:latest";

// One node: runtime, engine, agent and link.
struct Node {
  Node(const std::string& name, const fs::path& root, FakeClock& clock, Random& random,
       StateStore& store, Transport& transport, const std::string& layers)
      : runtime(name, layers), engine(runtime, clock) {
    runtime.AddImage(kImage);
    AgentOptions opts;
    opts.node = name;
    opts.advertise_url = "http://" + name + ":7700";
    opts.state_dir = root / name / "state";
    opts.scratch_dir = root / name / "scratch";
    opts.resolve_timeout = std::chrono::seconds(5);
    agent = std::make_unique<Agent>(opts, runtime, engine, transport, clock, random, nullptr);
    ClusterLinkOptions lo;
    lo.node = name;
    lo.url = opts.advertise_url;
    lo.speed = 1.5;
    lo.sample_interval = std::chrono::milliseconds(20);
    lo.not_ready_reason = [this] {
      std::lock_guard lock(unfit_mu);
      return unfit;
    };
    link = std::make_unique<ClusterLink>(lo, *agent, store, sampler, clock, random);
    agent->SetClusterHooks(link->Hooks());
  }
  // What the node's readiness check says (CriuReadiness in the agent).
  void SetUnfit(std::optional<std::string> why) {
    std::lock_guard lock(unfit_mu);
    unfit = std::move(why);
  }
  std::mutex unfit_mu;
  std::optional<std::string> unfit;
  FakeRuntime runtime;
  StopAndCopyEngine engine;
  FakeLoadSampler sampler;
  std::unique_ptr<Agent> agent;
  std::unique_ptr<ClusterLink> link;
};

class ClusterLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-link-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    const std::string layers = (root_ / "layers").string();
    node2_ = std::make_unique<Node>("node2", root_, clock_, random_, gated_, no_transport_, layers);
    to_node2_ = std::make_unique<FakeTransport>(&node2_->agent->Target());
    node1_ = std::make_unique<Node>("node1", root_, clock_, random_, gated_, *to_node2_, layers);
    ASSERT_TRUE(node1_->agent->Start().ok());
    ASSERT_TRUE(node2_->agent->Start().ok());
  }
  void TearDown() override {
    node1_.reset();
    node2_.reset();
    fs::remove_all(root_);
  }

  // ---- records ----
  WorkloadRecord Workload(const std::string& node, WorkloadPhase phase, int64_t epoch,
                          const std::string& migration = "") {
    WorkloadRecord w;
    w.spec.name = "work";
    w.spec.image = kImage;
    w.spec.args = {"/bin/tick"};
    w.status.node = node;
    w.status.phase = phase;
    w.status.epoch = epoch;
    w.status.migration = migration;
    w.status.created_ms = 1234;
    return w;
  }
  void Put(const WorkloadRecord& w) {
    ASSERT_TRUE(store_.Put(keys_.Workload(w.spec.name), cluster::WorkloadToJson(w).dump()).ok());
  }
  void Put(const MigrationRecord& m) {
    ASSERT_TRUE(store_.Put(keys_.Migration(m.id), cluster::MigrationToJson(m).dump()).ok());
  }
  void PutNode(const std::string& node, const std::string& url) {
    api::NodeLoad n;
    n.node = node;
    n.url = url;
    ASSERT_TRUE(store_.Put(keys_.Node(node), cluster::NodeLoadToJson(n).dump()).ok());
  }
  std::optional<KeyValue> Raw(const std::string& key) {
    auto got = store_.Get(key);
    EXPECT_TRUE(got.ok());
    return got.ok() ? got->kv : std::nullopt;
  }
  WorkloadRecord GetWorkload(const std::string& name = "work") {
    auto kv = Raw(keys_.Workload(name));
    EXPECT_TRUE(kv.has_value());
    if (!kv) return {};
    auto w = cluster::ParseRecord<WorkloadRecord>(kv->value, cluster::WorkloadFromJson);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    return w.ok() ? *w : WorkloadRecord{};
  }
  MigrationRecord GetMigration(const std::string& id) {
    auto kv = Raw(keys_.Migration(id));
    EXPECT_TRUE(kv.has_value());
    if (!kv) return {};
    auto m = cluster::ParseRecord<MigrationRecord>(kv->value, cluster::MigrationFromJson);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? *m : MigrationRecord{};
  }
  MigrationRecord Order(const std::string& id, const std::string& target = "node2") {
    MigrationRecord m;
    m.id = id;
    m.workload = "work";
    m.source = "node1";
    m.target = target;
    m.phase = api::MigrationPhase::kPending;
    m.reason = "test";
    m.requested_by = "api";
    m.epoch = 3;
    return m;
  }
  // "work" running on node1 as the cluster's, at epoch 3.
  void RunWorkOnNode1() {
    Put(Workload("node1", WorkloadPhase::kScheduled, 3));
    ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
    ASSERT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
    for (int i = 0; i < 7; ++i) node1_->runtime.Tick("work");
  }
  // What the controller's DELETE /v1/migrations/{id} writes (here without
  // its compares), straight into the store.
  void CancelInStore(const std::string& id) {
    MigrationRecord m = GetMigration(id);
    m.cancel_requested_ms = 5555;
    m.cancelled_by = "api";
    Put(m);
  }
  // The phase a transaction writes into migrations/<id> ("" if none).
  std::string PhaseWritten(const Txn& txn, const std::string& id) {
    std::string value = GatedStateStore::PutValue(txn, keys_.Migration(id));
    if (value.empty()) return "";
    auto m = cluster::ParseRecord<MigrationRecord>(value, cluster::MigrationFromJson);
    return m.ok() ? std::string(api::MigrationPhaseName(m->phase)) : "";
  }
  // Transfer's CAS: the workload record, guarded by the migration record.
  bool IsTransfer(const Txn& txn, const std::string& id) {
    return GatedStateStore::Compares(txn, keys_.Workload("work")) &&
           GatedStateStore::Compares(txn, keys_.Migration(id));
  }
  MigrationReport Report(const std::string& id) {
    MigrationReport r;
    r.id = id;
    r.workload = "work";
    r.source_node = "node1";
    r.target_node = "node2";
    r.target_pid = 4242;
    return r;
  }

  // A node's agent and link started again on its old state (the process was
  // killed; its runtime, engine and state dir stay), not yet Start()ed.
  struct Rebooted {
    std::unique_ptr<Agent> agent;
    std::unique_ptr<ClusterLink> link;  // destroyed first: it uses the agent
  };
  Rebooted Reboot(Node& node, const std::string& name, Transport& transport) {
    Rebooted r;
    r.agent = std::make_unique<Agent>(node.agent->Options(), node.runtime, node.engine, transport,
                                      clock_, random_, nullptr);
    ClusterLinkOptions lo;
    lo.node = name;
    lo.url = "http://" + name + ":7700";
    r.link = std::make_unique<ClusterLink>(lo, *r.agent, store_, node.sampler, clock_, random_);
    r.agent->SetClusterHooks(r.link->Hooks());
    return r;
  }

  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  FakeStateStore store_{clock_};
  GatedStateStore gated_{store_};  // what the links use
  FakeTransport no_transport_{nullptr};
  std::unique_ptr<FakeTransport> to_node2_;
  std::unique_ptr<Node> node2_;
  std::unique_ptr<Node> node1_;
  cluster::KeyLayout keys_;
};

// ---- publishing --------------------------------------------------------------

TEST_F(ClusterLinkTest, PublishesTheNodeLoadUnderALease) {
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  const int64_t lease = node1_->link->Lease();
  ASSERT_NE(lease, 0);
  auto kv = Raw(keys_.Node("node1"));
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->lease, lease);
  auto load = cluster::ParseRecord<api::NodeLoad>(kv->value, cluster::NodeLoadFromJson);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  EXPECT_EQ(load->node, "node1");
  EXPECT_EQ(load->url, "http://node1:7700");
  EXPECT_EQ(load->speed, 1.5);
  EXPECT_EQ(load->cpu_capacity, 4);
  EXPECT_EQ(load->cpu_used, 1.0);
  EXPECT_EQ(load->load_source, "host");

  // Nothing changed, no heartbeat due: not written again.
  const int64_t rev = kv->mod_revision;
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_EQ(Raw(keys_.Node("node1"))->mod_revision, rev);
  // A material change is written at once.
  node1_->sampler.SetCpu(3.0);
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  auto changed = Raw(keys_.Node("node1"));
  EXPECT_GT(changed->mod_revision, rev);
  // And the heartbeat writes it anyway.
  clock_.Advance(std::chrono::seconds(11));
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_GT(Raw(keys_.Node("node1"))->mod_revision, changed->mod_revision);
  EXPECT_EQ(node1_->link->Lease(), lease);
}

TEST_F(ClusterLinkTest, PublishesTheImagesItHoldsAndTheirChanges) {
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  auto read = [&] {
    return cluster::ParseRecord<api::NodeLoad>(Raw(keys_.Node("node1"))->value,
                                               cluster::NodeLoadFromJson);
  };
  auto load = read();
  ASSERT_TRUE(load.ok());
  auto listed = node1_->runtime.ListImages();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(load->images, *listed);
  // A new image is published with the next sample, no heartbeat needed.
  node1_->runtime.AddImage("kmosix.local/new:1");
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  load = read();
  ASSERT_TRUE(load.ok() && load->images);
  EXPECT_TRUE(std::binary_search(load->images->begin(), load->images->end(), "kmosix.local/new:1"));
  // A runtime that cannot list keeps the last list published.
  node1_->runtime.Fail("ListImages", RetryError("containerd unreachable"));
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_EQ(read()->images, load->images);
}

TEST_F(ClusterLinkTest, PublishesTheNodesNotReadyReasonAtOnceWhenItChanges) {
  auto read = [&] {
    return cluster::ParseRecord<api::NodeLoad>(Raw(keys_.Node("node1"))->value,
                                               cluster::NodeLoadFromJson);
  };
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  ASSERT_TRUE(read().ok());
  EXPECT_FALSE(read()->not_ready_reason.has_value()) << "fit: no reason";
  const int64_t rev = Raw(keys_.Node("node1"))->mod_revision;
  // Unfit: written with the next sample, no material change or heartbeat needed.
  node1_->SetUnfit("CRIU not usable: `criu check` exited 1: Error: no CAP_SYS_ADMIN");
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_GT(Raw(keys_.Node("node1"))->mod_revision, rev);
  EXPECT_EQ(read()->not_ready_reason,
            "CRIU not usable: `criu check` exited 1: Error: no CAP_SYS_ADMIN");
  EXPECT_EQ(Raw(keys_.Node("node1"))->lease, node1_->link->Lease()) << "still under its lease";
  // Unchanged: not written again.
  const int64_t unfit_rev = Raw(keys_.Node("node1"))->mod_revision;
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_EQ(Raw(keys_.Node("node1"))->mod_revision, unfit_rev);
  // Fit again: the reason goes at once.
  node1_->SetUnfit(std::nullopt);
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_GT(Raw(keys_.Node("node1"))->mod_revision, unfit_rev);
  EXPECT_FALSE(read()->not_ready_reason.has_value());
}

TEST_F(ClusterLinkTest, PeersActOnlyOnMigrationsEtcdOrderedFromThemToThisNode) {
  MigrationRecord m;
  m.id = "m-7";
  m.workload = "work";
  m.source = "node2";
  m.target = "node1";
  m.epoch = 1;
  m.created_ms = 1;
  Put(m);
  EXPECT_TRUE(node1_->link->AllowPeer("node2", "m-7").ok());
  EXPECT_EQ(node1_->link->AllowPeer("node3", "m-7").code(), Code::kPermissionDenied);
  // A migration to another node is not this node's to accept.
  m.id = "m-8";
  m.target = "node3";
  Put(m);
  EXPECT_EQ(node1_->link->AllowPeer("node2", "m-8").code(), Code::kPermissionDenied);
  EXPECT_EQ(node1_->link->AllowPeer("node2", "../x").code(), Code::kPermissionDenied);
  // No record: an unmanaged workload's move between agents.
  EXPECT_TRUE(node1_->link->AllowPeer("node2", "unordered").ok());
}

TEST_F(ClusterLinkTest, PublishesRunningWorkloadsUsage) {
  RunWorkOnNode1();
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  auto load = cluster::ParseRecord<api::NodeLoad>(Raw(keys_.Node("node1"))->value,
                                                  cluster::NodeLoadFromJson);
  ASSERT_TRUE(load.ok());
  EXPECT_TRUE(load->workloads.contains("work"));
}

TEST_F(ClusterLinkTest, RepublishesUnderANewLeaseAfterTheLeaseIsLost) {
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  const int64_t lease = node1_->link->Lease();
  ASSERT_TRUE(store_.RevokeLease(lease).ok());
  EXPECT_FALSE(Raw(keys_.Node("node1")).has_value());  // the key went with it
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  const int64_t again = node1_->link->Lease();
  EXPECT_NE(again, 0);
  EXPECT_NE(again, lease);
  auto kv = Raw(keys_.Node("node1"));
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->lease, again);
}

TEST_F(ClusterLinkTest, StoreOutageIsAnErrorAndTheNextRoundRecovers) {
  store_.SetUnavailable(true);
  EXPECT_EQ(node1_->link->PublishOnce().code(), Code::kRetry);
  store_.SetUnavailable(false);
  ASSERT_TRUE(node1_->link->PublishOnce().ok());
  EXPECT_TRUE(Raw(keys_.Node("node1")).has_value());
}

// ---- workloads ----------------------------------------------------------------

TEST_F(ClusterLinkTest, StartsAScheduledWorkloadAssignedToItAndWritesRunning) {
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
  auto local = node1_->agent->Local("work");
  ASSERT_TRUE(local.has_value());
  EXPECT_TRUE(local->managed);
  EXPECT_EQ(local->epoch, 3);
  EXPECT_EQ(local->created_ms, 1234);  // first created in the cluster
  EXPECT_EQ(w.status.pid, local->pid);
  EXPECT_GT(w.status.pid, 0u);
  EXPECT_EQ(w.status.started_ms, local->started_ms);
  // Level-based: reconciling again changes nothing.
  const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), 1);
  // The REST API keeps its hands off a managed workload.
  EXPECT_EQ(node1_->agent->DeleteWorkload("work").code(), Code::kConflict);
  EXPECT_EQ(
      Rest(*node1_->agent).Migrate("work", R"({"target":"http://node2:7700"})").status().code(),
      Code::kConflict);
}

TEST_F(ClusterLinkTest, AStartThatFailsForGoodMarksTheWorkloadFailed) {
  WorkloadRecord w = Workload("node1", WorkloadPhase::kScheduled, 3);
  w.spec.image = "kmosix.local/missing:latest";
  Put(w);
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  WorkloadRecord now = GetWorkload();
  EXPECT_EQ(now.status.phase, WorkloadPhase::kFailed);
  EXPECT_NE(now.status.message.find("missing"), std::string::npos) << now.status.message;
  EXPECT_FALSE(node1_->runtime.Has("work"));
}

TEST_F(ClusterLinkTest, AStartThatMayWorkLaterIsRetried) {
  node1_->runtime.Fail("ImageExists", RetryError("containerd unreachable"));
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  EXPECT_EQ(node1_->link->Reconcile("w/work").code(), Code::kRetry);
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kScheduled);
  node1_->runtime.Fail("ImageExists", Status::Ok());
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
}

TEST_F(ClusterLinkTest, IgnoresWorkloadsOfOtherNodes) {
  Put(Workload("node2", WorkloadPhase::kScheduled, 3));
  const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
  // Not while it migrates to this node either: the migration decides.
  Put(Workload("node1", WorkloadPhase::kMigrating, 4, "m-9"));
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
}

TEST_F(ClusterLinkTest, RestartsAWorkloadThatShouldRunHereButWasLost) {
  RunWorkOnNode1();
  // The node lost the container (say, a reboot) and the agent restarted.
  ASSERT_TRUE(node1_->runtime.Delete("work").ok());
  Rebooted node1 = Reboot(*node1_, "node1", *to_node2_);
  Agent& again = *node1.agent;
  ClusterLink& link = *node1.link;
  ASSERT_TRUE(again.Start().ok());
  ASSERT_EQ(again.Local("work")->state, "lost");
  ASSERT_TRUE(link.Reconcile("w/work").ok());
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(again.Local("work")->state, "running");
  EXPECT_EQ(GetWorkload().status.pid, again.Local("work")->pid);
}

// Issue 13, hole 3: a managed workload whose task died is started again by
// its agent only while the cluster names this node its owner (Running, or
// Lost: the node was away, say rebooting); the record then shows the new
// pid and the restart. A clean exit is Exited, never restarted.
TEST_F(ClusterLinkTest, RestartsADeadManagedWorkloadOnlyWhileTheClusterNamesThisNode) {
  RunWorkOnNode1();
  const uint32_t first_pid = GetWorkload().status.pid;
  node1_->runtime.EndTask("work", 137);
  clock_.Advance(std::chrono::seconds(2));
  node1_->agent->Tick();
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  auto local = node1_->agent->Local("work");
  ASSERT_TRUE(local.has_value());
  EXPECT_EQ(local->restarts, 1);
  EXPECT_NE(local->pid, first_pid);
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.pid, local->pid);
  EXPECT_EQ(w.status.restarts, 1);
  EXPECT_NE(w.status.message.find("restarted on node1 (restart 1): exited with status 137"),
            std::string::npos)
      << w.status.message;

  // The node was away (a reboot): the controller marked it Lost, the task is
  // gone; still its owner, so it starts again.
  Put(Workload("node1", WorkloadPhase::kLost, 3));
  node1_->runtime.LoseTask("work");
  clock_.Advance(std::chrono::minutes(11));  // past the crash-loop back-off
  node1_->agent->Tick();
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node1_->agent->Local("work")->restarts, 2);

  // The cluster gave it to node2 meanwhile: this copy is not started again.
  Put(Workload("node2", WorkloadPhase::kScheduled, 4));
  node1_->runtime.EndTask("work", 1);
  clock_.Advance(std::chrono::minutes(11));
  node1_->agent->Tick();
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kStopped);
  EXPECT_EQ(node1_->agent->Local("work")->state, "restarting");
  EXPECT_EQ(node1_->agent->Local("work")->restarts, 2);
  // ... and the link fences it.
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
}

// The agent's restart of a managed workload claims its record first (one CAS:
// still this node's at the copy's epoch, Running or Lost -> Running with the
// restart counted) and only then starts the task. The controller's node-loss
// placement elsewhere (one CAS on the record it read Lost: node2, epoch + 1,
// Scheduled) landing between the agent's read and its restart makes the claim
// fail; read again, the record names node2, so nothing starts here and the
// link fences the copy. (Before: a check read the record, then the restart ran
// regardless: a second copy started on node1 beside node2's.)
class RestartClaimTest : public ClusterLinkTest {
 protected:
  // The node was away (a reboot): the controller marked "work" Lost and its
  // task is gone; the agent's next tick restarts it.
  void LoseWorkOnNode1() {
    RunWorkOnNode1();
    Put(Workload("node1", WorkloadPhase::kLost, 3));
    node1_->runtime.LoseTask("work");
  }
  // A write of the record as read, in one CAS (as Controller::RestartLost
  // writes its placement), straight into the inner store.
  void CasRecord(const std::function<void(WorkloadRecord&)>& change) {
    const std::string key = keys_.Workload("work");
    auto got = store_.Get(key);
    ASSERT_TRUE(got.ok() && got->kv);
    auto w = cluster::ParseRecord<WorkloadRecord>(got->kv->value, cluster::WorkloadFromJson);
    ASSERT_TRUE(w.ok());
    change(*w);
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(key, got->kv->mod_revision));
    txn.then_ops.push_back(TxnOp::Put(key, cluster::WorkloadToJson(*w).dump()));
    auto done = store_.Commit(txn);
    ASSERT_TRUE(done.ok() && done->succeeded);
  }
  // Runs `write` once, right after the first read of workloads/work.
  void AfterFirstRead(std::function<void()> write) {
    gated_.after_get = [this, write = std::move(write), done = false](
                           const std::string& key, const StatusOr<GetResult>&) mutable {
      if (done || key != keys_.Workload("work")) return;
      done = true;
      write();
    };
  }
};

TEST_F(RestartClaimTest, TheControllersNodeLossWriteBetweenReadAndRestartMeansNoRestartHere) {
  LoseWorkOnNode1();
  const int starts = node1_->runtime.Calls("StartTask");
  bool placed = false;
  AfterFirstRead([&] {
    CasRecord([](WorkloadRecord& w) {
      w.status.node = "node2";
      w.status.epoch += 1;
      w.status.phase = WorkloadPhase::kScheduled;
      w.status.message = "node node1 lost: restarted from its image on node2";
    });
    placed = true;
  });
  clock_.Advance(std::chrono::seconds(2));
  node1_->agent->Tick();
  gated_.after_get = nullptr;
  ASSERT_TRUE(placed) << "the agent never read the record before restarting";
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts) << "a second copy was started on node1";
  EXPECT_NE(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node1_->agent->Local("work")->restarts, 0);
  WorkloadRecord w = GetWorkload();  // the controller's placement stands
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.epoch, 4);
  EXPECT_EQ(w.status.phase, WorkloadPhase::kScheduled);
  // Asked again later: still not its owner, still not started.
  clock_.Advance(std::chrono::minutes(1));
  node1_->agent->Tick();
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts);
  // The link's fence deletes the copy.
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
}

TEST_F(RestartClaimTest, TheRecordIsClaimedRunningBeforeTheTaskStartsAgain) {
  LoseWorkOnNode1();
  const int starts = node1_->runtime.Calls("StartTask");
  int claims = 0;
  int starts_at_claim = -1;
  gated_.before_commit = [&](const Txn& txn) {
    if (!GatedStateStore::Compares(txn, keys_.Workload("work"))) return;
    ++claims;
    starts_at_claim = node1_->runtime.Calls("StartTask");
  };
  clock_.Advance(std::chrono::seconds(2));
  node1_->agent->Tick();
  gated_.before_commit = nullptr;
  ASSERT_EQ(claims, 1) << "the restart wrote no claim on workloads/work";
  EXPECT_EQ(starts_at_claim, starts) << "the task started before the claim";
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts + 1);
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  // Claimed: Running again (a placement the controller decided on the Lost
  // record now fails its CAS), the restart counted, why.
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.restarts, 1);
  EXPECT_NE(w.status.message.find("node1 (restart 1)"), std::string::npos) << w.status.message;
  // The link then records the new pid.
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(GetWorkload().status.pid, node1_->agent->Local("work")->pid);
  EXPECT_EQ(GetWorkload().status.restarts, 1);
}

TEST_F(RestartClaimTest, AClaimThatLosesToAnUnrelatedWriteReadsAgainAndRestarts) {
  LoseWorkOnNode1();
  const int starts = node1_->runtime.Calls("StartTask");
  // Someone rewrites the record (still node1's at epoch 3, Lost) meanwhile.
  AfterFirstRead([&] { CasRecord([](WorkloadRecord& w) { w.status.message = "touched"; }); });
  clock_.Advance(std::chrono::seconds(2));
  node1_->agent->Tick();
  gated_.after_get = nullptr;
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts + 1);
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(GetWorkload().status.restarts, 1);
}

// The link's own starts (StartHere: a Scheduled record naming this node, or
// a Running one whose copy here is gone) claim the record first, as a
// restart does: one CAS that applies only while it still names this node at
// that epoch, then the start. A controller write landing after the link read
// the record (the node-loss path: Lost, then placed on node2 at epoch + 1)
// means no copy starts here. (Before: the link started the task first and
// wrote after; the write found node2 and gave up, the copy ran on beside
// node2's until a later reconcile fenced it.)
class StartClaimTest : public RestartClaimTest {
 protected:
  // Runs `write` once, right after the n-th read of workloads/work (1: the
  // reconcile's own read; 2: the claim's fresh read).
  void AfterRead(int nth, std::function<void()> write) {
    gated_.after_get = [this, nth, write = std::move(write), seen = 0](
                           const std::string& key, const StatusOr<GetResult>&) mutable {
      if (key != keys_.Workload("work") || ++seen != nth) return;
      write();
    };
  }
  // The controller's node-loss path: marked Lost, then placed on node2.
  void LoseAndPlaceOnNode2() {
    CasRecord([](WorkloadRecord& w) { w.status.phase = WorkloadPhase::kLost; });
    CasRecord([](WorkloadRecord& w) {
      w.status.node = "node2";
      w.status.epoch += 1;
      w.status.phase = WorkloadPhase::kScheduled;
      w.status.message = "node node1 was lost: restarted from its image on node2";
    });
  }
  void ExpectNotStartedOnNode1(int starts) {
    EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts) << "a second copy was started on node1";
    EXPECT_FALSE(node1_->runtime.Has("work"));
    EXPECT_FALSE(node1_->agent->Local("work").has_value());
    WorkloadRecord w = GetWorkload();  // the controller's placement stands
    EXPECT_EQ(w.status.node, "node2");
    EXPECT_EQ(w.status.epoch, 4);
    EXPECT_EQ(w.status.phase, WorkloadPhase::kScheduled);
  }
};

TEST_F(StartClaimTest, ANodeLossPlacementAfterTheReadMeansNoStartHere) {
  // Running on node1 at epoch 3, but no copy here (say, lost with the state
  // dir): the link starts it, unless the record moved meanwhile.
  Put(Workload("node1", WorkloadPhase::kRunning, 3));
  const int starts = node1_->runtime.Calls("StartTask");
  AfterRead(1, [&] { LoseAndPlaceOnNode2(); });
  Status s = node1_->link->Reconcile("w/work");
  gated_.after_get = nullptr;
  ASSERT_TRUE(s.ok()) << s.ToString();
  ExpectNotStartedOnNode1(starts);
}

TEST_F(StartClaimTest, APlacementLandingBetweenTheClaimsReadAndItsWriteFailsTheClaim) {
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  const int starts = node1_->runtime.Calls("StartTask");
  // The claim read the Scheduled record; the controller's writes land before
  // its CAS (here a single placement, as if it had marked it Lost earlier).
  AfterRead(2, [&] {
    CasRecord([](WorkloadRecord& w) {
      w.status.node = "node2";
      w.status.epoch += 1;
      w.status.message = "placed on node2";
    });
  });
  Status s = node1_->link->Reconcile("w/work");
  gated_.after_get = nullptr;
  ASSERT_TRUE(s.ok()) << s.ToString();
  ExpectNotStartedOnNode1(starts);
}

TEST_F(StartClaimTest, TheRecordIsClaimedBeforeTheTaskStarts) {
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  const int starts = node1_->runtime.Calls("StartTask");
  int writes = 0, starts_at_first_write = -1;
  gated_.before_commit = [&](const Txn& txn) {
    if (!GatedStateStore::Compares(txn, keys_.Workload("work"))) return;
    if (writes++ == 0) starts_at_first_write = node1_->runtime.Calls("StartTask");
  };
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  gated_.before_commit = nullptr;
  EXPECT_EQ(writes, 2) << "a claim, then the Running write";
  EXPECT_EQ(starts_at_first_write, starts) << "the task started before the claim";
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts + 1);
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.pid, node1_->agent->Local("work")->pid);
  EXPECT_EQ(w.status.message, "");
}

TEST_F(StartClaimTest, ALostRecordIsClaimedRunningBeforeTheStart) {
  // The earlier incarnation's copy here was replaced: the record (created
  // again, Lost on this node) is taken back Running first, so a placement
  // elsewhere decided on the Lost record fails its CAS.
  RunWorkOnNode1();
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  WorkloadRecord w = Workload("", WorkloadPhase::kPending, 0);
  Put(w);
  w.status.node = "node1";
  w.status.phase = WorkloadPhase::kLost;
  w.status.epoch = std::max<int64_t>(1, Raw(keys_.Workload("work"))->mod_revision);
  Put(w);
  const int starts = node1_->runtime.Calls("StartTask");
  std::string phase_claimed;
  gated_.before_commit = [&](const Txn& txn) {
    if (!phase_claimed.empty()) return;
    std::string value = GatedStateStore::PutValue(txn, keys_.Workload("work"));
    auto w = cluster::ParseRecord<WorkloadRecord>(value, cluster::WorkloadFromJson);
    if (!w.ok()) return;
    phase_claimed = api::WorkloadPhaseName(w->status.phase);
    EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts) << "the task started before the claim";
  };
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  gated_.before_commit = nullptr;
  EXPECT_EQ(phase_claimed, "Running");
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts + 1);
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
}

TEST_F(StartClaimTest, AStartThatFailsLeavesOneClaimAndNoWriteLoop) {
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  node1_->runtime.Fail("StartTask", RetryError("containerd is restarting"));
  EXPECT_EQ(node1_->link->Reconcile("w/work").code(), Code::kRetry);
  const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
  EXPECT_EQ(GetWorkload().status.message, "starting on node1");
  // Tried again with the claim in place: no second claim write before it.
  int writes = 0;
  gated_.before_commit = [&](const Txn& txn) {
    if (GatedStateStore::Compares(txn, keys_.Workload("work"))) ++writes;
  };
  EXPECT_EQ(node1_->link->Reconcile("w/work").code(), Code::kRetry);
  EXPECT_EQ(writes, 0);
  EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
  node1_->runtime.Fail("StartTask", Status::Ok());
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  gated_.before_commit = nullptr;
  EXPECT_EQ(writes, 1);  // the Running write
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
}

TEST_F(ClusterLinkTest, AManagedWorkloadThatExitsCleanlyIsExitedNotRestarted) {
  RunWorkOnNode1();
  const int starts = node1_->runtime.Calls("StartTask");
  node1_->runtime.EndTask("work", 0);
  clock_.Advance(std::chrono::seconds(2));
  node1_->agent->Tick();
  EXPECT_EQ(node1_->agent->Local("work")->state, "exited");
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kExited);
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts);
}

TEST_F(ClusterLinkTest, KeepsManagedWorkloadsWhenTheClusterDoesNotKnowThisNode) {
  RunWorkOnNode1();
  // No members/node1: this prefix never knew the node (a wrong --etcd-prefix
  // looks exactly like this); its workloads are not taken away.
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_TRUE(node1_->runtime.Has("work"));
  EXPECT_TRUE(node1_->agent->Local("work").has_value());
}

TEST_F(ClusterLinkTest, DeletesALocalManagedWorkloadWhoseRecordWasDeleted) {
  RunWorkOnNode1();
  api::NodeMember member;
  member.node = "node1";
  ASSERT_TRUE(store_.Put(keys_.Member("node1"), cluster::NodeMemberToJson(member).dump()).ok());
  // An unmanaged workload (REST) has no record and stays.
  ASSERT_TRUE(Rest(*node1_->agent)
                  .CreateWorkload(R"({"name":"mine","image":"kmosix.local/demo:latest"})")
                  .ok());
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  ASSERT_TRUE(node1_->link->Reconcile("w/mine").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
  EXPECT_TRUE(node1_->runtime.Has("mine"));
}

TEST_F(ClusterLinkTest, FencesACopyTheClusterGaveToAnotherNode) {
  RunWorkOnNode1();
  // Same epoch, another node: inconsistent, but not a newer owner: kept.
  Put(Workload("node2", WorkloadPhase::kRunning, 3));
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_TRUE(node1_->runtime.Has("work"));
  // A later epoch names node2 (say it was marked Lost and rescheduled).
  Put(Workload("node2", WorkloadPhase::kScheduled, 4));
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
}

// Issue 13, hole 4: "work" deleted and created again while node1 was away with
// its copy still running, and placed as the controller places (at an epoch
// no lower than its record's revision). Back, node1 must not keep the old
// incarnation's copy: fenced when the new one went elsewhere, replaced (not
// adopted with the old spec) when it came back here.
class IncarnationTest : public ClusterLinkTest {
 protected:
  // Deletes "work" and creates it again, placed on `node` like the controller.
  void RecreateOn(const std::string& node) {
    ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
    WorkloadRecord w = Workload("", WorkloadPhase::kPending, 0);
    w.status.created_ms = 5678;
    Put(w);
    auto kv = Raw(keys_.Workload("work"));
    ASSERT_TRUE(kv.has_value());
    w.status.node = node;
    w.status.phase = WorkloadPhase::kScheduled;
    w.status.epoch = std::max<int64_t>(1, kv->mod_revision);
    Put(w);
  }
};

TEST_F(IncarnationTest, TheOldCopyIsFencedWhileTheNewOneIsNotPlacedYet) {
  RunWorkOnNode1();
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  Put(Workload("", WorkloadPhase::kPending, 0));  // no node fits it yet
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
}

TEST_F(IncarnationTest, TheOldCopyIsFencedWhenTheNewOneRunsElsewhere) {
  RunWorkOnNode1();
  RecreateOn("node2");
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
}

TEST_F(IncarnationTest, TheOldCopyIsReplacedNotAdoptedWhenTheNewOneIsPlacedHere) {
  RunWorkOnNode1();
  ASSERT_EQ(node1_->agent->Local("work")->created_ms, 1234);
  RecreateOn("node1");
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  auto local = node1_->agent->Local("work");
  ASSERT_TRUE(local.has_value());
  EXPECT_EQ(local->created_ms, 5678);  // the new incarnation's, started afresh
  EXPECT_EQ(local->epoch, GetWorkload().status.epoch);
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(GetWorkload().status.pid, local->pid);
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
}

TEST_F(IncarnationTest, TheOldCopyMayNotRestartAsTheNewOneMarkedLostHere) {
  RunWorkOnNode1();
  RecreateOn("node1");
  // The controller marked the new one Lost: node1 was away.
  WorkloadRecord w = GetWorkload();
  w.status.phase = WorkloadPhase::kLost;
  Put(w);
  const int64_t old_epoch = node1_->agent->Local("work")->epoch;
  auto may = node1_->link->ClaimRestart("work", RestartClaim{old_epoch, 1, "test"});
  ASSERT_TRUE(may.ok());
  EXPECT_FALSE(*may);
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kLost) << "claimed by the old copy";
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  auto local = node1_->agent->Local("work");
  ASSERT_TRUE(local.has_value());
  EXPECT_EQ(local->created_ms, 5678);
  EXPECT_EQ(local->epoch, GetWorkload().status.epoch);
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
}

TEST_F(ClusterLinkTest, AnUnmanagedWorkloadOfTheSameNameFailsTheScheduling) {
  ASSERT_TRUE(Rest(*node1_->agent)
                  .CreateWorkload(R"({"name":"work","image":"kmosix.local/demo:latest"})")
                  .ok());
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kFailed);
  EXPECT_FALSE(node1_->agent->Local("work")->managed);
}

// A standalone workload (created on the agent, no record in the cluster)
// moved agent to agent stays standalone on its target, in cluster mode too:
// only a copy whose spec says it is the cluster's arrives managed.
TEST_F(ClusterLinkTest, AStandaloneWorkloadMovedAgentToAgentStaysStandalone) {
  ASSERT_TRUE(Rest(*node1_->agent)
                  .CreateWorkload(R"({"name":"work","image":"kmosix.local/demo:latest"})")
                  .ok());
  auto moved = Rest(*node1_->agent).Migrate("work", R"({"target":"http://node2:7700"})");
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  auto arrived = node2_->agent->Local("work");
  ASSERT_TRUE(arrived.has_value());
  EXPECT_FALSE(arrived->managed);
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
}

// ---- migrations ----------------------------------------------------------------

TEST_F(ClusterLinkTest, RunsAPendingMigrationOrderAndWritesItsProgress) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  WatchOptions wo;
  wo.key = keys_.Migration("m-1");
  auto watch = store_.Watch(wo);
  ASSERT_TRUE(watch.ok());

  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();

  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kSucceeded);
  EXPECT_EQ(m.error, "");
  EXPECT_GT(m.finished_ms, 0);
  EXPECT_EQ(m.reason, "test");  // the order's fields are kept
  ASSERT_TRUE(m.report.has_value());
  EXPECT_EQ(MigrationReportToJson(*m.report)["phase"], "Succeeded");
  EXPECT_EQ(MigrationReportToJson(*m.report)["targetNode"], "node2");
  // Every phase was written, in order.
  std::vector<std::string> phases;
  while (true) {
    auto events = (*watch)->Next(std::chrono::milliseconds(50));
    ASSERT_TRUE(events.ok());
    if (events->empty()) break;
    for (const auto& e : *events) {
      auto rec = cluster::ParseRecord<MigrationRecord>(e.kv.value, cluster::MigrationFromJson);
      ASSERT_TRUE(rec.ok());
      phases.push_back(std::string(api::MigrationPhaseName(rec->phase)));
    }
  }
  EXPECT_EQ(phases, (std::vector<std::string>{"Preparing", "Checkpointing", "Transferring",
                                              "Restoring", "Committing", "Succeeded"}));
  // The workload record: owned by node2 at a new epoch, free again.
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.epoch, 4);
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.migrations, std::vector<std::string>{"m-1"});
  // Runs once, on node2, with its state.
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node2_->runtime.Counter("work"), 7);
  auto arrived = node2_->agent->Local("work");
  ASSERT_TRUE(arrived.has_value());
  EXPECT_EQ(w.status.pid, arrived->pid);
  // The cluster's from its commit, at epoch 0 until node2's link claims it
  // at the record's; node1 has nothing left to do.
  EXPECT_TRUE(arrived->managed);
  EXPECT_EQ(arrived->epoch, 0);
  ASSERT_TRUE(node2_->link->Reconcile("w/work").ok());
  arrived = node2_->agent->Local("work");
  EXPECT_TRUE(arrived->managed);
  EXPECT_EQ(arrived->epoch, 4);
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
}

// Issue 13, hole 7: an error whose text is not UTF-8 (a peer's garbage
// reply while the workload is frozen) is written into the migration record,
// never thrown out of the migration's thread or the reconciler.
TEST_F(ClusterLinkTest, AMigrationErrorThatIsNotUtf8IsWrittenNotThrown) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->Fail("Restore", FailedError("peer answered HTTP 502: <\xff\xfe\xc3(>"));
  ASSERT_NO_THROW(ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok()));
  node1_->link->WaitMigrations();
  ASSERT_NO_THROW(ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok()));
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kRolledBack);
  EXPECT_NE(m.error.find("peer answered HTTP 502"), std::string::npos) << m.error;
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_FALSE(node2_->runtime.Has("work"));
}

// Issue 13, hole 7: the thread of a finished migration is joined (at the
// next launch), not kept until the link stops.
TEST_F(ClusterLinkTest, FinishedMigrationThreadsAreJoined) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  to_node2_->Fail("Hello", FailedError("target says no"));
  for (int i = 1; i <= 4; ++i) {
    const std::string id = "m-" + std::to_string(i);
    Put(Workload("node1", WorkloadPhase::kMigrating, 3, id));
    Put(Order(id));
    ASSERT_TRUE(node1_->link->Reconcile("m/" + id).ok());
    // Wait for its end without joining (WaitMigrations would join).
    for (int spin = 0; spin < 20000 && node1_->link->RunningMigrations() > 0; ++spin) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_EQ(node1_->link->RunningMigrations(), 0u) << id << " never ended";
    EXPECT_EQ(GetMigration(id).phase, api::MigrationPhase::kFailed);
  }
  EXPECT_LE(node1_->link->MigrationThreads(), 1u) << "threads of finished migrations pile up";
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
}

TEST_F(ClusterLinkTest, AnOrderRunsOnlyOnceTheWorkloadRecordAgrees) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Order("m-1"));  // the workload record does not name m-1 yet
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  EXPECT_EQ(GetMigration("m-1").phase, api::MigrationPhase::kPending);
  EXPECT_EQ(node1_->runtime.Calls("Pause"), 0);
}

TEST_F(ClusterLinkTest, AnOrderToAMissingNodeFails) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kFailed);
  EXPECT_NE(m.error.find("target node not ready"), std::string::npos) << m.error;
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_TRUE(w.status.migrations.empty());  // it never ran
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
}

TEST_F(ClusterLinkTest, AFailedMigrationFreesTheWorkloadAndKeepsItHere) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->CutTransfer();
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kRolledBack);
  EXPECT_NE(m.error, "");
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.migrations, std::vector<std::string>{"m-1"});
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_FALSE(node2_->runtime.Has("work"));
}

TEST_F(ClusterLinkTest, AfterARestartTheJournalDecidesWhatTheRecordSays) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.phase =
      api::MigrationPhase::kCommitting;  // the last phase written before the agent went down
  Put(order);
  // The migration ended while the store did not hear of it.
  auto done = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                            *node1_->link, {});
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->phase, MigrationPhase::kSucceeded);
  ASSERT_EQ(GetMigration("m-1").phase, api::MigrationPhase::kCommitting);
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kSucceeded);
  EXPECT_EQ(MigrationReportToJson(*m.report)["phase"], "Succeeded");
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.migrations, std::vector<std::string>{"m-1"});
  // A final record is never rewritten.
  const int64_t rev = Raw(keys_.Migration("m-1"))->mod_revision;
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  EXPECT_EQ(Raw(keys_.Migration("m-1"))->mod_revision, rev);
}

TEST_F(ClusterLinkTest, AnOrderInProgressWithoutAJournalHereIsFailed) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.phase = api::MigrationPhase::kTransferring;
  Put(order);
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kFailed);
  EXPECT_EQ(m.error, "source has no record of this migration");
  EXPECT_EQ(GetWorkload().status.migration, "");
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
}

// The same with the ownership already moved to the target (this agent lost
// its state dir after the transfer): the target owns and commits it, so the
// record ends Succeeded, in one transaction with the workload record's
// release, never Failed beside a workload the target runs.
TEST_F(ClusterLinkTest, AnOrderWithoutAJournalWhoseOwnershipMovedEndsSucceeded) {
  Put(Workload("node2", WorkloadPhase::kMigrating, 4, "m-1"));
  MigrationRecord order = Order("m-1");
  order.phase = api::MigrationPhase::kCommitting;
  Put(order);
  int commits = 0;
  gated_.after_commit = [&](const Txn&, const StatusOr<TxnResult>& r) {
    if (r.ok() && r->succeeded) ++commits;
  };
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  EXPECT_EQ(commits, 1);  // both records in one write
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kSucceeded) << m.error;
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.migrations, std::vector<std::string>{"m-1"});
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
}

// ---- ledger and oracle -----------------------------------------------------------

TEST_F(ClusterLinkTest, TransferMovesTheOwnerOnceAndIsIdempotent) {
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  ASSERT_TRUE(node1_->link->Transfer(Report("m-1")).ok());
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.epoch, 4);
  EXPECT_EQ(w.status.phase, WorkloadPhase::kMigrating);
  EXPECT_EQ(w.status.pid, 4242u);
  const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
  ASSERT_TRUE(node1_->link->Transfer(Report("m-1")).ok());
  EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
}

TEST_F(ClusterLinkTest, TransferIsRefusedWhenTheRecordChanged) {
  // Another migration.
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-2"));
  EXPECT_EQ(node1_->link->Transfer(Report("m-1")).code(), Code::kConflict);
  // Another owner (a later epoch).
  Put(Workload("node3", WorkloadPhase::kRunning, 5, "m-1"));
  EXPECT_EQ(node1_->link->Transfer(Report("m-1")).code(), Code::kConflict);
  // Marked Lost.
  Put(Workload("node1", WorkloadPhase::kLost, 3, "m-1"));
  EXPECT_EQ(node1_->link->Transfer(Report("m-1")).code(), Code::kConflict);
  // Deleted.
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  EXPECT_EQ(node1_->link->Transfer(Report("m-1")).code(), Code::kConflict);
  // None of it wrote anything.
  EXPECT_FALSE(Raw(keys_.Workload("work")).has_value());
}

TEST_F(ClusterLinkTest, LedgerAnswersRetryWhenTheStoreIsUnreachable) {
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  store_.SetUnavailable(true);
  EXPECT_EQ(node1_->link->Transfer(Report("m-1")).code(), Code::kRetry);
  EXPECT_EQ(node1_->link->Revert(Report("m-1")).code(), Code::kRetry);
  store_.SetUnavailable(false);
  EXPECT_EQ(GetWorkload().status.node, "node1");
}

TEST_F(ClusterLinkTest, RevertGivesTheWorkloadBackToTheSource) {
  Put(Workload("node2", WorkloadPhase::kMigrating, 4, "m-1"));
  ASSERT_TRUE(node1_->link->Revert(Report("m-1")).ok());
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 5);
  EXPECT_EQ(w.status.migration, "m-1");  // still in flight until its end is written
  // Already the source's: ok, nothing written.
  const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
  ASSERT_TRUE(node1_->link->Revert(Report("m-1")).ok());
  EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
  // Owned by a third node: refused.
  Put(Workload("node3", WorkloadPhase::kRunning, 6));
  EXPECT_EQ(node1_->link->Revert(Report("m-1")).code(), Code::kConflict);
  // Deleted: nobody else owns it.
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  EXPECT_TRUE(node1_->link->Revert(Report("m-1")).ok());
}

TEST_F(ClusterLinkTest, TheOracleSaysWhetherTheClusterNamesThisNode) {
  IncomingRecord rec;
  rec.offer.id = "m-1";
  rec.offer.spec.name = "work";
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  EXPECT_FALSE(*node2_->link->OwnedHere(rec));  // not moved yet
  Put(Workload("node2", WorkloadPhase::kMigrating, 4, "m-1"));
  EXPECT_TRUE(*node2_->link->OwnedHere(rec));
  WorkloadRecord done = Workload("node2", WorkloadPhase::kRunning, 4);
  done.status.migrations = {"m-1"};
  Put(done);
  EXPECT_TRUE(*node2_->link->OwnedHere(rec));  // the source already wrote the end
  Put(Workload("node2", WorkloadPhase::kMigrating, 6, "m-2"));
  EXPECT_FALSE(*node2_->link->OwnedHere(rec));
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  EXPECT_FALSE(*node2_->link->OwnedHere(rec));
  store_.SetUnavailable(true);
  EXPECT_EQ(node2_->link->OwnedHere(rec).status().code(), Code::kRetry);
  store_.SetUnavailable(false);
}

// Hole 6: the controller wrote the migration Failed (its source was lost)
// while the workload record still named it (between the old verdict's two
// writes, or a record left so); the source comes back and tries to commit:
// refused, nothing moves, so the target aborts and the source thaws.
TEST_F(ClusterLinkTest, TransferRefusesAMigrationTheControllerAlreadyEnded) {
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  for (auto phase : {api::MigrationPhase::kFailed, api::MigrationPhase::kRolledBack}) {
    MigrationRecord order = Order("m-1");
    order.phase = phase;
    order.error = "source node node1 was lost before ownership moved to node2";
    order.finished_ms = 777;
    Put(order);
    const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
    Status s = node1_->link->Transfer(Report("m-1"));
    EXPECT_EQ(s.code(), Code::kConflict) << s.ToString();
    EXPECT_NE(s.message().find(api::MigrationPhaseName(phase)), std::string::npos) << s.ToString();
    EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
    EXPECT_EQ(GetWorkload().status.node, "node1");
  }
}

// Hole 5: the source was away longer than the target keeps its history. The
// target committed (and the controller, the source being lost, wrote the
// migration Succeeded and freed the record), then forgot it. The source, back,
// must not take the target's "not found" for an abort: the records say the
// target owns it, so the frozen copy is released, never thawed.
TEST_F(ClusterLinkTest, ASourceBackAfterTheTargetForgotTheCommitReleasesItsCopy) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->DropResponse("Commit");  // committed there; the source never hears
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->phase, MigrationPhase::kResolving);
  ASSERT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  // The controller's verdict on the lost source: Succeeded, record freed.
  WorkloadRecord w = GetWorkload();
  ASSERT_EQ(w.status.node, "node2");
  w.status.migration.clear();
  w.status.migrations.push_back("m-1");
  w.status.phase = WorkloadPhase::kRunning;
  Put(w);
  MigrationRecord m = GetMigration("m-1");
  m.phase = api::MigrationPhase::kSucceeded;
  m.finished_ms = 888;
  Put(m);
  // A day later the target has forgotten m-1.
  clock_.Advance(std::chrono::hours(25));
  node2_->agent->Tick();
  ASSERT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kUnknown);
  to_node2_->Heal();
  node1_->agent->Tick();  // retries the unresolved migration
  auto journal = node1_->agent->OutgoingReport("m-1");
  ASSERT_TRUE(journal.has_value());
  EXPECT_EQ(journal->phase, MigrationPhase::kSucceeded) << journal->error.ToString();
  EXPECT_FALSE(node1_->runtime.Has("work")) << "the source copy runs beside the target's";
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(GetWorkload().status.node, "node2");
}

// Hole 5, the other way: while the source was away the workload was given
// to another node (restarted there after the loss); the target aborted and
// forgot. The records name a third owner: the frozen copy is released, never
// thawed beside it.
TEST_F(ClusterLinkTest, ASourceBackAfterItsWorkloadMovedOnReleasesItsCopy) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->DropRequest("Commit");  // restored there, never committed
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->phase, MigrationPhase::kResolving);
  // The controller failed m-1 and restarted the workload on node3.
  WorkloadRecord w = Workload("node3", WorkloadPhase::kRunning, 9);
  Put(w);
  MigrationRecord m = GetMigration("m-1");
  m.phase = api::MigrationPhase::kFailed;
  m.error = "source node node1 was lost before ownership moved to node2";
  Put(m);
  clock_.Advance(std::chrono::seconds(121));
  node2_->agent->Tick();  // idle: the oracle says node3 owns it; aborted
  ASSERT_FALSE(node2_->runtime.Has("work"));
  clock_.Advance(std::chrono::hours(25));
  node2_->agent->Tick();
  ASSERT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kUnknown);
  to_node2_->Heal();
  node1_->agent->Tick();
  auto journal = node1_->agent->OutgoingReport("m-1");
  ASSERT_TRUE(journal.has_value());
  EXPECT_TRUE(IsFinal(journal->phase)) << MigrationPhaseName(journal->phase);
  EXPECT_NE(node1_->runtime.State("work"), TaskState::kRunning)
      << "the source thawed its copy while node3 owns the workload";
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_EQ(GetWorkload().status.node, "node3");
  // The link lets go of what is left of it here.
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
}

// Soak nl52 (recovery.count 2, one restart in the journal): node1, the source
// of m-1 to node2, was lost with node2's copy restored and waiting for the
// commit. The controller ended m-1 Failed and, 15 s later, restarted the
// workload from its image on node2 (recovery 1). node2 kept its open
// incoming copy, which held the workload's name, until its idle timeout
// (120 s) or the source's return, so the restart placed there never ran; a
// second loss later restarted it again (recovery 2). Now the target settles
// an incoming migration the cluster ended at once, from the records, and the
// placement starts.
TEST_F(ClusterLinkTest, ATargetAbortsAnIncomingCopyTheClusterFailedAndStartsThePlacementHere) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->DropRequest("Commit");  // restored on node2, never committed
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kRestored);
  // node1 is lost: the controller's verdict (Failed; the record freed, Lost
  // on node1), then its restart from the image on node2.
  MigrationRecord m = GetMigration("m-1");
  m.phase = api::MigrationPhase::kFailed;
  m.error = "source node node1 was lost before ownership moved to node2";
  Put(m);
  WorkloadRecord w = Workload("node2", WorkloadPhase::kScheduled, 4);
  w.status.message = "node node1 was lost (NotReady 15.0 s); restarted from its image on node2";
  Put(w);
  const int starts = node2_->runtime.Calls("StartTask");
  ASSERT_TRUE(node2_->link->Reconcile("w/work").ok());  // the name is held: waits
  ASSERT_TRUE(node2_->link->Reconcile("m/m-1").ok());
  EXPECT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kAborted);
  ASSERT_TRUE(node2_->link->Reconcile("w/work").ok());
  auto local = node2_->agent->Local("work");
  ASSERT_TRUE(local.has_value()) << "the restart placed on node2 never started";
  EXPECT_EQ(local->state, "running");
  EXPECT_TRUE(local->managed);
  EXPECT_EQ(local->epoch, 4);
  EXPECT_EQ(node2_->runtime.Calls("StartTask"), starts + 1) << "started from its image";
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_FALSE(node2_->runtime.Stopped("work"));
  w = GetWorkload();
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.pid, local->pid);
}

// The other end: the source moved the ownership, then was lost before
// asking node2 to commit; the controller's verdict says Succeeded. The
// target commits at once from the records instead of at its idle timeout.
TEST_F(ClusterLinkTest, ATargetCommitsAnIncomingCopyTheClusterEndedSucceededAtOnce) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->DropRequest("Commit");
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kRestored);
  WorkloadRecord w = GetWorkload();
  ASSERT_EQ(w.status.node, "node2");  // the source's Transfer landed
  w.status.migration.clear();
  w.status.migrations.push_back("m-1");
  w.status.phase = WorkloadPhase::kRunning;
  Put(w);
  MigrationRecord m = GetMigration("m-1");
  m.phase = api::MigrationPhase::kSucceeded;
  Put(m);
  ASSERT_TRUE(node2_->link->Reconcile("m/m-1").ok());
  EXPECT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_FALSE(node2_->runtime.Stopped("work")) << "committed but never resumed";
}

// A migration that ends superseded (another node owns the workload; the
// source's frozen copy released, never thawed) leaves no local copy on the
// agent at once: not "running" (nothing runs), not restarted by the agent's
// dead-task loop, not back after an agent restart. (Before: Finished marked
// it "running" until the link's next reconcile fenced it.)
TEST_F(ClusterLinkTest, ASupersededSourceCopyIsGoneFromTheAgentAtOnce) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->DropRequest("Commit");
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->phase, MigrationPhase::kResolving);
  ASSERT_EQ(node1_->agent->Local("work")->state, "frozen");
  // The controller failed m-1 and restarted the workload on node3; node2
  // aborted and forgot it.
  Put(Workload("node3", WorkloadPhase::kRunning, 9));
  MigrationRecord m = GetMigration("m-1");
  m.phase = api::MigrationPhase::kFailed;
  m.error = "source node node1 was lost before ownership moved to node2";
  Put(m);
  clock_.Advance(std::chrono::seconds(121));
  node2_->agent->Tick();
  clock_.Advance(std::chrono::hours(25));
  node2_->agent->Tick();
  to_node2_->Heal();
  const int starts = node1_->runtime.Calls("StartTask");
  node1_->agent->Tick();  // resolves m-1: superseded
  auto journal = node1_->agent->OutgoingReport("m-1");
  ASSERT_TRUE(journal.has_value());
  ASSERT_EQ(journal->phase, MigrationPhase::kFailed) << journal->error.ToString();
  EXPECT_TRUE(journal->source_released);
  EXPECT_NE(journal->error.message().find("released, not thawed"), std::string::npos)
      << journal->error.ToString();
  ASSERT_FALSE(node1_->runtime.Has("work"));
  // Gone at once, before any reconcile of the link.
  auto local = node1_->agent->Local("work");
  EXPECT_FALSE(local.has_value()) << "the released copy is recorded here as " << local->state;
  EXPECT_FALSE(node1_->agent->GetWorkload("work").ok());
  // The dead-task loop has nothing to start again.
  clock_.Advance(std::chrono::minutes(11));
  node1_->agent->Tick();
  EXPECT_EQ(node1_->runtime.Calls("StartTask"), starts);
  EXPECT_FALSE(node1_->runtime.Has("work"));
  // Nor does an agent starting again on the same state directory.
  node1_->link.reset();
  node1_->agent = std::make_unique<Agent>(node1_->agent->Options(), node1_->runtime, node1_->engine,
                                          *to_node2_, clock_, random_, nullptr);
  ASSERT_TRUE(node1_->agent->Start().ok());
  EXPECT_FALSE(node1_->agent->Local("work").has_value());
}

// Hole 5, guard: the ownership never moved and the target forgot its abort:
// the records say the source owns it; it thaws.
TEST_F(ClusterLinkTest, ASourceBackAfterTheTargetForgotAnAbortThaws) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->DropRequest("Commit");
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  store_.SetUnavailable(true);  // the transfer cannot be written: never moved
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  store_.SetUnavailable(false);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->phase, MigrationPhase::kResolving);
  ASSERT_EQ(GetWorkload().status.node, "node1");
  clock_.Advance(std::chrono::seconds(121));
  node2_->agent->Tick();  // idle: the oracle says node1 owns it; aborted
  clock_.Advance(std::chrono::hours(25));
  node2_->agent->Tick();
  ASSERT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kUnknown);
  to_node2_->Heal();
  node1_->agent->Tick();
  auto journal = node1_->agent->OutgoingReport("m-1");
  ASSERT_TRUE(journal.has_value());
  EXPECT_EQ(journal->phase, MigrationPhase::kRolledBack) << journal->error.ToString();
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node1_->runtime.Counter("work"), 7);
  EXPECT_FALSE(node2_->runtime.Has("work"));
}

// The source goes silent after the ownership moved: the target keeps the
// workload (oracle), and the source, back, follows.
TEST_F(ClusterLinkTest, TargetKeepsTheWorkloadWhenTheSourceFallsSilentAfterTheTransfer) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  to_node2_->DropRequest("Commit");
  to_node2_->DropRequest("Query");
  to_node2_->DropRequest("Abort");
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->phase, MigrationPhase::kResolving);
  EXPECT_EQ(GetWorkload().status.node, "node2");
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kPaused);
  clock_.Advance(std::chrono::seconds(121));
  node2_->agent->Tick();  // idle: asks the oracle, commits
  EXPECT_EQ(node2_->agent->Local("work")->state, "running");
  to_node2_->Heal();
  clock_.Advance(std::chrono::seconds(6));
  node1_->agent->Tick();  // retries the unresolved migration through the ledger
  auto journal = node1_->agent->OutgoingReport("m-1");
  ASSERT_TRUE(journal.has_value());
  EXPECT_EQ(journal->phase, MigrationPhase::kSucceeded);
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node2_->runtime.Counter("work"), 7);
}

// ---- cancellation ---------------------------------------------------------------

TEST_F(ClusterLinkTest, ACancelledPendingOrderIsRefusedAndNeverLaunched) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.cancel_requested_ms = 5555;
  order.cancelled_by = "api";
  Put(order);
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kFailed);
  EXPECT_EQ(m.error, "cancelled by api");
  EXPECT_GT(m.finished_ms, 0);
  EXPECT_EQ(m.cancel_requested_ms, 5555);
  EXPECT_EQ(m.cancelled_by, "api");
  // Never launched: no journal, nothing frozen, the target never heard of it.
  EXPECT_FALSE(node1_->agent->OutgoingReport("m-1").has_value());
  EXPECT_EQ(node1_->runtime.Calls("Pause"), 0);
  EXPECT_FALSE(node2_->runtime.Has("work"));
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_TRUE(w.status.migrations.empty());
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  // Level-based: reconciling again writes nothing.
  const int64_t rev = Raw(keys_.Migration("m-1"))->mod_revision;
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  EXPECT_EQ(Raw(keys_.Migration("m-1"))->mod_revision, rev);
  EXPECT_EQ(node1_->runtime.Calls("Pause"), 0);
}

TEST_F(ClusterLinkTest, ACancelWhileTheMigrationRunsRollsItBack) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  // Hold the migration thread right after it wrote Checkpointing.
  Gate reached;
  Gate proceed;
  gated_.after_commit = [&](const Txn& txn, const StatusOr<TxnResult>&) {
    if (PhaseWritten(txn, "m-1") != "Checkpointing") return;
    reached.Open();
    proceed.Wait();
  };
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  ASSERT_TRUE(reached.Wait());
  CancelInStore("m-1");                                // the controller accepts the cancel
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());  // what its watch event triggers
  proceed.Open();
  node1_->link->WaitMigrations();

  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kRolledBack);
  EXPECT_NE(m.error.find("cancelled"), std::string::npos) << m.error;
  EXPECT_EQ(MigrationReportToJson(*m.report)["failedPhase"], "Checkpointing");
  EXPECT_EQ(m.cancelled_by, "api");  // the cancel fields survive the report writes
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w.status.migrations, std::vector<std::string>{"m-1"});
  // Runs once, here, with its state; the target let go of its copy.
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node1_->runtime.Counter("work"), 7);
  EXPECT_FALSE(node2_->runtime.Has("work"));
  EXPECT_EQ(w.status.pid, node1_->agent->Local("work")->pid);
}

TEST_F(ClusterLinkTest, TransferRefusesACancelledMigration) {
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.phase = api::MigrationPhase::kRestoring;
  order.cancel_requested_ms = 5555;
  order.cancelled_by = "drain";
  Put(order);
  const int64_t rev = Raw(keys_.Workload("work"))->mod_revision;
  Status s = node1_->link->Transfer(Report("m-1"));
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_NE(s.message().find("cancelled by drain"), std::string::npos) << s.ToString();
  EXPECT_EQ(Raw(keys_.Workload("work"))->mod_revision, rev);
  // Once the ownership moved, a flag set later (the controller refuses that)
  // does not undo it: Transfer stays idempotent.
  Put(Workload("node2", WorkloadPhase::kMigrating, 4, "m-1"));
  EXPECT_TRUE(node1_->link->Transfer(Report("m-1")).ok());
}

// The race: a cancel written after Transfer read the records and before its
// CAS fails the CAS (it compares the migration record too); the re-read sees
// the cancel and refuses.
TEST_F(ClusterLinkTest, TransferRefusesACancelWrittenBetweenItsReadAndItsWrite) {
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.phase = api::MigrationPhase::kRestoring;
  Put(order);
  int transfers = 0;
  gated_.before_commit = [&](const Txn& txn) {
    if (IsTransfer(txn, "m-1") && ++transfers == 1) CancelInStore("m-1");
  };
  Status s = node1_->link->Transfer(Report("m-1"));
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_NE(s.message().find("cancelled by api"), std::string::npos) << s.ToString();
  EXPECT_EQ(transfers, 1);  // one CAS, which failed; the re-read refused
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
}

// The same race inside a whole migration: the driver's last check passed, the
// cancel lands before the ownership CAS; the migration rolls back.
TEST_F(ClusterLinkTest, ACancelThatLandsAfterTheLastCheckStillStopsTheCommit) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  int transfers = 0;
  gated_.before_commit = [&](const Txn& txn) {
    if (IsTransfer(txn, "m-1") && ++transfers == 1) CancelInStore("m-1");
  };
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  EXPECT_EQ(transfers, 1);
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kRolledBack);
  EXPECT_NE(m.error.find("cancelled by api"), std::string::npos) << m.error;
  EXPECT_EQ(MigrationReportToJson(*m.report)["failedPhase"], "Committing");
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node1");
  EXPECT_EQ(w.status.epoch, 3);
  EXPECT_EQ(w.status.migration, "");
  EXPECT_EQ(w.status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node1_->runtime.Counter("work"), 7);
  EXPECT_FALSE(node2_->runtime.Has("work"));
}

// After the ownership CAS the controller refuses a cancel; even a flag that
// reaches the link then changes nothing: the migration commits.
TEST_F(ClusterLinkTest, ACancelThatArrivesAfterTheTransferDoesNotStopTheCommit) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  bool flagged = false;
  gated_.after_commit = [&](const Txn& txn, const StatusOr<TxnResult>& r) {
    if (flagged || !IsTransfer(txn, "m-1") || !r.ok() || !r->succeeded) return;
    flagged = true;
    CancelInStore("m-1");
    EXPECT_TRUE(node1_->link->Reconcile("m/m-1").ok());  // raises the driver's flag
  };
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  EXPECT_TRUE(flagged);
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kSucceeded);
  EXPECT_EQ(m.error, "");
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.epoch, 4);
  EXPECT_EQ(w.status.migration, "");
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node2_->runtime.Counter("work"), 7);
}

// ---- the threads -------------------------------------------------------------------

// Polls `done` for up to 20 s of real time (a deadline against hangs, not a
// speed assertion).
template <typename F>
bool Eventually(F done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

TEST_F(ClusterLinkTest, TheThreadsConvergeOnWhatTheStoreSays) {
  node1_->link->Start();
  ASSERT_TRUE(Eventually([&] { return Raw(keys_.Node("node1")).has_value(); }));
  api::NodeMember member;  // what the controller writes when it sees the node
  member.node = "node1";
  ASSERT_TRUE(store_.Put(keys_.Member("node1"), cluster::NodeMemberToJson(member).dump()).ok());
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  ASSERT_TRUE(Eventually([&] { return GetWorkload().status.phase == WorkloadPhase::kRunning; }));
  EXPECT_EQ(node1_->runtime.State("work"), TaskState::kRunning);
  ASSERT_TRUE(store_.Delete(keys_.Workload("work")).ok());
  ASSERT_TRUE(Eventually([&] { return !node1_->runtime.Has("work"); }));
  // A lost lease is replaced and the node key written again.
  const int64_t lease = node1_->link->Lease();
  ASSERT_TRUE(store_.RevokeLease(lease).ok());
  ASSERT_TRUE(Eventually([&] {
    auto kv = Raw(keys_.Node("node1"));
    return kv.has_value() && kv->lease != lease;
  }));
  node1_->link->Stop();
}

// The target's threads settle an incoming migration the cluster ended: from
// the record's change (the watch), or from the first resync (the record
// ended while the link was not running, say across an agent restart).
class TargetThreadsTest : public ClusterLinkTest {
 protected:
  // node2 holds m-1's copy restored and uncommitted (the source never asks).
  void OpenIncoming() {
    RunWorkOnNode1();
    Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
    Put(Order("m-1"));
    to_node2_->DropRequest("Commit");
    to_node2_->DropRequest("Query");
    to_node2_->DropRequest("Abort");
    auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                           *node1_->link, {});
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kRestored);
  }
  // The controller's verdict on the lost source, then its restart on node2.
  void EndAndPlaceOnNode2() {
    MigrationRecord m = GetMigration("m-1");
    m.phase = api::MigrationPhase::kFailed;
    m.error = "source node node1 was lost before ownership moved to node2";
    Put(m);
    Put(Workload("node2", WorkloadPhase::kScheduled, 4));
  }
  void ExpectStartedOnNode2() {
    EXPECT_TRUE(Eventually([&] {
      auto local = node2_->agent->Local("work");
      return local && local->state == "running" && local->managed && local->epoch == 4;
    })) << "the placement on node2 never started";
    EXPECT_EQ(*node2_->agent->Target().Query("m-1"), TargetPhase::kAborted);
    node2_->link->Stop();
  }
};

TEST_F(TargetThreadsTest, EndedWhileTheLinkRuns) {
  OpenIncoming();
  node2_->link->Start();
  ASSERT_TRUE(Eventually([&] { return Raw(keys_.Node("node2")).has_value(); }));
  EndAndPlaceOnNode2();
  ExpectStartedOnNode2();
}

TEST_F(TargetThreadsTest, EndedBeforeTheLinkStarted) {
  OpenIncoming();
  EndAndPlaceOnNode2();
  node2_->link->Start();
  ExpectStartedOnNode2();
}

// ---- etcd grants: a write etcd refuses for permission is retried, never final ----

// etcd's answer to a write the node's role holds no grant for.
Status NotGranted() { return PermissionDeniedError("etcdserver: permission denied"); }

TEST_F(ClusterLinkTest, AStatusWriteNotGrantedYetIsRetriedNotFailed) {
  bool granted = false;
  gated_.refuse_commit = [&](const Txn& txn) {
    return !granted && GatedStateStore::Compares(txn, keys_.Workload("work")) ? NotGranted()
                                                                              : Status::Ok();
  };
  Put(Workload("node1", WorkloadPhase::kScheduled, 3));
  Status s = node1_->link->Reconcile("w/work");
  EXPECT_EQ(s.code(), Code::kRetry) << s.ToString();
  EXPECT_NE(s.message().find("not granted"), std::string::npos) << s.message();
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kScheduled);
  granted = true;  // the controller's grant arrives
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  EXPECT_EQ(GetWorkload().status.phase, WorkloadPhase::kRunning);
}

TEST_F(ClusterLinkTest, ATransferNotGrantedIsRetryAndWritesNothing) {
  bool granted = false;
  gated_.refuse_commit = [&](const Txn& txn) {
    return !granted && IsTransfer(txn, "m-1") ? NotGranted() : Status::Ok();
  };
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  Status s = node1_->link->Transfer(Report("m-1"));
  EXPECT_EQ(s.code(), Code::kRetry) << "a refused ownership write must leave the outcome open";
  EXPECT_EQ(GetWorkload().status.node, "node1");
  EXPECT_EQ(GetWorkload().status.epoch, 3);
  granted = true;
  ASSERT_TRUE(node1_->link->Transfer(Report("m-1")).ok());
  EXPECT_EQ(GetWorkload().status.node, "node2");
}

TEST_F(ClusterLinkTest, AMigrationWhoseTransferIsNotGrantedAtFirstStillSucceeds) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  int refused = 0;
  gated_.refuse_commit = [&](const Txn& txn) {
    return IsTransfer(txn, "m-1") && ++refused <= 2 ? NotGranted() : Status::Ok();
  };
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  EXPECT_GT(refused, 2) << "the transfer was not retried after the refusals";
  MigrationRecord m = GetMigration("m-1");
  EXPECT_EQ(m.phase, api::MigrationPhase::kSucceeded) << m.error;
  WorkloadRecord w = GetWorkload();
  EXPECT_EQ(w.status.node, "node2");
  EXPECT_EQ(w.status.epoch, 4);
  EXPECT_EQ(w.status.migration, "");
  // Runs once, on node2, with its state.
  EXPECT_FALSE(node1_->runtime.Has("work"));
  EXPECT_EQ(node2_->runtime.State("work"), TaskState::kRunning);
  EXPECT_EQ(node2_->runtime.Counter("work"), 7);
}

// Issue 13, "Also": the migration record says which fault the migration met
// and how it ended, from the source's report or the source's refusal.
TEST_F(ClusterLinkTest, TheRecordNamesTheFaultAndHowItEnded) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  to_node2_->CutTransfer();
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  MigrationRecord m = GetMigration("m-1");
  ASSERT_EQ(m.phase, api::MigrationPhase::kRolledBack);
  ASSERT_TRUE(m.fault.has_value());
  EXPECT_EQ(m.fault->kind, api::FaultKind::kTransferFailed);
  EXPECT_EQ(m.fault->phase, api::MigrationPhase::kTransferring);
  EXPECT_EQ(m.fault->node, "node2");
  ASSERT_TRUE(m.resolution.has_value());
  EXPECT_EQ(m.resolution->outcome, api::MigrationOutcome::kRolledBack);
  EXPECT_EQ(m.resolution->decided_by, api::Decider::kSource);
}

TEST_F(ClusterLinkTest, ARefusedOrderNamesWhy) {
  RunWorkOnNode1();
  PutNode("node2", "http://node2:7700");
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.cancel_requested_ms = 5555;
  order.cancelled_by = "api";
  Put(order);
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  MigrationRecord m = GetMigration("m-1");
  ASSERT_EQ(m.phase, api::MigrationPhase::kFailed);
  ASSERT_TRUE(m.fault.has_value());
  EXPECT_EQ(m.fault->kind, api::FaultKind::kCancelled);
  EXPECT_EQ(m.fault->phase, api::MigrationPhase::kPending);
  EXPECT_EQ(m.fault->node, "");
  EXPECT_EQ(m.fault->message, "cancelled by api");
  ASSERT_TRUE(m.resolution.has_value());
  EXPECT_EQ(m.resolution->outcome, api::MigrationOutcome::kUntouched);
  EXPECT_EQ(m.resolution->decided_by, api::Decider::kSource);
}

TEST_F(ClusterLinkTest, AnOrderWithoutAJournalSaysTheSourceLostIt) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  MigrationRecord order = Order("m-1");
  order.phase = api::MigrationPhase::kTransferring;
  Put(order);
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  MigrationRecord m = GetMigration("m-1");
  ASSERT_EQ(m.phase, api::MigrationPhase::kFailed);
  ASSERT_TRUE(m.fault.has_value());
  EXPECT_EQ(m.fault->kind, api::FaultKind::kSourceRestarted);
  EXPECT_EQ(m.fault->phase, api::MigrationPhase::kTransferring);
  EXPECT_EQ(m.fault->node, "node1");
  ASSERT_TRUE(m.resolution.has_value());
  EXPECT_EQ(m.resolution->outcome, api::MigrationOutcome::kUntouched);
  EXPECT_EQ(m.resolution->decided_by, api::Decider::kSource);
}

// The fault soak (session 10, seed 61): a target's agent was killed right
// after it committed an arrival, before its link had claimed the copy; the
// controller restarted the workload elsewhere (node loss), and when the node
// came back its agent restarted the dead arrival as a standalone workload,
// without asking the cluster: two copies ran for four minutes. An arrival in
// cluster mode is the cluster's from its commit (managed, epoch 0 until the
// link claims it), so the restart asks the cluster first and the link fences
// it.
TEST_F(ClusterLinkTest, AnArrivalKilledBeforeTheLinkClaimedItIsNeverRestartedAsStandalone) {
  RunWorkOnNode1();
  Put(Workload("node1", WorkloadPhase::kMigrating, 3, "m-1"));
  Put(Order("m-1"));
  auto r = node1_->agent->MigrateManaged({"m-1", "work", "node2", "http://node2:7700", {}},
                                         *node1_->link, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->phase, MigrationPhase::kSucceeded);
  // node2's link has not looked at the arrival yet (it would claim it now).
  auto arrived = node2_->agent->Local("work");
  ASSERT_TRUE(arrived.has_value());
  EXPECT_TRUE(arrived->managed) << "an arrival in cluster mode is the cluster's from its commit";

  // node2 loses power here; the controller restarts the workload on node1.
  const int64_t epoch = GetWorkload().status.epoch;
  ASSERT_EQ(GetWorkload().status.node, "node2");
  Put(Workload("node1", WorkloadPhase::kScheduled, epoch + 1));
  node2_->runtime.LoseTask("work");
  const int starts = node2_->runtime.Calls("StartTask");

  // node2 boots with its old state.
  Rebooted node2 = Reboot(*node2_, "node2", no_transport_);
  Agent& again = *node2.agent;
  ClusterLink& link = *node2.link;
  ASSERT_TRUE(again.Start().ok());
  clock_.Advance(std::chrono::seconds(2));
  again.Tick();
  EXPECT_EQ(node2_->runtime.Calls("StartTask"), starts)
      << "the dead arrival was started again on node2 beside node1's copy";
  ASSERT_TRUE(link.Reconcile("w/work").ok());
  EXPECT_FALSE(node2_->runtime.Has("work")) << "the copy the cluster gave away is fenced";
  EXPECT_FALSE(again.Local("work").has_value());
}

}  // namespace
}  // namespace kmosix::agent
