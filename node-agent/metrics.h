// Prometheus metrics of the agent: migrations by outcome, bytes moved, the
// downtime histogram, workloads. Rendered in the text exposition format.
// Thread-safety: all methods are thread-safe (prometheus-cpp metrics are).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "agent.h"

namespace kmosix::agent {

class AgentMetrics final : public MigrationObserver {
 public:
  explicit AgentMetrics(const std::string& node);
  void OnMigrationFinished(const MigrationReport& report) override;
  void SetWorkloads(double n) { workloads_.Set(n); }
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& migrations_;
  prometheus::Counter& bytes_;
  prometheus::Histogram& downtime_;
  prometheus::Histogram& total_;
  prometheus::Gauge& workloads_;
};

}  // namespace kmosix::agent
