// Caps of one httplib::Server listener: its handler threads, the accepted
// connections that may wait for one, and request bodies (refused before they
// are read).
//
// ApplyListenerLimits installs a BoundedThreadPool as the server's task queue
// (`threads` handler threads; at most `max_queued` accepted connections wait
// for one, beyond that the listener stops accepting and further connections
// wait in the kernel's backlog, then are refused by it) and a pre-routing
// handler that answers, before the body is read and with Connection: close,
//   413 a Content-Length beyond max_body (stream routes: stream_max_body),
//   411 a chunked body outside the stream routes (httplib 0.11 does not bound
//       chunked bodies itself).
// Stream routes are paths ending with stream_suffix (the peer protocol's
// /v1/peer/migrations/{id}/stream); their handler bounds what it reads.
// The server's payload_max_length is set too (a second line for
// Content-Length bodies, should the pre-routing handler be replaced).
// A server needing another pre-routing handler (e.g. authentication) calls
// CheckRequestBody from it first.
//
// Ownership: the stats are shared with the pool and the handler (keep the
// pointer to read them). Thread-safety: ListenerStats is atomics; the pool
// and handler run on the server's threads. No errors: refusals are answers.
#pragma once

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kmosix {

struct ListenerLimits {
  size_t threads = 16;
  size_t max_queued = 64;
  size_t max_body = 1 << 20;
  std::string stream_suffix = "/stream";
  uint64_t stream_max_body = uint64_t{128} << 30;
};

struct ListenerStats {
  std::atomic<int64_t> threads{0};
  std::atomic<int64_t> busy{0};                   // handler threads serving a connection
  std::atomic<int64_t> queued{0};                 // accepted connections waiting for one
  std::atomic<uint64_t> accept_waits_total{0};    // times the listener stopped accepting
  std::atomic<uint64_t> bodies_refused_total{0};  // 411/413 answers
};

// A fixed pool of handler threads whose queue is bounded: enqueue blocks the
// listener while max_queued connections already wait.
class BoundedThreadPool final : public httplib::TaskQueue {
 public:
  BoundedThreadPool(size_t threads, size_t max_queued, std::shared_ptr<ListenerStats> stats);
  ~BoundedThreadPool() override;
  void enqueue(std::function<void()> fn) override;
  void shutdown() override;

 private:
  void Work();

  const size_t max_queued_;
  std::shared_ptr<ListenerStats> stats_;
  std::mutex mu_;
  std::condition_variable has_job_;
  std::condition_variable has_room_;
  std::deque<std::function<void()>> jobs_;
  bool shutdown_ = false;
  std::vector<std::thread> threads_;
};

// The pre-routing check (see above): Handled with the refusal, or Unhandled.
httplib::Server::HandlerResponse CheckRequestBody(const httplib::Request& req,
                                                  httplib::Response& res,
                                                  const ListenerLimits& limits,
                                                  ListenerStats& stats);

void ApplyListenerLimits(httplib::Server& server, const ListenerLimits& limits,
                         const std::shared_ptr<ListenerStats>& stats);

}  // namespace kmosix
