// The agent's REST face without HTTP: bodies parsed and replies rendered with
// node-agent/rest_codec.h around the Agent's typed methods, as http_api.cc
// does. For tests written against request bodies and JSON replies.
// Thread-safety: as the Agent's. Errors: the parser's or the method's status.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "agent.h"
#include "rest_codec.h"

namespace kmosix::agent {

class AgentRestFace {
 public:
  explicit AgentRestFace(Agent& agent) : agent_(agent) {}

  StatusOr<nlohmann::json> CreateWorkload(std::string_view body) {
    KMX_ASSIGN_OR_RETURN(api::WorkloadSpec spec, ParseWorkloadBody(body));
    return Render(agent_.CreateWorkload(spec), AgentWorkloadViewToJson);
  }
  nlohmann::json ListWorkloads() { return AgentWorkloadListToJson(agent_.ListWorkloads()); }
  StatusOr<nlohmann::json> GetWorkload(const std::string& name) {
    return Render(agent_.GetWorkload(name), AgentWorkloadViewToJson);
  }
  // The report as POST .../migrate answers it (with "code","message" unless
  // it succeeded).
  StatusOr<nlohmann::json> Migrate(const std::string& name, std::string_view body) {
    KMX_ASSIGN_OR_RETURN(api::AgentMigrateRequest request, ParseMigrateBody(body));
    return Render(agent_.Migrate(name, request), MigrateReplyToJson);
  }
  nlohmann::json ListMigrations() { return AgentMigrationListToJson(agent_.ListMigrations()); }
  StatusOr<nlohmann::json> GetMigration(const std::string& id) {
    return Render(agent_.GetMigration(id), AgentMigrationViewToJson);
  }

 private:
  template <typename T, typename F>
  static StatusOr<nlohmann::json> Render(const StatusOr<T>& v, F to_json) {
    if (!v.ok()) return v.status();
    return to_json(*v);
  }
  Agent& agent_;
};

}  // namespace kmosix::agent
