// The controller against the fake StateStore: placement, readiness and Lost,
// balancing orders, the leader resolving migrations its source cannot finish,
// failover between two replicas, and the API's refusals of bad input.
//
// Agents are simulated by writing their records (nodes/<n> under a lease,
// workload status) straight into the store. The controller runs its real
// threads on the system clock with short intervals; the store's leases run on
// a fake clock (they end only when a test revokes them).
#include "controller/controller.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <mutex>
#include <thread>

#include "cluster/records.h"
#include "controller/controller_fixture.h"
#include "node-agent/gated_state_store.h"

namespace kmosix::controller {
namespace {

TEST_F(ControllerTest, PlacesOnTheLeastLoadedNodeOrTheRequestedOne) {
  PublishNode("n1", 0.9);
  PublishNode("n2", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));

  Create(c, {{"name", "w1"}, {"image", "demo"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  EXPECT_EQ(Workload("w1")->status.node, "n2");
  EXPECT_GE(Workload("w1")->status.epoch, 1);

  Create(c, {{"name", "w2"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w2");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  EXPECT_EQ(Workload("w2")->status.node, "n1");
}

TEST_F(ControllerTest, NodeLosingItsLeaseGoesNotReadyAndItsWorkloadsLost) {
  int64_t lease = PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  MarkRunning("w1", clock_.WallMillis());

  ASSERT_TRUE(store_.RevokeLease(lease).ok());  // the agent died
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kLost;
  }));
  EXPECT_NE(Workload("w1")->status.message.find("n1"), std::string::npos);
  auto node = Rest(c).GetNode("n1");
  ASSERT_TRUE(node.ok());
  EXPECT_FALSE((*node)["ready"].get<bool>());

  // The agent comes back, still running it: Running again, same owner.
  PublishNode("n1", 0.5, {{"w1", {0.5, 1 << 20}}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kRunning;
  }));
  EXPECT_EQ(Workload("w1")->status.node, "n1");
  ASSERT_TRUE(Eventually([&] {
    auto n = Rest(c).GetNode("n1");
    return n.ok() && (*n)["ready"].get<bool>();
  }));
}

// Issue 13, hole 4: agents fence a copy only when the record's epoch is higher
// than the copy's, so a workload deleted and created again must start above
// every epoch its earlier incarnation had: else the old copy on a node that
// comes back keeps running beside the new one.
TEST_F(ControllerTest, ARecreatedWorkloadIsPlacedAboveEveryEpochOfTheDeletedOne) {
  int64_t lease1 = PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  MarkRunning("w1", clock_.WallMillis());
  // Moved away and back (each ownership CAS bumps the epoch): n1 runs it at
  // the old incarnation's last epoch.
  for (int i = 0; i < 2; ++i) {
    auto w = Workload("w1");
    ASSERT_TRUE(w);
    w->status.epoch += 1;
    ASSERT_TRUE(store_.Put(keys_.Workload("w1"), cluster::WorkloadToJson(*w).dump()).ok());
  }
  const int64_t old_epoch = Workload("w1")->status.epoch;

  ASSERT_TRUE(store_.RevokeLease(lease1).ok());  // n1's agent stops reporting; its copy runs on
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kLost;
  }));
  ASSERT_TRUE(c.DeleteWorkload("w1").ok());
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n2"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  auto w = Workload("w1");
  EXPECT_EQ(w->status.node, "n2");
  // n1's agent, back, fences its copy only if this holds.
  EXPECT_GT(w->status.epoch, old_epoch);
}

TEST_F(ControllerTest, NodeReportingNotReadyTakesNoPlacementOrMigrationButKeepsItsWorkloads) {
  const std::string why = "CRIU not usable: criu is version 3.17.1; kmosix needs CRIU >= 4.0";
  PublishNode("n1", 0.9);
  int64_t lease2 = PublishNode("n2", 0.0);  // idle, fit for now
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  // w2 lands on n2 while it is fit, and runs there.
  Create(c, {{"name", "w2"}, {"image", "demo"}, {"node", "n2"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w2");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  MarkRunning("w2", clock_.WallMillis());
  PublishNode("n2", 0.0, {{"w2", {0.0, 1 << 20}}}, lease2, std::nullopt, why);
  ASSERT_TRUE(Eventually([&] {
    auto n = Rest(c).GetNode("n2");
    return n.ok() && !(*n)["ready"].get<bool>();
  }));
  auto n2 = Rest(c).GetNode("n2");
  ASSERT_TRUE(n2.ok());
  EXPECT_EQ((*n2)["notReadyReason"], why);
  EXPECT_EQ((*n2)["url"], "http://n2:7700") << "its load is still shown";
  EXPECT_FALSE(n2->contains("notReadySeconds")) << "its agent holds its lease";
  auto n1 = Rest(c).GetNode("n1");
  ASSERT_TRUE(n1.ok());
  EXPECT_TRUE((*n1)["ready"].get<bool>());
  EXPECT_FALSE(n1->contains("notReadyReason"));

  // Placement passes over it although it is the least loaded.
  Create(c, {{"name", "w1"}, {"image", "demo"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  EXPECT_EQ(Workload("w1")->status.node, "n1");
  // Asked for by name, it waits Pending, saying why.
  Create(c, {{"name", "w3"}, {"image", "demo"}, {"node", "n2"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w3");
    return w && w->status.message.find("not ready") != std::string::npos;
  }));
  EXPECT_EQ(Workload("w3")->status.phase, WorkloadPhase::kPending);

  // No migration to it, none from it.
  MarkRunning("w1", clock_.WallMillis());
  ASSERT_TRUE(Eventually([&] {
    auto g = c.GetWorkload("w1");
    return g.ok() && g->workload.status.phase == WorkloadPhase::kRunning;
  }));
  auto to = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  EXPECT_EQ(to.status().code(), Code::kConflict);
  EXPECT_NE(to.status().message().find(why), std::string::npos) << to.status().ToString();
  auto anywhere = Rest(c).RequestMigration(R"({"workload":"w1"})");
  EXPECT_EQ(anywhere.status().code(), Code::kConflict) << "no other fit node";
  ASSERT_TRUE(Eventually([&] {
    auto g = c.GetWorkload("w2");
    return g.ok() && g->workload.status.phase == WorkloadPhase::kRunning;
  }));
  auto from = Rest(c).RequestMigration(R"({"workload":"w2","target":"n1"})");
  EXPECT_EQ(from.status().code(), Code::kConflict);
  EXPECT_NE(from.status().message().find("cannot checkpoint"), std::string::npos)
      << from.status().ToString();
  EXPECT_TRUE(Migrations().empty());
  EXPECT_EQ(Workload("w2")->status.phase, WorkloadPhase::kRunning) << "it keeps its workload";
  EXPECT_EQ(Workload("w2")->status.node, "n2");

  // Fit again: it takes what waited for it.
  PublishNode("n2", 0.0, {{"w2", {0.0, 1 << 20}}}, lease2);
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w3");
    return w && w->status.phase == WorkloadPhase::kScheduled && w->status.node == "n2";
  }));
  auto back = Rest(c).GetNode("n2");
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE((*back)["ready"].get<bool>());
  EXPECT_FALSE(back->contains("notReadyReason"));
}

TEST_F(ControllerTest, HotNodeGetsAMigrationOrderWithItsReason) {
  // n1 runs four busy workloads; n2 and n3 are idle.
  std::map<std::string, api::WorkloadUsage> usage;
  for (int i = 1; i <= 4; ++i) usage["w" + std::to_string(i)] = {0.5, 1 << 20};
  int64_t lease = PublishNode("n1", 2.0, usage);
  PublishNode("n2", 0.0);
  PublishNode("n3", 0.0);
  ControllerOptions o = Options("c1");
  o.balance = false;  // first place them all, then turn balancing on
  Controller& placer = StartController(o);
  ASSERT_TRUE(Eventually([&] { return placer.IsLeader() && placer.Ready(); }));
  for (int i = 1; i <= 4; ++i)
    Create(placer, {{"name", "w" + std::to_string(i)}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(Eventually([&] {
    for (int i = 1; i <= 4; ++i) {
      auto w = Workload("w" + std::to_string(i));
      if (!w || w->status.phase != WorkloadPhase::kScheduled) return false;
    }
    return true;
  }));
  // Running for a while already, so the settled measurement counts.
  for (int i = 1; i <= 4; ++i) MarkRunning("w" + std::to_string(i), clock_.WallMillis() - 60'000);
  PublishNode("n1", 2.0, usage, lease);
  EXPECT_TRUE(Migrations().empty());
  placer.Stop();

  Controller& c = StartController(Options("c2"));
  ASSERT_TRUE(Eventually([&] { return !Migrations().empty(); }));
  auto ms = Migrations();
  ASSERT_EQ(ms.size(), 1u) << "max_per_node=1: one move out of n1 at a time";
  EXPECT_EQ(ms[0].source, "n1");
  EXPECT_TRUE(ms[0].target == "n2" || ms[0].target == "n3") << ms[0].target;
  EXPECT_EQ(ms[0].phase, api::MigrationPhase::kPending);
  EXPECT_EQ(ms[0].requested_by, "policy");
  EXPECT_NE(ms[0].reason.find("n1"), std::string::npos) << ms[0].reason;
  auto w = Workload(ms[0].workload);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->status.migration, ms[0].id);
  EXPECT_EQ(w->status.phase, WorkloadPhase::kMigrating);
  (void)c;
}

TEST_F(ControllerTest, OrderNeverPickedUpFailsAndFreesTheWorkload) {
  PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(
      Eventually([&] { return Workload("w1")->status.phase == WorkloadPhase::kScheduled; }));
  MarkRunning("w1", clock_.WallMillis());
  ASSERT_TRUE(Eventually([&] {
    return Rest(c).GetWorkload("w1").ok() &&
           (*Rest(c).GetWorkload("w1"))["status"]["phase"] == "Running";
  }));
  auto order = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  ASSERT_TRUE(order.ok()) << order.status().ToString();
  const std::string id = (*order)["id"];
  // Nobody runs it (no agent here): after order_timeout it is Failed.
  ASSERT_TRUE(Eventually(
      [&] {
        auto ms = Migrations();
        return ms.size() == 1 && ms[0].phase == api::MigrationPhase::kFailed;
      },
      std::chrono::seconds(15)));
  EXPECT_NE(Migrations()[0].error.find("did not pick"), std::string::npos) << Migrations()[0].error;
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.migration.empty() && w->status.phase == WorkloadPhase::kRunning;
  }));
  EXPECT_EQ(Workload("w1")->status.node, "n1");
}

TEST_F(ControllerTest, SourceLostMidMigrationIsResolvedFromOwnership) {
  int64_t lease1 = PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  PublishNode("n3", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  for (const char* n : {"a", "b"}) {
    Create(c, {{"name", n}, {"image", "demo"}, {"node", "n1"}});
    ASSERT_TRUE(Eventually([&] { return Workload(n)->status.phase == WorkloadPhase::kScheduled; }));
    MarkRunning(n, clock_.WallMillis());
  }
  ASSERT_TRUE(Eventually([&] {
    auto a = Rest(c).GetWorkload("a"), b = Rest(c).GetWorkload("b");
    return a.ok() && b.ok() && (*a)["status"]["phase"] == "Running" &&
           (*b)["status"]["phase"] == "Running";
  }));
  auto ma = Rest(c).RequestMigration(R"({"workload":"a","target":"n2"})");
  auto mb = Rest(c).RequestMigration(R"({"workload":"b","target":"n3"})");
  ASSERT_TRUE(ma.ok() && mb.ok());
  // The source moved a's ownership to n2 (ledger CAS) and was then lost; b's
  // ownership never moved.
  {
    auto w = Workload("a");
    w->status.node = "n2";
    w->status.epoch += 1;
    ASSERT_TRUE(store_.Put(keys_.Workload("a"), cluster::WorkloadToJson(*w).dump()).ok());
    auto m = store_.Get(keys_.Migration((*ma)["id"]));
    auto rec = cluster::ParseRecord<MigrationRecord>(m->kv->value, &cluster::MigrationFromJson);
    rec->phase = api::MigrationPhase::kCommitting;
    ASSERT_TRUE(store_.Put(keys_.Migration(rec->id), cluster::MigrationToJson(*rec).dump()).ok());
  }
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  auto phase_of = [&](const std::string& id) {
    for (const auto& m : Migrations())
      if (m.id == id) return std::string(api::MigrationPhaseName(m.phase));
    return std::string();
  };
  ASSERT_TRUE(Eventually([&] { return phase_of((*ma)["id"]) == "Succeeded"; }));
  ASSERT_TRUE(Eventually([&] { return phase_of((*mb)["id"]) == "Failed"; }));
  ASSERT_TRUE(Eventually([&] {
    auto a = Workload("a"), b = Workload("b");
    return a && b && a->status.migration.empty() && a->status.phase == WorkloadPhase::kRunning &&
           b->status.phase == WorkloadPhase::kLost;
  }));
  EXPECT_EQ(Workload("a")->status.node, "n2");
  EXPECT_EQ(Workload("b")->status.node, "n1");
}

// Hole 6: the controller's verdict on a lost source is one transaction. A
// store that refuses every write after the verdict's first one (the
// controller dies, or etcd goes away, right after it) must never be left with
// the migration record final while the workload record still names the
// migration: a returning source could then commit what the record says Failed.
TEST_F(ControllerTest, AVerdictOnALostSourceIsOneWriteWithNothingBetween) {
  testing::GatedStateStore gated(store_);
  int64_t lease1 = PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  controllers_.push_back(
      std::make_unique<Controller>(gated, clock_, random_, Options("c1"), nullptr));
  Controller& c = *controllers_.back();
  c.Start();
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  Create(c, {{"name", "b"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(Eventually([&] { return Workload("b")->status.phase == WorkloadPhase::kScheduled; }));
  MarkRunning("b", clock_.WallMillis());
  ASSERT_TRUE(Eventually([&] {
    auto b = Rest(c).GetWorkload("b");
    return b.ok() && (*b)["status"]["phase"] == "Running";
  }));
  auto mb = Rest(c).RequestMigration(R"({"workload":"b","target":"n2"})");
  ASSERT_TRUE(mb.ok()) << mb.status().ToString();
  const std::string id = (*mb)["id"];
  ASSERT_TRUE(Eventually([&] { return Workload("b")->status.migration == id; }));

  std::mutex mu;
  bool ended = false;        // the verdict's first write committed
  bool named_after = false;  // ...and left the workload record naming the migration
  gated.refuse_commit = [&](const Txn& txn) -> Status {
    std::lock_guard lock(mu);
    if (ended && testing::GatedStateStore::PutValue(txn, keys_.Workload("b")) != "") {
      return RetryError("the controller died after its first write");
    }
    return Status::Ok();
  };
  gated.after_commit = [&](const Txn& txn, const StatusOr<TxnResult>& r) {
    const std::string value = testing::GatedStateStore::PutValue(txn, keys_.Migration(id));
    if (value.empty() || !r.ok() || !r->succeeded) return;
    auto m = cluster::ParseRecord<MigrationRecord>(value, &cluster::MigrationFromJson);
    if (!m.ok() || !api::IsFinal(m->phase)) return;
    std::lock_guard lock(mu);
    if (ended) return;
    ended = true;
    auto w = Workload("b");
    named_after = w && w->status.migration == id;
  };
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());  // the source is lost
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return ended;
  }));
  bool named;
  {
    std::lock_guard lock(mu);
    named = named_after;
  }
  c.Stop();  // before the store it writes through goes away
  EXPECT_FALSE(named) << "the migration record was final while the workload record still named it";
  auto w = Workload("b");
  ASSERT_TRUE(w.has_value());
  EXPECT_TRUE(w->status.migration.empty());
  EXPECT_EQ(w->status.node, "n1");
  for (const auto& m : Migrations()) {
    if (m.id == id) {
      EXPECT_EQ(m.phase, api::MigrationPhase::kFailed);
    }
  }
}

TEST_F(ControllerTest, SecondReplicaTakesOverWhenTheLeaderStops) {
  PublishNode("n1", 0.1);
  Controller& c1 = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c1.IsLeader(); }));
  Controller& c2 = StartController(Options("c2"));
  ASSERT_TRUE(Eventually([&] { return c2.Ready(); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(c1.IsLeader());
  EXPECT_FALSE(c2.IsLeader()) << "two leaders at once";

  c1.Stop();
  ASSERT_TRUE(Eventually([&] { return c2.IsLeader(); }, std::chrono::seconds(15)));
  Create(c2, {{"name", "w1"}, {"image", "demo"}});
  ASSERT_TRUE(
      Eventually([&] { return Workload("w1")->status.phase == WorkloadPhase::kScheduled; }));
  EXPECT_EQ(Workload("w1")->status.node, "n1");
}

TEST_F(ControllerTest, BadInputIsRefusedAndChangesNothing) {
  PublishNode("n1", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  Create(c, {{"name", "fixed"}, {"image", "demo"}, {"node", "n1"}, {"migratable", false}});
  ASSERT_TRUE(
      Eventually([&] { return Workload("fixed")->status.phase == WorkloadPhase::kScheduled; }));
  MarkRunning("fixed", clock_.WallMillis());
  ASSERT_TRUE(
      Eventually([&] { return (*Rest(c).GetWorkload("fixed"))["status"]["phase"] == "Running"; }));
  const size_t keys = KeyCount();

  struct Case {
    std::string body;
    Code code;
  };
  for (const Case& k : std::vector<Case>{
           {"{", Code::kInvalid},
           {"[]", Code::kInvalid},
           {R"({"name":"x"})", Code::kInvalid},
           {R"({"name":"x","image":"demo","bogus":1})", Code::kInvalid},
           {R"({"name":"Bad_Name","image":"demo"})", Code::kInvalid},
           {R"({"name":"x","image":"demo","memoryMiB":-1})", Code::kInvalid},
           {R"({"name":"x","image":"demo","node":"nowhere"})", Code::kInvalid},
           {R"({"name":"x","image":"demo","pinned":true})", Code::kInvalid},
           {R"({"name":"fixed","image":"demo"})", Code::kConflict},
       }) {
    auto r = Rest(c).CreateWorkload(k.body);
    ASSERT_FALSE(r.ok()) << k.body;
    EXPECT_EQ(r.status().code(), k.code) << k.body << " -> " << r.status().ToString();
  }
  for (const Case& k : std::vector<Case>{
           {"nope", Code::kInvalid},
           {R"({"workload":"fixed","extra":true})", Code::kInvalid},
           {R"({"target":"n1"})", Code::kInvalid},
           {R"({"workload":7})", Code::kInvalid},
           {R"({"workload":"ghost"})", Code::kNotFound},
           {R"({"workload":"fixed"})", Code::kConflict},  // not migratable
       }) {
    auto r = Rest(c).RequestMigration(k.body);
    ASSERT_FALSE(r.ok()) << k.body;
    EXPECT_EQ(r.status().code(), k.code) << k.body << " -> " << r.status().ToString();
  }
  EXPECT_EQ(Rest(c).GetWorkload("ghost").status().code(), Code::kNotFound);
  EXPECT_EQ(Rest(c).GetWorkload("../etc").status().code(), Code::kInvalid);
  EXPECT_EQ(c.DeleteWorkload("ghost").code(), Code::kNotFound);
  EXPECT_EQ(Rest(c).GetMigration("m-none").status().code(), Code::kNotFound);
  EXPECT_EQ(Rest(c).GetNode("ghost").status().code(), Code::kNotFound);
  EXPECT_EQ(KeyCount(), keys) << "a refused request changed the store";
  EXPECT_TRUE(Migrations().empty());
}

// ---- operator actions: cancel, cordon, pin, drain; events ----------------------

class OperatorTest : public ControllerTest {
 protected:
  // n1..n3 idle; returns the leader once `workloads` run on n1.
  Controller& StartWith(const std::vector<json>& workloads) {
    PublishNode("n1", 0.1);
    PublishNode("n2", 0.1);
    PublishNode("n3", 0.1);
    auto o = Options("c1");
    o.order_timeout = std::chrono::seconds(60);
    o.balance = false;
    Controller& c = StartController(o);
    EXPECT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
    for (json w : workloads) {
      w["node"] = "n1";
      w["image"] = "demo";
      Create(c, w);
      const std::string name = w["name"];
      EXPECT_TRUE(Eventually([&] {
        auto r = Workload(name);
        return r && r->status.phase == WorkloadPhase::kScheduled;
      }));
      MarkRunning(name, clock_.WallMillis());
      EXPECT_TRUE(Eventually([&] {
        auto g = Rest(c).GetWorkload(name);
        return g.ok() && (*g)["status"]["phase"] == "Running";
      }));
    }
    return c;
  }

  // Rewrites a stored record the way an agent would.
  void EditWorkload(const std::string& name, const std::function<void(WorkloadRecord&)>& edit) {
    auto w = Workload(name);
    ASSERT_TRUE(w);
    edit(*w);
    ASSERT_TRUE(store_.Put(keys_.Workload(name), cluster::WorkloadToJson(*w).dump()).ok());
  }
  void EditMigration(const std::string& id, const std::function<void(MigrationRecord&)>& edit) {
    for (auto m : Migrations()) {
      if (m.id != id) continue;
      edit(m);
      ASSERT_TRUE(store_.Put(keys_.Migration(id), cluster::MigrationToJson(m).dump()).ok());
      return;
    }
    FAIL() << "no migration " << id;
  }
  std::optional<MigrationRecord> Migration(const std::string& id) {
    for (auto m : Migrations()) {
      if (m.id == id) return m;
    }
    return std::nullopt;
  }
};

TEST_F(OperatorTest, CancelIsAcceptedOnlyBeforeOwnershipMoves) {
  Controller& c = StartWith({{{"name", "w1"}}, {{"name", "w2"}}, {{"name", "w3"}}});
  auto order = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  ASSERT_TRUE(order.ok()) << order.status().ToString();
  const std::string id = (*order)["id"];

  auto cancelled = Rest(c).CancelMigration(id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().ToString();
  EXPECT_GT((*cancelled)["cancelRequestedMs"].get<int64_t>(), 0);
  EXPECT_EQ((*cancelled)["cancelledBy"], "api");
  auto stored = Migration(id);
  ASSERT_TRUE(stored);
  EXPECT_GT(stored->cancel_requested_ms, 0);
  EXPECT_EQ(stored->phase, api::MigrationPhase::kPending)
      << "the source, not the controller, ends it";
  const int64_t first = stored->cancel_requested_ms;
  ASSERT_TRUE(Rest(c).CancelMigration(id).ok()) << "asking twice is fine";
  EXPECT_EQ(Migration(id)->cancel_requested_ms, first);

  // Ownership already moved (the source's Transfer happened): too late.
  auto order2 = Rest(c).RequestMigration(R"({"workload":"w2","target":"n3"})");
  ASSERT_TRUE(order2.ok());
  const std::string id2 = (*order2)["id"];
  EditMigration(id2, [](MigrationRecord& m) { m.phase = api::MigrationPhase::kRestoring; });
  EditWorkload("w2", [](WorkloadRecord& w) {
    w.status.node = "n3";
    ++w.status.epoch;
  });
  auto late = Rest(c).CancelMigration(id2);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), Code::kConflict);
  EXPECT_NE(late.status().message().find("too late"), std::string::npos) << late.status().message();
  EXPECT_EQ(Migration(id2)->cancel_requested_ms, 0) << "a refused cancel wrote something";

  // Committing and ended migrations cannot be cancelled either.
  auto order3 = Rest(c).RequestMigration(R"({"workload":"w3","target":"n2"})");
  ASSERT_TRUE(order3.ok());
  const std::string id3 = (*order3)["id"];
  EditMigration(id3, [](MigrationRecord& m) { m.phase = api::MigrationPhase::kCommitting; });
  EXPECT_EQ(Rest(c).CancelMigration(id3).status().code(), Code::kConflict);
  EditMigration(id3, [](MigrationRecord& m) { m.phase = api::MigrationPhase::kSucceeded; });
  EXPECT_EQ(Rest(c).CancelMigration(id3).status().code(), Code::kConflict);
  EXPECT_EQ(Migration(id3)->cancel_requested_ms, 0);

  EXPECT_EQ(Rest(c).CancelMigration("m-none").status().code(), Code::kNotFound);
  EXPECT_EQ(Rest(c).CancelMigration("../x").status().code(), Code::kInvalid);
}

TEST_F(OperatorTest, CordonedNodeTakesNoArrivals) {
  Controller& c = StartWith({{{"name", "w1"}}});
  auto n = Rest(c).SetCordoned("n2", true);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_TRUE((*n)["cordoned"].get<bool>());
  ASSERT_TRUE(Rest(c).SetCordoned("n3", true).ok());
  ASSERT_TRUE(Eventually([&] {
    auto g = Rest(c).GetNode("n3");
    return g.ok() && (*g)["cordoned"].get<bool>();
  }));
  // n1 is busier than the cordoned nodes but the only one left.
  Create(c, {{"name", "fresh"}, {"image", "demo"}});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("fresh");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  EXPECT_EQ(Workload("fresh")->status.node, "n1");
  auto refused = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  EXPECT_EQ(refused.status().code(), Code::kConflict);
  EXPECT_NE(refused.status().message().find("cordoned"), std::string::npos);

  auto un = Rest(c).SetCordoned("n2", false);
  ASSERT_TRUE(un.ok());
  EXPECT_FALSE((*un)["cordoned"].get<bool>());
  ASSERT_TRUE(Eventually(
      [&] { return Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})").ok(); }));
  EXPECT_EQ(Rest(c).SetCordoned("ghost", true).status().code(), Code::kNotFound);
  EXPECT_EQ(Rest(c).SetCordoned("Bad_Name", true).status().code(), Code::kInvalid);
}

TEST_F(OperatorTest, PinnedWorkloadIsNotMovedUntilUnpinned) {
  Controller& c = StartWith({{{"name", "w1"}}});
  auto pinned = Rest(c).SetPinned("w1", true);
  ASSERT_TRUE(pinned.ok()) << pinned.status().ToString();
  EXPECT_TRUE((*pinned)["spec"]["pinned"].get<bool>());
  EXPECT_TRUE(Workload("w1")->spec.pinned);
  ASSERT_TRUE(
      Eventually([&] { return (*Rest(c).GetWorkload("w1"))["spec"]["pinned"].get<bool>(); }));
  auto refused = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  EXPECT_EQ(refused.status().code(), Code::kConflict);
  EXPECT_TRUE(Migrations().empty());

  auto unpinned = Rest(c).SetPinned("w1", false);
  ASSERT_TRUE(unpinned.ok());
  EXPECT_FALSE(Workload("w1")->spec.pinned);
  ASSERT_TRUE(Eventually(
      [&] { return Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})").ok(); }));
  EXPECT_EQ(Rest(c).SetPinned("ghost", true).status().code(), Code::kNotFound);
}

TEST_F(OperatorTest, DrainMovesWhatCanMoveAndSaysWhyNotForTheRest) {
  Controller& c = StartWith({{{"name", "a"}},
                             {{"name", "b"}},
                             {{"name", "fixed"}, {"migratable", false}},
                             {{"name", "stay"}, {"pinned", true}}});
  const size_t keys = KeyCount();
  auto bad = Rest(c).Drain("n1", R"({"includePinned":"yes"})");
  EXPECT_EQ(bad.status().code(), Code::kInvalid);
  EXPECT_EQ(Rest(c).Drain("n1", R"({"force":true})").status().code(), Code::kInvalid);
  EXPECT_EQ(Rest(c).Drain("ghost", "").status().code(), Code::kNotFound);
  EXPECT_EQ(KeyCount(), keys) << "a refused drain changed the store";

  auto report = Rest(c).Drain("n1", "");
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE((*report)["cordoned"].get<bool>());
  std::map<std::string, std::string> ordered, not_moved;
  for (const auto& o : (*report)["ordered"]) ordered[o["workload"]] = o["target"];
  for (const auto& o : (*report)["notMoved"]) not_moved[o["workload"]] = o["reason"];
  ASSERT_EQ(ordered.size(), 2u) << report->dump();
  EXPECT_NE(ordered["a"], ordered["b"]) << "two idle targets: one each";
  for (const auto& [w, target] : ordered) EXPECT_TRUE(target == "n2" || target == "n3") << target;
  ASSERT_EQ(not_moved.size(), 2u) << report->dump();
  EXPECT_NE(not_moved["fixed"].find("not migratable"), std::string::npos);
  EXPECT_NE(not_moved["stay"].find("pinned"), std::string::npos);
  for (const auto& m : Migrations()) EXPECT_EQ(m.requested_by, "drain");
  ASSERT_TRUE(Eventually([&] {
    auto g = Rest(c).GetNode("n1");
    return g.ok() && (*g)["cordoned"].get<bool>();
  }));

  // Again, with pinned ones too: a and b are on their way already.
  ASSERT_TRUE(Eventually([&] {
    auto w = Rest(c).GetWorkload("b");
    return w.ok() && !(*w)["status"]["migration"].get<std::string>().empty();
  }));
  auto again = Rest(c).Drain("n1", R"({"includePinned":true})");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*again)["inFlight"].size(), 2u) << again->dump();
  ASSERT_EQ((*again)["ordered"].size(), 1u) << again->dump();
  EXPECT_EQ((*again)["ordered"][0]["workload"], "stay");
  EXPECT_EQ(Migrations().size(), 3u);
}

TEST_F(OperatorTest, EventsReportPlacementsPhasesAndReadiness) {
  PublishNode("n1", 0.1);
  int64_t lease2 = PublishNode("n2", 0.1);
  auto o = Options("c1");
  o.balance = false;
  o.order_timeout = std::chrono::seconds(60);
  Controller& c = StartController(o);
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  ASSERT_TRUE(Eventually([&] {
    auto n = Rest(c).GetNode("n2");
    return n.ok() && Rest(c).ListNodes()["items"].size() == 2;
  }));
  int64_t cursor = c.Events().LastId();
  std::vector<json> seen;
  auto saw = [&](const std::string& type, const std::string& key, const std::string& value) {
    return Eventually([&] {
      for (const Event& e : c.Events().Wait(cursor, std::chrono::milliseconds(50)).events) {
        cursor = e.id;
        seen.push_back(e.data);
      }
      for (const auto& d : seen) {
        if (d["type"] == type && d.value(key, "") == value) return true;
      }
      return false;
    });
  };
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}});
  EXPECT_TRUE(saw("workload.created", "workload", "w1"));
  EXPECT_TRUE(saw("workload.placed", "node", "n1"));
  MarkRunning("w1", clock_.WallMillis());
  EXPECT_TRUE(saw("workload.phase", "phase", "Running"));
  auto order = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  ASSERT_TRUE(order.ok());
  const std::string id = (*order)["id"];
  EXPECT_TRUE(saw("migration.created", "migration", id));
  EditMigration(id, [](MigrationRecord& m) { m.phase = api::MigrationPhase::kCheckpointing; });
  EXPECT_TRUE(saw("migration.phase", "phase", "Checkpointing"));
  ASSERT_TRUE(Rest(c).CancelMigration(id).ok());
  EXPECT_TRUE(saw("migration.cancelling", "migration", id));
  ASSERT_TRUE(Rest(c).SetCordoned("n1", true).ok());
  EXPECT_TRUE(saw("node.cordoned", "node", "n1"));
  ASSERT_TRUE(store_.RevokeLease(lease2).ok());
  EXPECT_TRUE(saw("node.notready", "node", "n2"));
  ASSERT_TRUE(c.DeleteWorkload("w1").ok());
  EXPECT_TRUE(saw("workload.deleted", "workload", "w1"));
  for (size_t i = 1; i < seen.size(); ++i)
    EXPECT_GT(seen[i]["id"].get<int64_t>(), seen[i - 1]["id"].get<int64_t>());
}

// Issue 13, "Also": the controller's verdict on a migration whose source was
// lost says which fault it met and how it ended, in the record (REST) and in
// its final event.
TEST_F(OperatorTest, AVerdictOnALostSourceNamesTheFaultAndTheOutcome) {
  int64_t lease1 = PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  auto o = Options("c1");
  o.balance = false;
  Controller& c = StartController(o);
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(
      Eventually([&] { return Workload("w1")->status.phase == WorkloadPhase::kScheduled; }));
  MarkRunning("w1", clock_.WallMillis());
  ASSERT_TRUE(Eventually([&] {
    auto w = Rest(c).GetWorkload("w1");
    return w.ok() && (*w)["status"]["phase"] == "Running";
  }));
  auto order = Rest(c).RequestMigration(R"({"workload":"w1","target":"n2"})");
  ASSERT_TRUE(order.ok()) << order.status().ToString();
  const std::string id = (*order)["id"];
  ASSERT_TRUE(Eventually([&] { return Workload("w1")->status.migration == id; }));
  EditMigration(id, [](MigrationRecord& m) { m.phase = api::MigrationPhase::kTransferring; });
  int64_t cursor = c.Events().LastId();
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());  // the source is lost mid-transfer
  ASSERT_TRUE(Eventually([&] {
    auto m = Migration(id);
    return m && api::IsFinal(m->phase);
  }));
  auto m = Migration(id);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->phase, api::MigrationPhase::kFailed);
  ASSERT_TRUE(m->fault.has_value());
  EXPECT_EQ(m->fault->kind, api::FaultKind::kSourceLost);
  EXPECT_EQ(m->fault->phase, api::MigrationPhase::kTransferring);
  EXPECT_EQ(m->fault->node, "n1");
  EXPECT_EQ(m->fault->message, m->error);
  ASSERT_TRUE(m->resolution.has_value());
  EXPECT_EQ(m->resolution->outcome, api::MigrationOutcome::kAbandoned);
  EXPECT_EQ(m->resolution->decided_by, api::Decider::kController);
  EXPECT_EQ(m->resolution->at_ms, m->finished_ms);
  // The REST face shows them.
  ASSERT_TRUE(Eventually([&] {
    auto got = Rest(c).GetMigration(id);
    return got.ok() && (*got)["phase"] == "Failed";
  }));
  auto got = Rest(c).GetMigration(id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)["fault"]["kind"], "SourceLost");
  EXPECT_EQ((*got)["resolution"]["outcome"], "Abandoned");
  EXPECT_EQ((*got)["resolution"]["decidedBy"], "Controller");
  // The final event names them.
  json final_event;
  ASSERT_TRUE(Eventually([&] {
    for (const Event& e : c.Events().Wait(cursor, std::chrono::milliseconds(50)).events) {
      cursor = e.id;
      if (e.type == "migration.phase" && e.data.value("migration", "") == id &&
          e.data.value("phase", "") == "Failed")
        final_event = e.data;
    }
    return !final_event.is_null();
  }));
  EXPECT_EQ(final_event["fault"]["kind"], "SourceLost") << final_event.dump();
  EXPECT_EQ(final_event["fault"]["node"], "n1");
  EXPECT_EQ(final_event["resolution"]["outcome"], "Abandoned");
  EXPECT_EQ(final_event["resolution"]["decidedBy"], "Controller");
}

// ---- the typed API the Kubernetes bridge calls ----------------------------------

TEST_F(OperatorTest, IdempotentOrdersByIdAnswerTheSameMigration) {
  Controller& c = StartWith({{{"name", "w1"}}, {{"name", "w2"}}});
  api::MigrationRequest r;
  r.workload = "w1";
  r.target = "n2";
  r.requested_by = "user";
  r.id = "mig-uid-1";
  auto first = c.RequestMigration(r);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->id, "mig-uid-1");
  EXPECT_EQ(first->requested_by, "user");
  EXPECT_EQ(first->source, "n1");
  EXPECT_EQ(first->reason, "requested through Kubernetes: move to n2");
  // Asked again (the bridge after a restart): the same record, nothing new,
  // even though the workload is now busy with it.
  auto again = c.RequestMigration(r);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->id, first->id);
  EXPECT_EQ(again->created_ms, first->created_ms);
  ASSERT_EQ(Migrations().size(), 1u);
  // The same id for another workload is a conflict, and orders nothing.
  r.workload = "w2";
  EXPECT_EQ(c.RequestMigration(r).status().code(), Code::kConflict);
  EXPECT_EQ(Migrations().size(), 1u);
  // A caller's reason is kept; bad requests are refused before anything.
  api::MigrationRequest other;
  other.workload = "w2";
  other.target = "n3";
  other.reason = "nodeName changed to n3";
  other.requested_by = "user";
  auto second = c.RequestMigration(other);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->reason, "nodeName changed to n3");
  EXPECT_NE(second->id, "");
  other.requested_by = "someone";
  EXPECT_EQ(c.RequestMigration(other).status().code(), Code::kInvalid);
  // Cancel names who asked.
  auto cancelled = c.CancelMigration("mig-uid-1", "user");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().ToString();
  EXPECT_EQ(Migration("mig-uid-1")->cancelled_by, "user");
}

TEST_F(OperatorTest, SetMigratableTakesEffectOnOrders) {
  Controller& c = StartWith({{{"name", "w1"}}});
  auto off = c.SetMigratable("w1", false);
  ASSERT_TRUE(off.ok()) << off.status().ToString();
  EXPECT_FALSE(off->workload.spec.migratable);
  EXPECT_FALSE(Workload("w1")->spec.migratable);
  ASSERT_TRUE(Eventually([&] {
    auto g = c.GetWorkload("w1");
    return g.ok() && !g->workload.spec.migratable;
  }));
  api::MigrationRequest r;
  r.workload = "w1";
  r.target = "n2";
  EXPECT_EQ(c.RequestMigration(r).status().code(), Code::kConflict);
  ASSERT_TRUE(c.SetMigratable("w1", false).ok()) << "setting it again is fine";
  ASSERT_TRUE(c.SetMigratable("w1", true).ok());
  ASSERT_TRUE(Eventually([&] { return c.RequestMigration(r).ok(); }));
  EXPECT_EQ(c.SetMigratable("ghost", true).status().code(), Code::kNotFound);
  EXPECT_EQ(c.SetMigratable("Bad_Name", true).status().code(), Code::kInvalid);
}

TEST_F(ControllerTest, TypedCreateValidatesAndKeepsTheOrigin) {
  PublishNode("n1", 0.1);
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.Ready(); }));
  api::WorkloadSpec s;
  s.name = "web";
  s.image = "demo";
  s.origin = api::WorkloadOrigin{"MigratableWorkload", "team-a", "web", "uid-7"};
  auto made = c.CreateWorkload(s);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  EXPECT_EQ(made->workload.spec.origin, s.origin);
  EXPECT_EQ(made->workload.status.phase, WorkloadPhase::kPending);
  ASSERT_TRUE(Workload("web"));
  EXPECT_EQ(Workload("web")->spec.origin, s.origin);
  EXPECT_EQ(c.CreateWorkload(s).status().code(), Code::kConflict);
  s.name = "other";
  s.memory_mib = -1;
  EXPECT_EQ(c.CreateWorkload(s).status().code(), Code::kInvalid);
  EXPECT_FALSE(Workload("other"));
}

TEST_F(ControllerTest, AnImageNoReadyNodeHoldsIsRefusedAndPlacementPicksAHolder) {
  using Images = std::vector<std::string>;
  PublishNode("n1", 0.0, {}, 0, Images{"busybox", "demo"});
  PublishNode("n2", 0.5, {}, 0, Images{"demo", "web"});
  Controller& c = StartController(Options("c1"));
  ASSERT_TRUE(Eventually([&] { return c.Ready() && c.ListNodes().size() == 2; }));
  api::WorkloadSpec s;
  s.name = "nowhere";
  s.image = "kmosix.invalid/none:1";
  Status refused = c.CheckImageHeld(s);
  EXPECT_EQ(refused.code(), Code::kInvalid);
  EXPECT_EQ(refused.message(),
            "image: none of the 2 ready nodes holds image \"kmosix.invalid/none:1\"");
  // Created anyway (the REST API), it waits Pending, placed nowhere.
  ASSERT_TRUE(c.CreateWorkload(s).ok());
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("nowhere");
    return w && w->status.message.find("2 without the image") != std::string::npos;
  }));
  EXPECT_EQ(Workload("nowhere")->status.phase, WorkloadPhase::kPending);
  // Named node without it: refused too, though another node has it.
  s.name = "there";
  s.image = "web";
  s.node = "n1";
  EXPECT_EQ(c.CheckImageHeld(s).message(), "image: node n1 does not hold image \"web\"");
  // Only n2 holds "web": placed there though n1 is idler.
  s.node = "";
  EXPECT_TRUE(c.CheckImageHeld(s).ok());
  ASSERT_TRUE(c.CreateWorkload(s).ok());
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("there");
    return w && w->status.node == "n2";
  }));
  // The image arrives on n1: the waiting workload is placed there.
  PublishNode("n1", 0.0, {}, 0, Images{"busybox", "demo", "kmosix.invalid/none:1"});
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("nowhere");
    return w && w->status.node == "n1";
  }));
  // A node that does not list its images may hold any: nothing refused.
  PublishNode("n3", 0.0);
  ASSERT_TRUE(Eventually([&] { return c.ListNodes().size() == 3; }));
  s.image = "kmosix.invalid/other:1";
  EXPECT_TRUE(c.CheckImageHeld(s).ok());
}

TEST_F(ControllerTest, ChangeListenersHearWorkloadAndMigrationRecords) {
  PublishNode("n1", 0.1);
  PublishNode("n2", 0.1);
  auto o = Options("c1");
  o.balance = false;
  controllers_.push_back(std::make_unique<Controller>(store_, clock_, random_, o, nullptr));
  Controller& c = *controllers_.back();
  std::mutex mu;
  std::vector<std::string> heard;
  c.AddChangeListener([&](char kind, const std::string& name) {
    std::lock_guard lock(mu);
    heard.push_back(std::string(1, kind) + "/" + name);
  });
  c.Start();
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  auto saw = [&](const std::string& item) {
    std::lock_guard lock(mu);
    return std::find(heard.begin(), heard.end(), item) != heard.end();
  };
  Create(c, {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}});
  ASSERT_TRUE(Eventually([&] { return saw("w/w1"); }));
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  MarkRunning("w1", clock_.WallMillis());
  ASSERT_TRUE(Eventually([&] {
    auto g = c.GetWorkload("w1");
    return g.ok() && g->workload.status.phase == WorkloadPhase::kRunning;
  }));
  api::MigrationRequest r;
  r.workload = "w1";
  r.target = "n2";
  r.id = "m-listen";
  ASSERT_TRUE(c.RequestMigration(r).ok());
  EXPECT_TRUE(Eventually([&] { return saw("m/m-listen"); }));
  // The listener captures this test's locals: stop the controller (idempotent;
  // the fixture stops it again) before they go out of scope, or a cache thread
  // may still call it on a destroyed vector (ASan/UBSan caught it).
  c.Stop();
  std::lock_guard lock(mu);
  for (const auto& item : heard) {
    EXPECT_TRUE(item[0] == 'w' || item[0] == 'm') << "only workloads and migrations: " << item;
  }
}

}  // namespace
}  // namespace kmosix::controller
