// End-to-end tests of the secured node plane (issue 11) on the local cluster
// as `scripts/cluster up` makes it by default: etcd over TLS with client
// certificates and etcd auth, every node and controller with its own identity.
//
//   etcd without a client certificate          -> refused (TLS), nothing written
//   etcd with a certificate of another CA      -> refused (TLS)
//   etcd over plain http                       -> refused
//   node1's identity writing nodes/node2       -> permission denied, node2's record intact
//   node1's identity writing the leader key    -> permission denied
//   node1's identity reading the prefix        -> allowed (agents read the cluster)
//   a workload running on node1                -> node1 may update its record,
//                                                 node3 may not (put, CAS,
//                                                 delete); moved to node2 by the
//                                                 controller (the migration
//                                                 succeeds), node2 may write it
//                                                 and node1 no longer (its grants
//                                                 on the workload and the
//                                                 migration are revoked)
//   each controller replica                    -> its own identity: the certificate
//                                                 it serves names it (CN = its id,
//                                                 O=kmosix:controllers), no two alike,
//                                                 and etcd takes its own client
//                                                 certificate (it writes the prefix)
//
// Its own binary and cluster (three nodes, etcd, two controllers); the agent
// surfaces are in secure_agent_e2e_test.cc. Skips loudly where the cluster
// cannot run (see e2e_environment.h). That etcd's roles follow a custom
// --etcd-prefix is checked without a cluster: tests/scripts/cluster_etcd_auth_test.sh.
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "cluster.h"
#include "e2e_environment.h"
#include "etcd/etcd_state_store.h"
#include "support/test_pki.h"
#include "tls/tls.h"

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

constexpr int kNodes = 3;

// The cluster's etcd as `scripts/cluster status --json` describes it.
struct EtcdAccess {
  std::string url;  // https://10.77.0.1:2379
  bool tls = false;
  std::string pki_dir;  // NAME.{crt,key} per identity, ca.crt
  std::string prefix;   // the cluster's key prefix ("/kmosix/")
  std::string error;
};

EtcdAccess ReadEtcdAccess() {
  EtcdAccess a;
  auto st = RunCommand(ShellQuote(Cluster::RepoDir() + "/scripts/cluster") + " status --json");
  json j = json::parse(st.output, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("etcd") || !j["etcd"].is_object()) {
    a.error = "scripts/cluster status --json has no etcd: " + st.output;
    return a;
  }
  const json& e = j["etcd"];
  a.url = e.value("url", "");
  a.tls = e.value("tls", false);
  a.pki_dir = e.value("pki_dir", "");
  a.prefix = e.value("prefix", "/kmosix/");
  return a;
}

// A store as identity `name` (pki/name.{crt,key}); "" = no client certificate.
EtcdConfig As(const EtcdAccess& a, const std::string& name) {
  EtcdConfig cfg;
  cfg.endpoints = ParseEtcdEndpoints(a.url);
  cfg.tls = true;
  cfg.ca_file = a.pki_dir + "/ca.crt";
  if (!name.empty()) {
    cfg.cert_file = a.pki_dir + "/" + name + ".crt";
    cfg.key_file = a.pki_dir + "/" + name + ".key";
  }
  cfg.dial_timeout = milliseconds(2000);
  cfg.rpc_timeout = milliseconds(5000);
  return cfg;
}

// Who the server at `url` (https://HOST:PORT) says it is: the identity in the
// certificate it serves, verified against `ca` and HOST (an IP address), as
// kmosixctl checks a controller. Empty when the handshake or the check failed.
tls::Identity ServedIdentity(const std::string& url, const std::string& ca) {
  const std::string hostport = url.substr(url.find("://") + 3);
  const std::string host = hostport.substr(0, hostport.rfind(':'));
  tls::CtxPtr ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  if (!ctx || SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1) return {};
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  BIO* bio = BIO_new_ssl_connect(ctx.get());
  if (bio == nullptr) return {};
  BIO_set_conn_hostname(bio, hostport.c_str());
  SSL* ssl = nullptr;
  BIO_get_ssl(bio, &ssl);
  tls::Identity who;
  if (ssl != nullptr && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str()) == 1 &&
      BIO_do_handshake(bio) > 0 && SSL_get_verify_result(ssl) == X509_V_OK) {
    who = tls::PeerIdentity(ssl);
  }
  BIO_free_all(bio);
  return who;
}

class SecureEtcdE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = ClusterForTest();
    if (c_ == nullptr) return;
    etcd_ = ReadEtcdAccess();
    ASSERT_EQ(etcd_.error, "");
    ASSERT_TRUE(etcd_.tls) << "the default local cluster must run etcd with TLS: " << etcd_.url;
    ASSERT_EQ(etcd_.url.rfind("https://", 0), 0u) << etcd_.url;
  }
  Cluster* c_ = nullptr;
  EtcdAccess etcd_;
};

TEST_F(SecureEtcdE2E, WithoutClientCertificateIsRefused) {
  EtcdStateStore anonymous(As(etcd_, ""));
  auto put = anonymous.Put("/kmosix/e2e-anonymous", "x");
  ASSERT_FALSE(put.ok()) << "etcd accepted a write without a client certificate";
  EXPECT_NE(put.status().message().find("TLS"), std::string::npos) << put.status().ToString();
  EXPECT_FALSE(anonymous.Get("/kmosix/leader").ok()) << "etcd served a read without a certificate";

  // Nothing was written (checked as a controller, which may read everything).
  EtcdStateStore controller(As(etcd_, "controller1"));
  auto got = controller.Get("/kmosix/e2e-anonymous");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_FALSE(got->kv);
}

TEST_F(SecureEtcdE2E, PlainHttpIsRefused) {
  EtcdConfig plain;
  plain.endpoints = ParseEtcdEndpoints(etcd_.url);
  plain.dial_timeout = milliseconds(2000);
  EtcdStateStore store(plain);
  EXPECT_FALSE(store.Get("/kmosix/leader").ok()) << "etcd answered plaintext gRPC";
  // and the HTTP gateway without a certificate
  auto r = RunCommand("curl -sS -m 5 --cacert " + ShellQuote(etcd_.pki_dir + "/ca.crt") + " " +
                      ShellQuote(etcd_.url + "/health"));
  EXPECT_NE(r.exit_code, 0) << "etcd's /health answered without a client certificate: " << r.output;
}

TEST_F(SecureEtcdE2E, CertificateOfAnotherCaIsRefused) {
  if (!testing::TestPki::OpensslPresent())
    GTEST_SKIP() << "KMOSIX-E2E-SKIPPED: openssl not on PATH";
  std::string dir = std::filesystem::temp_directory_path() / "kmx-secure-e2e-XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const testing::TestPki rogue_pki(dir);
  ASSERT_EQ(rogue_pki.MakeCa("rogue-ca"), "");
  // Same name as a real node, wrong CA.
  ASSERT_EQ(rogue_pki.MakeLeaf("node1", "node1", {}, {}, "rogue-ca", "clientAuth"), "");
  EtcdConfig cfg = As(etcd_, "node1");
  cfg.cert_file = dir + "/node1.crt";
  cfg.key_file = dir + "/node1.key";
  EtcdStateStore rogue(cfg);
  auto put = rogue.Put("/kmosix/nodes/node1", "forged");
  EXPECT_FALSE(put.ok()) << "etcd accepted a certificate of another CA";
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST_F(SecureEtcdE2E, NodeIdentityCannotWriteAnotherNodesKey) {
  EtcdStateStore node1(As(etcd_, "node1"));
  // node1 may read the cluster (its agent does).
  auto before = node1.Get("/kmosix/nodes/node2");
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  ASSERT_TRUE(before->kv) << "node2 has published no record (is its agent up?)";

  auto forged = node1.Put("/kmosix/nodes/node2", "{\"forged\":true}");
  ASSERT_FALSE(forged.ok()) << "node1's identity wrote node2's key";
  EXPECT_EQ(forged.status().code(), Code::kPermissionDenied) << forged.status().ToString();
  EXPECT_NE(forged.status().message().find("permission denied"), std::string::npos)
      << forged.status().ToString();
  auto txn = node1.Commit(Txn{{}, {TxnOp::Put("/kmosix/nodes/node2", "{}")}, {}});
  EXPECT_FALSE(txn.ok()) << "node1's identity wrote node2's key in a txn";
  auto del = node1.Delete("/kmosix/nodes/node2");
  EXPECT_FALSE(del.ok()) << "node1's identity deleted node2's key";
  auto leader = node1.Put("/kmosix/leader", "node1");
  EXPECT_FALSE(leader.ok()) << "node1's identity wrote the controllers' election key";

  auto after = node1.Get("/kmosix/nodes/node2");
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  ASSERT_TRUE(after->kv);
  EXPECT_EQ(after->kv->value.find("forged"), std::string::npos) << after->kv->value;
}

// Whether `store` may write `key`: a transaction whose compare fails (so it
// writes nothing) with a put of `key`; etcd checks the permissions of every
// operation of a transaction, whichever branch runs. Ok: allowed; the
// store's error otherwise (kPermissionDenied: refused).
Status MayWrite(EtcdStateStore& store, const std::string& key) {
  Txn probe;
  probe.compares.push_back(Compare::Unchanged(key, 1));  // never true for a live record
  probe.then_ops.push_back(TxnOp::Put(key, "{\"probe\":true}"));
  auto r = store.Commit(probe);
  if (!r.ok()) return r.status();
  if (r->succeeded) return FailedError("the probe's compare held: it wrote " + key);
  return Status::Ok();
}

TEST_F(SecureEtcdE2E, NodesWriteOnlyTheRecordsTheyTakePartIn) {
  const ControllerProc* leader = nullptr;
  auto led = WaitFor("a controller to lead", milliseconds(60'000), [&]() -> Observation {
    std::string why;
    leader = c_->Leader(&why);
    return {leader != nullptr, why};
  });
  ASSERT_TRUE(led.ok) << led.message;
  const Endpoint api = *leader;
  const std::string name = "grants-w";
  const std::string wkey = etcd_.prefix + "workloads/" + name;
  auto created = HttpPost(api, "/v1/workloads", DemoWorkloadSpec(name, {}, "node1"));
  ASSERT_EQ(created.status, 201) << created.Describe();
  struct Cleanup {
    Endpoint api;
    std::string name;
    ~Cleanup() { (void)HttpDelete(api, "/v1/workloads/" + name); }
  } cleanup{api, name};
  auto on = [&](const std::string& node) {
    return WaitFor(name + " to run on " + node, milliseconds(120'000), [&]() -> Observation {
      std::string err;
      auto w = GetObject(api, "/v1/workloads/" + name, &err);
      if (!w) return {false, err};
      const json& st = (*w)["status"];
      const std::string phase = st.value("phase", ""), at = st.value("node", "");
      const std::string mig = st.value("migration", "");
      return {phase == "Running" && at == node && mig.empty(),
              "phase=" + phase + " node=" + at + " migration=" + mig};
    });
  };
  auto running = on("node1");
  ASSERT_TRUE(running.ok) << running.message;

  EtcdStateStore node1(As(etcd_, "node1")), node2(As(etcd_, "node2")), node3(As(etcd_, "node3"));
  auto before = node3.Get(wkey);
  ASSERT_TRUE(before.ok() && before->kv) << "node3 cannot read " << wkey;
  // node3 takes no part in it: etcd refuses every write.
  auto put = node3.Put(wkey, "{\"forged\":true}");
  ASSERT_FALSE(put.ok()) << "node3's identity overwrote " << wkey;
  EXPECT_EQ(put.status().code(), Code::kPermissionDenied) << put.status().ToString();
  auto cas = node3.Commit(Txn{{Compare::Unchanged(wkey, before->kv->mod_revision)},
                              {TxnOp::Put(wkey, "{\"forged\":true}")},
                              {}});
  ASSERT_FALSE(cas.ok()) << "node3's identity wrote " << wkey << " with a CAS";
  EXPECT_EQ(cas.status().code(), Code::kPermissionDenied) << cas.status().ToString();
  EXPECT_FALSE(node3.Delete(wkey).ok()) << "node3's identity deleted " << wkey;
  auto after = node3.Get(wkey);
  ASSERT_TRUE(after.ok() && after->kv);
  EXPECT_EQ(after->kv->mod_revision, before->kv->mod_revision) << after->kv->value;
  // node1 owns it: it may update its record (the same value, by CAS).
  auto update = node1.Commit(Txn{{Compare::Unchanged(wkey, after->kv->mod_revision)},
                                 {TxnOp::Put(wkey, after->kv->value)},
                                 {}});
  ASSERT_TRUE(update.ok()) << "node1 cannot write the record of its own workload: "
                           << update.status().ToString();
  EXPECT_TRUE(update->succeeded);

  // The controller moves it to node2; the migration succeeds on the secured cluster.
  auto order = HttpPost(api, "/v1/migrations", {{"workload", name}, {"target", "node2"}});
  ASSERT_EQ(order.status, 201) << order.Describe();
  const std::string id = order.Json().value("id", "");
  const std::string mkey = etcd_.prefix + "migrations/" + id;
  std::string phase;
  auto ended = WaitFor("migration " + id + " to end", milliseconds(240'000), [&]() -> Observation {
    std::string err;
    auto m = GetObject(api, "/v1/migrations/" + id, &err);
    if (!m) return {false, err};
    phase = m->value("phase", "");
    return {phase == "Succeeded" || phase == "Failed" || phase == "RolledBack",
            "phase=" + phase + " error=" + m->value("error", "")};
  });
  ASSERT_TRUE(ended.ok) << ended.message;
  EXPECT_EQ(phase, "Succeeded") << ended.message;
  auto moved = on("node2");
  ASSERT_TRUE(moved.ok) << moved.message;

  // Now node2 may write the workload, node1 neither it nor the migration
  // (revoked once the record let go, after the controller's grace), node3
  // still nothing, and the target never the migration record.
  Status s2 = MayWrite(node2, wkey);
  EXPECT_TRUE(s2.ok()) << "node2 owns " << name << " but may not write it: " << s2.ToString();
  auto revoked =
      WaitFor("node1's grants on " + wkey + " and " + mkey + " to be revoked", milliseconds(60'000),
              [&]() -> Observation {
                Status w = MayWrite(node1, wkey), m = MayWrite(node1, mkey);
                return {w.code() == Code::kPermissionDenied && m.code() == Code::kPermissionDenied,
                        "workload: " + w.ToString() + "; migration: " + m.ToString()};
              });
  EXPECT_TRUE(revoked.ok) << revoked.message;
  EXPECT_EQ(MayWrite(node3, wkey).code(), Code::kPermissionDenied);
  EXPECT_EQ(MayWrite(node2, mkey).code(), Code::kPermissionDenied);

  // The leader counts its grants and revokes.
  auto metrics = HttpGet(api, "/metrics");
  ASSERT_EQ(metrics.status, 200) << metrics.Describe();
  EXPECT_NE(metrics.body.find("kmosix_controller_grants_total{action=\"grant\",outcome=\"ok\"}"),
            std::string::npos)
      << metrics.body.substr(0, 4000);
  EXPECT_NE(metrics.body.find("kmosix_controller_grants_total{action=\"revoke\",outcome=\"ok\"}"),
            std::string::npos);
}

TEST_F(SecureEtcdE2E, ControllerReplicasHaveTheirOwnIdentities) {
  const auto& controllers = c_->Controllers();
  ASSERT_GE(controllers.size(), 2u) << "this check needs two controller replicas";
  std::set<std::string> served;
  for (const auto& c : controllers) {
    // The certificate its REST API serves: the cluster's CA's, for its
    // address, naming this replica (CN = its --id) in the controllers' group.
    const tls::Identity who = ServedIdentity(c.url, etcd_.pki_dir + "/ca.crt");
    EXPECT_EQ(who.name, c.name) << c.url << " serves no certificate naming " << c.name
                                << " that verifies against the cluster's CA and its address";
    EXPECT_TRUE(who.In(tls::kGroupControllers)) << c.name << " is not in group kmosix:controllers";
    served.insert(who.name);

    // etcd knows the replica by its own client certificate (user = its CN,
    // role kmosix-controller): it reads and writes the cluster's prefix.
    EtcdStateStore own(As(etcd_, c.name));
    const std::string key = etcd_.prefix + "e2e-identity-" + c.name;
    auto put = own.Put(key, c.name);
    ASSERT_TRUE(put.ok()) << c.name << "'s own certificate cannot write " << key << ": "
                          << put.status().ToString();
    auto leader = own.Get(etcd_.prefix + "leader");
    ASSERT_TRUE(leader.ok()) << c.name << ": " << leader.status().ToString();
    EXPECT_TRUE(leader->kv) << "no controller holds " << etcd_.prefix << "leader";
    EXPECT_TRUE(own.Delete(key).ok());
  }
  EXPECT_EQ(served.size(), controllers.size()) << "two replicas serve the same identity";
  // No shared identity beside them.
  EXPECT_FALSE(std::filesystem::exists(etcd_.pki_dir + "/controller.crt"))
      << "a shared controller certificate is still made";
}

}  // namespace
}  // namespace kmosix::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kmosix::e2e::ClusterOptions opts;
  opts.nodes = kmosix::e2e::kNodes;
  opts.etcd = true;
  opts.controllers = 2;  // two replicas, each with its own identity
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
