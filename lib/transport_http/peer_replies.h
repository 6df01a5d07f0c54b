// Peer replies: the pure parsers of what a target agent answers its source,
// moved out of http_transport.cc and data_channel.cc so that they can be
// fuzzed (tests/lib/transport_http/peer_replies_fuzz.cc). Owns no state;
// the transports call these on the bodies they received.
//
//   GET /v1/peer/info        ParsePeerInfo {"kind":"kmosix-agent","node","version","dataPort"?} any
//   route's answer       ReplyJson           2xx: a JSON object; else the error's Status stream
//   (HTTP)            ParseStreamAnswer   {"bytes","files","seconds"} restore ParseRestoreReport
//   {"pid","seconds"} commit / abort / query   PhaseOf             {"phase"} data channel verdict
//   ParseVerdict        {"bytes","files","seconds"} or {"code","message"} error bodies
//   data channel ready  ParseReady          {"ready":true} or {"code","message"}
//   StatusFromErrorJson {"code","message"} (code: a CodeName())
// (StatusFromHttpError, declared in http_transport.h, is defined here too.)
//
// Thread-safety: stateless functions. Errors are values, never exceptions:
// kFailed for an answer that is not what the protocol says (not an agent,
// malformed JSON, a missing or mistyped field, a pid out of range), the
// peer's own code when it answered {"code","message"} with a known code,
// else a code from the HTTP status (http_transport.h). Messages quote at
// most an Excerpt of the peer's bytes.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix::peer_reply {

// The non-ok Code named by `name` (CodeName()), or nullopt ("ok" included).
std::optional<Code> CodeFromName(std::string_view name);
// The Code for an HTTP error status without a JSON error body.
Code CodeFromHttpStatus(int status);
// A short, printable excerpt of a peer's body for error messages: at most
// 120 bytes, each outside ASCII 0x20..0x7e as '?', then "..." if cut.
std::string Excerpt(const std::string& body);

// The Status of a {"code","message"} error body with a known non-ok code
// (no, an empty or a non-string message: "(no message)"); nullopt for
// anything else.
std::optional<Status> StatusFromErrorJson(const std::string& body);

// The JSON object of a 2xx answer (else kFailed), or the Status of an error
// answer (StatusFromHttpError) annotated with `what`.
StatusOr<nlohmann::json> ReplyJson(int http_status, const std::string& body,
                                   const std::string& what);

// What GET /v1/peer/info answered at `target`.
struct PeerInfoReply {
  PeerInfo info;
  int data_port = 0;  // 1..65535 as announced; 0: none (or not a valid port)
};
StatusOr<PeerInfoReply> ParsePeerInfo(const std::string& target, int http_status,
                                      const std::string& body);

// Fields of an answer object `j`; `what` names the call in messages.
StatusOr<TargetPhase> PhaseOf(const nlohmann::json& j, const std::string& what);
StatusOr<uint64_t> UintField(const nlohmann::json& j, const char* key, const std::string& what);
StatusOr<double> NumberField(const nlohmann::json& j, const char* key, const std::string& what);

// The stream route's answer: bytes and files (seconds are measured by the
// source, left 0).
StatusOr<TransferStats> ParseStreamAnswer(const nlohmann::json& j);
// The restore route's answer: pid (<= UINT32_MAX) and seconds.
StatusOr<RestoreReport> ParseRestoreReport(const nlohmann::json& j);

// The data channel's answer line (without its '\n'): bytes and files
// (seconds left 0), or the target's error as "target: <message>" (its
// message as StatusFromErrorJson takes it; an unknown code is kFailed).
// The data channel's first answer: ok for {"ready":true} (send the stream),
// the target's error for {"code","message"}, kFailed for anything else.
Status ParseReady(const std::string& line);
StatusOr<TransferStats> ParseVerdict(const std::string& line);

}  // namespace kmosix::peer_reply
