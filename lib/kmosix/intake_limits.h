// Bounded intake of one node (the target side of migrations): how many
// migrations it receives at once, how much memory they may fault in ahead of
// their restores (one budget shared by all of them), and the most a transfer
// stream may carry (what the source's offer declared, under a hard ceiling).
//
// IntakeLimiter owns the counts. A migration takes a slot at Prepare
// (Admit) and gives it back when it no longer receives (Release: restored,
// committed or aborted); a migration over the limit is refused with a "busy"
// error, kRetry with a retry-after hint (BusyError), which the peer layer
// answers as 503 + Retry-After and the source treats as "nothing was
// prepared; ask again later". Prefault grants come from the shared budget and
// go back with the slot.
//
// Thread-safety: IntakeLimiter's methods are safe to call concurrently. The
// free functions are pure.
// Errors: Admit -> BusyError (kRetry); CheckOffer -> kInvalid for an offer
// that declares more than the ceiling (it can never fit here, do not retry).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix {

struct IntakeOptions {
  // Migrations received at once (Prepare to Restored/Aborted); 0: no limit.
  int max_incoming = 2;
  // Memory all incoming migrations may fault in ahead (CheckpointEngine::
  // Prepare's memory hint), together; 0: none is faulted in.
  uint64_t prefault_budget_bytes = uint64_t{8} << 30;
  // The Retry-After a busy refusal carries.
  std::chrono::seconds retry_after{2};
  // Hard ceiling of any stream, whatever its offer declared (0 fields: none).
  StreamLimits ceiling{1'000'000, uint64_t{128} << 30, 2'000'000};
};

// A refusal for lack of room: kRetry whose message ends with
// "; retry after <n> s" (it survives Annotate and the peer protocol's
// {"code","message"} answers).
Status BusyError(const std::string& why, std::chrono::seconds retry_after);
// The retry-after of a BusyError (nullopt for any other status).
std::optional<std::chrono::seconds> RetryAfterOf(const Status& s);

// A stream cut for going beyond its limits: the status the receiver reports
// (kInvalid, message prefixed with "stream over its intake limits: ").
Status StreamLimitError(const Status& why);
bool IsStreamLimitError(const Status& s);

// min() of two limits field by field, 0 meaning "no bound".
StreamLimits TightestLimits(const StreamLimits& a, const StreamLimits& b);

// What the limiter has counted, for metrics.
struct IntakeSnapshot {
  int incoming = 0;             // migrations holding a slot now
  uint64_t prefault_bytes = 0;  // granted now
  uint64_t admitted_total = 0;
  uint64_t refused_busy_total = 0;
  uint64_t refused_offer_total = 0;  // offers over the ceiling
  uint64_t streams_cut_total = 0;    // streams cut over their limits
};

class IntakeLimiter {
 public:
  explicit IntakeLimiter(IntakeOptions options) : options_(options) {}

  const IntakeOptions& options() const { return options_; }

  // kInvalid if the offer declares more than the ceiling; counts it.
  Status CheckOffer(const MigrationOffer& offer);
  // The limits a stream of this offer is held to: what it declared, under
  // the ceiling.
  StreamLimits LimitsFor(const MigrationOffer& offer) const;

  // Takes a slot for migration `id` (ok at once if it holds one); BusyError
  // when max_incoming migrations hold one.
  Status Admit(const std::string& id);
  // Grants `id` (which must hold a slot) up to `wanted` bytes of the
  // prefault budget; returns what it got (0 if no slot or budget left).
  uint64_t GrantPrefault(const std::string& id, uint64_t wanted);
  // Gives back id's slot and prefault grant; nothing if it holds none.
  void Release(const std::string& id);

  void CountStreamCut() { streams_cut_.fetch_add(1); }
  IntakeSnapshot Snapshot() const;

 private:
  const IntakeOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> holders_;  // id -> prefault bytes granted
  uint64_t prefault_bytes_ = 0;
  uint64_t admitted_ = 0;
  uint64_t refused_busy_ = 0;
  uint64_t refused_offer_ = 0;
  std::atomic<uint64_t> streams_cut_{0};
};

}  // namespace kmosix
