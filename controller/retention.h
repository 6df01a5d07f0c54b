// Keeping the controller's store bounded: retention of finished migration
// records (migrations/<id>) and periodic compaction of the store's history.
// Run by the leading controller from its work queue ("retention" and
// "compact" items, every RetentionOptions::interval and
// CompactionOptions::interval); both are level-based and idempotent, so a
// controller killed at any line leaves nothing half done that the next
// leader does not finish.
//
// Retention (PlanMigrationRetention, then TrimMigrations): per workload, at
// most `keep_finished` finished records (Succeeded, RolledBack, Failed) and
// none finished more than `finished_ttl` ago; the oldest (by finishedMs) go
// first. Never removed: a record in flight; a record its workload's status
// still names (status.migration: the agent has not yet closed it); the newest
// finished record of a workload that exists (kmosixctl and the Kubernetes
// bridge show it), whatever its age; a record finished less than `min_age`
// ago (watchers, the bridge, get to see its final phase). A deleted
// workload's records go by count and age alike. Each delete re-reads the
// record, checks it is still the finished record planned, and is a
// transaction conditional on its mod revision (and on the leader's fence):
// a record that changed meanwhile is left for the next pass.
//
// Compaction (Compactor): the store's history (old revisions, deleted keys)
// is dropped periodically, like the Kubernetes apiserver does: every Step()
// samples the store's revision; it compacts to the newest sample taken at
// least `retain` ago, and never within `min_revisions` of the head. A watcher
// further behind than that relists (cluster::PrefixCache does on kConflict
// "compacted"). Its samples live in memory: a new leader waits `retain`
// before its first compaction. A revision the store already compacted
// (etcd's own --auto-compaction) is not an error.
//
// Thread-safety: the plan is a pure function; TrimMigrations is stateless;
// Compactor is thread-safe. Errors: store errors as the store returns them
// (kRetry: unreachable); kConflict "no longer the leader" when the fence
// failed; nothing throws.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "api/types.h"
#include "cluster/records.h"
#include "kmosix/clock.h"
#include "kmosix/state_store.h"

namespace kmosix::controller {

struct RetentionOptions {
  // Finished records kept per workload; 0: no limit by count.
  size_t keep_finished = 20;
  // Finished records older than this go; 0: no limit by age.
  Clock::Duration finished_ttl = std::chrono::hours(24 * 7);
  // No finished record younger than this goes (by count or age).
  Clock::Duration min_age = std::chrono::minutes(10);
  // How often the leader looks; 0: never (records kept forever).
  Clock::Duration interval = std::chrono::minutes(1);
  // Deletes per pass (the rest wait for the next pass, queued at once).
  size_t max_deletes = 500;
};

// One record to delete, as the plan saw it.
struct RetentionDelete {
  std::string id;
  std::string workload;
  int64_t finished_ms = 0;
  std::string why;  // "count" or "age"
};

// The finished records to delete now, oldest first (pure).
std::vector<RetentionDelete> PlanMigrationRetention(
    const std::map<std::string, api::Migration>& migrations,
    const std::map<std::string, api::Workload>& workloads, int64_t now_ms,
    const RetentionOptions& options);

struct TrimResult {
  size_t deleted = 0;
  size_t skipped = 0;  // changed or gone since planned
};

// Deletes the planned records (at most `max_deletes`), each after a fresh
// read, with a CAS on its mod revision and `fence` (the leader term's).
StatusOr<TrimResult> TrimMigrations(StateStore& store, const cluster::KeyLayout& keys,
                                    const std::vector<RetentionDelete>& plan,
                                    const std::optional<Compare>& fence, size_t max_deletes);

struct CompactionOptions {
  // How often the leader samples the revision and compacts; 0: never.
  Clock::Duration interval = std::chrono::minutes(5);
  // History kept at least this long.
  Clock::Duration retain = std::chrono::hours(1);
  // And at least this many revisions behind the head.
  int64_t min_revisions = 1000;
};

class Compactor {
 public:
  // `probe_key`: any key; reading it tells the store's revision.
  Compactor(StateStore& store, Clock& clock, CompactionOptions options, std::string probe_key);

  // Samples the revision now and compacts if a sample is old enough.
  // Returns the revision compacted to (0: nothing compacted this time).
  StatusOr<int64_t> Step();
  // Forgets the samples (a new leader term starts afresh).
  void Reset();
  // The newest revision compacted to by this compactor (0: none).
  int64_t compacted() const;

 private:
  StateStore& store_;
  Clock& clock_;
  CompactionOptions options_;
  std::string probe_key_;
  mutable std::mutex mu_;
  std::deque<std::pair<Clock::TimePoint, int64_t>> samples_;  // oldest first
  int64_t compacted_ = 0;
};

}  // namespace kmosix::controller
