// Test helpers for PrefixCache: a handler that records what it was told, and
// a PrefixCache running on its own thread (stopped and joined on destruction).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cluster/prefix_cache.h"

namespace kmosix::testing {

class CacheRecorder {
 public:
  struct Event {
    std::string key;
    std::optional<KeyValue> now;
  };

  void operator()(const std::string& key, const std::optional<KeyValue>& now) {
    std::lock_guard lock(mu_);
    events_.push_back({key, now});
    if (now) {
      state_[key] = now->value;
    } else {
      state_.erase(key);
    }
    cv_.notify_all();
  }

  // key -> value as the handler was last told (deleted keys absent).
  std::map<std::string, std::string> State() const {
    std::lock_guard lock(mu_);
    return state_;
  }
  std::vector<Event> Events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  void Clear() {
    std::lock_guard lock(mu_);
    events_.clear();
  }
  // Waits (generously) until the recorded state equals `want`.
  bool WaitState(const std::map<std::string, std::string>& want,
                 std::chrono::milliseconds timeout = std::chrono::seconds(20)) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return state_ == want; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<Event> events_;
  std::map<std::string, std::string> state_;
};

// key -> value of a list of key-values.
inline std::map<std::string, std::string> ValuesOf(const std::map<std::string, KeyValue>& kvs) {
  std::map<std::string, std::string> out;
  for (const auto& [k, kv] : kvs) out[k] = kv.value;
  return out;
}

class RunningCache {
 public:
  RunningCache(StateStore& store, Clock& clock, const std::string& prefix, bool keep_values = true)
      : cache(store, clock, prefix, keep_values), thread_([this] {
          cache.Run(
              [this](const std::string& k, const std::optional<KeyValue>& v) { recorder(k, v); });
        }) {}
  ~RunningCache() { StopAndJoin(); }
  void StopAndJoin() {
    cache.Stop();
    if (thread_.joinable()) thread_.join();
  }

  CacheRecorder recorder;
  cluster::PrefixCache cache;

 private:
  std::thread thread_;
};

}  // namespace kmosix::testing
