// The Kubernetes bridge (controller/kube/bridge.h) against the fake API
// server (tests/fakes/fake_kube_client.h) and a real Controller on the fake
// store; the tests play the agents' part by writing the records an agent
// would (running, migration phases), as controller_test does.
#include "controller/kube/bridge.h"

#include <gtest/gtest.h>

#include <thread>

#include "controller/controller_fixture.h"
#include "controller/kube/agent_records.h"
#include "controller/kube/codec.h"
#include "fakes/fake_kube_client.h"
#include "kube/client.h"

namespace kmosix::controller {
namespace {

using bridge::Bridge;
using bridge::BridgeOptions;
using bridge::MigrationIdFor;
using bridge::WorkloadNameFor;

// The fake API server, counting the status writes that went through (a 409
// on a stale cache is a retry, not a change written).
class CountingClient : public kube::Client {
 public:
  explicit CountingClient(kube::Client& inner) : inner_(inner) {}
  int StatusWrites() const { return status_writes_.load(); }

  StatusOr<kube::ObjectList> List(const kube::Resource& r, const std::string& ns,
                                  const kube::ListOptions& o) override {
    return inner_.List(r, ns, o);
  }
  Status Watch(const kube::Resource& r, const std::string& ns, const std::string& rv,
               const kube::ListOptions& o, const kube::WatchHandler& h,
               const std::atomic<bool>& stop) override {
    return inner_.Watch(r, ns, rv, o, h, stop);
  }
  StatusOr<json> Get(const kube::Resource& r, const std::string& ns,
                     const std::string& name) override {
    return inner_.Get(r, ns, name);
  }
  StatusOr<json> Create(const kube::Resource& r, const std::string& ns, const json& o) override {
    return inner_.Create(r, ns, o);
  }
  StatusOr<json> Update(const kube::Resource& r, const std::string& ns, const json& o) override {
    return inner_.Update(r, ns, o);
  }
  StatusOr<json> UpdateStatus(const kube::Resource& r, const std::string& ns,
                              const json& o) override {
    auto w = inner_.UpdateStatus(r, ns, o);
    if (w.ok()) ++status_writes_;
    return w;
  }
  StatusOr<json> MergePatch(const kube::Resource& r, const std::string& ns, const std::string& name,
                            const json& patch) override {
    return inner_.MergePatch(r, ns, name, patch);
  }
  Status Delete(const kube::Resource& r, const std::string& ns, const std::string& name,
                const std::string& uid) override {
    return inner_.Delete(r, ns, name, uid);
  }

 private:
  kube::Client& inner_;
  std::atomic<int> status_writes_{0};
};

class BridgeTest : public ControllerTest {
 protected:
  ~BridgeTest() override {
    for (auto& b : bridges_) b->Stop();
  }

  ControllerOptions BridgeOptionsFor(const std::string& id) {
    ControllerOptions o = Options(id);
    o.balance = false;
    o.order_timeout = std::chrono::seconds(60);
    o.node_loss_restart_delay = std::chrono::milliseconds(300);
    return o;
  }

  // A controller replica with its bridge, registered before it starts.
  Controller& StartReplica(const std::string& id, size_t keep_finished = 10) {
    controllers_.push_back(
        std::make_unique<Controller>(store_, clock_, random_, BridgeOptionsFor(id), nullptr));
    BridgeOptions bo;
    bo.keep_finished = keep_finished;
    bo.identity = id;
    bo.wait_poll = std::chrono::milliseconds(50);
    bo.resync = std::chrono::milliseconds(200);
    bridges_.push_back(
        std::make_unique<Bridge>(counting_, *controllers_.back(), clock_, random_, bo));
    bridges_.back()->Start();
    controllers_.back()->Start();
    return *controllers_.back();
  }

  json Apply(const kube::Resource& r, const std::string& ns, json object) {
    auto created = kube_.Create(r, ns, object);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? *created : json();
  }

  std::optional<json> Object(const kube::Resource& r, const std::string& ns,
                             const std::string& name) {
    auto got = kube_.Get(r, ns, name);
    if (!got.ok()) return std::nullopt;
    return *got;
  }

  std::string StatusField(const kube::Resource& r, const std::string& ns, const std::string& name,
                          const std::string& field) {
    auto o = Object(r, ns, name);
    if (!o || !o->contains("status") || !(*o)["status"].contains(field)) return "";
    const json& v = (*o)["status"][field];
    return v.is_string() ? v.get<std::string>() : v.dump();
  }

  std::string Condition(const kube::Resource& r, const std::string& ns, const std::string& name,
                        const std::string& type) {
    auto o = Object(r, ns, name);
    if (!o || !o->contains("status")) return "";
    for (const auto& c : (*o)["status"].value("conditions", json::array()))
      if (c.value("type", "") == type) return c.value("status", "") + "/" + c.value("reason", "");
    return "";
  }

  static json Workload(const std::string& name, const std::string& node = "") {
    json spec = {{"image", "kmosix.local/demo:latest"},
                 {"command", {"/bin/kmosix-demo", "--mem", "64"}},
                 {"resources", {{"cpu", "250m"}, {"memory", "64Mi"}}}};
    if (!node.empty()) spec["nodeName"] = node;
    return {
        {"apiVersion", "kmosix.io/v1alpha1"},
        {"kind", "MigratableWorkload"},
        {"metadata", {{"name", name}, {"namespace", "default"}, {"labels", {{"team", "render"}}}}},
        {"spec", spec}};
  }

  // Plays the owner agent: the workload runs on the node the controller chose.
  void RunWhenScheduled(const std::string& wname) {
    ASSERT_TRUE(Eventually([&] {
      auto w = ControllerTest::Workload(wname);
      return w && !w->status.node.empty();
    })) << wname
        << " never scheduled";
    MarkRunning(wname, clock_.WallMillis());
  }

  void PutMigration(const api::Migration& m) {
    ASSERT_TRUE(store_.Put(keys_.Migration(m.id), cluster::MigrationToJson(m).dump()).ok());
  }
  void PutWorkload(const api::Workload& w) {
    ASSERT_TRUE(store_.Put(keys_.Workload(w.spec.name), cluster::WorkloadToJson(w).dump()).ok());
  }
  std::optional<api::Migration> MigrationById(const std::string& id) {
    for (auto& m : Migrations())
      if (m.id == id) return m;
    return std::nullopt;
  }

  // Plays the source agent finishing migration `id` successfully.
  void Succeed(const std::string& id, double downtime = 0.452) {
    auto m = MigrationById(id);
    ASSERT_TRUE(m);
    auto w = ControllerTest::Workload(m->workload);
    ASSERT_TRUE(w);
    testing::SucceedRecords(*w, *m, clock_.WallMillis(), downtime);
    PutWorkload(*w);
    PutMigration(*m);
  }

  size_t EventsWithReason(const std::string& reason) {
    auto list = kube_.List(kube::CoreEvents(), "", {});
    size_t n = 0;
    if (list.ok())
      for (const auto& e : list->items) n += e.value("reason", "") == reason;
    return n;
  }

  kube::FakeClient kube_;
  CountingClient counting_{kube_};
  std::vector<std::unique_ptr<Bridge>> bridges_;
};

const kube::Resource kMW = kube::MigratableWorkloads();
const kube::Resource kMig = kube::Migrations();

TEST_F(BridgeTest, ANodeUnfitForMigrationsGetsAWarningEventOnItsNode) {
  const std::string why = "CRIU not usable: criu is version 3.17.1; kmosix needs CRIU >= 4.0";
  int64_t lease = PublishNode("node1", 0.1, {}, 0, std::nullopt, why);
  PublishNode("node2", 0.1);
  Controller& c = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  ASSERT_TRUE(Eventually([&] { return EventsWithReason("MigrationsUnavailable") == 1; }));
  auto list = kube_.List(kube::CoreEvents(), "", {});
  ASSERT_TRUE(list.ok());
  for (const auto& e : list->items) {
    if (e.value("reason", "") != "MigrationsUnavailable") continue;
    EXPECT_EQ(e["metadata"]["namespace"], "default");
    EXPECT_EQ(e["type"], "Warning");
    EXPECT_EQ(e["involvedObject"]["kind"], "Node");
    EXPECT_EQ(e["involvedObject"]["name"], "node1");
    EXPECT_NE(e["message"].get<std::string>().find(why), std::string::npos) << e.dump();
  }
  // Resyncs (every 200 ms here) do not repeat it.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(EventsWithReason("MigrationsUnavailable"), 1u);
  EXPECT_EQ(EventsWithReason("MigrationsAvailable"), 0u) << "node2 was never unfit";
  // Fit again: said once.
  PublishNode("node1", 0.1, {}, lease);
  ASSERT_TRUE(Eventually([&] { return EventsWithReason("MigrationsAvailable") == 1; }));
  EXPECT_EQ(EventsWithReason("MigrationsUnavailable"), 1u);
}

TEST_F(BridgeTest, AppliedWorkloadRunsAndItsStatusFollows) {
  PublishNode("node1", 0.1);
  Controller& c = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return c.IsLeader(); }));
  Apply(kMW, "default", Workload("counter"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "phase") == "Running"; }));
  EXPECT_EQ(StatusField(kMW, "default", "counter", "node"), "node1");
  EXPECT_EQ(StatusField(kMW, "default", "counter", "workload"), wname);
  EXPECT_EQ(Condition(kMW, "default", "counter", "Accepted"), "True/Accepted");
  EXPECT_EQ(Condition(kMW, "default", "counter", "Placed"), "True/Placed");
  EXPECT_EQ(Condition(kMW, "default", "counter", "Running"), "True/Running");
  auto rec = ControllerTest::Workload(wname);
  ASSERT_TRUE(rec && rec->spec.origin);
  EXPECT_EQ(rec->spec.origin->namespace_, "default");
  EXPECT_EQ(rec->spec.origin->name, "counter");
  EXPECT_EQ(rec->spec.image, "kmosix.local/demo:latest");
  EXPECT_DOUBLE_EQ(rec->spec.cpus, 0.25);
  EXPECT_EQ(rec->spec.memory_mib, 64);
  auto o = Object(kMW, "default", "counter");
  ASSERT_TRUE(o);
  EXPECT_EQ((*o)["metadata"]["finalizers"], json::array({bridge::kFinalizer}));
  // Events go out from the recorder's thread.
  EXPECT_TRUE(Eventually([&] { return EventsWithReason("Placed") == 1; }));

  // Status is written once per real change: a quiet world writes nothing.
  // (Counted once the last write's call has returned: the object shows the
  // new status a moment before the counting client sees the call end.)
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int writes = counting_.StatusWrites();
  // ... and once the Placed event is out, no more of it either.
  EXPECT_EQ(EventsWithReason("Placed"), 1u) << "one event per transition";
  EXPECT_LE(writes, 3) << "status writes for: accepted, scheduled, running";
  // Resyncs (every 200 ms here) reconcile every key again without writing.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(counting_.StatusWrites(), writes);
}

// Issue 13, node loss: spec.restartPolicy reaches the workload; a recovery
// shows in status.recovery with one Recovered event.
TEST_F(BridgeTest, ARestartPolicyReachesTheWorkloadAndARecoveryShowsInStatus) {
  int64_t lease1 = PublishNode("node1", 0.0);
  PublishNode("node2", 0.5);
  Controller& c = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return c.IsLeader(); }));
  json object = Workload("counter", "node1");
  object["spec"]["restartPolicy"] = "FromImage";
  Apply(kMW, "default", object);
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  auto rec = ControllerTest::Workload(wname);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->spec.restart_policy, api::RestartPolicy::kFromImage);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "phase") == "Running"; }));

  ASSERT_TRUE(store_.RevokeLease(lease1).ok());  // node1 lost
  ASSERT_TRUE(Eventually(
      [&] {
        auto w = ControllerTest::Workload(wname);
        return w && w->status.node == "node2";
      },
      std::chrono::seconds(15)));
  MarkRunning(wname, clock_.WallMillis());
  ASSERT_TRUE(Eventually([&] {
    return StatusField(kMW, "default", "counter", "node") == "node2" &&
           StatusField(kMW, "default", "counter", "phase") == "Running";
  }));
  auto o = Object(kMW, "default", "counter");
  ASSERT_TRUE(o);
  const json& recovery = (*o)["status"]["recovery"];
  EXPECT_EQ(recovery["policy"], "FromImage");
  EXPECT_EQ(recovery["lostNode"], "node1");
  EXPECT_EQ(recovery["count"], 1);
  EXPECT_TRUE(Eventually([&] { return EventsWithReason("Recovered") == 1; }));
  EXPECT_EQ(EventsWithReason("Moved"), 0u) << "a recovery is not announced as a move";
}

TEST_F(BridgeTest, SameNameInTwoNamespacesIsTwoWorkloads) {
  PublishNode("node1", 0.1);
  StartReplica("c1");
  json other = Workload("counter");
  other["metadata"]["namespace"] = "team-b";
  Apply(kMW, "default", Workload("counter"));
  Apply(kMW, "team-b", other);
  ASSERT_TRUE(Eventually([&] {
    return ControllerTest::Workload(WorkloadNameFor("default", "counter")) &&
           ControllerTest::Workload(WorkloadNameFor("team-b", "counter"));
  }));
}

TEST_F(BridgeTest, DeeperValidationFailureIsAcceptedFalseAndRunsNothing) {
  PublishNode("node1", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("lost", "node9"));  // passes the schema: no such node
  ASSERT_TRUE(Eventually(
      [&] { return Condition(kMW, "default", "lost", "Accepted").rfind("False/", 0) == 0; }));
  EXPECT_FALSE(ControllerTest::Workload(WorkloadNameFor("default", "lost")));
  EXPECT_NE(StatusField(kMW, "default", "lost", "message").find("node9"), std::string::npos);
  EXPECT_EQ(Condition(kMW, "default", "lost", "Accepted"), "False/NodeNotFound");
  EXPECT_TRUE(Eventually([&] { return EventsWithReason("NodeNotFound") >= 1; }));
}

TEST_F(BridgeTest, AnImageNoNodeHoldsIsAcceptedFalseUntilOneDoes) {
  const int64_t lease =
      PublishNode("node1", 0.1, {}, 0, std::vector<std::string>{"kmosix.local/other:1"});
  StartReplica("c1");
  Apply(kMW, "default", Workload("imageless"));  // kmosix.local/demo:latest
  ASSERT_TRUE(Eventually([&] {
    return Condition(kMW, "default", "imageless", "Accepted") == "False/ImageNotFound";
  })) << Condition(kMW, "default", "imageless", "Accepted");
  EXPECT_FALSE(ControllerTest::Workload(WorkloadNameFor("default", "imageless")));
  EXPECT_NE(StatusField(kMW, "default", "imageless", "message").find("kmosix.local/demo:latest"),
            std::string::npos);
  EXPECT_TRUE(Eventually([&] { return EventsWithReason("ImageNotFound") == 1; }));
  // Level-based: once the node holds it, the next look accepts it.
  PublishNode("node1", 0.1, {}, lease,
              std::vector<std::string>{"kmosix.local/demo:latest", "kmosix.local/other:1"});
  ASSERT_TRUE(Eventually([&] {
    return ControllerTest::Workload(WorkloadNameFor("default", "imageless")).has_value();
  }));
  ASSERT_TRUE(Eventually(
      [&] { return Condition(kMW, "default", "imageless", "Accepted") == "True/Accepted"; }));
}

TEST_F(BridgeTest, DeleteStopsTheWorkloadThenLetsTheObjectGo) {
  PublishNode("node1", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("counter"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  // node1 reports it running.
  const int64_t lease = PublishNode("node1", 0.3, {{wname, {0.25, 64 << 20}}});
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "phase") == "Running"; }));
  ASSERT_TRUE(kube_.Delete(kMW, "default", "counter", "").ok());
  ASSERT_TRUE(Eventually([&] { return !ControllerTest::Workload(wname); }));
  // The node still reports it: the object stays, held by the finalizer.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(Object(kMW, "default", "counter"));
  PublishNode("node1", 0.05, {}, lease);  // the agent stopped it
  ASSERT_TRUE(Eventually([&] { return !Object(kMW, "default", "counter"); }));
}

// The CI race: the workload started and was deleted before its node sampled
// it, so no load listed it yet. A load from before the delete says nothing;
// the object goes only after its node published one sampled after the delete.
TEST_F(BridgeTest, DeleteWaitsForALoadSampledAfterTheDelete) {
  const int64_t lease = PublishNode("node1", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("quick"));
  const std::string wname = WorkloadNameFor("default", "quick");
  RunWhenScheduled(wname);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "quick", "phase") == "Running"; }));
  ASSERT_TRUE(kube_.Delete(kMW, "default", "quick", "").ok());
  ASSERT_TRUE(Eventually([&] { return !ControllerTest::Workload(wname); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(Object(kMW, "default", "quick")) << "let go on a load older than the delete";
  PublishNode("node1", 0.05, {}, lease);  // sampled now: the agent stopped it
  ASSERT_TRUE(Eventually([&] { return !Object(kMW, "default", "quick"); }));
}

TEST_F(BridgeTest, MigrationObjectOrdersOnceAndReportsTheOutcome) {
  PublishNode("node1", 0.1);
  PublishNode("node2", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("counter", "node1"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "phase") == "Running"; }));
  json mig =
      Apply(kMig, "default", bridge::MigrationObject("default", "move", {"counter", "node2"}));
  const std::string id = MigrationIdFor(mig["metadata"]["uid"]);
  ASSERT_TRUE(Eventually([&] { return MigrationById(id).has_value(); }));
  EXPECT_EQ(MigrationById(id)->requested_by, "user");
  EXPECT_EQ(MigrationById(id)->target, "node2");
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, "default", "move", "id") == id; }));
  EXPECT_EQ(StatusField(kMig, "default", "move", "sourceNode"), "node1");
  auto o = Object(kMig, "default", "move");
  EXPECT_EQ((*o)["metadata"]["labels"][bridge::kLabelWorkload], "counter");
  EXPECT_EQ((*o)["metadata"]["labels"][bridge::kLabelRequestedBy], "user");
  Succeed(id);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMig, "default", "move", "phase") == "Succeeded"; }));
  EXPECT_EQ(StatusField(kMig, "default", "move", "downtimeSeconds"), "0.452");
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "node") == "node2"; }));
  EXPECT_EQ(StatusField(kMW, "default", "counter", "migrations"), "1");
  EXPECT_TRUE(Eventually([&] { return EventsWithReason("Succeeded") >= 1; }));
  EXPECT_TRUE(Eventually([&] { return EventsWithReason("Migrated") >= 1; }));
  // Exactly one order for the object, however often it was reconciled.
  size_t orders = 0;
  for (const auto& m : Migrations()) orders += m.workload == wname;
  EXPECT_EQ(orders, 1u);
}

TEST_F(BridgeTest, RefusedMigrationIsFailedWithTheReason) {
  PublishNode("node1", 0.1);
  StartReplica("c1");
  Apply(kMig, "default", bridge::MigrationObject("default", "ghost", {"nobody", "node1"}));
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMig, "default", "ghost", "phase") == "Failed"; }));
  EXPECT_EQ(Condition(kMig, "default", "ghost", "Accepted"), "False/WorkloadNotFound");
  EXPECT_TRUE(Migrations().empty());
}

TEST_F(BridgeTest, DeletingAMigrationBeforeCommitCancelsIt) {
  PublishNode("node1", 0.1);
  PublishNode("node2", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("counter", "node1"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "phase") == "Running"; }));
  json mig =
      Apply(kMig, "default", bridge::MigrationObject("default", "move", {"counter", "node2"}));
  const std::string id = MigrationIdFor(mig["metadata"]["uid"]);
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, "default", "move", "id") == id; }));
  ASSERT_TRUE(kube_.Delete(kMig, "default", "move", "").ok());
  ASSERT_TRUE(Eventually([&] {
    auto m = MigrationById(id);
    return m && m->cancel_requested_ms > 0;
  }));
  // Not final yet: the finalizer holds the object until the source rolled back.
  EXPECT_TRUE(Object(kMig, "default", "move"));
  auto m = MigrationById(id);
  auto w = ControllerTest::Workload(wname);
  testing::RollBackRecords(*w, *m, clock_.WallMillis());
  PutMigration(*m);
  PutWorkload(*w);
  ASSERT_TRUE(Eventually([&] { return !Object(kMig, "default", "move"); }));
  EXPECT_EQ(ControllerTest::Workload(wname)->status.node, "node1");
}

TEST_F(BridgeTest, MigrationsKmosixOrdersAppearAsObjectsAndOldOnesAreTrimmed) {
  PublishNode("node1", 0.1);
  PublishNode("node2", 0.1);
  Controller& c = StartReplica("c1", /*keep_finished=*/2);
  ASSERT_TRUE(Eventually([&] { return c.IsLeader(); }));
  Apply(kMW, "default", Workload("counter", "node1"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    const std::string target = i % 2 == 0 ? "node2" : "node1";
    api::MigrationRequest req;
    req.workload = wname;
    req.target = target;
    auto m = c.RequestMigration(req);  // as the REST API would
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ids.push_back(m->id);
    ASSERT_TRUE(Eventually([&] { return Object(kMig, "default", m->id).has_value(); }))
        << "migration " << m->id << " not mirrored";
    auto o = Object(kMig, "default", m->id);
    EXPECT_EQ((*o)["metadata"]["labels"][bridge::kLabelRequestedBy], "api");
    Succeed(m->id);
    ASSERT_TRUE(
        Eventually([&] { return StatusField(kMig, "default", m->id, "phase") == "Succeeded"; }));
    clock_.SleepFor(std::chrono::milliseconds(1100));  // completion times one second apart
  }
  // Two kept, the oldest removed first.
  ASSERT_TRUE(Eventually(
      [&] { return !Object(kMig, "default", ids[0]) && !Object(kMig, "default", ids[1]); }));
  EXPECT_TRUE(Object(kMig, "default", ids[2]));
  EXPECT_TRUE(Object(kMig, "default", ids[3]));
  // Trimmed ones are not mirrored again.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(Object(kMig, "default", ids[0]));
}

TEST_F(BridgeTest, NewLeaderAfterAKillOrdersNothingTwice) {
  PublishNode("node1", 0.1);
  PublishNode("node2", 0.1);
  Controller& first = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return first.IsLeader(); }));
  Apply(kMW, "default", Workload("counter", "node1"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  json mig =
      Apply(kMig, "default", bridge::MigrationObject("default", "move", {"counter", "node2"}));
  const std::string id = MigrationIdFor(mig["metadata"]["uid"]);
  ASSERT_TRUE(Eventually([&] { return MigrationById(id).has_value(); }));
  // The leader dies (its status write may or may not have happened).
  bridges_[0]->Stop();
  first.Stop();
  Controller& second = StartReplica("c2");
  ASSERT_TRUE(Eventually([&] { return second.IsLeader(); }, std::chrono::seconds(15)));
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, "default", "move", "id") == id; }));
  Succeed(id);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMig, "default", "move", "phase") == "Succeeded"; }));
  size_t orders = 0, records = 0;
  for (const auto& m : Migrations()) orders += m.workload == wname;
  for (const auto& v : second.ListWorkloads()) records += v.workload.spec.origin.has_value();
  EXPECT_EQ(orders, 1u);
  EXPECT_EQ(records, 1u);
}

// The leader's retention may remove a finished record while the Migration
// object's status still shows it in flight (the bridge was away): the
// object, whose status names the id, is never ordered a second time.
TEST_F(BridgeTest, AMigrationWhoseRecordWasRemovedIsNotOrderedAgain) {
  PublishNode("node1", 0.1);
  PublishNode("node2", 0.1);
  Controller& first = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return first.IsLeader(); }));
  Apply(kMW, "default", Workload("counter", "node1"));
  RunWhenScheduled(WorkloadNameFor("default", "counter"));
  // No target: ordered again, the policy would move it once more.
  json mig = Apply(kMig, "default", bridge::MigrationObject("default", "move", {"counter", ""}));
  const std::string id = MigrationIdFor(mig["metadata"]["uid"]);
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, "default", "move", "id") == id; }));
  ASSERT_NE(StatusField(kMig, "default", "move", "phase"), "Succeeded");
  const std::string phase = StatusField(kMig, "default", "move", "phase");
  bridges_[0]->Stop();
  first.Stop();
  Succeed(id);                                           // finished while no bridge looked...
  ASSERT_TRUE(store_.Delete(keys_.Migration(id)).ok());  // ...and removed by retention
  Controller& second = StartReplica("c2");
  ASSERT_TRUE(Eventually([&] { return second.IsLeader(); }, std::chrono::seconds(15)));
  ASSERT_TRUE(Eventually([&] { return bridges_.back()->Synced(); }));
  // Several resyncs (200 ms each) later, still no second order.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_FALSE(MigrationById(id).has_value()) << "the Migration was ordered again";
  size_t orders = 0;
  for (const auto& m : Migrations()) orders += m.workload == WorkloadNameFor("default", "counter");
  EXPECT_EQ(orders, 0u);
  EXPECT_EQ(StatusField(kMig, "default", "move", "phase"), phase) << "its status was rewritten";
}

TEST_F(BridgeTest, CutWatchesAndCompactionLoseNothing) {
  const int64_t lease = PublishNode("node1", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("a"));
  ASSERT_TRUE(Eventually(
      [&] { return ControllerTest::Workload(WorkloadNameFor("default", "a")).has_value(); }));
  kube_.Compact();
  kube_.EndWatches(RetryError("connection reset"));
  Apply(kMW, "default", Workload("b"));
  ASSERT_TRUE(Eventually(
      [&] { return ControllerTest::Workload(WorkloadNameFor("default", "b")).has_value(); }));
  ASSERT_TRUE(kube_.Delete(kMW, "default", "a", "").ok());
  kube_.EndWatches(RetryError("connection reset"));
  ASSERT_TRUE(
      Eventually([&] { return !ControllerTest::Workload(WorkloadNameFor("default", "a")); }));
  PublishNode("node1", 0.1, {}, lease);  // the agent's next sample, without it
  ASSERT_TRUE(Eventually([&] { return !Object(kMW, "default", "a"); }));
}

TEST_F(BridgeTest, NodeNameChangeMovesTheWorkloadOnce) {
  PublishNode("node1", 0.1);
  PublishNode("node2", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("counter", "node1"));
  const std::string wname = WorkloadNameFor("default", "counter");
  RunWhenScheduled(wname);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "phase") == "Running"; }));
  EXPECT_TRUE(Migrations().empty());  // placement on nodeName is not a move
  auto o = Object(kMW, "default", "counter");
  ASSERT_TRUE(
      kube_.MergePatch(kMW, "default", "counter", {{"spec", {{"nodeName", "node2"}}}}).ok());
  ASSERT_TRUE(Eventually([&] { return Migrations().size() == 1; }));
  const api::Migration m = Migrations()[0];
  EXPECT_EQ(m.target, "node2");
  EXPECT_EQ(m.requested_by, "user");
  Succeed(m.id);
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "default", "counter", "node") == "node2"; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(Migrations().size(), 1u);
}

TEST_F(BridgeTest, PolicyForPicksTheMostSpecificMatch) {
  PublishNode("node1", 0.1);
  StartReplica("c1");
  Apply(kMW, "default", Workload("counter"));
  bridge::MigrationPolicy broad{"broad", {}, {}};
  broad.settings.stability = 2.0;
  bridge::MigrationPolicy narrow{"narrow", {}, {}};
  narrow.selector.match_labels = {{"team", "render"}};
  narrow.settings.stability = 1.5;
  Apply(kube::MigrationPolicies(), "", bridge::MigrationPolicyObject(broad));
  Apply(kube::MigrationPolicies(), "", bridge::MigrationPolicyObject(narrow));
  const std::string wname = WorkloadNameFor("default", "counter");
  ASSERT_TRUE(Eventually([&] {
    auto p = bridges_[0]->ForWorkload(wname);
    return p && p->stability == 1.5;
  }));
  EXPECT_FALSE(bridges_[0]->ForWorkload("a-rest-workload"));
  ASSERT_TRUE(bridges_[0]->ForCluster());
  EXPECT_EQ(bridges_[0]->ForCluster()->stability, 2.0);  // the one selecting everything
  const kube::Resource kPol = kube::MigrationPolicies();
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kPol, "", "narrow", "matchedWorkloads") == "1"; }));
  EXPECT_EQ(Condition(kPol, "", "narrow", "Accepted"), "True/Accepted");
  // The API server's schema refuses this; the bridge says so if one gets through.
  bridge::MigrationPolicy bad{"bad", {}, {}};
  json bad_object = bridge::MigrationPolicyObject(bad);
  bad_object["spec"]["stabilityFactor"] = 0.5;
  Apply(kPol, "", bad_object);
  ASSERT_TRUE(
      Eventually([&] { return Condition(kPol, "", "bad", "Accepted") == "False/Invalid"; }));
}

TEST_F(BridgeTest, MigrationPolicyReachesTheBalancer) {
  PublishNode("node2", 0.0);
  Controller& c = StartReplica("c1");
  const std::string wname = WorkloadNameFor("default", "counter");
  const int64_t lease = PublishNode("node1", 0.1);
  Apply(kMW, "default", Workload("counter", "node1"));
  RunWhenScheduled(wname);
  // node1 runs it at a full core: the balancer would move it to node2.
  PublishNode("node1", 1.5, {{wname, {1.0, 64 << 20}}}, lease);
  auto moves = [&] {
    std::vector<std::string> out;
    for (const auto& m : c.Decisions().moves) out.push_back(m.workload);
    return out;
  };
  ASSERT_TRUE(Eventually([&] { return moves() == std::vector<std::string>{wname}; }));
  bridge::MigrationPolicy off{"render-stays", {}, {}};
  off.selector.match_labels = {{"team", "render"}};
  off.settings.enabled = false;
  Apply(kube::MigrationPolicies(), "", bridge::MigrationPolicyObject(off));
  ASSERT_TRUE(Eventually([&] { return moves().empty(); }));
  bool said = false;
  for (const auto& line : c.Decisions().held_back)
    said |= line.find("held by a MigrationPolicy") != std::string::npos;
  EXPECT_TRUE(said);
  // A cluster-wide policy (empty selector) sets the stability the dry run reports.
  bridge::MigrationPolicy all{"everyone", {}, {}};
  all.settings.stability = 1.7;
  Apply(kube::MigrationPolicies(), "", bridge::MigrationPolicyObject(all));
  ASSERT_TRUE(Eventually([&] { return c.Decisions().stability == 1.7; }));
}

}  // namespace
}  // namespace kmosix::controller
