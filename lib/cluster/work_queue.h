// A keyed work queue with per-key exponential backoff (client-go style): a
// key is queued at most once; a key being processed that is added again is
// handed out again after Done(); Retry() re-adds it after a backoff that
// doubles per consecutive failure (base .. max, with jitter from Random);
// Forget() resets it.
//
// Ownership: borrows the clock and random. Thread-safety: every method may be
// called from any thread; several workers may Get() concurrently (one key is
// never handed to two workers at once).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::cluster {

class WorkQueue {
 public:
  struct Options {
    Clock::Duration base_backoff = std::chrono::milliseconds(200);
    Clock::Duration max_backoff = std::chrono::seconds(30);
  };
  WorkQueue(Clock& clock, Random& random, Options options);
  WorkQueue(Clock& clock, Random& random) : WorkQueue(clock, random, Options{}) {}

  void Add(const std::string& key);
  // Adds `key` once `delay` has passed (an earlier pending add wins).
  void AddAfter(const std::string& key, Clock::Duration delay);
  // Re-adds after this key's next backoff; returns the delay chosen:
  // min(base * 2^(retries-1), max) lengthened by a jitter of up to +25%.
  Clock::Duration Retry(const std::string& key);
  // Resets the key's backoff (call after it was processed successfully).
  void Forget(const std::string& key);
  // Consecutive retries of `key` since the last Forget().
  int Retries(const std::string& key) const;

  // The next ready key, waiting up to `timeout` (measured on the Clock);
  // nullopt on timeout or after ShutDown(). The caller must call Done(key).
  std::optional<std::string> Get(Clock::Duration timeout);
  void Done(const std::string& key);

  void ShutDown();
  size_t Len() const;  // keys ready now

 private:
  void AddLocked(const std::string& key);
  void PromoteDueLocked(Clock::TimePoint now);

  Clock& clock_;
  Random& random_;
  Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> ready_;
  std::set<std::string> queued_;      // in ready_
  std::set<std::string> processing_;  // handed out, not Done
  std::set<std::string> dirty_;       // added while processing
  std::map<std::string, Clock::TimePoint> delayed_;
  std::map<std::string, int> failures_;
  bool shutdown_ = false;
};

// The worker of a leader-only reconciler (the Kubernetes bridge, the node
// signer): until `stop`, while lead() holds, hands each queued key to
// reconcile() and backs off per key on failure (kRetry and kConflict quietly,
// other errors with a warning naming `name`); enqueue_all() runs when the
// lead is won and every `resync` while it lasts (level-based). While not
// leading it sleeps through the clock in 100 ms steps. An exception from
// reconcile() is a failure of that key, never an escape. Returns when stop
// is set (ShutDown the queue too, so a wait ends at once).
struct LeaderWorker {
  std::string name;  // for logs: "kube bridge", "node signer"
  std::function<bool()> lead;
  std::function<void()> enqueue_all;
  std::function<Status(const std::string& key)> reconcile;
  Clock::Duration resync = std::chrono::seconds(30);
};
void RunLeaderWorker(WorkQueue& queue, Clock& clock, const std::atomic<bool>& stop,
                     const LeaderWorker& worker);

}  // namespace kmosix::cluster
