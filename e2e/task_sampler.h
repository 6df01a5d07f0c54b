// What the cluster-mode e2e tests share to watch one workload through a
// fault (issue 13): a TaskSampler, which asks every node's containerd for the
// workload's task every ~100 ms on a thread of its own and remembers every
// sample in which two nodes ran it (RUNNING) at once; and the polls of the
// controllers' records (a workload record until a predicate holds, a
// migration until it ends), through whichever controller answers.
//
// Thread-safety: TaskSampler's methods may be called from any thread (the
// sampling thread takes its lock); the free functions are thread-safe as the
// Cluster's const methods are. Errors: the polls return a WaitResult (ok, or
// what was awaited, for how long, what was seen) with the last record read;
// nothing throws.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"

namespace kmosix::e2e {

// --- JSON fields, "" or 0 when absent or of another type ---------------------

std::string JsonStr(const nlohmann::json& j, const char* key);
int64_t JsonInt(const nlohmann::json& j, const char* key);
// status.<key> of a workload record.
std::string StatusStr(const nlohmann::json& workload, const char* key);
// Succeeded, RolledBack or Failed.
bool IsFinalMigrationPhase(const std::string& phase);

// --- the sampler -----------------------------------------------------------------

class TaskSampler {
 public:
  using SteadyClock = std::chrono::steady_clock;
  // Starts sampling `name` on every node of `c` (which must outlive it).
  TaskSampler(const Cluster& c, std::string name);
  ~TaskSampler();
  TaskSampler(const TaskSampler&) = delete;
  TaskSampler& operator=(const TaskSampler&) = delete;
  // Stops the sampling thread (idempotent); the results stay readable.
  void Stop();

  // Samples in which more than one node ran the workload ("RUNNING on node1
  // node2"), in order.
  std::vector<std::string> Twice();
  int Samples();
  // The node's task status in the last sample ("" if none).
  std::string Last(const std::string& node);
  // When a status was first seen on a node since the last Mark(); nullopt if
  // not seen.
  std::optional<SteadyClock::time_point> FirstSeen(const std::string& node,
                                                   const std::string& status);
  void Mark();
  // Waits for `n` more samples (bounded: at most ~30 s).
  void AwaitSamples(int n);
  // "" if no sample saw two running copies, else how many did and the first.
  std::string NeverTwice();

 private:
  void Loop();

  std::string name_;
  std::string cmd_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  int samples_ = 0;
  std::vector<std::string> twice_;
  std::map<std::string, std::string> last_;
  std::map<std::string, SteadyClock::time_point> first_;
  std::thread thread_;  // last: starts once the members above exist
};

// --- the controllers' records ------------------------------------------------------

// A controller to ask: the leader, else the first that answers /healthz,
// else controller 1.
Endpoint AnyController(const Cluster& c);

struct RecordWait {
  WaitResult wait;
  nlohmann::json last;  // the last record read (null if none)
};
// Polls GET /v1/workloads/{name} (AnyController, every 250 ms) until `pred`
// holds for it.
RecordWait AwaitWorkloadRecord(const Cluster& c, const std::string& name, const std::string& what,
                               std::chrono::milliseconds timeout,
                               const std::function<bool(const nlohmann::json&)>& pred);
// Polls GET /v1/migrations/{id} until its phase is final.
RecordWait AwaitMigrationEnd(const Cluster& c, const std::string& id,
                             std::chrono::milliseconds timeout);

}  // namespace kmosix::e2e
