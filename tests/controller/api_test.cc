// The controller's REST layer on a real cpp-httplib server over the fake
// store: the OpenAPI document and the routes match both ways, every
// documented route answers (no "no route" 404, no 405), errors are JSON
// {"code","message"}, oversized bodies get 413, and /v1/events streams
// server-sent events as the cluster changes.
#include "controller/api.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "controller/controller_fixture.h"

namespace kmosix::controller {
namespace {

class ApiTest : public ControllerTest {
 protected:
  void SetUp() override {
    PublishNode("n1", 0.1);
    PublishNode("n2", 0.1);
    auto o = Options("c1");
    o.balance = false;
    o.order_timeout = std::chrono::seconds(60);
    controller_ = &StartController(o);
    ASSERT_TRUE(Eventually([&] { return controller_->IsLeader() && controller_->Ready(); }));
    routes_ = RegisterControllerRoutes(server_, *controller_, metrics_);
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    serving_ = std::thread([this] { server_.listen_after_bind(); });
    ASSERT_TRUE(Eventually([&] { return server_.is_running(); }));
  }
  void TearDown() override {
    controller_->Stop();  // ends event streams
    server_.stop();
    if (serving_.joinable()) serving_.join();
  }

  httplib::Client Client() {
    httplib::Client cl("127.0.0.1", port_);
    cl.set_read_timeout(std::chrono::seconds(5));
    return cl;
  }

  static json Doc() {
    json doc = json::parse(OpenApiDocument(), nullptr, false);
    EXPECT_FALSE(doc.is_discarded());
    return doc;
  }

  ControllerMetrics metrics_{"c1"};
  Controller* controller_ = nullptr;
  httplib::Server server_;
  std::vector<Route> routes_;
  int port_ = 0;
  std::thread serving_;
};

TEST_F(ApiTest, OpenApiDocumentIsTheRepoFileAndValid) {
  std::ifstream in(KMX_OPENAPI_PATH);
  std::stringstream file;
  file << in.rdbuf();
  ASSERT_FALSE(file.str().empty()) << KMX_OPENAPI_PATH;
  EXPECT_EQ(file.str(), OpenApiDocument()) << "rebuild: the compiled document is stale";
  json doc = Doc();
  EXPECT_EQ(doc["openapi"].get<std::string>().rfind("3.", 0), 0u);
  // Every $ref points at a schema that exists.
  std::function<void(const json&)> refs = [&](const json& j) {
    if (j.is_object()) {
      if (auto r = j.find("$ref"); r != j.end()) {
        const std::string ref = *r;
        const std::string prefix = "#/components/schemas/";
        ASSERT_EQ(ref.rfind(prefix, 0), 0u) << ref;
        EXPECT_TRUE(doc["components"]["schemas"].contains(ref.substr(prefix.size()))) << ref;
      }
      for (const auto& [k, v] : j.items()) refs(v);
    } else if (j.is_array()) {
      for (const auto& v : j) refs(v);
    }
  };
  refs(doc);
}

// The names of a migration's fault kinds, outcomes and deciders in the
// OpenAPI document and the Migration CRD are the typed model's, all of them.
TEST_F(ApiTest, FaultAndResolutionNamesAreTheModelsInTheDocumentAndTheCrd) {
  auto names = [](auto first, auto last, auto name_of) {
    std::vector<std::string> out;
    for (int i = static_cast<int>(first); i <= static_cast<int>(last); ++i)
      out.emplace_back(name_of(static_cast<decltype(first)>(i)));
    return out;
  };
  const auto kinds =
      names(api::FaultKind::kCancelled, api::FaultKind::kInternal, api::FaultKindName);
  const auto outcomes = names(api::MigrationOutcome::kCommitted, api::MigrationOutcome::kAbandoned,
                              api::MigrationOutcomeName);
  const auto deciders = names(api::Decider::kSource, api::Decider::kController, api::DeciderName);
  for (const auto& n : kinds) ASSERT_NE(n, "Unknown");
  json doc = Doc();
  const json& schemas = doc["components"]["schemas"];
  EXPECT_EQ(schemas["MigrationFault"]["properties"]["kind"]["enum"].get<std::vector<std::string>>(),
            kinds);
  EXPECT_EQ(schemas["MigrationResolution"]["properties"]["outcome"]["enum"]
                .get<std::vector<std::string>>(),
            outcomes);
  EXPECT_EQ(schemas["MigrationResolution"]["properties"]["decidedBy"]["enum"]
                .get<std::vector<std::string>>(),
            deciders);
  // The CRD (crd/, beside controller/openapi.json) lists them as flow sequences.
  std::string crd_path = KMX_OPENAPI_PATH;
  crd_path.replace(crd_path.rfind("controller/openapi.json"), std::string::npos,
                   "crd/kmosix.io_migrations.yaml");
  std::ifstream in(crd_path);
  std::stringstream crd;
  crd << in.rdbuf();
  ASSERT_FALSE(crd.str().empty()) << crd_path;
  auto flow = [](const std::vector<std::string>& v) {
    std::string s = "enum: [";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
    return s + "]";
  };
  EXPECT_NE(crd.str().find(flow(kinds)), std::string::npos) << flow(kinds);
  EXPECT_NE(crd.str().find(flow(outcomes)), std::string::npos) << flow(outcomes);
  EXPECT_NE(crd.str().find(flow(deciders)), std::string::npos) << flow(deciders);
}

TEST_F(ApiTest, EveryServerRouteIsDocumentedAndEveryDocumentedRouteIsServed) {
  std::set<std::pair<std::string, std::string>> served, documented;
  for (const Route& r : routes_) served.insert({r.method, r.path});
  const json doc = Doc();
  for (const auto& [path, item] : doc["paths"].items()) {
    for (const auto& [method, op] : item.items()) {
      std::string m = method;
      std::transform(m.begin(), m.end(), m.begin(), ::toupper);
      documented.insert({m, path});
      EXPECT_TRUE(op.contains("responses")) << m << " " << path;
    }
  }
  for (const auto& r : served)
    EXPECT_TRUE(documented.count(r)) << r.first << " " << r.second << " is not in openapi.json";
  for (const auto& r : documented)
    EXPECT_TRUE(served.count(r)) << r.first << " " << r.second << " is documented, not served";
  EXPECT_GE(served.size(), 23u);
}

TEST_F(ApiTest, EveryDocumentedRouteAnswers) {
  auto cl = Client();
  const json doc = Doc();
  for (const auto& [path, item] : doc["paths"].items()) {
    const std::string url = std::regex_replace(path, std::regex(R"(\{[^}]+\})"), "ghost");
    for (const auto& [method, op] : item.items()) {
      httplib::Result res{nullptr, httplib::Error::Unknown};
      if (method == "get" && path == "/v1/events") {
        // A stream: take its first bytes, then hang up.
        std::string first;
        auto r = cl.Get(url, [&](const char* data, size_t n) {
          first.append(data, n);
          return false;
        });
        EXPECT_NE(first.find("kmosix events"), std::string::npos) << first;
        continue;
      }
      if (method == "get") res = cl.Get(url);
      if (method == "post") res = cl.Post(url, "{}", "application/json");
      if (method == "delete") res = cl.Delete(url);
      ASSERT_TRUE(res) << method << " " << url << ": " << httplib::to_string(res.error());
      EXPECT_NE(res->status, 405) << method << " " << url;
      const std::string type = res->get_header_value("Content-Type");
      if (res->status >= 400) {
        json err = json::parse(res->body, nullptr, false);
        ASSERT_TRUE(err.is_object()) << method << " " << url << ": " << res->body;
        EXPECT_TRUE(err.contains("code") && err.contains("message")) << res->body;
        EXPECT_EQ(err.value("message", "").rfind("no route", 0), std::string::npos)
            << method << " " << url << " is not routed";
        EXPECT_TRUE(op["responses"].contains(std::to_string(res->status)))
            << method << " " << url << " answered " << res->status << ", not documented";
      } else {
        EXPECT_TRUE(op["responses"].contains(std::to_string(res->status)))
            << method << " " << url << " answered " << res->status;
        if (type.rfind("application/json", 0) == 0) {
          EXPECT_FALSE(json::parse(res->body, nullptr, false).is_discarded()) << url;
        }
      }
    }
  }
}

TEST_F(ApiTest, ErrorsAreJsonWithCodesAndChangeNothing) {
  auto cl = Client();
  const size_t keys = KeyCount();
  auto unknown = cl.Get("/v1/nope");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ(json::parse(unknown->body)["code"], "not_found");

  auto bad = cl.Post("/v1/nodes/n1/drain", R"({"includePinned":1})", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(json::parse(bad->body)["code"], "invalid_argument");
  EXPECT_NE(json::parse(bad->body)["message"].get<std::string>().find("includePinned"),
            std::string::npos);

  auto big = cl.Post("/v1/workloads", std::string(200 * 1024, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_EQ(json::parse(big->body)["code"], "invalid_argument");

  auto missing = cl.Delete("/v1/migrations/m-none");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(KeyCount(), keys) << "a refused request changed the store";
  auto n1 = cl.Get("/v1/nodes/n1");
  ASSERT_TRUE(n1);
  EXPECT_FALSE(json::parse(n1->body)["cordoned"].get<bool>());
}

TEST_F(ApiTest, OperatorActionsOverHttp) {
  auto cl = Client();
  auto created =
      cl.Post("/v1/workloads", R"({"name":"w1","image":"demo","node":"n1"})", "application/json");
  ASSERT_TRUE(created);
  ASSERT_EQ(created->status, 201) << created->body;
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled;
  }));
  MarkRunning("w1", clock_.WallMillis());
  ASSERT_TRUE(Eventually(
      [&] { return (*Rest(*controller_).GetWorkload("w1"))["status"]["phase"] == "Running"; }));

  auto pin = cl.Post("/v1/workloads/w1/pin", "", "application/json");
  ASSERT_TRUE(pin);
  EXPECT_EQ(pin->status, 200) << pin->body;
  EXPECT_TRUE(json::parse(pin->body)["spec"]["pinned"].get<bool>());
  auto unpin = cl.Post("/v1/workloads/w1/unpin", "", "application/json");
  ASSERT_TRUE(unpin);
  EXPECT_FALSE(json::parse(unpin->body)["spec"]["pinned"].get<bool>());

  auto cordon = cl.Post("/v1/nodes/n2/cordon", "", "application/json");
  ASSERT_TRUE(cordon);
  EXPECT_EQ(cordon->status, 200);
  EXPECT_TRUE(json::parse(cordon->body)["cordoned"].get<bool>());
  auto uncordon = cl.Post("/v1/nodes/n2/uncordon", "", "application/json");
  ASSERT_TRUE(uncordon);
  EXPECT_FALSE(json::parse(uncordon->body)["cordoned"].get<bool>());
  ASSERT_TRUE(
      Eventually([&] { return !(*Rest(*controller_).GetNode("n2"))["cordoned"].get<bool>(); }));

  auto drain = cl.Post("/v1/nodes/n1/drain", "", "application/json");
  ASSERT_TRUE(drain);
  ASSERT_EQ(drain->status, 200) << drain->body;
  json report = json::parse(drain->body);
  ASSERT_EQ(report["ordered"].size(), 1u) << drain->body;
  EXPECT_EQ(report["ordered"][0]["target"], "n2");
  const std::string id = report["ordered"][0]["migration"];

  auto cancel = cl.Delete("/v1/migrations/" + id);
  ASSERT_TRUE(cancel);
  EXPECT_EQ(cancel->status, 202) << cancel->body;
  EXPECT_GT(json::parse(cancel->body)["cancelRequestedMs"].get<int64_t>(), 0);
}

TEST_F(ApiTest, EventStreamDeliversChangesAndResumesFromLastEventId) {
  std::string received;
  std::mutex mu;
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    auto cl = Client();
    cl.Get("/v1/events?types=workload", [&](const char* data, size_t n) {
      std::lock_guard lock(mu);
      received.append(data, n);
      return !stop.load();
    });
  });
  auto has = [&](const std::string& text) {
    return Eventually([&] {
      std::lock_guard lock(mu);
      return received.find(text) != std::string::npos;
    });
  };
  ASSERT_TRUE(has(": kmosix events"));
  ASSERT_TRUE(
      Rest(*controller_).CreateWorkload(R"({"name":"w1","image":"demo","node":"n1"})").ok());
  EXPECT_TRUE(has("event: workload.created\ndata: {"));
  EXPECT_TRUE(has("event: workload.placed\n"));
  ASSERT_TRUE(Rest(*controller_).SetCordoned("n1", true).ok());
  ASSERT_TRUE(controller_->DeleteWorkload("w1").ok());
  EXPECT_TRUE(has("event: workload.deleted\n"));
  stop = true;
  // One more event wakes the reader so it sees `stop`.
  ASSERT_TRUE(
      Rest(*controller_).CreateWorkload(R"({"name":"w2","image":"demo","node":"n2"})").ok());
  reader.join();
  EXPECT_EQ(received.find("node.cordoned"), std::string::npos) << "the type filter let it through";

  // Resume after the first event: everything after it comes again.
  std::string first_id;
  {
    std::smatch m;
    ASSERT_TRUE(
        std::regex_search(received, m, std::regex(R"(id: (\d+)\nevent: workload\.created)")));
    first_id = m[1];
  }
  std::string replay;
  auto cl = Client();
  httplib::Headers headers = {{"Last-Event-ID", first_id}};
  cl.Get("/v1/events", headers, [&](const char* data, size_t n) {
    replay.append(data, n);
    return replay.find("workload.deleted") == std::string::npos;
  });
  EXPECT_EQ(replay.find("id: " + first_id + "\n"), std::string::npos) << replay;
  EXPECT_NE(replay.find("event: workload.placed"), std::string::npos) << replay;
  EXPECT_NE(replay.find("event: node.cordoned"), std::string::npos) << replay;

  auto bad = cl.Get("/v1/events?since=abc");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
}

}  // namespace
}  // namespace kmosix::controller
