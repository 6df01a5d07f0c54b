// The faces of the typed model: the REST codec (controller/rest_codec.h), the
// etcd record codec (cluster/records.h) and the agent's spec codec
// (kmosix/spec_json.h). Every kind both ways, round trips, and what each face
// refuses.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "api/types.h"
#include "cluster/records.h"
#include "controller/rest_codec.h"
#include "kmosix/migration.h"
#include "kmosix/spec_json.h"

namespace kmosix {
namespace {

using nlohmann::json;

api::WorkloadSpec Spec() {
  api::WorkloadSpec s;
  s.name = "web";
  s.image = "demo:1";
  s.args = {"sh", "-c", "sleep 100"};
  s.env = {{"A", "1"}};
  s.memory_mib = 64;
  s.cpus = 0.5;
  s.migratable = false;
  s.node = "n1";
  s.pinned = true;
  return s;
}

api::MigrationReport Report() {
  api::MigrationReport r;
  r.id = "m-1";
  r.workload = "web";
  r.source_node = "n1";
  r.target_node = "n2";
  r.target_url = "http://n2:7700";
  r.phase = api::MigrationPhase::kRolledBack;
  r.failed_phase = "Restoring";
  r.error = FailedError("restore failed");
  r.started_ms = 10;
  r.finished_ms = 20;
  r.timings.downtime = 0.125;
  r.bytes = 4096;
  r.files = 3;
  r.target_pid = 77;
  return r;
}

api::Migration Migration() {
  api::Migration m;
  m.id = "m-1";
  m.workload = "web";
  m.source = "n1";
  m.target = "n2";
  m.phase = api::MigrationPhase::kRolledBack;
  m.reason = "requested through Kubernetes: move to n2";
  m.requested_by = "user";
  m.epoch = 4;
  m.created_ms = 1;
  m.updated_ms = 2;
  m.finished_ms = 3;
  m.report = Report();
  m.error = "failed: restore failed";
  m.cancel_requested_ms = 5;
  m.cancelled_by = "user";
  return m;
}

void ExpectInvalid(const Status& s, const std::string& needle) {
  EXPECT_EQ(s.code(), Code::kInvalid) << s.ToString();
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
}

// ---- the spec in its three faces ----

TEST(SpecFacesTest, EachFaceRoundTripsItsFields) {
  api::WorkloadSpec s = Spec();
  s.origin = api::WorkloadOrigin{"MigratableWorkload", "ns", "web", "u-1"};
  auto record = WorkloadSpecFromJson(WorkloadSpecToJson(s, SpecFace::kRecord), SpecFace::kRecord);
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  EXPECT_EQ(*record, s);

  api::WorkloadSpec rest_expected = s;
  rest_expected.origin.reset();
  json rest_json = WorkloadSpecToJson(s, SpecFace::kRest);
  EXPECT_FALSE(rest_json.contains("origin"));
  auto rest = ParseWorkloadSpec(rest_json.dump(), SpecFace::kRest);
  ASSERT_TRUE(rest.ok()) << rest.status().ToString();
  EXPECT_EQ(*rest, rest_expected);

  json agent_json = WorkloadSpecToJson(s, SpecFace::kAgent);
  EXPECT_EQ(agent_json, json({{"name", "web"},
                              {"image", "demo:1"},
                              {"args", {"sh", "-c", "sleep 100"}},
                              {"env", {{"A", "1"}}},
                              {"memoryMiB", 64},
                              {"cpus", 0.5}}));
  auto agent = WorkloadSpecFromJson(agent_json, SpecFace::kAgent);
  ASSERT_TRUE(agent.ok());
  EXPECT_EQ(agent->name, s.name);
  EXPECT_EQ(agent->args, s.args);
  EXPECT_TRUE(agent->migratable) << "the agent's face has no migratable";
  // Zero limits are left out of the agent's form, written in the others.
  api::WorkloadSpec bare;
  bare.name = "w";
  bare.image = "i";
  EXPECT_FALSE(WorkloadSpecToJson(bare, SpecFace::kAgent).contains("memoryMiB"));
  EXPECT_EQ(WorkloadSpecToJson(bare, SpecFace::kRest)["memoryMiB"], 0);
}

TEST(SpecFacesTest, EachFaceRefusesTheFieldsItDoesNotCarry) {
  const std::string with_origin =
      R"({"name":"w","image":"i","origin":{"kind":"K","name":"n","uid":"u"}})";
  ExpectInvalid(ParseWorkloadSpec(with_origin, SpecFace::kRest).status(), "origin");
  ExpectInvalid(ParseWorkloadSpec(with_origin, SpecFace::kAgent).status(), "origin");
  EXPECT_TRUE(ParseWorkloadSpec(with_origin, SpecFace::kRecord).ok());
  ExpectInvalid(
      ParseWorkloadSpec(R"({"name":"w","image":"i","pinned":true})", SpecFace::kAgent).status(),
      "pinned");
  ExpectInvalid(ParseContainerSpec(R"({"name":"w","image":"i","migratable":false})").status(),
                "migratable");
  // Values go through the one validator in every face.
  for (SpecFace face : {SpecFace::kAgent, SpecFace::kRest, SpecFace::kRecord}) {
    ExpectInvalid(
        ParseWorkloadSpec(R"({"name":"w","image":"i","memoryMiB":1073741825})", face).status(),
        "memoryMiB");
    ExpectInvalid(ParseWorkloadSpec(R"({"name":"W","image":"i"})", face).status(), "name");
    ExpectInvalid(ParseWorkloadSpec(R"({"name":"w","image":"i","env":{"A=B":"x"}})", face).status(),
                  "env name");
  }
  ExpectInvalid(ParseWorkloadSpec(R"({"name":"w","image":"i","origin":{"kind":"K","name":"n"}})",
                                  SpecFace::kRecord)
                    .status(),
                "uid");
  ExpectInvalid(
      ParseWorkloadSpec(R"({"name":"w","image":"i","origin":[]})", SpecFace::kRecord).status(),
      "origin");
}

TEST(SpecFacesTest, ContainerSpecIsBuiltFromTheWorkloadSpec) {
  ContainerSpec c = ContainerSpecFor(Spec());
  EXPECT_EQ(c.name, "web");
  EXPECT_EQ(c.image, "demo:1");
  EXPECT_EQ(c.args, Spec().args);
  EXPECT_EQ(c.env, Spec().env);
  EXPECT_EQ(c.memory_mib, 64);
  EXPECT_EQ(c.cpus, 0.5);
  EXPECT_TRUE(c.log_path.empty());
  auto back = ContainerSpecFromJson(ContainerSpecToJson(c));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->name, c.name);
  EXPECT_EQ(back->memory_mib, c.memory_mib);
}

// ---- the etcd record codec ----

TEST(RecordCodecTest, MigrationWithReportBothWays) {
  api::Migration m = Migration();
  json j = cluster::MigrationToJson(m);
  EXPECT_EQ(j["phase"], "RolledBack");
  EXPECT_EQ(j["requestedBy"], "user");
  EXPECT_EQ(j["report"]["failedPhase"], "Restoring");
  EXPECT_EQ(j["report"]["timings"]["downtime"], 0.125);
  auto back = cluster::ParseRecord<api::Migration>(j.dump(), &cluster::MigrationFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(cluster::MigrationToJson(*back), j);
  ASSERT_TRUE(back->report.has_value());
  EXPECT_EQ(back->report->error.code(), Code::kFailed);
  EXPECT_EQ(back->report->bytes, 4096u);
  EXPECT_EQ(back->phase, api::MigrationPhase::kRolledBack);
}

TEST(RecordCodecTest, WorkloadBothWays) {
  api::Workload w{Spec(), {}};
  w.spec.origin = api::WorkloadOrigin{"MigratableWorkload", "ns", "web", "u-1"};
  w.status.phase = api::WorkloadPhase::kRunning;
  w.status.node = "n1";
  w.status.epoch = 2;
  auto back = cluster::ParseRecord<api::Workload>(cluster::WorkloadToJson(w).dump(),
                                                  &cluster::WorkloadFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, w);
}

// ---- the REST codec ----

TEST(RestCodecTest, RequestBodies) {
  auto spec = controller::ParseWorkloadSpecBody(WorkloadSpecToJson(Spec(), SpecFace::kRest).dump());
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(*spec, Spec());
  ExpectInvalid(
      controller::ParseWorkloadSpecBody(R"({"name":"w","image":"i","origin":{}})").status(),
      "origin");

  auto m = controller::ParseMigrationRequest(R"({"workload":"web","target":"n2"})");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->workload, "web");
  EXPECT_EQ(m->target, "n2");
  EXPECT_EQ(m->requested_by, "api");
  EXPECT_EQ(m->id, "");
  EXPECT_EQ(m->reason, "");
  ExpectInvalid(controller::ParseMigrationRequest(R"({"workload":"web","id":"m-1"})").status(),
                "id");
  ExpectInvalid(
      controller::ParseMigrationRequest(R"({"workload":"web","requestedBy":"user"})").status(),
      "requestedBy");
  ExpectInvalid(controller::ParseMigrationRequest(R"({"target":"n2"})").status(), "workload");
  // A present target must name a node (brain_e2e's "empty target" case).
  ExpectInvalid(controller::ParseMigrationRequest(R"({"workload":"web","target":""})").status(),
                "target");
  ExpectInvalid(controller::ParseMigrationRequest(R"({"workload":"W"})").status(), "workload");

  auto d = controller::ParseDrainRequest("");
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->include_pinned);
  d = controller::ParseDrainRequest(R"({"includePinned":true})");
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->include_pinned);
  ExpectInvalid(controller::ParseDrainRequest(R"({"includePinned":1})").status(), "includePinned");
}

TEST(RestCodecTest, WorkloadViewIsTheRecordWithoutOriginPlusItsAge) {
  api::WorkloadView v;
  v.workload.spec = Spec();
  v.workload.spec.origin = api::WorkloadOrigin{"MigratableWorkload", "ns", "web", "u-1"};
  v.workload.status.phase = api::WorkloadPhase::kRunning;
  v.age_seconds = 1.5;
  json j = controller::WorkloadViewToJson(v);
  EXPECT_EQ(j["name"], "web");
  EXPECT_EQ(j["ageSeconds"], 1.5);
  EXPECT_EQ(j["status"]["phase"], "Running");
  EXPECT_FALSE(j["spec"].contains("origin"));
  EXPECT_FALSE(j.contains("usage"));
  v.usage = api::WorkloadUsage{0.25, 1024};
  j = controller::WorkloadViewToJson(v);
  EXPECT_EQ(j["usage"], json({{"cpu", 0.25}, {"memoryBytes", 1024}}));
  // Its spec is a valid POST body again.
  auto again = controller::ParseWorkloadSpecBody(j["spec"].dump());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, Spec());
  json list = controller::WorkloadListToJson({v, v});
  EXPECT_EQ(list["items"].size(), 2u);
}

TEST(RestCodecTest, NodeViewReadyAndNotReady) {
  api::NodeView down;
  down.name = "n1";
  down.cordoned = true;
  down.not_ready_seconds = 3.5;
  json j = controller::NodeViewToJson(down);
  EXPECT_EQ(j, json({{"name", "n1"},
                     {"ready", false},
                     {"cordoned", true},
                     {"notReadySeconds", 3.5},
                     {"workloads", json::array()}}));

  api::NodeView up;
  up.name = "n2";
  up.ready = true;
  api::NodeLoad l;
  l.node = "n2";
  l.url = "http://n2:7700";
  l.load_source = "cgroup";
  l.cpu_capacity = 2;
  l.cpu_used = 1;
  l.memory_capacity_bytes = 100;
  l.memory_available_bytes = 40;
  l.psi_memory_some10 = 7.5;
  l.workloads["web"] = {0.5, 10};
  up.load = l;
  up.heartbeat_age_seconds = 0.5;
  up.workloads = {"web"};
  j = controller::NodeViewToJson(up);
  EXPECT_EQ(j["url"], "http://n2:7700");
  EXPECT_EQ(j["load"], 0.5);
  EXPECT_EQ(j["capacity"], json({{"cpus", 2.0}, {"memoryBytes", 100}}));
  EXPECT_EQ(j["psi"], json({{"cpuSome10", nullptr}, {"memorySome10", 7.5}}));
  EXPECT_EQ(j["usage"]["web"], json({{"cpu", 0.5}, {"memoryBytes", 10}}));
  EXPECT_EQ(j["heartbeatAgeSeconds"], 0.5);
  EXPECT_EQ(j["workloads"], json({"web"}));
  EXPECT_FALSE(j.contains("notReadySeconds"));
  EXPECT_EQ(controller::NodeListToJson({down, up})["items"].size(), 2u);
}

TEST(RestCodecTest, MigrationIsTheStoredFormAndParsesBack) {
  json j = controller::MigrationToJson(Migration());
  EXPECT_EQ(j, cluster::MigrationToJson(Migration()));
  auto back = cluster::MigrationFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->cancelled_by, "user");
  EXPECT_EQ(controller::MigrationListToJson({Migration()})["items"][0], j);
}

TEST(RestCodecTest, DrainDecisionsLeader) {
  api::DrainReport r;
  r.node = "n1";
  r.ordered.push_back({"a", "m-1", "n2"});
  r.in_flight.push_back({"b", "m-0"});
  r.not_moved.push_back({"c", "pinned"});
  EXPECT_EQ(controller::DrainReportToJson(r),
            json({{"node", "n1"},
                  {"cordoned", true},
                  {"ordered", {{{"workload", "a"}, {"migration", "m-1"}, {"target", "n2"}}}},
                  {"inFlight", {{{"workload", "b"}, {"migration", "m-0"}}}},
                  {"notMoved", {{{"workload", "c"}, {"reason", "pinned"}}}}}));

  api::DecisionsView d;
  api::MoveDecision m;
  m.kind = api::MoveDecision::Kind::kMemory;
  m.workload = "a";
  m.source = "n1";
  m.target = "n2";
  m.reason = "why";
  d.moves.push_back(m);
  d.held_back = {"b: too young"};
  d.loads = {{"n1", 0.9}, {"n2", 0.1}};
  d.in_flight = 1;
  d.stability = 1.3;
  json dj = controller::DecisionsToJson(d);
  EXPECT_EQ(dj["moves"][0]["kind"], "memory");
  EXPECT_EQ(dj["moves"][0]["reason"], "why");
  EXPECT_EQ(dj["heldBack"], json({"b: too young"}));
  EXPECT_EQ(dj["loads"]["n1"], 0.9);
  EXPECT_EQ(dj["inFlight"], 1);
  EXPECT_EQ(dj["stability"], 1.3);

  api::LeaderInfo l;
  l.identity = "c1";
  EXPECT_EQ(controller::LeaderInfoToJson(l),
            json({{"identity", "c1"}, {"leader", nullptr}, {"isLeader", false}, {"ready", false}}));
  l.leader = "c2";
  EXPECT_EQ(controller::LeaderInfoToJson(l)["leader"], "c2");
}

// ---- issue 13, node loss: restartPolicy and checkpointIntervalSeconds ----

TEST(RestartPolicyCodecTest, RestAndRecordCarryThePolicyTheAgentFaceDoesNot) {
  api::WorkloadSpec s = Spec();
  s.restart_policy = api::RestartPolicy::kFromCheckpoint;
  s.checkpoint_interval_seconds = 60;
  for (SpecFace face : {SpecFace::kRest, SpecFace::kRecord}) {
    json j = WorkloadSpecToJson(s, face);
    EXPECT_EQ(j["restartPolicy"], "FromCheckpoint");
    EXPECT_EQ(j["checkpointIntervalSeconds"], 60);
    auto back = ParseWorkloadSpec(j.dump(), face);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, s);
  }
  EXPECT_FALSE(WorkloadSpecToJson(s, SpecFace::kAgent).contains("restartPolicy"));
  ExpectInvalid(
      ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":"FromImage"})", SpecFace::kAgent)
          .status(),
      "restartPolicy");

  // The default stays explicit in REST; a record leaves it out (an old
  // record reads the same, and an older reader reads a new default record).
  api::WorkloadSpec never = Spec();
  EXPECT_EQ(WorkloadSpecToJson(never, SpecFace::kRest)["restartPolicy"], "Never");
  EXPECT_FALSE(WorkloadSpecToJson(never, SpecFace::kRecord).contains("restartPolicy"));
  EXPECT_FALSE(WorkloadSpecToJson(never, SpecFace::kRest).contains("checkpointIntervalSeconds"));
  auto absent = ParseWorkloadSpec(R"({"name":"w","image":"i"})", SpecFace::kRest);
  ASSERT_TRUE(absent.ok());
  EXPECT_EQ(absent->restart_policy, api::RestartPolicy::kNever);
  EXPECT_EQ(absent->checkpoint_interval_seconds, 0);
}

TEST(RestartPolicyCodecTest, BadValuesAreRefusedNamingTheField) {
  for (SpecFace face : {SpecFace::kRest, SpecFace::kRecord}) {
    ExpectInvalid(
        ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":"Always"})", face).status(),
        "field \"restartPolicy\" in workload spec: unknown restart policy \"Always\"");
    ExpectInvalid(ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":1})", face).status(),
                  "restartPolicy");
    ExpectInvalid(
        ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":"FromCheckpoint"})", face)
            .status(),
        "checkpointIntervalSeconds");
    ExpectInvalid(ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":"FromCheckpoint",
                                        "checkpointIntervalSeconds":9})",
                                    face)
                      .status(),
                  "checkpointIntervalSeconds");
    ExpectInvalid(ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":"FromCheckpoint",
                                        "checkpointIntervalSeconds":30.5})",
                                    face)
                      .status(),
                  "checkpointIntervalSeconds");
    ExpectInvalid(ParseWorkloadSpec(R"({"name":"w","image":"i","restartPolicy":"FromImage",
                                        "checkpointIntervalSeconds":30})",
                                    face)
                      .status(),
                  "checkpointIntervalSeconds");
  }
  EXPECT_EQ(controller::ParseWorkloadSpecBody(R"({"name":"w","image":"i","restartPolicy":"no"})")
                .status()
                .code(),
            Code::kInvalid);
}

TEST(RestartPolicyCodecTest, RestWorkloadViewShowsRecoveryAndRestoreCheckpoint) {
  api::WorkloadView v;
  v.workload.spec = Spec();
  v.workload.spec.restart_policy = api::RestartPolicy::kFromImage;
  v.workload.status.phase = api::WorkloadPhase::kScheduled;
  v.workload.status.restore_checkpoint = "c-9";
  v.workload.status.recovery =
      api::Recovery{api::RestartPolicy::kFromCheckpoint, "n1", 1000, 16000, "c-9", 400, 600, 2};
  json j = controller::WorkloadViewToJson(v);
  EXPECT_EQ(j["spec"]["restartPolicy"], "FromImage");
  EXPECT_EQ(j["status"]["restoreCheckpoint"], "c-9");
  EXPECT_EQ(j["status"]["recovery"], json::parse(R"({"policy":"FromCheckpoint","lostNode":"n1",
      "lostMs":1000,"restartedMs":16000,"checkpoint":"c-9","checkpointTakenMs":400,
      "progressLostMs":600,"count":2})"));
  v.workload.status.recovery.reset();
  v.workload.status.restore_checkpoint.clear();
  j = controller::WorkloadViewToJson(v);
  EXPECT_FALSE(j["status"].contains("recovery"));
  EXPECT_FALSE(j["status"].contains("restoreCheckpoint"));
}

}  // namespace
}  // namespace kmosix
