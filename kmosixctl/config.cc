#include "kmosixctl/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <exception>

namespace kmosix::ctl {
namespace {

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\n' || s[b] == '\r')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\n' || s[e - 1] == '\r'))
    --e;
  return std::string(s.substr(b, e - b));
}

// A value from the environment, unset when absent or empty.
std::optional<std::string> Env(const EnvMap& env, const char* name) {
  auto it = env.find(name);
  if (it == env.end() || Trim(it->second).empty()) return std::nullopt;
  return it->second;
}

std::string DirOf(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// yaml-cpp reports errors by throwing; they stay inside this function.
StatusOr<FileConfig> ParseYaml(std::string_view text, const std::string& path) {
  const std::string where = "config file " + path;
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const std::exception& e) {
    return InvalidError(where + ": not valid YAML: " + e.what());
  }
  FileConfig fc;
  if (root.IsNull()) return fc;  // empty file
  if (!root.IsMap()) return InvalidError(where + ": must be a mapping (server, token, caFile)");
  try {
    for (const auto& item : root) {
      const std::string key = item.first.as<std::string>();
      const YAML::Node& v = item.second;
      if (v.IsNull()) continue;  // "token:" with nothing: as if absent
      auto scalar = [&](std::optional<std::string>& into) -> Status {
        if (!v.IsScalar()) return InvalidError(where + ": \"" + key + "\" must be a string");
        into = v.as<std::string>();
        return Status::Ok();
      };
      if (key == "server") {
        if (v.IsSequence()) {
          std::string joined;
          for (const auto& s : v) {
            if (!s.IsScalar())
              return InvalidError(where + ": \"server\" must be a URL or a list of URLs");
            if (!joined.empty()) joined += ",";
            joined += s.as<std::string>();
          }
          fc.server = joined;
        } else {
          KMX_RETURN_IF_ERROR(scalar(fc.server));
        }
      } else if (key == "token") {
        KMX_RETURN_IF_ERROR(scalar(fc.token));
      } else if (key == "caFile") {
        KMX_RETURN_IF_ERROR(scalar(fc.ca_file));
        if (!fc.ca_file->empty() && fc.ca_file->front() != '/')
          fc.ca_file = DirOf(path) + "/" + *fc.ca_file;
      } else if (key == "insecureSkipTlsVerify") {
        bool b = false;
        if (!v.IsScalar() || !YAML::convert<bool>::decode(v, b))
          return InvalidError(where + ": \"insecureSkipTlsVerify\" must be true or false");
        fc.insecure_skip_tls_verify = b;
      } else {
        return InvalidError(where + ": unknown key \"" + key +
                            "\" (known: server, token, caFile, insecureSkipTlsVerify)");
      }
    }
  } catch (const std::exception& e) {
    return InvalidError(where + ": " + e.what());
  }
  return fc;
}

}  // namespace

ConfigFileLocation LocateConfigFile(const ConfigFlags& flags, const EnvMap& env) {
  if (flags.config && !flags.config->empty()) return {*flags.config, true};
  if (auto p = Env(env, "KMOSIX_CONFIG")) return {*p, true};
  if (auto x = Env(env, "XDG_CONFIG_HOME")) return {*x + "/kmosix/config.yaml", false};
  if (auto h = Env(env, "HOME")) return {*h + "/.config/kmosix/config.yaml", false};
  return {"", false};
}

StatusOr<FileConfig> ParseConfigFile(std::string_view text, const std::string& path) {
  return ParseYaml(text, path);
}

StatusOr<std::vector<std::string>> ParseServerList(std::string_view list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    std::string url = Trim(list.substr(start, comma - start));
    start = comma + 1;
    if (url.empty()) continue;
    const bool https = url.rfind("https://", 0) == 0;
    if (!https && url.rfind("http://", 0) != 0)
      return InvalidError("server \"" + url + "\": needs http:// or https://");
    const size_t host_at = https ? 8 : 7;
    while (url.size() > host_at && url.back() == '/') url.pop_back();
    const std::string authority = url.substr(host_at);
    if (authority.empty() || authority.front() == ':')
      return InvalidError("server \"" + url + "\": no host");
    if (authority.find('/') != std::string::npos)
      return InvalidError("server \"" + url + "\": a path is not allowed (scheme://host:port)");
    const bool control = std::any_of(authority.begin(), authority.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;  // "\r" would reach a header
    });
    if (control || authority.find_first_of(" ?#@") != std::string::npos)
      return InvalidError("server \"" + url + "\": not a scheme://host:port URL");
    out.push_back(url);
  }
  if (out.empty()) return InvalidError("server: no URL given");
  return out;
}

StatusOr<ResolvedConfig> ResolveConfig(const ConfigFlags& flags, const EnvMap& env,
                                       const std::optional<FileConfig>& file,
                                       const std::string& config_path) {
  ResolvedConfig rc;
  rc.config_path = file ? config_path : "";
  const std::string file_source = "config " + config_path;

  std::string server = kDefaultServer;
  rc.server_source = "default";
  if (flags.server) {
    server = *flags.server;
    rc.server_source = "--server";
  } else if (auto e = Env(env, "KMOSIX_SERVER")) {
    server = *e;
    rc.server_source = "env KMOSIX_SERVER";
  } else if (file && file->server) {
    server = *file->server;
    rc.server_source = file_source;
  }
  auto servers = ParseServerList(server);
  if (!servers.ok()) return servers.status().Annotate(rc.server_source);
  rc.servers = *servers;

  rc.token_source = "none";
  if (flags.token) {
    rc.token = *flags.token;
    rc.token_source = "--token";
  } else if (auto e = Env(env, "KMOSIX_TOKEN")) {
    rc.token = *e;
    rc.token_source = "env KMOSIX_TOKEN";
  } else if (file && file->token) {
    rc.token = *file->token;
    rc.token_source = file_source;
  }
  rc.token = Trim(rc.token);
  if (rc.token.find_first_of(" \t\r\n") != std::string::npos)
    return InvalidError(rc.token_source + ": a token has no whitespace in it");

  if (flags.ca_file) {
    rc.ca_file = *flags.ca_file;
  } else if (auto e = Env(env, "KMOSIX_CA_FILE")) {
    rc.ca_file = *e;
  } else if (file && file->ca_file) {
    rc.ca_file = *file->ca_file;
  }

  rc.insecure_skip_tls_verify =
      flags.insecure_skip_tls_verify || (file && file->insecure_skip_tls_verify.value_or(false));
  return rc;
}

}  // namespace kmosix::ctl
