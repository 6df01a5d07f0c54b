// kmosixctl's commands over a fake HTTP seam and a FakeClock: output text and
// exit codes, waiting for migrations, following logs and events.
#include "kmosixctl/commands.h"

#include <gtest/gtest.h>

#include <sstream>

#include "fakes/fake_clock.h"
#include "kmosixctl/fake_http.h"
#include "kmosixctl/fixtures.h"

namespace kmosix::ctl {
namespace {

using nlohmann::json;
using testing::ErrorAnswer;
using testing::FakeAnswer;
using testing::FakeHttp;
using testing::JsonAnswer;
using testing::WorkloadsFixture;

struct Harness {
  FakeHttp http;
  kmosix::testing::FakeClock clock;
  std::ostringstream out, err;
  ApiClient client{http, {"https://c1:7800"}};
  CommandContext ctx{.client = client,
                     .clock = clock,
                     .out = out,
                     .err = err,
                     .format = OutputFormat::kTable,
                     .utc = true};
};

json Migration(const std::string& phase) {
  json m = {{"id", "m-1"},
            {"workload", "demo1"},
            {"source", "node1"},
            {"target", "node2"},
            {"phase", phase},
            {"reason", "requested through the API: move to node2"},
            {"requestedBy", "api"},
            {"createdMs", 1'700'000'001'000},
            {"report", nullptr},
            {"error", ""},
            {"cancelRequestedMs", 0},
            {"cancelledBy", ""}};
  return m;
}

TEST(CommandsTest, MigrateWaitFollowsPhasesAndPrintsTheOutcome) {
  Harness h;
  h.http.On("POST", "/v1/migrations", JsonAnswer(201, Migration("Pending")));
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, Migration("Checkpointing")));
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, Migration("Checkpointing")));
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, Migration("Transferring")));
  json done = Migration("Succeeded");
  done["report"] = {{"bytes", 15204352}, {"timings", {{"total", 2.3125}, {"downtime", 0.412}}}};
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, done));
  WaitOptions w;
  w.wait = true;
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "node2", w), kExitOk);
  EXPECT_EQ(h.out.str(),
            "migration m-1 ordered: demo1 node1 -> node2\n"
            "  22:13:21.000  Pending\n"
            "  22:13:21.250  Checkpointing\n"
            "  22:13:21.750  Transferring\n"
            "  22:13:22.000  Succeeded\n"
            "Succeeded: demo1 moved node1 -> node2 in 2.31s, downtime 412ms, 14 MiB transferred\n");
  EXPECT_EQ(h.err.str(), "");
  auto calls = h.http.Calls();
  EXPECT_EQ(calls[0].request.body, R"({"target":"node2","workload":"demo1"})");
}

// Issue 13, "Also": a migration that ended without the workload on its
// source does not say it stays there; the line names the fault.
TEST(CommandsTest, MigrateWaitSaysWhereAFailedMigrationLeftTheWorkload) {
  Harness h;
  h.http.On("POST", "/v1/migrations", JsonAnswer(201, Migration("Pending")));
  json released = Migration("Failed");
  released["error"] = "owner is node3; the source copy was released, not thawed";
  released["fault"] = {{"kind", "Superseded"}, {"phase", "Committing"}};
  released["resolution"] = {{"outcome", "Released"}, {"decidedBy", "Records"}};
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, released));
  WaitOptions w;
  w.wait = true;
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "", w), kExitMigrationFailed);
  EXPECT_NE(h.out.str().find("Failed: demo1 was released on node1: another node owns it: owner is "
                             "node3; the source copy was released, not thawed [Superseded]\n"),
            std::string::npos)
      << h.out.str();
  EXPECT_EQ(h.out.str().find("stays on"), std::string::npos) << h.out.str();
}

TEST(CommandsTest, MigrateWaitExits8WhenItRolledBack) {
  Harness h;
  h.http.On("POST", "/v1/migrations", JsonAnswer(201, Migration("Pending")));
  json rolled = Migration("RolledBack");
  rolled["error"] = "cancelled through the API";
  rolled["report"] = {{"failedPhase", "Transferring"}, {"timings", {{"total", 1.0}}}};
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, rolled));
  WaitOptions w;
  w.wait = true;
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "", w), kExitMigrationFailed);
  EXPECT_NE(h.out.str().find("RolledBack: demo1 stays on node1: cancelled through the API (failed "
                             "in Transferring)\n"),
            std::string::npos)
      << h.out.str();
  EXPECT_EQ(h.http.Calls()[0].request.body, R"({"workload":"demo1"})");
}

TEST(CommandsTest, MigrateWaitPollsThroughOutagesAndTimesOut) {
  Harness h;
  h.http.On("POST", "/v1/migrations", JsonAnswer(201, Migration("Pending")));
  h.http.On("GET", "/v1/migrations/m-1", ErrorAnswer(503, "unavailable", "leader changing"));
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, Migration("Transferring")));
  WaitOptions w;
  w.wait = true;
  w.timeout = std::chrono::seconds(5);
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "node2", w), kExitError);
  EXPECT_NE(h.err.str().find("still waiting (leader changing)"), std::string::npos) << h.err.str();
  EXPECT_NE(h.err.str().find("timed out after 5s waiting: m-1 is Transferring;"), std::string::npos)
      << h.err.str();
  EXPECT_NE(h.out.str().find("  22:13:21.500  Transferring\n"), std::string::npos) << h.out.str();
}

TEST(CommandsTest, MigrateJsonWaitPrintsOnlyTheFinalRecord) {
  Harness h;
  h.ctx.format = OutputFormat::kJson;
  h.http.On("POST", "/v1/migrations", JsonAnswer(201, Migration("Pending")));
  h.http.On("GET", "/v1/migrations/m-1", JsonAnswer(200, Migration("Succeeded")));
  WaitOptions w;
  w.wait = true;
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "node2", w), kExitOk);
  json parsed = json::parse(h.out.str(), nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << h.out.str();
  EXPECT_EQ(parsed["phase"], "Succeeded");
}

TEST(CommandsTest, MigrateOfAPinnedWorkloadIsAConflict) {
  Harness h;
  h.http.On("POST", "/v1/migrations", ErrorAnswer(409, "conflict", "workload \"demo1\" is pinned"));
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "node2", {}), kExitConflict);
  EXPECT_EQ(h.out.str(), "");
  EXPECT_EQ(h.err.str(), "kmosixctl: conflict (HTTP 409): workload \"demo1\" is pinned\n");
}

TEST(CommandsTest, MigrateWithoutWaitPrintsTheOrder) {
  Harness h;
  h.http.On("POST", "/v1/migrations", JsonAnswer(201, Migration("Pending")));
  EXPECT_EQ(CmdMigrate(h.ctx, "demo1", "node2", {}), kExitOk);
  EXPECT_EQ(h.out.str(),
            "migration m-1 ordered: demo1 node1 -> node2\n"
            "Migration:  m-1\n"
            "Workload:   demo1\n"
            "Route:      node1 -> node2\n"
            "Phase:      Pending\n"
            "Requested:  api, 0s ago\n"
            "Reason:     requested through the API: move to node2\n");
}

TEST(CommandsTest, NewLogBytes) {
  EXPECT_EQ(NewLogBytes("", "a\n"), "a\n");
  EXPECT_EQ(NewLogBytes("a\n", "a\nb\n"), "b\n");
  EXPECT_EQ(NewLogBytes("a\nb\n", "a\nb\n"), "");
  // Cut at the front: what follows the overlap with the old end.
  const std::string old = "line 1 of the log\nline 2 of the log\nline 3 of the log\n";
  EXPECT_EQ(NewLogBytes(old, "line 2 of the log\nline 3 of the log\nline 4\n"), "line 4\n");
  // Restarted (nothing in common): all of it.
  EXPECT_EQ(NewLogBytes("old\n", "new\n"), "new\n");
}

TEST(CommandsTest, LogsFollowPrintsOnlyNewBytesAndPollsThroughOutages) {
  Harness h;
  auto text = [](const std::string& body) {
    return FakeAnswer{.status = 200, .body = body, .content_type = "text/plain"};
  };
  h.http.On("GET", "/v1/workloads/demo1/logs", text("tick=1\n"));
  h.http.On("GET", "/v1/workloads/demo1/logs", text("tick=1\ntick=2\n"));
  h.http.On("GET", "/v1/workloads/demo1/logs",
            ErrorAnswer(503, "unavailable", "agent at http://10.77.0.11:7700 unreachable"));
  h.http.On("GET", "/v1/workloads/demo1/logs", text("tick=1\ntick=2\ntick=3\n"));
  LogsOptions o;
  o.follow = true;
  o.max_polls = 4;
  EXPECT_EQ(CmdLogs(h.ctx, "demo1", o), kExitOk);
  EXPECT_EQ(h.out.str(), "tick=1\ntick=2\ntick=3\n");
  EXPECT_EQ(h.err.str(),
            "kmosixctl: logs unavailable for now (agent at http://10.77.0.11:7700 unreachable)\n");
}

TEST(CommandsTest, LogsOfAnUnknownWorkloadIsExit3) {
  Harness h;
  h.http.On("GET", "/v1/workloads/nope/logs",
            ErrorAnswer(404, "not_found", "no workload named \"nope\""));
  EXPECT_EQ(CmdLogs(h.ctx, "nope", {}), kExitNotFound);
  EXPECT_EQ(h.err.str(), "kmosixctl: not_found (HTTP 404): no workload named \"nope\"\n");
}

TEST(CommandsTest, RmGoesOnAfterAnErrorAndReturnsItsCode) {
  Harness h;
  h.http.On("DELETE", "/v1/workloads/a", ErrorAnswer(404, "not_found", "no workload named \"a\""));
  h.http.On("DELETE", "/v1/workloads/b", JsonAnswer(200, {{"deleted", "b"}}));
  EXPECT_EQ(CmdRm(h.ctx, {"a", "b"}), kExitNotFound);
  EXPECT_EQ(h.out.str(), "workload b deleted\n");
  EXPECT_EQ(h.err.str(), "kmosixctl: not_found (HTTP 404): no workload named \"a\"\n");
}

TEST(CommandsTest, ReadOnlyTokenOnRmIsExit5) {
  Harness h;
  h.http.On("DELETE", "/v1/workloads/a", ErrorAnswer(403, "Forbidden", "read-only token"));
  EXPECT_EQ(CmdRm(h.ctx, {"a"}), kExitAuth);
  EXPECT_NE(h.err.str().find("Forbidden (HTTP 403): read-only token"), std::string::npos);
}

TEST(CommandsTest, PsFiltersByNode) {
  Harness h;
  h.http.On("GET", "/v1/workloads", JsonAnswer(200, WorkloadsFixture()));
  EXPECT_EQ(CmdPs(h.ctx, "node2"), kExitOk);
  EXPECT_EQ(h.out.str(),
            "NAME   PHASE    NODE    CPU   MEMORY  AGE  MOVES  FLAGS       MESSAGE\n"
            "demo3  Running  node2  0.10  512 KiB  45s      0  no-migrate\n");
  Harness j;
  j.ctx.format = OutputFormat::kJson;
  j.http.On("GET", "/v1/workloads", JsonAnswer(200, WorkloadsFixture()));
  EXPECT_EQ(CmdPs(j.ctx, "node1"), kExitOk);
  json parsed = json::parse(j.out.str(), nullptr, false);
  ASSERT_TRUE(parsed.is_object());
  ASSERT_EQ(parsed["items"].size(), 2u);
  EXPECT_EQ(parsed["items"][0]["name"], "demo1");
}

TEST(CommandsTest, RunSendsTheSpec) {
  Harness h;
  json created = testing::Workload("demo1", "Pending", "", 0);
  created["status"]["message"] = "waiting for placement";
  h.http.On("POST", "/v1/workloads", JsonAnswer(201, created));
  RunRequest r;
  r.name = "demo1";
  r.image = "kmosix.local/demo:latest";
  r.args = {"/bin/kmosix-demo", "--mem", "16"};
  r.env = {"A=1", "B=x=y"};
  r.memory_mib = 64;
  r.cpus = 0.5;
  r.node = "node1";
  r.pinned = true;
  r.no_migrate = true;
  EXPECT_EQ(CmdRun(h.ctx, r), kExitOk);
  EXPECT_EQ(h.out.str(), "workload demo1 created (Pending: waiting for placement)\n");
  json body = json::parse(h.http.Calls()[0].request.body);
  EXPECT_EQ(body, json::parse(R"({"name":"demo1","image":"kmosix.local/demo:latest",
      "args":["/bin/kmosix-demo","--mem","16"],"env":{"A":"1","B":"x=y"},"memoryMiB":64,
      "cpus":0.5,"node":"node1","pinned":true,"migratable":false})"));
}

TEST(CommandsTest, RunWithABadEnvIsAUsageErrorAndSendsNothing) {
  Harness h;
  RunRequest r;
  r.name = "demo1";
  r.image = "img";
  r.env = {"NOEQUALS"};
  EXPECT_EQ(CmdRun(h.ctx, r), kExitUsage);
  EXPECT_TRUE(h.http.Calls().empty());
  EXPECT_EQ(h.err.str(), "kmosixctl: --env \"NOEQUALS\": expected KEY=VALUE\n");
}

TEST(CommandsTest, RunSendsTheRestartPolicyAndRefusesAnUnknownOne) {
  Harness h;
  h.http.On("POST", "/v1/workloads", JsonAnswer(201, testing::Workload("demo1", "Pending", "", 0)));
  RunRequest r;
  r.name = "demo1";
  r.image = "img";
  r.restart_policy = "FromCheckpoint";
  r.checkpoint_interval_seconds = 60;
  EXPECT_EQ(CmdRun(h.ctx, r), kExitOk);
  json body = json::parse(h.http.Calls()[0].request.body);
  EXPECT_EQ(body, json::parse(R"({"name":"demo1","image":"img","restartPolicy":"FromCheckpoint",
      "checkpointIntervalSeconds":60})"));

  Harness bad;
  r.restart_policy = "Always";
  EXPECT_EQ(CmdRun(bad.ctx, r), kExitUsage);
  EXPECT_TRUE(bad.http.Calls().empty());
  EXPECT_EQ(bad.err.str(),
            "kmosixctl: --restart-policy \"Always\": expected Never, FromImage or "
            "FromCheckpoint\n");
}

TEST(CommandsTest, NodeAndWorkloadActions) {
  Harness h;
  json node = testing::NodesFixture()["items"][1];
  h.http.On("POST", "/v1/nodes/node2/cordon", JsonAnswer(200, node));
  h.http.On("POST", "/v1/nodes/node2/uncordon", JsonAnswer(200, node));
  json w = WorkloadsFixture()["items"][0];
  h.http.On("POST", "/v1/workloads/demo1/pin", JsonAnswer(200, w));
  h.http.On("POST", "/v1/workloads/demo1/unpin", JsonAnswer(200, w));
  json cancelled = Migration("Transferring");
  cancelled["cancelRequestedMs"] = 1;
  h.http.On("DELETE", "/v1/migrations/m-1", JsonAnswer(202, cancelled));
  EXPECT_EQ(CmdCordon(h.ctx, "node2", true), kExitOk);
  EXPECT_EQ(CmdCordon(h.ctx, "node2", false), kExitOk);
  EXPECT_EQ(CmdPin(h.ctx, "demo1", true), kExitOk);
  EXPECT_EQ(CmdPin(h.ctx, "demo1", false), kExitOk);
  EXPECT_EQ(CmdCancel(h.ctx, "m-1"), kExitOk);
  EXPECT_EQ(h.out.str(),
            "node node2 cordoned: it takes no new workloads or migrations\n"
            "node node2 uncordoned: it takes workloads again\n"
            "workload demo1 pinned: it stays on node1\n"
            "workload demo1 unpinned: the balancer may move it again\n"
            "cancel requested for migration m-1 (demo1, Transferring): the source rolls it back; "
            "demo1 stays on node1\n");
  // Cancelling too late is a conflict.
  h.http.On("DELETE", "/v1/migrations/m-2",
            ErrorAnswer(409, "conflict", "too late to cancel migration m-2: it is Committing"));
  EXPECT_EQ(CmdCancel(h.ctx, "m-2"), kExitConflict);
}

TEST(CommandsTest, DrainWaitReportsEachMigrationAndExits8OnAFailure) {
  Harness h;
  json d = {{"node", "node1"},
            {"cordoned", true},
            {"ordered", {{{"workload", "demo1"}, {"migration", "m-a"}, {"target", "node2"}}}},
            {"inFlight", {{{"workload", "demo2"}, {"migration", "m-b"}}}},
            {"notMoved", json::array()}};
  h.http.On("POST", "/v1/nodes/node1/drain", JsonAnswer(200, d));
  json a = Migration("Succeeded");
  a["id"] = "m-a";
  json b = Migration("Failed");
  b["id"] = "m-b";
  b["workload"] = "demo2";
  b["error"] = "target node2 refused: out of memory";
  h.http.On("GET", "/v1/migrations/m-a", JsonAnswer(200, a));
  h.http.On("GET", "/v1/migrations/m-b", JsonAnswer(200, b));
  WaitOptions w;
  w.wait = true;
  EXPECT_EQ(CmdDrain(h.ctx, "node1", true, w), kExitMigrationFailed);
  EXPECT_EQ(
      h.out.str(),
      "Node node1 is cordoned: 1 migration(s) ordered, 1 already moving, 0 not moved.\n"
      "WORKLOAD  ACTION   MIGRATION  TARGET  REASON\n"
      "demo1     ordered  m-a        node2\n"
      "demo2     moving   m-b        -\n"
      "  22:13:21.250  m-a  Succeeded: demo1 moved node1 -> node2\n"
      "  22:13:21.250  m-b  Failed: demo2 stays on node1: target node2 refused: out of memory\n"
      "drain of node1: 1 moved, 1 did not move\n");
  EXPECT_EQ(h.http.Calls()[0].request.body, R"({"includePinned":true})");
}

TEST(CommandsTest, DrainWithoutWaitSendsAnEmptyObject) {
  Harness h;
  h.http.On("POST", "/v1/nodes/node1/drain",
            JsonAnswer(200, {{"node", "node1"}, {"cordoned", true}}));
  EXPECT_EQ(CmdDrain(h.ctx, "node1", false, {}), kExitOk);
  EXPECT_EQ(h.http.Calls()[0].request.body, "{}");
}

const char* kEventsPath = "/v1/events?types=migration";

TEST(CommandsTest, EventsPrintOneLinePerEventAndResumeAfterTheLastId) {
  Harness h;
  h.http.On(
      "GET", kEventsPath,
      {.status = 200,
       .body = "",
       .content_type = "text/event-stream",
       .chunks = {"id: 1\nevent: migration.created\ndata: {\"id\":1,\"type\":\"migration.cre",
                  "ated\",\"timeMs\":1700000000000,\"workload\":\"demo1\",\"source\":\"node1\","
                  "\"target\":\"node2\",\"phase\":\"Pending\",\"message\":\"requested\"}\n\n"
                  ": keepalive\n\nid: 2\nevent: migration.phase\ndata: {\"id\":2,\"type\":"
                  "\"migration.phase\",\"timeMs\":1700000000500,\"workload\":\"demo1\","
                  "\"source\":\"node1\",\"target\":\"node2\",\"phase\":\"Checkpointing\","
                  "\"message\":\"\",\"migration\":\"m-1\"}\n\n"}});
  h.http.On("GET", "/v1/events?types=migration&since=2",
            {.status = 200,
             .body = "",
             .content_type = "text/event-stream",
             .chunks = {"id: 3\ndata: not json\n\n"}});
  EventsOptions o;
  o.types = "migration";
  o.max_reconnects = 1;
  EXPECT_EQ(CmdEvents(h.ctx, o), kExitOk);
  EXPECT_EQ(h.out.str(),
            "22:13:20.000  migration.created   demo1 node1->node2         Pending: requested\n"
            "22:13:20.500  migration.phase     demo1 node1->node2         Checkpointing [m-1]\n"
            "message: not json\n");
  EXPECT_EQ(h.err.str(),
            "kmosixctl: event stream ended by the server; reconnecting after event 2\n");
  auto calls = h.http.Calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_TRUE(calls[0].request.headers.empty());
  EXPECT_EQ(calls[1].request.headers,
            (std::vector<std::pair<std::string, std::string>>{{"Last-Event-ID", "2"}}));
}

TEST(CommandsTest, EventsJsonPrintsEachEventsDataAndStopsAtTheLimit) {
  Harness h;
  h.ctx.format = OutputFormat::kJson;
  h.http.On("GET", "/v1/events?since=0",
            {.status = 200,
             .body = "",
             .content_type = "text/event-stream",
             .chunks = {"id: 1\ndata: {\"id\":1,\"type\":\"node.ready\"}\n\nid: 2\ndata: "
                        "{\"id\":2,\"type\":\"node.cordoned\"}\n\nid: 3\ndata: {\"id\":3}\n\n"}});
  EventsOptions o;
  o.since = 0;
  o.limit = 2;
  EXPECT_EQ(CmdEvents(h.ctx, o), kExitOk);
  EXPECT_EQ(h.out.str(),
            "{\"id\":1,\"type\":\"node.ready\"}\n{\"id\":2,\"type\":\"node.cordoned\"}\n");
}

TEST(CommandsTest, EventsStopWhenStdoutIsGone) {
  Harness h;
  h.http.On("GET", "/v1/events",
            {.status = 200,
             .body = "",
             .content_type = "text/event-stream",
             .chunks = {"data: {\"id\":1}\n\n", "data: {\"id\":2}\n\n"}});
  h.out.setstate(std::ios::badbit);  // as after EPIPE on a closed pipe
  EventsOptions o;
  o.max_reconnects = 5;
  EXPECT_EQ(CmdEvents(h.ctx, o), kExitOk);
  EXPECT_EQ(h.http.Calls().size(), 1u);
}

TEST(CommandsTest, EventsThatNeverConnectFailWithTheExitCode) {
  Harness h;
  h.http.Fail("https://c1:7800", TransportFailure::kConnect, "could not connect");
  EXPECT_EQ(CmdEvents(h.ctx, {}), kExitUnreachable);
  Harness g;
  g.http.On("GET", "/v1/events", ErrorAnswer(401, "Unauthenticated", "missing bearer token"));
  EXPECT_EQ(CmdEvents(g.ctx, {}), kExitAuth);
}

TEST(CommandsTest, ReadsRenderTablesOrJson) {
  Harness h;
  h.http.On("GET", "/v1/leader",
            JsonAnswer(200, {{"identity", "controller1"},
                             {"leader", "controller1"},
                             {"isLeader", true},
                             {"ready", true}}));
  EXPECT_EQ(CmdLeader(h.ctx), kExitOk);
  EXPECT_EQ(h.out.str(),
            "Leader:       controller1\n"
            "Answered by:  controller1 (the leader)\n"
            "Ready:        yes\n");
  Harness j;
  j.ctx.format = OutputFormat::kJson;
  j.http.On("GET", "/v1/nodes", JsonAnswer(200, testing::NodesFixture()));
  EXPECT_EQ(CmdNodes(j.ctx, ""), kExitOk);
  EXPECT_EQ(json::parse(j.out.str()), testing::NodesFixture());
}

}  // namespace
}  // namespace kmosix::ctl
