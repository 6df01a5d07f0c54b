// Fuzz target: the kubeconfig parser (ParseKubeconfig, lib/kube/config.h).
// Contract: no crash and no exception (yaml-cpp's are caught inside); a
// rejection is kInvalid with a non-empty message; an accepted config has an
// http(s) server and a client key exactly when it has a client certificate.
// File references resolve against a directory that does not exist, so the
// target reads nothing but absolute paths the input names.
// Built by kmx_fuzz (kubeconfig_fuzz, kubeconfig_fuzz_regress; seeds in
// corpus/kubeconfig).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kube/config.h"
#include "support/fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  for (const char* context : {"", "admin@kmx"}) {
    auto cfg = kmosix::kube::ParseKubeconfig(in, "/nonexistent-kmx-fuzz", context);
    if (!cfg.ok()) {
      KMX_FUZZ_CHECK(cfg.status().code() == kmosix::Code::kInvalid,
                     "rejected with " + cfg.status().ToString(), in);
      KMX_FUZZ_CHECK(!cfg.status().message().empty(), std::string("empty message"), in);
      continue;
    }
    KMX_FUZZ_CHECK(cfg->server.rfind("https://", 0) == 0 || cfg->server.rfind("http://", 0) == 0,
                   "accepted server " + cfg->server, in);
    KMX_FUZZ_CHECK(cfg->client_cert_pem.empty() == cfg->client_key_pem.empty(),
                   std::string("a client certificate without its key (or the reverse)"), in);
  }
  return 0;
}
