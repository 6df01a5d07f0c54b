// The node agent's core: the workloads of this node, the migrations it sends
// and receives, and their durable records under state_dir. HTTP- and
// JSON-free at its API: it takes and returns typed values (api/types.h); the
// REST layer (http_api.h) parses bodies and renders replies with
// rest_codec.h and turns statuses into codes. (Its records on disk keep
// their JSON codecs.)
//
// Cluster mode (cluster_link.h): workloads the cluster (etcd) assigns to this
// node are *managed*: started with StartManaged, marked so in their local
// record (plus the container label io.kmosix.managed=true), and tied to the
// ownership epoch they run under. Managed workloads are moved only by orders
// from the cluster (MigrateManaged, with an OwnershipLedger) and deleted only
// by the link (DeleteManaged); the REST API refuses to migrate or delete them
// (kConflict). Workloads created through the REST API stay unmanaged, as in a
// standalone agent.
//
// State on disk (state_dir):
//   workloads/<name>.json      spec + record of each workload this node owns
//                              (+ "managed", "epoch" for managed ones)
//   migrations/out/<id>.json   journal of outgoing migrations (report + spec)
//   migrations/in/<id>.json    records of incoming migrations
//   logs/<name>.log            stdout+stderr of each workload
// Durable writes: a journal or record that cannot be written (disk full) is
// never acted on as if it were: a migration whose journal cannot be written
// does not freeze (kmosix/migration.h), an incoming phase or verdict that
// cannot be written is not entered (kmosix/migration_target.h), and a
// workload whose record cannot be written is not created (the container is
// removed, the error returned). Writes of records that follow what already
// happened are logged when they fail and completed at the next start.
//
// Ownership: borrows the runtime, engine, transport, clock and random.
// Thread-safety: every public method is safe to call concurrently; operations
// on one workload are serialised by its lock.
// Errors: kInvalid for bad input (nothing changed), kNotFound for unknown
// names, kConflict for a name in use or a workload busy migrating, kRetry
// when containerd is unreachable, kFailed otherwise. No method throws: text
// from outside (peers' errors, stream paths) is written with bad UTF-8
// replaced (kmosix/json_text.h), an exception inside a migration is caught
// and the migration resolved from its journal (one running copy: thawed here
// or released to the target), and the outgoing slot is given back however a
// migration ends.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api/types.h"
#include "cluster/records.h"
#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/migration.h"
#include "kmosix/migration_target.h"
#include "kmosix/runtime.h"
#include "kmosix/transport.h"

namespace kmosix::agent {

struct AgentOptions {
  std::string node;
  std::string advertise_url;  // how peers reach this agent
  std::string state_dir;
  std::string scratch_dir;  // CRIU images in flight; tmpfs is fastest
  std::string version = "0.1.0";
  Clock::Duration idle_timeout = std::chrono::seconds(120);
  Clock::Duration resolve_timeout = std::chrono::seconds(30);
  // Finished migration records (both roles) are kept this long, then dropped.
  Clock::Duration history = std::chrono::hours(24);
  // Outgoing migrations at once; more are refused with kRetry. Each one holds
  // an HTTP server thread, which peers' protocol calls need too.
  int max_outgoing = 2;
  // Bounded intake: incoming migrations at once, their shared prefault
  // budget, the stream ceiling (kmosix/intake_limits.h).
  IntakeOptions intake;
  // How long an outgoing migration keeps asking a busy target.
  Clock::Duration busy_wait = std::chrono::seconds(120);
  // Restarts (see "Restarts" above): how often the workloads' tasks are
  // compared with the runtime (in Tick), the back-off after the second crash
  // in a row (doubled per further crash, up to restart_backoff_max), and how
  // long a run must last to forgive earlier crashes.
  Clock::Duration reconcile_interval = std::chrono::seconds(1);
  Clock::Duration restart_backoff = std::chrono::seconds(10);
  Clock::Duration restart_backoff_max = std::chrono::minutes(5);
  Clock::Duration restart_reset = std::chrono::minutes(10);
  // Tests only (the failpoints phase.hang.<Phase>): called on an outgoing
  // migration's thread at the entry of each phase of its first run, once the
  // phase was journaled and reported (on_phase), before its work; it may
  // block, holding the migration there. Empty: nothing.
  std::function<void(const MigrationReport&)> phase_entered;
};

// Counters the agent reports; the REST layer renders them for /metrics.
class MigrationObserver {
 public:
  virtual ~MigrationObserver() = default;
  virtual void OnMigrationFinished(const MigrationReport& report) = 0;
};

// A restart of a managed workload the agent is about to make (see "Restarts").
struct RestartClaim {
  int64_t epoch = 0;  // the copy's ownership epoch
  int restart = 0;    // the restart's number (the copy's restarts + 1)
  std::string why;    // why its task is started again
};

// Installed by the cluster link before Start() (see Agent::SetClusterHooks).
struct ClusterHooks {
  // Settles journaled migrations of managed workloads after a restart (and
  // ones left Resolving). Without it they are left frozen, with an error log.
  OwnershipLedger* ledger = nullptr;
  // Target side: IncomingMigrations::Hooks::owned_here.
  std::function<StatusOr<bool>(const IncomingRecord&)> owned_here;
  // Restarts of managed workloads: claim the cluster's record of `name` for
  // this restart, atomically with the check that it names this node the
  // owner at the copy's epoch (no migration of it in flight), BEFORE the
  // task is started again (ClusterLink::ClaimRestart). true: claimed, start
  // it; false: not this node's (any more), never started; an error: ask
  // again a back-off later. Unset: managed workloads are never restarted by
  // the agent.
  std::function<StatusOr<bool>(const std::string& name, const RestartClaim& claim)> claim_restart;
  // The agent changed a workload by itself (restarted it, found it exited or
  // lost): the link should look at it now rather than at its next resync.
  // Called without the agent's map lock; must not block or call back.
  std::function<void(const std::string& name)> changed;
};

// A local workload as the cluster link sees it.
struct LocalWorkload {
  std::string name;
  // "running", "migrating", "frozen" (a migration is being resolved),
  // "incoming" (arriving), "creating", "lost" (its container vanished),
  // "restarting" (its task died; started again after a back-off), "exited"
  // (its process ended with status 0), "fenced" (paused because the node's
  // lease was not renewed in time: Agent::FenceManaged).
  std::string state;
  bool managed = false;
  int64_t epoch = 0;  // managed: the ownership epoch it runs under (0: not known yet)
  int64_t created_ms = 0;
  int64_t started_ms = 0;
  std::vector<std::string> migrations;  // ids it arrived or left by, oldest first
  // From the runtime (kUnknown when it was not asked or could not say).
  TaskState task = TaskState::kUnknown;
  uint32_t pid = 0;
  uint32_t exit_status = 0;
  int restarts = 0;  // see Agent's "Restarts"
  int64_t last_restart_ms = 0;
  std::string last_restart_reason;
  std::string fence_reason;  // "fenced": why
};

// An order to move a managed workload (from migrations/<id> in etcd).
struct ManagedMigration {
  std::string id;
  std::string workload;
  std::string target_node;  // the target must answer Hello as this node
  std::string target_url;
  // Polled by the migration driver at its check points (MigrationDriver::Run);
  // true = cancel (Failed before the freeze, RolledBack after it). Empty:
  // never cancelled. Called on the migration's thread; must not block.
  MigrationDriver::CancelFn cancelled;
};

// Restarts. Every reconcile_interval (and at Start) the agent compares the
// workloads it runs ("running", and "restarting" ones) with the runtime's
// tasks, like a kubelet with restartPolicy OnFailure:
//   - task running (or paused, created): nothing to do;
//   - task stopped with status 0: the work is done; state "exited", never
//     restarted (the cluster link reports it Exited);
//   - task stopped with another status (a crash; 137: SIGKILL, e.g. the OOM
//     killer), no task although the container is there (node reboot,
//     containerd lost it), or the container itself gone (unmanaged
//     workloads; a managed one is marked "lost" for the cluster link): the
//     workload is started afresh from its image in its own container (same
//     name, spec, log file, appended to), counted in `restarts` with the
//     reason, logged. The first restart is immediate; a crash within
//     restart_reset of the previous start waits restart_backoff, doubling up
//     to restart_backoff_max (state "restarting" meanwhile). The back-off
//     is part of the workload's record: an agent restart neither starts a
//     "restarting" workload before its time nor forgives its crash streak.
// A managed workload is restarted only once ClusterHooks::claim_restart took
// the cluster's record for the restart (it names this node the owner at the
// copy's epoch; claimed in one CAS before the task starts, so a placement
// elsewhere decided meanwhile either fails or stops this restart); a
// runtime that cannot be asked (kRetry) changes nothing. Workloads in a
// migration (migrating, frozen, incoming, creating) are the migration's, and
// "fenced" ones the cluster link's (FenceManaged), never touched; the
// per-workload lock keeps a restart and a migration of one workload apart.
class Agent {
 public:
  Agent(AgentOptions options, ContainerRuntime& runtime, CheckpointEngine& engine,
        Transport& transport, Clock& clock, Random& random, MigrationObserver* observer);

  // Loads the records from state_dir and finishes what a crash interrupted.
  Status Start();
  // Periodic upkeep: expires idle incoming migrations, retries unresolved
  // outgoing ones, restarts workloads whose task is gone (see "Restarts").
  // Call about once a second. Never throws.
  void Tick();

  MigrationTarget& Target() { return *incoming_; }
  // The node's intake limits and counts (for metrics).
  const IntakeLimiter& Intake() const { return intake_; }
  const AgentOptions& Options() const { return options_; }

  // ---- the agent's own API (its REST face: http_api.h, rest_codec.h) ------
  // Creates and starts an unmanaged workload from the agent face of `spec`
  // (name, image, args, env, memory_mib, cpus; the other fields are not the
  // agent's and are ignored), checked by api::ValidateWorkloadSpec. kInvalid
  // for a bad spec or an image not on this node, kConflict for a name in use,
  // kRetry when containerd is unreachable, kFailed when it would not start;
  // nothing is left behind on an error.
  StatusOr<api::AgentWorkloadView> CreateWorkload(const api::WorkloadSpec& spec);
  // Every workload here (incoming and half-created ones excluded), by name;
  // the runtime is asked for each one's task.
  api::AgentWorkloadList ListWorkloads();
  // kNotFound if there is no such workload here (or it is still arriving).
  StatusOr<api::AgentWorkloadView> GetWorkload(const std::string& name);
  Status DeleteWorkload(const std::string& name);
  StatusOr<std::string> Logs(const std::string& name);

  // Migrates an unmanaged workload to the agent at request.target. Bad input
  // or an unusable target (kInvalid: not an http(s)://host[:port] URL, this
  // agent itself), an unknown workload (kNotFound), a busy, managed or
  // stopped one (kConflict), too many migrations leaving (kRetry): an error
  // and nothing changed. Otherwise the migration runs to an end; the report
  // says how it ended (its `error` is set unless it succeeded).
  StatusOr<MigrationReport> Migrate(const std::string& name,
                                    const api::AgentMigrateRequest& request);
  // The migrations this agent sent (their latest reports, by id), then the
  // ones it received, within the history period.
  api::AgentMigrationList ListMigrations();
  // One of ListMigrations' items; kNotFound if there is none with that id.
  StatusOr<api::AgentMigrationView> GetMigration(const std::string& id);

  size_t WorkloadCount();
  // Workloads "fenced" here now (Agent::FenceManaged), for metrics.
  size_t FencedCount();

  // ---- cluster mode (used by ClusterLink) ----------------------------------
  // Installs the hooks; call before Start() (the target side is rebuilt with
  // the oracle, so no migration may be in flight). Not thread-safe with
  // anything else.
  void SetClusterHooks(ClusterHooks hooks);

  // Starts a managed workload from the cluster's spec under ownership `epoch`
  // (created_ms: when it was first created anywhere; 0 = now). Idempotent: a
  // managed workload of that name already running here is returned as it is
  // (its epoch raised to `epoch`); a "lost" one is replaced. kConflict if the
  // name is taken by an unmanaged workload or one in another state; kInvalid
  // for a bad spec or an image not on this node; kRetry when containerd is
  // unreachable; kFailed when the container would not start.
  //
  // `restore` (optional; restartPolicy FromCheckpoint): a fresh start calls
  // it instead of creating and starting the container from the image. It
  // gets the full container spec (log path, labels) and must leave the
  // container created with its task running (restored from a checkpoint),
  // or nothing at all with an error (which StartManaged returns, annotated
  // "restore"; the workload is then not here). A copy already running is
  // returned as above without calling it.
  using RestoreFn = std::function<Status(const ContainerSpec& spec)>;
  StatusOr<LocalWorkload> StartManaged(const api::WorkloadSpec& spec, int64_t epoch,
                                       int64_t created_ms, const RestoreFn& restore = {});
  // Periodic checkpoints (node-agent/checkpointer.h): runs `fn` with the
  // lock of managed workload `name` held, if it is "running" here at
  // `epoch` with no unfinished migration, so no migration, restart, fence,
  // start or delete of it runs meanwhile. fn gets its container spec and
  // must not call back into the Agent. kConflict when it is busy (its lock
  // is held: never waited for) or not running here at that epoch, kNotFound
  // when there is no managed workload of that name; fn's error otherwise.
  Status WithManagedRunning(const std::string& name, int64_t epoch,
                            const std::function<Status(const ContainerSpec& spec)>& fn);
  // Marks a local workload managed (one that arrived by a cluster-ordered
  // migration) and raises its epoch to `epoch`. kNotFound if not here.
  Status ClaimManaged(const std::string& name, int64_t epoch);
  // Deletes a managed workload's local copy (record gone, or fenced).
  // kConflict while a migration of it is in flight (migrating, frozen,
  // incoming); kNotFound if there is no managed workload of that name.
  Status DeleteManaged(const std::string& name);
  // Fencing (ClusterLink, when its lease was not renewed for --fence-after):
  // pauses the task of a managed "running" (or "restarting") workload and
  // marks it "fenced", recorded with `why` (fenceReason, fencedMs). A fenced
  // workload is never restarted (see "Restarts"), migrated, or started again
  // by StartManaged (kConflict) until UnfenceManaged or DeleteManaged. A task
  // already stopped or gone is marked fenced all the same (nothing to pause).
  // kNotFound: no managed workload of that name; kConflict: in a migration,
  // another state, or busy (its lock held); kRetry: containerd unreachable
  // (nothing changed); a fenced one: ok, nothing done.
  Status FenceManaged(const std::string& name, const std::string& why);
  // FenceManaged for every managed "running" or "restarting" workload; the
  // names fenced by this call (errors are logged; call again to retry).
  std::vector<std::string> FenceAllManaged(const std::string& why);
  // Thaws a "fenced" workload (the cluster still names this node its owner
  // at its epoch): resumes its task if paused, state "running" (a task that
  // died meanwhile is then restarted as any other, see "Restarts").
  // kNotFound: no fenced workload of that name; kConflict: busy; kRetry:
  // containerd unreachable (still fenced).
  Status UnfenceManaged(const std::string& name);
  // The local workload (incoming/creating ones included), the runtime asked
  // for its task when `inspect`; nullopt if unknown here.
  std::optional<LocalWorkload> Local(const std::string& name, bool inspect = true);
  // Every local workload, without asking the runtime.
  std::vector<LocalWorkload> ListLocal();
  // The images the runtime holds (sorted), as ContainerRuntime::ListImages.
  StatusOr<std::vector<std::string>> ListImages() { return runtime_.ListImages(); }

  // Runs a cluster-ordered migration of a managed workload running here, with
  // the given id and target, moving the ownership through `ledger`.
  // `on_phase` is called on this thread after every phase change, once its
  // journal write was tried (a failed one is the driver's to act on, see
  // kmosix/migration.h; it must not call back into the Agent). Errors (nothing ran):
  // kInvalid (bad id/URL), kNotFound (no such workload here), kConflict (not
  // managed, not running, busy, or this id already ran here), kRetry
  // (max_outgoing migrations already leaving; containerd unreachable).
  // Otherwise the report says how it ended (Resolving: still frozen; Tick
  // finishes it through the ledger installed with SetClusterHooks).
  // order.cancelled, if set, is passed to the driver: a cancelled order ends
  // Failed or RolledBack (the ledger must refuse its Transfer too).
  using PhaseFn = std::function<void(const MigrationReport&)>;
  StatusOr<MigrationReport> MigrateManaged(const ManagedMigration& order, OwnershipLedger& ledger,
                                           const PhaseFn& on_phase);
  // The local journal of an outgoing migration (as last persisted).
  std::optional<MigrationReport> OutgoingReport(const std::string& id);

 private:
  struct Workload {
    ContainerSpec spec;
    std::string state;       // "running", "migrating", "frozen", "incoming", "lost"
    int64_t created_ms = 0;  // first started, on any node
    int64_t started_ms = 0;  // started or arrived on this node
    std::vector<std::string> migrations;
    bool managed = false;  // cluster mode: started or claimed for the cluster
    int64_t epoch = 0;     // managed: ownership epoch
    int restarts = 0;      // started again here after its task died or vanished
    int64_t last_restart_ms = 0;
    std::string last_restart_reason;
    std::string fence_reason;  // while "fenced": why (FenceManaged)
    int64_t fenced_ms = 0;     // while "fenced": since when (wall clock)
    // The crash-loop back-off, recorded (crashStreak; nextRestartMs and
    // pendingReason while "restarting") so that an agent restart never
    // restarts a crash-looping workload sooner than it would have; the
    // monotonic moments are rebuilt from the wall clock at Start.
    int crash_streak = 0;              // restarts in a row within restart_reset
    Clock::TimePoint running_since{};  // (re)started (at Start: from started_ms)
    Clock::TimePoint next_restart{};   // while "restarting"
    int64_t next_restart_ms = 0;       // the same, wall clock
    std::string pending_reason;        // why it is "restarting"
  };
  std::string WorkloadPath(const std::string& name) const;
  std::string OutPath(const std::string& id) const;
  std::string InPath(const std::string& id) const;
  std::string LogPath(const std::string& name) const;
  // The workload's record, written atomically; the write's error.
  Status WriteWorkload(const Workload& w);
  // WriteWorkload, logging a failure (for records of what already happened).
  void SaveWorkload(const Workload& w);
  // Journals an outgoing migration; the write's error (the report is kept
  // in outgoing_ either way).
  Status SaveOutgoing(const MigrationReport& r, const ContainerSpec& spec, bool managed);
  IncomingMigrations::Hooks TargetHooks();
  // Creates and starts spec.name (caller holds its lock and reserved the
  // name with state "creating"); records it on success, forgets it otherwise.
  // With `restore`, it replaces the create and start (StartManaged).
  StatusOr<Workload> CreateLocked(ContainerSpec spec, bool managed, int64_t epoch,
                                  int64_t created_ms, const RestoreFn& restore = {});
  // Checks and runs one outgoing migration (REST or cluster order).
  StatusOr<MigrationReport> RunOutgoing(const std::string& name, MigrationReport r, bool managed,
                                        OwnershipLedger* ledger, const PhaseFn& on_phase,
                                        const MigrationDriver::CancelFn& cancelled = {});
  // A migration whose driver threw: resolved from its last journaled report
  // (Recover), or Failed if nothing was journaled; non-final if resolving
  // failed too (the workload is then left frozen for RetryUnresolved).
  MigrationReport AfterException(const ContainerSpec& spec, const MigrationReport& started,
                                 OwnershipLedger* ledger, const MigrationDriver::PersistFn& persist,
                                 const std::string& what);
  LocalWorkload ToLocal(const Workload& w) const;
  std::shared_ptr<std::mutex> LockFor(const std::string& name);
  // The API's view of a local workload (asks the runtime for its task).
  api::AgentWorkloadView View(const Workload& w);
  void Finished(const MigrationReport& r, const ContainerSpec& spec);
  void RetryUnresolved();
  // Start: settles records a crash or a failed write left behind their
  // migrations' journals (when every journal of the workload is final; an
  // unfinished one is RetryUnresolved's):
  //   the workload left by a Succeeded migration that started after this
  //   record (which does not name it, or names it last) and its container
  //   is gone -> the record is dropped (the target owns it; never restarted
  //   here as lost);
  //   "frozen" or "migrating" and the newest migration ended RolledBack or
  //   Failed -> "running" (thawed, or never frozen, before it ended);
  //   a migration of it unfinished -> "frozen" until RetryUnresolved ends it
  //   (not marked lost, not restarted: its copy may be the target's now).
  void SettleEndedMigrations();
  // An outgoing migration of `name` is not final. Caller holds mu_.
  bool InMigrationLocked(const std::string& name) const;
  void ForgetOldMigrations();
  // Compares every running (or restarting) workload with its task and acts
  // (see "Restarts").
  void ReconcileTasks();
  void ReconcileTask(const std::string& name);
  // Deletes what is left of the workload's container and starts it afresh
  // (caller holds its lock); the record is updated either way.
  void RestartLocked(const std::string& name, const std::string& why);

  AgentOptions options_;
  ContainerRuntime& runtime_;
  CheckpointEngine& engine_;
  Transport& transport_;
  Clock& clock_;
  Random& random_;
  MigrationObserver* observer_;
  IntakeLimiter intake_;
  std::unique_ptr<IncomingMigrations> incoming_;
  std::unique_ptr<MigrationDriver> driver_;
  MigrationDriver::Options driver_options_;
  ClusterHooks cluster_;  // set before Start(), read-only after

  std::mutex mu_;  // guards the maps below
  std::map<std::string, Workload> workloads_;
  std::map<std::string, std::shared_ptr<std::mutex>> locks_;
  std::map<std::string, MigrationReport> outgoing_;  // id -> latest report
  int outgoing_running_ = 0;
  Clock::TimePoint last_retry_{};
  Clock::TimePoint last_prune_{};
  Clock::TimePoint last_reconcile_{};
};

}  // namespace kmosix::agent
