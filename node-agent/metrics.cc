#include "metrics.h"

#include <prometheus/text_serializer.h>

namespace kmosix::agent {

namespace {
const prometheus::Histogram::BucketBoundaries kSecondsBuckets = {0.1, 0.25, 0.5, 1,  2, 3,
                                                                 5,   10,   20,  40, 80};
}

AgentMetrics::AgentMetrics(const std::string& node)
    : registry_(std::make_shared<prometheus::Registry>()),
      migrations_(prometheus::BuildCounter()
                      .Name("kmosix_migrations_total")
                      .Help("Migrations sent by this agent, by outcome")
                      .Labels({{"node", node}})
                      .Register(*registry_)),
      bytes_(prometheus::BuildCounter()
                 .Name("kmosix_migration_bytes_total")
                 .Help("Bytes streamed to target agents")
                 .Labels({{"node", node}})
                 .Register(*registry_)
                 .Add({})),
      downtime_(prometheus::BuildHistogram()
                    .Name("kmosix_migration_downtime_seconds")
                    .Help("Time a migrated workload was frozen")
                    .Labels({{"node", node}})
                    .Register(*registry_)
                    .Add({}, kSecondsBuckets)),
      total_(prometheus::BuildHistogram()
                 .Name("kmosix_migration_duration_seconds")
                 .Help("Total time of a migration, request to end")
                 .Labels({{"node", node}})
                 .Register(*registry_)
                 .Add({}, kSecondsBuckets)),
      workloads_(prometheus::BuildGauge()
                     .Name("kmosix_workloads")
                     .Help("Workloads owned by this node")
                     .Labels({{"node", node}})
                     .Register(*registry_)
                     .Add({})) {
  for (const char* outcome : {"Succeeded", "RolledBack", "Failed"}) {
    migrations_.Add({{"outcome", outcome}});
  }
}

void AgentMetrics::OnMigrationFinished(const MigrationReport& r) {
  migrations_.Add({{"outcome", std::string(MigrationPhaseName(r.phase))}}).Increment();
  bytes_.Increment(static_cast<double>(r.bytes));
  if (r.phase != MigrationPhase::kFailed) downtime_.Observe(r.timings.downtime);
  total_.Observe(r.timings.total);
}

std::string AgentMetrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace kmosix::agent
