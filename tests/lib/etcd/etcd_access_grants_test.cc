// EtcdAccessGrants against a real etcd with TLS, client-certificate auth and
// etcd auth enabled (users root, kmx-node and kmx-plain made with etcdctl,
// as scripts/cluster does): the AccessGrants conformance suite as root (and
// kmx-plain as the caller without admin rights); a grant lets the node's own
// identity write exactly that key (etcd refuses it before, with
// kPermissionDenied from EtcdStateStore, and again after the revoke) while
// its other permissions stay; an unreachable etcd is kRetry. The suite's
// EnsureNodeIdentity cases read roles and users back with etcd's Auth API
// (RoleGet, UserGet as root) and connect as the node's user with a client
// certificate whose CN is that user.
//
// Needs `etcd`, `etcdctl` and `openssl`; the cases skip loudly without them.
#include "etcd/etcd_access_grants.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "etcd/etcd_channel.h"
#include "etcd/etcd_state_store.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "lib/kmosix/access_grants_conformance.h"
#include "support/private_etcd.h"
#include "support/test_pki.h"

namespace kmosix::testing {
namespace {

using std::chrono::seconds;

bool OnPath(const std::string& tool) {
  return std::system(("command -v " + tool + " >/dev/null 2>&1").c_str()) == 0;
}

std::string SkipReason() {
  if (auto why = EtcdSkipReason(); !why.empty()) return why;
  if (!TestPki::OpensslPresent()) return "openssl not found on PATH (the test makes its CA)";
  if (!OnPath("etcdctl")) return "etcdctl not found on PATH (the test makes etcd's users with it)";
  return "";
}

// "" on success, else etcdctl's output.
std::string Run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(("(" + cmd + ") 2>&1").c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  return ::pclose(p) == 0 ? "" : (out.empty() ? "failed: " + cmd : out);
}

// One etcd with auth enabled per test process, shared by the cases.
struct AuthEtcd {
  std::string dir;
  std::unique_ptr<TestPki> pki;
  PrivateEtcd etcd;
  std::string error;

  EtcdConfig As(const std::string& who) const {
    EtcdConfig cfg = TestEtcdConfig(etcd.endpoint());
    cfg.tls = true;
    cfg.ca_file = pki->Ca();
    cfg.cert_file = pki->Cert(who);
    cfg.key_file = pki->Key(who);
    cfg.tls_refresh = seconds(1);
    return cfg;
  }
  // etcd's Auth API as root, to read roles and users back.
  std::unique_ptr<etcdserverpb::Auth::Stub> RootAuth() const {
    const EtcdConfig cfg = As("root");
    return etcdserverpb::Auth::NewStub(etcd::Dial(
        etcd.endpoint(), etcd::Credentials(cfg, ValidateEtcdConfig(cfg).ok()), cfg, false));
  }
  // Every permission of `role`, spelled as the conformance suite wants.
  std::vector<std::string> Permissions(const std::string& role) const {
    etcdserverpb::AuthRoleGetRequest req;
    req.set_role(role);
    etcdserverpb::AuthRoleGetResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    std::vector<std::string> out;
    const grpc::Status s = RootAuth()->RoleGet(&ctx, req, &resp);
    if (!s.ok()) {
      if (s.error_message().find("role name not found") == std::string::npos)
        ADD_FAILURE() << "RoleGet " << role << ": " << s.error_message();
      return out;
    }
    for (const auto& p : resp.perm()) {
      std::string type = authpb::Permission::Type_Name(p.permtype());
      std::transform(type.begin(), type.end(), type.begin(), ::tolower);
      out.push_back(type + " " +
                    (p.range_end().empty() ? p.key() : "[" + p.key() + ", " + p.range_end() + ")"));
    }
    std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
      auto key = [](const std::string& x) {
        std::string k = x.substr(x.find(' ') + 1);
        return k[0] == '[' ? k.substr(1) : k;
      };
      return key(a) < key(b);
    });
    return out;
  }
  std::optional<std::set<std::string>> UserRoles(const std::string& user) const {
    etcdserverpb::AuthUserGetRequest req;
    req.set_name(user);
    etcdserverpb::AuthUserGetResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    const grpc::Status s = RootAuth()->UserGet(&ctx, req, &resp);
    if (!s.ok()) {
      if (s.error_message().find("user name not found") == std::string::npos)
        ADD_FAILURE() << "UserGet " << user << ": " << s.error_message();
      return std::nullopt;
    }
    return std::set<std::string>(resp.roles().begin(), resp.roles().end());
  }
  // A store client as `user` (a client certificate with CN=user, made on
  // first use); as root for "".
  std::shared_ptr<StateStore> ConnectAs(const std::string& user) {
    const std::string who = user.empty() ? "root" : user;
    if (!std::filesystem::exists(pki->Cert(who))) {
      if (auto err = pki->MakeLeaf(who, who, {}, {}, "ca", "clientAuth"); !err.empty()) {
        ADD_FAILURE() << "client certificate for " << who << ": " << err;
        return nullptr;
      }
    }
    return std::make_shared<EtcdStateStore>(As(who));
  }
  std::string Etcdctl(const std::string& args) const {
    return Run("ETCDCTL_API=3 etcdctl --endpoints https://" + etcd.endpoint() + " --cacert " +
               pki->Ca() + " --cert " + pki->Cert("root") + " --key " + pki->Key("root") + " " +
               args);
  }

  AuthEtcd() {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string t = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/kmx-grants-pki-XXXXXX";
    if (::mkdtemp(t.data()) == nullptr) {
      error = "mkdtemp failed";
      return;
    }
    dir = t;
    pki = std::make_unique<TestPki>(dir);
    error = pki->MakeCa();
    if (error.empty()) error = pki->MakeLeaf("server", "kmx-etcd", {}, {}, "ca", "serverAuth");
    for (const char* who : {"root", "kmx-node", "kmx-plain"}) {
      if (error.empty()) error = pki->MakeLeaf(who, who, {}, {}, "ca", "clientAuth");
    }
    if (!error.empty()) return;
    etcd.UseTls({"--cert-file=" + pki->Cert("server"), "--key-file=" + pki->Key("server"),
                 "--client-cert-auth", "--trusted-ca-file=" + pki->Ca()},
                As("root"));
    if (!etcd.Start()) {
      error = "etcd did not start; log in " + etcd.dir() + "/etcd.log";
      return;
    }
    for (const std::string& step :
         {std::string("user add root --no-password"), std::string("role add root"),
          std::string("user grant-role root root"), std::string("user add kmx-node --no-password"),
          std::string("user add kmx-plain --no-password"), std::string("role add kmx-node"),
          std::string("user grant-role kmx-node kmx-node"), std::string("auth enable")}) {
      if (error.empty()) error = Etcdctl(step);
    }
  }
  ~AuthEtcd() {
    etcd.Stop();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
};

std::shared_ptr<AuthEtcd>& Shared() {
  static std::shared_ptr<AuthEtcd> shared;
  return shared;
}
class Environment : public ::testing::Environment {
 public:
  void TearDown() override { Shared().reset(); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new Environment);

std::shared_ptr<AuthEtcd> Etcd() {
  if (!Shared()) Shared() = std::make_shared<AuthEtcd>();
  return Shared();
}

AccessGrantsHarness MakeEtcd(const std::string& role, const std::string& prefix) {
  AccessGrantsHarness h;
  auto e = Etcd();
  h.keep_alive = e;
  h.error = e->error;
  if (!h.error.empty()) return h;
  // The seeding a node's role gets (scripts/cluster setup_etcd_auth).
  for (const std::string& step :
       {"role add " + role, "role grant-permission " + role + " read --prefix=true " + prefix,
        "role grant-permission " + role + " readwrite " + prefix + "static",
        "role grant-permission " + role + " read " + prefix + "readonly"}) {
    if (h.error.empty()) h.error = e->Etcdctl(step);
  }
  h.admin = std::make_shared<EtcdAccessGrants>(e->As("root"));
  h.unauthorized = std::make_shared<EtcdAccessGrants>(e->As("kmx-plain"));
  h.permissions = [e](const std::string& r) { return e->Permissions(r); };
  h.user_roles = [e](const std::string& u) { return e->UserRoles(u); };
  h.connect_as = [e](const std::string& u) { return e->ConnectAs(u); };
  return h;
}

}  // namespace

AccessGrantsHarness MakeEtcdAccessGrants(const std::string& role, const std::string& prefix) {
  return MakeEtcd(role, prefix);
}
std::string EtcdAccessGrantsSkipReason() { return SkipReason(); }

namespace {

#define KMX_SKIP_WITHOUT_ETCD_AUTH() \
  if (auto why = SkipReason(); !why.empty()) GTEST_SKIP() << "ETCD AUTH TEST SKIPPED: " << why

TEST(EtcdAccessGrantsTest, AGrantLetsTheNodeWriteExactlyThatKeyUntilRevoked) {
  KMX_SKIP_WITHOUT_ETCD_AUTH();
  auto e = Etcd();
  ASSERT_EQ(e->error, "");
  ASSERT_EQ(e->Etcdctl("role grant-permission kmx-node read --prefix=true /eff/"), "");
  EtcdAccessGrants admin(e->As("root"));
  EtcdStateStore node(e->As("kmx-node"));
  const std::string mine = "/eff/workloads/mine", other = "/eff/workloads/other";

  auto before = node.Put(mine, "v0");
  ASSERT_FALSE(before.ok()) << "etcd let the node write a key it was never granted";
  EXPECT_EQ(before.status().code(), Code::kPermissionDenied) << before.status().ToString();

  ASSERT_TRUE(admin.Grant("kmx-node", mine).ok());
  auto put = node.Put(mine, "v1");
  EXPECT_TRUE(put.ok()) << put.status().ToString();
  // A CAS as the agents write (compare mod_revision, put) works too.
  auto got = node.Get(mine);
  ASSERT_TRUE(got.ok() && got->kv) << got.status().ToString();
  auto cas = node.Commit(
      Txn{{Compare::Unchanged(mine, got->kv->mod_revision)}, {TxnOp::Put(mine, "v2")}, {}});
  ASSERT_TRUE(cas.ok()) << cas.status().ToString();
  EXPECT_TRUE(cas->succeeded);
  // Exactly that key: its neighbour and a longer key are still refused.
  EXPECT_EQ(node.Put(other, "x").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(node.Put(mine + "2", "x").status().code(), Code::kPermissionDenied);

  ASSERT_TRUE(admin.Revoke("kmx-node", mine).ok());
  auto after = node.Put(mine, "v3");
  ASSERT_FALSE(after.ok()) << "etcd let the node write after the revoke";
  EXPECT_EQ(after.status().code(), Code::kPermissionDenied) << after.status().ToString();
  // The read range survived the revoke.
  auto read = node.Get(mine);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  ASSERT_TRUE(read->kv);
  EXPECT_EQ(read->kv->value, "v2");
}

TEST(EtcdAccessGrantsTest, UnreachableEtcdIsRetry) {
  KMX_SKIP_WITHOUT_ETCD_AUTH();
  auto e = Etcd();
  ASSERT_EQ(e->error, "");
  EtcdConfig cfg = e->As("root");
  cfg.endpoints = {"127.0.0.1:" + std::to_string(FreePort())};
  cfg.dial_timeout = std::chrono::milliseconds(300);
  cfg.rpc_timeout = std::chrono::milliseconds(300);
  EtcdAccessGrants nowhere(cfg);
  EXPECT_EQ(nowhere.Grant("kmx-node", "/x").code(), Code::kRetry);
  EXPECT_EQ(nowhere.Granted("kmx-node").status().code(), Code::kRetry);
}

TEST(EtcdAccessGrantsTest, ARefusedConfigIsInvalidOnEveryCall) {
  EtcdConfig cfg;
  cfg.tls = true;  // https without a CA: never a plaintext fallback
  EtcdAccessGrants bad(cfg);
  EXPECT_EQ(bad.Grant("r", "/k").code(), Code::kInvalid);
  EXPECT_EQ(bad.Granted("r").status().code(), Code::kInvalid);
}

}  // namespace
}  // namespace kmosix::testing

KMX_INSTANTIATE_ACCESS_GRANTS_CONFORMANCE(Etcd, kmosix::testing::AccessGrantsConformanceParam{
                                                    "etcd", kmosix::testing::MakeEtcdAccessGrants,
                                                    kmosix::testing::EtcdAccessGrantsSkipReason});
KMX_INSTANTIATE_ACCESS_GRANTS_STORE_CONFORMANCE(Etcd,
                                                kmosix::testing::AccessGrantsConformanceParam{
                                                    "etcd", kmosix::testing::MakeEtcdAccessGrants,
                                                    kmosix::testing::EtcdAccessGrantsSkipReason});
