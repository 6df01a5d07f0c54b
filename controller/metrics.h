// Prometheus metrics of the controller: leadership, balancing rounds,
// migrations ordered, placements, reconciles by kind and outcome, etcd node
// grants and revokes by outcome.
// Thread-safety: all methods are thread-safe (prometheus-cpp metrics are).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "controller/controller.h"

namespace kmosix::controller {

class ControllerMetrics final : public ControllerObserver {
 public:
  explicit ControllerMetrics(const std::string& identity);
  void OnLeadership(bool leader) override;
  void OnBalanceRound(double seconds, size_t moves) override;
  void OnMigrationOrdered(const std::string& requested_by) override;
  void OnPlacement() override;
  void OnReconcile(const std::string& kind, bool ok) override;
  void OnGrant(const std::string& action, bool ok) override;
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge& leader_;
  prometheus::Histogram& round_;
  prometheus::Family<prometheus::Counter>& ordered_;
  prometheus::Counter& placements_;
  prometheus::Family<prometheus::Counter>& reconciles_;
  prometheus::Family<prometheus::Counter>& grants_;
};

}  // namespace kmosix::controller
