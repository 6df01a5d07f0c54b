// The keeper's store of periodic checkpoints (restartPolicy FromCheckpoint,
// issue 13): the checkpoints other nodes streamed to this node, on its disk.
//
// Layout under root (a private directory):
//   <workload>/<id>/meta.json   what it is (StoredCheckpoint), written last
//   <workload>/<id>/criu/       CRIU images
//   <workload>/<id>/rootfs/     the writable layer as of the dump
//   <workload>/<id>/log         the log's prefix (optional)
//   <workload>/.in-<id>/        a checkpoint still arriving
// A checkpoint lands in .in-<id> (BeginIncoming), and only once its stream
// verified (the decoder's checksums and end record) is its meta.json written
// (fsynced) and the directory renamed to <id> (Commit): a <id> directory is
// always complete, and a crash leaves at most an .in- directory, which Open
// removes. Commit then deletes the workload's older checkpoints except the
// ones the caller protects (the one etcd's record still names, one a
// restore is asked for): the old one goes only after the new one is in place.
//
// Ownership: owns the files under root. Thread-safety: all methods are safe
// to call concurrently (one mutex); a checkpoint Pin()ned (being restored
// from) is never deleted until Unpin.
// Errors: kInvalid for a bad workload name or id (ValidateName), kConflict
// for an id that exists or is arriving, kNotFound for an unknown one,
// kFailed for local I/O (the errno text).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kmosix/checkpoint.h"
#include "kmosix/status.h"

namespace kmosix {

struct StoredCheckpoint {
  std::string workload;
  std::string id;
  std::string source;     // the node that sent it
  int64_t epoch = 0;      // the owner's epoch etcd named when it was offered
  int64_t taken_ms = 0;   // when the source dumped it (as the source said; 0: unknown)
  int64_t stored_ms = 0;  // when it was complete here
  uint64_t bytes = 0;     // payload bytes
  uint64_t files = 0;
  std::string dir;  // <root>/<workload>/<id> (not in meta.json)
  bool operator==(const StoredCheckpoint&) const = default;
};

class CheckpointStore {
 public:
  explicit CheckpointStore(std::string root) : root_(std::move(root)) {}

  // Makes root (private to this user) and removes what a crash left: .in-
  // directories, and <id> directories without a readable meta.json.
  Status Open();
  const std::string& root() const { return root_; }

  // Makes <workload>/.in-<id>/ (empty) and says where each section lands:
  // "criu" (and "criu-pages"), "rootfs", "log".
  StatusOr<Landing> BeginIncoming(const std::string& workload, const std::string& id);
  // The arrival is complete and verified: writes meta.json, renames it into
  // place, then deletes the workload's other checkpoints except `protect`
  // (ids) and pinned ones. meta.workload and meta.id name the arrival.
  Status Commit(StoredCheckpoint meta, const std::set<std::string>& protect);
  // Drops an arrival (idempotent).
  void Abort(const std::string& workload, const std::string& id);

  // Complete checkpoints of `workload`, oldest stored first.
  std::vector<StoredCheckpoint> List(const std::string& workload);
  // Workloads with at least one complete checkpoint or arrival, sorted.
  std::vector<std::string> Workloads();
  std::optional<StoredCheckpoint> Find(const std::string& workload, const std::string& id);
  // Deletes one checkpoint (not a pinned one: kConflict). Ok if missing.
  Status Remove(const std::string& workload, const std::string& id);
  // Sections to read a stored checkpoint back (CopySections to a landing).
  static std::vector<Section> SectionsOf(const StoredCheckpoint& c);

  // A restore reads it: never deleted until Unpin.
  void Pin(const std::string& workload, const std::string& id);
  void Unpin(const std::string& workload, const std::string& id);

 private:
  std::string Dir(const std::string& workload) const { return root_ + "/" + workload; }
  std::optional<StoredCheckpoint> ReadMeta(const std::string& workload, const std::string& id);
  Status RemoveLocked(const std::string& workload, const std::string& id);

  const std::string root_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>, int> pins_;  // mu_
};

// meta.json codec (strict; never throws).
std::string StoredCheckpointToJson(const StoredCheckpoint& c);
StatusOr<StoredCheckpoint> StoredCheckpointFromJson(std::string_view text);

}  // namespace kmosix
