// EtcdStateStore against a real etcd: the StateStore conformance suite, plus
// the restart case (etcd stopped: calls return kRetry; started again on the
// same data dir and ports: calls succeed, a broken watch says where to resume,
// a keep-alive survives).
//
// Each test process starts its own etcd on free loopback ports with a private
// data dir under $TMPDIR, and stops it at the end. Needs the `etcd` binary
// (Debian package etcd-server) on PATH or in $KMX_ETCD_BIN; the cases skip
// loudly without it.
#include "etcd/etcd_state_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "lib/kmosix/state_store_conformance.h"

namespace kmosix::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;

std::string FindEtcd() {
  if (const char* env = std::getenv("KMX_ETCD_BIN"); env && *env)
    return ::access(env, X_OK) == 0 ? env : "";
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

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

// One etcd member on loopback, in a private data dir.
class PrivateEtcd {
 public:
  PrivateEtcd() : binary_(FindEtcd()) {
    char tmpl[] = "/tmp/kmx-etcd-XXXXXX";
    const char* tmpdir = std::getenv("TMPDIR");
    std::string t = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/kmx-etcd-XXXXXX";
    std::vector<char> buf(t.begin(), t.end());
    buf.push_back('\0');
    char* made = ::mkdtemp(buf.data());
    dir_ = made ? made : ::mkdtemp(tmpl);
    client_port_ = FreePort();
    peer_port_ = FreePort();
  }
  ~PrivateEtcd() {
    Stop();
    std::error_code ec;
    if (!dir_.empty() && !std::getenv("KMX_KEEP_ETCD")) fs::remove_all(dir_, ec);
  }

  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  const std::string& dir() const { return dir_; }

  // Starts etcd and waits until it serves requests.
  bool Start() {
    if (pid_ > 0) return true;
    std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
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
    std::string log = dir_ + "/etcd.log";
    pid_ = ::fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(binary_.c_str(), argv.data());
      ::_exit(127);
    }
    EtcdConfig cfg;
    cfg.endpoints = {endpoint()};
    cfg.dial_timeout = milliseconds(500);
    cfg.rpc_timeout = milliseconds(2000);
    EtcdStateStore probe(cfg);
    auto deadline = std::chrono::steady_clock::now() + seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      if (probe.Get("/kmx-probe").ok()) return true;
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
    return false;
  }

  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::string binary_;
  std::string dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  pid_t pid_ = -1;
};

std::string SkipReason() {
  if (FindEtcd().empty()) return "etcd binary not found (install etcd-server, or set KMX_ETCD_BIN)";
  return "";
}

EtcdConfig TestConfig(const std::string& endpoint) {
  EtcdConfig cfg;
  cfg.endpoints = {endpoint};
  cfg.dial_timeout = milliseconds(1000);
  cfg.rpc_timeout = milliseconds(3000);
  cfg.max_reconnect_backoff = milliseconds(500);
  return cfg;
}

// One etcd per test process, shared by the conformance cases; stopped by the
// test environment's TearDown.
std::shared_ptr<PrivateEtcd>& SharedEtcd() {
  static std::shared_ptr<PrivateEtcd> etcd;
  return etcd;
}

class EtcdEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { SharedEtcd().reset(); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new EtcdEnvironment);

}  // namespace

StateStoreHarness MakeEtcdHarness() {
  auto& etcd = SharedEtcd();
  if (!etcd) {
    etcd = std::make_shared<PrivateEtcd>();
    if (!etcd->Start()) {
      ADD_FAILURE() << "etcd did not start; log in " << etcd->dir() << "/etcd.log";
      return {};
    }
  }
  StateStoreHarness h;
  h.keep_alive = etcd;
  h.store = std::make_unique<EtcdStateStore>(TestConfig(etcd->endpoint()));
  h.let_time_pass = [](milliseconds d) { std::this_thread::sleep_for(d); };
  return h;
}

namespace {

TEST(EtcdStateStoreTest, UnreachableEndpointIsRetry) {
  EtcdConfig cfg = TestConfig("127.0.0.1:" + std::to_string(FreePort()));
  EtcdStateStore store(cfg);
  EXPECT_EQ(store.Get("/k").status().code(), Code::kRetry);
  EXPECT_EQ(store.Put("/k", "v").status().code(), Code::kRetry);
  EXPECT_EQ(store.Watch(WatchOptions{"/k", false, 0, false}).status().code(), Code::kRetry);
  EXPECT_EQ(store.GrantLease(seconds(5)).status().code(), Code::kRetry);
}

TEST(EtcdStateStoreTest, SecondEndpointIsUsedWhenTheFirstIsDown) {
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdConfig cfg = TestConfig("127.0.0.1:" + std::to_string(FreePort()));
  cfg.endpoints.push_back(etcd.endpoint());
  EtcdStateStore store(cfg);
  auto first = store.Put("/k", "v");
  EXPECT_EQ(first.status().code(), Code::kRetry);
  auto second = store.Put("/k", "v");
  EXPECT_TRUE(second.ok()) << second.status().ToString();
}

TEST(EtcdStateStoreTest, RestartOnSameDataDir) {
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdStateStore store(TestConfig(etcd.endpoint()));

  auto r1 = store.Put("/r/a", "1");
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  auto w = store.Watch(WatchOptions{"/r/", true, 0, false});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto lease = store.GrantLease(seconds(10));
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  ASSERT_TRUE(store.Put("/r/node", "alive", PutOptions{lease->id}).ok());
  auto ka = store.KeepAlive(lease->id);
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  auto first = (*w)->Next(milliseconds(3000));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_EQ(first->size(), 1u);
  const int64_t resume = (*w)->next_revision();

  etcd.Stop();
  EXPECT_EQ(store.Get("/r/a").status().code(), Code::kRetry);
  EXPECT_EQ(store.Put("/r/a", "2").status().code(), Code::kRetry);
  EXPECT_EQ(
      store.Commit(Txn{{Compare::Absent("/r/x")}, {TxnOp::Put("/r/x", "")}, {}}).status().code(),
      Code::kRetry);
  StatusOr<std::vector<WatchEvent>> broken = std::vector<WatchEvent>{};
  for (int i = 0; i < 100 && broken.ok(); ++i) broken = (*w)->Next(milliseconds(100));
  ASSERT_FALSE(broken.ok()) << "the watch did not notice etcd going away";
  EXPECT_EQ(broken.status().code(), Code::kRetry) << broken.status().ToString();
  EXPECT_EQ((*w)->next_revision(), resume);

  ASSERT_TRUE(etcd.Start()) << "restart failed; log: " << etcd.dir() << "/etcd.log";
  StatusOr<GetResult> got = RetryError("not yet");
  for (int i = 0; i < 100 && !got.ok(); ++i) {
    got = store.Get("/r/a");
    if (!got.ok()) std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_TRUE(got.ok()) << "still failing after restart: " << got.status().ToString();
  ASSERT_TRUE(got->kv);
  EXPECT_EQ(got->kv->value, "1");

  // Resume the watch where it broke: nothing is lost.
  auto w2 = store.Watch(WatchOptions{"/r/", true, resume, false});
  ASSERT_TRUE(w2.ok()) << w2.status().ToString();
  auto r3 = store.Put("/r/b", "after");
  ASSERT_TRUE(r3.ok()) << r3.status().ToString();
  std::vector<WatchEvent> events;
  for (int i = 0; i < 30 && events.empty(); ++i) {
    auto b = (*w2)->Next(milliseconds(100));
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    events = *b;
  }
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kv.key, "/r/b");
  EXPECT_EQ(events[0].kv.mod_revision, *r3);

  // The keep-alive reconnected by itself; the lease and its key survived.
  std::this_thread::sleep_for(seconds(2));
  EXPECT_TRUE((*ka)->status().ok()) << (*ka)->status().ToString();
  auto node = store.Get("/r/node");
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  EXPECT_TRUE(node->kv) << "lease-attached key vanished across the restart";
}

TEST(EtcdStateStoreTest, KeepAliveReportsLossWhenEtcdStaysDown) {
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;
  PrivateEtcd etcd;
  ASSERT_TRUE(etcd.Start()) << "log: " << etcd.dir() << "/etcd.log";
  EtcdStateStore store(TestConfig(etcd.endpoint()));
  auto lease = store.GrantLease(seconds(3));
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  auto ka = store.KeepAlive(lease->id);
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  etcd.Stop();
  Status lost = (*ka)->WaitLost(milliseconds(15000));
  EXPECT_EQ(lost.code(), Code::kRetry) << lost.ToString();
}

}  // namespace
}  // namespace kmosix::testing

KMX_INSTANTIATE_STATE_STORE_CONFORMANCE(Etcd, StateStoreConformanceParam{"etcd", MakeEtcdHarness,
                                                                         SkipReason});
