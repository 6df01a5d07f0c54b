// Listener caps (transport_http/listener_limits.h, data_channel.h) and the
// peer routes' busy answer: bodies refused before they are read (413 over the
// limit, 411 chunked outside the stream route), a bounded handler pool that
// stops accepting when full, the data channel refusing connections beyond its
// cap, and a busy target answered 503 + Retry-After that the client reads back
// as a retry-after.
#include "transport_http/listener_limits.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include "kmosix/clock.h"
#include "kmosix/intake_limits.h"
#include "kmosix/spec_json.h"
#include "transport_http/data_channel.h"
#include "transport_http/http_transport.h"
#include "transport_http/peer_server.h"

namespace kmosix {
namespace {

using namespace std::chrono_literals;

// Waits (generously) for a condition another thread makes true.
template <typename F>
bool Eventually(F f) {
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return f();
}

// A target whose Prepare answers what the test says; nothing else is used.
class BusyTarget : public MigrationTarget {
 public:
  PeerInfo Info() override { return {"node-b", "test"}; }
  Status Prepare(const MigrationOffer&) override { return prepare; }
  StatusOr<Landing> BeginReceive(const std::string&) override { return NotFoundError("none"); }
  Status EndReceive(const std::string&, const Status&, const TransferStats&) override {
    return Status::Ok();
  }
  StatusOr<RestoreReport> Restore(const std::string&) override { return NotFoundError("none"); }
  StatusOr<TargetPhase> Commit(const std::string&) override { return TargetPhase::kAborted; }
  StatusOr<TargetPhase> Abort(const std::string&) override { return TargetPhase::kAborted; }
  StatusOr<TargetPhase> Query(const std::string&) override { return TargetPhase::kUnknown; }
  Status prepare;
};

int ConnectTo(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

class LimitedServer {
 public:
  explicit LimitedServer(ListenerLimits limits) : stats(std::make_shared<ListenerStats>()) {
    ApplyListenerLimits(server, limits, stats);
  }
  void Start() {
    port = server.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { server.listen_after_bind(); });
  }
  ~LimitedServer() {
    server.stop();
    if (thread.joinable()) thread.join();
  }
  httplib::Server server;
  std::shared_ptr<ListenerStats> stats;
  int port = 0;
  std::thread thread;
};

TEST(ListenerLimitsTest, BodiesOverTheLimitOrChunkedAreRefusedBeforeTheyAreRead) {
  ListenerLimits limits;
  limits.max_body = 100;
  limits.stream_max_body = 10000;
  LimitedServer s(limits);
  std::atomic<int> handled{0};
  s.server.Post("/v1/thing", [&](const httplib::Request&, httplib::Response& res) {
    ++handled;
    res.set_content("{}", "application/json");
  });
  s.server.Post("/v1/peer/migrations/m/stream", [&](const httplib::Request&, httplib::Response& res,
                                                    const httplib::ContentReader& reader) {
    size_t n = 0;
    reader([&](const char*, size_t k) {
      n += k;
      return true;
    });
    res.set_content(std::to_string(n), "text/plain");
  });
  s.Start();
  httplib::Client cli("127.0.0.1", s.port);

  auto small = cli.Post("/v1/thing", std::string(100, 'a'), "application/json");
  ASSERT_TRUE(small);
  EXPECT_EQ(small->status, 200);

  auto big = cli.Post("/v1/thing", std::string(101, 'a'), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_EQ(handled.load(), 1) << "the handler never saw the large body";

  // A chunked body: only its headers are sent, the answer comes without it.
  int fd = ConnectTo(s.port);
  ASSERT_GE(fd, 0);
  const std::string head =
      "POST /v1/thing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  ASSERT_EQ(::send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
  const std::string answer = ReadAll(fd);
  ::close(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 411", 0), 0u) << answer;
  EXPECT_EQ(handled.load(), 1);

  // The stream route takes chunked bodies (its handler bounds them) and
  // Content-Length ones up to stream_max_body.
  httplib::Client cli2("127.0.0.1", s.port);
  auto stream = cli2.Post(
      "/v1/peer/migrations/m/stream",
      [](size_t off, httplib::DataSink& sink) {
        if (off < 1000) {
          std::string c(100, 'c');
          sink.write(c.data(), c.size());
        } else {
          sink.done();
        }
        return true;
      },
      "application/octet-stream");
  ASSERT_TRUE(stream);
  EXPECT_EQ(stream->status, 200);
  EXPECT_EQ(stream->body, "1000");
  httplib::Client cli3("127.0.0.1", s.port);
  auto stream_big = cli3.Post("/v1/peer/migrations/m/stream", std::string(10001, 'd'),
                              "application/octet-stream");
  ASSERT_TRUE(stream_big);
  EXPECT_EQ(stream_big->status, 413);
  EXPECT_EQ(s.stats->bodies_refused_total.load(), 3u);
}

TEST(ListenerLimitsTest, PoolStopsAcceptingWhenItsThreadsAndQueueAreFull) {
  auto stats = std::make_shared<ListenerStats>();
  BoundedThreadPool pool(1, 1, stats);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> ran{0};
  auto blocker = [&] {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return release; });
    ++ran;
  };
  pool.enqueue(blocker);  // runs, holds the only thread
  ASSERT_TRUE(Eventually([&] { return stats->busy.load() == 1; }));
  pool.enqueue([&] { ++ran; });  // queued
  EXPECT_EQ(stats->queued.load(), 1);
  // A third waits in enqueue (the listener stops accepting).
  auto third = std::async(std::launch::async, [&] { pool.enqueue([&] { ++ran; }); });
  ASSERT_TRUE(Eventually([&] { return stats->accept_waits_total.load() == 1; }));
  EXPECT_NE(third.wait_for(0ms), std::future_status::ready);
  {
    std::lock_guard l(mu);
    release = true;
  }
  cv.notify_all();
  third.get();
  ASSERT_TRUE(Eventually([&] { return ran.load() == 3; }));
  EXPECT_EQ(stats->threads.load(), 1);
  pool.shutdown();
}

TEST(DataChannelLimitsTest, ConnectionsBeyondTheCapAreAnsweredBusyAndClosed) {
  BusyTarget target;
  SystemClock clock;
  DataServer::Options o;
  o.max_connections = 1;
  o.io_timeout = 60s;
  DataServer server(target, clock, o);
  ASSERT_TRUE(server.Start("127.0.0.1", 0).ok());
  int holder = ConnectTo(server.port());  // sends nothing: holds the one slot
  ASSERT_GE(holder, 0);
  ASSERT_TRUE(Eventually([&] { return server.active_connections() == 1; }));
  int second = ConnectTo(server.port());
  ASSERT_GE(second, 0);
  const std::string answer = ReadAll(second);
  ::close(second);
  EXPECT_NE(answer.find("\"unavailable\""), std::string::npos) << answer;
  EXPECT_NE(answer.find("retry after"), std::string::npos) << answer;
  EXPECT_EQ(server.refused_connections(), 1u);
  ::close(holder);
  ASSERT_TRUE(Eventually([&] { return server.active_connections() == 0; }));
  server.Stop();
}

TEST(PeerBusyTest, BusyTargetIsAnswered503WithRetryAfterAndReadBackAsOne) {
  BusyTarget target;
  target.prepare = BusyError("busy: 2 incoming migrations in flight, the limit is 2", 4s);
  httplib::Server server;
  RegisterPeerRoutes(server, target);
  const int port = server.bind_to_any_port("127.0.0.1");
  std::thread t([&] { server.listen_after_bind(); });
  MigrationOffer offer;
  offer.id = "m-1";
  offer.source_node = "a";
  offer.source_url = "http://a";
  offer.spec.name = "w";
  offer.spec.image = "img";
  httplib::Client raw("127.0.0.1", port);
  auto res = raw.Post("/v1/peer/migrations/m-1/prepare", MigrationOfferToJson(offer).dump(),
                      "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "4");
  HttpTransport transport;
  Status s = transport.Prepare("http://127.0.0.1:" + std::to_string(port), offer);
  EXPECT_EQ(s.code(), Code::kRetry) << s.ToString();
  ASSERT_TRUE(RetryAfterOf(s).has_value()) << s.ToString();
  EXPECT_EQ(*RetryAfterOf(s), 4s);
  server.stop();
  t.join();
}

}  // namespace
}  // namespace kmosix
