// JSON forms of the values that cross the REST API and the agent-to-agent
// protocol. Parsers are strict: unknown fields, wrong types and bad values are
// kInvalid with a message naming the field; they never throw.
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "kmosix/runtime.h"
#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix {

// {"name","image","args":[],"env":{},"memoryMiB"?,"cpus"?}
// name: DNS-label-like [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
StatusOr<ContainerSpec> ParseContainerSpec(std::string_view body);
StatusOr<ContainerSpec> ContainerSpecFromJson(const nlohmann::json& j);
nlohmann::json ContainerSpecToJson(const ContainerSpec& spec);  // without log_path
Status ValidateName(std::string_view name);

// {"id","sourceNode","sourceUrl","spec":{...},"createdMs"?,"history"?,
//  "memoryBytes"? (0 to kMaxOfferMemoryBytes)}
inline constexpr uint64_t kMaxOfferMemoryBytes = uint64_t{1} << 50;
StatusOr<MigrationOffer> ParseMigrationOffer(std::string_view body);
nlohmann::json MigrationOfferToJson(const MigrationOffer& offer);

// Parses a body as a JSON object; kInvalid if it is not one, or if any object
// in it repeats a key.
StatusOr<nlohmann::json> ParseJsonObject(std::string_view body);

// {"code","message"}
nlohmann::json ErrorJson(const Status& status);

}  // namespace kmosix
