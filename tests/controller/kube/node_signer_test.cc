// The node signer (controller/kube/node_signer.h) against the fake API server
// and a real issuer (a throwaway CA made by the openssl CLI): which pod
// certificate requests it issues, which it denies and why, what it writes
// (a chain the API server's validation accepts: times equal to the leaf's,
// refresh inside [notBefore+10m, notAfter-10m], lifetime within the
// request's maximum), that only a leader writes, and that with etcd node
// grants on it makes the node's etcd user and role (fake AccessGrants) before
// it writes a certificate, writing nothing while that fails.
#include "controller/kube/node_signer.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "fakes/fake_access_grants.h"
#include "fakes/fake_kube_client.h"
#include "support/test_pki.h"
#include "tls/tls.h"

namespace kmosix::bridge {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr char kNs[] = "kmosix";
constexpr char kSa[] = "kmosix-agent";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Base64(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// The first certificate of a PEM chain.
std::unique_ptr<X509, decltype(&X509_free)> Leaf(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return {x, X509_free};
}

std::string SubjectField(X509* x, int nid) {
  X509_NAME* name = X509_get_subject_name(x);
  int i = X509_NAME_get_index_by_NID(name, nid, -1);
  if (i < 0) return "";
  ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
}

// "2026-12-07T08:00:00Z" of an ASN1_TIME.
std::string Rfc3339(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t Unix(const std::string& rfc3339) {
  std::tm tm{};
  if (strptime(rfc3339.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm) == nullptr) return -1;
  return static_cast<int64_t>(timegm(&tm));
}

class NodeSignerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::TestPki::OpensslPresent())
      GTEST_SKIP() << "SKIPPED: no openssl CLI to make the test CA with";
    dir_ = fs::temp_directory_path() /
           ("kmx-node-signer-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    pki_ = std::make_unique<testing::TestPki>(dir_.string());
    ASSERT_EQ(pki_->MakeCa(), "");
    auto issuer = tls::Issuer::Load(pki_->Ca(), pki_->Key("ca"));
    ASSERT_TRUE(issuer.ok()) << issuer.status().ToString();
    issuer_ = std::move(issuer).value();
    opts_.agent_namespace = kNs;
    opts_.agent_service_account = kSa;
    opts_.max_lifetime = std::chrono::hours(24);

    json node = {{"metadata", {{"name", "node1"}}}};
    auto created = kube_.Create(kube::Nodes(), "", node);
    ASSERT_TRUE(created.ok());
    (*created)["status"] = {{"addresses",
                             {{{"type", "InternalIP"}, {"address", "10.78.0.11"}},
                              {{"type", "Hostname"}, {"address", "node1.example"}}}}};
    ASSERT_TRUE(kube_.UpdateStatus(kube::Nodes(), "", *created).ok());
    pod_uid_ = MakePod("agent-x", kNs, "node1", kSa);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::string MakePod(const std::string& name, const std::string& ns, const std::string& node,
                      const std::string& sa) {
    json pod = {{"metadata", {{"name", name}, {"namespace", ns}}},
                {"spec", {{"nodeName", node}, {"serviceAccountName", sa}}}};
    auto created = kube_.Create(Pods(), ns, pod);
    EXPECT_TRUE(created.ok());
    return created.ok() ? (*created)["metadata"]["uid"].get<std::string>() : "";
  }

  // A request as the kubelet makes it for `pod` (its fields overridable).
  json Request(const std::string& name, const std::string& csr_who = "pod",
               const std::string& newkey = "ec -pkeyopt ec_paramgen_curve:prime256v1") {
    EXPECT_EQ(pki_->MakeCsr(csr_who, newkey), "");
    return {{"metadata", {{"name", name}, {"namespace", kNs}}},
            {"spec",
             {{"signerName", kNodeSignerName},
              {"podName", "agent-x"},
              {"podUID", pod_uid_},
              {"serviceAccountName", kSa},
              {"serviceAccountUID", "sa-uid"},
              {"nodeName", "node1"},
              {"nodeUID", "node-uid"},
              {"maxExpirationSeconds", 86400},
              {"stubPKCS10Request", Base64(ReadFile(pki_->dir() + "/" + csr_who + ".csr.der"))}}}};
  }

  json Submit(const json& request) {
    const std::string ns = request["metadata"]["namespace"];
    auto created = kube_.Create(PodCertificateRequests(), ns, request);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? *created : json();
  }

  json Stored(const std::string& ns, const std::string& name) {
    auto got = kube_.Get(PodCertificateRequests(), ns, name);
    EXPECT_TRUE(got.ok());
    return got.ok() ? *got : json();
  }

  // The one condition of an answered request ({} while pending).
  static json Answer(const json& pcr) {
    if (!pcr.contains("status") || !pcr["status"].contains("conditions")) return json::object();
    EXPECT_EQ(pcr["status"]["conditions"].size(), 1u);
    return pcr["status"]["conditions"][0];
  }

  NodeSigner Signer() {
    return NodeSigner(
        kube_, *issuer_, clock_, random_, [this] { return leading_.load(); }, opts_);
  }

  fs::path dir_;
  std::unique_ptr<testing::TestPki> pki_;
  std::unique_ptr<tls::Issuer> issuer_;
  SystemClock clock_;  // wall time must be now: the test CA is valid from now
  SystemRandom random_;
  kube::FakeClient kube_;
  NodeSignerOptions opts_;
  std::string pod_uid_;
  std::atomic<bool> leading_{true};
};

TEST_F(NodeSignerTest, IssuesTheAgentsNodeIdentityAsTheApiServerRequires) {
  Submit(Request("req-1"));
  NodeSigner signer = Signer();
  ASSERT_TRUE(signer.Reconcile("kmosix/req-1").ok());
  const json pcr = Stored(kNs, "req-1");
  const json c = Answer(pcr);
  EXPECT_EQ(c.value("type", ""), "Issued");
  EXPECT_EQ(c.value("status", ""), "True");
  EXPECT_EQ(c.value("reason", ""), "Issued");
  EXPECT_FALSE(c.value("lastTransitionTime", "").empty());
  EXPECT_EQ(signer.Issued(), 1);

  const std::string chain = pcr["status"]["certificateChain"];
  auto leaf = Leaf(chain);
  ASSERT_NE(leaf, nullptr);
  EXPECT_EQ(SubjectField(leaf.get(), NID_commonName), "node1");
  EXPECT_EQ(SubjectField(leaf.get(), NID_organizationName), tls::kGroupNodes);
  // The leaf carries the request's public key.
  EVP_PKEY* pod_key = nullptr;
  {
    BIO* bio = BIO_new_file(pki_->Key("pod").c_str(), "r");
    pod_key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
  }
  ASSERT_NE(pod_key, nullptr);
  EXPECT_EQ(X509_check_private_key(leaf.get(), pod_key), 1);
  EVP_PKEY_free(pod_key);
  // SANs: the node's name, its DNS name and its IP; server and client use.
  EXPECT_EQ(X509_check_host(leaf.get(), "node1", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(leaf.get(), "node1.example", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(leaf.get(), "10.78.0.11", 0), 1);
  const uint32_t xku = X509_get_extended_key_usage(leaf.get());
  EXPECT_TRUE(xku & XKU_SSL_SERVER);
  EXPECT_TRUE(xku & XKU_SSL_CLIENT);
  // Verifies against the CA.
  {
    X509_STORE* store = X509_STORE_new();
    ASSERT_EQ(X509_STORE_load_file(store, pki_->Ca().c_str()), 1);
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    ASSERT_EQ(X509_STORE_CTX_init(ctx, store, leaf.get(), nullptr), 1);
    EXPECT_EQ(X509_verify_cert(ctx), 1)
        << X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
  }
  // The API server's rules: times equal the leaf's; at most
  // maxExpirationSeconds; refresh 10 minutes inside each end; notBefore near now.
  const std::string nb = pcr["status"]["notBefore"];
  const std::string na = pcr["status"]["notAfter"];
  const std::string refresh = pcr["status"]["beginRefreshAt"];
  EXPECT_EQ(nb, Rfc3339(X509_get0_notBefore(leaf.get())));
  EXPECT_EQ(na, Rfc3339(X509_get0_notAfter(leaf.get())));
  EXPECT_LE(Unix(na) - Unix(nb), 86400);
  EXPECT_GE(Unix(na) - Unix(nb), 3600);
  EXPECT_GE(Unix(refresh), Unix(nb) + 600);
  EXPECT_LE(Unix(refresh), Unix(na) - 600);
  EXPECT_LE(std::llabs(Unix(nb) - clock_.WallMillis() / 1000), 300);
}

TEST_F(NodeSignerTest, LifetimeIsTheShorterOfTheRequestsAndTheSignersMaximum) {
  opts_.max_lifetime = std::chrono::hours(6);
  Submit(Request("long"));  // asks for 24 h
  json shorter = Request("short", "pod2");
  shorter["spec"]["maxExpirationSeconds"] = 3 * 3600;
  Submit(shorter);
  NodeSigner signer = Signer();
  ASSERT_TRUE(signer.Reconcile("kmosix/long").ok());
  ASSERT_TRUE(signer.Reconcile("kmosix/short").ok());
  auto life = [&](const std::string& name) {
    const json pcr = Stored(kNs, name);
    return Unix(pcr["status"]["notAfter"]) - Unix(pcr["status"]["notBefore"]);
  };
  EXPECT_EQ(life("long"), 6 * 3600);
  EXPECT_EQ(life("short"), 3 * 3600);
}

TEST_F(NodeSignerTest, DeniesEveryPodButTheAgentsWithAReason) {
  struct Case {
    std::string name;
    std::function<void(json&)> change;
    std::string reason;
  };
  const std::string other_pod_uid = MakePod("agent-y", kNs, "node2", kSa);
  const std::string app_pod_uid = MakePod("app", "apps", "node1", "default");
  std::vector<Case> cases = {
      {"other-namespace",
       [&](json& r) {
         r["metadata"]["namespace"] = "apps";
         r["spec"]["podName"] = "app";
         r["spec"]["podUID"] = app_pod_uid;
         r["spec"]["serviceAccountName"] = "default";
       },
       "WrongNamespace"},
      {"other-sa", [](json& r) { r["spec"]["serviceAccountName"] = "default"; },
       "WrongServiceAccount"},
      {"annotated",
       [](json& r) {
         r["spec"]["unverifiedUserAnnotations"] = {{"example.com/x", "y"}};
       },
       "UnknownAnnotation"},
      {"recreated-pod", [](json& r) { r["spec"]["podUID"] = "uid-of-an-older-pod"; },
       "PodMismatch"},
      {"pod-elsewhere",
       [&](json& r) {
         r["spec"]["podName"] = "agent-y";
         r["spec"]["podUID"] = other_pod_uid;  // on node2, asking for node1
       },
       "PodMismatch"},
      {"no-pod", [](json& r) { r["spec"]["podName"] = "gone"; }, "PodMismatch"},
      {"etcd-root", [](json& r) { r["spec"]["nodeName"] = "root"; }, "ReservedName"},
      {"controller", [](json& r) { r["spec"]["nodeName"] = "kmosix-controller"; }, "ReservedName"},
      {"replica", [](json& r) { r["spec"]["nodeName"] = "controller2"; }, "ReservedName"},
  };
  NodeSigner signer = Signer();
  for (Case& c : cases) {
    json r = Request(c.name);
    c.change(r);
    Submit(r);
    const std::string ns = r["metadata"]["namespace"];
    ASSERT_TRUE(signer.Reconcile(ns + "/" + c.name).ok()) << c.name;
    const json pcr = Stored(ns, c.name);
    const json cond = Answer(pcr);
    EXPECT_EQ(cond.value("type", ""), "Denied") << c.name;
    EXPECT_EQ(cond.value("reason", ""), c.reason) << c.name << ": " << cond.dump();
    EXPECT_FALSE(cond.value("message", "").empty()) << c.name;
    // Denied: no other status field (the API server requires it).
    EXPECT_EQ(pcr["status"].size(), 1u) << c.name << ": " << pcr["status"].dump();
  }
  EXPECT_EQ(signer.Denied(), static_cast<int>(cases.size()));
  EXPECT_EQ(signer.Issued(), 0);
}

TEST_F(NodeSignerTest, DeniesKeyTypesItCannotIssueFor) {
  Submit(Request("rsa2048", "weak", "rsa:2048"));
  NodeSigner signer = Signer();
  ASSERT_TRUE(signer.Reconcile("kmosix/rsa2048").ok());
  const json cond = Answer(Stored(kNs, "rsa2048"));
  EXPECT_EQ(cond.value("type", ""), "Denied");
  EXPECT_EQ(cond.value("reason", ""), "UnsupportedKeyType");
  EXPECT_NE(cond.value("message", "").find("ECDSAP256"), std::string::npos) << cond.dump();
}

TEST_F(NodeSignerTest, LeavesAnsweredRequestsAndOtherSignersAlone) {
  Submit(Request("req-1"));
  json foreign = Request("foreign", "pod2");
  foreign["spec"]["signerName"] = "example.com/other";
  Submit(foreign);
  NodeSigner signer = Signer();
  ASSERT_TRUE(signer.Reconcile("kmosix/req-1").ok());
  const json first = Stored(kNs, "req-1");
  const int writes = kube_.Calls("UpdateStatus");
  ASSERT_TRUE(signer.Reconcile("kmosix/req-1").ok());
  ASSERT_TRUE(signer.Reconcile("kmosix/foreign").ok());
  ASSERT_TRUE(signer.Reconcile("kmosix/gone").ok());
  EXPECT_EQ(kube_.Calls("UpdateStatus"), writes);
  EXPECT_EQ(Stored(kNs, "req-1"), first);
  EXPECT_FALSE(Stored(kNs, "foreign").contains("status"));
}

TEST_F(NodeSignerTest, WaitsForTheNodeAndForAConflictFreeWrite) {
  json r = Request("req-1");
  r["spec"]["nodeName"] = "node-not-yet-registered";
  Submit(r);
  NodeSigner signer = Signer();
  // Pod check first: that pod is on node1, so this one is denied...
  ASSERT_TRUE(signer.Reconcile("kmosix/req-1").ok());
  EXPECT_EQ(Answer(Stored(kNs, "req-1")).value("reason", ""), "PodMismatch");
  // ...while a request whose pod is on an unregistered node waits.
  MakePod("agent-z", kNs, "node9", kSa);
  json waits = Request("req-2", "pod2");
  waits["spec"]["podName"] = "agent-z";
  auto pod = kube_.Get(Pods(), kNs, "agent-z");
  ASSERT_TRUE(pod.ok());
  waits["spec"]["podUID"] = (*pod)["metadata"]["uid"];
  waits["spec"]["nodeName"] = "node9";
  Submit(waits);
  Status s = signer.Reconcile("kmosix/req-2");
  EXPECT_EQ(s.code(), Code::kRetry) << s.ToString();
  EXPECT_FALSE(Stored(kNs, "req-2").contains("status"));
  ASSERT_TRUE(kube_.Create(kube::Nodes(), "", {{"metadata", {{"name", "node9"}}}}).ok());
  // A conflict on the write is the caller's to retry; the next try issues.
  kube_.FailNext("UpdateStatus", ConflictError("the object has been modified"));
  EXPECT_EQ(signer.Reconcile("kmosix/req-2").code(), Code::kConflict);
  ASSERT_TRUE(signer.Reconcile("kmosix/req-2").ok());
  EXPECT_EQ(Answer(Stored(kNs, "req-2")).value("type", ""), "Issued");
}

TEST_F(NodeSignerTest, IssuingMakesTheNodesEtcdUserAndRoleFirst) {
  testing::FakeAccessGrants grants;
  opts_.access_grants = &grants;
  opts_.etcd_prefix = "/kmosix/";
  opts_.node_role_prefix = "kmosix-node-";
  json denied = Request("denied", "pod2");
  denied["spec"]["serviceAccountName"] = "default";
  Submit(denied);
  Submit(Request("req-1"));
  NodeSigner signer = Signer();
  ASSERT_TRUE(signer.Reconcile("kmosix/denied").ok());
  EXPECT_EQ(Answer(Stored(kNs, "denied")).value("type", ""), "Denied");
  EXPECT_TRUE(grants.Calls().empty()) << "a denied request made an etcd identity";

  ASSERT_TRUE(signer.Reconcile("kmosix/req-1").ok());
  EXPECT_EQ(Answer(Stored(kNs, "req-1")).value("type", ""), "Issued");
  EXPECT_EQ(grants.Calls(), std::vector<std::string>{
                                "ensure node1 kmosix-node-node1 /kmosix/ /kmosix/nodes/node1"});
  EXPECT_EQ(grants.Users(), std::set<std::string>{"node1"});
  EXPECT_EQ(grants.UserRoles("node1"), std::set<std::string>{"kmosix-node-node1"});
  EXPECT_EQ(
      grants.Permissions("kmosix-node-node1"),
      (std::vector<std::string>{"read [/kmosix/, /kmosix0)", "readwrite /kmosix/nodes/node1"}));
}

TEST_F(NodeSignerTest, WritesNothingWhileTheEtcdIdentityFailsAndIssuesOnTheNextTry) {
  testing::FakeAccessGrants grants;
  opts_.access_grants = &grants;
  opts_.etcd_prefix = "/kmosix/";
  opts_.node_role_prefix = "kmosix-node-";
  Submit(Request("req-1"));
  NodeSigner signer = Signer();
  const int writes = kube_.Calls("UpdateStatus");
  grants.FailNext(RetryError("etcd unreachable"));
  grants.FailNext(PermissionDeniedError("the controller lacks etcd's root role"));
  // Returned as they are (the work queue retries), nothing written, no Denied.
  Status s = signer.Reconcile("kmosix/req-1");
  EXPECT_EQ(s.code(), Code::kRetry) << s.ToString();
  s = signer.Reconcile("kmosix/req-1");
  EXPECT_EQ(s.code(), Code::kPermissionDenied) << s.ToString();
  EXPECT_EQ(kube_.Calls("UpdateStatus"), writes);
  EXPECT_FALSE(Stored(kNs, "req-1").contains("status"));
  EXPECT_EQ(signer.Issued(), 0);
  EXPECT_EQ(signer.Denied(), 0);
  EXPECT_TRUE(grants.Users().empty());

  ASSERT_TRUE(signer.Reconcile("kmosix/req-1").ok());
  EXPECT_EQ(Answer(Stored(kNs, "req-1")).value("type", ""), "Issued");
  EXPECT_EQ(signer.Issued(), 1);
  EXPECT_EQ(grants.UserRoles("node1"), std::set<std::string>{"kmosix-node-node1"});
}

TEST_F(NodeSignerTest, OnlyTheLeaderAnswers) {
  leading_ = false;
  Submit(Request("req-1"));
  const int writes = kube_.Calls("UpdateStatus");
  NodeSigner signer = Signer();
  signer.Start();
  auto wait = [&](const std::function<bool()>& done) {
    for (int i = 0; i < 200 && !done(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    return done();
  };
  ASSERT_TRUE(wait([&] { return signer.Synced(); }));
  // A follower with a synced cache for a while: nothing written.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(kube_.Calls("UpdateStatus"), writes);
  EXPECT_FALSE(Stored(kNs, "req-1").contains("status"));
  leading_ = true;
  EXPECT_TRUE(wait([&] { return signer.Issued() == 1; }));
  // A request made while leading is answered from the watch.
  Submit(Request("req-2", "pod2"));
  EXPECT_TRUE(wait([&] { return signer.Issued() == 2; }));
  signer.Stop();
  EXPECT_EQ(Answer(Stored(kNs, "req-2")).value("type", ""), "Issued");
}

TEST(PodCertificateRequestCodecTest, RefusesMalformedRequestsNamingTheField) {
  const json base = {{"metadata", {{"name", "r"}, {"namespace", "n"}}},
                     {"spec",
                      {{"signerName", "kmosix.io/node"},
                       {"podName", "p"},
                       {"podUID", "u"},
                       {"serviceAccountName", "s"},
                       {"nodeName", "n1"},
                       {"stubPKCS10Request", "AAAA"}}}};
  ASSERT_TRUE(DecodePodCertificateRequest(base).ok());
  struct Case {
    std::string field;
    std::function<void(json&)> change;
  };
  for (const Case& c : std::vector<Case>{
           {"spec.nodeName", [](json& o) { o["spec"].erase("nodeName"); }},
           {"spec.podUID", [](json& o) { o["spec"]["podUID"] = 7; }},
           {"spec.stubPKCS10Request", [](json& o) { o["spec"]["stubPKCS10Request"] = "!!"; }},
           {"spec.maxExpirationSeconds", [](json& o) { o["spec"]["maxExpirationSeconds"] = -1; }},
           {"spec.unverifiedUserAnnotations",
            [](json& o) { o["spec"]["unverifiedUserAnnotations"] = "x"; }},
           {"metadata.namespace", [](json& o) { o["metadata"].erase("namespace"); }},
           {"spec", [](json& o) { o.erase("spec"); }},
       }) {
    json o = base;
    c.change(o);
    auto r = DecodePodCertificateRequest(o);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), Code::kInvalid) << c.field;
    EXPECT_EQ(r.status().message().rfind(c.field, 0), 0u) << r.status().message();
  }
}

}  // namespace
}  // namespace kmosix::bridge
