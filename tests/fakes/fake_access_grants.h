// FakeAccessGrants: an in-memory AccessGrants (kmosix/access_grants.h) with
// etcd's semantics as the seam states them: roles must exist (AddRole), a
// role holds permissions keyed by (key, range end) with a type, Grant sets a
// single-key READWRITE one, Revoke removes the one on exactly that key,
// Granted lists single-key READWRITE keys only; EnsureNodeIdentity adds roles,
// users (Users, UserRoles) and permissions as etcd would (Permissions lists
// them). Tests can seed other
// permissions (SetPermission), make the caller unauthorized (SetDenied), fail
// the next calls (FailNext) and read every call made (Calls).
// Header-only; tests only. Thread-safety: every method locks one mutex.
#pragma once

#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kmosix/access_grants.h"
#include "kmosix/state_store.h"

namespace kmosix::testing {

class FakeAccessGrants : public AccessGrants {
 public:
  enum class Type { kRead, kWrite, kReadWrite };

  void AddRole(const std::string& role) {
    std::lock_guard lock(mu_);
    roles_[role];
  }
  // Any permission (a range when range_end is non-empty), as an admin would.
  void SetPermission(const std::string& role, const std::string& key, const std::string& range_end,
                     Type type) {
    std::lock_guard lock(mu_);
    roles_[role][{key, range_end}] = type;
  }
  // The caller may not administer roles (every call: kPermissionDenied).
  void SetDenied(bool denied) {
    std::lock_guard lock(mu_);
    denied_ = denied;
  }
  // The next calls answer these statuses instead (in order), changing nothing.
  void FailNext(Status s) {
    std::lock_guard lock(mu_);
    failures_.push_back(std::move(s));
  }
  // The user exists, holding `roles` (as an admin would make it).
  void AddUser(const std::string& user, std::set<std::string> roles = {}) {
    std::lock_guard lock(mu_);
    users_[user].insert(roles.begin(), roles.end());
  }
  bool HasRole(const std::string& role) const {
    std::lock_guard lock(mu_);
    return roles_.count(role) != 0;
  }
  std::set<std::string> Users() const {
    std::lock_guard lock(mu_);
    std::set<std::string> out;
    for (const auto& [u, roles] : users_) out.insert(u);
    return out;
  }
  // The roles `user` holds (empty: none, or no such user; see Users).
  std::set<std::string> UserRoles(const std::string& user) const {
    std::lock_guard lock(mu_);
    auto u = users_.find(user);
    return u == users_.end() ? std::set<std::string>{} : u->second;
  }
  // Every permission of `role`: "<read|write|readwrite> <key>" for a single
  // key, "<type> [<key>, <range end>)" for a range; sorted by key.
  std::vector<std::string> Permissions(const std::string& role) const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    auto r = roles_.find(role);
    if (r == roles_.end()) return out;
    for (const auto& [k, type] : r->second) {
      const char* t = type == Type::kRead ? "read" : type == Type::kWrite ? "write" : "readwrite";
      out.push_back(std::string(t) + " " +
                    (k.second.empty() ? k.first : "[" + k.first + ", " + k.second + ")"));
    }
    return out;
  }

  // "grant role key" / "revoke role key" / "granted role" / "ensure user role
  // prefix key", in call order.
  std::vector<std::string> Calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  void ClearCalls() {
    std::lock_guard lock(mu_);
    calls_.clear();
  }
  // Whether `role` may write `key` by a single-key READWRITE/WRITE permission.
  bool MayWrite(const std::string& role, const std::string& key) const {
    std::lock_guard lock(mu_);
    auto r = roles_.find(role);
    if (r == roles_.end()) return false;
    auto p = r->second.find({key, ""});
    return p != r->second.end() && p->second != Type::kRead;
  }

  Status Grant(const std::string& role, const std::string& key) override {
    std::lock_guard lock(mu_);
    calls_.push_back("grant " + role + " " + key);
    KMX_RETURN_IF_ERROR(Check(role, key));
    roles_[role][{key, ""}] = Type::kReadWrite;
    return Status::Ok();
  }
  Status Revoke(const std::string& role, const std::string& key) override {
    std::lock_guard lock(mu_);
    calls_.push_back("revoke " + role + " " + key);
    KMX_RETURN_IF_ERROR(Check(role, key));
    roles_[role].erase({key, ""});
    return Status::Ok();
  }
  StatusOr<std::vector<std::string>> Granted(const std::string& role) override {
    std::lock_guard lock(mu_);
    calls_.push_back("granted " + role);
    KMX_RETURN_IF_ERROR(Check(role, "-"));
    std::vector<std::string> keys;  // the map is ordered: sorted, unique
    for (const auto& [k, type] : roles_[role]) {
      if (k.second.empty() && type == Type::kReadWrite) keys.push_back(k.first);
    }
    return keys;
  }
  Status EnsureNodeIdentity(const std::string& user, const std::string& role,
                            const std::string& read_prefix, const std::string& own_key) override {
    std::lock_guard lock(mu_);
    calls_.push_back("ensure " + user + " " + role + " " + read_prefix + " " + own_key);
    if (!failures_.empty()) {
      Status s = failures_.front();
      failures_.pop_front();
      return s;
    }
    if (user.empty()) return InvalidError("access grants: empty user");
    if (read_prefix.empty()) return InvalidError("access grants: empty read prefix");
    if (role.empty()) return InvalidError("access grants: empty role");
    if (own_key.empty()) return InvalidError("access grants: empty key");
    if (denied_) return PermissionDeniedError("fake: the caller may not administer roles");
    auto& perms = roles_[role];
    // A permission of another type on the same range widens to READWRITE
    // (etcd replaces the type), never narrows.
    auto add = [&](const std::pair<std::string, std::string>& range, Type type) {
      auto it = perms.find(range);
      if (it == perms.end())
        perms[range] = type;
      else if (it->second != type)
        it->second = Type::kReadWrite;
    };
    add({read_prefix, PrefixRangeEnd(read_prefix)}, Type::kRead);
    add({own_key, ""}, Type::kReadWrite);
    users_[user].insert(role);
    return Status::Ok();
  }

 private:
  Status Check(const std::string& role, const std::string& key) {
    if (!failures_.empty()) {
      Status s = failures_.front();
      failures_.pop_front();
      return s;
    }
    if (role.empty()) return InvalidError("access grants: empty role");
    if (key.empty()) return InvalidError("access grants: empty key");
    if (denied_) return PermissionDeniedError("fake: the caller may not administer roles");
    if (!roles_.count(role)) return NotFoundError("fake: role name not found: " + role);
    return Status::Ok();
  }

  mutable std::mutex mu_;
  std::map<std::string, std::map<std::pair<std::string, std::string>, Type>> roles_;
  std::map<std::string, std::set<std::string>> users_;  // user -> its roles
  bool denied_ = false;
  std::deque<Status> failures_;
  std::vector<std::string> calls_;
};

}  // namespace kmosix::testing
