// Fuzz target: kmosixctl's config file parser (ParseConfigFile,
// kmosixctl/config.h) and what is built from it (ResolveConfig,
// ParseServerList). The input is the file's text; it is also tried as a
// --server / KMOSIX_SERVER value. Contract:
//  - no exception escapes (yaml-cpp's are caught inside);
//  - a rejection is kInvalid with a message that names the file, and the
//    verdict does not depend on where the file is;
//  - an accepted file: a set caFile is absolute (a relative one is resolved
//    against the file's directory: the same relative name under both
//    directories), every other setting is the same wherever the file is;
//    written back as YAML (the keys of config.h) it parses to the same
//    settings (when they are UTF-8: yaml-cpp's emitter cannot write other
//    bytes);
//  - resolved with no flags and no environment, the file's settings win
//    over the defaults: at least one server, each "http(s)://authority"
//    with no path, space or trailing '/', and the list written back
//    (comma-joined) parses to itself; a token without whitespace; the
//    file's caFile and insecureSkipTlsVerify; a failure is kInvalid and
//    names the file; a --server flag beats the file;
//  - ParseServerList on the raw input: the same server invariants, or
//    kInvalid with a message.
// Built by kmx_fuzz (kmosixctl_config_fuzz, kmosixctl_config_fuzz_regress;
// seeds in corpus/config).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kmosixctl/config.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::Code;
using kmosix::Status;
using kmosix::StatusOr;
using kmosix::ctl::ConfigFlags;
using kmosix::ctl::FileConfig;
using kmosix::ctl::ParseConfigFile;
using kmosix::ctl::ParseServerList;
using kmosix::ctl::ResolveConfig;

constexpr char kDirA[] = "/home/kmx/.config/kmosix/";
constexpr char kDirB[] = "/run/kmosix-cluster/";

template <typename Fn>
auto NoThrow(const char* call, std::string_view input, Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    KMX_FUZZ_CHECK(false, std::string(call) + " threw: " + e.what(), input);
  } catch (...) {
    KMX_FUZZ_CHECK(false, std::string(call) + " threw", input);
  }
  std::abort();  // not reached
}

void CheckInvalid(const char* call, const Status& s, std::string_view input) {
  KMX_FUZZ_CHECK(s.code() == Code::kInvalid, std::string(call) + " failed with " + s.ToString(),
                 input);
  KMX_FUZZ_CHECK(!s.message().empty(), std::string(call) + " failed with an empty message", input);
}

bool StartsWith(const std::string& s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// Invariants of an accepted server list; "" or what is wrong.
std::string BadServers(const std::vector<std::string>& servers) {
  if (servers.empty()) return "no server";
  for (const std::string& url : servers) {
    const size_t host_at = StartsWith(url, "https://") ? 8 : StartsWith(url, "http://") ? 7 : 0;
    if (host_at == 0) return "server without http(s)://: " + url;
    const std::string authority = url.substr(host_at);
    if (authority.empty() || authority.front() == ':') return "server without a host: " + url;
    if (authority.find_first_of("/ ?#@,") != std::string::npos ||
        std::any_of(authority.begin(), authority.end(),
                    [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
      return "server with a path, a control or an odd character: " + url;
  }
  return "";
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

// ParseServerList's contract on `list`; the servers when accepted.
std::optional<std::vector<std::string>> CheckServerList(const std::string& list,
                                                        std::string_view in) {
  auto got = NoThrow("ParseServerList", in, [&] { return ParseServerList(list); });
  if (!got.ok()) {
    CheckInvalid("ParseServerList", got.status(), in);
    return std::nullopt;
  }
  std::string bad = BadServers(*got);
  KMX_FUZZ_CHECK(bad.empty(), "ParseServerList accepted " + bad, in);
  auto again = ParseServerList(Join(*got));
  KMX_FUZZ_CHECK(again.ok() && *again == *got, "server list round trip failed: " + Join(*got), in);
  return *got;
}

bool Equal(const FileConfig& a, const FileConfig& b) {
  return a.server == b.server && a.token == b.token && a.ca_file == b.ca_file &&
         a.insecure_skip_tls_verify == b.insecure_skip_tls_verify;
}

// YAML is Unicode text: yaml-cpp's emitter writes a string that is not
// UTF-8 with U+FFFD in place of the bad bytes, so only UTF-8 settings can
// round-trip (the parser passes other bytes through).
bool Utf8(const std::optional<std::string>& s) {
  if (!s) return true;
  try {
    (void)nlohmann::json(*s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// A string value as a user would write it: plain where yaml-cpp may, but
// double-quoted (with escapes) when it holds a carriage return. yaml-cpp's
// emitter writes a CR into a plain scalar, yet a reader takes a CR before
// the line feed ending the line as part of that line break (the value "a\r"
// written "server: a\r" then a newline reads back as "a"; found by this
// target, corpus/config/roundtrip-trailing-cr).
void WriteString(YAML::Emitter& out, const std::string& s) {
  if (s.find('\r') != std::string::npos) out << YAML::DoubleQuoted;
  out << s;
}

// The config file as a user would write it.
std::string ToYaml(const FileConfig& fc) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  if (fc.server) WriteString(out << YAML::Key << "server" << YAML::Value, *fc.server);
  if (fc.token) WriteString(out << YAML::Key << "token" << YAML::Value, *fc.token);
  if (fc.ca_file) WriteString(out << YAML::Key << "caFile" << YAML::Value, *fc.ca_file);
  if (fc.insecure_skip_tls_verify) {
    out << YAML::Key << "insecureSkipTlsVerify" << YAML::Value << *fc.insecure_skip_tls_verify;
  }
  out << YAML::EndMap;
  return out.c_str();
}

void CheckResolved(const FileConfig& fc, const std::string& path, std::string_view in) {
  auto rc = NoThrow("ResolveConfig", in, [&] { return ResolveConfig({}, {}, fc, path); });
  if (!rc.ok()) {
    CheckInvalid("ResolveConfig", rc.status(), in);
    KMX_FUZZ_CHECK(rc.status().message().find(path) != std::string::npos,
                   "ResolveConfig does not name the file: " + rc.status().ToString(), in);
  } else {
    std::string bad = BadServers(rc->servers);
    KMX_FUZZ_CHECK(bad.empty(), "ResolveConfig accepted " + bad, in);
    auto list = CheckServerList(fc.server.value_or(kmosix::ctl::kDefaultServer), in);
    KMX_FUZZ_CHECK(list && rc->servers == *list, "resolved servers are not the file's", in);
    KMX_FUZZ_CHECK(rc->token.find_first_of(" \t\r\n") == std::string::npos,
                   "a token with whitespace: " + rc->token, in);
    KMX_FUZZ_CHECK(rc->ca_file == fc.ca_file.value_or(""), "caFile lost: " + rc->ca_file, in);
    KMX_FUZZ_CHECK(rc->insecure_skip_tls_verify == fc.insecure_skip_tls_verify.value_or(false),
                   std::string("insecureSkipTlsVerify lost"), in);
    KMX_FUZZ_CHECK(rc->config_path == path, "config path " + rc->config_path, in);
    if (fc.server) {
      KMX_FUZZ_CHECK(rc->server_source == "config " + path, "server from " + rc->server_source, in);
    }
  }
  // A flag beats whatever the file says about the server.
  ConfigFlags flags;
  flags.server = "https://flag.example:7800";
  auto flagged = NoThrow("ResolveConfig", in, [&] { return ResolveConfig(flags, {}, fc, path); });
  if (flagged.ok()) {
    KMX_FUZZ_CHECK(flagged->servers == std::vector<std::string>{*flags.server} &&
                       flagged->server_source == "--server",
                   "--server did not win over the file", in);
  } else {
    CheckInvalid("ResolveConfig", flagged.status(), in);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::string path_a = std::string(kDirA) + "config.yaml";
  const std::string path_b = std::string(kDirB) + "kmosixctl.yaml";
  auto a = NoThrow("ParseConfigFile", in, [&] { return ParseConfigFile(in, path_a); });
  auto b = NoThrow("ParseConfigFile", in, [&] { return ParseConfigFile(in, path_b); });
  KMX_FUZZ_CHECK(a.ok() == b.ok(), "the verdict depends on where the file is", in);
  (void)CheckServerList(std::string(in), in);
  if (!a.ok()) {
    CheckInvalid("ParseConfigFile", a.status(), in);
    CheckInvalid("ParseConfigFile", b.status(), in);
    KMX_FUZZ_CHECK(StartsWith(a.status().message(), "config file " + path_a),
                   "the rejection does not name the file: " + a.status().message(), in);
    return 0;
  }
  // Only caFile depends on the file's place, and only when relative.
  KMX_FUZZ_CHECK(a->server == b->server && a->token == b->token &&
                     a->insecure_skip_tls_verify == b->insecure_skip_tls_verify,
                 std::string("settings depend on where the file is"), in);
  KMX_FUZZ_CHECK(a->ca_file.has_value() == b->ca_file.has_value(),
                 std::string("caFile set in one place only"), in);
  if (a->ca_file && !a->ca_file->empty()) {
    KMX_FUZZ_CHECK(a->ca_file->front() == '/' && b->ca_file->front() == '/',
                   "caFile not absolute: " + *a->ca_file, in);
    if (*a->ca_file != *b->ca_file) {
      KMX_FUZZ_CHECK(
          StartsWith(*a->ca_file, kDirA) && StartsWith(*b->ca_file, kDirB) &&
              a->ca_file->substr(sizeof(kDirA) - 1) == b->ca_file->substr(sizeof(kDirB) - 1),
          "a relative caFile resolved elsewhere: " + *a->ca_file + " / " + *b->ca_file, in);
    }
  } else if (a->ca_file) {
    KMX_FUZZ_CHECK(b->ca_file->empty(), std::string("an empty caFile resolved"), in);
  }
  // Written back as YAML, read back the same.
  if (Utf8(a->server) && Utf8(a->token) && Utf8(a->ca_file)) {
    const std::string yaml = NoThrow("YAML::Emitter", in, [&] { return ToYaml(*a); });
    auto again = NoThrow("ParseConfigFile", in, [&] { return ParseConfigFile(yaml, path_a); });
    KMX_FUZZ_CHECK(
        again.ok() && Equal(*a, *again),
        "config round trip failed: " + yaml +
            (again.ok() ? std::string(" (another value)") : " " + again.status().ToString()),
        in);
  }
  CheckResolved(*a, path_a, in);
  return 0;
}
