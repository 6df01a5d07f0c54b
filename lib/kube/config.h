// Where and how to reach a Kubernetes API server: Config, read from a
// kubeconfig file (LoadKubeconfig / ParseKubeconfig) or from the pod's
// service-account files (InClusterConfig).
//
// Supported kubeconfig fields (the context named, else current-context):
//   clusters[].cluster: server, certificate-authority-data (base64),
//     certificate-authority (a file; relative paths are relative to the
//     kubeconfig's directory), insecure-skip-tls-verify
//   users[].user: client-certificate-data / client-key-data (base64),
//     client-certificate / client-key (files), token, tokenFile
//   contexts[].context: cluster, user, namespace
// Not supported (kInvalid naming the field): exec, auth-provider,
// username/password.
//
// Errors: kNotFound when the kubeconfig file itself (or the in-cluster
// service-account directory/env) is missing; kInvalid for anything malformed
// or missing inside, the message naming the field (e.g.
// `users[admin].user.client-key-data: not base64`). No exception escapes
// (yaml-cpp's are caught here).
// Thread-safety: pure functions over their arguments and the files they read.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "kmosix/status.h"

namespace kmosix::kube {

struct Config {
  std::string server;           // "https://10.0.0.1:443"
  std::string ca_pem;           // trusted CA(s), PEM; "" = the system's (unless insecure)
  std::string client_cert_pem;  // client certificate, PEM ("" = none)
  std::string client_key_pem;   // its private key, PEM
  std::string token;            // bearer token ("" = none)
  std::string token_file;       // bearer token re-read from this file (wins over token)
  std::string namespace_;       // the context's namespace ("" when not set)
  bool insecure_skip_verify = false;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds read_timeout{30000};  // plain calls; watches wait longer
};

// Reads `path` (kubeconfig YAML). `context` "" = the file's current-context.
StatusOr<Config> LoadKubeconfig(const std::string& path, const std::string& context = "");
// Parses kubeconfig text; file references resolve against `base_dir`.
StatusOr<Config> ParseKubeconfig(std::string_view yaml, const std::string& base_dir,
                                 const std::string& context = "");

// Looks an environment variable up (nullopt = unset).
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
// The process environment (std::getenv).
EnvLookup ProcessEnv();

inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";
// In a pod: server from KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT,
// CA from <root>/ca.crt, the token file <root>/token (Config::token_file,
// re-read by the client; its current content is checked to be non-empty),
// namespace from <root>/namespace (optional).
StatusOr<Config> InClusterConfig(const std::string& root = kServiceAccountDir,
                                 const EnvLookup& env = ProcessEnv());

// Strict base64 (standard alphabet, padding optional, whitespace ignored).
std::optional<std::string> Base64Decode(std::string_view in);

}  // namespace kmosix::kube
