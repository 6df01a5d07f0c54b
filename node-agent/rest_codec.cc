#include "rest_codec.h"

#include "kmosix/migration.h"
#include "kmosix/spec_json.h"

namespace kmosix::agent {

using nlohmann::json;

StatusOr<api::WorkloadSpec> ParseWorkloadBody(std::string_view body) {
  return ParseWorkloadSpec(body, SpecFace::kAgent);
}

StatusOr<api::AgentMigrateRequest> ParseMigrateBody(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  for (const auto& [key, _] : j.items()) {
    if (key != "target") return InvalidError("unknown field \"" + key + "\" in migration request");
  }
  auto target = j.find("target");
  if (target == j.end() || !target->is_string()) {
    return InvalidError("field \"target\" (string) is required");
  }
  api::AgentMigrateRequest r;
  r.target = target->get<std::string>();
  return r;
}

json AgentWorkloadViewToJson(const api::AgentWorkloadView& w) {
  json j = WorkloadSpecToJson(w.spec, SpecFace::kAgent);
  j["node"] = w.node;
  j["state"] = w.state;
  j["createdMs"] = w.created_ms;
  j["startedMs"] = w.started_ms;
  j["migrations"] = w.migrations;
  if (w.managed) {
    j["managed"] = true;
    j["epoch"] = w.epoch;
  }
  j["pid"] = w.pid;
  if (w.task) j["task"] = *w.task;
  if (w.exit_status) j["exitStatus"] = *w.exit_status;
  j["restarts"] = w.restarts;
  if (w.last_restart_ms > 0 || !w.last_restart_reason.empty()) {
    j["lastRestartMs"] = w.last_restart_ms;
    j["lastRestartReason"] = w.last_restart_reason;
  }
  if (w.next_restart_ms > 0) j["nextRestartMs"] = w.next_restart_ms;
  if (!w.fence_reason.empty() || w.fenced_ms > 0) {
    j["fenceReason"] = w.fence_reason;
    j["fencedMs"] = w.fenced_ms;
  }
  return j;
}

json AgentWorkloadListToJson(const api::AgentWorkloadList& l) {
  json items = json::array();
  for (const auto& w : l.items) items.push_back(AgentWorkloadViewToJson(w));
  return {{"node", l.node}, {"items", std::move(items)}};
}

json MigrateReplyToJson(const MigrationReport& r) {
  json j = MigrationReportToJson(r);
  if (r.error.ok()) return j;
  // The report says what happened; code and message say why.
  j["code"] = CodeName(r.error.code());
  j["message"] = r.error.message();
  return j;
}

int MigrateReplyStatus(const MigrationReport& r) {
  return r.error.ok() ? 200 : HttpStatus(r.error.code());
}

json AgentMigrationViewToJson(const api::AgentMigrationView& m) {
  if (m.role == api::AgentMigrationView::Role::kSource) {
    json j = MigrationReportToJson(m.report);
    j["role"] = "source";
    return j;
  }
  const api::AgentIncomingMigration& in = m.incoming;
  return {{"id", in.id},
          {"role", "target"},
          {"workload", in.workload},
          {"sourceNode", in.source_node},
          {"targetNode", in.target_node},
          {"phase", in.phase},
          {"bytes", in.bytes},
          {"files", in.files},
          {"error", in.error}};
}

json AgentMigrationListToJson(const api::AgentMigrationList& l) {
  json items = json::array();
  for (const auto& m : l.items) items.push_back(AgentMigrationViewToJson(m));
  return {{"node", l.node}, {"items", std::move(items)}};
}

json HealthToJson(const std::string& node) { return {{"status", "ok"}, {"node", node}}; }

json DeletedToJson(const std::string& name) { return {{"deleted", name}}; }

}  // namespace kmosix::agent
