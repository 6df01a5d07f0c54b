#include "controller/requests.h"

#include <nlohmann/json.hpp>

#include "kmosix/spec_json.h"

namespace kmosix::controller {

using nlohmann::json;

StatusOr<MigrationRequest> ParseMigrationRequest(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "workload" && it.key() != "target")
      return InvalidError("unknown field \"" + it.key() + "\"");
    if (!it.value().is_string()) return InvalidError(it.key() + ": must be a string");
  }
  if (!j.contains("workload")) return InvalidError("workload: required");
  MigrationRequest r;
  r.workload = j["workload"].get<std::string>();
  if (auto s = ValidateName(r.workload); !s.ok()) return s.Annotate("workload");
  if (j.contains("target")) {
    r.target = j["target"].get<std::string>();
    if (auto s = ValidateName(r.target); !s.ok()) return s.Annotate("target");
  }
  return r;
}

StatusOr<DrainRequest> ParseDrainRequest(std::string_view body) {
  DrainRequest r;
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return r;
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "includePinned") return InvalidError("unknown field \"" + it.key() + "\"");
    if (!it.value().is_boolean()) return InvalidError("includePinned: must be true or false");
    r.include_pinned = it.value().get<bool>();
  }
  return r;
}

}  // namespace kmosix::controller
