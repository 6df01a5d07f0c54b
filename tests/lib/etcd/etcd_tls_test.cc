// EtcdStateStore over TLS against a real etcd started with --client-cert-auth
// (a throwaway CA made with openssl): the StateStore conformance suite passes
// with a client certificate; no client certificate, or one of another CA, is
// refused with the TLS reason in the message; an https:// config without a CA
// (or with TLS files for http://, or mixing schemes) is refused at
// construction; rotated client certificate files are picked up by the next
// connection without a new store.
//
// Needs `etcd` (etcd-server) and `openssl`; the cases skip loudly without them.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "etcd/etcd_state_store.h"
#include "lib/kmosix/state_store_conformance.h"
#include "support/private_etcd.h"
#include "support/test_pki.h"

namespace kmosix::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::string TlsSkipReason() {
  if (auto why = EtcdSkipReason(); !why.empty()) return why;
  if (!TestPki::OpensslPresent())
    return "openssl not found on PATH (the test makes its CA with it)";
  return "";
}

// A private directory with CA "ca" (server "server", client "client" CN
// kmx-client) and CA "other" (client "foreign"); removed at destruction.
class EtcdPki {
 public:
  EtcdPki() {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string t = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/kmx-etcd-pki-XXXXXX";
    std::vector<char> buf(t.begin(), t.end());
    buf.push_back('\0');
    if (char* made = ::mkdtemp(buf.data())) dir_ = made;
    if (dir_.empty()) {
      error_ = "mkdtemp failed";
      return;
    }
    const TestPki pki(dir_);
    // In this order (the leaves need their CA), stopping at the first error.
    error_ = pki.MakeCa("ca");
    if (error_.empty()) error_ = pki.MakeCa("other");
    if (error_.empty()) error_ = pki.MakeLeaf("server", "kmx-etcd", {}, {}, "ca", "serverAuth");
    if (error_.empty()) error_ = pki.MakeLeaf("client", "kmx-client", {}, {}, "ca", "clientAuth");
    if (error_.empty())
      error_ = pki.MakeLeaf("foreign", "kmx-client", {}, {}, "other", "clientAuth");
  }
  ~EtcdPki() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  std::string path(const std::string& file) const { return dir_ + "/" + file; }
  const std::string& dir() const { return dir_; }

  // etcd's flags: TLS with the server certificate, client certificates of `trusted_ca`.
  std::vector<std::string> EtcdArgs(const std::string& trusted_ca = "ca") const {
    return {"--cert-file=" + path("server.crt"), "--key-file=" + path("server.key"),
            "--client-cert-auth", "--trusted-ca-file=" + path(trusted_ca + ".crt")};
  }
  // A client config with the client certificate `name` (none if "").
  EtcdConfig Client(const std::string& endpoint, const std::string& name = "client") const {
    EtcdConfig cfg = TestEtcdConfig(endpoint);
    cfg.tls = true;
    cfg.ca_file = path("ca.crt");
    if (!name.empty()) {
      cfg.cert_file = path(name + ".crt");
      cfg.key_file = path(name + ".key");
    }
    cfg.tls_refresh = seconds(1);
    return cfg;
  }

 private:
  std::string dir_;
  std::string error_;  // what openssl said, "" when every file was made
};

struct TlsEtcd {
  EtcdPki pki;
  PrivateEtcd etcd;
};

// One TLS etcd per test process, shared by the conformance cases.
std::shared_ptr<TlsEtcd>& SharedTlsEtcd() {
  static std::shared_ptr<TlsEtcd> shared;
  return shared;
}

class TlsEtcdEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { SharedTlsEtcd().reset(); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new TlsEtcdEnvironment);

// Starts `e` with TLS and client-cert auth; false (with a failure) if it did not come up.
bool StartTls(TlsEtcd& e) {
  if (!e.pki.ok()) {
    ADD_FAILURE() << "openssl could not make the test PKI: " << e.pki.error();
    return false;
  }
  e.etcd.UseTls(e.pki.EtcdArgs(), e.pki.Client(e.etcd.endpoint()));
  if (!e.etcd.Start()) {
    ADD_FAILURE() << "etcd with TLS did not start; log in " << e.etcd.dir() << "/etcd.log";
    return false;
  }
  return true;
}

}  // namespace

StateStoreHarness MakeTlsEtcdHarness() {
  auto& shared = SharedTlsEtcd();
  if (!shared) {
    shared = std::make_shared<TlsEtcd>();
    if (!StartTls(*shared)) return {};
  }
  StateStoreHarness h;
  h.keep_alive = shared;
  auto store = EtcdStateStore::Open(shared->pki.Client(shared->etcd.endpoint()));
  if (!store.ok()) {
    ADD_FAILURE() << store.status().ToString();
    return {};
  }
  h.store = std::move(*store);
  h.let_time_pass = [](milliseconds d) { std::this_thread::sleep_for(d); };
  return h;
}

namespace {

#define KMX_SKIP_WITHOUT_TLS_ETCD() \
  if (auto why = TlsSkipReason(); !why.empty()) GTEST_SKIP() << "ETCD TLS TEST SKIPPED: " << why

TEST(EtcdTlsTest, WithoutClientCertificateIsRefusedWithTheReason) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  TlsEtcd e;
  ASSERT_TRUE(StartTls(e));
  EtcdStateStore store(e.pki.Client(e.etcd.endpoint(), ""));
  auto got = store.Put("/tls/k", "v");
  ASSERT_FALSE(got.ok()) << "etcd accepted a client without a certificate";
  std::cout << "refused as: " << got.status().ToString() << "\n";
  EXPECT_EQ(got.status().code(), Code::kRetry) << got.status().ToString();
  EXPECT_NE(got.status().message().find("TLS"), std::string::npos) << got.status().ToString();
  // etcd really has nothing written
  EtcdStateStore good(e.pki.Client(e.etcd.endpoint()));
  auto check = good.Get("/tls/k");
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  EXPECT_FALSE(check->kv);
}

TEST(EtcdTlsTest, ClientCertificateOfAnotherCaIsRefused) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  TlsEtcd e;
  ASSERT_TRUE(StartTls(e));
  EtcdStateStore store(e.pki.Client(e.etcd.endpoint(), "foreign"));
  auto got = store.Put("/tls/k", "v");
  ASSERT_FALSE(got.ok()) << "etcd accepted a certificate of another CA";
  EXPECT_EQ(got.status().code(), Code::kRetry) << got.status().ToString();
  EXPECT_NE(got.status().message().find("TLS"), std::string::npos) << got.status().ToString();
}

TEST(EtcdTlsTest, ServerOfAnotherCaIsRefused) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  TlsEtcd e;
  ASSERT_TRUE(StartTls(e));
  EtcdConfig cfg = e.pki.Client(e.etcd.endpoint());
  cfg.ca_file = e.pki.path("other.crt");  // does not sign etcd's certificate
  EtcdStateStore store(cfg);
  auto got = store.Get("/tls/k");
  ASSERT_FALSE(got.ok()) << "the client trusted a server certificate of another CA";
  EXPECT_EQ(got.status().code(), Code::kRetry) << got.status().ToString();
}

TEST(EtcdTlsTest, PlaintextClientIsRefused) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  TlsEtcd e;
  ASSERT_TRUE(StartTls(e));
  EtcdStateStore store(TestEtcdConfig(e.etcd.endpoint()));
  EXPECT_FALSE(store.Put("/tls/k", "v").ok());
}

TEST(EtcdTlsTest, HttpsWithoutCaIsAConstructionError) {
  auto cfg = EtcdConfigFromFlags("https://127.0.0.1:2379", "", "", "");
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), Code::kInvalid);
  EXPECT_NE(cfg.status().message().find("CA"), std::string::npos) << cfg.status().ToString();

  EtcdConfig direct;
  direct.endpoints = {"127.0.0.1:1"};
  direct.tls = true;
  auto opened = EtcdStateStore::Open(direct);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Code::kInvalid);
  // The constructor cannot fail, but the store never talks plaintext instead.
  EtcdStateStore store(direct);
  EXPECT_EQ(store.Get("/k").status().code(), Code::kInvalid);
  EXPECT_EQ(store.Put("/k", "v").status().code(), Code::kInvalid);
  EXPECT_EQ(store.Watch(WatchOptions{"/k", false, 0, false}).status().code(), Code::kInvalid);
  EXPECT_EQ(store.KeepAlive(1).status().code(), Code::kInvalid);
}

TEST(EtcdTlsTest, FlagsAreCheckedForDowngradesAndMissingFiles) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  EtcdPki pki;
  ASSERT_TRUE(pki.ok()) << pki.error();
  const std::string ca = pki.path("ca.crt"), crt = pki.path("client.crt"),
                    key = pki.path("client.key");
  auto mixed = EtcdConfigFromFlags("https://10.0.0.1:2379,http://10.0.0.2:2379", ca, crt, key);
  EXPECT_EQ(mixed.status().code(), Code::kInvalid) << mixed.status().ToString();
  auto files_for_http = EtcdConfigFromFlags("http://10.0.0.1:2379", ca, crt, key);
  EXPECT_EQ(files_for_http.status().code(), Code::kInvalid) << files_for_http.status().ToString();
  auto cert_without_key = EtcdConfigFromFlags("https://10.0.0.1:2379", ca, crt, "");
  EXPECT_EQ(cert_without_key.status().code(), Code::kInvalid);
  auto missing = EtcdConfigFromFlags("https://10.0.0.1:2379", ca, pki.path("nope.crt"), key);
  EXPECT_EQ(missing.status().code(), Code::kInvalid);

  auto tls = EtcdConfigFromFlags("https://10.0.0.1:2379,10.0.0.2:2379/", ca, crt, key);
  ASSERT_TRUE(tls.ok()) << tls.status().ToString();
  EXPECT_TRUE(tls->tls);
  EXPECT_EQ(tls->endpoints, (std::vector<std::string>{"10.0.0.1:2379", "10.0.0.2:2379"}));
  auto no_scheme = EtcdConfigFromFlags("10.0.0.1:2379", ca, crt, key);
  ASSERT_TRUE(no_scheme.ok()) << no_scheme.status().ToString();
  EXPECT_TRUE(no_scheme->tls);
  auto plain = EtcdConfigFromFlags("http://10.0.0.1:2379", "", "", "");
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_FALSE(plain->tls);
}

// Rotation: the store's client certificate files are replaced by one of
// another CA while it is in use; etcd is restarted trusting only that CA. The
// same store keeps working: its new connection presents the new certificate.
TEST(EtcdTlsTest, RotatedClientCertificateIsUsedByTheNextConnection) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  TlsEtcd e;
  ASSERT_TRUE(StartTls(e));
  // The store's own copies of the files (what an operator rotates).
  const std::string live = e.pki.dir() + "/live";
  std::filesystem::create_directory(live);
  std::filesystem::copy_file(e.pki.path("client.crt"), live + "/client.crt");
  std::filesystem::copy_file(e.pki.path("client.key"), live + "/client.key");
  EtcdConfig cfg = e.pki.Client(e.etcd.endpoint());
  cfg.cert_file = live + "/client.crt";
  cfg.key_file = live + "/client.key";
  auto opened = EtcdStateStore::Open(cfg);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EtcdStateStore& store = **opened;
  auto first = store.Put("/rot/k", "before");
  ASSERT_TRUE(first.ok()) << first.status().ToString();

  // New identity from CA "other", written beside and renamed into place.
  ASSERT_EQ(TestPki(e.pki.dir()).MakeLeaf("rotated", "kmx-client", {}, {}, "other", "clientAuth"),
            "");
  std::filesystem::copy_file(e.pki.path("rotated.key"), live + "/client.key.new");
  std::filesystem::copy_file(e.pki.path("rotated.crt"), live + "/client.crt.new");
  std::filesystem::rename(live + "/client.key.new", live + "/client.key");
  std::filesystem::rename(live + "/client.crt.new", live + "/client.crt");
  // Still in use on the open connection.
  auto during = store.Put("/rot/k", "during");
  ASSERT_TRUE(during.ok()) << during.status().ToString();
  std::this_thread::sleep_for(seconds(3));  // > tls_refresh: the files were re-read

  // etcd now trusts only CA "other": the old certificate would be refused.
  e.etcd.Stop();
  EtcdConfig probe = cfg;
  probe.cert_file = e.pki.path("rotated.crt");
  probe.key_file = e.pki.path("rotated.key");
  e.etcd.UseTls(e.pki.EtcdArgs("other"), probe);
  ASSERT_TRUE(e.etcd.Start()) << "log: " << e.etcd.dir() << "/etcd.log";
  EtcdStateStore old_identity(e.pki.Client(e.etcd.endpoint()));
  EXPECT_FALSE(old_identity.Get("/rot/k").ok()) << "etcd still accepts the old CA's certificate";

  StatusOr<GetResult> got = RetryError("not yet");
  for (int i = 0; i < 50 && !got.ok(); ++i) {
    got = store.Get("/rot/k");
    if (!got.ok()) std::this_thread::sleep_for(milliseconds(200));
  }
  ASSERT_TRUE(got.ok()) << "the store did not reconnect with its rotated certificate: "
                        << got.status().ToString();
  ASSERT_TRUE(got->kv);
  EXPECT_EQ(got->kv->value, "during");
}

// The kubelet writes a pod certificate's key and chain into ONE file, the
// PKCS#8 key block first. gRPC's FileWatcherCertificateProvider passes the
// files' bytes as they are to its TLS layer, which reads the certificate
// chain with PEM_read_bio_X509* and the key with PEM_read_bio_PrivateKey:
// both skip PEM blocks of the other kind. So the one file serves as both the
// certificate file and the key file: etcd accepts the client.
TEST(EtcdTlsTest, OneFileWithTheKeyFirstThenTheCertificateIsBothCertAndKeyFile) {
  KMX_SKIP_WITHOUT_TLS_ETCD();
  TlsEtcd e;
  ASSERT_TRUE(StartTls(e));
  auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  };
  const std::string key = read(e.pki.path("client.key"));
  ASSERT_EQ(key.rfind("-----BEGIN PRIVATE KEY-----", 0), 0u) << "openssl wrote no PKCS#8 key";
  const std::string bundle = e.pki.path("client-bundle.pem");
  std::ofstream(bundle, std::ios::binary) << key << read(e.pki.path("client.crt"));

  EtcdConfig cfg = e.pki.Client(e.etcd.endpoint());
  cfg.cert_file = bundle;
  cfg.key_file = bundle;
  auto opened = EtcdStateStore::Open(cfg);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  auto put = (*opened)->Put("/bundle/k", "v");
  ASSERT_TRUE(put.ok()) << "etcd refused the bundle's client certificate: "
                        << put.status().ToString();
  auto got = (*opened)->Get("/bundle/k");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(got->kv);
  EXPECT_EQ(got->kv->value, "v");
}

}  // namespace
}  // namespace kmosix::testing

KMX_INSTANTIATE_STATE_STORE_CONFORMANCE(EtcdTls,
                                        StateStoreConformanceParam{"etcd_tls", MakeTlsEtcdHarness,
                                                                   TlsSkipReason});
