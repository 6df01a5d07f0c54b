// The balancing policy (openMosix, adapted): a pure function from a snapshot
// of the cluster to decisions. No I/O, no clock reads (the snapshot carries
// `now_ms`), randomness only through the injected Random (tie-breaking).
//
// Load model. A workload w on node n contributes cpu(w) / (capacity(n) *
// speed(n)) to n's load; a node's load is its background (cpu it uses outside
// its known workloads, normalised the same way) plus its workloads'
// contributions. In-flight migrations count on their target already.
//
// Rules, in order, each decision recording its reason with the numbers:
//   1. Memory ushering: a node short of memory (available < low_memory_fraction
//      of capacity, or memory PSI some10 >= memory_psi_threshold) sheds
//      workloads to nodes with room, before CPU balance is considered.
//   2. CPU balance: move c from A to B only when
//        L_B + stability * l_c(B) < L_A
//      (l_c(B): c's load as it would weigh on B), when c has lived longer than
//      its estimated migration cost (memory / bandwidth), and when c has been
//      on A for at least min_residency.
//   Decisions are applied to the working loads one by one, so a round may
//   emit several; within a round a node either sheds or receives, and no move
//   may leave an earlier CPU move of the round worth undoing (so the next
//   round, on the resulting loads, never sends a workload straight back).
//   Never moved: pinned or non-migratable workloads, workloads already
//   migrating; never chosen as targets: NotReady or cordoned nodes, nodes
//   without memory for c. Limits: at most max_per_node migrations involving a
//   node (as source or target) and max_cluster in flight in the cluster,
//   counting those already in flight.
//
// Thread-safety: pure functions; Balance may run concurrently on different
// snapshots.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::controller {

struct PolicyConfig {
  double stability = 1.3;
  double bandwidth_bytes_per_s = 200.0 * 1024 * 1024;  // migration cost estimate
  int64_t min_residency_ms = 30'000;
  int max_per_node = 1;
  int max_cluster = 2;
  double low_memory_fraction = 0.10;
  double memory_psi_threshold = 20.0;  // % some10
  // Loads closer than this are equal (ignores measurement noise): a move must
  // bring the source's and target's loads at least this much closer.
  double min_gain = 0.05;
};

struct PolicyNode {
  std::string name;
  bool ready = true;
  bool cordoned = false;
  double cpu_capacity = 1;
  double speed = 1;
  double background_cpu = 0;  // cores used outside known workloads
  uint64_t memory_capacity_bytes = 0;
  uint64_t memory_available_bytes = 0;
  std::optional<double> psi_memory_some10;
  // False when the node lists the images it holds and the image asked of the
  // snapshot (Controller::Snapshot(image)) is not among them.
  bool has_image = true;
};

struct PolicyWorkload {
  std::string name;
  std::string node;  // owner
  double cpu = 0;    // cores, as last measured
  uint64_t memory_bytes = 0;
  int64_t created_ms = 0;  // age = now - created
  int64_t started_ms = 0;  // on this node since (residency)
  bool migratable = true;
  bool pinned = false;
  bool migrating = false;
  // A MigrationPolicy's knobs for this workload (unset: PolicyConfig's).
  bool balance = true;  // false: the balancer never moves it (memory ushering neither)
  std::optional<double> stability;
  std::optional<int64_t> min_residency_ms;
};

struct PolicyMigration {  // in flight
  std::string workload;
  std::string source;
  std::string target;
};

struct ClusterSnapshot {
  int64_t now_ms = 0;
  std::vector<PolicyNode> nodes;
  std::vector<PolicyWorkload> workloads;
  std::vector<PolicyMigration> in_flight;
};

struct Decision {
  enum class Kind { kMemory, kCpu };
  Kind kind = Kind::kCpu;
  std::string workload;
  std::string source;
  std::string target;
  double source_load = 0;    // L_A before
  double target_load = 0;    // L_B before
  double workload_load = 0;  // l_c on the target
  std::string reason;        // human-readable, numbers included
};

struct BalanceResult {
  std::vector<Decision> moves;
  // Why the best candidates were not moved (hysteresis, residency, limits...),
  // for the dry-run endpoint; at most a few dozen lines.
  std::vector<std::string> held_back;
};

BalanceResult Balance(const ClusterSnapshot& snapshot, const PolicyConfig& config, Random& random);

// Each node's load as the policy sees it (same order as snapshot.nodes).
std::vector<double> NodeLoads(const ClusterSnapshot& snapshot);

struct PlacementRequest {
  double cpus = 0;  // expected cores (0: assume 1)
  uint64_t memory_bytes = 0;
  std::string node;  // required node ("" = any)
};
// The least-loaded ready, uncordoned node with memory for the request and
// the image (PolicyNode::has_image) (ties broken by Random). kInvalid/kNotFound if `node` is given
// and unknown; kConflict if it is NotReady/cordoned/full; kRetry if no node fits now.
StatusOr<std::string> Place(const ClusterSnapshot& snapshot, const PlacementRequest& request,
                            Random& random);
// The same, with the memory margin (low_memory_fraction of capacity) and the
// memory PSI threshold taken from `config`; the form above uses PolicyConfig{}.
StatusOr<std::string> Place(const ClusterSnapshot& snapshot, const PlacementRequest& request,
                            const PolicyConfig& config, Random& random);

}  // namespace kmosix::controller
