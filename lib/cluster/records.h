// The cluster's shared state in the StateStore (etcd): key layout and the
// records stored under it, with their JSON forms.
//
// Keys (prefix configurable, default "/kmosix/"):
//   nodes/<node>       NodeLoad, written by the node's agent under its lease
//                      (vanishes when the agent dies)
//   members/<node>     NodeMember, written by the leading controller: readiness
//                      as the controller saw it, cordon flag
//   workloads/<name>   WorkloadRecord: spec (written by the API) and ownership
//                      status (node + epoch; every change of owner is a CAS on
//                      the key's mod_revision that bumps the epoch)
//   migrations/<id>    MigrationRecord: the order and its progress
//   leader             controller election key (lease + create-revision txn)
//
// Ownership rule: only the agent named in status.node may run a workload, and
// only while status.epoch is the epoch it started/adopted it at. Owner
// changes (placement, migration commit, rollback revert, Lost) are CAS writes.
//
// Parsers are strict (unknown fields, wrong types -> kInvalid naming the
// field) and never throw. Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/status.h"

namespace kmosix::cluster {

struct KeyLayout {
  std::string prefix = "/kmosix/";  // must end with '/'
  std::string Nodes() const { return prefix + "nodes/"; }
  std::string Node(const std::string& n) const { return Nodes() + n; }
  std::string Members() const { return prefix + "members/"; }
  std::string Member(const std::string& n) const { return Members() + n; }
  std::string Workloads() const { return prefix + "workloads/"; }
  std::string Workload(const std::string& n) const { return Workloads() + n; }
  std::string Migrations() const { return prefix + "migrations/"; }
  std::string Migration(const std::string& id) const { return Migrations() + id; }
  std::string Leader() const { return prefix + "leader"; }
  // The last path segment of a key under `dir` ("" if the key is not under it).
  static std::string NameIn(const std::string& dir, const std::string& key);
};

// ---- nodes/<node> ----------------------------------------------------------
struct WorkloadUsage {
  double cpu = 0;             // cores in use (smoothed)
  uint64_t memory_bytes = 0;  // resident (cgroup memory.current)
  bool operator==(const WorkloadUsage&) const = default;
};

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
  int64_t updated_ms = 0;                          // wall clock of the sample
  // Normalised CPU load: cpu_used / (cpu_capacity * speed).
  double Load() const;
};
nlohmann::json NodeLoadToJson(const NodeLoad& n);
StatusOr<NodeLoad> NodeLoadFromJson(const nlohmann::json& j);

// ---- members/<node> --------------------------------------------------------
struct NodeMember {
  std::string node;
  bool ready = true;
  int64_t changed_ms = 0;  // when `ready` last changed
  bool cordoned = false;   // accepts no arrivals (placements, migrations)
};
nlohmann::json NodeMemberToJson(const NodeMember& m);
StatusOr<NodeMember> NodeMemberFromJson(const nlohmann::json& j);

// ---- workloads/<name> ------------------------------------------------------
struct WorkloadSpec {
  std::string name;  // DNS-label-like, see ValidateName
  std::string image;
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  int64_t memory_mib = 0;  // 0: no limit
  double cpus = 0;         // 0: no limit
  bool migratable = true;  // false: never migrate (openMosix "stay")
  std::string node;        // requested node ("" = controller chooses)
  bool pinned = false;     // stays where it is (no automatic moves)
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
};

struct WorkloadRecord {
  WorkloadSpec spec;
  WorkloadStatus status;
};
nlohmann::json WorkloadRecordToJson(const WorkloadRecord& w);
StatusOr<WorkloadRecord> WorkloadRecordFromJson(const nlohmann::json& j);
// A REST/CRD body: {"name","image","args"?,"env"?,"memoryMiB"?,"cpus"?,
// "migratable"?,"node"?,"pinned"?}; strict.
StatusOr<WorkloadSpec> ParseWorkloadSpec(std::string_view body);
StatusOr<WorkloadSpec> WorkloadSpecFromJson(const nlohmann::json& j);
nlohmann::json WorkloadSpecToJson(const WorkloadSpec& s);

// ---- migrations/<id> -------------------------------------------------------
// Phases are MigrationPhaseName() of kmosix/migration.h ("Pending", ...,
// "Succeeded", "RolledBack", "Failed").
struct MigrationRecord {
  std::string id;
  std::string workload;
  std::string source;  // node
  std::string target;  // node
  std::string phase = "Pending";
  std::string reason;        // why it was ordered, numbers included
  std::string requested_by;  // "policy", "api", "drain"
  int64_t epoch = 0;         // workload epoch when ordered (source owned it at)
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  int64_t finished_ms = 0;
  nlohmann::json report;  // MigrationReportToJson once the source ran it (else null)
  std::string error;      // why it failed/rolled back ("" otherwise)
  // Set by DELETE /v1/migrations/{id}: the source stops before the commit
  // point and rolls back. Only written while the workload record still names
  // the source (ownership not transferred), so a set flag means "never commit".
  int64_t cancel_requested_ms = 0;  // 0: not cancelled
  std::string cancelled_by;         // who asked ("api", "drain"...)
};
nlohmann::json MigrationRecordToJson(const MigrationRecord& m);
StatusOr<MigrationRecord> MigrationRecordFromJson(const nlohmann::json& j);
bool IsFinalMigrationPhase(std::string_view phase);  // Succeeded, RolledBack, Failed

// Parses a stored value (JSON text) with the record parser above.
template <typename T>
StatusOr<T> ParseRecord(std::string_view text, StatusOr<T> (*from_json)(const nlohmann::json&)) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidError("stored record is not a JSON object");
  return from_json(j);
}

}  // namespace kmosix::cluster
