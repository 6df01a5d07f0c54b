#include "cluster/prefix_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

namespace kmosix::cluster {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kMaxBackoff{2000};
// How long one Watcher::Next() waits before the loop looks at stopped_ again
// (Stop() also cancels the watch, so this only bounds a lost wake-up).
constexpr milliseconds kWatchPoll{1000};

using Change = std::pair<std::string, std::optional<KeyValue>>;

}  // namespace

PrefixCache::PrefixCache(StateStore& store, Clock& clock, std::string prefix, bool keep_values)
    : store_(store), clock_(clock), prefix_(std::move(prefix)), keep_values_(keep_values) {}

void PrefixCache::Stop() {
  std::lock_guard lock(mu_);
  stopped_ = true;
  if (watcher_ != nullptr) watcher_->Cancel();
  cv_.notify_all();
}

bool PrefixCache::WaitSynced(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return synced_ || stopped_; });
  return synced_;
}

bool PrefixCache::Synced() const {
  std::lock_guard lock(mu_);
  return synced_;
}

std::optional<KeyValue> PrefixCache::Get(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = items_.find(key);
  if (it == items_.end()) return std::nullopt;
  return it->second;
}

std::map<std::string, KeyValue> PrefixCache::Items() const {
  std::lock_guard lock(mu_);
  return items_;
}

int64_t PrefixCache::Revision() const {
  std::lock_guard lock(mu_);
  return revision_;
}

int64_t PrefixCache::Lists() const {
  std::lock_guard lock(mu_);
  return lists_;
}

// Waits `d` in real time, or until Stop(). Backoff waits run on a condition
// variable (not Clock::SleepFor) so that Stop() is prompt and a FakeClock is
// never advanced behind a test's back. Returns false once stopped.
bool PrefixCache::WaitBackoff(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, d, [&] { return stopped_.load(); });
  return !stopped_;
}

KeyValue PrefixCache::Stored(const KeyValue& kv) const {
  if (keep_values_) return kv;
  KeyValue meta = kv;
  meta.value.clear();
  return meta;
}

void PrefixCache::Run(const Handler& on_change) {
  milliseconds backoff = kFirstBackoff;
  auto back_off = [&] {
    bool running = WaitBackoff(backoff);
    backoff = std::min(backoff * 2, kMaxBackoff);
    return running;
  };
  bool need_list = true;
  int64_t watch_from = 0;
  std::vector<Change> changes;

  while (!stopped_) {
    if (need_list) {
      auto listed = store_.List(prefix_);
      if (!listed.ok()) {
        // Said once, then about once a minute (30 waits of 2 s): a store
        // that cannot be reached at start is otherwise silent.
        if (list_failures_++ % 30 == 0)
          spdlog::warn("cannot list {} from the store ({} attempt(s)): {}; retrying", prefix_,
                       list_failures_, listed.status().ToString());
        if (!back_off()) break;
        continue;
      }
      if (list_failures_ > 0)
        spdlog::info("listed {} from the store after {} failed attempt(s)", prefix_,
                     list_failures_);
      list_failures_ = 0;
      changes.clear();
      {
        std::map<std::string, KeyValue> fresh;
        for (auto& kv : listed->kvs) fresh.emplace(kv.key, std::move(kv));
        std::lock_guard lock(mu_);
        for (auto& [key, kv] : fresh) {
          auto old = items_.find(key);
          if (old == items_.end() || !(old->second == Stored(kv))) changes.emplace_back(key, kv);
          if (!keep_values_) kv.value.clear();
        }
        for (const auto& [key, _] : items_) {
          if (!fresh.contains(key)) changes.emplace_back(key, std::nullopt);
        }
        items_ = std::move(fresh);
        revision_ = listed->revision;
        ++lists_;
      }
      for (const auto& [key, now] : changes) on_change(key, now);
      {
        // Synced once the handler has seen the whole first list.
        std::lock_guard lock(mu_);
        synced_ = true;
        cv_.notify_all();
      }
      watch_from = listed->revision + 1;
      need_list = false;
    }

    WatchOptions options;
    options.key = prefix_;
    options.prefix = true;
    options.start_revision = watch_from;
    auto watched = store_.Watch(options);
    if (!watched.ok()) {
      // A compacted start revision: relist at once; anything else: retry later.
      if (watched.status().code() == Code::kConflict) {
        need_list = true;
      } else if (!back_off()) {
        break;
      }
      continue;
    }
    std::unique_ptr<Watcher> watcher = std::move(*watched);
    {
      std::lock_guard lock(mu_);
      if (stopped_) break;
      watcher_ = watcher.get();
    }

    while (true) {
      auto batch = watcher->Next(kWatchPoll);
      if (!batch.ok()) {
        if (batch.status().code() == Code::kConflict) {
          need_list = true;
        } else {
          // Broken (kRetry) or cancelled: resume where it stopped, after a pause.
          watch_from = watcher->next_revision();
          if (!stopped_) back_off();
        }
        break;
      }
      if (batch->empty()) {
        if (stopped_) break;
        continue;
      }
      backoff = kFirstBackoff;  // the watch delivers: the store is healthy
      changes.clear();
      {
        std::lock_guard lock(mu_);
        for (const auto& e : *batch) {
          auto it = items_.find(e.kv.key);
          if (e.type == WatchEvent::Type::kPut) {
            if (it != items_.end() && it->second.mod_revision >= e.kv.mod_revision) continue;
            items_[e.kv.key] = Stored(e.kv);
            changes.emplace_back(e.kv.key, e.kv);
          } else if (it != items_.end() && it->second.mod_revision < e.kv.mod_revision) {
            items_.erase(it);
            changes.emplace_back(e.kv.key, std::nullopt);
          }
          revision_ = std::max(revision_, e.kv.mod_revision);
        }
        watch_from = watcher->next_revision();
      }
      for (const auto& [key, now] : changes) on_change(key, now);
    }

    {
      std::lock_guard lock(mu_);
      watcher_ = nullptr;
    }
    watcher.reset();
  }

  std::lock_guard lock(mu_);
  watcher_ = nullptr;
  cv_.notify_all();
}

}  // namespace kmosix::cluster
