// HttpTransport <-> RegisterPeerRoutes over real HTTP on 127.0.0.1, with a
// fake MigrationTarget.
#include "transport_http/http_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "kmosix/spec_json.h"
#include "kmosix/transfer_stream.h"
#include "support/data_channel_answer.h"
#include "transport_http/data_channel.h"
#include "transport_http/peer_server.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class FakeTarget : public MigrationTarget {
 public:
  explicit FakeTarget(std::string land) : land_(std::move(land)) {}

  PeerInfo Info() override { return {"node-b", "0.1.0-test"}; }

  Status Prepare(const MigrationOffer& offer) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!prepare_error.ok()) return prepare_error;
    if (phases_.count(offer.id)) return ConflictError("migration " + offer.id + " exists");
    phases_[offer.id] = TargetPhase::kPrepared;
    offers.push_back(offer);
    return Status::Ok();
  }

  StatusOr<Landing> BeginReceive(const std::string& id) override {
    std::function<void()> hook;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = phases_.find(id);
      if (it == phases_.end()) return NotFoundError("no migration " + id);
      if (it->second != TargetPhase::kPrepared) return ConflictError(id + " is not prepared");
      it->second = TargetPhase::kReceiving;
      hook = on_begin_receive;
    }
    if (hook) hook();
    return Landing{{{"criu-pages", land_ + "/criu", false},
                    {"criu", land_ + "/criu", false},
                    {"rootfs", land_ + "/rootfs", false},
                    {"log", land_ + "/log.txt", true}}};
  }

  Status EndReceive(const std::string& id, const Status& result,
                    const TransferStats& stats) override {
    std::lock_guard<std::mutex> l(mu_);
    end_results.push_back(result);
    end_stats = stats;
    phases_[id] = result.ok() ? TargetPhase::kReceived : TargetPhase::kAborted;
    cv_.notify_all();
    return Status::Ok();
  }

  StatusOr<RestoreReport> Restore(const std::string& id) override {
    std::this_thread::sleep_for(restore_delay);
    std::lock_guard<std::mutex> l(mu_);
    if (phases_[id] != TargetPhase::kReceived) return ConflictError(id + " was not received");
    phases_[id] = TargetPhase::kRestored;
    return RestoreReport{4242, 0.25};
  }

  StatusOr<TargetPhase> Commit(const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    TargetPhase& p = phases_[id];
    if (p == TargetPhase::kRestored) p = TargetPhase::kCommitted;
    if (p == TargetPhase::kCommitted || p == TargetPhase::kAborted) return p;
    return ConflictError(id + " is not restored");
  }

  StatusOr<TargetPhase> Abort(const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    TargetPhase& p = phases_[id];
    if (p != TargetPhase::kCommitted) p = TargetPhase::kAborted;
    return p;
  }

  StatusOr<TargetPhase> Query(const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = phases_.find(id);
    if (it == phases_.end()) return NotFoundError("no migration " + id);
    return it->second;
  }

  // Waits for the n-th EndReceive call.
  bool WaitEnd(size_t n) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, 10s, [&] { return end_results.size() >= n; });
  }
  void ForcePhase(const std::string& id, TargetPhase p) {
    std::lock_guard<std::mutex> l(mu_);
    phases_[id] = p;
  }

  Status prepare_error;
  std::vector<MigrationOffer> offers;
  std::vector<Status> end_results;
  TransferStats end_stats;
  std::function<void()> on_begin_receive;
  std::chrono::milliseconds restore_delay{0};

 private:
  std::string land_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, TargetPhase> phases_;
};

// An httplib::Server on an ephemeral 127.0.0.1 port, served by a thread.
class TestServer {
 public:
  template <typename Setup>
  explicit TestServer(Setup setup) {
    setup(server_);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 500 && !server_.is_running(); ++i) std::this_thread::sleep_for(2ms);
  }
  ~TestServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

MigrationOffer Offer(const std::string& id) {
  MigrationOffer o;
  o.id = id;
  o.source_node = "node-a";
  o.source_url = "http://127.0.0.1:1";
  o.spec.name = "web";
  o.spec.image = "docker.io/library/busybox:latest";
  o.spec.args = {"sleep", "1000"};
  return o;
}

// Every case runs twice: streams over the HTTP stream route, and over the
// data channel the peer announces (the HTTP route stays registered).
class HttpTransportTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);
    char tmpl[] = "/tmp/kmx-http-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    src_ = tmp_ + "/src";
    land_ = tmp_ + "/land";
    fs::create_directories(src_ + "/criu");
    fs::create_directories(src_ + "/rootfs/etc");
    fs::create_directories(land_);
    std::ofstream(src_ + "/criu/core-1.img") << "core";
    std::ofstream(src_ + "/criu/pages-1.img") << std::string(3 << 20, 'p');
    std::ofstream(src_ + "/rootfs/etc/hosts") << "127.0.0.1 localhost\n";
    fs::create_symlink("/bin/sh", src_ + "/rootfs/sh");
    std::ofstream(src_ + "/log.txt") << "log\n";
    target_ = std::make_unique<FakeTarget>(land_);
    PeerServerOptions options;
    if (GetParam()) {
      data_ = std::make_unique<DataServer>(*target_, clock_, DataServer::Options{});
      ASSERT_TRUE(data_->Start("127.0.0.1", 0).ok());
      options.data_port = data_->port();
    }
    server_ = std::make_unique<TestServer>(
        [&](httplib::Server& s) { RegisterPeerRoutes(s, *target_, options); });
  }
  void TearDown() override {
    server_.reset();
    data_.reset();
    fs::remove_all(tmp_);
  }
  std::vector<Section> Sections() {
    return {{"criu", src_ + "/criu", false},
            {"rootfs", src_ + "/rootfs", false},
            {"log", src_ + "/log.txt", true}};
  }

  std::string tmp_, src_, land_;
  std::unique_ptr<FakeTarget> target_;
  SystemClock clock_;
  std::unique_ptr<DataServer> data_;
  std::unique_ptr<TestServer> server_;
  HttpTransport transport_;
};

INSTANTIATE_TEST_SUITE_P(Carrier, HttpTransportTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("DataChannel") : std::string("HttpRoute");
                         });

TEST_P(HttpTransportTest, HappyPath) {
  std::string url = server_->url();
  auto info = transport_.Hello(url);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->node, "node-b");
  EXPECT_EQ(info->version, "0.1.0-test");

  ASSERT_TRUE(transport_.Prepare(url, Offer("m-1")).ok());
  ASSERT_EQ(target_->offers.size(), 1u);
  EXPECT_EQ(target_->offers[0].spec.image, "docker.io/library/busybox:latest");
  EXPECT_EQ(target_->offers[0].spec.args.size(), 2u);
  auto phase = transport_.Query(url, "m-1");
  ASSERT_TRUE(phase.ok());
  EXPECT_EQ(*phase, TargetPhase::kPrepared);

  auto stats = transport_.Send(url, "m-1", Sections());
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->files, 4u);
  EXPECT_EQ(stats->bytes, 4u + (3u << 20) + 20 + 4);
  EXPECT_GT(stats->seconds, 0);
  ASSERT_EQ(target_->end_results.size(), 1u);
  EXPECT_TRUE(target_->end_results[0].ok());
  EXPECT_EQ(target_->end_stats.files, 4u);
  EXPECT_EQ(ReadFile(land_ + "/criu/pages-1.img"), std::string(3 << 20, 'p'));
  EXPECT_EQ(ReadFile(land_ + "/log.txt"), "log\n");
  EXPECT_EQ(fs::read_symlink(land_ + "/rootfs/sh"), "/bin/sh");

  auto restored = transport_.Restore(url, "m-1");
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(restored->pid, 4242u);
  EXPECT_DOUBLE_EQ(restored->seconds, 0.25);
  auto committed = transport_.Commit(url, "m-1");
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(*committed, TargetPhase::kCommitted);
  auto aborted = transport_.Abort(url, "m-1");
  ASSERT_TRUE(aborted.ok());
  EXPECT_EQ(*aborted, TargetPhase::kCommitted);  // too late to abort
  EXPECT_EQ(*transport_.Query(url, "m-1"), TargetPhase::kCommitted);
  EXPECT_EQ(*transport_.Query(url, "m-unknown"), TargetPhase::kUnknown);
  EXPECT_EQ(*transport_.Query(url + "/", "m-1"), TargetPhase::kCommitted);
}

// A capture still being produced (a dump streaming into pipes, its other
// files behind before_read) goes over either carrier: chunked over HTTP.
TEST_P(HttpTransportTest, StreamedCaptureArrivesWhileItIsProduced) {
  const std::string url = server_->url();
  ASSERT_TRUE(transport_.Hello(url).ok());
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-1")).ok());
  const std::string dump = tmp_ + "/dump";
  fs::create_directories(dump);
  ASSERT_EQ(::mkfifo((dump + "/pages-1.img").c_str(), 0600), 0);
  ASSERT_EQ(::mkfifo((dump + "/pages-2.img").c_str(), 0600), 0);  // never written
  std::atomic<bool> producer_done{false};
  std::thread producer([&] {
    int fd = ::open((dump + "/pages-1.img").c_str(), O_WRONLY | O_CLOEXEC);
    const std::string page(1 << 20, 'm');
    for (int i = 0; i < 5 && fd >= 0; ++i)
      ASSERT_EQ(::write(fd, page.data(), page.size()), 1 << 20);
    ::close(fd);
    std::ofstream(dump + "/core-1.img") << "core";
    ::unlink((dump + "/pages-1.img").c_str());
    ::unlink((dump + "/pages-2.img").c_str());
    producer_done = true;
  });
  Section pages("criu-pages", dump);
  pages.pipes = true;
  pages.producer_done = [&] { return producer_done.load(); };
  Section rest("criu", dump);
  rest.before_read = [&] {
    while (!producer_done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return Status::Ok();
  };
  auto stats = transport_.Send(url, "m-1", {pages, rest, Section("log", src_ + "/log.txt", true)});
  producer.join();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->files, 3u);
  EXPECT_EQ(stats->bytes, (5u << 20) + 4 + 4);
  EXPECT_EQ(ReadFile(land_ + "/criu/pages-1.img"), std::string(5 << 20, 'm'));
  EXPECT_EQ(ReadFile(land_ + "/criu/core-1.img"), "core");
  EXPECT_FALSE(fs::exists(land_ + "/criu/pages-2.img"));
  ASSERT_EQ(target_->end_results.size(), 1u);
  EXPECT_TRUE(target_->end_results[0].ok());
}

TEST_P(HttpTransportTest, PeerErrorsMapBackToCodes) {
  std::string url = server_->url();
  target_->prepare_error = ConflictError("name web in use");
  Status s = transport_.Prepare(url, Offer("m-2"));
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_NE(s.message().find("name web in use"), std::string::npos) << s.ToString();
  target_->prepare_error = InvalidError("image unknown");
  EXPECT_EQ(transport_.Prepare(url, Offer("m-2")).code(), Code::kInvalid);
  target_->prepare_error = RetryError("busy");
  EXPECT_EQ(transport_.Prepare(url, Offer("m-2")).code(), Code::kRetry);
  target_->prepare_error = Status::Ok();

  // Not prepared: BeginReceive refuses; the body is drained and the answer
  // reaches the client.
  auto sent = transport_.Send(url, "m-3", Sections());
  EXPECT_EQ(sent.status().code(), Code::kNotFound) << sent.status().ToString();
  // Restore before receive.
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-4")).ok());
  EXPECT_EQ(transport_.Restore(url, "m-4").status().code(), Code::kConflict);
  EXPECT_EQ(transport_.Commit(url, "m-4").status().code(), Code::kConflict);
  auto aborted = transport_.Abort(url, "m-4");
  ASSERT_TRUE(aborted.ok());
  EXPECT_EQ(*aborted, TargetPhase::kAborted);
  EXPECT_EQ(*transport_.Commit(url, "m-4"), TargetPhase::kAborted);
  // Bad ids never leave the client.
  EXPECT_EQ(transport_.Restore(url, "../x").status().code(), Code::kInvalid);
  EXPECT_EQ(transport_.Query(url, "A B").status().code(), Code::kInvalid);
}

TEST_P(HttpTransportTest, SourceFileFailingMidStreamCutsTheStream) {
  std::string url = server_->url();
  std::string big = src_ + "/criu/a-big.img";  // first in the stream
  std::ofstream(big) << std::string(64 << 20, 'z');
  // The target holds off reading while the client fills the socket buffers
  // (far less than 64 MiB), then the source file shrinks: the encoder fails
  // in the middle of the body and the client cancels the request.
  target_->on_begin_receive = [&] {
    std::this_thread::sleep_for(300ms);
    fs::resize_file(big, 1000);
  };
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-5")).ok());
  auto sent = transport_.Send(url, "m-5", Sections());
  ASSERT_FALSE(sent.ok());
  EXPECT_EQ(sent.status().code(), Code::kFailed) << sent.status().ToString();
  EXPECT_NE(sent.status().message().find("a-big.img shrank"), std::string::npos)
      << sent.status().ToString();
  ASSERT_TRUE(target_->WaitEnd(1));
  EXPECT_FALSE(target_->end_results[0].ok());
  EXPECT_EQ(*transport_.Query(url, "m-5"), TargetPhase::kAborted);
}

// Sends a raw chunked POST with the given body prefix, then closes.
void PostRawAndClose(int port, const std::string& path, const std::string& partial) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  char hex[32];
  std::snprintf(hex, sizeof(hex), "%zx\r\n", partial.size());
  std::string req = "POST " + path +
                    " HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                    "Content-Type: application/x-kmosix-stream\r\n\r\n" +
                    hex + partial + "\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  ::close(fd);
}

std::string EncodeToString(const std::vector<Section>& sections) {
  auto enc = StreamEncoder::Create(sections);
  EXPECT_TRUE(enc.ok());
  std::string out;
  std::vector<char> buf(1 << 20);
  for (;;) {
    auto n = (*enc)->Read(buf.data(), buf.size());
    if (!n.ok() || *n == 0) break;
    out.append(buf.data(), *n);
  }
  return out;
}

TEST_P(HttpTransportTest, ConnectionClosedMidStreamAbortsTheReceive) {
  ASSERT_TRUE(transport_.Prepare(server_->url(), Offer("m-6")).ok());
  std::string stream = EncodeToString(Sections());
  PostRawAndClose(server_->port(), "/v1/peer/migrations/m-6/stream",
                  stream.substr(0, stream.size() / 2));
  ASSERT_TRUE(target_->WaitEnd(1));
  Status r = target_->end_results[0];
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.message().find("cut"), std::string::npos) << r.ToString();
}

TEST_P(HttpTransportTest, ChecksumCorruptionIsReportedToBothSides) {
  std::string url = server_->url();
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-7")).ok());
  std::string stream = EncodeToString(Sections());
  size_t at = stream.find(std::string(1000, 'p'));
  ASSERT_NE(at, std::string::npos);
  stream[at + 500] = 'q';
  httplib::Client cli(url);
  auto res = cli.Post("/v1/peer/migrations/m-7/stream", stream, "application/x-kmosix-stream");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  Status s = StatusFromHttpError(res->status, res->body);
  EXPECT_EQ(s.code(), Code::kFailed);
  EXPECT_NE(s.message().find("checksum mismatch for criu/pages-1.img"), std::string::npos)
      << s.ToString();
  ASSERT_TRUE(target_->WaitEnd(1));
  EXPECT_EQ(target_->end_results[0].code(), Code::kFailed);
  EXPECT_EQ(*transport_.Query(url, "m-7"), TargetPhase::kAborted);
}

TEST_P(HttpTransportTest, ServerRejectsBadRequestsWithJson) {
  httplib::Client cli(server_->url());
  auto res = cli.Post("/v1/peer/migrations/Bad_Id/prepare", "{}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(StatusFromHttpError(res->status, res->body).code(), Code::kInvalid);
  res = cli.Post("/v1/peer/migrations/m-8/prepare", "not json", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("invalid_argument"), std::string::npos);
  std::string other = MigrationOfferToJson(Offer("m-other")).dump();
  res = cli.Post("/v1/peer/migrations/m-8/prepare", other, "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("does not match"), std::string::npos) << res->body;
  res = cli.Post("/v1/peer/migrations/m-8/stream", std::string(100, 'x'), "text/plain");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);  // not prepared
  ASSERT_TRUE(transport_.Prepare(server_->url(), Offer("m-9")).ok());
  res = cli.Post("/v1/peer/migrations/m-9/stream", std::string(100, 'x'), "text/plain");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("bad magic"), std::string::npos) << res->body;
  res = cli.Post("/v1/peer/migrations/m-9/stream", "", "text/plain");  // already aborted
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 409);
}

TEST(HttpTransportStandalone, StatusFromHttpError) {
  Status s = StatusFromHttpError(409, R"({"code":"conflict","message":"epoch moved"})");
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_EQ(s.message(), "epoch moved");
  EXPECT_EQ(StatusFromHttpError(400, R"({"code":"not_found","message":"x"})").code(),
            Code::kNotFound);  // the code field wins
  EXPECT_EQ(StatusFromHttpError(503, "<html>busy</html>").code(), Code::kRetry);
  EXPECT_EQ(StatusFromHttpError(404, "").code(), Code::kNotFound);
  EXPECT_EQ(StatusFromHttpError(400, "").code(), Code::kInvalid);
  EXPECT_EQ(StatusFromHttpError(409, "").code(), Code::kConflict);
  EXPECT_EQ(StatusFromHttpError(500, R"({"code":"weird"})").code(), Code::kFailed);
  EXPECT_EQ(StatusFromHttpError(502, "").code(), Code::kRetry);
  EXPECT_EQ(StatusFromHttpError(500, R"({"code":"unavailable","message":"m"})").code(),
            Code::kRetry);
  s = StatusFromHttpError(418, std::string("\x01teapot", 7));
  EXPECT_EQ(s.code(), Code::kFailed);
  EXPECT_NE(s.message().find("418"), std::string::npos);
}

TEST(HttpTransportStandalone, NonAgentPeerFailsHello) {
  TestServer web([](httplib::Server& s) {
    s.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("<html>hello</html>", "text/html");
    });
  });
  HttpTransport t;
  auto info = t.Hello(web.url());
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), Code::kFailed);
  EXPECT_NE(info.status().message().find("not a kmosix agent"), std::string::npos)
      << info.status().ToString();

  TestServer html([](httplib::Server& s) {
    s.Get("/v1/peer/info", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("<html>hello</html>", "text/html");
    });
  });
  info = t.Hello(html.url());
  EXPECT_EQ(info.status().code(), Code::kFailed);
  EXPECT_NE(info.status().message().find("not a kmosix agent"), std::string::npos);

  TestServer other([](httplib::Server& s) {
    s.Get("/v1/peer/info", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"kind":"something-else","node":"x","version":"1"})", "application/json");
    });
  });
  info = t.Hello(other.url());
  EXPECT_EQ(info.status().code(), Code::kFailed);
  EXPECT_NE(info.status().message().find("kmosix-agent"), std::string::npos);
  // A non-agent's 404 on the migration routes is kNotFound, not a crash.
  EXPECT_EQ(t.Restore(web.url(), "m-1").status().code(), Code::kNotFound);
}

int UnusedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(HttpTransportStandalone, UnreachablePeerIsRetry) {
  HttpTransport t;
  std::string url = "http://127.0.0.1:" + std::to_string(UnusedPort());
  EXPECT_EQ(t.Hello(url).status().code(), Code::kRetry);
  EXPECT_EQ(t.Prepare(url, Offer("m-1")).code(), Code::kRetry);
  EXPECT_EQ(t.Send(url, "m-1", {}).status().code(), Code::kRetry);
  EXPECT_EQ(t.Restore(url, "m-1").status().code(), Code::kRetry);
  EXPECT_EQ(t.Commit(url, "m-1").status().code(), Code::kRetry);
  EXPECT_EQ(t.Abort(url, "m-1").status().code(), Code::kRetry);
  EXPECT_EQ(t.Query(url, "m-1").status().code(), Code::kRetry);
  EXPECT_EQ(t.Hello("ftp://127.0.0.1:1").status().code(), Code::kInvalid);
  EXPECT_EQ(t.Hello("127.0.0.1:1").status().code(), Code::kInvalid);
}

TEST_P(HttpTransportTest, SlowRestoreTimesOutAsRetry) {
  std::string url = server_->url();
  HttpTransportOptions o;
  o.restore_timeout = 300ms;
  HttpTransport quick(o);
  ASSERT_TRUE(quick.Prepare(url, Offer("m-10")).ok());
  ASSERT_TRUE(quick.Send(url, "m-10", Sections()).ok());
  target_->restore_delay = 1500ms;
  EXPECT_EQ(quick.Restore(url, "m-10").status().code(), Code::kRetry);
}

// The data channel itself, spoken to over a raw socket.
class DataChannelTest : public HttpTransportTest {};
INSTANTIATE_TEST_SUITE_P(Raw, DataChannelTest, ::testing::Values(true));

// Sends `bytes` on a fresh connection to the data port, half-closes, and
// returns the target's one-line answer ("" if none).
std::string SendRaw(int port, const std::string& bytes) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return "";
  }
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  std::string answer =
      testing::ReadDataChannelAnswer([&](char& c) { return ::recv(fd, &c, 1, 0) == 1; });
  ::close(fd);
  return answer;
}

TEST_P(DataChannelTest, SendUsesTheAnnouncedChannel) {
  std::string url = server_->url();
  ASSERT_TRUE(transport_.Hello(url).ok());
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-1")).ok());
  data_->Stop();  // with the channel gone, Send cannot fall back silently
  auto sent = transport_.Send(url, "m-1", Sections());
  EXPECT_EQ(sent.status().code(), Code::kRetry) << sent.status().ToString();
}

TEST_P(DataChannelTest, BadPreambleAndUnknownIdAreRefused) {
  auto bad = nlohmann::json::parse(SendRaw(data_->port(), "HELLO\n"), nullptr, false);
  ASSERT_TRUE(bad.is_object());
  EXPECT_EQ(bad["code"], "invalid_argument");
  // A source of the version before the ready line is told, not hung.
  auto old = nlohmann::json::parse(SendRaw(data_->port(), "KMXDATA1 m-1\nxxxx"), nullptr, false);
  ASSERT_TRUE(old.is_object());
  EXPECT_EQ(old["code"], "invalid_argument");
  EXPECT_NE(old["message"].get<std::string>().find("KMXDATA2"), std::string::npos) << old.dump();
  auto unknown =
      nlohmann::json::parse(SendRaw(data_->port(), "KMXDATA2 m-404\nxxxx"), nullptr, false);
  ASSERT_TRUE(unknown.is_object());
  EXPECT_EQ(unknown["code"], "not_found");
  EXPECT_TRUE(target_->end_results.empty());
}

TEST_P(DataChannelTest, CorruptedAndCutStreamsAbortTheReceive) {
  std::string url = server_->url();
  std::string stream = EncodeToString(Sections());
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-1")).ok());
  std::string corrupt = stream;
  corrupt[corrupt.size() / 2] ^= 0x5a;
  auto answer =
      nlohmann::json::parse(SendRaw(data_->port(), "KMXDATA2 m-1\n" + corrupt), nullptr, false);
  ASSERT_TRUE(answer.is_object());
  EXPECT_EQ(answer["code"], "failed") << answer.dump();
  ASSERT_TRUE(target_->WaitEnd(1));
  EXPECT_FALSE(target_->end_results[0].ok());

  fs::remove_all(land_);  // the fake lands every id in the same place
  fs::create_directories(land_);
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-2")).ok());
  answer = nlohmann::json::parse(
      SendRaw(data_->port(), "KMXDATA2 m-2\n" + stream.substr(0, stream.size() / 2)), nullptr,
      false);
  ASSERT_TRUE(answer.is_object());
  EXPECT_NE(answer["message"].get<std::string>().find("truncated"), std::string::npos)
      << answer.dump();
  ASSERT_TRUE(target_->WaitEnd(2));
  EXPECT_FALSE(target_->end_results[1].ok());
}

// Little-endian bytes of v (n bytes), as the transfer stream writes integers.
std::string LittleEndian(uint64_t v, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return out;
}

// Issue 13, hole 7: a hostile stream names a path whose bytes are not UTF-8;
// the decoder's error quotes it. The answer still goes out (bad bytes
// replaced by U+FFFD) instead of nlohmann::json::dump throwing type_error 316
// in the stream's worker thread, which ended the whole agent.
TEST_P(DataChannelTest, AHostilePathThatIsNotUtf8IsAnsweredNotFatal) {
  std::string url = server_->url();
  ASSERT_TRUE(transport_.Prepare(url, Offer("m-1")).ok());
  const std::string path = "/\xff\xfe";
  std::string stream = std::string("KMXSTRM\0", 8) + LittleEndian(kTransferStreamVersion, 4) +
                       LittleEndian(kOpenTotals, 4) + LittleEndian(0, 8) + LittleEndian(0, 8);
  const std::string section = std::string("\x01\x00", 2) + LittleEndian(4, 2) + "criu";
  const std::string entry = std::string("\x02\x02", 2) + LittleEndian(0755, 4) +
                            LittleEndian(0, 4) + LittleEndian(0, 4) + LittleEndian(0, 8) +
                            LittleEndian(path.size(), 2) + path + LittleEndian(0, 2) +
                            std::string(1, '\0') + LittleEndian(0, 8);
  stream += LittleEndian(section.size(), 4) + section + LittleEndian(entry.size(), 4) + entry;
  auto answer =
      nlohmann::json::parse(SendRaw(data_->port(), "KMXDATA2 m-1\n" + stream), nullptr, false);
  ASSERT_TRUE(answer.is_object());
  EXPECT_EQ(answer["code"], "invalid_argument") << answer.dump();
  EXPECT_NE(answer["message"].get<std::string>().find("absolute path \"/\xEF\xBF\xBD"),
            std::string::npos)
      << answer.dump();
  ASSERT_TRUE(target_->WaitEnd(1));
  EXPECT_FALSE(target_->end_results[0].ok());
}

}  // namespace
}  // namespace kmosix
