#include "tls/issuer.h"

#include <arpa/inet.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "tls/tls.h"

namespace kmosix::tls {
namespace {

using std::chrono::seconds;
using Seconds = std::chrono::time_point<std::chrono::system_clock, seconds>;

// Every OpenSSL object lives in one of these.
template <auto F>
struct Free {
  template <typename T>
  void operator()(T* p) const {
    F(p);
  }
};
using X509Ptr = std::unique_ptr<X509, Free<&X509_free>>;
using ReqPtr = std::unique_ptr<X509_REQ, Free<&X509_REQ_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, Free<&EVP_PKEY_free>>;
using BioPtr = std::unique_ptr<BIO, Free<&BIO_free>>;
using NamePtr = std::unique_ptr<X509_NAME, Free<&X509_NAME_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Free<&BN_free>>;
using IntPtr = std::unique_ptr<ASN1_INTEGER, Free<&ASN1_INTEGER_free>>;
using OctetsPtr = std::unique_ptr<ASN1_OCTET_STRING, Free<&ASN1_OCTET_STRING_free>>;
using Ia5Ptr = std::unique_ptr<ASN1_IA5STRING, Free<&ASN1_IA5STRING_free>>;
using BitsPtr = std::unique_ptr<ASN1_BIT_STRING, Free<&ASN1_BIT_STRING_free>>;
using GenNamePtr = std::unique_ptr<GENERAL_NAME, Free<&GENERAL_NAME_free>>;
using GenNamesPtr = std::unique_ptr<GENERAL_NAMES, Free<&GENERAL_NAMES_free>>;
using EkuPtr = std::unique_ptr<EXTENDED_KEY_USAGE, Free<&EXTENDED_KEY_USAGE_free>>;
using BcPtr = std::unique_ptr<BASIC_CONSTRAINTS, Free<&BASIC_CONSTRAINTS_free>>;
using AkidPtr = std::unique_ptr<AUTHORITY_KEYID, Free<&AUTHORITY_KEYID_free>>;

constexpr char kSupportedKeyTypes[] = "ECDSAP256, ECDSAP384, ECDSAP521, ED25519, RSA3072, RSA4096";
constexpr size_t kMaxNameBytes = 64;  // ub-common-name, ub-organization-name
constexpr size_t kMaxDnsName = 253;
constexpr seconds kMaxLifetime = std::chrono::hours(24 * 36500);  // 100 years

Status OpenSslFailed(const std::string& what) {
  return FailedError("issuing a certificate: " + what + ": " + OpenSslError());
}

// mtime, size and inode of both files: a new value means "re-read".
StatusOr<std::string> FilesVersion(const std::string& cert_file, const std::string& key_file) {
  std::string v;
  for (const std::string* p : {&cert_file, &key_file}) {
    struct stat st {};
    if (::stat(p->c_str(), &st) != 0) {
      const int err = errno;
      return err == ENOENT ? NotFoundError("no such file: " + *p)
                           : FailedError("cannot stat " + *p + ": " + std::strerror(err));
    }
    v += std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
         std::to_string(st.st_size) + ":" + std::to_string(st.st_ino) + ";";
  }
  return v;
}

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return err == ENOENT ? NotFoundError("no such file: " + path)
                         : FailedError("cannot read " + path + ": " + std::strerror(err));
  }
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return FailedError("cannot read " + path);
  return out.str();
}

StatusOr<Seconds> AsnTime(const ASN1_TIME* t) {
  struct tm tm {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return OpenSslFailed("reading a time");
  return Seconds(seconds(::timegm(&tm)));
}

std::string Pem(const X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : "";
}

// The Kubernetes name of `key`'s type, or kInvalid.
StatusOr<std::string> KeyTypeOf(const EVP_PKEY* key) {
  std::string seen = "unknown";
  if (key != nullptr) {
    const char* type = EVP_PKEY_get0_type_name(key);
    seen = type != nullptr ? type : "unknown";
    switch (EVP_PKEY_get_base_id(key)) {
      case EVP_PKEY_EC: {
        char group[80] = {};
        size_t len = 0;
        if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) == 1) {
          seen += " " + std::string(group, len);
          int nid = OBJ_sn2nid(group);
          if (nid == NID_undef) nid = EC_curve_nist2nid(group);
          if (nid == NID_X9_62_prime256v1) return std::string("ECDSAP256");
          if (nid == NID_secp384r1) return std::string("ECDSAP384");
          if (nid == NID_secp521r1) return std::string("ECDSAP521");
        }
        break;
      }
      case EVP_PKEY_ED25519:
        return std::string("ED25519");
      case EVP_PKEY_RSA: {
        const int bits = EVP_PKEY_get_bits(key);
        seen += "-" + std::to_string(bits);
        if (bits == 3072) return std::string("RSA3072");
        if (bits == 4096) return std::string("RSA4096");
        break;
      }
      default:
        break;
    }
  }
  ERR_clear_error();
  return InvalidError("csr: unsupported public key (" + seen +
                      "); supported: " + kSupportedKeyTypes);
}

StatusOr<ReqPtr> ParseCsr(std::string_view der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  const auto* end = p + der.size();
  ReqPtr req(der.empty() ? nullptr : d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));
  if (!req || p != end) {
    ERR_clear_error();
    return InvalidError("csr: not one DER PKCS#10 certificate request");
  }
  return req;
}

bool ValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  int left = static_cast<int>(s.size());
  while (left > 0) {
    unsigned long c = 0;
    const int n = UTF8_getc(p, left, &c);
    if (n <= 0) return false;
    p += n;
    left -= n;
  }
  return true;
}

Status CheckNameText(const std::string& field, const std::string& v) {
  if (v.empty()) return InvalidError(field + ": empty");
  if (v.size() > kMaxNameBytes)
    return InvalidError(field + ": longer than " + std::to_string(kMaxNameBytes) + " bytes");
  for (unsigned char c : v)
    if (c < 0x20 || c == 0x7f) return InvalidError(field + ": has a NUL or control byte");
  if (!ValidUtf8(v)) return InvalidError(field + ": not UTF-8");
  return Status::Ok();
}

Status CheckDnsName(const std::string& field, const std::string& v) {
  if (v.empty()) return InvalidError(field + ": empty");
  if (v.size() > kMaxDnsName)
    return InvalidError(field + ": longer than " + std::to_string(kMaxDnsName) + " bytes");
  if (v.front() == '.' || v.back() == '.')
    return InvalidError(field + ": leading or trailing dot: " + v);
  size_t label = 0;
  for (char c : v) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (c == '.') {
      if (label == 0) return InvalidError(field + ": empty label: " + v);
      label = 0;
      continue;
    }
    if (!alnum && c != '-')
      return InvalidError(field + ": only letters, digits, '-' and '.' allowed: " + v);
    if (++label > 63) return InvalidError(field + ": a label longer than 63 bytes: " + v);
  }
  return Status::Ok();
}

// The 4 or 16 bytes of an IP address in text, or empty.
std::string IpBytes(const std::string& text) {
  unsigned char buf[16];
  if (::inet_pton(AF_INET, text.c_str(), buf) == 1) return std::string(buf, buf + 4);
  if (::inet_pton(AF_INET6, text.c_str(), buf) == 1) return std::string(buf, buf + 16);
  return "";
}

Status Validate(const CertificateRequest& r) {
  KMX_RETURN_IF_ERROR(CheckNameText("common_name", r.common_name));
  for (size_t i = 0; i < r.organizations.size(); ++i)
    KMX_RETURN_IF_ERROR(
        CheckNameText("organizations[" + std::to_string(i) + "]", r.organizations[i]));
  for (size_t i = 0; i < r.dns_names.size(); ++i)
    KMX_RETURN_IF_ERROR(CheckDnsName("dns_names[" + std::to_string(i) + "]", r.dns_names[i]));
  for (size_t i = 0; i < r.ip_addresses.size(); ++i)
    if (IpBytes(r.ip_addresses[i]).empty())
      return InvalidError("ip_addresses[" + std::to_string(i) +
                          "]: not an IPv4 or IPv6 address: " + r.ip_addresses[i]);
  if (r.lifetime <= seconds(0)) return InvalidError("lifetime: must be at least 1 s");
  if (r.lifetime > kMaxLifetime) return InvalidError("lifetime: more than 100 years");
  if (!r.server_auth && !r.client_auth)
    return InvalidError("server_auth, client_auth: at least one usage is needed");
  return Status::Ok();
}

StatusOr<OctetsPtr> Octets(const unsigned char* data, size_t n) {
  OctetsPtr o(ASN1_OCTET_STRING_new());
  if (!o || ASN1_OCTET_STRING_set(o.get(), data, static_cast<int>(n)) != 1)
    return OpenSslFailed("an octet string");
  return o;
}

Status AddExtension(X509* cert, int nid, void* value, bool critical) {
  if (X509_add1_ext_i2d(cert, nid, value, critical ? 1 : 0, X509V3_ADD_DEFAULT) != 1)
    return OpenSslFailed(std::string("extension ") + OBJ_nid2sn(nid));
  return Status::Ok();
}

StatusOr<GenNamesPtr> AltNames(const CertificateRequest& r) {
  GenNamesPtr names(sk_GENERAL_NAME_new_null());
  if (!names) return OpenSslFailed("subjectAltName");
  // Takes `gn` (with its value) into the stack.
  auto push = [&](GenNamePtr gn) {
    if (sk_GENERAL_NAME_push(names.get(), gn.get()) <= 0) return false;
    gn.release();
    return true;
  };
  for (const std::string& dns : r.dns_names) {
    GenNamePtr gn(GENERAL_NAME_new());
    Ia5Ptr s(ASN1_IA5STRING_new());
    if (!gn || !s || ASN1_STRING_set(s.get(), dns.data(), static_cast<int>(dns.size())) != 1)
      return OpenSslFailed("subjectAltName DNS");
    GENERAL_NAME_set0_value(gn.get(), GEN_DNS, s.release());
    if (!push(std::move(gn))) return OpenSslFailed("subjectAltName DNS");
  }
  for (const std::string& ip : r.ip_addresses) {
    const std::string bytes = IpBytes(ip);
    GenNamePtr gn(GENERAL_NAME_new());
    if (!gn) return OpenSslFailed("subjectAltName IP");
    KMX_ASSIGN_OR_RETURN(
        OctetsPtr o, Octets(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()));
    GENERAL_NAME_set0_value(gn.get(), GEN_IPADD, o.release());
    if (!push(std::move(gn))) return OpenSslFailed("subjectAltName IP");
  }
  return names;
}

}  // namespace

StatusOr<std::string> CsrKeyType(std::string_view csr_der) {
  KMX_ASSIGN_OR_RETURN(ReqPtr req, ParseCsr(csr_der));
  return KeyTypeOf(X509_REQ_get0_pubkey(req.get()));
}

// ---- Issuer -------------------------------------------------------------------

struct Issuer::Material {
  std::string version;  // FilesVersion when read
  X509Ptr cert;         // the CA's
  KeyPtr key;
  std::string chain_pem;  // cert and what followed it in the file
  Seconds not_after;      // the CA's
  std::string key_id;     // for authorityKeyIdentifier
  bool ed25519 = false;   // sign with no digest
};

StatusOr<std::shared_ptr<const Issuer::Material>> Issuer::Read(const std::string& cert_file,
                                                               const std::string& key_file) {
  // The version before the contents: a change while reading shows as a new
  // version at the next look.
  KMX_ASSIGN_OR_RETURN(std::string version, FilesVersion(cert_file, key_file));
  KMX_ASSIGN_OR_RETURN(std::string cert_pem, ReadFile(cert_file));
  KMX_ASSIGN_OR_RETURN(std::string key_pem, ReadFile(key_file));
  ERR_clear_error();
  auto m = std::make_shared<Material>();
  m->version = std::move(version);
  {
    BioPtr bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
    if (!bio) return OpenSslFailed("a memory BIO");
    while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      X509Ptr cert(c);
      m->chain_pem += Pem(cert.get());
      if (!m->cert) m->cert = std::move(cert);
    }
    ERR_clear_error();  // the end of the file reads as an error
  }
  if (!m->cert) return InvalidError("issuer: no PEM certificate in " + cert_file);
  const uint32_t flags = X509_get_extension_flags(m->cert.get());
  if ((flags & EXFLAG_INVALID) != 0)
    return InvalidError("issuer: certificate in " + cert_file + " has malformed extensions");
  if ((flags & EXFLAG_CA) == 0)
    return InvalidError("issuer: certificate in " + cert_file +
                        " is not a CA (basicConstraints CA:TRUE)");
  if ((flags & EXFLAG_KUSAGE) != 0 && (X509_get_key_usage(m->cert.get()) & KU_KEY_CERT_SIGN) == 0)
    return InvalidError("issuer: certificate in " + cert_file +
                        " has keyUsage without keyCertSign");
  {
    BioPtr bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
    if (!bio) return OpenSslFailed("a memory BIO");
    m->key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
  }
  if (!m->key) return InvalidError("issuer: no PEM private key in " + key_file);
  const int key_type = EVP_PKEY_get_base_id(m->key.get());
  if (key_type != EVP_PKEY_EC && key_type != EVP_PKEY_RSA && key_type != EVP_PKEY_ED25519)
    return InvalidError("issuer: key in " + key_file + " is neither EC, RSA nor Ed25519");
  m->ed25519 = key_type == EVP_PKEY_ED25519;
  if (X509_check_private_key(m->cert.get(), m->key.get()) != 1) {
    ERR_clear_error();
    return InvalidError("issuer: key " + key_file + " does not match certificate " + cert_file);
  }
  KMX_ASSIGN_OR_RETURN(m->not_after, AsnTime(X509_get0_notAfter(m->cert.get())));
  if (const ASN1_OCTET_STRING* skid = X509_get0_subject_key_id(m->cert.get())) {
    m->key_id.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(skid)),
                     static_cast<size_t>(ASN1_STRING_length(skid)));
  } else {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_pubkey_digest(m->cert.get(), EVP_sha1(), md, &n) != 1)
      return OpenSslFailed("the issuer's key identifier");
    m->key_id.assign(reinterpret_cast<const char*>(md), n);
  }
  return std::shared_ptr<const Material>(std::move(m));
}

StatusOr<std::unique_ptr<Issuer>> Issuer::Load(std::string cert_file, std::string key_file) {
  KMX_ASSIGN_OR_RETURN(std::shared_ptr<const Material> m, Read(cert_file, key_file));
  return std::unique_ptr<Issuer>(new Issuer(std::move(cert_file), std::move(key_file), m));
}

Issuer::Issuer(std::string cert_file, std::string key_file, std::shared_ptr<const Material> m)
    : cert_file_(std::move(cert_file)), key_file_(std::move(key_file)), material_(std::move(m)) {}

Issuer::~Issuer() = default;

std::shared_ptr<const Issuer::Material> Issuer::Current() {
  std::lock_guard lock(mu_);
  auto version = FilesVersion(cert_file_, key_file_);
  const std::string seen = version.ok() ? *version : "unreadable: " + version.status().ToString();
  if (seen == material_->version || seen == rejected_) return material_;
  StatusOr<std::shared_ptr<const Material>> fresh =
      version.ok() ? Read(cert_file_, key_file_)
                   : StatusOr<std::shared_ptr<const Material>>(version.status());
  if (!fresh.ok()) {
    // A half-written rotation (certificate new, key old) lands here until both are.
    rejected_ = seen;
    spdlog::error("issuer files {} / {} changed but cannot be used ({}); keeping the CA in force",
                  cert_file_, key_file_, fresh.status().ToString());
    return material_;
  }
  material_ = *fresh;
  rejected_.clear();
  ++reloads_;
  spdlog::info("issuer files {} / {} re-read (rotation)", cert_file_, key_file_);
  return material_;
}

std::string Issuer::IssuerChainPem() const {
  std::lock_guard lock(mu_);
  return material_->chain_pem;
}

uint64_t Issuer::Reloads() const {
  std::lock_guard lock(mu_);
  return reloads_;
}

StatusOr<IssuedCertificate> Issuer::Issue(const CertificateRequest& r) {
  KMX_RETURN_IF_ERROR(Validate(r));
  ERR_clear_error();
  KMX_ASSIGN_OR_RETURN(ReqPtr req, ParseCsr(r.csr_der));
  EVP_PKEY* subject_key = X509_REQ_get0_pubkey(req.get());
  KMX_RETURN_IF_ERROR(KeyTypeOf(subject_key).status());
  if (X509_REQ_verify(req.get(), subject_key) != 1) {
    ERR_clear_error();
    return InvalidError("csr: its signature does not verify with its public key");
  }
  const std::shared_ptr<const Material> m = Current();

  const Seconds not_before = std::chrono::floor<seconds>(r.not_before);
  if (m->not_after <= not_before)
    return FailedError("issuer: the CA certificate expires (" +
                       std::to_string(m->not_after.time_since_epoch().count()) +
                       " s since the epoch) before the requested notBefore");
  const Seconds not_after = std::min(not_before + r.lifetime, m->not_after);

  X509Ptr leaf(X509_new());
  if (!leaf) return OpenSslFailed("a certificate");
  if (X509_set_version(leaf.get(), X509_VERSION_3) != 1) return OpenSslFailed("version");

  // Serial: 128 random bits, positive (DER adds a 0 byte when the top bit is set), not 0.
  BnPtr serial_bn;
  do {
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof bytes) != 1) return OpenSslFailed("random serial");
    serial_bn.reset(BN_bin2bn(bytes, sizeof bytes, nullptr));
    if (!serial_bn) return OpenSslFailed("serial");
  } while (BN_is_zero(serial_bn.get()));
  IntPtr serial(BN_to_ASN1_INTEGER(serial_bn.get(), nullptr));
  if (!serial || X509_set_serialNumber(leaf.get(), serial.get()) != 1)
    return OpenSslFailed("serial");

  NamePtr subject(X509_NAME_new());
  if (!subject) return OpenSslFailed("subject");
  auto add_entry = [&](int nid, const std::string& v) {
    return X509_NAME_add_entry_by_NID(subject.get(), nid, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(v.data()),
                                      static_cast<int>(v.size()), -1, 0) == 1;
  };
  for (const std::string& o : r.organizations)
    if (!add_entry(NID_organizationName, o)) return OpenSslFailed("subject O");
  if (!add_entry(NID_commonName, r.common_name)) return OpenSslFailed("subject CN");
  if (X509_set_subject_name(leaf.get(), subject.get()) != 1 ||
      X509_set_issuer_name(leaf.get(), X509_get_subject_name(m->cert.get())) != 1)
    return OpenSslFailed("names");

  if (ASN1_TIME_set(X509_getm_notBefore(leaf.get()), not_before.time_since_epoch().count()) ==
          nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(leaf.get()), not_after.time_since_epoch().count()) ==
          nullptr)
    return OpenSslFailed("validity");
  if (X509_set_pubkey(leaf.get(), subject_key) != 1) return OpenSslFailed("public key");

  BcPtr bc(BASIC_CONSTRAINTS_new());  // ca = false
  if (!bc) return OpenSslFailed("basicConstraints");
  KMX_RETURN_IF_ERROR(AddExtension(leaf.get(), NID_basic_constraints, bc.get(), true));

  BitsPtr ku(ASN1_BIT_STRING_new());
  if (!ku || ASN1_BIT_STRING_set_bit(ku.get(), 0, 1) != 1) return OpenSslFailed("keyUsage");
  if (EVP_PKEY_get_base_id(subject_key) == EVP_PKEY_RSA &&
      ASN1_BIT_STRING_set_bit(ku.get(), 2, 1) != 1)
    return OpenSslFailed("keyUsage");
  KMX_RETURN_IF_ERROR(AddExtension(leaf.get(), NID_key_usage, ku.get(), true));

  EkuPtr eku(sk_ASN1_OBJECT_new_null());
  if (!eku) return OpenSslFailed("extendedKeyUsage");
  if (r.server_auth && sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_server_auth)) <= 0)
    return OpenSslFailed("extendedKeyUsage");
  if (r.client_auth && sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_client_auth)) <= 0)
    return OpenSslFailed("extendedKeyUsage");
  KMX_RETURN_IF_ERROR(AddExtension(leaf.get(), NID_ext_key_usage, eku.get(), false));

  if (!r.dns_names.empty() || !r.ip_addresses.empty()) {
    KMX_ASSIGN_OR_RETURN(GenNamesPtr names, AltNames(r));
    KMX_RETURN_IF_ERROR(AddExtension(leaf.get(), NID_subject_alt_name, names.get(), false));
  }

  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (X509_pubkey_digest(leaf.get(), EVP_sha1(), md, &md_len) != 1)
    return OpenSslFailed("subjectKeyIdentifier");
  KMX_ASSIGN_OR_RETURN(OctetsPtr skid, Octets(md, md_len));
  KMX_RETURN_IF_ERROR(AddExtension(leaf.get(), NID_subject_key_identifier, skid.get(), false));

  AkidPtr akid(AUTHORITY_KEYID_new());
  if (!akid) return OpenSslFailed("authorityKeyIdentifier");
  KMX_ASSIGN_OR_RETURN(
      OctetsPtr keyid,
      Octets(reinterpret_cast<const unsigned char*>(m->key_id.data()), m->key_id.size()));
  akid->keyid = keyid.release();
  KMX_RETURN_IF_ERROR(AddExtension(leaf.get(), NID_authority_key_identifier, akid.get(), false));

  if (X509_sign(leaf.get(), m->key.get(), m->ed25519 ? nullptr : EVP_sha256()) <= 0)
    return OpenSslFailed("signing");

  IssuedCertificate out;
  out.chain_pem = Pem(leaf.get());
  if (out.chain_pem.empty()) return OpenSslFailed("PEM of the certificate");
  out.chain_pem += m->chain_pem;
  out.not_before = std::chrono::time_point_cast<std::chrono::system_clock::duration>(not_before);
  out.not_after = std::chrono::time_point_cast<std::chrono::system_clock::duration>(not_after);
  return out;
}

}  // namespace kmosix::tls
