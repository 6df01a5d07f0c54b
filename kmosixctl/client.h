// kmosixctl's client of the controller REST API (see README "controller
// REST API"), over a small HTTP seam so that failover and error mapping are
// tested without a server.
//
// HttpTransport is the seam: one request to one server URL, or a streamed GET
// (server-sent events). MakeHttplibTransport is the real one (cpp-httplib,
// http and https, bearer token, CA file). ApiClient sits on top: it tries the
// servers in order, moving on to the next one when a server is unreachable
// (connection refused, timeout connecting, TLS handshake failed) and stays
// with the first one that answered; it turns HTTP statuses and transport
// failures into kmosixctl's exit codes and messages quoting the server's
// {"code","message"}.
//
// Exit codes (the contract of the CLI): 0 ok, 1 other/server error (5xx),
// 2 usage, 3 not found, 4 conflict, 5 unauthenticated/forbidden,
// 6 unreachable/TLS failure, 7 invalid request (400/413), 8 a waited-for
// migration did not succeed.
//
// Errors are values: ApiError carries the exit code; it is richer than
// kmosix::Status because the CLI must tell 401 from 403 from "unreachable".
//
// Ownership: ApiClient borrows its transport. Thread-safety: the httplib
// transport may be shared by threads (it makes one connection per request);
// an ApiClient is used by one thread at a time.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace kmosix::ctl {

enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,
  kExitUsage = 2,
  kExitNotFound = 3,
  kExitConflict = 4,
  kExitAuth = 5,
  kExitUnreachable = 6,
  kExitInvalid = 7,
  kExitMigrationFailed = 8,
};

// ---- the HTTP seam ----------------------------------------------------------

struct HttpRequest {
  std::string method;  // "GET", "POST", "DELETE"
  std::string path;    // "/v1/nodes", with a query if any
  std::string body;
  std::string content_type;                                  // of body ("" without one)
  std::vector<std::pair<std::string, std::string>> headers;  // extra, e.g. Last-Event-ID
};

enum class TransportFailure {
  kNone,      // an HTTP answer came (status is set)
  kConnect,   // never reached the server: refused, no route, DNS, connect timeout
  kTls,       // TLS handshake or certificate verification failed (nothing was sent)
  kBroken,    // the connection failed after the request may have been sent
  kCanceled,  // the caller stopped a stream (on_data returned false, CancelStreams)
};

struct HttpResponse {
  TransportFailure failure = TransportFailure::kNone;
  std::string error;  // the transport's description of a failure
  int status = 0;
  std::string content_type;
  std::string body;  // for Stream(): only a non-2xx answer's body
};

class HttpTransport {
 public:
  virtual ~HttpTransport() = default;
  // One request to `server` ("https://host:port").
  virtual HttpResponse Send(const std::string& server, const HttpRequest& request) = 0;
  // A GET whose 2xx body is handed to on_data chunk by chunk as it arrives;
  // on_data returns false to stop (the result is then kCanceled).
  virtual HttpResponse Stream(const std::string& server, const HttpRequest& request,
                              const std::function<bool(std::string_view)>& on_data) = 0;
  // Ends every Stream() in progress (from any thread) and makes later ones
  // return kCanceled at once.
  virtual void CancelStreams() = 0;
};

struct TransportOptions {
  std::string token;    // sent as "Authorization: Bearer TOKEN" ("" = none)
  std::string ca_file;  // PEM bundle to verify https servers ("" = system store)
  bool insecure_skip_tls_verify = false;
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds read_timeout{10000};
  // Between two chunks of a stream (the events stream sends a keepalive
  // comment every 15 s).
  std::chrono::milliseconds stream_read_timeout{60000};
};
std::unique_ptr<HttpTransport> MakeHttplibTransport(TransportOptions options);

// ---- errors -----------------------------------------------------------------

struct ApiError {
  int exit_code = kExitError;
  int http_status = 0;  // 0: no HTTP answer
  std::string code;     // the server's "code", or "Unreachable"/"TLS" for transport failures
  std::string message;  // the server's "message", or what failed
  std::string hint;     // what to try ("" = nothing to add)
  // "NotFound (HTTP 404): no workload named "x"" plus the hint on a second line.
  std::string ToString() const;
};

// Exit code for an HTTP status (2xx: 0).
int ExitCodeForStatus(int http_status);
// The error a non-2xx answer means, quoting its JSON {"code","message"} (or
// the start of a non-JSON body).
ApiError ErrorFromResponse(int http_status, std::string_view body, const std::string& method,
                           const std::string& path);

// A value or an ApiError.
template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(ApiError error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  const T& value() const { return std::get<0>(v_); }
  T& value() { return std::get<0>(v_); }
  const T& operator*() const { return value(); }
  const T* operator->() const { return &value(); }
  const ApiError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, ApiError> v_;
};

// ---- the client -------------------------------------------------------------

class ApiClient {
 public:
  // servers: at least one base URL, tried in this order.
  ApiClient(HttpTransport& transport, std::vector<std::string> servers);

  Result<nlohmann::json> Get(const std::string& path);
  Result<nlohmann::json> Post(const std::string& path, const nlohmann::json& body);
  Result<nlohmann::json> Delete(const std::string& path);
  // A text/plain GET (logs).
  Result<std::string> GetText(const std::string& path);
  // A streamed GET: on_data sees the body's chunks. Returns nullopt when
  // on_data stopped it or the server ended the stream (*ended_by_server
  // tells which), else the error that ended it.
  std::optional<ApiError> Stream(const std::string& path,
                                 const std::vector<std::pair<std::string, std::string>>& headers,
                                 const std::function<bool(std::string_view)>& on_data,
                                 bool* ended_by_server = nullptr);

  // The server that answered last (or the first one).
  const std::string& CurrentServer() const { return servers_[current_]; }

 private:
  // Sends with failover; the response has an HTTP status (any) or it is an error.
  Result<HttpResponse> Send(const HttpRequest& request);
  Result<nlohmann::json> Json(const HttpRequest& request);

  HttpTransport& transport_;
  std::vector<std::string> servers_;
  size_t current_ = 0;
};

// Percent-encodes a path segment (names are DNS labels, but be safe).
std::string PathEscape(std::string_view segment);

}  // namespace kmosix::ctl
