#include "transport_http/rest.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include "kmosix/json_text.h"

namespace kmosix::rest {

void Reply(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(DumpJson(body, 2) + "\n", "application/json");
}

void ReplyError(httplib::Response& res, const Status& s) {
  Reply(res, HttpStatus(s.code()), ErrorJson(s));
}

bool BodyTooLarge(const httplib::Request& req, httplib::Response& res, size_t max) {
  if (req.body.size() <= max) return false;
  ReplyError(res, InvalidError("request body larger than " + std::to_string(max) + " bytes"));
  res.status = 413;
  return true;
}

void InstallJsonErrorHandlers(httplib::Server& server) {
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    Status s = res.status == 404   ? NotFoundError("no route " + req.method + " " + req.path)
               : res.status == 413 ? InvalidError("request body too large")
               : res.status == 405 ? InvalidError("method not allowed")
               : (req.method == "POST" || req.method == "PUT") &&
                       !req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")
                   ? InvalidError("bad request: a " + req.method +
                                  " needs a body or \"Content-Length: 0\" (curl: -d '' or -d '{}')")
                   : InvalidError("bad request");
    res.set_content(DumpJson(ErrorJson(s)) + "\n", "application/json");
  });
  server.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        spdlog::error("{} {}: {}", req.method, req.path, what);
        Reply(res, 500, ErrorJson(FailedError(what)));
      });
}

bool SplitHostPort(const std::string& s, std::string& host, int& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  const std::string digits = s.substr(colon + 1);
  if (digits.empty() || digits.size() > 5 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return false;
  host = s.substr(0, colon);
  port = std::stoi(digits);
  return port > 0 && port < 65536;
}

StatusOr<std::unique_ptr<httplib::Client>> MakeClient(const std::string& url,
                                                      const tls::Files& identity,
                                                      const std::string& who) {
  const bool https = url.rfind("https://", 0) == 0;
  if (!https && url.rfind("http://", 0) != 0) {
    return InvalidError("target \"" + url + "\" is not an http:// URL");
  }
  if (identity.Complete() && !https)
    return InvalidError("target \"" + url + "\" is plain http://: " + who + " speaks only TLS");
  if (https && !identity.Complete())
    return InvalidError("target \"" + url + "\" is https:// but " + who + " has no TLS identity");
  std::string base = url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  auto cli = https ? std::make_unique<httplib::Client>(base, identity.cert, identity.key)
                   : std::make_unique<httplib::Client>(base);
  if (!cli->is_valid()) return InvalidError("target \"" + url + "\" is not a valid URL");
  if (https) {
    // httplib loads only the file's first certificate; an identity issued
    // under an intermediate (agents' pod certificates: leaf, node issuer)
    // must present the whole chain, or the server cannot verify it.
    SSL_CTX* ctx = cli->ssl_context();
    if (ctx == nullptr || SSL_CTX_use_certificate_chain_file(ctx, identity.cert.c_str()) != 1) {
      ERR_clear_error();
      return InvalidError("TLS identity " + identity.cert + ": cannot load its certificate chain");
    }
    cli->set_ca_cert_path(identity.ca.c_str());
    cli->enable_server_certificate_verification(true);
  }
  return cli;
}

}  // namespace kmosix::rest
