#include "controller/rest_codec.h"

#include "api/validate.h"
#include "cluster/records.h"
#include "kmosix/spec_json.h"

namespace kmosix::controller {

using nlohmann::json;

StatusOr<api::WorkloadSpec> ParseWorkloadSpecBody(std::string_view body) {
  return ParseWorkloadSpec(body, SpecFace::kRest);
}

StatusOr<api::MigrationRequest> ParseMigrationRequest(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "workload" && it.key() != "target")
      return InvalidError("unknown field \"" + it.key() + "\"");
    if (!it.value().is_string()) return InvalidError(it.key() + ": must be a string");
  }
  if (!j.contains("workload")) return InvalidError("workload: required");
  api::MigrationRequest r;
  r.workload = j["workload"].get<std::string>();
  if (j.contains("target")) {
    // Present means a node: "" is not "the policy picks" (leave it out for that).
    r.target = j["target"].get<std::string>();
    if (auto s = api::ValidateName(r.target); !s.ok()) return s.Annotate("target");
  }
  KMX_RETURN_IF_ERROR(api::ValidateMigrationRequest(r));
  return r;
}

StatusOr<api::DrainRequest> ParseDrainRequest(std::string_view body) {
  api::DrainRequest r;
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return r;
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "includePinned") return InvalidError("unknown field \"" + it.key() + "\"");
    if (!it.value().is_boolean()) return InvalidError("includePinned: must be true or false");
    r.include_pinned = it.value().get<bool>();
  }
  return r;
}

namespace {

json UsageJson(const api::WorkloadUsage& u) {
  return {{"cpu", u.cpu}, {"memoryBytes", u.memory_bytes}};
}

template <typename T, typename F>
json Items(const std::vector<T>& items, F to_json) {
  json a = json::array();
  for (const T& item : items) a.push_back(to_json(item));
  return {{"items", std::move(a)}};
}

}  // namespace

json WorkloadViewToJson(const api::WorkloadView& v) {
  const api::Workload& w = v.workload;
  json j = {{"spec", WorkloadSpecToJson(w.spec, SpecFace::kRest)},
            {"status", cluster::WorkloadStatusToJson(w.status)}};
  j["name"] = w.spec.name;
  j["ageSeconds"] = v.age_seconds;
  if (v.usage) j["usage"] = UsageJson(*v.usage);
  return j;
}

json WorkloadListToJson(const std::vector<api::WorkloadView>& items) {
  return Items(items, WorkloadViewToJson);
}

json NodeViewToJson(const api::NodeView& n) {
  json j = {{"name", n.name}};
  j["ready"] = n.ready;
  j["cordoned"] = n.cordoned;
  if (n.not_ready_seconds) j["notReadySeconds"] = *n.not_ready_seconds;
  if (n.not_ready_reason) j["notReadyReason"] = *n.not_ready_reason;
  if (n.load) {
    const api::NodeLoad& l = *n.load;
    j["url"] = l.url;
    j["load"] = l.Load();
    j["capacity"] = {{"cpus", l.cpu_capacity}, {"memoryBytes", l.memory_capacity_bytes}};
    j["speed"] = l.speed;
    j["cpuUsed"] = l.cpu_used;
    j["runQueue"] = l.run_queue;
    j["memoryAvailableBytes"] = l.memory_available_bytes;
    j["psi"] = {{"cpuSome10", l.psi_cpu_some10 ? json(*l.psi_cpu_some10) : json()},
                {"memorySome10", l.psi_memory_some10 ? json(*l.psi_memory_some10) : json()}};
    j["loadSource"] = l.load_source;
    j["heartbeatAgeSeconds"] = n.heartbeat_age_seconds;
    json usage = json::object();
    for (const auto& [name, u] : l.workloads) usage[name] = UsageJson(u);
    j["usage"] = std::move(usage);
  }
  j["workloads"] = n.workloads;
  return j;
}

json NodeListToJson(const std::vector<api::NodeView>& items) {
  return Items(items, NodeViewToJson);
}

json MigrationToJson(const api::Migration& m) { return cluster::MigrationToJson(m); }

json MigrationListToJson(const std::vector<api::Migration>& items) {
  return Items(items, MigrationToJson);
}

json DrainReportToJson(const api::DrainReport& r) {
  json ordered = json::array(), in_flight = json::array(), not_moved = json::array();
  for (const auto& o : r.ordered)
    ordered.push_back({{"workload", o.workload}, {"migration", o.migration}, {"target", o.target}});
  for (const auto& f : r.in_flight)
    in_flight.push_back({{"workload", f.workload}, {"migration", f.migration}});
  for (const auto& n : r.not_moved)
    not_moved.push_back({{"workload", n.workload}, {"reason", n.reason}});
  return {{"node", r.node},
          {"cordoned", r.cordoned},
          {"ordered", std::move(ordered)},
          {"inFlight", std::move(in_flight)},
          {"notMoved", std::move(not_moved)}};
}

json DecisionsToJson(const api::DecisionsView& d) {
  json moves = json::array();
  for (const api::MoveDecision& m : d.moves) {
    moves.push_back({{"kind", m.kind == api::MoveDecision::Kind::kMemory ? "memory" : "cpu"},
                     {"workload", m.workload},
                     {"source", m.source},
                     {"target", m.target},
                     {"sourceLoad", m.source_load},
                     {"targetLoad", m.target_load},
                     {"workloadLoad", m.workload_load},
                     {"reason", m.reason}});
  }
  json loads = json::object();
  for (const auto& [node, load] : d.loads) loads[node] = load;
  return {{"moves", std::move(moves)},
          {"heldBack", d.held_back},
          {"loads", std::move(loads)},
          {"inFlight", d.in_flight},
          {"stability", d.stability}};
}

json LeaderInfoToJson(const api::LeaderInfo& l) {
  return {{"identity", l.identity},
          {"leader", l.leader ? json(*l.leader) : json()},
          {"isLeader", l.is_leader},
          {"ready", l.ready}};
}

}  // namespace kmosix::controller
