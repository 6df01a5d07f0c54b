#include "cut_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kmosix::e2e {
namespace {

bool SendAll(int fd, const char* p, size_t n) {
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

// Closes with RST instead of FIN: the peer sees a reset connection.
void Abort(int fd) {
  struct linger l = {1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

}  // namespace

CutProxy::CutProxy(std::string listen_host, std::string upstream_host, int upstream_port,
                   uint64_t cut_after_bytes)
    : listen_host_(std::move(listen_host)),
      upstream_host_(std::move(upstream_host)),
      upstream_port_(upstream_port),
      cut_after_(cut_after_bytes) {}

CutProxy::~CutProxy() { Stop(); }

std::string CutProxy::Start(int listen_port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(listen_port));
  if (::inet_pton(AF_INET, listen_host_.c_str(), &addr.sin_addr) != 1) {
    return "bad listen address " + listen_host_;
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return std::string("socket: ") + std::strerror(errno);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return "bind " + listen_host_ + ":" + std::to_string(listen_port) + ": " + std::strerror(errno);
  }
  if (::listen(listen_fd_, 16) != 0) return std::string("listen: ") + std::strerror(errno);
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) return std::string("eventfd: ") + std::strerror(errno);
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return "";
}

void CutProxy::Stop() {
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof one);
  }
  if (acceptor_.joinable()) acceptor_.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard l(threads_mu_);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  listen_fd_ = stop_fd_ = -1;
}

void CutProxy::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fds[1].revents & POLLIN) != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    connections_.fetch_add(1);
    std::lock_guard l(threads_mu_);
    threads_.emplace_back([this, c] { Serve(c); });
  }
}

void CutProxy::Serve(int client) {
  int up = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(upstream_port_));
  ::inet_pton(AF_INET, upstream_host_.c_str(), &addr.sin_addr);
  if (up < 0 || ::connect(up, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (up >= 0) ::close(up);
    Abort(client);
    return;
  }
  int one = 1;
  ::setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  std::vector<char> buf(256 * 1024);
  bool client_open = true, up_open = true;  // read sides still open
  while (client_open || up_open) {
    // A negative fd is ignored by poll (a closed read side would report POLLHUP forever).
    pollfd fds[3] = {{client_open ? client : -1, POLLIN, 0},
                     {up_open ? up : -1, POLLIN, 0},
                     {stop_fd_, POLLIN, 0}};
    int n = ::poll(fds, 3, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fds[2].revents & POLLIN) != 0) break;
    if (client_open && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      ssize_t r = ::recv(client, buf.data(), buf.size(), 0);
      if (r <= 0) {
        client_open = false;
        ::shutdown(up, SHUT_WR);
      } else {
        size_t forward = static_cast<size_t>(r);
        bool cut_now = false;
        {
          std::lock_guard l(budget_mu_);
          if (!cut_.load()) {
            uint64_t before = up_bytes_.load();
            if (before + forward >= cut_after_) {
              forward = static_cast<size_t>(cut_after_ - before);
              cut_now = true;
              cut_.store(true);
            }
          }
          up_bytes_.fetch_add(forward);
        }
        if (forward > 0 && !SendAll(up, buf.data(), forward)) break;
        if (cut_now) {
          Abort(client);
          Abort(up);
          return;
        }
      }
    }
    if (up_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      ssize_t r = ::recv(up, buf.data(), buf.size(), 0);
      if (r <= 0) {
        up_open = false;
        ::shutdown(client, SHUT_WR);
      } else if (!SendAll(client, buf.data(), static_cast<size_t>(r))) {
        break;
      }
    }
  }
  ::close(client);
  ::close(up);
}

}  // namespace kmosix::e2e
