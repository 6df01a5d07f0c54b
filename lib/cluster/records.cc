#include "cluster/records.h"

#include <cmath>
#include <initializer_list>
#include <limits>

#include "api/validate.h"
#include "kmosix/json_fields.h"
#include "kmosix/migration.h"
#include "kmosix/spec_json.h"

namespace kmosix::cluster {

using nlohmann::json;
using Fields = JsonFields;

std::string KeyLayout::NameIn(const std::string& dir, const std::string& key) {
  if (key.size() <= dir.size() || key.compare(0, dir.size(), dir) != 0) return "";
  std::string rest = key.substr(dir.size());
  if (rest.find('/') != std::string::npos) return "";
  return rest;
}

// ---- NodeLoad --------------------------------------------------------------

json NodeLoadToJson(const api::NodeLoad& n) {
  json workloads = json::object();
  for (const auto& [name, u] : n.workloads) {
    workloads[name] = {{"cpu", u.cpu}, {"memoryBytes", u.memory_bytes}};
  }
  json j = {{"node", n.node},
            {"url", n.url},
            {"loadSource", n.load_source},
            {"cpuCapacity", n.cpu_capacity},
            {"speed", n.speed},
            {"cpuUsed", n.cpu_used},
            {"runQueue", n.run_queue},
            {"memoryCapacityBytes", n.memory_capacity_bytes},
            {"memoryAvailableBytes", n.memory_available_bytes},
            {"workloads", std::move(workloads)},
            {"updatedMs", n.updated_ms}};
  if (n.psi_cpu_some10) j["psiCpuSome10"] = *n.psi_cpu_some10;
  if (n.psi_memory_some10) j["psiMemorySome10"] = *n.psi_memory_some10;
  if (n.images) j["images"] = *n.images;
  if (n.not_ready_reason) j["notReadyReason"] = *n.not_ready_reason;
  return j;
}

StatusOr<api::NodeLoad> NodeLoadFromJson(const json& j) {
  Fields f(j, "node load");
  KMX_RETURN_IF_ERROR(
      f.Check({"node", "url", "loadSource", "cpuCapacity", "speed", "cpuUsed", "runQueue",
               "memoryCapacityBytes", "memoryAvailableBytes", "psiCpuSome10", "psiMemorySome10",
               "workloads", "updatedMs", "images", "notReadyReason"}));
  api::NodeLoad n;
  KMX_RETURN_IF_ERROR(f.Name("node", n.node, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.String("url", n.url));
  KMX_RETURN_IF_ERROR(f.String("loadSource", n.load_source));
  KMX_RETURN_IF_ERROR(f.Number("cpuCapacity", n.cpu_capacity));
  KMX_RETURN_IF_ERROR(f.Number("speed", n.speed));
  KMX_RETURN_IF_ERROR(f.Number("cpuUsed", n.cpu_used));
  KMX_RETURN_IF_ERROR(f.Number("runQueue", n.run_queue));
  KMX_RETURN_IF_ERROR(f.Uint("memoryCapacityBytes", n.memory_capacity_bytes));
  KMX_RETURN_IF_ERROR(f.Uint("memoryAvailableBytes", n.memory_available_bytes));
  KMX_RETURN_IF_ERROR(f.OptionalNumber("psiCpuSome10", n.psi_cpu_some10));
  KMX_RETURN_IF_ERROR(f.OptionalNumber("psiMemorySome10", n.psi_memory_some10));
  KMX_RETURN_IF_ERROR(f.Int("updatedMs", n.updated_ms));
  if (const json* w = f.Find("workloads"); w != nullptr) {
    if (!w->is_object()) return f.Bad("workloads", "an object");
    for (const auto& [name, usage] : w->items()) {
      if (Status s = api::ValidateName(name); !s.ok()) {
        return InvalidError("field \"workloads\" in node load: workload \"" + name +
                            "\": " + s.message());
      }
      std::string what = "node load workloads[\"" + name + "\"]";
      Fields u(usage, what);
      KMX_RETURN_IF_ERROR(u.Check({"cpu", "memoryBytes"}));
      api::WorkloadUsage wu;
      KMX_RETURN_IF_ERROR(u.Number("cpu", wu.cpu));
      KMX_RETURN_IF_ERROR(u.Uint("memoryBytes", wu.memory_bytes));
      n.workloads[name] = wu;
    }
  }
  if (const json* images = f.Find("images"); images != nullptr) {
    if (!images->is_array() || images->size() > api::kMaxNodeImages)
      return f.Bad("images",
                   "an array of at most " + std::to_string(api::kMaxNodeImages) + " image names");
    n.images.emplace();
    for (const json& image : *images) {
      if (!image.is_string() || image.get_ref<const std::string&>().empty() ||
          image.get_ref<const std::string&>().size() > api::kMaxImageBytes)
        return f.Bad("images",
                     "image names of 1.." + std::to_string(api::kMaxImageBytes) + " bytes");
      n.images->push_back(image.get<std::string>());
    }
  }
  if (const json* reason = f.Find("notReadyReason"); reason != nullptr) {
    if (!reason->is_string() || reason->get_ref<const std::string&>().empty() ||
        reason->get_ref<const std::string&>().size() > api::kMaxNotReadyReasonBytes)
      return f.Bad("notReadyReason",
                   "a string of 1.." + std::to_string(api::kMaxNotReadyReasonBytes) + " bytes");
    n.not_ready_reason = reason->get<std::string>();
  }
  return n;
}

// ---- NodeMember ------------------------------------------------------------

json NodeMemberToJson(const api::NodeMember& m) {
  json j = {
      {"node", m.node}, {"ready", m.ready}, {"changedMs", m.changed_ms}, {"cordoned", m.cordoned}};
  if (m.lost_ms != 0) j["lostMs"] = m.lost_ms;  // only once known
  return j;
}

StatusOr<api::NodeMember> NodeMemberFromJson(const json& j) {
  Fields f(j, "node member");
  KMX_RETURN_IF_ERROR(f.Check({"node", "ready", "changedMs", "cordoned", "lostMs"}));
  api::NodeMember m;
  KMX_RETURN_IF_ERROR(f.Name("node", m.node, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Bool("ready", m.ready));
  KMX_RETURN_IF_ERROR(f.Int("changedMs", m.changed_ms));
  KMX_RETURN_IF_ERROR(f.Bool("cordoned", m.cordoned));
  KMX_RETURN_IF_ERROR(f.Int("lostMs", m.lost_ms));
  return m;
}

// ---- Workloads -------------------------------------------------------------

json WorkloadStatusToJson(const api::WorkloadStatus& s) {
  json j = {{"phase", api::WorkloadPhaseName(s.phase)},
            {"node", s.node},
            {"epoch", s.epoch},
            {"migration", s.migration},
            {"pid", s.pid},
            {"createdMs", s.created_ms},
            {"startedMs", s.started_ms},
            {"migrations", s.migrations},
            {"message", s.message}};
  if (s.restarts > 0) j["restarts"] = s.restarts;  // absent: 0
  if (!s.restore_checkpoint.empty()) j["restoreCheckpoint"] = s.restore_checkpoint;
  if (s.recovery) j["recovery"] = RecoveryToJson(*s.recovery);
  return j;
}

json RecoveryToJson(const api::Recovery& r) {
  return {{"policy", api::RestartPolicyName(r.policy)},
          {"lostNode", r.lost_node},
          {"lostMs", r.lost_ms},
          {"restartedMs", r.restarted_ms},
          {"checkpoint", r.checkpoint},
          {"checkpointTakenMs", r.checkpoint_taken_ms},
          {"progressLostMs", r.progress_lost_ms},
          {"count", r.count}};
}

StatusOr<api::Recovery> RecoveryFromJson(const json& j) {
  Fields f(j, "workload recovery");
  KMX_RETURN_IF_ERROR(f.Check({"policy", "lostNode", "lostMs", "restartedMs", "checkpoint",
                               "checkpointTakenMs", "progressLostMs", "count"}));
  api::Recovery r;
  std::string policy;
  KMX_RETURN_IF_ERROR(f.String("policy", policy, /*required=*/true));
  auto p = api::ParseRestartPolicy(policy);
  if (!p.ok()) return p.status().Annotate("field \"policy\" in workload recovery");
  r.policy = *p;
  KMX_RETURN_IF_ERROR(f.String("lostNode", r.lost_node, /*required=*/true));
  KMX_RETURN_IF_ERROR(f.Int("lostMs", r.lost_ms));
  KMX_RETURN_IF_ERROR(f.Int("restartedMs", r.restarted_ms));
  KMX_RETURN_IF_ERROR(f.String("checkpoint", r.checkpoint));
  KMX_RETURN_IF_ERROR(f.Int("checkpointTakenMs", r.checkpoint_taken_ms));
  KMX_RETURN_IF_ERROR(f.Int("progressLostMs", r.progress_lost_ms));
  KMX_RETURN_IF_ERROR(f.Int("count", r.count));
  KMX_RETURN_IF_ERROR(api::ValidateRecovery(r));
  return r;
}

namespace {

StatusOr<api::WorkloadStatus> WorkloadStatusFromJson(const json& j) {
  Fields f(j, "workload status");
  KMX_RETURN_IF_ERROR(
      f.Check({"phase", "node", "epoch", "migration", "pid", "createdMs", "startedMs", "migrations",
               "message", "restarts", "restoreCheckpoint", "recovery"}));
  api::WorkloadStatus s;
  std::string phase = "Pending";
  KMX_RETURN_IF_ERROR(f.String("phase", phase));
  auto p = api::ParseWorkloadPhase(phase);
  if (!p.ok()) return p.status().Annotate("field \"phase\" in workload status");
  s.phase = *p;
  KMX_RETURN_IF_ERROR(f.Name("node", s.node, /*required=*/false, /*allow_empty=*/true));
  KMX_RETURN_IF_ERROR(f.Int("epoch", s.epoch));
  KMX_RETURN_IF_ERROR(f.Name("migration", s.migration, /*required=*/false, /*allow_empty=*/true));
  uint64_t pid = 0;
  KMX_RETURN_IF_ERROR(f.Uint("pid", pid));
  if (pid > std::numeric_limits<uint32_t>::max()) return f.Bad("pid", "a 32-bit process id");
  s.pid = static_cast<uint32_t>(pid);
  KMX_RETURN_IF_ERROR(f.Int("createdMs", s.created_ms));
  KMX_RETURN_IF_ERROR(f.Int("startedMs", s.started_ms));
  if (const json* m = f.Find("migrations"); m != nullptr) {
    if (!m->is_array()) return f.Bad("migrations", "an array of migration ids");
    for (const auto& id : *m) {
      if (!id.is_string()) return f.Bad("migrations", "an array of migration ids");
      s.migrations.push_back(id.get<std::string>());
    }
  }
  KMX_RETURN_IF_ERROR(f.String("message", s.message));
  KMX_RETURN_IF_ERROR(f.Int("restarts", s.restarts));
  KMX_RETURN_IF_ERROR(f.Name("restoreCheckpoint", s.restore_checkpoint, /*required=*/false,
                             /*allow_empty=*/true));
  if (const json* r = f.Find("recovery"); r != nullptr && !r->is_null()) {
    KMX_ASSIGN_OR_RETURN(s.recovery, RecoveryFromJson(*r));
  }
  return s;
}

}  // namespace

json WorkloadToJson(const api::Workload& w) {
  return {{"spec", WorkloadSpecToJson(w.spec, SpecFace::kRecord)},
          {"status", WorkloadStatusToJson(w.status)}};
}

StatusOr<api::Workload> WorkloadFromJson(const json& j) {
  Fields f(j, "workload record");
  KMX_RETURN_IF_ERROR(f.Check({"spec", "status"}));
  api::Workload w;
  const json* spec = f.Find("spec");
  if (spec == nullptr) return f.Missing("spec");
  KMX_ASSIGN_OR_RETURN(w.spec, WorkloadSpecFromJson(*spec, SpecFace::kRecord));
  if (const json* status = f.Find("status"); status != nullptr) {
    KMX_ASSIGN_OR_RETURN(w.status, WorkloadStatusFromJson(*status));
  }
  return w;
}

// ---- Migrations ------------------------------------------------------------

json MigrationToJson(const api::Migration& m) {
  json j = {{"id", m.id},
            {"workload", m.workload},
            {"source", m.source},
            {"target", m.target},
            {"phase", api::MigrationPhaseName(m.phase)},
            {"reason", m.reason},
            {"requestedBy", m.requested_by},
            {"epoch", m.epoch},
            {"createdMs", m.created_ms},
            {"updatedMs", m.updated_ms},
            {"finishedMs", m.finished_ms},
            {"report", m.report ? MigrationReportToJson(*m.report) : json()},
            {"error", m.error},
            {"cancelRequestedMs", m.cancel_requested_ms},
            {"cancelledBy", m.cancelled_by}};
  // Absent when unset (and in records written before they existed).
  if (m.fault) j["fault"] = MigrationFaultToJson(*m.fault);
  if (m.resolution) j["resolution"] = MigrationResolutionToJson(*m.resolution);
  return j;
}

StatusOr<api::Migration> MigrationFromJson(const json& j) {
  Fields f(j, "migration record");
  KMX_RETURN_IF_ERROR(
      f.Check({"id", "workload", "source", "target", "phase", "reason", "requestedBy", "epoch",
               "createdMs", "updatedMs", "finishedMs", "report", "error", "cancelRequestedMs",
               "cancelledBy", "fault", "resolution"}));
  api::Migration m;
  KMX_RETURN_IF_ERROR(f.Name("id", m.id, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Name("workload", m.workload, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Name("source", m.source, /*required=*/false, /*allow_empty=*/true));
  KMX_RETURN_IF_ERROR(f.Name("target", m.target, /*required=*/false, /*allow_empty=*/true));
  std::string phase = "Pending";
  KMX_RETURN_IF_ERROR(f.String("phase", phase));
  auto p = api::ParseMigrationPhase(phase);
  if (!p.ok()) return p.status().Annotate("field \"phase\" in migration record");
  m.phase = *p;
  KMX_RETURN_IF_ERROR(f.String("reason", m.reason));
  KMX_RETURN_IF_ERROR(f.String("requestedBy", m.requested_by));
  KMX_RETURN_IF_ERROR(f.Int("epoch", m.epoch));
  KMX_RETURN_IF_ERROR(f.Int("createdMs", m.created_ms));
  KMX_RETURN_IF_ERROR(f.Int("updatedMs", m.updated_ms));
  KMX_RETURN_IF_ERROR(f.Int("finishedMs", m.finished_ms));
  if (const json* r = f.Find("report"); r != nullptr && !r->is_null()) {
    if (!r->is_object()) return f.Bad("report", "null or an object");
    auto report = MigrationReportFromJson(*r);
    if (!report.ok()) return report.status().Annotate("field \"report\" in migration record");
    m.report = std::move(*report);
  }
  KMX_RETURN_IF_ERROR(f.String("error", m.error));
  KMX_RETURN_IF_ERROR(f.Int("cancelRequestedMs", m.cancel_requested_ms));
  KMX_RETURN_IF_ERROR(f.String("cancelledBy", m.cancelled_by));
  if (const json* fault = f.Find("fault"); fault != nullptr && !fault->is_null()) {
    auto parsed = MigrationFaultFromJson(*fault);
    if (!parsed.ok()) return parsed.status().Annotate("field \"fault\" in migration record");
    m.fault = std::move(*parsed);
  }
  if (const json* res = f.Find("resolution"); res != nullptr && !res->is_null()) {
    auto parsed = MigrationResolutionFromJson(*res);
    if (!parsed.ok()) return parsed.status().Annotate("field \"resolution\" in migration record");
    m.resolution = *parsed;
  }
  return m;
}

// ---- Checkpoints -----------------------------------------------------------

json CheckpointToJson(const api::CheckpointRecord& c) {
  return {{"workload", c.workload}, {"id", c.id},         {"epoch", c.epoch},
          {"source", c.source},     {"keeper", c.keeper}, {"takenMs", c.taken_ms},
          {"bytes", c.bytes}};
}

StatusOr<api::CheckpointRecord> CheckpointFromJson(const json& j) {
  Fields f(j, "checkpoint record");
  KMX_RETURN_IF_ERROR(f.Check({"workload", "id", "epoch", "source", "keeper", "takenMs", "bytes"}));
  api::CheckpointRecord c;
  KMX_RETURN_IF_ERROR(f.String("workload", c.workload, /*required=*/true));
  KMX_RETURN_IF_ERROR(f.String("id", c.id, /*required=*/true));
  KMX_RETURN_IF_ERROR(f.Int("epoch", c.epoch));
  KMX_RETURN_IF_ERROR(f.String("source", c.source, /*required=*/true));
  KMX_RETURN_IF_ERROR(f.String("keeper", c.keeper, /*required=*/true));
  KMX_RETURN_IF_ERROR(f.Int("takenMs", c.taken_ms));
  KMX_RETURN_IF_ERROR(f.Uint("bytes", c.bytes));
  KMX_RETURN_IF_ERROR(api::ValidateCheckpointRecord(c));
  return c;
}

}  // namespace kmosix::cluster
