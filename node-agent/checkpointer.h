// The source side of restartPolicy FromCheckpoint (issue 13): every
// checkpointIntervalSeconds, the owner's agent takes a checkpoint of each
// such workload it runs, without stopping it for longer than a
// stop-and-copy freeze, streams it to a keeper node (checkpoint_keeper.h)
// and then records it in etcd as checkpoints/<workload>
// (api::CheckpointRecord). When the node is lost, the controller restarts
// the workload on the keeper from it.
//
// One checkpoint (TakeOne), with nothing of it on the workload's path but
// the freeze:
//   1. skipped while the node is fenced (options.fenced), and unless etcd
//      names this node the owner (status.node), phase Running, no migration,
//      restartPolicy FromCheckpoint, at the epoch the local copy runs under;
//   2. the keeper: ChooseKeeper over the ready nodes (nodes/, no
//      notReadyReason) other than this one that hold the workload's image;
//      it must answer Hello as that node; one that cannot be reached, or
//      later refuses the offer or fails the stream, hands the same capture
//      to the next in RankKeepers order (keeper_attempts in all);
//   3. the scratch dir must have room for the workload's resident memory,
//      writable layer and log plus scratch_reserve (bounded scratch: one
//      capture at a time per node, removed after every attempt);
//   4. under the agent's per-workload lock (Agent::WithManagedRunning: never
//      during a migration, restart, fence or delete of it): CaptureRunning
//      (pause, CRIU dump leaving the task in place, layer copy, resume; see
//      kmosix/checkpoint_capture.h); the workload runs again before 5;
//   5. the offer (id "ckpt-<random>", the capture's exact totals as its
//      stream limits, created_ms = the dump's wall time) and the stream go
//      over the migration transport (Transport::Prepare, Transport::Send:
//      the authenticated data channel, checksummed by TLS or SHA-256);
//   6. only then the record: a transaction requiring workloads/<w>
//      unchanged since it was read in 1 (so still owned here at that epoch)
//      and checkpoints/<w> unchanged since read.
// Any failure is logged, counted (kmosix_checkpoints_total{result}) and
// tried again at the next interval; it never touches the running workload
// (beyond the freeze, after which it is always resumed).
//
// Schedule: every `refresh` the workloads this agent runs managed are read
// from etcd; a FromCheckpoint one is due checkpointIntervalSeconds after its
// last attempt here (the first one an interval after it was first seen
// here, or after the takenMs of a record this node wrote at its epoch). At
// most one checkpoint runs at a time, the most overdue first.
//
// Ownership: borrows the agent, runtime, transport, store, clock and random;
// owns its thread (Start/Stop). Thread-safety: RunOnce and TakeOne are
// serialised by a mutex; counts() from any thread. Errors: TakeOne returns
// what failed (kConflict: not now, e.g. busy or not owned here; kRetry:
// etcd or the keeper unreachable, no keeper; kFailed: the capture or
// stream failed); nothing throws out of the thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent.h"
#include "api/types.h"
#include "cluster/records.h"
#include "kmosix/checkpoint_capture.h"
#include "kmosix/clock.h"
#include "kmosix/runtime.h"
#include "kmosix/state_store.h"
#include "kmosix/transport.h"

namespace kmosix::agent {

// The keeper of `workload`'s checkpoints: the node with the highest
// rendezvous score (a fixed 64-bit hash of workload and node name) among
// `nodes` that are ready (no notReadyReason), are not `owner`, and hold
// `image` (a node that publishes no image list is taken to hold it).
// Stable while that set does not change; nullopt when it is empty.
std::optional<std::string> ChooseKeeper(const std::string& workload, const std::string& owner,
                                        const std::vector<api::NodeLoad>& nodes,
                                        const std::string& image);
// Every such node, best first (ChooseKeeper is the first): the order a
// checkpoint tries keepers in when one refuses it.
std::vector<std::string> RankKeepers(const std::string& workload, const std::string& owner,
                                     const std::vector<api::NodeLoad>& nodes,
                                     const std::string& image);

// When each workload's next checkpoint is due (pure, wall-clock ms).
class CheckpointSchedule {
 public:
  // Tracks `name` with this interval; a new one is first due at
  // max(now, last_taken_ms) + interval (last_taken_ms 0: none). A tracked
  // one keeps its due time (a changed interval applies from its next attempt).
  void Track(const std::string& name, int64_t interval_ms, int64_t now_ms, int64_t last_taken_ms);
  // Forgets every workload not in `names`.
  void Retain(const std::set<std::string>& names);
  // The most overdue workload at now_ms, if any is due.
  std::optional<std::string> Due(int64_t now_ms) const;
  // An attempt ended (ok or not): next due an interval from now.
  void Attempted(const std::string& name, int64_t now_ms);
  std::optional<int64_t> NextDueMs(const std::string& name) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    int64_t interval_ms = 0;
    int64_t due_ms = 0;
  };
  std::map<std::string, Entry> entries_;
};

// Prometheus families of checkpoints (source and keeper side), registered
// on the agent's registry. Thread-safe.
class CheckpointMetrics {
 public:
  explicit CheckpointMetrics(prometheus::Registry& registry);
  // result: "ok", "failed", "skipped"
  void Taken(const std::string& result);
  void Freeze(double seconds) { freeze_.Observe(seconds); }
  void Sent(uint64_t bytes) { bytes_.Increment(static_cast<double>(bytes)); }

 private:
  prometheus::Family<prometheus::Counter>& taken_;
  prometheus::Histogram& freeze_;
  prometheus::Counter& bytes_;
};

struct CheckpointerOptions {
  std::string node;
  std::string url;  // this agent's advertise URL (the offer's source_url)
  cluster::KeyLayout keys;
  std::string scratch_dir;  // captures land under it, one at a time
  Clock::Duration poll = std::chrono::seconds(1);
  Clock::Duration refresh = std::chrono::seconds(10);
  CaptureOptions capture;
  uint64_t scratch_reserve = uint64_t{64} << 20;
  // Keepers tried per checkpoint, in RankKeepers order: one that cannot be
  // reached, refuses the offer (busy, no room) or fails the stream hands it
  // to the next.
  int keeper_attempts = 3;
  // True while the node is fenced (its lease not renewed): no checkpoint.
  std::function<bool()> fenced;
};

class Checkpointer {
 public:
  Checkpointer(CheckpointerOptions options, Agent& agent, ContainerRuntime& runtime,
               Transport& transport, StateStore& state, Clock& clock, Random& random,
               CheckpointMetrics* metrics = nullptr);
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Runs RunOnce every options.poll on a thread, and `upkeep` (may be
  // empty; e.g. the keeper's ExpireIdle and Collect) before each round.
  void Start(std::function<void()> upkeep = {});
  void Stop();

  // One round: refreshes the schedule when due, then takes at most one due
  // checkpoint.
  void RunOnce();
  // Takes a checkpoint of `name` now (steps 1-6 of the file comment).
  StatusOr<api::CheckpointRecord> TakeOne(const std::string& name);

  struct Last {
    std::string workload;
    std::string keeper;
    double freeze_seconds = 0;
    double dump_seconds = 0;
    double layer_seconds = 0;
    double send_seconds = 0;
    uint64_t bytes = 0;
  };
  struct Counts {
    uint64_t ok = 0;
    uint64_t failed = 0;
    uint64_t skipped = 0;
    Last last;  // of the last successful one
  };
  Counts counts();
  std::optional<int64_t> NextDueMs(const std::string& name);

 private:
  void Refresh();
  StatusOr<api::CheckpointRecord> TakeOneLocked(const std::string& name);

  const CheckpointerOptions options_;
  Agent& agent_;
  ContainerRuntime& runtime_;
  Transport& transport_;
  StateStore& state_;
  Clock& clock_;
  Random& random_;
  CheckpointMetrics* metrics_;

  std::mutex run_mu_;                // one checkpoint at a time; RunOnce/TakeOne
  CheckpointSchedule schedule_;      // run_mu_
  Clock::TimePoint last_refresh_{};  // run_mu_
  bool refreshed_ = false;           // run_mu_

  std::mutex mu_;  // counts_, stop_
  Counts counts_;
  bool stop_ = false;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace kmosix::agent
