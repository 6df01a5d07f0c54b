#include "transport_http/peer_server.h"

#include <spdlog/spdlog.h>

#include <exception>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "kmosix/intake_limits.h"
#include "kmosix/json_text.h"
#include "kmosix/spec_json.h"
#include "transport_http/stream_receiver.h"

namespace kmosix {
namespace {

using nlohmann::json;

constexpr char kJson[] = "application/json";
constexpr char kIdRoute[] = "/v1/peer/migrations/([^/]+)";

void Reply(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(DumpJson(body), kJson);
}

void ReplyError(httplib::Response& res, const Status& s) {
  // A busy target (intake limits) says when to ask again.
  if (auto after = RetryAfterOf(s)) res.set_header("Retry-After", std::to_string(after->count()));
  Reply(res, ErrorJson(s), HttpStatus(s.code()));
}

// Runs a handler body; anything it throws becomes a kFailed JSON answer.
void Guard(httplib::Response& res, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    ReplyError(res, FailedError(std::string("internal error: ") + e.what()));
  } catch (...) {
    ReplyError(res, FailedError("internal error"));
  }
}

StatusOr<std::string> IdOf(const httplib::Request& req) {
  if (req.matches.size() < 2) return InvalidError("missing migration id");
  std::string id = req.matches[1];
  KMX_RETURN_IF_ERROR(ValidateName(id).Annotate("migration id"));
  return id;
}

json PhaseJson(TargetPhase p) { return {{"phase", std::string(TargetPhaseName(p))}}; }

// Reads and drops the rest of a request body (so that the client, still
// sending, gets the answer), up to `limit` bytes.
void Drain(const httplib::ContentReader& reader, uint64_t limit) {
  uint64_t total = 0;
  reader([&](const char*, size_t n) {
    total += n;
    return total <= limit;
  });
}

struct Shared {
  MigrationTarget& target;
  PeerServerOptions options;
  std::unique_ptr<Clock> owned_clock;
  Clock* clock;
};

void HandleStream(Shared& sh, const httplib::Request& req, httplib::Response& res,
                  const httplib::ContentReader& reader) {
  StatusOr<std::string> id = IdOf(req);
  if (!id.ok()) {
    Drain(reader, sh.options.max_drain_bytes);
    return ReplyError(res, id.status());
  }
  DecoderOptions decoder = sh.options.decoder;
  // Over TLS every byte is authenticated: a stream may skip file digests.
  decoder.accept_undigested = req.ssl != nullptr;
  StreamReceiver receiver(sh.target, *sh.clock, decoder);
  if (Status s = receiver.Begin(*id); !s.ok()) {
    Drain(reader, sh.options.max_drain_bytes);
    return ReplyError(res, s);
  }
  uint64_t dropped = 0;
  bool read_ok = reader([&](const char* data, size_t n) {
    if (!receiver.status().ok()) {  // failed early: drain the rest
      dropped += n;
      return dropped <= sh.options.max_drain_bytes;
    }
    (void)receiver.Feed(data, n);
    return true;
  });
  StatusOr<TransferStats> stats = receiver.End(!read_ok);
  if (!stats.ok()) return ReplyError(res, stats.status());
  Reply(res, {{"bytes", stats->bytes}, {"files", stats->files}, {"seconds", stats->seconds}});
}

}  // namespace

void RegisterPeerRoutes(httplib::Server& server, MigrationTarget& target,
                        PeerServerOptions options) {
  auto sh = std::make_shared<Shared>(Shared{target, options, nullptr, options.clock});
  if (sh->clock == nullptr) {
    sh->owned_clock = std::make_unique<SystemClock>();
    sh->clock = sh->owned_clock.get();
  }
  const std::string id_route = kIdRoute;

  server.Get("/v1/peer/info", [sh](const httplib::Request&, httplib::Response& res) {
    Guard(res, [&] {
      PeerInfo info = sh->target.Info();
      json j = {{"kind", "kmosix-agent"}, {"node", info.node}, {"version", info.version}};
      if (sh->options.data_port > 0) j["dataPort"] = sh->options.data_port;
      Reply(res, j);
    });
  });

  server.Post(id_route + "/prepare", [sh](const httplib::Request& req, httplib::Response& res) {
    Guard(res, [&] {
      StatusOr<std::string> id = IdOf(req);
      if (!id.ok()) return ReplyError(res, id.status());
      StatusOr<MigrationOffer> offer = ParseMigrationOffer(req.body);
      if (!offer.ok()) return ReplyError(res, offer.status());
      if (offer->id != *id) {
        return ReplyError(res, InvalidError("offer id \"" + offer->id +
                                            "\" does not match the URL's \"" + *id + "\""));
      }
      Status s = sh->target.Prepare(*offer);
      if (!s.ok()) return ReplyError(res, s);
      Reply(res, {{"id", *id}});
    });
  });

  server.Post(id_route + "/stream", [sh](const httplib::Request& req, httplib::Response& res,
                                         const httplib::ContentReader& reader) {
    Guard(res, [&] { HandleStream(*sh, req, res, reader); });
  });

  server.Post(id_route + "/restore", [sh](const httplib::Request& req, httplib::Response& res) {
    Guard(res, [&] {
      StatusOr<std::string> id = IdOf(req);
      if (!id.ok()) return ReplyError(res, id.status());
      StatusOr<RestoreReport> r = sh->target.Restore(*id);
      if (!r.ok()) return ReplyError(res, r.status());
      Reply(res, {{"pid", r->pid}, {"seconds", r->seconds}});
    });
  });

  using PhaseCall = StatusOr<TargetPhase> (MigrationTarget::*)(const std::string&);
  auto phase_route = [&](const std::string& suffix, PhaseCall call, bool post) {
    auto handler = [sh, call](const httplib::Request& req, httplib::Response& res) {
      Guard(res, [&] {
        StatusOr<std::string> id = IdOf(req);
        if (!id.ok()) return ReplyError(res, id.status());
        StatusOr<TargetPhase> p = (sh->target.*call)(*id);
        if (!p.ok()) return ReplyError(res, p.status());
        Reply(res, PhaseJson(*p));
      });
    };
    if (post) {
      server.Post(id_route + suffix, handler);
    } else {
      server.Get(id_route + suffix, handler);
    }
  };
  phase_route("/commit", &MigrationTarget::Commit, true);
  phase_route("/abort", &MigrationTarget::Abort, true);
  phase_route("/?", &MigrationTarget::Query, false);
}

}  // namespace kmosix
