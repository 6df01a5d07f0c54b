// The AccessGrants conformance suite against the in-memory fake
// (tests/fakes/fake_access_grants.h), so the fake the controller's tests use
// behaves as etcd's Auth service does (tests/lib/etcd/etcd_access_grants_test.cc).
#include "fakes/fake_access_grants.h"

#include <gtest/gtest.h>

#include "lib/kmosix/access_grants_conformance.h"

namespace kmosix::testing {
namespace {

AccessGrantsHarness MakeFake(const std::string& role, const std::string& prefix) {
  auto admin = std::make_shared<FakeAccessGrants>();
  admin->AddRole(role);
  admin->SetPermission(role, prefix, prefix.substr(0, prefix.size() - 1) + "0",
                       FakeAccessGrants::Type::kRead);
  admin->SetPermission(role, prefix + "static", "", FakeAccessGrants::Type::kReadWrite);
  admin->SetPermission(role, prefix + "readonly", "", FakeAccessGrants::Type::kRead);
  // The unauthorized caller: a view of the same roles that is denied.
  auto denied = std::make_shared<FakeAccessGrants>();
  denied->SetDenied(true);
  AccessGrantsHarness h;
  h.admin = admin;
  h.unauthorized = denied;
  h.permissions = [admin](const std::string& r) { return admin->Permissions(r); };
  h.user_roles = [admin](const std::string& u) -> std::optional<std::set<std::string>> {
    if (!admin->Users().count(u)) return std::nullopt;
    return admin->UserRoles(u);
  };
  return h;
}

}  // namespace

AccessGrantsHarness MakeFakeAccessGrants(const std::string& role, const std::string& prefix) {
  return MakeFake(role, prefix);
}

namespace {

TEST(FakeAccessGrantsTest, FailNextAnswersThatStatusAndChangesNothing) {
  FakeAccessGrants g;
  g.AddRole("n1");
  g.FailNext(RetryError("etcd down"));
  EXPECT_EQ(g.Grant("n1", "/k").code(), Code::kRetry);
  EXPECT_FALSE(g.MayWrite("n1", "/k"));
  EXPECT_TRUE(g.Grant("n1", "/k").ok());
  EXPECT_TRUE(g.MayWrite("n1", "/k"));
  EXPECT_EQ(g.Calls(), (std::vector<std::string>{"grant n1 /k", "grant n1 /k"}));
}

TEST(FakeAccessGrantsTest, EnsureNodeIdentityKeepsAReadWriteRangeAndRecordsTheCall) {
  FakeAccessGrants g;
  g.SetPermission("kmosix-node-n1", "/kmosix/", "/kmosix0", FakeAccessGrants::Type::kReadWrite);
  g.FailNext(RetryError("etcd down"));
  EXPECT_EQ(g.EnsureNodeIdentity("n1", "kmosix-node-n1", "/kmosix/", "/kmosix/nodes/n1").code(),
            Code::kRetry);
  EXPECT_TRUE(g.Users().empty()) << "a failed call made the user";
  ASSERT_TRUE(g.EnsureNodeIdentity("n1", "kmosix-node-n1", "/kmosix/", "/kmosix/nodes/n1").ok());
  EXPECT_EQ(
      g.Permissions("kmosix-node-n1"),
      (std::vector<std::string>{"readwrite [/kmosix/, /kmosix0)", "readwrite /kmosix/nodes/n1"}));
  EXPECT_EQ(g.UserRoles("n1"), std::set<std::string>{"kmosix-node-n1"});
  EXPECT_EQ(g.Calls(),
            (std::vector<std::string>{"ensure n1 kmosix-node-n1 /kmosix/ /kmosix/nodes/n1",
                                      "ensure n1 kmosix-node-n1 /kmosix/ /kmosix/nodes/n1"}));
}

}  // namespace
}  // namespace kmosix::testing

KMX_INSTANTIATE_ACCESS_GRANTS_CONFORMANCE(Fake, kmosix::testing::AccessGrantsConformanceParam{
                                                    "fake", kmosix::testing::MakeFakeAccessGrants});
