// The HTTP seam under HttpClient: Transport sends one request (Do) or
// streams one response body (Stream, for watches). The real one is
// NewHttpTransport (cpp-httplib; http_transport.cc); unit tests use a fake.
//
// Errors: a Transport returns a non-ok Status only when no complete HTTP
// response arrived (connection refused, TLS failure, timeout, the stream
// broke): kRetry, or kInvalid for a config it cannot use (bad PEM, bad URL).
// Any HTTP status, 4xx and 5xx included, is a response (HttpClient maps it).
// Thread-safety: Do and Stream may be called from several threads at once.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "kmosix/status.h"
#include "kube/config.h"

namespace kmosix::kube {

struct HttpRequest {
  std::string method;  // GET, POST, PUT, PATCH, DELETE
  std::string target;  // path and query, already escaped: "/api/v1/nodes?limit=5"
  std::map<std::string, std::string> headers;  // e.g. Authorization, Accept
  std::string body;
  std::string content_type;  // of body ("" = no body)
};

struct HttpResponse {
  int status = 0;
  std::string body;  // for Stream: only for non-2xx answers (2xx bodies go to on_chunk)
};

// Gets body pieces as they arrive; returns false to end the stream.
using ChunkHandler = std::function<bool(std::string_view)>;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual StatusOr<HttpResponse> Do(const HttpRequest& request) = 0;
  // Sends a GET and hands a 2xx body to `on_chunk` piece by piece until the
  // server ends it (Ok), on_chunk returns false (Ok), `stop` becomes true
  // (Ok; noticed within about 200 ms) or the connection breaks (kRetry).
  // A non-2xx answer comes back whole in HttpResponse::body.
  virtual StatusOr<HttpResponse> Stream(const HttpRequest& request, const ChunkHandler& on_chunk,
                                        const std::atomic<bool>& stop) = 0;
};

// The real transport for `config` (server URL, TLS material, timeouts; the
// token is the client's business). Streams use `stream_read_timeout`
// between reads (the watch's own timeoutSeconds should be shorter).
// kInvalid when the URL or the PEM material cannot be used.
StatusOr<std::unique_ptr<Transport>> NewHttpTransport(
    const Config& config, std::chrono::milliseconds stream_read_timeout = std::chrono::minutes(6));

}  // namespace kmosix::kube
