// Integration tests of HttpClient and the Informer against a real
// kube-apiserver 1.37 (tests/support/private_kube_apiserver.h; one server
// per test binary): kubeconfig with a client certificate, List paging,
// writes with a status conflict and retry, finalizers, watch across a
// bookmark and a 410, in-cluster config with a ServiceAccount token from
// `kubectl create token`, the Informer across an apiserver restart, and the
// project's real CRDs (crd/*.yaml) when present.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "kmosix/clock.h"
#include "kube/config.h"
#include "kube/http_client.h"
#include "kube/informer.h"
#include "support/private_kube_apiserver.h"

namespace kmosix::kube {
namespace {

using kmosix::testing::PrivateKubeApiserver;
using nlohmann::json;

// A test CRD: widgets.test.kmosix.io, namespaced, status subresource, a
// typed spec.size (so a string there is refused: 422).
constexpr const char* kWidgetCrd = R"(apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.kmosix.io
spec:
  group: test.kmosix.io
  scope: Namespaced
  names: {kind: Widget, listKind: WidgetList, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
          status:
            type: object
            properties:
              phase: {type: string}
)";

Resource Widgets() { return {"test.kmosix.io", "v1", "widgets", "Widget", true}; }

json Widget(const std::string& name, int size) {
  return {{"metadata", {{"name", name}}}, {"spec", {{"size", size}}}};
}

std::string Rv(const json& o) { return o["metadata"].value("resourceVersion", ""); }

class KubeApiserverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_ = kmosix::testing::KubeApiserverSkipReason();
    if (!skip_.empty()) return;
    api_ = new PrivateKubeApiserver();
    if (!api_->Start()) {
      start_error_ = "kube-apiserver did not start: " + api_->error();
      return;
    }
    std::string crd = api_->dir() + "/widget-crd.yaml";
    std::ofstream(crd) << kWidgetCrd;
    if (!api_->ApplyCrds(crd))
      start_error_ = api_->error() + " (see " + api_->dir() + "/kubectl.log)";
  }
  static void TearDownTestSuite() {
    delete api_;
    api_ = nullptr;
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: " << skip_;
    ASSERT_TRUE(start_error_.empty()) << start_error_;
    auto cfg = LoadKubeconfig(api_->kubeconfig());
    ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
    HttpClient::Options o;
    o.watch_timeout_seconds = 10;
    auto c = HttpClient::New(*cfg, clock_, o);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_ = std::move(*c);
  }

  // A fresh namespace per test (created through the client: core v1).
  std::string Namespace(const std::string& name) {
    Resource ns{"", "v1", "namespaces", "Namespace", false};
    auto r = client_->Create(ns, "", {{"metadata", {{"name", name}}}});
    EXPECT_TRUE(r.ok() || r.status().code() == Code::kConflict) << r.status().ToString();
    return name;
  }

  static inline std::string skip_;
  static inline std::string start_error_;
  static inline PrivateKubeApiserver* api_ = nullptr;
  SystemClock clock_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(KubeApiserverTest, KubeconfigListAndPaging) {
  auto cfg = LoadKubeconfig(api_->kubeconfig());
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->server, api_->server());
  EXPECT_EQ(cfg->namespace_, "default");
  EXPECT_FALSE(cfg->client_cert_pem.empty());
  auto nodes = client_->List(Nodes(), "", {});
  ASSERT_TRUE(nodes.ok()) << nodes.status().ToString();
  EXPECT_FALSE(nodes->resource_version.empty());
  std::string ns = Namespace("paging");
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client_->Create(Widgets(), ns, Widget("w" + std::to_string(i), i)).ok());
  }
  ListOptions o;
  o.limit = 2;
  auto l = client_->List(Widgets(), ns, o);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->items.size(), 5u);
  EXPECT_EQ(l->items[4]["metadata"]["name"], "w4");
  EXPECT_EQ(l->items[0]["kind"], "Widget");
  // Label selectors go through escaped.
  json labelled = Widget("labelled", 1);
  labelled["metadata"]["labels"] = {{"app", "x"}, {"tier", "1"}};
  ASSERT_TRUE(client_->Create(Widgets(), ns, labelled).ok());
  ListOptions sel;
  sel.label_selector = "app=x,tier!=2";
  auto s = client_->List(Widgets(), ns, sel);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(s->items.size(), 1u);
  EXPECT_EQ(client_->Get(Widgets(), ns, "nope").status().code(), Code::kNotFound);
  EXPECT_EQ(client_->Create(Widgets(), ns, Widget("w0", 1)).status().code(), Code::kConflict);
}

TEST_F(KubeApiserverTest, StatusConflictThenRetryAndInvalid) {
  std::string ns = Namespace("status");
  auto w = client_->Create(Widgets(), ns, Widget("w", 1));
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ((*w)["metadata"]["generation"], 1);
  json s1 = *w;
  s1["status"] = {{"phase", "One"}};
  auto after = client_->UpdateStatus(Widgets(), ns, s1);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ((*after)["status"]["phase"], "One");
  EXPECT_EQ((*after)["metadata"]["generation"], 1);
  // The stale copy (the create's version) conflicts.
  json stale = *w;
  stale["status"] = {{"phase", "Two"}};
  auto conflict = client_->UpdateStatus(Widgets(), ns, stale);
  ASSERT_EQ(conflict.status().code(), Code::kConflict) << conflict.status().ToString();
  EXPECT_NE(conflict.status().message().find("the object has been modified"), std::string::npos)
      << conflict.status().message();
  // Re-read, retry: it goes through.
  auto fresh = client_->Get(Widgets(), ns, "w");
  ASSERT_TRUE(fresh.ok());
  json retry = *fresh;
  retry["status"] = {{"phase", "Two"}};
  auto ok = client_->UpdateStatus(Widgets(), ns, retry);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ((*ok)["status"]["phase"], "Two");
  // Update changes the spec (generation 2) but not the status.
  json upd = *ok;
  upd["spec"]["size"] = 7;
  upd["status"] = {{"phase", "Ignored"}};
  auto u = client_->Update(Widgets(), ns, upd);
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ((*u)["metadata"]["generation"], 2);
  EXPECT_EQ((*u)["status"]["phase"], "Two");
  // Merge patch; a typed field of the wrong type is refused (kInvalid, the server's words).
  auto p = client_->MergePatch(Widgets(), ns, "w", {{"spec", {{"size", 9}}}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)["spec"]["size"], 9);
  auto bad = client_->MergePatch(Widgets(), ns, "w", {{"spec", {{"size", "big"}}}});
  EXPECT_EQ(bad.status().code(), Code::kInvalid) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find("spec.size"), std::string::npos) << bad.status().message();
  json stale_patch = {{"metadata", {{"resourceVersion", Rv(*w)}}}, {"spec", {{"size", 3}}}};
  EXPECT_EQ(client_->MergePatch(Widgets(), ns, "w", stale_patch).status().code(), Code::kConflict);
}

TEST_F(KubeApiserverTest, FinalizersHoldTheObject) {
  std::string ns = Namespace("finalizers");
  json o = Widget("f", 1);
  o["metadata"]["finalizers"] = {"kmosix.io/test"};
  auto w = client_->Create(Widgets(), ns, o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(client_->Delete(Widgets(), ns, "f", "00000000-0000-0000-0000-000000000000").code(),
            Code::kConflict);
  ASSERT_TRUE(client_->Delete(Widgets(), ns, "f", (*w)["metadata"]["uid"]).ok());
  auto t = client_->Get(Widgets(), ns, "f");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE((*t)["metadata"].contains("deletionTimestamp"));
  ASSERT_TRUE(
      client_->MergePatch(Widgets(), ns, "f", {{"metadata", {{"finalizers", nullptr}}}}).ok());
  EXPECT_EQ(client_->Get(Widgets(), ns, "f").status().code(), Code::kNotFound);
  EXPECT_EQ(client_->Delete(Widgets(), ns, "f", "").code(), Code::kNotFound);
}

TEST_F(KubeApiserverTest, WatchAcrossABookmarkAndA410) {
  std::string ns = Namespace("watch");
  auto l = client_->List(Widgets(), ns, {});
  ASSERT_TRUE(l.ok());
  std::mutex mu;
  std::vector<WatchEvent> events;
  std::atomic<bool> stop{false};
  Status watch_status = FailedError("not run");
  // The API server sends a watch a BOOKMARK about a minute in (and about
  // 2 s before its timeoutSeconds, when that is long enough): watch until
  // the first one.
  HttpClient::Options o;
  o.watch_timeout_seconds = 120;
  auto cfg = LoadKubeconfig(api_->kubeconfig());
  ASSERT_TRUE(cfg.ok());
  auto c = HttpClient::New(*cfg, clock_, o);
  ASSERT_TRUE(c.ok());
  std::thread t([&] {
    watch_status = (*c)->Watch(
        Widgets(), ns, l->resource_version, {},
        [&](const WatchEvent& e) {
          std::lock_guard lock(mu);
          events.push_back(e);
          return e.type != EventType::kBookmark;
        },
        stop);
  });
  auto created = client_->Create(Widgets(), ns, Widget("a", 1));
  ASSERT_TRUE(created.ok());
  t.join();  // at the bookmark, about a minute
  std::string bookmark_rv;
  bool added = false;
  for (const auto& e : events) {
    if (e.type == EventType::kAdded && e.object["metadata"]["name"] == "a") added = true;
    if (e.type == EventType::kBookmark) bookmark_rv = Rv(e.object);
  }
  EXPECT_TRUE(added);
  ASSERT_FALSE(bookmark_rv.empty()) << "no BOOKMARK in " << events.size() << " events";
  // Resume from the bookmark: the next change arrives, nothing before it.
  std::vector<WatchEvent> more;
  std::thread t2([&] {
    watch_status = client_->Watch(
        Widgets(), ns, bookmark_rv, {},
        [&](const WatchEvent& e) {
          if (e.type == EventType::kBookmark) return true;
          std::lock_guard lock(mu);
          more.push_back(e);
          return false;  // one is enough
        },
        stop);
  });
  ASSERT_TRUE(client_->Create(Widgets(), ns, Widget("b", 2)).ok());
  t2.join();
  ASSERT_TRUE(watch_status.ok()) << watch_status.ToString();
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].type, EventType::kAdded);
  EXPECT_EQ(more[0].object["metadata"]["name"], "b");
  // A version older than the watch cache: 410 Gone -> kConflict.
  Status gone = client_->Watch(
      Widgets(), ns, "1", {}, [](const WatchEvent&) { return true; }, stop);
  EXPECT_EQ(gone.code(), Code::kConflict) << gone.ToString();
  // Stop ends a quiet watch promptly (Ok).
  std::atomic<bool> stop2{false};
  auto l2 = client_->List(Widgets(), ns, {});
  ASSERT_TRUE(l2.ok());
  std::thread t3([&] {
    watch_status = client_->Watch(
        Widgets(), ns, l2->resource_version, {}, [](const WatchEvent&) { return true; }, stop2);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  stop2 = true;
  t3.join();
  EXPECT_TRUE(watch_status.ok()) << watch_status.ToString();
}

TEST_F(KubeApiserverTest, InClusterConfigWithAServiceAccountToken) {
  ASSERT_EQ(api_->Kubectl({"create", "serviceaccount", "kmx-test", "-n", "default"}), 0);
  ASSERT_EQ(api_->Kubectl({"create", "clusterrolebinding", "kmx-test",
                           "--clusterrole=cluster-admin", "--serviceaccount=default:kmx-test"}),
            0);
  std::string token;
  ASSERT_EQ(api_->Kubectl({"create", "token", "kmx-test", "-n", "default"}, &token), 0)
      << "see " << api_->dir() << "/kubectl.log";
  std::string root = api_->dir() + "/serviceaccount";
  std::filesystem::create_directories(root);
  std::ofstream(root + "/token") << token;
  std::filesystem::copy_file(api_->ca_file(), root + "/ca.crt",
                             std::filesystem::copy_options::overwrite_existing);
  std::ofstream(root + "/namespace") << "default\n";
  std::string port = api_->server().substr(api_->server().rfind(':') + 1);
  EnvLookup env = [&](const std::string& k) -> std::optional<std::string> {
    if (k == "KUBERNETES_SERVICE_HOST") return "127.0.0.1";
    if (k == "KUBERNETES_SERVICE_PORT") return port;
    return std::nullopt;
  };
  auto cfg = InClusterConfig(root, env);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->namespace_, "default");
  EXPECT_TRUE(cfg->client_cert_pem.empty());
  auto c = HttpClient::New(*cfg, clock_);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto l = (*c)->List(Widgets(), "default", {});
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  // A token the server does not know: 401, kFailed.
  std::ofstream(root + "/token") << "not-a-token";
  auto bad_cfg = InClusterConfig(root, env);
  ASSERT_TRUE(bad_cfg.ok());
  auto bad = HttpClient::New(*bad_cfg, clock_);
  ASSERT_TRUE(bad.ok());
  auto refused = (*bad)->List(Widgets(), "default", {});
  EXPECT_EQ(refused.status().code(), Code::kFailed) << refused.status().ToString();
  // The first client re-reads the token file on that 401 too; put the good one back.
  std::ofstream(root + "/token") << token;
  EXPECT_TRUE((*bad)->List(Widgets(), "default", {}).ok());
}

// Records on_change calls and waits for one.
class Changes {
 public:
  Informer::Handler Handler() {
    return [this](const std::string& key, const json* obj) {
      std::lock_guard lock(mu_);
      std::string size =
          obj ? obj->value("spec", json::object()).value("size", json(0)).dump() : "";
      log_.push_back(obj ? key + "=" + size : key + " deleted");
      cv_.notify_all();
    };
  }
  bool WaitFor(const std::string& what, int seconds = 60) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(seconds),
                        [&] { return std::find(log_.begin(), log_.end(), what) != log_.end(); });
  }
  std::string Dump() {
    std::lock_guard lock(mu_);
    std::string s;
    for (const auto& l : log_) s += l + "; ";
    return s;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> log_;
};

// Last: it restarts the apiserver.
TEST_F(KubeApiserverTest, ZInformerSeesChangesAndSurvivesARestart) {
  std::string ns = Namespace("informer");
  ASSERT_TRUE(client_->Create(Widgets(), ns, Widget("before", 1)).ok());
  SystemRandom random;
  Changes changes;
  Informer::Options o;
  o.ns = ns;
  o.min_backoff = std::chrono::milliseconds(200);
  o.max_backoff = std::chrono::milliseconds(2000);
  Informer informer(*client_, Widgets(), clock_, random, changes.Handler(), o);
  informer.Start();
  ASSERT_TRUE(changes.WaitFor(ns + "/before=1")) << changes.Dump();
  EXPECT_TRUE(informer.HasSynced());
  auto a = client_->Create(Widgets(), ns, Widget("a", 1));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(changes.WaitFor(ns + "/a=1")) << changes.Dump();
  ASSERT_TRUE(client_->MergePatch(Widgets(), ns, "a", {{"spec", {{"size", 2}}}}).ok());
  ASSERT_TRUE(changes.WaitFor(ns + "/a=2")) << changes.Dump();
  ASSERT_TRUE(client_->Delete(Widgets(), ns, "before", "").ok());
  ASSERT_TRUE(changes.WaitFor(ns + "/before deleted")) << changes.Dump();
  api_->Stop();
  ASSERT_TRUE(api_->Start()) << api_->error();
  // A freshly restarted server may answer 503/404 for custom resources until
  // its CRD informers sync, and the pooled connection is stale: a caller retries.
  Status created = FailedError("not tried");
  for (int i = 0; i < 60 && !created.ok(); ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto c = client_->Create(Widgets(), ns, Widget("after", 3));
    created = c.ok() ? Status::Ok() : c.status();
    if (created.code() == Code::kConflict) break;  // an earlier try went through
  }
  ASSERT_TRUE(created.ok() || created.code() == Code::kConflict) << created.ToString();
  ASSERT_TRUE(changes.WaitFor(ns + "/after=3")) << changes.Dump();
  EXPECT_TRUE(informer.Get(ns + "/a"));
  EXPECT_FALSE(informer.Get(ns + "/before"));
  EXPECT_EQ(informer.List().size(), 2u);
  informer.Stop();
}

TEST_F(KubeApiserverTest, TheProjectsCrds) {
  std::string dir = kmosix::testing::KubeRepoRoot() + "/crd";
  if (!std::filesystem::exists(dir + "/kmosix.io_migrations.yaml")) {
    GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: no crd/*.yaml in this checkout";
  }
  for (const char* f : {"kmosix.io_migratableworkloads.yaml", "kmosix.io_migrations.yaml",
                        "kmosix.io_migrationpolicies.yaml"}) {
    ASSERT_TRUE(api_->ApplyCrds(dir + "/" + f)) << api_->error();
  }
  for (const auto& r : {MigratableWorkloads(), Migrations(), MigrationPolicies()}) {
    auto l = client_->List(r, "", {});
    EXPECT_TRUE(l.ok()) << r.plural << ": " << l.status().ToString();
  }
  // The examples, applied by kubectl, read back through the client.
  std::string ex = dir + "/examples";
  int applied = 0;
  for (const char* f : {"counter.yaml", "migration.yaml", "policy.yaml"}) {
    if (std::filesystem::exists(ex + "/" + f)) {
      EXPECT_EQ(api_->Kubectl({"apply", "-n", "default", "-f", ex + "/" + f}), 0)
          << f << ": see " << api_->dir() << "/kubectl.log";
      ++applied;
    }
  }
  if (applied == 3) {
    auto mw = client_->List(MigratableWorkloads(), "default", {});
    ASSERT_TRUE(mw.ok());
    EXPECT_FALSE(mw->items.empty());
    auto pol = client_->List(MigrationPolicies(), "", {});
    ASSERT_TRUE(pol.ok());
    EXPECT_FALSE(pol->items.empty());
  }
}

}  // namespace
}  // namespace kmosix::kube
