// Transport seam: the source agent's client for a target agent.
// The HTTP adapter (lib/transport_http) speaks the agent-to-agent protocol;
// unit tests use a fake.
//
// Ownership: the caller owns the transport. Thread-safety: all methods may be
// called concurrently. Errors: kRetry when the peer cannot be reached or
// timed out (outcome unknown), kConflict/kInvalid/kNotFound as the peer
// answered them, kFailed for a peer-side failure (e.g. restore failed) or a
// peer that is not a kmosix agent.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kmosix/checkpoint.h"
#include "kmosix/runtime.h"
#include "kmosix/status.h"

namespace kmosix {

struct PeerInfo {
  std::string node;
  std::string version;
};

// What the source offers the target before it freezes anything.
struct MigrationOffer {
  std::string id;
  std::string source_node;
  std::string source_url;
  ContainerSpec spec;  // log_path is the target's to choose
  // The workload's life so far, kept across moves.
  int64_t created_ms = 0;            // when it was first started, anywhere
  std::vector<std::string> history;  // ids of its earlier migrations, oldest first
  // Its processes' memory on the source when offered (0: unknown), a hint
  // for the target (CheckpointEngine::MemoryBytes).
  uint64_t memory_bytes = 0;
  // Upper bounds of the stream the source will send (0 fields: not
  // declared). The target refuses an offer over its own ceiling and cuts a
  // stream that goes beyond them (the migration then rolls back).
  StreamLimits stream = {};
};

struct TransferStats {
  uint64_t bytes = 0;  // payload bytes (file contents)
  uint64_t files = 0;
  double seconds = 0;
};

struct RestoreReport {
  uint32_t pid = 0;
  double seconds = 0;
};

// The target's record of a migration: the target decides commit vs abort,
// under one lock, so that exactly one of them ever happens.
enum class TargetPhase {
  kUnknown,
  kPrepared,
  kReceiving,
  kReceived,
  kRestoring,
  kRestored,
  kCommitted,
  kAborted
};
std::string_view TargetPhaseName(TargetPhase p);
TargetPhase ParseTargetPhase(std::string_view s);

class Transport {
 public:
  virtual ~Transport() = default;
  // Checks that `target` is a kmosix agent and returns who it is.
  virtual StatusOr<PeerInfo> Hello(const std::string& target) = 0;
  // Target checks the image and the name, creates the container, reserves.
  virtual Status Prepare(const std::string& target, const MigrationOffer& offer) = 0;
  // Streams every section, with a SHA-256 per file, to the prepared target.
  virtual StatusOr<TransferStats> Send(const std::string& target, const std::string& id,
                                       const std::vector<Section>& sections) = 0;
  // Target restores and confirms the task is running (phase Restored).
  virtual StatusOr<RestoreReport> Restore(const std::string& target, const std::string& id) = 0;
  // Target makes the restored copy the owner, unless it already aborted.
  // Returns the target's final phase: kCommitted or kAborted.
  virtual StatusOr<TargetPhase> Commit(const std::string& target, const std::string& id) = 0;
  // Target kills and removes its copy, unless already committed.
  // Returns kAborted or kCommitted.
  virtual StatusOr<TargetPhase> Abort(const std::string& target, const std::string& id) = 0;
  // The target's phase for id; kUnknown when it never heard of it.
  virtual StatusOr<TargetPhase> Query(const std::string& target, const std::string& id) = 0;
};

}  // namespace kmosix

namespace kmosix {

// The target side of the agent-to-agent protocol, implemented by the agent
// and served by the transport's server half. Same error contract as Transport.
// Thread-safety: called from server threads concurrently.
class MigrationTarget {
 public:
  virtual ~MigrationTarget() = default;
  virtual PeerInfo Info() = 0;
  virtual Status Prepare(const MigrationOffer& offer) = 0;
  // Moves a prepared migration to Receiving and says where sections land.
  virtual StatusOr<Landing> BeginReceive(const std::string& id) = 0;
  // Ends a receive: ok moves to Received; an error (cut stream, bad checksum,
  // bad entry) aborts the migration and removes what was written.
  virtual Status EndReceive(const std::string& id, const Status& result,
                            const TransferStats& stats) = 0;
  virtual StatusOr<RestoreReport> Restore(const std::string& id) = 0;
  virtual StatusOr<TargetPhase> Commit(const std::string& id) = 0;
  virtual StatusOr<TargetPhase> Abort(const std::string& id) = 0;
  virtual StatusOr<TargetPhase> Query(const std::string& id) = 0;
  // What the stream of a migration in Receiving may carry at most (the
  // receiver cuts it beyond that); 0 fields: no bound. Default: none.
  virtual StreamLimits ReceiveLimits(const std::string& id) {
    (void)id;
    return {};
  }
};

}  // namespace kmosix
