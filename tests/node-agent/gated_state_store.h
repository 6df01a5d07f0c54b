// A StateStore that forwards every call to another one and lets a test step
// in around transactions: `before_commit` runs before a Commit is forwarded,
// `after_commit` after it returned (both on the committing thread; they may
// block, e.g. on a Gate, and may use the inner store, not this one). Used to
// interleave a write of "the controller" between a reader's read and its
// CAS, or to hold a migration thread at a chosen write; `refuse_commit` answers
// a chosen error instead (etcd refusing a write not granted).
//
// Ownership: borrows the inner store. Thread-safety: as the inner store; set
// the hooks before other threads use the store.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "kmosix/state_store.h"

namespace kmosix::testing {

class GatedStateStore : public StateStore {
 public:
  explicit GatedStateStore(StateStore& inner) : inner_(inner) {}

  std::function<void(const Txn&)> before_commit;
  std::function<void(const Txn&, const StatusOr<TxnResult>&)> after_commit;
  // Non-ok for a transaction: answered instead of forwarding it (nothing
  // written), e.g. etcd's permission denied for a key not granted (yet).
  std::function<Status(const Txn&)> refuse_commit;
  std::function<void(const std::string& key, const StatusOr<GetResult>&)> after_get;

  StatusOr<GetResult> Get(const std::string& key, int64_t revision = 0) override {
    auto got = inner_.Get(key, revision);
    if (after_get) after_get(key, got);
    return got;
  }
  StatusOr<ListResult> List(const std::string& prefix, const ListOptions& options = {}) override {
    return inner_.List(prefix, options);
  }
  StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                        const PutOptions& options = {}) override {
    return inner_.Put(key, value, options);
  }
  StatusOr<DeleteResult> Delete(const std::string& key) override { return inner_.Delete(key); }
  StatusOr<DeleteResult> DeletePrefix(const std::string& prefix) override {
    return inner_.DeletePrefix(prefix);
  }
  StatusOr<TxnResult> Commit(const Txn& txn) override {
    if (before_commit) before_commit(txn);
    if (refuse_commit) {
      if (Status refused = refuse_commit(txn); !refused.ok()) return refused;
    }
    auto result = inner_.Commit(txn);
    if (after_commit) after_commit(txn, result);
    return result;
  }
  Status Compact(int64_t revision) override { return inner_.Compact(revision); }
  StatusOr<std::unique_ptr<Watcher>> Watch(const WatchOptions& options) override {
    return inner_.Watch(options);
  }
  StatusOr<LeaseGrant> GrantLease(std::chrono::seconds ttl) override {
    return inner_.GrantLease(ttl);
  }
  Status RevokeLease(int64_t id) override { return inner_.RevokeLease(id); }
  StatusOr<std::chrono::seconds> LeaseTimeToLive(int64_t id) override {
    return inner_.LeaseTimeToLive(id);
  }
  StatusOr<std::unique_ptr<LeaseKeepAlive>> KeepAlive(int64_t id,
                                                      LeaseLostCallback on_lost = {}) override {
    return inner_.KeepAlive(id, std::move(on_lost));
  }

  // True if the transaction compares `key`.
  static bool Compares(const Txn& txn, const std::string& key) {
    for (const auto& c : txn.compares) {
      if (c.key == key) return true;
    }
    return false;
  }
  // The value the transaction puts at `key` on success ("" if none).
  static std::string PutValue(const Txn& txn, const std::string& key) {
    for (const auto& op : txn.then_ops) {
      if (op.kind == TxnOp::Kind::kPut && op.key == key) return op.value;
    }
    return "";
  }

 private:
  StateStore& inner_;
};

// A one-shot latch: Wait() returns once Open() was called, or false after
// `limit` of real time (a guard against hangs, not a speed assertion).
class Gate {
 public:
  void Open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  bool Wait(std::chrono::seconds limit = std::chrono::seconds(20)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace kmosix::testing
