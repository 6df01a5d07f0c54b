// The kmosix controller: watches the cluster's state in the StateStore,
// places workloads, runs the balancing policy, keeps node readiness, and
// drives every migration record to a final phase.
//
// Every replica keeps list-then-watch caches of nodes/, members/, workloads/
// and migrations/ and serves reads from them; API writes go straight to the
// store as compare-and-swap transactions, so any replica can take them. Only
// the elected leader reconciles: a keyed work queue ("w/<workload>",
// "m/<migration>", "n/<node>", "balance") with per-key backoff; every
// reconciler re-reads what it changes and writes with a CAS fenced by the
// leader term, so it is idempotent and safe to kill at any line. The agents
// execute migrations (the source agent drives the protocol and writes the
// record's phases); the leader resolves records the source cannot finish
// (source node lost, order never picked up) with a verdict of the ownership
// protocol (cluster/ownership.h): one transaction, fenced by the term, that
// writes the migration record final (Succeeded when the ownership moved,
// else Failed) and frees the workload record together, so no moment exists
// at which a returning source could commit a migration recorded as ended.
//
// A workload Lost with its node is placed again on another node when its
// restartPolicy says so (FromImage, FromCheckpoint), once the node has been
// NotReady for `node_loss_restart_delay` (controller/node_loss.h).
//
// The leader also keeps etcd bounded (controller/retention.h): a
// "retention" item removes old finished migration records, a "compact" item
// compacts the store's history; both periodic, level-based.
//
// etcd node grants (SetAccessGrants; controller/grants.h): what each node's
// etcd role may write beyond its own nodes/<node> key follows the records.
// The leader reconciles one queue item per node ("g/<node>", queued by every
// record change that concerns the node and by a resync every
// `grants_resync`); any replica grants first, then writes, when it places a
// workload (the target: workloads/<name>) or orders a migration (the source:
// migrations/<id> and workloads/<name>; the target: workloads/<name>), so an
// agent never meets a missing grant on the happy path. A grant that fails
// fails the placement (retried) or the order (kRetry/...), never silently.
//
// Ownership: borrows the store, clock and random (and the AccessGrants);
// owns its caches, queue and threads. Thread-safety: every public method may
// be called from any thread. Errors (API methods): kInvalid bad input
// (nothing changed), kNotFound, kConflict (name in use, workload busy, not
// migratable, node not eligible), kRetry (store unreachable; the write may or
// may not have happened only for kRetry from a write: callers re-read).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/types.h"
#include "cluster/leader_election.h"
#include "cluster/prefix_cache.h"
#include "cluster/records.h"
#include "cluster/work_queue.h"
#include "controller/events.h"
#include "controller/grants.h"
#include "controller/node_loss.h"
#include "controller/policy.h"
#include "controller/retention.h"
#include "kmosix/access_grants.h"
#include "kmosix/clock.h"
#include "kmosix/state_store.h"

namespace kmosix::controller {

struct ControllerOptions {
  std::string identity;  // this replica, e.g. "host:pid"
  cluster::KeyLayout keys;
  PolicyConfig policy;
  bool balance = true;  // run the policy (off: placement and upkeep only)
  Clock::Duration balance_interval = std::chrono::seconds(2);
  std::chrono::seconds leader_ttl{5};
  // A Pending order its source has not picked up after this long is Failed.
  Clock::Duration order_timeout = std::chrono::seconds(60);
  // A migration whose source node is NotReady this long is resolved by the
  // controller from the ownership record.
  Clock::Duration source_lost_grace = std::chrono::seconds(5);
  int workers = 2;
  // etcd node grants (used only with SetAccessGrants): the role of node N
  // is node_role_prefix + N; an extra grant is revoked once extra this long;
  // every node's grants are looked at again this often.
  std::string node_role_prefix;
  Clock::Duration grant_revoke_grace = std::chrono::seconds(3);
  Clock::Duration grants_resync = std::chrono::seconds(30);
  // The leader removes old finished migration records and compacts the
  // store's history (controller/retention.h).
  RetentionOptions retention;
  CompactionOptions compaction;
  // Node loss (controller/node_loss.h): a Lost workload with restartPolicy
  // FromImage/FromCheckpoint is placed elsewhere once its node has been
  // NotReady this long. The agents' lease TTL and fence deadline as this
  // controller assumes them: the delay must exceed their sum
  // (CheckNodeLossTiming; the binary refuses to start otherwise).
  Clock::Duration node_loss_restart_delay = kDefaultNodeLossRestartDelay;
  Clock::Duration lease_ttl_assumed = kDefaultLeaseTtlAssumed;
  Clock::Duration agent_fence_after = kDefaultAgentFenceAfter;
};

// Counters for /metrics; the REST layer renders them.
class ControllerObserver {
 public:
  virtual ~ControllerObserver() = default;
  virtual void OnLeadership(bool leader) = 0;
  virtual void OnBalanceRound(double seconds, size_t moves) = 0;
  virtual void OnMigrationOrdered(const std::string& requested_by) = 0;
  virtual void OnPlacement() = 0;
  virtual void OnReconcile(const std::string& kind, bool ok) = 0;
  // An etcd node grant ("grant") or revoke ("revoke") was attempted.
  virtual void OnGrant(const std::string& action, bool ok) {
    (void)action;
    (void)ok;
  }
};

// Where MigrationPolicy knobs come from (the Kubernetes bridge): those of a
// workload (its most specific policy) and the cluster-wide ones (a policy
// that selects every workload). nullopt: the flags. Called from the
// balancing thread and API threads; implementations are thread-safe.
class PolicySource {
 public:
  virtual ~PolicySource() = default;
  virtual std::optional<api::PolicySettings> ForWorkload(const std::string& workload) const = 0;
  virtual std::optional<api::PolicySettings> ForCluster() const = 0;
};

class Controller {
 public:
  Controller(StateStore& store, Clock& clock, Random& random, ControllerOptions options,
             ControllerObserver* observer);
  ~Controller();

  // Starts the caches and the election; returns at once.
  void Start();
  // Steps down, stops every thread. Idempotent.
  void Stop();

  bool IsLeader() const;
  // Caches listed at least once (the API can answer).
  bool Ready() const;
  std::string Identity() const { return options_.identity; }

  // ---- API (any replica): typed values in and out ----
  // Validates (api::ValidateWorkloadSpec); kInvalid for an unknown node or
  // pinned without node; kConflict if the name exists.
  StatusOr<api::WorkloadView> CreateWorkload(const api::WorkloadSpec& spec);
  std::vector<api::WorkloadView> ListWorkloads();  // by name
  StatusOr<api::WorkloadView> GetWorkload(const std::string& name);
  Status DeleteWorkload(const std::string& name);
  // Pinned workloads stay where they are (no automatic or API moves).
  StatusOr<api::WorkloadView> SetPinned(const std::string& name, bool pinned);
  // Non-migratable workloads are never moved (their order is refused).
  StatusOr<api::WorkloadView> SetMigratable(const std::string& name, bool migratable);
  // The owner agent's URL, for the logs proxy.
  StatusOr<std::string> WorkloadAgentUrl(const std::string& name);
  std::vector<api::NodeView> ListNodes();  // by name
  StatusOr<api::NodeView> GetNode(const std::string& name);
  // Cordon: the node takes no arrivals (placements, migrations).
  StatusOr<api::NodeView> SetCordoned(const std::string& node, bool cordoned);
  // Without target the policy's placement picks one. A non-empty request.id
  // makes the order idempotent: an existing migration of that id for the
  // same workload is answered as it is (kConflict for another workload).
  StatusOr<api::Migration> RequestMigration(const api::MigrationRequest& request);
  std::vector<api::Migration> ListMigrations();  // oldest first
  StatusOr<api::Migration> GetMigration(const std::string& id);
  // Asks the source to stop a migration before its commit point (it rolls
  // back). kConflict once the ownership moved (committing) or it ended.
  // One transaction over the migration and workload records
  // (cluster::ownership::Cancel), so it and the source's Transfer never both
  // succeed.
  StatusOr<api::Migration> CancelMigration(const std::string& id,
                                           const std::string& cancelled_by = "api");
  // Cordons the node and orders every movable workload off it; reports what
  // was not moved and why.
  StatusOr<api::DrainReport> Drain(const std::string& node, const api::DrainRequest& request);
  // What the balancer would do now, with reasons, without doing it.
  api::DecisionsView Decisions();
  api::LeaderInfo Leader();
  // Called (from the cache threads, no lock held) after every change of a
  // workload ('w') or migration ('m') record this replica's caches see, with
  // its name/id, and ('n', node name) when a live node's notReadyReason
  // appears, changes or goes (GetNode tells it). Register before Start().
  void AddChangeListener(std::function<void(char kind, const std::string& name)> listener);
  // The balancer's per-workload and cluster knobs beyond the flags (shared:
  // a source that goes away first answers nullopt). Set before Start().
  void SetPolicySource(std::shared_ptr<const PolicySource> source) {
    policy_source_ = std::move(source);
  }
  // Keeps each node's etcd write grants as narrow as the records say (see
  // the file comment). Borrowed; set before Start(); nullptr: off (an etcd
  // without auth, or a role setup that gives the nodes the whole prefix).
  void SetAccessGrants(AccessGrants* grants);
  // Placements, phases, readiness, as this replica's caches see them change.
  EventHub& Events() { return events_; }
  // The clock the controller runs on (borrowed).
  Clock& clock() const { return clock_; }

  // kInvalid when the ready nodes (or spec.node) all list their images and
  // none holds spec.image; ok when unknown. CreateWorkload does not ask it (a
  // workload whose image no node holds yet waits Pending for one); the
  // Kubernetes bridge refuses such objects with Accepted=False.
  Status CheckImageHeld(const api::WorkloadSpec& spec);
  // The policy's view of the cluster now (from the caches). With an image,
  // nodes that list their images without it have has_image = false.
  ClusterSnapshot Snapshot(const std::string& image = "");

 private:
  void Lead(const cluster::LeaderTerm& term);
  // Cache handler: decodes the record into view_ and queues what it concerns.
  // kind: 'n' nodes/, 'c' members/, 'w' workloads/, 'm' migrations/.
  void OnChange(char kind, const std::string& name, const std::optional<KeyValue>& now);
  // Publishes the events a record change means (view_mu_ held).
  void PublishWorkloadEvents(const api::Workload* before, const api::Workload* after);
  void PublishMigrationEvents(const api::Migration* before, const api::Migration* after);
  void PublishMemberEvents(const api::NodeMember* before, const api::NodeMember* after);
  void EnqueueAll();
  std::optional<api::Workload> CachedWorkload(const std::string& name) const;
  std::optional<api::Migration> CachedMigration(const std::string& id) const;
  std::optional<api::NodeLoad> CachedNode(const std::string& name) const;
  std::optional<api::NodeMember> CachedMember(const std::string& name) const;
  Status Reconcile(const std::string& item, const cluster::LeaderTerm& term);
  Status ReconcileWorkload(const std::string& name, const cluster::LeaderTerm& term);
  Status ReconcileMigration(const std::string& id, const cluster::LeaderTerm& term);
  Status ReconcileNode(const std::string& node, const cluster::LeaderTerm& term);
  // A Lost workload whose restartPolicy is not Never: waits out the restart
  // delay (re-queueing itself), then places it again in one CAS
  // (controller/node_loss.h; defined in node_loss.cc).
  Status RestartLost(const api::Workload& w, const cluster::LeaderTerm& term);
  // Sets status.message of a workload still Lost as `decided_on` (one CAS).
  Status UpdateLostMessage(const std::string& name, const api::WorkloadStatus& decided_on,
                           const std::string& message, const cluster::LeaderTerm& term);
  Status BalanceRound(const cluster::LeaderTerm& term);
  // Removes finished migration records past their retention (retention.h).
  Status TrimFinishedMigrations(const cluster::LeaderTerm& term);
  // Brings node `node`'s etcd grants to what the cached records say.
  Status ReconcileGrants(const std::string& node);
  // Queues "g/<node>" for every node the caches know of.
  void EnqueueGrants();
  // Writes a Pending order and marks the workload migrating, in one CAS.
  // request.id "" = a new random id; otherwise an existing record of that id
  // for the same workload is answered as it is.
  StatusOr<api::Migration> Order(const api::MigrationRequest& request,
                                 const std::optional<Compare>& fence);
  // Node readiness as the controller sees it: the agent's lease-bound key.
  bool NodeReady(const std::string& node);
  bool NodeCordoned(const std::string& node);
  api::WorkloadView DescribeWorkload(const api::Workload& w);
  api::NodeView DescribeNode(const std::string& name);
  // Edits a workload's spec in one CAS; answers its view.
  StatusOr<api::WorkloadView> UpdateSpec(
      const std::string& name, const std::function<StatusOr<bool>(api::Workload&)>& mutate);

  StateStore& store_;
  Clock& clock_;
  Random& random_;
  ControllerOptions options_;
  ControllerObserver* observer_;

  cluster::PrefixCache nodes_;
  cluster::PrefixCache members_;
  cluster::PrefixCache workloads_;
  cluster::PrefixCache migrations_;
  cluster::WorkQueue queue_;
  cluster::LeaderElection election_;
  Compactor compactor_;  // used by the leader's "compact" item

  // The caches' records, decoded once per change (reads never parse JSON).
  struct View {
    std::map<std::string, api::NodeLoad> nodes;
    std::map<std::string, api::NodeMember> members;
    std::map<std::string, api::Workload> workloads;
    std::map<std::string, api::Migration> migrations;
  };
  mutable std::mutex view_mu_;
  View view_;

  EventHub events_;
  // Registered before Start(); read-only afterwards.
  std::vector<std::function<void(char, const std::string&)>> listeners_;
  std::shared_ptr<const PolicySource> policy_source_;  // set before Start()
  std::unique_ptr<GrantReconciler> grants_;            // set before Start()
  // The flags with the policy source's knobs applied: cluster-wide ones to
  // the returned config, per-workload ones to `snap`'s workloads.
  PolicyConfig ApplyPolicies(ClusterSnapshot& snap) const;

  std::mutex settled_mu_;
  std::map<std::string, double> settled_cpu_;  // workload -> cores, once settled

  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
  std::vector<std::thread> threads_;
};

}  // namespace kmosix::controller
