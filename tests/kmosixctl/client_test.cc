// ApiClient over a fake HTTP seam: failover to the next server, stickiness,
// exit codes for every HTTP status and transport failure, error messages
// quoting the server's {"code","message"}, streams.
#include "kmosixctl/client.h"

#include <gtest/gtest.h>

#include "kmosixctl/fake_http.h"

namespace kmosix::ctl {
namespace {

using nlohmann::json;
using testing::ErrorAnswer;
using testing::FakeHttp;
using testing::JsonAnswer;

const std::string kA = "https://a:7800";
const std::string kB = "https://b:7800";
const std::string kC = "https://c:7800";

TEST(ClientTest, TriesTheNextServerWhenOneIsUnreachable) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kConnect, "could not connect");
  http.On("GET", "/v1/nodes", JsonAnswer(200, {{"items", json::array()}}));
  ApiClient client(http, {kA, kB});
  auto r = client.Get("/v1/nodes");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(*r, json({{"items", json::array()}}));
  EXPECT_EQ(client.CurrentServer(), kB);
  // The next request goes to the server that answered, first.
  ASSERT_TRUE(client.Get("/v1/nodes").ok());
  EXPECT_EQ(http.CallLines(), (std::vector<std::string>{"https://a:7800 GET /v1/nodes",
                                                        "https://b:7800 GET /v1/nodes",
                                                        "https://b:7800 GET /v1/nodes"}));
}

TEST(ClientTest, WrapsAroundToEarlierServers) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kConnect, "refused");
  http.On("GET", "/v1/leader", JsonAnswer(200, {{"leader", "c1"}}));
  ApiClient client(http, {kA, kB});
  ASSERT_TRUE(client.Get("/v1/leader").ok());  // now at b
  http.Heal(kA);
  http.Fail(kB, TransportFailure::kConnect, "refused");
  ASSERT_TRUE(client.Get("/v1/leader").ok());
  EXPECT_EQ(client.CurrentServer(), kA);
}

TEST(ClientTest, AllServersUnreachableIsExit6ListingEach) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kConnect, "could not connect");
  http.Fail(kB, TransportFailure::kConnect, "timed out connecting");
  ApiClient client(http, {kA, kB});
  auto r = client.Get("/v1/nodes");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().exit_code, kExitUnreachable);
  EXPECT_EQ(r.error().code, "Unreachable");
  EXPECT_EQ(r.error().ToString(),
            "Unreachable: no server answered: https://a:7800: could not connect; "
            "https://b:7800: timed out connecting\n"
            "  hint: is the controller running? check --server/KMOSIX_SERVER");
}

TEST(ClientTest, TlsFailureIsExit6WithACaHint) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kTls,
            "server certificate not trusted: self-signed certificate in certificate chain");
  ApiClient client(http, {kA});
  auto r = client.Get("/v1/nodes");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().exit_code, kExitUnreachable);
  EXPECT_EQ(r.error().code, "TLS");
  EXPECT_NE(r.error().message.find("self-signed"), std::string::npos);
  EXPECT_NE(r.error().hint.find("--ca-file"), std::string::npos);
}

TEST(ClientTest, TlsFailureOnOneServerFallsOverToTheNext) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kTls, "TLS handshake failed");
  http.On("GET", "/v1/nodes", JsonAnswer(200, {{"items", json::array()}}));
  ApiClient client(http, {kA, kB});
  EXPECT_TRUE(client.Get("/v1/nodes").ok());
  EXPECT_EQ(client.CurrentServer(), kB);
}

TEST(ClientTest, AWriteThatMayHaveArrivedIsNotSentTwice) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kBroken, "connection closed while reading the answer");
  http.On("POST", "/v1/migrations", JsonAnswer(201, {{"id", "m-1"}}));
  ApiClient client(http, {kA, kB});
  auto r = client.Post("/v1/migrations", {{"workload", "w"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().exit_code, kExitUnreachable);
  EXPECT_NE(r.error().message.find("may or may not have been applied"), std::string::npos);
  EXPECT_EQ(http.CallLines(), std::vector<std::string>{"https://a:7800 POST /v1/migrations"});
}

TEST(ClientTest, AReadThatBrokeIsRetriedOnTheNextServer) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kBroken, "connection closed");
  http.On("GET", "/v1/migrations", JsonAnswer(200, {{"items", json::array()}}));
  ApiClient client(http, {kA, kB});
  EXPECT_TRUE(client.Get("/v1/migrations").ok());
}

TEST(ClientTest, PlainHttpToATlsServerHintsAtHttps) {
  FakeHttp http;
  http.Fail("http://a:7800", TransportFailure::kBroken, "connection closed");
  ApiClient client(http, {"http://a:7800"});
  auto r = client.Get("/v1/nodes");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().hint.find("https://"), std::string::npos);
}

TEST(ClientTest, HttpErrorsAreNotFailedOver) {
  FakeHttp http;
  http.On("GET", "/v1/workloads/x", ErrorAnswer(404, "not_found", "no workload named \"x\""));
  ApiClient client(http, {kA, kB});
  auto r = client.Get("/v1/workloads/x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(http.Calls().size(), 1u);
}

TEST(ClientTest, ExitCodeForEveryStatus) {
  EXPECT_EQ(ExitCodeForStatus(200), kExitOk);
  EXPECT_EQ(ExitCodeForStatus(201), kExitOk);
  EXPECT_EQ(ExitCodeForStatus(202), kExitOk);
  EXPECT_EQ(ExitCodeForStatus(400), kExitInvalid);
  EXPECT_EQ(ExitCodeForStatus(413), kExitInvalid);
  EXPECT_EQ(ExitCodeForStatus(401), kExitAuth);
  EXPECT_EQ(ExitCodeForStatus(403), kExitAuth);
  EXPECT_EQ(ExitCodeForStatus(404), kExitNotFound);
  EXPECT_EQ(ExitCodeForStatus(409), kExitConflict);
  EXPECT_EQ(ExitCodeForStatus(500), kExitError);
  EXPECT_EQ(ExitCodeForStatus(503), kExitError);
  EXPECT_EQ(ExitCodeForStatus(405), kExitError);
}

TEST(ClientTest, ErrorsQuoteTheServersCodeAndMessage) {
  struct Case {
    int status;
    const char* code;
    const char* message;
    int exit;
    const char* text;
  };
  const Case cases[] = {
      {404, "not_found", "no workload named \"x\"", kExitNotFound,
       "not_found (HTTP 404): no workload named \"x\""},
      {409, "conflict", "workload \"x\" is pinned", kExitConflict,
       "conflict (HTTP 409): workload \"x\" is pinned"},
      {400, "invalid_argument", "unknown field \"foo\" in workload", kExitInvalid,
       "invalid_argument (HTTP 400): unknown field \"foo\" in workload"},
      {413, "invalid_argument", "request body larger than 65536 bytes", kExitInvalid,
       "invalid_argument (HTTP 413): request body larger than 65536 bytes"},
      {503, "unavailable", "caches not synced with the store yet", kExitError,
       "unavailable (HTTP 503): caches not synced with the store yet"},
      {500, "failed", "internal error", kExitError, "failed (HTTP 500): internal error"},
  };
  for (const auto& c : cases) {
    FakeHttp http;
    http.On("DELETE", "/v1/workloads/x", ErrorAnswer(c.status, c.code, c.message));
    ApiClient client(http, {kA});
    auto r = client.Delete("/v1/workloads/x");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().exit_code, c.exit) << c.status;
    EXPECT_EQ(r.error().http_status, c.status);
    EXPECT_EQ(r.error().ToString(), c.text);
  }
}

TEST(ClientTest, AuthErrorsAreExit5WithHints) {
  FakeHttp http;
  http.On("GET", "/v1/nodes", ErrorAnswer(401, "Unauthenticated", "missing bearer token"));
  http.On("DELETE", "/v1/workloads/w", ErrorAnswer(403, "Forbidden", "token \"ro\" is read-only"));
  ApiClient client(http, {kA});
  auto r = client.Get("/v1/nodes");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().exit_code, kExitAuth);
  EXPECT_EQ(r.error().ToString(),
            "Unauthenticated (HTTP 401): missing bearer token\n"
            "  hint: pass an API token with --token or KMOSIX_TOKEN (or the config file's token:)");
  auto d = client.Delete("/v1/workloads/w");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().exit_code, kExitAuth);
  EXPECT_NE(d.error().hint.find("admin token"), std::string::npos);
}

TEST(ClientTest, NoRouteHintsAtAnOlderController) {
  FakeHttp http;  // unknown routes answer 404 "no route ..."
  ApiClient client(http, {kA});
  auto r = client.Post("/v1/nodes/n1/cordon", json());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().exit_code, kExitNotFound);
  EXPECT_NE(r.error().hint.find("older"), std::string::npos);
  // A null body is sent as no body.
  EXPECT_EQ(http.Calls()[0].request.body, "");
}

TEST(ClientTest, NonJsonErrorBodiesAreQuotedAsText) {
  auto e = ErrorFromResponse(502, "Bad Gateway\n", "GET", "/v1/nodes");
  EXPECT_EQ(e.exit_code, kExitError);
  EXPECT_EQ(e.ToString(), "HTTP (HTTP 502): Bad Gateway");
  auto empty = ErrorFromResponse(500, "", "GET", "/v1/nodes");
  EXPECT_EQ(empty.message, "GET /v1/nodes answered without a body");
}

TEST(ClientTest, NonJsonSuccessIsAnError) {
  FakeHttp http;
  http.On("GET", "/v1/nodes", {.status = 200, .body = "<html>", .content_type = "text/html"});
  ApiClient client(http, {kA});
  auto r = client.Get("/v1/nodes");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().exit_code, kExitError);
  EXPECT_EQ(r.error().code, "BadResponse");
}

TEST(ClientTest, GetTextReturnsTheBodyAsIs) {
  FakeHttp http;
  http.On("GET", "/v1/workloads/w/logs",
          {.status = 200, .body = "tick=1\ntick=2\n", .content_type = "text/plain"});
  ApiClient client(http, {kA});
  auto r = client.GetText("/v1/workloads/w/logs");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "tick=1\ntick=2\n");
}

TEST(ClientTest, StreamDeliversChunksAndReportsTheEnd) {
  FakeHttp http;
  http.Fail(kA, TransportFailure::kConnect, "refused");
  http.On("GET", "/v1/events",
          {.status = 200, .body = "", .content_type = "text/event-stream", .chunks = {"a", "b"}});
  ApiClient client(http, {kA, kB});
  std::string got;
  bool ended = false;
  auto e = client.Stream(
      "/v1/events", {{"Last-Event-ID", "7"}},
      [&](std::string_view c) {
        got += c;
        return true;
      },
      &ended);
  EXPECT_FALSE(e.has_value());
  EXPECT_TRUE(ended);
  EXPECT_EQ(got, "ab");
  EXPECT_EQ(client.CurrentServer(), kB);
  auto calls = http.Calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].request.headers,
            (std::vector<std::pair<std::string, std::string>>{{"Last-Event-ID", "7"}}));
}

TEST(ClientTest, StreamErrorsMapLikeRequests) {
  FakeHttp http;
  http.On("GET", "/v1/events", ErrorAnswer(403, "Forbidden", "no"));
  ApiClient client(http, {kA});
  auto e = client.Stream("/v1/events", {}, [](std::string_view) { return true; });
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, kExitAuth);
}

TEST(ClientTest, StreamStoppedByTheCallerIsNoError) {
  FakeHttp http;
  http.On(
      "GET", "/v1/events",
      {.status = 200, .body = "", .content_type = "text/event-stream", .chunks = {"a", "b", "c"}});
  ApiClient client(http, {kA});
  int n = 0;
  bool ended = true;
  auto e = client.Stream(
      "/v1/events", {}, [&](std::string_view) { return ++n < 2; }, &ended);
  EXPECT_FALSE(e.has_value());
  EXPECT_FALSE(ended);
  EXPECT_EQ(n, 2);
}

TEST(ClientTest, StreamThatBreaksAfterDataIsNotRetriedElsewhere) {
  FakeHttp http;
  http.On("GET", "/v1/events",
          {.status = 200,
           .body = "",
           .content_type = "text/event-stream",
           .chunks = {"a"},
           .failure = TransportFailure::kBroken,
           .error = "connection closed"});
  ApiClient client(http, {kA, kB});
  auto e = client.Stream("/v1/events", {}, [](std::string_view) { return true; });
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, kExitUnreachable);
  EXPECT_EQ(http.Calls().size(), 1u);
}

TEST(ClientTest, PathEscape) {
  EXPECT_EQ(PathEscape("demo-1.a_b~"), "demo-1.a_b~");
  EXPECT_EQ(PathEscape("a/b c"), "a%2Fb%20c");
}

}  // namespace
}  // namespace kmosix::ctl
