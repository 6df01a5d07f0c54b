#include "kube/config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kmosix::kube {
namespace {

// Reads a whole file; kNotFound if it cannot be opened.
StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return NotFoundError("cannot read " + path);
  return ss.str();
}

std::string Resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p[0] == '/' || base_dir.empty()) return p;
  return base_dir + "/" + p;
}

// A scalar string field of `node` (nullopt if absent or null); kInvalid if not a scalar.
StatusOr<std::optional<std::string>> Scalar(const YAML::Node& node, const char* key,
                                            const std::string& where) {
  YAML::Node v = node[key];
  if (!v || v.IsNull()) return std::optional<std::string>();
  if (!v.IsScalar()) return InvalidError(where + "." + key + ": not a string");
  return std::optional<std::string>(v.Scalar());
}

// The entry of `list` (a sequence of {name, <kind>: map}) named `name`.
StatusOr<YAML::Node> Named(const YAML::Node& root, const char* list, const char* kind,
                           const std::string& name) {
  YAML::Node seq = root[list];
  if (!seq || seq.IsNull()) return InvalidError(std::string(list) + ": missing");
  if (!seq.IsSequence()) return InvalidError(std::string(list) + ": not a list");
  for (const auto& item : seq) {
    if (!item.IsMap()) return InvalidError(std::string(list) + ": an entry is not a map");
    YAML::Node n = item["name"];
    if (n && n.IsScalar() && n.Scalar() == name) {
      YAML::Node body = item[kind];
      std::string where = std::string(list) + "[" + name + "]." + kind;
      if (!body || body.IsNull()) return YAML::Node(YAML::NodeType::Map);
      if (!body.IsMap()) return InvalidError(where + ": not a map");
      return body;
    }
  }
  return InvalidError(std::string(list) + ": no entry named \"" + name + "\"");
}

// `<key>-data` (base64) or `<key>` (a file), into `out`.
Status DataOrFile(const YAML::Node& node, const std::string& key, const std::string& where,
                  const std::string& base_dir, std::string* out) {
  std::string data_key = key + "-data";
  auto data = Scalar(node, data_key.c_str(), where);
  if (!data.ok()) return data.status();
  if (*data && !(*data)->empty()) {
    auto decoded = Base64Decode(**data);
    if (!decoded) return InvalidError(where + "." + data_key + ": not base64");
    *out = std::move(*decoded);
    return Status::Ok();
  }
  auto file = Scalar(node, key.c_str(), where);
  if (!file.ok()) return file.status();
  if (*file && !(*file)->empty()) {
    std::string path = Resolve(base_dir, **file);
    auto content = ReadFile(path);
    if (!content.ok()) return InvalidError(where + "." + key + ": cannot read " + path);
    *out = std::move(*content);
  }
  return Status::Ok();
}

StatusOr<Config> ParseKubeconfigNoCatch(std::string_view yaml, const std::string& base_dir,
                                        const std::string& context_name) {
  YAML::Node root = YAML::Load(std::string(yaml));
  if (!root.IsMap()) return InvalidError("kubeconfig: not a YAML map");
  std::string ctx_name = context_name;
  if (ctx_name.empty()) {
    auto cur = Scalar(root, "current-context", "kubeconfig");
    if (!cur.ok()) return cur.status();
    if (!*cur || (*cur)->empty()) {
      return InvalidError("current-context: not set (and no context was asked for)");
    }
    ctx_name = **cur;
  }
  auto ctx = Named(root, "contexts", "context", ctx_name);
  if (!ctx.ok()) return ctx.status();
  std::string ctx_where = "contexts[" + ctx_name + "].context";
  auto cluster_name = Scalar(*ctx, "cluster", ctx_where);
  if (!cluster_name.ok()) return cluster_name.status();
  if (!*cluster_name || (*cluster_name)->empty())
    return InvalidError(ctx_where + ".cluster: missing");
  auto user_name = Scalar(*ctx, "user", ctx_where);
  if (!user_name.ok()) return user_name.status();
  auto ns = Scalar(*ctx, "namespace", ctx_where);
  if (!ns.ok()) return ns.status();

  Config cfg;
  if (*ns) cfg.namespace_ = **ns;

  auto cluster = Named(root, "clusters", "cluster", **cluster_name);
  if (!cluster.ok()) return cluster.status();
  std::string cw = "clusters[" + **cluster_name + "].cluster";
  auto server = Scalar(*cluster, "server", cw);
  if (!server.ok()) return server.status();
  if (!*server || (*server)->empty()) return InvalidError(cw + ".server: missing");
  cfg.server = **server;
  if (cfg.server.rfind("https://", 0) != 0 && cfg.server.rfind("http://", 0) != 0) {
    return InvalidError(cw + ".server: \"" + cfg.server + "\" is not an http(s) URL");
  }
  KMX_RETURN_IF_ERROR(DataOrFile(*cluster, "certificate-authority", cw, base_dir, &cfg.ca_pem));
  auto insecure = Scalar(*cluster, "insecure-skip-tls-verify", cw);
  if (!insecure.ok()) return insecure.status();
  if (*insecure) {
    if (**insecure == "true") {
      cfg.insecure_skip_verify = true;
    } else if (**insecure != "false") {
      return InvalidError(cw + ".insecure-skip-tls-verify: not a boolean");
    }
  }

  if (*user_name && !(*user_name)->empty()) {
    auto user = Named(root, "users", "user", **user_name);
    if (!user.ok()) return user.status();
    std::string uw = "users[" + **user_name + "].user";
    for (const char* unsupported : {"exec", "auth-provider", "username", "password"}) {
      if ((*user)[unsupported] && !(*user)[unsupported].IsNull()) {
        return InvalidError(uw + "." + unsupported + ": not supported by kmosix's client");
      }
    }
    KMX_RETURN_IF_ERROR(
        DataOrFile(*user, "client-certificate", uw, base_dir, &cfg.client_cert_pem));
    KMX_RETURN_IF_ERROR(DataOrFile(*user, "client-key", uw, base_dir, &cfg.client_key_pem));
    if (cfg.client_cert_pem.empty() != cfg.client_key_pem.empty()) {
      return InvalidError(uw + ": client-certificate and client-key go together (one is missing)");
    }
    auto token = Scalar(*user, "token", uw);
    if (!token.ok()) return token.status();
    if (*token) cfg.token = **token;
    auto token_file = Scalar(*user, "tokenFile", uw);
    if (!token_file.ok()) return token_file.status();
    if (*token_file && !(*token_file)->empty()) {
      cfg.token_file = Resolve(base_dir, **token_file);
      auto t = ReadFile(cfg.token_file);
      if (!t.ok()) return InvalidError(uw + ".tokenFile: cannot read " + cfg.token_file);
    }
  }
  return cfg;
}

std::string TrimWs(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t a = s.find_first_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a);
}

}  // namespace

std::optional<std::string> Base64Decode(std::string_view in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  size_t n = 0, pad = 0;
  for (char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++pad;
      continue;
    }
    if (pad) return std::nullopt;  // data after padding
    int v = val(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    ++n;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  if (n % 4 == 1 || pad > 2 || (pad && (n + pad) % 4 != 0)) return std::nullopt;
  return out;
}

StatusOr<Config> ParseKubeconfig(std::string_view yaml, const std::string& base_dir,
                                 const std::string& context) {
  try {
    return ParseKubeconfigNoCatch(yaml, base_dir, context);
  } catch (const YAML::Exception& e) {
    return InvalidError(std::string("kubeconfig: bad YAML: ") + e.what());
  } catch (const std::exception& e) {
    return InvalidError(std::string("kubeconfig: ") + e.what());
  }
}

StatusOr<Config> LoadKubeconfig(const std::string& path, const std::string& context) {
  auto text = ReadFile(path);
  if (!text.ok()) return NotFoundError("kubeconfig " + path + ": cannot read");
  std::error_code ec;
  std::string dir = std::filesystem::path(path).parent_path().string();
  auto cfg = ParseKubeconfig(*text, dir, context);
  if (!cfg.ok()) return cfg.status().Annotate("kubeconfig " + path);
  return cfg;
}

EnvLookup ProcessEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

StatusOr<Config> InClusterConfig(const std::string& root, const EnvLookup& env) {
  auto host = env("KUBERNETES_SERVICE_HOST");
  auto port = env("KUBERNETES_SERVICE_PORT");
  if (!host || host->empty() || !port || port->empty()) {
    return NotFoundError(
        "not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set");
  }
  if (port->find_first_not_of("0123456789") != std::string::npos || port->size() > 5) {
    return InvalidError("KUBERNETES_SERVICE_PORT: \"" + *port + "\" is not a port");
  }
  Config cfg;
  std::string h = *host;
  if (h.find(':') != std::string::npos && h.front() != '[') h = "[" + h + "]";  // IPv6
  cfg.server = "https://" + h + ":" + *port;
  auto ca = ReadFile(root + "/ca.crt");
  if (!ca.ok()) return InvalidError("in-cluster: " + root + "/ca.crt: cannot read");
  cfg.ca_pem = std::move(*ca);
  cfg.token_file = root + "/token";
  auto token = ReadFile(cfg.token_file);
  if (!token.ok()) return InvalidError("in-cluster: " + cfg.token_file + ": cannot read");
  cfg.token = TrimWs(*token);
  if (cfg.token.empty()) return InvalidError("in-cluster: " + cfg.token_file + ": empty");
  if (auto ns = ReadFile(root + "/namespace"); ns.ok()) cfg.namespace_ = TrimWs(*ns);
  return cfg;
}

}  // namespace kmosix::kube
