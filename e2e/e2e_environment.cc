#include "e2e_environment.h"

#include <iostream>

namespace kmosix::e2e {
namespace {

// The binary's one cluster (one ClusterEnvironment per binary).
SharedClusterState state;

// Whether any test that needs the cluster is going to run.
bool ClusterTestsSelected() {
  const auto* unit = ::testing::UnitTest::GetInstance();
  for (int i = 0; i < unit->total_test_suite_count(); ++i) {
    const auto* suite = unit->GetTestSuite(i);
    if (std::string(suite->name()).ends_with("E2E") && suite->test_to_run_count() > 0) return true;
  }
  return false;
}

}  // namespace

void ClusterEnvironment::SetUp() {
  if (!ClusterTestsSelected()) return;  // e.g. --gtest_filter=DemoLogParser.*
  state.skip_reason = Cluster::MissingCapability();
  if (state.skip_reason.empty() && options_.etcd && RunCommand("command -v etcd").exit_code != 0) {
    state.skip_reason = "etcd not found on PATH";
  }
  if (!state.skip_reason.empty()) {
    std::cerr << "\n*** KMOSIX-E2E-SKIPPED: this machine cannot run the e2e cluster: "
              << state.skip_reason << " ***\n\n";
    return;
  }
  InstallDownOnSignal();
  cluster_ = std::make_unique<Cluster>(options_);
  ArmDownOnSignal(true);
  state.up_error = cluster_->Up();
  if (state.up_error.empty()) {
    state.cluster = cluster_.get();
  } else {
    ArmDownOnSignal(false);  // Up() already tore down what it started
  }
}

void ClusterEnvironment::TearDown() {
  if (!cluster_) return;
  state.cluster = nullptr;
  std::string err = cluster_->Down();
  ArmDownOnSignal(false);
  if (!err.empty()) ADD_FAILURE() << err;
}

SharedClusterState SharedCluster() { return state; }

Cluster* ClusterForTest() {
  // GTEST_SKIP/GTEST_FAIL return from the enclosing function: the lambdas.
  if (!state.skip_reason.empty()) {
    [] { GTEST_SKIP() << "KMOSIX-E2E-SKIPPED: " << state.skip_reason; }();
    return nullptr;
  }
  if (!state.up_error.empty()) {
    [] { GTEST_FAIL() << "the e2e cluster did not come up:\n" << state.up_error; }();
    return nullptr;
  }
  if (state.cluster == nullptr) {
    [] { GTEST_FAIL() << "the e2e cluster is not up (no ClusterEnvironment registered?)"; }();
  }
  return state.cluster;
}

}  // namespace kmosix::e2e
