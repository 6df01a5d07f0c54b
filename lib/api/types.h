// The typed model of the kmosix API: workloads (spec, status), migrations
// (phases, order, record, report), nodes (load, membership, views), the
// balancer's policy knobs, and the request/response values of every
// controller API method and of a node agent's API. The REST codecs
// (controller/rest_codec.h, node-agent/rest_codec.h, kmosix/spec_json.h), the
// etcd record codecs (cluster/records.h) and the Kubernetes codecs are faces
// of these values; nothing here knows HTTP, gRPC, JSON or Kubernetes.
// Validation lives in api/validate.h.
//
// Thread-safety: plain value types and pure functions.
// Errors: Parse* answer kInvalid naming the unknown value; never throw.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/status.h"

namespace kmosix::api {

// ---- workloads ---------------------------------------------------------------

// Where a workload came from when it was not created through the REST API:
// set for workloads mirrored from a Kubernetes MigratableWorkload.
struct WorkloadOrigin {
  std::string kind;        // "MigratableWorkload"
  std::string namespace_;  // Kubernetes namespace
  std::string name;        // object name in that namespace
  std::string uid;         // metadata.uid
  bool operator==(const WorkloadOrigin&) const = default;
};

// What the controller does with a workload whose node is lost (its agent's
// lease expired while it ran there; api::WorkloadPhase::kLost). JSON
// "restartPolicy": "Never" | "FromImage" | "FromCheckpoint".
enum class RestartPolicy {
  kNever,           // it stays Lost (the default)
  kFromImage,       // placed again on another ready node, started from its image
  kFromCheckpoint,  // restored elsewhere from its latest periodic checkpoint
                    // (checkpoints/<name>); from its image when there is none
};
std::string_view RestartPolicyName(RestartPolicy p);
// Strict: kInvalid naming the unknown value and the accepted ones.
StatusOr<RestartPolicy> ParseRestartPolicy(std::string_view s);

struct WorkloadSpec {
  std::string name;  // DNS-label-like, see ValidateName
  std::string image;
  std::vector<std::string> args;  // whole command line; empty = image default
  std::map<std::string, std::string> env;
  int64_t memory_mib = 0;  // 0: no limit
  double cpus = 0;         // 0: no limit
  bool migratable = true;  // false: never migrate (openMosix "stay")
  std::string node;        // requested node ("" = controller chooses)
  bool pinned = false;     // stays where it is (no automatic moves)
  // Set only by the Kubernetes bridge; REST bodies may not carry it.
  std::optional<WorkloadOrigin> origin;
  // Node loss (see RestartPolicy). checkpoint_interval_seconds: how often
  // the owner checkpoints it to a keeper node; required and in
  // [kMinCheckpointIntervalSeconds, kMaxCheckpointIntervalSeconds] with
  // kFromCheckpoint, 0 otherwise (api/validate.h).
  RestartPolicy restart_policy = RestartPolicy::kNever;
  int64_t checkpoint_interval_seconds = 0;
  bool operator==(const WorkloadSpec&) const = default;
};

enum class WorkloadPhase {
  kPending,    // accepted, no node yet
  kScheduled,  // owner chosen (status.node, epoch), agent not yet running it
  kRunning,    // the owner reports it running
  kMigrating,  // status.migration is in flight
  kLost,       // its node died with it (lease expired while it ran there)
  kFailed,     // the owner could not start it (status.message says why)
  kExited,     // its process ended on its own
};
std::string_view WorkloadPhaseName(WorkloadPhase p);
StatusOr<WorkloadPhase> ParseWorkloadPhase(std::string_view s);

// How the controller last brought back a workload whose node was lost
// (WorkloadStatus::recovery). JSON: {"policy","lostNode","lostMs",
// "restartedMs","checkpoint","checkpointTakenMs","progressLostMs","count"}.
struct Recovery {
  // The policy that was applied: kFromImage or kFromCheckpoint (a
  // FromCheckpoint workload with no usable checkpoint is recovered
  // kFromImage, and `message` of its status says why).
  RestartPolicy policy = RestartPolicy::kFromImage;
  std::string lost_node;  // the node it was lost with
  // When that node went NotReady (members/<node> changedMs); for a node that
  // came back without it, when it came back.
  int64_t lost_ms = 0;
  int64_t restarted_ms = 0;         // when the controller placed it again
  std::string checkpoint;           // the checkpoint id restored from ("" = from the image)
  int64_t checkpoint_taken_ms = 0;  // when that checkpoint was taken (0: none)
  // lost_ms - checkpoint_taken_ms: the run time the restore forgets (0
  // from the image: there everything since the start is lost).
  int64_t progress_lost_ms = 0;
  int64_t count = 0;  // recoveries of this workload so far, this one included
  bool operator==(const Recovery&) const = default;
};

struct WorkloadStatus {
  WorkloadPhase phase = WorkloadPhase::kPending;
  std::string node;       // owner ("" while Pending)
  int64_t epoch = 0;      // bumped by every owner change
  std::string migration;  // id of the migration in flight ("" = none)
  uint32_t pid = 0;
  int64_t created_ms = 0;               // record created
  int64_t started_ms = 0;               // started/arrived on its current node
  std::vector<std::string> migrations;  // finished migration ids, oldest first
  std::string message;                  // why Failed/Lost, or last event
  // Times its owner started it again in place since it started or arrived
  // on status.node (its task had died or vanished; see the agent's
  // "Restarts").
  int64_t restarts = 0;
  // Set by the controller when it places a Lost workload on the keeper of
  // its latest checkpoint (RestartPolicy::kFromCheckpoint): the id of that
  // checkpoint (CheckpointRecord::id). The agent that starts the Scheduled
  // workload restores it from that local checkpoint instead of the image,
  // and clears it with its Running write. "" otherwise.
  std::string restore_checkpoint;
  // The last node-loss recovery (absent: never recovered).
  std::optional<Recovery> recovery;
  bool operator==(const WorkloadStatus&) const = default;
};

// workloads/<name> in the store: the spec (written by the API) and the
// ownership status (node + epoch).
struct Workload {
  WorkloadSpec spec;
  WorkloadStatus status;
  bool operator==(const Workload&) const = default;
};

// checkpoints/<workload>: the latest periodic checkpoint of a
// RestartPolicy::kFromCheckpoint workload, written by its owner's agent once
// the keeper node holds the whole image. JSON: {"workload","id","epoch",
// "source","keeper","takenMs","bytes"}.
struct CheckpointRecord {
  std::string workload;
  std::string id;        // names the checkpoint on the keeper (a name, see ValidateName)
  int64_t epoch = 0;     // the owner's ownership epoch when it was taken
  std::string source;    // the node that took it (the owner then)
  std::string keeper;    // the node holding it
  int64_t taken_ms = 0;  // wall clock when the workload was dumped
  uint64_t bytes = 0;    // size of the image the keeper holds
  bool operator==(const CheckpointRecord&) const = default;
};

// ---- nodes -------------------------------------------------------------------

struct WorkloadUsage {
  double cpu = 0;             // cores in use (smoothed)
  uint64_t memory_bytes = 0;  // resident (cgroup memory.current)
  bool operator==(const WorkloadUsage&) const = default;
};

// nodes/<node>: written by the node's agent under its lease.
struct NodeLoad {
  std::string node;
  std::string url;          // agent REST base URL, e.g. http://10.77.0.11:7700
  std::string load_source;  // "host" or "cgroup"
  double cpu_capacity = 1;  // cores this node offers (declared or counted)
  double speed = 1;         // relative speed factor (1 = reference core)
  double cpu_used = 0;      // cores in use on the node, all of it (smoothed)
  double run_queue = 0;     // runnable tasks (host: loadavg 1 min; cgroup: estimate)
  uint64_t memory_capacity_bytes = 0;
  uint64_t memory_available_bytes = 0;
  std::optional<double> psi_cpu_some10;            // % of time, /proc/pressure or cgroup
  std::optional<double> psi_memory_some10;         // absent where the kernel has no PSI
  std::map<std::string, WorkloadUsage> workloads;  // by workload name, running here
  // Images the node holds (sorted); absent where the agent does not publish
  // them. Placement refuses an image no node holds.
  std::optional<std::vector<std::string>> images;
  // Why the node cannot take part in migrations although its agent runs
  // (its start-up checks failed, e.g. no CRIU >= 4 passing `criu check`);
  // absent when it can. Such a node keeps its workloads, but the controller
  // places nothing on it and migrates nothing to or from it.
  std::optional<std::string> not_ready_reason;
  int64_t updated_ms = 0;  // wall clock of the sample
  // Normalised CPU load: cpu_used / (cpu_capacity * speed).
  double Load() const;
  bool operator==(const NodeLoad&) const = default;
};

// members/<node>: written by the leading controller.
struct NodeMember {
  std::string node;
  bool ready = true;
  int64_t changed_ms = 0;  // when `ready` last changed
  bool cordoned = false;   // accepts no arrivals (placements, migrations)
  // When it last went NotReady (its lease expired), kept once it is Ready
  // again: a node back without its workloads lost them then, not when it
  // came back. 0: never seen to go (or recorded before this field).
  int64_t lost_ms = 0;
  bool operator==(const NodeMember&) const = default;
};

// ---- migrations --------------------------------------------------------------

// The phases of the migration protocol (kmosix/migration.h) and of the
// migration record; one enum for both.
enum class MigrationPhase {
  kPending,
  kPreparing,
  kCheckpointing,
  kTransferring,
  kRestoring,
  kCommitting,
  kResolving,
  kSucceeded,
  kRolledBack,
  kFailed,
};
std::string_view MigrationPhaseName(MigrationPhase p);
StatusOr<MigrationPhase> ParseMigrationPhase(std::string_view s);
bool IsFinal(MigrationPhase p);  // Succeeded, RolledBack, Failed

struct MigrationTimings {
  double prepare = 0;     // target checks and creates the container
  double freeze = 0;      // pause
  double checkpoint = 0;  // CRIU dump
  double transfer = 0;    // streaming to the target
  double restore = 0;     // target restores and confirms running
  double commit = 0;      // target commits, source releases
  double downtime = 0;    // from freeze until the target confirmed running
  double total = 0;
  bool operator==(const MigrationTimings&) const = default;
};

// Which fault a migration met (MigrationFault::kind): a small, stable set of
// names, chosen by what an operator does about it. JSON: the names quoted.
enum class FaultKind {
  kCancelled,          // "Cancelled": someone asked (cancelledBy says who); nothing to repair
  kInvalidOrder,       // "InvalidOrder": cannot be carried out as ordered (the target is the
                       // source, not a kmosix agent, answers under another name, is no ready
                       // node; the workload is gone): fix the order or the node's URL
  kTargetRefused,      // "TargetRefused": the target said no (busy, no room, no such image, the
                       // name in use): make room there, or pick another target
  kTargetUnreachable,  // "TargetUnreachable": the target's agent did not answer (down,
                       // partitioned, timed out): check the target node and the network
  kTransferFailed,     // "TransferFailed": the image stream broke (cut, corrupted): check the
                       // network between the two nodes
  kCheckpointFailed,   // "CheckpointFailed": the source could not freeze or dump it (CRIU):
                       // check CRIU and what the workload holds
  kRestoreFailed,      // "RestoreFailed": the target could not restore it, or dropped its copy
                       // before the commit: check the target's runtime and CRIU
  kStorageFailed,      // "StorageFailed": a durable write on the source failed (its journal or
                       // scratch directory; a full disk): free the source's disk
  kEtcdUnavailable,    // "EtcdUnavailable": the ownership records could not be read or written
                       // around the commit: check etcd
  kSourceRestarted,    // "SourceRestarted": the source agent stopped mid-migration (crash,
                       // restart) and finished it from its journal when it came back
  kSourceLost,         // "SourceLost": the source node was lost (its lease expired) before the
                       // migration ended; the controller ended it
  kSuperseded,         // "Superseded": another node owns the workload (a node-loss restart,
                       // another migration) or it was deleted: nothing to repair
  kTimedOut,           // "TimedOut": the source did not take the order up in time: check the
                       // source agent
  kInternal,           // "Internal": an unexpected error (a bug): report it with the logs
};
std::string_view FaultKindName(FaultKind k);
// Strict: kInvalid naming the unknown value.
StatusOr<FaultKind> ParseFaultKind(std::string_view s);

inline constexpr size_t kMaxFaultMessageBytes = 4096;

// The fault that took a migration off its path: the first one met (a later
// failure while resolving it does not replace it), or the one the controller
// ended it for. JSON {"kind","phase","node","message","atMs"}.
struct MigrationFault {
  FaultKind kind = FaultKind::kInternal;
  // Where it hit: the phase the migration was in (Pending: before the
  // source took the order up).
  MigrationPhase phase = MigrationPhase::kPending;
  // Which side: the node it hit (the source or the target); "" = the
  // cluster (etcd, the controller, a cancel), or a target not yet known by
  // name (before it answered).
  std::string node;
  std::string message;  // what was seen; at most kMaxFaultMessageBytes
  int64_t at_ms = 0;    // wall clock
  bool operator==(const MigrationFault&) const = default;
};
// A fault with `message` cut to kMaxFaultMessageBytes (at a UTF-8 boundary)
// and `node` "" unless it is a name: always one the codecs read back.
MigrationFault MakeFault(FaultKind kind, MigrationPhase phase, std::string node,
                         std::string_view message, int64_t at_ms);

// How a migration ended, as far as the workload goes
// (MigrationResolution::outcome). JSON: the names quoted.
enum class MigrationOutcome {
  kCommitted,   // "Committed": the target owns and runs it (Succeeded)
  kRolledBack,  // "RolledBack": the source's frozen copy was thawed; it runs there again
  kUntouched,   // "Untouched": it never stopped on the source (ended before the freeze)
  kReleased,    // "Released": the source's copy was released, never thawed: another node
                // owns it, or it was deleted (Failed, report.sourceReleased)
  kSourceGone,  // "SourceGone": the source's copy vanished (its node lost it) before it could
                // be thawed; the workload's own restart rules take over
  kAbandoned,   // "Abandoned": ended without the source's word (its node was lost); the
                // workload record stays with the source, whose node-loss policy decides
};
std::string_view MigrationOutcomeName(MigrationOutcome o);
StatusOr<MigrationOutcome> ParseMigrationOutcome(std::string_view s);

// Who decided that outcome (MigrationResolution::decided_by). JSON: the names
// quoted.
enum class Decider {
  kSource,      // "Source": the source's driver, on its own path
  kTarget,      // "Target": the target's remembered commit-or-abort verdict, asked again
                // after an uncertain moment (a lost answer, a source restart)
  kRecords,     // "Records": the cluster's ownership records (etcd), when the target could
                // not say (it forgot the migration) or they name another owner
  kController,  // "Controller": the leading controller's verdict (source lost, order
                // timed out, workload gone)
};
std::string_view DeciderName(Decider d);
StatusOr<Decider> ParseDecider(std::string_view s);

// How a migration ended and who decided; set with its final phase.
// JSON {"outcome","decidedBy","atMs"}.
struct MigrationResolution {
  MigrationOutcome outcome = MigrationOutcome::kUntouched;
  Decider decided_by = Decider::kSource;
  int64_t at_ms = 0;  // wall clock
  bool operator==(const MigrationResolution&) const = default;
};

// What the source agent's driver reports of one migration.
struct MigrationReport {
  std::string id;
  std::string workload;
  std::string source_node;
  std::string target_node;
  std::string target_url;
  MigrationPhase phase = MigrationPhase::kPending;
  // The phase in which it went wrong, and why (empty/ok when it did not).
  std::string failed_phase;
  Status error;
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  MigrationTimings timings;
  uint64_t bytes = 0;
  uint64_t files = 0;
  uint32_t target_pid = 0;
  // Ended Failed "superseded": another node owns the workload (or it was
  // deleted), so the source's frozen copy was released, never thawed; it is
  // gone from the source (JSON "sourceReleased", present only when true).
  bool source_released = false;
  // The fault it met (absent: none), and how it ended (set with a final
  // phase). JSON "fault", "resolution" (absent when unset).
  std::optional<MigrationFault> fault;
  std::optional<MigrationResolution> resolution;
};

// Who ordered a migration (Migration::requested_by).
inline constexpr std::string_view kRequestedByPolicy = "policy";  // the balancer
inline constexpr std::string_view kRequestedByApi = "api";        // REST POST /v1/migrations
inline constexpr std::string_view kRequestedByDrain = "drain";    // a node drain
inline constexpr std::string_view kRequestedByUser = "user";      // a Kubernetes Migration

// migrations/<id>: the order and its progress.
struct Migration {
  std::string id;
  std::string workload;
  std::string source;  // node
  std::string target;  // node
  MigrationPhase phase = MigrationPhase::kPending;
  std::string reason;        // why it was ordered, numbers included
  std::string requested_by;  // "policy", "api", "drain", "user"
  int64_t epoch = 0;         // workload epoch when ordered (source owned it at)
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  int64_t finished_ms = 0;
  std::optional<MigrationReport> report;  // once the source ran it
  std::string error;                      // why it failed/rolled back ("" otherwise)
  // Set by a cancel: the source stops before the commit point and rolls
  // back. Only written while the workload record still names the source
  // (ownership not transferred), so a set flag means "never commit".
  int64_t cancel_requested_ms = 0;  // 0: not cancelled
  std::string cancelled_by;         // who asked ("api", "drain", "user"...)
  // Which fault it met and how it ended: the source's (from its report) or
  // the controller's verdict. Absent: none met / not ended (records written
  // before they existed have neither).
  std::optional<MigrationFault> fault;
  std::optional<MigrationResolution> resolution;
};

// ---- requests and views of the controller API ---------------------------------

// An order to move a workload (POST /v1/migrations; a Kubernetes Migration).
struct MigrationRequest {
  std::string workload;
  std::string target;                                       // "" = the policy picks one
  std::string requested_by = std::string(kRequestedByApi);  // see Migration::requested_by
  std::string reason;                                       // "" = the controller words one
  // "" = the controller makes one up. Otherwise the migration id, and the
  // order is idempotent: ordering an id that exists for the same workload
  // answers that record (kConflict if it belongs to another workload).
  std::string id;
};

// POST /v1/nodes/{name}/drain.
struct DrainRequest {
  bool include_pinned = false;  // move pinned workloads too
};

struct DrainReport {
  struct Ordered {
    std::string workload;
    std::string migration;
    std::string target;
  };
  struct InFlight {
    std::string workload;
    std::string migration;
  };
  struct NotMoved {
    std::string workload;
    std::string reason;
  };
  std::string node;
  bool cordoned = true;
  std::vector<Ordered> ordered;
  std::vector<InFlight> in_flight;
  std::vector<NotMoved> not_moved;
};

// A workload as the API shows it.
struct WorkloadView {
  Workload workload;
  double age_seconds = 0;
  std::optional<WorkloadUsage> usage;  // as its node last reported it
};

// A node as GET /v1/nodes/{name} shows it.
struct NodeView {
  std::string name;
  bool ready = false;  // its agent holds its lease and reports no not_ready_reason
  bool cordoned = false;
  std::optional<double> not_ready_seconds;      // known member whose agent's lease expired
  std::optional<std::string> not_ready_reason;  // its agent runs but reports it unfit
  std::optional<NodeLoad> load;                 // present while its agent holds its lease
  double heartbeat_age_seconds = 0;             // of `load`
  std::vector<std::string> workloads;           // names of the workloads it owns
};

// One move the balancer would make.
struct MoveDecision {
  enum class Kind { kMemory, kCpu };
  Kind kind = Kind::kCpu;
  std::string workload;
  std::string source;
  std::string target;
  double source_load = 0;
  double target_load = 0;
  double workload_load = 0;
  std::string reason;
};

// GET /v1/decisions: what the balancer would do now, without doing it.
struct DecisionsView {
  std::vector<MoveDecision> moves;
  std::vector<std::string> held_back;   // why other moves were not made
  std::map<std::string, double> loads;  // by node
  size_t in_flight = 0;
  double stability = 0;
};

// GET /v1/leader.
struct LeaderInfo {
  std::string identity;               // this replica
  std::optional<std::string> leader;  // the leader's identity, if known
  bool is_leader = false;
  bool ready = false;
};

// The balancer's knobs; unset = the controller's flag. A MigrationPolicy
// (Kubernetes) carries one for the workloads it selects.
struct PolicySettings {
  std::optional<bool> enabled;
  std::optional<double> stability;             // > 1: how much better a move must be
  std::optional<int64_t> min_residency_ms;     // before a workload moves again
  std::optional<int> max_per_node;             // migrations in flight per node
  std::optional<int> max_cluster;              // migrations in flight in the cluster
  std::optional<double> low_memory_fraction;   // 0..1 of capacity available
  std::optional<double> memory_psi_threshold;  // % some10, 0..100
  bool operator==(const PolicySettings&) const = default;
};

// ---- requests and views of a node agent's API ---------------------------------
// (node-agent/agent.h; its REST face is node-agent/rest_codec.h.) Workloads
// created on an agent directly carry only the agent face of a WorkloadSpec
// (name, image, args, env, memory_mib, cpus: SpecFace::kAgent).

// POST /v1/workloads/{name}/migrate on an agent: live-migrate it there.
struct AgentMigrateRequest {
  std::string target;  // base URL of the target agent: http(s)://host[:port][/]
};

// A workload as an agent's GET /v1/workloads/{name} shows it.
struct AgentWorkloadView {
  WorkloadSpec spec;  // the agent face's fields; the others at their defaults
  std::string node;   // this agent's node
  // "running", "migrating", "frozen" (a migration is being resolved), "lost"
  // (its container vanished), "restarting" (its task died or vanished; it is
  // started again after a back-off), "exited" (its process ended with status
  // 0: done, not restarted), "fenced" (managed; paused because the node's
  // lease was not renewed in time, until the cluster's record decides:
  // thawed, or deleted when another node owns it).
  std::string state;
  int64_t created_ms = 0;               // first started, on any node
  int64_t started_ms = 0;               // started, restarted or arrived on this node
  std::vector<std::string> migrations;  // ids it arrived or left by, oldest first
  bool managed = false;                 // cluster mode: run for the cluster
  int64_t epoch = 0;                    // managed: the ownership epoch it runs under
  uint32_t pid = 0;                     // 0: no task, or not asked
  // Times the agent started it again on this node because its task had died
  // or vanished (crash, OOM kill, node reboot, containerd restart), the last
  // one's wall-clock time and why ("exited with status 137 (SIGKILL...)",
  // "task gone ...", or why the restart itself failed).
  int restarts = 0;
  int64_t last_restart_ms = 0;
  std::string last_restart_reason;
  // While "restarting": when the next attempt is due (wall clock ms).
  int64_t next_restart_ms = 0;
  // The task's exit status, when the runtime reports it stopped.
  std::optional<uint32_t> exit_status;
  // The runtime's task state ("none", "created", "running", "paused",
  // "stopped", "unknown" when it could not say); absent when the runtime was
  // not asked (a workload neither running, migrating nor frozen).
  std::optional<std::string> task;
  // While "fenced": why, and since when (wall clock ms); empty/0 otherwise.
  std::string fence_reason;
  int64_t fenced_ms = 0;
};

// GET /v1/workloads on an agent.
struct AgentWorkloadList {
  std::string node;
  std::vector<AgentWorkloadView> items;  // by name
};

// A migration an agent received (its target side), as its GET /v1/migrations
// shows it.
struct AgentIncomingMigration {
  std::string id;
  std::string workload;
  std::string source_node;
  std::string target_node;  // this agent's node
  // The target protocol's phase (kmosix::TargetPhaseName: "Prepared",
  // "Receiving", ..., "Committed", "Aborted").
  std::string phase;
  uint64_t bytes = 0;  // received so far
  uint64_t files = 0;
  std::string error;  // why it aborted ("" otherwise)
};

// One migration an agent took part in.
struct AgentMigrationView {
  enum class Role { kSource, kTarget };
  Role role = Role::kSource;
  MigrationReport report;           // kSource: the report of one it sent
  AgentIncomingMigration incoming;  // kTarget: the record of one it received
  const std::string& id() const { return role == Role::kSource ? report.id : incoming.id; }
};

// GET /v1/migrations on an agent: the ones it sent (by id), then the ones it
// received.
struct AgentMigrationList {
  std::string node;
  std::vector<AgentMigrationView> items;
};

}  // namespace kmosix::api
