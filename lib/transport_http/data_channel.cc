#include "transport_http/data_channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "kmosix/intake_limits.h"
#include "kmosix/spec_json.h"
#include "transport_http/stream_receiver.h"

namespace kmosix {
namespace {

using nlohmann::json;
constexpr std::string_view kMagic = "KMXDATA1 ";
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
bool ReadLine(int fd, std::string& line) {
  line.clear();
  char c;
  while (line.size() < kMaxLine) {
    ssize_t r = ::recv(fd, &c, 1, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    if (c == '\n') return true;
    line.push_back(c);
  }
  return false;
}

void Answer(int fd, const json& j) {
  std::string line = j.dump() + "\n";
  (void)WriteAll(fd, line.data(), line.size());
}

StatusOr<TransferStats> ParseVerdict(const std::string& line) {
  json j = json::parse(line, nullptr, false);
  if (!j.is_object()) return FailedError("data channel: malformed answer from the target");
  if (j.contains("code") && j["code"].is_string()) {
    for (Code c : {Code::kRetry, Code::kConflict, Code::kInvalid, Code::kNotFound, Code::kFailed}) {
      if (CodeName(c) == j["code"].get<std::string>()) {
        return Status(c, "target: " + j.value("message", std::string()));
      }
    }
    return FailedError("target: " + j.value("message", std::string()));
  }
  if (!j.contains("bytes") || !j["bytes"].is_number_unsigned() || !j.contains("files") ||
      !j["files"].is_number_unsigned()) {
    return FailedError("data channel: answer lacks bytes/files");
  }
  TransferStats s;
  s.bytes = j["bytes"].get<uint64_t>();
  s.files = j["files"].get<uint64_t>();
  return s;
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

DataServer::~DataServer() { Stop(); }

Status DataServer::Start(const std::string& host, int port) {
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
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
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
    workers_.push_back({std::thread([this, fd, done] {
                          Serve(fd);
                          active_.fetch_sub(1);
                          done->store(true);
                        }),
                        done});
  }
}

void DataServer::Serve(int raw_fd) {
  Fd fd(raw_fd);
  SetTimeouts(fd.get(), options_.io_timeout);
  SetBuffers(fd.get(), options_.buffer_size);
  std::string line;
  if (!ReadLine(fd.get(), line) || line.rfind(kMagic, 0) != 0) {
    return Answer(fd.get(), ErrorJson(InvalidError("data channel: expected \"KMXDATA1 <id>\"")));
  }
  const std::string id = line.substr(kMagic.size());
  if (Status s = ValidateName(id); !s.ok()) {
    return Answer(fd.get(), ErrorJson(s.Annotate("migration id")));
  }
  StreamReceiver receiver(target_, clock_, options_.decoder);
  if (Status s = receiver.Begin(id); !s.ok()) return Answer(fd.get(), ErrorJson(s));
  // A reader thread fills buffers from the socket while this one decodes
  // (writes and hashes) the previous ones.
  Pipe pipe(kPipeBuffers, options_.buffer_size);
  std::atomic<bool> cut{false};
  std::thread reader([&] {
    while (auto b = pipe.TakeFree()) {
      size_t got = 0;
      while (got < b->size()) {  // fill whole buffers: fewer, larger decoder calls
        ssize_t n = ::recv(fd.get(), b->data() + got, b->size() - got, 0);
        if (n < 0 && errno == EINTR) continue;
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
  while (true) {
    auto [b, n] = pipe.TakeFull();
    if (n == 0) break;
    bool ok = receiver.Feed(b.data(), n).ok();
    pipe.GiveBack(std::move(b));
    if (!ok) {
      ::shutdown(fd.get(), SHUT_RD);  // wakes the reader; answer at once
      break;
    }
  }
  pipe.Close();
  reader.join();
  StatusOr<TransferStats> stats = receiver.End(cut);
  if (!stats.ok()) return Answer(fd.get(), ErrorJson(stats.status()));
  Answer(fd.get(), {{"bytes", stats->bytes}, {"files", stats->files}, {"seconds", stats->seconds}});
}

StatusOr<TransferStats> SendStream(const std::string& host, int port, const std::string& id,
                                   StreamEncoder& encoder, const DataChannelOptions& options) {
  KMX_ASSIGN_OR_RETURN(int raw_fd, Connect(host, port, options.connect_timeout));
  Fd fd(raw_fd);
  SetTimeouts(fd.get(), options.io_timeout);
  SetBuffers(fd.get(), options.buffer_size);
  const std::string where = host + ":" + std::to_string(port);
  std::string hello = std::string(kMagic) + id + "\n";
  bool sent = WriteAll(fd.get(), hello.data(), hello.size());
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
  while (sent) {
    auto [b, n] = pipe.TakeFull();
    if (n == 0) break;
    sent = WriteAll(fd.get(), b.data(), n);
    pipe.GiveBack(std::move(b));
  }
  const int write_errno = errno;
  pipe.Close();
  producer.join();
  if (!encode_error.ok()) return encode_error;  // closing cuts the stream; the target aborts
  ::shutdown(fd.get(), SHUT_WR);
  // The target answers even when it stopped reading early.
  std::string verdict;
  if (!ReadLine(fd.get(), verdict)) {
    return RetryError("data channel " + where + ": connection lost (" +
                      std::strerror(sent ? errno : write_errno) + ")");
  }
  KMX_ASSIGN_OR_RETURN(TransferStats stats, ParseVerdict(verdict));
  if (!sent) return FailedError("data channel " + where + ": target stopped reading");
  return stats;
}

}  // namespace kmosix
