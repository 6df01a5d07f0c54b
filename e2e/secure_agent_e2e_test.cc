// End-to-end tests of the agents' secured surfaces (issue 11) on the default
// local cluster (agents on HTTPS with node certificates, tokens, etcd
// naming each migration's source and target). Linked into secure_e2e_test
// (one cluster for the etcd and the agent cases).
//
//   agent REST without a token                      -> 401, nothing created
//   agent REST with the read-only token             -> reads yes, writes 403
//   a peer route without a client certificate       -> 401 (a token is not a node)
//   a peer route with a controller's certificate    -> 403 (not a node)
//   a certificate of another CA                     -> TLS refused
//   a node certificate of the wrong node for a migration etcd ordered
//                                                   -> 403, nothing prepared;
//                                                      its source passes
//   the data channel without a client certificate   -> TLS refused
//   node2's certificate rotated while a workload runs; migrations to node2
//   and back succeed, no agent restarted.
#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "cluster.h"
#include "cluster/records.h"
#include "e2e_environment.h"
#include "etcd/etcd_state_store.h"
#include "support/test_pki.h"
#include "tls/tls.h"

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

std::string PkiDir() {
  auto st = RunCommand(ShellQuote(Cluster::RepoDir() + "/scripts/cluster") + " status --json");
  json j = json::parse(st.output, nullptr, false);
  if (j.is_discarded() || !j.contains("etcd") || !j["etcd"].is_object()) return "";
  return j["etcd"].value("pki_dir", "");
}

// GET/POST `path` on `url` as `who` (pki/<who>.{crt,key}; "" = no client
// certificate) with the cluster's CA. Status, or -1 when TLS refused us.
int Call(const std::string& url, const std::string& ca, const std::string& cert,
         const std::string& key, const std::string& method, const std::string& path,
         const std::string& body = "{}") {
  std::unique_ptr<httplib::Client> cli = cert.empty()
                                             ? std::make_unique<httplib::Client>(url)
                                             : std::make_unique<httplib::Client>(url, cert, key);
  cli->set_ca_cert_path(ca.c_str());
  cli->enable_server_certificate_verification(true);
  cli->set_connection_timeout(5, 0);
  cli->set_read_timeout(10, 0);
  auto r =
      method == "GET" ? cli->Get(path.c_str()) : cli->Post(path.c_str(), body, "application/json");
  return r ? r->status : -1;
}

class SecureAgentE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = ClusterForTest();
    if (c_ == nullptr) return;
    pki_ = PkiDir();
    ASSERT_FALSE(pki_.empty()) << "scripts/cluster status --json names no pki dir";
    for (const auto& n : c_->Nodes())
      ASSERT_EQ(n.url.rfind("https://", 0), 0u) << "agents must serve https by default: " << n.url;
  }
  std::string Ca() const { return pki_ + "/ca.crt"; }
  std::string Crt(const std::string& who) const { return pki_ + "/" + who + ".crt"; }
  std::string Key(const std::string& who) const { return pki_ + "/" + who + ".key"; }
  const Node& N(int i) const { return c_->Nodes().at(static_cast<size_t>(i - 1)); }
  // The port of node i's agent (from its URL).
  static int PortOf(const Node& n) { return std::stoi(n.url.substr(n.url.rfind(':') + 1)); }
  // Migrates `name` from `from` to `to` through the source agent's REST API;
  // "" when it Succeeded, else what happened.
  static std::string Migrate(const Node& from, const std::string& name, const Node& to) {
    auto r = HttpPost(from, "/v1/workloads/" + name + "/migrate", {{"target", to.url}},
                      std::chrono::seconds(180));
    json report = json::parse(r.body, nullptr, false);
    if (r.status != 200 || !report.is_object() || report.value("outcome", "") != "Succeeded")
      return r.Describe();
    return "";
  }

  Cluster* c_ = nullptr;
  std::string pki_;
};

TEST_F(SecureAgentE2E, RestApiNeedsATokenAndAdminToWrite) {
  Endpoint anonymous(N(1).url, N(1).ca_file, "");
  auto r = HttpGet(anonymous, "/v1/workloads");
  EXPECT_EQ(r.status, 401) << r.Describe();
  EXPECT_EQ(CheckApiError(r), "");
  r = HttpPost(anonymous, "/v1/workloads", DemoWorkloadSpec("sneaky", {}));
  EXPECT_EQ(r.status, 401) << r.Describe();
  EXPECT_EQ(HttpGet(N(1), "/v1/workloads/sneaky").status, 404) << "created without a token";
  EXPECT_EQ(HttpGet(anonymous, "/healthz").status, 200) << "probes stay open";

  Endpoint viewer(N(1).url, N(1).ca_file, c_->ReadOnlyToken());
  EXPECT_EQ(HttpGet(viewer, "/v1/workloads").status, 200);
  r = HttpPost(viewer, "/v1/workloads", DemoWorkloadSpec("sneaky", {}));
  EXPECT_EQ(r.status, 403) << r.Describe();
  EXPECT_EQ(HttpGet(N(1), "/v1/workloads/sneaky").status, 404);
  EXPECT_EQ(HttpGet(N(1), "/v1/workloads").status, 200) << "the admin token works";
  // The denials are counted.
  auto metrics = HttpGet(N(1), "/metrics");
  EXPECT_NE(metrics.body.find("kmosix_agent_denied_total"), std::string::npos);
}

TEST_F(SecureAgentE2E, PeerRoutesNeedTheRightNode) {
  const std::string url = N(2).url;
  // A token is not a node; a controller is not a node.
  EXPECT_EQ(Call(url, Ca(), "", "", "GET", "/v1/peer/info"), 401);
  EXPECT_EQ(Call(url, Ca(), Crt("controller1"), Key("controller1"), "GET", "/v1/peer/info"), 403);
  EXPECT_EQ(Call(url, Ca(), Crt("node3"), Key("node3"), "GET", "/v1/peer/info"), 200);

  // etcd orders migration e2e-forge-1 from node1 to node2 (written as the
  // controller would, as controller1); node3 may not act on it, node1 may.
  EtcdConfig cfg;
  cfg.endpoints = ParseEtcdEndpoints(c_->EtcdUrl());
  cfg.tls = true;
  cfg.ca_file = Ca();
  cfg.cert_file = Crt("controller1");
  cfg.key_file = Key("controller1");
  EtcdStateStore store(cfg);
  api::Migration m;
  m.id = "e2e-forge-1";
  m.workload = "nothing-here";
  m.source = "node1";
  m.target = "node2";
  m.epoch = 1;
  m.created_ms = m.updated_ms = 1;
  cluster::KeyLayout keys;
  ASSERT_TRUE(store.Put(keys.Migration(m.id), cluster::MigrationToJson(m).dump()).ok());
  const std::string prepare = "/v1/peer/migrations/e2e-forge-1/prepare";
  EXPECT_EQ(Call(url, Ca(), Crt("node3"), Key("node3"), "POST", prepare), 403);
  EXPECT_EQ(Call(url, Ca(), Crt("node3"), Key("node3"), "POST",
                 "/v1/peer/migrations/e2e-forge-1/stream", "garbage"),
            403);
  // node1 passes the check; its (empty) offer is then refused as bad input.
  EXPECT_EQ(Call(url, Ca(), Crt("node1"), Key("node1"), "POST", prepare), 400);
  // A migration to node2 is not node3's to accept either.
  EXPECT_EQ(Call(N(3).url, Ca(), Crt("node1"), Key("node1"), "POST",
                 "/v1/peer/migrations/e2e-forge-1/prepare"),
            403);
  (void)store.Delete(keys.Migration(m.id));
  EXPECT_EQ(HttpGet(N(2), "/v1/workloads/nothing-here").status, 404) << "something was prepared";
}

TEST_F(SecureAgentE2E, CertificatesOfAnotherCaAndNoCertificateAtAllAreRefused) {
  if (!testing::TestPki::OpensslPresent())
    GTEST_SKIP() << "KMOSIX-E2E-SKIPPED: openssl not on PATH";
  testing::TestPki rogue("/tmp/kmx-secure-agent-e2e-" + std::to_string(::getpid()));
  ASSERT_EQ(rogue.MakeCa(), "");
  ASSERT_EQ(rogue.MakeLeaf("node1", "node1", {"kmosix:nodes"}), "");
  EXPECT_EQ(Call(N(2).url, Ca(), rogue.Cert("node1"), rogue.Key("node1"), "GET", "/v1/peer/info"),
            -1)
      << "a node certificate of another CA got through TLS";

  // The data channel (port + 1) requires a client certificate.
  tls::CtxPtr anonymous(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  SSL_CTX_load_verify_locations(anonymous.get(), Ca().c_str(), nullptr);
  const std::string data = N(2).addr + ":" + std::to_string(PortOf(N(2)) + 1);
  BIO* bio = BIO_new_ssl_connect(anonymous.get());
  BIO_set_conn_hostname(bio, data.c_str());
  bool got_through = false;
  if (BIO_do_handshake(bio) > 0) {
    // TLS 1.3 reports the refusal on the first read.
    const std::string hello = "KMXDATA2 e2e-forge-2\n";
    BIO_write(bio, hello.data(), static_cast<int>(hello.size()));
    char buf[64];
    got_through = BIO_read(bio, buf, sizeof buf) > 0;
  }
  BIO_free_all(bio);
  EXPECT_FALSE(got_through) << "the data channel served a client without a certificate";
  const std::string metrics = HttpGet(N(2), "/metrics").body;
  EXPECT_NE(metrics.find("reason=\"handshake\",surface=\"data\"}"), std::string::npos)
      << "the refused handshake is not counted: " << metrics;
  std::filesystem::remove_all(rogue.dir());
}

TEST_F(SecureAgentE2E, RotatedNodeCertificateKeepsMigrationsWorking) {
  const std::string name = "rotating";
  ASSERT_EQ(CreateDemo(N(1), name, {"--mem", "16"}), "");
  ASSERT_TRUE(WaitForTick(N(1), name, 3, seconds(60)).ok);
  // node2 gets a new key and certificate (same CA, same name), as a
  // cert-manager renewal would write them.
  const std::string cmd =
      "cd " + ShellQuote(pki_) +
      " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "
      "node2.key.new -out node2.csr -subj /O=kmosix:nodes/CN=node2 2>/dev/null"
      " && printf 'subjectAltName=DNS:node2,IP:" +
      N(2).addr +
      ",IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > node2.ext"
      " && openssl x509 -req -in node2.csr -CA ca.crt -CAkey ca.key -set_serial 0x$(openssl rand "
      "-hex 16) -days 2 -extfile node2.ext -out node2.crt.new 2>/dev/null"
      " && openssl x509 -in node2.crt -noout -serial > node2.serial.old"
      " && mv -f node2.key.new node2.key && mv -f node2.crt.new node2.crt && rm -f node2.csr "
      "node2.ext";
  auto rotated = RunCommand(cmd);
  ASSERT_EQ(rotated.exit_code, 0) << rotated.output;
  std::this_thread::sleep_for(seconds(3));  // the agents look at their files every 2 s

  ASSERT_EQ(Migrate(N(1), name, N(2)), "");
  EXPECT_EQ(CheckRunsExactlyOn(*c_, name, N(2)), "");
  ASSERT_EQ(Migrate(N(2), name, N(1)), "");
  EXPECT_EQ(CheckRunsExactlyOn(*c_, name, N(1)), "");
  // node2 serves the new certificate.
  auto served = RunCommand(
      "echo | openssl s_client -connect " + N(2).addr + ":" + std::to_string(PortOf(N(2))) +
      " -CAfile " + ShellQuote(Ca()) + " -cert " + ShellQuote(Crt("node1")) + " -key " +
      ShellQuote(Key("node1")) + " 2>/dev/null | openssl x509 -noout -serial; cat " +
      ShellQuote(pki_ + "/node2.crt") + " | openssl x509 -noout -serial");
  const auto nl = served.output.find('\n');
  ASSERT_NE(nl, std::string::npos) << served.output;
  EXPECT_EQ(served.output.substr(0, nl), served.output.substr(nl + 1, nl)) << served.output;
  (void)HttpDelete(N(1), "/v1/workloads/" + name);
}

// From inside a workload (its own network namespace, no CAP_NET_RAW) the
// agent's port and etcd are reachable only as from any outside client, and
// without the cluster's certificates or a token they serve it nothing.
TEST_F(SecureAgentE2E, AWorkloadCannotUseItsAgentOrEtcd) {
  const std::string agent = N(1).addr + ":" + std::to_string(PortOf(N(1)));
  const std::string etcd = c_->EtcdUrl().substr(c_->EtcdUrl().find("://") + 3);
  const std::string script =
      "wget -q -T 3 -O - http://" + agent +
      "/v1/workloads >/tmp/a 2>&1; echo agent_plain=$?; "
      "grep -c '\"items\"' /tmp/a | sed 's/^/agent_items=/'; "
      "wget -q -T 3 -O - http://" +
      etcd +
      "/version >/dev/null 2>&1; echo etcd_plain=$?; "
      "wget -q -T 3 -O - http://127.0.0.1:" +
      std::to_string(PortOf(N(1))) +
      "/healthz >/dev/null 2>&1; echo agent_loopback=$?; echo probe_done; sleep 300";
  json body = {{"name", "prober"},
               {"image", Cluster::kDemoImage},
               {"args", {"/bin/sh", "-c", script}},
               {"env", json::object()}};
  auto r = HttpPost(N(1), "/v1/workloads", body, seconds(60));
  ASSERT_EQ(r.status, 201) << r.Describe();
  std::string logs;
  auto done = WaitFor("the prober to finish", milliseconds(60'000), [&]() -> Observation {
    logs = HttpGet(N(1), "/v1/workloads/prober/logs").body;
    return {logs.find("probe_done") != std::string::npos, logs};
  });
  ASSERT_TRUE(done.ok) << done.message;
  EXPECT_EQ(logs.find("agent_plain=0"), std::string::npos)
      << "plain HTTP to the agent worked: " << logs;
  EXPECT_NE(logs.find("agent_items=0"), std::string::npos)
      << "the agent served its workloads: " << logs;
  EXPECT_EQ(logs.find("etcd_plain=0"), std::string::npos) << "etcd answered plain HTTP: " << logs;
  EXPECT_EQ(logs.find("agent_loopback=0"), std::string::npos)
      << "the node's loopback reached the agent: " << logs;
  (void)HttpDelete(N(1), "/v1/workloads/prober");
}

}  // namespace
}  // namespace kmosix::e2e
