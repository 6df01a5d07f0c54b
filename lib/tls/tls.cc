#include "tls/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kmosix::tls {

std::string OpenSslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

namespace {

// mtime, size and inode of each file: a new signature means "re-read".
StatusOr<std::string> Signature(const Files& f) {
  std::string sig;
  for (const std::string* p : {&f.ca, &f.cert, &f.key}) {
    struct stat st {};
    if (::stat(p->c_str(), &st) != 0) {
      const int err = errno;
      return err == ENOENT ? NotFoundError("no such file: " + *p)
                           : FailedError("cannot stat " + *p + ": " + std::strerror(err));
    }
    sig += std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
           std::to_string(st.st_size) + ":" + std::to_string(st.st_ino) + ";";
  }
  return sig;
}

std::vector<std::string> NameEntries(const X509_NAME* name, int nid) {
  std::vector<std::string> out;
  int i = -1;
  while ((i = X509_NAME_get_index_by_NID(name, nid, i)) >= 0) {
    const X509_NAME_ENTRY* e = X509_NAME_get_entry(name, i);
    const ASN1_STRING* data = X509_NAME_ENTRY_get_data(e);
    unsigned char* utf8 = nullptr;
    const int n = ASN1_STRING_to_UTF8(&utf8, data);
    if (n >= 0 && utf8 != nullptr) out.emplace_back(reinterpret_cast<char*>(utf8), n);
    OPENSSL_free(utf8);
  }
  return out;
}

Identity IdentityOfCert(const X509* cert) {
  Identity id;
  if (cert == nullptr) return id;
  const X509_NAME* subject = X509_get_subject_name(cert);
  auto cn = NameEntries(subject, NID_commonName);
  if (cn.size() != 1) return id;  // no CN, or an ambiguous one: nobody
  id.name = cn.front();
  id.groups = NameEntries(subject, NID_organizationName);
  return id;
}

}  // namespace

bool Identity::In(const std::string& group) const {
  return std::find(groups.begin(), groups.end(), group) != groups.end();
}

Identity PeerIdentity(const SSL* ssl) {
  if (ssl == nullptr) return {};
  const X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  return IdentityOfCert(cert);
}

void ApplyPolicy(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_cipher_list(ctx,
                          "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                          "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                          "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
  SSL_CTX_set_ciphersuites(ctx,
                           "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                           "TLS_CHACHA20_POLY1305_SHA256");
}

StatusOr<CtxPtr> MakeClientContext(const Files& files) {
  if (!files.Complete()) return InvalidError("TLS client: CA, certificate and key files needed");
  ERR_clear_error();
  CtxPtr ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  if (!ctx) return FailedError("TLS client: " + OpenSslError());
  ApplyPolicy(ctx.get());
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), files.cert.c_str()) != 1)
    return InvalidError("TLS client certificate " + files.cert + ": " + OpenSslError());
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), files.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx.get()) != 1)
    return InvalidError("TLS client key " + files.key + ": " + OpenSslError());
  if (SSL_CTX_load_verify_locations(ctx.get(), files.ca.c_str(), nullptr) != 1)
    return InvalidError("TLS CA file " + files.ca + ": " + OpenSslError());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  return ctx;
}

// ---- ServerCredentials --------------------------------------------------------

struct ServerCredentials::Material {
  X509* cert = nullptr;
  STACK_OF(X509) * chain = nullptr;
  EVP_PKEY* key = nullptr;
  X509_STORE* store = nullptr;
  std::string signature;
  std::string name;
  ~Material() {
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_STORE_free(store);
  }
};

StatusOr<std::unique_ptr<ServerCredentials>> ServerCredentials::Load(Files files, Clock& clock) {
  if (!files.Complete()) return InvalidError("TLS server: CA, certificate and key files needed");
  KMX_ASSIGN_OR_RETURN(std::shared_ptr<Material> m, Read(files));
  return std::unique_ptr<ServerCredentials>(new ServerCredentials(std::move(files), clock, m));
}

StatusOr<std::shared_ptr<ServerCredentials::Material>> ServerCredentials::Read(const Files& files) {
  KMX_ASSIGN_OR_RETURN(std::string sig, Signature(files));
  ERR_clear_error();
  auto m = std::make_shared<Material>();
  m->signature = sig;
  {
    BIO* bio = BIO_new_file(files.cert.c_str(), "r");
    if (bio == nullptr) return NotFoundError("cannot read certificate " + files.cert);
    m->cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    if (m->cert != nullptr) {
      m->chain = sk_X509_new_null();
      while (X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr))
        sk_X509_push(m->chain, extra);
      ERR_clear_error();  // the end of the file reads as an error
    }
    BIO_free(bio);
    if (m->cert == nullptr) return InvalidError("no PEM certificate in " + files.cert);
  }
  {
    BIO* bio = BIO_new_file(files.key.c_str(), "r");
    if (bio == nullptr) return NotFoundError("cannot read key " + files.key);
    m->key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (m->key == nullptr) return InvalidError("no PEM private key in " + files.key);
    if (X509_check_private_key(m->cert, m->key) != 1)
      return InvalidError("key " + files.key + " does not match certificate " + files.cert);
  }
  m->store = X509_STORE_new();
  if (m->store == nullptr || X509_STORE_load_file(m->store, files.ca.c_str()) != 1)
    return InvalidError("TLS CA file " + files.ca + ": " + OpenSslError());
  m->name = IdentityOfCert(m->cert).name;
  return m;
}

ServerCredentials::ServerCredentials(Files files, Clock& clock, std::shared_ptr<Material> m)
    : files_(std::move(files)), clock_(clock), material_(std::move(m)) {
  next_check_ = clock_.Now() + kReloadInterval;
}

ServerCredentials::~ServerCredentials() = default;

std::shared_ptr<ServerCredentials::Material> ServerCredentials::Current() {
  std::lock_guard lock(mu_);
  const auto now = clock_.Now();
  if (now < next_check_) return material_;
  next_check_ = now + kReloadInterval;
  auto sig = Signature(files_);
  if (!sig.ok() || *sig == material_->signature || *sig == rejected_) return material_;
  auto fresh = Read(files_);
  if (!fresh.ok()) {
    // A half-written rotation (cert new, key old) lands here until both are.
    rejected_ = *sig;
    spdlog::error("TLS files changed but cannot be used ({}); keeping {}'s certificate in force",
                  fresh.status().ToString(), material_->name);
    return material_;
  }
  material_ = *fresh;
  ++reloads_;
  spdlog::info("TLS certificate {} re-read (rotation): {}", files_.cert, material_->name);
  return material_;
}

int ServerCredentials::OnClientHello(SSL* ssl, int* alert, void* arg) {
  auto* self = static_cast<ServerCredentials*>(arg);
  std::shared_ptr<Material> m = self->Current();
  if (SSL_use_certificate(ssl, m->cert) != 1 || SSL_use_PrivateKey(ssl, m->key) != 1 ||
      SSL_set1_chain(ssl, m->chain) != 1 || SSL_set1_verify_cert_store(ssl, m->store) != 1) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

bool ServerCredentials::Configure(SSL_CTX& ctx, bool require_client_cert) {
  std::shared_ptr<Material> m = Current();
  ApplyPolicy(&ctx);
  if (SSL_CTX_use_certificate(&ctx, m->cert) != 1 || SSL_CTX_use_PrivateKey(&ctx, m->key) != 1)
    return false;
  X509_STORE_up_ref(m->store);
  SSL_CTX_set_cert_store(&ctx, m->store);
  SSL_CTX_set_verify(
      &ctx, SSL_VERIFY_PEER | (require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), nullptr);
  SSL_CTX_set_client_hello_cb(&ctx, &ServerCredentials::OnClientHello, this);
  return true;
}

std::string ServerCredentials::Name() { return Current()->name; }

uint64_t ServerCredentials::Reloads() {
  std::lock_guard lock(mu_);
  return reloads_;
}

}  // namespace kmosix::tls
