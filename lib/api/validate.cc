#include "api/validate.h"

#include <cmath>
#include <string>

namespace kmosix::api {
namespace {

Status Bad(std::string_view what, std::string_view field, std::string_view must) {
  return InvalidError("field \"" + std::string(field) + "\" in " + std::string(what) + " must be " +
                      std::string(must));
}

Status NameField(std::string_view what, std::string_view field, std::string_view value,
                 bool allow_empty) {
  if (value.empty() && allow_empty) return Status::Ok();
  if (Status s = ValidateName(value); !s.ok()) {
    return InvalidError("field \"" + std::string(field) + "\" in " + std::string(what) + ": " +
                        s.message());
  }
  return Status::Ok();
}

bool Finite(double d) { return std::isfinite(d); }

}  // namespace

Status ValidateName(std::string_view name) {
  if (name.empty() || name.size() > 63) {
    return InvalidError("name must be 1 to 63 characters");
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) return InvalidError("name may contain only a-z, 0-9 and '-'");
  }
  if (name.front() == '-' || name.back() == '-') {
    return InvalidError("name must start and end with a letter or digit");
  }
  return Status::Ok();
}

Status ValidateEnvName(std::string_view name) {
  if (name.empty() || name.find('=') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return InvalidError("env name \"" + std::string(name) + "\" is not valid");
  }
  return Status::Ok();
}

Status ValidateWorkloadSpec(const WorkloadSpec& s, std::string_view what) {
  KMX_RETURN_IF_ERROR(NameField(what, "name", s.name, /*allow_empty=*/false));
  if (s.image.empty() || s.image.size() > kMaxImageBytes)
    return Bad(what, "image", "1 to 512 characters");
  if (s.args.size() > kMaxArgs) return Bad(what, "args", "an array of strings");
  for (const auto& [k, v] : s.env) KMX_RETURN_IF_ERROR(ValidateEnvName(k));
  if (s.memory_mib < 0) return Bad(what, "memoryMiB", ">= 0");
  if (s.memory_mib > kMaxMemoryMiB) return Bad(what, "memoryMiB", "at most 2^30");
  if (!Finite(s.cpus) || s.cpus < 0) return Bad(what, "cpus", "a finite number >= 0");
  if (s.cpus > kMaxCpus) return Bad(what, "cpus", "at most 4096");
  KMX_RETURN_IF_ERROR(NameField(what, "node", s.node, /*allow_empty=*/true));
  if (s.origin) {
    if (s.origin->kind.empty()) return Bad(what, "origin", "an object with a kind");
    if (s.origin->name.empty()) return Bad(what, "origin", "an object with a name");
    if (s.origin->uid.empty()) return Bad(what, "origin", "an object with a uid");
  }
  if (s.restart_policy == RestartPolicy::kFromCheckpoint) {
    if (s.checkpoint_interval_seconds < kMinCheckpointIntervalSeconds ||
        s.checkpoint_interval_seconds > kMaxCheckpointIntervalSeconds)
      return Bad(what, "checkpointIntervalSeconds",
                 "an integer from " + std::to_string(kMinCheckpointIntervalSeconds) + " to " +
                     std::to_string(kMaxCheckpointIntervalSeconds) +
                     " with restartPolicy FromCheckpoint");
  } else if (s.checkpoint_interval_seconds != 0) {
    return Bad(what, "checkpointIntervalSeconds",
               "absent (or 0) unless restartPolicy is FromCheckpoint");
  }
  return Status::Ok();
}

Status ValidateRecovery(const Recovery& r, std::string_view what) {
  if (r.policy != RestartPolicy::kFromImage && r.policy != RestartPolicy::kFromCheckpoint)
    return Bad(what, "policy", "FromImage or FromCheckpoint");
  KMX_RETURN_IF_ERROR(NameField(what, "lostNode", r.lost_node, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(NameField(what, "checkpoint", r.checkpoint, /*allow_empty=*/true));
  if (r.lost_ms < 0) return Bad(what, "lostMs", ">= 0");
  if (r.restarted_ms < 0) return Bad(what, "restartedMs", ">= 0");
  if (r.checkpoint_taken_ms < 0) return Bad(what, "checkpointTakenMs", ">= 0");
  if (r.progress_lost_ms < 0) return Bad(what, "progressLostMs", ">= 0");
  if (r.count < 0) return Bad(what, "count", ">= 0");
  return Status::Ok();
}

Status ValidateCheckpointRecord(const CheckpointRecord& c) {
  constexpr std::string_view what = "checkpoint record";
  KMX_RETURN_IF_ERROR(NameField(what, "workload", c.workload, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(NameField(what, "id", c.id, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(NameField(what, "source", c.source, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(NameField(what, "keeper", c.keeper, /*allow_empty=*/false));
  if (c.epoch < 0) return Bad(what, "epoch", ">= 0");
  if (c.taken_ms < 0) return Bad(what, "takenMs", ">= 0");
  return Status::Ok();
}

Status ValidateMigrationFault(const MigrationFault& f) {
  constexpr std::string_view what = "migration fault";
  KMX_RETURN_IF_ERROR(NameField(what, "node", f.node, /*allow_empty=*/true));
  if (f.message.size() > kMaxFaultMessageBytes)
    return Bad(what, "message", "at most " + std::to_string(kMaxFaultMessageBytes) + " bytes");
  if (f.at_ms < 0) return Bad(what, "atMs", ">= 0");
  return Status::Ok();
}

Status ValidateMigrationResolution(const MigrationResolution& r) {
  if (r.at_ms < 0) return Bad("migration resolution", "atMs", ">= 0");
  return Status::Ok();
}

Status ValidateMigrationRequest(const MigrationRequest& r) {
  if (auto s = ValidateName(r.workload); !s.ok()) return s.Annotate("workload");
  if (!r.target.empty()) {
    if (auto s = ValidateName(r.target); !s.ok()) return s.Annotate("target");
  }
  if (!r.id.empty()) {
    if (auto s = ValidateName(r.id); !s.ok()) return s.Annotate("id");
    // The agents route "ckpt-" ids to their checkpoint keeper
    // (node-agent/checkpoint_keeper.h), never to the migration target.
    if (r.id.rfind("ckpt-", 0) == 0) {
      return InvalidError("id: \"ckpt-\" starts the ids of periodic checkpoints, not migrations");
    }
  }
  if (r.requested_by != kRequestedByPolicy && r.requested_by != kRequestedByApi &&
      r.requested_by != kRequestedByDrain && r.requested_by != kRequestedByUser) {
    return InvalidError("requestedBy: must be one of policy, api, drain, user");
  }
  return Status::Ok();
}

Status ValidatePolicySettings(const PolicySettings& p) {
  constexpr std::string_view what = "migration policy";
  if (p.stability && (!Finite(*p.stability) || *p.stability < 1))
    return Bad(what, "stability", "a number >= 1");
  if (p.min_residency_ms && *p.min_residency_ms < 0) return Bad(what, "minResidencyMs", ">= 0");
  if (p.max_per_node && *p.max_per_node < 1) return Bad(what, "maxPerNode", ">= 1");
  if (p.max_cluster && *p.max_cluster < 1) return Bad(what, "maxCluster", ">= 1");
  if (p.low_memory_fraction &&
      (!Finite(*p.low_memory_fraction) || *p.low_memory_fraction < 0 || *p.low_memory_fraction > 1))
    return Bad(what, "lowMemoryFraction", "a number from 0 to 1");
  if (p.memory_psi_threshold && (!Finite(*p.memory_psi_threshold) || *p.memory_psi_threshold < 0 ||
                                 *p.memory_psi_threshold > 100))
    return Bad(what, "memoryPsiThreshold", "a number from 0 to 100");
  return Status::Ok();
}

}  // namespace kmosix::api
