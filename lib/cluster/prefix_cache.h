// A list-then-watch cache of every key under a prefix (an "informer"): lists,
// then watches from the list revision + 1; on compaction or a broken watch it
// relists and reports the difference, so handlers see every key converge to
// the store's state (level-based: a handler may miss intermediate versions,
// never the latest).
//
// Ownership: borrows the store and clock. Thread-safety: Run() on one thread;
// Get/Items/Synced/Revision from any thread. The handler runs on Run()'s
// thread, without the cache lock held, after the cache was updated.
// Errors: store errors are retried with backoff inside Run() (100 ms doubling
// to 2 s, waited in real time on a condition variable so Stop() is prompt and
// a FakeClock is never advanced by the cache); Run() returns only after Stop().
// A list that fails is logged as a warning, once and then about once a minute,
// so an unreachable store is visible at start.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "kmosix/clock.h"
#include "kmosix/state_store.h"

namespace kmosix::cluster {

class PrefixCache {
 public:
  // key, and the key's value now (nullopt: deleted).
  using Handler = std::function<void(const std::string& key, const std::optional<KeyValue>& now)>;

  // keep_values = false: the cache keeps each key's metadata only (Get/Items
  // return empty values), for owners that decode values in the handler and
  // keep their own copy; the handler still gets the full value.
  PrefixCache(StateStore& store, Clock& clock, std::string prefix, bool keep_values = true);

  // Lists, then watches, until Stop(). Calls `on_change` for every key added,
  // changed or deleted (after a relist: for every key that differs from the
  // cache, deletions included; on the first list: for every key).
  void Run(const Handler& on_change);
  void Stop();

  // Blocks until the first list is in the cache and the handler has been
  // called for every key of it, or `timeout` passes.
  bool WaitSynced(std::chrono::milliseconds timeout) const;
  bool Synced() const;
  std::optional<KeyValue> Get(const std::string& key) const;
  std::map<std::string, KeyValue> Items() const;
  // Store revision the cache reflects.
  int64_t Revision() const;
  // Number of relists so far (the first list included).
  int64_t Lists() const;

 private:
  bool WaitBackoff(std::chrono::milliseconds d);

  StateStore& store_;
  Clock& clock_;
  std::string prefix_;
  bool keep_values_ = true;
  KeyValue Stored(const KeyValue& kv) const;  // what items_ keeps of kv
  std::atomic<bool> stopped_{false};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::map<std::string, KeyValue> items_;
  int64_t revision_ = 0;
  int64_t lists_ = 0;
  bool synced_ = false;
  int64_t list_failures_ = 0;   // consecutive failed lists; Run()'s thread only
  Watcher* watcher_ = nullptr;  // current watch, for Stop(); guarded by mu_
};

}  // namespace kmosix::cluster
