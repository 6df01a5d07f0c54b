// AccessGrants: the seam over the state store's per-role key permissions
// (etcd's auth roles), as the controller needs them to narrow what each node
// may write (issue 11; controller/grants.h): single keys only, read and write
// together. A role's other permissions (ranges, read-only or write-only keys)
// are the administrator's: never listed here, and never changed except by a
// Revoke of exactly their key (EnsureNodeIdentity only ever adds rights).
//
//   Grant(role, key)    lets `role` read and write exactly `key` (a READWRITE
//                       permission with an empty range end). Idempotent.
//   Revoke(role, key)   takes the role's permission on exactly `key` away
//                       (whatever its type); ok when it had none. Idempotent.
//   Granted(role)       the keys `role` holds a single-key READWRITE permission
//                       on, sorted, without duplicates.
//   EnsureNodeIdentity(user, role, read_prefix, own_key)
//                       a node's store identity, as the controller makes it
//                       when it signs the node's certificate (CN=user): role
//                       `role` exists (created if missing) and holds READ on
//                       every key starting with read_prefix (the range
//                       [read_prefix, PrefixRangeEnd(read_prefix)),
//                       kmosix/state_store.h; READWRITE there is kept) and
//                       READWRITE on exactly own_key; user `user` exists
//                       (created without a password: it authenticates by
//                       its client certificate's CN) and holds `role`. Adds
//                       only: what else the role or user has stays.
//                       Idempotent (a second call changes nothing). Role
//                       first, then the user: the user never exists without
//                       the role's permissions. Never kNotFound.
//
// Errors (what the caller should do): kInvalid an empty role, key, user or
// prefix (fix the call); kNotFound no such role (Grant, Revoke, Granted: an
// administrator must create it; retrying does not help until then);
// kPermissionDenied the caller's identity may not administer roles (etcd: it
// lacks the root role); kRetry the store is unreachable or busy (a change may
// or may not have happened, or only part of EnsureNodeIdentity's: call again,
// every method is idempotent); kFailed anything else.
//
// Ownership: implementations are owned by their creator and borrow nothing
// from callers. Thread-safety: every method may be called concurrently.
// No gRPC (or other transport) types here: the etcd adapter is
// lib/etcd/etcd_access_grants.h, the fake tests/fakes/fake_access_grants.h.
#pragma once

#include <string>
#include <vector>

#include "kmosix/status.h"

namespace kmosix {

class AccessGrants {
 public:
  virtual ~AccessGrants() = default;
  virtual Status Grant(const std::string& role, const std::string& key) = 0;
  virtual Status Revoke(const std::string& role, const std::string& key) = 0;
  virtual StatusOr<std::vector<std::string>> Granted(const std::string& role) = 0;
  virtual Status EnsureNodeIdentity(const std::string& user, const std::string& role,
                                    const std::string& read_prefix, const std::string& own_key) = 0;
};

}  // namespace kmosix
