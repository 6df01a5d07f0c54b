// kmosixctl's tables against fixed controller JSON: the whole output text.
#include "kmosixctl/render.h"

#include <gtest/gtest.h>

#include "kmosixctl/fixtures.h"

namespace kmosix::ctl {
namespace {

using nlohmann::json;
using testing::EventsFixture;
using testing::kMiB;
using testing::kNowMs;
using testing::MigrationsFixture;
using testing::NodesFixture;
using testing::WorkloadsFixture;

const RenderOptions kOpts{.now_ms = kNowMs, .utc = true};

TEST(RenderTest, Units) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(14 * kMiB), "14 MiB");
  EXPECT_EQ(FormatBytes(9.99 * kMiB), "10 MiB");
  EXPECT_EQ(FormatBytes(3 * 1024 * kMiB), "3.0 GiB");
  EXPECT_EQ(FormatUsedTotal(768 * kMiB, 2048 * kMiB), "768/2048 MiB");
  EXPECT_EQ(FormatUsedTotal(1.5 * 1024 * kMiB, 64.0 * 1024 * kMiB), "1.5/64.0 GiB");
  EXPECT_EQ(FormatUsedTotal(5, 0), "5 B/-");
  EXPECT_EQ(FormatAge(0), "0s");
  EXPECT_EQ(FormatAge(-3), "0s");
  EXPECT_EQ(FormatAge(45.9), "45s");
  EXPECT_EQ(FormatAge(192), "3m12s");
  EXPECT_EQ(FormatAge(3725), "1h02m");
  EXPECT_EQ(FormatAge(90000), "1d01h");
  EXPECT_EQ(FormatDuration(0.412), "412ms");
  EXPECT_EQ(FormatDuration(2.3125), "2.31s");
  EXPECT_EQ(FormatDuration(65), "1m05s");
  EXPECT_EQ(FormatPercent(0.523), "52%");
  EXPECT_EQ(FormatCores(1), "1");
  EXPECT_EQ(FormatCores(0.5234), "0.52");
  EXPECT_EQ(FormatCores(1.999), "2");
  EXPECT_EQ(FormatClock(kNowMs + 42, true, true), "22:13:20.042");
  EXPECT_EQ(FormatClock(kNowMs, true), "22:13:20");
}

TEST(RenderTest, LoadBars) {
  EXPECT_EQ(LoadBar(0, 1, 12), "[..........]");
  EXPECT_EQ(LoadBar(0.5, 1, 12), "[#####.....]");
  EXPECT_EQ(LoadBar(1, 1, 12), "[##########]");
  EXPECT_EQ(LoadBar(3, 1, 12), "[##########]");     // clipped
  EXPECT_EQ(LoadBar(0.01, 1, 12), "[#.........]");  // running shows
  // On a 0..2 axis: '|' where 1.0 falls, '+' past it.
  EXPECT_EQ(LoadBar(0.5, 2, 12), "[###..|....]");
  EXPECT_EQ(LoadBar(1.5, 2, 12), "[#####+++..]");
  EXPECT_EQ(LoadBar(1, 1, 2), "");
}

TEST(RenderTest, Table) {
  Table t;
  t.header = {"NAME", "N"};
  t.right = {false, true};
  t.rows = {{"a", "1"}, {"long-name", "100"}, {"b"}};
  EXPECT_EQ(FormatTable(t),
            "NAME         N\n"
            "a            1\n"
            "long-name  100\n"
            "b\n");
}

TEST(RenderTest, Nodes) {
  EXPECT_EQ(RenderNodes(NodesFixture(), kOpts),
            "NAME   STATUS          LOAD     CPU        MEMORY  RUNQ  WORKLOADS     HEARTBEAT\n"
            "node1  Ready           1.24  1.24/1  768/2048 MiB   2.0          2            0s\n"
            "node2  Ready,Cordoned  0.10  0.20/2  512/4096 MiB   0.2          1            1s\n"
            "node3  NotReady           -       -             -     -          1  lost 12s ago\n");
  EXPECT_EQ(RenderNodes({{"items", json::array()}}, kOpts), "No nodes.\n");
}

TEST(RenderTest, OneNode) {
  EXPECT_EQ(RenderNode(NodesFixture()["items"][0], kOpts),
            "NAME   STATUS  LOAD     CPU        MEMORY  RUNQ  WORKLOADS  HEARTBEAT\n"
            "node1  Ready   1.24  1.24/1  768/2048 MiB   2.0          2         0s\n"
            "\n"
            "URL:        http://10.77.0.11:7700\n"
            "Speed:      1.00 (load source cgroup)\n"
            "Pressure:   cpu 12.5%, memory - (some, avg10)\n"
            "Workloads:  demo1 (cpu 0.98, 14 MiB), demo2 (cpu 0.26, 20 MiB)\n");
}

// A node whose agent runs but reports itself unfit for migrations (no
// usable CRIU): its load is still shown, and the reason in the describe.
TEST(RenderTest, UnfitNodeShowsItsLoadAndReason) {
  nlohmann::json n = NodesFixture()["items"][1];
  n["ready"] = false;
  n["cordoned"] = false;
  n["notReadyReason"] = "CRIU not usable: criu is version 3.17.1; kmosix needs CRIU >= 4.0";
  const std::string out = RenderNode(n, kOpts);
  EXPECT_NE(out.find("node2  NotReady,Unfit  0.10  0.20/2"), std::string::npos) << out;
  EXPECT_NE(out.find("Not ready:  CRIU not usable: criu is version 3.17.1"), std::string::npos)
      << out;
  EXPECT_NE(out.find("URL:        http://10.77.0.12:7700"), std::string::npos) << out;
}

TEST(RenderTest, Workloads) {
  EXPECT_EQ(
      RenderWorkloads(WorkloadsFixture(), kOpts),
      "NAME   PHASE      NODE         CPU     MEMORY    AGE  MOVES  FLAGS                          "
      "MESSAGE\n"
      "demo1  Running    node1       0.98     14 MiB  3m12s      0  pinned\n"
      "demo2  Migrating  node1  0.26/0.50  20/64 MiB  1h02m      1  migrating(m-0000000000000002)\n"
      "demo3  Running    node2       0.10    512 KiB    45s      0  no-migrate\n"
      "demo4  Lost       node3          -          -  1d01h      0  -                              "
      "node3 died with it\n"
      "demo5  Pending    -              -          -     2s      0  -                              "
      "waiting for placement\n");
  EXPECT_EQ(RenderWorkloads({{"items", json::array()}}, kOpts), "No workloads.\n");
}

TEST(RenderTest, OneWorkload) {
  EXPECT_EQ(RenderWorkload(WorkloadsFixture()["items"][1], kOpts),
            "Name:       demo2\n"
            "Image:      kmosix.local/demo:latest\n"
            "Args:       /bin/kmosix-demo --mem 16\n"
            "Phase:      Migrating on node1\n"
            "Usage:      cpu 0.26, memory 20 MiB\n"
            "Limits:     cpus 0.50, memory 64 MiB\n"
            "Flags:      -\n"
            "Migrating:  m-0000000000000002\n"
            "Moves:      1 (m-0000000000000001)\n"
            "Age:        1h02m\n");
}

// Issue 13, hole 3: a workload its agent restarted says so, and why.
TEST(RenderTest, ARestartedWorkloadShowsItsRestartsAndWhy) {
  json w = WorkloadsFixture()["items"][2];
  w["status"]["restarts"] = 3;
  w["status"]["message"] = "restarted on node2 (restart 3): exited with status 137";
  const std::string table = RenderWorkloads({{"items", {w}}}, kOpts);
  EXPECT_NE(table.find("no-migrate,restarted(3)"), std::string::npos) << table;
  EXPECT_NE(table.find("restarted on node2 (restart 3): exited with status 137"), std::string::npos)
      << table;
  const std::string one = RenderWorkload(w, kOpts);
  EXPECT_NE(one.find("Restarts:  3 (its task died or vanished; see Message)\n"), std::string::npos)
      << one;
  EXPECT_NE(one.find("Message:   restarted on node2 (restart 3): exited with status 137\n"),
            std::string::npos)
      << one;
}

// Issue 13, node loss: the policy and the last recovery.
TEST(RenderTest, ARecoveredWorkloadShowsItsPolicyAndRecovery) {
  json w = WorkloadsFixture()["items"][0];
  w["spec"]["restartPolicy"] = "FromCheckpoint";
  w["spec"]["checkpointIntervalSeconds"] = 60;
  w["status"]["recovery"] = json::parse(R"({"policy":"FromCheckpoint","lostNode":"node2",
      "lostMs":1000,"restartedMs":16000,"checkpoint":"c-4","checkpointTakenMs":400,
      "progressLostMs":600,"count":2})");
  const std::string table = RenderWorkloads({{"items", {w}}}, kOpts);
  EXPECT_NE(table.find("restart=FromCheckpoint,recovered(2)"), std::string::npos) << table;
  const std::string one = RenderWorkload(w, kOpts);
  EXPECT_NE(one.find("Restart policy:  FromCheckpoint, checkpoint every 1m00s\n"),
            std::string::npos)
      << one;
  EXPECT_NE(one.find("Recovery:        FromCheckpoint after node node2 was lost, restored from "
                     "checkpoint c-4 (progress lost 600ms), 15.00s after the loss; 2 so far\n"),
            std::string::npos)
      << one;

  json never = WorkloadsFixture()["items"][0];
  never["spec"]["restartPolicy"] = "Never";
  EXPECT_EQ(RenderWorkloads({{"items", {never}}}, kOpts).find("restart="), std::string::npos);
  EXPECT_NE(RenderWorkload(never, kOpts).find("Never (stays Lost if its node is lost)"),
            std::string::npos);
}

TEST(RenderTest, Migrations) {
  EXPECT_EQ(RenderMigrations(MigrationsFixture(), kOpts),
            "ID                  WORKLOAD  ROUTE         PHASE         FAULT          OUTCOME      "
            "      BY         AGE  TOTAL  DOWNTIME   MOVED  NOTE\n"
            "m-0000000000000001  demo2     node2->node1  Succeeded     -              "
            "Committed/source   policy  10m00s  2.31s     412ms  14 MiB  cpu: node2 load 1.50 > "
            "node1 0.20 + 1.3 x 0.98\n"
            "m-0000000000000002  demo2     node1->node2  Transferring  -              -          "
            "        api         4s      -         -       -  requested through the API: move to "
            "node2\n"
            "m-0000000000000003  demo3     node1->node2  RolledBack    RestoreFailed  "
            "RolledBack/target  drain    5m00s  800ms     300ms       -  restore failed on node2: "
            "criu exited 1\n");
  json cancelling = MigrationsFixture()["items"][1];
  cancelling["cancelRequestedMs"] = kNowMs - 500;
  EXPECT_NE(RenderMigrations({{"items", {cancelling}}}, kOpts).find("Transferring(cancelling)"),
            std::string::npos);
  EXPECT_EQ(RenderMigrations({{"items", json::array()}}, kOpts), "No migrations.\n");
}

TEST(RenderTest, OneMigration) {
  EXPECT_EQ(RenderMigration(MigrationsFixture()["items"][0], kOpts),
            "Migration:  m-0000000000000001\n"
            "Workload:   demo2\n"
            "Route:      node2 -> node1\n"
            "Phase:      Succeeded\n"
            "Requested:  policy, 10m00s ago\n"
            "Reason:     cpu: node2 load 1.50 > node1 0.20 + 1.3 x 0.98\n"
            "Timings:    total 2.31s, downtime 412ms (prepare 100ms, freeze 2ms, checkpoint "
            "150ms, transfer 200ms, restore 50ms, commit 10ms)\n"
            "Moved:      14 MiB in 12 files\n"
            "Outcome:    Committed, decided by the source\n");
  EXPECT_EQ(RenderMigration(MigrationsFixture()["items"][2], kOpts),
            "Migration:  m-0000000000000003\n"
            "Workload:   demo3\n"
            "Route:      node1 -> node2\n"
            "Phase:      RolledBack\n"
            "Requested:  drain, 5m00s ago\n"
            "Reason:     drain of node node1: node2 can take it\n"
            "Timings:    total 800ms, downtime 300ms\n"
            "Failed in:  Restoring\n"
            "Fault:      RestoreFailed in Restoring on node2: restore failed on node2: criu exited "
            "1\n"
            "Outcome:    RolledBack, decided by the target\n"
            "Error:      restore failed on node2: criu exited 1\n");
}

TEST(RenderTest, Drain) {
  json d = {
      {"node", "node1"},
      {"cordoned", true},
      {"ordered", {{{"workload", "demo1"}, {"migration", "m-a"}, {"target", "node2"}}}},
      {"inFlight", {{{"workload", "demo2"}, {"migration", "m-0000000000000002"}}}},
      {"notMoved", {{{"workload", "demo6"}, {"reason", "not migratable (migratable=false)"}}}}};
  EXPECT_EQ(RenderDrain(d),
            "Node node1 is cordoned: 1 migration(s) ordered, 1 already moving, 1 not moved.\n"
            "WORKLOAD  ACTION     MIGRATION           TARGET  REASON\n"
            "demo1     ordered    m-a                 node2\n"
            "demo2     moving     m-0000000000000002  -\n"
            "demo6     not moved  -                   -       not migratable (migratable=false)\n");
  EXPECT_EQ(RenderDrain({{"node", "node2"}, {"cordoned", true}, {"ordered", json::array()}}),
            "Node node2 is cordoned: 0 migration(s) ordered, 0 already moving, 0 not moved.\n");
}

TEST(RenderTest, Decisions) {
  json d = {{"moves",
             {{{"kind", "cpu"},
               {"workload", "demo1"},
               {"source", "node1"},
               {"target", "node2"},
               {"sourceLoad", 1.24},
               {"targetLoad", 0.1},
               {"workloadLoad", 0.98},
               {"reason", "node1 1.24 > node2 0.10 + 1.3 x 0.98"}}}},
            {"heldBack", {"demo2: migrating already"}},
            {"loads", {{"node1", 1.24}, {"node2", 0.05}}},
            {"inFlight", 1},
            {"stability", 1.3}};
  EXPECT_EQ(RenderDecisions(d),
            "Node loads: node1 1.24, node2 0.05\n"
            "Stability factor 1.30, 1 migration(s) in flight.\n"
            "\n"
            "Moves the balancer would order now:\n"
            "KIND  WORKLOAD  FROM   TO     FROM LOAD  TO LOAD  WORKLOAD LOAD  REASON\n"
            "cpu   demo1     node1  node2       1.24     0.10           0.98  node1 1.24 > node2 "
            "0.10 + 1.3 x 0.98\n"
            "\n"
            "Held back:\n"
            "  - demo2: migrating already\n");
  EXPECT_EQ(RenderDecisions({{"moves", json::array()},
                             {"heldBack", json::array()},
                             {"loads", json::object()},
                             {"inFlight", 0},
                             {"stability", 1.3}}),
            "Node loads: none\n"
            "Stability factor 1.30, 0 migration(s) in flight.\n"
            "\n"
            "No moves: the balancer would order nothing now.\n");
}

TEST(RenderTest, Leader) {
  EXPECT_EQ(RenderLeader({{"identity", "controller2"},
                          {"leader", "controller1"},
                          {"isLeader", false},
                          {"ready", true}}),
            "Leader:       controller1\n"
            "Answered by:  controller2 (a follower)\n"
            "Ready:        yes\n");
  EXPECT_EQ(RenderLeader(
                {{"identity", "c1"}, {"leader", nullptr}, {"isLeader", false}, {"ready", false}}),
            "Leader:       (none elected)\n"
            "Answered by:  c1 (a follower)\n"
            "Ready:        no (caches not synced)\n");
}

TEST(RenderTest, EventLines) {
  auto ev = EventsFixture();
  EXPECT_EQ(FormatEventLine(ev[0], kOpts),
            "22:13:15.000  node.cordoned       node2                      takes no arrivals");
  EXPECT_EQ(FormatEventLine(ev[1], kOpts),
            "22:13:17.000  migration.phase     demo2 node1->node2         Transferring "
            "[m-0000000000000002]");
  EXPECT_EQ(
      FormatEventLine(ev[2], kOpts),
      "22:13:18.500  workload.placed     demo5@node1                Scheduled: placed on node1");
  json done = ev[1];
  done["phase"] = "Succeeded";
  done["downtimeSeconds"] = 0.412;
  EXPECT_EQ(FormatEventLine(done, kOpts),
            "22:13:17.000  migration.phase     demo2 node1->node2         Succeeded downtime 412ms "
            "[m-0000000000000002]");
  // The final event names the fault it met and how it ended.
  json rolled = ev[1];
  rolled["phase"] = "RolledBack";
  rolled["message"] = "transfer: connection reset";
  rolled["fault"] = {{"kind", "TransferFailed"}, {"phase", "Transferring"}, {"node", "node2"}};
  rolled["resolution"] = {{"outcome", "RolledBack"}, {"decidedBy", "Source"}};
  EXPECT_EQ(FormatEventLine(rolled, kOpts),
            "22:13:17.000  migration.phase     demo2 node1->node2         RolledBack (fault "
            "TransferFailed; RolledBack/source): transfer: connection reset [m-0000000000000002]");
  // Unknown types and missing fields still make a line.
  EXPECT_EQ(FormatEventLine({{"type", "gap"}, {"message", "events were dropped"}}, kOpts),
            "------------  gap                 -                          events were dropped");
}

TEST(RenderTest, OddInputRendersDashesNotCrashes) {
  const json odd[] = {json(), json::array(), json("x"), json({{"items", "nope"}}),
                      json({{"items", {1, "a", nullptr, json::object()}}})};
  for (const auto& j : odd) {
    RenderNodes(j, kOpts);
    RenderWorkloads(j, kOpts);
    RenderMigrations(j, kOpts);
    RenderNode(j, kOpts);
    RenderWorkload(j, kOpts);
    RenderMigration(j, kOpts);
    RenderDrain(j);
    RenderDecisions(j);
    RenderLeader(j);
    FormatEventLine(j, kOpts);
  }
  EXPECT_EQ(RenderWorkloads({{"items", {json::object()}}}, kOpts),
            "NAME  PHASE  NODE  CPU  MEMORY  AGE  MOVES  FLAGS  MESSAGE\n"
            "-     -      -       -       -    -      0  -\n");
}

TEST(RenderTest, PrettyJsonIsTheServersJsonIndented) {
  json j = json::parse(R"({"items":[{"name":"n1","load":0.5}]})");
  EXPECT_EQ(
      PrettyJson(j),
      "{\n  \"items\": [\n    {\n      \"load\": 0.5,\n      \"name\": \"n1\"\n    }\n  ]\n}\n");
}

}  // namespace
}  // namespace kmosix::ctl
