// A private etcd for integration tests: one member on free loopback ports,
// with its own data dir under $TMPDIR (removed at destruction unless
// $KMX_KEEP_ETCD is set; the etcd log is <dir()>/etcd.log).
//
// Usage:
//   if (auto why = EtcdSkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
//   PrivateEtcd etcd;
//   ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
//   EtcdStateStore store(TestEtcdConfig(etcd.endpoint()));
//   etcd.Stop(); ... etcd.Start();   // restart on the same data dir and ports
//
// The binary is $KMX_ETCD_BIN, else `etcd` on PATH (Debian: etcd-server).
// Header-only; link kmosix_etcd (Start() probes with an EtcdStateStore).
// Ownership: a PrivateEtcd owns its etcd process and data dir; the destructor
// stops the process (SIGTERM, then SIGKILL) and removes the dir.
// Thread-safety: none; drive one PrivateEtcd from one thread.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "etcd/etcd_state_store.h"

namespace kmosix::testing {

// Path of the etcd binary, or "" if there is none.
inline std::string FindEtcd() {
  if (const char* env = std::getenv("KMX_ETCD_BIN"); env && *env) {
    return ::access(env, X_OK) == 0 ? env : "";
  }
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string cand = p.substr(start, end - start) + "/etcd";
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return "";
}

// Why etcd tests cannot run here ("" if they can).
inline std::string EtcdSkipReason() {
  if (FindEtcd().empty()) return "etcd binary not found (install etcd-server, or set KMX_ETCD_BIN)";
  return "";
}

// A loopback TCP port that was free a moment ago (0 on failure).
inline int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// Client settings suited to tests: short timeouts, quick reconnects.
inline EtcdConfig TestEtcdConfig(const std::string& endpoint) {
  EtcdConfig cfg;
  cfg.endpoints = {endpoint};
  cfg.dial_timeout = std::chrono::milliseconds(1000);
  cfg.rpc_timeout = std::chrono::milliseconds(3000);
  cfg.max_reconnect_backoff = std::chrono::milliseconds(500);
  return cfg;
}

// One etcd member on loopback, in a private data dir.
class PrivateEtcd {
 public:
  // `extra_args` are appended to etcd's command line (e.g. "--auto-compaction-retention=1").
  explicit PrivateEtcd(std::vector<std::string> extra_args = {})
      : binary_(FindEtcd()), extra_args_(std::move(extra_args)) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string t = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/kmx-etcd-XXXXXX";
    std::vector<char> buf(t.begin(), t.end());
    buf.push_back('\0');
    char* made = ::mkdtemp(buf.data());
    if (made == nullptr) {
      char fallback[] = "/tmp/kmx-etcd-XXXXXX";
      made = ::mkdtemp(fallback);
      dir_ = made ? made : "";
    } else {
      dir_ = made;
    }
    client_port_ = FreePort();
    peer_port_ = FreePort();
  }
  ~PrivateEtcd() {
    Stop();
    std::error_code ec;
    if (!dir_.empty() && !std::getenv("KMX_KEEP_ETCD")) std::filesystem::remove_all(dir_, ec);
  }
  PrivateEtcd(const PrivateEtcd&) = delete;
  PrivateEtcd& operator=(const PrivateEtcd&) = delete;

  // TLS on the client URL (https://): etcd also gets `tls_args` (e.g.
  // --cert-file=, --key-file=, --trusted-ca-file=, --client-cert-auth) and
  // Start() probes with `probe` (its endpoints replaced by endpoint()). Call
  // before Start(), or between Stop() and Start() to change them.
  void UseTls(std::vector<std::string> tls_args, EtcdConfig probe) {
    tls_args_ = std::move(tls_args);
    tls_probe_ = std::move(probe);
    tls_ = true;
  }

  // "127.0.0.1:<client port>", for EtcdConfig::endpoints.
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  // The private directory (data in dir()/data, log in dir()/etcd.log).
  const std::string& dir() const { return dir_; }
  bool running() const { return pid_ > 0; }

  // Starts etcd (again, on the same data dir and ports, after Stop/Kill) and
  // waits until it serves requests (up to 30 s). False if it did not come up.
  bool Start() {
    if (pid_ > 0) return true;
    if (binary_.empty() || dir_.empty() || client_port_ == 0 || peer_port_ == 0) return false;
    std::string client =
        (tls_ ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(client_port_);
    std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
    std::vector<std::string> args = {binary_,
                                     "--name=kmx",
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=kmx=" + peer,
                                     "--initial-cluster-state=new"};
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    if (tls_) args.insert(args.end(), tls_args_.begin(), tls_args_.end());
    // Everything the child needs is built before fork (no allocation after it).
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string log = dir_ + "/etcd.log";
    pid_ = ::fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    EtcdConfig cfg;
    if (tls_) cfg = tls_probe_;
    cfg.endpoints = {endpoint()};
    cfg.dial_timeout = std::chrono::milliseconds(500);
    cfg.rpc_timeout = std::chrono::milliseconds(2000);
    EtcdStateStore probe(cfg);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      if (probe.Get("/kmx-probe").ok()) return true;
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // Stops etcd gracefully (SIGTERM; SIGKILL after 10 s). Idempotent.
  void Stop() { Signal(SIGTERM); }
  // Kills etcd at once (a crash). Idempotent.
  void Kill() { Signal(SIGKILL); }
  // Stop() then Start() on the same data dir and ports.
  bool Restart() {
    Stop();
    return Start();
  }

 private:
  void Signal(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    for (int i = 0; i < 100; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  std::string binary_;
  std::vector<std::string> extra_args_;
  bool tls_ = false;
  std::vector<std::string> tls_args_;
  EtcdConfig tls_probe_;
  std::string dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace kmosix::testing
