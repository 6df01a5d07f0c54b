#include "api/types.h"

#include <array>
#include <utility>

#include "api/validate.h"

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

constexpr std::pair<FaultKind, std::string_view> kFaultKinds[] = {
    {FaultKind::kCancelled, "Cancelled"},
    {FaultKind::kInvalidOrder, "InvalidOrder"},
    {FaultKind::kTargetRefused, "TargetRefused"},
    {FaultKind::kTargetUnreachable, "TargetUnreachable"},
    {FaultKind::kTransferFailed, "TransferFailed"},
    {FaultKind::kCheckpointFailed, "CheckpointFailed"},
    {FaultKind::kRestoreFailed, "RestoreFailed"},
    {FaultKind::kStorageFailed, "StorageFailed"},
    {FaultKind::kEtcdUnavailable, "EtcdUnavailable"},
    {FaultKind::kSourceRestarted, "SourceRestarted"},
    {FaultKind::kSourceLost, "SourceLost"},
    {FaultKind::kSuperseded, "Superseded"},
    {FaultKind::kTimedOut, "TimedOut"},
    {FaultKind::kInternal, "Internal"},
};

constexpr std::pair<MigrationOutcome, std::string_view> kOutcomes[] = {
    {MigrationOutcome::kCommitted, "Committed"},   {MigrationOutcome::kRolledBack, "RolledBack"},
    {MigrationOutcome::kUntouched, "Untouched"},   {MigrationOutcome::kReleased, "Released"},
    {MigrationOutcome::kSourceGone, "SourceGone"}, {MigrationOutcome::kAbandoned, "Abandoned"},
};

constexpr std::pair<Decider, std::string_view> kDeciders[] = {
    {Decider::kSource, "Source"},
    {Decider::kTarget, "Target"},
    {Decider::kRecords, "Records"},
    {Decider::kController, "Controller"},
};

template <typename E, size_t N>
std::string_view NameIn(const std::pair<E, std::string_view> (&table)[N], E value) {
  for (const auto& [v, name] : table) {
    if (v == value) return name;
  }
  return "Unknown";
}

template <typename E, size_t N>
StatusOr<E> ParseIn(const std::pair<E, std::string_view> (&table)[N], std::string_view s,
                    std::string_view what) {
  std::string names;
  for (const auto& [v, name] : table) {
    if (name == s) return v;
    names += (names.empty() ? "" : ", ") + std::string(name);
  }
  return InvalidError("unknown " + std::string(what) + " \"" + std::string(s) + "\" (one of " +
                      names + ")");
}

}  // namespace

std::string_view FaultKindName(FaultKind k) { return NameIn(kFaultKinds, k); }
StatusOr<FaultKind> ParseFaultKind(std::string_view s) {
  return ParseIn(kFaultKinds, s, "fault kind");
}
std::string_view MigrationOutcomeName(MigrationOutcome o) { return NameIn(kOutcomes, o); }
StatusOr<MigrationOutcome> ParseMigrationOutcome(std::string_view s) {
  return ParseIn(kOutcomes, s, "migration outcome");
}
std::string_view DeciderName(Decider d) { return NameIn(kDeciders, d); }
StatusOr<Decider> ParseDecider(std::string_view s) { return ParseIn(kDeciders, s, "decider"); }

MigrationFault MakeFault(FaultKind kind, MigrationPhase phase, std::string node,
                         std::string_view message, int64_t at_ms) {
  if (message.size() > kMaxFaultMessageBytes) {
    size_t cut = kMaxFaultMessageBytes;
    // Never split a UTF-8 sequence: back up over continuation bytes.
    while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
    message = message.substr(0, cut);
  }
  // A node that is no name (a peer answering under an odd one) would make
  // the fault unreadable: "" instead.
  if (!node.empty() && !ValidateName(node).ok()) node.clear();
  return MigrationFault{kind, phase, std::move(node), std::string(message), at_ms < 0 ? 0 : at_ms};
}

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
