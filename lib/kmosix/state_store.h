// StateStore: the seam over the cluster's shared state (etcd v3 semantics).
//
// A flat, ordered key space of byte strings with multi-version concurrency
// control (MVCC):
//   - every write (put, delete, transaction with writes, lease expiry) bumps a
//     store-wide `revision` (a fresh store is at revision 1);
//   - each key carries create_revision (revision of its creation),
//     mod_revision (of its last write) and version (1 at creation, +1 per
//     put; a delete resets the key: it is absent, create_revision 0);
//   - old revisions are kept until compacted; reads at, and watches from, a
//     compacted revision fail with kConflict ("relist").
//
// Implementations: EtcdStateStore (lib/etcd/etcd_state_store.h) and the
// in-memory FakeStateStore (tests/fakes/fake_state_store.h); the conformance
// suite tests/lib/kmosix/state_store_conformance.h runs against both.
//
// Ownership: the caller owns the store and every Watcher / LeaseKeepAlive it
// hands out. A Watcher or LeaseKeepAlive must be destroyed before its store.
// Destroying a Watcher cancels the watch; destroying a LeaseKeepAlive stops
// refreshing (it does not revoke: the lease then expires after its TTL).
//
// Thread-safety: StateStore methods may be called concurrently from any
// thread. A Watcher's Next() is called by one thread at a time; Cancel() and
// the accessors may be called from any thread. LeaseKeepAlive is fully
// thread-safe; its on_lost callback runs once, on an internal thread (or on
// the thread that caused the loss in the fake), without store locks held, and
// must not destroy the LeaseKeepAlive itself.
//
// Error contract (errors as values, nothing throws):
//   - store unreachable / timeout / leader lost          -> kRetry
//   - a transaction whose compares fail is NOT an error:   TxnResult.succeeded = false
//   - revision compacted (read at / watch from it)        -> kConflict, message
//     contains "compacted"; the caller relists (List at revision 0, then
//     watches from ListResult.revision + 1)
//   - empty key, future revision, duplicate key in one
//     transaction, TTL <= 0, bad argument                -> kInvalid
//   - unknown lease (put with it, revoke, keep alive)     -> kNotFound
//   - a missing key is not an error: Get returns kv = nullopt
//   - anything else                                       -> kFailed
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kmosix/status.h"

namespace kmosix {

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;  // 0: not attached to a lease
  bool operator==(const KeyValue&) const = default;
};

struct GetResult {
  std::optional<KeyValue> kv;  // nullopt: no such key (at that revision)
  int64_t revision = 0;        // store revision the read was served at
};

struct ListOptions {
  int64_t revision = 0;  // 0: latest; else read the state as of that revision
  int64_t limit = 0;     // 0: no limit
};

struct ListResult {
  std::vector<KeyValue> kvs;  // sorted by key (bytewise)
  int64_t revision = 0;       // store revision the read was served at
  bool more = false;          // limit cut the result short
};

struct PutOptions {
  int64_t lease = 0;  // attach to this lease (the key is deleted when it ends)
};

struct DeleteResult {
  int64_t deleted = 0;   // number of keys deleted (0: nothing; no new revision)
  int64_t revision = 0;  // store revision after the call
};

// One condition of a transaction. On a missing key: create_revision,
// mod_revision and version compare as 0, and every value compare is false.
struct Compare {
  enum class Target { kModRevision, kCreateRevision, kVersion, kValue };
  enum class Op { kEqual, kNotEqual, kLess, kGreater };
  std::string key;
  Target target = Target::kModRevision;
  Op op = Op::kEqual;
  int64_t number = 0;  // revision or version (all targets but kValue)
  std::string value;   // kValue only

  static Compare ModRevision(std::string key, Op op, int64_t rev) {
    return {std::move(key), Target::kModRevision, op, rev, {}};
  }
  static Compare CreateRevision(std::string key, Op op, int64_t rev) {
    return {std::move(key), Target::kCreateRevision, op, rev, {}};
  }
  static Compare Version(std::string key, Op op, int64_t version) {
    return {std::move(key), Target::kVersion, op, version, {}};
  }
  static Compare Value(std::string key, Op op, std::string value) {
    return {std::move(key), Target::kValue, op, 0, std::move(value)};
  }
  // The key does not exist (create_revision == 0).
  static Compare Absent(std::string key) { return CreateRevision(std::move(key), Op::kEqual, 0); }
  // The key was not written since `mod_revision` (the usual CAS).
  static Compare Unchanged(std::string key, int64_t mod_revision) {
    return ModRevision(std::move(key), Op::kEqual, mod_revision);
  }
};

struct TxnOp {
  enum class Kind { kPut, kDelete, kDeletePrefix };
  Kind kind = Kind::kPut;
  std::string key;  // key, or prefix for kDeletePrefix
  std::string value;
  int64_t lease = 0;

  static TxnOp Put(std::string key, std::string value, int64_t lease = 0) {
    return {Kind::kPut, std::move(key), std::move(value), lease};
  }
  static TxnOp Delete(std::string key) { return {Kind::kDelete, std::move(key), {}, 0}; }
  static TxnOp DeletePrefix(std::string prefix) {
    return {Kind::kDeletePrefix, std::move(prefix), {}, 0};
  }
};

// If all compares hold, apply `then_ops`, else `else_ops`, atomically, at one
// new revision (none if the chosen branch wrote nothing). A key may be written
// at most once per branch (kInvalid otherwise).
struct Txn {
  std::vector<Compare> compares;
  std::vector<TxnOp> then_ops;
  std::vector<TxnOp> else_ops;
};

struct TxnResult {
  bool succeeded = false;  // the compares held and then_ops were applied
  int64_t revision = 0;    // store revision after the transaction
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  // kPut: the key as written. kDelete: key and mod_revision (the revision of
  // the delete) only; the other fields are 0.
  KeyValue kv;
  // The key before this event, when WatchOptions.prev_kv is set and the
  // previous version is still known (nullopt on creation).
  std::optional<KeyValue> prev_kv;
};

struct WatchOptions {
  std::string key;  // the key, or the prefix if `prefix` ("" + prefix: all keys)
  bool prefix = false;
  // First revision to report. 0: changes after the watch is created. A past
  // revision replays history from there (kConflict if compacted).
  int64_t start_revision = 0;
  bool prev_kv = false;
};

// A watch on a key or prefix: events in revision order, each revision
// delivered whole (all events of one transaction in the same batch).
class Watcher {
 public:
  virtual ~Watcher() = default;  // cancels the watch

  // Waits up to `timeout` for events; returns an empty batch on timeout.
  // A non-ok status is terminal (every later call returns it again):
  //   kConflict "compacted"  - start_revision was compacted: relist, then
  //                             watch from ListResult.revision + 1
  //                             (compact_revision() tells where history starts);
  //   kRetry                 - the store went away or cancelled the watch (e.g.
  //                             etcd restarted): watch again from
  //                             next_revision() (kConflict then if compacted);
  //   kFailed "cancelled"    - Cancel() was called.
  virtual StatusOr<std::vector<WatchEvent>> Next(std::chrono::milliseconds timeout) = 0;

  // The revision to resume from: one past the last delivered event (or the
  // first revision this watch covers). Stable after a terminal error.
  virtual int64_t next_revision() const = 0;
  // After kConflict: the oldest revision still available; 0 otherwise.
  virtual int64_t compact_revision() const = 0;
  // Stops the watch; a blocked Next() returns kFailed "cancelled". Idempotent.
  virtual void Cancel() = 0;
};

struct LeaseGrant {
  int64_t id = 0;
  // The TTL granted; may exceed the one asked for (etcd raises TTLs below
  // its minimum, 2 s with default election settings).
  std::chrono::seconds ttl{0};
};

// Keeps a lease alive in the background (refreshing every TTL/3) until
// destroyed, or until the lease is lost.
class LeaseKeepAlive {
 public:
  virtual ~LeaseKeepAlive() = default;  // stops refreshing, does not revoke
  virtual int64_t lease() const = 0;
  // Ok while the lease is believed alive. Once lost (terminal):
  //   kNotFound - the store says the lease is gone (expired or revoked);
  //   kRetry    - the store was unreachable for a whole TTL: presume expired.
  // Either way: grant a new lease and rewrite the keys.
  virtual Status status() const = 0;
  // Blocks until the lease is lost or `timeout` passes; returns status().
  virtual Status WaitLost(std::chrono::milliseconds timeout) = 0;
};

using LeaseLostCallback = std::function<void(const Status&)>;

class StateStore {
 public:
  virtual ~StateStore() = default;

  // The key as of `revision` (0: latest).
  virtual StatusOr<GetResult> Get(const std::string& key, int64_t revision = 0) = 0;
  // Keys starting with `prefix` ("" lists every key).
  virtual StatusOr<ListResult> List(const std::string& prefix, const ListOptions& options = {}) = 0;
  // Returns the revision of the write.
  virtual StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                                const PutOptions& options = {}) = 0;
  virtual StatusOr<DeleteResult> Delete(const std::string& key) = 0;
  virtual StatusOr<DeleteResult> DeletePrefix(const std::string& prefix) = 0;
  // Compare-and-swap. Failed compares are not an error (succeeded = false).
  virtual StatusOr<TxnResult> Commit(const Txn& txn) = 0;
  // Drops history before `revision` (reads at and watches from older
  // revisions then fail with kConflict). kInvalid for a future revision,
  // kConflict if `revision` is already compacted.
  virtual Status Compact(int64_t revision) = 0;

  // Returns once the watch is registered: every write after Watch() returns
  // is reported (with start_revision 0).
  virtual StatusOr<std::unique_ptr<Watcher>> Watch(const WatchOptions& options) = 0;

  virtual StatusOr<LeaseGrant> GrantLease(std::chrono::seconds ttl) = 0;
  // Ends the lease now, deleting its keys. kNotFound if unknown/expired.
  virtual Status RevokeLease(int64_t id) = 0;
  // Seconds left; kNotFound if the lease is gone.
  virtual StatusOr<std::chrono::seconds> LeaseTimeToLive(int64_t id) = 0;
  // Refreshes once before returning (kNotFound if the lease is gone, kRetry if
  // unreachable), then keeps refreshing in the background. `on_lost` (may be
  // empty) runs once when the lease is lost, with the status().
  virtual StatusOr<std::unique_ptr<LeaseKeepAlive>> KeepAlive(int64_t id,
                                                              LeaseLostCallback on_lost = {}) = 0;
};

// The end of the key range covering every key starting with `prefix`
// (etcd's range_end): the prefix with its last byte below 0xff incremented,
// and trailing 0xff bytes dropped. "\0" when no such key exists (prefix empty
// or all 0xff): "to the end of the key space".
inline std::string PrefixRangeEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

}  // namespace kmosix
