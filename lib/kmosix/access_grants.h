// AccessGrants: the seam over the state store's per-role key permissions
// (etcd's auth roles), as the controller needs them to narrow what each node
// may write (issue 11; controller/grants.h): single keys only, read and write
// together. A role's other permissions (ranges, read-only or write-only keys)
// are the administrator's: never listed here, and never changed except by a
// Revoke of exactly their key.
//
//   Grant(role, key)    lets `role` read and write exactly `key` (a READWRITE
//                       permission with an empty range end). Idempotent.
//   Revoke(role, key)   takes the role's permission on exactly `key` away
//                       (whatever its type); ok when it had none. Idempotent.
//   Granted(role)       the keys `role` holds a single-key READWRITE permission
//                       on, sorted, without duplicates.
//
// Errors (what the caller should do): kInvalid an empty role or key (fix the
// call); kNotFound no such role (an administrator must create it; retrying
// does not help until then); kPermissionDenied the caller's identity may not
// administer roles (etcd: it lacks the root role); kRetry the store is
// unreachable or busy (a Grant or Revoke may or may not have happened: call
// again, both are idempotent); kFailed anything else.
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
};

}  // namespace kmosix
