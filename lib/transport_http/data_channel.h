// The data channel: transfer streams over a plain TCP connection, moved in
// large reads and writes. (httplib reads a request body 4 KiB at a time with
// a poll before each read, which halves the throughput of a 1 GiB stream.)
//
// Protocol, one connection per stream: the source connects to the target's
// data port (announced as "dataPort" in GET /v1/peer/info), sends the line
// "KMXDATA1 <migration id>\n", then the transfer stream, then half-closes.
// The target answers one JSON line, {"bytes","files","seconds"} or
// {"code","message"}, and closes. A target that fails early answers at once
// and closes; the source then reads that answer instead of a broken pipe.
//
// DataServer: owns its listening socket and one thread per connection, at
// most max_connections at once (a connection beyond them is answered busy,
// kRetry with a retry-after, and closed at once);
// borrows the target and clock. Start/Stop from one thread; the target is
// called from connection threads. SendStream: thread-safe, no shared state.
// Errors: kRetry for connection failures and timeouts (outcome unknown to the
// source: the target aborts the receive); the target's code otherwise.
#pragma once

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kmosix/clock.h"
#include "kmosix/transfer_stream.h"
#include "kmosix/transport.h"

namespace kmosix {

class DataServer {
 public:
  struct Options {
    DecoderOptions decoder;
    std::chrono::milliseconds io_timeout{30000};  // a stalled peer is dropped
    size_t buffer_size = 4 << 20;
    int max_connections = 8;  // streams served at once; 0: no limit
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
  // Stops accepting and waits for running streams to end.
  void Stop();

 private:
  void AcceptLoop();
  void Serve(int fd);

  MigrationTarget& target_;
  Clock& clock_;
  Options options_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};
  std::atomic<uint64_t> refused_{0};
  std::thread acceptor_;
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<Worker> workers_;
};

struct DataChannelOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds io_timeout{30000};
  size_t buffer_size = 4 << 20;
};

// Streams everything `encoder` yields to host:port for migration `id`.
// Returns the target's verified totals.
StatusOr<TransferStats> SendStream(const std::string& host, int port, const std::string& id,
                                   StreamEncoder& encoder, const DataChannelOptions& options);

}  // namespace kmosix
