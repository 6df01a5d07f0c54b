// AccessControl::Decide: every surface against every kind of caller (no
// credentials, a node's certificate, a controller's or admin's certificate,
// read-only and admin tokens), and the peer routes' per-migration check.
#include "access.h"

#include <gtest/gtest.h>

#include <map>

namespace kmosix::agent {
namespace {

class FakePeers : public PeerAuthorizer {
 public:
  Status AllowPeer(const std::string& peer, const std::string& id) override {
    asked = peer + "/" + id;
    auto it = ordered.find(id);
    if (it == ordered.end()) return PermissionDeniedError("migration " + id + " was not ordered");
    if (it->second != peer) return PermissionDeniedError(peer + " is not its source");
    return down ? RetryError("etcd unreachable") : Status::Ok();
  }
  std::map<std::string, std::string> ordered;  // id -> source
  std::string asked;
  bool down = false;
};

const std::string kAdmin = "Bearer aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const std::string kViewer = "Bearer vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

class AccessTest : public ::testing::Test {
 protected:
  AccessTest()
      : tokens_(*auth::ParseTokenFile("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,admin,alice\n"
                                      "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv,read-only,dash\n")),
        access_(&tokens_, &peers_) {
    peers_.ordered["m-1"] = "node1";
  }
  // "allowed" or "<status> <reason>".
  std::string Decide(const std::string& method, const std::string& path, const tls::Identity& who,
                     const std::string& authorization = "") {
    AccessDecision d = access_.Decide(method, path, who, authorization);
    if (d.allowed) return "allowed";
    EXPECT_FALSE(d.message.empty());
    EXPECT_EQ(d.message.find("aaaa"), std::string::npos) << "a token in a message";
    return std::to_string(d.http_status) + " " + d.reason;
  }

  const tls::Identity node1_{"node1", {tls::kGroupNodes}};
  const tls::Identity node3_{"node3", {tls::kGroupNodes}};
  const tls::Identity controller_{"kmosix-controller", {tls::kGroupControllers}};
  const tls::Identity admin_{"kmosix-admin", {tls::kGroupAdmins}};
  const tls::Identity nobody_{};
  FakePeers peers_;
  auth::Authenticator tokens_;
  AccessControl access_;
};

TEST_F(AccessTest, HealthIsOpen) { EXPECT_EQ(Decide("GET", "/healthz", nobody_), "allowed"); }

TEST_F(AccessTest, RestApiNeedsATokenOrATrustedCertificate) {
  EXPECT_EQ(Decide("GET", "/v1/workloads", nobody_), "401 no_credentials");
  EXPECT_EQ(Decide("GET", "/v1/workloads/w/logs", node1_), "403 node_certificate")
      << "a node never reads another node's workloads";
  EXPECT_EQ(Decide("GET", "/v1/workloads", nobody_, "Bearer wrongwrongwrongwrong"),
            "401 bad_token");
  EXPECT_EQ(Decide("GET", "/v1/workloads", nobody_, kViewer), "allowed");
  EXPECT_EQ(Decide("GET", "/metrics", nobody_, kViewer), "allowed");
  EXPECT_EQ(Decide("POST", "/v1/workloads", nobody_, kViewer), "403 read_only_token");
  EXPECT_EQ(Decide("POST", "/v1/workloads", nobody_, kAdmin), "allowed");
  EXPECT_EQ(Decide("DELETE", "/v1/workloads/w", controller_), "allowed");
  EXPECT_EQ(Decide("POST", "/v1/workloads/w/migrate", admin_), "allowed");
}

TEST_F(AccessTest, DebugRoutesNeedAdmin) {
  EXPECT_EQ(Decide("GET", "/v1/debug/failpoints", nobody_, kViewer), "403 read_only_token");
  EXPECT_EQ(Decide("PUT", "/v1/debug/failpoints/x", node1_), "403 node_certificate");
  EXPECT_EQ(Decide("PUT", "/v1/debug/failpoints/x", nobody_, kAdmin), "allowed");
}

TEST_F(AccessTest, PeerRoutesOnlyFromTheNodeEtcdNamesAsSource) {
  EXPECT_EQ(Decide("GET", "/v1/peer/info", nobody_), "401 no_certificate");
  EXPECT_EQ(Decide("GET", "/v1/peer/info", nobody_, kAdmin), "401 no_certificate")
      << "tokens do not speak for nodes";
  EXPECT_EQ(Decide("GET", "/v1/peer/info", controller_), "403 not_a_node");
  EXPECT_EQ(Decide("GET", "/v1/peer/info", node3_), "allowed");
  for (const char* verb : {"/prepare", "/stream", "/restore", "/commit", "/abort", ""}) {
    const std::string path = std::string("/v1/peer/migrations/m-1") + verb;
    EXPECT_EQ(Decide("POST", path, node1_), "allowed") << path;
    EXPECT_EQ(peers_.asked, "node1/m-1");
    EXPECT_EQ(Decide("POST", path, node3_), "403 not_ordered") << path;
  }
  EXPECT_EQ(Decide("POST", "/v1/peer/migrations/forged/prepare", node1_), "403 not_ordered");
  peers_.down = true;
  EXPECT_EQ(Decide("POST", "/v1/peer/migrations/m-1/prepare", node1_), "503 unknown");
}

TEST_F(AccessTest, StandaloneAgentsAcceptAnyNodeOfTheCa) {
  AccessControl standalone(nullptr, nullptr);
  EXPECT_TRUE(standalone.Decide("POST", "/v1/peer/migrations/x/prepare", node3_, "").allowed);
  EXPECT_FALSE(standalone.Decide("POST", "/v1/peer/migrations/x/prepare", controller_, "").allowed);
  // Without a token file only certificates open the REST API.
  EXPECT_EQ(standalone.Decide("GET", "/v1/workloads", nobody_, kAdmin).http_status, 401);
  EXPECT_TRUE(standalone.Decide("GET", "/v1/workloads", admin_, "").allowed);
}

}  // namespace
}  // namespace kmosix::agent
