// Prometheus metrics of the agent: migrations by outcome, bytes moved, the
// downtime histogram, workloads (and those fenced). Rendered in the text
// exposition format.
// Thread-safety: all methods are thread-safe (prometheus-cpp metrics are).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "agent.h"
#include "kmosix/intake_limits.h"
#include "transport_http/listener_limits.h"

namespace kmosix::agent {

class AgentMetrics final : public MigrationObserver {
 public:
  explicit AgentMetrics(const std::string& node);
  void OnMigrationFinished(const MigrationReport& report) override;
  void SetWorkloads(double n) { workloads_.Set(n); }
  // Managed workloads paused here because the node's lease was not renewed
  // (state "fenced"): kmosix_agent_fenced_workloads.
  void SetFencedWorkloads(double n) { fenced_.Set(n); }
  std::string Render() const;
  // The registry Render reads, for families other parts of the agent keep
  // (e.g. CheckpointMetrics).
  prometheus::Registry& Registry() { return *registry_; }

  // Bounded intake (issue 11): where Render reads the limits' counts. Each
  // source is optional.
  struct IntakeSources {
    std::function<IntakeSnapshot()> intake;
    IntakeOptions limits;
    std::shared_ptr<ListenerStats> http;  // the peer/REST listener
    int data_max_connections = 0;
    std::function<int()> data_active;
    std::function<uint64_t()> data_refused;
    // Data-channel TLS handshakes that failed (no, bad or foreign client
    // certificate): kmosix_agent_denied_total{surface="data",reason="handshake"}.
    std::function<uint64_t()> data_handshake_failures;
  };
  void SetIntakeSources(IntakeSources sources);

 private:
  void CollectIntake() const;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& migrations_;
  prometheus::Counter& bytes_;
  prometheus::Histogram& downtime_;
  prometheus::Histogram& total_;
  prometheus::Gauge& workloads_;
  prometheus::Gauge& fenced_;

  mutable std::mutex intake_mu_;
  IntakeSources sources_;
  prometheus::Family<prometheus::Gauge>& intake_gauges_;
  prometheus::Family<prometheus::Counter>& intake_refused_;
  prometheus::Family<prometheus::Gauge>& listener_gauges_;
  prometheus::Family<prometheus::Counter>& listener_counters_;
  prometheus::Family<prometheus::Counter>& denied_;

 public:
  // A request or connection refused by authentication or authorization
  // (kmosix_agent_denied_total{surface,reason}). Thread-safe.
  void Denied(const std::string& surface, const std::string& reason) {
    denied_.Add({{"surface", surface}, {"reason", reason}}).Increment();
  }
};

}  // namespace kmosix::agent
