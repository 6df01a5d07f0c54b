#include "transport_http/peer_replies.h"

#include "transport_http/http_transport.h"

namespace kmosix {
namespace peer_reply {

using nlohmann::json;

std::optional<Code> CodeFromName(std::string_view name) {
  for (Code c : {Code::kRetry, Code::kConflict, Code::kInvalid, Code::kNotFound, Code::kFailed,
                 Code::kPermissionDenied}) {
    if (CodeName(c) == name) return c;
  }
  return std::nullopt;
}

Code CodeFromHttpStatus(int status) {
  switch (status) {
    case 400:
    case 413:
    case 422:
      return Code::kInvalid;
    case 401:
    case 403:
      return Code::kPermissionDenied;
    case 404:
      return Code::kNotFound;
    case 409:
      return Code::kConflict;
    case 408:
    case 429:
    case 502:
    case 503:
    case 504:
      return Code::kRetry;
    default:
      return Code::kFailed;
  }
}

std::string Excerpt(const std::string& body) {
  std::string out;
  for (char c : body.substr(0, 120)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (body.size() > 120) out += "...";
  return out;
}

namespace {

// The message of an error object: a non-empty string, else "(no message)"
// (an error always says something; a non-string never throws).
std::string MessageOf(const json& j) {
  auto m = j.find("message");
  if (m != j.end() && m->is_string() && !m->get_ref<const std::string&>().empty()) {
    return m->get<std::string>();
  }
  return "(no message)";
}

// Parses a 2xx answer as a JSON object.
StatusOr<json> SuccessJson(int http_status, const std::string& body, const std::string& what) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return FailedError(what + ": peer answered HTTP " + std::to_string(http_status) +
                       " without a JSON object: " + Excerpt(body));
  }
  return j;
}

}  // namespace

StatusOr<json> ReplyJson(int http_status, const std::string& body, const std::string& what) {
  if (http_status < 200 || http_status > 299) {
    return StatusFromHttpError(http_status, body).Annotate(what);
  }
  return SuccessJson(http_status, body, what);
}

StatusOr<PeerInfoReply> ParsePeerInfo(const std::string& target, int http_status,
                                      const std::string& body) {
  const std::string not_agent = target + " is not a kmosix agent: ";
  if (http_status < 200 || http_status > 299) {
    // An agent answers errors as JSON; anything else is not an agent.
    if (std::optional<Status> s = StatusFromErrorJson(body)) {
      return s->Annotate("hello " + target);
    }
    return FailedError(not_agent + "GET /v1/peer/info answered HTTP " +
                       std::to_string(http_status));
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return FailedError(not_agent + "GET /v1/peer/info answered " + Excerpt(body));
  }
  auto kind = j.find("kind");
  if (kind == j.end() || !kind->is_string() || kind->get<std::string>() != "kmosix-agent") {
    return FailedError(not_agent + "GET /v1/peer/info has no \"kind\":\"kmosix-agent\"");
  }
  auto node = j.find("node");
  auto version = j.find("version");
  if (node == j.end() || !node->is_string() || version == j.end() || !version->is_string()) {
    return FailedError(not_agent + "GET /v1/peer/info lacks node or version");
  }
  PeerInfoReply reply;
  if (auto port = j.find("dataPort");
      port != j.end() && port->is_number_integer() && *port > 0 && *port < 65536) {
    reply.data_port = port->get<int>();
  }
  reply.info = PeerInfo{node->get<std::string>(), version->get<std::string>()};
  return reply;
}

StatusOr<TargetPhase> PhaseOf(const json& j, const std::string& what) {
  auto it = j.find("phase");
  if (it == j.end() || !it->is_string()) return FailedError(what + ": answer has no \"phase\"");
  std::string name = it->get<std::string>();
  TargetPhase p = ParseTargetPhase(name);
  if (p == TargetPhase::kUnknown && name != TargetPhaseName(TargetPhase::kUnknown)) {
    return FailedError(what + ": unknown phase \"" + Excerpt(name) + "\"");
  }
  return p;
}

StatusOr<uint64_t> UintField(const json& j, const char* key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) {
    if (it != j.end() && it->is_number_integer() && it->get<int64_t>() >= 0) {
      return it->get<uint64_t>();
    }
    return FailedError(what + ": answer has no unsigned \"" + key + "\"");
  }
  return it->get<uint64_t>();
}

StatusOr<double> NumberField(const json& j, const char* key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) {
    return FailedError(what + ": answer has no number \"" + key + "\"");
  }
  return it->get<double>();
}

StatusOr<TransferStats> ParseStreamAnswer(const json& j) {
  TransferStats stats;
  KMX_ASSIGN_OR_RETURN(stats.bytes, UintField(j, "bytes", "stream"));
  KMX_ASSIGN_OR_RETURN(stats.files, UintField(j, "files", "stream"));
  return stats;
}

StatusOr<RestoreReport> ParseRestoreReport(const json& j) {
  KMX_ASSIGN_OR_RETURN(uint64_t pid, UintField(j, "pid", "restore"));
  KMX_ASSIGN_OR_RETURN(double seconds, NumberField(j, "seconds", "restore"));
  if (pid > UINT32_MAX) return FailedError("restore: pid out of range");
  return RestoreReport{static_cast<uint32_t>(pid), seconds};
}

Status ParseReady(const std::string& line) {
  json j = json::parse(line, nullptr, false);
  if (j.is_object() && j.size() == 1 && j.contains("ready") && j["ready"].is_boolean() &&
      j["ready"].get<bool>()) {
    return Status::Ok();
  }
  if (j.is_object() && j.contains("code")) {
    StatusOr<TransferStats> error = ParseVerdict(line);
    if (!error.ok()) return error.status();
  }
  return FailedError("data channel: expected the target's ready line, got \"" + Excerpt(line) +
                     "\"");
}

StatusOr<TransferStats> ParseVerdict(const std::string& line) {
  json j = json::parse(line, nullptr, false);
  if (!j.is_object()) return FailedError("data channel: malformed answer from the target");
  if (j.contains("code") && j["code"].is_string()) {
    for (Code c : {Code::kRetry, Code::kConflict, Code::kInvalid, Code::kNotFound, Code::kFailed,
                   Code::kPermissionDenied}) {
      if (CodeName(c) == j["code"].get<std::string>()) {
        return Status(c, "target: " + MessageOf(j));
      }
    }
    return FailedError("target: " + MessageOf(j));
  }
  if (!j.contains("bytes") || !j["bytes"].is_number_unsigned() || !j.contains("files") ||
      !j["files"].is_number_unsigned()) {
    return FailedError("data channel: answer lacks bytes/files");
  }
  TransferStats s;
  s.bytes = j["bytes"].get<uint64_t>();
  s.files = j["files"].get<uint64_t>();
  return s;
}

// The Status of a {"code","message"} error body with a known code.
std::optional<Status> StatusFromErrorJson(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto code = j.find("code");
  if (code == j.end() || !code->is_string()) return std::nullopt;
  std::optional<Code> c = CodeFromName(code->get<std::string>());
  if (!c) return std::nullopt;
  return Status(*c, MessageOf(j));
}

}  // namespace peer_reply

Status StatusFromHttpError(int http_status, const std::string& body) {
  using peer_reply::Excerpt;
  if (std::optional<Status> s = peer_reply::StatusFromErrorJson(body)) return *s;
  std::string m = "peer answered HTTP " + std::to_string(http_status);
  if (!body.empty()) m += ": " + Excerpt(body);
  return Status(peer_reply::CodeFromHttpStatus(http_status), m);
}

}  // namespace kmosix
