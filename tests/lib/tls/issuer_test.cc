// lib/tls/issuer: certificates issued for stub CSRs of every supported key
// type verify against the CA (as TLS client and server) and say exactly what
// was asked (subject O then CN, SANs, EKU, CA:FALSE, the CSR's key, validity);
// an intermediate issuer and an Ed25519 issuer key; refusals of bad requests
// and bad issuer files; the CA's own notAfter caps the lifetime; rotated
// issuer files are used by the next Issue. And the kubelet's credential
// bundle (key first, then the chain, in ONE file) works as both the
// certificate and the key file of lib/tls's client and server contexts in a
// mutual TLS handshake. Keys, CSRs and CAs are made in-process (OpenSSL API).
#include "tls/issuer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "fakes/fake_clock.h"
#include "tls/tls.h"

namespace kmosix::tls {
namespace {

using std::chrono::floor;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;
using std::chrono::system_clock;

template <auto F>
struct Free {
  template <typename T>
  void operator()(T* p) const {
    F(p);
  }
};
using X509Ptr = std::unique_ptr<X509, Free<&X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, Free<&EVP_PKEY_free>>;
using ReqPtr = std::unique_ptr<X509_REQ, Free<&X509_REQ_free>>;
using BioPtr = std::unique_ptr<BIO, Free<&BIO_free>>;
using StorePtr = std::unique_ptr<X509_STORE, Free<&X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Free<&X509_STORE_CTX_free>>;
using NamesPtr = std::unique_ptr<GENERAL_NAMES, Free<&GENERAL_NAMES_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Free<&BN_free>>;
using SslPtr = std::unique_ptr<SSL, Free<&SSL_free>>;

// A fresh key: a Kubernetes key type name, or "RSA2048", "ED448", "SECP256K1".
KeyPtr NewKey(const std::string& type) {
  EVP_PKEY* k = nullptr;
  if (type == "ECDSAP256") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (type == "ECDSAP384") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
  if (type == "ECDSAP521") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-521");
  if (type == "SECP256K1") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "secp256k1");
  if (type == "ED25519") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (type == "ED448") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED448");
  if (type == "RSA2048") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  if (type == "RSA3072") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{3072});
  if (type == "RSA4096") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{4096});
  return KeyPtr(k);
}

const EVP_MD* DigestFor(EVP_PKEY* key) {
  const int id = EVP_PKEY_get_base_id(key);
  return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? nullptr : EVP_sha256();
}

// A stub CSR as the kubelet sends it: empty subject, signed with `key`, DER.
std::string MakeCsr(EVP_PKEY* key) {
  ReqPtr req(X509_REQ_new());
  if (!req || X509_REQ_set_version(req.get(), 0) != 1 || X509_REQ_set_pubkey(req.get(), key) != 1 ||
      X509_REQ_sign(req.get(), key, DigestFor(key)) <= 0)
    return "";
  unsigned char* der = nullptr;
  const int n = i2d_X509_REQ(req.get(), &der);
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(der), n) : "";
  OPENSSL_free(der);
  return out;
}

struct Ca {
  KeyPtr key;
  X509Ptr cert;
};

bool AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) return false;
  const bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// A CA certificate (or, with `basic_constraints` "CA:FALSE", not one) named
// `cn` with a fresh `key_type` key, valid from an hour ago for `valid_for`,
// signed by `parent` (self-signed without one).
Ca MakeCa(const std::string& cn, const std::string& key_type, const Ca* parent = nullptr,
          seconds valid_for = hours(48), const std::string& basic_constraints = "critical,CA:TRUE",
          const std::string& key_usage = "critical,keyCertSign,cRLSign") {
  Ca ca{NewKey(key_type), X509Ptr(X509_new())};
  X509* c = ca.cert.get();
  if (!ca.key || !c) return {};
  X509_set_version(c, X509_VERSION_3);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BnPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c));
  X509_NAME_add_entry_by_NID(X509_get_subject_name(c), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(c, X509_get_subject_name(parent ? parent->cert.get() : c));
  const time_t now = std::time(nullptr);
  ASN1_TIME_set(X509_getm_notBefore(c), now - 3600);
  ASN1_TIME_set(X509_getm_notAfter(c), now + valid_for.count());
  X509_set_pubkey(c, ca.key.get());
  X509* issuer = parent ? parent->cert.get() : c;
  if (!AddExt(c, issuer, NID_basic_constraints, basic_constraints.c_str()) ||
      !AddExt(c, issuer, NID_key_usage, key_usage.c_str()) ||
      !AddExt(c, issuer, NID_subject_key_identifier, "hash"))
    return {};
  EVP_PKEY* signer = parent ? parent->key.get() : ca.key.get();
  if (X509_sign(c, signer, DigestFor(signer)) <= 0) return {};
  return ca;
}

std::string CertPem(const X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, n);
}

// PKCS#8 ("PRIVATE KEY"), unencrypted.
std::string KeyPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, n);
}

std::vector<X509Ptr> ParseChain(const std::string& pem) {
  std::vector<X509Ptr> out;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(c);
  ERR_clear_error();
  return out;
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

// Sets the file's mtime `ahead` seconds from now: a rotation the issuer sees
// however coarse the file system's timestamps.
void BumpMtime(const std::string& path, int ahead) {
  struct timespec ts[2] = {{0, UTIME_OMIT}, {std::time(nullptr) + ahead, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, 0), 0) << path;
}

// "" when `leaf` verifies against `trusted` (with `untrusted` as the chain
// offered) for `purpose` now, else the verifier's reason.
std::string Verify(X509* leaf, const std::vector<X509*>& trusted,
                   const std::vector<X509*>& untrusted, int purpose) {
  StorePtr store(X509_STORE_new());
  for (X509* t : trusted) X509_STORE_add_cert(store.get(), t);
  STACK_OF(X509)* chain = sk_X509_new_null();
  for (X509* u : untrusted) sk_X509_push(chain, u);
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  std::string result = "cannot set up the verifier";
  if (X509_STORE_CTX_init(ctx.get(), store.get(), leaf, chain) == 1 &&
      X509_STORE_CTX_set_purpose(ctx.get(), purpose) == 1) {
    result = X509_verify_cert(ctx.get()) == 1
                 ? ""
                 : X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()));
  }
  sk_X509_free(chain);  // the certificates are the caller's
  return result;
}

// The subject as "O=...,CN=..." in encoded order.
std::string Subject(X509* cert) {
  std::string out;
  const X509_NAME* name = X509_get_subject_name(cert);
  for (int i = 0; i < X509_NAME_entry_count(name); ++i) {
    const X509_NAME_ENTRY* e = X509_NAME_get_entry(name, i);
    unsigned char* utf8 = nullptr;
    const int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    if (!out.empty()) out += ",";
    out += std::string(OBJ_nid2sn(OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)))) + "=" +
           std::string(reinterpret_cast<char*>(utf8), n > 0 ? n : 0);
    OPENSSL_free(utf8);
  }
  return out;
}

// "DNS:a", "IP:10.0.0.1", ... in encoded order.
std::vector<std::string> AltNames(X509* cert) {
  std::vector<std::string> out;
  NamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type == GEN_DNS) {
      out.push_back("DNS:" +
                    std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(gn->d.dNSName)),
                                ASN1_STRING_length(gn->d.dNSName)));
    } else if (gn->type == GEN_IPADD) {
      char text[INET6_ADDRSTRLEN] = {};
      const int len = ASN1_STRING_length(gn->d.iPAddress);
      inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(gn->d.iPAddress), text,
                sizeof text);
      out.push_back(std::string("IP:") + text);
    } else {
      out.push_back("other");
    }
  }
  return out;
}

system_clock::time_point AsnTime(const ASN1_TIME* t) {
  struct tm tm {};
  ASN1_TIME_to_tm(t, &tm);
  return system_clock::from_time_t(::timegm(&tm));
}

bool Critical(X509* cert, int nid) {
  const int i = X509_get_ext_by_NID(cert, nid, -1);
  return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, i)) == 1;
}

std::string Bytes(const ASN1_OCTET_STRING* s) {
  return s ? std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         ASN1_STRING_length(s))
           : "";
}

class IssuerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = "/tmp/kmx-issuer-test-XXXXXX";
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    dir_ = t;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Writes `ca` (its certificate, then `chain_after`) and its key as
  // <name>.crt / <name>.key; returns the certificate file's path.
  std::string WriteCa(const Ca& ca, const std::string& name,
                      const std::vector<const X509*>& chain_after = {}) {
    std::string pem = CertPem(ca.cert.get());
    for (const X509* c : chain_after) pem += CertPem(c);
    WriteFile(Path(name + ".crt"), pem);
    WriteFile(Path(name + ".key"), KeyPem(ca.key.get()));
    return Path(name + ".crt");
  }
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }

  std::unique_ptr<Issuer> LoadOrDie(const std::string& name) {
    auto loaded = Issuer::Load(Path(name + ".crt"), Path(name + ".key"));
    EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
    return loaded.ok() ? std::move(*loaded) : nullptr;
  }

  // A node's request for the public key of `key`.
  static CertificateRequest NodeRequest(EVP_PKEY* key, const std::string& node = "node1") {
    CertificateRequest r;
    r.csr_der = MakeCsr(key);
    r.common_name = node;
    r.organizations = {kGroupNodes};
    r.dns_names = {node, node + ".nodes.example"};
    r.ip_addresses = {"10.77.0.11", "fd00::11"};
    r.not_before = system_clock::now() - minutes(1);  // not on a whole second
    r.lifetime = hours(24);
    return r;
  }

  std::string dir_;
};

// ---- every supported key type -----------------------------------------------

class IssuerKeyTypeTest : public IssuerTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(IssuerKeyTypeTest, IssuesALeafThatVerifiesAndSaysWhatWasAsked) {
  const std::string type = GetParam();
  Ca ca = MakeCa("kmosix test CA", "ECDSAP256");
  ASSERT_TRUE(ca.cert);
  WriteCa(ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);

  KeyPtr key = NewKey(type);
  ASSERT_TRUE(key) << type;
  CertificateRequest req = NodeRequest(key.get());
  ASSERT_FALSE(req.csr_der.empty());
  auto kind = CsrKeyType(req.csr_der);
  ASSERT_TRUE(kind.ok()) << kind.status().ToString();
  EXPECT_EQ(*kind, type);

  auto issued = issuer->Issue(req);
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_EQ(chain.size(), 2u) << "leaf, then the CA as loaded";
  X509* leaf = chain[0].get();
  EXPECT_EQ(X509_cmp(chain[1].get(), ca.cert.get()), 0);
  EXPECT_EQ(issuer->IssuerChainPem(), CertPem(ca.cert.get()));

  EXPECT_EQ(Verify(leaf, {ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_EQ(Verify(leaf, {ca.cert.get()}, {}, X509_PURPOSE_SSL_SERVER), "");
  Ca other = MakeCa("another CA", "ECDSAP256");
  EXPECT_NE(Verify(leaf, {other.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "");

  EXPECT_EQ(X509_get_version(leaf), X509_VERSION_3);
  EXPECT_EQ(Subject(leaf), "O=kmosix:nodes,CN=node1");
  EXPECT_EQ(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(ca.cert.get())), 0);
  EXPECT_EQ(AltNames(leaf), (std::vector<std::string>{"DNS:node1", "DNS:node1.nodes.example",
                                                      "IP:10.77.0.11", "IP:fd00::11"}));
  const uint32_t flags = X509_get_extension_flags(leaf);
  EXPECT_NE(flags & EXFLAG_BCONS, 0u) << "basicConstraints present";
  EXPECT_EQ(flags & EXFLAG_CA, 0u) << "CA:FALSE";
  EXPECT_TRUE(Critical(leaf, NID_basic_constraints));
  EXPECT_TRUE(Critical(leaf, NID_key_usage));
  const uint32_t want_ku =
      KU_DIGITAL_SIGNATURE | (type.rfind("RSA", 0) == 0 ? KU_KEY_ENCIPHERMENT : 0);
  EXPECT_EQ(X509_get_key_usage(leaf), want_ku);
  EXPECT_EQ(X509_get_extended_key_usage(leaf), uint32_t{XKU_SSL_SERVER | XKU_SSL_CLIENT});
  EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(leaf), key.get()), 1) << "the CSR's key";
  EXPECT_EQ(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);
  EXPECT_FALSE(Bytes(X509_get0_subject_key_id(leaf)).empty());
  EXPECT_EQ(Bytes(X509_get0_authority_key_id(leaf)),
            Bytes(X509_get0_subject_key_id(ca.cert.get())));
  BnPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), nullptr));
  ASSERT_TRUE(serial);
  EXPECT_FALSE(BN_is_negative(serial.get()));
  EXPECT_FALSE(BN_is_zero(serial.get()));

  const auto want_not_before = floor<seconds>(req.not_before);
  EXPECT_EQ(issued->not_before, want_not_before);
  EXPECT_EQ(issued->not_after, want_not_before + hours(24));
  EXPECT_EQ(AsnTime(X509_get0_notBefore(leaf)), issued->not_before);
  EXPECT_EQ(AsnTime(X509_get0_notAfter(leaf)), issued->not_after);
}

INSTANTIATE_TEST_SUITE_P(KeyTypes, IssuerKeyTypeTest,
                         ::testing::Values("ECDSAP256", "ECDSAP384", "ECDSAP521", "ED25519",
                                           "RSA3072", "RSA4096"));

TEST_F(IssuerTest, UsagesAsAskedAndNoAltNamesWhenNoneAsked) {
  Ca ca = MakeCa("kmosix test CA", "ECDSAP256");
  WriteCa(ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  CertificateRequest req = NodeRequest(key.get());
  req.dns_names.clear();
  req.ip_addresses.clear();
  req.server_auth = false;
  auto issued = issuer->Issue(req);
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_FALSE(chain.empty());
  X509* leaf = chain[0].get();
  EXPECT_LT(X509_get_ext_by_NID(leaf, NID_subject_alt_name, -1), 0) << "no empty SAN";
  EXPECT_EQ(X509_get_extended_key_usage(leaf), uint32_t{XKU_SSL_CLIENT});
  EXPECT_EQ(Verify(leaf, {ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_NE(Verify(leaf, {ca.cert.get()}, {}, X509_PURPOSE_SSL_SERVER), "");

  req.client_auth = false;
  auto neither = issuer->Issue(req);
  EXPECT_EQ(neither.status().code(), Code::kInvalid) << "a leaf good for any usage";
}

// ---- issuers ------------------------------------------------------------------

TEST_F(IssuerTest, IntermediateIssuerChainsToTheRoot) {
  Ca root = MakeCa("kmosix root", "ECDSAP384");
  ASSERT_TRUE(root.cert);
  Ca inter = MakeCa("kmosix nodes intermediate", "RSA3072", &root, hours(48),
                    "critical,CA:TRUE,pathlen:0");
  ASSERT_TRUE(inter.cert);
  WriteCa(inter, "inter");
  auto issuer = LoadOrDie("inter");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  auto issued = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_EQ(chain.size(), 2u) << "leaf + intermediate, no root";
  EXPECT_EQ(X509_cmp(chain[1].get(), inter.cert.get()), 0);
  X509* leaf = chain[0].get();
  EXPECT_EQ(X509_get_signature_nid(leaf), NID_sha256WithRSAEncryption);
  EXPECT_EQ(Verify(leaf, {root.cert.get()}, {chain[1].get()}, X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_EQ(Verify(leaf, {root.cert.get()}, {chain[1].get()}, X509_PURPOSE_SSL_SERVER), "");
  EXPECT_NE(Verify(leaf, {root.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "")
      << "without the intermediate the root alone does not reach the leaf";
}

TEST_F(IssuerTest, IssuerFileWithTheRootAfterTheIntermediateIsServedAsLoaded) {
  Ca root = MakeCa("kmosix root", "ECDSAP256");
  Ca inter =
      MakeCa("kmosix intermediate", "ECDSAP256", &root, hours(48), "critical,CA:TRUE,pathlen:0");
  WriteCa(inter, "inter", {root.cert.get()});
  auto issuer = LoadOrDie("inter");
  ASSERT_TRUE(issuer);
  EXPECT_EQ(issuer->IssuerChainPem(), CertPem(inter.cert.get()) + CertPem(root.cert.get()));
  KeyPtr key = NewKey("ED25519");
  auto issued = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_EQ(chain.size(), 3u);
  EXPECT_EQ(X509_cmp(chain[2].get(), root.cert.get()), 0);
  EXPECT_EQ(Verify(chain[0].get(), {root.cert.get()}, {chain[1].get()}, X509_PURPOSE_SSL_SERVER),
            "");
}

TEST_F(IssuerTest, Ed25519IssuerKeySignsWithoutADigest) {
  Ca ca = MakeCa("kmosix ed25519 CA", "ED25519");
  ASSERT_TRUE(ca.cert);
  WriteCa(ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  auto issued = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_FALSE(chain.empty());
  EXPECT_EQ(X509_get_signature_nid(chain[0].get()), NID_ED25519);
  EXPECT_EQ(Verify(chain[0].get(), {ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "");
}

TEST_F(IssuerTest, IssuerWithoutSubjectKeyIdentifierStillGetsAnAuthorityKeyId) {
  // A CA made without subjectKeyIdentifier: the leaf's AKI is the SHA-1 of its key.
  Ca ca{NewKey("ECDSAP256"), X509Ptr(X509_new())};
  X509* c = ca.cert.get();
  X509_set_version(c, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(c), 7);
  X509_NAME_add_entry_by_NID(X509_get_subject_name(c), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("bare CA"), -1, -1, 0);
  X509_set_issuer_name(c, X509_get_subject_name(c));
  ASN1_TIME_set(X509_getm_notBefore(c), std::time(nullptr) - 3600);
  ASN1_TIME_set(X509_getm_notAfter(c), std::time(nullptr) + 3600 * 48);
  X509_set_pubkey(c, ca.key.get());
  ASSERT_TRUE(AddExt(c, c, NID_basic_constraints, "critical,CA:TRUE"));
  ASSERT_GT(X509_sign(c, ca.key.get(), EVP_sha256()), 0);
  ASSERT_EQ(X509_get0_subject_key_id(c), nullptr);
  WriteCa(ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  auto issued = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_FALSE(chain.empty());
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  ASSERT_EQ(X509_pubkey_digest(c, EVP_sha1(), md, &n), 1);
  EXPECT_EQ(Bytes(X509_get0_authority_key_id(chain[0].get())),
            std::string(reinterpret_cast<char*>(md), n));
  EXPECT_EQ(Verify(chain[0].get(), {c}, {}, X509_PURPOSE_SSL_SERVER), "");
}

// ---- refusals -----------------------------------------------------------------

TEST(CsrKeyTypeTest, RefusesGarbageAndUnsupportedKeysNamingTheSupportedOnes) {
  EXPECT_EQ(CsrKeyType("").status().code(), Code::kInvalid);
  EXPECT_EQ(CsrKeyType("not a CSR at all").status().code(), Code::kInvalid);
  KeyPtr p256 = NewKey("ECDSAP256");
  const std::string good = MakeCsr(p256.get());
  EXPECT_EQ(CsrKeyType(good.substr(0, good.size() - 1)).status().code(), Code::kInvalid)
      << "truncated";
  EXPECT_EQ(CsrKeyType(good + "x").status().code(), Code::kInvalid) << "trailing bytes";
  for (const char* type : {"RSA2048", "ED448", "SECP256K1"}) {
    KeyPtr key = NewKey(type);
    ASSERT_TRUE(key) << type;
    auto got = CsrKeyType(MakeCsr(key.get()));
    ASSERT_FALSE(got.ok()) << type << " taken as " << *got;
    EXPECT_EQ(got.status().code(), Code::kInvalid);
    EXPECT_NE(got.status().message().find("ECDSAP256, ECDSAP384, ECDSAP521, ED25519, RSA3072, "
                                          "RSA4096"),
              std::string::npos)
        << got.status().ToString();
  }
}

TEST_F(IssuerTest, RefusesBadRequestsNamingTheField) {
  Ca ca = MakeCa("kmosix test CA", "ECDSAP256");
  WriteCa(ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  const CertificateRequest good = NodeRequest(key.get());
  ASSERT_TRUE(issuer->Issue(good).ok());

  auto expect_refused = [&](const CertificateRequest& r, const std::string& field,
                            const std::string& what) {
    auto got = issuer->Issue(r);
    ASSERT_FALSE(got.ok()) << what << ": issued";
    EXPECT_EQ(got.status().code(), Code::kInvalid) << what << ": " << got.status().ToString();
    EXPECT_EQ(got.status().message().rfind(field, 0), 0u)
        << what << ": the message names " << field << ": " << got.status().ToString();
  };
  CertificateRequest r = good;
  r.csr_der = "\x30\x03garbage";
  expect_refused(r, "csr", "garbage CSR");

  r = good;
  r.csr_der.back() ^= 0x01;  // the last byte of the signature
  ASSERT_TRUE(CsrKeyType(r.csr_der).ok()) << "still parses";
  expect_refused(r, "csr", "CSR with a bad signature");

  KeyPtr rsa2048 = NewKey("RSA2048");
  r = good;
  r.csr_der = MakeCsr(rsa2048.get());
  expect_refused(r, "csr", "RSA-2048 key");

  r = good;
  r.common_name = "";
  expect_refused(r, "common_name", "empty CN");
  r.common_name = std::string(65, 'n');
  expect_refused(r, "common_name", "65-byte CN");
  r.common_name = std::string("node\0one", 8);
  expect_refused(r, "common_name", "NUL in CN");
  r.common_name = "node\n1";
  expect_refused(r, "common_name", "newline in CN");
  r.common_name = "node\xff";
  expect_refused(r, "common_name", "not UTF-8");

  r = good;
  r.organizations = {kGroupNodes, ""};
  expect_refused(r, "organizations[1]", "empty O");

  for (const std::string& bad :
       std::vector<std::string>{"", "a..b", ".node1", "node1.", "node_1", "*.nodes", "node 1",
                                std::string(254, 'a'), std::string(64, 'a') + ".x"}) {
    r = good;
    r.dns_names = {"ok.example", bad};
    expect_refused(r, "dns_names[1]", "DNS name '" + bad + "'");
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "10.0.0", "10.0.0.256", "node1", "fd00::1::2", " 10.0.0.1"}) {
    r = good;
    r.ip_addresses = {bad};
    expect_refused(r, "ip_addresses[0]", "IP '" + bad + "'");
  }
  r = good;
  r.lifetime = seconds(0);
  expect_refused(r, "lifetime", "zero lifetime");
  r.lifetime = seconds(-5);
  expect_refused(r, "lifetime", "negative lifetime");

  r = good;
  r.dns_names = {std::string(63, 'a') + "." + std::string(63, 'b')};
  r.common_name = std::string(64, 'n');
  r.lifetime = seconds(1);
  EXPECT_TRUE(issuer->Issue(r).ok()) << "the limits themselves are fine";
}

TEST_F(IssuerTest, LoadRefusesBadIssuerFiles) {
  Ca ca = MakeCa("kmosix test CA", "ECDSAP256");
  WriteCa(ca, "ca");
  Ca leaf = MakeCa("not a CA", "ECDSAP256", &ca, hours(48), "critical,CA:FALSE",
                   "critical,digitalSignature");
  ASSERT_TRUE(leaf.cert);
  WriteCa(leaf, "leaf");
  Ca no_sign = MakeCa("CA without keyCertSign", "ECDSAP256", nullptr, hours(48), "critical,CA:TRUE",
                      "critical,digitalSignature");
  ASSERT_TRUE(no_sign.cert);
  WriteCa(no_sign, "nosign");
  Ca spare = MakeCa("spare", "ECDSAP256");
  WriteCa(spare, "spare");

  auto not_ca = Issuer::Load(Path("leaf.crt"), Path("leaf.key"));
  EXPECT_EQ(not_ca.status().code(), Code::kInvalid) << not_ca.status().ToString();
  auto no_cert_sign = Issuer::Load(Path("nosign.crt"), Path("nosign.key"));
  EXPECT_EQ(no_cert_sign.status().code(), Code::kInvalid) << no_cert_sign.status().ToString();
  auto mismatch = Issuer::Load(Path("ca.crt"), Path("spare.key"));
  EXPECT_EQ(mismatch.status().code(), Code::kInvalid) << mismatch.status().ToString();
  auto swapped = Issuer::Load(Path("ca.key"), Path("ca.crt"));
  EXPECT_EQ(swapped.status().code(), Code::kInvalid) << swapped.status().ToString();
  auto missing_cert = Issuer::Load(Path("nope.crt"), Path("ca.key"));
  EXPECT_EQ(missing_cert.status().code(), Code::kNotFound) << missing_cert.status().ToString();
  auto missing_key = Issuer::Load(Path("ca.crt"), Path("nope.key"));
  EXPECT_EQ(missing_key.status().code(), Code::kNotFound) << missing_key.status().ToString();
  EXPECT_TRUE(Issuer::Load(Path("ca.crt"), Path("ca.key")).ok());
}

// ---- validity -----------------------------------------------------------------

TEST_F(IssuerTest, LifetimeIsCappedByTheIssuersNotAfter) {
  Ca ca = MakeCa("short-lived CA", "ECDSAP256", nullptr, hours(2));
  WriteCa(ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  CertificateRequest req = NodeRequest(key.get());
  req.not_before = system_clock::now();
  req.lifetime = hours(24);
  auto issued = issuer->Issue(req);
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  const auto ca_not_after = AsnTime(X509_get0_notAfter(ca.cert.get()));
  EXPECT_EQ(issued->not_after, ca_not_after);
  auto chain = ParseChain(issued->chain_pem);
  ASSERT_FALSE(chain.empty());
  EXPECT_EQ(AsnTime(X509_get0_notAfter(chain[0].get())), ca_not_after);
  EXPECT_LT(issued->not_after - issued->not_before, hours(24)) << "the caller can see it is short";

  req.not_before = ca_not_after;  // nothing left to give
  auto late = issuer->Issue(req);
  EXPECT_EQ(late.status().code(), Code::kFailed) << late.status().ToString();
}

// ---- rotation -----------------------------------------------------------------

TEST_F(IssuerTest, RotatedIssuerFilesAreUsedByTheNextIssue) {
  Ca old_ca = MakeCa("kmosix CA 1", "ECDSAP256");
  WriteCa(old_ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  auto first = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(Verify(ParseChain(first->chain_pem)[0].get(), {old_ca.cert.get()}, {},
                   X509_PURPOSE_SSL_CLIENT),
            "");

  // A new CA (new key) written over the same files.
  Ca new_ca = MakeCa("kmosix CA 2", "ECDSAP256");
  WriteCa(new_ca, "ca");
  BumpMtime(Path("ca.crt"), 10);
  BumpMtime(Path("ca.key"), 10);
  auto second = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  X509Ptr leaf = std::move(ParseChain(second->chain_pem)[0]);
  EXPECT_EQ(Verify(leaf.get(), {new_ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_NE(Verify(leaf.get(), {old_ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_EQ(issuer->IssuerChainPem(), CertPem(new_ca.cert.get()));
  EXPECT_EQ(issuer->Reloads(), 1u);

  // Half a rotation (a key that does not match): the last good pair stays.
  Ca spare = MakeCa("spare", "ECDSAP256");
  WriteFile(Path("ca.key"), KeyPem(spare.key.get()));
  BumpMtime(Path("ca.key"), 20);
  auto third = issuer->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_EQ(Verify(ParseChain(third->chain_pem)[0].get(), {new_ca.cert.get()}, {},
                   X509_PURPOSE_SSL_CLIENT),
            "");
  EXPECT_EQ(issuer->Reloads(), 1u);
  // Files gone (a volume being remounted): still the last good pair.
  std::filesystem::remove(Path("ca.key"));
  EXPECT_TRUE(issuer->Issue(NodeRequest(key.get())).ok());
  EXPECT_EQ(issuer->Reloads(), 1u);
}

TEST_F(IssuerTest, IssuesConcurrentlyWhileTheFilesRotate) {
  Ca old_ca = MakeCa("kmosix CA 1", "ECDSAP256");
  Ca new_ca = MakeCa("kmosix CA 2", "ECDSAP256");
  WriteCa(old_ca, "ca");
  auto issuer = LoadOrDie("ca");
  ASSERT_TRUE(issuer);
  KeyPtr key = NewKey("ECDSAP256");
  const CertificateRequest req = NodeRequest(key.get());
  constexpr int kThreads = 4, kEach = 25;
  std::vector<std::vector<std::string>> chains(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto issued = issuer->Issue(req);
        chains[t].push_back(issued.ok() ? issued->chain_pem : issued.status().ToString());
      }
    });
  }
  // Written beside and renamed into place, as a Kubernetes volume does.
  WriteCa(new_ca, "next");
  std::filesystem::rename(Path("next.crt"), Path("ca.crt"));
  std::filesystem::rename(Path("next.key"), Path("ca.key"));
  for (auto& th : threads) th.join();
  auto after = issuer->Issue(req);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(Verify(ParseChain(after->chain_pem)[0].get(), {new_ca.cert.get()}, {},
                   X509_PURPOSE_SSL_CLIENT),
            "");
  for (const auto& list : chains) {
    for (const std::string& pem : list) {
      auto chain = ParseChain(pem);
      ASSERT_FALSE(chain.empty()) << pem;
      // Either CA, whole: never a leaf of one CA with the other's name or chain.
      X509* leaf = chain[0].get();
      const bool by_old = Verify(leaf, {old_ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT).empty();
      const bool by_new = Verify(leaf, {new_ca.cert.get()}, {}, X509_PURPOSE_SSL_CLIENT).empty();
      EXPECT_TRUE(by_old != by_new);
      ASSERT_EQ(chain.size(), 2u);
      EXPECT_EQ(X509_cmp(chain[1].get(), by_old ? old_ca.cert.get() : new_ca.cert.get()), 0);
    }
  }
}

TEST_F(IssuerTest, IssuerKeyAndCertificateMayShareOneFile) {
  Ca ca = MakeCa("kmosix test CA", "ECDSAP256");
  WriteFile(Path("ca.pem"), KeyPem(ca.key.get()) + CertPem(ca.cert.get()));
  auto issuer = Issuer::Load(Path("ca.pem"), Path("ca.pem"));
  ASSERT_TRUE(issuer.ok()) << issuer.status().ToString();
  EXPECT_EQ((*issuer)->IssuerChainPem(), CertPem(ca.cert.get())) << "no key in the chain";
  KeyPtr key = NewKey("ECDSAP256");
  auto issued = (*issuer)->Issue(NodeRequest(key.get()));
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  EXPECT_EQ(issued->chain_pem.find("PRIVATE KEY"), std::string::npos);
  EXPECT_EQ(
      Verify(ParseChain(issued->chain_pem)[0].get(), {ca.cert.get()}, {}, X509_PURPOSE_SSL_SERVER),
      "");
}

// ---- the kubelet's credential bundle in lib/tls ---------------------------------

// A mutual TLS handshake over a socket pair between a client context and a
// server context; the peers' identities as each side saw them.
struct Handshake {
  bool client_ok = false;
  bool server_ok = false;
  Identity client_saw;  // the server's identity
  Identity server_saw;  // the client's identity
};

Handshake Shake(SSL_CTX* client_ctx, SSL_CTX* server_ctx, const std::string& server_host) {
  Handshake h;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return h;
  SslPtr server(SSL_new(server_ctx));
  SslPtr client(SSL_new(client_ctx));
  SSL_set_fd(server.get(), fds[0]);
  SSL_set_fd(client.get(), fds[1]);
  SSL_set1_host(client.get(), server_host.c_str());
  std::thread accept([&] {
    h.server_ok = SSL_accept(server.get()) == 1;
    if (h.server_ok) {
      // TLS 1.3: the client's certificate is checked after SSL_connect
      // returned; one byte back tells the client the server is done.
      h.server_saw = PeerIdentity(server.get());
      h.server_ok = SSL_write(server.get(), "k", 1) == 1;
    }
  });
  h.client_ok = SSL_connect(client.get()) == 1;
  if (h.client_ok) {
    h.client_saw = PeerIdentity(client.get());
    char b = 0;
    h.client_ok = SSL_read(client.get(), &b, 1) == 1 && b == 'k';
  }
  ::shutdown(fds[1], SHUT_RDWR);  // a server still waiting gets EOF
  accept.join();
  ::close(fds[0]);
  ::close(fds[1]);
  return h;
}

TEST_F(IssuerTest, CredentialBundleServesAsCertificateAndKeyFileOfLibTls) {
  Ca root = MakeCa("kmosix root", "ECDSAP256");
  Ca inter = MakeCa("kmosix nodes", "ECDSAP256", &root, hours(48), "critical,CA:TRUE,pathlen:0");
  WriteCa(inter, "inter");
  WriteFile(Path("root.crt"), CertPem(root.cert.get()));
  auto issuer = LoadOrDie("inter");
  ASSERT_TRUE(issuer);

  // The kubelet's file: the PKCS#8 key first, then the leaf and the intermediate.
  auto bundle = [&](const std::string& node) {
    KeyPtr key = NewKey("ECDSAP256");
    CertificateRequest req = NodeRequest(key.get(), node);
    req.dns_names = {node};
    req.ip_addresses = {"127.0.0.1"};
    auto issued = issuer->Issue(req);
    EXPECT_TRUE(issued.ok()) << issued.status().ToString();
    const std::string pem = KeyPem(key.get()) + (issued.ok() ? issued->chain_pem : "");
    WriteFile(Path(node + ".pem"), pem);
    return pem;
  };
  const std::string node1 = bundle("node1");
  const std::string node2 = bundle("node2");
  ASSERT_EQ(node1.rfind("-----BEGIN PRIVATE KEY-----", 0), 0u) << node1;
  ASSERT_EQ(ParseChain(node1).size(), 2u);

  const Files client_files{Path("root.crt"), Path("node1.pem"), Path("node1.pem")};
  const Files server_files{Path("root.crt"), Path("node2.pem"), Path("node2.pem")};
  auto client_ctx = MakeClientContext(client_files);
  ASSERT_TRUE(client_ctx.ok()) << client_ctx.status().ToString();
  testing::FakeClock clock;
  auto creds = ServerCredentials::Load(server_files, clock);
  ASSERT_TRUE(creds.ok()) << creds.status().ToString();
  EXPECT_EQ((*creds)->Name(), "node2");
  CtxPtr server_ctx(SSL_CTX_new(TLS_server_method()), &SSL_CTX_free);
  ASSERT_TRUE(server_ctx);
  ASSERT_TRUE((*creds)->Configure(*server_ctx, /*require_client_cert=*/true));

  Handshake h = Shake(client_ctx->get(), server_ctx.get(), "node2");
  ASSERT_TRUE(h.client_ok) << "client handshake: " << ERR_reason_error_string(ERR_peek_error());
  ASSERT_TRUE(h.server_ok) << "server handshake";
  EXPECT_EQ(h.client_saw.name, "node2");
  EXPECT_EQ(h.client_saw.groups, std::vector<std::string>{kGroupNodes});
  EXPECT_EQ(h.server_saw.name, "node1");
  EXPECT_EQ(h.server_saw.groups, std::vector<std::string>{kGroupNodes});

  // The same handshake fails when the client does not trust the root: the
  // success above is the bundle's chain verifying, not a lax verifier.
  Ca stranger = MakeCa("stranger", "ECDSAP256");
  WriteFile(Path("stranger.crt"), CertPem(stranger.cert.get()));
  auto wary_ctx = MakeClientContext({Path("stranger.crt"), Path("node1.pem"), Path("node1.pem")});
  ASSERT_TRUE(wary_ctx.ok()) << wary_ctx.status().ToString();
  EXPECT_FALSE(Shake(wary_ctx->get(), server_ctx.get(), "node2").client_ok);
  ERR_clear_error();
}

}  // namespace
}  // namespace kmosix::tls
