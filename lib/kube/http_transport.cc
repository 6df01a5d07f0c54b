// The real Transport on cpp-httplib (Debian's 0.11, a shared library):
// SSLClient with the CA, client certificate and key from memory (X509 /
// EVP_PKEY objects), TLS 1.2 or newer; plain ClientImpl for http:// servers.
// Plain calls reuse keep-alive connections from a small pool; every stream
// gets its own connection, which a poller thread shuts down when `stop`
// turns true (httplib's ClientImpl::stop is the one thread-safe way out of
// a blocking read).
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kube/transport.h"

namespace kmosix::kube {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

BioPtr MemBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Blocks SIGPIPE in this thread while a request runs and swallows one that
// a write to a closed connection raised (OpenSSL writes with write(2), not
// send(MSG_NOSIGNAL)): the process's signal disposition stays untouched.
class NoSigpipe {
 public:
  NoSigpipe() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~NoSigpipe() {
    if (!was_pending_) {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGPIPE);
      timespec zero{0, 0};
      while (sigtimedwait(&set, nullptr, &zero) > 0) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  NoSigpipe(const NoSigpipe&) = delete;
  NoSigpipe& operator=(const NoSigpipe&) = delete;

 private:
  sigset_t old_;
  bool was_pending_ = false;
};

// Every certificate of a PEM bundle.
std::vector<X509Ptr> ReadCerts(const std::string& pem) {
  std::vector<X509Ptr> out;
  BioPtr bio = MemBio(pem);
  if (!bio) return out;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the loop ends on a "no start line" error
  return out;
}

KeyPtr ReadKey(const std::string& pem) {
  BioPtr bio = MemBio(pem);
  if (!bio) return nullptr;
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  return key;
}

struct Endpoint {
  bool tls = true;
  std::string host;
  int port = 443;
  std::string prefix;  // path prefix of the server URL ("" or "/x")
};

StatusOr<Endpoint> ParseServer(const std::string& url) {
  Endpoint ep;
  std::string rest;
  if (url.rfind("https://", 0) == 0) {
    rest = url.substr(8);
  } else if (url.rfind("http://", 0) == 0) {
    ep.tls = false;
    ep.port = 80;
    rest = url.substr(7);
  } else {
    return InvalidError("server \"" + url + "\": not an http(s) URL");
  }
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) {
    ep.prefix = rest.substr(slash);
    while (!ep.prefix.empty() && ep.prefix.back() == '/') ep.prefix.pop_back();
  }
  std::string port;
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string::npos) return InvalidError("server \"" + url + "\": bad IPv6 host");
    ep.host = hostport.substr(1, close - 1);
    if (close + 1 < hostport.size()) {
      if (hostport[close + 1] != ':') return InvalidError("server \"" + url + "\": bad host");
      port = hostport.substr(close + 2);
    }
  } else {
    size_t colon = hostport.rfind(':');
    ep.host = hostport.substr(0, colon);
    if (colon != std::string::npos) port = hostport.substr(colon + 1);
  }
  if (ep.host.empty()) return InvalidError("server \"" + url + "\": no host");
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
      return InvalidError("server \"" + url + "\": bad port");
    }
    ep.port = std::stoi(port);
    if (ep.port <= 0 || ep.port > 65535) return InvalidError("server \"" + url + "\": bad port");
  }
  return ep;
}

Status FromError(const std::string& what, httplib::Error e) {
  std::string msg = what + ": " + httplib::to_string(e);
  if (e == httplib::Error::SSLServerVerification || e == httplib::Error::SSLLoadingCerts) {
    return FailedError(msg + " (TLS: the server's certificate is not trusted)");
  }
  return RetryError(msg);
}

template <typename D>
std::pair<time_t, time_t> SecUsec(D d) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return {static_cast<time_t>(us / 1000000), static_cast<time_t>(us % 1000000)};
}

class HttpLibTransport final : public Transport {
 public:
  HttpLibTransport(Config config, Endpoint ep, std::chrono::milliseconds stream_read_timeout)
      : config_(std::move(config)), ep_(std::move(ep)), stream_read_timeout_(stream_read_timeout) {}
  ~HttpLibTransport() override {
    NoSigpipe no_sigpipe;  // closing TLS connections writes
    idle_.clear();
  }

  // Builds one connection; kInvalid if the TLS material is unusable.
  StatusOr<std::unique_ptr<httplib::ClientImpl>> Make(std::chrono::milliseconds read_timeout) {
    std::unique_ptr<httplib::ClientImpl> cli;
    if (ep_.tls) {
      X509Ptr cert;
      KeyPtr key;
      if (!config_.client_cert_pem.empty()) {
        auto certs = ReadCerts(config_.client_cert_pem);
        if (certs.empty()) return InvalidError("client certificate: no PEM certificate");
        cert = std::move(certs[0]);
        key = ReadKey(config_.client_key_pem);
        if (!key) return InvalidError("client key: no PEM private key");
        if (X509_check_private_key(cert.get(), key.get()) != 1) {
          ERR_clear_error();
          return InvalidError("client key does not match the client certificate");
        }
      }
      // SSLClient takes its own references (SSL_CTX_use_certificate / _PrivateKey).
      auto ssl = std::make_unique<httplib::SSLClient>(ep_.host, ep_.port, cert.get(), key.get());
      if (!ssl->is_valid()) return InvalidError("TLS: the client certificate/key were refused");
      SSL_CTX_set_min_proto_version(ssl->ssl_context(), TLS1_2_VERSION);
      if (!config_.ca_pem.empty()) {
        auto cas = ReadCerts(config_.ca_pem);
        if (cas.empty()) return InvalidError("certificate authority: no PEM certificate");
        X509_STORE* store = X509_STORE_new();
        for (auto& ca : cas) X509_STORE_add_cert(store, ca.get());  // adds a reference
        ssl->set_ca_cert_store(store);  // owned by the SSL_CTX from now on
      }
      ssl->enable_server_certificate_verification(!config_.insecure_skip_verify);
      cli = std::move(ssl);
    } else {
      cli = std::make_unique<httplib::ClientImpl>(ep_.host, ep_.port);
    }
    auto [cs, cu] = SecUsec(config_.connect_timeout);
    cli->set_connection_timeout(cs, cu);
    auto [rs, ru] = SecUsec(read_timeout);
    cli->set_read_timeout(rs, ru);
    cli->set_write_timeout(rs, ru);
    cli->set_keep_alive(true);
    cli->set_tcp_nodelay(true);
    cli->set_follow_location(false);
    return cli;
  }

  StatusOr<HttpResponse> Do(const HttpRequest& req) override {
    NoSigpipe no_sigpipe;
    std::unique_ptr<httplib::ClientImpl> cli;
    {
      std::lock_guard lock(mu_);
      if (!idle_.empty()) {
        cli = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!cli) {
      auto made = Make(config_.read_timeout);
      if (!made.ok()) return made.status();
      cli = std::move(*made);
    }
    httplib::Headers headers(req.headers.begin(), req.headers.end());
    std::string target = ep_.prefix + req.target;
    if (req.method != "GET" && req.method != "POST" && req.method != "PUT" &&
        req.method != "PATCH" && req.method != "DELETE") {
      return InvalidError("unsupported method " + req.method);
    }
    httplib::Result res = [&] {
      const char* ct = req.content_type.c_str();
      if (req.method == "GET") return cli->Get(target.c_str(), headers);
      if (req.method == "POST") return cli->Post(target.c_str(), headers, req.body, ct);
      if (req.method == "PUT") return cli->Put(target.c_str(), headers, req.body, ct);
      if (req.method == "PATCH") return cli->Patch(target.c_str(), headers, req.body, ct);
      return cli->Delete(target.c_str(), headers, req.body, ct);
    }();
    if (!res) return FromError(req.method + " " + req.target, res.error());
    HttpResponse out{res->status, res->body};
    {
      std::lock_guard lock(mu_);
      if (idle_.size() < 4) idle_.push_back(std::move(cli));
    }
    return out;
  }

  StatusOr<HttpResponse> Stream(const HttpRequest& req, const ChunkHandler& on_chunk,
                                const std::atomic<bool>& stop) override {
    if (stop.load()) return HttpResponse{0, ""};
    NoSigpipe no_sigpipe;
    auto made = Make(stream_read_timeout_);
    if (!made.ok()) return made.status();
    std::unique_ptr<httplib::ClientImpl> cli = std::move(*made);
    httplib::Headers headers(req.headers.begin(), req.headers.end());
    std::string target = ep_.prefix + req.target;

    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::thread poller([&] {
      NoSigpipe poller_no_sigpipe;
      std::unique_lock lock(m);
      while (!done) {
        if (stop.load()) cli->stop();  // shuts the socket down; the read fails at once
        cv.wait_for(lock, std::chrono::milliseconds(100));
      }
    });
    int status = 0;
    bool ended_by_handler = false;
    std::string error_body;
    auto res = cli->Get(
        target.c_str(), headers,
        [&](const httplib::Response& r) {
          status = r.status;
          return !stop.load();
        },
        [&](const char* data, size_t len) {
          if (stop.load()) return false;
          if (status / 100 != 2) {
            if (error_body.size() < (1u << 20)) error_body.append(data, len);
            return true;
          }
          if (!on_chunk(std::string_view(data, len))) {
            ended_by_handler = true;
            return false;
          }
          return true;
        });
    {
      std::lock_guard lock(m);
      done = true;
    }
    cv.notify_all();
    poller.join();
    if (ended_by_handler || stop.load()) return HttpResponse{status, ""};
    if (!res) return FromError("watch " + req.target, res.error());
    return HttpResponse{res->status, status / 100 == 2 ? "" : error_body};
  }

 private:
  const Config config_;
  const Endpoint ep_;
  const std::chrono::milliseconds stream_read_timeout_;
  std::mutex mu_;
  std::vector<std::unique_ptr<httplib::ClientImpl>> idle_;
};

}  // namespace

StatusOr<std::unique_ptr<Transport>> NewHttpTransport(
    const Config& config, std::chrono::milliseconds stream_read_timeout) {
  auto ep = ParseServer(config.server);
  if (!ep.ok()) return ep.status();
  auto t = std::make_unique<HttpLibTransport>(config, *ep, stream_read_timeout);
  // Build (and drop) one connection now, so bad TLS material fails here.
  auto probe = t->Make(config.read_timeout);
  if (!probe.ok()) return probe.status();
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace kmosix::kube
