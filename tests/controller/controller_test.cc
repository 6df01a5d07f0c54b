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

#include <functional>
#include <thread>

#include "cluster/records.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"

namespace kmosix::controller {
namespace {

using cluster::KeyLayout;
using cluster::MigrationRecord;
using cluster::NodeLoad;
using cluster::WorkloadPhase;
using cluster::WorkloadRecord;
using nlohmann::json;

class SeqRandom : public Random {
 public:
  uint64_t Next() override { return next_ += 0x9e3779b97f4a7c15ULL; }

 private:
  uint64_t next_ = 1;
};

bool Eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

class ControllerTest : public ::testing::Test {
 protected:
  ControllerTest() : store_(store_clock_) {}
  ~ControllerTest() override {
    for (auto& c : controllers_) c->Stop();
  }

  ControllerOptions Options(const std::string& id) {
    ControllerOptions o;
    o.identity = id;
    o.balance_interval = std::chrono::milliseconds(100);
    o.leader_ttl = std::chrono::seconds(2);
    o.order_timeout = std::chrono::seconds(2);
    o.source_lost_grace = std::chrono::milliseconds(200);
    o.policy.min_residency_ms = 0;
    return o;
  }

  Controller& StartController(ControllerOptions o) {
    controllers_.push_back(std::make_unique<Controller>(store_, clock_, random_, o, nullptr));
    controllers_.back()->Start();
    return *controllers_.back();
  }

  // An agent's node record, under its own lease (revoke it to "kill" the agent).
  int64_t PublishNode(const std::string& name, double cpu_used,
                      std::map<std::string, cluster::WorkloadUsage> usage = {}, int64_t lease = 0) {
    if (lease == 0) {
      auto grant = store_.GrantLease(std::chrono::seconds(5));
      EXPECT_TRUE(grant.ok());
      lease = grant->id;
    }
    NodeLoad n;
    n.node = name;
    n.url = "http://" + name + ":7700";
    n.load_source = "cgroup";
    n.cpu_capacity = 1;
    n.cpu_used = cpu_used;
    n.memory_capacity_bytes = 8ULL << 30;
    n.memory_available_bytes = 6ULL << 30;
    n.workloads = std::move(usage);
    n.updated_ms = clock_.WallMillis();
    PutOptions po;
    po.lease = lease;
    EXPECT_TRUE(store_.Put(keys_.Node(name), cluster::NodeLoadToJson(n).dump(), po).ok());
    return lease;
  }

  std::optional<WorkloadRecord> Workload(const std::string& name) {
    auto got = store_.Get(keys_.Workload(name));
    if (!got.ok() || !got->kv) return std::nullopt;
    auto w = cluster::ParseRecord<WorkloadRecord>(got->kv->value, &cluster::WorkloadRecordFromJson);
    if (!w.ok()) return std::nullopt;
    return *w;
  }

  std::vector<MigrationRecord> Migrations() {
    std::vector<MigrationRecord> out;
    auto list = store_.List(keys_.Migrations());
    if (!list.ok()) return out;
    for (const auto& kv : list->kvs) {
      auto m = cluster::ParseRecord<MigrationRecord>(kv.value, &cluster::MigrationRecordFromJson);
      if (m.ok()) out.push_back(*m);
    }
    return out;
  }

  // What an agent does once it runs a workload it was assigned.
  void MarkRunning(const std::string& name, int64_t started_ms) {
    auto got = store_.Get(keys_.Workload(name));
    ASSERT_TRUE(got.ok() && got->kv);
    auto w = cluster::ParseRecord<WorkloadRecord>(got->kv->value, &cluster::WorkloadRecordFromJson);
    ASSERT_TRUE(w.ok());
    w->status.phase = WorkloadPhase::kRunning;
    w->status.started_ms = started_ms;
    ASSERT_TRUE(store_.Put(keys_.Workload(name), cluster::WorkloadRecordToJson(*w).dump()).ok());
  }

  void Create(Controller& c, const json& body) {
    auto r = c.CreateWorkload(body.dump());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  size_t KeyCount() {
    auto l = store_.List("");
    return l.ok() ? l->kvs.size() : 0;
  }

  testing::FakeClock store_clock_;
  SystemClock clock_;
  SeqRandom random_;
  testing::FakeStateStore store_;
  KeyLayout keys_;
  std::vector<std::unique_ptr<Controller>> controllers_;
};

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
  EXPECT_EQ(Workload("w1")->status.epoch, 1);

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
  auto node = c.GetNode("n1");
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
    auto n = c.GetNode("n1");
    return n.ok() && (*n)["ready"].get<bool>();
  }));
}

TEST_F(ControllerTest, HotNodeGetsAMigrationOrderWithItsReason) {
  // n1 runs four busy workloads; n2 and n3 are idle.
  std::map<std::string, cluster::WorkloadUsage> usage;
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
  EXPECT_EQ(ms[0].phase, "Pending");
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
    return c.GetWorkload("w1").ok() && (*c.GetWorkload("w1"))["status"]["phase"] == "Running";
  }));
  auto order = c.RequestMigration(R"({"workload":"w1","target":"n2"})");
  ASSERT_TRUE(order.ok()) << order.status().ToString();
  const std::string id = (*order)["id"];
  // Nobody runs it (no agent here): after order_timeout it is Failed.
  ASSERT_TRUE(Eventually(
      [&] {
        auto ms = Migrations();
        return ms.size() == 1 && ms[0].phase == "Failed";
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
    auto a = c.GetWorkload("a"), b = c.GetWorkload("b");
    return a.ok() && b.ok() && (*a)["status"]["phase"] == "Running" &&
           (*b)["status"]["phase"] == "Running";
  }));
  auto ma = c.RequestMigration(R"({"workload":"a","target":"n2"})");
  auto mb = c.RequestMigration(R"({"workload":"b","target":"n3"})");
  ASSERT_TRUE(ma.ok() && mb.ok());
  // The source moved a's ownership to n2 (ledger CAS) and was then lost; b's
  // ownership never moved.
  {
    auto w = Workload("a");
    w->status.node = "n2";
    w->status.epoch += 1;
    ASSERT_TRUE(store_.Put(keys_.Workload("a"), cluster::WorkloadRecordToJson(*w).dump()).ok());
    auto m = store_.Get(keys_.Migration((*ma)["id"]));
    auto rec =
        cluster::ParseRecord<MigrationRecord>(m->kv->value, &cluster::MigrationRecordFromJson);
    rec->phase = "Committing";
    ASSERT_TRUE(
        store_.Put(keys_.Migration(rec->id), cluster::MigrationRecordToJson(*rec).dump()).ok());
  }
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  auto phase_of = [&](const std::string& id) {
    for (const auto& m : Migrations())
      if (m.id == id) return m.phase;
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
      Eventually([&] { return (*c.GetWorkload("fixed"))["status"]["phase"] == "Running"; }));
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
    auto r = c.CreateWorkload(k.body);
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
    auto r = c.RequestMigration(k.body);
    ASSERT_FALSE(r.ok()) << k.body;
    EXPECT_EQ(r.status().code(), k.code) << k.body << " -> " << r.status().ToString();
  }
  EXPECT_EQ(c.GetWorkload("ghost").status().code(), Code::kNotFound);
  EXPECT_EQ(c.GetWorkload("../etc").status().code(), Code::kInvalid);
  EXPECT_EQ(c.DeleteWorkload("ghost").code(), Code::kNotFound);
  EXPECT_EQ(c.GetMigration("m-none").status().code(), Code::kNotFound);
  EXPECT_EQ(c.GetNode("ghost").status().code(), Code::kNotFound);
  EXPECT_EQ(KeyCount(), keys) << "a refused request changed the store";
  EXPECT_TRUE(Migrations().empty());
}

}  // namespace
}  // namespace kmosix::controller
