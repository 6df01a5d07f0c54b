// The controller keeping each node's etcd write grants (controller/grants.h)
// on the fake store and the fake AccessGrants: a placement grants the target
// before the record names it, an order grants source and target before the
// order is written, the grants follow a migration to its end (the source
// loses both keys once the workload record lets go), stray grants are
// revoked and lost ones restored, and a new leader replaying the same state
// grants and revokes nothing.
#include <gtest/gtest.h>

#include "controller_fixture.h"
#include "fakes/fake_access_grants.h"

namespace kmosix::controller {
namespace {

using api::MigrationPhase;

// A fake that also remembers, for every grant, what the stored workload
// record said at that moment (to show a grant came before the write).
class RecordingGrants : public testing::FakeAccessGrants {
 public:
  RecordingGrants(StateStore& store, KeyLayout keys) : store_(store), keys_(std::move(keys)) {}
  Status Grant(const std::string& role, const std::string& key) override {
    std::string seen = "absent";
    if (auto got = store_.Get(key); got.ok() && got->kv) {
      auto dir = KeyLayout::NameIn(keys_.Workloads(), key);
      auto w = cluster::ParseRecord<WorkloadRecord>(got->kv->value, &cluster::WorkloadFromJson);
      seen = !dir.empty() && w.ok() ? std::string(api::WorkloadPhaseName(w->status.phase)) + "@" +
                                          w->status.node + "/" + w->status.migration
                                    : "present";
    }
    {
      std::lock_guard lock(mu_);
      seen_[role + " " + key].push_back(seen);
    }
    return FakeAccessGrants::Grant(role, key);
  }
  std::vector<std::string> Seen(const std::string& role, const std::string& key) {
    std::lock_guard lock(mu_);
    return seen_[role + " " + key];
  }

 private:
  StateStore& store_;
  KeyLayout keys_;
  std::mutex mu_;
  std::map<std::string, std::vector<std::string>> seen_;
};

class ControllerGrantsTest : public ControllerTest {
 protected:
  ControllerGrantsTest() : grants_(store_, keys_) {
    for (const char* n : {"n1", "n2", "n3"}) {
      grants_.AddRole(n);
      grants_.SetPermission(n, keys_.Node(n), "", testing::FakeAccessGrants::Type::kReadWrite);
    }
  }
  ControllerOptions GrantOptions(const std::string& id) {
    auto o = Options(id);
    o.balance = false;
    o.order_timeout = std::chrono::seconds(60);
    o.grant_revoke_grace = std::chrono::milliseconds(200);
    o.grants_resync = std::chrono::milliseconds(300);
    return o;
  }
  Controller& StartGranting(const std::string& id) {
    controllers_.push_back(
        std::make_unique<Controller>(store_, clock_, random_, GrantOptions(id), nullptr));
    controllers_.back()->SetAccessGrants(&grants_);
    controllers_.back()->Start();
    return *controllers_.back();
  }
  bool May(const std::string& node, const std::string& key) { return grants_.MayWrite(node, key); }
  std::vector<std::string> Held(const std::string& node) { return *grants_.Granted(node); }
  void Edit(const std::string& name, const std::function<void(WorkloadRecord&)>& edit) {
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
  // n1..n3 up, workload w placed on n1 and running.
  Controller& StartWithW() {
    PublishNode("n1", 0.1);
    PublishNode("n2", 0.1);
    PublishNode("n3", 0.1);
    Controller& c = StartGranting("c1");
    EXPECT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
    Create(c, {{"name", "w"}, {"image", "demo"}, {"node", "n1"}});
    EXPECT_TRUE(Eventually([&] {
      auto r = Workload("w");
      return r && r->status.phase == WorkloadPhase::kScheduled;
    }));
    MarkRunning("w", clock_.WallMillis());
    EXPECT_TRUE(Eventually([&] {
      auto g = c.GetWorkload("w");
      return g.ok() && g->workload.status.phase == WorkloadPhase::kRunning;
    }));
    return c;
  }

  static api::MigrationRequest Request(const std::string& id) {
    api::MigrationRequest r;
    r.workload = "w";
    r.target = "n2";
    r.id = id;
    return r;
  }

  RecordingGrants grants_;
};

TEST_F(ControllerGrantsTest, PlacementGrantsTheTargetBeforeTheRecordNamesIt) {
  StartWithW();
  const std::string wkey = keys_.Workload("w");
  EXPECT_TRUE(May("n1", wkey));
  auto seen = grants_.Seen("n1", wkey);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front(), "Pending@/") << "the first grant came after the record named n1";
  EXPECT_FALSE(May("n2", wkey));
  EXPECT_FALSE(May("n3", wkey));
  EXPECT_TRUE(May("n1", keys_.Node("n1"))) << "the role's own key was touched";
}

TEST_F(ControllerGrantsTest, GrantsFollowAMigrationFromOrderToEnd) {
  Controller& c = StartWithW();
  const std::string wkey = keys_.Workload("w");
  auto order = c.RequestMigration(Request("m-1"));
  ASSERT_TRUE(order.ok()) << order.status().ToString();
  const std::string mkey = keys_.Migration("m-1");
  // Granted before the order existed: the source both records, the target
  // the workload; the target never writes the migration record.
  EXPECT_TRUE(May("n1", mkey));
  EXPECT_TRUE(May("n1", wkey));
  EXPECT_TRUE(May("n2", wkey));
  EXPECT_FALSE(May("n2", mkey));
  EXPECT_FALSE(May("n3", wkey));
  auto seen = grants_.Seen("n1", mkey);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front(), "absent") << "the order was written before its grant";
  seen = grants_.Seen("n2", wkey);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front(), "Running@n1/") << "the target's grant came after the order";

  // The source runs it: Transfer (owner := n2), phases, then frees the record.
  EditMigration("m-1", [](MigrationRecord& m) { m.phase = MigrationPhase::kCommitting; });
  Edit("w", [](WorkloadRecord& w) {
    w.status.node = "n2";
    ++w.status.epoch;
  });
  EditMigration("m-1", [&](MigrationRecord& m) {
    m.phase = MigrationPhase::kSucceeded;
    m.finished_ms = clock_.WallMillis();
  });
  // Committed, not yet freed: the source keeps what it still writes (the
  // reconciler looked at n1 again after the cache saw the end, past the grace).
  ASSERT_TRUE(Eventually([&] {
    auto m = c.GetMigration("m-1");
    return m.ok() && m->phase == MigrationPhase::kSucceeded;
  }));
  grants_.ClearCalls();
  ASSERT_TRUE(Eventually([&] {
    int looks = 0;
    for (const auto& call : grants_.Calls()) looks += call == "granted n1";
    return looks >= 3;
  }));
  EXPECT_TRUE(May("n1", wkey));
  EXPECT_TRUE(May("n1", mkey));
  Edit("w", [](WorkloadRecord& w) {
    w.status.migration.clear();
    w.status.migrations.push_back("m-1");
    w.status.phase = WorkloadPhase::kRunning;
  });
  ASSERT_TRUE(Eventually([&] { return !May("n1", wkey) && !May("n1", mkey); }))
      << "the source kept its grants after the migration ended";
  EXPECT_TRUE(May("n2", wkey));
  EXPECT_EQ(Held("n1"), std::vector<std::string>{keys_.Node("n1")});
  EXPECT_EQ(Held("n2"), (std::vector<std::string>{keys_.Node("n2"), wkey}));
}

TEST_F(ControllerGrantsTest, StrayGrantsAreRevokedAndLostOnesRestored) {
  StartWithW();
  const std::string wkey = keys_.Workload("w");
  // Someone gave n3 the workload, and n1 lost its grant.
  ASSERT_TRUE(grants_.FakeAccessGrants::Grant("n3", wkey).ok());
  ASSERT_TRUE(grants_.Revoke("n1", wkey).ok());
  ASSERT_TRUE(Eventually([&] { return !May("n3", wkey) && May("n1", wkey); }));
  EXPECT_TRUE(May("n3", keys_.Node("n3")));
}

TEST_F(ControllerGrantsTest, ANewLeaderReplayingTheSameStateChangesNothing) {
  Controller& c = StartWithW();
  auto order = c.RequestMigration(Request("m-2"));
  ASSERT_TRUE(order.ok()) << order.status().ToString();
  Controller& c2 = StartGranting("c2");
  ASSERT_TRUE(Eventually([&] { return c2.Ready(); }));
  c.Stop();
  ASSERT_TRUE(Eventually([&] { return c2.IsLeader(); }));
  grants_.ClearCalls();
  // Wait for the new leader to have looked at every node at least twice.
  ASSERT_TRUE(Eventually([&] {
    int n1 = 0, n2 = 0, n3 = 0;
    for (const auto& call : grants_.Calls()) {
      n1 += call == "granted n1";
      n2 += call == "granted n2";
      n3 += call == "granted n3";
    }
    return n1 >= 2 && n2 >= 2 && n3 >= 2;
  }));
  for (const auto& call : grants_.Calls())
    EXPECT_EQ(call.rfind("granted ", 0), 0u) << "the new leader changed a grant: " << call;
  EXPECT_TRUE(May("n1", keys_.Migration("m-2")));
  EXPECT_TRUE(May("n2", keys_.Workload("w")));
}

TEST_F(ControllerGrantsTest, AFailingGrantHoldsThePlacementBack) {
  PublishNode("n1", 0.1);
  Controller& c = StartGranting("c1");
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  grants_.SetDenied(true);
  Create(c, {{"name", "w"}, {"image", "demo"}, {"node", "n1"}});
  // Not placed while the grant fails (looked at more than once).
  ASSERT_TRUE(Eventually([&] {
    int tries = 0;
    for (const auto& call : grants_.Calls()) tries += call == "grant n1 " + keys_.Workload("w");
    return tries >= 2;
  }));
  EXPECT_EQ(Workload("w")->status.phase, WorkloadPhase::kPending);
  grants_.SetDenied(false);
  ASSERT_TRUE(Eventually([&] {
    auto r = Workload("w");
    return r && r->status.phase == WorkloadPhase::kScheduled;
  }));
  EXPECT_TRUE(May("n1", keys_.Workload("w")));
}

}  // namespace
}  // namespace kmosix::controller
