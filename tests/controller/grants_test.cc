// controller/grants.h: the desired etcd write grants per node as a pure
// function of the workload and migration records (every record state that
// matters), and GrantReconciler against the fake AccessGrants on a fake
// clock (grants what is missing, keeps the role's own keys, revokes extras
// only after the grace, idempotent on replay, errors passed on).
#include "controller/grants.h"

#include <gtest/gtest.h>

#include "fakes/fake_access_grants.h"
#include "fakes/fake_clock.h"

namespace kmosix::controller {
namespace {

using api::MigrationPhase;
using api::WorkloadPhase;
using testing::FakeAccessGrants;
using testing::FakeClock;
using Keys = std::set<std::string>;

const cluster::KeyLayout kKeys;  // "/kmosix/"
const std::string W = "/kmosix/workloads/w";
const std::string M = "/kmosix/migrations/m1";

api::Workload Wl(WorkloadPhase phase, const std::string& node, const std::string& migration = "") {
  api::Workload w;
  w.spec.name = "w";
  w.spec.image = "img";
  w.status.phase = phase;
  w.status.node = node;
  w.status.migration = migration;
  return w;
}

api::Migration Mig(MigrationPhase phase, const std::string& workload = "w") {
  api::Migration m;
  m.id = "m1";
  m.workload = workload;
  m.source = "n1";
  m.target = "n2";
  m.phase = phase;
  return m;
}

NodeGrants Desired(const std::optional<api::Workload>& w, const std::optional<api::Migration>& m) {
  std::map<std::string, api::Workload> ws;
  std::map<std::string, api::Migration> ms;
  if (w) ws[w->spec.name] = *w;
  if (m) ms[m->id] = *m;
  return DesiredGrants(kKeys, ws, ms);
}

TEST(DesiredGrantsTest, PendingWorkloadGrantsNothing) {
  EXPECT_EQ(Desired(Wl(WorkloadPhase::kPending, ""), std::nullopt), NodeGrants{});
}

TEST(DesiredGrantsTest, OwnerWritesItsWorkloadWhileScheduledRunningOrLost) {
  for (auto phase : {WorkloadPhase::kScheduled, WorkloadPhase::kRunning, WorkloadPhase::kLost}) {
    EXPECT_EQ(Desired(Wl(phase, "n1"), std::nullopt), (NodeGrants{{"n1", Keys{W}}}))
        << api::WorkloadPhaseName(phase);
  }
}

TEST(DesiredGrantsTest, FromCheckpointOwnerWritesItsCheckpointRecordWhileRunning) {
  const std::string C = "/kmosix/checkpoints/w";
  api::Workload w = Wl(WorkloadPhase::kRunning, "n1");
  w.spec.restart_policy = api::RestartPolicy::kFromCheckpoint;
  w.spec.checkpoint_interval_seconds = 60;
  EXPECT_EQ(Desired(w, std::nullopt), (NodeGrants{{"n1", Keys{W, C}}}));
  for (auto phase : {WorkloadPhase::kScheduled, WorkloadPhase::kLost, WorkloadPhase::kMigrating}) {
    w.status.phase = phase;
    EXPECT_EQ(Desired(w, std::nullopt).count("n1") ? Desired(w, std::nullopt)["n1"].count(C) : 0,
              0u)
        << api::WorkloadPhaseName(phase);
  }
  // Another policy: never.
  w.status.phase = WorkloadPhase::kRunning;
  w.spec.restart_policy = api::RestartPolicy::kFromImage;
  w.spec.checkpoint_interval_seconds = 0;
  EXPECT_EQ(Desired(w, std::nullopt), (NodeGrants{{"n1", Keys{W}}}));
  EXPECT_TRUE(ManagedGrantKey(kKeys, C)) << "an extra checkpoint grant is revoked";
}

TEST(DesiredGrantsTest, FailedOrExitedWorkloadGrantsNothing) {
  for (auto phase : {WorkloadPhase::kFailed, WorkloadPhase::kExited}) {
    EXPECT_EQ(Desired(Wl(phase, "n1"), std::nullopt), NodeGrants{})
        << api::WorkloadPhaseName(phase);
  }
}

TEST(DesiredGrantsTest, OrderedMigrationGrantsSourceBothRecordsAndTargetTheWorkload) {
  // Pending order (also cancelled: the source still has to write Failed).
  for (bool cancelled : {false, true}) {
    api::Migration m = Mig(MigrationPhase::kPending);
    if (cancelled) m.cancel_requested_ms = 5;
    EXPECT_EQ(Desired(Wl(WorkloadPhase::kMigrating, "n1", "m1"), m),
              (NodeGrants{{"n1", Keys{W, M}}, {"n2", Keys{W}}}))
        << (cancelled ? "cancelled" : "pending");
  }
  EXPECT_EQ(Desired(Wl(WorkloadPhase::kMigrating, "n1", "m1"), Mig(MigrationPhase::kTransferring)),
            (NodeGrants{{"n1", Keys{W, M}}, {"n2", Keys{W}}}));
}

TEST(DesiredGrantsTest, CommittedButNotFinishedKeepsTheSourcesGrants) {
  // Ownership moved to n2 (Transfer); the source still writes the record's
  // phases and frees the workload record (FinishWorkload).
  for (auto phase : {MigrationPhase::kCommitting, MigrationPhase::kSucceeded}) {
    EXPECT_EQ(Desired(Wl(WorkloadPhase::kMigrating, "n2", "m1"), Mig(phase)),
              (NodeGrants{{"n1", Keys{W, M}}, {"n2", Keys{W}}}))
        << api::MigrationPhaseName(phase);
  }
}

TEST(DesiredGrantsTest, FinishedMigrationLeavesOnlyTheOwner) {
  EXPECT_EQ(Desired(Wl(WorkloadPhase::kRunning, "n2"), Mig(MigrationPhase::kSucceeded)),
            (NodeGrants{{"n2", Keys{W}}}));
  for (auto phase : {MigrationPhase::kFailed, MigrationPhase::kRolledBack}) {
    EXPECT_EQ(Desired(Wl(WorkloadPhase::kRunning, "n1"), Mig(phase)), (NodeGrants{{"n1", Keys{W}}}))
        << api::MigrationPhaseName(phase);
  }
}

TEST(DesiredGrantsTest, OrderTheWorkloadNoLongerNamesKeepsOnlyTheSourcesMigrationKey) {
  // A stale Pending order: the source refuses it (writes Failed).
  EXPECT_EQ(Desired(Wl(WorkloadPhase::kRunning, "n1"), Mig(MigrationPhase::kPending)),
            (NodeGrants{{"n1", Keys{W, M}}}));
}

TEST(DesiredGrantsTest, DeletedWorkload) {
  EXPECT_EQ(Desired(std::nullopt, Mig(MigrationPhase::kTransferring)),
            (NodeGrants{{"n1", Keys{M}}}));
  EXPECT_EQ(Desired(std::nullopt, Mig(MigrationPhase::kFailed)), NodeGrants{});
}

TEST(DesiredGrantsTest, MigrationOfAnotherWorkloadOrMissingGrantsNoWorkloadKey) {
  // The record names m1, but m1 moves another workload: only the owner.
  EXPECT_EQ(
      Desired(Wl(WorkloadPhase::kMigrating, "n1", "m1"), Mig(MigrationPhase::kSucceeded, "other")),
      (NodeGrants{{"n1", Keys{W}}}));
  // The record names a migration that does not exist.
  EXPECT_EQ(Desired(Wl(WorkloadPhase::kMigrating, "n1", "m1"), std::nullopt),
            (NodeGrants{{"n1", Keys{W}}}));
}

TEST(DesiredGrantsTest, NodesOfChanges) {
  std::map<std::string, api::Migration> ms{{"m1", Mig(MigrationPhase::kPending)}};
  api::Workload before = Wl(WorkloadPhase::kRunning, "n3");
  api::Workload after = Wl(WorkloadPhase::kMigrating, "n1", "m1");
  EXPECT_EQ(NodesOfWorkloadChange(&before, &after, ms), (Keys{"n1", "n2", "n3"}));
  EXPECT_EQ(NodesOfWorkloadChange(&before, nullptr, ms), (Keys{"n3"}));
  api::Migration m = Mig(MigrationPhase::kFailed);
  EXPECT_EQ(NodesOfMigrationChange(nullptr, &m), (Keys{"n1", "n2"}));
  EXPECT_TRUE(ManagedGrantKey(kKeys, W));
  EXPECT_TRUE(ManagedGrantKey(kKeys, M));
  EXPECT_FALSE(ManagedGrantKey(kKeys, "/kmosix/nodes/n1"));
  EXPECT_FALSE(ManagedGrantKey(kKeys, "/other/workloads/w"));
}

class GrantReconcilerTest : public ::testing::Test {
 protected:
  GrantReconcilerTest() : r_(fake_, clock_, Opts()) {
    fake_.AddRole("node-n1");
    // The static part of the role: read the prefix, write its own key.
    fake_.SetPermission("node-n1", "/kmosix/", "/kmosix0", FakeAccessGrants::Type::kRead);
    fake_.SetPermission("node-n1", "/kmosix/nodes/n1", "", FakeAccessGrants::Type::kReadWrite);
  }
  static GrantReconciler::Options Opts() {
    GrantReconciler::Options o;
    o.role_prefix = "node-";
    o.revoke_grace = std::chrono::seconds(3);
    return o;
  }
  std::vector<std::string> Held() { return *fake_.Granted("node-n1"); }

  FakeAccessGrants fake_;
  FakeClock clock_;
  GrantReconciler r_;
};

TEST_F(GrantReconcilerTest, GrantsWhatIsMissingAndKeepsTheRolesOwnKey) {
  auto out = r_.Reconcile("n1", {W, M});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->granted, 2);
  EXPECT_EQ(Held(), (std::vector<std::string>{M, "/kmosix/nodes/n1", W}));
  // Replayed: nothing to do, nothing called but the read.
  fake_.ClearCalls();
  out = r_.Reconcile("n1", {W, M});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->granted, 0);
  EXPECT_EQ(out->revoked, 0);
  EXPECT_EQ(fake_.Calls(), std::vector<std::string>{"granted node-n1"});
}

TEST_F(GrantReconcilerTest, RevokesAnExtraKeyOnlyAfterTheGrace) {
  ASSERT_TRUE(r_.Reconcile("n1", {W, M}).ok());
  auto out = r_.Reconcile("n1", {W});  // the migration ended
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->revoked, 0);
  ASSERT_TRUE(out->again_in.has_value());
  EXPECT_EQ(*out->again_in, std::chrono::seconds(3));
  EXPECT_TRUE(fake_.MayWrite("node-n1", M)) << "revoked inside the grace";
  clock_.Advance(std::chrono::seconds(2));
  out = r_.Reconcile("n1", {W});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->revoked, 0);
  EXPECT_EQ(*out->again_in, std::chrono::seconds(1));
  clock_.Advance(std::chrono::seconds(1));
  out = r_.Reconcile("n1", {W});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->revoked, 1);
  EXPECT_FALSE(out->again_in.has_value());
  EXPECT_EQ(Held(), (std::vector<std::string>{"/kmosix/nodes/n1", W}));
  EXPECT_TRUE(fake_.MayWrite("node-n1", "/kmosix/nodes/n1")) << "the role's own key was touched";
}

TEST_F(GrantReconcilerTest, AKeyDesiredAgainInsideTheGraceIsKept) {
  ASSERT_TRUE(r_.Reconcile("n1", {W}).ok());
  ASSERT_TRUE(r_.Reconcile("n1", {}).ok());  // extra from now
  clock_.Advance(std::chrono::seconds(2));
  ASSERT_TRUE(r_.Reconcile("n1", {W}).ok());  // needed again: the grace clock is reset
  clock_.Advance(std::chrono::seconds(2));
  auto out = r_.Reconcile("n1", {});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->revoked, 0) << "revoked 2 s after it became extra again";
  EXPECT_TRUE(fake_.MayWrite("node-n1", W));
}

TEST_F(GrantReconcilerTest, GrantNowResetsAPendingRevoke) {
  ASSERT_TRUE(r_.Reconcile("n1", {}).ok());
  ASSERT_TRUE(r_.GrantNow("n1", {W}).ok());  // a placement, before its record is cached
  auto out = r_.Reconcile("n1", {});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->revoked, 0);
  EXPECT_TRUE(fake_.MayWrite("node-n1", W));
}

TEST_F(GrantReconcilerTest, ErrorsArePassedOnWithTheNode) {
  auto missing = r_.Reconcile("n9", {W});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find("node-n9"), std::string::npos);
  fake_.SetDenied(true);
  auto denied = r_.Reconcile("n1", {W});
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), Code::kPermissionDenied);
  EXPECT_EQ(r_.GrantNow("n1", {W}).code(), Code::kPermissionDenied);
}

}  // namespace
}  // namespace kmosix::controller
