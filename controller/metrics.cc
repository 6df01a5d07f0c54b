#include "controller/metrics.h"

#include <prometheus/text_serializer.h>

namespace kmosix::controller {

ControllerMetrics::ControllerMetrics(const std::string& identity)
    : registry_(std::make_shared<prometheus::Registry>()),
      leader_(prometheus::BuildGauge()
                  .Name("kmosix_controller_leader")
                  .Help("1 while this replica leads")
                  .Labels({{"identity", identity}})
                  .Register(*registry_)
                  .Add({})),
      round_(prometheus::BuildHistogram()
                 .Name("kmosix_balance_round_seconds")
                 .Help("Time of one balancing round (snapshot, policy, orders)")
                 .Register(*registry_)
                 .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1,
                                                                  0.5, 1})),
      ordered_(prometheus::BuildCounter()
                   .Name("kmosix_migrations_ordered_total")
                   .Help("Migration orders written, by who asked")
                   .Register(*registry_)),
      placements_(prometheus::BuildCounter()
                      .Name("kmosix_placements_total")
                      .Help("Workloads placed on a node")
                      .Register(*registry_)
                      .Add({})),
      reconciles_(prometheus::BuildCounter()
                      .Name("kmosix_reconciles_total")
                      .Help("Reconciles by kind and outcome")
                      .Register(*registry_)),
      grants_(prometheus::BuildCounter()
                  .Name("kmosix_controller_grants_total")
                  .Help("etcd node write grants (action grant) and revokes (action revoke) "
                        "attempted, by outcome")
                  .Register(*registry_)) {}

void ControllerMetrics::OnLeadership(bool leader) { leader_.Set(leader ? 1 : 0); }
void ControllerMetrics::OnBalanceRound(double seconds, size_t) { round_.Observe(seconds); }
void ControllerMetrics::OnMigrationOrdered(const std::string& requested_by) {
  ordered_.Add({{"requested_by", requested_by}}).Increment();
}
void ControllerMetrics::OnPlacement() { placements_.Increment(); }
void ControllerMetrics::OnReconcile(const std::string& kind, bool ok) {
  reconciles_.Add({{"kind", kind}, {"outcome", ok ? "ok" : "retry"}}).Increment();
}

void ControllerMetrics::OnGrant(const std::string& action, bool ok) {
  grants_.Add({{"action", action}, {"outcome", ok ? "ok" : "error"}}).Increment();
}

std::string ControllerMetrics::Render() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

}  // namespace kmosix::controller
