// crd/check.sh as a ctest test: a private kube-apiserver 1.37
// (tests/support/private_kube_apiserver.h) and the script run against it, so
// the CRDs' schema checks (examples apply, every crd/examples/invalid/ object
// is refused with its message, defaults, immutability, the status
// subresource, printer columns, short names, categories, field selectors,
// explain) are part of the test suite. Skipped loudly without the kube
// binaries or etcd.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "support/private_kube_apiserver.h"

namespace kmosix::bridge {
namespace {

using kmosix::testing::PrivateKubeApiserver;

TEST(CrdCheckTest, CheckShPassesOnARealApiServer) {
  if (auto why = kmosix::testing::KubeApiserverSkipReason(); !why.empty()) {
    GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: " << why;
  }
  std::string root = kmosix::testing::KubeRepoRoot();
  std::string script = root + "/crd/check.sh";
  ASSERT_TRUE(std::filesystem::exists(script)) << script;
  std::string kubectl = kmosix::testing::FindKubeTool("KMX_KUBECTL_BIN", "kubectl");
  ASSERT_FALSE(kubectl.empty());
  std::string bin_dir = std::filesystem::path(kubectl).parent_path().string();

  PrivateKubeApiserver api;
  ASSERT_TRUE(api.Start()) << api.error();
  std::string out_file = api.dir() + "/check.out";
  std::string cmd = "/bin/bash " + kmosix::testing::KubeShellQuote(script) + " " +
                    kmosix::testing::KubeShellQuote(bin_dir) + " " +
                    kmosix::testing::KubeShellQuote(api.kubeconfig()) + " >" +
                    kmosix::testing::KubeShellQuote(out_file) + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::string out = kmosix::testing::KubeReadFile(out_file);
  ASSERT_TRUE(WIFEXITED(rc)) << "check.sh did not exit normally (" << rc << "):\n" << out;
  EXPECT_EQ(WEXITSTATUS(rc), 0) << "crd/check.sh failed:\n" << out;
  // The script's last word, so a script that stopped early cannot pass.
  EXPECT_NE(out.find("check.sh: all checks passed"), std::string::npos) << out;
}

}  // namespace
}  // namespace kmosix::bridge
