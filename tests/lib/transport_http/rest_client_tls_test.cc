// rest::MakeClient (lib/transport_http/rest.h) as a TLS client: an identity
// issued under an intermediate CA (an agent's pod certificate: the kubelet's
// one-file bundle of key, leaf and node issuer) is presented with its whole
// chain, so a server trusting only the root verifies it. httplib alone sends
// the leaf only (the control case), which is how agents with pod
// certificates failed to reach each other before.
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "fakes/fake_clock.h"
#include "support/test_pki.h"
#include "tls/tls.h"
#include "transport_http/rest.h"

namespace kmosix::rest {
namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class RestClientTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::TestPki::OpensslPresent())
      GTEST_SKIP() << "SKIPPED: openssl CLI not found: cannot make test certificates";
    ASSERT_EQ(pki_.MakeCa(), "");
    ASSERT_EQ(pki_.MakeIntermediate("issuer"), "");
    ASSERT_EQ(pki_.MakeLeaf("server", "node2", {tls::kGroupNodes}), "");
    ASSERT_EQ(pki_.MakeLeaf("node1", "node1", {tls::kGroupNodes}, {}, "issuer"), "");
    // The kubelet's bundle: the key first, then the leaf and its issuer.
    bundle_ = pki_.dir() + "/node1.pem";
    std::ofstream(bundle_) << Read(pki_.Key("node1")) << Read(pki_.Cert("node1"))
                           << Read(pki_.Cert("issuer"));
    auto loaded =
        tls::ServerCredentials::Load({pki_.Ca(), pki_.Cert("server"), pki_.Key("server")}, clock_);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    creds_ = std::move(*loaded);
    server_ = std::make_unique<httplib::SSLServer>(
        [&](SSL_CTX& ctx) { return creds_->Configure(ctx, /*require_client_cert=*/true); });
    server_->Get("/who", [](const httplib::Request& req, httplib::Response& res) {
      res.set_content(tls::PeerIdentity(req.ssl).name, "text/plain");
    });
    port_ = server_->bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void TearDown() override {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
    std::filesystem::remove_all(pki_.dir());
  }
  std::string Url() const { return "https://127.0.0.1:" + std::to_string(port_); }

  testing::TestPki pki_{"/tmp/kmx-rest-client-tls-" + std::to_string(::getpid())};
  testing::FakeClock clock_;
  std::unique_ptr<tls::ServerCredentials> creds_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::thread thread_;
  int port_ = 0;
  std::string bundle_;
};

TEST_F(RestClientTlsTest, PresentsAnIntermediateIssuedIdentityWithItsChain) {
  auto cli = MakeClient(Url(), {pki_.Ca(), bundle_, bundle_}, "this agent");
  ASSERT_TRUE(cli.ok()) << cli.status().ToString();
  auto r = (*cli)->Get("/who");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->body, "node1");

  // The control: httplib's own client sends the leaf alone and is refused.
  httplib::Client bare(Url(), bundle_, bundle_);
  bare.set_ca_cert_path(pki_.Ca().c_str());
  bare.enable_server_certificate_verification(true);
  EXPECT_FALSE(bare.Get("/who")) << "the server verified a client certificate without its issuer";
}

TEST_F(RestClientTlsTest, AnUnreadableChainIsAnError) {
  const std::string empty = pki_.dir() + "/empty.pem";
  std::ofstream(empty) << "";
  auto cli = MakeClient(Url(), {pki_.Ca(), empty, pki_.Key("node1")}, "this agent");
  ASSERT_FALSE(cli.ok());
  EXPECT_EQ(cli.status().code(), Code::kInvalid);
}

}  // namespace
}  // namespace kmosix::rest
