// A scripted Transport (lib/kube/transport.h) for HttpClient's unit tests:
// answers are queued per "METHOD target-prefix" and every request is
// recorded. Streams hand their queued chunks to on_chunk one by one.
// Thread-safety: one mutex; fine for the single-threaded tests here.
#pragma once

#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "kube/transport.h"

namespace kmosix::kube::testing {

class FakeHttpTransport : public Transport {
 public:
  struct Answer {
    StatusOr<HttpResponse> response = HttpResponse{200, "{}"};
    std::vector<std::string> chunks;  // for Stream with a 2xx status
  };

  // Queues an answer for the next request whose "METHOD target" starts with `prefix`.
  void On(const std::string& prefix, int status, std::string body) {
    std::lock_guard lock(mu_);
    answers_.push_back({prefix, Answer{HttpResponse{status, std::move(body)}, {}}});
  }
  void OnError(const std::string& prefix, Status s) {
    std::lock_guard lock(mu_);
    answers_.push_back({prefix, Answer{std::move(s), {}}});
  }
  void OnStream(const std::string& prefix, std::vector<std::string> chunks, int status = 200) {
    std::lock_guard lock(mu_);
    answers_.push_back({prefix, Answer{HttpResponse{status, ""}, std::move(chunks)}});
  }
  std::vector<HttpRequest> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }

  StatusOr<HttpResponse> Do(const HttpRequest& req) override {
    auto a = Take(req);
    return a.response;
  }
  StatusOr<HttpResponse> Stream(const HttpRequest& req, const ChunkHandler& on_chunk,
                                const std::atomic<bool>& stop) override {
    auto a = Take(req);
    if (!a.response.ok() || a.response->status / 100 != 2) return a.response;
    for (const auto& c : a.chunks) {
      if (stop.load()) break;
      if (!on_chunk(c)) break;
    }
    return a.response;
  }

 private:
  Answer Take(const HttpRequest& req) {
    std::lock_guard lock(mu_);
    requests_.push_back(req);
    std::string line = req.method + " " + req.target;
    for (auto it = answers_.begin(); it != answers_.end(); ++it) {
      if (line.rfind(it->first, 0) == 0) {
        Answer a = std::move(it->second);
        answers_.erase(it);
        return a;
      }
    }
    return Answer{HttpResponse{599, "{\"message\":\"no scripted answer for " + line + "\"}"}, {}};
  }

  mutable std::mutex mu_;
  std::deque<std::pair<std::string, Answer>> answers_;
  std::vector<HttpRequest> requests_;
};

}  // namespace kmosix::kube::testing
