// ClusterLink: the node agent in cluster mode. It joins the cluster through
// the StateStore (etcd) and takes its orders from there (the controller
// writes them; see lib/cluster/records.h for the keys and records):
//
//   nodes/<node>      this node's NodeLoad (node, url = the agent's advertise
//                     URL, speed, sampled figures), written under a lease of
//                     `lease_ttl` kept alive in the background. Sampled every
//                     `sample_interval`; written when the sample changed
//                     materially (load_sampler.h) or `heartbeat` passed since
//                     the last write, at once when the node's
//                     notReadyReason changes (options.not_ready_reason), and
//                     at once after a new lease was granted (a lost lease is re-granted and the key
//                     rewritten). On Stop the lease is NOT revoked: the key
//                     vanishes a TTL later (a restarting agent keeps its
//                     workloads running meanwhile).
//                     Fencing: the lease is *confirmed alive* when it is
//                     granted, when a probe (LeaseTimeToLive every
//                     `lease_probe`) answers with time left, or when a write
//                     under it is accepted; each counts from the moment its
//                     request was sent. With no confirmation for
//                     `fence_after` (< lease_ttl; checked every
//                     `fence_check` by a thread of its own, so a store that
//                     hangs cannot delay it) the node is *fenced*: every
//                     managed running workload is paused and marked "fenced"
//                     (Agent::FenceManaged; again every check while fenced,
//                     so none a migration or restart left running escapes),
//                     nothing is started (StartHere, the agent's restarts)
//                     and no migration order is run. The lease expires at
//                     the earliest a TTL after the last confirmation, so the
//                     controller, restarting a lost workload elsewhere only
//                     after its node was NotReady for longer than lease_ttl
//                     + fence_after, always meets a frozen copy here. A
//                     confirmation sent after the fence began (a renewed or
//                     newly granted lease) ends it: each fenced workload is
//                     queued and its record, read afresh, decides (below).
//                     A new link counts as confirmed at its construction.
//   workloads/<name>  read; status written by CAS (Compare::Unchanged on the
//                     key's mod_revision, re-read and retried on conflict):
//                     - status.node == this node, phase Scheduled (or Running
//                       with no migration but not running here, e.g. lost in
//                       a restart): the record is claimed first, in one
//                       CAS that applies only while it still names this
//                       node at that epoch with no migration (message :=
//                       "starting on <node>"; a Lost one, see below, phase
//                       := Running), so a placement elsewhere or a delete
//                       landing after the read means nothing starts; then
//                       the workload is started here (Agent::StartManaged
//                       at status.epoch), then phase := Running, pid,
//                       startedMs := now, message := "".
//                       A start that fails for good (kInvalid: bad spec or
//                       image not on this node; kNotFound; kFailed): phase :=
//                       Failed, message := the error. Never started when
//                       status.node names another node, nor while Migrating.
//                     - a managed local workload whose task ended by itself
//                       with status 0 (Running, no migration): phase :=
//                       Exited, message. (Any other end, or a task gone,
//                       is restarted by the agent, see Agent's "Restarts",
//                       once ClaimRestart took the record: phase Running,
//                       restarts and message := "restarted on <node>
//                       (restart N): why", in one CAS before the start;
//                       then pid and startedMs are written.)
//                     - a "fenced" local workload (the node fenced it, see
//                       nodes/<node>): while the node is fenced, left
//                       frozen. Then: the record names this node at the
//                       copy's epoch, phase Running, Scheduled or Migrating:
//                       thawed (Agent::UnfenceManaged); phase Lost (the
//                       controller saw the node go): first CAS phase :=
//                       Running ("node X is back"), so a restart elsewhere
//                       the controller decides meanwhile fails its CAS, then
//                       thawed; another node, another epoch, another
//                       phase or an earlier incarnation: deleted (and, if it
//                       names this node, started afresh from the record).
//                     - a managed local workload whose record is gone: its
//                       local copy is deleted. One whose record names another
//                       node at a higher epoch, with no migration of it in
//                       flight here: fenced (local copy deleted, warning).
//                       One of an earlier incarnation of the name (deleted
//                       and created again: its epoch is below the record's
//                       create revision, which the record's epoch is not):
//                       fenced wherever the record names; if it names this
//                       node (Scheduled, Running or Lost), started afresh.
//                     - an unmanaged local workload that arrived by the
//                       migration the record names (status.migration or
//                       status.migrations): claimed (managed, record's epoch).
//   migrations/<id>   orders with source == this node:
//                     - phase Pending, workload record status.node == this
//                       node and status.migration == id: run asynchronously
//                       (Agent::MigrateManaged, this link as the ownership
//                       ledger) to nodes/<target>.url; no such node: phase :=
//                       Failed, error "target node not ready". Busy
//                       (max_outgoing, workload busy): retried with backoff.
//                     - cancelled (cancelRequestedMs > 0) while Pending and
//                       not launched: never run; phase := Failed, error
//                       "cancelled by <cancelledBy>", workload record freed.
//                       Cancelled while it runs here: the driver's cancel
//                       check fires at its next check point (Failed before
//                       the freeze, RolledBack after it; see
//                       MigrationDriver::Run); the end is written as below.
//                     - while it runs, every phase change is written (phase,
//                       updatedMs, report = MigrationReportToJson); at the end
//                       phase, updatedMs, finishedMs, report, error ("" or
//                       "code: message"). A final phase is never overwritten.
//                     - then the workload record: migration := "", id
//                       appended to status.migrations (if the migration ran),
//                       phase := Running (on success on the target: pid :=
//                       the target's pid, startedMs := now).
//                     - a non-final, non-Pending record (e.g. after a restart
//                       of this agent): the local journal decides. Final
//                       there: written as above. Still being resolved here:
//                       its phase is mirrored and it is looked at again every
//                       `journal_poll`. No journal entry: written Failed
//                       "source has no record of this migration" - the journal
//                       is written before the record leaves Pending, so the
//                       journal is gone (state dir lost) and nothing of the
//                       migration runs here; the workload record's ownership
//                       (moved or not by the ledger) stays the truth.
//                     with target == this node, once final (a verdict of the
//                     controller on a lost source, say) while the incoming
//                     record here is still open: committed here if the
//                     records say it moved here, else aborted, at once (not
//                     at the idle timeout: the open copy holds the name, so
//                     a restart placed here would wait for it); then the
//                     workload record is reconciled (SettleIncoming).
//
// Ownership ledger (OwnershipLedger, for the migration driver) and target
// oracle: the decisions are the ownership protocol's, in one place
// (cluster/ownership.h, which states them and has the decision table test);
// the link reads workloads/<name> and migrations/<id>, commits the one
// transaction a decision holds (compares on both records) and reads again
// when the compares fail (cas_attempts rounds, then kRetry). In short:
//   Transfer: the record moves source -> target (epoch + 1, Migrating, pid
//     := the target's) only while it names the source for this migration
//     and the migration record is neither cancelled nor final (a cancel or a
//     controller verdict accepted meanwhile fails the compare; the re-read
//     refuses: kConflict). Already moved for it: ok. Anything else:
//     kConflict. Store errors: kRetry.
//   Revert: names the source (or the record is gone): ok; moved to the
//     target for this migration and not recorded Succeeded: back to the
//     source (epoch + 1); another owner: kConflict (the driver never thaws
//     then; it asks InDoubt).
//   InDoubt (the target has no record of the migration any more, hole 5):
//     the records answer - moved for it: committed (release); the source
//     owns it: not committed (thaw); another owner or deleted: superseded
//     (release, never thaw); unreadable or disagreeing, or the cluster knows
//     neither the workload nor this node (wrong --etcd-prefix): undecided.
//     Store errors: the error (the source stays frozen and asks again).
// Target oracle (Agent ClusterHooks::owned_here): the record names this
//   node for the offer's migration (in flight, or finished and not recorded
//   Failed/RolledBack): true; gone, unreadable or anything else: false;
//   store error: the error (ask again later).
//
// Everything is keyed and level-based: one WorkQueue of "w/<name>" and
// "m/<id>", fed by list-then-watch caches of workloads/, migrations/ and
// nodes/ and by a periodic resync (every `resync`: every local workload and
// every cached key that concerns this node). Reconcilers read the current
// state (a fresh Get before every CAS) and are idempotent; an agent killed at
// any line converges when it comes back.
//
// etcd grants: with etcd auth a node's role may write only its own
// nodes/<node> key and the records the controller grants it (those it takes
// part in: controller/grants.h). A record write etcd refuses with permission
// denied is kRetry here (the grant may be on its way): workers back off and
// re-read; Transfer/Revert answer kRetry, so the migration driver keeps the
// source frozen and asks again (Resolving after its timeout, then Recover):
// a refused ownership write never fails a migration nor loses the workload.
//
// Ownership: borrows the agent, store, sampler, clock and random; owns its
// threads (publisher, lease probe, fence check, queue worker, three caches, one per running
// migration; a finished migration's thread is joined at the next launch).
// No exception ends a thread: each step's is caught, logged and retried
// (reconcilers with the queue's back-off); records are written with bad
// UTF-8 in error texts replaced (kmosix/json_text.h). Thread-safety: all public methods may be
// called from any thread. Start/Stop once each. Errors: as values; store errors inside the threads
// are retried (with the queue's per-key backoff).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "access.h"
#include "agent.h"
#include "cluster/ownership.h"
#include "cluster/prefix_cache.h"
#include "cluster/records.h"
#include "cluster/work_queue.h"
#include "kmosix/clock.h"
#include "kmosix/migration.h"
#include "kmosix/state_store.h"
#include "load_sampler.h"

namespace kmosix::agent {

struct ClusterLinkOptions {
  std::string node;
  std::string url;  // the agent's advertise URL, published in nodes/<node>
  cluster::KeyLayout keys;
  std::chrono::seconds lease_ttl{5};
  double speed = 1.0;  // relative speed factor, published
  Clock::Duration sample_interval = std::chrono::seconds(1);
  Clock::Duration heartbeat = std::chrono::seconds(10);
  Clock::Duration resync = std::chrono::seconds(30);
  // How often a migration still being resolved by the agent is looked at.
  Clock::Duration journal_poll = std::chrono::seconds(2);
  // CAS rounds (re-read after a conflict) before giving up with kRetry.
  int cas_attempts = 10;
  // restartPolicy FromCheckpoint (node-agent/checkpoint_keeper.h): starts a
  // workload whose record names status.restoreCheckpoint, instead of
  // Agent::StartManaged, and says how in `note`; the Running write then
  // clears restoreCheckpoint and writes `note` as the message. Unset: such a
  // workload starts from its image (and the message says so).
  std::function<StatusOr<LocalWorkload>(const api::Workload& rec, std::string* note)>
      start_from_checkpoint;
  // Why this node can take part in no migration now (e.g.
  // CriuReadiness::NotReadyReason), asked every publisher round and published
  // as nodes/<node>.notReadyReason (written at once when it changes). Empty
  // function: always fit. Must not block.
  std::function<std::optional<std::string>()> not_ready_reason;
  cluster::WorkQueue::Options queue;
  // Fencing (see nodes/<node> in the file comment): no lease confirmation for
  // fence_after freezes every managed workload here. Zero: never fence. Must
  // be below lease_ttl (kmosix-agent refuses otherwise).
  Clock::Duration fence_after = std::chrono::seconds(4);
  // How often the lease is probed, and the fence deadline checked.
  Clock::Duration lease_probe = std::chrono::milliseconds(500);
  Clock::Duration fence_check = std::chrono::milliseconds(100);
};

class ClusterLink final : public OwnershipLedger, public PeerAuthorizer {
 public:
  // PeerAuthorizer: a migration etcd holds a record of is accepted only from
  // its source node and only when this node is its target (kPermissionDenied
  // otherwise); an id etcd has no record of is an unmanaged workload's move
  // (REST-ordered between agents, never claims cluster ownership): any node
  // of the CA, as standalone agents. kRetry when etcd cannot be read.
  Status AllowPeer(const std::string& peer_node, const std::string& id) override;

  ClusterLink(ClusterLinkOptions options, Agent& agent, StateStore& store, LoadSampler& sampler,
              Clock& clock, Random& random);
  ~ClusterLink() override;  // Stop()
  ClusterLink(const ClusterLink&) = delete;
  ClusterLink& operator=(const ClusterLink&) = delete;

  // The hooks to install with agent.SetClusterHooks() before agent.Start().
  ClusterHooks Hooks();

  // Starts the publisher, the caches and the queue worker.
  void Start();
  // Stops them, waits for running migrations to end (they run to an end or to
  // Resolving), and stops keeping the lease alive (it then expires).
  void Stop();

  // ---- steps (the threads call these; tests may call them directly) --------
  // One publisher round: (re)grants the lease if there is none or it was
  // lost, samples, and writes nodes/<node> when due.
  Status PublishOnce();
  // Reconciles one queue key ("w/<name>" or "m/<id>") against fresh reads.
  // kRetry/kConflict: try again later (the worker backs off).
  Status Reconcile(const std::string& key);
  // Queues every key that concerns this node (see the file comment).
  void Resync();
  // Blocks until no migration started by this link is running.
  void WaitMigrations();
  // Migrations running now, and the threads of migrations not yet joined
  // (running ones plus at most the ones finished since the last launch).
  size_t RunningMigrations();
  size_t MigrationThreads();
  // The lease nodes/<node> is written under (0: none yet).
  int64_t Lease() const;
  // One lease probe: if a lease is held and its keep-alive believes it
  // alive, asks the store for its time to live; time left confirms it (from
  // the moment the probe was sent). The store's error, if any.
  Status ProbeLeaseOnce();
  // One fence check (see the file comment): fences the node when the lease
  // went unconfirmed for fence_after (and fences any managed workload found
  // running while fenced); ends the fence when a confirmation came after it
  // began, queueing every fenced workload. Never blocks on the store.
  void FenceOnce();
  // The node is fenced now (its lease not confirmed for fence_after).
  bool Fenced() const;

  // ---- OwnershipLedger and target oracle (see the file comment) ------------
  Status Transfer(const MigrationReport& report) override;
  Status Revert(const MigrationReport& report) override;
  StatusOr<InDoubtAnswer> InDoubt(const MigrationReport& report) override;
  StatusOr<bool> OwnedHere(const IncomingRecord& record);
  // Restart claim (ClusterHooks::claim_restart), made BEFORE the agent starts
  // the task again: one CAS on workloads/<name> (Compare::Unchanged on the
  // mod_revision read) that applies only while the record names this node
  // at exactly the copy's epoch (`claim.epoch`; not of an earlier
  // incarnation of the name), with no migration, phase Running or Lost (the
  // controller marks a node's workloads Lost while it is away: a reboot),
  // and writes phase := Running, restarts := claim.restart, message :=
  // "restarted on <node> (restart N): why". A placement elsewhere the
  // controller decided on the record it read (node loss: one CAS bumping the
  // epoch) then fails its CAS; or it landed first, this CAS fails, the
  // re-read finds another node or epoch and the answer is false (the task is
  // not started; the link's fence deletes the copy). true: claimed (or
  // already so), start it. Record gone, unreadable or not ours: false; store
  // errors, or the record kept changing for cas_attempts rounds: kRetry.
  StatusOr<bool> ClaimRestart(const std::string& name, const RestartClaim& claim);

 private:
  // A claim's change of a record that names this node at the epoch, with no
  // migration: true = write it, false = already claimed (no write), nullopt =
  // its phase cannot be claimed (the answer is false).
  using ClaimChange = std::function<std::optional<bool>(api::Workload&)>;
  // The claim loop of ClaimRestart and ClaimStart: UpdateWorkloadGuarded's
  // CAS, applied only while the record names this node at exactly `epoch`
  // (not of an earlier incarnation), with no migration, and `claim` accepts
  // it. true: claimed (or already so); false: not this node's (any more), or
  // gone or unreadable; kRetry: store errors, or it kept changing.
  StatusOr<bool> ClaimRecord(const std::string& name, int64_t epoch, const ClaimChange& claim);
  // A change to a record: false = nothing to write; an error aborts.
  using WorkloadChange = std::function<StatusOr<bool>(api::Workload&)>;
  using MigrationChange = std::function<StatusOr<bool>(api::Migration&)>;
  // Read, change, CAS on mod_revision; re-read on conflict. kNotFound if the
  // key is absent; kInvalid if unreadable; kRetry for store errors.
  Status UpdateWorkload(const std::string& name, const WorkloadChange& change);
  // UpdateWorkload that also reads `guard_key` in every round (before the
  // workload record) and passes it to the change (nullopt: absent); the CAS
  // then also requires the guard key unchanged (still absent).
  // The change also gets the record's KeyValue as read (its revisions).
  using GuardedWorkloadChange = std::function<StatusOr<bool>(api::Workload&, const KeyValue& record,
                                                             const std::optional<KeyValue>& guard)>;
  Status UpdateWorkloadGuarded(const std::string& name, const std::string& guard_key,
                               const GuardedWorkloadChange& change);
  Status UpdateMigration(const std::string& id, const MigrationChange& change);
  // Reads workloads/<name> and migrations/<id> of `r`, decides and commits
  // (cluster::ownership::Apply, cas_attempts rounds); permission denied is
  // kRetry (a grant may be on its way).
  using OwnershipDecide =
      std::function<cluster::ownership::Decision(const cluster::ownership::Records&)>;
  Status ApplyOwnership(const MigrationReport& r, const OwnershipDecide& decide);

  Status EnsureLease();
  void DropLease();
  Status ReconcileWorkload(const std::string& name);
  Status ReconcileMigration(const std::string& id);
  // The claim StartHere makes BEFORE starting the task: ClaimRecord at the
  // record's epoch, phase Scheduled or Running (message := "starting on
  // <node>") or Lost (phase := Running, "node <node> is back: starting on
  // <node>"; a placement elsewhere decided on the Lost record then fails its
  // CAS). A record that already carries the claim is not written again.
  StatusOr<bool> ClaimStart(const api::Workload& rec);
  // Starts the workload of `rec` here once ClaimStart took its record (not
  // claimed: nothing starts, the record is read again), then writes phase
  // Running, pid and startedMs (or Failed for a start that fails for good).
  Status StartHere(const api::Workload& rec);
  // A migration to this node that the cluster ended (final record) while its
  // incoming record here is still open (say the source was lost and the
  // controller wrote the verdict): committed here if the records say it
  // moved here (ownership::OwnedHere), else aborted, at once rather than at
  // the target's idle timeout; then the workload is reconciled (a record
  // placing it here starts it: the open copy held its name).
  Status SettleIncoming(const api::Migration& rec);
  // The target holds an unfinished record of migration `id`.
  bool IncomingOpen(const std::string& id);
  // The order cannot run: written Failed (from Pending only), workload freed.
  // Ends a Pending order Failed (nothing was done), its fault of `kind`.
  Status RefuseOrder(const api::Migration& rec, const std::string& why,
                     api::FaultKind kind = api::FaultKind::kInvalidOrder);
  void Launch(const api::Migration& rec, const std::string& url);
  // The body of a migration's thread: never throws; however it ends, the
  // migration leaves running_ and (unless it never started) its keys are
  // queued again.
  void RunMigration(api::Migration rec, std::string url, std::shared_ptr<std::atomic<bool>> cancel);
  void RunMigrationSteps(const api::Migration& rec, const std::string& url,
                         const std::shared_ptr<std::atomic<bool>>& cancel, bool& requeue);
  // Mirrors a report into migrations/<id> (final fields when final).
  Status WriteReport(const MigrationReport& report);
  // Frees the workload record of migration `id` (see the file comment).
  Status FinishWorkload(const std::string& workload, const std::string& id,
                        const MigrationReport* report);
  StatusOr<std::string> NodeUrl(const std::string& node);
  bool InFlight(const std::string& id);
  // Raises the cancel flag of a migration running here; false if none runs.
  bool CancelInFlight(const std::string& id);
  void OnWorkloadKey(const std::string& key, const std::optional<KeyValue>& kv);
  void OnMigrationKey(const std::string& key, const std::optional<KeyValue>& kv);
  void PublisherLoop();
  void WorkerLoop();
  void LeaseProbeLoop();
  void FenceLoop();
  // The lease was alive at `at` (a confirmation sent then).
  void MarkLeaseAlive(Clock::TimePoint at);
  // ReconcileWorkload of a "fenced" local copy (see the file comment).
  Status ReconcileFenced(const api::Workload& rec, const KeyValue& kv, const LocalWorkload& local);

  const ClusterLinkOptions options_;
  Agent& agent_;
  StateStore& store_;
  LoadSampler& sampler_;
  Clock& clock_;
  cluster::WorkQueue queue_;
  cluster::PrefixCache workloads_;
  cluster::PrefixCache migrations_;
  cluster::PrefixCache nodes_;

  // Lease and publishing state.
  mutable std::mutex lease_mu_;
  std::unique_ptr<LeaseKeepAlive> keepalive_;
  int64_t lease_ = 0;
  bool force_publish_ = true;
  std::optional<LoadSample> published_;
  Clock::TimePoint published_at_{};
  // The runtime's images as last listed (every sample), published with the
  // load; a change makes the sample due.
  std::optional<std::vector<std::string>> images_, published_images_;
  std::optional<std::string> published_reason_;  // guarded by lease_mu_

  // Fencing state (never held across a store or agent call).
  mutable std::mutex fence_mu_;
  Clock::TimePoint alive_at_;  // the last confirmation of the lease
  bool fenced_ = false;
  Clock::TimePoint fenced_at_;  // when the fence began

  // Threads.
  std::mutex mu_;
  std::condition_variable cv_;  // stop, lease lost, migration ended
  bool started_ = false;
  bool stopping_ = false;
  bool lease_lost_ = false;
  // Migrations this link runs now -> their cancel flag (read by the driver).
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> running_;
  std::vector<std::thread> threads_;  // publisher, worker, caches
  // One per migration run here; `done` once its body returned. Ended ones
  // are joined at the next Launch and by WaitMigrations.
  struct MigrationThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<MigrationThread> threads_of_migrations_;
};

}  // namespace kmosix::agent
