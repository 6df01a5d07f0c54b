// In-memory StateStore with etcd's MVCC semantics, for unit tests.
//
// - One store-wide revision (1 when empty); every write bumps it once (a
//   transaction's writes share one revision; a delete of nothing and a
//   transaction that writes nothing do not bump it).
// - Per key: create_revision, mod_revision, version, lease; the full history
//   is kept until Compact(), so reads at a past revision and watches from a
//   past revision (replayed from history) work as in etcd.
// - Leases expire by the injected Clock: expiry is evaluated at the start of
//   every call and by ExpireLeases() (call it after advancing a FakeClock when
//   nothing else touches the store). TTLs below `min_ttl` are raised to it,
//   like etcd does. A lease with a live LeaseKeepAlive never expires (the
//   keep-alive is assumed to refresh in time) unless the store is unavailable.
// - SetUnavailable(true) simulates losing etcd: calls return kRetry, open
//   watches end with kRetry, keep-alives stop refreshing.
//
// Thread-safety: everything is thread-safe (one mutex for the store, one per
// watcher / keep-alive; lock order store -> watcher/keep-alive). Watcher::Next
// waits in real time (a condition variable), not on the Clock.
// Watchers and keep-alives must not outlive the store.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/state_store.h"
#include "kmosix/status.h"

namespace kmosix::testing {

class FakeStateStore : public StateStore {
 public:
  struct Options {
    std::chrono::seconds min_ttl{2};  // etcd's default minimum lease TTL
  };

  explicit FakeStateStore(Clock& clock) : FakeStateStore(clock, Options{}) {}
  FakeStateStore(Clock& clock, Options options) : clock_(clock), options_(options) {}
  ~FakeStateStore() override {
    std::lock_guard lock(mu_);
    for (auto& w : watchers_) w->Finish(FailedError("watch cancelled: store destroyed"));
  }
  FakeStateStore(const FakeStateStore&) = delete;
  FakeStateStore& operator=(const FakeStateStore&) = delete;

  // Ends leases whose deadline passed on the clock.
  void ExpireLeases() {
    std::vector<std::pair<LeaseLostCallback, Status>> lost;
    {
      std::lock_guard lock(mu_);
      ExpireLocked(lost);
    }
    RunCallbacks(lost);
  }

  // Simulates etcd going away (true) and coming back (false).
  void SetUnavailable(bool unavailable) {
    std::lock_guard lock(mu_);
    unavailable_ = unavailable;
    if (unavailable) {
      for (auto& w : watchers_) w->Finish(RetryError("watch lost: store unavailable"));
      watchers_.clear();
    }
  }

  int64_t revision() const {
    std::lock_guard lock(mu_);
    return revision_;
  }

  StatusOr<GetResult> Get(const std::string& key, int64_t revision = 0) override {
    if (key.empty()) return InvalidError("empty key");
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    KMX_RETURN_IF_ERROR(CheckReadRevision(revision));
    GetResult out;
    out.revision = revision_;
    auto it = keys_.find(key);
    if (it != keys_.end()) out.kv = At(it->second, revision ? revision : revision_);
    return out;
  }

  StatusOr<ListResult> List(const std::string& prefix, const ListOptions& options = {}) override {
    if (options.limit < 0) return InvalidError("negative limit");
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    KMX_RETURN_IF_ERROR(CheckReadRevision(options.revision));
    int64_t at = options.revision ? options.revision : revision_;
    ListResult out;
    out.revision = revision_;
    for (auto it = keys_.lower_bound(prefix); it != keys_.end(); ++it) {
      if (it->first.compare(0, prefix.size(), prefix) != 0) break;
      auto kv = At(it->second, at);
      if (!kv) continue;
      if (options.limit && static_cast<int64_t>(out.kvs.size()) == options.limit) {
        out.more = true;
        break;
      }
      out.kvs.push_back(std::move(*kv));
    }
    return out;
  }

  StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                        const PutOptions& options = {}) override {
    KMX_ASSIGN_OR_RETURN(TxnResult r, Commit(Txn{{}, {TxnOp::Put(key, value, options.lease)}, {}}));
    return r.revision;
  }

  StatusOr<DeleteResult> Delete(const std::string& key) override {
    return DeleteOp(TxnOp::Delete(key));
  }

  StatusOr<DeleteResult> DeletePrefix(const std::string& prefix) override {
    return DeleteOp(TxnOp::DeletePrefix(prefix));
  }

  StatusOr<TxnResult> Commit(const Txn& txn) override {
    for (const auto& c : txn.compares)
      if (c.key.empty()) return InvalidError("empty key in compare");
    KMX_RETURN_IF_ERROR(CheckOps(txn.then_ops));
    KMX_RETURN_IF_ERROR(CheckOps(txn.else_ops));
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    bool ok = std::all_of(txn.compares.begin(), txn.compares.end(),
                          [&](const Compare& c) { return Holds(c); });
    const auto& ops = ok ? txn.then_ops : txn.else_ops;
    for (const auto& op : ops)
      if (op.kind == TxnOp::Kind::kPut && op.lease != 0 && !leases_.count(op.lease))
        return NotFoundError("lease not found: " + std::to_string(op.lease));
    Apply(ops);
    return TxnResult{ok, revision_};
  }

  Status Compact(int64_t revision) override {
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    if (revision > revision_)
      return InvalidError("compact: revision " + std::to_string(revision) + " is in the future");
    if (revision <= compacted_)
      return ConflictError("compact: revision " + std::to_string(revision) + " has been compacted");
    compacted_ = revision;
    for (auto it = keys_.begin(); it != keys_.end();) {
      auto& h = it->second;
      // Keep the newest record at or before `revision` if it is a live value.
      size_t keep_from = 0;
      for (size_t i = 0; i < h.size() && h[i].kv.mod_revision <= revision; ++i) keep_from = i;
      if (!h.empty() && h[keep_from].kv.mod_revision <= revision && h[keep_from].tombstone)
        ++keep_from;
      h.erase(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(keep_from));
      it = h.empty() ? keys_.erase(it) : std::next(it);
    }
    while (!log_.empty() && log_.front().kv.mod_revision < revision) log_.pop_front();
    return Status::Ok();
  }

  StatusOr<std::unique_ptr<Watcher>> Watch(const WatchOptions& options) override {
    if (options.key.empty() && !options.prefix) return InvalidError("empty key");
    if (options.start_revision < 0) return InvalidError("negative start revision");
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    auto w = std::make_shared<WatchState>();
    w->options = options;
    w->next_revision = options.start_revision ? options.start_revision : revision_ + 1;
    if (options.start_revision && options.start_revision < compacted_) {
      w->compact_revision = compacted_;
      w->Finish(ConflictError("watch from revision " + std::to_string(options.start_revision) +
                              ": compacted (history starts at " + std::to_string(compacted_) +
                              "), relist"));
    } else {
      std::vector<WatchEvent> replay;
      for (const auto& e : log_)
        if (e.kv.mod_revision >= w->next_revision && w->Matches(e.kv.key)) replay.push_back(e);
      w->Push(std::move(replay));
      watchers_.push_back(w);
    }
    return std::unique_ptr<Watcher>(std::make_unique<FakeWatcher>(w));
  }

  StatusOr<LeaseGrant> GrantLease(std::chrono::seconds ttl) override {
    if (ttl.count() <= 0) return InvalidError("lease TTL must be positive");
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    ttl = std::max(ttl, options_.min_ttl);
    int64_t id = next_lease_++;
    leases_[id] = LeaseRec{ttl, clock_.Now() + ttl, {}, {}};
    return LeaseGrant{id, ttl};
  }

  Status RevokeLease(int64_t id) override {
    std::vector<std::pair<LeaseLostCallback, Status>> lost;
    {
      Locked l(*this);
      KMX_RETURN_IF_ERROR(l.status);
      if (!leases_.count(id)) return NotFoundError("lease not found: " + std::to_string(id));
      EndLease(id, "revoked", lost);
    }
    RunCallbacks(lost);
    return Status::Ok();
  }

  StatusOr<std::chrono::seconds> LeaseTimeToLive(int64_t id) override {
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    auto it = leases_.find(id);
    if (it == leases_.end()) return NotFoundError("lease not found: " + std::to_string(id));
    auto left = std::chrono::ceil<std::chrono::seconds>(it->second.deadline - clock_.Now());
    return std::max(left, std::chrono::seconds(0));
  }

  StatusOr<std::unique_ptr<LeaseKeepAlive>> KeepAlive(int64_t id,
                                                      LeaseLostCallback on_lost = {}) override {
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    auto it = leases_.find(id);
    if (it == leases_.end()) return NotFoundError("lease not found: " + std::to_string(id));
    it->second.deadline = clock_.Now() + it->second.ttl;
    auto ka = std::make_shared<KeepAliveState>();
    ka->id = id;
    ka->on_lost = std::move(on_lost);
    it->second.keepalives.push_back(ka);
    return std::unique_ptr<LeaseKeepAlive>(std::make_unique<FakeKeepAlive>(ka));
  }

 private:
  struct Record {
    bool tombstone = false;
    KeyValue kv;  // kv.mod_revision: revision of this record
  };
  using History = std::vector<Record>;

  struct KeepAliveState {
    mutable std::mutex mu;
    std::condition_variable cv;
    int64_t id = 0;
    bool stopped = false;
    Status status;
    LeaseLostCallback on_lost;
  };

  struct LeaseRec {
    std::chrono::seconds ttl{0};
    Clock::TimePoint deadline;
    std::set<std::string> keys;
    std::vector<std::shared_ptr<KeepAliveState>> keepalives;
  };

  struct WatchState {
    mutable std::mutex mu;
    std::condition_variable cv;
    WatchOptions options;
    std::vector<WatchEvent> queue;
    Status terminal;  // ok while open
    int64_t next_revision = 0;
    int64_t compact_revision = 0;

    bool Matches(const std::string& key) const {
      if (!options.prefix) return key == options.key;
      return key.compare(0, options.key.size(), options.key) == 0;
    }
    void Push(std::vector<WatchEvent> events) {
      if (events.empty()) return;
      std::lock_guard lock(mu);
      if (!terminal.ok()) return;
      for (auto& e : events) {
        if (!options.prev_kv) e.prev_kv.reset();
        queue.push_back(std::move(e));
      }
      cv.notify_all();
    }
    void Finish(Status s) {
      std::lock_guard lock(mu);
      if (terminal.ok()) terminal = std::move(s);
      cv.notify_all();
    }
    bool done() const {
      std::lock_guard lock(mu);
      return !terminal.ok();
    }
  };

  class FakeWatcher : public Watcher {
   public:
    explicit FakeWatcher(std::shared_ptr<WatchState> s) : s_(std::move(s)) {}
    ~FakeWatcher() override { Cancel(); }
    StatusOr<std::vector<WatchEvent>> Next(std::chrono::milliseconds timeout) override {
      std::unique_lock lock(s_->mu);
      s_->cv.wait_for(lock, timeout, [&] { return !s_->queue.empty() || !s_->terminal.ok(); });
      if (!s_->queue.empty()) {
        std::vector<WatchEvent> out;
        out.swap(s_->queue);
        s_->next_revision = out.back().kv.mod_revision + 1;
        return out;
      }
      if (!s_->terminal.ok()) return s_->terminal;
      return std::vector<WatchEvent>{};
    }
    int64_t next_revision() const override {
      std::lock_guard lock(s_->mu);
      return s_->next_revision;
    }
    int64_t compact_revision() const override {
      std::lock_guard lock(s_->mu);
      return s_->compact_revision;
    }
    void Cancel() override {
      std::lock_guard lock(s_->mu);
      if (s_->terminal.ok()) s_->terminal = FailedError("watch cancelled");
      s_->queue.clear();
      s_->cv.notify_all();
    }

   private:
    std::shared_ptr<WatchState> s_;
  };

  class FakeKeepAlive : public LeaseKeepAlive {
   public:
    explicit FakeKeepAlive(std::shared_ptr<KeepAliveState> s) : s_(std::move(s)) {}
    ~FakeKeepAlive() override {
      std::lock_guard lock(s_->mu);
      s_->stopped = true;
    }
    int64_t lease() const override { return s_->id; }
    Status status() const override {
      std::lock_guard lock(s_->mu);
      return s_->status;
    }
    Status WaitLost(std::chrono::milliseconds timeout) override {
      std::unique_lock lock(s_->mu);
      s_->cv.wait_for(lock, timeout, [&] { return !s_->status.ok(); });
      return s_->status;
    }

   private:
    std::shared_ptr<KeepAliveState> s_;
  };

  // Takes the store lock, expires leases, and checks availability; runs the
  // lost-lease callbacks after unlocking.
  struct Locked {
    explicit Locked(FakeStateStore& s) : store(s), lock(s.mu_) {
      store.ExpireLocked(lost);
      if (store.unavailable_) status = RetryError("state store unavailable");
    }
    ~Locked() {
      lock.unlock();
      RunCallbacks(lost);
    }
    FakeStateStore& store;
    std::unique_lock<std::mutex> lock;
    std::vector<std::pair<LeaseLostCallback, Status>> lost;
    Status status;
  };

  static void RunCallbacks(std::vector<std::pair<LeaseLostCallback, Status>>& lost) {
    for (auto& [cb, st] : lost)
      if (cb) cb(st);
    lost.clear();
  }

  static Status CheckOps(const std::vector<TxnOp>& ops) {
    std::set<std::string> puts;
    for (const auto& op : ops) {
      if (op.key.empty() && op.kind != TxnOp::Kind::kDeletePrefix)
        return InvalidError("empty key in transaction");
      if (op.kind == TxnOp::Kind::kPut && !puts.insert(op.key).second)
        return InvalidError("duplicate key in transaction: " + op.key);
    }
    for (const auto& op : ops) {
      if (op.kind == TxnOp::Kind::kPut) continue;
      for (const auto& k : puts) {
        bool overlap = op.kind == TxnOp::Kind::kDelete ? k == op.key
                                                       : k.compare(0, op.key.size(), op.key) == 0;
        if (overlap) return InvalidError("duplicate key in transaction: " + k);
      }
    }
    return Status::Ok();
  }

  Status CheckReadRevision(int64_t revision) const {
    if (revision < 0) return InvalidError("negative revision");
    if (revision > revision_)
      return InvalidError("revision " + std::to_string(revision) + " is in the future");
    if (revision && revision < compacted_)
      return ConflictError("revision " + std::to_string(revision) + " has been compacted, relist");
    return Status::Ok();
  }

  // The key's value as of `rev`, if it existed then.
  static std::optional<KeyValue> At(const History& h, int64_t rev) {
    for (auto it = h.rbegin(); it != h.rend(); ++it) {
      if (it->kv.mod_revision > rev) continue;
      if (it->tombstone) return std::nullopt;
      return it->kv;
    }
    return std::nullopt;
  }

  const KeyValue* Current(const std::string& key) const {
    auto it = keys_.find(key);
    if (it == keys_.end() || it->second.empty() || it->second.back().tombstone) return nullptr;
    return &it->second.back().kv;
  }

  bool Holds(const Compare& c) const {
    const KeyValue* kv = Current(c.key);
    if (c.target == Compare::Target::kValue) {
      if (!kv) return false;
      int cmp = kv->value.compare(c.value);
      return Cmp(c.op, cmp < 0 ? -1 : (cmp > 0 ? 1 : 0));
    }
    int64_t have = 0;
    if (kv) {
      have = c.target == Compare::Target::kModRevision      ? kv->mod_revision
             : c.target == Compare::Target::kCreateRevision ? kv->create_revision
                                                            : kv->version;
    }
    return Cmp(c.op, have < c.number ? -1 : (have > c.number ? 1 : 0));
  }

  static bool Cmp(Compare::Op op, int sign) {
    switch (op) {
      case Compare::Op::kEqual:
        return sign == 0;
      case Compare::Op::kNotEqual:
        return sign != 0;
      case Compare::Op::kLess:
        return sign < 0;
      case Compare::Op::kGreater:
        return sign > 0;
    }
    return false;
  }

  StatusOr<DeleteResult> DeleteOp(TxnOp op) {
    KMX_RETURN_IF_ERROR(CheckOps({op}));
    Locked l(*this);
    KMX_RETURN_IF_ERROR(l.status);
    int64_t deleted = Apply({op});
    return DeleteResult{deleted, revision_};
  }

  // Applies ops at one new revision (if anything changes); returns the number
  // of keys deleted. Caller holds mu_ and has validated the ops.
  int64_t Apply(const std::vector<TxnOp>& ops) {
    const int64_t rev = revision_ + 1;
    std::vector<WatchEvent> events;
    int64_t deleted = 0;
    auto remove = [&](const std::string& key) {
      const KeyValue* cur = Current(key);
      if (!cur) return;
      WatchEvent e;
      e.type = WatchEvent::Type::kDelete;
      e.kv.key = key;
      e.kv.mod_revision = rev;
      e.prev_kv = *cur;
      DetachLease(cur->lease, key);
      keys_[key].push_back(Record{true, e.kv});
      events.push_back(std::move(e));
      ++deleted;
    };
    for (const auto& op : ops) {
      switch (op.kind) {
        case TxnOp::Kind::kPut: {
          const KeyValue* cur = Current(op.key);
          WatchEvent e;
          e.type = WatchEvent::Type::kPut;
          if (cur) e.prev_kv = *cur;
          e.kv = KeyValue{
              op.key,  op.value, cur ? cur->create_revision : rev, rev, cur ? cur->version + 1 : 1,
              op.lease};
          if (cur && cur->lease != op.lease) DetachLease(cur->lease, op.key);
          if (op.lease) leases_[op.lease].keys.insert(op.key);
          keys_[op.key].push_back(Record{false, e.kv});
          events.push_back(std::move(e));
          break;
        }
        case TxnOp::Kind::kDelete:
          remove(op.key);
          break;
        case TxnOp::Kind::kDeletePrefix: {
          std::vector<std::string> victims;
          for (auto it = keys_.lower_bound(op.key); it != keys_.end(); ++it) {
            if (it->first.compare(0, op.key.size(), op.key) != 0) break;
            if (!it->second.empty() && !it->second.back().tombstone) victims.push_back(it->first);
          }
          for (const auto& k : victims) remove(k);
          break;
        }
      }
    }
    if (events.empty()) return 0;
    revision_ = rev;
    log_.insert(log_.end(), events.begin(), events.end());
    std::erase_if(watchers_, [](const auto& w) { return w->done(); });
    for (auto& w : watchers_) {
      std::vector<WatchEvent> mine;
      for (const auto& e : events)
        if (w->Matches(e.kv.key)) mine.push_back(e);
      w->Push(std::move(mine));
    }
    return deleted;
  }

  void DetachLease(int64_t lease, const std::string& key) {
    auto it = leases_.find(lease);
    if (it != leases_.end()) it->second.keys.erase(key);
  }

  void EndLease(int64_t id, const char* why,
                std::vector<std::pair<LeaseLostCallback, Status>>& lost) {
    LeaseRec rec = std::move(leases_[id]);
    leases_.erase(id);
    std::vector<TxnOp> ops;
    for (const auto& k : rec.keys) ops.push_back(TxnOp::Delete(k));
    Apply(ops);
    for (auto& ka : rec.keepalives) {
      std::lock_guard lock(ka->mu);
      if (ka->stopped || !ka->status.ok()) continue;
      ka->status = NotFoundError("lease " + std::to_string(id) + " lost: " + why);
      ka->cv.notify_all();
      lost.emplace_back(ka->on_lost, ka->status);
    }
  }

  void ExpireLocked(std::vector<std::pair<LeaseLostCallback, Status>>& lost) {
    const auto now = clock_.Now();
    std::vector<int64_t> expired;
    for (auto& [id, rec] : leases_) {
      if (!unavailable_) {
        std::erase_if(rec.keepalives, [](const auto& ka) {
          std::lock_guard lock(ka->mu);
          return ka->stopped;
        });
        if (!rec.keepalives.empty()) rec.deadline = now + rec.ttl;
      }
      if (rec.deadline <= now) expired.push_back(id);
    }
    for (int64_t id : expired) EndLease(id, "expired", lost);
  }

  Clock& clock_;
  const Options options_;
  mutable std::mutex mu_;
  bool unavailable_ = false;
  int64_t revision_ = 1;
  int64_t compacted_ = 0;
  int64_t next_lease_ = 0x1000;
  std::map<std::string, History> keys_;
  std::deque<WatchEvent> log_;  // every event since the compaction, in revision order
  std::vector<std::shared_ptr<WatchState>> watchers_;
  std::map<int64_t, LeaseRec> leases_;
};

}  // namespace kmosix::testing
