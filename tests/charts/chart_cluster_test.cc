// charts/kmosix against a real kube-apiserver 1.37 (a private one with its
// own etcd: tests/support/private_kube_apiserver.h), as ctest tests:
//  - DryRun: tests/charts/dry_run.sh (a real helm install --no-hooks,
//    upgrade and uninstall; every values combination through a server-side
//    dry run);
//  - Pki: tests/charts/pki_test.sh (the chart's certificate and etcd-auth
//    Job script against this API server and a real etcd).
// helm is required: without it the tests FAIL (build it: scripts/kube-tools).
// Without the Kubernetes binaries or etcd they skip loudly, as the other
// kube-apiserver tests do.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "support/private_kube_apiserver.h"

namespace kmosix::charts {
namespace {

using kmosix::testing::KubeShellQuote;

// $HELM, else helm in `scripts/kube-tools --print`, else "".
std::string FindHelm() { return kmosix::testing::FindKubeTool("HELM", "helm"); }

// Runs SCRIPT BIN_DIR KUBECONFIG with bash; returns its exit status, output in *out.
int RunScript(const std::string& script, const std::string& bin_dir,
              kmosix::testing::PrivateKubeApiserver& api, const std::string& helm,
              std::string* out) {
  std::string out_file = api.dir() + "/" + std::filesystem::path(script).stem().string() + ".out";
  std::string cmd = "HELM=" + KubeShellQuote(helm) + " /bin/bash " + KubeShellQuote(script) + " " +
                    KubeShellQuote(bin_dir) + " " + KubeShellQuote(api.kubeconfig()) + " >" +
                    KubeShellQuote(out_file) + " 2>&1";
  int rc = std::system(cmd.c_str());
  *out = kmosix::testing::KubeReadFile(out_file);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

class ChartClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    helm_ = FindHelm();
    ASSERT_FALSE(helm_.empty())
        << "helm not found: build it with scripts/kube-tools (into "
        << kmosix::testing::KubeToolsDir()
        << "), or GOBIN=DIR go install helm.sh/helm/v4/cmd/helm@v4.3.2 and HELM=DIR/helm";
    if (auto why = kmosix::testing::KubeApiserverSkipReason(); !why.empty()) {
      GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: " << why;
    }
    bin_dir_ = std::filesystem::path(kmosix::testing::FindKubeTool("KMX_KUBECTL_BIN", "kubectl"))
                   .parent_path()
                   .string();
    root_ = kmosix::testing::KubeRepoRoot();
  }
  std::string helm_, bin_dir_, root_;
};

TEST_F(ChartClusterTest, InstallUpgradeUninstallAndEveryCombinationPassesServerDryRun) {
  kmosix::testing::PrivateKubeApiserver api;
  ASSERT_TRUE(api.Start()) << api.error();
  std::string out;
  int rc = RunScript(root_ + "/tests/charts/dry_run.sh", bin_dir_, api, helm_, &out);
  EXPECT_EQ(rc, 0) << "tests/charts/dry_run.sh failed:\n" << out;
  EXPECT_NE(out.find("dry_run.sh: all checks passed"), std::string::npos) << out;
}

TEST_F(ChartClusterTest, PkiJobIssuesCertificatesAndSetsUpEtcdAuth) {
  kmosix::testing::PrivateKubeApiserver api;
  ASSERT_TRUE(api.Start()) << api.error();
  std::string out;
  int rc = RunScript(root_ + "/tests/charts/pki_test.sh", bin_dir_, api, helm_, &out);
  ASSERT_EQ(rc, 0) << "tests/charts/pki_test.sh failed:\n" << out;
  if (out.find("KMOSIX-TEST-SKIPPED") != std::string::npos) GTEST_SKIP() << out;
  EXPECT_NE(out.find("pki_test.sh: all checks passed"), std::string::npos) << out;
}

}  // namespace
}  // namespace kmosix::charts
