// The data channel: transfer streams over a plain TCP connection, moved in
// large reads and writes. (httplib reads a request body 4 KiB at a time with
// a poll before each read, which halves the throughput of a 1 GiB stream.)
//
// Protocol, one connection per stream: the source connects to the target's
// data port (announced as "dataPort" in GET /v1/peer/info) and sends the line
// "KMXDATA2 <migration id>\n". The target authorizes it and opens the
// migration's receive, then answers {"ready":true}\n, or {"code","message"}
// and closes: a refusal never meets a stream in flight. After "ready" the
// source sends the transfer stream, then half-closes; the target answers one
// JSON line, {"bytes","files","seconds"} or {"code","message"}, and closes.
// A target that fails mid-stream answers at once and drains what still
// comes (up to 64 MiB or 2 s) before closing, and the source looks for an
// answer before each buffer it sends, so it stops within a buffer and reads
// the target's reason instead of a reset. (KMXDATA1, without the ready line,
// is refused with kInvalid: both agents must run this version.)
//
// With TLS (DataServer::Options::tls, DataChannelOptions::tls) the same
// protocol runs inside one mutually authenticated TLS session per stream
// (policy of lib/tls: 1.2+, ECDHE + AEAD): the server requires a client
// certificate of its CA, the client verifies the server's certificate against
// its CA and the host it dialled (IP or DNS SAN) and, if asked, the server's
// node name (CN). The source's half-close is TLS's close_notify
// (SSL_shutdown, one direction only): the target reads the stream until
// close_notify, so a TCP FIN without it is a cut stream (a truncation attack
// reads as "cut", never as a complete stream); the target then writes its
// answer line and its own close_notify. TLS 1.3 defines this half-close;
// for 1.2 both ends are kmosix, which keeps writing after a close_notify
// received. After the "KMXDATA2 <id>" line the server asks `authorize` (the
// peer's identity, the migration id) before any byte reaches the target; a
// refusal is answered {"code":"permission_denied",...} and closed. A failed
// handshake is logged with the peer's address and counted; nothing is
// answered (the client sees a TLS alert or a reset).
//
// DataServer: owns its listening socket, its TLS context (sharing the
// borrowed ServerCredentials, which must outlive it) and one thread per
// connection, at most max_connections at once (a connection beyond them is
// answered busy, kRetry with a retry-after, in plain text, and closed at
// once); borrows the target and clock. Start/Stop from one thread; the target
// and `authorize` are called from connection threads. SendStream:
// thread-safe; its only shared state is the optional DataSessionCache
// (thread-safe).
// Errors: kRetry for connection failures and timeouts (outcome unknown to the
// source: the target aborts the receive); kFailed when the TLS handshake
// fails (certificate not trusted, wrong host or node name, refused by the
// target); the target's code otherwise (kPermissionDenied when `authorize`
// refused).
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kmosix/clock.h"
#include "kmosix/transfer_stream.h"
#include "kmosix/transport.h"
#include "tls/tls.h"

namespace kmosix {

class DataServer {
 public:
  struct Options {
    DecoderOptions decoder;
    std::chrono::milliseconds io_timeout{30000};  // a stalled peer is dropped
    size_t buffer_size = 4 << 20;
    int max_connections = 8;  // streams served at once; 0: no limit
    // Borrowed; null: plain TCP. Set: every connection must complete mutual
    // TLS with a client certificate of the credentials' CA.
    tls::ServerCredentials* tls = nullptr;
    // Asked after the "KMXDATA2 <id>" line, before the target sees anything:
    // a non-ok Status (kPermissionDenied) is answered and the connection
    // closed. `peer` is empty on a plain channel. Null: everyone the TLS
    // handshake let in may send (standalone agents: the same CA).
    std::function<Status(const tls::Identity& peer, const std::string& migration_id)> authorize;
    // Hears every refusal, with a reason for a metric: "tls_handshake" (a
    // handshake failed) or "not_allowed" (`authorize` refused). May be empty;
    // called from connection threads.
    std::function<void(const std::string& reason)> on_denied;
  };
  DataServer(MigrationTarget& target, Clock& clock, Options options);
  ~DataServer();
  DataServer(const DataServer&) = delete;
  DataServer& operator=(const DataServer&) = delete;

  // Listens on host:port (port 0: a free one) and starts accepting.
  Status Start(const std::string& host, int port);
  int port() const { return port_; }
  // Connections being served now, and refused for max_connections so far.
  int active_connections() const { return active_.load(); }
  uint64_t refused_connections() const { return refused_.load(); }
  // TLS handshakes that failed (no or untrusted client certificate, not
  // TLS, old protocol), and streams `authorize` refused, so far.
  uint64_t handshake_failures() const { return handshake_failures_.load(); }
  uint64_t denied_streams() const { return denied_.load(); }
  // Stops accepting and waits for running streams to end.
  void Stop();

 private:
  void AcceptLoop();
  void Serve(int fd, const std::string& peer);

  MigrationTarget& target_;
  Clock& clock_;
  Options options_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> handshake_failures_{0};
  std::atomic<uint64_t> denied_{0};
  SSL_CTX* ssl_ctx_ = nullptr;  // owned; with options_.tls
  std::thread acceptor_;
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<Worker> workers_;
};

// TLS sessions of past streams, per target host:port (and expected name),
// so that the next stream to the same target resumes (a shorter handshake,
// no certificate checks). Thread-safe. A resumed session keeps the
// identities verified when it was made; the server honours one for 10
// minutes at most.
class DataSessionCache {
 public:
  DataSessionCache() = default;
  ~DataSessionCache();
  DataSessionCache(const DataSessionCache&) = delete;
  DataSessionCache& operator=(const DataSessionCache&) = delete;
  // A reference the caller frees (SSL_SESSION_free), or null.
  SSL_SESSION* Take(const std::string& key);
  void Put(const std::string& key, SSL_SESSION* session);  // takes a reference
  void Forget(const std::string& key);
  uint64_t resumed() const { return resumed_.load(); }
  void CountResumed() { resumed_.fetch_add(1); }

 private:
  std::mutex mu_;
  std::map<std::string, SSL_SESSION*> sessions_;  // mu_
  std::atomic<uint64_t> resumed_{0};
};

struct DataChannelOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds io_timeout{30000};
  size_t buffer_size = 4 << 20;
  // Empty: plain TCP. Complete: mutual TLS with this certificate and key; the
  // server must present a certificate of `ca` valid for the dialled host.
  tls::Files tls;
  // With tls: the server's certificate must also name this node (CN); empty:
  // any certificate of the CA valid for the host.
  std::string expected_server_name;
  // With tls, optional and borrowed: resume sessions per target.
  DataSessionCache* sessions = nullptr;
  // Tests only (the agent's failpoint stream.cut): > 0 drops the connection
  // (no TLS close_notify) once this many stream bytes were written, as a
  // network cut; the call then fails with kRetry.
  uint64_t cut_after_bytes = 0;
  // Tests only (the agent's failpoint transfer.hang): called after each piece
  // of the stream was written, with the bytes written so far; it may block
  // (the stream waits there). Empty: nothing.
  std::function<void(uint64_t written)> on_written;
};

// Streams everything `encoder` yields to host:port for migration `id`.
// Returns the target's verified totals.
StatusOr<TransferStats> SendStream(const std::string& host, int port, const std::string& id,
                                   StreamEncoder& encoder, const DataChannelOptions& options);

}  // namespace kmosix
