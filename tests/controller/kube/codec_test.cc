// The Kubernetes codecs of controller/kube/codec.h: names, quantities, the
// three kinds decoded and encoded both ways, statuses and conditions.
#include "controller/kube/codec.h"

#include <gtest/gtest.h>

#include <functional>

#include "api/validate.h"

namespace kmosix::bridge {
namespace {

using nlohmann::json;

json Counter() {
  return json::parse(R"({
    "apiVersion": "kmosix.io/v1alpha1", "kind": "MigratableWorkload",
    "metadata": {"name": "counter", "namespace": "default", "uid": "u-1", "generation": 3,
                 "resourceVersion": "17", "finalizers": ["kmosix.io/finalizer"],
                 "labels": {"team": "render"}},
    "spec": {"image": "kmosix.local/demo:latest", "command": ["/bin/kmosix-demo", "--mem", "64"],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": ""}],
             "resources": {"cpu": "500m", "memory": "128Mi"},
             "nodeName": "node1", "pinned": true, "migratable": true}})");
}

TEST(KubeNames, WorkloadNamesAreDnsLabelsAndDifferAcrossNamespaces) {
  const std::string a = WorkloadNameFor("default", "counter");
  const std::string b = WorkloadNameFor("team-b", "counter");
  EXPECT_NE(a, b);
  EXPECT_EQ(a, WorkloadNameFor("default", "counter"));  // deterministic
  EXPECT_EQ(a.rfind("default-counter-", 0), 0u) << a;
  // "a-b"/"c" and "a"/"b-c" spell the same prefix; the hash tells them apart.
  EXPECT_NE(WorkloadNameFor("a-b", "c"), WorkloadNameFor("a", "b-c"));
  const std::string longest = WorkloadNameFor(std::string(63, 'n'), std::string(63, 'w'));
  EXPECT_LE(longest.size(), 63u);
  for (const auto& n : {a, b, longest}) EXPECT_TRUE(api::ValidateName(n).ok()) << n;
  // A cut that ends in '-' is trimmed so the label stays valid.
  EXPECT_TRUE(api::ValidateName(WorkloadNameFor(std::string(53, 'x'), "y")).ok());
}

TEST(KubeNames, MigrationIdsAreStablePerUidAndGeneration) {
  EXPECT_EQ(MigrationIdFor("u-1"), MigrationIdFor("u-1"));
  EXPECT_NE(MigrationIdFor("u-1"), MigrationIdFor("u-2"));
  EXPECT_NE(MigrationIdForMove("u-1", 2), MigrationIdForMove("u-1", 3));
  EXPECT_EQ(MigrationIdFor("u-1").size(), 18u);
  EXPECT_TRUE(api::ValidateName(MigrationIdFor("u-1")).ok());
}

TEST(KubeQuantities, CpuAndMemory) {
  EXPECT_DOUBLE_EQ(*ParseCpuQuantity("500m"), 0.5);
  EXPECT_DOUBLE_EQ(*ParseCpuQuantity("2"), 2);
  EXPECT_DOUBLE_EQ(*ParseCpuQuantity("1.5"), 1.5);
  EXPECT_DOUBLE_EQ(*ParseCpuQuantity(json(3)), 3);
  EXPECT_EQ(*ParseMemoryQuantityMiB("64Mi"), 64);
  EXPECT_EQ(*ParseMemoryQuantityMiB("1Gi"), 1024);
  EXPECT_EQ(*ParseMemoryQuantityMiB("1G"), 954);  // 10^9 bytes, rounded up
  EXPECT_EQ(*ParseMemoryQuantityMiB("134217728"), 128);
  EXPECT_EQ(*ParseMemoryQuantityMiB("1e6"), 1);
  for (const char* bad : {"", "abc", "-1", "1Qi", "1.2.3", "m", "1e", "1e99999"}) {
    auto r = ParseCpuQuantity(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), Code::kInvalid) << bad;
    }
  }
  EXPECT_FALSE(ParseMemoryQuantityMiB("2Ei").ok());  // over the model's limit
  EXPECT_FALSE(ParseCpuQuantity(json::array()).ok());
}

// A quantity is read in one correctly rounded step, so the codec's own
// output (%.17g) reads back as the same value (found by kube_codec_fuzz:
// "0.00010000m" came back 1 ulp off; corpus/kube_codec/cpu-tiny-milli).
TEST(KubeCodec, CpuQuantityRoundTripsExactly) {
  for (const char* q : {"0.00010000m", "1m", "100m", "0.1", "3.3", "4095.123456789m", "7e-9",
                        "0.3e3", "1n", "2.5u"}) {
    json o = Counter();
    o["spec"]["resources"]["cpu"] = q;
    auto w = DecodeMigratableWorkload(o);
    ASSERT_TRUE(w.ok()) << q << ": " << w.status().ToString();
    auto again = DecodeMigratableWorkload(MigratableWorkloadObject(*w));
    ASSERT_TRUE(again.ok()) << q << ": " << again.status().ToString();
    EXPECT_EQ(again->cpus, w->cpus) << q;
  }
  EXPECT_EQ(*ParseCpuQuantity("100m"), 0.1);
  EXPECT_EQ(*ParseCpuQuantity("0.00010000m"), 1e-7);
}

TEST(KubeCodec, DecodesAMigratableWorkload) {
  auto spec = DecodeMigratableWorkload(Counter());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, WorkloadNameFor("default", "counter"));
  EXPECT_EQ(spec->image, "kmosix.local/demo:latest");
  EXPECT_EQ(spec->args, (std::vector<std::string>{"/bin/kmosix-demo", "--mem", "64"}));
  EXPECT_EQ(spec->env, (std::map<std::string, std::string>{{"A", "1"}, {"B", ""}}));
  EXPECT_DOUBLE_EQ(spec->cpus, 0.5);
  EXPECT_EQ(spec->memory_mib, 128);
  EXPECT_EQ(spec->node, "node1");
  EXPECT_TRUE(spec->pinned);
  EXPECT_TRUE(spec->migratable);
  ASSERT_TRUE(spec->origin);
  EXPECT_EQ(*spec->origin,
            (api::WorkloadOrigin{"MigratableWorkload", "default", "counter", "u-1"}));
}

TEST(KubeCodec, MigratableWorkloadRoundTrips) {
  auto spec = DecodeMigratableWorkload(Counter());
  ASSERT_TRUE(spec.ok());
  auto again = DecodeMigratableWorkload(MigratableWorkloadObject(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*spec, *again);
  // Defaults: migratable true, pinned false, no limits.
  json minimal = {{"metadata", {{"name", "m"}, {"namespace", "ns"}, {"uid", "u"}}},
                  {"spec", {{"image", "img"}}}};
  auto m = DecodeMigratableWorkload(minimal);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->migratable);
  EXPECT_FALSE(m->pinned);
  EXPECT_EQ(m->cpus, 0);
  EXPECT_EQ(*DecodeMigratableWorkload(MigratableWorkloadObject(*m)), *m);
}

TEST(KubeCodec, RefusesBadMigratableWorkloads) {
  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    const char* message;
  };
  std::vector<Case> cases = {
      {"no image", [](json& o) { o["spec"].erase("image"); }, "spec.image"},
      {"image not a string", [](json& o) { o["spec"]["image"] = 5; }, "spec.image"},
      {"unknown field", [](json& o) { o["spec"]["replicas"] = 2; }, "spec.replicas"},
      {"command not strings",
       [](json& o) {
         o["spec"]["command"] = {1, 2};
       },
       "spec.command"},
      {"env not a list",
       [](json& o) {
         o["spec"]["env"] = {{"A", "1"}};
       },
       "spec.env"},
      {"env twice",
       [](json& o) {
         o["spec"]["env"].push_back({{"name", "A"}, {"value", "2"}});
       },
       "appears twice"},
      {"env name with =", [](json& o) { o["spec"]["env"][0]["name"] = "A=B"; }, "env"},
      {"bad cpu", [](json& o) { o["spec"]["resources"]["cpu"] = "lots"; }, "spec.resources.cpu"},
      {"unknown resource", [](json& o) { o["spec"]["resources"]["gpu"] = "1"; },
       "spec.resources.gpu"},
      {"bad nodeName", [](json& o) { o["spec"]["nodeName"] = "Node_1"; }, "node"},
      {"pinned not bool", [](json& o) { o["spec"]["pinned"] = "yes"; }, "spec.pinned"},
      {"no metadata", [](json& o) { o.erase("metadata"); }, "metadata"},
      {"no spec", [](json& o) { o.erase("spec"); }, "spec"},
  };
  for (const auto& c : cases) {
    json o = Counter();
    c.edit(o);
    auto r = DecodeMigratableWorkload(o);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), Code::kInvalid) << c.what;
    EXPECT_NE(r.status().message().find(c.message), std::string::npos)
        << c.what << ": " << r.status().message();
  }
}

TEST(KubeCodec, ConditionsKeepTheirTransitionTimeWhileUnchanged) {
  std::vector<Condition> now = {{"Running", "True", "Running", "on node1"}};
  json first = {{"conditions", MergeConditions(json::object(), now, 1, 1'000'000)}};
  EXPECT_EQ(first["conditions"][0]["lastTransitionTime"], FormatTime(1'000'000));
  EXPECT_EQ(first["conditions"][0]["observedGeneration"], 1);
  json same = MergeConditions(first, now, 1, 9'000'000);
  EXPECT_EQ(same, first["conditions"]);  // nothing changed: the same status, no write
  now[0].status = "False";
  json flipped = MergeConditions(first, now, 1, 9'000'000);
  EXPECT_EQ(flipped[0]["lastTransitionTime"], FormatTime(9'000'000));
  EXPECT_EQ(FormatTime(0), "1970-01-01T00:00:00Z");
}

TEST(KubeCodec, WorkloadStatusFromTheView) {
  api::WorkloadView v;
  v.workload.spec.name = "default-counter-1234abcd";
  v.workload.status.phase = api::WorkloadPhase::kRunning;
  v.workload.status.node = "node2";
  v.workload.status.epoch = 4;
  v.workload.status.migrations = {"m-1", "m-2"};
  v.workload.status.started_ms = 1'700'000'000'000;
  v.workload.status.restarts = 3;
  WorkloadStatusInput in{7, "default-counter-1234abcd", v, std::nullopt, ""};
  json s = MigratableWorkloadStatus(json::object(), in, 1'700'000'001'000);
  EXPECT_EQ(s["phase"], "Running");
  EXPECT_EQ(s["node"], "node2");
  EXPECT_EQ(s["epoch"], 4);
  EXPECT_EQ(s["migrations"], 2);
  EXPECT_EQ(s["restarts"], 3);  // the workload's status.restarts, mirrored
  EXPECT_EQ(s["workload"], "default-counter-1234abcd");
  EXPECT_EQ(s["observedGeneration"], 7);
  EXPECT_EQ(s["startTime"], "2023-11-14T22:13:20Z");
  std::map<std::string, std::string> conds;
  for (const auto& c : s["conditions"]) conds[c["type"]] = c["status"];
  EXPECT_EQ(
      conds,
      (std::map<std::string, std::string>{
          {"Accepted", "True"}, {"Placed", "True"}, {"Running", "True"}, {"Migrating", "False"}}));
  // The same input on the written status gives the same status: no rewrite.
  EXPECT_EQ(MigratableWorkloadStatus(s, in, 1'700'000'099'000), s);

  WorkloadStatusInput rejected{
      2, "w", std::nullopt, Condition{"Accepted", "False", "InvalidSpec", "spec.image: required"},
      ""};
  json r = MigratableWorkloadStatus(json::object(), rejected, 0);
  EXPECT_EQ(r["phase"], "Pending");
  EXPECT_EQ(r["message"], "spec.image: required");
  ASSERT_EQ(r["conditions"].size(), 1u);
  EXPECT_EQ(r["conditions"][0]["status"], "False");
  EXPECT_EQ(r["conditions"][0]["reason"], "InvalidSpec");
}

TEST(KubeCodec, MigrationBothWaysAndItsStatus) {
  MigrationSpec spec{"counter", "node2"};
  auto back = DecodeMigration(MigrationObject("default", "move-1", spec));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, spec);
  EXPECT_FALSE(DecodeMigration(MigrationObject("d", "x", {"Bad_Name", ""})).ok());
  EXPECT_FALSE(DecodeMigration(MigrationObject("d", "x", {"w", "not a node"})).ok());
  json extra = MigrationObject("d", "x", spec);
  extra["spec"]["mode"] = "fast";
  EXPECT_EQ(DecodeMigration(extra).status().code(), Code::kInvalid);

  api::Migration m;
  m.id = "m-0123456789abcdef";
  m.workload = "default-counter-1234abcd";
  m.source = "node1";
  m.target = "node2";
  m.phase = api::MigrationPhase::kSucceeded;
  m.reason = "cpu: node1 load 0.91 > node3 load 0.00 + 1.3 x 0.24";
  m.requested_by = "policy";
  m.created_ms = 1'000'000;
  m.finished_ms = 2'000'000;
  m.report = api::MigrationReport{};
  m.report->timings.downtime = 0.4517;  // shown rounded to the millisecond
  m.report->bytes = 33'554'432;
  json s = MigrationStatus(json::object(), 1, m, 3'000'000);
  EXPECT_EQ(s["phase"], "Succeeded");
  EXPECT_EQ(s["id"], m.id);
  EXPECT_EQ(s["sourceNode"], "node1");
  EXPECT_EQ(s["targetNode"], "node2");
  EXPECT_EQ(s["reason"], m.reason);
  EXPECT_DOUBLE_EQ(s["downtimeSeconds"].get<double>(), 0.452);
  EXPECT_EQ(s["bytes"], 33'554'432);
  EXPECT_EQ(s["completionTime"], FormatTime(2'000'000));
  std::map<std::string, std::string> conds;
  for (const auto& c : s["conditions"]) conds[c["type"]] = c["status"];
  EXPECT_EQ(conds, (std::map<std::string, std::string>{
                       {"Accepted", "True"}, {"Committed", "True"}, {"Succeeded", "True"}}));
  json object = {{"status", s}};
  EXPECT_TRUE(IsFinalMigrationStatus(object));
  m.phase = api::MigrationPhase::kTransferring;
  EXPECT_FALSE(IsFinalMigrationStatus({{"status", MigrationStatus(json::object(), 1, m, 0)}}));

  json mirror = MirrorMigrationObject(m, {"MigratableWorkload", "default", "counter", "u-1"});
  EXPECT_EQ(mirror["metadata"]["name"], m.id);
  EXPECT_EQ(mirror["metadata"]["namespace"], "default");
  EXPECT_EQ(mirror["metadata"]["labels"][kLabelRequestedBy], "balancer");
  EXPECT_EQ(mirror["metadata"]["labels"][kLabelWorkload], "counter");
  EXPECT_EQ(*DecodeMigration(mirror), (MigrationSpec{"counter", "node2"}));

  json refused = MigrationRefusedStatus(json::object(), 1, "Refused", "workload is pinned", 5'000);
  EXPECT_EQ(refused["phase"], "Failed");
  EXPECT_EQ(refused["completionTime"], FormatTime(5'000));
  EXPECT_EQ(MigrationRefusedStatus(refused, 1, "Refused", "workload is pinned", 99'000), refused);
}

TEST(KubeCodec, PolicyBothWaysAndSelectors) {
  json o = json::parse(R"({"metadata": {"name": "render"},
    "spec": {"selector": {"matchLabels": {"team": "render"},
                          "matchExpressions": [{"key": "tier", "operator": "In", "values": ["batch"]},
                                               {"key": "legacy", "operator": "DoesNotExist"}]},
             "enabled": true, "stabilityFactor": 1.5, "minResidencySeconds": 60,
             "maxMigrationsPerNode": 2, "maxMigrationsInCluster": 8,
             "lowMemoryFraction": 0.2, "memoryPsiThreshold": 30}})");
  auto p = DecodeMigrationPolicy(o);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->settings.stability, 1.5);
  EXPECT_EQ(p->settings.min_residency_ms, 60'000);
  EXPECT_EQ(p->settings.max_cluster, 8);
  EXPECT_EQ(p->selector.Terms(), 3u);
  EXPECT_TRUE(p->selector.Matches({{"team", "render"}, {"tier", "batch"}}));
  EXPECT_FALSE(p->selector.Matches({{"team", "render"}, {"tier", "web"}}));
  EXPECT_FALSE(p->selector.Matches({{"team", "render"}, {"tier", "batch"}, {"legacy", "1"}}));
  EXPECT_EQ(*DecodeMigrationPolicy(MigrationPolicyObject(*p)), *p);
  EXPECT_TRUE(LabelSelector{}.Matches({}));  // the empty selector matches everything

  json bad = o;
  bad["spec"]["stabilityFactor"] = 0.5;
  EXPECT_EQ(DecodeMigrationPolicy(bad).status().code(), Code::kInvalid);
  bad = o;
  bad["spec"]["maxMigrationsPerNode"] = 1e300;
  EXPECT_EQ(DecodeMigrationPolicy(bad).status().code(), Code::kInvalid);
  bad = o;
  bad["spec"]["selector"]["matchExpressions"][0]["operator"] = "Near";
  EXPECT_EQ(DecodeMigrationPolicy(bad).status().code(), Code::kInvalid);
}

// The limits the CRDs' schema has on top of api/validate.h, so the codec's
// verdict is the API server's (kube_crd_schema_test checks the two agree on a
// real server; these pin them where no server runs).
TEST(KubeCodec, SchemaLimitsAtAndPastEachBound) {
  auto mw = [](const std::function<void(json&)>& change) {
    json o = Counter();
    change(o);
    return DecodeMigratableWorkload(o).status();
  };
  EXPECT_TRUE(mw([](json& o) { o["metadata"]["name"] = std::string(63, 'a'); }).ok());
  EXPECT_FALSE(mw([](json& o) { o["metadata"]["name"] = std::string(64, 'a'); }).ok());
  EXPECT_FALSE(mw([](json& o) { o["metadata"]["name"] = "-a"; }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["command"] = {std::string(4096, 'x')}; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["command"] = {std::string(4097, 'x')}; }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["env"][0]["name"] = std::string(256, 'N'); }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["env"][0]["name"] = std::string(257, 'N'); }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["env"][0]["value"] = std::string(4096, 'v'); }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["env"][0]["value"] = std::string(4097, 'v'); }).ok());
  EXPECT_FALSE(mw([](json& o) {
                 json env = json::array();
                 for (int i = 0; i < 1025; ++i) env.push_back({{"name", "V" + std::to_string(i)}});
                 o["spec"]["env"] = env;
               }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["nodeName"] = ""; }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["resources"]["cpu"] = nullptr; }).ok());
  // int-or-string: integers and quantity strings; -0 is 0; exponents of 3 digits.
  EXPECT_TRUE(mw([](json& o) { o["spec"]["resources"]["cpu"] = 2; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["resources"]["cpu"] = 0.5; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["resources"]["cpu"] = 1.0; }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["resources"]["cpu"] = "-0"; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["resources"]["cpu"] = "-1m"; }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["resources"]["cpu"] = "1e003"; }).ok());
  EXPECT_TRUE(mw([](json& o) { o["spec"]["resources"]["cpu"] = "1e-999"; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["resources"]["cpu"] = "1e2147483647"; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["resources"]["cpu"] = "1e1.5"; }).ok());
  EXPECT_FALSE(mw([](json& o) { o["spec"]["resources"]["memory"] = std::string(65, '1'); }).ok());

  json mig = MigrationObject("default", "move", {"counter", "node2"});
  EXPECT_TRUE(DecodeMigration(mig).ok());
  mig["spec"]["targetNode"] = "";
  EXPECT_FALSE(DecodeMigration(mig).ok());
  mig["spec"]["targetNode"] = nullptr;  // the server drops nulls: the policy picks
  EXPECT_TRUE(DecodeMigration(mig).ok());
  mig["metadata"]["name"] = "a.b";
  EXPECT_FALSE(DecodeMigration(mig).ok());

  auto pol = [](const json& spec) {
    return DecodeMigrationPolicy({{"metadata", {{"name", "p"}}}, {"spec", spec}}).status();
  };
  EXPECT_TRUE(pol({{"stabilityFactor", 10}}).ok());
  EXPECT_FALSE(pol({{"stabilityFactor", 10.01}}).ok());
  EXPECT_TRUE(pol({{"minResidencySeconds", 86400}}).ok());
  EXPECT_FALSE(pol({{"minResidencySeconds", 86401}}).ok());
  EXPECT_FALSE(pol({{"minResidencySeconds", 1.5}}).ok());
  EXPECT_TRUE(pol({{"minResidencySeconds", 30.0}}).ok());
  EXPECT_FALSE(pol({{"maxMigrationsPerNode", 65}}).ok());
  EXPECT_FALSE(pol({{"maxMigrationsInCluster", 1025}}).ok());
  EXPECT_TRUE(pol({{"lowMemoryFraction", 0.9}}).ok());
  EXPECT_FALSE(pol({{"lowMemoryFraction", 0.91}}).ok());
  EXPECT_TRUE(pol({{"enabled", nullptr}, {"selector", nullptr}}).ok());
  EXPECT_FALSE(pol({{"selector", {{"match", 1}}}}).ok());
  EXPECT_FALSE(
      pol({{"selector",
            {{"matchExpressions", {{{"key", "a"}, {"operator", "Exists"}, {"values", {"x"}}}}}}}})
          .ok());
  EXPECT_FALSE(
      pol({{"selector", {{"matchExpressions", {{{"key", "a"}, {"operator", "In"}}}}}}}).ok());
  EXPECT_FALSE(
      pol({{"selector", {{"matchExpressions", {{{"key", ""}, {"operator", "Exists"}}}}}}}).ok());
  EXPECT_TRUE(pol({{"selector", {{"matchLabels", {{"app", nullptr}}}}}}).ok());
  EXPECT_FALSE(pol({{"selector", {{"matchLabels", {{"app", std::string(64, 'v')}}}}}}).ok());
}

// Issue 13, node loss: restartPolicy and checkpointIntervalSeconds in the
// spec, recovery and restoreCheckpoint in the status.
TEST(KubeCodec, RestartPolicyBothWaysAndItsRefusals) {
  json o = Counter();
  o["spec"]["restartPolicy"] = "FromCheckpoint";
  o["spec"]["checkpointIntervalSeconds"] = 60;
  auto spec = DecodeMigratableWorkload(o);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->restart_policy, api::RestartPolicy::kFromCheckpoint);
  EXPECT_EQ(spec->checkpoint_interval_seconds, 60);
  json back = MigratableWorkloadObject(*spec);
  EXPECT_EQ(back["spec"]["restartPolicy"], "FromCheckpoint");
  EXPECT_EQ(back["spec"]["checkpointIntervalSeconds"], 60);
  EXPECT_EQ(*DecodeMigratableWorkload(back), *spec);
  // The server reads 60.0 as 60.
  o["spec"]["checkpointIntervalSeconds"] = 60.0;
  ASSERT_TRUE(DecodeMigratableWorkload(o).ok());
  // Absent: Never (the CRD's default).
  auto plain = DecodeMigratableWorkload(Counter());
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->restart_policy, api::RestartPolicy::kNever);

  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    const char* message;
  };
  std::vector<Case> cases = {
      {"unknown policy", [](json& x) { x["spec"]["restartPolicy"] = "Always"; },
       "spec.restartPolicy"},
      {"policy not a string", [](json& x) { x["spec"]["restartPolicy"] = true; },
       "spec.restartPolicy"},
      {"FromCheckpoint without interval",
       [](json& x) { x["spec"]["restartPolicy"] = "FromCheckpoint"; }, "checkpointIntervalSeconds"},
      {"interval too short",
       [](json& x) {
         x["spec"]["restartPolicy"] = "FromCheckpoint";
         x["spec"]["checkpointIntervalSeconds"] = 9;
       },
       "checkpointIntervalSeconds"},
      {"interval too long",
       [](json& x) {
         x["spec"]["restartPolicy"] = "FromCheckpoint";
         x["spec"]["checkpointIntervalSeconds"] = 86401;
       },
       "spec.checkpointIntervalSeconds"},
      {"interval not integral",
       [](json& x) {
         x["spec"]["restartPolicy"] = "FromCheckpoint";
         x["spec"]["checkpointIntervalSeconds"] = 30.5;
       },
       "spec.checkpointIntervalSeconds"},
      {"interval without FromCheckpoint",
       [](json& x) {
         x["spec"]["restartPolicy"] = "FromImage";
         x["spec"]["checkpointIntervalSeconds"] = 30;
       },
       "checkpointIntervalSeconds"},
  };
  for (const auto& c : cases) {
    json x = Counter();
    c.edit(x);
    auto r = DecodeMigratableWorkload(x);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), Code::kInvalid) << c.what;
    EXPECT_NE(r.status().message().find(c.message), std::string::npos)
        << c.what << ": " << r.status().message();
  }
}

TEST(KubeCodec, WorkloadStatusShowsTheLastRecovery) {
  api::WorkloadView v;
  v.workload.spec.name = "w";
  v.workload.status.phase = api::WorkloadPhase::kScheduled;
  v.workload.status.node = "node3";
  v.workload.status.restore_checkpoint = "c-4";
  v.workload.status.recovery =
      api::Recovery{api::RestartPolicy::kFromCheckpoint, "node1", 1000, 17000, "c-4", 400, 600, 1};
  WorkloadStatusInput in{1, "w", v, std::nullopt, ""};
  json s = MigratableWorkloadStatus(json::object(), in, 20000);
  EXPECT_EQ(s["restoreCheckpoint"], "c-4");
  EXPECT_EQ(s["recovery"], json::parse(R"({"policy":"FromCheckpoint","lostNode":"node1",
      "lostMs":1000,"restartedMs":17000,"checkpoint":"c-4","checkpointTakenMs":400,
      "progressLostMs":600,"count":1})"));
  v.workload.status.recovery.reset();
  v.workload.status.restore_checkpoint.clear();
  in.view = v;
  json none = MigratableWorkloadStatus(json::object(), in, 20000);
  EXPECT_FALSE(none.contains("recovery"));
  EXPECT_FALSE(none.contains("restoreCheckpoint"));
}

// Issue 13, "Also": a Migration object's status says which fault the
// migration met and, once it ended, how and who decided.
TEST(MigrationCodecTest, StatusNamesTheFaultAndTheResolution) {
  api::Migration m;
  m.id = "m-0123456789abcdef";
  m.workload = "default-counter-1234abcd";
  m.source = "node1";
  m.target = "node2";
  m.phase = api::MigrationPhase::kResolving;
  m.fault = api::MakeFault(api::FaultKind::kTargetUnreachable, api::MigrationPhase::kCommitting,
                           "node2", "commit: connection reset", 1'500'000);
  m.resolution = std::nullopt;
  json s = MigrationStatus(json::object(), 1, m, 1'600'000);
  EXPECT_EQ(s["fault"], json({{"kind", "TargetUnreachable"},
                              {"phase", "Committing"},
                              {"node", "node2"},
                              {"message", "commit: connection reset"}}));
  EXPECT_FALSE(s.contains("resolution"));
  m.phase = api::MigrationPhase::kSucceeded;
  m.finished_ms = 1'700'000;
  m.resolution =
      api::MigrationResolution{api::MigrationOutcome::kCommitted, api::Decider::kTarget, 1'700'000};
  s = MigrationStatus(s, 1, m, 1'800'000);
  EXPECT_EQ(s["resolution"], json({{"outcome", "Committed"}, {"decidedBy", "Target"}}));
  // A fault of the cluster has no node; none met, no fault.
  m.fault =
      api::MakeFault(api::FaultKind::kCancelled, api::MigrationPhase::kTransferring, "", "", 1);
  s = MigrationStatus(json::object(), 1, m, 0);
  EXPECT_EQ(s["fault"], json({{"kind", "Cancelled"}, {"phase", "Transferring"}}));
  m.fault.reset();
  EXPECT_FALSE(MigrationStatus(json::object(), 1, m, 0).contains("fault"));
}

}  // namespace
}  // namespace kmosix::bridge
