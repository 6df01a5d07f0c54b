// The source side of a live migration: a state machine over the
// CheckpointEngine and Transport seams that drives one migration to an end in
// which the workload runs exactly once.
//
//   Pending -> Preparing -> Checkpointing -> Transferring -> Restoring
//           -> Committing -> Succeeded
//   any failure before the workload was frozen         -> Failed (nothing changed)
//   any failure after it, target known not to run it   -> RolledBack (source thawed)
//   target's answer unknown after it restored           -> Resolving (kept frozen,
//                                                          retried until it answers;
//                                                          a target that no longer
//                                                          knows the id, forgotten or
//                                                          lost, is no answer either:
//                                                          standalone, the copy stays
//                                                          frozen; with a ledger, the
//                                                          ledger's InDoubt answers)
//
// The rule that keeps a workload from running twice or never: the target
// decides commit-or-abort for a migration id under one lock and remembers it;
// the source deletes its frozen copy only after the target said Committed,
// and thaws it only after the target said Aborted (or never restored).
//
// In a cluster the owner of a workload is also recorded outside the two
// agents (etcd: workloads/<name>.status.node + epoch). With an
// OwnershipLedger the driver moves that record to the target right before it
// asks the target to commit, and moves it back before it thaws the source
// after such a move may have happened; while the ledger cannot say who owns
// the workload, the source stays frozen (Resolving). A target that has no
// record of the id (Query: unknown) is never asked to Abort (that would make
// a fresh tombstone of a forgotten commit): the ledger's InDoubt decides -
// release (committed, or superseded by another owner), thaw (the source still
// owns it and the target cannot commit), or stay frozen. A Revert the ledger
// refuses is put to InDoubt the same way: the source never thaws while the
// records name another owner. Without a ledger (standalone agents) the
// behaviour is the one above.
//
// Cancellation: Run takes an optional CancelFn, polled at fixed check points
// (see Run). A cancel seen before the target was asked to Prepare, or before
// the workload was frozen, ends Failed (nothing changed; the target aborted);
// one seen after the checkpoint, the transfer or the restore ends through
// the rollback path (target aborted, source thawed: RolledBack), the error
// FailedError("migration cancelled"). It is not polled from the commit on:
// a cancel must also be refused by the ledger's Transfer (ClusterLink reads
// the migration record in the same transaction), since one that lands after
// the last check would otherwise be missed.
//
// Durable writes (the journal): every phase change is handed to the
// caller's PersistFn, which returns whether it was written. The driver never
// does the work of a phase its journal does not hold, so the last phase
// written always bounds what may have been done, which is where Recover
// starts. A phase that cannot be written ends the migration:
//   Preparing, Checkpointing not written -> Failed before the freeze (the
//                                           prepared target is aborted; the
//                                           workload runs on, untouched);
//   Transferring, Restoring not written  -> rolled back (target aborted,
//                                           source thawed);
//   Committing not written               -> the target's restored copy is
//                                           aborted (never transferred or
//                                           committed), then the source thawed.
// A failed write of an end (Succeeded, RolledBack, Failed) or of Resolving
// is logged and the report returned as it is: what it records has happened,
// and a journal left at an earlier phase recovers to the same end (the
// target's remembered verdict decides, and Thaw and Release are idempotent).
// A rollback whose target answers Committed never thaws: the target owns the
// workload, the source copy is released (Succeeded).
//
// A source copy that is gone when it should be thawed (Thaw: kNotFound, the
// node lost its container) cannot run twice and will never thaw: the
// migration ends RolledBack, its error saying so, instead of waiting in
// Resolving; the caller's own checks (a lost workload) take over.
//
// Faults and resolutions (issue 13, "Also"): the report names the first
// fault the migration met (report.fault: kind, the phase and node it hit,
// what was seen; a later failure while resolving it does not replace it; a
// journal recovered mid-way without one met kSourceRestarted) and, with its
// final phase, how it ended and who decided (report.resolution: the source
// on its own path, the target's remembered verdict asked again, or the
// ownership records).
//
// Ownership: borrows the engine, transport and clock. Thread-safety: one
// driver may run several migrations concurrently (it keeps no per-migration
// state); the caller serialises migrations of the same workload.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "api/types.h"
#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/runtime.h"
#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix {

// The protocol's phases and its report are the API's (api/types.h).
using api::IsFinal;
using api::MigrationPhase;
using api::MigrationPhaseName;
using api::MigrationReport;
using api::MigrationTimings;
using api::ParseMigrationPhase;

// The report's JSON form (the agent's journal, its REST replies and the
// "report" of the migration record): {"id","workload","sourceNode",
// "targetNode","target","phase","outcome","startedMs","finishedMs","bytes",
// "files","targetPid","timings":{...},"error"?,"failedPhase"?,
// "sourceReleased"?,"fault"?,"resolution"?}.
nlohmann::json MigrationReportToJson(const MigrationReport& r);
StatusOr<MigrationReport> MigrationReportFromJson(const nlohmann::json& j);

// The fault and resolution of a migration (report, record, REST):
// {"kind","phase","node","message","atMs"} and {"outcome","decidedBy","atMs"}.
// Strict: unknown fields, unknown names and bad values are kInvalid naming
// the field (api::ValidateMigrationFault, api::ValidateMigrationResolution).
nlohmann::json MigrationFaultToJson(const api::MigrationFault& f);
StatusOr<api::MigrationFault> MigrationFaultFromJson(const nlohmann::json& j);
nlohmann::json MigrationResolutionToJson(const api::MigrationResolution& r);
StatusOr<api::MigrationResolution> MigrationResolutionFromJson(const nlohmann::json& j);

// What a target should know of a workload's life so far.
struct WorkloadLife {
  int64_t created_ms = 0;
  std::vector<std::string> history;  // earlier migration ids, oldest first
};

// The cluster's record of who owns a workload, as the migration driver needs
// it. Both calls are idempotent and keyed by report.id; report.workload,
// source_node and target_node name the workload and the two nodes.
//
// Transfer (owner := target), called right before the target is asked to commit:
//   ok         the record names the target for this migration (now, or already);
//   kConflict  the source does not own the workload for this migration any
//              more (deleted, marked Lost, another migration): do not commit;
//   kRetry     the record could not be read or written: outcome unknown.
// Revert (owner := source), called before the source is thawed after a
// Transfer may have happened:
//   ok         the record names the source again (or no other node: deleted);
//   kRetry     outcome unknown;
//   kConflict  the record names another owner (the target for this migration,
//              committed; or a third node): never thaw; the driver asks InDoubt.
// InDoubt, called when the target has no record of the migration any more (it
// forgot it after its history, or lost its records) or a Revert was refused:
// what the cluster's records say happened (issue 13, hole 5), never the
// target's "not found":
//   kCommitted     the target owns the workload for this migration: release
//                  the source copy (Succeeded);
//   kNotCommitted  the source owns it and the target cannot commit: thaw;
//   kSuperseded    another owner, or the workload was deleted: release the
//                  source copy, never thaw (Failed);
//   kUndecided     the records cannot say (unreadable, disagreeing): stay
//                  frozen; an error: ask again later (kept frozen).
// The default answers kUndecided (a ledger with no records to ask).
// Ownership: implementations are borrowed by the driver. Thread-safety: called
// concurrently for different migrations.
class OwnershipLedger {
 public:
  enum class Answer { kCommitted, kNotCommitted, kSuperseded, kUndecided };
  struct InDoubtAnswer {
    Answer answer = Answer::kUndecided;
    std::string reason;
  };
  virtual ~OwnershipLedger() = default;
  virtual Status Transfer(const MigrationReport& report) = 0;
  virtual Status Revert(const MigrationReport& report) = 0;
  virtual StatusOr<InDoubtAnswer> InDoubt(const MigrationReport& report) {
    (void)report;
    return InDoubtAnswer{Answer::kUndecided, "this ledger keeps no records to ask"};
  }
};

class MigrationDriver {
 public:
  struct Options {
    std::string source_url;   // this agent, as the target can reach it
    std::string scratch_dir;  // per-migration scratch dirs are made under it
    // How long to keep asking a silent target (or ledger) before leaving the
    // workload frozen in Resolving (the caller retries later with Recover).
    Clock::Duration resolve_timeout = std::chrono::seconds(30);
    Clock::Duration retry_interval = std::chrono::milliseconds(500);
    // nullptr: standalone (no ownership record outside the agents).
    OwnershipLedger* ledger = nullptr;
    // How long to keep offering to a target that answers busy (its intake
    // is full, intake_limits.h), asking again after its Retry-After, before
    // the migration fails (kRetry; nothing was frozen or prepared).
    Clock::Duration busy_wait = std::chrono::seconds(120);
  };
  // Called with the report every time its phase changes, before the work of
  // the new phase starts: the caller journals it durably so Recover can
  // finish the migration after a crash, and returns ok only once it is
  // written (an error: not written, e.g. the disk is full; see "Durable
  // writes" above for what the driver then does). Empty: nothing journaled
  // (tests), every phase taken as written.
  using PersistFn = std::function<Status(const MigrationReport&)>;
  // Polled by Run on its thread at the check points; true = cancel. Must be
  // cheap and must not block (e.g. an atomic<bool> set by another thread).
  // Empty: never cancelled.
  using CancelFn = std::function<bool()>;

  MigrationDriver(CheckpointEngine& engine, Transport& transport, Clock& clock, Options options);

  // Runs a migration of `spec` (running here) to report.target_url, whose
  // id, workload, source_node and target_url the caller filled in. If the
  // caller also filled in target_node, a target answering under another
  // name is refused (Failed, kInvalid) before anything is frozen.
  // The offer declares the most the stream will carry
  // (CheckpointEngine::StreamBound). A target that answers busy is asked
  // again after its retry-after, for up to options.busy_wait (cancel is
  // polled before each new ask).
  // `cancelled` is polled (1) right before the target's Prepare and (2)
  // before the freeze: true -> Failed; (3) after the checkpoint, (4) after the
  // transfer and (5) after the restore, before Committing: true -> target
  // aborted, source thawed, RolledBack. Never from Committing on.
  MigrationReport Run(const ContainerSpec& spec, MigrationReport report, const PersistFn& persist,
                      const WorkloadLife& life = {}, const CancelFn& cancelled = {});

  // Finishes a journaled migration that was interrupted (agent restart) or
  // left Resolving. Safe to call repeatedly.
  MigrationReport Recover(const ContainerSpec& spec, MigrationReport report,
                          const PersistFn& persist);

 private:
  // Sets the phase and journals it; the journal's answer (logged if not ok).
  Status Enter(MigrationReport& r, MigrationPhase p, const PersistFn& persist);
  MigrationReport& Fail(MigrationReport& r, const Status& why, const PersistFn& persist);
  // failed_in: the phase to report as failed (default: the current one).
  MigrationReport& RollBack(MigrationReport& r, const std::string& name, const Status& why,
                            const PersistFn& persist,
                            std::optional<MigrationPhase> failed_in = std::nullopt);
  // Asks the target (Abort, idempotent) until it answers or resolve_timeout
  // passes, then thaws or releases accordingly.
  MigrationReport& Resolve(MigrationReport& r, const std::string& name, const Status& why,
                           const PersistFn& persist);
  // Start marks of the timings Settle finishes (absent when recovering).
  struct Marks {
    const Clock::TimePoint* frozen_at = nullptr;
    const Clock::TimePoint* commit_start = nullptr;
  };
  // With a ledger, from Committing/Resolving on: drives the target, the
  // ledger and the source copy to one owner (see the .cc for the order).
  // `restored`: the target is known to hold a restored, uncommitted copy.
  // `cancelled`: never transfer or commit in this call (abort, then thaw).
  // `poll`: Run's cancel check, asked only to say whether a refused
  // transfer was a cancel (the fault's kind).
  MigrationReport& Settle(MigrationReport& r, const std::string& name, const Status& why,
                          bool restored, const Marks& marks, const PersistFn& persist,
                          bool cancelled = false, const CancelFn* poll = nullptr);
  // Release after the target committed; Resolving if the release fails.
  MigrationReport& Succeed(MigrationReport& r, const std::string& name, const PersistFn& persist,
                           api::Decider by);
  // Release because the ledger names another owner (or none): Failed with
  // `why`; Resolving if the release fails.
  MigrationReport& Superseded(MigrationReport& r, const std::string& name, const Status& why,
                              const PersistFn& persist);
  // Ends it in phase `p`, with its resolution: decided by `by`, the outcome
  // `outcome` (default: from the phase; Failed with source_released:
  // Released, otherwise Untouched).
  MigrationReport& Finish(MigrationReport& r, MigrationPhase p, const PersistFn& persist,
                          api::Decider by,
                          std::optional<api::MigrationOutcome> outcome = std::nullopt);
  // Which side a fault hit (MigrationFault::node).
  enum class Side { kSource, kTarget, kCluster };
  // Records the fault the migration met, unless it met one already (the
  // first one stays). `in`: the phase it hit (default: the current one).
  void Met(MigrationReport& r, api::FaultKind kind, Side side, const Status& why,
           std::optional<MigrationPhase> in = std::nullopt) const;
  // engine_.Thaw; a copy that is gone (kNotFound) counts as done, with
  // `cause` annotated to say so (see the header) and `gone` set.
  Status ThawSource(const MigrationReport& r, const std::string& name, Status& cause, bool& gone);
  std::string ScratchFor(const MigrationReport& r) const;
  void RemoveScratch(const MigrationReport& r) const;

  CheckpointEngine& engine_;
  Transport& transport_;
  Clock& clock_;
  Options options_;
};

}  // namespace kmosix
