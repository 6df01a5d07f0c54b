// Leader election over a StateStore: one key (KeyLayout::Leader()), written
// with a transaction "create only if absent" under a lease that is kept alive.
// The winner's term is identified by the key's create_revision; every write
// the leader makes should carry Fence() as a compare, so a deposed leader's
// late writes fail instead of racing the new one.
//
// Ownership: borrows the store and clock (they must outlive the election).
// Thread-safety: Run() is called from one thread; Stop(), IsLeader(),
// CurrentLeader() from any thread.
// Errors: Run() only returns when stopped; store errors are retried with
// backoff (a term in progress ends when its lease is lost). Backoff (100 ms
// doubling to 2 s) waits in real time on a condition variable, so Stop() is
// prompt and a FakeClock is never advanced by the election.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>

#include "kmosix/clock.h"
#include "kmosix/state_store.h"

namespace kmosix::cluster {

// One term of leadership, handed to the leader's work function.
class LeaderTerm {
 public:
  virtual ~LeaderTerm() = default;
  // create_revision of the leader key for this term.
  virtual int64_t revision() const = 0;
  // Compare that holds only while this term lasts.
  virtual Compare Fence() const = 0;
  // True once the term ended (lease lost, key deleted/overwritten, Stop()).
  virtual bool Lost() const = 0;
  // Waits up to `timeout` for the term to end; returns Lost().
  virtual bool WaitLost(std::chrono::milliseconds timeout) const = 0;
};

class LeaderElection {
 public:
  struct Options {
    std::string key;       // e.g. KeyLayout{}.Leader()
    std::string identity;  // stored as the key's value, e.g. "host:pid"
    std::chrono::seconds ttl{5};
  };
  LeaderElection(StateStore& store, Clock& clock, Options options);
  ~LeaderElection();

  // Campaigns until elected, then calls lead(term) on this thread. When lead
  // returns (it must return soon after term.Lost()), the term is ended: the
  // lease is revoked (the key goes at once) and the election campaigns again,
  // until Stop(). Returns after Stop().
  void Run(const std::function<void(const LeaderTerm&)>& lead);
  // Ends the current term (lead sees Lost()) and makes Run() return. Idempotent.
  void Stop();

  bool IsLeader() const;
  // Identity stored in the leader key ("" if none), read from the store.
  StatusOr<std::string> CurrentLeader();

 private:
  class Term;
  struct Session;
  bool WaitBackoff(std::chrono::milliseconds d);
  bool WaitForVacancy(Session& session, int64_t lease, int64_t* ours);
  void Monitor(Term& term);

  StateStore& store_;
  Clock& clock_;
  Options options_;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> leader_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Term* term_ = nullptr;        // current term, guarded by mu_
  Watcher* watcher_ = nullptr;  // campaign's watch on the key, guarded by mu_
};

}  // namespace kmosix::cluster
