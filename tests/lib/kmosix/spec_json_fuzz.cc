// Fuzz target: the agent's body parsers of kmosix/spec_json.h. Every input
// goes to both ParseContainerSpec (POST /v1/workloads on an agent) and
// ParseMigrationOffer (the agent-to-agent prepare request); each must keep
// CheckJsonParser's contract (tests/support/fuzz_checks.h: kInvalid
// rejections with a message that serialises; accepted values keep the
// documented bounds and round-trip through ContainerSpecToJson /
// MigrationOfferToJson).
// Built by kmx_fuzz (spec_json_fuzz, spec_json_fuzz_regress; seeds in
// corpus/spec_json).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kmosix/runtime.h"
#include "kmosix/spec_json.h"
#include "kmosix/transport.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::ContainerSpec;
using kmosix::MigrationOffer;
using kmosix::ValidateName;

// log_path and labels are not part of the JSON form.
bool SpecEqual(const ContainerSpec& a, const ContainerSpec& b) {
  return a.name == b.name && a.image == b.image && a.args == b.args && a.env == b.env &&
         a.memory_mib == b.memory_mib && a.cpus == b.cpus && a.log_path.empty() &&
         b.log_path.empty() && a.labels.empty() && b.labels.empty();
}

std::string ValidateSpec(const ContainerSpec& s) {
  if (!ValidateName(s.name).ok()) return "name \"" + s.name + "\"";
  if (s.image.empty() || s.image.size() > 512) return "image of " + std::to_string(s.image.size());
  if (s.args.size() > 4096) return std::to_string(s.args.size()) + " args";
  for (const auto& [k, v] : s.env) {
    if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
      return "env name \"" + k + "\"";
    }
  }
  if (s.memory_mib < 0 || s.memory_mib > (int64_t{1} << 30)) {
    return "memoryMiB " + std::to_string(s.memory_mib);
  }
  if (!std::isfinite(s.cpus) || s.cpus < 0 || s.cpus > 4096)
    return "cpus " + std::to_string(s.cpus);
  return "";
}

bool OfferEqual(const MigrationOffer& a, const MigrationOffer& b) {
  return a.id == b.id && a.source_node == b.source_node && a.source_url == b.source_url &&
         SpecEqual(a.spec, b.spec) && a.created_ms == b.created_ms && a.history == b.history &&
         a.memory_bytes == b.memory_bytes;
}

std::string ValidateOffer(const MigrationOffer& o) {
  if (!ValidateName(o.id).ok()) return "id \"" + o.id + "\"";
  if (o.created_ms < 0) return "createdMs " + std::to_string(o.created_ms);
  if (o.memory_bytes > kmosix::kMaxOfferMemoryBytes) {
    return "memoryBytes " + std::to_string(o.memory_bytes);
  }
  if (o.history.size() > 10000) return std::to_string(o.history.size()) + " history entries";
  for (const std::string& id : o.history) {
    if (!ValidateName(id).ok()) return "history id \"" + id + "\"";
  }
  if (std::string bad = ValidateSpec(o.spec); !bad.empty()) return "spec: " + bad;
  return "";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  kmosix::fuzz::CheckJsonParser("ParseContainerSpec", in, kmosix::ParseContainerSpec,
                                kmosix::ContainerSpecToJson, SpecEqual, ValidateSpec);
  kmosix::fuzz::CheckJsonParser("ParseMigrationOffer", in, kmosix::ParseMigrationOffer,
                                kmosix::MigrationOfferToJson, OfferEqual, ValidateOffer);
  return 0;
}
