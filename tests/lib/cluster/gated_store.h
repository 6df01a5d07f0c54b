// Test helper: a StateStore decorator that lets a test cut one client off the
// store (Block(): its reads, watches and writes answer kRetry while other
// clients of the inner store carry on) and break that client's open watches
// with a chosen status (BreakWatches()), deterministically; and make the
// client's keep-alives stop refreshing without telling it (DropKeepAlives(),
// a frozen or partitioned process: its leases expire after their TTL).
//
// Ownership: borrows the inner store (it must outlive this and every watcher
// handed out). Thread-safety: thread-safe, like the inner store.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kmosix/state_store.h"

namespace kmosix::testing {

class GatedStore : public StateStore {
 public:
  explicit GatedStore(StateStore& inner) : inner_(inner) {}

  void Block(bool blocked) { blocked_ = blocked; }
  // Every watch open now returns `status` from its next Next() on (terminal).
  void BreakWatches(const Status& status) {
    std::lock_guard lock(mu_);
    for (auto& weak : watches_) {
      if (auto s = weak.lock()) s->Break(status);
    }
    watches_.clear();
  }
  // Stops refreshing every keep-alive handed out so far (their status() stays
  // ok: the client is not told, as when it is frozen); the leases then expire.
  void DropKeepAlives() {
    std::vector<std::shared_ptr<KeepAliveState>> all;
    {
      std::lock_guard lock(mu_);
      for (auto& weak : keepalives_) {
        if (auto s = weak.lock()) all.push_back(s);
      }
      keepalives_.clear();
    }
    for (auto& s : all) s->Drop();
  }
  int64_t watches_opened() const { return watches_opened_; }
  int64_t lists() const { return lists_; }

  StatusOr<GetResult> Get(const std::string& key, int64_t revision = 0) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.Get(key, revision);
  }
  StatusOr<ListResult> List(const std::string& prefix, const ListOptions& options = {}) override {
    KMX_RETURN_IF_ERROR(Gate());
    ++lists_;
    return inner_.List(prefix, options);
  }
  StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                        const PutOptions& options = {}) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.Put(key, value, options);
  }
  StatusOr<DeleteResult> Delete(const std::string& key) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.Delete(key);
  }
  StatusOr<DeleteResult> DeletePrefix(const std::string& prefix) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.DeletePrefix(prefix);
  }
  StatusOr<TxnResult> Commit(const Txn& txn) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.Commit(txn);
  }
  Status Compact(int64_t revision) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.Compact(revision);
  }
  StatusOr<std::unique_ptr<Watcher>> Watch(const WatchOptions& options) override {
    KMX_RETURN_IF_ERROR(Gate());
    KMX_ASSIGN_OR_RETURN(auto inner, inner_.Watch(options));
    auto state = std::make_shared<WatchState>(std::move(inner));
    {
      std::lock_guard lock(mu_);
      std::erase_if(watches_, [](const auto& w) { return w.expired(); });
      watches_.push_back(state);
    }
    ++watches_opened_;
    return std::unique_ptr<Watcher>(std::make_unique<GatedWatcher>(state));
  }
  StatusOr<LeaseGrant> GrantLease(std::chrono::seconds ttl) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.GrantLease(ttl);
  }
  Status RevokeLease(int64_t id) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.RevokeLease(id);
  }
  StatusOr<std::chrono::seconds> LeaseTimeToLive(int64_t id) override {
    KMX_RETURN_IF_ERROR(Gate());
    return inner_.LeaseTimeToLive(id);
  }
  StatusOr<std::unique_ptr<LeaseKeepAlive>> KeepAlive(int64_t id,
                                                      LeaseLostCallback on_lost = {}) override {
    KMX_RETURN_IF_ERROR(Gate());
    KMX_ASSIGN_OR_RETURN(auto inner, inner_.KeepAlive(id, std::move(on_lost)));
    auto state = std::make_shared<KeepAliveState>(std::move(inner));
    {
      std::lock_guard lock(mu_);
      std::erase_if(keepalives_, [](const auto& k) { return k.expired(); });
      keepalives_.push_back(state);
    }
    return std::unique_ptr<LeaseKeepAlive>(std::make_unique<GatedKeepAlive>(state));
  }

 private:
  struct WatchState {
    explicit WatchState(std::unique_ptr<Watcher> w) : inner(std::move(w)) {}
    void Break(const Status& s) {
      {
        std::lock_guard lock(mu);
        if (broken.ok()) broken = s;
      }
      inner->Cancel();  // wakes a blocked Next()
    }
    Status Broken() const {
      std::lock_guard lock(mu);
      return broken;
    }
    std::unique_ptr<Watcher> inner;
    mutable std::mutex mu;
    Status broken;
  };

  class GatedWatcher : public Watcher {
   public:
    explicit GatedWatcher(std::shared_ptr<WatchState> s) : s_(std::move(s)) {}
    StatusOr<std::vector<WatchEvent>> Next(std::chrono::milliseconds timeout) override {
      if (Status b = s_->Broken(); !b.ok()) return b;
      auto r = s_->inner->Next(timeout);
      // Events delivered before the break stand (next_revision() counts them).
      if (!r.ok() || r->empty()) {
        if (Status b = s_->Broken(); !b.ok()) return b;
      }
      return r;
    }
    int64_t next_revision() const override { return s_->inner->next_revision(); }
    int64_t compact_revision() const override { return s_->inner->compact_revision(); }
    void Cancel() override { s_->inner->Cancel(); }

   private:
    std::shared_ptr<WatchState> s_;
  };

  struct KeepAliveState {
    explicit KeepAliveState(std::unique_ptr<LeaseKeepAlive> k)
        : inner(std::move(k)), id(inner->lease()) {}
    std::shared_ptr<LeaseKeepAlive> Inner() const {
      std::lock_guard lock(mu);
      return inner;
    }
    void Drop() {
      std::shared_ptr<LeaseKeepAlive> dropped;
      {
        std::lock_guard lock(mu);
        dropped.swap(inner);
      }
    }
    mutable std::mutex mu;
    std::shared_ptr<LeaseKeepAlive> inner;
    const int64_t id;
  };

  class GatedKeepAlive : public LeaseKeepAlive {
   public:
    explicit GatedKeepAlive(std::shared_ptr<KeepAliveState> s) : s_(std::move(s)) {}
    int64_t lease() const override { return s_->id; }
    Status status() const override {
      auto inner = s_->Inner();
      return inner ? inner->status() : Status::Ok();
    }
    Status WaitLost(std::chrono::milliseconds timeout) override {
      auto inner = s_->Inner();
      if (inner) return inner->WaitLost(timeout);
      std::this_thread::sleep_for(timeout);
      return Status::Ok();
    }

   private:
    std::shared_ptr<KeepAliveState> s_;
  };

  Status Gate() const {
    if (blocked_) return RetryError("gated store: blocked by the test");
    return Status::Ok();
  }

  StateStore& inner_;
  std::atomic<bool> blocked_{false};
  std::atomic<int64_t> watches_opened_{0};
  std::atomic<int64_t> lists_{0};
  std::mutex mu_;
  std::vector<std::weak_ptr<WatchState>> watches_;
  std::vector<std::weak_ptr<KeepAliveState>> keepalives_;
};

}  // namespace kmosix::testing
