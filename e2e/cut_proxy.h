// CutProxy: a TCP proxy for fault injection. It listens on host:0 (an
// ephemeral port), forwards every connection to upstream, and counts the bytes
// flowing client -> upstream over all connections. When that count reaches
// cut_after_bytes, it forwards exactly up to that byte and then closes both
// sides of the connection that crossed it (with RST, no FIN: an abrupt cut).
// The cut happens once; later connections are forwarded normally, so the
// client can still talk to the upstream afterwards (e.g. to abort).
//
// Ownership: owns its sockets and threads; Stop() (or the destructor) joins
// them. Thread-safety: the accessors may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kmosix::e2e {

class CutProxy {
 public:
  CutProxy(std::string listen_host, std::string upstream_host, int upstream_port,
           uint64_t cut_after_bytes);
  ~CutProxy();
  CutProxy(const CutProxy&) = delete;
  CutProxy& operator=(const CutProxy&) = delete;

  // Binds listen_host:listen_port (0: an ephemeral port) and starts
  // accepting. Returns an error message, empty on success.
  std::string Start(int listen_port = 0);
  void Stop();

  int Port() const { return port_; }
  std::string Url() const { return "http://" + listen_host_ + ":" + std::to_string(port_); }
  bool Cut() const { return cut_.load(); }
  uint64_t ClientToUpstreamBytes() const { return up_bytes_.load(); }
  int Connections() const { return connections_.load(); }

 private:
  void AcceptLoop();
  void Serve(int client_fd);

  std::string listen_host_;
  std::string upstream_host_;
  int upstream_port_;
  uint64_t cut_after_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd: readable once Stop() was called
  int port_ = 0;
  std::atomic<bool> cut_{false};
  std::atomic<uint64_t> up_bytes_{0};
  std::atomic<int> connections_{0};
  std::mutex budget_mu_;  // serialises the check-and-count of the cut budget
  std::mutex threads_mu_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

}  // namespace kmosix::e2e
