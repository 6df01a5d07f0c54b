#include "transport_http/http_transport.h"

#include <httplib.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "kmosix/spec_json.h"
#include "kmosix/transfer_stream.h"
#include "transport_http/data_channel.h"

namespace kmosix {
namespace {

using nlohmann::json;

constexpr char kJson[] = "application/json";

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

// A short, printable excerpt of a peer's body for error messages.
std::string Excerpt(const std::string& body) {
  std::string out;
  for (char c : body.substr(0, 120)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (body.size() > 120) out += "...";
  return out;
}

void SetTimeout(httplib::Client& cli, std::chrono::milliseconds connect,
                std::chrono::milliseconds read, std::chrono::milliseconds write) {
  auto split = [](std::chrono::milliseconds d) {
    return std::pair<time_t, time_t>(d.count() / 1000, (d.count() % 1000) * 1000);
  };
  auto [cs, cu] = split(connect);
  auto [rs, ru] = split(read);
  auto [ws, wu] = split(write);
  cli.set_connection_timeout(cs, cu);
  cli.set_read_timeout(rs, ru);
  cli.set_write_timeout(ws, wu);
}

// One request's client. Targets must be http(s)://HOST:PORT[/].
StatusOr<std::unique_ptr<httplib::Client>> MakeClient(const std::string& target,
                                                      const HttpTransportOptions& o,
                                                      std::chrono::milliseconds read_timeout) {
  const bool https = target.rfind("https://", 0) == 0;
  if (!https && target.rfind("http://", 0) != 0) {
    return InvalidError("target \"" + target + "\" is not an http:// URL");
  }
  if (o.tls.Complete() && !https)
    return InvalidError("target \"" + target +
                        "\" is plain http://: this agent speaks only TLS to its peers");
  if (https && !o.tls.Complete())
    return InvalidError("target \"" + target + "\" is https:// but this agent has no TLS identity");
  std::string base = target;
  while (!base.empty() && base.back() == '/') base.pop_back();
  auto cli = https ? std::make_unique<httplib::Client>(base, o.tls.cert, o.tls.key)
                   : std::make_unique<httplib::Client>(base);
  if (!cli->is_valid()) return InvalidError("target \"" + target + "\" is not a valid URL");
  if (https) {
    cli->set_ca_cert_path(o.tls.ca.c_str());
    cli->enable_server_certificate_verification(true);
  }
  SetTimeout(*cli, o.connect_timeout, read_timeout, o.write_timeout);
  cli->set_keep_alive(false);
  return cli;
}

// "http://host:port/" -> "host" (brackets of an IPv6 literal removed).
StatusOr<std::string> HostOf(const std::string& target) {
  auto scheme = target.find("://");
  if (scheme == std::string::npos) return InvalidError("target \"" + target + "\" has no scheme");
  std::string rest = target.substr(scheme + 3);
  rest = rest.substr(0, rest.find('/'));
  if (!rest.empty() && rest.front() == '[') {
    auto close = rest.find(']');
    if (close == std::string::npos) return InvalidError("target \"" + target + "\" is malformed");
    return rest.substr(1, close - 1);
  }
  return rest.substr(0, rest.find(':'));
}

Status TransportError(const std::string& what, const std::string& target, httplib::Error err) {
  return RetryError(what + " " + target + ": " + httplib::to_string(err));
}

std::string MigrationPath(const std::string& id, std::string_view suffix) {
  return "/v1/peer/migrations/" + id + std::string(suffix);
}

Status CheckId(const std::string& id) { return ValidateName(id).Annotate("migration id"); }

// Parses a 2xx answer as a JSON object.
StatusOr<json> SuccessJson(const httplib::Result& res, const std::string& what) {
  json j = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return FailedError(what + ": peer answered HTTP " + std::to_string(res->status) +
                       " without a JSON object: " + Excerpt(res->body));
  }
  return j;
}

// The JSON object of a successful answer, or the Status of a failed one.
StatusOr<json> Answer(const httplib::Result& res, const std::string& what,
                      const std::string& target) {
  if (!res) return TransportError(what, target, res.error());
  if (res->status < 200 || res->status > 299) {
    return StatusFromHttpError(res->status, res->body).Annotate(what);
  }
  return SuccessJson(res, what);
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

}  // namespace

namespace {

// The Status of a {"code","message"} error body with a known code.
std::optional<Status> StatusFromErrorJson(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto code = j.find("code");
  if (code == j.end() || !code->is_string()) return std::nullopt;
  std::optional<Code> c = CodeFromName(code->get<std::string>());
  if (!c) return std::nullopt;
  auto message = j.find("message");
  std::string m = (message != j.end() && message->is_string()) ? message->get<std::string>()
                                                               : std::string("(no message)");
  return Status(*c, m);
}

}  // namespace

Status StatusFromHttpError(int http_status, const std::string& body) {
  if (std::optional<Status> s = StatusFromErrorJson(body)) return *s;
  std::string m = "peer answered HTTP " + std::to_string(http_status);
  if (!body.empty()) m += ": " + Excerpt(body);
  return Status(CodeFromHttpStatus(http_status), m);
}

HttpTransport::HttpTransport(HttpTransportOptions options, Clock* clock)
    : options_(options),
      owned_clock_(clock == nullptr ? std::make_unique<SystemClock>() : nullptr),
      clock_(clock == nullptr ? owned_clock_.get() : clock) {
  if (options_.chunk_size == 0) options_.chunk_size = 1 << 20;
}

HttpTransport::~HttpTransport() = default;

StatusOr<PeerInfo> HttpTransport::Hello(const std::string& target) {
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.read_timeout));
  httplib::Result res = cli->Get("/v1/peer/info");
  if (!res) return TransportError("hello", target, res.error());
  const std::string not_agent = target + " is not a kmosix agent: ";
  if (res->status < 200 || res->status > 299) {
    // An agent answers errors as JSON; anything else is not an agent.
    if (std::optional<Status> s = StatusFromErrorJson(res->body)) {
      return s->Annotate("hello " + target);
    }
    return FailedError(not_agent + "GET /v1/peer/info answered HTTP " +
                       std::to_string(res->status));
  }
  json j = json::parse(res->body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return FailedError(not_agent + "GET /v1/peer/info answered " + Excerpt(res->body));
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
  if (auto port = j.find("dataPort");
      port != j.end() && port->is_number_integer() && *port > 0 && *port < 65536) {
    std::lock_guard lock(mu_);
    data_ports_[target] = {port->get<int>(), node->get<std::string>()};
  }
  return PeerInfo{node->get<std::string>(), version->get<std::string>()};
}

Status HttpTransport::Prepare(const std::string& target, const MigrationOffer& offer) {
  KMX_RETURN_IF_ERROR(CheckId(offer.id));
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.read_timeout));
  httplib::Result res =
      cli->Post(MigrationPath(offer.id, "/prepare"), MigrationOfferToJson(offer).dump(), kJson);
  KMX_ASSIGN_OR_RETURN(json j, Answer(res, "prepare", target));
  (void)j;
  return Status::Ok();
}

StatusOr<TransferStats> HttpTransport::Send(const std::string& target, const std::string& id,
                                            const std::vector<Section>& sections) {
  KMX_RETURN_IF_ERROR(CheckId(id));
  KMX_ASSIGN_OR_RETURN(std::unique_ptr<StreamEncoder> enc, StreamEncoder::Create(sections));
  const Clock::TimePoint start = clock_->Now();
  DataPeer data;
  if (options_.use_data_channel) {
    std::lock_guard lock(mu_);
    if (auto it = data_ports_.find(target); it != data_ports_.end()) data = it->second;
  }
  StatusOr<TransferStats> landed =
      data.port > 0 ? SendOverDataChannel(target, data, id, *enc) : SendOverHttp(target, id, *enc);
  if (!landed.ok()) return landed.status().Annotate("stream to " + target);
  const TransferStats sent = enc->stats();
  if (!enc->done() || landed->bytes != sent.bytes || landed->files != sent.files) {
    return FailedError("stream to " + target + ": peer landed " + std::to_string(landed->files) +
                       " files and " + std::to_string(landed->bytes) + " bytes, " +
                       std::to_string(sent.files) + " and " + std::to_string(sent.bytes) +
                       " were sent");
  }
  landed->seconds = Seconds(clock_->Now() - start);
  return landed;
}

StatusOr<TransferStats> HttpTransport::SendOverDataChannel(const std::string& target,
                                                           const DataPeer& peer,
                                                           const std::string& id,
                                                           StreamEncoder& enc) {
  KMX_ASSIGN_OR_RETURN(std::string host, HostOf(target));
  DataChannelOptions dc;
  dc.connect_timeout = options_.connect_timeout;
  dc.io_timeout = options_.read_timeout;
  // The same identity as the peer routes; the server must be the node that
  // answered /v1/peer/info at that address.
  dc.tls = options_.tls;
  if (options_.cut_after) dc.cut_after_bytes = options_.cut_after();
  if (options_.tls.Complete()) {
    dc.expected_server_name = peer.node;
    dc.sessions = &data_sessions_;
  }
  return SendStream(host, peer.port, id, enc, dc);
}

StatusOr<TransferStats> HttpTransport::SendOverHttp(const std::string& target,
                                                    const std::string& id, StreamEncoder& enc) {
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.read_timeout));
  std::vector<char> buf(options_.chunk_size);
  Status local;  // the encoder's error, if it failed
  // A stream whose length is known up front is sent with a Content-Length
  // (httplib then hands each piece to the socket without copying it), one
  // still being produced chunked. The server accepts either framing.
  auto post = [&]() -> httplib::Result {
    if (enc.sized()) {
      return cli->Post(
          MigrationPath(id, "/stream"), httplib::Headers{}, static_cast<size_t>(enc.stream_size()),
          [&](size_t /*offset*/, size_t length, httplib::DataSink& sink) {
            StatusOr<size_t> n = enc.Read(buf.data(), std::min(buf.size(), length));
            if (!n.ok()) {
              local = n.status();
              return false;  // cancels the request: the peer sees a cut stream
            }
            if (*n == 0) {
              local = FailedError("stream ended before its announced length");
              return false;
            }
            return sink.write(buf.data(), *n);
          },
          "application/x-kmosix-stream");
    }
    return cli->Post(
        MigrationPath(id, "/stream"), httplib::Headers{},
        [&](size_t /*offset*/, httplib::DataSink& sink) {
          StatusOr<size_t> n = enc.Read(buf.data(), buf.size());
          if (!n.ok()) {
            local = n.status();
            return false;
          }
          if (*n == 0) {
            sink.done();
            return true;
          }
          return sink.write(buf.data(), *n);
        },
        "application/x-kmosix-stream");
  };
  httplib::Result res = post();
  if (!local.ok()) return local;
  KMX_ASSIGN_OR_RETURN(json j, Answer(res, "stream", target));
  TransferStats stats;
  KMX_ASSIGN_OR_RETURN(stats.bytes, UintField(j, "bytes", "stream"));
  KMX_ASSIGN_OR_RETURN(stats.files, UintField(j, "files", "stream"));
  return stats;
}

StatusOr<RestoreReport> HttpTransport::Restore(const std::string& target, const std::string& id) {
  KMX_RETURN_IF_ERROR(CheckId(id));
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.restore_timeout));
  httplib::Result res = cli->Post(MigrationPath(id, "/restore"), "{}", kJson);
  KMX_ASSIGN_OR_RETURN(json j, Answer(res, "restore", target));
  KMX_ASSIGN_OR_RETURN(uint64_t pid, UintField(j, "pid", "restore"));
  KMX_ASSIGN_OR_RETURN(double seconds, NumberField(j, "seconds", "restore"));
  if (pid > UINT32_MAX) return FailedError("restore: pid out of range");
  return RestoreReport{static_cast<uint32_t>(pid), seconds};
}

StatusOr<TargetPhase> HttpTransport::PostForPhase(const std::string& target, const std::string& id,
                                                  const std::string& verb) {
  KMX_RETURN_IF_ERROR(CheckId(id));
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.read_timeout));
  httplib::Result res = cli->Post(MigrationPath(id, "/" + verb), "{}", kJson);
  KMX_ASSIGN_OR_RETURN(json j, Answer(res, verb, target));
  return PhaseOf(j, verb);
}

StatusOr<TargetPhase> HttpTransport::Commit(const std::string& target, const std::string& id) {
  return PostForPhase(target, id, "commit");
}

StatusOr<TargetPhase> HttpTransport::Abort(const std::string& target, const std::string& id) {
  return PostForPhase(target, id, "abort");
}

StatusOr<TargetPhase> HttpTransport::Query(const std::string& target, const std::string& id) {
  KMX_RETURN_IF_ERROR(CheckId(id));
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.read_timeout));
  httplib::Result res = cli->Get(MigrationPath(id, ""));
  if (res && res->status == 404) {
    std::optional<Status> s = StatusFromErrorJson(res->body);
    if (s && s->code() == Code::kNotFound) return TargetPhase::kUnknown;
  }
  KMX_ASSIGN_OR_RETURN(json j, Answer(res, "query", target));
  return PhaseOf(j, "query");
}

}  // namespace kmosix
