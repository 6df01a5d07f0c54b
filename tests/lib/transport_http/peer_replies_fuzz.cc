// Fuzz target: what a source agent parses from a target agent
// (transport_http/peer_replies.h). The input is a peer's body (or the data
// channel's answer line); it is read as the answer to every call, under
// several HTTP statuses. Contract:
//  - no exception escapes (the source runs these on its migration threads);
//  - an error is a non-ok Status with a non-empty message whose
//    {"code","message"} (ErrorJson) serialises; a peer's error body with a
//    known code gives exactly that code (any HTTP status), anything else the
//    code of the HTTP status and a message quoting at most a printable
//    120-byte excerpt of the body; a 2xx answer never reads as an error
//    body, nor an error status as a success;
//  - round trips through the writers of the target's side
//    (peer_server.cc, data_channel.cc's answers): an error parsed is
//    written back as ErrorJson and parses to the same Status (the data
//    channel's verdict: the same code, "target: " + message); an accepted
//    peer info, phase, stream answer, restore report or verdict, written as
//    the target writes it, parses to the same value;
//  - accepted values hold what the JSON said and their bounds: a data port
//    1..65535 or 0 (none), a pid <= UINT32_MAX, a known phase.
// Built by kmx_fuzz (peer_replies_fuzz, peer_replies_fuzz_regress; seeds in
// corpus/peer_replies).
#include <cstddef>
#include <cstdint>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "kmosix/spec_json.h"
#include "support/fuzz_checks.h"
#include "transport_http/http_transport.h"
#include "transport_http/peer_replies.h"

namespace {

using nlohmann::json;
using namespace kmosix;
using namespace kmosix::peer_reply;

constexpr char kTarget[] = "https://node2:7700";
constexpr int kStatuses[] = {200, 204, 400, 401, 403, 404, 409, 413, 418, 429, 500, 503};

bool Same(const Status& a, const Status& b) {
  return a.code() == b.code() && a.message() == b.message();
}

std::string Show(const Status& s) { return s.ToString(); }

// Runs `fn`; an exception breaks the contract.
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

// The contract of every error this module returns.
void CheckError(const char* call, const Status& s, std::string_view input) {
  KMX_FUZZ_CHECK(!s.ok(), std::string(call) + " returned an ok Status as an error", input);
  KMX_FUZZ_CHECK(!s.message().empty(), std::string(call) + " failed with an empty message", input);
  (void)KMX_FUZZ_DUMP(ErrorJson(s), input);
}

bool PrintableAscii(std::string_view s) {
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

void CheckHttpError(int status, const std::string& body, std::string_view in) {
  const std::string call = "StatusFromHttpError(" + std::to_string(status) + ")";
  Status s = NoThrow("StatusFromHttpError", in, [&] { return StatusFromHttpError(status, body); });
  CheckError(call.c_str(), s, in);
  std::optional<Status> peer =
      NoThrow("StatusFromErrorJson", in, [&] { return StatusFromErrorJson(body); });
  if (peer) {
    KMX_FUZZ_CHECK(Same(s, *peer), call + " is " + Show(s) + ", the body says " + Show(*peer), in);
    const json j = json::parse(body, nullptr, false);
    KMX_FUZZ_CHECK(j.is_object() && j.contains("code") && j["code"].is_string() &&
                       CodeName(s.code()) == j["code"].get<std::string>(),
                   call + " took code " + std::string(CodeName(s.code())) + " from elsewhere", in);
  } else {
    KMX_FUZZ_CHECK(s.code() == CodeFromHttpStatus(status),
                   call + " is " + Show(s) + " without an error body", in);
    const std::string head = "peer answered HTTP " + std::to_string(status);
    KMX_FUZZ_CHECK(s.message().rfind(head, 0) == 0, call + " message: " + s.message(), in);
    KMX_FUZZ_CHECK(PrintableAscii(s.message()) && s.message().size() <= head.size() + 2 + 123,
                   call + " quotes more than a printable excerpt", in);
  }
  // Written back as the target's server writes it, read back the same.
  const std::string written = KMX_FUZZ_DUMP(ErrorJson(s), in);
  Status again = NoThrow("StatusFromHttpError", in,
                         [&] { return StatusFromHttpError(HttpStatus(s.code()), written); });
  KMX_FUZZ_CHECK(Same(s, again), "error round trip: " + Show(s) + " then " + Show(again), in);
  // The same error as the data channel's verdict line.
  auto verdict = NoThrow("ParseVerdict", in, [&] { return ParseVerdict(written); });
  KMX_FUZZ_CHECK(!verdict.ok() && verdict.status().code() == s.code() &&
                     verdict.status().message() == "target: " + s.message(),
                 "verdict of " + written + " is " +
                     (verdict.ok() ? std::string("ok") : Show(verdict.status())),
                 in);
}

void CheckReplyJson(int status, const std::string& body, std::string_view in) {
  auto got = NoThrow("ReplyJson", in, [&] { return ReplyJson(status, body, "prepare"); });
  const bool success = status >= 200 && status <= 299;
  if (!success) {
    KMX_FUZZ_CHECK(!got.ok(), "an HTTP " + std::to_string(status) + " answer read as a success",
                   in);
    Status want = StatusFromHttpError(status, body).Annotate("prepare");
    KMX_FUZZ_CHECK(Same(got.status(), want), "ReplyJson: " + Show(got.status()), in);
    return;
  }
  const json j = json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object()) {
    KMX_FUZZ_CHECK(got.ok() && *got == j, "ReplyJson lost the JSON object", in);
  } else {
    KMX_FUZZ_CHECK(!got.ok(), "ReplyJson accepted what is no JSON object", in);
    CheckError("ReplyJson", got.status(), in);
    KMX_FUZZ_CHECK(got.status().code() == Code::kFailed, "ReplyJson: " + Show(got.status()), in);
  }
}

json PeerInfoJson(const PeerInfoReply& r) {  // as peer_server.cc writes it
  json j = {{"kind", "kmosix-agent"}, {"node", r.info.node}, {"version", r.info.version}};
  if (r.data_port > 0) j["dataPort"] = r.data_port;
  return j;
}

void CheckPeerInfo(int status, const std::string& body, std::string_view in) {
  auto got = NoThrow("ParsePeerInfo", in, [&] { return ParsePeerInfo(kTarget, status, body); });
  if (!got.ok()) {
    CheckError("ParsePeerInfo", got.status(), in);
    KMX_FUZZ_CHECK(got.status().message().find(kTarget) != std::string::npos,
                   "ParsePeerInfo does not name the peer: " + Show(got.status()), in);
    if (status >= 200 && status <= 299) {
      KMX_FUZZ_CHECK(got.status().code() == Code::kFailed,
                     "a 2xx non-agent answer is " + Show(got.status()), in);
    } else if (auto peer = StatusFromErrorJson(body)) {
      KMX_FUZZ_CHECK(got.status().code() == peer->code(),
                     "hello lost the peer's code: " + Show(got.status()), in);
    }
    return;
  }
  KMX_FUZZ_CHECK(status >= 200 && status <= 299,
                 "peer info accepted from an HTTP " + std::to_string(status), in);
  const json j = json::parse(body, nullptr, false);
  KMX_FUZZ_CHECK(j.is_object() && j.value("kind", json()) == "kmosix-agent" &&
                     j.value("node", json()) == got->info.node &&
                     j.value("version", json()) == got->info.version,
                 "peer info does not hold what the JSON says", in);
  KMX_FUZZ_CHECK(got->data_port >= 0 && got->data_port <= 65535,
                 "data port " + std::to_string(got->data_port), in);
  if (got->data_port > 0) {
    KMX_FUZZ_CHECK(j["dataPort"] == got->data_port, "data port not the announced one", in);
  }
  const std::string written = KMX_FUZZ_DUMP(PeerInfoJson(*got), in);
  auto again = NoThrow("ParsePeerInfo", in, [&] { return ParsePeerInfo(kTarget, 200, written); });
  KMX_FUZZ_CHECK(again.ok() && again->info.node == got->info.node &&
                     again->info.version == got->info.version && again->data_port == got->data_port,
                 "peer info round trip failed: " + written, in);
}

// The answers to the calls, once the body is a JSON object.
void CheckAnswers(const json& j, std::string_view in) {
  auto phase = NoThrow("PhaseOf", in, [&] { return PhaseOf(j, "commit"); });
  if (phase.ok()) {
    const std::string name(TargetPhaseName(*phase));
    KMX_FUZZ_CHECK(j["phase"] == name, "phase " + name + " is not what the JSON says", in);
    auto again = PhaseOf(json{{"phase", name}}, "commit");
    KMX_FUZZ_CHECK(again.ok() && *again == *phase, "phase round trip failed: " + name, in);
  } else {
    CheckError("PhaseOf", phase.status(), in);
    KMX_FUZZ_CHECK(phase.status().code() == Code::kFailed &&
                       phase.status().message().rfind("commit: ", 0) == 0,
                   "PhaseOf: " + Show(phase.status()), in);
  }

  auto stream = NoThrow("ParseStreamAnswer", in, [&] { return ParseStreamAnswer(j); });
  if (stream.ok()) {
    KMX_FUZZ_CHECK(j["bytes"] == stream->bytes && j["files"] == stream->files,
                   "stream answer does not hold what the JSON says", in);
    const json w = {{"bytes", stream->bytes}, {"files", stream->files}, {"seconds", 1.5}};
    auto again = ParseStreamAnswer(w);
    KMX_FUZZ_CHECK(again.ok() && again->bytes == stream->bytes && again->files == stream->files,
                   "stream answer round trip failed: " + w.dump(), in);
  } else {
    CheckError("ParseStreamAnswer", stream.status(), in);
    KMX_FUZZ_CHECK(stream.status().code() == Code::kFailed, Show(stream.status()), in);
  }

  auto restore = NoThrow("ParseRestoreReport", in, [&] { return ParseRestoreReport(j); });
  if (restore.ok()) {
    KMX_FUZZ_CHECK(j["pid"] == restore->pid && j["seconds"] == restore->seconds,
                   "restore report does not hold what the JSON says", in);
    const json w = {{"pid", restore->pid}, {"seconds", restore->seconds}};
    const std::string text = KMX_FUZZ_DUMP(w, in);
    auto again = ParseRestoreReport(json::parse(text));
    KMX_FUZZ_CHECK(again.ok() && again->pid == restore->pid && again->seconds == restore->seconds,
                   "restore report round trip failed: " + text, in);
  } else {
    CheckError("ParseRestoreReport", restore.status(), in);
    KMX_FUZZ_CHECK(restore.status().code() == Code::kFailed, Show(restore.status()), in);
  }
}

void CheckVerdict(const std::string& line, std::string_view in) {
  auto got = NoThrow("ParseVerdict", in, [&] { return ParseVerdict(line); });
  const json j = json::parse(line, nullptr, false);
  if (got.ok()) {
    KMX_FUZZ_CHECK(j.is_object() && !(j.contains("code") && j["code"].is_string()) &&
                       j["bytes"] == got->bytes && j["files"] == got->files,
                   "verdict does not hold what the JSON says", in);
    const json w = {{"bytes", got->bytes}, {"files", got->files}, {"seconds", 0.25}};
    auto again = ParseVerdict(KMX_FUZZ_DUMP(w, in));
    KMX_FUZZ_CHECK(again.ok() && again->bytes == got->bytes && again->files == got->files,
                   "verdict round trip failed: " + w.dump(), in);
    return;
  }
  CheckError("ParseVerdict", got.status(), in);
  const std::string& m = got.status().message();
  KMX_FUZZ_CHECK(m.rfind("target: ", 0) == 0 || m.rfind("data channel: ", 0) == 0,
                 "verdict error: " + m, in);
  if (m.rfind("target: ", 0) == 0) {
    // The target's own error: its code when known, else kFailed.
    std::optional<Code> named = CodeFromName(j["code"].get<std::string>());
    KMX_FUZZ_CHECK(got.status().code() == named.value_or(Code::kFailed),
                   "verdict code: " + Show(got.status()), in);
  } else {
    KMX_FUZZ_CHECK(got.status().code() == Code::kFailed, "verdict: " + Show(got.status()), in);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::string body(in);
  for (int status : kStatuses) {
    if (status < 200 || status > 299) CheckHttpError(status, body, in);
    CheckReplyJson(status, body, in);
    CheckPeerInfo(status, body, in);
  }
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object()) CheckAnswers(j, in);
  // The data channel reads its answer up to '\n' (at most 4096 bytes).
  CheckVerdict(body.substr(0, body.find('\n')), in);
  return 0;
}
