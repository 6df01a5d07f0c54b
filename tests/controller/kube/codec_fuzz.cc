// Fuzz target: the Kubernetes object decoders of controller/kube/codec.h.
// Every input that is a JSON object goes to DecodeMigratableWorkload,
// DecodeMigration and DecodeMigrationPolicy. Contract: a rejection is kInvalid
// with a message that serialises; an accepted value passes the model's
// validator, its status and object encodings serialise, and the object
// encoding decodes back to the same value. Nothing throws.
// Built by kmx_fuzz (kube_codec_fuzz, kube_codec_fuzz_regress; seeds in
// corpus/kube_codec).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "api/validate.h"
#include "controller/kube/codec.h"
#include "support/fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kmosix;
  using namespace kmosix::bridge;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || fuzz::Depth(j) > 200) return 0;

  auto w = DecodeMigratableWorkload(j);
  if (!w.ok()) {
    KMX_FUZZ_CHECK_REJECTED(w.status(), in);
  } else {
    KMX_FUZZ_CHECK(api::ValidateWorkloadSpec(*w).ok(), "accepted an invalid spec", in);
    auto again = DecodeMigratableWorkload(MigratableWorkloadObject(*w));
    KMX_FUZZ_CHECK(again.ok() && *again == *w, "MigratableWorkload round trip changed the value",
                   in);
    api::WorkloadView v;
    v.workload.spec = *w;
    KMX_FUZZ_DUMP(MigratableWorkloadStatus(j.value("status", nlohmann::json::object()),
                                           {1, w->name, v, std::nullopt, ""}, 0),
                  in);
  }

  auto m = DecodeMigration(j);
  if (!m.ok()) {
    KMX_FUZZ_CHECK_REJECTED(m.status(), in);
  } else {
    auto again = DecodeMigration(MigrationObject("ns", "name", *m));
    KMX_FUZZ_CHECK(again.ok() && *again == *m, "Migration round trip changed the value", in);
  }
  IsFinalMigrationStatus(j);

  auto p = DecodeMigrationPolicy(j);
  if (!p.ok()) {
    KMX_FUZZ_CHECK_REJECTED(p.status(), in);
  } else {
    KMX_FUZZ_CHECK(api::ValidatePolicySettings(p->settings).ok(), "accepted invalid settings", in);
    auto again = DecodeMigrationPolicy(MigrationPolicyObject(*p));
    KMX_FUZZ_CHECK(again.ok(), "MigrationPolicy encoding is refused", in);
    p->selector.Matches({{"a", "b"}});
  }
  return 0;
}
