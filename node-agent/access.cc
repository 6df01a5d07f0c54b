#include "access.h"

#include <spdlog/spdlog.h>

#include <string_view>

namespace kmosix::agent {
namespace {

constexpr std::string_view kPeerMigrations = "/v1/peer/migrations/";

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

AccessDecision Allow(std::string who, std::string surface) {
  AccessDecision d;
  d.allowed = true;
  d.who = std::move(who);
  d.surface = std::move(surface);
  return d;
}

AccessDecision Deny(int status, std::string who, std::string surface, std::string reason,
                    std::string message) {
  AccessDecision d;
  d.http_status = status;
  d.code = status == 401 ? "Unauthenticated" : status == 403 ? "Forbidden" : "Unavailable";
  d.who = std::move(who);
  d.surface = std::move(surface);
  d.reason = std::move(reason);
  d.message = std::move(message);
  return d;
}

bool Trusted(const tls::Identity& cert) {
  return cert.In(tls::kGroupControllers) || cert.In(tls::kGroupAdmins);
}

}  // namespace

AccessDecision AccessControl::Decide(const std::string& method, const std::string& path,
                                     const tls::Identity& cert, const std::string& authorization) {
  if (path == "/healthz") return Allow(cert.name, "health");

  if (StartsWith(path, "/v1/peer/")) {
    if (cert.empty())
      return Deny(401, "", "peer", "no_certificate",
                  "the peer routes need a node's client certificate");
    if (!cert.In(tls::kGroupNodes))
      return Deny(403, cert.name, "peer", "not_a_node",
                  "\"" + cert.name + "\" is not a node (certificate O is not kmosix:nodes)");
    if (path == "/v1/peer/info") return Allow(cert.name, "peer");
    if (!StartsWith(path, kPeerMigrations))
      return Deny(403, cert.name, "peer", "unknown_route", "no such peer route");
    std::string_view rest = std::string_view(path).substr(kPeerMigrations.size());
    const std::string id(rest.substr(0, rest.find('/')));
    if (peers_ == nullptr) return Allow(cert.name, "peer");  // standalone: any node of the CA
    Status s = peers_->AllowPeer(cert.name, id);
    if (s.ok()) return Allow(cert.name, "peer");
    if (s.code() == Code::kRetry)
      return Deny(503, cert.name, "peer", "unknown",
                  "cannot check the migration now: " + s.message());
    return Deny(403, cert.name, "peer", "not_ordered", s.message());
  }

  const bool write = !(method == "GET" || method == "HEAD");
  const std::string surface = StartsWith(path, "/v1/debug/") ? "debug" : "rest";
  const bool admin_only = write || surface == "debug";
  if (Trusted(cert)) return Allow(cert.name, surface);
  if (!authorization.empty() && tokens_ != nullptr) {
    auth::AuthDecision t = tokens_->Authenticate(authorization, admin_only);
    if (t.allowed()) return Allow(t.name, surface);
    return Deny(t.HttpStatus(), t.name, surface,
                t.HttpStatus() == 401 ? "bad_token" : "read_only_token", t.message);
  }
  if (!cert.empty())
    return Deny(403, cert.name, surface, "node_certificate",
                "\"" + cert.name +
                    "\" may not use this API (nodes only speak the peer routes; "
                    "use a controller or admin certificate or a token)");
  return Deny(401, "", surface, "no_credentials",
              tokens_ != nullptr
                  ? "this API needs a bearer token (Authorization: Bearer TOKEN) or a client "
                    "certificate"
                  : "this API needs a controller or admin client certificate");
}

void InstallAccess(
    httplib::Server& server, AccessControl& access,
    std::function<httplib::Server::HandlerResponse(const httplib::Request&, httplib::Response&)>
        first,
    std::function<void(const AccessDecision&)> on_denied) {
  server.set_pre_routing_handler(
      [&access, first = std::move(first), on_denied = std::move(on_denied)](
          const httplib::Request& req, httplib::Response& res) {
        if (first) {
          if (first(req, res) == httplib::Server::HandlerResponse::Handled)
            return httplib::Server::HandlerResponse::Handled;
        }
        AccessDecision d = access.Decide(req.method, req.path, tls::PeerIdentity(req.ssl),
                                         req.get_header_value("Authorization"));
        if (d.allowed) return httplib::Server::HandlerResponse::Unhandled;
        spdlog::warn("denied: {} {} {} from {}:{}{} ({}/{}): {}", d.http_status, req.method,
                     req.path, req.remote_addr, req.remote_port,
                     d.who.empty() ? "" : " by " + d.who, d.surface, d.reason, d.message);
        if (on_denied) on_denied(d);
        auth::ReplyDenied(res, d.http_status, d.code, d.message);
        return httplib::Server::HandlerResponse::Handled;
      });
}

}  // namespace kmosix::agent
