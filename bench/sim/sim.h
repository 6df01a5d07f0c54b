// The balancing simulator (issue 15): a discrete-event model of a cluster
// whose placement and balancing decisions are made by the product's own
// policy code (controller/policy.h: Place and Balance, linked, not copied).
//
// Owns: the synthetic trace (nodes, bursty arrivals with heavy-tailed work),
// the event core (EventQueue: simulated time only, no sleeps), the processor
// sharing model of a node, the four strategies compared on one trace
// (placement, kmosix, evict-restart, ideal) and their metrics.
//
// Model (see /work/notes/h6-simulator.md for the why):
//  - A workload asks for `cpu` cores and has `work` CPU-seconds to do (at
//    speed 1). A node of capacity c and speed s whose workloads ask D cores in
//    all runs each at cpu * min(1, c / D) cores, i.e. it does
//    cpu * s * min(1, c / D) work per second (processor sharing, weighted by
//    demand). Slowdown = time in system / (work / cpu): 1 on an idle speed-1
//    node.
//  - Phases: a workload alternates busy (it asks `cpu`) and quiet (it asks
//    quiet_fraction x cpu) phases, each of an exponential length of mean
//    phase_mean_s at full speed (drawn per workload from its own seed, so
//    every strategy sees the same phases; measured in work, so the sequence
//    does not depend on where it runs). The reference time is then the sum of
//    each phase's work / its ask.
//  - A migration (kmosix) freezes the workload for the measured stop-and-copy
//    downtime, downtime_base_s + downtime_per_gib_s * memory, then it runs on
//    the target. An eviction (evict-restart) discards the work done and
//    restarts it elsewhere after restart_s.
//  - The policy sees what the controller sees: per workload the cores it
//    actually used (usage, capped by processor sharing), or max(usage, ask)
//    during its first 3 s on a node (the controller's settle window).
//
// Thread-safety: none shared; Simulate() on distinct inputs may run concurrently.
// Errors: configuration errors are kInvalid Status values; Simulate() itself
// cannot fail (a workload no node can hold waits and retries).
#pragma once

#include <cstdint>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "controller/policy.h"
#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::sim {

// A seeded Random (mt19937_64) for the policy's tie-breaking and the trace.
class SeededRandom final : public Random {
 public:
  explicit SeededRandom(uint64_t seed) : engine_(seed) {}
  uint64_t Next() override { return engine_(); }
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double Exponential(double mean);

 private:
  std::mt19937_64 engine_;
};

// ---- the event core -------------------------------------------------------
// Events in time order; equal times in insertion order (FIFO). Cancelled
// events are not removed: the owner keeps a version and ignores stale ones.
struct Event {
  double time = 0;
  uint64_t seq = 0;
  int kind = 0;
  int64_t id = 0;
  uint64_t version = 0;
};
class EventQueue {
 public:
  void Push(double time, int kind, int64_t id, uint64_t version = 0);
  bool Empty() const { return heap_.empty(); }
  Event Pop();
  size_t Size() const { return heap_.size(); }

 private:
  struct Later {
    bool operator()(const Event& a, const Event& b) const {
      return a.time != b.time ? a.time > b.time : a.seq > b.seq;
    }
  };
  std::priority_queue<Event, std::vector<Event>, Later> heap_;
  uint64_t seq_ = 0;
};

// ---- the trace ------------------------------------------------------------
struct NodeSpec {
  double capacity = 4;  // cores
  double speed = 1;
  uint64_t memory_bytes = 64ull << 30;
};
struct Arrival {
  double time = 0;  // s
  double cpu = 1;   // cores asked
  double work = 0;  // CPU-seconds at speed 1
  uint64_t memory_bytes = 0;
};
struct Phases {
  double mean_s = 0;  // 0: no phases, a workload asks `cpu` all its life
  double quiet_fraction = 0.2;
  uint64_t seed = 0;
};
struct Trace {
  std::vector<NodeSpec> nodes;
  Phases phases;
  std::vector<Arrival> arrivals;  // by time
  double horizon_s = 0;           // arrivals stop here; the run drains after
  double capacity = 0;            // sum of capacity * speed
};

struct TraceConfig {
  int nodes = 8;
  double load = 0.8;  // offered: arrival rate * E[work] / sum(capacity * speed)
  double hours = 1;
  // Nodes: a fraction are big (8 cores, else 4) and a fraction fast (1.5x).
  double big_fraction = 0.25;
  double fast_fraction = 0.2;
  // MOSIX-like setups: every node this many cores (0: the 4/8 mix above),
  // every workload asking 1 core (false: the mix of MeanCpu()).
  double node_cores = 0;
  bool unit_cpu = false;
  // Work (CPU-seconds): bounded Pareto, P(W > w) ~ w^-alpha on [min, max]
  // (Harchol-Balter & Downey: alpha about 1 for lifetimes over 1 s).
  double work_alpha = 1.0;
  double work_min_s = 30;
  double work_max_s = 4 * 3600;
  // Memory: log-uniform on [min, max] MiB.
  double memory_min_mib = 32;
  double memory_max_mib = 2048;
  // Bursts: a two-state modulated Poisson process, rate x burst_high in the
  // on state and x burst_low in the off state, each lasting an exponential
  // time of mean burst_mean_s (equal means, so the average rate is kept when
  // high + low = 2).
  double burst_high = 1.6;
  double burst_low = 0.4;
  double burst_mean_s = 300;
  // Phases of CPU use (see the model above); phase_mean_s 0 turns them off.
  double phase_mean_s = 120;
  double phase_quiet_fraction = 0.2;
};
Status Validate(const TraceConfig& config);
// The mean of the bounded Pareto of the config (used to set the arrival rate).
double MeanWork(const TraceConfig& config);
double MeanCpu(const TraceConfig& config);
Trace MakeTrace(const TraceConfig& config, uint64_t seed);

// Arrivals as CSV: a header `time_s,cpu,work_cpu_s,memory_mib`, then one line
// per workload (time in s from the start, cores asked, CPU-seconds of work,
// MiB); `#` lines are comments. WriteTrace writes that form.
std::string WriteTraceCsv(const Trace& trace);
// The arrivals of `csv` (sorted by time) on the nodes and phases of
// MakeTrace(config, seed); the horizon is the last arrival (at least 1 s).
// kInvalid with the line number on a malformed line.
StatusOr<Trace> ReadTraceCsv(const std::string& csv, const TraceConfig& config, uint64_t seed);

// ---- strategies and their results -----------------------------------------
enum class Strategy { kPlacement, kKmosix, kEvictRestart, kIdeal };
const char* Name(Strategy s);
inline constexpr Strategy kAllStrategies[] = {Strategy::kPlacement, Strategy::kKmosix,
                                              Strategy::kEvictRestart, Strategy::kIdeal};

struct SimConfig {
  uint64_t seed = 1;                 // the policy's tie-breaking
  controller::PolicyConfig policy;   // today's defaults
  double tick_s = 2;                 // controller balance interval
  double settle_s = 3;               // the controller's kSettleMs
  double downtime_base_s = 0.55;     // stop-and-copy: ~0.6 s at 48 MiB ...
  double downtime_per_gib_s = 1.75;  // ... ~2.3 s at 1 GiB (README, migration bench)
  double pingpong_window_s = 60;
  // What the policy is told a workload uses: false (the product) its usage,
  // capped by processor sharing; true its ask (an oracle of demand, to see
  // what the capped signal costs).
  bool signal_demand = false;
  // evict-restart (descheduler LowNodeUtilization-like, on requests): every
  // evict_interval_s, nodes asking more than evict_high x capacity evict
  // their youngest workloads while some node asks less than evict_low x its
  // capacity; the scheduler (Place) restarts them after restart_s.
  double evict_interval_s = 60;
  double evict_high = 1.0;
  double evict_low = 0.6;
  double restart_s = 1;
  // Drain cap: the run stops at horizon * drain_factor even if work remains
  // (unfinished workloads then count with the time they have spent so far).
  double drain_factor = 20;
};

struct Result {
  Strategy strategy = Strategy::kPlacement;
  int64_t workloads = 0;
  int64_t unfinished = 0;    // at the drain cap
  double mean_slowdown = 0;  // time in system / (time on an idle speed-1 node)
  double p99_slowdown = 0;
  double work_lost = 0;                // CPU-seconds lost / CPU-seconds of the trace
  double migrations_per_workload = 0;  // migrations or evictions
  double pingpong_per_workload = 0;    // moves back to a node left < window ago
  double utilisation = 0;              // work done in [0, horizon] / (capacity * horizon)
  double mean_in_system_per_node = 0;  // workloads in the system, time-averaged
  int64_t policy_calls = 0;            // Balance rounds and Place calls
  double policy_seconds = 0;           // wall time inside Balance + Place
  int64_t balance_calls = 0;           // of which Balance rounds
  double balance_seconds = 0;          // and their wall time
  double balance_max_seconds = 0;      // slowest Balance round
  double wall_seconds = 0;
};
Result Simulate(const Trace& trace, Strategy strategy, const SimConfig& config);

}  // namespace kmosix::sim
