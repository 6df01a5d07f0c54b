// A LoadSampler for tests: fixed figures (4 cores, 8 GiB, 6 GiB available),
// cpu_used settable, every listed workload at 0.5 cores and 1 MiB, rates
// always valid. Thread-safe.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "load_sampler.h"

namespace kmosix::testing {

class FakeLoadSampler : public agent::LoadSampler {
 public:
  StatusOr<agent::LoadSample> Sample(const std::vector<std::string>& workloads) override {
    std::lock_guard lock(mu_);
    agent::LoadSample s;
    s.source = "host";
    s.cpu_capacity = 4;
    s.cpu_used = cpu_used_;
    s.run_queue = cpu_used_;
    s.memory_capacity_bytes = 8ull << 30;
    s.memory_available_bytes = 6ull << 30;
    for (const auto& w : workloads) s.workloads[w] = {0.5, 1 << 20};
    s.sampled_ms = 1;
    s.rates_valid = true;
    return s;
  }
  void SetCpu(double cpu) {
    std::lock_guard lock(mu_);
    cpu_used_ = cpu;
  }

 private:
  std::mutex mu_;
  double cpu_used_ = 1.0;
};

}  // namespace kmosix::testing
