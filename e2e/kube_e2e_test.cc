// The Kubernetes face end to end: a local cluster with a real kube-apiserver
// (scripts/cluster up --kube: three namespace nodes with containerd, runc,
// CRIU and an agent each, etcd, two leader-elected controllers mirroring the
// kmosix.io objects). Everything a user does goes through kubectl; the tests
// check the outcome both in Kubernetes and where the workload really runs
// (the agents and containerd), and that the demo's state survived each move.
// Fault injection (agent failpoints, killing the leader, restarting the API
// server) uses the harness, as an operator's accident would.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>

#include "cluster.h"
#include "e2e_environment.h"

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

const std::vector<std::string> kLight = {"--mem", "16", "--verify-mib", "4"};
const std::vector<std::string> kCpuBound = {"--mem", "128",           "--verify-mib",
                                            "0",     "--interval-ms", "1"};
constexpr milliseconds kRunning{90'000};
constexpr milliseconds kMigration{120'000};

std::string Yaml(const json& j) { return j.dump(); }  // kubectl reads JSON as YAML

json WorkloadObject(const std::string& name, const std::vector<std::string>& args,
                    const std::string& node = "") {
  json command = json::array({"/bin/kmosix-demo"});
  for (const auto& a : args) command.push_back(a);
  json spec = {{"image", Cluster::kDemoImage}, {"command", command}};
  if (!node.empty()) spec["nodeName"] = node;
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "MigratableWorkload"},
          {"metadata", {{"name", name}, {"namespace", "default"}}},
          {"spec", spec}};
}

json MigrationObject(const std::string& name, const std::string& workload,
                     const std::string& target) {
  json spec = {{"workload", workload}};
  if (!target.empty()) spec["targetNode"] = target;
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "Migration"},
          {"metadata", {{"name", name}, {"namespace", "default"}}},
          {"spec", spec}};
}

class KubeE2E : public ::testing::Test {
 protected:
  void SetUp() override { c_ = ClusterForTest(); }

  CommandResult Kubectl(const std::string& args, const std::string& in = "") {
    return c_->Kubectl(args, in);
  }
  void Apply(const json& object) {
    auto r = Kubectl("apply -f -", Yaml(object));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  // The object as JSON (null when kubectl cannot get it).
  json Get(const std::string& kind, const std::string& name) {
    auto r = Kubectl("get " + kind + " " + ShellQuote(name) + " -n default -o json");
    if (r.exit_code != 0) return json();
    json j = json::parse(r.output, nullptr, false);
    return j.is_discarded() ? json() : j;
  }
  static std::string S(const json& o, const std::string& field) {
    if (!o.is_object() || !o.contains("status") || !o["status"].contains(field)) return "";
    const json& v = o["status"][field];
    return v.is_string() ? v.get<std::string>() : v.dump();
  }
  static std::string Cond(const json& o, const std::string& type) {
    if (!o.is_object() || !o.contains("status")) return "";
    for (const auto& c : o["status"].value("conditions", json::array()))
      if (c.value("type", "") == type) return c.value("status", "") + "/" + c.value("reason", "");
    return "";
  }
  // Waits until `kind/name` has status.field == want; returns the object.
  json AwaitStatus(const std::string& kind, const std::string& name, const std::string& field,
                   const std::string& want, milliseconds timeout) {
    json last;
    auto r = WaitFor(kind + " " + name + " status." + field + " == " + want, timeout,
                     [&]() -> Observation {
                       last = Get(kind, name);
                       return {S(last, field) == want, field + "=" + S(last, field)};
                     });
    EXPECT_TRUE(r.ok) << r.message << "\n"
                      << last.dump() << "\n"
                      << c_->ControllerLogTail(c_->controller(1), 20);
    return last;
  }
  bool Gone(const std::string& kind, const std::string& name) {
    auto r = Kubectl("get " + kind + " " + ShellQuote(name) + " -n default -o name");
    return r.exit_code != 0 && r.output.find("NotFound") != std::string::npos;
  }
  const Node& NodeNamed(const std::string& name) {
    for (const auto& n : c_->Nodes())
      if (n.name == name) return n;
    return c_->node(1);
  }
  const Endpoint& Api() { return c_->controller(1); }
  // A running demo MigratableWorkload; returns its kmosix name.
  std::string StartWorkload(const std::string& name, const std::vector<std::string>& args,
                            const std::string& node) {
    Apply(WorkloadObject(name, args, node));
    json o = AwaitStatus("mw", name, "phase", "Running", kRunning);
    EXPECT_EQ(S(o, "node"), node);
    const std::string wname = S(o, "workload");
    EXPECT_FALSE(wname.empty()) << o.dump();
    auto ticks = WaitForTickAt(Api(), wname, 5, kRunning);
    EXPECT_TRUE(ticks.ok) << ticks.message;
    return wname;
  }
  uint64_t LastTick(const std::string& wname) {
    std::string err;
    auto log = FetchLogFrom(Api(), wname, &err);
    return log && !log->ticks.empty() ? log->ticks.back().tick : 0;
  }
  // The demo's state went on where it left off: consecutive ticks, memory intact.
  void CheckCounter(const std::string& wname, uint64_t before) {
    auto more = WaitForTickAt(Api(), wname, before + 10, kRunning);
    ASSERT_TRUE(more.ok) << more.message;
    std::string err;
    auto log = FetchLogFrom(Api(), wname, &err);
    ASSERT_TRUE(log) << err;
    EXPECT_EQ(CheckConsecutive(log->ticks), "");
    EXPECT_EQ(log->corruption_lines, 0);
    EXPECT_EQ(log->start_lines, 1) << "the workload restarted instead of moving";
    for (const auto& t : log->ticks) EXPECT_EQ(t.mem_ok, 1) << "tick " << t.tick;
  }
  void Delete(const std::string& kind, const std::string& name) {
    auto r = Kubectl("delete " + kind + " " + ShellQuote(name) + " -n default --wait=false");
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }

  Cluster* c_ = nullptr;
};

TEST_F(KubeE2E, AppliedWorkloadRunsOnItsNodeAndShowsInKubectl) {
  const std::string wname = StartWorkload("counter", kLight, "node1");
  EXPECT_EQ(CheckRunsExactlyOn(*c_, wname, NodeNamed("node1")), "");
  json o = Get("mw", "counter");
  EXPECT_EQ(Cond(o, "Accepted"), "True/Accepted");
  EXPECT_EQ(Cond(o, "Placed"), "True/Placed");
  EXPECT_EQ(Cond(o, "Running"), "True/Running");
  EXPECT_EQ(S(o, "observedGeneration"), o["metadata"]["generation"].dump());
  auto table = Kubectl("get mw counter -n default");
  EXPECT_NE(table.output.find("node1"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("Running"), std::string::npos) << table.output;
  std::cout << "$ kubectl get mw\n" << table.output;
  // Both kinds of workload show in the REST API; this one under its kmosix name.
  std::string err;
  auto w = GetObject(Api(), "/v1/workloads/" + wname, &err);
  ASSERT_TRUE(w) << err;
  auto describe = Kubectl("describe mw counter -n default");
  EXPECT_NE(describe.output.find("Placed"), std::string::npos) << describe.output;
}

TEST_F(KubeE2E, MigrationObjectMovesTheWorkloadWithItsStateIntact) {
  const std::string wname = StartWorkload("mover", kLight, "node1");
  const uint64_t before = LastTick(wname);
  Apply(MigrationObject("mover-to-node2", "mover", "node2"));
  json m = AwaitStatus("mig", "mover-to-node2", "phase", "Succeeded", kMigration);
  EXPECT_EQ(S(m, "sourceNode"), "node1");
  EXPECT_EQ(S(m, "targetNode"), "node2");
  EXPECT_GT(std::stod(S(m, "downtimeSeconds").empty() ? "0" : S(m, "downtimeSeconds")), 0.0)
      << m.dump();
  EXPECT_EQ(Cond(m, "Succeeded"), "True/Succeeded");
  EXPECT_EQ(m["metadata"]["labels"].value("kmosix.io/requested-by", ""), "user");
  json o = AwaitStatus("mw", "mover", "node", "node2", kRunning);
  EXPECT_EQ(S(o, "migrations"), "1");
  EXPECT_EQ(CheckRunsExactlyOn(*c_, wname, NodeNamed("node2")), "");
  CheckCounter(wname, before);
  std::cout << "$ kubectl get mig\n" << Kubectl("get mig -n default").output;
  // The migration is the REST one too, ordered once.
  std::string err;
  auto rest = GetObject(Api(), "/v1/migrations/" + S(m, "id"), &err);
  ASSERT_TRUE(rest) << err;
  EXPECT_EQ((*rest)["phase"], "Succeeded");
}

TEST_F(KubeE2E, DeletingAMigrationHeldBeforeCommitRollsItBack) {
  const std::string wname = StartWorkload("held", kLight, "node3");
  const Node& source = NodeNamed("node3");
  auto armed = HttpPut(source, "/v1/debug/failpoints/restore.hang", "{}");
  ASSERT_EQ(armed.status, 200) << armed.Describe();
  struct Disarm {
    Endpoint agent;
    ~Disarm() { (void)HttpDelete(agent, "/v1/debug/failpoints/restore.hang"); }
  } disarm{source};
  const uint64_t before = LastTick(wname);
  Apply(MigrationObject("held-move", "held", "node2"));
  AwaitStatus("mig", "held-move", "phase", "Restoring", kMigration);
  Delete("mig", "held-move");
  // The finalizer holds the object until the source has rolled back.
  auto cancelled = WaitFor(
      "the cancel to reach the migration record", milliseconds(30'000), [&]() -> Observation {
        std::string err;
        auto ms = GetItems(Api(), "/v1/migrations", &err);
        if (!ms) return {false, err};
        for (const auto& m : *ms)
          if (m.value("workload", "") == wname && m.value("cancelRequestedMs", int64_t{0}) > 0)
            return {true, ""};
        return {false, "no cancel yet"};
      });
  ASSERT_TRUE(cancelled.ok) << cancelled.message;
  EXPECT_FALSE(Gone("mig", "held-move")) << "deleted before the rollback ended";
  (void)HttpDelete(source, "/v1/debug/failpoints/restore.hang");
  auto gone = WaitFor("the Migration object to go", kMigration, [&]() -> Observation {
    return {Gone("mig", "held-move"), "still there"};
  });
  ASSERT_TRUE(gone.ok) << gone.message;
  AwaitStatus("mw", "held", "phase", "Running", kRunning);
  EXPECT_EQ(S(Get("mw", "held"), "node"), "node3");
  EXPECT_EQ(CheckRunsExactlyOn(*c_, wname, source), "");
  CheckCounter(wname, before);
}

TEST_F(KubeE2E, InvalidObjectsAreRefusedAndDeeperErrorsAreAcceptedFalse) {
  json bad = WorkloadObject("bad", kLight);
  bad["spec"].erase("image");
  auto r = Kubectl("apply -f -", Yaml(bad));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("spec.image"), std::string::npos) << r.output;
  bad = WorkloadObject("bad", kLight);
  bad["spec"]["replicas"] = 3;
  r = Kubectl("apply -f -", Yaml(bad));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("unknown field"), std::string::npos) << r.output;
  EXPECT_TRUE(Gone("mw", "bad"));

  // Passes the schema, names no node: Accepted=False, nothing runs.
  Apply(WorkloadObject("nowhere", kLight, "node9"));
  auto refused =
      WaitFor("Accepted=False on mw nowhere", milliseconds(30'000), [&]() -> Observation {
        const std::string c = Cond(Get("mw", "nowhere"), "Accepted");
        return {c.rfind("False/", 0) == 0, c};
      });
  ASSERT_TRUE(refused.ok) << refused.message;
  const std::string wname = S(Get("mw", "nowhere"), "workload");
  EXPECT_EQ(HttpGet(Api(), "/v1/workloads/" + wname).status, 404);
  Delete("mw", "nowhere");
  auto gone = WaitFor("mw nowhere to go", milliseconds(30'000), [&]() -> Observation {
    return {Gone("mw", "nowhere"), "still there"};
  });
  EXPECT_TRUE(gone.ok) << gone.message;

  // An image no node holds (the agents publish what their containerd has).
  json imageless = WorkloadObject("imageless", kLight);
  imageless["spec"]["image"] = "kmosix.invalid/no-such-image:1";
  Apply(imageless);
  auto no_image =
      WaitFor("Accepted=False on mw imageless", milliseconds(30'000), [&]() -> Observation {
        const std::string c = Cond(Get("mw", "imageless"), "Accepted");
        return {c == "False/ImageNotFound", c};
      });
  ASSERT_TRUE(no_image.ok) << no_image.message;
  EXPECT_EQ(HttpGet(Api(), "/v1/workloads/" + S(Get("mw", "imageless"), "workload")).status, 404);
  Delete("mw", "imageless");
}

TEST_F(KubeE2E, DeletingAWorkloadStopsItEverywhere) {
  const std::string wname = StartWorkload("doomed", kLight, "node2");
  Delete("mw", "doomed");
  auto gone = WaitFor("mw doomed to go", kRunning, [&]() -> Observation {
    return {Gone("mw", "doomed"), "still there"};
  });
  ASSERT_TRUE(gone.ok) << gone.message;
  EXPECT_EQ(CheckGoneEverywhere(*c_, wname), "");
  EXPECT_EQ(HttpGet(Api(), "/v1/workloads/" + wname).status, 404);
}

TEST_F(KubeE2E, MigrationsKmosixOrdersShowAsMigrationObjects) {
  const std::string wname = StartWorkload("scheduled", kLight, "node1");
  // A scheduler orders a move through the REST API.
  auto r = HttpPost(Api(), "/v1/migrations", {{"workload", wname}, {"target", "node3"}});
  ASSERT_EQ(r.status, 201) << r.Describe();
  const std::string id = r.Json().value("id", "");
  json m = AwaitStatus("mig", id, "phase", "Succeeded", kMigration);
  EXPECT_EQ(m["metadata"]["labels"].value("kmosix.io/requested-by", ""), "api");
  EXPECT_EQ(m["spec"].value("workload", ""), "scheduled");

  // The balancer relieves a hot spot; its moves appear with their reasons.
  for (int i = 1; i <= 4; ++i)
    Apply(WorkloadObject("hot-" + std::to_string(i), kCpuBound, "node2"));
  std::string seen;
  auto relieved = WaitFor(
      "a balancer Migration object", milliseconds(240'000),
      [&]() -> Observation {
        auto l = Kubectl("get mig -n default -l kmosix.io/requested-by=balancer -o json");
        json j = json::parse(l.output, nullptr, false);
        if (j.is_discarded() || !j.contains("items") || j["items"].empty())
          return {false, l.output};
        seen = j["items"][0].dump();
        return {true, ""};
      },
      milliseconds(1000));
  ASSERT_TRUE(relieved.ok) << relieved.message;
  json b = json::parse(seen);
  EXPECT_NE(b["status"].value("reason", "").find("cpu:"), std::string::npos) << seen;
  std::cout << "$ kubectl get mig -l kmosix.io/requested-by=balancer\n"
            << Kubectl("get mig -n default -l kmosix.io/requested-by=balancer").output;
  for (int i = 1; i <= 4; ++i) Delete("mw", "hot-" + std::to_string(i));
}

TEST_F(KubeE2E, LeaderKilledAndApiServerRestartedLoseNothingAndDuplicateNothing) {
  std::string why;
  const ControllerProc* leader = c_->Leader(&why);
  ASSERT_NE(leader, nullptr) << why;
  const int leader_index = leader->index;
  for (int i = 1; i <= 3; ++i)
    Apply(WorkloadObject("survivor-" + std::to_string(i), kLight, "node" + std::to_string(i)));
  // Mid-run: the leader dies and the API server restarts.
  ASSERT_EQ(c_->KillController(leader_index), "");
  ASSERT_EQ(c_->RestartApiserver(), "");
  struct Restart {
    Cluster* c;
    int i;
    ~Restart() { (void)c->StartController(i); }
  } restart{c_, leader_index};
  for (int i = 1; i <= 3; ++i) {
    const std::string name = "survivor-" + std::to_string(i);
    json o = AwaitStatus("mw", name, "phase", "Running", milliseconds(120'000));
    const std::string wname = S(o, "workload");
    EXPECT_EQ(CheckRunsExactlyOn(*c_, wname, NodeNamed("node" + std::to_string(i))), "") << name;
  }
  // Exactly one kmosix workload per object (and each runs on one node, above).
  std::string err;
  auto items = GetItems(c_->controller(leader_index == 1 ? 2 : 1), "/v1/workloads", &err);
  ASSERT_TRUE(items) << err;
  int survivors = 0;
  for (const auto& w : *items) survivors += w.value("name", "").rfind("default-survivor-", 0) == 0;
  EXPECT_EQ(survivors, 3);
}

}  // namespace
}  // namespace kmosix::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kmosix::e2e::ClusterOptions opts;
  opts.nodes = 3;
  opts.etcd = true;
  opts.controllers = 2;
  opts.kube = true;
  opts.controller_args = {"--min-residency", "5"};
  opts.agent_args = {"--enable-failpoints"};
  opts.node_cpus = 1;
  opts.node_memory_mib = 2048;
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
