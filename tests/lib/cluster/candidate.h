// Test helpers for LeaderElection: a candidate running an election on its
// own thread whose lead() records each term and holds it until it is lost
// (or gives up at once while `give_up` is set), and Eventually().
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/leader_election.h"

namespace kmosix::testing {

// Waits (generously, in real time) for `pred`.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// An election on its own thread; lead() records the term and holds it until
// it is lost (or, if `give_up` is set, returns at once).
class Candidate {
 public:
  Candidate(StateStore& store, Clock& clock, const std::string& key, const std::string& id,
            bool give_up_at_first = false, std::chrono::seconds ttl = std::chrono::seconds(5))
      : election(store, clock, cluster::LeaderElection::Options{key, id, ttl}),
        identity(id),
        give_up(give_up_at_first) {
    thread_ = std::thread([this] {
      election.Run([this](const cluster::LeaderTerm& term) {
        {
          std::lock_guard lock(mu_);
          fences_.push_back(term.Fence());
          revisions_.push_back(term.revision());
        }
        terms_++;
        leading_++;
        if (!give_up) {
          while (!term.WaitLost(std::chrono::milliseconds(50))) {
          }
        }
        EXPECT_TRUE(give_up || term.Lost());
        leading_--;
        ended_++;
      });
    });
  }
  ~Candidate() { StopAndJoin(); }
  void StopAndJoin() {
    election.Stop();
    if (thread_.joinable()) thread_.join();
  }
  bool leading() const { return leading_.load() > 0; }
  int terms() const { return terms_.load(); }
  int ended() const { return ended_.load(); }
  Compare LastFence() const {
    std::lock_guard lock(mu_);
    return fences_.back();
  }
  std::vector<int64_t> Revisions() const {
    std::lock_guard lock(mu_);
    return revisions_;
  }

  cluster::LeaderElection election;
  std::string identity;
  std::atomic<bool> give_up{false};

 private:
  mutable std::mutex mu_;
  std::vector<Compare> fences_;
  std::vector<int64_t> revisions_;
  std::atomic<int> terms_{0};
  std::atomic<int> leading_{0};
  std::atomic<int> ended_{0};
  std::thread thread_;
};

}  // namespace kmosix::testing
