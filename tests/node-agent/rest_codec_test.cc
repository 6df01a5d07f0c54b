// The agent's REST codec (node-agent/rest_codec.h) on typed values the HTTP
// test (api_test.cc, RepliesKeepTheirExactForm) does not reach: managed
// workloads, views without a task, a failed incoming migration, and the
// parsers' refusals.
#include "rest_codec.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace kmosix::agent {
namespace {

using nlohmann::json;

api::AgentWorkloadView View() {
  api::AgentWorkloadView v;
  v.spec.name = "w1";
  v.spec.image = "img";
  v.node = "node1";
  v.state = "running";
  v.created_ms = 5;
  v.started_ms = 7;
  v.migrations = {"m-1"};
  v.pid = 42;
  v.task = "running";
  return v;
}

TEST(AgentRestCodec, UnmanagedViewHasNoManagedOrEpoch) {
  api::AgentWorkloadView v = View();
  v.epoch = 9;  // not rendered for an unmanaged workload
  EXPECT_EQ(AgentWorkloadViewToJson(v), json::parse(R"({"name":"w1","image":"img","args":[],
      "env":{},"node":"node1","state":"running","createdMs":5,"startedMs":7,
      "migrations":["m-1"],"pid":42,"task":"running","restarts":0})"));
}

// A workload the agent restarted, and one waiting for its next start.
TEST(AgentRestCodec, ViewCarriesRestartsAndTheirReason) {
  api::AgentWorkloadView v = View();
  v.state = "restarting";
  v.task = "stopped";
  v.exit_status = 137;
  v.restarts = 2;
  v.last_restart_ms = 99;
  v.last_restart_reason = "exited with status 137";
  v.next_restart_ms = 120;
  json j = AgentWorkloadViewToJson(v);
  EXPECT_EQ(j["restarts"], 2);
  EXPECT_EQ(j["exitStatus"], 137);
  EXPECT_EQ(j["lastRestartMs"], 99);
  EXPECT_EQ(j["lastRestartReason"], "exited with status 137");
  EXPECT_EQ(j["nextRestartMs"], 120);
}

// A workload its agent froze because the node's lease was not renewed.
TEST(AgentRestCodec, AFencedViewCarriesWhyAndSince) {
  api::AgentWorkloadView v = View();
  v.managed = true;
  v.epoch = 3;
  v.state = "fenced";
  v.task = "paused";
  v.fence_reason = "lease of node1 not renewed for 4.0 s";
  v.fenced_ms = 777;
  json j = AgentWorkloadViewToJson(v);
  EXPECT_EQ(j["state"], "fenced");
  EXPECT_EQ(j["fenceReason"], "lease of node1 not renewed for 4.0 s");
  EXPECT_EQ(j["fencedMs"], 777);
  // Not fenced: neither field (see UnmanagedViewHasNoManagedOrEpoch).
  EXPECT_FALSE(AgentWorkloadViewToJson(View()).contains("fenceReason"));
  EXPECT_FALSE(AgentWorkloadViewToJson(View()).contains("fencedMs"));
}

TEST(AgentRestCodec, ManagedViewCarriesManagedAndEpoch) {
  api::AgentWorkloadView v = View();
  v.managed = true;
  v.epoch = 3;
  json j = AgentWorkloadViewToJson(v);
  EXPECT_EQ(j["managed"], true);
  EXPECT_EQ(j["epoch"], 3);
}

TEST(AgentRestCodec, ViewWithoutTaskLeavesItOut) {
  api::AgentWorkloadView v = View();
  v.state = "lost";
  v.pid = 0;
  v.task.reset();
  json j = AgentWorkloadViewToJson(v);
  EXPECT_FALSE(j.contains("task"));
  EXPECT_EQ(j["pid"], 0);
  EXPECT_EQ(AgentWorkloadListToJson({"node1", {v}}), json({{"node", "node1"}, {"items", {j}}}));
}

TEST(AgentRestCodec, AbortedIncomingMigration) {
  api::AgentMigrationView m;
  m.role = api::AgentMigrationView::Role::kTarget;
  m.incoming = {"m-2", "w1", "node0", "node1", "Aborted", 10, 2, "restore failed"};
  EXPECT_EQ(m.id(), "m-2");
  EXPECT_EQ(AgentMigrationViewToJson(m), json::parse(R"({"id":"m-2","role":"target",
      "workload":"w1","sourceNode":"node0","targetNode":"node1","phase":"Aborted",
      "bytes":10,"files":2,"error":"restore failed"})"));
}

TEST(AgentRestCodec, MigrateReplyOfARollBack) {
  api::MigrationReport r;
  r.id = "m-3";
  r.phase = api::MigrationPhase::kRolledBack;
  r.failed_phase = "Restoring";
  r.error = FailedError("restore failed");
  json j = MigrateReplyToJson(r);
  EXPECT_EQ(j["outcome"], "RolledBack");
  EXPECT_EQ(j["failedPhase"], "Restoring");
  EXPECT_EQ(j["code"], "failed");
  EXPECT_EQ(j["message"], "restore failed");
  EXPECT_EQ(j["error"], json({{"code", "failed"}, {"message", "restore failed"}}));
  EXPECT_EQ(MigrateReplyStatus(r), HttpStatus(Code::kFailed));
  r.phase = api::MigrationPhase::kSucceeded;
  r.error = Status::Ok();
  EXPECT_EQ(MigrateReplyStatus(r), 200);
  EXPECT_FALSE(MigrateReplyToJson(r).contains("code"));
}

TEST(AgentRestCodec, WorkloadBodyIsTheAgentFace) {
  auto spec = ParseWorkloadBody(R"({"name":"w1","image":"img","args":["a"],"memoryMiB":8})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->args, std::vector<std::string>{"a"});
  EXPECT_EQ(spec->memory_mib, 8);
  // The controller's fields are not the agent's.
  for (const char* body : {R"({"name":"w1","image":"img","migratable":false})",
                           R"({"name":"w1","image":"img","node":"n"})",
                           R"({"name":"w1","image":"img","pinned":true})"}) {
    auto bad = ParseWorkloadBody(body);
    EXPECT_EQ(bad.status().code(), Code::kInvalid) << body;
  }
}

TEST(AgentRestCodec, MigrateBody) {
  auto r = ParseMigrateBody(R"({"target":"http://n:1"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->target, "http://n:1");
  // Only JSON types here: the URL is the agent's to judge.
  EXPECT_TRUE(ParseMigrateBody(R"({"target":"ftp://x"})").ok());
  EXPECT_EQ(ParseMigrateBody(R"({})").status().message(), "field \"target\" (string) is required");
  EXPECT_EQ(ParseMigrateBody(R"({"target":"http://n:1","x":1})").status().message(),
            "unknown field \"x\" in migration request");
  EXPECT_EQ(ParseMigrateBody(R"({"target":"a","target":"b"})").status().code(), Code::kInvalid);
}

}  // namespace
}  // namespace kmosix::agent
