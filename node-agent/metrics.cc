#include "metrics.h"

#include <prometheus/text_serializer.h>

#include <map>

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
                     .Add({})),
      fenced_(prometheus::BuildGauge()
                  .Name("kmosix_agent_fenced_workloads")
                  .Help("Managed workloads this agent froze because its node's lease was not "
                        "renewed in time (state fenced), until the cluster's record decides")
                  .Labels({{"node", node}})
                  .Register(*registry_)
                  .Add({})),
      intake_gauges_(prometheus::BuildGauge()
                         .Name("kmosix_intake")
                         .Help("Bounded intake of incoming migrations: value by quantity "
                               "(incoming, incoming_limit, prefault_bytes, prefault_budget_bytes, "
                               "stream_ceiling_files, stream_ceiling_bytes, "
                               "stream_ceiling_entries)")
                         .Labels({{"node", node}})
                         .Register(*registry_)),
      intake_refused_(prometheus::BuildCounter()
                          .Name("kmosix_intake_refused_total")
                          .Help("Incoming migrations refused or cut by the intake limits, by "
                                "reason (busy, offer_over_ceiling, stream_over_limits)")
                          .Labels({{"node", node}})
                          .Register(*registry_)),
      listener_gauges_(prometheus::BuildGauge()
                           .Name("kmosix_listener")
                           .Help("Listener caps and use, by listener (http, data) and quantity "
                                 "(threads, busy_threads, queued_connections, connections, "
                                 "connection_limit)")
                           .Labels({{"node", node}})
                           .Register(*registry_)),
      listener_counters_(prometheus::BuildCounter()
                             .Name("kmosix_listener_refused_total")
                             .Help("Connections and requests a listener held back or refused, "
                                   "by listener and reason (accept_wait, body_too_large, "
                                   "connections)")
                             .Labels({{"node", node}})
                             .Register(*registry_)),
      denied_(prometheus::BuildCounter()
                  .Name("kmosix_agent_denied_total")
                  .Help("Requests and connections refused by authentication or authorization, "
                        "by surface (rest, peer, debug, data) and reason")
                  .Labels({{"node", node}})
                  .Register(*registry_)) {
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

void AgentMetrics::SetIntakeSources(IntakeSources sources) {
  std::lock_guard lock(intake_mu_);
  sources_ = std::move(sources);
}

namespace {

// Raises a counter to `total` (the sources count; counters only go up).
void RaiseTo(prometheus::Counter& c, uint64_t total) {
  const double now = static_cast<double>(total);
  if (now > c.Value()) c.Increment(now - c.Value());
}

}  // namespace

void AgentMetrics::CollectIntake() const {
  std::lock_guard lock(intake_mu_);
  auto gauge = [](prometheus::Family<prometheus::Gauge>& f,
                  const std::map<std::string, std::string>& labels,
                  double v) { f.Add(labels).Set(v); };
  const IntakeSources& s = sources_;
  if (s.intake) {
    const IntakeSnapshot snap = s.intake();
    gauge(intake_gauges_, {{"quantity", "incoming"}}, snap.incoming);
    gauge(intake_gauges_, {{"quantity", "incoming_limit"}}, s.limits.max_incoming);
    gauge(intake_gauges_, {{"quantity", "prefault_bytes"}},
          static_cast<double>(snap.prefault_bytes));
    gauge(intake_gauges_, {{"quantity", "prefault_budget_bytes"}},
          static_cast<double>(s.limits.prefault_budget_bytes));
    gauge(intake_gauges_, {{"quantity", "stream_ceiling_files"}},
          static_cast<double>(s.limits.ceiling.files));
    gauge(intake_gauges_, {{"quantity", "stream_ceiling_bytes"}},
          static_cast<double>(s.limits.ceiling.bytes));
    gauge(intake_gauges_, {{"quantity", "stream_ceiling_entries"}},
          static_cast<double>(s.limits.ceiling.entries));
    RaiseTo(intake_refused_.Add({{"reason", "busy"}}), snap.refused_busy_total);
    RaiseTo(intake_refused_.Add({{"reason", "offer_over_ceiling"}}), snap.refused_offer_total);
    RaiseTo(intake_refused_.Add({{"reason", "stream_over_limits"}}), snap.streams_cut_total);
  }
  if (s.http) {
    const ListenerStats& h = *s.http;
    gauge(listener_gauges_, {{"listener", "http"}, {"quantity", "threads"}},
          static_cast<double>(h.threads.load()));
    gauge(listener_gauges_, {{"listener", "http"}, {"quantity", "busy_threads"}},
          static_cast<double>(h.busy.load()));
    gauge(listener_gauges_, {{"listener", "http"}, {"quantity", "queued_connections"}},
          static_cast<double>(h.queued.load()));
    RaiseTo(listener_counters_.Add({{"listener", "http"}, {"reason", "accept_wait"}}),
            h.accept_waits_total.load());
    RaiseTo(listener_counters_.Add({{"listener", "http"}, {"reason", "body_too_large"}}),
            h.bodies_refused_total.load());
  }
  if (s.data_active) {
    gauge(listener_gauges_, {{"listener", "data"}, {"quantity", "connections"}}, s.data_active());
    gauge(listener_gauges_, {{"listener", "data"}, {"quantity", "connection_limit"}},
          s.data_max_connections);
  }
  if (s.data_refused) {
    RaiseTo(listener_counters_.Add({{"listener", "data"}, {"reason", "connections"}}),
            s.data_refused());
  }
  if (s.data_handshake_failures) {
    RaiseTo(denied_.Add({{"surface", "data"}, {"reason", "handshake"}}),
            s.data_handshake_failures());
  }
}

std::string AgentMetrics::Render() const {
  CollectIntake();
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace kmosix::agent
