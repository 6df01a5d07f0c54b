#include "kmosix/spec_json.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <set>

#include "kmosix/json_fields.h"

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

// A JSON integer >= 0, or nullopt. nlohmann reads "-0" as a signed zero,
// which is still 0 (as JsonFields::Uint takes it).
std::optional<uint64_t> NonNegativeInteger(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

}  // namespace

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

namespace {

std::string_view SpecWhat(SpecFace face) {
  return face == SpecFace::kAgent ? "workload" : "workload spec";
}

}  // namespace

StatusOr<api::WorkloadSpec> WorkloadSpecFromJson(const json& j, SpecFace face) {
  const std::string what(SpecWhat(face));
  JsonFields f(j, what);
  switch (face) {
    case SpecFace::kAgent:
      KMX_RETURN_IF_ERROR(f.Check({"name", "image", "args", "env", "memoryMiB", "cpus"}));
      break;
    case SpecFace::kRest:
      KMX_RETURN_IF_ERROR(
          f.Check({"name", "image", "args", "env", "memoryMiB", "cpus", "migratable", "node",
                   "pinned", "restartPolicy", "checkpointIntervalSeconds"}));
      break;
    case SpecFace::kRecord:
      KMX_RETURN_IF_ERROR(
          f.Check({"name", "image", "args", "env", "memoryMiB", "cpus", "migratable", "node",
                   "pinned", "origin", "restartPolicy", "checkpointIntervalSeconds"}));
      break;
  }
  api::WorkloadSpec s;
  KMX_RETURN_IF_ERROR(f.String("name", s.name, /*required=*/true));
  KMX_RETURN_IF_ERROR(f.String("image", s.image, /*required=*/true));
  if (const json* a = f.Find("args"); a != nullptr) {
    if (!a->is_array() || a->size() > api::kMaxArgs) return f.Bad("args", "an array of strings");
    for (const auto& arg : *a) {
      if (!arg.is_string()) return f.Bad("args", "an array of strings");
      s.args.push_back(arg.get<std::string>());
    }
  }
  if (const json* e = f.Find("env"); e != nullptr) {
    if (!e->is_object()) return f.Bad("env", "an object of strings");
    for (const auto& [k, v] : e->items()) {
      if (!v.is_string()) return InvalidError("env \"" + k + "\" must be a string");
      s.env[k] = v.get<std::string>();
    }
  }
  KMX_RETURN_IF_ERROR(f.Int("memoryMiB", s.memory_mib));
  KMX_RETURN_IF_ERROR(f.Number("cpus", s.cpus));
  KMX_RETURN_IF_ERROR(f.Bool("migratable", s.migratable));
  KMX_RETURN_IF_ERROR(f.String("node", s.node));
  KMX_RETURN_IF_ERROR(f.Bool("pinned", s.pinned));
  if (const json* p = f.Find("restartPolicy"); p != nullptr) {
    if (!p->is_string()) return f.Bad("restartPolicy", "one of Never, FromImage, FromCheckpoint");
    auto policy = api::ParseRestartPolicy(p->get_ref<const std::string&>());
    if (!policy.ok())
      return InvalidError("field \"restartPolicy\" in " + what + ": " + policy.status().message());
    s.restart_policy = *policy;
  }
  KMX_RETURN_IF_ERROR(f.Int("checkpointIntervalSeconds", s.checkpoint_interval_seconds));
  if (const json* o = f.Find("origin"); o != nullptr) {
    JsonFields of(*o, what + " origin");
    KMX_RETURN_IF_ERROR(of.Check({"kind", "namespace", "name", "uid"}));
    api::WorkloadOrigin origin;
    KMX_RETURN_IF_ERROR(of.String("kind", origin.kind, /*required=*/true));
    KMX_RETURN_IF_ERROR(of.String("namespace", origin.namespace_));
    KMX_RETURN_IF_ERROR(of.String("name", origin.name, /*required=*/true));
    KMX_RETURN_IF_ERROR(of.String("uid", origin.uid, /*required=*/true));
    s.origin = std::move(origin);
  }
  KMX_RETURN_IF_ERROR(api::ValidateWorkloadSpec(s, what));
  return s;
}

StatusOr<api::WorkloadSpec> ParseWorkloadSpec(std::string_view body, SpecFace face) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  return WorkloadSpecFromJson(j, face);
}

json WorkloadSpecToJson(const api::WorkloadSpec& s, SpecFace face) {
  json env = json::object();
  for (const auto& [k, v] : s.env) env[k] = v;
  json j = {{"name", s.name}, {"image", s.image}, {"args", s.args}, {"env", std::move(env)}};
  if (face == SpecFace::kAgent) {
    if (s.memory_mib > 0) j["memoryMiB"] = s.memory_mib;
    if (s.cpus > 0) j["cpus"] = s.cpus;
    return j;
  }
  j["memoryMiB"] = s.memory_mib;
  j["cpus"] = s.cpus;
  j["migratable"] = s.migratable;
  j["node"] = s.node;
  j["pinned"] = s.pinned;
  // The REST face shows the policy always (the default stays explicit); the
  // record writes it only when it is not the default, so a record of a
  // workload that does not use it reads as before.
  if (face == SpecFace::kRest || s.restart_policy != api::RestartPolicy::kNever)
    j["restartPolicy"] = api::RestartPolicyName(s.restart_policy);
  if (s.checkpoint_interval_seconds != 0)
    j["checkpointIntervalSeconds"] = s.checkpoint_interval_seconds;
  if (face == SpecFace::kRecord && s.origin) {
    j["origin"] = {{"kind", s.origin->kind},
                   {"namespace", s.origin->namespace_},
                   {"name", s.origin->name},
                   {"uid", s.origin->uid}};
  }
  return j;
}

StatusOr<ContainerSpec> ContainerSpecFromJson(const json& j) {
  KMX_ASSIGN_OR_RETURN(api::WorkloadSpec s, WorkloadSpecFromJson(j, SpecFace::kAgent));
  return ContainerSpecFor(s);
}

StatusOr<ContainerSpec> ParseContainerSpec(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  return ContainerSpecFromJson(j);
}

json ContainerSpecToJson(const ContainerSpec& spec) {
  return WorkloadSpecToJson(WorkloadSpecOf(spec), SpecFace::kAgent);
}

StatusOr<MigrationOffer> ParseMigrationOffer(std::string_view body) {
  KMX_ASSIGN_OR_RETURN(json j, ParseJsonObject(body));
  KMX_RETURN_IF_ERROR(RejectUnknown(
      j, {"id", "sourceNode", "sourceUrl", "spec", "createdMs", "history", "memoryBytes", "stream"},
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
    auto bytes = NonNegativeInteger(*m);
    if (!bytes || *bytes > kMaxOfferMemoryBytes) {
      return InvalidError("field \"memoryBytes\" must be an integer from 0 to 2^50");
    }
    offer.memory_bytes = *bytes;
  }
  if (auto st = j.find("stream"); st != j.end()) {
    if (!st->is_object()) return InvalidError("field \"stream\" must be an object");
    KMX_RETURN_IF_ERROR(RejectUnknown(*st, {"files", "bytes", "entries"}, "offer's stream"));
    for (auto [key, field] : {std::pair<const char*, uint64_t*>{"files", &offer.stream.files},
                              {"bytes", &offer.stream.bytes},
                              {"entries", &offer.stream.entries}}) {
      auto v = st->find(key);
      if (v == st->end()) continue;
      auto n = NonNegativeInteger(*v);
      if (!n || *n > kMaxOfferStreamValue) {
        return InvalidError(std::string("field \"stream.") + key +
                            "\" must be an integer from 0 to 2^56");
      }
      *field = *n;
    }
  }
  return offer;
}

json MigrationOfferToJson(const MigrationOffer& offer) {
  json j = {{"id", offer.id},
            {"sourceNode", offer.source_node},
            {"sourceUrl", offer.source_url},
            {"spec", ContainerSpecToJson(offer.spec)},
            {"createdMs", offer.created_ms},
            {"history", offer.history},
            {"memoryBytes", offer.memory_bytes}};
  if (offer.stream != StreamLimits{}) {
    j["stream"] = {{"files", offer.stream.files},
                   {"bytes", offer.stream.bytes},
                   {"entries", offer.stream.entries}};
  }
  return j;
}

json ErrorJson(const Status& status) {
  return {{"code", std::string(CodeName(status.code()))}, {"message", status.message()}};
}

}  // namespace kmosix
