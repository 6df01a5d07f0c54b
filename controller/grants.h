// Per-node write grants in etcd (issue 11): what each node's etcd role may
// write beyond its own nodes/<node> key, kept by the leading controller as
// narrow as the records say (like Kubernetes' NodeRestriction, but enforced
// by etcd itself). A node's static role (scripts/cluster setup_etcd_auth,
// the chart's kmosix-pki.sh) reads the cluster's prefix and writes its own
// nodes/<node> key only; everything below is added and taken away here as
// single-key readwrite permissions (kmosix/access_grants.h).
//
// Who writes what (node-agent/cluster_link.cc):
//   workloads/<name>   the owner (status.node) reports its start, Running,
//                      Exited, Failed; the source of the migration the record
//                      names (status.migration) moves ownership (Transfer),
//                      moves it back (Revert) and frees the record at the end
//                      (FinishWorkload) after ownership went to the target;
//                      the target becomes status.node at the Transfer.
//   migrations/<id>    its source only: the phases (WriteReport), a refusal
//                      (RefuseOrder), "no journal" failures. The target never
//                      writes it (it reads it to authorize the source).
//   checkpoints/<name> the owner of a restartPolicy FromCheckpoint workload
//                      records its periodic checkpoints (node-agent/
//                      checkpointer.h); the controller deletes it with the
//                      workload.
// Hence the rule (DesiredGrants):
//   workloads/<name> -> status.node, unless the phase is Pending, Failed or
//                       Exited (no owner, or nothing left for it to write);
//                       and, while status.migration names migration M of this
//                       workload, M's source and M's target (the target
//                       before the Transfer, so it never meets a missing grant
//                       once it owns the workload).
//   migrations/<id>  -> its source, while it is not final or the workload
//                       record still names it (status.migration == id).
//   checkpoints/<name> -> status.node, while the workload is Running with
//                       restartPolicy FromCheckpoint.
//
// GrantReconciler brings one node's role to that set: it reads what the role
// holds (Granted), grants what is missing, and revokes what is extra, keys
// under workloads/, migrations/ and checkpoints/ only (the role's own nodes/<node> key and
// its ranges are the administrator's). A key is revoked only once it has been
// extra for `revoke_grace`: a grant a controller made right before writing
// the record that needs it (placement, order) must survive until the caches
// see that record, on this replica or another. Level-based: every call reads
// the role afresh, so it is idempotent and safe to kill at any line (the
// grace clock restarts on a new leader; that only delays revokes).
//
// Ownership: GrantReconciler borrows the AccessGrants and the clock.
// Thread-safety: DesiredGrants and the key helpers are pure; GrantReconciler's
// methods may be called from any thread (one mutex guards its grace clock);
// calls for different nodes run concurrently. Errors: the AccessGrants'
// (kRetry, kNotFound for a role that does not exist, kPermissionDenied when
// this identity may not administer roles), annotated with the node.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "api/types.h"
#include "cluster/records.h"
#include "kmosix/access_grants.h"
#include "kmosix/clock.h"

namespace kmosix::controller {

// node -> keys it may write (beyond its own nodes/<node> key).
using NodeGrants = std::map<std::string, std::set<std::string>>;

NodeGrants DesiredGrants(const cluster::KeyLayout& keys,
                         const std::map<std::string, api::Workload>& workloads,
                         const std::map<std::string, api::Migration>& migrations);

// The nodes whose grants a change of workload `name` (before -> after, either
// may be null) can change: its owners and the nodes of the migrations named.
std::set<std::string> NodesOfWorkloadChange(
    const api::Workload* before, const api::Workload* after,
    const std::map<std::string, api::Migration>& migrations);
// The same for a migration record: its source and target.
std::set<std::string> NodesOfMigrationChange(const api::Migration* before,
                                             const api::Migration* after);

// Whether `key` is one the reconciler manages (directly under workloads/,
// migrations/ or checkpoints/ of `keys`).
bool ManagedGrantKey(const cluster::KeyLayout& keys, const std::string& key);

struct GrantOutcome {
  int granted = 0;
  int revoked = 0;
  // Extra keys left for now (inside their grace): call again this much later.
  std::optional<Clock::Duration> again_in;
};

class GrantReconciler {
 public:
  struct Options {
    cluster::KeyLayout keys;
    std::string role_prefix;  // the etcd role of node N is role_prefix + N
    Clock::Duration revoke_grace = std::chrono::seconds(3);
  };
  // Called after every Grant/Revoke: action "grant" or "revoke", node, key, ok.
  using Observer = std::function<void(const std::string& action, const std::string& node,
                                      const std::string& key, const Status& s)>;

  GrantReconciler(AccessGrants& grants, Clock& clock, Options options, Observer observer = {});

  std::string RoleOf(const std::string& node) const { return options_.role_prefix + node; }

  // Brings `node`'s role to `desired` (see the file comment). Stops at the
  // first failing call (what was done stays done).
  StatusOr<GrantOutcome> Reconcile(const std::string& node, const std::set<std::string>& desired);

  // Grants `keys` to `node` now (before writing a record that needs them).
  Status GrantNow(const std::string& node, const std::set<std::string>& keys);

  // Forgets when extra keys were first seen (a new leader term starts its
  // grace clocks afresh: another replica may have granted meanwhile).
  void ResetGrace();

 private:
  AccessGrants& grants_;
  Clock& clock_;
  const Options options_;
  Observer observer_;
  std::mutex mu_;
  // node -> extra key -> since when it was seen extra.
  std::map<std::string, std::map<std::string, Clock::TimePoint>> extra_since_;
};

}  // namespace kmosix::controller
