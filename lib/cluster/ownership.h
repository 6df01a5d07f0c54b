// The ownership protocol of a migrating workload, in one place: who may write
// what to workloads/<name> and migrations/<id> (records.h), for every actor,
// decided by pure functions over the two records as read, each answer carrying
// the exact writes as ONE transaction (compares on both records' mod
// revisions, plus the leader fence for the controller) for the caller to
// commit through the StateStore. Apply() is the read-decide-commit loop the
// agents and the controller share.
//
// The records (S = the migration's source node, T = its target, id = its id):
//   workloads/<name>.status: node (the owner) + epoch; migration (the id in
//     flight, "" = none); migrations (finished ids that moved it, oldest
//     first).
//   migrations/<id>: phase (final: Succeeded, RolledBack, Failed), error,
//     cancelRequestedMs (a cancel).
//
// The rule: the workload record names who owns the workload; it names T for
// id ("moved for id": node == T and either migration == id, or id in
// migrations while the migration record is not Failed/RolledBack - the
// source appends every finished id, moved or not) only through the source's
// Transfer, and a target commits only when the source asks or when the
// record says it moved for id (OwnedHere). Hence:
//   - Transfer (source, right before it asks T to commit): the record moves
//     S -> T (epoch + 1, phase Migrating, pid := T's) only while it names S
//     for id (node == S, migration == id, phase Running or Migrating) and the
//     migration record is neither cancelled nor final (absent: no order to
//     check, e.g. an unmanaged test). Already moved for id: ok, no write.
//     Anything else: kConflict (do not commit). The compare on the migration
//     record makes a cancel or a controller verdict written meanwhile fail
//     the transaction, and the re-read refuse: once the controller wrote a
//     verdict (or accepted a cancel), the migration never commits.
//   - Revert (source, after T answered Aborted, before it thaws): node == S
//     or record gone: ok, no write; node == T with migration == id: moves
//     back T -> S (epoch + 1, pid 0); moved for id and finished (id in
//     migrations) or recorded Succeeded: kConflict "committed"; any other
//     owner: kConflict. The caller never thaws on kConflict.
//   - InDoubt (source, when T has no record of id any more: forgotten after
//     its history, or lost; hole 5): the records answer, never T's "not
//     found". Moved for id, or recorded Succeeded: kCommitted (release the
//     copy). node == S: kNotCommitted (T cannot commit it: its oracle says
//     no and only S transfers; safe to thaw). Another owner, or the workload
//     deleted: kSuperseded (release the copy, never thaw). Unreadable
//     records, records that disagree (node == S but id recorded Succeeded),
//     or neither record there (a wrong prefix?): kUndecided (stay frozen,
//     ask again).
//   - OwnedHere (target oracle, for a restored copy its source stopped
//     asking about): moved for id to this node.
//   - Verdict (leading controller, on a lost source past its grace, a Pending
//     order timed out, or a Pending order the workload no longer waits for):
//     the migration record's final phase AND the workload record's release
//     in one transaction: moved for id -> Succeeded (and if the workload
//     record names id: migration := "", id appended to migrations, startedMs
//     := now); otherwise Failed with the cause's message as its error (and
//     if it names id: migration := "", node unchanged). Phase Migrating ->
//     Running either way. The migration record's fault is the cause's
//     unless it names one already (the first fault met stays); its
//     resolution says Committed (moved) or the cause's `unmoved` outcome,
//     decided by the cause's decider. A final record: no write. There is no moment at which the
//     migration record is final while the workload record still names id, so
//     a returning source either transfers before the verdict (and the
//     verdict says Succeeded) or is refused after it.
//   - Cancel (controller API): only while Pending..Restoring, not cancelled
//     yet, and the workload record names S with migration == id (or is
//     gone); writes cancelRequestedMs and cancelledBy, with compares on both
//     records (so it and Transfer cannot both succeed). Final: kConflict
//     "already ended"; Committing/Resolving or ownership moved: kConflict
//     "too late"; no record: kNotFound; damaged: kFailed.
//
// A Decision's status: ok (commit `txn` if set; nothing to write if not),
// kConflict (refused: the reason), kNotFound/kFailed (Cancel only, as above).
// A damaged (unparsable) record is refused (kConflict), never overwritten,
// except that a controller verdict still ends a migration whose workload
// record is damaged (compare on its revision; the workload is left alone).
//
// Ownership: value types and pure functions; Apply borrows the store.
// Thread-safety: pure functions are thread-safe; Apply may run concurrently
// (the transactions' compares serialise the writers).
// Errors: as values, nothing throws. Apply: the decision's refusal as it is;
// store errors as the store returns them (kRetry when unreachable; callers
// map kPermissionDenied); kRetry "kept changing" when every attempt lost its
// compare (another writer, or, with a fence, a lost leadership: see
// Apply).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "api/types.h"
#include "cluster/records.h"
#include "kmosix/state_store.h"
#include "kmosix/status.h"

namespace kmosix::cluster::ownership {

// A record as read: absent (nullopt), damaged (`damaged` not ok, `value`
// meaningless) or its value, with the key's mod_revision.
template <typename T>
struct Stored {
  T value{};
  int64_t mod_revision = 0;
  Status damaged;
};

// Both records of one migration, read so that they held together at one
// moment (see Read).
struct Records {
  std::optional<Stored<api::Workload>> workload;
  std::optional<Stored<api::Migration>> migration;
};

// Which migration: its id, workload and nodes.
struct MigrationRef {
  std::string id;
  std::string workload;
  std::string source;
  std::string target;
};

struct Decision {
  Status status;           // see the file comment
  std::optional<Txn> txn;  // the writes (status ok only); nullopt: nothing to write
  // The records as they are once `txn` commits (as read if nothing is
  // written; nullopt: absent or damaged).
  std::optional<api::Workload> workload;
  std::optional<api::Migration> migration;
};

// ---- source ------------------------------------------------------------------
Decision Transfer(const KeyLayout& keys, const MigrationRef& ref, uint32_t target_pid,
                  int64_t now_ms, const Records& rec);
Decision Revert(const KeyLayout& keys, const MigrationRef& ref, const Records& rec);

enum class InDoubtAnswer {
  kCommitted,     // the target owns it for this migration: release the copy here
  kNotCommitted,  // the source owns it and the target cannot commit: thaw
  kSuperseded,    // another owner (or deleted): release, never thaw
  kUndecided,     // the records cannot say: keep it frozen, ask again
};
std::string_view InDoubtAnswerName(InDoubtAnswer a);
struct InDoubtVerdict {
  InDoubtAnswer answer = InDoubtAnswer::kUndecided;
  std::string reason;
};
InDoubtVerdict InDoubt(const MigrationRef& ref, const Records& rec);

// ---- target ------------------------------------------------------------------
// The workload record names `node` as owner for migration `id`.
bool OwnedHere(const std::string& node, const std::string& id, const Records& rec);

// ---- controller --------------------------------------------------------------
// Why a migration is ended from outside its source's driver (the leading
// controller, or a source that has no journal of it), and what that means
// when its ownership did not move.
struct VerdictCause {
  api::MigrationFault fault;  // its message is the record's error when Failed
  api::MigrationOutcome unmoved = api::MigrationOutcome::kAbandoned;
  api::Decider by = api::Decider::kController;
};
// Ends migration `id` (Succeeded when its ownership moved, else Failed for
// `cause`), see the file comment. `fence`: the leader's compare, or nullopt.
Decision Verdict(const KeyLayout& keys, const std::string& id, const VerdictCause& cause,
                 int64_t now_ms, const std::optional<Compare>& fence, const Records& rec);
Decision Cancel(const KeyLayout& keys, const std::string& id, const std::string& cancelled_by,
                int64_t now_ms, const Records& rec);

// ---- reading and committing ----------------------------------------------------
// Reads workloads/<workload> and migrations/<id>; the workload record is read
// again after the migration record until it is unchanged, so the pair held
// together at the moment the migration record was read. Store errors as
// returned.
StatusOr<Records> Read(StateStore& store, const KeyLayout& keys, const std::string& workload,
                       const std::string& id);

// Read, decide, commit; a transaction whose compares fail reads again, up to
// `attempts` times (then kRetry "kept changing"). Returns the committed (or
// write-free) decision, or its refusal status, or a store error.
StatusOr<Decision> Apply(StateStore& store, const KeyLayout& keys, const std::string& workload,
                         const std::string& id,
                         const std::function<Decision(const Records&)>& decide, int attempts = 10);

}  // namespace kmosix::cluster::ownership
