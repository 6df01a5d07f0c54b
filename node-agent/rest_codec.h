// The REST face of a node agent's API (api/types.h, agent.h): parsers of its
// request bodies and the JSON of its replies, as the README's "The agent's
// REST API" shows them. Only http_api.cc (the HTTP layer) and tests use it;
// the agent's records on disk and the agent-to-agent protocol have their own
// codecs (agent.cc, kmosix/spec_json.h, kmosix/migration.h).
//
// Parsers are strict: malformed JSON, repeated keys, unknown fields and wrong
// types are kInvalid with a message naming the field. A workload body's
// values are checked by api/validate.h here; a migrate body's target URL is
// checked by Agent::Migrate. Never throw.
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "api/types.h"
#include "kmosix/status.h"

namespace kmosix::agent {

// ---- request bodies ----
// POST /v1/workloads: the agent face of a spec, {"name","image","args"?,
// "env"?,"memoryMiB"?,"cpus"?} (kmosix/spec_json.h, SpecFace::kAgent).
StatusOr<api::WorkloadSpec> ParseWorkloadBody(std::string_view body);
// POST /v1/workloads/{name}/migrate: {"target": URL}.
StatusOr<api::AgentMigrateRequest> ParseMigrateBody(std::string_view body);

// ---- replies ----
// The spec's agent face plus "node","state","createdMs","startedMs",
// "migrations","pid","task"? and, for managed workloads, "managed","epoch".
nlohmann::json AgentWorkloadViewToJson(const api::AgentWorkloadView& w);
nlohmann::json AgentWorkloadListToJson(const api::AgentWorkloadList& l);  // {"node","items"}
// The answer to a migrate: the report (kmosix/migration.h's JSON form), plus
// "code" and "message" of its error unless it succeeded; MigrateReplyStatus
// is its HTTP status (200, or the error's).
nlohmann::json MigrateReplyToJson(const api::MigrationReport& r);
int MigrateReplyStatus(const api::MigrationReport& r);
// Role "source": the report plus "role"; role "target": {"id","role",
// "workload","sourceNode","targetNode","phase","bytes","files","error"}.
nlohmann::json AgentMigrationViewToJson(const api::AgentMigrationView& m);
nlohmann::json AgentMigrationListToJson(const api::AgentMigrationList& l);  // {"node","items"}
// GET /healthz: {"status":"ok","node"}.
nlohmann::json HealthToJson(const std::string& node);
// DELETE /v1/workloads/{name}: {"deleted": name}.
nlohmann::json DeletedToJson(const std::string& name);

}  // namespace kmosix::agent
