// Who may call what on the agent's HTTP listener (issue 11, "the agent's own
// REST API needs authentication" and "an agent accepts a migration's
// prepare, stream, restore, commit or abort only from the node that etcd
// names as that migration's source").
//
// Callers are identified by their TLS client certificate (tls::Identity: CN
// and O groups) or a bearer token (auth::Authenticator, the controller's
// token file format and roles). The rules, in order:
//   /healthz                         anyone
//   /v1/peer/info                    a node certificate (O=kmosix:nodes)
//   /v1/peer/migrations/{id}[/...]   a node certificate, and PeerAuthorizer
//                                    agrees (cluster: etcd ordered migration
//                                    {id} from that node to this one;
//                                    standalone: any node of the CA)
//   /v1/debug/...                    admin (failpoints: test agents only)
//   everything else (the REST API, /metrics)
//                                    GET/HEAD: a read-only or admin token, or
//                                    a controller or admin certificate;
//                                    other methods: an admin token or a
//                                    controller or admin certificate.
// Node certificates get nothing on the REST API: a node never reads another
// node's workloads (their env and logs).
//
// Denials are 401 (no credentials) or 403 (known caller, not allowed) with a
// JSON {"code","message"}, logged with the peer address and counted by
// `surface` (rest, peer, debug) and `reason`.
//
// Ownership: AccessControl borrows the authenticator and authorizer (either
// may be null: no tokens accepted / standalone peers). Thread-safety: Decide
// is thread-safe if the borrowed parts are (they are).
#pragma once

#include <httplib.h>

#include <functional>
#include <string>

#include "auth/tokens.h"
#include "kmosix/status.h"
#include "tls/tls.h"

namespace kmosix::agent {

// Whether `peer_node` may act on migration `id` toward this node.
// Errors: kPermissionDenied (not ordered, or not from that node), kRetry
// (the answer cannot be known now: etcd unreachable).
class PeerAuthorizer {
 public:
  virtual ~PeerAuthorizer() = default;
  virtual Status AllowPeer(const std::string& peer_node, const std::string& id) = 0;
};

struct AccessDecision {
  bool allowed = false;
  int http_status = 200;  // 401, 403, 503 when denied
  std::string code;       // "Unauthenticated", "Forbidden", "Unavailable"
  std::string message;    // why (never a token)
  std::string who;        // certificate CN or token name, "" if anonymous
  std::string surface;    // rest, peer, debug
  std::string reason;     // for the metric: no_credentials, not_a_node, ...
};

class AccessControl {
 public:
  AccessControl(auth::Authenticator* tokens, PeerAuthorizer* peers)
      : tokens_(tokens), peers_(peers) {}

  AccessDecision Decide(const std::string& method, const std::string& path,
                        const tls::Identity& cert, const std::string& authorization);

 private:
  auth::Authenticator* tokens_;
  PeerAuthorizer* peers_;
};

// Installs the access check as `server`'s pre-routing handler, after `first`
// (the body limits; may be empty), which keeps its place: a request it
// handles is answered by it. `on_denied` (may be empty) hears every denial.
void InstallAccess(
    httplib::Server& server, AccessControl& access,
    std::function<httplib::Server::HandlerResponse(const httplib::Request&, httplib::Response&)>
        first,
    std::function<void(const AccessDecision&)> on_denied);

}  // namespace kmosix::agent
