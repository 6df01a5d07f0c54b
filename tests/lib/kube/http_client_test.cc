// Tests of HttpClient (lib/kube/http_client.h) over a scripted Transport:
// URL building and escaping, List paging, Watch decoding (lines split across
// chunks, ERROR events, bad lines), error mapping with the server's message,
// request shapes of the writes, and bearer tokens re-read from their file.
#include "kube/http_client.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "fake_http_transport.h"
#include "fakes/fake_clock.h"
#include "kube/watch_stream.h"

namespace kmosix::kube {
namespace {

using kmosix::kube::testing::FakeHttpTransport;
using kmosix::testing::FakeClock;
using nlohmann::json;

struct Fixture {
  explicit Fixture(Config cfg = {}) {
    auto t = std::make_unique<FakeHttpTransport>();
    transport = t.get();
    client = std::make_unique<HttpClient>(std::move(cfg), std::move(t), clock);
  }
  FakeClock clock;
  FakeHttpTransport* transport;
  std::unique_ptr<HttpClient> client;
};

std::string StatusBody(int code, const std::string& message) {
  return json{{"kind", "Status"},
              {"apiVersion", "v1"},
              {"status", "Failure"},
              {"message", message},
              {"code", code}}
      .dump();
}

TEST(HttpClientPaths, CollectionAndObjectPaths) {
  EXPECT_EQ(HttpClient::CollectionPath(Migrations(), "ns1"),
            "/apis/kmosix.io/v1alpha1/namespaces/ns1/migrations");
  EXPECT_EQ(HttpClient::CollectionPath(Migrations(), ""), "/apis/kmosix.io/v1alpha1/migrations");
  EXPECT_EQ(HttpClient::CollectionPath(MigrationPolicies(), "ignored"),
            "/apis/kmosix.io/v1alpha1/migrationpolicies");
  EXPECT_EQ(HttpClient::CollectionPath(Nodes(), ""), "/api/v1/nodes");
  EXPECT_EQ(HttpClient::CollectionPath(CoreEvents(), "default"),
            "/api/v1/namespaces/default/events");
  EXPECT_EQ(HttpClient::ObjectPath(MigratableWorkloads(), "n", "w1", "status"),
            "/apis/kmosix.io/v1alpha1/namespaces/n/migratableworkloads/w1/status");
  EXPECT_EQ(HttpClient::ObjectPath(Nodes(), "", "node-a"), "/api/v1/nodes/node-a");
}

TEST(HttpClientPaths, Escape) {
  EXPECT_EQ(HttpClient::Escape("app=x,tier!=2"), "app%3Dx%2Ctier%21%3D2");
  EXPECT_EQ(HttpClient::Escape("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
  EXPECT_EQ(HttpClient::Escape("Az09-._~"), "Az09-._~");
}

TEST(HttpClientList, FollowsContinueTokensAndFillsKinds) {
  Fixture f;
  f.transport->On(
      "GET /apis/kmosix.io/v1alpha1/namespaces/ns/migrations?labelSelector=app%3Dx&limit=2", 200,
      R"({"metadata":{"resourceVersion":"10","continue":"tok/1"},
                      "items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]})");
  f.transport->On(
      "GET "
      "/apis/kmosix.io/v1alpha1/namespaces/ns/"
      "migrations?labelSelector=app%3Dx&limit=2&continue=tok%2F1",
      200, R"({"metadata":{"resourceVersion":"11"},"items":[{"metadata":{"name":"c"}}]})");
  ListOptions o;
  o.label_selector = "app=x";
  o.limit = 2;
  auto l = f.client->List(Migrations(), "ns", o);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->items.size(), 3u);
  EXPECT_EQ(l->items[2]["metadata"]["name"], "c");
  EXPECT_EQ(l->items[0]["kind"], "Migration");
  EXPECT_EQ(l->items[0]["apiVersion"], "kmosix.io/v1alpha1");
  EXPECT_EQ(l->resource_version, "11");
  EXPECT_EQ(f.transport->requests().size(), 2u);
}

TEST(HttpClientList, ExpiredContinueIsConflictAndGarbageIsRetry) {
  Fixture f;
  f.transport->On("GET /api/v1/nodes?limit=1", 200,
                  R"({"metadata":{"resourceVersion":"5","continue":"c"},"items":[]})");
  f.transport->On("GET /api/v1/nodes?limit=1&continue=c", 410,
                  StatusBody(410, "The provided continue parameter is too old"));
  ListOptions o;
  o.limit = 1;
  auto l = f.client->List(Nodes(), "", o);
  EXPECT_EQ(l.status().code(), Code::kConflict);
  EXPECT_NE(l.status().message().find("too old"), std::string::npos);
  f.transport->On("GET /api/v1/nodes", 200, "not json");
  EXPECT_EQ(f.client->List(Nodes(), "", {}).status().code(), Code::kRetry);
}

TEST(HttpClientErrors, MappingCarriesTheServerMessage) {
  struct Case {
    int http;
    Code code;
  };
  for (auto c : {Case{404, Code::kNotFound}, Case{409, Code::kConflict}, Case{410, Code::kConflict},
                 Case{400, Code::kInvalid}, Case{422, Code::kInvalid}, Case{429, Code::kRetry},
                 Case{500, Code::kRetry}, Case{503, Code::kRetry}, Case{401, Code::kFailed},
                 Case{403, Code::kFailed}, Case{418, Code::kFailed}}) {
    Fixture f;
    f.transport->On("GET ", c.http, StatusBody(c.http, "msg-" + std::to_string(c.http)));
    auto g = f.client->Get(Migrations(), "ns", "a");
    EXPECT_EQ(g.status().code(), c.code) << c.http;
    EXPECT_NE(g.status().message().find("msg-" + std::to_string(c.http)), std::string::npos)
        << g.status().message();
  }
  Fixture f;
  f.transport->OnError("GET ", RetryError("Connection"));
  EXPECT_EQ(f.client->Get(Migrations(), "ns", "a").status().code(), Code::kRetry);
  f.transport->On("GET ", 502, "<html>bad gateway</html>");
  auto g = f.client->Get(Migrations(), "ns", "a");
  EXPECT_EQ(g.status().code(), Code::kRetry);
  EXPECT_NE(g.status().message().find("bad gateway"), std::string::npos);
}

TEST(HttpClientWrites, RequestShapes) {
  Fixture f;
  json obj = {{"metadata", {{"name", "m1"}, {"namespace", "ns"}, {"resourceVersion", "7"}}},
              {"spec", {{"x", 1}}}};
  f.transport->On("POST /apis/kmosix.io/v1alpha1/namespaces/ns/migrations", 201, obj.dump());
  f.transport->On("PUT /apis/kmosix.io/v1alpha1/namespaces/ns/migrations/m1/status", 200,
                  obj.dump());
  f.transport->On("PUT /apis/kmosix.io/v1alpha1/namespaces/ns/migrations/m1", 200, obj.dump());
  f.transport->On("PATCH /apis/kmosix.io/v1alpha1/namespaces/ns/migrations/m1", 200, obj.dump());
  f.transport->On("DELETE /apis/kmosix.io/v1alpha1/namespaces/ns/migrations/m1", 200, "{}");
  ASSERT_TRUE(f.client->Create(Migrations(), "", obj).ok());
  ASSERT_TRUE(f.client->UpdateStatus(Migrations(), "ns", obj).ok());
  ASSERT_TRUE(f.client->Update(Migrations(), "ns", obj).ok());
  ASSERT_TRUE(f.client->MergePatch(Migrations(), "ns", "m1", {{"spec", {{"y", 2}}}}).ok());
  ASSERT_TRUE(f.client->Delete(Migrations(), "ns", "m1", "uid-1").ok());
  auto reqs = f.transport->requests();
  ASSERT_EQ(reqs.size(), 5u);
  json created = json::parse(reqs[0].body);
  EXPECT_EQ(created["kind"], "Migration");
  EXPECT_EQ(created["apiVersion"], "kmosix.io/v1alpha1");
  EXPECT_EQ(reqs[0].content_type, "application/json");
  EXPECT_EQ(reqs[3].content_type, "application/merge-patch+json");
  EXPECT_EQ(json::parse(reqs[3].body)["spec"]["y"], 2);
  EXPECT_EQ(json::parse(reqs[4].body)["preconditions"]["uid"], "uid-1");
  EXPECT_EQ(reqs[0].headers.at("Accept"), "application/json");
  // Namespace disagreements and missing names are refused before sending.
  EXPECT_EQ(f.client->Create(Migrations(), "other", obj).status().code(), Code::kInvalid);
  EXPECT_EQ(
      f.client->Update(Migrations(), "ns", json{{"metadata", json::object()}}).status().code(),
      Code::kInvalid);
  EXPECT_EQ(f.client->Get(Migrations(), "ns", "").status().code(), Code::kInvalid);
  EXPECT_EQ(f.transport->requests().size(), 5u);
}

std::string Ev(const std::string& type, const std::string& name, const std::string& rv) {
  return json{{"type", type}, {"object", {{"metadata", {{"name", name}, {"resourceVersion", rv}}}}}}
             .dump() +
         "\n";
}

TEST(HttpClientWatch, LinesSplitAcrossChunks) {
  Fixture f;
  std::string body = Ev("ADDED", "a", "11") + Ev("MODIFIED", "a", "12") + Ev("BOOKMARK", "", "13") +
                     Ev("DELETED", "a", "14");
  // Cut the body at every third byte: no line arrives whole.
  std::vector<std::string> chunks;
  for (size_t i = 0; i < body.size(); i += 3) chunks.push_back(body.substr(i, 3));
  f.transport->OnStream(
      "GET "
      "/apis/kmosix.io/v1alpha1/namespaces/ns/"
      "migrations?watch=1&resourceVersion=10&allowWatchBookmarks=true&timeoutSeconds=300&"
      "labelSelector=a%3Db",
      chunks);
  std::vector<WatchEvent> got;
  std::atomic<bool> stop{false};
  ListOptions o;
  o.label_selector = "a=b";
  Status s = f.client->Watch(
      Migrations(), "ns", "10", o,
      [&](const WatchEvent& e) {
        got.push_back(e);
        return true;
      },
      stop);
  ASSERT_TRUE(s.ok()) << s.ToString() << " " << f.transport->requests()[0].target;
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].type, EventType::kAdded);
  EXPECT_EQ(got[1].type, EventType::kModified);
  EXPECT_EQ(got[2].type, EventType::kBookmark);
  EXPECT_EQ(got[2].object["metadata"]["resourceVersion"], "13");
  EXPECT_EQ(got[3].type, EventType::kDeleted);
}

TEST(HttpClientWatch, ErrorEvents) {
  struct Case {
    std::string line;
    Code code;
    std::string want;
  };
  std::vector<Case> cases = {
      {R"({"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 5 - 20"}})",
       Code::kConflict, "too old resource version"},
      {R"({"type":"ERROR","object":{"kind":"Status","code":500,"message":"etcd is sad"}})",
       Code::kRetry, "etcd is sad"},
      {R"({"type":"ADDED","object":{"metadata":{"na)", Code::kRetry, "not JSON"},
      {R"({"type":"WHAT","object":{"metadata":{"resourceVersion":"1"}}})", Code::kRetry,
       "unknown event type"},
      {R"({"type":"ADDED"})", Code::kRetry, "without an object"},
      {R"({"type":"ADDED","object":{"metadata":{}}})", Code::kRetry, "resourceVersion"},
      {R"([1,2])", Code::kRetry, "not a JSON object"},
  };
  for (const auto& c : cases) {
    Fixture f;
    f.transport->OnStream("GET ", {Ev("ADDED", "a", "11"), c.line + "\n", Ev("ADDED", "b", "12")});
    int events = 0;
    std::atomic<bool> stop{false};
    Status s = f.client->Watch(
        Migrations(), "ns", "10", {},
        [&](const WatchEvent&) {
          ++events;
          return true;
        },
        stop);
    EXPECT_EQ(s.code(), c.code) << c.line;
    EXPECT_NE(s.message().find(c.want), std::string::npos) << s.message();
    EXPECT_EQ(events, 1) << c.line;  // nothing after the bad line
  }
}

TEST(HttpClientWatch, HttpErrorsHandlerStopAndLastLineWithoutNewline) {
  Fixture f;
  f.transport->OnStream("GET ", {}, 410);
  std::atomic<bool> stop{false};
  auto count = [](int* n) {
    return [n](const WatchEvent&) {
      ++*n;
      return true;
    };
  };
  int n = 0;
  EXPECT_EQ(f.client->Watch(Migrations(), "ns", "1", {}, count(&n), stop).code(), Code::kConflict);
  f.transport->OnStream("GET ", {}, 500);
  EXPECT_EQ(f.client->Watch(Migrations(), "ns", "1", {}, count(&n), stop).code(), Code::kRetry);
  EXPECT_EQ(f.client->Watch(Migrations(), "ns", "", {}, count(&n), stop).code(), Code::kInvalid);
  // The handler ends the watch: Ok, nothing more delivered.
  f.transport->OnStream("GET ", {Ev("ADDED", "a", "2") + Ev("ADDED", "b", "3")});
  int seen = 0;
  EXPECT_TRUE(f.client
                  ->Watch(
                      Migrations(), "ns", "1", {},
                      [&](const WatchEvent&) {
                        ++seen;
                        return false;
                      },
                      stop)
                  .ok());
  EXPECT_EQ(seen, 1);
  // The last line may lack its newline.
  std::string last = Ev("ADDED", "c", "4");
  last.pop_back();
  f.transport->OnStream("GET ", {last});
  n = 0;
  EXPECT_TRUE(f.client->Watch(Migrations(), "ns", "1", {}, count(&n), stop).ok());
  EXPECT_EQ(n, 1);
  // A broken connection mid-stream is kRetry.
  f.transport->OnError("GET ", RetryError("Read"));
  EXPECT_EQ(f.client->Watch(Migrations(), "ns", "1", {}, count(&n), stop).code(), Code::kRetry);
}

TEST(WatchDecoder, OverlongLineIsRetry) {
  WatchHandler h = [](const WatchEvent&) { return true; };
  WatchDecoder d(h, 16);
  EXPECT_TRUE(d.Feed(std::string(10, 'x')));  // fits; not JSON once the line ends
  EXPECT_FALSE(d.Feed("\n"));
  EXPECT_NE(d.status().message().find("not JSON"), std::string::npos);
  // 10 bytes fit; 10 more cross the limit before any newline.
  WatchDecoder d2(h, 16);
  EXPECT_TRUE(d2.Feed(std::string(10, ' ')));
  EXPECT_FALSE(d2.Feed(std::string(10, ' ')));
  EXPECT_EQ(d2.status().code(), Code::kRetry);
  EXPECT_FALSE(d2.Feed("\n"));  // ended stays ended
}

TEST(HttpClientAuth, TokenFileReReadOn401AndAfterTheInterval) {
  char t[] = "/tmp/kmx-kubetok-XXXXXX";
  std::string dir = ::mkdtemp(t);
  std::string file = dir + "/token";
  std::ofstream(file) << "one\n";
  Config cfg;
  cfg.token_file = file;
  Fixture f(cfg);
  f.transport->On("GET ", 200, "{}");
  ASSERT_TRUE(f.client->Get(Nodes(), "", "n").ok());
  std::ofstream(file) << "two\n";
  // Within the interval the cached token is sent; the 401 makes the client re-read and retry.
  f.transport->On("GET ", 401, StatusBody(401, "Unauthorized"));
  f.transport->On("GET ", 200, "{}");
  ASSERT_TRUE(f.client->Get(Nodes(), "", "n").ok());
  std::ofstream(file) << "three\n";
  f.clock.Advance(std::chrono::seconds(61));
  f.transport->On("GET ", 200, "{}");
  ASSERT_TRUE(f.client->Get(Nodes(), "", "n").ok());
  auto reqs = f.transport->requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[0].headers.at("Authorization"), "Bearer one");
  EXPECT_EQ(reqs[1].headers.at("Authorization"), "Bearer one");
  EXPECT_EQ(reqs[2].headers.at("Authorization"), "Bearer two");
  EXPECT_EQ(reqs[3].headers.at("Authorization"), "Bearer three");
  // A 401 that persists is kFailed.
  f.transport->On("GET ", 401, StatusBody(401, "Unauthorized"));
  f.transport->On("GET ", 401, StatusBody(401, "Unauthorized"));
  EXPECT_EQ(f.client->Get(Nodes(), "", "n").status().code(), Code::kFailed);
  std::filesystem::remove_all(dir);
}

TEST(HttpClientAuth, StaticTokenAndNoToken) {
  Config cfg;
  cfg.token = "static";
  Fixture f(cfg);
  f.transport->On("GET ", 200, "{}");
  ASSERT_TRUE(f.client->Get(Nodes(), "", "n").ok());
  EXPECT_EQ(f.transport->requests()[0].headers.at("Authorization"), "Bearer static");
  Fixture g;
  g.transport->On("GET ", 200, "{}");
  ASSERT_TRUE(g.client->Get(Nodes(), "", "n").ok());
  EXPECT_EQ(g.transport->requests()[0].headers.count("Authorization"), 0u);
}

TEST(HttpTransport, RefusesBadConfig) {
  Config cfg;
  cfg.server = "ftp://x";
  EXPECT_EQ(NewHttpTransport(cfg).status().code(), Code::kInvalid);
  cfg.server = "https://127.0.0.1:1";
  cfg.ca_pem = "not pem";
  EXPECT_EQ(NewHttpTransport(cfg).status().code(), Code::kInvalid);
  cfg.ca_pem = "";
  cfg.client_cert_pem = "x";
  cfg.client_key_pem = "y";
  EXPECT_EQ(NewHttpTransport(cfg).status().code(), Code::kInvalid);
  cfg.client_cert_pem = cfg.client_key_pem = "";
  EXPECT_TRUE(NewHttpTransport(cfg).ok());
}

TEST(HttpTransport, ConnectionRefusedIsRetry) {
  Config cfg;
  cfg.server = "https://127.0.0.1:1";
  FakeClock clock;
  auto c = HttpClient::New(cfg, clock);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->Get(Nodes(), "", "n").status().code(), Code::kRetry);
}

}  // namespace
}  // namespace kmosix::kube
