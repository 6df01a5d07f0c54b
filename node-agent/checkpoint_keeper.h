// The keeper side of restartPolicy FromCheckpoint (issue 13): this node
// holds the latest periodic checkpoint of workloads other nodes own, and
// restores one from it when the controller places the workload here after
// its node was lost.
//
// Receiving. A checkpoint arrives as a migration's stream does, over the
// same agent-to-agent protocol and authenticated data channel: the source
// Prepares an offer whose id starts with "ckpt-" (kCheckpointIdPrefix), then
// Sends its sections (criu, rootfs, log) with declared limits. CheckpointRouter
// hands such ids to the keeper and every other id to the migration target,
// and CheckpointPeerAuthorizer does the same for the peer-identity checks.
//   AllowPeer(peer, id)   binds a checkpoint id to the first authenticated
//                         node that uses it; any later call for that id from
//                         another node is kPermissionDenied.
//   Prepare(offer)        accepted only when the offer's source is the node
//                         bound to its id (with authenticated peers) and etcd
//                         names that node as the workload's owner (status.node,
//                         phase Running, no migration, restartPolicy
//                         FromCheckpoint); the epoch etcd names is kept with
//                         the checkpoint. Refused busy (kRetry) beyond
//                         max_incoming arrivals, or when the store's disk
//                         would keep less than reserve_bytes free; kInvalid
//                         when it declares no limits or more than max_bytes;
//                         kConflict while another checkpoint of the same
//                         workload is arriving.
//   BeginReceive/EndReceive
//                         the stream lands in the store's arrival directory
//                         (held to the declared limits); a verified stream is
//                         committed into place (CheckpointStore::Commit) and
//                         the workload's older checkpoints deleted, except the
//                         one etcd's checkpoints/<workload> names here and the
//                         one its status.restoreCheckpoint names; a failed
//                         one is removed. The source then writes the record.
//   ExpireIdle()          drops arrivals idle for idle_timeout.
// Restore, Commit and Abort of a checkpoint id are refused (kInvalid):
// nothing runs from an arrival.
//
// Clean-up (Collect, periodic): for each workload the store holds, etcd is
// read (workloads/<w>, checkpoints/<w>) and CheckpointsToKeep decides what
// stays; the rest is deleted. A workload that is gone loses every checkpoint
// here, and its checkpoints/<w> record is deleted if it still names this node
// (a transaction requiring the workload still absent; with etcd auth the
// controller deletes it with the workload, so a refusal is only logged).
// A store error skips the workload until the next round (nothing is deleted
// on a guess).
//
// Restore (StartFromCheckpoint, the cluster link's start_from_checkpoint):
// the workload record names status.restoreCheckpoint = id; if this node
// holds that checkpoint, the workload is started through
// Agent::StartManaged with a restore: the migration target's path
// (CheckpointEngine::Prepare, the stored sections copied into its landing by
// CopySections, CheckpointEngine::Restore; Discard on failure). A checkpoint
// that is missing, unreadable or fails to restore: started from the image,
// and `note` (the record's message) says so. The workload is never lost for
// want of a checkpoint.
//
// Ownership: borrows the store, state store, engine and clock; owns its
// arrivals' records. Thread-safety: all methods are thread-safe (one mutex
// for the arrivals; the store has its own).
// Errors: as above; store (etcd) errors are kRetry.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "access.h"
#include "agent.h"
#include "api/types.h"
#include "cluster/records.h"
#include "kmosix/checkpoint.h"
#include "kmosix/checkpoint_store.h"
#include "kmosix/clock.h"
#include "kmosix/state_store.h"
#include "kmosix/transport.h"

namespace kmosix::agent {

inline constexpr char kCheckpointIdPrefix[] = "ckpt-";
bool IsCheckpointId(const std::string& id);

struct CheckpointKeeperOptions {
  std::string node;
  cluster::KeyLayout keys;
  // Where restores land their CRIU images (a directory per restore, removed
  // after it).
  std::string scratch_dir;
  // Peers are authenticated (TLS): a Prepare must come from the node bound
  // to its id by AllowPeer.
  bool authenticated_peers = true;
  Clock::Duration idle_timeout = std::chrono::seconds(120);
  int max_incoming = 2;
  uint64_t max_bytes = 0;                        // one checkpoint's payload; 0: no ceiling
  uint64_t reserve_bytes = uint64_t{256} << 20;  // left free on the store's filesystem
  // A checkpoint etcd does not (yet) name is kept this long after it was
  // stored (its source writes the record right after the stream).
  Clock::Duration grace = std::chrono::minutes(2);
};

// Which stored checkpoints of one workload stay (the clean-up rule, pure):
// - the workload record is gone: none;
// - the one status.restoreCheckpoint names;
// - the one checkpoints/<w> names when it names `self` as keeper;
// - with no checkpoints/<w> record: the newest stored;
// - any stored less than grace_ms ago (a record write may be in flight).
std::set<std::string> CheckpointsToKeep(const std::vector<StoredCheckpoint>& stored,
                                        const std::optional<api::Workload>& workload,
                                        const std::optional<api::CheckpointRecord>& record,
                                        const std::string& self, int64_t now_ms, int64_t grace_ms);

class CheckpointKeeper final : public MigrationTarget {
 public:
  CheckpointKeeper(CheckpointKeeperOptions options, CheckpointStore& store, StateStore& state,
                   CheckpointEngine& engine, Clock& clock);

  Status AllowPeer(const std::string& peer_node, const std::string& id);

  PeerInfo Info() override;
  Status Prepare(const MigrationOffer& offer) override;
  StatusOr<Landing> BeginReceive(const std::string& id) override;
  Status EndReceive(const std::string& id, const Status& result,
                    const TransferStats& stats) override;
  StatusOr<RestoreReport> Restore(const std::string& id) override;
  StatusOr<TargetPhase> Commit(const std::string& id) override;
  StatusOr<TargetPhase> Abort(const std::string& id) override;
  StatusOr<TargetPhase> Query(const std::string& id) override;
  StreamLimits ReceiveLimits(const std::string& id) override;

  void ExpireIdle();
  // One clean-up round; the number of checkpoints deleted.
  int Collect();

  StatusOr<LocalWorkload> StartFromCheckpoint(Agent& agent, const api::Workload& rec,
                                              std::string* note);

  // Counters (for metrics).
  struct Counts {
    uint64_t received = 0;           // checkpoints stored
    uint64_t refused = 0;            // offers refused
    uint64_t failed = 0;             // streams that failed
    uint64_t restored = 0;           // workloads restored from a checkpoint
    uint64_t restore_fallbacks = 0;  // started from the image instead
    uint64_t collected = 0;          // checkpoints deleted by Collect
  };
  Counts counts();

 private:
  struct Arrival {
    MigrationOffer offer;
    int64_t epoch = 0;
    TargetPhase phase = TargetPhase::kPrepared;
    Landing landing;
    Clock::TimePoint touched;
  };
  // Ids etcd protects for `workload` now (error: etcd unreadable).
  StatusOr<std::set<std::string>> Protected(const std::string& workload);

  const CheckpointKeeperOptions options_;
  CheckpointStore& store_;
  StateStore& state_;
  CheckpointEngine& engine_;
  Clock& clock_;
  std::mutex mu_;
  std::map<std::string, Arrival> arrivals_;                                // by id; mu_
  std::map<std::string, std::pair<std::string, Clock::TimePoint>> bound_;  // id -> peer; mu_
  Counts counts_;                                                          // mu_
};

// The agent's MigrationTarget with checkpoint ids sent to the keeper (see
// the file comment). Borrows both.
class CheckpointRouter final : public MigrationTarget {
 public:
  CheckpointRouter(MigrationTarget& migrations, CheckpointKeeper& keeper)
      : migrations_(migrations), keeper_(keeper) {}
  PeerInfo Info() override { return migrations_.Info(); }
  Status Prepare(const MigrationOffer& offer) override {
    return IsCheckpointId(offer.id) ? keeper_.Prepare(offer) : migrations_.Prepare(offer);
  }
  StatusOr<Landing> BeginReceive(const std::string& id) override { return To(id).BeginReceive(id); }
  Status EndReceive(const std::string& id, const Status& result,
                    const TransferStats& stats) override {
    return To(id).EndReceive(id, result, stats);
  }
  StatusOr<RestoreReport> Restore(const std::string& id) override { return To(id).Restore(id); }
  StatusOr<TargetPhase> Commit(const std::string& id) override { return To(id).Commit(id); }
  StatusOr<TargetPhase> Abort(const std::string& id) override { return To(id).Abort(id); }
  StatusOr<TargetPhase> Query(const std::string& id) override { return To(id).Query(id); }
  StreamLimits ReceiveLimits(const std::string& id) override { return To(id).ReceiveLimits(id); }

 private:
  MigrationTarget& To(const std::string& id) {
    return IsCheckpointId(id) ? static_cast<MigrationTarget&>(keeper_) : migrations_;
  }
  MigrationTarget& migrations_;
  CheckpointKeeper& keeper_;
};

// PeerAuthorizer with checkpoint ids sent to the keeper and the others to
// `migrations` (null: allowed, as a standalone agent's). Borrows both.
class CheckpointPeerAuthorizer final : public PeerAuthorizer {
 public:
  CheckpointPeerAuthorizer(PeerAuthorizer* migrations, CheckpointKeeper& keeper)
      : migrations_(migrations), keeper_(keeper) {}
  Status AllowPeer(const std::string& peer_node, const std::string& id) override {
    if (IsCheckpointId(id)) return keeper_.AllowPeer(peer_node, id);
    return migrations_ != nullptr ? migrations_->AllowPeer(peer_node, id) : Status::Ok();
  }

 private:
  PeerAuthorizer* migrations_;
  CheckpointKeeper& keeper_;
};

}  // namespace kmosix::agent
