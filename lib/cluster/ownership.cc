#include "cluster/ownership.h"

#include <algorithm>

#include "kmosix/json_text.h"

namespace kmosix::cluster::ownership {
namespace {

using api::MigrationPhase;
using api::WorkloadPhase;

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

bool Present(const std::optional<Stored<api::Workload>>& w) { return w && w->damaged.ok(); }
bool Present(const std::optional<Stored<api::Migration>>& m) { return m && m->damaged.ok(); }

// The migration record says it ended without moving the workload.
bool EndedUnmoved(const Records& rec) {
  return Present(rec.migration) && (rec.migration->value.phase == MigrationPhase::kFailed ||
                                    rec.migration->value.phase == MigrationPhase::kRolledBack);
}

// The workload record names `node` as its owner for migration `id`: in
// flight (migration == id) or finished (id in migrations; the source appends
// every finished id, so one whose record ended Failed or RolledBack does not
// count).
bool MovedFor(const Records& rec, const std::string& node, const std::string& id) {
  if (!Present(rec.workload) || node.empty()) return false;
  const api::WorkloadStatus& st = rec.workload->value.status;
  return st.node == node &&
         (st.migration == id || (Contains(st.migrations, id) && !EndedUnmoved(rec)));
}

std::string CancelText(const api::Migration& m) {
  return m.cancelled_by.empty() ? "cancelled" : "cancelled by " + m.cancelled_by;
}

std::string OwnerText(const api::WorkloadStatus& st) {
  return "the workload is owned by " + (st.node.empty() ? std::string("no node") : st.node) +
         " at epoch " + std::to_string(st.epoch) + " (migration \"" + st.migration + "\")";
}

// Compares: each record unchanged since it was read (absent: still absent).
Compare Unchanged(const std::string& key, int64_t mod_revision, bool present) {
  return present ? Compare::Unchanged(key, mod_revision) : Compare::Absent(key);
}

Decision Refuse(Status why, const Records& rec) {
  Decision d;
  d.status = std::move(why);
  if (Present(rec.workload)) d.workload = rec.workload->value;
  if (Present(rec.migration)) d.migration = rec.migration->value;
  return d;
}

Decision NoWrite(const Records& rec) { return Refuse(Status::Ok(), rec); }

// A decision writing `w` and/or `m` (nullptr: left as read), with compares
// on both records (and the fence).
Decision Write(const KeyLayout& keys, const std::string& workload, const std::string& id,
               const Records& rec, const api::Workload* w, const api::Migration* m,
               const std::optional<Compare>& fence) {
  Decision d = NoWrite(rec);
  Txn txn;
  const std::string wkey = keys.Workload(workload);
  const std::string mkey = keys.Migration(id);
  txn.compares.push_back(
      Unchanged(wkey, rec.workload ? rec.workload->mod_revision : 0, rec.workload.has_value()));
  txn.compares.push_back(
      Unchanged(mkey, rec.migration ? rec.migration->mod_revision : 0, rec.migration.has_value()));
  if (fence) txn.compares.push_back(*fence);
  if (w) {
    txn.then_ops.push_back(TxnOp::Put(wkey, DumpJson(WorkloadToJson(*w))));
    d.workload = *w;
  }
  if (m) {
    txn.then_ops.push_back(TxnOp::Put(mkey, DumpJson(MigrationToJson(*m))));
    d.migration = *m;
  }
  d.txn = std::move(txn);
  return d;
}

template <typename T>
std::optional<Stored<T>> Decode(const std::optional<KeyValue>& kv,
                                StatusOr<T> (*from_json)(const nlohmann::json&)) {
  if (!kv) return std::nullopt;
  Stored<T> s;
  s.mod_revision = kv->mod_revision;
  auto parsed = ParseRecord<T>(kv->value, from_json);
  if (parsed.ok()) {
    s.value = std::move(*parsed);
  } else {
    s.damaged = parsed.status().Annotate(kv->key);
  }
  return s;
}

}  // namespace

std::string_view InDoubtAnswerName(InDoubtAnswer a) {
  switch (a) {
    case InDoubtAnswer::kCommitted:
      return "Committed";
    case InDoubtAnswer::kNotCommitted:
      return "NotCommitted";
    case InDoubtAnswer::kSuperseded:
      return "Superseded";
    case InDoubtAnswer::kUndecided:
      return "Undecided";
  }
  return "Undecided";
}

// ---- source ------------------------------------------------------------------

Decision Transfer(const KeyLayout& keys, const MigrationRef& ref, uint32_t target_pid,
                  int64_t now_ms, const Records& rec) {
  if (!rec.workload) return Refuse(ConflictError("the workload record was deleted"), rec);
  if (!rec.workload->damaged.ok()) {
    return Refuse(ConflictError("workload record unreadable: " + rec.workload->damaged.message()),
                  rec);
  }
  const api::WorkloadStatus& st = rec.workload->value.status;
  // Done already: past the commit point (refusing now would thaw a source
  // that no longer owns it).
  if (MovedFor(rec, ref.target, ref.id)) return NoWrite(rec);
  if (st.migration != ref.id) {
    return Refuse(ConflictError("the workload record names migration \"" + st.migration +
                                "\", not " + ref.id),
                  rec);
  }
  if (rec.migration) {  // absent: no order to cancel it (e.g. an unmanaged test)
    if (!rec.migration->damaged.ok()) {
      return Refuse(
          ConflictError("migration record unreadable: " + rec.migration->damaged.message()), rec);
    }
    const api::Migration& m = rec.migration->value;
    if (m.cancel_requested_ms > 0) return Refuse(ConflictError("migration " + CancelText(m)), rec);
    if (api::IsFinal(m.phase)) {
      return Refuse(ConflictError("the migration record is already " +
                                  std::string(api::MigrationPhaseName(m.phase)) +
                                  (m.error.empty() ? "" : ": " + m.error)),
                    rec);
    }
  }
  if (st.node != ref.source) return Refuse(ConflictError(OwnerText(st)), rec);
  if (st.phase != WorkloadPhase::kRunning && st.phase != WorkloadPhase::kMigrating) {
    return Refuse(ConflictError("the workload is " + std::string(api::WorkloadPhaseName(st.phase))),
                  rec);
  }
  api::Workload w = rec.workload->value;
  w.status.node = ref.target;
  ++w.status.epoch;
  w.status.phase = WorkloadPhase::kMigrating;
  w.status.pid = target_pid;
  w.status.started_ms = now_ms;
  return Write(keys, ref.workload, ref.id, rec, &w, nullptr, std::nullopt);
}

Decision Revert(const KeyLayout& keys, const MigrationRef& ref, const Records& rec) {
  if (!rec.workload) return NoWrite(rec);  // deleted: nobody else owns it
  if (!rec.workload->damaged.ok()) {
    return Refuse(ConflictError("workload record unreadable: " + rec.workload->damaged.message()),
                  rec);
  }
  const api::WorkloadStatus& st = rec.workload->value.status;
  if (st.node == ref.source) return NoWrite(rec);
  const bool succeeded =
      Present(rec.migration) && rec.migration->value.phase == MigrationPhase::kSucceeded;
  if (st.node == ref.target && st.migration == ref.id && !succeeded) {
    api::Workload w = rec.workload->value;
    w.status.node = ref.source;
    ++w.status.epoch;
    w.status.pid = 0;
    return Write(keys, ref.workload, ref.id, rec, &w, nullptr, std::nullopt);
  }
  if (MovedFor(rec, ref.target, ref.id) || succeeded) {
    return Refuse(ConflictError("migration " + ref.id + " committed: " + ref.target +
                                " owns the workload at epoch " + std::to_string(st.epoch)),
                  rec);
  }
  return Refuse(ConflictError(OwnerText(st)), rec);
}

InDoubtVerdict InDoubt(const MigrationRef& ref, const Records& rec) {
  if ((rec.workload && !rec.workload->damaged.ok()) ||
      (rec.migration && !rec.migration->damaged.ok())) {
    return {InDoubtAnswer::kUndecided, "a record is unreadable"};
  }
  const bool succeeded = rec.migration && rec.migration->value.phase == MigrationPhase::kSucceeded;
  if (!rec.workload) {
    if (!rec.migration) {
      return {InDoubtAnswer::kUndecided,
              "neither the workload nor the migration has a record (wrong prefix?)"};
    }
    return {InDoubtAnswer::kSuperseded, "the workload record was deleted"};
  }
  const api::WorkloadStatus& st = rec.workload->value.status;
  if (MovedFor(rec, ref.target, ref.id)) {
    return {InDoubtAnswer::kCommitted, "the cluster names " + ref.target + " the owner at epoch " +
                                           std::to_string(st.epoch) + " for " + ref.id};
  }
  if (st.node == ref.source) {
    if (succeeded) {
      return {InDoubtAnswer::kUndecided, "the records disagree: the workload is " + ref.source +
                                             "'s but " + ref.id + " is recorded Succeeded"};
    }
    return {InDoubtAnswer::kNotCommitted, "the cluster names " + ref.source +
                                              " the owner at epoch " + std::to_string(st.epoch) +
                                              "; the ownership never moved to " + ref.target};
  }
  if (succeeded) {
    return {InDoubtAnswer::kSuperseded,
            ref.id + " is recorded Succeeded and the workload has moved on: " + OwnerText(st)};
  }
  if (st.recovery && st.recovery->lost_node == ref.source) {
    // Say why: the source's node was lost and its node-loss policy restarted
    // the workload elsewhere while the source was away.
    return {InDoubtAnswer::kSuperseded,
            OwnerText(st) + ", where it was restarted after node " + ref.source + " was lost"};
  }
  return {InDoubtAnswer::kSuperseded, OwnerText(st)};
}

// ---- target ------------------------------------------------------------------

bool OwnedHere(const std::string& node, const std::string& id, const Records& rec) {
  return MovedFor(rec, node, id);
}

// ---- controller --------------------------------------------------------------

Decision Verdict(const KeyLayout& keys, const std::string& id, const VerdictCause& cause,
                 int64_t now_ms, const std::optional<Compare>& fence, const Records& rec) {
  if (!rec.migration) return NoWrite(rec);
  if (!rec.migration->damaged.ok()) {
    return Refuse(ConflictError("migration record unreadable: " + rec.migration->damaged.message()),
                  rec);
  }
  if (api::IsFinal(rec.migration->value.phase)) return NoWrite(rec);
  api::Migration m = rec.migration->value;
  const bool moved = MovedFor(rec, m.target, id);
  m.phase = moved ? MigrationPhase::kSucceeded : MigrationPhase::kFailed;
  m.error = moved ? "" : cause.fault.message;
  m.updated_ms = m.finished_ms = now_ms;
  if (!m.fault) m.fault = cause.fault;  // the first fault met stays
  m.resolution = api::MigrationResolution{moved ? api::MigrationOutcome::kCommitted : cause.unmoved,
                                          cause.by, now_ms};
  std::optional<api::Workload> w;
  if (Present(rec.workload) && rec.workload->value.status.migration == id) {
    w = rec.workload->value;
    w->status.migration.clear();
    if (moved) {
      if (!Contains(w->status.migrations, id)) w->status.migrations.push_back(id);
      w->status.started_ms = now_ms;
    }
    if (w->status.phase == WorkloadPhase::kMigrating) w->status.phase = WorkloadPhase::kRunning;
  }
  return Write(keys, m.workload, id, rec, w ? &*w : nullptr, &m, fence);
}

Decision Cancel(const KeyLayout& keys, const std::string& id, const std::string& cancelled_by,
                int64_t now_ms, const Records& rec) {
  if (!rec.migration) return Refuse(NotFoundError("no migration \"" + id + "\""), rec);
  if (!rec.migration->damaged.ok()) {
    return Refuse(FailedError("migration record is damaged: " + rec.migration->damaged.message()),
                  rec);
  }
  const api::Migration& m = rec.migration->value;
  const std::string phase(api::MigrationPhaseName(m.phase));
  if (api::IsFinal(m.phase))
    return Refuse(ConflictError("migration " + id + " already ended: " + phase), rec);
  if (m.phase == MigrationPhase::kCommitting || m.phase == MigrationPhase::kResolving) {
    return Refuse(ConflictError("too late to cancel migration " + id + ": it is " + phase), rec);
  }
  if (m.cancel_requested_ms > 0) return NoWrite(rec);  // asked already
  if (rec.workload) {
    if (!rec.workload->damaged.ok()) {
      return Refuse(FailedError("workload record is damaged: " + rec.workload->damaged.message()),
                    rec);
    }
    const api::WorkloadStatus& st = rec.workload->value.status;
    if (st.node != m.source || st.migration != id) {
      return Refuse(
          ConflictError("too late to cancel migration " + id + ": the workload record names " +
                        (st.node.empty() ? std::string("no node") : st.node) +
                        (st.migration == id ? " already" : " and another migration")),
          rec);
    }
  }
  api::Migration next = m;
  next.cancel_requested_ms = next.updated_ms = now_ms;
  next.cancelled_by = cancelled_by;
  return Write(keys, m.workload, id, rec, nullptr, &next, std::nullopt);
}

// ---- reading and committing ----------------------------------------------------

StatusOr<Records> Read(StateStore& store, const KeyLayout& keys, const std::string& workload,
                       const std::string& id) {
  const std::string wkey = keys.Workload(workload);
  const std::string mkey = keys.Migration(id);
  KMX_ASSIGN_OR_RETURN(GetResult w, store.Get(wkey));
  for (int round = 0;; ++round) {
    KMX_ASSIGN_OR_RETURN(GetResult m, store.Get(mkey));
    KMX_ASSIGN_OR_RETURN(GetResult again, store.Get(wkey));
    const auto rev = [](const GetResult& g) { return g.kv ? g.kv->mod_revision : 0; };
    if (rev(again) == rev(w) || round >= 20) {
      if (rev(again) != rev(w)) return RetryError(wkey + " kept changing while read");
      Records rec;
      rec.workload = Decode<api::Workload>(again.kv, WorkloadFromJson);
      rec.migration = Decode<api::Migration>(m.kv, MigrationFromJson);
      return rec;
    }
    w = std::move(again);
  }
}

StatusOr<Decision> Apply(StateStore& store, const KeyLayout& keys, const std::string& workload,
                         const std::string& id,
                         const std::function<Decision(const Records&)>& decide, int attempts) {
  for (int attempt = 0; attempt < std::max(1, attempts); ++attempt) {
    KMX_ASSIGN_OR_RETURN(Records rec, Read(store, keys, workload, id));
    Decision d = decide(rec);
    if (!d.status.ok()) return d.status;
    if (!d.txn) return d;
    KMX_ASSIGN_OR_RETURN(TxnResult r, store.Commit(*d.txn));
    if (r.succeeded) return d;
  }
  return RetryError("the records of " + workload + " and migration " + id + " kept changing");
}

}  // namespace kmosix::cluster::ownership
