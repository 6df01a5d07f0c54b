// EtcdStateStore: the StateStore seam over etcd v3's gRPC API (KV, Watch and
// Lease services; tested against etcd 3.4). Plaintext gRPC, or TLS with a
// client certificate (etcd's --client-cert-auth; with etcd auth enabled the
// certificate's CN is the etcd user).
//
// TLS: EtcdConfig::tls (set by EtcdConfigFromFlags for https:// endpoints)
// makes every channel TLS with gRPC's experimental TlsCredentials and a
// FileWatcherCertificateProvider over ca_file, cert_file and key_file: the
// files are re-read every tls_refresh, so a rotated certificate is used by the
// next connection without a restart (connections already open keep theirs).
// Replace cert and key atomically (write both elsewhere, then rename). The
// server's certificate must chain to ca_file and name the endpoint's host (IP
// SAN for an address). A TLS config is never downgraded: a missing or
// unreadable file, an https:// endpoint without a CA, TLS files for http://
// endpoints, or a mix of http:// and https:// endpoints is kInvalid
// (ValidateEtcdConfig, EtcdConfigFromFlags, EtcdStateStore::Open).
//
// Ownership: the caller owns the EtcdStateStore; it owns one gRPC channel per
// endpoint (pimpl: no gRPC/etcd types in this header). Watchers and
// LeaseKeepAlives it returns hold a reference to its internals and must be
// destroyed before it. It does not own the etcd servers.
//
// Thread-safety: as the seam says: every StateStore method may be called
// concurrently. Each Watcher runs one reader thread; each LeaseKeepAlive one
// refresher thread (its on_lost callback runs there).
//
// Endpoints and reconnection: calls go to the current endpoint; when a call
// fails with UNAVAILABLE the next endpoint becomes current (round robin), and
// the call returns kRetry (nothing is retried inside: a write may have been
// applied). gRPC reconnects each channel by itself, with backoff capped at
// `max_reconnect_backoff` so that a restarted etcd is found again quickly.
//
// Watches are NOT resumed transparently: when the watch stream breaks (etcd
// restarted, connection lost, server cancelled the watch) Next() returns
// kRetry and next_revision() says where to watch again from (the caller either
// re-watches from there, which fails with kConflict if that revision was
// compacted meanwhile, or relists). Keep-alives DO reconnect by themselves:
// they re-open the keep-alive stream until the lease's TTL has passed since
// the last successful refresh, then report kRetry (presumed expired).
//
// etcd 3.4 behaviour the tests pin down:
//   - minimum lease TTL is 2 s with default election settings (a grant of 1 s
//     answers TTL 2); keys of an expired lease vanished ~0.5 s after the TTL in the tests;
//   - Compact(current revision) is allowed; compacting a revision at or below
//     the compacted one is OUT_OF_RANGE "compacted" (kConflict); Compact waits
//     for the physical compaction here;
//   - a watch from a compacted revision is first confirmed ("created"), then
//     cancelled with compact_revision within ~100 ms: Next() reports kConflict;
//   - on restart the watch stream ends (UNAVAILABLE -> kRetry); history and
//     revisions survive on the same data dir, so re-watching from
//     next_revision() loses nothing; leases survive too (the new leader
//     renews every lease's TTL), and keep-alives reconnect;
//   - a LeaseKeepAlive detects revocation at its next refresh (TTL/3 later).
// Destroying a LeaseKeepAlive may wait for a refresh in flight (at most
// rpc_timeout); destroying a Watcher returns promptly.
//
// List pages: a prefix is read in Range calls of at most list_page_limit keys
// (the next page starts at the last key + "\0"), every page after the first
// pinned to the first page's revision, so the result is one consistent
// snapshot however many keys there are, and no answer has to fit a whole
// prefix into one gRPC message. A page over max_receive_bytes is asked again
// with half the keys. If the pinned revision is compacted between pages, a
// List of the latest state (ListOptions.revision 0) starts over (a few
// times); one at an explicit revision fails with kConflict.
//
// Error mapping (gRPC status -> Code; never throws):
//   UNAVAILABLE, DEADLINE_EXCEEDED, "leader changed", "no leader", "timed out" -> kRetry
//   OUT_OF_RANGE "compacted" -> kConflict; OUT_OF_RANGE "future revision"   -> kInvalid
//   NOT_FOUND (lease)                                                     -> kNotFound
//   PERMISSION_DENIED (etcd auth), UNAUTHENTICATED                        -> kPermissionDenied
//     (the identity's role does not allow it now; a grant may come later)
//   a TLS handshake that fails (no or a refused client certificate, an unknown
//   server CA): the channel never connects -> kRetry, whose message carries
//   gRPC's reason (e.g. "Ssl handshake failed", "CERTIFICATE_VERIFY_FAILED")
//   INVALID_ARGUMENT "revision of auth store is old" (a read that ran while
//     etcd's roles changed; writes are retried inside etcd)                -> kRetry
//   INVALID_ARGUMENT (empty key, duplicate key in txn, too large)         -> kInvalid
//   anything else                                                         -> kFailed
#pragma once

#include <chrono>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kmosix/state_store.h"
#include "kmosix/status.h"

namespace kmosix {

struct EtcdConfig {
  // "host:port" (or "ipv4:...", "unix:..." gRPC targets); at least one.
  std::vector<std::string> endpoints = {"127.0.0.1:2379"};
  // How long a call waits for a connection before failing with kRetry.
  std::chrono::milliseconds dial_timeout{3000};
  // Deadline of each unary call (and of Watch/KeepAlive setup).
  std::chrono::milliseconds rpc_timeout{5000};
  // Cap of gRPC's reconnect backoff.
  std::chrono::milliseconds max_reconnect_backoff{1000};
  // List reads a prefix in Range pages of at most this many keys (>= 1), all
  // at the revision of the first page (see List below).
  int64_t list_page_limit = 500;
  // Largest message this client accepts from etcd (gRPC's default is 4 MiB;
  // etcd's Go client takes up to 2 GiB, as here): one watch answer carries a
  // whole transaction's events, with prev_kv the deleted values too.
  int max_receive_bytes = std::numeric_limits<int>::max();
  // TLS (https:// endpoints): the CA bundle etcd's certificate must chain to,
  // and this client's certificate and key (PEM files, both or neither; etcd
  // with --client-cert-auth needs them). Re-read every tls_refresh (>= 1 s).
  bool tls = false;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::chrono::seconds tls_refresh{5};
};

// A --etcd flag: "http://10.77.0.1:2379,10.77.0.2:2379" -> {"10.77.0.1:2379",
// "10.77.0.2:2379"} (scheme and trailing slashes dropped, empty items skipped).
std::vector<std::string> ParseEtcdEndpoints(const std::string& flag);

// kInvalid naming the problem if `config` cannot be used as it says: no
// endpoint; tls without ca_file; only one of cert_file/key_file; a TLS file
// unreadable or not PEM; TLS files set while tls is false (they would be
// ignored: a silent downgrade).
Status ValidateEtcdConfig(const EtcdConfig& config);

// The --etcd, --etcd-ca, --etcd-cert and --etcd-key flags as a config (other
// fields default), validated: every https:// endpoint -> tls; every http://
// one -> plaintext; a mix -> kInvalid. Items without a scheme take the others'
// scheme; when no item has one, TLS iff a CA is given.
StatusOr<EtcdConfig> EtcdConfigFromFlags(const std::string& endpoints, const std::string& ca_file,
                                         const std::string& cert_file, const std::string& key_file);

class EtcdStateStore : public StateStore {
 public:
  // Validates `config` (ValidateEtcdConfig) and makes a store; does not connect.
  static StatusOr<std::unique_ptr<EtcdStateStore>> Open(EtcdConfig config);
  // Does not connect yet (channels connect lazily); never fails: with a config
  // ValidateEtcdConfig refuses, every call fails with that kInvalid status
  // (never a plaintext fallback). Prefer Open() to learn that at once.
  explicit EtcdStateStore(EtcdConfig config);
  ~EtcdStateStore() override;
  EtcdStateStore(const EtcdStateStore&) = delete;
  EtcdStateStore& operator=(const EtcdStateStore&) = delete;

  // Default arguments repeat the seam's (for callers holding this type).
  StatusOr<GetResult> Get(const std::string& key, int64_t revision = 0) override;
  StatusOr<ListResult> List(const std::string& prefix, const ListOptions& options = {}) override;
  StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                        const PutOptions& options = {}) override;
  StatusOr<DeleteResult> Delete(const std::string& key) override;
  StatusOr<DeleteResult> DeletePrefix(const std::string& prefix) override;
  StatusOr<TxnResult> Commit(const Txn& txn) override;
  Status Compact(int64_t revision) override;
  StatusOr<std::unique_ptr<Watcher>> Watch(const WatchOptions& options) override;
  StatusOr<LeaseGrant> GrantLease(std::chrono::seconds ttl) override;
  Status RevokeLease(int64_t id) override;
  StatusOr<std::chrono::seconds> LeaseTimeToLive(int64_t id) override;
  StatusOr<std::unique_ptr<LeaseKeepAlive>> KeepAlive(int64_t id,
                                                      LeaseLostCallback on_lost = {}) override;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace kmosix
