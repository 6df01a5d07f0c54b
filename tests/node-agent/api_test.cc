// The agent's REST API over a real HTTP server, with fakes behind it: every
// bad request gets a 4xx JSON error {"code","message"} and changes nothing.
#include <gtest/gtest.h>
#include <httplib.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "http_api.h"
#include "kmosix/stop_and_copy.h"
#include "metrics.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeTransport;

constexpr char kImage[] = "kmosix.local/demo:latest";

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("kmx-api-test-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    runtime_.AddImage(kImage);
    transport_.SetNotAnAgent();
    AgentOptions opts;
    opts.node = "node1";
    opts.advertise_url = "http://127.0.0.1:1";
    opts.state_dir = root_ / "state";
    opts.scratch_dir = root_ / "scratch";
    agent_ =
        std::make_unique<Agent>(opts, runtime_, engine_, transport_, clock_, random_, &metrics_);
    ASSERT_TRUE(agent_->Start().ok());
    RegisterApiRoutes(server_, *agent_, metrics_);
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
  }
  void TearDown() override {
    server_.stop();
    thread_.join();
    fs::remove_all(root_);
  }

  // Sends a request and checks the status and, for errors, the JSON shape.
  // `client`: another agent's server (default: this fixture's).
  json Call(const std::string& method, const std::string& path, const std::string& body,
            int want_status, httplib::Client* client = nullptr) {
    httplib::Client& c = client != nullptr ? *client : *client_;
    httplib::Result res = method == "POST"     ? c.Post(path, body, "application/json")
                          : method == "DELETE" ? c.Delete(path)
                                               : c.Get(path);
    EXPECT_TRUE(res) << method << " " << path << ": no answer";
    if (!res) return {};
    EXPECT_EQ(res->status, want_status) << method << " " << path << ": " << res->body;
    json j = json::parse(res->body, nullptr, false);
    if (want_status >= 400) {
      EXPECT_TRUE(j.is_object() && j.contains("code") && j.contains("message"))
          << "error body is not {code,message}: " << res->body;
    }
    return j;
  }
  void ExpectNothingChanged(size_t containers) {
    auto names = runtime_.ListContainers();
    ASSERT_TRUE(names.ok());
    EXPECT_EQ(names->size(), containers);
    EXPECT_EQ(runtime_.Calls("Pause"), 0);
  }

  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  FakeRuntime runtime_{"node1", "/tmp/kmx-api-layers-" + std::to_string(::getpid())};
  StopAndCopyEngine engine_{runtime_, clock_};
  FakeTransport transport_{nullptr};
  AgentMetrics metrics_{"node1"};
  std::unique_ptr<Agent> agent_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(ApiTest, CreateGetListDelete) {
  json created = Call("POST", "/v1/workloads",
                      R"({"name":"w1","image":"kmosix.local/demo:latest","args":["/bin/sh"],
                          "env":{"A":"1"},"memoryMiB":64,"cpus":0.5})",
                      201);
  EXPECT_EQ(created["name"], "w1");
  EXPECT_EQ(created["state"], "running");
  EXPECT_EQ(created["node"], "node1");
  EXPECT_GT(created["pid"].get<int>(), 0);
  EXPECT_GT(created["startedMs"].get<int64_t>(), 0);
  EXPECT_EQ(created["startedMs"], created["createdMs"]);
  json got = Call("GET", "/v1/workloads/w1", "", 200);
  EXPECT_EQ(got["memoryMiB"], 64);
  EXPECT_EQ(got["env"]["A"], "1");
  json list = Call("GET", "/v1/workloads", "", 200);
  ASSERT_EQ(list["items"].size(), 1u);
  Call("DELETE", "/v1/workloads/w1", "", 200);
  Call("GET", "/v1/workloads/w1", "", 404);
  EXPECT_FALSE(runtime_.Has("w1"));
}

// The exact JSON of every reply, keys and values, as the README, kmosixctl
// and the e2e tests read them: a change here is a change of the REST API.
// node0 (its own runtime, server and agent) migrates w1 to this fixture's
// agent (node1) over the fake transport; both sides are asked.
TEST_F(ApiTest, RepliesKeepTheirExactForm) {
  FakeRuntime runtime0{"node0", "/tmp/kmx-api-layers-" + std::to_string(::getpid())};
  runtime0.AddImage(kImage);
  StopAndCopyEngine engine0{runtime0, clock_};
  FakeTransport to_node1{&agent_->Target()};
  AgentOptions opts;
  opts.node = "node0";
  opts.advertise_url = "http://node0:7700";
  opts.state_dir = root_ / "state0";
  opts.scratch_dir = root_ / "scratch0";
  AgentMetrics metrics0{"node0"};
  Agent node0(opts, runtime0, engine0, to_node1, clock_, random_, &metrics0);
  ASSERT_TRUE(node0.Start().ok());
  httplib::Server server0;
  RegisterApiRoutes(server0, node0, metrics0);
  const int port0 = server0.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port0, 0);
  std::thread thread0([&] { server0.listen_after_bind(); });
  while (!server0.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  httplib::Client c0("127.0.0.1", port0);
  struct Stop {
    httplib::Server& s;
    std::thread& t;
    ~Stop() {
      s.stop();
      t.join();
    }
  } stop{server0, thread0};

  EXPECT_EQ(Call("GET", "/healthz", "", 200, &c0), json({{"status", "ok"}, {"node", "node0"}}));
  EXPECT_EQ(Call("GET", "/v1/workloads", "", 200, &c0),
            json({{"node", "node0"}, {"items", json::array()}}));
  EXPECT_EQ(Call("GET", "/v1/migrations", "", 200, &c0),
            json({{"node", "node0"}, {"items", json::array()}}));

  const int64_t created_ms = clock_.WallMillis();
  json created = Call("POST", "/v1/workloads",
                      R"({"name":"w1","image":"kmosix.local/demo:latest","args":["/bin/sh"],
                          "env":{"A":"1"},"memoryMiB":64,"cpus":0.5})",
                      201, &c0);
  auto info = runtime0.Inspect("w1");
  ASSERT_TRUE(info.ok());
  const json spec = {{"name", "w1"},        {"image", kImage}, {"args", {"/bin/sh"}},
                     {"env", {{"A", "1"}}}, {"memoryMiB", 64}, {"cpus", 0.5}};
  json want = spec;
  want.update({{"node", "node0"},
               {"state", "running"},
               {"createdMs", created_ms},
               {"startedMs", created_ms},
               {"migrations", json::array()},
               {"pid", info->pid},
               {"task", "running"},
               {"restarts", 0}});
  EXPECT_EQ(created, want);
  EXPECT_EQ(Call("GET", "/v1/workloads/w1", "", 200, &c0), want);
  EXPECT_EQ(Call("GET", "/v1/workloads", "", 200, &c0),
            json({{"node", "node0"}, {"items", {want}}}));
  // Without memoryMiB and cpus (0: no limit) the spec leaves them out.
  json bare = Call("POST", "/v1/workloads", R"({"name":"w0","image":"kmosix.local/demo:latest"})",
                   201, &c0);
  EXPECT_FALSE(bare.contains("memoryMiB"));
  EXPECT_FALSE(bare.contains("cpus"));
  EXPECT_EQ(bare["args"], json::array());
  EXPECT_EQ(bare["env"], json::object());
  EXPECT_EQ(Call("DELETE", "/v1/workloads/w0", "", 200, &c0), json({{"deleted", "w0"}}));

  clock_.Advance(std::chrono::seconds(1));
  json report =
      Call("POST", "/v1/workloads/w1/migrate", R"({"target":"http://node1:7700"})", 200, &c0);
  ASSERT_TRUE(report.is_object());
  json want_report = {
      {"id", report["id"]},
      {"workload", "w1"},
      {"sourceNode", "node0"},
      {"targetNode", "node1"},
      {"target", "http://node1:7700"},
      {"phase", "Succeeded"},
      {"outcome", "Succeeded"},
      {"startedMs", created_ms + 1000},
      {"finishedMs", report["finishedMs"]},
      {"bytes", report["bytes"]},
      {"files", report["files"]},
      {"targetPid", report["targetPid"]},
      {"timings", report["timings"]},
      // No fault met; committed on the source's own path.
      {"resolution",
       {{"outcome", "Committed"}, {"decidedBy", "Source"}, {"atMs", report["finishedMs"]}}}};
  EXPECT_EQ(report, want_report);
  EXPECT_GT(report["bytes"].get<uint64_t>(), 0u);
  json timings = report["timings"];
  for (const char* key :
       {"prepare", "freeze", "checkpoint", "transfer", "restore", "commit", "downtime", "total"}) {
    EXPECT_TRUE(timings.contains(key) && timings[key].is_number()) << key;
    timings.erase(key);
  }
  EXPECT_EQ(timings, json::object());
  const std::string id = report["id"];

  json sent = want_report;
  sent["role"] = "source";
  EXPECT_EQ(Call("GET", "/v1/migrations", "", 200, &c0),
            json({{"node", "node0"}, {"items", {sent}}}));
  EXPECT_EQ(Call("GET", "/v1/migrations/" + id, "", 200, &c0), sent);
  EXPECT_EQ(Call("GET", "/v1/workloads", "", 200, &c0),
            json({{"node", "node0"}, {"items", json::array()}}));

  const json received = {{"id", id},
                         {"role", "target"},
                         {"workload", "w1"},
                         {"sourceNode", "node0"},
                         {"targetNode", "node1"},
                         {"phase", "Committed"},
                         {"bytes", report["bytes"]},
                         {"files", report["files"]},
                         {"error", ""}};
  EXPECT_EQ(Call("GET", "/v1/migrations", "", 200),
            json({{"node", "node1"}, {"items", {received}}}));
  EXPECT_EQ(Call("GET", "/v1/migrations/" + id, "", 200), received);
  json arrived = spec;
  arrived.update({{"node", "node1"},
                  {"state", "running"},
                  {"createdMs", created_ms},
                  {"startedMs", report["finishedMs"]},
                  {"migrations", {id}},
                  {"pid", report["targetPid"]},
                  {"task", "running"},
                  {"restarts", 0}});
  EXPECT_EQ(Call("GET", "/v1/workloads/w1", "", 200), arrived);

  // A migration that fails: the report, its error, and code and message.
  Call("POST", "/v1/workloads", R"({"name":"w2","image":"kmosix.local/demo:latest"})", 201);
  json failed = Call("POST", "/v1/workloads/w2/migrate", R"({"target":"http://10.9.9.9:80"})", 400);
  ASSERT_TRUE(failed.is_object());
  EXPECT_EQ(failed["phase"], "Failed");
  EXPECT_EQ(failed["outcome"], "Failed");
  EXPECT_EQ(failed["code"], "invalid_argument");
  EXPECT_EQ(failed["error"], json({{"code", "invalid_argument"}, {"message", failed["message"]}}));
  EXPECT_TRUE(failed["failedPhase"].is_string());
  // The fault it met (the target answered, and is no kmosix agent) and how
  // it ended (it never stopped here).
  EXPECT_EQ(failed["fault"]["kind"], "InvalidOrder");
  EXPECT_EQ(failed["fault"]["phase"], "Preparing");
  EXPECT_EQ(failed["resolution"]["outcome"], "Untouched");
  EXPECT_EQ(failed["resolution"]["decidedBy"], "Source");
  for (const char* key :
       {"id", "workload", "sourceNode", "targetNode", "target", "phase", "outcome", "startedMs",
        "finishedMs", "bytes", "files", "targetPid", "timings", "error", "failedPhase", "code",
        "message", "fault", "resolution"}) {
    EXPECT_TRUE(failed.contains(key)) << key;
    failed.erase(key);
  }
  EXPECT_EQ(failed, json::object());

  // Refusals: {"code","message"} exactly.
  auto refusal = [&](const std::string& method, const std::string& path, const std::string& body,
                     int status, const std::string& code, const std::string& message) {
    EXPECT_EQ(Call(method, path, body, status), json({{"code", code}, {"message", message}}))
        << method << " " << path << " " << body;
  };
  refusal("POST", "/v1/workloads/w2/migrate", "{", 400, "invalid_argument",
          "request body is not valid JSON");
  refusal("POST", "/v1/workloads/w2/migrate", "[]", 400, "invalid_argument",
          "request body must be a JSON object");
  refusal("POST", "/v1/workloads/w2/migrate", R"({"target":"http://x:1","extra":true})", 400,
          "invalid_argument", "unknown field \"extra\" in migration request");
  refusal("POST", "/v1/workloads/w2/migrate", R"({"target":7})", 400, "invalid_argument",
          "field \"target\" (string) is required");
  refusal("POST", "/v1/workloads/w2/migrate", R"({"target":"ftp://h:1"})", 400, "invalid_argument",
          "field \"target\" must be an http:// or https:// URL of an agent");
  refusal("POST", "/v1/workloads/w2/migrate", R"({"target":"http://10.0.0.1:1/v1/x"})", 400,
          "invalid_argument", "field \"target\" must be scheme://host[:port], without a path");
  refusal("POST", "/v1/workloads/w2/migrate", R"({"target":"http://127.0.0.1:1/"})", 400,
          "invalid_argument", "target is this agent");
  refusal("POST", "/v1/workloads/nope/migrate", R"({"target":"http://node0:7700"})", 404,
          "not_found", "no workload nope on node1");
  refusal("POST", "/v1/workloads", R"({"name":"w2","image":"kmosix.local/demo:latest"})", 409,
          "conflict", "a workload named w2 already exists on node1");
  refusal("POST", "/v1/workloads", R"({"name":"w3","image":"kmosix.local/demo:latest","x":1})", 400,
          "invalid_argument", "unknown field \"x\" in workload");
  refusal("POST", "/v1/workloads", R"({"name":"w3","image":"no/such:image"})", 400,
          "invalid_argument", "image no/such:image is not present on node node1 (import it first)");
  refusal("GET", "/v1/workloads/nope", "", 404, "not_found", "no workload nope on node1");
  refusal("DELETE", "/v1/workloads/nope", "", 404, "not_found", "no workload nope on node1");
  refusal("GET", "/v1/migrations/m-nope", "", 404, "not_found", "no migration m-nope on node1");
}

// The typed methods check their values themselves, without the codec.
TEST_F(ApiTest, TypedMethodsRefuseBadValues) {
  api::WorkloadSpec spec;
  spec.name = "W_1";
  spec.image = kImage;
  EXPECT_EQ(agent_->CreateWorkload(spec).status().code(), Code::kInvalid);
  spec.name = "w1";
  spec.cpus = -1;
  EXPECT_EQ(agent_->CreateWorkload(spec).status().code(), Code::kInvalid);
  ExpectNothingChanged(0);
  spec.cpus = 0;
  auto created = agent_->CreateWorkload(spec);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->spec, spec);
  EXPECT_EQ(created->state, "running");
  EXPECT_EQ(created->task, "running");
  for (const char* target :
       {"ftp://10.0.0.1:1", "http://10.0.0.1:1/v1/x", "", "http://127.0.0.1:1"}) {
    auto refused = agent_->Migrate("w1", {.target = target});
    EXPECT_EQ(refused.status().code(), Code::kInvalid) << target;
  }
  ExpectNothingChanged(1);
  EXPECT_EQ(agent_->GetMigration("m-0").status().code(), Code::kNotFound);
  EXPECT_TRUE(agent_->ListMigrations().items.empty());
}

TEST_F(ApiTest, BadWorkloadBodiesAreRejectedAndChangeNothing) {
  const std::vector<std::string> bad = {
      "not json",
      "[]",
      R"({"name":"w1"})",
      R"({"image":"kmosix.local/demo:latest"})",
      R"({"name":"W_1","image":"kmosix.local/demo:latest"})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","bogus":1})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","args":"sh"})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","args":[1]})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","env":{"A":1}})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","memoryMiB":-1})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","memoryMiB":1.5})",
      R"({"name":"w1","image":"kmosix.local/demo:latest","cpus":"2"})",
      R"({"name":"w1","image":"no/such:image"})",
  };
  for (const auto& body : bad) {
    json err = Call("POST", "/v1/workloads", body, 400);
    EXPECT_EQ(err["code"], "invalid_argument") << body;
  }
  ExpectNothingChanged(0);
  Call("GET", "/v1/workloads/w1", "", 404);
}

TEST_F(ApiTest, ImageThatDoesNotExistIsAClearError) {
  json err = Call("POST", "/v1/workloads", R"({"name":"w1","image":"no/such:image"})", 400);
  EXPECT_NE(err["message"].get<std::string>().find("no/such:image"), std::string::npos);
  ExpectNothingChanged(0);
}

TEST_F(ApiTest, DuplicateNameConflicts) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  json err =
      Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 409);
  EXPECT_EQ(err["code"], "conflict");
  ExpectNothingChanged(1);
}

TEST_F(ApiTest, UnknownWorkloadsAndRoutes) {
  Call("GET", "/v1/workloads/nope", "", 404);
  Call("DELETE", "/v1/workloads/nope", "", 404);
  Call("GET", "/v1/workloads/nope/logs", "", 404);
  Call("POST", "/v1/workloads/nope/migrate", R"({"target":"http://127.0.0.1:9"})", 404);
  Call("GET", "/v1/migrations/m-0", "", 404);
  Call("GET", "/v1/nothing-here", "", 404);
}

// Issue 13, hole 7: an error message carrying the request's bytes (a name
// that is not UTF-8, percent-encoded) is answered as what it is (404, JSON,
// the bytes replaced), not as a 500 from a JSON dump that threw.
TEST_F(ApiTest, ANameThatIsNotUtf8IsANotFoundNotAnInternalError) {
  json j = Call("GET", "/v1/workloads/%FF%FEw", "", 404);
  EXPECT_EQ(j["code"], "not_found") << j.dump();
  EXPECT_NE(j["message"].get<std::string>().find("\xEF\xBF\xBDw"), std::string::npos)
      << "U+FFFD stands for each bad byte: " << j.dump();
  Call("DELETE", "/v1/workloads/%FF", "", 404);
  Call("GET", "/v1/migrations/%C3%28", "", 404);
}

TEST_F(ApiTest, BadMigrationRequestsChangeNothing) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  const std::vector<std::string> bad = {
      "{",
      R"({})",
      R"({"target":7})",
      R"({"target":"http://x:1","extra":true})",
      R"({"target":"ftp://10.0.0.1:1"})",
      R"({"target":"http://10.0.0.1:1/v1/x"})",
      R"({"target":"http://127.0.0.1:1"})",  // this agent itself
  };
  for (const auto& body : bad) Call("POST", "/v1/workloads/w1/migrate", body, 400);
  ExpectNothingChanged(1);
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
}

TEST_F(ApiTest, TargetThatIsNotAnAgentIs4xxAndNothingChanges) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  json report = Call("POST", "/v1/workloads/w1/migrate", R"({"target":"http://10.9.9.9:80"})", 400);
  EXPECT_EQ(report["outcome"], "Failed");
  EXPECT_EQ(report["code"], "invalid_argument");
  ExpectNothingChanged(1);
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
  json got = Call("GET", "/v1/workloads/w1", "", 200);
  EXPECT_EQ(got["state"], "running");
}

TEST_F(ApiTest, OversizedBodyIs413) {
  std::string big = R"({"name":"w1","image":"kmosix.local/demo:latest","args":[")" +
                    std::string(2 << 20, 'a') + "\"]}";
  Call("POST", "/v1/workloads", big, 413);
  ExpectNothingChanged(0);
}

TEST_F(ApiTest, HealthAndMetrics) {
  json h = Call("GET", "/healthz", "", 200);
  EXPECT_EQ(h["status"], "ok");
  auto res = client_->Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_NE(res->body.find("kmosix_migrations_total"), std::string::npos);
  EXPECT_NE(res->body.find("kmosix_migration_downtime_seconds"), std::string::npos);
}

TEST_F(ApiTest, RecordsSurviveARestart) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  // A second agent over the same state dir and runtime sees the workload.
  AgentOptions opts = agent_->Options();
  Agent again(opts, runtime_, engine_, transport_, clock_, random_, nullptr);
  ASSERT_TRUE(again.Start().ok());
  auto got = again.GetWorkload("w1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, "running");
}

TEST_F(ApiTest, FinishedMigrationsAreForgottenAfterTheHistoryPeriod) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  json report = Call("POST", "/v1/workloads/w1/migrate", R"({"target":"http://10.9.9.9:80"})", 400);
  const std::string id = report["id"];
  Call("GET", "/v1/migrations/" + id, "", 200);
  const fs::path journal = root_ / "state" / "migrations" / "out" / (id + ".json");
  EXPECT_TRUE(fs::exists(journal));
  clock_.Advance(std::chrono::hours(23));
  agent_->Tick();
  Call("GET", "/v1/migrations/" + id, "", 200);  // still within the history period
  clock_.Advance(std::chrono::hours(2));
  agent_->Tick();
  Call("GET", "/v1/migrations/" + id, "", 404);
  EXPECT_FALSE(fs::exists(journal));
  json got = Call("GET", "/v1/workloads/w1", "", 200);
  EXPECT_EQ(got["state"], "running");
}

// A transport whose Hello waits until released, then finds no agent.
class GateTransport : public FakeTransport {
 public:
  GateTransport() : FakeTransport(nullptr) {}
  StatusOr<PeerInfo> Hello(const std::string&) override {
    std::unique_lock l(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(l, [&] { return open_; });
    return FailedError("not an agent");
  }
  void AwaitEntered() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return entered_; });
  }
  void Open() {
    std::lock_guard l(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool open_ = false;
};

TEST_F(ApiTest, MigrationsBeyondTheLimitAreRefused) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  Call("POST", "/v1/workloads", R"({"name":"w2","image":"kmosix.local/demo:latest"})", 201);
  GateTransport gate;
  AgentOptions opts = agent_->Options();
  opts.max_outgoing = 1;
  Agent limited(opts, runtime_, engine_, gate, clock_, random_, nullptr);
  ASSERT_TRUE(limited.Start().ok());
  const api::AgentMigrateRequest to{.target = "http://10.9.9.9:80"};
  std::thread first([&] { (void)limited.Migrate("w1", to); });
  gate.AwaitEntered();
  auto refused = limited.Migrate("w2", to);
  EXPECT_EQ(refused.status().code(), Code::kRetry) << refused.status().ToString();
  gate.Open();
  first.join();
  auto after = limited.Migrate("w2", to);  // the slot is free again
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->error.code(), Code::kInvalid);
  EXPECT_EQ(runtime_.State("w2"), TaskState::kRunning);
}

TEST_F(ApiTest, DamagedRecordsAreIgnoredOnStart) {
  Call("POST", "/v1/workloads", R"({"name":"w1","image":"kmosix.local/demo:latest"})", 201);
  const fs::path state = root_ / "state";
  std::ofstream(state / "workloads" / "bad1.json") << "{not json";
  std::ofstream(state / "workloads" / "bad2.json") << R"({"state":"running"})";
  std::ofstream(state / "workloads" / "bad3.json")
      << R"({"spec":{"name":"bad3","image":"x"},"logPath":"/x","createdMs":"soon"})";
  std::ofstream(state / "migrations" / "in" / "m-bad.json") << R"({"offer":7})";
  std::ofstream(state / "migrations" / "out" / "m-bad.json") << R"({"spec":{}})";
  Agent again(agent_->Options(), runtime_, engine_, transport_, clock_, random_, nullptr);
  ASSERT_TRUE(again.Start().ok());
  EXPECT_TRUE(again.GetWorkload("w1").ok());
  EXPECT_EQ(again.WorkloadCount(), 1u);
  again.Tick();  // nothing to finish from the damaged journal
  EXPECT_EQ(runtime_.State("w1"), TaskState::kRunning);
}

TEST_F(ApiTest, OrphanContainersAreRemovedOnStart) {
  ContainerSpec orphan;
  orphan.name = "ghost";
  orphan.image = kImage;
  ASSERT_TRUE(runtime_.CreateContainer(orphan).ok());
  Agent again(agent_->Options(), runtime_, engine_, transport_, clock_, random_, nullptr);
  ASSERT_TRUE(again.Start().ok());
  EXPECT_FALSE(runtime_.Has("ghost"));
}

}  // namespace
}  // namespace kmosix::agent
