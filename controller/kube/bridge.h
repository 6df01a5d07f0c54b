// The controller's Kubernetes bridge: kmosix.io objects are a face of the
// cluster's state, not its store (see ../shared/DESIGN.md "Kubernetes face").
//
//   MigratableWorkload  the desired state of a workload: the bridge creates the
//                       kmosix workload (WorkloadNameFor(ns, name), origin =
//                       the object), applies pinned/migratable changes, orders
//                       a migration when spec.nodeName changes, writes status
//                       (phase, node, epoch, moves, conditions Accepted, Placed,
//                       Running, Migrating), and on delete (finalizer) stops
//                       the workload wherever it runs before letting go.
//   Migration           an order and its record: the bridge orders it once
//                       (id = MigrationIdFor(uid), idempotent), mirrors the
//                       record's progress into status, cancels it when the
//                       object is deleted before the commit point (finalizer;
//                       after the commit point the delete waits for the end).
//                       Migrations kmosix orders itself (balancer, drain, REST)
//                       for a MigratableWorkload appear as Migration objects
//                       named by their id, labelled kmosix.io/requested-by;
//                       finished ones are kept per workload up to
//                       keep_finished (the oldest removed first).
//   MigrationPolicy     the balancer's knobs for the workloads its selector
//                       matches (the most specific match wins; the
//                       controller's flags are the default).
//   Node (core, read)   a kmosix node whose agent runs but reports it unfit for
//                       migrations (notReadyReason, e.g. no usable CRIU) gets
//                       a Warning Event MigrationsUnavailable with the reason
//                       (`kubectl describe node`), MigrationsAvailable when it
//                       is fit again.
//
// Level-based and idempotent: every key is reconciled from the informers'
// caches and the controller's state, never from the event that queued it;
// status is written only when it changed; every write carries the object's
// resourceVersion. Only the leading controller writes (every replica keeps the
// caches warm); a controller killed at any line leaves nothing the next leader
// cannot finish. Kubernetes Events record placements, migrations and errors
// on the objects (`kubectl describe`).
//
// Ownership: borrows the client, controller, clock and random (they must
// outlive the bridge); owns its informers, queue and threads.
// Thread-safety: Start/Stop from one thread; the rest is internal.
// Errors: reconcile errors are retried with per-key backoff (kRetry,
// kConflict) or reported on the object (kInvalid); none escape a thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/work_queue.h"
#include "controller/controller.h"
#include "controller/kube/codec.h"
#include "controller/kube/recorder.h"
#include "kmosix/clock.h"
#include "kube/client.h"
#include "kube/informer.h"

namespace kmosix::bridge {

struct BridgeOptions {
  size_t keep_finished = 10;  // finished Migration objects kept per workload
  // Everything is reconciled again this often (the level-based safety net).
  Clock::Duration resync = std::chrono::seconds(30);
  // While a delete waits (workload stopping, migration ending), the key is
  // looked at again this often.
  Clock::Duration wait_poll = std::chrono::milliseconds(500);
  std::string identity;  // reportingInstance of Events
};

class Bridge {
 public:
  Bridge(kube::Client& client, controller::Controller& controller, Clock& clock, Random& random,
         BridgeOptions options);
  ~Bridge();

  // Registers with the controller (call before controller.Start()) and starts
  // the informers and the worker.
  void Start();
  void Stop();  // idempotent; joins every thread
  // Every informer has listed once.
  bool Synced() const;

  // The bridge is the controller's PolicySource: the knobs of the most
  // specific MigrationPolicy matching a workload's MigratableWorkload labels
  // (nullopt for REST workloads and unmatched ones), and those of the policy
  // that selects everything (empty selector; the first by name if several).
  std::optional<api::PolicySettings> ForWorkload(const std::string& workload) const;
  std::optional<api::PolicySettings> ForCluster() const;

 private:
  // What the controller holds of the bridge (its change listener and policy
  // source): Stop() cuts it, so a controller that outlives the bridge never
  // calls into it.
  struct Link : controller::PolicySource {
    mutable std::mutex mu;
    Bridge* bridge = nullptr;
    std::optional<api::PolicySettings> ForWorkload(const std::string& w) const override;
    std::optional<api::PolicySettings> ForCluster() const override;
  };

  void Run();
  void EnqueueAll();
  void OnWorkloadObject(const std::string& key, const nlohmann::json* object);
  void OnMigrationObject(const std::string& key, const nlohmann::json* object);
  void OnPolicyObject(const std::string& key);
  void OnControllerChange(char kind, const std::string& name);
  Status Reconcile(const std::string& key);
  Status ReconcileWorkload(const std::string& ns, const std::string& name);
  Status ReconcileMigration(const std::string& ns, const std::string& name);
  Status MirrorMigration(const std::string& id);
  Status ReconcilePolicy(const std::string& name);
  // A Warning Event on the Kubernetes Node when its kmosix node reports a
  // notReadyReason (once per reason this replica sees), Normal when it goes.
  Status ReconcileNode(const std::string& name);
  Status TrimMigrations(const std::string& ns, const std::string& workload);
  Status CollectOrphans();
  // Adds the finalizer (if missing) and the given labels and annotations, with
  // the object's resourceVersion as precondition.
  // Answers the updated object.
  StatusOr<nlohmann::json> PatchMetadata(
      const kube::Resource& r, const nlohmann::json& object,
      const std::map<std::string, std::string>& labels = {},
      const std::map<std::string, std::string>& annotations = {});
  Status RemoveFinalizer(const kube::Resource& r, const nlohmann::json& object);
  // RemoveFinalizer of a deleted MigratableWorkload, forgetting its Stopping.
  Status ReleaseDeleted(const kube::Resource& r, const nlohmann::json& object,
                        const std::string& wname);
  // An Event to record once the status that announces it is written.
  struct PendingEvent {
    kube::Resource resource;
    nlohmann::json object;
    std::string type, reason, message;
  };
  // Writes `status` unless the object has it already (then nothing, and no
  // events); records `events` after a successful write.
  Status WriteStatus(const kube::Resource& r, const nlohmann::json& object, nlohmann::json status,
                     const std::vector<PendingEvent>& events = {});
  void Record(const kube::Resource& r, const nlohmann::json& object, const std::string& type,
              const std::string& reason, const std::string& message);

  kube::Client& client_;
  controller::Controller& controller_;
  Clock& clock_;
  Random& random_;
  BridgeOptions options_;

  std::unique_ptr<kube::Informer> workloads_;
  std::unique_ptr<kube::Informer> migrations_;
  std::unique_ptr<kube::Informer> policies_;
  cluster::WorkQueue queue_;
  EventRecorder recorder_;

  mutable std::mutex mu_;
  struct KnownWorkload {
    std::string key;                            // "mw/ns/name"
    std::map<std::string, std::string> labels;  // what MigrationPolicy selectors match
  };
  std::map<std::string, KnownWorkload> workloads_by_name_;  // by kmosix name
  std::map<std::string, std::string> migration_keys_;       // migration id -> "mig/ns/name"
  std::map<std::string, std::string> migration_ids_;        // "ns/name" -> migration id
  std::vector<MigrationPolicy> policies_by_name_;           // the valid ones, by name
  // MigratableWorkloads being deleted, by kmosix name: when this process first
  // saw the delete (wall ms) and the nodes that may hold a copy (empty: any).
  // The finalizer goes once none of those nodes lists the workload in a load
  // sampled after `since_ms`: a load older than the delete may predate the
  // workload's start and not list it yet.
  struct Stopping {
    int64_t since_ms = 0;
    std::set<std::string> nodes;
  };
  std::map<std::string, Stopping> stopping_;
  // The notReadyReason last told in an Event, by node (worker thread only).
  std::map<std::string, std::optional<std::string>> node_reasons_;

  std::shared_ptr<Link> link_ = std::make_shared<Link>();
  std::atomic<bool> stop_{false};
  std::atomic<bool> started_{false};
  std::thread worker_;
};

}  // namespace kmosix::bridge
