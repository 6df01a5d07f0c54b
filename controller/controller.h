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
// (source node lost, order never picked up).
//
// Ownership: borrows the store, clock and random; owns its caches, queue and
// threads. Thread-safety: every public method may be called from any thread.
// Errors (API methods): kInvalid bad input (nothing changed), kNotFound,
// kConflict (name in use, workload busy, not migratable, node not eligible),
// kRetry (store unreachable; the write may or may not have happened only for
// kRetry from a write: callers re-read).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/leader_election.h"
#include "cluster/prefix_cache.h"
#include "cluster/records.h"
#include "cluster/work_queue.h"
#include "controller/events.h"
#include "controller/policy.h"
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

  // ---- API (any replica) ----
  StatusOr<nlohmann::json> CreateWorkload(std::string_view body);
  nlohmann::json ListWorkloads();
  StatusOr<nlohmann::json> GetWorkload(const std::string& name);
  Status DeleteWorkload(const std::string& name);
  // The owner agent's URL, for the logs proxy.
  StatusOr<std::string> WorkloadAgentUrl(const std::string& name);
  nlohmann::json ListNodes();
  StatusOr<nlohmann::json> GetNode(const std::string& name);
  // {"workload","target"?}; without target the policy's placement picks one.
  StatusOr<nlohmann::json> RequestMigration(std::string_view body);
  nlohmann::json ListMigrations();
  StatusOr<nlohmann::json> GetMigration(const std::string& id);
  // Asks the source to stop a migration before its commit point (it rolls
  // back). kConflict once the ownership moved (committing) or it ended.
  StatusOr<nlohmann::json> CancelMigration(const std::string& id);
  // Cordon: the node takes no arrivals (placements, migrations).
  StatusOr<nlohmann::json> SetCordoned(const std::string& node, bool cordoned);
  // Pinned workloads stay where they are (no automatic or API moves).
  StatusOr<nlohmann::json> SetPinned(const std::string& workload, bool pinned);
  // Cordons the node and orders every movable workload off it (body: see
  // controller/requests.h DrainRequest); reports what was not moved and why.
  StatusOr<nlohmann::json> Drain(const std::string& node, std::string_view body);
  // What the balancer would do now, with reasons, without doing it.
  nlohmann::json Decisions();
  // Placements, phases, readiness, as this replica's caches see them change.
  EventHub& Events() { return events_; }
  // The clock the controller runs on (borrowed).
  Clock& clock() const { return clock_; }
  nlohmann::json LeaderInfo();

  // The policy's view of the cluster now (from the caches).
  ClusterSnapshot Snapshot();

 private:
  void Lead(const cluster::LeaderTerm& term);
  // Cache handler: decodes the record into view_ and queues what it concerns.
  // kind: 'n' nodes/, 'c' members/, 'w' workloads/, 'm' migrations/.
  void OnChange(char kind, const std::string& name, const std::optional<KeyValue>& now);
  // Publishes the events a record change means (view_mu_ held).
  void PublishWorkloadEvents(const cluster::WorkloadRecord* before,
                             const cluster::WorkloadRecord* after);
  void PublishMigrationEvents(const cluster::MigrationRecord* before,
                              const cluster::MigrationRecord* after);
  void PublishMemberEvents(const cluster::NodeMember* before, const cluster::NodeMember* after);
  void EnqueueAll();
  std::optional<cluster::WorkloadRecord> CachedWorkload(const std::string& name) const;
  std::optional<cluster::MigrationRecord> CachedMigration(const std::string& id) const;
  std::optional<cluster::NodeLoad> CachedNode(const std::string& name) const;
  std::optional<cluster::NodeMember> CachedMember(const std::string& name) const;
  Status Reconcile(const std::string& item, const cluster::LeaderTerm& term);
  Status ReconcileWorkload(const std::string& name, const cluster::LeaderTerm& term);
  Status ReconcileMigration(const std::string& id, const cluster::LeaderTerm& term);
  Status ReconcileNode(const std::string& node, const cluster::LeaderTerm& term);
  Status BalanceRound(const cluster::LeaderTerm& term);
  // Writes a Pending order and marks the workload migrating, in one CAS.
  StatusOr<cluster::MigrationRecord> Order(const std::string& workload, const std::string& target,
                                           const std::string& reason,
                                           const std::string& requested_by,
                                           const std::optional<Compare>& fence);
  // Node readiness as the controller sees it: the agent's lease-bound key.
  bool NodeReady(const std::string& node);
  bool NodeCordoned(const std::string& node);
  nlohmann::json DescribeWorkload(const cluster::WorkloadRecord& w);
  nlohmann::json DescribeNode(const std::string& name);

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

  // The caches' records, decoded once per change (reads never parse JSON).
  struct View {
    std::map<std::string, cluster::NodeLoad> nodes;
    std::map<std::string, cluster::NodeMember> members;
    std::map<std::string, cluster::WorkloadRecord> workloads;
    std::map<std::string, cluster::MigrationRecord> migrations;
  };
  mutable std::mutex view_mu_;
  View view_;

  EventHub events_;

  std::mutex settled_mu_;
  std::map<std::string, double> settled_cpu_;  // workload -> cores, once settled

  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
  std::vector<std::thread> threads_;
};

}  // namespace kmosix::controller
