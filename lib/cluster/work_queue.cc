#include "cluster/work_queue.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace kmosix::cluster {

WorkQueue::WorkQueue(Clock& clock, Random& random, Options options)
    : clock_(clock), random_(random), options_(options) {
  if (options_.base_backoff <= Clock::Duration::zero()) {
    options_.base_backoff = std::chrono::milliseconds(1);
  }
  if (options_.max_backoff < options_.base_backoff) options_.max_backoff = options_.base_backoff;
}

// Makes `key` ready (or dirty, when a worker holds it). Requires mu_.
void WorkQueue::AddLocked(const std::string& key) {
  delayed_.erase(key);
  if (processing_.contains(key)) {
    dirty_.insert(key);
    return;
  }
  if (queued_.contains(key)) return;
  queued_.insert(key);
  ready_.push_back(key);
  cv_.notify_one();
}

// Moves delayed keys that are due into the ready queue. Requires mu_.
void WorkQueue::PromoteDueLocked(Clock::TimePoint now) {
  for (auto it = delayed_.begin(); it != delayed_.end();) {
    if (it->second <= now) {
      std::string key = it->first;
      it = delayed_.erase(it);
      AddLocked(key);
    } else {
      ++it;
    }
  }
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard lock(mu_);
  if (shutdown_) return;
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, Clock::Duration delay) {
  std::lock_guard lock(mu_);
  if (shutdown_) return;
  if (delay <= Clock::Duration::zero()) {
    AddLocked(key);
    return;
  }
  // Already queued (or due again after Done): that add is earlier.
  if (queued_.contains(key) || dirty_.contains(key)) return;
  Clock::TimePoint due = clock_.Now() + delay;
  auto [it, inserted] = delayed_.try_emplace(key, due);
  if (!inserted) {
    if (it->second <= due) return;
    it->second = due;
  }
  // Waiting workers recompute how long they may sleep.
  cv_.notify_all();
}

Clock::Duration WorkQueue::Retry(const std::string& key) {
  Clock::Duration delay;
  {
    std::lock_guard lock(mu_);
    int n = ++failures_[key];
    Clock::Duration backoff = options_.base_backoff;
    for (int i = 1; i < n && backoff < options_.max_backoff; ++i) backoff *= 2;
    backoff = std::min(backoff, options_.max_backoff);
    // Jitter lengthens by up to a quarter, so retries of many keys spread out.
    auto quarter = static_cast<uint64_t>(backoff.count() / 4);
    delay = backoff + Clock::Duration(static_cast<int64_t>(random_.Next() % (quarter + 1)));
  }
  AddAfter(key, delay);
  return delay;
}

void WorkQueue::Forget(const std::string& key) {
  std::lock_guard lock(mu_);
  failures_.erase(key);
}

int WorkQueue::Retries(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

std::optional<std::string> WorkQueue::Get(Clock::Duration timeout) {
  std::unique_lock lock(mu_);
  const Clock::TimePoint deadline = clock_.Now() + timeout;
  while (true) {
    if (shutdown_) return std::nullopt;
    Clock::TimePoint now = clock_.Now();
    PromoteDueLocked(now);
    if (!ready_.empty()) {
      std::string key = std::move(ready_.front());
      ready_.pop_front();
      queued_.erase(key);
      processing_.insert(key);
      if (!ready_.empty()) cv_.notify_one();
      return key;
    }
    if (now >= deadline) return std::nullopt;
    // Sleep until the deadline, or the next delayed key's due time if sooner.
    Clock::Duration wait = deadline - now;
    for (const auto& [_, due] : delayed_) wait = std::min(wait, due - now);
    cv_.wait_for(lock, std::max(wait, Clock::Duration(std::chrono::microseconds(100))));
  }
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard lock(mu_);
  processing_.erase(key);
  if (dirty_.erase(key) > 0 && !shutdown_) AddLocked(key);
}

void WorkQueue::ShutDown() {
  std::lock_guard lock(mu_);
  shutdown_ = true;
  cv_.notify_all();
}

size_t WorkQueue::Len() const {
  std::lock_guard lock(mu_);
  return ready_.size();
}

void RunLeaderWorker(WorkQueue& queue, Clock& clock, const std::atomic<bool>& stop,
                     const LeaderWorker& worker) {
  bool leading = false;
  Clock::TimePoint last_resync{};
  while (!stop) {
    const bool lead = worker.lead();
    if (lead && (!leading || clock.Now() - last_resync >= worker.resync)) {
      worker.enqueue_all();
      last_resync = clock.Now();
    }
    leading = lead;
    if (!lead) {
      clock.SleepFor(std::chrono::milliseconds(100));
      continue;
    }
    std::optional<std::string> key = queue.Get(std::chrono::milliseconds(200));
    if (!key) continue;
    Status s;
    try {
      s = worker.reconcile(*key);
    } catch (const std::exception& e) {
      s = FailedError(std::string("unexpected exception: ") + e.what());
    } catch (...) {
      s = FailedError("unexpected exception");
    }
    if (s.ok()) {
      queue.Forget(*key);
    } else {
      if (s.code() == Code::kRetry || s.code() == Code::kConflict)
        spdlog::debug("{}: {}: {} (retrying)", worker.name, *key, s.ToString());
      else
        spdlog::warn("{}: {}: {} (retrying)", worker.name, *key, s.ToString());
      // The world may change (a CRD fixed, a node back): the backoff caps it.
      queue.Retry(*key);
    }
    queue.Done(*key);
  }
}

}  // namespace kmosix::cluster
