// The local cluster of one e2e binary, shared by its test suites (those
// whose name ends in "E2E"): a gtest Environment brings it up once, before
// the first such test (not at all when the filter selects none), and tears
// it down at the end, also on failure and on SIGINT/SIGTERM. A machine that
// cannot run it (not root, CRIU broken, no network namespaces; no etcd when
// the options ask for one) leaves a skip reason: the tests GTEST_SKIP with
// "KMOSIX-E2E-SKIPPED", which ctest reports as a skip.
//
// Register one per binary in main():
//   ::testing::AddGlobalTestEnvironment(new ClusterEnvironment(options));
// Thread-safety: gtest calls SetUp/TearDown on the main thread; tests read
// SharedCluster() from their own SetUp.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "cluster.h"

namespace kmosix::e2e {

class ClusterEnvironment : public ::testing::Environment {
 public:
  explicit ClusterEnvironment(ClusterOptions options) : options_(std::move(options)) {}
  void SetUp() override;
  void TearDown() override;

 private:
  ClusterOptions options_;
  std::unique_ptr<Cluster> cluster_;
};

struct SharedClusterState {
  Cluster* cluster = nullptr;  // null unless it is up
  std::string skip_reason;     // set: this machine cannot run it (GTEST_SKIP)
  std::string up_error;        // set: it did not come up (fail)
};
// A snapshot; call it in a test's SetUp (the environment is set up by then).
SharedClusterState SharedCluster();

// For a test's SetUp: the cluster; or nullptr after marking the test skipped
// (this machine cannot run it) or failed (it did not come up), so that gtest
// does not run the test body. SetUp returns when it gets nullptr.
Cluster* ClusterForTest();

}  // namespace kmosix::e2e
