#include "api/types.h"

#include <array>
#include <utility>

namespace kmosix::api {
namespace {

constexpr std::pair<WorkloadPhase, std::string_view> kWorkloadPhases[] = {
    {WorkloadPhase::kPending, "Pending"}, {WorkloadPhase::kScheduled, "Scheduled"},
    {WorkloadPhase::kRunning, "Running"}, {WorkloadPhase::kMigrating, "Migrating"},
    {WorkloadPhase::kLost, "Lost"},       {WorkloadPhase::kFailed, "Failed"},
    {WorkloadPhase::kExited, "Exited"},
};

constexpr std::pair<MigrationPhase, std::string_view> kMigrationPhases[] = {
    {MigrationPhase::kPending, "Pending"},
    {MigrationPhase::kPreparing, "Preparing"},
    {MigrationPhase::kCheckpointing, "Checkpointing"},
    {MigrationPhase::kTransferring, "Transferring"},
    {MigrationPhase::kRestoring, "Restoring"},
    {MigrationPhase::kCommitting, "Committing"},
    {MigrationPhase::kResolving, "Resolving"},
    {MigrationPhase::kSucceeded, "Succeeded"},
    {MigrationPhase::kRolledBack, "RolledBack"},
    {MigrationPhase::kFailed, "Failed"},
};

constexpr std::pair<RestartPolicy, std::string_view> kRestartPolicies[] = {
    {RestartPolicy::kNever, "Never"},
    {RestartPolicy::kFromImage, "FromImage"},
    {RestartPolicy::kFromCheckpoint, "FromCheckpoint"},
};

}  // namespace

std::string_view RestartPolicyName(RestartPolicy p) {
  for (const auto& [policy, name] : kRestartPolicies) {
    if (policy == p) return name;
  }
  return "Unknown";
}

StatusOr<RestartPolicy> ParseRestartPolicy(std::string_view s) {
  for (const auto& [policy, name] : kRestartPolicies) {
    if (name == s) return policy;
  }
  return InvalidError("unknown restart policy \"" + std::string(s) +
                      "\" (one of Never, FromImage, FromCheckpoint)");
}

std::string_view WorkloadPhaseName(WorkloadPhase p) {
  for (const auto& [phase, name] : kWorkloadPhases) {
    if (phase == p) return name;
  }
  return "Unknown";
}

StatusOr<WorkloadPhase> ParseWorkloadPhase(std::string_view s) {
  for (const auto& [phase, name] : kWorkloadPhases) {
    if (name == s) return phase;
  }
  return InvalidError("unknown workload phase \"" + std::string(s) + "\"");
}

std::string_view MigrationPhaseName(MigrationPhase p) {
  for (const auto& [phase, name] : kMigrationPhases) {
    if (phase == p) return name;
  }
  return "Unknown";
}

StatusOr<MigrationPhase> ParseMigrationPhase(std::string_view s) {
  for (const auto& [phase, name] : kMigrationPhases) {
    if (name == s) return phase;
  }
  return InvalidError("unknown migration phase \"" + std::string(s) + "\"");
}

bool IsFinal(MigrationPhase p) {
  return p == MigrationPhase::kSucceeded || p == MigrationPhase::kRolledBack ||
         p == MigrationPhase::kFailed;
}

double NodeLoad::Load() const {
  double denom = cpu_capacity * speed;
  if (!(denom > 0)) return 0;
  return cpu_used / denom;
}

}  // namespace kmosix::api
