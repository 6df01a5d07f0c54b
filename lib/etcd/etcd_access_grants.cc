#include "etcd/etcd_access_grants.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string_view>

#include "etcd/etcd_channel.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "kmosix/state_store.h"

namespace kmosix {
namespace {

namespace pb = ::etcdserverpb;

bool Contains(const std::string& s, std::string_view what) {
  return s.find(what) != std::string::npos;
}

// etcd's auth errors as codes (see the header).
Status FromGrpc(const grpc::Status& s, const std::string& what) {
  const std::string& m = s.error_message();
  const std::string msg = what + ": " + m;
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
      return Status::Ok();
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
      return RetryError(msg);
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      return PermissionDeniedError(msg);
    default:
      break;
  }
  if (Contains(m, "role name not found")) return NotFoundError(msg);
  if (Contains(m, "user name not found") || Contains(m, "permission denied"))
    return PermissionDeniedError(msg);
  if (Contains(m, "leader changed") || Contains(m, "no leader") || Contains(m, "timed out") ||
      Contains(m, "revision of auth store is old"))
    return RetryError(msg);
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) return InvalidError(msg);
  return FailedError(msg);
}

Status CheckArgs(const std::string& role, const std::string& key) {
  if (role.empty()) return InvalidError("access grants: empty role");
  if (key.empty()) return InvalidError("access grants: empty key");
  return Status::Ok();
}

}  // namespace

struct EtcdAccessGrants::Impl {
  struct Endpoint {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::Auth::Stub> auth;
  };
  EtcdConfig config;
  Status invalid;  // not ok: the config was refused; every call fails so
  std::vector<Endpoint> endpoints;
  std::atomic<size_t> current{0};

  explicit Impl(EtcdConfig cfg) : config(std::move(cfg)) {
    if (config.endpoints.empty()) config.endpoints.push_back("127.0.0.1:2379");
    invalid = ValidateEtcdConfig(config);
    auto creds = etcd::Credentials(config, invalid.ok());
    for (const auto& target : config.endpoints) {
      Endpoint ep;
      ep.target = target;
      ep.channel = etcd::Dial(target, creds, config, /*keepalive=*/false);
      ep.auth = pb::Auth::NewStub(ep.channel);
      endpoints.push_back(std::move(ep));
    }
  }

  // Runs fn(stub, ctx) on the current endpoint (waiting up to dial_timeout
  // for a connection); UNAVAILABLE moves on to the next endpoint.
  template <typename Fn>
  Status Call(const std::string& what, Fn&& fn) {
    if (!invalid.ok()) return invalid.Annotate(what);
    const size_t i = current.load() % endpoints.size();
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    const auto now = std::chrono::system_clock::now();
    ctx.set_deadline(now + config.dial_timeout + config.rpc_timeout);
    grpc::Status s = fn(*endpoints[i].auth, ctx);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
        s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      size_t expected = i;
      current.compare_exchange_strong(expected, (i + 1) % endpoints.size());
    }
    return FromGrpc(s, what + " (etcd " + endpoints[i].target + ")");
  }
};

EtcdAccessGrants::EtcdAccessGrants(EtcdConfig config)
    : impl_(std::make_unique<Impl>(std::move(config))) {}

EtcdAccessGrants::~EtcdAccessGrants() = default;

Status EtcdAccessGrants::Grant(const std::string& role, const std::string& key) {
  KMX_RETURN_IF_ERROR(CheckArgs(role, key));
  pb::AuthRoleGrantPermissionRequest req;
  req.set_name(role);
  auto* perm = req.mutable_perm();
  perm->set_permtype(::authpb::Permission::READWRITE);
  perm->set_key(key);
  pb::AuthRoleGrantPermissionResponse resp;
  return impl_->Call("grant role " + role + " readwrite " + key,
                     [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
                       return auth.RoleGrantPermission(&ctx, req, &resp);
                     });
}

Status EtcdAccessGrants::Revoke(const std::string& role, const std::string& key) {
  KMX_RETURN_IF_ERROR(CheckArgs(role, key));
  pb::AuthRoleRevokePermissionRequest req;
  req.set_role(role);
  req.set_key(key);
  pb::AuthRoleRevokePermissionResponse resp;
  grpc::Status raw;
  Status s = impl_->Call("revoke " + key + " from role " + role,
                         [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
                           raw = auth.RoleRevokePermission(&ctx, req, &resp);
                           return raw;
                         });
  if (!s.ok() && Contains(raw.error_message(), "permission is not granted"))
    return Status::Ok();  // nothing to take away
  return s;
}

StatusOr<std::vector<std::string>> EtcdAccessGrants::Granted(const std::string& role) {
  if (role.empty()) return InvalidError("access grants: empty role");
  pb::AuthRoleGetRequest req;
  req.set_role(role);
  pb::AuthRoleGetResponse resp;
  KMX_RETURN_IF_ERROR(
      impl_->Call("get role " + role, [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
        return auth.RoleGet(&ctx, req, &resp);
      }));
  std::vector<std::string> keys;
  for (const auto& perm : resp.perm()) {
    if (perm.permtype() == ::authpb::Permission::READWRITE && perm.range_end().empty() &&
        !perm.key().empty())
      keys.push_back(perm.key());
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return keys;
}

Status EtcdAccessGrants::EnsureNodeIdentity(const std::string& user, const std::string& role,
                                            const std::string& read_prefix,
                                            const std::string& own_key) {
  if (user.empty()) return InvalidError("access grants: empty user");
  if (read_prefix.empty()) return InvalidError("access grants: empty read prefix");
  KMX_RETURN_IF_ERROR(CheckArgs(role, own_key));
  const std::string range_end = PrefixRangeEnd(read_prefix);
  using Type = ::authpb::Permission::Type;

  // The role, and its permissions on exactly the read range and own key.
  bool has_role = true;
  std::optional<Type> range_type, key_type;
  {
    pb::AuthRoleGetRequest req;
    req.set_role(role);
    pb::AuthRoleGetResponse resp;
    grpc::Status raw;
    Status s = impl_->Call("get role " + role, [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
      raw = auth.RoleGet(&ctx, req, &resp);
      return raw;
    });
    if (!s.ok() && Contains(raw.error_message(), "role name not found")) {
      has_role = false;
    } else if (!s.ok()) {
      return s;
    }
    for (const auto& perm : resp.perm()) {
      if (perm.key() == read_prefix && perm.range_end() == range_end) range_type = perm.permtype();
      if (perm.key() == own_key && perm.range_end().empty()) key_type = perm.permtype();
    }
  }
  if (!has_role) {
    pb::AuthRoleAddRequest req;
    req.set_name(role);
    pb::AuthRoleAddResponse resp;
    grpc::Status raw;
    Status s = impl_->Call("add role " + role, [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
      raw = auth.RoleAdd(&ctx, req, &resp);
      return raw;
    });
    if (!s.ok() && !Contains(raw.error_message(), "role name already exists")) return s;
  }
  // Grants `type` on [key, end) unless held; another type held there widens
  // to READWRITE (etcd replaces the type of a permission on the same range).
  auto ensure = [&](const std::string& key, const std::string& end, Type type,
                    const std::optional<Type>& held) -> Status {
    if (held && (*held == type || *held == ::authpb::Permission::READWRITE)) return Status::Ok();
    if (held) type = ::authpb::Permission::READWRITE;
    pb::AuthRoleGrantPermissionRequest req;
    req.set_name(role);
    auto* perm = req.mutable_perm();
    perm->set_permtype(type);
    perm->set_key(key);
    perm->set_range_end(end);
    pb::AuthRoleGrantPermissionResponse resp;
    return impl_->Call("grant role " + role + " " + ::authpb::Permission::Type_Name(type) + " " +
                           key + (end.empty() ? "" : " (prefix)"),
                       [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
                         return auth.RoleGrantPermission(&ctx, req, &resp);
                       });
  };
  KMX_RETURN_IF_ERROR(ensure(read_prefix, range_end, ::authpb::Permission::READ, range_type));
  KMX_RETURN_IF_ERROR(ensure(own_key, "", ::authpb::Permission::READWRITE, key_type));

  // The user, holding the role.
  bool has_user = true, holds_role = false;
  {
    pb::AuthUserGetRequest req;
    req.set_name(user);
    pb::AuthUserGetResponse resp;
    grpc::Status raw;
    Status s = impl_->Call("get user " + user, [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
      raw = auth.UserGet(&ctx, req, &resp);
      return raw;
    });
    // "user name not found" is also what etcd answers a caller that is no
    // user: UserAdd below then fails the same way (kPermissionDenied).
    if (!s.ok() && Contains(raw.error_message(), "user name not found")) {
      has_user = false;
    } else if (!s.ok()) {
      return s;
    }
    holds_role = std::find(resp.roles().begin(), resp.roles().end(), role) != resp.roles().end();
  }
  if (!has_user) {
    pb::AuthUserAddRequest req;
    req.set_name(user);
    req.mutable_options()->set_no_password(true);
    pb::AuthUserAddResponse resp;
    grpc::Status raw;
    Status s = impl_->Call("add user " + user, [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
      raw = auth.UserAdd(&ctx, req, &resp);
      return raw;
    });
    if (!s.ok() && !Contains(raw.error_message(), "user name already exists")) return s;
  }
  if (holds_role) return Status::Ok();
  pb::AuthUserGrantRoleRequest req;
  req.set_user(user);
  req.set_role(role);
  pb::AuthUserGrantRoleResponse resp;
  return impl_->Call("grant user " + user + " role " + role,
                     [&](pb::Auth::Stub& auth, grpc::ClientContext& ctx) {
                       return auth.UserGrantRole(&ctx, req, &resp);
                     });
}

}  // namespace kmosix
