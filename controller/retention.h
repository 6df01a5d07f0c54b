// Keeping the controller's store bounded: retention of finished migration
// records (migrations/<id>). Run by the leading controller from its work
// queue (the "retention" item, every RetentionOptions::interval); it is
// level-based and idempotent, so a
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
// Thread-safety: the plan is a pure function; TrimMigrations is stateless.
// Errors: store errors as the store returns them
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

}  // namespace kmosix::controller
