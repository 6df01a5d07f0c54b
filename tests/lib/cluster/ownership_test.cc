// The ownership protocol (lib/cluster/ownership.h) as one decision table:
// every state of the two records (workload: absent, damaged, naming the
// source / the target / another node, with this migration, another one, none
// or this one finished; migration: absent, damaged, Pending, in flight,
// Committing, Resolving, Succeeded, Failed, RolledBack, cancelled) x every
// actor (source Transfer, Revert and in-doubt answer, target oracle,
// controller verdict, controller cancel). For each cell the records are
// written to a store, the actor's decision is read and committed through
// ownership::Apply, and the outcome and the records left in the store are
// checked against the table, written from the protocol's description.
//
// Built twice: cluster_ownership_test runs it on the fake store (unit),
// cluster_ownership_etcd_test (KMX_OWNERSHIP_ON_ETCD) on a private etcd
// (integration; skips loudly without the etcd binary).
#include "cluster/ownership.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "cluster/records.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"
#if KMX_OWNERSHIP_ON_ETCD
#include "etcd/etcd_state_store.h"
#include "support/private_etcd.h"
#endif

namespace kmosix::cluster::ownership {
namespace {

using api::MigrationPhase;
using api::WorkloadPhase;

constexpr char kId[] = "m-1";
constexpr char kSource[] = "node-a";
constexpr char kTarget[] = "node-b";
constexpr char kOther[] = "node-c";
constexpr int64_t kEpoch = 7;
constexpr int64_t kNow = 1'700'000'000'000;
constexpr uint32_t kTargetPid = 4242;
constexpr char kLostError[] = "source node-a was lost before ownership moved to node-b";
// The controller's cause for its verdict on a lost source.
const VerdictCause kLostCause{api::MakeFault(
    api::FaultKind::kSourceLost, MigrationPhase::kTransferring, kSource, kLostError, kNow)};

// ---- the record states -------------------------------------------------------

enum class W {
  kAbsent,
  kDamaged,
  kSrcMigrating,  // node S, migration id, Migrating (ordered, not moved)
  kSrcRunning,    // node S, migration id, Running (order accepted, not yet Migrating)
  kSrcLost,       // node S, migration id, Lost
  kSrcFree,       // node S, no migration (e.g. a Failed verdict cleared it)
  kSrcOther,      // node S, another migration in flight
  kTgtMoved,      // node T, migration id, Migrating (Transfer happened)
  kTgtDone,       // node T, no migration, id in migrations (finished; moved unless its
                  // record ended Failed or RolledBack: the source appends every end)
  kTgtOther,      // node T, no migration, id not in migrations (placed there otherwise)
  kElsewhere,     // node X, no migration (e.g. restarted elsewhere after a loss)
  kUnplaced,      // Pending, no node
};
const std::vector<W> kAllW = {W::kAbsent,  W::kDamaged,  W::kSrcMigrating, W::kSrcRunning,
                              W::kSrcLost, W::kSrcFree,  W::kSrcOther,     W::kTgtMoved,
                              W::kTgtDone, W::kTgtOther, W::kElsewhere,    W::kUnplaced};
std::string Name(W w) {
  const char* n[] = {"WAbsent",  "WDamaged",  "WSrcMigrating", "WSrcRunning",
                     "WSrcLost", "WSrcFree",  "WSrcOther",     "WTgtMoved",
                     "WTgtDone", "WTgtOther", "WElsewhere",    "WUnplaced"};
  return n[static_cast<int>(w)];
}

enum class M {
  kAbsent,
  kDamaged,
  kPending,
  kTransferring,
  kCommitting,
  kResolving,
  kSucceeded,
  kFailed,
  kRolledBack,
  kCancelled,  // Restoring, cancel requested
};
const std::vector<M> kAllM = {M::kAbsent,     M::kDamaged,   M::kPending,   M::kTransferring,
                              M::kCommitting, M::kResolving, M::kSucceeded, M::kFailed,
                              M::kRolledBack, M::kCancelled};
std::string Name(M m) {
  const char* n[] = {"MAbsent",    "MDamaged",   "MPending", "MTransferring", "MCommitting",
                     "MResolving", "MSucceeded", "MFailed",  "MRolledBack",   "MCancelled"};
  return n[static_cast<int>(m)];
}

std::optional<api::Workload> WorkloadOf(W w) {
  if (w == W::kAbsent || w == W::kDamaged) return std::nullopt;
  api::Workload r;
  r.spec.name = "work";
  r.spec.image = "demo:1";
  r.spec.args = {"/bin/tick"};
  r.status.created_ms = 1000;
  auto set = [&](WorkloadPhase phase, const std::string& node, int64_t epoch,
                 const std::string& migration, uint32_t pid, int64_t started_ms,
                 std::vector<std::string> migrations) {
    r.status.phase = phase;
    r.status.node = node;
    r.status.epoch = epoch;
    r.status.migration = migration;
    r.status.pid = pid;
    r.status.started_ms = started_ms;
    r.status.migrations = std::move(migrations);
  };
  switch (w) {
    case W::kSrcMigrating:
      set(WorkloadPhase::kMigrating, kSource, kEpoch, kId, 100, 2000, {"m-0"});
      break;
    case W::kSrcRunning:
      set(WorkloadPhase::kRunning, kSource, kEpoch, kId, 100, 2000, {"m-0"});
      break;
    case W::kSrcLost:
      set(WorkloadPhase::kLost, kSource, kEpoch, kId, 100, 2000, {"m-0"});
      break;
    case W::kSrcFree:
      set(WorkloadPhase::kRunning, kSource, kEpoch, "", 100, 2000, {"m-0"});
      break;
    case W::kSrcOther:
      set(WorkloadPhase::kMigrating, kSource, kEpoch, "m-9", 100, 2000, {"m-0"});
      break;
    case W::kTgtMoved:
      set(WorkloadPhase::kMigrating, kTarget, kEpoch, kId, 200, 3000, {"m-0"});
      break;
    case W::kTgtDone:
      set(WorkloadPhase::kRunning, kTarget, kEpoch, "", 200, 3000, {"m-0", kId});
      break;
    case W::kTgtOther:
      set(WorkloadPhase::kRunning, kTarget, kEpoch, "", 200, 3000, {"m-0"});
      break;
    case W::kElsewhere:
      set(WorkloadPhase::kRunning, kOther, kEpoch + 3, "", 300, 4000, {"m-0"});
      break;
    case W::kUnplaced:
      set(WorkloadPhase::kPending, "", 0, "", 0, 0, {});
      break;
    default:
      break;
  }
  return r;
}

std::optional<api::Migration> MigrationOf(M m) {
  if (m == M::kAbsent || m == M::kDamaged) return std::nullopt;
  api::Migration r;
  r.id = kId;
  r.workload = "work";
  r.source = kSource;
  r.target = kTarget;
  r.reason = "test";
  r.requested_by = "api";
  r.epoch = kEpoch;
  r.created_ms = 500;
  r.updated_ms = 600;
  switch (m) {
    case M::kPending:
      r.phase = MigrationPhase::kPending;
      break;
    case M::kTransferring:
      r.phase = MigrationPhase::kTransferring;
      break;
    case M::kCommitting:
      r.phase = MigrationPhase::kCommitting;
      break;
    case M::kResolving:
      r.phase = MigrationPhase::kResolving;
      break;
    case M::kSucceeded:
      r.phase = MigrationPhase::kSucceeded;
      r.finished_ms = 600;
      break;
    case M::kFailed:
      r.phase = MigrationPhase::kFailed;
      r.error = "earlier failure";
      r.finished_ms = 600;
      break;
    case M::kRolledBack:
      r.phase = MigrationPhase::kRolledBack;
      r.error = "target aborted";
      r.finished_ms = 600;
      break;
    case M::kCancelled:
      r.phase = MigrationPhase::kRestoring;
      r.cancel_requested_ms = 550;
      r.cancelled_by = "drain";
      break;
    default:
      break;
  }
  return r;
}

// ---- the table -----------------------------------------------------------------

enum class Actor { kTransfer, kRevert, kInDoubt, kOracle, kVerdict, kCancel };
const std::vector<Actor> kAllActors = {Actor::kTransfer, Actor::kRevert,  Actor::kInDoubt,
                                       Actor::kOracle,   Actor::kVerdict, Actor::kCancel};
std::string Name(Actor a) {
  const char* n[] = {"Transfer", "Revert", "InDoubt", "Oracle", "Verdict", "Cancel"};
  return n[static_cast<int>(a)];
}

// What an actor's decision does to the records.
enum class Effect {
  kNone,           // nothing written (an ok without writes, or a refusal)
  kToTarget,       // workload: node T, epoch + 1, Migrating, pid := T's, startedMs := now
  kToSource,       // workload: node S, epoch + 1, pid 0
  kSucceeded,      // migration Succeeded; workload: migration "", id appended, startedMs, Running
  kSucceededOnly,  // migration Succeeded; workload untouched (it says so already)
  kFailedRelease,  // migration Failed; workload: migration "", Migrating -> Running
  kFailedOnly,     // migration Failed; workload untouched
  kCancel,         // migration: cancelRequestedMs, cancelledBy
};

struct Expect {
  Code code = Code::kOk;
  Effect effect = Effect::kNone;
  InDoubtAnswer answer = InDoubtAnswer::kUndecided;  // kInDoubt
  bool owned = false;                                // kOracle
};

// A row: the first row whose sets hold the cell's states decides. An empty
// set matches every state.
struct Row {
  Actor actor;
  std::vector<W> w;
  std::vector<M> m;
  Expect expect;
};

const std::vector<W> kSrcForId = {W::kSrcMigrating, W::kSrcRunning, W::kSrcLost};
const std::vector<W> kSrcAny = {W::kSrcMigrating, W::kSrcRunning, W::kSrcLost, W::kSrcFree,
                                W::kSrcOther};
const std::vector<M> kFinal = {M::kSucceeded, M::kFailed, M::kRolledBack};
const std::vector<M> kUnmoved = {M::kFailed, M::kRolledBack};

const std::vector<Row>& Table() {
  using A = Actor;
  using E = Effect;
  using I = InDoubtAnswer;
  static const std::vector<Row> rows = {
      // -- source Transfer (commit): moves S -> T only for this migration,
      //    never past a cancel or a final record.
      {A::kTransfer, {W::kAbsent, W::kDamaged}, {}, {Code::kConflict}},
      {A::kTransfer, {W::kTgtMoved}, {}, {Code::kOk}},  // done already
      {A::kTransfer, {W::kTgtDone}, kUnmoved, {Code::kConflict}},
      {A::kTransfer, {W::kTgtDone}, {}, {Code::kOk}},  // done already
      {A::kTransfer,
       {W::kSrcFree, W::kSrcOther, W::kTgtOther, W::kElsewhere, W::kUnplaced},
       {},
       {Code::kConflict}},
      {A::kTransfer, kSrcForId, {M::kDamaged, M::kCancelled}, {Code::kConflict}},
      {A::kTransfer, kSrcForId, kFinal, {Code::kConflict}},  // hole 6
      {A::kTransfer, {W::kSrcLost}, {}, {Code::kConflict}},
      {A::kTransfer, {W::kSrcMigrating, W::kSrcRunning}, {}, {Code::kOk, E::kToTarget}},
      // -- source Revert (before a thaw): back to S only from "moved for id".
      {A::kRevert, {W::kAbsent}, {}, {Code::kOk}},
      {A::kRevert, {W::kDamaged}, {}, {Code::kConflict}},
      {A::kRevert, kSrcAny, {}, {Code::kOk}},
      {A::kRevert, {W::kTgtMoved}, {M::kSucceeded}, {Code::kConflict}},
      {A::kRevert, {W::kTgtMoved}, {}, {Code::kOk, E::kToSource}},
      {A::kRevert, {}, {}, {Code::kConflict}},
      // -- source in doubt (the target forgot): the records answer (hole 5).
      {A::kInDoubt, {W::kDamaged}, {}, {Code::kOk, E::kNone, I::kUndecided}},
      {A::kInDoubt, {}, {M::kDamaged}, {Code::kOk, E::kNone, I::kUndecided}},
      {A::kInDoubt, {W::kAbsent}, {M::kAbsent}, {Code::kOk, E::kNone, I::kUndecided}},
      {A::kInDoubt, {W::kAbsent}, {}, {Code::kOk, E::kNone, I::kSuperseded}},
      {A::kInDoubt, {W::kTgtDone}, kUnmoved, {Code::kOk, E::kNone, I::kSuperseded}},
      {A::kInDoubt, {W::kTgtMoved, W::kTgtDone}, {}, {Code::kOk, E::kNone, I::kCommitted}},
      {A::kInDoubt, kSrcAny, {M::kSucceeded}, {Code::kOk, E::kNone, I::kUndecided}},
      {A::kInDoubt, kSrcAny, {}, {Code::kOk, E::kNone, I::kNotCommitted}},
      {A::kInDoubt, {}, {}, {Code::kOk, E::kNone, I::kSuperseded}},
      // -- target oracle (asked on the target node).
      {A::kOracle, {W::kTgtDone}, kUnmoved, {Code::kOk, E::kNone, {}, false}},
      {A::kOracle, {W::kTgtMoved, W::kTgtDone}, {}, {Code::kOk, E::kNone, {}, true}},
      {A::kOracle, {}, {}, {Code::kOk, E::kNone, {}, false}},
      // -- controller verdict (source lost / order timed out): one transaction.
      {A::kVerdict, {}, {M::kAbsent}, {Code::kOk}},
      {A::kVerdict, {}, {M::kDamaged}, {Code::kConflict}},
      {A::kVerdict, {}, kFinal, {Code::kOk}},
      {A::kVerdict, {W::kTgtMoved}, {}, {Code::kOk, E::kSucceeded}},
      {A::kVerdict, {W::kTgtDone}, {}, {Code::kOk, E::kSucceededOnly}},
      {A::kVerdict, kSrcForId, {}, {Code::kOk, E::kFailedRelease}},
      {A::kVerdict, {}, {}, {Code::kOk, E::kFailedOnly}},
      // -- controller cancel: only before the commit point.
      {A::kCancel, {}, {M::kAbsent}, {Code::kNotFound}},
      {A::kCancel, {}, {M::kDamaged}, {Code::kFailed}},
      {A::kCancel, {}, kFinal, {Code::kConflict}},
      {A::kCancel, {}, {M::kCommitting, M::kResolving}, {Code::kConflict}},
      {A::kCancel, {}, {M::kCancelled}, {Code::kOk}},  // asked already
      {A::kCancel, {W::kDamaged}, {}, {Code::kFailed}},
      {A::kCancel, {W::kAbsent}, {}, {Code::kOk, E::kCancel}},
      {A::kCancel, kSrcForId, {}, {Code::kOk, E::kCancel}},
      {A::kCancel, {}, {}, {Code::kConflict}},
  };
  return rows;
}

template <typename T>
bool In(const std::vector<T>& set, T v) {
  return set.empty() || std::find(set.begin(), set.end(), v) != set.end();
}

std::optional<Expect> Lookup(Actor a, W w, M m) {
  for (const Row& r : Table()) {
    if (r.actor == a && In(r.w, w) && In(r.m, m)) return r.expect;
  }
  return std::nullopt;
}

// The records an effect leaves, from the records before.
void ApplyEffect(Effect e, std::optional<api::Workload>& w, std::optional<api::Migration>& m) {
  switch (e) {
    case Effect::kNone:
      return;
    case Effect::kToTarget:
      w->status.node = kTarget;
      ++w->status.epoch;
      w->status.phase = WorkloadPhase::kMigrating;
      w->status.pid = kTargetPid;
      w->status.started_ms = kNow;
      return;
    case Effect::kToSource:
      w->status.node = kSource;
      ++w->status.epoch;
      w->status.pid = 0;
      return;
    case Effect::kSucceededOnly:
      m->phase = MigrationPhase::kSucceeded;
      m->error = "";
      m->updated_ms = m->finished_ms = kNow;
      m->fault = kLostCause.fault;
      m->resolution = {api::MigrationOutcome::kCommitted, api::Decider::kController, kNow};
      return;
    case Effect::kSucceeded:
      m->phase = MigrationPhase::kSucceeded;
      m->error = "";
      m->updated_ms = m->finished_ms = kNow;
      m->fault = kLostCause.fault;
      m->resolution = {api::MigrationOutcome::kCommitted, api::Decider::kController, kNow};
      w->status.migration.clear();
      w->status.migrations.push_back(kId);
      w->status.started_ms = kNow;
      w->status.phase = WorkloadPhase::kRunning;
      return;
    case Effect::kFailedRelease:
      w->status.migration.clear();
      if (w->status.phase == WorkloadPhase::kMigrating) w->status.phase = WorkloadPhase::kRunning;
      [[fallthrough]];
    case Effect::kFailedOnly:
      m->phase = MigrationPhase::kFailed;
      m->error = kLostError;
      m->updated_ms = m->finished_ms = kNow;
      m->fault = kLostCause.fault;
      m->resolution = {api::MigrationOutcome::kAbandoned, api::Decider::kController, kNow};
      return;
    case Effect::kCancel:
      m->cancel_requested_ms = m->updated_ms = kNow;
      m->cancelled_by = "api";
      return;
  }
}

const MigrationRef kRef{kId, "work", kSource, kTarget};

// ---- the stores -------------------------------------------------------------------

class OwnershipTable : public ::testing::Test {
 protected:
  void SetUp() override {
#if KMX_OWNERSHIP_ON_ETCD
    if (auto why = kmosix::testing::EtcdSkipReason(); !why.empty()) {
      GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
    }
    etcd_ = std::make_unique<kmosix::testing::PrivateEtcd>();
    ASSERT_TRUE(etcd_->Start()) << "log: " << etcd_->dir() << "/etcd.log";
    store_ = std::make_unique<EtcdStateStore>(kmosix::testing::TestEtcdConfig(etcd_->endpoint()));
#else
    store_ = std::make_unique<kmosix::testing::FakeStateStore>(clock_);
#endif
  }

  StateStore& store() { return *store_; }

  // Writes the cell's records under a fresh prefix; returns its layout.
  KeyLayout Seed(W w, M m, int cell) {
    KeyLayout keys;
    keys.prefix = "/own-" + std::to_string(cell) + "/";
    // A leader key, for the controller's fence.
    EXPECT_TRUE(store().Put(keys.Leader(), "controller-1").ok());
    if (w == W::kDamaged) {
      EXPECT_TRUE(store().Put(keys.Workload("work"), "{not json").ok());
    } else if (auto rec = WorkloadOf(w)) {
      EXPECT_TRUE(store().Put(keys.Workload("work"), WorkloadToJson(*rec).dump()).ok());
    }
    if (m == M::kDamaged) {
      EXPECT_TRUE(store().Put(keys.Migration(kId), "[]").ok());
    } else if (auto rec = MigrationOf(m)) {
      EXPECT_TRUE(store().Put(keys.Migration(kId), MigrationToJson(*rec).dump()).ok());
    }
    return keys;
  }

  Compare Fence(const KeyLayout& keys) {
    auto got = store().Get(keys.Leader());
    EXPECT_TRUE(got.ok() && got->kv);
    return Compare::CreateRevision(keys.Leader(), Compare::Op::kEqual,
                                   got.ok() && got->kv ? got->kv->create_revision : 0);
  }

  std::optional<std::string> RawValue(const std::string& key) {
    auto got = store().Get(key);
    EXPECT_TRUE(got.ok());
    if (!got.ok() || !got->kv) return std::nullopt;
    return got->kv->value;
  }

  // Runs one cell: decides, commits, compares with the table.
  void RunCell(Actor actor, W w, M m, int cell) {
    SCOPED_TRACE(Name(actor) + " x " + Name(w) + " x " + Name(m));
    std::optional<Expect> expect = Lookup(actor, w, m);
    ASSERT_TRUE(expect.has_value()) << "no row of the table covers this cell";
    const KeyLayout keys = Seed(w, m, cell);
    const auto w_before = RawValue(keys.Workload("work"));
    const auto m_before = RawValue(keys.Migration(kId));

    if (actor == Actor::kInDoubt || actor == Actor::kOracle) {
      auto rec = Read(store(), keys, "work", kId);
      ASSERT_TRUE(rec.ok()) << rec.status().ToString();
      if (actor == Actor::kInDoubt) {
        InDoubtVerdict v = InDoubt(kRef, *rec);
        EXPECT_EQ(InDoubtAnswerName(v.answer), InDoubtAnswerName(expect->answer)) << v.reason;
        EXPECT_FALSE(v.reason.empty());
      } else {
        EXPECT_EQ(OwnedHere(kTarget, kId, *rec), expect->owned);
        // A node the migration does not go to is never told it owns it.
        EXPECT_FALSE(OwnedHere(kOther, kId, *rec));
      }
    } else {
      const Compare fence = Fence(keys);
      auto decide = [&](const Records& rec) -> Decision {
        switch (actor) {
          case Actor::kTransfer:
            return Transfer(keys, kRef, kTargetPid, kNow, rec);
          case Actor::kRevert:
            return Revert(keys, kRef, rec);
          case Actor::kVerdict:
            return Verdict(keys, kId, kLostCause, kNow, fence, rec);
          case Actor::kCancel:
            return Cancel(keys, kId, "api", kNow, rec);
          default:
            return {};
        }
      };
      auto done = Apply(store(), keys, "work", kId, decide);
      EXPECT_EQ(done.ok() ? Code::kOk : done.status().code(), expect->code)
          << (done.ok() ? std::string("ok") : done.status().ToString());
      if (!done.ok()) {
        EXPECT_FALSE(done.status().message().empty());
      }
      if (done.ok() && expect->effect == Effect::kNone) {
        EXPECT_FALSE(done->txn.has_value());
      }
      if (done.ok() && expect->effect != Effect::kNone) {
        ASSERT_TRUE(done->txn.has_value());
        // One transaction, comparing both records (and the controller's fence).
        EXPECT_GE(done->txn->compares.size(), 2u);
        const bool fenced = std::any_of(done->txn->compares.begin(), done->txn->compares.end(),
                                        [&](const Compare& c) { return c.key == keys.Leader(); });
        EXPECT_EQ(fenced, actor == Actor::kVerdict);
      }
    }

    // The records left in the store.
    if (expect->effect == Effect::kNone) {
      EXPECT_EQ(RawValue(keys.Workload("work")), w_before);
      EXPECT_EQ(RawValue(keys.Migration(kId)), m_before);
      return;
    }
    std::optional<api::Workload> want_w = WorkloadOf(w);
    std::optional<api::Migration> want_m = MigrationOf(m);
    ApplyEffect(expect->effect, want_w, want_m);
    if (want_w) {
      auto now = RawValue(keys.Workload("work"));
      ASSERT_TRUE(now.has_value());
      auto got = ParseRecord<api::Workload>(*now, WorkloadFromJson);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(WorkloadToJson(*got), WorkloadToJson(*want_w));
    } else {
      EXPECT_EQ(RawValue(keys.Workload("work")), w_before);
    }
    if (want_m) {
      auto now = RawValue(keys.Migration(kId));
      ASSERT_TRUE(now.has_value());
      auto got = ParseRecord<api::Migration>(*now, MigrationFromJson);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(MigrationToJson(*got), MigrationToJson(*want_m));
    } else {
      EXPECT_EQ(RawValue(keys.Migration(kId)), m_before);
    }
  }

  kmosix::testing::FakeClock clock_;
#if KMX_OWNERSHIP_ON_ETCD
  std::unique_ptr<kmosix::testing::PrivateEtcd> etcd_;
#endif
  std::unique_ptr<StateStore> store_;
};

// One ctest name per store (both binaries are registered).
#if KMX_OWNERSHIP_ON_ETCD
using OwnershipTableOnEtcd = OwnershipTable;
#define KMX_OWNERSHIP_SUITE OwnershipTableOnEtcd
#else
#define KMX_OWNERSHIP_SUITE OwnershipTable
#endif

TEST_F(KMX_OWNERSHIP_SUITE, EveryRecordStateTimesEveryActor) {
  int cell = 0;
  for (Actor a : kAllActors) {
    for (W w : kAllW) {
      for (M m : kAllM) RunCell(a, w, m, cell++);
    }
  }
  EXPECT_EQ(cell, static_cast<int>(kAllActors.size() * kAllW.size() * kAllM.size()));
}

// Hole 6: the controller wrote the verdict Failed (its source was lost); the
// source comes back with a restored target and tries to commit: refused, and
// nothing moves.
TEST_F(KMX_OWNERSHIP_SUITE, AReturningSourceCannotCommitAMigrationTheControllerFailed) {
  // The state the old two-write verdict left between its writes: the
  // migration record Failed, the workload record still naming it.
  const KeyLayout keys = Seed(W::kSrcMigrating, M::kFailed, 9000);
  auto done = Apply(store(), keys, "work", kId, [&](const Records& rec) {
    return Transfer(keys, kRef, kTargetPid, kNow, rec);
  });
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), Code::kConflict);
  EXPECT_NE(done.status().message().find("Failed"), std::string::npos) << done.status().ToString();
  auto w = ParseRecord<api::Workload>(*RawValue(keys.Workload("work")), WorkloadFromJson);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->status.node, kSource);
  EXPECT_EQ(w->status.epoch, kEpoch);
}

// A verdict written while the source transfers: whichever commits first,
// the other's compare fails, and the re-read agrees with it. Source first:
// the verdict says Succeeded. Verdict first: the transfer is refused.
TEST_F(KMX_OWNERSHIP_SUITE, AVerdictAndATransferRacingAgreeOnOneEnd) {
  for (bool transfer_first : {true, false}) {
    SCOPED_TRACE(transfer_first ? "transfer first" : "verdict first");
    const KeyLayout keys = Seed(W::kSrcMigrating, M::kCommitting, transfer_first ? 9100 : 9101);
    auto rec = Read(store(), keys, "work", kId);
    ASSERT_TRUE(rec.ok());
    Decision transfer = Transfer(keys, kRef, kTargetPid, kNow, *rec);
    Decision verdict = Verdict(keys, kId, kLostCause, kNow, Fence(keys), *rec);
    ASSERT_TRUE(transfer.txn && verdict.txn);
    Decision& first = transfer_first ? transfer : verdict;
    Decision& second = transfer_first ? verdict : transfer;
    auto a = store().Commit(*first.txn);
    auto b = store().Commit(*second.txn);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(a->succeeded);
    EXPECT_FALSE(b->succeeded) << "both writers committed over the same records";
    // The loser decides again on fresh records.
    auto again = Apply(store(), keys, "work", kId, [&](const Records& r) {
      return transfer_first ? Verdict(keys, kId, kLostCause, kNow, Fence(keys), r)
                            : Transfer(keys, kRef, kTargetPid, kNow, r);
    });
    auto m = ParseRecord<api::Migration>(*RawValue(keys.Migration(kId)), MigrationFromJson);
    auto w = ParseRecord<api::Workload>(*RawValue(keys.Workload("work")), WorkloadFromJson);
    ASSERT_TRUE(m.ok() && w.ok());
    EXPECT_TRUE(w->status.migration.empty());
    if (transfer_first) {
      ASSERT_TRUE(again.ok()) << again.status().ToString();
      EXPECT_EQ(m->phase, MigrationPhase::kSucceeded);
      EXPECT_EQ(w->status.node, kTarget);
      EXPECT_EQ(w->status.migrations.back(), kId);
    } else {
      EXPECT_EQ(again.status().code(), Code::kConflict);
      EXPECT_EQ(m->phase, MigrationPhase::kFailed);
      EXPECT_EQ(w->status.node, kSource);
    }
  }
}

// Issue 13, "Also": the verdict's record says which fault the migration met
// and how it ended; a fault the source already reported (it was resolving
// when its node was lost) stays, the resolution is the controller's.
TEST_F(KMX_OWNERSHIP_SUITE, AVerdictKeepsTheFaultTheSourceReportedAndSaysWhoEndedIt) {
  const KeyLayout keys = Seed(W::kSrcMigrating, M::kCommitting, 9200);
  auto m = ParseRecord<api::Migration>(*RawValue(keys.Migration(kId)), MigrationFromJson);
  ASSERT_TRUE(m.ok());
  const api::MigrationFault reported =
      api::MakeFault(api::FaultKind::kEtcdUnavailable, MigrationPhase::kCommitting, "",
                     "etcd timed out", kNow - 5);
  m->phase = MigrationPhase::kResolving;
  m->fault = reported;
  ASSERT_TRUE(store().Put(keys.Migration(kId), MigrationToJson(*m).dump()).ok());
  auto done = Apply(store(), keys, "work", kId, [&](const Records& rec) {
    return Verdict(keys, kId, kLostCause, kNow, Fence(keys), rec);
  });
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  m = ParseRecord<api::Migration>(*RawValue(keys.Migration(kId)), MigrationFromJson);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->phase, MigrationPhase::kFailed);
  EXPECT_EQ(m->error, kLostError);
  EXPECT_EQ(m->fault, reported);
  ASSERT_TRUE(m->resolution.has_value());
  EXPECT_EQ(m->resolution->outcome, api::MigrationOutcome::kAbandoned);
  EXPECT_EQ(m->resolution->decided_by, api::Decider::kController);
  EXPECT_EQ(m->resolution->at_ms, kNow);
}

// A source back after its node was lost finds the workload restarted
// elsewhere by the node-loss policy: the records say so (the report's fault
// message, and so the migration's, names it).
TEST(OwnershipInDoubtTest, ASupersedingNodeLossRestartIsNamed) {
  Records rec;
  rec.workload.emplace();
  rec.workload->value.spec.name = "work";
  api::WorkloadStatus& st = rec.workload->value.status;
  st.phase = WorkloadPhase::kRunning;
  st.node = kOther;
  st.epoch = kEpoch + 2;
  st.recovery = api::Recovery{};
  st.recovery->lost_node = kSource;
  InDoubtVerdict v = InDoubt(kRef, rec);
  EXPECT_EQ(v.answer, InDoubtAnswer::kSuperseded);
  EXPECT_NE(v.reason.find("restarted after node node-a was lost"), std::string::npos) << v.reason;
  st.recovery->lost_node = kOther;  // a recovery from another loss says nothing of it
  v = InDoubt(kRef, rec);
  EXPECT_EQ(v.answer, InDoubtAnswer::kSuperseded);
  EXPECT_EQ(v.reason.find("restarted"), std::string::npos) << v.reason;
}

// The controller's verdict is fenced: a deposed leader writes nothing.
TEST_F(KMX_OWNERSHIP_SUITE, ADeposedLeadersVerdictWritesNothing) {
  const KeyLayout keys = Seed(W::kSrcMigrating, M::kCommitting, 9200);
  const Compare old_fence = Fence(keys);
  ASSERT_TRUE(store().Delete(keys.Leader()).ok());
  ASSERT_TRUE(store().Put(keys.Leader(), "controller-2").ok());  // a new term
  const auto w_before = RawValue(keys.Workload("work"));
  const auto m_before = RawValue(keys.Migration(kId));
  auto done = Apply(
      store(), keys, "work", kId,
      [&](const Records& r) { return Verdict(keys, kId, kLostCause, kNow, old_fence, r); }, 3);
  EXPECT_EQ(done.status().code(), Code::kRetry);
  EXPECT_EQ(RawValue(keys.Workload("work")), w_before);
  EXPECT_EQ(RawValue(keys.Migration(kId)), m_before);
}

}  // namespace
}  // namespace kmosix::cluster::ownership
