// The cluster's shared state in the StateStore (etcd): key layout and the
// etcd record codec, the JSON forms of the typed API values (api/types.h)
// stored under it.
//
// Keys (prefix configurable, default "/kmosix/"):
//   nodes/<node>       api::NodeLoad, written by the node's agent under its lease
//                      (vanishes when the agent dies); "notReadyReason" (optional
//                      string) says why a live node takes part in no migration
//   members/<node>     api::NodeMember, written by the leading controller: readiness
//                      as the controller saw it (since changedMs; "lostMs",
//                      optional: when it last went NotReady), cordon flag
//   workloads/<name>   api::Workload: spec (written by the API) and ownership
//                      status (node + epoch; every change of owner is a CAS on
//                      the key's mod_revision that bumps the epoch)
//   migrations/<id>    api::Migration: the order and its progress
//   checkpoints/<name> api::CheckpointRecord: the latest periodic checkpoint of
//                      a restartPolicy FromCheckpoint workload (written by its
//                      owner's agent; read by the controller when the owner's
//                      node is lost)
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
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "api/types.h"
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
  std::string Checkpoints() const { return prefix + "checkpoints/"; }
  std::string Checkpoint(const std::string& workload) const { return Checkpoints() + workload; }
  std::string Leader() const { return prefix + "leader"; }
  // The last path segment of a key under `dir` ("" if the key is not under it).
  static std::string NameIn(const std::string& dir, const std::string& key);
};

// ---- nodes/<node> ----------------------------------------------------------
nlohmann::json NodeLoadToJson(const api::NodeLoad& n);
StatusOr<api::NodeLoad> NodeLoadFromJson(const nlohmann::json& j);

// ---- members/<node> --------------------------------------------------------
nlohmann::json NodeMemberToJson(const api::NodeMember& m);
StatusOr<api::NodeMember> NodeMemberFromJson(const nlohmann::json& j);

// ---- workloads/<name> ------------------------------------------------------
// {"spec": WorkloadSpecToJson(spec, SpecFace::kRecord) (with "origin" when
// set), "status": {"phase","node","epoch","migration","pid","createdMs",
// "startedMs","migrations","message","restarts"? (when > 0),
// "restoreCheckpoint"? (when set), "recovery"? (RecoveryToJson, when set)}};
// the spec is checked by api::ValidateWorkloadSpec.
nlohmann::json WorkloadToJson(const api::Workload& w);
StatusOr<api::Workload> WorkloadFromJson(const nlohmann::json& j);
nlohmann::json WorkloadStatusToJson(const api::WorkloadStatus& s);
// {"policy","lostNode","lostMs","restartedMs","checkpoint",
// "checkpointTakenMs","progressLostMs","count"}; checked by
// api::ValidateRecovery.
nlohmann::json RecoveryToJson(const api::Recovery& r);
StatusOr<api::Recovery> RecoveryFromJson(const nlohmann::json& j);

// ---- migrations/<id> -------------------------------------------------------
// "phase" is MigrationPhaseName ("Pending", ..., "Succeeded", "RolledBack",
// "Failed"); "report" is MigrationReportToJson (kmosix/migration.h) or null;
// "fault" and "resolution" (kmosix/migration.h's codecs) only when set
// (records written before them have neither, and still read).
nlohmann::json MigrationToJson(const api::Migration& m);
StatusOr<api::Migration> MigrationFromJson(const nlohmann::json& j);

// ---- checkpoints/<workload> --------------------------------------------------
// {"workload","id","epoch","source","keeper","takenMs","bytes"}; checked by
// api::ValidateCheckpointRecord.
nlohmann::json CheckpointToJson(const api::CheckpointRecord& c);
StatusOr<api::CheckpointRecord> CheckpointFromJson(const nlohmann::json& j);

// Parses a stored value (JSON text) with the record parser above.
template <typename T>
StatusOr<T> ParseRecord(std::string_view text, StatusOr<T> (*from_json)(const nlohmann::json&)) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidError("stored record is not a JSON object");
  return from_json(j);
}

}  // namespace kmosix::cluster
