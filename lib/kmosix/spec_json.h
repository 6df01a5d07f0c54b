// JSON forms of the values that cross the REST API and the agent-to-agent
// protocol, among them the one JSON codec of api::WorkloadSpec, in the field
// sets of its three faces (SpecFace). Parsers are strict: unknown fields,
// wrong types and bad values are kInvalid with a message naming the field;
// values are checked by the one validator (api/validate.h); they never throw.
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "api/types.h"
#include "api/validate.h"
#include "kmosix/runtime.h"
#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix {

// Which fields a JSON form of api::WorkloadSpec carries.
enum class SpecFace {
  // The agent's body and the migration offer's spec:
  // {"name","image","args":[],"env":{},"memoryMiB"?,"cpus"?} (0 omitted).
  kAgent,
  // The controller's POST /v1/workloads body and its replies: kAgent's plus
  // "migratable"?,"node"?,"pinned"?,"restartPolicy"? ("Never", "FromImage",
  // "FromCheckpoint"; all written), "checkpointIntervalSeconds"? (written
  // when not 0). No "origin".
  kRest,
  // The etcd record (cluster/records.h): kRest's plus "origin"? =
  // {"kind","namespace","name","uid"} (written only when set);
  // "restartPolicy" is written only when not "Never".
  kRecord,
};
StatusOr<api::WorkloadSpec> WorkloadSpecFromJson(const nlohmann::json& j, SpecFace face);
StatusOr<api::WorkloadSpec> ParseWorkloadSpec(std::string_view body, SpecFace face);
nlohmann::json WorkloadSpecToJson(const api::WorkloadSpec& spec, SpecFace face);

// The agent's face (SpecFace::kAgent) over the runtime's ContainerSpec.
StatusOr<ContainerSpec> ParseContainerSpec(std::string_view body);
StatusOr<ContainerSpec> ContainerSpecFromJson(const nlohmann::json& j);
nlohmann::json ContainerSpecToJson(const ContainerSpec& spec);  // without log_path, labels

// DNS-label-like [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])? (api/validate.h).
using api::ValidateName;

// {"id","sourceNode","sourceUrl","spec":{...},"createdMs"?,"history"?,
//  "memoryBytes"? (0 to kMaxOfferMemoryBytes), "stream"? (below)}
inline constexpr uint64_t kMaxOfferMemoryBytes = uint64_t{1} << 50;
// Each of "stream": {"files"?, "bytes"?, "entries"?} (MigrationOffer::stream;
// the object only when one is declared) is 0 to kMaxOfferStreamValue.
inline constexpr uint64_t kMaxOfferStreamValue = uint64_t{1} << 56;
StatusOr<MigrationOffer> ParseMigrationOffer(std::string_view body);
nlohmann::json MigrationOfferToJson(const MigrationOffer& offer);

// Parses a body as a JSON object; kInvalid if it is not one, or if any object
// in it repeats a key.
StatusOr<nlohmann::json> ParseJsonObject(std::string_view body);

// {"code","message"}
nlohmann::json ErrorJson(const Status& status);

}  // namespace kmosix
