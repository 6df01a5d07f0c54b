// What a source agent writes when a migration ends, as the bridge's tests
// play it on the workload and migration records (unit tests on the fake
// store, integration tests on a real etcd). Header-only; pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "api/types.h"

namespace kmosix::testing {

// Succeeded: ownership moved to the target (epoch bumped), the report says
// `downtime` seconds and 64 MiB.
inline void SucceedRecords(api::Workload& w, api::Migration& m, int64_t now_ms, double downtime) {
  w.status.node = m.target;
  w.status.epoch += 1;
  w.status.phase = api::WorkloadPhase::kRunning;
  w.status.migration.clear();
  w.status.migrations.push_back(m.id);
  w.status.started_ms = now_ms;
  m.phase = api::MigrationPhase::kSucceeded;
  m.finished_ms = now_ms;
  m.report = api::MigrationReport{};
  m.report->timings.downtime = downtime;
  m.report->bytes = 64 << 20;
}

// Rolled back before the commit point after a cancel: the source runs it again.
inline void RollBackRecords(api::Workload& w, api::Migration& m, int64_t now_ms) {
  m.phase = api::MigrationPhase::kRolledBack;
  m.error = "cancelled by user";
  m.finished_ms = now_ms;
  w.status.phase = api::WorkloadPhase::kRunning;
  w.status.migration.clear();
}

}  // namespace kmosix::testing
