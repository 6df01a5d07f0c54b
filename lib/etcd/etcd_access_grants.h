// EtcdAccessGrants: the AccessGrants seam (kmosix/access_grants.h) over etcd
// v3's gRPC Auth service (RoleGrantPermission, RoleRevokePermission, RoleGet;
// EnsureNodeIdentity also RoleAdd, UserGet, UserAdd with no_password (etcd
// 3.4 and later), UserGrantRole; tested against etcd 3.4). With etcd auth
// enabled the caller's identity (the CN of its client certificate,
// EtcdConfig::cert_file) must hold etcd's root role: etcd has no narrower
// right to administer roles. With auth disabled anyone may call it (roles
// still have to exist for Grant, Revoke and Granted).
//
// Connection: the same EtcdConfig as EtcdStateStore (endpoints, TLS files
// re-read every tls_refresh, never downgraded: a config ValidateEtcdConfig
// refuses makes every call fail with that kInvalid). Its own gRPC channel per
// endpoint; a call that finds its endpoint UNAVAILABLE moves to the next one
// and answers kRetry (nothing is retried inside).
//
// EnsureNodeIdentity reads first (RoleGet, UserGet) and writes only what is
// missing, so a second call makes no write (etcd bumps its auth revision on
// every one); "role/user name already exists" from a concurrent caller is
// fine. A permission of another type on exactly that key or range is
// widened (READ+WRITE -> READWRITE), never narrowed.
//
// Error mapping (gRPC/etcd -> Code): UNAVAILABLE, DEADLINE_EXCEEDED, "leader
// changed", "no leader", "timed out" -> kRetry; "role name not found" ->
// kNotFound; "permission is not granted to the role" on Revoke -> ok (nothing
// to take away); PERMISSION_DENIED, "user name not found" / UNAUTHENTICATED
// -> kPermissionDenied (a missing user of EnsureNodeIdentity is created);
// an empty role, key, user or prefix -> kInvalid before any call;
// anything else -> kFailed. Messages name the role and key.
//
// Ownership: the caller owns it; it owns its channels, not the etcd servers.
// Thread-safety: every method may be called concurrently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "etcd/etcd_state_store.h"
#include "kmosix/access_grants.h"

namespace kmosix {

class EtcdAccessGrants final : public AccessGrants {
 public:
  // Never fails: a config ValidateEtcdConfig refuses makes every call fail
  // with that kInvalid. Does not connect yet.
  explicit EtcdAccessGrants(EtcdConfig config);
  ~EtcdAccessGrants() override;
  EtcdAccessGrants(const EtcdAccessGrants&) = delete;
  EtcdAccessGrants& operator=(const EtcdAccessGrants&) = delete;

  Status Grant(const std::string& role, const std::string& key) override;
  Status Revoke(const std::string& role, const std::string& key) override;
  StatusOr<std::vector<std::string>> Granted(const std::string& role) override;
  Status EnsureNodeIdentity(const std::string& user, const std::string& role,
                            const std::string& read_prefix, const std::string& own_key) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kmosix
