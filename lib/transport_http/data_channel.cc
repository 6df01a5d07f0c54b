#include "transport_http/data_channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "kmosix/intake_limits.h"
#include "kmosix/json_text.h"
#include "kmosix/spec_json.h"
#include "transport_http/peer_replies.h"
#include "transport_http/stream_receiver.h"

namespace kmosix {
namespace {

using nlohmann::json;
using peer_reply::ParseReady;
using peer_reply::ParseVerdict;
using tls::OpenSslError;
constexpr std::string_view kMagic = "KMXDATA2 ";
constexpr size_t kMaxLine = 4096;

std::string Errno() { return std::strerror(errno); }

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

void SetTimeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void SetBuffers(int fd, size_t size) {
  int n = static_cast<int>(size);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof n);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n);
}

// Waits until `fd` can do what OpenSSL wants (`ssl_error` is WANT_READ or
// WANT_WRITE); false on timeout or poll error.
bool WaitFor(int fd, int ssl_error, std::chrono::milliseconds timeout) {
  pollfd p{fd, static_cast<short>(ssl_error == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
  while (true) {
    int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) errno = ETIMEDOUT;
    return r > 0;
  }
}

// One stream's connection: a TCP socket (blocking, with SO_RCVTIMEO and
// SO_SNDTIMEO), or TLS over it (non-blocking, every wait a poll bounded by
// the io timeout). Reads and writes may run on different threads only one
// at a time (OpenSSL: one SSL, one thread at a time).
class Conn {
 public:
  Conn(int fd, std::chrono::milliseconds timeout) : fd_(fd), timeout_(timeout) {}
  ~Conn() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  int fd() const { return fd_; }
  SSL* ssl() const { return ssl_; }
  const std::string& error() const { return error_; }

  // Takes `ssl` (set up by the caller) over this socket and runs the
  // handshake. false: error() says why; tls_refused() tells a TLS-level
  // refusal (bad certificate, alert) from a lost connection.
  bool Handshake(SSL* ssl, bool server) {
    ssl_ = ssl;
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
    SSL_set_fd(ssl_, fd_);
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    // The client keeps the first bytes the server sent during the handshake:
    // a busy target answers in plain text before any TLS.
    BIO* rbio = SSL_get_rbio(ssl_);
    if (!server) {
      BIO_set_callback_arg(rbio, reinterpret_cast<char*>(this));
      BIO_set_callback_ex(rbio, &Conn::RecordRead);
    }
    const bool ok = RunHandshake(server);
    if (!server) BIO_set_callback_ex(rbio, nullptr);
    // A JSON line starts with '{', which no TLS record does.
    if (!ok && !server && !first_bytes_.empty() && first_bytes_[0] == '{') plain_answer_ = true;
    return ok;
  }
  bool tls_refused() const { return tls_refused_; }
  // The target answered in plain text instead of a TLS handshake (busy):
  // its line, read in plain.
  bool plain_answer() const { return plain_answer_; }
  std::string PlainLine() {
    std::string line = first_bytes_.substr(0, first_bytes_.find('\n'));
    if (first_bytes_.find('\n') != std::string::npos) return line;
    char c;
    while (line.size() < kMaxLine) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(timeout_.count())) != 1) break;
      if (::recv(fd_, &c, 1, 0) != 1 || c == '\n') break;
      line.push_back(c);
    }
    return line;
  }

 private:
  static long RecordRead(BIO* bio, int oper, const char* argp, size_t, int, long, int ret,
                         size_t* processed) {
    if (oper == (BIO_CB_READ | BIO_CB_RETURN) && ret > 0 && processed != nullptr) {
      auto* self = reinterpret_cast<Conn*>(BIO_get_callback_arg(bio));
      const size_t room = kMaxLine - std::min(kMaxLine, self->first_bytes_.size());
      self->first_bytes_.append(argp, std::min(room, *processed));
    }
    return ret;
  }

  bool RunHandshake(bool server) {
    while (true) {
      ERR_clear_error();
      errno = 0;
      int r = server ? SSL_accept(ssl_) : SSL_connect(ssl_);
      if (r == 1) return true;
      int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (!WaitFor(fd_, e, timeout_)) return Fail(false, "TLS handshake: " + Errno());
        continue;
      }
      if (e == SSL_ERROR_SSL) {
        std::string why = OpenSslError();
        long v = SSL_get_verify_result(ssl_);
        if (v != X509_V_OK) why += " (" + std::string(X509_verify_cert_error_string(v)) + ")";
        return Fail(true, "TLS handshake: " + why);
      }
      return Fail(false, "TLS handshake: " + (errno != 0 ? Errno() : "connection closed"));
    }
  }

 public:
  // Up to n bytes: > 0 read, 0 at the clean end of the peer's sending (FIN;
  // with TLS close_notify), < 0 on error, timeout or (TLS) an end without
  // close_notify.
  ssize_t Read(char* p, size_t n) {
    if (ssl_ == nullptr) {
      while (true) {
        ssize_t r = ::recv(fd_, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) error_ = Errno();
        return r;
      }
    }
    while (true) {
      ERR_clear_error();
      errno = 0;
      size_t got = 0;
      int r = SSL_read_ex(ssl_, p, n, &got);
      if (r == 1) return static_cast<ssize_t>(got);
      int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_ZERO_RETURN) return 0;
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (WaitFor(fd_, e, timeout_)) continue;
        Fail(false, Errno());
        return -1;
      }
      if (e == SSL_ERROR_SSL) {
        Fail(true, "TLS: " + OpenSslError());
      } else {
        Fail(false, errno != 0 ? Errno() : "connection closed without close_notify");
      }
      return -1;
    }
  }

  bool WriteAll(const char* p, size_t n) {
    while (n > 0) {
      if (ssl_ == nullptr) {
        ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
        if (w < 0) {
          if (errno == EINTR) continue;
          error_ = Errno();
          return false;
        }
        p += w;
        n -= static_cast<size_t>(w);
        continue;
      }
      ERR_clear_error();
      errno = 0;
      size_t w = 0;
      int r = SSL_write_ex(ssl_, p, n, &w);
      if (r == 1) {  // partial writes are on: the rest goes next round
        p += w;
        n -= w;
        continue;
      }
      int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (WaitFor(fd_, e, timeout_)) continue;  // retried with the same bytes
        return Fail(false, Errno());
      }
      return Fail(e == SSL_ERROR_SSL, e == SSL_ERROR_SSL ? "TLS: " + OpenSslError() : Errno());
    }
    return true;
  }

  // The end of this side's sending: FIN, or TLS close_notify (this side can
  // still read the peer's answer).
  bool EndWrites() {
    if (ssl_ == nullptr) return ::shutdown(fd_, SHUT_WR) == 0;
    while (true) {
      ERR_clear_error();
      errno = 0;
      int r = SSL_shutdown(ssl_);
      if (r >= 0) return true;  // 0: close_notify sent, the peer's not yet read
      int e = SSL_get_error(ssl_, r);
      if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && WaitFor(fd_, e, timeout_))
        continue;
      return Fail(false, "TLS close_notify: " + OpenSslError());
    }
  }

  // Whether the peer has sent something not yet read (an early answer).
  bool Readable() const {
    if (ssl_ != nullptr && SSL_pending(ssl_) > 0) return true;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  }

  void set_timeout(std::chrono::milliseconds t) {
    timeout_ = t;
    SetTimeouts(fd_, t);
  }

 private:
  bool Fail(bool tls_refused, std::string why) {
    tls_refused_ = tls_refused_ || tls_refused;
    if (error_.empty()) error_ = std::move(why);
    return false;
  }

  int fd_;
  std::chrono::milliseconds timeout_;
  SSL* ssl_ = nullptr;
  std::string error_;
  bool tls_refused_ = false;
  bool plain_answer_ = false;
  std::string first_bytes_;  // client, during the handshake
};

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads one '\n'-terminated line (without it); false on EOF/error/too long.
// Byte by byte, so that nothing after the line is consumed.
bool ReadLine(Conn& conn, std::string& line) {
  line.clear();
  char c;
  while (line.size() < kMaxLine) {
    if (conn.Read(&c, 1) <= 0) return false;
    if (c == '\n') return true;
    line.push_back(c);
  }
  return false;
}

void Answer(int fd, const json& j) {
  std::string line = DumpJson(j) + "\n";
  (void)WriteAll(fd, line.data(), line.size());
}

// Answers and ends this side's sending (TLS: close_notify after the line).
void Answer(Conn& conn, const json& j) {
  std::string line = DumpJson(j) + "\n";
  if (conn.WriteAll(line.data(), line.size())) (void)conn.EndWrites();
}

// Answers a stream refused or failed before its end, then reads and drops
// what the source still sends (it stops once it sees the answer) until its
// end, kLingerBytes or kLingerTime: closing with unread bytes would reset
// the connection, and the reset can destroy the answer before the source
// reads it.
constexpr uint64_t kLingerBytes = 64ull << 20;
constexpr std::chrono::milliseconds kLingerTime{2000};
void AnswerEarly(Conn& conn, const json& j) {
  Answer(conn, j);
  conn.set_timeout(kLingerTime);
  const auto deadline = std::chrono::steady_clock::now() + kLingerTime;
  std::vector<char> sink(256 << 10);
  uint64_t dropped = 0;
  while (dropped < kLingerBytes && std::chrono::steady_clock::now() < deadline) {
    ssize_t n = conn.Read(sink.data(), sink.size());
    if (n <= 0) break;
    dropped += static_cast<uint64_t>(n);
  }
}

StatusOr<int> Connect(const std::string& host, int port, std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  if (int e = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); e != 0) {
    return RetryError("data channel: cannot resolve " + host + ": " + ::gai_strerror(e));
  }
  Status last = RetryError("data channel: no address for " + host);
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int r = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (r < 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      r = ::poll(&p, 1, static_cast<int>(timeout.count()));
      int err = 0;
      socklen_t len = sizeof err;
      if (r == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        r = 0;
      } else {
        errno = r == 0 ? ETIMEDOUT : (err != 0 ? err : errno);
        r = -1;
      }
    }
    if (r == 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      ::freeaddrinfo(res);
      return fd;
    }
    last = RetryError("data channel: connect " + host + ":" + service + ": " + Errno());
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return last;
}

// A bounded queue of buffers between a producer and a consumer thread, so
// that hashing on one side of the stream overlaps socket I/O on the other.
class Pipe {
 public:
  Pipe(size_t buffers, size_t size) {
    for (size_t i = 0; i < buffers; ++i) free_.push_back(std::vector<char>(size));
  }
  // Producer: an empty buffer to fill (nullopt once the consumer quit).
  std::optional<std::vector<char>> TakeFree() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return !free_.empty() || closed_; });
    if (closed_) return std::nullopt;
    auto b = std::move(free_.front());
    free_.pop_front();
    return b;
  }
  // Producer: hands over `n` bytes of `b`; n == 0 marks the end.
  void Put(std::vector<char> b, size_t n) {
    std::lock_guard l(mu_);
    full_.emplace_back(std::move(b), n);
    cv_.notify_all();
  }
  // Consumer: the next filled buffer and its length (0: end).
  std::pair<std::vector<char>, size_t> TakeFull() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return !full_.empty(); });
    auto item = std::move(full_.front());
    full_.pop_front();
    return item;
  }
  void GiveBack(std::vector<char> b) {
    std::lock_guard l(mu_);
    free_.push_back(std::move(b));
    cv_.notify_all();
  }
  // Consumer: stop the producer (it sees nullopt from TakeFree).
  void Close() {
    std::lock_guard l(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<char>> free_;
  std::deque<std::pair<std::vector<char>, size_t>> full_;
  bool closed_ = false;
};

constexpr size_t kPipeBuffers = 4;

}  // namespace

DataServer::DataServer(MigrationTarget& target, Clock& clock, Options options)
    : target_(target), clock_(clock), options_(options) {}

DataServer::~DataServer() {
  Stop();
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

namespace {

// Both ends: OpenSSL reads ahead into a large buffer (fewer recv calls for
// a stream of 16 KiB records).
constexpr size_t kTlsReadBuffer = 256 << 10;
constexpr unsigned char kSessionContext[] = "kmosix-data";
constexpr long kSessionLifetimeSeconds = 600;

}  // namespace

Status DataServer::Start(const std::string& host, int port) {
  if (options_.tls != nullptr && ssl_ctx_ == nullptr) {
    ERR_clear_error();
    ssl_ctx_ = SSL_CTX_new(TLS_server_method());
    if (ssl_ctx_ == nullptr || !options_.tls->Configure(*ssl_ctx_, /*require_client_cert=*/true)) {
      return FailedError("data channel: TLS server context: " + OpenSslError());
    }
    // Sessions resume (TLS 1.3 tickets) across this server's connections.
    SSL_CTX_set_session_id_context(ssl_ctx_, kSessionContext, sizeof kSessionContext - 1);
    // ...for a bounded time: a resumed session keeps the identities verified
    // when it began, so a rotated or revoked certificate outlives its files
    // by at most this.
    SSL_CTX_set_timeout(ssl_ctx_, kSessionLifetimeSeconds);
    SSL_CTX_set_read_ahead(ssl_ctx_, 1);
    SSL_CTX_set_default_read_buffer_len(ssl_ctx_, kTlsReadBuffer);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  if (int e = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); e != 0) {
    return InvalidError("data channel: cannot resolve " + host + ": " + ::gai_strerror(e));
  }
  int fd = ::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 16) != 0) {
    Status s =
        FailedError("data channel: cannot listen on " + host + ":" + service + ": " + Errno());
    if (fd >= 0) ::close(fd);
    ::freeaddrinfo(res);
    return s;
  }
  ::freeaddrinfo(res);
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                     : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  listen_fd_ = fd;
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void DataServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  std::list<Worker> workers;
  {
    std::lock_guard lock(mu_);
    workers.swap(workers_);
  }
  for (auto& w : workers) w.thread.join();
}

void DataServer::AcceptLoop() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    sockaddr_storage addr{};
    socklen_t addr_len = sizeof addr;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &addr_len, SOCK_CLOEXEC);
    if (fd < 0) continue;
    char host[INET6_ADDRSTRLEN] = "?";
    const void* in =
        addr.ss_family == AF_INET6
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&addr)->sin_addr);
    ::inet_ntop(addr.ss_family, in, host, sizeof host);
    const int peer_port =
        ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    std::string peer = std::string(host) + ":" + std::to_string(peer_port);
    std::lock_guard lock(mu_);
    // Finished workers are joined as new ones come, so the list stays short.
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    if (options_.max_connections > 0 && active_.load() >= options_.max_connections) {
      refused_.fetch_add(1);
      Answer(fd, ErrorJson(BusyError("data channel busy: " + std::to_string(active_.load()) +
                                         " streams in flight, the limit is " +
                                         std::to_string(options_.max_connections),
                                     std::chrono::seconds(2))));
      ::close(fd);
      continue;
    }
    active_.fetch_add(1);
    auto done = std::make_shared<std::atomic<bool>>(false);
    workers_.push_back({std::thread([this, fd, done, peer] {
                          // No exception ends the agent: a stream's is its
                          // own failure (its connection was closed by Conn).
                          try {
                            Serve(fd, peer);
                          } catch (const std::exception& e) {
                            spdlog::error("data channel: stream from {}: unexpected exception: {}",
                                          peer, e.what());
                          } catch (...) {
                            spdlog::error("data channel: stream from {}: unexpected exception",
                                          peer);
                          }
                          active_.fetch_sub(1);
                          done->store(true);
                        }),
                        done});
  }
}

void DataServer::Serve(int raw_fd, const std::string& peer) {
  Conn conn(raw_fd, options_.io_timeout);
  SetTimeouts(conn.fd(), options_.io_timeout);
  SetBuffers(conn.fd(), options_.buffer_size);
  tls::Identity identity;
  if (ssl_ctx_ != nullptr) {
    ERR_clear_error();
    SSL* ssl = SSL_new(ssl_ctx_);
    if (ssl == nullptr || !conn.Handshake(ssl, /*server=*/true)) {
      if (ssl != nullptr && conn.ssl() == nullptr) SSL_free(ssl);
      handshake_failures_.fetch_add(1);
      if (options_.on_denied) options_.on_denied("tls_handshake");
      spdlog::warn("data channel: TLS handshake with {} failed: {}", peer,
                   ssl == nullptr ? OpenSslError() : conn.error());
      return;
    }
    identity = tls::PeerIdentity(conn.ssl());
  }
  std::string line;
  if (!ReadLine(conn, line) || line.rfind(kMagic, 0) != 0) {
    return AnswerEarly(conn,
                       ErrorJson(InvalidError("data channel: expected \"" + std::string(kMagic) +
                                              "<id>\" (a source of another kmosix version?)")));
  }
  const std::string id = line.substr(kMagic.size());
  if (Status s = ValidateName(id); !s.ok()) {
    return AnswerEarly(conn, ErrorJson(s.Annotate("migration id")));
  }
  if (options_.authorize) {
    if (Status s = options_.authorize(identity, id); !s.ok()) {
      denied_.fetch_add(1);
      if (options_.on_denied) options_.on_denied("not_allowed");
      spdlog::warn("data channel: stream for {} from {} ({}) refused: {}", id, peer,
                   identity.empty() ? "no identity" : identity.name, s.ToString());
      return AnswerEarly(conn, ErrorJson(s));
    }
  }
  DecoderOptions decoder = options_.decoder;
  // Over mutual TLS every byte is authenticated: a stream may skip file digests.
  decoder.accept_undigested = ssl_ctx_ != nullptr;
  StreamReceiver receiver(target_, clock_, decoder);
  if (Status s = receiver.Begin(id); !s.ok()) return AnswerEarly(conn, ErrorJson(s));
  // The source sends nothing more before this line: a refusal above never
  // meets a stream in flight.
  if (const std::string ready = json{{"ready", true}}.dump() + "\n";
      !conn.WriteAll(ready.data(), ready.size())) {
    (void)receiver.End(/*cut=*/true);
    return;
  }
  // A reader thread fills buffers from the socket while this one decodes
  // (writes and hashes) the previous ones. Only the reader touches the
  // connection until it has quit (OpenSSL: one thread per SSL at a time).
  Pipe pipe(kPipeBuffers, options_.buffer_size);
  std::atomic<bool> cut{false};
  std::thread reader([&] {
    while (auto b = pipe.TakeFree()) {
      size_t got = 0;
      while (got < b->size()) {  // fill whole buffers: fewer, larger decoder calls
        ssize_t n = conn.Read(b->data() + got, b->size() - got);
        if (n < 0) cut = true;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
        if (got >= (1u << 20)) break;
      }
      const bool end = got == 0;
      pipe.Put(std::move(*b), got);
      if (end) return;
    }
  });
  try {
    while (true) {
      auto [b, n] = pipe.TakeFull();
      if (n == 0) break;
      bool ok = receiver.Feed(b.data(), n).ok();
      pipe.GiveBack(std::move(b));
      // Failed: the reader quits after the read in progress (the source is
      // still sending, so it returns soon), then the answer goes out while
      // what follows is drained (AnswerEarly).
      if (!ok) break;
    }
  } catch (...) {
    pipe.Close();  // never leave a joinable reader behind (std::terminate)
    reader.join();
    throw;  // the worker logs it; the target's idle timeout aborts the stream
  }
  pipe.Close();
  reader.join();
  StatusOr<TransferStats> stats = receiver.End(cut);
  if (!stats.ok()) return AnswerEarly(conn, ErrorJson(stats.status()));
  Answer(conn, {{"bytes", stats->bytes}, {"files", stats->files}, {"seconds", stats->seconds}});
}

DataSessionCache::~DataSessionCache() {
  for (auto& [key, session] : sessions_) SSL_SESSION_free(session);
}

SSL_SESSION* DataSessionCache::Take(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(key);
  if (it == sessions_.end()) return nullptr;
  SSL_SESSION_up_ref(it->second);
  return it->second;
}

void DataSessionCache::Put(const std::string& key, SSL_SESSION* session) {
  std::lock_guard lock(mu_);
  SSL_SESSION*& slot = sessions_[key];
  if (slot != nullptr) SSL_SESSION_free(slot);
  slot = session;
}

void DataSessionCache::Forget(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(key);
  if (it == sessions_.end()) return;
  SSL_SESSION_free(it->second);
  sessions_.erase(it);
}

namespace {

bool IsIpAddress(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return ::inet_pton(AF_INET, host.c_str(), &a4) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

// TLS over `conn` as the client: the files' certificate, the server verified
// against the CA, `host` (IP or DNS SAN) and, if given, its node name.
Status ClientHandshake(Conn& conn, const std::string& host, const std::string& where,
                       const DataChannelOptions& options, const std::string& session_key) {
  KMX_ASSIGN_OR_RETURN(tls::CtxPtr ctx, tls::MakeClientContext(options.tls));
  SSL_CTX_set_read_ahead(ctx.get(), 1);
  SSL_CTX_set_default_read_buffer_len(ctx.get(), kTlsReadBuffer);
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx.get());  // holds its own reference to ctx
  if (ssl == nullptr) return FailedError("data channel: TLS: " + OpenSslError());
  const bool ip = IsIpAddress(host);
  int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str())
              : SSL_set1_host(ssl, host.c_str());
  if (ok == 1 && !ip) ok = SSL_set_tlsext_host_name(ssl, host.c_str());
  if (ok != 1) {
    SSL_free(ssl);
    return InvalidError("data channel: TLS: cannot check the host name " + host);
  }
  if (options.sessions != nullptr) {
    if (SSL_SESSION* s = options.sessions->Take(session_key)) {
      SSL_set_session(ssl, s);
      SSL_SESSION_free(s);
    }
  }
  if (!conn.Handshake(ssl, /*server=*/false)) {
    if (options.sessions != nullptr) options.sessions->Forget(session_key);
    if (conn.plain_answer()) return Status::Ok();  // the caller reads the answer line
    const std::string why = "data channel " + where + ": " + conn.error();
    return conn.tls_refused() ? FailedError(why) : RetryError(why);
  }
  if (SSL_session_reused(conn.ssl()) == 1 && options.sessions != nullptr) {
    options.sessions->CountResumed();
  }
  if (!options.expected_server_name.empty()) {
    tls::Identity id = tls::PeerIdentity(conn.ssl());
    if (id.name != options.expected_server_name) {
      return FailedError("data channel " + where + ": the server is \"" + id.name +
                         "\", not the expected \"" + options.expected_server_name + "\"");
    }
  }
  return Status::Ok();
}

}  // namespace

StatusOr<TransferStats> SendStream(const std::string& host, int port, const std::string& id,
                                   StreamEncoder& encoder, const DataChannelOptions& options) {
  const bool use_tls =
      !options.tls.ca.empty() || !options.tls.cert.empty() || !options.tls.key.empty();
  KMX_ASSIGN_OR_RETURN(int raw_fd, Connect(host, port, options.connect_timeout));
  Conn conn(raw_fd, options.io_timeout);
  SetTimeouts(conn.fd(), options.io_timeout);
  SetBuffers(conn.fd(), options.buffer_size);
  const std::string where = host + ":" + std::to_string(port);
  const std::string session_key = where + "/" + options.expected_server_name;
  if (use_tls) {
    KMX_RETURN_IF_ERROR(ClientHandshake(conn, host, where, options, session_key));
    if (conn.plain_answer()) {  // busy: read its line in plain text
      KMX_ASSIGN_OR_RETURN(TransferStats never, ParseVerdict(conn.PlainLine()));
      (void)never;
      return FailedError("data channel " + where + ": the target answered without TLS");
    }
  }
  std::string hello = std::string(kMagic) + id + "\n";
  if (!conn.WriteAll(hello.data(), hello.size())) {
    return RetryError("data channel " + where + ": connection lost (" + conn.error() + ")");
  }
  // The target authorizes and opens the migration before it takes a byte of
  // the stream: its refusal is read here, whole.
  std::string ready;
  if (!ReadLine(conn, ready)) {
    const std::string why = "data channel " + where + ": connection lost (" + conn.error() + ")";
    return conn.tls_refused() ? FailedError(why) : RetryError(why);
  }
  if (Status s = ParseReady(ready); !s.ok()) return s;
  bool sent = true;
  // An encoder thread reads and hashes the next buffers while this one sends.
  Pipe pipe(kPipeBuffers, options.buffer_size);
  Status encode_error;
  std::thread producer([&] {
    while (auto b = pipe.TakeFree()) {
      StatusOr<size_t> n = encoder.Read(b->data(), b->size());
      if (!n.ok()) encode_error = n.status();
      const size_t len = n.ok() ? *n : 0;
      pipe.Put(std::move(*b), len);
      if (len == 0) return;
    }
  });
  uint64_t written = 0;
  bool cut = false;
  while (sent) {
    auto [b, n] = pipe.TakeFull();
    if (n == 0) break;
    if (options.cut_after_bytes > 0 && written + n >= options.cut_after_bytes) {
      (void)conn.WriteAll(b.data(), options.cut_after_bytes - written);
      ::shutdown(conn.fd(), SHUT_RDWR);  // the cut: no close_notify, no more bytes
      cut = true;
      sent = false;
    } else if (conn.Readable()) {
      sent = false;  // the target answered early (it failed): stop and read why
    } else {
      sent = conn.WriteAll(b.data(), n);
      written += n;
      if (sent && options.on_written) options.on_written(written);
    }
    pipe.GiveBack(std::move(b));
  }
  const std::string write_error = conn.error();
  pipe.Close();
  producer.join();
  if (!encode_error.ok()) return encode_error;  // closing cuts the stream; the target aborts
  if (cut) return RetryError("data channel " + where + ": connection cut (failpoint stream.cut)");
  if (sent) (void)conn.EndWrites();
  // The target answers even when it stopped reading early.
  std::string verdict;
  if (!ReadLine(conn, verdict)) {
    const std::string why = "data channel " + where + ": connection lost (" +
                            (write_error.empty() ? conn.error() : write_error) + ")";
    if (conn.tls_refused()) return FailedError(why);  // a TLS alert: the target refused us
    return RetryError(why);
  }
  KMX_ASSIGN_OR_RETURN(TransferStats stats, ParseVerdict(verdict));
  if (!sent) return FailedError("data channel " + where + ": target stopped reading");
  if (use_tls && options.sessions != nullptr) {
    // TLS 1.3 tickets arrive after the handshake: the session now is the
    // one to resume next time.
    SSL_SESSION* session = SSL_get1_session(conn.ssl());
    if (session != nullptr && SSL_SESSION_is_resumable(session) == 1) {
      options.sessions->Put(session_key, session);
    } else if (session != nullptr) {
      SSL_SESSION_free(session);
    }
  }
  return stats;
}

}  // namespace kmosix
