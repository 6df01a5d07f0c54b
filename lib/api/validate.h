// The one validator of the typed API model (api/types.h): the limits every
// face (REST bodies, etcd records, the agent's body, Kubernetes objects)
// enforces on a decoded value. Codecs check JSON types; these check values.
//
// Thread-safety: pure functions.
// Errors: kInvalid with a message naming the field ("field \"image\" in
// workload spec must be 1 to 512 characters"); ok otherwise.
#pragma once

#include <cstdint>
#include <string_view>

#include "api/types.h"
#include "kmosix/status.h"

namespace kmosix::api {

// Limits of a WorkloadSpec.
inline constexpr size_t kMaxImageBytes = 512;
inline constexpr size_t kMaxArgs = 4096;
inline constexpr size_t kMaxNodeImages = 4096;  // images a node record may list
// A node record's notReadyReason: 1..kMaxNotReadyReasonBytes bytes.
inline constexpr size_t kMaxNotReadyReasonBytes = 1024;
inline constexpr int64_t kMaxMemoryMiB = int64_t{1} << 30;
inline constexpr double kMaxCpus = 4096;
// checkpointIntervalSeconds of a RestartPolicy::kFromCheckpoint workload.
inline constexpr int64_t kMinCheckpointIntervalSeconds = 10;
inline constexpr int64_t kMaxCheckpointIntervalSeconds = 86400;

// Names of workloads, nodes and migration ids: DNS-label-like
// [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
Status ValidateName(std::string_view name);

// An env var name: non-empty, without '=' or NUL.
Status ValidateEnvName(std::string_view name);

// Every limit of a spec: name, image 1..512 bytes, at most 4096 args, env
// names, memoryMiB 0..2^30, cpus finite in 0..4096, node "" or a name, origin
// (when set) with a kind, name and uid, checkpointIntervalSeconds in
// 10..86400 with restartPolicy FromCheckpoint and 0 (absent) otherwise.
// `what` names the value in messages.
Status ValidateWorkloadSpec(const WorkloadSpec& spec, std::string_view what = "workload spec");

// A recovery: policy FromImage or FromCheckpoint, lostNode a name, times and
// count >= 0, checkpoint "" or a name.
Status ValidateRecovery(const Recovery& recovery, std::string_view what = "workload recovery");

// A checkpoint record: workload, id, source and keeper names; epoch,
// takenMs >= 0.
Status ValidateCheckpointRecord(const CheckpointRecord& record);

// A migration's fault: node "" or a name, message at most
// kMaxFaultMessageBytes (api/types.h), atMs >= 0. Its resolution: atMs >= 0.
// (Kinds, phases, outcomes and deciders are checked by their parsers.)
Status ValidateMigrationFault(const MigrationFault& fault);
Status ValidateMigrationResolution(const MigrationResolution& resolution);

// workload a name; target, id "" or names (an id not starting with "ckpt-",
// which the agents keep for periodic checkpoints); requested_by one of "policy",
// "api", "drain", "user".
Status ValidateMigrationRequest(const MigrationRequest& request);

// stability >= 1, min_residency_ms >= 0, max_per_node and max_cluster >= 1,
// low_memory_fraction in 0..1, memory_psi_threshold in 0..100; all finite.
Status ValidatePolicySettings(const PolicySettings& settings);

}  // namespace kmosix::api
