// The target side of live migration: one record per incoming migration id,
// moved Prepared -> Receiving -> Received -> Restoring -> Restored ->
// Committed, or to Aborted from any phase before Committed. Commit and Abort
// of one id are serialised by the record's lock, so exactly one of them wins;
// the winner is persisted before it is answered, and remembered (a later
// Restore or Commit of an aborted id is refused).
// Never twice: Restore restores the copy stopped (CheckpointEngine::
// RestoreStopped); only the commit resumes it, right after the Committed
// verdict is written and before the commit is answered, so an aborted copy
// never ran one instruction. A copy that could not be resumed stays
// Committed with resumed false; ExpireIdle and Recover resume it.
//
// Ownership: borrows the engine, runtime and clock; owns its records.
// Thread-safety: all methods are safe to call concurrently; calls for one id
// are serialised.
// Bounded intake (options.intake, intake_limits.h): a Prepare beyond the
// node's concurrent incoming migrations is refused busy (kRetry with a
// retry-after, nothing recorded); the slot is held until the record is
// Restored, Committed or Aborted; the engine's prefault hint comes from the
// shared budget; the stream is held to ReceiveLimits (the offer's declared
// bounds under the ceiling) and a stream cut for going beyond them aborts
// the migration like any failed transfer.
// Errors: kNotFound for an unknown id, kConflict for a call in the wrong
// phase or a workload name in use, kInvalid for a bad offer (or one that
// declares more than the ceiling), kRetry (busy) when the node receives its
// limit of migrations, kFailed for a restore that failed (the record is then
// Aborted and cleaned up).
// Durable writes (Hooks::persist, Hooks::adopt): a phase is entered only once
// its record is written, and answered only then; a write's error is the
// call's (annotated), with:
//   Prepare      refused, nothing kept (no record, name and slot given back);
//   BeginReceive refused, still Prepared (the source rolls back);
//   EndReceive, Restore's Restored
//                the migration is aborted, its copy removed;
//   Restore's Restoring
//                refused before anything is restored, still Received;
//   Commit       kRetry, not committed: still Restored, no adopt (the source
//                treats it as unknown: it asks again or aborts);
//   Aborted      acted on even if not written: a record left in any phase
//                before Committed recovers to Aborted.
// A workload record that adopt could not write after the Committed verdict
// was written does not undo the commit (the verdict stands and is answered):
// the record stays Committed, not adopted, and Recover completes it (below).
// Leftovers of an abort: an abort whose copy could not be removed (containerd
// down or restarting: the container, its runc state, the scratch dir stay)
// is recorded Aborted with discard_pending, and removed again by ExpireIdle
// (every options.discard_retry) and at Recover until it is gone; a Prepare
// (or ClearStale, for a workload the agent creates) of the same name removes
// it first, and a container of that name that nothing here claims too (said
// in the log). Never a copy that is owned here: the name claimed here
// (Hooks::reserve refuses: a workload or a live incoming migration), a
// Committed record of that name not adopted yet, or, in cluster mode, the
// owned_here oracle naming this node the owner through the aborted migration
// (or unable to tell) keep it, and it is tried again later.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/intake_limits.h"
#include "kmosix/runtime.h"
#include "kmosix/transport.h"

namespace kmosix {

struct IncomingRecord {
  MigrationOffer offer;  // offer.spec.log_path is this node's log file
  TargetPhase phase = TargetPhase::kPrepared;
  Landing landing;
  Clock::TimePoint touched;  // last progress, for the idle timeout
  int64_t updated_ms = 0;
  uint32_t pid = 0;
  std::string error;
  TransferStats stats;
  // Committed: the registry recorded the workload (Hooks::adopt answered
  // ok). A Committed record not adopted is completed by Recover.
  bool adopted = false;
  // Committed: the copy was resumed (CheckpointEngine::Resume answered ok).
  // Until the commit it is stopped (RestoreStopped); one not resumed is
  // resumed by ExpireIdle and Recover.
  bool resumed = false;
  // Aborted: what the abort had to remove (the container under the
  // workload's name, the migration's scratch dir) is not known gone; removed
  // again by ExpireIdle and Recover (see "Leftovers of an abort").
  bool discard_pending = false;
};
nlohmann::json IncomingRecordToJson(const IncomingRecord& r);
StatusOr<IncomingRecord> IncomingRecordFromJson(const nlohmann::json& j);

class IncomingMigrations final : public MigrationTarget {
 public:
  struct Options {
    std::string node;
    std::string version;
    std::string scratch_dir;  // per-migration dirs are made under it
    std::string log_dir;      // <log_dir>/<workload>.log
    // A migration that makes no progress for this long is aborted.
    Clock::Duration idle_timeout = std::chrono::seconds(120);
    // The node's intake limits (borrowed, must outlive this); nullptr: none
    // (streams are still held to what their offers declared).
    IntakeLimiter* intake = nullptr;
    // How often ExpireIdle tries again to remove what an abort left.
    Clock::Duration discard_retry = std::chrono::seconds(5);
  };
  // The agent's workload registry, as the target needs it.
  struct Hooks {
    // Claims a workload name for an incoming migration; kConflict if in use.
    std::function<Status(const std::string& name)> reserve;
    // Gives a reserved name back (the migration aborted).
    std::function<void(const std::string& name)> unreserve;
    // The migration committed (its verdict is written): the workload now
    // runs here; records it durably in the registry. Ok once written; an
    // error: not written (logged; the commit stands, and Recover asks
    // again). Also called by Recover for a record not known to be adopted:
    // a registry that already records the workload keeps its record (ok).
    std::function<Status(const MigrationOffer& offer, uint32_t pid)> adopt;
    // Durably records a record's new phase (called before acting on it and
    // before answering). Ok once written; an error (e.g. disk full): not
    // written, and the phase is not entered (see "Durable writes" above).
    std::function<Status(const IncomingRecord& record)> persist;
    // Optional ownership oracle (cluster mode): does the cluster's record of
    // the workload name this node as its owner for this migration? Asked, with
    // the record's lock held, for a Restored (running, uncommitted) copy that
    // the source stopped talking about: true -> commit here as if the source
    // had asked (the source may have died after moving the ownership); false
    // -> abort; an error -> keep it Restored and ask again at the next
    // ExpireIdle. Unset: such a copy is aborted after idle_timeout.
    std::function<StatusOr<bool>(const IncomingRecord& record)> owned_here;
  };

  IncomingMigrations(CheckpointEngine& engine, ContainerRuntime& runtime, Clock& clock,
                     Options options, Hooks hooks);

  PeerInfo Info() override;
  Status Prepare(const MigrationOffer& offer) override;
  StatusOr<Landing> BeginReceive(const std::string& id) override;
  Status EndReceive(const std::string& id, const Status& result,
                    const TransferStats& stats) override;
  StatusOr<RestoreReport> Restore(const std::string& id) override;
  StatusOr<TargetPhase> Commit(const std::string& id) override;
  StatusOr<TargetPhase> Abort(const std::string& id) override;
  StatusOr<TargetPhase> Query(const std::string& id) override;
  // The offer's declared bounds under the intake ceiling; none for an
  // unknown id (BeginReceive refuses it anyway).
  StreamLimits ReceiveLimits(const std::string& id) override;

  // Aborts migrations idle past the timeout (a Restored one is first put to
  // the owned_here oracle, if set), resumes committed copies a failed
  // resume left stopped, and tries again to remove what aborts left
  // (discard_pending, every options.discard_retry). Call periodically.
  void ExpireIdle();
  // The caller has claimed `name` here (a workload it is about to create:
  // the registry's entry): removes what aborted migrations of that name left
  // (discard_pending), and a container of that name (nothing here claims
  // it: the caller holds the name), saying so in the log. Ok when nothing is
  // left; kConflict if a Committed record of that name is not adopted yet
  // (its copy is this node's); kRetry if something could not be removed
  // (still pending) or the owned_here oracle keeps it; a runtime error as
  // the runtime gives it. Prepare does the same under its reservation.
  Status ClearStale(const std::string& name);
  // Forgets finished records (and abort tombstones) untouched for `age`;
  // returns their ids so the caller can drop what it persisted. `age` must be
  // far longer than any request can be in flight: a forgotten abort no longer
  // refuses a late Prepare of its id. A Committed record not adopted (its
  // workload record was not written) is kept until a Recover settles it, an
  // Aborted one with discard_pending until its leftovers are removed.
  std::vector<std::string> ForgetFinished(Clock::Duration age);
  // After a restart: takes back persisted records. Unfinished ones are
  // aborted (their source resumes the workload); committed ones are kept,
  // and one not adopted yet (the agent died between writing the verdict and
  // the workload record, or the record's write failed) is adopted now
  // (Hooks::adopt, which must keep a record it already has), unless a newer
  // record names the same workload or the runtime says its container is
  // gone: this node owns the committed copy, and its source has released
  // its own.
  // With an owned_here oracle, a Restored one whose task is still there
  // (stopped) is put to it (commit / abort / keep asking, as in ExpireIdle).
  // The newest Committed record of a workload whose copy is not known
  // resumed has it resumed. Aborted records with discard_pending are
  // removed again (after the others are back, so their claims count).
  void Recover(std::vector<IncomingRecord> records);
  std::vector<IncomingRecord> List();

 private:
  struct Entry {
    std::mutex mu;
    IncomingRecord record;
    // record.offer.spec.name, set before the entry is shared (readable
    // without mu); empty for an abort tombstone.
    std::string name;
  };
  std::shared_ptr<Entry> Find(const std::string& id);
  // Writes r in `phase` (hooks_.persist); r takes the phase, touched and
  // updated_ms only if written. The write's error otherwise, annotated.
  Status Save(IncomingRecord& r, TargetPhase phase);
  // Kills and removes the copy here, records Aborted (with discard_pending
  // if it could not all be removed). Caller holds e.mu.
  void AbortLocked(Entry& e, const std::string& why);
  // Removes the migration's copy (engine Discard) and its scratch dir
  // (keeping CRIU's logs). Ok once both are gone. Caller holds the entry's mu.
  Status DiscardCopy(const IncomingRecord& r);
  // An Aborted record with discard_pending: removes its leftovers again,
  // unless they may be owned here (see "Leftovers of an abort"). `claimed`:
  // the caller holds the name's reservation (else it is taken and given
  // back here). Ok once nothing is pending; kRetry (or the oracle's error)
  // if kept for later. Caller holds e.mu.
  Status RetryDiscardLocked(Entry& e, const std::string& when, bool claimed);
  // ClearStale for a caller that holds the name; `except`: the caller's own
  // entry (locked by it), or null.
  Status ClearStaleClaimed(const std::string& name, const Entry* except);
  // Entries of workload `name` (other than `except`), for callers that lock
  // them one at a time.
  std::vector<std::shared_ptr<Entry>> EntriesNamed(const std::string& name, const Entry* except);
  // Records Committed, resumes the copy and adopts. Caller holds e.mu; the
  // record is Restored. kRetry if the verdict could not be written (still
  // Restored, not adopted, the copy still stopped).
  Status CommitLocked(Entry& e);
  // Resumes the committed copy (engine Resume); with `save`, records it.
  // False if it could not be resumed yet: an error (logged), or its task is
  // paused (frozen with its processes still stopped). No container or no
  // task: nothing to resume, recorded as resumed. Caller holds e.mu.
  bool ResumeLocked(Entry& e, const std::string& when, bool save);
  // Hooks::adopt, then records the verdict adopted (logs what it could not
  // write). Caller holds e.mu; the record is Committed.
  void AdoptLocked(Entry& e, const std::string& when);
  // Gives back the intake slot and prefault grant of a migration.
  void ReleaseIntake(const std::string& id);
  // Puts a Restored record to the owned_here oracle and acts on the answer:
  // true if it committed or aborted, false if it is still Restored.
  bool AskOracleLocked(Entry& e, const std::string& when);

  CheckpointEngine& engine_;
  ContainerRuntime& runtime_;
  Clock& clock_;
  Options options_;
  Hooks hooks_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_;
};

}  // namespace kmosix
