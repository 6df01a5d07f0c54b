// The Kubernetes face of the typed model (api/types.h): kmosix.io/v1alpha1
// MigratableWorkload, Migration and MigrationPolicy objects decoded into typed
// values, and their status written from typed values. The CRDs in crd/ are
// the schema the API server enforces; these decoders check again (the
// object may come from an older CRD, a test, or a hostile writer) and run the
// one validator (api/validate.h).
//
// Names. A MigratableWorkload `ns/name` is the kmosix workload
// WorkloadNameFor(ns, name): "<ns>-<name>" cut to 54 characters plus "-" and 8
// hex digits of a hash of "ns/name", so the same name in two namespaces is two
// workloads and the name stays a DNS label. A Migration object's order has the
// id MigrationIdFor(uid) (a hash of the object's UID), so ordering is
// idempotent: a controller killed between the order and the status write
// finds its order again instead of ordering twice.
//
// Thread-safety: pure functions. Errors: kInvalid with a message naming the
// field ("spec.resources.cpu: ..."); never throw.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "api/types.h"
#include "kmosix/status.h"

namespace kmosix::bridge {

inline constexpr char kFinalizer[] = "kmosix.io/finalizer";
inline constexpr char kLabelRequestedBy[] = "kmosix.io/requested-by";
inline constexpr char kLabelMigrationId[] = "kmosix.io/migration-id";
inline constexpr char kLabelWorkload[] = "kmosix.io/workload";
inline constexpr char kOriginKind[] = "MigratableWorkload";

std::string WorkloadNameFor(const std::string& ns, const std::string& name);
std::string MigrationIdFor(const std::string& uid);
// The id of the migration a nodeName change orders (one per generation).
std::string MigrationIdForMove(const std::string& uid, int64_t generation);

// Quantities (Kubernetes resource.Quantity: "500m", "2", "1.5", "64Mi",
// "1Gi", "1G", "128974848", "1e3"; a bare number is also accepted).
StatusOr<double> ParseCpuQuantity(const nlohmann::json& q);         // cores
StatusOr<int64_t> ParseMemoryQuantityMiB(const nlohmann::json& q);  // MiB, rounded up

// RFC 3339 in UTC with second precision, as metav1.Time.
std::string FormatTime(int64_t unix_ms);

struct ObjectMeta {
  std::string namespace_;
  std::string name;
  std::string uid;
  std::string resource_version;
  int64_t generation = 0;
  bool deleting = false;  // deletionTimestamp set
  std::vector<std::string> finalizers;
  std::map<std::string, std::string> labels;
  std::string creation_timestamp;
  bool HasFinalizer(const std::string& f) const;
};
StatusOr<ObjectMeta> DecodeMeta(const nlohmann::json& object);

// spec of a MigratableWorkload -> the workload's spec (name, origin set).
StatusOr<api::WorkloadSpec> DecodeMigratableWorkload(const nlohmann::json& object);

// The inverse: a MigratableWorkload object (apiVersion, kind, metadata from
// spec.origin, spec) whose decoding gives `spec` back.
nlohmann::json MigratableWorkloadObject(const api::WorkloadSpec& spec);

struct Condition {
  std::string type;
  std::string status;  // "True", "False", "Unknown"
  std::string reason;  // CamelCase
  std::string message;
};
// The conditions array for `now`, keeping lastTransitionTime of a condition
// whose status did not change.
nlohmann::json MergeConditions(const nlohmann::json& old_status, const std::vector<Condition>& now,
                               int64_t generation, int64_t now_ms);

// The status of a MigratableWorkload. `view` absent: not (yet) in kmosix.
// `rejected` set: Accepted=False with that reason/message, nothing runs.
struct WorkloadStatusInput {
  int64_t generation = 0;
  std::string workload;  // kmosix name
  std::optional<api::WorkloadView> view;
  std::optional<Condition> rejected;
  std::string migration_note;  // the last nodeName move's outcome, if any
};
nlohmann::json MigratableWorkloadStatus(const nlohmann::json& old_status,
                                        const WorkloadStatusInput& in, int64_t now_ms);

// spec of a Migration object.
struct MigrationSpec {
  std::string workload;     // a MigratableWorkload in the same namespace
  std::string target_node;  // "" = the policy picks
  bool operator==(const MigrationSpec&) const = default;
};
StatusOr<MigrationSpec> DecodeMigration(const nlohmann::json& object);
nlohmann::json MigrationObject(const std::string& ns, const std::string& name,
                               const MigrationSpec& spec);

// The status of a Migration object from its kmosix record.
nlohmann::json MigrationStatus(const nlohmann::json& old_status, int64_t generation,
                               const api::Migration& m, int64_t now_ms);
// The status of a Migration object whose order was refused (nothing moved).
nlohmann::json MigrationRefusedStatus(const nlohmann::json& old_status, int64_t generation,
                                      const std::string& reason, const std::string& message,
                                      int64_t now_ms);
bool IsFinalMigrationStatus(const nlohmann::json& object);

// "policy" -> "balancer"; "api", "drain", "user" as they are.
std::string RequestedByLabel(const std::string& requested_by);
// A Migration object mirroring a migration kmosix ordered itself (balancer,
// drain, REST) for a MigratableWorkload: name = the migration id.
nlohmann::json MirrorMigrationObject(const api::Migration& m, const api::WorkloadOrigin& origin);

// MigrationPolicy: the knobs and the label selector they apply to.
struct LabelSelector {
  std::map<std::string, std::string> match_labels;
  struct Expression {
    std::string key;
    std::string op;  // In, NotIn, Exists, DoesNotExist
    std::vector<std::string> values;
    bool operator==(const Expression&) const = default;
  };
  std::vector<Expression> match_expressions;
  bool Matches(const std::map<std::string, std::string>& labels) const;
  // How specific: terms in it (the most specific matching policy wins).
  size_t Terms() const { return match_labels.size() + match_expressions.size(); }
  bool operator==(const LabelSelector&) const = default;
};
struct MigrationPolicy {
  std::string name;
  LabelSelector selector;
  api::PolicySettings settings;
  bool operator==(const MigrationPolicy&) const = default;
};
StatusOr<MigrationPolicy> DecodeMigrationPolicy(const nlohmann::json& object);
nlohmann::json MigrationPolicyObject(const MigrationPolicy& policy);
// Its status: Accepted (False with the decoder's message), matchedWorkloads.
nlohmann::json MigrationPolicyStatus(const nlohmann::json& old_status, int64_t generation,
                                     const Status& valid, int64_t matched, int64_t now_ms);

}  // namespace kmosix::bridge
