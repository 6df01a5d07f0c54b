// Kubernetes Events on kmosix.io objects (`kubectl describe`), sent from a
// thread of their own so the bridge's reconciler never waits for them (they
// were two of its five API calls per workload): Record() builds the Event
// and queues it; the sender creates it through the client. Best effort, as
// client-go's recorder: when the queue is full (the API server is slow or
// down) new Events are dropped and counted, and a failed create is logged,
// not retried. Events only describe; nothing reads them back.
//
// Ownership: borrows the client, clock and random (they must outlive it);
// owns its queue and thread. Thread-safety: Record from any thread.
// Errors: none returned; drops and failures are counted (Dropped, Failed).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "kmosix/clock.h"
#include "kube/client.h"

namespace kmosix::bridge {

class EventRecorder {
 public:
  EventRecorder(kube::Client& client, Clock& clock, Random& random, std::string instance,
                size_t capacity = 1024);
  ~EventRecorder();
  void Start();
  // Sends what is queued (for at most `drain` more), then stops. Idempotent.
  void Stop(Clock::Duration drain = std::chrono::seconds(2));

  // type "Normal" or "Warning"; reason CamelCase; message cut to 1 KiB. The
  // Event goes to the object's namespace ("default" for a cluster-scoped
  // object such as a Node).
  void Record(const kube::Resource& r, const nlohmann::json& object, const std::string& type,
              const std::string& reason, const std::string& message);

  size_t Dropped() const { return dropped_.load(); }
  size_t Failed() const { return failed_.load(); }
  size_t Sent() const { return sent_.load(); }

 private:
  void Run();

  kube::Client& client_;
  Clock& clock_;
  Random& random_;
  const std::string instance_;
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::string, nlohmann::json>> queue_;  // namespace, Event
  bool stopping_ = false;
  Clock::TimePoint drain_until_{};
  std::atomic<size_t> dropped_{0}, failed_{0}, sent_{0};
  std::thread thread_;
};

}  // namespace kmosix::bridge
