// Fuzz target: ParseWorkloadSpec(body, SpecFace::kRest) (kmosix/spec_json.h),
// the body of POST /v1/workloads. Beyond CheckJsonParser's contract
// (tests/support/fuzz_checks.h: kInvalid rejections with a message that
// serialises; accepted specs round-trip through WorkloadSpecToJson), an
// accepted spec
//  - keeps the documented bounds (valid names, image 1..512 bytes, at most
//    4096 args, env names non-empty without '=' or NUL, memoryMiB 0..2^30,
//    cpus finite in 0..4096);
//  - survives being stored: a WorkloadRecord holding it is read back from
//    its JSON text with the same spec;
//  - is accepted by the agent, which re-checks it as a ContainerSpec when it
//    starts the workload (Agent::StartManaged), so that the controller never
//    admits a workload no agent would run.
// Built by kmx_fuzz (records_fuzz, records_fuzz_regress; seeds in
// corpus/records).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "cluster/records.h"
#include "kmosix/runtime.h"
#include "kmosix/spec_json.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::ContainerSpec;
using kmosix::ValidateName;
using WorkloadRecord = kmosix::api::Workload;
using kmosix::api::WorkloadSpec;

bool Equal(const WorkloadSpec& a, const WorkloadSpec& b) {
  return a.name == b.name && a.image == b.image && a.args == b.args && a.env == b.env &&
         a.memory_mib == b.memory_mib && a.cpus == b.cpus && a.migratable == b.migratable &&
         a.node == b.node && a.pinned == b.pinned;
}

std::string Validate(const WorkloadSpec& s) {
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
  if (!s.node.empty() && !ValidateName(s.node).ok()) return "node \"" + s.node + "\"";
  return "";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto parse = [](std::string_view body) {
    return kmosix::ParseWorkloadSpec(body, kmosix::SpecFace::kRest);
  };
  auto to_json = [](const WorkloadSpec& s) {
    return kmosix::WorkloadSpecToJson(s, kmosix::SpecFace::kRest);
  };
  kmosix::fuzz::CheckJsonParser("ParseWorkloadSpec", in, parse, to_json, Equal, Validate);
  auto spec = parse(in);
  KMX_FUZZ_CHECK(!spec.ok() || !spec->origin, "a REST body set the origin", in);
  if (!spec.ok()) return 0;

  WorkloadRecord rec;
  rec.spec = *spec;
  std::string stored = KMX_FUZZ_DUMP(kmosix::cluster::WorkloadToJson(rec), in);
  auto back =
      kmosix::cluster::ParseRecord<WorkloadRecord>(stored, kmosix::cluster::WorkloadFromJson);
  KMX_FUZZ_CHECK(back.ok(), "stored record rejected: " + back.status().ToString() + ": " + stored,
                 in);
  KMX_FUZZ_CHECK(Equal(back->spec, *spec), "stored record changed the spec: " + stored, in);

  // What Agent::StartManaged does with it.
  ContainerSpec c = kmosix::ContainerSpecFor(*spec);
  auto agent = kmosix::ContainerSpecFromJson(kmosix::ContainerSpecToJson(c));
  KMX_FUZZ_CHECK(agent.ok(), "the agent would refuse it: " + agent.status().ToString(), in);
  return 0;
}
