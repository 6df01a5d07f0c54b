// HttpTransport: the source agent's client for the agent-to-agent protocol.
//
// Routes (all JSON, except the stream body):
//   GET  /v1/peer/info                      -> {"kind":"kmosix-agent","node","version",
//                                               "dataPort"?}
//   POST /v1/peer/migrations/{id}/prepare   body MigrationOffer JSON -> {"id"}
//   POST /v1/peer/migrations/{id}/stream    body: the transfer stream (sent with
//                                           Content-Length; chunked also accepted)
//                                           (kmosix/transfer_stream.h)
//                                           -> {"bytes","files","seconds"}
//   POST /v1/peer/migrations/{id}/restore   -> {"pid","seconds"}
//   POST /v1/peer/migrations/{id}/commit    -> {"phase"}
//   POST /v1/peer/migrations/{id}/abort     -> {"phase"}
//   GET  /v1/peer/migrations/{id}           -> {"phase"}
// When the peer announces a dataPort, Send streams over the data channel
// (data_channel.h) instead of the stream route.
// Errors: an HTTP error status with {"code","message"}; code is a CodeName()
// ("unavailable", "conflict", "invalid_argument", "not_found", "failed").
//
// `target` is a base URL "http://HOST:PORT". Ownership: the caller owns the
// transport; the clock (optional) must outlive it. Thread-safety: every call
// uses its own connection; all methods may be called concurrently.
// Errors (transport.h): kRetry when the peer is unreachable or timed out, the
// peer's code when it answered with an error JSON (else by HTTP status:
// 400 kInvalid, 404 kNotFound, 409 kConflict, 408/429/502/503/504 kRetry,
// others kFailed), kFailed for a peer that is not a kmosix agent or answers
// malformed JSON, kInvalid for a malformed target URL or id. Send returns the
// encoder's error when reading a local section fails (the peer sees a cut
// stream and aborts the migration).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/transport.h"
#include "tls/tls.h"
#include "transport_http/data_channel.h"

namespace kmosix {

class StreamEncoder;

struct HttpTransportOptions {
  std::chrono::milliseconds connect_timeout{5000};
  // Per socket read/write for every call (a stalled peer is kRetry).
  std::chrono::milliseconds read_timeout{30000};
  std::chrono::milliseconds write_timeout{30000};
  // Read timeout of the restore call: CRIU restore of a big task takes time.
  std::chrono::milliseconds restore_timeout{120000};
  // Size of the chunks the stream is sent in.
  size_t chunk_size = 1 << 20;
  // Use a peer's data channel when it announces one.
  bool use_data_channel = true;
  // This node's identity toward peers (read per request, so rotated files are
  // used by the next call). Complete: every target must be https:// and its
  // certificate must chain to `tls.ca` and name the target's host; an
  // http:// target is refused (never a downgrade). Empty: plain http only.
  tls::Files tls;
  // Tests only: asked before each data-channel stream; > 0 cuts it after that
  // many bytes (DataChannelOptions::cut_after_bytes).
  std::function<uint64_t()> cut_after;
  // Tests only: DataChannelOptions::on_written of every data-channel stream
  // (it may block: the stream waits there). Not called on the HTTP fallback.
  std::function<void(uint64_t written)> on_stream_written;
};

class HttpTransport final : public Transport {
 public:
  // clock == nullptr: a SystemClock owned by the transport.
  explicit HttpTransport(HttpTransportOptions options = {}, Clock* clock = nullptr);
  ~HttpTransport() override;

  StatusOr<PeerInfo> Hello(const std::string& target) override;
  Status Prepare(const std::string& target, const MigrationOffer& offer) override;
  // Stats: the bytes and files the peer verified; seconds measured here.
  StatusOr<TransferStats> Send(const std::string& target, const std::string& id,
                               const std::vector<Section>& sections) override;
  StatusOr<RestoreReport> Restore(const std::string& target, const std::string& id) override;
  StatusOr<TargetPhase> Commit(const std::string& target, const std::string& id) override;
  StatusOr<TargetPhase> Abort(const std::string& target, const std::string& id) override;
  // kUnknown when the peer answers not_found for id.
  StatusOr<TargetPhase> Query(const std::string& target, const std::string& id) override;

 private:
  struct DataPeer {
    int port = 0;      // its data channel (0: none announced)
    std::string node;  // the node that answered /v1/peer/info there
  };
  StatusOr<TransferStats> SendOverDataChannel(const std::string& target, const DataPeer& peer,
                                              const std::string& id, StreamEncoder& enc);
  StatusOr<TransferStats> SendOverHttp(const std::string& target, const std::string& id,
                                       StreamEncoder& enc);
  StatusOr<TargetPhase> PostForPhase(const std::string& target, const std::string& id,
                                     const std::string& verb);

  HttpTransportOptions options_;
  std::unique_ptr<Clock> owned_clock_;
  Clock* clock_;
  std::mutex mu_;
  std::map<std::string, DataPeer> data_ports_;  // target -> its data channel; mu_
  DataSessionCache data_sessions_;              // TLS sessions to resume (thread-safe)
};

// Maps an HTTP error answer back to a Status (exposed for tests and for the
// agent's own clients): a {"code","message"} body wins, else the HTTP status.
Status StatusFromHttpError(int http_status, const std::string& body);

}  // namespace kmosix
