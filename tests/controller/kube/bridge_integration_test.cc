// The Kubernetes bridge (controller/kube/bridge.h) against a REAL
// kube-apiserver 1.37 with the project's CRDs (tests/support/
// private_kube_apiserver.h) and a REAL etcd for kmosix's state (PrivateEtcd +
// EtcdStateStore): a Controller and its Bridge with an HttpClient from the
// apiserver's admin credentials, as kmosix-controller --kubeconfig runs them.
// The test plays the agents (node records under a lease, a workload running,
// a migration's source finishing or rolling back: the records an agent
// writes) and the user, through kubectl where a user would act:
//  - apply a MigratableWorkload: `kubectl get mw` shows it Running on its
//    node with its conditions; `kubectl describe mw` shows the bridge's Events;
//  - apply a Migration: ordered once, Succeeded with its downtime once the
//    source finished;
//  - delete a Migration before its commit point: cancel requested in etcd,
//    rolled back, the object gone;
//  - invalid objects refused by the API server (nothing reaches kmosix); a
//    nodeName that is no node: Accepted=False and nothing runs;
//  - delete the MigratableWorkload: the record goes, the object waits for
//    the node to stop reporting it, then goes;
//  - the API server restarted mid-run, then the controller+bridge replaced
//    by a new replica (the old one stopped as if killed): nothing duplicated
//    (one etcd record per MigratableWorkload, one migration per Migration
//    object), nothing lost, no status stuck;
//  - a quiet world: no status writes over several resyncs (a counting
//    decorator around the client).
// One API server per test binary; each test has its own etcd, namespace and
// replicas. Skipped loudly without the kube binaries or etcd.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/records.h"
#include "controller/controller.h"
#include "controller/kube/agent_records.h"
#include "controller/kube/bridge.h"
#include "controller/kube/codec.h"
#include "etcd/etcd_state_store.h"
#include "kmosix/clock.h"
#include "kube/client.h"
#include "kube/http_client.h"
#include "support/private_kube_apiserver.h"

namespace kmosix::bridge {
namespace {

using kmosix::testing::PrivateEtcd;
using kmosix::testing::PrivateKubeApiserver;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

const kube::Resource kMW = kube::MigratableWorkloads();
const kube::Resource kMig = kube::Migrations();

// Counts the bridge's calls by kind; forwards everything.
class CountingClient final : public kube::Client {
 public:
  explicit CountingClient(kube::Client& inner) : inner_(inner) {}
  std::atomic<int> status_writes{0};
  std::atomic<int> writes{0};  // Create, Update, MergePatch, Delete (Events included)

  StatusOr<kube::ObjectList> List(const kube::Resource& r, const std::string& ns,
                                  const kube::ListOptions& o) override {
    return inner_.List(r, ns, o);
  }
  Status Watch(const kube::Resource& r, const std::string& ns, const std::string& rv,
               const kube::ListOptions& o, const kube::WatchHandler& h,
               const std::atomic<bool>& stop) override {
    return inner_.Watch(r, ns, rv, o, h, stop);
  }
  StatusOr<json> Get(const kube::Resource& r, const std::string& ns,
                     const std::string& name) override {
    return inner_.Get(r, ns, name);
  }
  StatusOr<json> Create(const kube::Resource& r, const std::string& ns, const json& o) override {
    ++writes;
    return inner_.Create(r, ns, o);
  }
  StatusOr<json> Update(const kube::Resource& r, const std::string& ns, const json& o) override {
    ++writes;
    return inner_.Update(r, ns, o);
  }
  StatusOr<json> UpdateStatus(const kube::Resource& r, const std::string& ns,
                              const json& o) override {
    ++status_writes;
    return inner_.UpdateStatus(r, ns, o);
  }
  StatusOr<json> MergePatch(const kube::Resource& r, const std::string& ns, const std::string& name,
                            const json& patch) override {
    ++writes;
    return inner_.MergePatch(r, ns, name, patch);
  }
  Status Delete(const kube::Resource& r, const std::string& ns, const std::string& name,
                const std::string& uid) override {
    ++writes;
    return inner_.Delete(r, ns, name, uid);
  }

 private:
  kube::Client& inner_;
};

bool Eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds timeout = seconds(30)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(100));
  }
  return pred();
}

// A controller replica and its bridge, as kmosix-controller runs them.
struct Replica {
  std::unique_ptr<kube::HttpClient> http;
  std::unique_ptr<CountingClient> client;
  std::unique_ptr<controller::Controller> controller;
  std::unique_ptr<Bridge> bridge;  // after controller: destroyed first
  void Kill() {
    if (bridge) bridge->Stop();
    if (controller) controller->Stop();
  }
};

class BridgeIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_ = kmosix::testing::KubeApiserverSkipReason();
    if (!skip_.empty()) return;
    api_ = new PrivateKubeApiserver();
    if (!api_->Start()) {
      start_error_ = "kube-apiserver did not start: " + api_->error();
      return;
    }
    const std::string crd = kmosix::testing::KubeRepoRoot() + "/crd/";
    for (const char* f : {"kmosix.io_migratableworkloads.yaml", "kmosix.io_migrations.yaml",
                          "kmosix.io_migrationpolicies.yaml"}) {
      if (!api_->ApplyCrds(crd + f)) {
        start_error_ = api_->error() + " (see " + api_->dir() + "/kubectl.log)";
        return;
      }
    }
  }
  static void TearDownTestSuite() {
    delete api_;
    api_ = nullptr;
  }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: " << skip_;
    ASSERT_TRUE(start_error_.empty()) << start_error_;
    ASSERT_TRUE(etcd_.Start()) << "etcd did not start: " << etcd_.dir() << "/etcd.log";
    store_ = std::make_unique<EtcdStateStore>(kmosix::testing::TestEtcdConfig(etcd_.endpoint()));
    auto c = kube::HttpClient::New(api_->AdminConfig(), clock_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    observer_ = std::move(*c);
    ns_ = std::string("it-") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (auto& ch : ns_) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (ns_.size() > 63) ns_.resize(63);
    // Discovery of new CRDs lags Established a little; kubectl needs it.
    ASSERT_TRUE(Eventually([&] { return api_->Kubectl({"get", "mw,mig,mpol", "-A"}) == 0; }));
    std::string out;
    ASSERT_EQ(Kubectl({"create", "namespace", ns_}, &out), 0) << out;
  }

  void TearDown() override {
    for (auto& r : replicas_) r->Kill();
    // Let go of what this test left (finalizers included), so the next
    // test's bridge does not adopt it.
    if (observer_) {
      for (const auto& r : {kMig, kMW}) {
        auto l = observer_->List(r, ns_, {});
        if (!l.ok()) continue;
        for (const json& o : l->items) {
          const std::string name = o["metadata"].value("name", "");
          (void)observer_->MergePatch(r, ns_, name, {{"metadata", {{"finalizers", nullptr}}}});
          (void)observer_->Delete(r, ns_, name, "");
        }
      }
    }
    if (observer_) {
      for (const auto& name : policies_) {
        (void)observer_->Delete(kube::MigrationPolicies(), "", name, "");
      }
    }
    replicas_.clear();
  }

  Replica& StartReplica(const std::string& id) {
    auto r = std::make_unique<Replica>();
    kube::HttpClient::Options ho;
    ho.watch_timeout_seconds = 60;
    auto http = kube::HttpClient::New(api_->AdminConfig(), clock_, ho);
    EXPECT_TRUE(http.ok()) << http.status().ToString();
    r->http = std::move(*http);
    r->client = std::make_unique<CountingClient>(*r->http);
    controller::ControllerOptions o;
    o.identity = id;
    o.balance = false;  // the tests order every move
    o.balance_interval = milliseconds(200);
    o.leader_ttl = seconds(2);
    o.order_timeout = seconds(120);
    o.source_lost_grace = seconds(30);
    r->controller = std::make_unique<controller::Controller>(*store_, clock_, random_, o, nullptr);
    BridgeOptions bo;
    bo.identity = id;
    bo.resync = milliseconds(500);
    bo.wait_poll = milliseconds(200);
    r->bridge = std::make_unique<Bridge>(*r->client, *r->controller, clock_, random_, bo);
    r->bridge->Start();
    r->controller->Start();
    replicas_.push_back(std::move(r));
    return *replicas_.back();
  }

  // kubectl with the admin kubeconfig; stdout and stderr into `out`.
  int Kubectl(const std::vector<std::string>& args, std::string* out = nullptr) {
    const std::string kubectl = kmosix::testing::FindKubeTool("KMX_KUBECTL_BIN", "kubectl");
    std::string cmd = kmosix::testing::KubeShellQuote(kubectl) +
                      " --request-timeout=30s --kubeconfig=" +
                      kmosix::testing::KubeShellQuote(api_->kubeconfig());
    for (const auto& a : args) cmd += " " + kmosix::testing::KubeShellQuote(a);
    const std::string file = api_->dir() + "/it-kubectl.out";
    cmd += " >" + kmosix::testing::KubeShellQuote(file) + " 2>&1";
    int rc = std::system(cmd.c_str());
    if (out) *out = kmosix::testing::KubeReadFile(file);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
  }
  // `kubectl apply -n <ns> -f <object as a file>`.
  int KubectlApply(const json& object, std::string* out = nullptr) {
    const std::string file = api_->dir() + "/it-apply.json";
    std::ofstream(file) << object.dump(2);
    return Kubectl({"apply", "-n", ns_, "-f", file}, out);
  }
  std::string Jsonpath(const std::string& kind, const std::string& name, const std::string& path) {
    std::string out;
    if (Kubectl({"get", "-n", ns_, kind, name, "-o", "jsonpath=" + path}, &out) != 0) return "";
    return out;
  }

  std::optional<json> Object(const kube::Resource& r, const std::string& name) {
    auto got = observer_->Get(r, ns_, name);
    if (!got.ok()) return std::nullopt;
    return *got;
  }
  std::string StatusField(const kube::Resource& r, const std::string& name,
                          const std::string& field) {
    auto o = Object(r, name);
    if (!o || !o->contains("status") || !(*o)["status"].contains(field)) return "";
    const json& v = (*o)["status"][field];
    return v.is_string() ? v.get<std::string>() : v.dump();
  }

  // ---- the agents' part: records in etcd --------------------------------------

  int64_t PublishNode(const std::string& name, std::map<std::string, api::WorkloadUsage> usage = {},
                      int64_t lease = 0) {
    if (lease == 0) {
      auto grant = store_->GrantLease(seconds(600));  // outlives the test
      EXPECT_TRUE(grant.ok()) << grant.status().ToString();
      lease = grant.ok() ? grant->id : 0;
    }
    api::NodeLoad n;
    n.node = name;
    n.url = "http://" + name + ":7700";
    n.load_source = "cgroup";
    n.cpu_capacity = 4;
    n.cpu_used = 0.1;
    n.memory_capacity_bytes = 8ULL << 30;
    n.memory_available_bytes = 6ULL << 30;
    n.workloads = std::move(usage);
    n.updated_ms = clock_.WallMillis();
    PutOptions po;
    po.lease = lease;
    auto put = store_->Put(keys_.Node(name), cluster::NodeLoadToJson(n).dump(), po);
    EXPECT_TRUE(put.ok()) << put.status().ToString();
    return lease;
  }
  std::optional<api::Workload> WorkloadRecord(const std::string& name) {
    auto got = store_->Get(keys_.Workload(name));
    if (!got.ok() || !got->kv) return std::nullopt;
    auto w = cluster::ParseRecord<api::Workload>(got->kv->value, &cluster::WorkloadFromJson);
    if (!w.ok()) return std::nullopt;
    return *w;
  }
  std::vector<api::Workload> WorkloadRecords() {
    std::vector<api::Workload> out;
    auto list = store_->List(keys_.Workloads());
    if (!list.ok()) return out;
    for (const auto& kv : list->kvs) {
      auto w = cluster::ParseRecord<api::Workload>(kv.value, &cluster::WorkloadFromJson);
      if (w.ok()) out.push_back(*w);
    }
    return out;
  }
  std::vector<api::Migration> MigrationRecords() {
    std::vector<api::Migration> out;
    auto list = store_->List(keys_.Migrations());
    if (!list.ok()) return out;
    for (const auto& kv : list->kvs) {
      auto m = cluster::ParseRecord<api::Migration>(kv.value, &cluster::MigrationFromJson);
      if (m.ok()) out.push_back(*m);
    }
    return out;
  }
  std::optional<api::Migration> MigrationRecord(const std::string& id) {
    for (auto& m : MigrationRecords())
      if (m.id == id) return m;
    return std::nullopt;
  }
  void PutWorkload(const api::Workload& w) {
    ASSERT_TRUE(store_->Put(keys_.Workload(w.spec.name), cluster::WorkloadToJson(w).dump()).ok());
  }
  void PutMigration(const api::Migration& m) {
    ASSERT_TRUE(store_->Put(keys_.Migration(m.id), cluster::MigrationToJson(m).dump()).ok());
  }

  // The owner agent runs the workload once the controller placed it.
  void RunWhenScheduled(const std::string& wname) {
    ASSERT_TRUE(Eventually([&] {
      auto w = WorkloadRecord(wname);
      return w && !w->status.node.empty();
    })) << wname
        << " never scheduled";
    auto w = WorkloadRecord(wname);
    ASSERT_TRUE(w);
    w->status.phase = api::WorkloadPhase::kRunning;
    w->status.started_ms = clock_.WallMillis();
    PutWorkload(*w);
  }
  // The source agent finished migration `id`: ownership moved to the target.
  void Succeed(const std::string& id, double downtime = 0.452) {
    auto m = MigrationRecord(id);
    ASSERT_TRUE(m) << "no migration " << id;
    auto w = WorkloadRecord(m->workload);
    ASSERT_TRUE(w);
    kmosix::testing::SucceedRecords(*w, *m, clock_.WallMillis(), downtime);
    PutWorkload(*w);
    PutMigration(*m);
  }
  // The source agent saw the cancel before the commit point and rolled back.
  void RollBack(const std::string& id) {
    auto m = MigrationRecord(id);
    ASSERT_TRUE(m);
    auto w = WorkloadRecord(m->workload);
    ASSERT_TRUE(w);
    kmosix::testing::RollBackRecords(*w, *m, clock_.WallMillis());
    PutMigration(*m);
    PutWorkload(*w);
  }

  static json Workload(const std::string& name, const std::string& node = "") {
    json spec = {{"image", "kmosix.local/demo:latest"},
                 {"command", {"/bin/kmosix-demo", "--mem", "64"}},
                 {"resources", {{"cpu", "250m"}, {"memory", "64Mi"}}}};
    if (!node.empty()) spec["nodeName"] = node;
    return {{"apiVersion", "kmosix.io/v1alpha1"},
            {"kind", "MigratableWorkload"},
            {"metadata", {{"name", name}, {"labels", {{"team", "render"}}}}},
            {"spec", spec}};
  }
  static json Migration(const std::string& name, const std::string& workload,
                        const std::string& target) {
    return {{"apiVersion", "kmosix.io/v1alpha1"},
            {"kind", "Migration"},
            {"metadata", {{"name", name}}},
            {"spec", {{"workload", workload}, {"targetNode", target}}}};
  }

  // Every MigratableWorkload's status reflects its generation and its record.
  ::testing::AssertionResult NoStatusStuck() {
    auto l = observer_->List(kMW, ns_, {});
    if (!l.ok()) return ::testing::AssertionFailure() << l.status().ToString();
    for (const json& o : l->items) {
      const std::string name = o["metadata"]["name"];
      const json st = o.value("status", json::object());
      if (st.value("observedGeneration", -1) != o["metadata"].value("generation", 0))
        return ::testing::AssertionFailure() << name << ": status behind its generation";
      auto w = WorkloadRecord(WorkloadNameFor(ns_, name));
      if (!w) continue;  // Accepted=False ones have no record
      if (st.value("phase", "") != api::WorkloadPhaseName(w->status.phase) ||
          st.value("node", "") != w->status.node)
        return ::testing::AssertionFailure()
               << name << ": status " << st.dump() << " but the record says "
               << api::WorkloadPhaseName(w->status.phase) << " on " << w->status.node;
    }
    return ::testing::AssertionSuccess();
  }

  static inline std::string skip_;
  static inline std::string start_error_;
  static inline PrivateKubeApiserver* api_ = nullptr;

  SystemClock clock_;
  SystemRandom random_;
  PrivateEtcd etcd_;
  std::unique_ptr<EtcdStateStore> store_;
  cluster::KeyLayout keys_;
  std::unique_ptr<kube::HttpClient> observer_;  // the test's own view of the API server
  std::string ns_;
  std::vector<std::string> policies_;  // cluster-scoped: deleted by name
  std::vector<std::unique_ptr<Replica>> replicas_;
};

TEST_F(BridgeIntegrationTest, WorkloadsAndMigrationsThroughKubectl) {
  const int64_t lease1 = PublishNode("node1");
  PublishNode("node2");
  Replica& r = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return r.controller->IsLeader() && r.bridge->Synced(); }));

  // --- apply a MigratableWorkload: Running on its node, with conditions.
  std::string out;
  ASSERT_EQ(KubectlApply(Workload("counter", "node1"), &out), 0) << out;
  const std::string wname = WorkloadNameFor(ns_, "counter");
  RunWhenScheduled(wname);
  ASSERT_TRUE(Eventually([&] { return Jsonpath("mw", "counter", "{.status.phase}") == "Running"; }))
      << Jsonpath("mw", "counter", "{.status}");
  ASSERT_EQ(Kubectl({"get", "-n", ns_, "mw", "counter"}, &out), 0) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("\ncounter +node1 +Running +0 "))) << out;
  EXPECT_EQ(Jsonpath("mw", "counter", "{range .status.conditions[*]}{.type}={.status} {end}"),
            "Accepted=True Placed=True Running=True Migrating=False ");
  EXPECT_EQ(Jsonpath("mw", "counter", "{.status.workload}"), wname);
  EXPECT_EQ(Jsonpath("mw", "counter", "{.metadata.finalizers[0]}"), kFinalizer);
  auto rec = WorkloadRecord(wname);
  ASSERT_TRUE(rec && rec->spec.origin);
  EXPECT_EQ(rec->spec.origin->namespace_, ns_);
  EXPECT_EQ(rec->spec.origin->uid, Jsonpath("mw", "counter", "{.metadata.uid}"));
  EXPECT_DOUBLE_EQ(rec->spec.cpus, 0.25);
  EXPECT_EQ(rec->spec.memory_mib, 64);

  // --- the bridge's Events, as a user reads them.
  ASSERT_TRUE(Eventually([&] {
    Kubectl({"describe", "-n", ns_, "mw", "counter"}, &out);
    return out.find("Placed") != std::string::npos && out.find("Created") != std::string::npos;
  })) << out;
  EXPECT_NE(out.find("kmosix-controller"), std::string::npos) << out;

  // --- a quiet world writes no status over several resyncs (500 ms each).
  std::this_thread::sleep_for(seconds(1));
  const int quiet = r.client->status_writes.load();
  EXPECT_GE(quiet, 2) << "the counter sees the bridge's status writes";
  std::this_thread::sleep_for(seconds(3));
  EXPECT_EQ(r.client->status_writes.load(), quiet) << "status written with nothing changed";

  // --- apply a Migration: ordered once, Succeeded with its downtime.
  ASSERT_EQ(KubectlApply(Migration("move", "counter", "node2"), &out), 0) << out;
  const std::string id = MigrationIdFor(Jsonpath("mig", "move", "{.metadata.uid}"));
  ASSERT_TRUE(Eventually([&] { return MigrationRecord(id).has_value(); })) << id;
  EXPECT_EQ(MigrationRecord(id)->requested_by, "user");
  EXPECT_EQ(MigrationRecord(id)->target, "node2");
  ASSERT_TRUE(Eventually([&] { return Jsonpath("mig", "move", "{.status.id}") == id; }));
  EXPECT_EQ(Jsonpath("mig", "move", "{.status.sourceNode}"), "node1");
  Succeed(id);
  ASSERT_TRUE(
      Eventually([&] { return Jsonpath("mig", "move", "{.status.phase}") == "Succeeded"; }));
  EXPECT_EQ(Jsonpath("mig", "move", "{.status.downtimeSeconds}"), "0.452");
  ASSERT_EQ(Kubectl({"get", "-n", ns_, "mig", "move"}, &out), 0) << out;
  EXPECT_TRUE(
      std::regex_search(out, std::regex("\nmove +counter +node1 +node2 +Succeeded +0\\.452 ")))
      << out;
  ASSERT_TRUE(Eventually([&] {
    Kubectl({"get", "-n", ns_, "mw", "counter"}, &out);
    return std::regex_search(out, std::regex("\ncounter +node2 +Running +1 "));
  })) << out;

  // --- delete a Migration before its commit point: cancelled, rolled back, gone.
  ASSERT_EQ(KubectlApply(Migration("back", "counter", "node1"), &out), 0) << out;
  const std::string back = MigrationIdFor(Jsonpath("mig", "back", "{.metadata.uid}"));
  ASSERT_TRUE(Eventually([&] { return Jsonpath("mig", "back", "{.status.id}") == back; }));
  ASSERT_EQ(Kubectl({"delete", "-n", ns_, "mig", "back", "--wait=false"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    auto m = MigrationRecord(back);
    return m && m->cancel_requested_ms > 0;
  })) << "no cancel requested in etcd";
  EXPECT_TRUE(Object(kMig, "back")) << "the finalizer holds it until the source rolled back";
  RollBack(back);
  ASSERT_TRUE(Eventually([&] { return !Object(kMig, "back"); }));
  EXPECT_EQ(WorkloadRecord(wname)->status.node, "node2");
  size_t orders = 0;
  for (const auto& m : MigrationRecords()) orders += m.workload == wname;
  EXPECT_EQ(orders, 2u) << "one migration per Migration object";

  // --- invalid objects: the API server refuses them; nothing reaches kmosix.
  json bad = Workload("bad-env");
  bad["spec"]["env"] = json::array({{{"name", "A=B"}, {"value", "1"}}});
  EXPECT_NE(KubectlApply(bad, &out), 0);
  EXPECT_NE(out.find("spec.env[0].name"), std::string::npos) << out;
  json pinned = Workload("pinned-nowhere");
  pinned["spec"]["pinned"] = true;
  EXPECT_NE(KubectlApply(pinned, &out), 0);
  EXPECT_NE(out.find("spec.pinned needs spec.nodeName"), std::string::npos) << out;
  EXPECT_NE(KubectlApply(Migration("Bad_Name", "counter", "node1"), &out), 0);
  EXPECT_FALSE(Object(kMW, "bad-env"));
  EXPECT_FALSE(WorkloadRecord(WorkloadNameFor(ns_, "bad-env")));

  // --- Accepted=False: valid for the schema, but node9 is no kmosix node.
  ASSERT_EQ(KubectlApply(Workload("lost", "node9"), &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    return Jsonpath("mw", "lost", "{.status.conditions[?(@.type==\"Accepted\")].status}") ==
           "False";
  })) << Jsonpath("mw", "lost", "{.status}");
  EXPECT_NE(Jsonpath("mw", "lost", "{.status.message}").find("node9"), std::string::npos);
  EXPECT_FALSE(WorkloadRecord(WorkloadNameFor(ns_, "lost"))) << "nothing runs";
  ASSERT_TRUE(Eventually([&] {
    Kubectl({"describe", "-n", ns_, "mw", "lost"}, &out);
    return out.find("Warning") != std::string::npos;
  })) << out;

  // --- delete the MigratableWorkload: the record goes at once, the object
  // once its node stops reporting it.
  PublishNode("node2", {{wname, {0.25, 64 << 20}}});  // node2's agent runs it
  ASSERT_EQ(Kubectl({"delete", "-n", ns_, "mw", "counter", "--wait=false"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return !WorkloadRecord(wname); })) << "record not deleted";
  std::this_thread::sleep_for(seconds(1));
  EXPECT_TRUE(Object(kMW, "counter")) << "let go while node2 still reports it";
  // node2's agent stopped it (same lease as before is not needed: a new
  // record without the workload).
  PublishNode("node2");
  ASSERT_TRUE(Eventually([&] { return !Object(kMW, "counter"); }));
  (void)lease1;
  EXPECT_TRUE(NoStatusStuck());
}

TEST_F(BridgeIntegrationTest, SpecChangesPoliciesAndMirroredMigrations) {
  PublishNode("node1");
  PublishNode("node2");
  Replica& r = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return r.controller->IsLeader() && r.bridge->Synced(); }));
  std::string out;
  ASSERT_EQ(KubectlApply(Workload("render", "node1"), &out), 0) << out;
  const std::string wname = WorkloadNameFor(ns_, "render");
  RunWhenScheduled(wname);
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "render", "phase") == "Running"; }));

  // --- a MigrationPolicy: accepted, matched, handed to the balancer.
  const std::string pol = ns_ + "-render";
  policies_.push_back(pol);
  json policy = {{"apiVersion", "kmosix.io/v1alpha1"},
                 {"kind", "MigrationPolicy"},
                 {"metadata", {{"name", pol}}},
                 {"spec",
                  {{"selector", {{"matchLabels", {{"team", "render"}}}}},
                   {"stabilityFactor", 2.5},
                   {"minResidencySeconds", 30}}}};
  ASSERT_EQ(KubectlApply(policy, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    return Kubectl({"get", "mpol", pol, "-o",
                    "jsonpath={.status.matchedWorkloads} "
                    "{.status.conditions[?(@.type==\"Accepted\")].status}"},
                   &out) == 0 &&
           out == "1 True";
  })) << out;
  ASSERT_TRUE(Eventually([&] {
    auto p = r.bridge->ForWorkload(wname);
    return p && p->stability == 2.5 && p->min_residency_ms == 30000;
  }));
  json bad_policy = policy;
  bad_policy["metadata"]["name"] = pol + "-bad";
  bad_policy["spec"]["stabilityFactor"] = 0.5;
  EXPECT_NE(KubectlApply(bad_policy, &out), 0) << "stabilityFactor below 1 passed the schema";

  // --- pinned and migratable reach the record; image stays immutable.
  ASSERT_EQ(Kubectl({"patch", "-n", ns_, "mw", "render", "--type", "merge", "-p",
                     R"({"spec":{"migratable":false}})"},
                    &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return !WorkloadRecord(wname)->spec.migratable; }));
  ASSERT_EQ(Kubectl({"patch", "-n", ns_, "mw", "render", "--type", "merge", "-p",
                     R"({"spec":{"migratable":true}})"},
                    &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return WorkloadRecord(wname)->spec.migratable; }));
  EXPECT_NE(Kubectl({"patch", "-n", ns_, "mw", "render", "--type", "merge", "-p",
                     R"({"spec":{"image":"kmosix.local/other:latest"}})"},
                    &out),
            0);
  EXPECT_NE(out.find("spec.image is immutable"), std::string::npos) << out;
  EXPECT_EQ(WorkloadRecord(wname)->spec.image, "kmosix.local/demo:latest");

  // --- spec.nodeName changed: exactly one move there.
  ASSERT_EQ(Kubectl({"patch", "-n", ns_, "mw", "render", "--type", "merge", "-p",
                     R"({"spec":{"nodeName":"node2"}})"},
                    &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return MigrationRecords().size() == 1; }));
  const api::Migration move = MigrationRecords()[0];
  EXPECT_EQ(move.target, "node2");
  EXPECT_EQ(move.requested_by, "user");
  Succeed(move.id);
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "render", "node") == "node2"; }));
  std::this_thread::sleep_for(seconds(2));  // several resyncs
  EXPECT_EQ(MigrationRecords().size(), 1u) << "the nodeName move was ordered again";

  // --- a migration kmosix orders itself (as the REST API would): mirrored
  // as a labelled Migration object, once.
  api::MigrationRequest req;
  req.workload = wname;
  req.target = "node1";
  req.requested_by = std::string(api::kRequestedByApi);
  req.reason = "asked over REST";
  auto ordered = r.controller->RequestMigration(req);
  ASSERT_TRUE(ordered.ok()) << ordered.status().ToString();
  ASSERT_TRUE(Eventually([&] { return Object(kMig, ordered->id).has_value(); })) << "not mirrored";
  EXPECT_EQ(Jsonpath("mig", ordered->id, "{.metadata.labels.kmosix\\.io/requested-by}"), "api");
  EXPECT_EQ(Jsonpath("mig", ordered->id, "{.spec.workload}"), "render");
  Succeed(ordered->id);
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, ordered->id, "phase") == "Succeeded"; }));
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "render", "migrations") == "2"; }));
  auto migs = observer_->List(kMig, ns_, {});
  ASSERT_TRUE(migs.ok());
  EXPECT_EQ(migs->items.size(), 1u) << "one object for the mirrored migration, none for the move";

  // --- quiet: MigratableWorkload, mirrored Migration and MigrationPolicy
  // statuses are all settled; several resyncs write nothing.
  ASSERT_TRUE(Eventually([&] { return bool(NoStatusStuck()); })) << NoStatusStuck().message();
  std::this_thread::sleep_for(seconds(1));
  const int quiet = r.client->status_writes.load();
  std::this_thread::sleep_for(seconds(3));
  EXPECT_EQ(r.client->status_writes.load(), quiet) << "status written with nothing changed";
}

TEST_F(BridgeIntegrationTest, ApiServerRestartAndNewReplicaDuplicateAndLoseNothing) {
  PublishNode("node1");
  PublishNode("node2");
  Replica& a = StartReplica("c1");
  ASSERT_TRUE(Eventually([&] { return a.controller->IsLeader() && a.bridge->Synced(); }));
  std::string out;
  ASSERT_EQ(KubectlApply(Workload("alpha", "node1"), &out), 0) << out;
  ASSERT_EQ(KubectlApply(Workload("beta"), &out), 0) << out;
  RunWhenScheduled(WorkloadNameFor(ns_, "alpha"));
  RunWhenScheduled(WorkloadNameFor(ns_, "beta"));
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "alpha", "phase") == "Running"; }));
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "beta", "phase") == "Running"; }));
  ASSERT_EQ(KubectlApply(Migration("move-alpha", "alpha", "node2"), &out), 0) << out;
  const std::string m1 = MigrationIdFor(Jsonpath("mig", "move-alpha", "{.metadata.uid}"));
  ASSERT_TRUE(Eventually([&] { return MigrationRecord(m1).has_value(); }));

  // --- the API server restarts; meanwhile the source finishes the move.
  api_->Stop();
  Succeed(m1);
  std::this_thread::sleep_for(seconds(2));
  ASSERT_TRUE(api_->Start()) << api_->error();
  // The same replica catches up (its informers relist) and acts on new objects.
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, "move-alpha", "phase") == "Succeeded"; },
                         seconds(90)));
  ASSERT_TRUE(Eventually([&] { return KubectlApply(Workload("gamma"), &out) == 0; })) << out;
  RunWhenScheduled(WorkloadNameFor(ns_, "gamma"));
  ASSERT_TRUE(
      Eventually([&] { return StatusField(kMW, "gamma", "phase") == "Running"; }, seconds(90)));

  // --- the replica dies (no goodbye to Kubernetes); a new one takes over.
  ASSERT_EQ(KubectlApply(Migration("move-beta", "beta", "node1"), &out), 0) << out;
  const std::string m2 = MigrationIdFor(Jsonpath("mig", "move-beta", "{.metadata.uid}"));
  // Killed as soon as it ordered (its status write may or may not be done).
  ASSERT_TRUE(Eventually([&] { return MigrationRecord(m2).has_value(); }, seconds(60)));
  a.Kill();
  // While no one leads: a user applies a workload, and another is deleted
  // with its finalizer forced away (kmosix never saw the delete).
  ASSERT_EQ(KubectlApply(Workload("delta", "node2"), &out), 0) << out;
  ASSERT_EQ(Kubectl({"patch", "-n", ns_, "mw", "gamma", "--type", "merge", "-p",
                     R"({"metadata":{"finalizers":null}})"},
                    &out),
            0)
      << out;
  ASSERT_EQ(Kubectl({"delete", "-n", ns_, "mw", "gamma"}, &out), 0) << out;
  Replica& b = StartReplica("c2");
  ASSERT_TRUE(Eventually([&] { return b.controller->IsLeader() && b.bridge->Synced(); }));
  RunWhenScheduled(WorkloadNameFor(ns_, "delta"));
  ASSERT_TRUE(Eventually([&] { return Jsonpath("mig", "move-beta", "{.status.id}") == m2; }));
  const std::string beta_source = MigrationRecord(m2)->source;
  Succeed(m2);
  ASSERT_TRUE(Eventually([&] { return StatusField(kMig, "move-beta", "phase") == "Succeeded"; }));
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "delta", "phase") == "Running"; }));
  ASSERT_TRUE(Eventually([&] { return StatusField(kMW, "beta", "node") == "node1"; }));
  ASSERT_TRUE(Eventually([&] { return !WorkloadRecord(WorkloadNameFor(ns_, "gamma")); }))
      << "the orphan of the force-deleted object still runs";
  EXPECT_EQ(StatusField(kMW, "alpha", "node"), "node2");
  EXPECT_EQ(StatusField(kMW, "alpha", "migrations"), "1");
  (void)beta_source;

  // --- nothing duplicated, nothing lost.
  std::map<std::string, int> records;  // MW name -> etcd records
  for (const auto& w : WorkloadRecords())
    if (w.spec.origin && w.spec.origin->namespace_ == ns_) ++records[w.spec.origin->name];
  EXPECT_EQ(records, (std::map<std::string, int>{{"alpha", 1}, {"beta", 1}, {"delta", 1}}));
  std::map<std::string, int> orders;  // migration id -> records
  for (const auto& m : MigrationRecords()) ++orders[m.id];
  EXPECT_EQ(orders, (std::map<std::string, int>{{m1, 1}, {m2, 1}}));
  auto migs = observer_->List(kMig, ns_, {});
  ASSERT_TRUE(migs.ok());
  std::vector<std::string> names;
  for (const json& o : migs->items) names.push_back(o["metadata"]["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"move-alpha", "move-beta"}))
      << "no Migration object duplicated or mirrored twice";
  ASSERT_TRUE(Eventually([&] { return bool(NoStatusStuck()); })) << NoStatusStuck().message();

  // --- and the new leader, too, is quiet in a quiet world.
  std::this_thread::sleep_for(seconds(1));
  const int quiet = b.client->status_writes.load();
  std::this_thread::sleep_for(seconds(3));
  EXPECT_EQ(b.client->status_writes.load(), quiet) << "status written with nothing changed";
}

}  // namespace
}  // namespace kmosix::bridge
