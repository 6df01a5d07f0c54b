#include "kmosixctl/client.h"

#include <httplib.h>
#include <openssl/x509.h>

#include <atomic>
#include <cctype>
#include <mutex>
#include <set>

namespace kmosix::ctl {
namespace {

using nlohmann::json;

bool Is2xx(int status) { return status >= 200 && status < 300; }

bool IsHttps(const std::string& server) { return server.rfind("https://", 0) == 0; }

// ---- the cpp-httplib adapter --------------------------------------------------

class HttplibTransport final : public HttpTransport {
 public:
  explicit HttplibTransport(TransportOptions options) : options_(std::move(options)) {}

  HttpResponse Send(const std::string& server, const HttpRequest& request) override {
    auto cli = MakeClient(server, options_.read_timeout);
    const httplib::Headers headers(request.headers.begin(), request.headers.end());
    auto send = [&]() -> std::optional<httplib::Result> {
      if (request.method == "GET") return cli->Get(request.path, headers);
      if (request.method == "POST") {
        return cli->Post(request.path, headers, request.body,
                         request.content_type.empty() ? "application/json" : request.content_type);
      }
      if (request.method == "DELETE") {
        return request.body.empty()
                   ? cli->Delete(request.path, headers)
                   : cli->Delete(request.path, headers, request.body, request.content_type);
      }
      return std::nullopt;
    };
    auto sent = send();
    if (!sent) {
      HttpResponse out;
      out.failure = TransportFailure::kBroken;
      out.error = "method " + request.method + " not supported by kmosixctl";
      return out;
    }
    httplib::Result& r = *sent;
    if (!r) return Failure(*cli, r.error());
    HttpResponse out;
    out.status = r->status;
    out.content_type = r->get_header_value("Content-Type");
    out.body = std::move(r->body);
    return out;
  }

  HttpResponse Stream(const std::string& server, const HttpRequest& request,
                      const std::function<bool(std::string_view)>& on_data) override {
    HttpResponse out;
    auto cli = MakeClient(server, options_.stream_read_timeout);
    {
      std::lock_guard lock(mu_);
      if (cancelled_) {
        out.failure = TransportFailure::kCanceled;
        out.error = "cancelled";
        return out;
      }
      active_.insert(cli.get());
    }
    const httplib::Headers headers(request.headers.begin(), request.headers.end());
    auto r = cli->Get(
        request.path, headers,
        [&](const httplib::Response& res) {
          out.status = res.status;
          out.content_type = res.get_header_value("Content-Type");
          return true;
        },
        [&](const char* data, size_t n) {
          if (!Is2xx(out.status)) {
            if (out.body.size() < 64 * 1024) out.body.append(data, n);
            return true;
          }
          if (cancelled_.load()) return false;
          return on_data(std::string_view(data, n));
        });
    {
      std::lock_guard lock(mu_);
      active_.erase(cli.get());
    }
    if (!r) {
      HttpResponse f = Failure(*cli, r.error());
      if (cancelled_.load()) f.failure = TransportFailure::kCanceled;
      f.status = out.status;
      return f;
    }
    out.status = r->status;
    return out;
  }

  void CancelStreams() override {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    for (httplib::Client* c : active_) c->stop();
  }

 private:
  std::unique_ptr<httplib::Client> MakeClient(const std::string& server,
                                              std::chrono::milliseconds read_timeout) {
    auto cli = std::make_unique<httplib::Client>(server);
    cli->set_connection_timeout(options_.connect_timeout);
    cli->set_read_timeout(read_timeout);
    cli->set_write_timeout(options_.read_timeout);
    cli->set_keep_alive(false);
    if (!options_.token.empty()) cli->set_bearer_token_auth(options_.token);
    if (IsHttps(server)) {
      if (!options_.ca_file.empty()) cli->set_ca_cert_path(options_.ca_file);
      cli->enable_server_certificate_verification(!options_.insecure_skip_tls_verify);
    }
    return cli;
  }

  HttpResponse Failure(const httplib::Client& cli, httplib::Error e) {
    HttpResponse out;
    switch (e) {
      case httplib::Error::Connection:
        out.failure = TransportFailure::kConnect;
        out.error = "could not connect (refused, unreachable or timed out)";
        break;
      case httplib::Error::ConnectionTimeout:
        out.failure = TransportFailure::kConnect;
        out.error = "timed out connecting";
        break;
      case httplib::Error::BindIPAddress:
        out.failure = TransportFailure::kConnect;
        out.error = "could not bind a local address";
        break;
      case httplib::Error::SSLConnection:
        out.failure = TransportFailure::kTls;
        out.error = "TLS handshake failed";
        break;
      case httplib::Error::SSLLoadingCerts:
        out.failure = TransportFailure::kTls;
        out.error = "could not load the CA certificates" +
                    (options_.ca_file.empty() ? std::string() : " from " + options_.ca_file);
        break;
      case httplib::Error::SSLServerVerification: {
        out.failure = TransportFailure::kTls;
        out.error = "server certificate not trusted";
        const long v = cli.get_openssl_verify_result();
        if (v != X509_V_OK) out.error += std::string(": ") + X509_verify_cert_error_string(v);
        break;
      }
      case httplib::Error::Canceled:
        out.failure = TransportFailure::kCanceled;
        out.error = "cancelled";
        break;
      case httplib::Error::Read:
        out.failure = TransportFailure::kBroken;
        out.error = "connection closed or timed out while reading the answer";
        break;
      case httplib::Error::Write:
        out.failure = TransportFailure::kBroken;
        out.error = "connection broken while sending the request";
        break;
      default:
        out.failure = TransportFailure::kBroken;
        out.error = "request failed (" + httplib::to_string(e) + ")";
        break;
    }
    return out;
  }

  const TransportOptions options_;
  std::mutex mu_;
  std::set<httplib::Client*> active_;
  std::atomic<bool> cancelled_{false};
};

std::string Hint(int status, const std::string& message) {
  switch (status) {
    case 401:
      return "pass an API token with --token or KMOSIX_TOKEN (or the config file's token:)";
    case 403:
      return "this token may only read; writes need an admin token";
    case 404:
      if (message.rfind("no route", 0) == 0)
        return "this controller does not serve that endpoint (is it older than kmosixctl?)";
      return "";
    default:
      return "";
  }
}

}  // namespace

std::unique_ptr<HttpTransport> MakeHttplibTransport(TransportOptions options) {
  return std::make_unique<HttplibTransport>(std::move(options));
}

// ---- errors -----------------------------------------------------------------

std::string ApiError::ToString() const {
  std::string s = code.empty() ? std::string("Error") : code;
  if (http_status > 0) s += " (HTTP " + std::to_string(http_status) + ")";
  s += ": " + message;
  if (!hint.empty()) s += "\n  hint: " + hint;
  return s;
}

int ExitCodeForStatus(int http_status) {
  if (Is2xx(http_status)) return kExitOk;
  switch (http_status) {
    case 400:
    case 413:
      return kExitInvalid;
    case 401:
    case 403:
      return kExitAuth;
    case 404:
      return kExitNotFound;
    case 409:
      return kExitConflict;
    default:
      return kExitError;
  }
}

ApiError ErrorFromResponse(int http_status, std::string_view body, const std::string& method,
                           const std::string& path) {
  ApiError e;
  e.http_status = http_status;
  e.exit_code = ExitCodeForStatus(http_status);
  if (e.exit_code == kExitOk) e.exit_code = kExitError;  // a 2xx is no error; callers misuse
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object() && j.contains("message") && j["message"].is_string()) {
    e.message = j["message"].get<std::string>();
    if (j.contains("code") && j["code"].is_string()) e.code = j["code"].get<std::string>();
  } else {
    std::string text(body.substr(0, 300));
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    e.message = text.empty() ? method + " " + path + " answered without a body" : text;
  }
  if (e.code.empty()) e.code = "HTTP";
  e.hint = Hint(http_status, e.message);
  return e;
}

std::string PathEscape(std::string_view segment) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : segment) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// ---- the client -------------------------------------------------------------

ApiClient::ApiClient(HttpTransport& transport, std::vector<std::string> servers)
    : transport_(transport), servers_(std::move(servers)) {
  if (servers_.empty()) servers_.push_back("http://127.0.0.1:7800");
}

namespace {

// The error after every server failed; `failures` lists "server: what".
ApiError Unreachable(const std::vector<std::string>& failures, bool any_tls, bool plain_broken,
                     bool maybe_applied) {
  ApiError e;
  e.exit_code = kExitUnreachable;
  e.code = any_tls ? "TLS" : "Unreachable";
  e.message = failures.size() == 1 ? failures[0] : "no server answered: ";
  if (failures.size() > 1) {
    for (size_t i = 0; i < failures.size(); ++i) e.message += (i ? "; " : "") + failures[i];
  }
  if (maybe_applied) e.message += " (the request may or may not have been applied)";
  if (any_tls) {
    e.hint = "check --ca-file/KMOSIX_CA_FILE (the cluster's CA), or --insecure-skip-tls-verify";
  } else if (plain_broken) {
    e.hint = "if the server uses TLS, use an https:// URL";
  } else {
    e.hint = "is the controller running? check --server/KMOSIX_SERVER";
  }
  return e;
}

}  // namespace

Result<HttpResponse> ApiClient::Send(const HttpRequest& request) {
  std::vector<std::string> failures;
  bool any_tls = false, plain_broken = false;
  const bool idempotent = request.method == "GET";
  for (size_t i = 0; i < servers_.size(); ++i) {
    const size_t at = (current_ + i) % servers_.size();
    const std::string& server = servers_[at];
    HttpResponse r = transport_.Send(server, request);
    if (r.failure == TransportFailure::kNone) {
      current_ = at;
      return r;
    }
    failures.push_back(server + ": " + r.error);
    if (r.failure == TransportFailure::kTls) any_tls = true;
    if (r.failure == TransportFailure::kBroken && !IsHttps(server)) plain_broken = true;
    // A request that may have reached the server is not sent twice unless
    // sending it again changes nothing.
    if (r.failure == TransportFailure::kBroken && !idempotent) {
      current_ = at;
      return Unreachable(failures, any_tls, plain_broken, /*maybe_applied=*/true);
    }
    if (r.failure == TransportFailure::kCanceled) {
      ApiError e;
      e.code = "Canceled";
      e.message = "request cancelled";
      return e;
    }
  }
  return Unreachable(failures, any_tls, plain_broken, false);
}

Result<json> ApiClient::Json(const HttpRequest& request) {
  auto r = Send(request);
  if (!r.ok()) return r.error();
  if (!Is2xx(r->status)) return ErrorFromResponse(r->status, r->body, request.method, request.path);
  json j = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    ApiError e;
    e.exit_code = kExitError;
    e.http_status = r->status;
    e.code = "BadResponse";
    e.message = request.method + " " + request.path + " from " + CurrentServer() +
                " did not answer JSON: " + r->body.substr(0, 200);
    return e;
  }
  return j;
}

Result<json> ApiClient::Get(const std::string& path) {
  return Json({.method = "GET", .path = path, .body = "", .content_type = "", .headers = {}});
}

Result<json> ApiClient::Post(const std::string& path, const json& body) {
  // A null body is no body (cordon, pin).
  return Json({.method = "POST",
               .path = path,
               .body = body.is_null() ? "" : body.dump(),
               .content_type = "application/json",
               .headers = {}});
}

Result<json> ApiClient::Delete(const std::string& path) {
  return Json({.method = "DELETE", .path = path, .body = "", .content_type = "", .headers = {}});
}

Result<std::string> ApiClient::GetText(const std::string& path) {
  HttpRequest req{.method = "GET", .path = path, .body = "", .content_type = "", .headers = {}};
  auto r = Send(req);
  if (!r.ok()) return r.error();
  if (!Is2xx(r->status)) return ErrorFromResponse(r->status, r->body, req.method, req.path);
  return r->body;
}

std::optional<ApiError> ApiClient::Stream(
    const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers,
    const std::function<bool(std::string_view)>& on_data, bool* ended_by_server) {
  if (ended_by_server) *ended_by_server = false;
  HttpRequest req{
      .method = "GET", .path = path, .body = "", .content_type = "", .headers = headers};
  std::vector<std::string> failures;
  bool any_tls = false, plain_broken = false;
  for (size_t i = 0; i < servers_.size(); ++i) {
    const size_t at = (current_ + i) % servers_.size();
    const std::string& server = servers_[at];
    bool got_data = false;
    HttpResponse r = transport_.Stream(server, req, [&](std::string_view chunk) {
      got_data = true;
      return on_data(chunk);
    });
    if (r.failure == TransportFailure::kCanceled) return std::nullopt;
    if (r.failure == TransportFailure::kNone || r.status != 0) {
      current_ = at;
      if (r.status != 0 && !Is2xx(r.status))
        return ErrorFromResponse(r.status, r.body, req.method, req.path);
      if (r.failure == TransportFailure::kNone) {
        if (ended_by_server) *ended_by_server = true;
        return std::nullopt;
      }
    }
    failures.push_back(server + ": " + r.error);
    if (r.failure == TransportFailure::kTls) any_tls = true;
    if (r.failure == TransportFailure::kBroken && !IsHttps(server)) plain_broken = true;
    // A stream that delivered data and then broke: the caller resumes it.
    if (got_data) {
      current_ = at;
      return Unreachable(failures, any_tls, plain_broken, false);
    }
  }
  return Unreachable(failures, any_tls, plain_broken, false);
}

}  // namespace kmosix::ctl
