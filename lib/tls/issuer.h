// The X.509 part of a certificate signer: issues a node's certificate for the
// public key of a PKCS#10 request (a Kubernetes PodCertificateRequest's stub
// CSR), signed by a CA whose certificate and key are read from files.
//
// What is issued: X.509 v3, a 128-bit random positive serial, subject = the
// request's O values then its CN, issuer = the CA's subject; basicConstraints
// critical CA:FALSE; keyUsage critical digitalSignature (+ keyEncipherment for
// an RSA subject key); extendedKeyUsage serverAuth/clientAuth as asked;
// subjectAltName (DNS, IP) when any; subjectKeyIdentifier; authority key
// identifier (the CA's subjectKeyIdentifier, or the SHA-1 of its public key).
// Signed with SHA-256 (EC, RSA CA keys) or pure Ed25519.
//
// Ownership: an Issuer owns its CA material (certificate, chain, key) and
// replaces it whole when the files change; callers own everything they pass
// and get back.
// Thread-safety: Issuer is thread-safe (Issue and IssuerChainPem from any
// thread). The free function is pure.
// Errors:
//   kInvalid  - the request is malformed (the message names the field: csr,
//               common_name, organizations, dns_names, ip_addresses,
//               lifetime), the CSR's key type is not supported or its
//               signature does not verify; or (Load) the files do not parse,
//               the certificate is not a CA, the key does not match it or is
//               of an unsupported type.
//   kNotFound - (Load) a file does not exist.
//   kFailed   - a file cannot be read (other than missing), the CA has
//               expired for the requested notBefore, or OpenSSL failed
//               (its error text in the message).
// A re-read of rotated files that fails keeps the material in force (Issue
// goes on with it) and is logged once per version of the files.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/status.h"

namespace kmosix::tls {

// The key type of a DER PKCS#10 request, named as Kubernetes names them:
// "ECDSAP256", "ECDSAP384", "ECDSAP521", "ED25519", "RSA3072", "RSA4096".
// kInvalid when the bytes are not one DER PKCS#10 request or its key is of any
// other type (RSA-2048, Ed448, secp256k1, DSA, ...); the message names the
// supported types. The request's signature is not checked here.
StatusOr<std::string> CsrKeyType(std::string_view csr_der);

struct CertificateRequest {
  // PKCS#10, DER. Only its public key is used (subject and attributes are
  // ignored); its signature must verify (proof of possession).
  std::string csr_der;
  std::string common_name;                           // 1..64 bytes of UTF-8, no control bytes
  std::vector<std::string> organizations;            // subject O values, in order, before CN
  std::vector<std::string> dns_names;                // SAN DNS: [A-Za-z0-9-.], labels 1..63, <= 253
  std::vector<std::string> ip_addresses;             // SAN IP: IPv4 or IPv6 text
  std::chrono::system_clock::time_point not_before;  // truncated to whole seconds
  std::chrono::seconds lifetime{0};                  // 1 s .. 100 years
  bool server_auth = true;
  bool client_auth = true;
};

struct IssuedCertificate {
  // The leaf, then the issuer's own chain as loaded (re-encoded as PEM; no
  // root unless the issuer's certificate file holds one).
  std::string chain_pem;
  // Exactly what the leaf encodes (whole seconds). not_after is
  // min(not_before + lifetime, the CA's notAfter): it can be shorter than
  // asked, and the caller decides whether that is enough.
  std::chrono::system_clock::time_point not_before, not_after;
};

class Issuer {
 public:
  // cert_file: PEM, the issuing CA's certificate first (basicConstraints
  // CA:TRUE; keyUsage keyCertSign when keyUsage is present), optionally
  // followed by its intermediates towards the root. Blocks of other types
  // (a private key) are skipped. key_file: the CA's private key, PEM (PKCS#8
  // or traditional; EC, RSA or Ed25519), matching the certificate.
  static StatusOr<std::unique_ptr<Issuer>> Load(std::string cert_file, std::string key_file);
  ~Issuer();
  Issuer(const Issuer&) = delete;
  Issuer& operator=(const Issuer&) = delete;

  // Issues a certificate for the request's public key. First re-reads both
  // files when either's mtime, size or inode changed since the last read
  // (secret rotation in a Kubernetes volume).
  StatusOr<IssuedCertificate> Issue(const CertificateRequest& request);

  // The chain in force (the CA's certificate first), PEM.
  std::string IssuerChainPem() const;

  // How many times rotated files were re-read successfully.
  uint64_t Reloads() const;

 private:
  struct Material;
  Issuer(std::string cert_file, std::string key_file, std::shared_ptr<const Material> m);
  static StatusOr<std::shared_ptr<const Material>> Read(const std::string& cert_file,
                                                        const std::string& key_file);
  std::shared_ptr<const Material> Current();

  const std::string cert_file_;
  const std::string key_file_;
  mutable std::mutex mu_;
  std::shared_ptr<const Material> material_;  // mu_
  std::string rejected_;                      // file version that failed to load; mu_
  uint64_t reloads_ = 0;                      // mu_
};

}  // namespace kmosix::tls
