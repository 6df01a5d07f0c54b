// The REST face of the typed API (api/types.h): parsers of the controller's
// request bodies and the JSON of its replies, as controller/openapi.json
// documents them. Only controller/api.cc (the HTTP layer) uses it.
//
// Parsers are strict: malformed JSON, unknown fields (a workload body may not
// carry "origin"; a migration body has no "id" or "requestedBy") and wrong
// types are kInvalid with a message naming the field; values are checked by
// api/validate.h. Never throw. Fuzzed in tests/controller/requests_fuzz.cc
// and tests/lib/cluster/records_fuzz.cc.
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "api/types.h"
#include "kmosix/status.h"

namespace kmosix::controller {

// ---- request bodies ----
// POST /v1/workloads: {"name","image","args"?,"env"?,"memoryMiB"?,"cpus"?,
// "migratable"?,"node"?,"pinned"?}
StatusOr<api::WorkloadSpec> ParseWorkloadSpecBody(std::string_view body);
// POST /v1/migrations: {"workload": NAME, "target"?: NODE}; requested_by "api".
StatusOr<api::MigrationRequest> ParseMigrationRequest(std::string_view body);
// POST /v1/nodes/{name}/drain: {} or {"includePinned"?: bool}; an empty body
// is the same as {}.
StatusOr<api::DrainRequest> ParseDrainRequest(std::string_view body);

// ---- replies ----
// The record ({"spec","status"}, spec without "origin") plus "name",
// "ageSeconds" and "usage"? {"cpu","memoryBytes"}.
nlohmann::json WorkloadViewToJson(const api::WorkloadView& w);
nlohmann::json WorkloadListToJson(const std::vector<api::WorkloadView>& items);  // {"items"}
nlohmann::json NodeViewToJson(const api::NodeView& n);
nlohmann::json NodeListToJson(const std::vector<api::NodeView>& items);  // {"items"}
nlohmann::json MigrationToJson(const api::Migration& m);  // as stored (cluster/records.h)
nlohmann::json MigrationListToJson(const std::vector<api::Migration>& items);  // {"items"}
nlohmann::json DrainReportToJson(const api::DrainReport& r);
nlohmann::json DecisionsToJson(const api::DecisionsView& d);
nlohmann::json LeaderInfoToJson(const api::LeaderInfo& l);

}  // namespace kmosix::controller
