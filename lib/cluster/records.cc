#include "cluster/records.h"

#include <cmath>
#include <initializer_list>
#include <limits>

#include "kmosix/migration.h"
#include "kmosix/spec_json.h"

namespace kmosix::cluster {
namespace {

using nlohmann::json;

// Strict reader over one JSON object: every accessor checks the type (and
// range) and answers kInvalid naming the field; absent optional fields keep
// the caller's default.
class Fields {
 public:
  Fields(const json& j, std::string_view what) : j_(j), what_(what) {}

  Status Check(std::initializer_list<std::string_view> known) const {
    if (!j_.is_object()) return InvalidError(what_ + " must be a JSON object");
    for (const auto& [key, _] : j_.items()) {
      bool found = false;
      for (std::string_view k : known) found = found || k == key;
      if (!found) return InvalidError("unknown field \"" + key + "\" in " + what_);
    }
    return Status::Ok();
  }

  const json* Find(const std::string& key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  Status Missing(const std::string& key) const {
    return InvalidError("missing field \"" + key + "\" in " + what_);
  }
  Status Bad(const std::string& key, std::string_view must) const {
    return InvalidError("field \"" + key + "\" in " + what_ + " must be " + std::string(must));
  }

  Status String(const std::string& key, std::string& out, bool required = false) const {
    const json* v = Find(key);
    if (v == nullptr) return required ? Missing(key) : Status::Ok();
    if (!v->is_string()) return Bad(key, "a string");
    out = v->get<std::string>();
    return Status::Ok();
  }

  // A string that is empty (when allowed) or a valid name.
  Status Name(const std::string& key, std::string& out, bool required, bool allow_empty) const {
    KMX_RETURN_IF_ERROR(String(key, out, required));
    if (out.empty() && allow_empty) return Status::Ok();
    if (Status s = ValidateName(out); !s.ok()) {
      return InvalidError("field \"" + key + "\" in " + what_ + ": " + s.message());
    }
    return Status::Ok();
  }

  Status Bool(const std::string& key, bool& out) const {
    const json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_boolean()) return Bad(key, "a boolean");
    out = v->get<bool>();
    return Status::Ok();
  }

  Status Int(const std::string& key, int64_t& out, int64_t min = 0) const {
    const json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_number_integer()) return Bad(key, "an integer");
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Bad(key, "an integer in range");
      }
      out = static_cast<int64_t>(u);
    } else {
      out = v->get<int64_t>();
    }
    if (out < min) return Bad(key, ">= " + std::to_string(min));
    return Status::Ok();
  }

  Status Uint(const std::string& key, uint64_t& out) const {
    const json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_number_integer()) return Bad(key, "a non-negative integer");
    if (!v->is_number_unsigned()) {
      if (v->get<int64_t>() < 0) return Bad(key, "a non-negative integer");
      out = static_cast<uint64_t>(v->get<int64_t>());
      return Status::Ok();
    }
    out = v->get<uint64_t>();
    return Status::Ok();
  }

  Status Number(const std::string& key, double& out) const {
    const json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_number()) return Bad(key, "a number");
    double d = v->get<double>();
    if (!std::isfinite(d) || d < 0) return Bad(key, "a finite number >= 0");
    out = d;
    return Status::Ok();
  }

  // Absent or null -> nullopt.
  Status OptionalNumber(const std::string& key, std::optional<double>& out) const {
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) {
      out.reset();
      return Status::Ok();
    }
    double d = 0;
    KMX_RETURN_IF_ERROR(Number(key, d));
    out = d;
    return Status::Ok();
  }

 private:
  const json& j_;
  std::string what_;
};

}  // namespace

std::string KeyLayout::NameIn(const std::string& dir, const std::string& key) {
  if (key.size() <= dir.size() || key.compare(0, dir.size(), dir) != 0) return "";
  std::string rest = key.substr(dir.size());
  if (rest.find('/') != std::string::npos) return "";
  return rest;
}

// ---- NodeLoad --------------------------------------------------------------

double NodeLoad::Load() const {
  double denom = cpu_capacity * speed;
  if (!(denom > 0)) return 0;
  return cpu_used / denom;
}

json NodeLoadToJson(const NodeLoad& n) {
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
  return j;
}

StatusOr<NodeLoad> NodeLoadFromJson(const json& j) {
  Fields f(j, "node load");
  KMX_RETURN_IF_ERROR(f.Check({"node", "url", "loadSource", "cpuCapacity", "speed", "cpuUsed",
                               "runQueue", "memoryCapacityBytes", "memoryAvailableBytes",
                               "psiCpuSome10", "psiMemorySome10", "workloads", "updatedMs"}));
  NodeLoad n;
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
      if (Status s = ValidateName(name); !s.ok()) {
        return InvalidError("field \"workloads\" in node load: workload \"" + name +
                            "\": " + s.message());
      }
      std::string what = "node load workloads[\"" + name + "\"]";
      Fields u(usage, what);
      KMX_RETURN_IF_ERROR(u.Check({"cpu", "memoryBytes"}));
      WorkloadUsage wu;
      KMX_RETURN_IF_ERROR(u.Number("cpu", wu.cpu));
      KMX_RETURN_IF_ERROR(u.Uint("memoryBytes", wu.memory_bytes));
      n.workloads[name] = wu;
    }
  }
  return n;
}

// ---- NodeMember ------------------------------------------------------------

json NodeMemberToJson(const NodeMember& m) {
  return {
      {"node", m.node}, {"ready", m.ready}, {"changedMs", m.changed_ms}, {"cordoned", m.cordoned}};
}

StatusOr<NodeMember> NodeMemberFromJson(const json& j) {
  Fields f(j, "node member");
  KMX_RETURN_IF_ERROR(f.Check({"node", "ready", "changedMs", "cordoned"}));
  NodeMember m;
  KMX_RETURN_IF_ERROR(f.Name("node", m.node, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Bool("ready", m.ready));
  KMX_RETURN_IF_ERROR(f.Int("changedMs", m.changed_ms));
  KMX_RETURN_IF_ERROR(f.Bool("cordoned", m.cordoned));
  return m;
}

// ---- Workloads -------------------------------------------------------------

namespace {

constexpr std::pair<WorkloadPhase, std::string_view> kWorkloadPhases[] = {
    {WorkloadPhase::kPending, "Pending"}, {WorkloadPhase::kScheduled, "Scheduled"},
    {WorkloadPhase::kRunning, "Running"}, {WorkloadPhase::kMigrating, "Migrating"},
    {WorkloadPhase::kLost, "Lost"},       {WorkloadPhase::kFailed, "Failed"},
    {WorkloadPhase::kExited, "Exited"},
};

}  // namespace

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

json WorkloadSpecToJson(const WorkloadSpec& s) {
  json env = json::object();
  for (const auto& [k, v] : s.env) env[k] = v;
  return {{"name", s.name},
          {"image", s.image},
          {"args", s.args},
          {"env", std::move(env)},
          {"memoryMiB", s.memory_mib},
          {"cpus", s.cpus},
          {"migratable", s.migratable},
          {"node", s.node},
          {"pinned", s.pinned}};
}

StatusOr<WorkloadSpec> WorkloadSpecFromJson(const json& j) {
  Fields f(j, "workload spec");
  KMX_RETURN_IF_ERROR(f.Check(
      {"name", "image", "args", "env", "memoryMiB", "cpus", "migratable", "node", "pinned"}));
  WorkloadSpec s;
  KMX_RETURN_IF_ERROR(f.Name("name", s.name, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.String("image", s.image, /*required=*/true));
  if (s.image.empty() || s.image.size() > 512) return f.Bad("image", "1 to 512 characters");
  if (const json* a = f.Find("args"); a != nullptr) {
    if (!a->is_array() || a->size() > 4096) return f.Bad("args", "an array of strings");
    for (const auto& arg : *a) {
      if (!arg.is_string()) return f.Bad("args", "an array of strings");
      s.args.push_back(arg.get<std::string>());
    }
  }
  if (const json* e = f.Find("env"); e != nullptr) {
    if (!e->is_object()) return f.Bad("env", "an object of strings");
    for (const auto& [k, v] : e->items()) {
      if (!v.is_string()) return InvalidError("env \"" + k + "\" must be a string");
      if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
        return InvalidError("env name \"" + k + "\" is not valid");
      }
      s.env[k] = v.get<std::string>();
    }
  }
  KMX_RETURN_IF_ERROR(f.Int("memoryMiB", s.memory_mib));
  if (s.memory_mib > (int64_t{1} << 30)) return f.Bad("memoryMiB", "at most 2^30");
  KMX_RETURN_IF_ERROR(f.Number("cpus", s.cpus));
  if (s.cpus > 4096) return f.Bad("cpus", "at most 4096");
  KMX_RETURN_IF_ERROR(f.Bool("migratable", s.migratable));
  KMX_RETURN_IF_ERROR(f.Name("node", s.node, /*required=*/false, /*allow_empty=*/true));
  KMX_RETURN_IF_ERROR(f.Bool("pinned", s.pinned));
  return s;
}

StatusOr<WorkloadSpec> ParseWorkloadSpec(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  return WorkloadSpecFromJson(j);
}

namespace {

json WorkloadStatusToJson(const WorkloadStatus& s) {
  return {{"phase", WorkloadPhaseName(s.phase)},
          {"node", s.node},
          {"epoch", s.epoch},
          {"migration", s.migration},
          {"pid", s.pid},
          {"createdMs", s.created_ms},
          {"startedMs", s.started_ms},
          {"migrations", s.migrations},
          {"message", s.message}};
}

StatusOr<WorkloadStatus> WorkloadStatusFromJson(const json& j) {
  Fields f(j, "workload status");
  KMX_RETURN_IF_ERROR(f.Check({"phase", "node", "epoch", "migration", "pid", "createdMs",
                               "startedMs", "migrations", "message"}));
  WorkloadStatus s;
  std::string phase = "Pending";
  KMX_RETURN_IF_ERROR(f.String("phase", phase));
  auto p = ParseWorkloadPhase(phase);
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
  return s;
}

}  // namespace

json WorkloadRecordToJson(const WorkloadRecord& w) {
  return {{"spec", WorkloadSpecToJson(w.spec)}, {"status", WorkloadStatusToJson(w.status)}};
}

StatusOr<WorkloadRecord> WorkloadRecordFromJson(const json& j) {
  Fields f(j, "workload record");
  KMX_RETURN_IF_ERROR(f.Check({"spec", "status"}));
  WorkloadRecord w;
  const json* spec = f.Find("spec");
  if (spec == nullptr) return f.Missing("spec");
  KMX_ASSIGN_OR_RETURN(w.spec, WorkloadSpecFromJson(*spec));
  if (const json* status = f.Find("status"); status != nullptr) {
    KMX_ASSIGN_OR_RETURN(w.status, WorkloadStatusFromJson(*status));
  }
  return w;
}

// ---- Migrations ------------------------------------------------------------

json MigrationRecordToJson(const MigrationRecord& m) {
  return {{"id", m.id},
          {"workload", m.workload},
          {"source", m.source},
          {"target", m.target},
          {"phase", m.phase},
          {"reason", m.reason},
          {"requestedBy", m.requested_by},
          {"epoch", m.epoch},
          {"createdMs", m.created_ms},
          {"updatedMs", m.updated_ms},
          {"finishedMs", m.finished_ms},
          {"report", m.report},
          {"error", m.error},
          {"cancelRequestedMs", m.cancel_requested_ms},
          {"cancelledBy", m.cancelled_by}};
}

StatusOr<MigrationRecord> MigrationRecordFromJson(const json& j) {
  Fields f(j, "migration record");
  KMX_RETURN_IF_ERROR(f.Check({"id", "workload", "source", "target", "phase", "reason",
                               "requestedBy", "epoch", "createdMs", "updatedMs", "finishedMs",
                               "report", "error", "cancelRequestedMs", "cancelledBy"}));
  MigrationRecord m;
  KMX_RETURN_IF_ERROR(f.Name("id", m.id, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Name("workload", m.workload, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Name("source", m.source, /*required=*/false, /*allow_empty=*/true));
  KMX_RETURN_IF_ERROR(f.Name("target", m.target, /*required=*/false, /*allow_empty=*/true));
  KMX_RETURN_IF_ERROR(f.String("phase", m.phase));
  if (auto p = ParseMigrationPhase(m.phase); !p.ok()) {
    return p.status().Annotate("field \"phase\" in migration record");
  }
  KMX_RETURN_IF_ERROR(f.String("reason", m.reason));
  KMX_RETURN_IF_ERROR(f.String("requestedBy", m.requested_by));
  KMX_RETURN_IF_ERROR(f.Int("epoch", m.epoch));
  KMX_RETURN_IF_ERROR(f.Int("createdMs", m.created_ms));
  KMX_RETURN_IF_ERROR(f.Int("updatedMs", m.updated_ms));
  KMX_RETURN_IF_ERROR(f.Int("finishedMs", m.finished_ms));
  if (const json* r = f.Find("report"); r != nullptr) {
    if (!r->is_null() && !r->is_object()) return f.Bad("report", "null or an object");
    m.report = *r;
  }
  KMX_RETURN_IF_ERROR(f.String("error", m.error));
  KMX_RETURN_IF_ERROR(f.Int("cancelRequestedMs", m.cancel_requested_ms));
  KMX_RETURN_IF_ERROR(f.String("cancelledBy", m.cancelled_by));
  return m;
}

bool IsFinalMigrationPhase(std::string_view phase) {
  auto p = ParseMigrationPhase(phase);
  return p.ok() && IsFinal(*p);
}

}  // namespace kmosix::cluster
