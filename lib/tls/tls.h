// TLS for the node plane: one policy (TLS 1.2+, AEAD ciphers only), node and
// controller identities read from certificates, and server credentials that
// follow their files (rotation without restart).
//
// Identities: a certificate's subject CN is who (a node name, or a
// controller replica's, "controller1", ...), its O is the group: kmosix:nodes,
// kmosix:controllers, kmosix:admins (scripts/cluster makes them so).
//
// Ownership: ServerCredentials owns its current key material; SSL_CTXs it
// configures borrow it (it must outlive every listener using it).
// Thread-safety: ServerCredentials is thread-safe (handshakes on any thread
// ask for the current material). The free functions are pure or touch only
// what they are given.
// Errors: kInvalid for files that do not parse or do not match (key vs
// certificate), kNotFound/kFailed when they cannot be read. A reload that
// fails keeps the material in force and is logged once per file version.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::tls {

inline constexpr char kGroupNodes[] = "kmosix:nodes";
inline constexpr char kGroupControllers[] = "kmosix:controllers";
inline constexpr char kGroupAdmins[] = "kmosix:admins";

// PEM files: the CA bundle that peers' certificates must chain to, and this
// process's own certificate (chain) and key.
struct Files {
  std::string ca;
  std::string cert;
  std::string key;
  bool Complete() const { return !ca.empty() && !cert.empty() && !key.empty(); }
};

// The thread's queued OpenSSL errors as one line (and the queue emptied):
// "error:...; error:...", or "unknown OpenSSL error" when there is none.
std::string OpenSslError();

// Who a verified peer is. Empty `name` when the peer presented no
// certificate (or it did not verify).
struct Identity {
  std::string name;                 // subject CN
  std::vector<std::string> groups;  // subject O values
  bool In(const std::string& group) const;
  bool empty() const { return name.empty(); }
};

// The identity in `ssl`'s peer certificate, if the handshake verified it.
Identity PeerIdentity(const SSL* ssl);

// The policy every kmosix TLS context gets: TLS 1.2 or 1.3, ECDHE with
// AES-GCM or ChaCha20-Poly1305 only, no compression, no renegotiation.
void ApplyPolicy(SSL_CTX* ctx);

using CtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;

// A client context from the files now (certificate, key, trusted CA; the
// server's certificate is verified against the CA; hostname checks are the
// caller's, with SSL_set1_host).
StatusOr<CtxPtr> MakeClientContext(const Files& files);

// A server's certificate, key and trusted CA, re-read when any of the files
// changes (looked at no more often than every kReloadInterval of the clock).
class ServerCredentials {
 public:
  static constexpr Clock::Duration kReloadInterval = std::chrono::seconds(2);

  static StatusOr<std::unique_ptr<ServerCredentials>> Load(Files files, Clock& clock);
  ~ServerCredentials();
  ServerCredentials(const ServerCredentials&) = delete;
  ServerCredentials& operator=(const ServerCredentials&) = delete;

  // Sets up `ctx` (a fresh server context: httplib's SSLServer callback, or
  // the data channel's) with the policy and a hook that installs the current
  // certificate, key and CA into every connection. `require_client_cert`:
  // a handshake without a verified client certificate fails; otherwise one
  // is asked for and verified if given (the caller then decides per request).
  bool Configure(SSL_CTX& ctx, bool require_client_cert);

  // The subject CN of the current certificate.
  std::string Name();
  // How many times the files were re-read successfully (for tests and logs).
  uint64_t Reloads();

 private:
  struct Material;
  ServerCredentials(Files files, Clock& clock, std::shared_ptr<Material> m);
  static StatusOr<std::shared_ptr<Material>> Read(const Files& files);
  std::shared_ptr<Material> Current();
  static int OnClientHello(SSL* ssl, int* alert, void* arg);

  const Files files_;
  Clock& clock_;
  std::mutex mu_;
  std::shared_ptr<Material> material_;  // mu_
  Clock::TimePoint next_check_{};       // mu_
  std::string rejected_;                // version signature that failed; mu_
  uint64_t reloads_ = 0;                // mu_
};

}  // namespace kmosix::tls
