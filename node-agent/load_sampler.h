// Load sampling for the node agent: what this node offers and uses (CPU,
// run queue, memory, pressure, per-workload usage), published to etcd as a
// api::NodeLoad.
//
// Two samplers behind one seam:
//   HostLoadSampler   - a real node: /proc/stat, /proc/loadavg, /proc/meminfo,
//                       /proc/pressure/{cpu,memory}; capacity = online CPUs
//                       (/sys/devices/system/cpu/online) or a declared figure.
//   CgroupLoadSampler - the local cluster, where every "node" shares one
//                       kernel: the node's own cgroup subtree (its containerd
//                       cgroup parent) measured against declared capacities.
// Both read everything below a configurable `root` ("/" in production, a temp
// dir with fake files in tests).
//
// Cgroups. A workload <name> of a node with cgroup parent <parent> lives in
// <parent>/<name> (containerd cgroupsPath). The hierarchy version is detected
// at every sample: cgroup v2 if <root>/sys/fs/cgroup/cgroup.controllers exists,
// else v1.
//   v2: CPU from cpu.stat `usage_usec`; memory = memory.current minus
//       memory.stat `inactive_file`; PSI from the parent's cpu.pressure and
//       memory.pressure.
//   v1: CPU from cpuacct/<path>/cpuacct.usage (ns); memory =
//       memory/<path>/memory.usage_in_bytes minus memory.stat
//       `total_inactive_file`. v1 has no per-cgroup PSI; if the host runs the
//       hybrid layout (cgroup2 mounted at /sys/fs/cgroup/unified, where runc
//       also places each container) and <parent> exists there, PSI is read
//       from its cpu.pressure/memory.pressure. Otherwise psi_cpu_some10 is
//       nullopt and psi_memory_some10 is the host's /proc/pressure/memory
//       (memory is one shared pool; CPU pressure of the whole host would
//       mislead).
// A listed workload whose cgroup does not exist (yet, or any more) is reported
// with zeros, as is a workload name that is not a plain path segment. A
// missing parent cgroup means nothing runs there yet: zero usage.
//
// Rates and smoothing. CPU figures are rates over the interval between two
// samples, measured with the injected Clock (host cpu_used: busy share of the
// /proc/stat "cpu" line deltas times the number of CPUs counted there), then
// smoothed with an EWMA: alpha = 1 - exp(-dt / time_constant). The first
// measured rate seeds the average. The FIRST sample of a sampler therefore
// reports 0 for every CPU rate (`rates_valid` false): take one sample at
// start-up and publish from the second on. The same holds per workload: a
// workload seen for the first time (or again after vanishing) reports 0 CPU
// until its second sample; a workload no longer listed drops out. A counter
// that goes backwards (cgroup recreated) restarts that workload's rate.
//
// Errors (never thrown): an unreadable required file -> kFailed naming the
// path (e.g. "/proc/stat: No such file or directory"); malformed content ->
// kFailed naming the file; optional files (PSI, cpu online list, memory.stat,
// cgroups) absent -> nullopt/zeros, present but malformed -> kFailed. Bad
// options -> kInvalid from Create(). No content, however hostile, crashes.
//
// Ownership: a sampler borrows the Clock (must outlive it).
// Thread-safety: Sample() may be called from any thread; calls are serialised
// by an internal mutex. MateriallyChanged and FillNodeLoad are pure.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cluster/records.h"
#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::agent {

using WorkloadUsage = api::WorkloadUsage;  // {cpu cores smoothed, memory bytes}

struct LoadSample {
  std::string source;       // "host" or "cgroup"
  double cpu_capacity = 0;  // cores this node offers
  double cpu_used = 0;      // cores in use, smoothed
  double run_queue = 0;     // host: 1-min loadavg; cgroup: estimate (see CgroupLoadSampler)
  uint64_t memory_capacity_bytes = 0;
  uint64_t memory_available_bytes = 0;
  std::optional<double> psi_cpu_some10;            // % of time, last 10 s
  std::optional<double> psi_memory_some10;         // nullopt: not available
  std::map<std::string, WorkloadUsage> workloads;  // every listed workload
  int64_t sampled_ms = 0;                          // wall clock of the sample
  bool rates_valid = false;  // false on a sampler's first sample (CPU rates are 0)
};

// Copies the measured figures into `out`: load_source, cpu_capacity, cpu_used,
// run_queue, memory, PSI, workloads and updated_ms (= sampled_ms). node, url
// and speed are left as they are.
void FillNodeLoad(const LoadSample& sample, api::NodeLoad& out);

// When a new sample is worth publishing (the agent also publishes a
// heartbeat every N seconds regardless).
struct ChangeThresholds {
  double cpu_fraction = 0.05;           // |d cpu_used| >= this * cpu_capacity
  double memory_fraction = 0.05;        // |d memory_available| >= this * capacity ...
  uint64_t memory_bytes = 64ull << 20;  // ... or >= this many bytes (either one)
  double workload_cpu = 0.1;            // |d cpu| of any workload, cores
  double psi_points = 5;                // |d psi| in percentage points
};
// True if any of: capacity (cpu or memory) or source changed; cpu_used moved
// by the cpu threshold; memory_available moved by the memory threshold; the
// set of workload names changed; a workload's cpu moved by workload_cpu; a
// PSI figure appeared, vanished or moved by psi_points. Pure.
bool MateriallyChanged(const LoadSample& before, const LoadSample& now,
                       const ChangeThresholds& thresholds = {});

// The seam the agent's publisher uses.
class LoadSampler {
 public:
  virtual ~LoadSampler() = default;
  // Samples now; `workloads` are the names running on this node.
  virtual StatusOr<LoadSample> Sample(const std::vector<std::string>& workloads) = 0;
};

namespace internal {
// A cumulative counter turned into a smoothed rate (see the file comment).
struct SmoothedRate {
  bool has_base = false;
  uint64_t base = 0;
  Clock::TimePoint base_time{};
  bool has_value = false;
  double value = 0;
  // Folds a rate measured over `dt_seconds` into the average.
  void Fold(double rate, double dt_seconds, double time_constant_seconds);
  // Feeds a counter reading; the rate is delta * scale / seconds.
  void Feed(uint64_t counter, Clock::TimePoint now, double scale, double time_constant_seconds);
};
}  // namespace internal

struct HostSamplerOptions {
  std::string root = "/";
  std::optional<double> cpu_capacity;  // declared cores; unset: online CPUs
  std::string cgroup_parent;           // "": no per-workload usage (all zeros)
  Clock::Duration time_constant = std::chrono::seconds(3);
};

class HostLoadSampler final : public LoadSampler {
 public:
  // kInvalid for a declared capacity <= 0 (or not finite), a time constant
  // <= 0, or a cgroup parent with ".." segments.
  static StatusOr<std::unique_ptr<HostLoadSampler>> Create(HostSamplerOptions options,
                                                           Clock& clock);
  StatusOr<LoadSample> Sample(const std::vector<std::string>& workloads) override;

 private:
  HostLoadSampler(HostSamplerOptions options, Clock& clock);

  HostSamplerOptions options_;
  Clock& clock_;
  std::mutex mu_;
  // /proc/stat "cpu" line at the previous sample.
  bool have_prev_ = false;
  uint64_t prev_busy_ = 0;
  uint64_t prev_total_ = 0;
  Clock::TimePoint prev_time_{};
  internal::SmoothedRate cpu_;  // uses only the average part
  std::map<std::string, internal::SmoothedRate> workload_cpu_;
};

struct CgroupSamplerOptions {
  std::string root = "/";
  std::string cgroup_parent;           // required, e.g. "/kmosix-node1"
  double cpu_capacity = 0;             // declared cores, > 0
  uint64_t memory_capacity_bytes = 0;  // declared, > 0
  Clock::Duration time_constant = std::chrono::seconds(3);
};

// cpu_used = CPU rate of the whole parent subtree; memory_available =
// declared capacity - parent usage (clamped at 0); run_queue estimate = sum
// over workloads of max(1, round(cpu)) for each workload using >= 0.2 cores
// (a busy single-threaded workload counts as one runnable task).
class CgroupLoadSampler final : public LoadSampler {
 public:
  // kInvalid for an empty parent or one with ".." segments, capacities <= 0,
  // a time constant <= 0.
  static StatusOr<std::unique_ptr<CgroupLoadSampler>> Create(CgroupSamplerOptions options,
                                                             Clock& clock);
  StatusOr<LoadSample> Sample(const std::vector<std::string>& workloads) override;

 private:
  CgroupLoadSampler(CgroupSamplerOptions options, Clock& clock);

  CgroupSamplerOptions options_;
  Clock& clock_;
  std::mutex mu_;
  bool sampled_before_ = false;
  internal::SmoothedRate parent_cpu_;
  std::map<std::string, internal::SmoothedRate> workload_cpu_;
};

}  // namespace kmosix::agent
