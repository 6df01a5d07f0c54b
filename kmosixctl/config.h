// kmosixctl's connection settings: which controller URLs to talk to, the
// bearer token and the CA bundle, resolved from (highest first) command-line
// flags, the environment, the config file, and the defaults.
//
//   flag                         env                 config file (YAML)
//   --server/-s URL[,URL...]     KMOSIX_SERVER       server: URL[,URL...] (or a list)
//   --token TOKEN                KMOSIX_TOKEN        token: TOKEN
//   --ca-file PATH               KMOSIX_CA_FILE      caFile: PATH (relative: to the file's dir)
//   --insecure-skip-tls-verify   -                   insecureSkipTlsVerify: bool
//   --config PATH                KMOSIX_CONFIG       -
// The config file is --config, else $KMOSIX_CONFIG, else
// $XDG_CONFIG_HOME/kmosix/config.yaml, else $HOME/.config/kmosix/config.yaml.
// A file named by --config or KMOSIX_CONFIG must exist; the default one may be
// absent. The default server is http://127.0.0.1:7800.
//
// Everything here is pure: the caller reads the environment and the file and
// passes them in (see main.cc). Thread-safety: value types and stateless
// functions. Errors: kInvalid with a message naming the source and the field
// (main.cc exits 2, usage); a named config file that cannot be read is
// reported by the caller, which reads it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/status.h"

namespace kmosix::ctl {

inline constexpr const char* kDefaultServer = "http://127.0.0.1:7800";

using EnvMap = std::map<std::string, std::string>;

// What the command line said (unset: not given).
struct ConfigFlags {
  std::optional<std::string> server;
  std::optional<std::string> token;
  std::optional<std::string> ca_file;
  std::optional<std::string> config;
  bool insecure_skip_tls_verify = false;
};

// The config file's settings (unset: not in the file).
struct FileConfig {
  std::optional<std::string> server;
  std::optional<std::string> token;
  std::optional<std::string> ca_file;
  std::optional<bool> insecure_skip_tls_verify;
};

struct ConfigFileLocation {
  std::string path;       // "" when there is nowhere to look (no HOME either)
  bool required = false;  // named by --config or KMOSIX_CONFIG: must exist
};
ConfigFileLocation LocateConfigFile(const ConfigFlags& flags, const EnvMap& env);

// Parses the YAML text of a config file; `path` is for messages and for
// resolving a relative caFile. Unknown keys and wrong types are kInvalid.
StatusOr<FileConfig> ParseConfigFile(std::string_view text, const std::string& path);

// Where a setting came from, for messages ("flag", "env KMOSIX_SERVER",
// "config /x/config.yaml", "default").
struct ResolvedConfig {
  std::vector<std::string> servers;  // at least one; tried in order
  std::string token;                 // "" = none
  std::string ca_file;               // "" = the system's CA store
  bool insecure_skip_tls_verify = false;
  std::string server_source;
  std::string token_source;
  std::string config_path;  // the file that was read ("" = none)
};

// flags > env > file > default. `file` is the parsed config file, if one was
// read (config_path names it).
StatusOr<ResolvedConfig> ResolveConfig(const ConfigFlags& flags, const EnvMap& env,
                                       const std::optional<FileConfig>& file,
                                       const std::string& config_path = "");

// "https://a:7800, http://b:7800/" -> {"https://a:7800", "http://b:7800"}.
// Each entry needs an http:// or https:// scheme and a host; a trailing '/'
// is dropped; any other path is kInvalid, as is a space, '?', '#', '@' or a
// control character after the scheme.
StatusOr<std::vector<std::string>> ParseServerList(std::string_view list);

}  // namespace kmosix::ctl
