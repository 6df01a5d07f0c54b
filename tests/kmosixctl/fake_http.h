// A scripted HttpTransport for kmosixctl's unit tests: answers by
// "METHOD path" (queued answers are used in order, the last one repeats),
// servers can be made to fail at the transport level, and every call is
// recorded.
#pragma once

#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kmosixctl/client.h"

namespace kmosix::ctl::testing {

struct FakeAnswer {
  int status = 200;
  std::string body{};
  std::string content_type = "application/json";
  std::vector<std::string> chunks{};                   // Stream(): the body's chunks (2xx)
  TransportFailure failure = TransportFailure::kNone;  // after the chunks, for Stream()
  std::string error{};
};

inline FakeAnswer JsonAnswer(int status, const nlohmann::json& j) {
  return {.status = status, .body = j.dump(), .content_type = "application/json"};
}
inline FakeAnswer ErrorAnswer(int status, const std::string& code, const std::string& message) {
  return JsonAnswer(status, {{"code", code}, {"message", message}});
}

class FakeHttp final : public HttpTransport {
 public:
  struct Call {
    std::string server;
    HttpRequest request;
  };

  // Queues an answer for "METHOD path" (path with its query).
  void On(const std::string& method, const std::string& path, FakeAnswer a) {
    std::lock_guard lock(mu_);
    routes_[method + " " + path].push_back(std::move(a));
  }
  // Every request to `server` fails with `f`.
  void Fail(const std::string& server, TransportFailure f, const std::string& error) {
    std::lock_guard lock(mu_);
    failing_[server] = {f, error};
  }
  void Heal(const std::string& server) {
    std::lock_guard lock(mu_);
    failing_.erase(server);
  }

  HttpResponse Send(const std::string& server, const HttpRequest& request) override {
    HttpResponse out;
    FakeAnswer a;
    if (!Take(server, request, out, a)) return out;
    out.status = a.status;
    out.body = a.body;
    out.content_type = a.content_type;
    return out;
  }

  HttpResponse Stream(const std::string& server, const HttpRequest& request,
                      const std::function<bool(std::string_view)>& on_data) override {
    HttpResponse out;
    FakeAnswer a;
    if (!Take(server, request, out, a)) return out;
    out.status = a.status;
    out.content_type = a.content_type;
    if (a.status < 200 || a.status >= 300) {
      out.body = a.body;
      return out;
    }
    for (const auto& c : a.chunks) {
      if (!on_data(c)) {
        out.failure = TransportFailure::kCanceled;
        out.error = "cancelled";
        return out;
      }
    }
    out.failure = a.failure;
    out.error = a.error;
    return out;
  }

  void CancelStreams() override {}

  std::vector<Call> Calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  // "server METHOD path" of every call, for compact assertions.
  std::vector<std::string> CallLines() {
    std::vector<std::string> out;
    for (const auto& c : Calls())
      out.push_back(c.server + " " + c.request.method + " " + c.request.path);
    return out;
  }

 private:
  bool Take(const std::string& server, const HttpRequest& request, HttpResponse& out,
            FakeAnswer& a) {
    std::lock_guard lock(mu_);
    calls_.push_back({server, request});
    if (auto f = failing_.find(server); f != failing_.end()) {
      out.failure = f->second.first;
      out.error = f->second.second;
      return false;
    }
    auto it = routes_.find(request.method + " " + request.path);
    if (it == routes_.end() || it->second.empty()) {
      a = ErrorAnswer(404, "not_found", "no route " + request.method + " " + request.path);
      return true;
    }
    a = it->second.front();
    if (it->second.size() > 1) it->second.pop_front();
    return true;
  }

  std::mutex mu_;
  std::map<std::string, std::deque<FakeAnswer>> routes_;
  std::map<std::string, std::pair<TransportFailure, std::string>> failing_;
  std::vector<Call> calls_;
};

}  // namespace kmosix::ctl::testing
