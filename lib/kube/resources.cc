// The Resource constants of client.h.
#include "kube/client.h"

namespace kmosix::kube {

Resource MigratableWorkloads() {
  return {"kmosix.io", "v1alpha1", "migratableworkloads", "MigratableWorkload", true};
}
Resource Migrations() { return {"kmosix.io", "v1alpha1", "migrations", "Migration", true}; }
Resource MigrationPolicies() {
  return {"kmosix.io", "v1alpha1", "migrationpolicies", "MigrationPolicy", false};
}
Resource CoreEvents() { return {"", "v1", "events", "Event", true}; }
Resource Nodes() { return {"", "v1", "nodes", "Node", false}; }

}  // namespace kmosix::kube
