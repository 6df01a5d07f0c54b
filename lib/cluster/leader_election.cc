#include "cluster/leader_election.h"

#include <algorithm>
#include <memory>
#include <thread>
#include <utility>

namespace kmosix::cluster {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kMaxBackoff{2000};
// How long one Watcher::Next() waits before the loops look at their flags.
constexpr milliseconds kPoll{200};

}  // namespace

// One term: its create revision, and whether (and why) it ended. Shared by the
// campaign loop, the key monitor thread and the keep-alive's on_lost callback.
class LeaderElection::Term : public LeaderTerm {
 public:
  Term(std::string key, int64_t revision, int64_t lease)
      : key_(std::move(key)), revision_(revision), lease_(lease) {}

  int64_t revision() const override { return revision_; }
  int64_t lease() const { return lease_; }
  Compare Fence() const override {
    return Compare::CreateRevision(key_, Compare::Op::kEqual, revision_);
  }
  bool Lost() const override {
    std::lock_guard lock(mu_);
    return lost_;
  }
  bool WaitLost(std::chrono::milliseconds timeout) const override {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return lost_; });
    return lost_;
  }

  // Ends the term (idempotent; the first reason sticks) and wakes the monitor.
  void End(const std::string& why) {
    std::lock_guard lock(mu_);
    if (lost_) return;
    lost_ = true;
    why_ = why;
    if (watcher_ != nullptr) watcher_->Cancel();
    cv_.notify_all();
  }
  // The monitor's current watch (cancelled by End); false (and not kept) if
  // the term is already lost.
  bool SetWatcher(Watcher* w) {
    std::lock_guard lock(mu_);
    if (lost_ && w != nullptr) return false;
    watcher_ = w;
    return true;
  }

 private:
  const std::string key_;
  const int64_t revision_;
  const int64_t lease_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool lost_ = false;
  std::string why_;
  Watcher* watcher_ = nullptr;
};

// A lease with its keep-alive; `lost` is set by the keep-alive's on_lost
// callback, which also ends the term running on the lease, if any.
struct LeaderElection::Session {
  std::mutex mu;
  bool lost = false;
  std::shared_ptr<Term> term;
  void Lose(const std::string& why) {
    std::shared_ptr<Term> t;
    {
      std::lock_guard lock(mu);
      lost = true;
      t = term;
    }
    if (t) t->End(why);
  }
  bool Lost() {
    std::lock_guard lock(mu);
    return lost;
  }
};

LeaderElection::LeaderElection(StateStore& store, Clock& clock, Options options)
    : store_(store), clock_(clock), options_(std::move(options)) {}

LeaderElection::~LeaderElection() { Stop(); }

void LeaderElection::Stop() {
  std::lock_guard lock(mu_);
  stopped_ = true;
  if (term_ != nullptr) term_->End("election stopped");
  if (watcher_ != nullptr) watcher_->Cancel();
  cv_.notify_all();
}

bool LeaderElection::IsLeader() const {
  std::lock_guard lock(mu_);
  return term_ != nullptr && !term_->Lost();
}

StatusOr<std::string> LeaderElection::CurrentLeader() {
  KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(options_.key));
  return got.kv ? got.kv->value : std::string();
}

bool LeaderElection::WaitBackoff(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, d, [&] { return stopped_.load(); });
  return !stopped_;
}

// Waits until the leader key is gone (true), or our session/election ends or
// the store fails (false: back off before campaigning again). If the key turns
// out to be ours (a campaign whose reply was lost), sets *ours to its
// create_revision and returns false.
bool LeaderElection::WaitForVacancy(Session& session, int64_t lease, int64_t* ours) {
  auto got = store_.Get(options_.key);
  if (!got.ok()) return false;
  if (!got->kv) return true;
  if (got->kv->lease == lease) {
    *ours = got->kv->create_revision;
    return false;
  }
  WatchOptions wo;
  wo.key = options_.key;
  wo.start_revision = got->revision + 1;
  auto watched = store_.Watch(wo);
  if (!watched.ok()) return false;
  std::unique_ptr<Watcher> w = std::move(*watched);
  {
    std::lock_guard lock(mu_);
    if (stopped_) return false;
    watcher_ = w.get();
  }
  bool vacant = false;
  while (!vacant && !stopped_ && !session.Lost()) {
    auto batch = w->Next(kPoll);
    if (!batch.ok()) break;
    for (const auto& e : *batch) {
      if (e.type == WatchEvent::Type::kDelete) vacant = true;
    }
  }
  {
    std::lock_guard lock(mu_);
    watcher_ = nullptr;
  }
  return vacant;
}

// Ends `term` when the leader key is deleted, re-created (create_revision
// changes) or overwritten without our lease. Runs on its own thread until the term is lost.
void LeaderElection::Monitor(Term& term) {
  // Judges the term by the key as it is now; returns the revision to watch
  // from next (`fallback` if the store did not answer).
  auto check = [&](int64_t fallback) -> int64_t {
    auto got = store_.Get(options_.key);
    if (!got.ok()) return fallback;
    if (!got->kv) {
      term.End("leader key deleted");
    } else if (got->kv->create_revision != term.revision()) {
      term.End("leader key re-created by someone else");
    } else if (got->kv->lease != term.lease()) {
      term.End("leader key overwritten by someone else");
    }
    return got->revision + 1;
  };
  int64_t from = term.revision() + 1;
  while (!term.Lost()) {
    WatchOptions wo;
    wo.key = options_.key;
    wo.start_revision = from;
    auto watched = store_.Watch(wo);
    if (!watched.ok()) {
      if (watched.status().code() == Code::kConflict) from = check(from);
      term.WaitLost(kPoll);
      continue;
    }
    std::unique_ptr<Watcher> w = std::move(*watched);
    if (!term.SetWatcher(w.get())) break;
    while (!term.Lost()) {
      auto batch = w->Next(kPoll);
      if (!batch.ok()) {
        if (batch.status().code() == Code::kConflict) {
          from = check(from);  // history is gone: judge by the key as it is now
        } else {
          from = w->next_revision();
        }
        term.WaitLost(kPoll);
        break;
      }
      for (const auto& e : *batch) {
        if (e.type == WatchEvent::Type::kDelete) {
          term.End("leader key deleted");
        } else if (e.kv.create_revision != term.revision()) {
          term.End("leader key re-created by someone else");
        } else if (e.kv.lease != term.lease()) {
          term.End("leader key overwritten by someone else");
        }
      }
    }
    term.SetWatcher(nullptr);
  }
}

void LeaderElection::Run(const std::function<void(const LeaderTerm&)>& lead) {
  milliseconds backoff = kFirstBackoff;
  auto back_off = [&] {
    bool running = WaitBackoff(backoff);
    backoff = std::min(backoff * 2, kMaxBackoff);
    return running;
  };

  while (!stopped_) {
    // A lease for this campaign, kept alive until it is lost or dropped.
    auto grant = store_.GrantLease(options_.ttl);
    if (!grant.ok()) {
      if (!back_off()) break;
      continue;
    }
    const int64_t lease = grant->id;
    auto session = std::make_shared<Session>();
    auto ka = store_.KeepAlive(
        lease, [session](const Status& s) { session->Lose("leader lease lost: " + s.ToString()); });
    if (!ka.ok()) {
      (void)store_.RevokeLease(lease);
      if (!back_off()) break;
      continue;
    }
    std::unique_ptr<LeaseKeepAlive> keep_alive = std::move(*ka);

    // Campaign on this lease until elected, or the lease is lost, or stopped.
    while (!stopped_ && !session->Lost()) {
      Txn txn;
      txn.compares = {Compare::Absent(options_.key)};
      txn.then_ops = {TxnOp::Put(options_.key, options_.identity, lease)};
      auto won = store_.Commit(txn);
      if (!won.ok()) {
        if (won.status().code() == Code::kNotFound) session->Lose(won.status().ToString());
        if (!back_off()) break;
        continue;
      }
      // Won: the key was created at the transaction's revision.
      int64_t revision = won->succeeded ? won->revision : 0;
      if (!won->succeeded) {
        // Someone else leads: wait until the key goes, then try again (or find
        // that the key is ours after all).
        if (!WaitForVacancy(*session, lease, &revision) && revision == 0 && !stopped_ &&
            !session->Lost()) {
          if (!back_off()) break;
        }
        if (revision == 0) continue;
      }

      backoff = kFirstBackoff;
      auto term = std::make_shared<Term>(options_.key, revision, lease);
      {
        std::lock_guard lock(session->mu);
        session->term = term;
        if (session->lost) term->End("leader lease lost");
      }
      {
        std::lock_guard lock(mu_);
        term_ = term.get();
        if (stopped_) term->End("election stopped");
      }
      std::thread monitor([this, term] { Monitor(*term); });
      lead(*term);
      term->End("lead returned");
      monitor.join();
      {
        std::lock_guard lock(mu_);
        term_ = nullptr;
      }
      break;  // a term ends its lease: campaign again on a fresh one
    }

    // Drop the lease: stop refreshing, then revoke (its key goes at once).
    keep_alive.reset();
    (void)store_.RevokeLease(lease);
  }
}

}  // namespace kmosix::cluster
