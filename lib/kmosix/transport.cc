#include "kmosix/transport.h"

#include <array>
#include <utility>

namespace kmosix {
namespace {

constexpr std::array<std::pair<TargetPhase, std::string_view>, 8> kTargetPhaseNames = {{
    {TargetPhase::kUnknown, "Unknown"},
    {TargetPhase::kPrepared, "Prepared"},
    {TargetPhase::kReceiving, "Receiving"},
    {TargetPhase::kReceived, "Received"},
    {TargetPhase::kRestoring, "Restoring"},
    {TargetPhase::kRestored, "Restored"},
    {TargetPhase::kCommitted, "Committed"},
    {TargetPhase::kAborted, "Aborted"},
}};

}  // namespace

std::string_view TargetPhaseName(TargetPhase p) {
  for (const auto& [phase, name] : kTargetPhaseNames) {
    if (phase == p && !name.empty()) return name;
  }
  return "Unknown";
}

TargetPhase ParseTargetPhase(std::string_view s) {
  for (const auto& [phase, name] : kTargetPhaseNames) {
    if (!name.empty() && name == s) return phase;
  }
  return TargetPhase::kUnknown;
}

}  // namespace kmosix
