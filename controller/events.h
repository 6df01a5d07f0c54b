// Cluster events for GET /v1/events (server-sent events): placements,
// workload phases, migration phases, node readiness and cordons. The
// controller publishes one event per change it sees in its caches (every
// replica sees the same changes, so any replica serves the stream); the hub
// keeps the latest `capacity` events in a ring so a client that reconnects
// with Last-Event-ID misses nothing that is still in the ring.
//
// Event ids are this replica's sequence numbers (1, 2, ...): resuming works
// against the same replica; elsewhere, or after the ring moved on, the
// stream starts with a "gap" marker (see Batch::gap).
//
// Ownership: owns its events. Thread-safety: all methods may be called from
// any thread; Wait blocks the caller only. No errors: Publish never fails.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kmosix::controller {

struct Event {
  int64_t id = 0;
  std::string type;     // e.g. "migration.phase"
  nlohmann::json data;  // {"id","type","timeMs",...,"message"}
};

class EventHub {
 public:
  explicit EventHub(size_t capacity = 4096);

  // Appends an event; `fields` are merged into data after id/type/timeMs.
  void Publish(const std::string& type, int64_t time_ms, nlohmann::json fields);

  struct Batch {
    std::vector<Event> events;  // id > after, oldest first
    bool gap = false;           // events after `after` were dropped from the ring
    bool closed = false;        // Close() was called: end the stream
  };
  // Events newer than `after`; waits up to `timeout` for the first one.
  Batch Wait(int64_t after, std::chrono::milliseconds timeout) const;

  int64_t LastId() const;
  // Wakes every waiter; later Waits return at once with closed = true.
  void Close();

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Event> ring_;
  int64_t last_id_ = 0;
  bool closed_ = false;
};

// "id: N\nevent: TYPE\ndata: JSON\n\n" (JSON on one line).
std::string FormatServerSentEvent(const Event& e);

// Whether `type` matches a comma-separated list of prefixes ("" = all):
// "migration" matches "migration.phase"; "node.ready" matches only itself.
bool EventTypeMatches(const std::string& type, const std::vector<std::string>& filters);
std::vector<std::string> ParseEventFilter(const std::string& csv);

}  // namespace kmosix::controller
