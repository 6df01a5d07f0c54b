// The cluster shared by the e2e tests linked into one binary
// (migration_e2e_test): its gtest Environment (in migration_e2e_test.cc)
// brings the cluster up once, before the first test of any suite whose name
// ends in "E2E", with --enable-failpoints, and tears it down at the end (and
// on SIGINT/SIGTERM).
#pragma once

#include <string>

#include "cluster.h"

namespace kmosix::e2e {

struct SharedClusterState {
  Cluster* cluster = nullptr;  // null unless it is up
  std::string skip_reason;     // set: this machine cannot run it (GTEST_SKIP)
  std::string up_error;        // set: it did not come up (fail)
};
// A snapshot; call it in a test's SetUp (the environment is set up by then).
SharedClusterState SharedCluster();

}  // namespace kmosix::e2e
