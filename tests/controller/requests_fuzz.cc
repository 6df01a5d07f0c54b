// Fuzz target: the controller's request-body parsers of controller/rest_codec.h.
// Every input goes to both ParseMigrationRequest (POST /v1/migrations) and
// ParseDrainRequest (POST /v1/nodes/{name}/drain); each must keep the
// contract of CheckJsonParser (tests/support/fuzz_checks.h): a rejection is
// kInvalid with a message that serialises; an accepted body holds valid names
// and round-trips through its JSON form (written here from the documented
// shape: the requests have no ToJson).
// Built by kmx_fuzz (requests_fuzz, requests_fuzz_regress; seeds in
// corpus/requests).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "controller/rest_codec.h"
#include "kmosix/spec_json.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::ValidateName;
using kmosix::api::DrainRequest;
using kmosix::api::MigrationRequest;
using nlohmann::json;

json MigrationToJson(const MigrationRequest& r) {
  json j = {{"workload", r.workload}};
  if (!r.target.empty()) j["target"] = r.target;
  return j;
}

std::string ValidMigration(const MigrationRequest& r) {
  if (!ValidateName(r.workload).ok()) return "workload name \"" + r.workload + "\"";
  if (!r.target.empty() && !ValidateName(r.target).ok()) return "target \"" + r.target + "\"";
  return "";
}

json DrainToJson(const DrainRequest& r) { return {{"includePinned", r.include_pinned}}; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  kmosix::fuzz::CheckJsonParser(
      "ParseMigrationRequest", in, kmosix::controller::ParseMigrationRequest, MigrationToJson,
      [](const MigrationRequest& a, const MigrationRequest& b) {
        return a.workload == b.workload && a.target == b.target;
      },
      ValidMigration);
  kmosix::fuzz::CheckJsonParser(
      "ParseDrainRequest", in, kmosix::controller::ParseDrainRequest, DrainToJson,
      [](const DrainRequest& a, const DrainRequest& b) {
        return a.include_pinned == b.include_pinned;
      },
      [](const DrainRequest&) { return std::string(); });
  // A present target names a node: "" is refused, not read as "no target".
  {
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("target") && j["target"].is_string() &&
        j["target"].get<std::string>().empty()) {
      KMX_FUZZ_CHECK(!kmosix::controller::ParseMigrationRequest(in).ok(),
                     "an empty target was accepted", in);
    }
  }
  // An empty (or blank) drain body means {}.
  if (in.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    auto r = kmosix::controller::ParseDrainRequest(in);
    KMX_FUZZ_CHECK(r.ok() && !r->include_pinned, "a blank drain body is not {}", in);
  }
  return 0;
}
