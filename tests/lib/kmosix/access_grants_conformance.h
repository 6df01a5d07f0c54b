// Conformance suite for AccessGrants implementations (the contract in
// kmosix/access_grants.h): what Granted lists (single-key READWRITE only),
// Grant and Revoke idempotent and exact, unknown roles kNotFound, empty
// arguments kInvalid, a caller without admin rights kPermissionDenied.
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
#include <ostream>
#include <string>
#include <vector>

#include "kmosix/access_grants.h"
#include "kmosix/status.h"

namespace kmosix::testing {

struct AccessGrantsHarness {
  std::shared_ptr<void> keep_alive;     // whatever the grants need; dies last
  std::shared_ptr<AccessGrants> admin;  // may administer roles
  // A caller that holds no admin rights and not the role (nullptr: the
  // implementation has no such notion; that case skips).
  std::shared_ptr<AccessGrants> unauthorized;
  std::string error;  // non-empty: the harness could not be made (the case fails)
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
    prefix_ = "/conf/" + name + "/";
    h_ = GetParam().make(role_, prefix_);
    ASSERT_EQ(h_.error, "") << "harness for role " << role_;
    ASSERT_NE(h_.admin, nullptr);
  }

  std::vector<std::string> Granted() {
    auto g = h_.admin->Granted(role_);
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    return g.ok() ? *g : std::vector<std::string>{};
  }
  std::string K(const std::string& k) const { return prefix_ + k; }

  AccessGrantsHarness h_;
  std::string role_, prefix_;
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

}  // namespace kmosix::testing

// At global scope.
#define KMX_INSTANTIATE_ACCESS_GRANTS_CONFORMANCE(prefix, ...)                              \
  namespace kmosix::testing {                                                               \
  INSTANTIATE_TEST_SUITE_P(prefix, AccessGrantsConformance, ::testing::Values(__VA_ARGS__), \
                           AccessGrantsConformanceName);                                    \
  }                                                                                         \
  static_assert(true, "")
