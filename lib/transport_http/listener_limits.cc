#include "transport_http/listener_limits.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

namespace kmosix {

BoundedThreadPool::BoundedThreadPool(size_t threads, size_t max_queued,
                                     std::shared_ptr<ListenerStats> stats)
    : max_queued_(std::max<size_t>(max_queued, 1)), stats_(std::move(stats)) {
  threads = std::max<size_t>(threads, 1);
  stats_->threads = static_cast<int64_t>(threads);
  for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

BoundedThreadPool::~BoundedThreadPool() { shutdown(); }

void BoundedThreadPool::enqueue(std::function<void()> fn) {
  std::unique_lock lock(mu_);
  if (jobs_.size() >= max_queued_) {
    stats_->accept_waits_total.fetch_add(1);
    // The listener stops accepting until a handler thread takes a job.
    has_room_.wait(lock, [&] { return jobs_.size() < max_queued_ || shutdown_; });
  }
  jobs_.push_back(std::move(fn));
  stats_->queued = static_cast<int64_t>(jobs_.size());
  has_job_.notify_one();
}

void BoundedThreadPool::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
  }
  has_job_.notify_all();
  has_room_.notify_all();
  for (auto& t : threads_) t.join();
}

void BoundedThreadPool::Work() {
  while (true) {
    std::function<void()> fn;
    {
      std::unique_lock lock(mu_);
      has_job_.wait(lock, [&] { return !jobs_.empty() || shutdown_; });
      if (jobs_.empty()) return;  // shut down and drained
      fn = std::move(jobs_.front());
      jobs_.pop_front();
      stats_->queued = static_cast<int64_t>(jobs_.size());
    }
    has_room_.notify_one();
    stats_->busy.fetch_add(1);
    fn();  // httplib's connection handler: never throws out (it catches)
    stats_->busy.fetch_sub(1);
  }
}

namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return !suffix.empty() && s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

httplib::Server::HandlerResponse Refuse(const httplib::Request& req, httplib::Response& res,
                                        ListenerStats& stats, int status,
                                        const std::string& message) {
  stats.bodies_refused_total.fetch_add(1);
  spdlog::warn("refused {} {} from {}:{}: {}", req.method, req.path, req.remote_addr,
               req.remote_port, message);
  res.status = status;
  // The body is left unread: the connection must not carry another request.
  res.set_header("Connection", "close");
  nlohmann::json body = {{"code", "invalid_argument"}, {"message", message}};
  res.set_content(body.dump(), "application/json");
  return httplib::Server::HandlerResponse::Handled;
}

}  // namespace

httplib::Server::HandlerResponse CheckRequestBody(const httplib::Request& req,
                                                  httplib::Response& res,
                                                  const ListenerLimits& limits,
                                                  ListenerStats& stats) {
  const bool stream = EndsWith(req.path, limits.stream_suffix);
  const uint64_t max = stream ? limits.stream_max_body : limits.max_body;
  if (req.has_header("Content-Length")) {
    const std::string v = req.get_header_value("Content-Length");
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || end != v.data() + v.size()) {
      return Refuse(req, res, stats, 400, "malformed Content-Length");
    }
    if (n > max) {
      return Refuse(
          req, res, stats, 413,
          "request body of " + std::to_string(n) + " bytes, the limit is " + std::to_string(max));
    }
  }
  const std::string te = req.get_header_value("Transfer-Encoding");
  if (!te.empty() && !stream) {
    return Refuse(req, res, stats, 411,
                  "a request body must be sent with Content-Length (at most " +
                      std::to_string(max) + " bytes)");
  }
  return httplib::Server::HandlerResponse::Unhandled;
}

void ApplyListenerLimits(httplib::Server& server, const ListenerLimits& limits,
                         const std::shared_ptr<ListenerStats>& stats) {
  server.new_task_queue = [limits, stats] {
    return new BoundedThreadPool(limits.threads, limits.max_queued, stats);
  };
  server.set_payload_max_length(
      static_cast<size_t>(std::max<uint64_t>(limits.max_body, limits.stream_max_body)));
  server.set_pre_routing_handler(
      [limits, stats](const httplib::Request& req, httplib::Response& res) {
        return CheckRequestBody(req, res, limits, *stats);
      });
}

}  // namespace kmosix
