#include "cluster/records.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kmosix/migration.h"
#include "kmosix/spec_json.h"

namespace kmosix::cluster {
namespace {

using api::NodeLoad;
using api::NodeMember;
using api::WorkloadPhase;
using api::WorkloadSpec;
using nlohmann::json;
using MigrationRecord = api::Migration;
using WorkloadRecord = api::Workload;

// The REST face of the spec codec (POST /v1/workloads), which these tests
// were written against.
StatusOr<WorkloadSpec> ParseWorkloadSpec(std::string_view body) {
  return kmosix::ParseWorkloadSpec(body, SpecFace::kRest);
}
StatusOr<WorkloadSpec> WorkloadSpecFromJson(const json& j) {
  return kmosix::WorkloadSpecFromJson(j, SpecFace::kRest);
}
json WorkloadSpecToJson(const WorkloadSpec& s) {
  return kmosix::WorkloadSpecToJson(s, SpecFace::kRest);
}
bool IsFinalMigrationPhase(std::string_view phase) {
  auto p = api::ParseMigrationPhase(phase);
  return p.ok() && api::IsFinal(*p);
}

WorkloadSpec SampleSpec() {
  WorkloadSpec s;
  s.name = "sim-1";
  s.image = "docker.io/library/busybox:latest";
  s.args = {"sh", "-c", "sleep 1000"};
  s.env = {{"A", "1"}, {"B", "two"}};
  s.memory_mib = 256;
  s.cpus = 1.5;
  s.migratable = false;
  s.node = "node-2";
  s.pinned = true;
  return s;
}

void ExpectSpecEq(const WorkloadSpec& a, const WorkloadSpec& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.image, b.image);
  EXPECT_EQ(a.args, b.args);
  EXPECT_EQ(a.env, b.env);
  EXPECT_EQ(a.memory_mib, b.memory_mib);
  EXPECT_EQ(a.cpus, b.cpus);
  EXPECT_EQ(a.migratable, b.migratable);
  EXPECT_EQ(a.node, b.node);
  EXPECT_EQ(a.pinned, b.pinned);
}

void ExpectInvalidNaming(const Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), Code::kInvalid) << s.ToString();
  EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
}

TEST(KeyLayoutTest, KeysAndNameIn) {
  KeyLayout k;
  EXPECT_EQ(k.Node("n1"), "/kmosix/nodes/n1");
  EXPECT_EQ(k.Leader(), "/kmosix/leader");
  EXPECT_EQ(KeyLayout::NameIn(k.Nodes(), "/kmosix/nodes/n1"), "n1");
  EXPECT_EQ(KeyLayout::NameIn(k.Nodes(), "/kmosix/nodes/"), "");
  EXPECT_EQ(KeyLayout::NameIn(k.Nodes(), "/kmosix/nodes/a/b"), "");
  EXPECT_EQ(KeyLayout::NameIn(k.Nodes(), "/kmosix/workloads/w"), "");
  EXPECT_EQ(KeyLayout::NameIn(k.Nodes(), "/kmosix/node"), "");
  KeyLayout other{"/x/"};
  EXPECT_EQ(other.Migration("m-1"), "/x/migrations/m-1");
}

TEST(WorkloadSpecTest, RoundTrip) {
  WorkloadSpec s = SampleSpec();
  auto back = WorkloadSpecFromJson(WorkloadSpecToJson(s));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSpecEq(*back, s);
  auto parsed = ParseWorkloadSpec(WorkloadSpecToJson(s).dump());
  ASSERT_TRUE(parsed.ok());
  ExpectSpecEq(*parsed, s);
}

TEST(WorkloadSpecTest, DefaultsForOptionalFields) {
  auto s = ParseWorkloadSpec(R"({"name":"w","image":"img"})");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(s->migratable);
  EXPECT_FALSE(s->pinned);
  EXPECT_EQ(s->node, "");
  EXPECT_EQ(s->memory_mib, 0);
  EXPECT_EQ(s->cpus, 0);
  EXPECT_TRUE(s->args.empty());
  EXPECT_TRUE(s->env.empty());
}

TEST(WorkloadSpecTest, Rejections) {
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","color":1})").status(), "color");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"image":"i"})").status(), "name");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w"})").status(), "image");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":""})").status(), "image");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"Bad_Name","image":"i"})").status(), "name");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":5,"image":"i"})").status(), "name");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","args":"x"})").status(), "args");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","args":[1]})").status(), "args");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","env":{"A":1}})").status(), "A");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","env":[]})").status(), "env");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","memoryMiB":-1})").status(),
                      "memoryMiB");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","memoryMiB":1.5})").status(),
                      "memoryMiB");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","cpus":-0.5})").status(),
                      "cpus");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","cpus":"2"})").status(), "cpus");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","migratable":1})").status(),
                      "migratable");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","pinned":"yes"})").status(),
                      "pinned");
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","node":"No.de"})").status(),
                      "node");
  EXPECT_EQ(ParseWorkloadSpec("not json").status().code(), Code::kInvalid);
  EXPECT_EQ(ParseWorkloadSpec("[1,2]").status().code(), Code::kInvalid);
  EXPECT_EQ(WorkloadSpecFromJson(json(3)).status().code(), Code::kInvalid);
}

TEST(WorkloadSpecTest, OriginIsStoredButNotAcceptedFromRest) {
  WorkloadRecord w;
  w.spec = SampleSpec();
  w.spec.origin = api::WorkloadOrigin{"MigratableWorkload", "team-a", "web", "0f3c-uid"};
  json j = WorkloadToJson(w);
  EXPECT_EQ(j["spec"]["origin"], json({{"kind", "MigratableWorkload"},
                                       {"namespace", "team-a"},
                                       {"name", "web"},
                                       {"uid", "0f3c-uid"}}));
  auto back = ParseRecord<WorkloadRecord>(j.dump(), &WorkloadFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->spec, w.spec);
  // Without an origin the stored JSON is what it always was.
  EXPECT_FALSE(WorkloadToJson(WorkloadRecord{SampleSpec(), {}})["spec"].contains("origin"));
  // A REST body may not set it, and the REST form does not show it.
  ExpectInvalidNaming(ParseWorkloadSpec(R"({"name":"w","image":"i","origin":{}})").status(),
                      "origin");
  EXPECT_FALSE(WorkloadSpecToJson(w.spec).contains("origin"));
  // A stored origin must name its object.
  json bad = j;
  bad["spec"]["origin"].erase("uid");
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "uid");
  bad = j;
  bad["spec"]["origin"]["zone"] = "x";
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "zone");
  bad = j;
  bad["spec"]["origin"]["uid"] = "";
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "origin");
}

TEST(WorkloadPhaseTest, NamesRoundTrip) {
  for (auto p : {WorkloadPhase::kPending, WorkloadPhase::kScheduled, WorkloadPhase::kRunning,
                 WorkloadPhase::kMigrating, WorkloadPhase::kLost, WorkloadPhase::kFailed,
                 WorkloadPhase::kExited}) {
    auto back = api::ParseWorkloadPhase(api::WorkloadPhaseName(p));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, p);
  }
  EXPECT_EQ(api::WorkloadPhaseName(WorkloadPhase::kScheduled), "Scheduled");
  EXPECT_EQ(api::ParseWorkloadPhase("running").status().code(), Code::kInvalid);
}

TEST(WorkloadRecordTest, RoundTrip) {
  WorkloadRecord w;
  w.spec = SampleSpec();
  w.status.phase = WorkloadPhase::kMigrating;
  w.status.node = "node-1";
  w.status.epoch = 7;
  w.status.migration = "m-0123456789abcdef";
  w.status.pid = 4242;
  w.status.created_ms = 1700000000000;
  w.status.started_ms = 1700000001000;
  w.status.migrations = {"m-1", "m-2"};
  w.status.message = "moving";
  json j = WorkloadToJson(w);
  EXPECT_EQ(j["status"]["phase"], "Migrating");
  EXPECT_EQ(j["spec"]["memoryMiB"], 256);
  auto back = ParseRecord<WorkloadRecord>(j.dump(), &WorkloadFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSpecEq(back->spec, w.spec);
  EXPECT_EQ(back->status.phase, w.status.phase);
  EXPECT_EQ(back->status.node, w.status.node);
  EXPECT_EQ(back->status.epoch, w.status.epoch);
  EXPECT_EQ(back->status.migration, w.status.migration);
  EXPECT_EQ(back->status.pid, w.status.pid);
  EXPECT_EQ(back->status.created_ms, w.status.created_ms);
  EXPECT_EQ(back->status.started_ms, w.status.started_ms);
  EXPECT_EQ(back->status.migrations, w.status.migrations);
  EXPECT_EQ(back->status.message, w.status.message);
}

TEST(WorkloadRecordTest, Rejections) {
  json good = WorkloadToJson(WorkloadRecord{SampleSpec(), {}});
  ASSERT_TRUE(WorkloadFromJson(good).ok());

  json j = good;
  j["extra"] = 1;
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "extra");
  j = good;
  j["status"]["bogus"] = true;
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "bogus");
  j = good;
  j["spec"]["unknown"] = true;
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "unknown");
  j = good;
  j["status"]["phase"] = "Dancing";
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "Dancing");
  j = good;
  j["status"]["epoch"] = -1;
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "epoch");
  j = good;
  j["status"]["epoch"] = "3";
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "epoch");
  j = good;
  j["status"]["pid"] = -5;
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "pid");
  j = good;
  j["status"]["migrations"] = {1};
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "migrations");
  j = good;
  j.erase("spec");
  ExpectInvalidNaming(WorkloadFromJson(j).status(), "spec");
  EXPECT_EQ(ParseRecord<WorkloadRecord>("{", &WorkloadFromJson).status().code(), Code::kInvalid);
  EXPECT_EQ(ParseRecord<WorkloadRecord>("[]", &WorkloadFromJson).status().code(), Code::kInvalid);
}

NodeLoad SampleLoad() {
  NodeLoad n;
  n.node = "node-1";
  n.url = "http://10.77.0.11:7700";
  n.load_source = "cgroup";
  n.cpu_capacity = 4;
  n.speed = 1.5;
  n.cpu_used = 3;
  n.run_queue = 2.25;
  n.memory_capacity_bytes = uint64_t{16} << 30;
  n.memory_available_bytes = uint64_t{9} << 30;
  n.psi_cpu_some10 = 12.5;
  n.workloads["w-1"] = {0.75, 123456789};
  n.workloads["w-2"] = {1.0, 42};
  n.updated_ms = 1700000000123;
  return n;
}

TEST(NodeLoadTest, RoundTripAndLoad) {
  NodeLoad n = SampleLoad();
  json j = NodeLoadToJson(n);
  EXPECT_EQ(j["workloads"]["w-1"]["memoryBytes"], 123456789);
  EXPECT_FALSE(j.contains("psiMemorySome10"));
  auto back = NodeLoadFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->node, n.node);
  EXPECT_EQ(back->url, n.url);
  EXPECT_EQ(back->load_source, n.load_source);
  EXPECT_EQ(back->cpu_capacity, n.cpu_capacity);
  EXPECT_EQ(back->speed, n.speed);
  EXPECT_EQ(back->cpu_used, n.cpu_used);
  EXPECT_EQ(back->run_queue, n.run_queue);
  EXPECT_EQ(back->memory_capacity_bytes, n.memory_capacity_bytes);
  EXPECT_EQ(back->memory_available_bytes, n.memory_available_bytes);
  EXPECT_EQ(back->psi_cpu_some10, n.psi_cpu_some10);
  EXPECT_FALSE(back->psi_memory_some10.has_value());
  EXPECT_EQ(back->workloads, n.workloads);
  EXPECT_EQ(back->updated_ms, n.updated_ms);
  EXPECT_DOUBLE_EQ(back->Load(), 0.5);

  NodeLoad zero;
  zero.cpu_capacity = 0;
  zero.cpu_used = 2;
  EXPECT_EQ(zero.Load(), 0);
  zero.cpu_capacity = 2;
  zero.speed = -1;
  EXPECT_EQ(zero.Load(), 0);
}

TEST(NodeLoadTest, ImagesRoundTripAndAreChecked) {
  NodeLoad n = SampleLoad();
  EXPECT_FALSE(NodeLoadToJson(n).contains("images")) << "absent when not published";
  n.images = std::vector<std::string>{"busybox:1", "kmosix.local/demo:latest"};
  json j = NodeLoadToJson(n);
  auto back = NodeLoadFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->images, n.images);
  for (json bad : {json(1), json::array({1}), json::array({""}),
                   json::array({std::string(api::kMaxImageBytes + 1, 'x')}),
                   json(std::vector<std::string>(api::kMaxNodeImages + 1, "x"))}) {
    j["images"] = bad;
    ExpectInvalidNaming(NodeLoadFromJson(j).status(), "images");
  }
}

TEST(NodeLoadTest, NotReadyReasonRoundTripsAndIsChecked) {
  NodeLoad n = SampleLoad();
  EXPECT_FALSE(NodeLoadToJson(n).contains("notReadyReason")) << "absent when ready";
  auto ready = NodeLoadFromJson(NodeLoadToJson(n));
  ASSERT_TRUE(ready.ok()) << ready.status().ToString();
  EXPECT_FALSE(ready->not_ready_reason.has_value());
  n.not_ready_reason = "CRIU not usable: criu is version 3.17.1; kmosix needs CRIU >= 4.0";
  json j = NodeLoadToJson(n);
  EXPECT_EQ(j["notReadyReason"], *n.not_ready_reason);
  auto back = NodeLoadFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->not_ready_reason, n.not_ready_reason);
  EXPECT_EQ(*back, n);
  j["notReadyReason"] = std::string(api::kMaxNotReadyReasonBytes, 'x');
  EXPECT_TRUE(NodeLoadFromJson(j).ok()) << "the longest reason is accepted";
  for (json bad : {json(nullptr), json(1), json(true), json(""), json::array({"x"}),
                   json(std::string(api::kMaxNotReadyReasonBytes + 1, 'x'))}) {
    j["notReadyReason"] = bad;
    ExpectInvalidNaming(NodeLoadFromJson(j).status(), "notReadyReason");
  }
}

TEST(NodeLoadTest, PsiNullIsAbsent) {
  json j = NodeLoadToJson(SampleLoad());
  j["psiCpuSome10"] = nullptr;
  auto back = NodeLoadFromJson(j);
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back->psi_cpu_some10.has_value());
}

TEST(NodeLoadTest, Rejections) {
  json good = NodeLoadToJson(SampleLoad());
  json j = good;
  j["loadAvg"] = 1;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "loadAvg");
  j = good;
  j["cpuUsed"] = -1;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "cpuUsed");
  j = good;
  j["speed"] = "fast";
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "speed");
  j = good;
  j["memoryAvailableBytes"] = -10;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "memoryAvailableBytes");
  j = good;
  j["memoryCapacityBytes"] = 1.5;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "memoryCapacityBytes");
  j = good;
  j["psiMemorySome10"] = "high";
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "psiMemorySome10");
  j = good;
  j["workloads"]["w-1"]["swap"] = 0;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "swap");
  j = good;
  j["workloads"]["w-1"]["cpu"] = -0.1;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "cpu");
  j = good;
  j["workloads"]["BAD"] = json::object();
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "BAD");
  j = good;
  j["workloads"] = json::array();
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "workloads");
  j = good;
  j["node"] = "Node_1";
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "node");
  j = good;
  j.erase("node");
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "node");
  j = good;
  j["updatedMs"] = -3;
  ExpectInvalidNaming(NodeLoadFromJson(j).status(), "updatedMs");
}

TEST(NodeMemberTest, RoundTripAndRejections) {
  NodeMember m{"node-3", false, 1700000000000, true};
  auto back = NodeMemberFromJson(NodeMemberToJson(m));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->node, m.node);
  EXPECT_EQ(back->ready, m.ready);
  EXPECT_EQ(back->changed_ms, m.changed_ms);
  EXPECT_EQ(back->cordoned, m.cordoned);

  json j = NodeMemberToJson(m);
  j["drained"] = true;
  ExpectInvalidNaming(NodeMemberFromJson(j).status(), "drained");
  j = NodeMemberToJson(m);
  j["ready"] = "yes";
  ExpectInvalidNaming(NodeMemberFromJson(j).status(), "ready");
  j = NodeMemberToJson(m);
  j["changedMs"] = -1;
  ExpectInvalidNaming(NodeMemberFromJson(j).status(), "changedMs");
  j = NodeMemberToJson(m);
  j["node"] = "";
  ExpectInvalidNaming(NodeMemberFromJson(j).status(), "node");
}

MigrationRecord SampleMigration() {
  MigrationRecord m;
  m.id = "m-3f9a0c12d4e5b6a7";
  m.workload = "sim-1";
  m.source = "node-1";
  m.target = "node-2";
  m.phase = api::MigrationPhase::kTransferring;
  m.reason = "L_B + 1.3*l_c = 1.2 < L_A = 2.0";
  m.requested_by = "policy";
  m.epoch = 3;
  m.created_ms = 1;
  m.updated_ms = 2;
  m.finished_ms = 0;
  api::MigrationReport r;
  r.id = m.id;
  r.workload = m.workload;
  r.source_node = m.source;
  r.target_node = m.target;
  r.target_url = "http://10.77.0.12:7700";
  r.phase = api::MigrationPhase::kTransferring;
  r.started_ms = 1;
  r.bytes = 1024;
  r.timings.prepare = 0.25;
  m.report = r;
  m.error = "";
  return m;
}

TEST(MigrationRecordTest, RoundTrip) {
  MigrationRecord m = SampleMigration();
  auto back = ParseRecord<MigrationRecord>(MigrationToJson(m).dump(), &MigrationFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->id, m.id);
  EXPECT_EQ(back->workload, m.workload);
  EXPECT_EQ(back->source, m.source);
  EXPECT_EQ(back->target, m.target);
  EXPECT_EQ(back->phase, m.phase);
  EXPECT_EQ(back->reason, m.reason);
  EXPECT_EQ(back->requested_by, m.requested_by);
  EXPECT_EQ(back->epoch, m.epoch);
  EXPECT_EQ(back->created_ms, m.created_ms);
  EXPECT_EQ(back->updated_ms, m.updated_ms);
  EXPECT_EQ(back->finished_ms, m.finished_ms);
  ASSERT_TRUE(back->report.has_value());
  EXPECT_EQ(MigrationReportToJson(*back->report), MigrationReportToJson(*m.report));
  EXPECT_EQ(back->error, m.error);

  MigrationRecord fresh;
  fresh.id = "m-1";
  fresh.workload = "w";
  json j = MigrationToJson(fresh);
  EXPECT_TRUE(j["report"].is_null());
  auto b2 = MigrationFromJson(j);
  ASSERT_TRUE(b2.ok()) << b2.status().ToString();
  EXPECT_FALSE(b2->report.has_value());
  EXPECT_EQ(b2->phase, api::MigrationPhase::kPending);
}

TEST(MigrationRecordTest, Rejections) {
  json good = MigrationToJson(SampleMigration());
  json j = good;
  j["priority"] = 1;
  ExpectInvalidNaming(MigrationFromJson(j).status(), "priority");
  j = good;
  j["phase"] = "Teleporting";
  ExpectInvalidNaming(MigrationFromJson(j).status(), "Teleporting");
  j = good;
  j["report"] = "done";
  ExpectInvalidNaming(MigrationFromJson(j).status(), "report");
  j = good;
  j["report"] = {{"phase", "Transferring"}, {"bytes", 1024}};  // not a report
  ExpectInvalidNaming(MigrationFromJson(j).status(), "report");
  j = good;
  j["epoch"] = -1;
  ExpectInvalidNaming(MigrationFromJson(j).status(), "epoch");
  j = good;
  j["createdMs"] = 1.25;
  ExpectInvalidNaming(MigrationFromJson(j).status(), "createdMs");
  j = good;
  j["id"] = "../etc";
  ExpectInvalidNaming(MigrationFromJson(j).status(), "id");
  j = good;
  j["target"] = 7;
  ExpectInvalidNaming(MigrationFromJson(j).status(), "target");
  j = good;
  j.erase("workload");
  ExpectInvalidNaming(MigrationFromJson(j).status(), "workload");
}

// Issue 13, "Also": the record says which fault a migration met and how it
// ended; records written before they existed read without them.
TEST(MigrationRecordTest, FaultAndResolutionRoundTripAndOldRecordsStillRead) {
  MigrationRecord m = SampleMigration();
  json old = MigrationToJson(m);
  EXPECT_FALSE(old.contains("fault"));
  EXPECT_FALSE(old.contains("resolution"));
  auto back = MigrationFromJson(old);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_FALSE(back->fault || back->resolution);

  m.fault = api::MakeFault(api::FaultKind::kTargetUnreachable, api::MigrationPhase::kCommitting,
                           "node2", "commit: connection reset", 1700000001000);
  m.resolution = api::MigrationResolution{api::MigrationOutcome::kCommitted, api::Decider::kTarget,
                                          1700000002000};
  json j = MigrationToJson(m);
  EXPECT_EQ(j["fault"], json({{"kind", "TargetUnreachable"},
                              {"phase", "Committing"},
                              {"node", "node2"},
                              {"message", "commit: connection reset"},
                              {"atMs", 1700000001000}}));
  EXPECT_EQ(j["resolution"],
            json({{"outcome", "Committed"}, {"decidedBy", "Target"}, {"atMs", 1700000002000}}));
  back = ParseRecord<MigrationRecord>(j.dump(), &MigrationFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->fault, m.fault);
  EXPECT_EQ(back->resolution, m.resolution);
  EXPECT_EQ(MigrationToJson(*back), j);
  // null reads as absent, as "report" does.
  j["fault"] = nullptr;
  j["resolution"] = nullptr;
  back = MigrationFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_FALSE(back->fault || back->resolution);
}

TEST(MigrationRecordTest, BadFaultsAndResolutionsAreRefused) {
  MigrationRecord m = SampleMigration();
  m.fault = api::MakeFault(api::FaultKind::kSourceLost, api::MigrationPhase::kTransferring, "node1",
                           "lease expired", 5);
  m.resolution =
      api::MigrationResolution{api::MigrationOutcome::kAbandoned, api::Decider::kController, 6};
  const json good = MigrationToJson(m);
  ASSERT_TRUE(MigrationFromJson(good).ok());
  auto bad = [&](const char* field, const char* key, const json& value) {
    json j = good;
    j[field][key] = value;
    return MigrationFromJson(j).status();
  };
  ExpectInvalidNaming(bad("fault", "kind", "Gremlins"), "Gremlins");
  ExpectInvalidNaming(bad("fault", "kind", 4), "kind");
  ExpectInvalidNaming(bad("fault", "phase", "Teleporting"), "Teleporting");
  ExpectInvalidNaming(bad("fault", "node", "Node One"), "node");
  ExpectInvalidNaming(bad("fault", "atMs", -3), "atMs");
  ExpectInvalidNaming(bad("fault", "message", std::string(5000, 'm')), "message");
  ExpectInvalidNaming(bad("fault", "blame", "me"), "blame");
  ExpectInvalidNaming(bad("resolution", "outcome", "Vanished"), "Vanished");
  ExpectInvalidNaming(bad("resolution", "decidedBy", "Fate"), "Fate");
  ExpectInvalidNaming(bad("resolution", "atMs", 1.5), "atMs");
  ExpectInvalidNaming(bad("resolution", "why", "no"), "why");
  json j = good;
  j["fault"] = "TargetUnreachable";
  ExpectInvalidNaming(MigrationFromJson(j).status(), "fault");
  j = good;
  j["resolution"].erase("outcome");
  ExpectInvalidNaming(MigrationFromJson(j).status(), "outcome");
}

TEST(MigrationRecordTest, FinalPhases) {
  EXPECT_TRUE(IsFinalMigrationPhase("Succeeded"));
  EXPECT_TRUE(IsFinalMigrationPhase("RolledBack"));
  EXPECT_TRUE(IsFinalMigrationPhase("Failed"));
  EXPECT_FALSE(IsFinalMigrationPhase("Pending"));
  EXPECT_FALSE(IsFinalMigrationPhase("Committing"));
  EXPECT_FALSE(IsFinalMigrationPhase("nonsense"));
}

TEST(RecordsTest, HugeAndOddNumbersNeverThrow) {
  json j = NodeLoadToJson(SampleLoad());
  j["updatedMs"] = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(NodeLoadFromJson(j).status().code(), Code::kInvalid);
  j = NodeLoadToJson(SampleLoad());
  j["cpuUsed"] = 1e308;
  EXPECT_TRUE(NodeLoadFromJson(j).ok());
  auto s = ParseWorkloadSpec(R"({"name":"w","image":"i","cpus":1e999})");
  EXPECT_EQ(s.status().code(), Code::kInvalid);
}

// ---- issue 13, node loss ---------------------------------------------------

TEST(WorkloadRecordTest, RecoveryAndRestoreCheckpointRoundTripAndAreChecked) {
  WorkloadRecord w;
  w.spec = SampleSpec();
  w.spec.restart_policy = api::RestartPolicy::kFromCheckpoint;
  w.spec.checkpoint_interval_seconds = 30;
  w.status.phase = WorkloadPhase::kScheduled;
  w.status.node = "node-2";
  w.status.epoch = 9;
  w.status.restore_checkpoint = "c-5";
  w.status.recovery =
      api::Recovery{api::RestartPolicy::kFromCheckpoint, "node-1", 100, 16100, "c-5", 70, 30, 1};
  json j = WorkloadToJson(w);
  EXPECT_EQ(j["spec"]["restartPolicy"], "FromCheckpoint");
  EXPECT_EQ(j["status"]["restoreCheckpoint"], "c-5");
  EXPECT_EQ(j["status"]["recovery"]["lostNode"], "node-1");
  auto back = ParseRecord<WorkloadRecord>(j.dump(), &WorkloadFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, w);

  // A record written before these fields reads with their defaults.
  json old = WorkloadToJson(WorkloadRecord{SampleSpec(), {}});
  EXPECT_FALSE(old["status"].contains("recovery"));
  EXPECT_FALSE(old["status"].contains("restoreCheckpoint"));
  auto plain = WorkloadFromJson(old);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->status.recovery.has_value());
  EXPECT_EQ(plain->spec.restart_policy, api::RestartPolicy::kNever);

  json bad = j;
  bad["status"]["recovery"]["policy"] = "Never";
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "policy");
  bad = j;
  bad["status"]["recovery"]["policy"] = "Sometimes";
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "Sometimes");
  bad = j;
  bad["status"]["recovery"]["extra"] = 1;
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "extra");
  bad = j;
  bad["status"]["recovery"].erase("lostNode");
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "lostNode");
  bad = j;
  bad["status"]["recovery"]["count"] = -1;
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "count");
  bad = j;
  bad["status"]["restoreCheckpoint"] = "Not/A/Name";
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "restoreCheckpoint");
  bad = j;
  bad["spec"]["restartPolicy"] = "Always";
  ExpectInvalidNaming(WorkloadFromJson(bad).status(), "restartPolicy");
}

TEST(CheckpointRecordTest, KeyRoundTripAndRejections) {
  KeyLayout keys;
  EXPECT_EQ(keys.Checkpoint("w-1"), "/kmosix/checkpoints/w-1");
  EXPECT_EQ(KeyLayout::NameIn(keys.Checkpoints(), keys.Checkpoint("w-1")), "w-1");

  api::CheckpointRecord c{"w-1", "c-17", 1234567, "node-1", "node-2", 1700000000000, 1 << 20};
  json j = CheckpointToJson(c);
  EXPECT_EQ(j, json::parse(R"({"workload":"w-1","id":"c-17","epoch":1234567,"source":"node-1",
      "keeper":"node-2","takenMs":1700000000000,"bytes":1048576})"));
  auto back = ParseRecord<api::CheckpointRecord>(j.dump(), &CheckpointFromJson);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, c);

  for (const char* required : {"workload", "id", "source", "keeper"}) {
    json b = j;
    b.erase(required);
    ExpectInvalidNaming(CheckpointFromJson(b).status(), required);
  }
  json b = j;
  b["extra"] = true;
  ExpectInvalidNaming(CheckpointFromJson(b).status(), "extra");
  b = j;
  b["epoch"] = -3;
  ExpectInvalidNaming(CheckpointFromJson(b).status(), "epoch");
  b = j;
  b["bytes"] = "many";
  ExpectInvalidNaming(CheckpointFromJson(b).status(), "bytes");
  b = j;
  b["keeper"] = "Node_2";
  ExpectInvalidNaming(CheckpointFromJson(b).status(), "keeper");
  EXPECT_EQ(ParseRecord<api::CheckpointRecord>("[1]", &CheckpointFromJson).status().code(),
            Code::kInvalid);
}

}  // namespace
}  // namespace kmosix::cluster
