#include "transport_http/http_transport.h"

#include <httplib.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "kmosix/spec_json.h"
#include "kmosix/transfer_stream.h"
#include "transport_http/data_channel.h"
#include "transport_http/peer_replies.h"
#include "transport_http/rest.h"

namespace kmosix {
namespace {

using nlohmann::json;
using peer_reply::ParsePeerInfo;
using peer_reply::ParseRestoreReport;
using peer_reply::ParseStreamAnswer;
using peer_reply::PeerInfoReply;
using peer_reply::PhaseOf;
using peer_reply::ReplyJson;
using peer_reply::StatusFromErrorJson;

constexpr char kJson[] = "application/json";

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
  KMX_ASSIGN_OR_RETURN(auto cli, rest::MakeClient(target, o.tls, "this agent"));
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

// The JSON object of a successful answer, or the Status of a failed one.
StatusOr<json> Answer(const httplib::Result& res, const std::string& what,
                      const std::string& target) {
  if (!res) return TransportError(what, target, res.error());
  return ReplyJson(res->status, res->body, what);
}

}  // namespace

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
  KMX_ASSIGN_OR_RETURN(PeerInfoReply reply, ParsePeerInfo(target, res->status, res->body));
  if (reply.data_port > 0) {
    std::lock_guard lock(mu_);
    data_ports_[target] = {reply.data_port, reply.info.node};
  }
  return reply.info;
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
  // Both carriers are TLS when an identity is set (an http:// peer is then
  // refused): the TLS records authenticate the stream, so it skips the
  // per-file SHA-256 (transfer_stream.h, kNoContentDigests).
  EncoderOptions encoding;
  encoding.content_digests = !options_.tls.Complete();
  KMX_ASSIGN_OR_RETURN(std::unique_ptr<StreamEncoder> enc,
                       StreamEncoder::Create(sections, encoding));
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
  dc.on_written = options_.on_stream_written;
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
  return ParseStreamAnswer(j);
}

StatusOr<RestoreReport> HttpTransport::Restore(const std::string& target, const std::string& id) {
  KMX_RETURN_IF_ERROR(CheckId(id));
  KMX_ASSIGN_OR_RETURN(auto cli, MakeClient(target, options_, options_.restore_timeout));
  httplib::Result res = cli->Post(MigrationPath(id, "/restore"), "{}", kJson);
  KMX_ASSIGN_OR_RETURN(json j, Answer(res, "restore", target));
  return ParseRestoreReport(j);
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
