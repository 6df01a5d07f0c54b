// Conformance suite for AccessGrants implementations (the contract in
// kmosix/access_grants.h): what Granted lists (single-key READWRITE only),
// Grant and Revoke idempotent and exact, unknown roles kNotFound, empty
// arguments kInvalid, a caller without admin rights kPermissionDenied;
// EnsureNodeIdentity makes a node's role (read on the prefix, readwrite on
// its own key) and user, twice changes nothing, only adds to what a role and
// user have, and (where the harness can connect as a user) lets that user
// write its own key and read the prefix but write nothing else.
//
// Header-only. Use (tests/ on the include path):
//   #include "lib/kmosix/access_grants_conformance.h"
//   KMX_INSTANTIATE_ACCESS_GRANTS_CONFORMANCE(Fake, AccessGrantsConformanceParam{
//       "fake", [](const std::string& role, const std::string& prefix) { ... }});
//
// Each case asks the harness for a fresh role of its own, seeded as a node's
// role is: read on the range of `prefix`, readwrite on the single key
// prefix + "static", read on the single key prefix + "readonly". A real
// server may thus be shared by the cases of one process.
#pragma once

#include <gtest/gtest.h>

#include <cctype>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "kmosix/access_grants.h"
#include "kmosix/state_store.h"
#include "kmosix/status.h"

namespace kmosix::testing {

struct AccessGrantsHarness {
  std::shared_ptr<void> keep_alive;     // whatever the grants need; dies last
  std::shared_ptr<AccessGrants> admin;  // may administer roles
  // A caller that holds no admin rights and not the role (nullptr: the
  // implementation has no such notion; that case skips).
  std::shared_ptr<AccessGrants> unauthorized;
  std::string error;  // non-empty: the harness could not be made (the case fails)
  // Every permission of `role`, sorted: "<read|write|readwrite> <key>" for a
  // single key, "<type> [<key>, <range end>)" for a range (the way
  // FakeAccessGrants::Permissions spells them). Required.
  std::function<std::vector<std::string>(const std::string& role)> permissions;
  // The roles `user` holds; nullopt when there is no such user. Required.
  std::function<std::optional<std::set<std::string>>(const std::string& user)> user_roles;
  // A state store client authenticated as `user` (etcd: a client
  // certificate with CN=user), as the admin for "". Empty: the
  // implementation has no store to connect to; that case skips.
  std::function<std::shared_ptr<StateStore>(const std::string& user)> connect_as;
};

struct AccessGrantsConformanceParam {
  std::string label;  // test name suffix: [A-Za-z0-9_]
  // Makes role `role` seeded as the file comment says, under `prefix`.
  std::function<AccessGrantsHarness(const std::string& role, const std::string& prefix)> make;
  // Non-empty: why the suite cannot run for this param (cases GTEST_SKIP).
  std::function<std::string()> skip_reason = nullptr;
};

inline void PrintTo(const AccessGrantsConformanceParam& p, std::ostream* os) { *os << p.label; }

inline std::string AccessGrantsConformanceName(
    const ::testing::TestParamInfo<AccessGrantsConformanceParam>& info) {
  return info.param.label;
}

class AccessGrantsConformance : public ::testing::TestWithParam<AccessGrantsConformanceParam> {
 protected:
  void SetUp() override {
    if (GetParam().skip_reason) {
      if (auto why = GetParam().skip_reason(); !why.empty())
        GTEST_SKIP() << "ACCESS GRANTS CONFORMANCE SKIPPED (" << GetParam().label << "): " << why;
    }
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info->name();
    for (char& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '-';
    }
    role_ = "kmx-" + name;
    user_ = "kmx-user-" + name;
    prefix_ = "/conf/" + name + "/";
    h_ = GetParam().make(role_, prefix_);
    ASSERT_EQ(h_.error, "") << "harness for role " << role_;
    ASSERT_NE(h_.admin, nullptr);
    ASSERT_TRUE(h_.permissions && h_.user_roles) << "the harness must inspect roles and users";
  }

  std::vector<std::string> Granted() {
    auto g = h_.admin->Granted(role_);
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    return g.ok() ? *g : std::vector<std::string>{};
  }
  std::string K(const std::string& k) const { return prefix_ + k; }
  // The read permission on the whole prefix, as permissions() spells it.
  std::string ReadAll() const { return "read [" + prefix_ + ", " + PrefixRangeEnd(prefix_) + ")"; }

  AccessGrantsHarness h_;
  std::string role_, user_, prefix_;
};

TEST_P(AccessGrantsConformance, ListsOnlySingleKeyReadWriteGrants) {
  EXPECT_EQ(Granted(), std::vector<std::string>{K("static")})
      << "the read range and the read-only key are not single-key readwrite grants";
}

TEST_P(AccessGrantsConformance, GrantIsListedSortedAndIdempotent) {
  ASSERT_TRUE(h_.admin->Grant(role_, K("workloads/b")).ok());
  ASSERT_TRUE(h_.admin->Grant(role_, K("workloads/a")).ok());
  Status again = h_.admin->Grant(role_, K("workloads/b"));
  EXPECT_TRUE(again.ok()) << again.ToString();
  EXPECT_EQ(Granted(), (std::vector<std::string>{K("static"), K("workloads/a"), K("workloads/b")}));
}

TEST_P(AccessGrantsConformance, RevokeTakesExactlyThatKeyAndIsIdempotent) {
  ASSERT_TRUE(h_.admin->Grant(role_, K("migrations/m-1")).ok());
  ASSERT_TRUE(h_.admin->Grant(role_, K("migrations/m-10")).ok());
  Status s = h_.admin->Revoke(role_, K("migrations/m-1"));
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = h_.admin->Revoke(role_, K("migrations/m-1"));
  EXPECT_TRUE(s.ok()) << "a second revoke: " << s.ToString();
  s = h_.admin->Revoke(role_, K("migrations/never-granted"));
  EXPECT_TRUE(s.ok()) << "revoking what was never granted: " << s.ToString();
  EXPECT_EQ(Granted(), (std::vector<std::string>{K("migrations/m-10"), K("static")}));
}

TEST_P(AccessGrantsConformance, GrantOverAReadOnlyKeyMakesItReadWrite) {
  ASSERT_TRUE(h_.admin->Grant(role_, K("readonly")).ok());
  EXPECT_EQ(Granted(), (std::vector<std::string>{K("readonly"), K("static")}));
}

TEST_P(AccessGrantsConformance, UnknownRoleIsNotFound) {
  const std::string nobody = role_ + "-nobody";
  EXPECT_EQ(h_.admin->Grant(nobody, K("x")).code(), Code::kNotFound);
  EXPECT_EQ(h_.admin->Revoke(nobody, K("x")).code(), Code::kNotFound);
  auto g = h_.admin->Granted(nobody);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), Code::kNotFound) << g.status().ToString();
}

TEST_P(AccessGrantsConformance, EmptyArgumentsAreInvalid) {
  EXPECT_EQ(h_.admin->Grant("", K("x")).code(), Code::kInvalid);
  EXPECT_EQ(h_.admin->Grant(role_, "").code(), Code::kInvalid);
  EXPECT_EQ(h_.admin->Revoke(role_, "").code(), Code::kInvalid);
  EXPECT_EQ(h_.admin->Granted("").status().code(), Code::kInvalid);
  EXPECT_EQ(Granted(), std::vector<std::string>{K("static")}) << "an invalid call changed it";
}

TEST_P(AccessGrantsConformance, CallerWithoutAdminRightsIsDenied) {
  if (!h_.unauthorized) GTEST_SKIP() << "this implementation has no unauthorized caller";
  EXPECT_EQ(h_.unauthorized->Grant(role_, K("workloads/w")).code(), Code::kPermissionDenied);
  EXPECT_EQ(h_.unauthorized->Revoke(role_, K("static")).code(), Code::kPermissionDenied);
  auto g = h_.unauthorized->Granted(role_);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), Code::kPermissionDenied) << g.status().ToString();
  EXPECT_EQ(Granted(), std::vector<std::string>{K("static")}) << "a denied call changed it";
}

TEST_P(AccessGrantsConformance, EnsureNodeIdentityMakesTheRoleAndUserAndTwiceChangesNothing) {
  const std::string role = role_ + "-new";
  ASSERT_EQ(h_.user_roles(user_), std::nullopt) << "the user exists before the call";
  Status s = h_.admin->EnsureNodeIdentity(user_, role, prefix_, K("nodes/n1"));
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::vector<std::string> want = {ReadAll(), "readwrite " + K("nodes/n1")};
  EXPECT_EQ(h_.permissions(role), want);
  EXPECT_EQ(h_.user_roles(user_), std::set<std::string>{role});
  auto granted = h_.admin->Granted(role);
  ASSERT_TRUE(granted.ok()) << granted.status().ToString();
  EXPECT_EQ(*granted, std::vector<std::string>{K("nodes/n1")});

  s = h_.admin->EnsureNodeIdentity(user_, role, prefix_, K("nodes/n1"));
  EXPECT_TRUE(s.ok()) << "a second call: " << s.ToString();
  EXPECT_EQ(h_.permissions(role), want);
  EXPECT_EQ(h_.user_roles(user_), std::set<std::string>{role});
}

TEST_P(AccessGrantsConformance, EnsureNodeIdentityOnlyAddsToWhatTheRoleAndUserHave) {
  // The user already holds another role; the role (seeded: read on the
  // prefix, readwrite static, read readonly) also has a record grant.
  const std::string other = role_ + "-other";
  ASSERT_TRUE(h_.admin->EnsureNodeIdentity(user_, other, K("other/"), K("other/key")).ok());
  ASSERT_TRUE(h_.admin->Grant(role_, K("workloads/w")).ok());
  // Its own key is the read-only one: widened to readwrite.
  Status s = h_.admin->EnsureNodeIdentity(user_, role_, prefix_, K("readonly"));
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(
      h_.permissions(role_),
      (std::vector<std::string>{ReadAll(), "readwrite " + K("readonly"), "readwrite " + K("static"),
                                "readwrite " + K("workloads/w")}));
  EXPECT_EQ(h_.user_roles(user_), (std::set<std::string>{role_, other}));
  EXPECT_EQ(h_.permissions(other), (std::vector<std::string>{"read [" + K("other/") + ", " +
                                                                 PrefixRangeEnd(K("other/")) + ")",
                                                             "readwrite " + K("other/key")}));
}

TEST_P(AccessGrantsConformance, EnsureNodeIdentityRefusesEmptyArgumentsAndUnauthorizedCallers) {
  const std::string role = role_ + "-new";
  EXPECT_EQ(h_.admin->EnsureNodeIdentity("", role, prefix_, K("nodes/n")).code(), Code::kInvalid);
  EXPECT_EQ(h_.admin->EnsureNodeIdentity(user_, "", prefix_, K("nodes/n")).code(), Code::kInvalid);
  EXPECT_EQ(h_.admin->EnsureNodeIdentity(user_, role, "", K("nodes/n")).code(), Code::kInvalid);
  EXPECT_EQ(h_.admin->EnsureNodeIdentity(user_, role, prefix_, "").code(), Code::kInvalid);
  if (h_.unauthorized) {
    EXPECT_EQ(h_.unauthorized->EnsureNodeIdentity(user_, role, prefix_, K("nodes/n")).code(),
              Code::kPermissionDenied);
  }
  EXPECT_EQ(h_.user_roles(user_), std::nullopt) << "a refused call made the user";
  EXPECT_EQ(h_.permissions(role), std::vector<std::string>{}) << "a refused call made the role";
}

// Cases that need a state store behind the grants (connect_as): instantiated
// only for adapters that have one (KMX_INSTANTIATE_ACCESS_GRANTS_STORE_CONFORMANCE).
class AccessGrantsStoreConformance : public AccessGrantsConformance {};
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AccessGrantsStoreConformance);

TEST_P(AccessGrantsStoreConformance, ANodeIdentityWritesItsOwnKeyAndReadsThePrefixOnly) {
  ASSERT_TRUE(h_.connect_as) << GetParam().label << ": no connect_as for a store conformance case";
  const std::string role = role_ + "-node";
  const std::string mine = K("nodes/") + user_, other = K("nodes/someone-else");
  std::shared_ptr<StateStore> admin_store = h_.connect_as("");  // "": as the admin
  ASSERT_NE(admin_store, nullptr);
  ASSERT_TRUE(admin_store->Put(K("static"), "seed").ok());
  ASSERT_TRUE(admin_store->Put(other, "theirs").ok());
  std::shared_ptr<StateStore> node = h_.connect_as(user_);
  ASSERT_NE(node, nullptr);
  auto before = node->Put(mine, "v0");
  ASSERT_FALSE(before.ok()) << "the store let a user that does not exist yet write";
  EXPECT_EQ(before.status().code(), Code::kPermissionDenied) << before.status().ToString();

  Status s = h_.admin->EnsureNodeIdentity(user_, role, prefix_, mine);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto put = node->Put(mine, "v1");
  EXPECT_TRUE(put.ok()) << "its own key: " << put.status().ToString();
  auto read = node->Get(K("static"));
  ASSERT_TRUE(read.ok()) << "a key under the prefix: " << read.status().ToString();
  ASSERT_TRUE(read->kv);
  EXPECT_EQ(read->kv->value, "seed");
  auto list = node->List(prefix_);
  ASSERT_TRUE(list.ok()) << "the whole prefix: " << list.status().ToString();
  EXPECT_EQ(list->kvs.size(), 3u);
  // Nothing else: another node's key, a longer key, a key outside the prefix.
  EXPECT_EQ(node->Put(other, "mine now").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(node->Put(mine + "x", "x").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(node->Put("/elsewhere/k", "x").status().code(), Code::kPermissionDenied);
  EXPECT_EQ(node->Get("/elsewhere/k").status().code(), Code::kPermissionDenied);
  auto theirs = admin_store->Get(other);
  ASSERT_TRUE(theirs.ok() && theirs->kv) << theirs.status().ToString();
  EXPECT_EQ(theirs->kv->value, "theirs");
}

}  // namespace kmosix::testing

// At global scope.
#define KMX_INSTANTIATE_ACCESS_GRANTS_CONFORMANCE(prefix, ...)                              \
  namespace kmosix::testing {                                                               \
  INSTANTIATE_TEST_SUITE_P(prefix, AccessGrantsConformance, ::testing::Values(__VA_ARGS__), \
                           AccessGrantsConformanceName);                                    \
  }                                                                                         \
  static_assert(true, "")
#define KMX_INSTANTIATE_ACCESS_GRANTS_STORE_CONFORMANCE(prefix, ...)                             \
  namespace kmosix::testing {                                                                    \
  INSTANTIATE_TEST_SUITE_P(prefix, AccessGrantsStoreConformance, ::testing::Values(__VA_ARGS__), \
                           AccessGrantsConformanceName);                                         \
  }                                                                                              \
  static_assert(true, "")
