// Small helpers shared by the REST servers (agent and controller): JSON
// replies, the {"code","message"} error body, body size limits, error and
// exception handlers that keep every answer JSON, and "host:port" parsing.
// Thread-safety: stateless functions.
#pragma once

#include <httplib.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "kmosix/spec_json.h"
#include "kmosix/status.h"
#include "tls/tls.h"

namespace kmosix::rest {

void Reply(httplib::Response& res, int status, const nlohmann::json& body);
void ReplyError(httplib::Response& res, const Status& s);

template <typename T>
void ReplyOr(httplib::Response& res, const StatusOr<T>& v, int ok_status = 200) {
  if (v.ok()) {
    Reply(res, ok_status, *v);
  } else {
    ReplyError(res, v.status());
  }
}

// Answers 413 with a JSON error and returns true when the body exceeds `max`.
bool BodyTooLarge(const httplib::Request& req, httplib::Response& res, size_t max);

// 404/405/413/400 without a body and uncaught exceptions become JSON errors.
void InstallJsonErrorHandlers(httplib::Server& server);

// "host:port" with a port in 1..65535; false if malformed.
bool SplitHostPort(const std::string& s, std::string& host, int& port);

// A client of `url` ("http(s)://host:port", trailing slashes dropped) that
// speaks as `identity`. https:// needs a complete identity (its certificate
// and key are presented; the server's certificate must chain to identity.ca
// and name the host); a complete identity refuses plain http:// (never a
// downgrade). kInvalid otherwise, naming `who` ("this agent", ...).
StatusOr<std::unique_ptr<httplib::Client>> MakeClient(const std::string& url,
                                                      const tls::Files& identity,
                                                      const std::string& who);

}  // namespace kmosix::rest
