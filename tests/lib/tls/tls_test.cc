// lib/tls over real loopback sockets: an httplib SSLServer set up by
// ServerCredentials::Configure and clients with certificates made by
// TestPki. Proves mutual authentication, the identity a handler sees,
// refusals (another CA, no certificate where one is required, TLS 1.1) and
// rotation of the server's certificate without a restart.
#include "tls/tls.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/bio.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "fakes/fake_clock.h"
#include "support/test_pki.h"

namespace kmosix::tls {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kmosix::testing::TestPki::OpensslPresent())
      GTEST_SKIP() << "SKIPPED: openssl CLI not found: cannot make test certificates";
    ASSERT_EQ(pki_.MakeCa(), "");
    ASSERT_EQ(pki_.MakeCa("other"), "");
    ASSERT_EQ(pki_.MakeLeaf("server", "node2", {kGroupNodes}), "");
    ASSERT_EQ(pki_.MakeLeaf("node1", "node1", {kGroupNodes}), "");
    ASSERT_EQ(pki_.MakeLeaf("ctl", "kmosix-controller", {kGroupControllers}), "");
    ASSERT_EQ(pki_.MakeLeaf("stranger", "node1", {kGroupNodes}, {}, "other"), "");
  }
  void TearDown() override {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
    std::filesystem::remove_all(pki_.dir());
  }

  Files ServerFiles() { return {pki_.Ca(), pki_.Cert("server"), pki_.Key("server")}; }
  Files ClientFiles(const std::string& who, const std::string& ca = "ca") {
    return {pki_.Ca(ca), pki_.Cert(who), pki_.Key(who)};
  }

  void Serve(bool require_client_cert) {
    auto loaded = ServerCredentials::Load(ServerFiles(), clock_);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    creds_ = std::move(*loaded);
    server_ = std::make_unique<httplib::SSLServer>([&, require_client_cert](SSL_CTX& ctx) {
      return creds_->Configure(ctx, require_client_cert);
    });
    ASSERT_TRUE(server_->is_valid());
    server_->Get("/who", [](const httplib::Request& req, httplib::Response& res) {
      Identity id = PeerIdentity(req.ssl);
      std::string groups;
      for (const auto& g : id.groups) groups += (groups.empty() ? "" : ",") + g;
      res.set_content(id.empty() ? "anonymous" : id.name + "|" + groups, "text/plain");
    });
    port_ = server_->bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  // GET /who with `files` as the client's ("" body on a failed connection).
  std::string Who(const Files& files, bool with_cert = true) {
    std::unique_ptr<httplib::Client> cli;
    const std::string url = "https://127.0.0.1:" + std::to_string(port_);
    if (with_cert) {
      cli = std::make_unique<httplib::Client>(url, files.cert, files.key);
    } else {
      cli = std::make_unique<httplib::Client>(url);
    }
    cli->set_ca_cert_path(files.ca.c_str());
    cli->enable_server_certificate_verification(true);
    auto r = cli->Get("/who");
    return r ? r->body : "";
  }

  // The CN of the certificate the server presents, through a raw OpenSSL
  // client ("" when the handshake fails).
  std::string ServerName(const Files& client, int max_version = 0) {
    auto ctx = MakeClientContext(client);
    if (!ctx.ok()) return "bad client: " + ctx.status().ToString();
    if (max_version != 0) {
      SSL_CTX_set_min_proto_version(ctx->get(), 0);
      SSL_CTX_set_max_proto_version(ctx->get(), max_version);
    }
    BIO* bio = BIO_new_ssl_connect(ctx->get());
    BIO_set_conn_hostname(bio, ("127.0.0.1:" + std::to_string(port_)).c_str());
    std::string name;
    if (BIO_do_handshake(bio) > 0) {
      SSL* ssl = nullptr;
      BIO_get_ssl(bio, &ssl);
      name = PeerIdentity(ssl).name;
    }
    BIO_free_all(bio);
    return name;
  }

  kmosix::testing::TestPki pki_{"/tmp/kmx-tls-test-" + std::to_string(::getpid())};
  testing::FakeClock clock_;
  std::unique_ptr<ServerCredentials> creds_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::thread thread_;
  int port_ = 0;
};

TEST_F(TlsTest, MutualTlsShowsTheClientsIdentityToTheHandler) {
  Serve(/*require_client_cert=*/true);
  EXPECT_EQ(Who(ClientFiles("node1")), "node1|kmosix:nodes");
  EXPECT_EQ(Who(ClientFiles("ctl")), "kmosix-controller|kmosix:controllers");
  EXPECT_EQ(ServerName(ClientFiles("node1")), "node2");
  EXPECT_EQ(creds_->Name(), "node2");
}

TEST_F(TlsTest, RefusesAnotherCaNoCertificateAndOldProtocols) {
  Serve(/*require_client_cert=*/true);
  EXPECT_EQ(Who(ClientFiles("stranger", "ca")), "") << "a certificate of another CA";
  EXPECT_EQ(Who(ClientFiles("node1"), /*with_cert=*/false), "") << "no client certificate";
  EXPECT_EQ(ServerName(ClientFiles("node1"), TLS1_1_VERSION), "") << "TLS 1.1";
  // And the client refuses a server its CA did not sign.
  EXPECT_EQ(ServerName(ClientFiles("stranger", "other")), "");
}

TEST_F(TlsTest, OptionalClientCertificateLeavesTheCallerAnonymous) {
  Serve(/*require_client_cert=*/false);
  EXPECT_EQ(Who(ClientFiles("node1"), /*with_cert=*/false), "anonymous");
  EXPECT_EQ(Who(ClientFiles("node1")), "node1|kmosix:nodes");
  EXPECT_EQ(Who(ClientFiles("stranger", "ca")), "") << "a bad certificate is still refused";
}

TEST_F(TlsTest, RotatedCertificateIsServedWithoutARestart) {
  Serve(/*require_client_cert=*/true);
  ASSERT_EQ(ServerName(ClientFiles("node1")), "node2");
  // New key and certificate (a new CN to tell them apart) in place of the old.
  ASSERT_EQ(pki_.MakeLeaf("server", "node2-rotated", {kGroupNodes}), "");
  EXPECT_EQ(ServerName(ClientFiles("node1")), "node2") << "looked again only after the interval";
  clock_.Advance(ServerCredentials::kReloadInterval);
  EXPECT_EQ(ServerName(ClientFiles("node1")), "node2-rotated");
  EXPECT_EQ(creds_->Reloads(), 1u);
  EXPECT_EQ(Who(ClientFiles("node1")), "node1|kmosix:nodes");
  // A key that does not match (half-written rotation) keeps the last good pair.
  ASSERT_EQ(pki_.MakeLeaf("spare", "node2-spare", {kGroupNodes}), "");
  std::filesystem::copy_file(pki_.Key("spare"), pki_.Key("server"),
                             std::filesystem::copy_options::overwrite_existing);
  clock_.Advance(ServerCredentials::kReloadInterval);
  EXPECT_EQ(ServerName(ClientFiles("node1")), "node2-rotated");
  EXPECT_EQ(creds_->Reloads(), 1u);
}

TEST(TlsFilesTest, IncompleteOrBadFilesAreErrors) {
  testing::FakeClock clock;
  EXPECT_EQ(ServerCredentials::Load({"", "a", "b"}, clock).status().code(), Code::kInvalid);
  EXPECT_EQ(ServerCredentials::Load({"/nonexistent/ca", "/nonexistent/c", "/nonexistent/k"}, clock)
                .status()
                .code(),
            Code::kNotFound);
  EXPECT_EQ(
      MakeClientContext({"/nonexistent/ca", "/nonexistent/c", "/nonexistent/k"}).status().code(),
      Code::kInvalid);
}

}  // namespace
}  // namespace kmosix::tls
