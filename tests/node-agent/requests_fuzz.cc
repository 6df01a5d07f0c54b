// Fuzz target: the agent's request-body parsers of node-agent/rest_codec.h.
// Every input goes to both ParseWorkloadBody (POST /v1/workloads) and
// ParseMigrateBody (POST /v1/workloads/{name}/migrate); each must keep the
// contract of CheckJsonParser (tests/support/fuzz_checks.h): a rejection is
// kInvalid with a message that serialises; an accepted workload passes the
// one validator, carries only the agent face's fields, and round-trips
// through that face; an accepted migrate body round-trips through
// {"target"} (its URL is checked by Agent::Migrate, not here).
// Built by kmx_fuzz (agent_requests_fuzz, agent_requests_fuzz_regress; seeds
// in corpus/requests).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "api/validate.h"
#include "kmosix/spec_json.h"
#include "rest_codec.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::api::AgentMigrateRequest;
using kmosix::api::WorkloadSpec;
using nlohmann::json;

json SpecToJson(const WorkloadSpec& s) {
  return kmosix::WorkloadSpecToJson(s, kmosix::SpecFace::kAgent);
}

std::string ValidSpec(const WorkloadSpec& s) {
  if (kmosix::Status v = kmosix::api::ValidateWorkloadSpec(s, "workload"); !v.ok()) {
    return v.ToString();
  }
  if (!s.migratable || !s.node.empty() || s.pinned || s.origin) {
    return "a field outside the agent face is set";
  }
  return "";
}

json MigrateToJson(const AgentMigrateRequest& r) { return {{"target", r.target}}; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  kmosix::fuzz::CheckJsonParser(
      "ParseWorkloadBody", in, kmosix::agent::ParseWorkloadBody, SpecToJson,
      [](const WorkloadSpec& a, const WorkloadSpec& b) { return a == b; }, ValidSpec);
  kmosix::fuzz::CheckJsonParser(
      "ParseMigrateBody", in, kmosix::agent::ParseMigrateBody, MigrateToJson,
      [](const AgentMigrateRequest& a, const AgentMigrateRequest& b) {
        return a.target == b.target;
      },
      [](const AgentMigrateRequest&) { return std::string(); });
  return 0;
}
