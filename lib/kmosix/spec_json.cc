#include "kmosix/spec_json.h"

#include <cmath>
#include <set>

namespace kmosix {
namespace {

using nlohmann::json;

Status RejectUnknown(const json& j, const std::set<std::string>& known, std::string_view what) {
  for (const auto& [key, _] : j.items()) {
    if (!known.contains(key)) {
      return InvalidError("unknown field \"" + key + "\" in " + std::string(what));
    }
  }
  return Status::Ok();
}

StatusOr<std::string> RequiredString(const json& j, const std::string& key) {
  auto it = j.find(key);
  if (it == j.end()) return InvalidError("missing field \"" + key + "\"");
  if (!it->is_string()) return InvalidError("field \"" + key + "\" must be a string");
  return it->get<std::string>();
}

}  // namespace

Status ValidateName(std::string_view name) {
  if (name.empty() || name.size() > 63) {
    return InvalidError("name must be 1 to 63 characters");
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) return InvalidError("name may contain only a-z, 0-9 and '-'");
  }
  if (name.front() == '-' || name.back() == '-') {
    return InvalidError("name must start and end with a letter or digit");
  }
  return Status::Ok();
}

StatusOr<json> ParseJsonObject(std::string_view body) {
  // Keys seen so far in each object being parsed; a repeated key would
  // otherwise silently keep its last value.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto check_keys = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end && !open_objects.empty()) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty() && duplicate.empty() &&
               !open_objects.back().insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json j = json::parse(body, check_keys, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidError("request body is not valid JSON");
  if (!j.is_object()) return InvalidError("request body must be a JSON object");
  if (!duplicate.empty()) {
    return InvalidError("duplicate key \"" + duplicate.substr(0, 64) + "\" in the request body");
  }
  return j;
}

StatusOr<ContainerSpec> ContainerSpecFromJson(const json& j) {
  if (!j.is_object()) return InvalidError("workload must be a JSON object");
  KMX_RETURN_IF_ERROR(
      RejectUnknown(j, {"name", "image", "args", "env", "memoryMiB", "cpus"}, "workload"));
  ContainerSpec spec;
  KMX_ASSIGN_OR_RETURN(spec.name, RequiredString(j, "name"));
  KMX_RETURN_IF_ERROR(ValidateName(spec.name).Annotate("field \"name\""));
  KMX_ASSIGN_OR_RETURN(spec.image, RequiredString(j, "image"));
  if (spec.image.empty() || spec.image.size() > 512) {
    return InvalidError("field \"image\" must be 1 to 512 characters");
  }
  if (auto it = j.find("args"); it != j.end()) {
    if (!it->is_array()) return InvalidError("field \"args\" must be an array of strings");
    if (it->size() > 4096) return InvalidError("field \"args\" has too many elements");
    for (const auto& a : *it) {
      if (!a.is_string()) return InvalidError("field \"args\" must be an array of strings");
      spec.args.push_back(a.get<std::string>());
    }
  }
  if (auto it = j.find("env"); it != j.end()) {
    if (!it->is_object()) return InvalidError("field \"env\" must be an object of strings");
    for (const auto& [k, v] : it->items()) {
      if (!v.is_string()) return InvalidError("env \"" + k + "\" must be a string");
      if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
        return InvalidError("env name \"" + k + "\" is not valid");
      }
      spec.env[k] = v.get<std::string>();
    }
  }
  if (auto it = j.find("memoryMiB"); it != j.end()) {
    if (!it->is_number_integer()) return InvalidError("field \"memoryMiB\" must be an integer");
    int64_t m = it->get<int64_t>();
    if (m < 0 || m > (int64_t{1} << 30)) return InvalidError("field \"memoryMiB\" out of range");
    spec.memory_mib = m;
  }
  if (auto it = j.find("cpus"); it != j.end()) {
    if (!it->is_number()) return InvalidError("field \"cpus\" must be a number");
    double c = it->get<double>();
    if (!std::isfinite(c) || c < 0 || c > 4096) return InvalidError("field \"cpus\" out of range");
    spec.cpus = c;
  }
  return spec;
}

StatusOr<ContainerSpec> ParseContainerSpec(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  return ContainerSpecFromJson(j);
}

json ContainerSpecToJson(const ContainerSpec& spec) {
  json j = {
      {"name", spec.name}, {"image", spec.image}, {"args", spec.args}, {"env", json::object()}};
  for (const auto& [k, v] : spec.env) j["env"][k] = v;
  if (spec.memory_mib > 0) j["memoryMiB"] = spec.memory_mib;
  if (spec.cpus > 0) j["cpus"] = spec.cpus;
  return j;
}

StatusOr<MigrationOffer> ParseMigrationOffer(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  KMX_RETURN_IF_ERROR(RejectUnknown(
      j, {"id", "sourceNode", "sourceUrl", "spec", "createdMs", "history", "memoryBytes"},
      "migration offer"));
  MigrationOffer offer;
  KMX_ASSIGN_OR_RETURN(offer.id, RequiredString(j, "id"));
  KMX_RETURN_IF_ERROR(ValidateName(offer.id).Annotate("field \"id\""));
  KMX_ASSIGN_OR_RETURN(offer.source_node, RequiredString(j, "sourceNode"));
  KMX_ASSIGN_OR_RETURN(offer.source_url, RequiredString(j, "sourceUrl"));
  auto it = j.find("spec");
  if (it == j.end()) return InvalidError("missing field \"spec\"");
  KMX_ASSIGN_OR_RETURN(offer.spec, ContainerSpecFromJson(*it));
  if (auto c = j.find("createdMs"); c != j.end()) {
    if (!c->is_number_integer() || c->get<int64_t>() < 0) {
      return InvalidError("field \"createdMs\" must be a non-negative integer");
    }
    offer.created_ms = c->get<int64_t>();
  }
  if (auto h = j.find("history"); h != j.end()) {
    if (!h->is_array() || h->size() > 10000) {
      return InvalidError("field \"history\" must be an array of migration ids");
    }
    for (const auto& id : *h) {
      if (!id.is_string() || !ValidateName(id.get<std::string>()).ok()) {
        return InvalidError("field \"history\" must be an array of migration ids");
      }
      offer.history.push_back(id.get<std::string>());
    }
  }
  if (auto m = j.find("memoryBytes"); m != j.end()) {
    if (!m->is_number_unsigned() || m->get<uint64_t>() > kMaxOfferMemoryBytes) {
      return InvalidError("field \"memoryBytes\" must be an integer from 0 to 2^50");
    }
    offer.memory_bytes = m->get<uint64_t>();
  }
  return offer;
}

json MigrationOfferToJson(const MigrationOffer& offer) {
  return {{"id", offer.id},
          {"sourceNode", offer.source_node},
          {"sourceUrl", offer.source_url},
          {"spec", ContainerSpecToJson(offer.spec)},
          {"createdMs", offer.created_ms},
          {"history", offer.history},
          {"memoryBytes", offer.memory_bytes}};
}

json ErrorJson(const Status& status) {
  return {{"code", std::string(CodeName(status.code()))}, {"message", status.message()}};
}

}  // namespace kmosix
