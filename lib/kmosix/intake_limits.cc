#include "kmosix/intake_limits.h"

#include <algorithm>
#include <charconv>

namespace kmosix {
namespace {

constexpr std::string_view kRetryAfter = "; retry after ";
constexpr std::string_view kStreamLimit = "stream over its intake limits: ";

uint64_t Tighter(uint64_t a, uint64_t b) {
  if (a == 0) return b;
  if (b == 0) return a;
  return std::min(a, b);
}

// "<what> <declared> over the ceiling <ceiling>" if declared > ceiling > 0.
std::string Over(std::string_view what, uint64_t declared, uint64_t ceiling) {
  if (ceiling == 0 || declared <= ceiling) return "";
  return std::string(what) + " " + std::to_string(declared) + " over this node's ceiling " +
         std::to_string(ceiling);
}

}  // namespace

Status BusyError(const std::string& why, std::chrono::seconds retry_after) {
  return RetryError(why + std::string(kRetryAfter) + std::to_string(retry_after.count()) + " s");
}

std::optional<std::chrono::seconds> RetryAfterOf(const Status& s) {
  if (s.code() != Code::kRetry) return std::nullopt;
  const std::string& m = s.message();
  const size_t at = m.rfind(kRetryAfter);
  if (at == std::string::npos) return std::nullopt;
  const char* p = m.data() + at + kRetryAfter.size();
  const char* end = m.data() + m.size();
  int64_t n = 0;
  auto [rest, ec] = std::from_chars(p, end, n);
  if (ec != std::errc() || rest == p || n < 0 || std::string_view(rest, end - rest) != " s") {
    return std::nullopt;
  }
  return std::chrono::seconds(n);
}

Status StreamLimitError(const Status& why) {
  if (IsStreamLimitError(why)) return why;
  return InvalidError(std::string(kStreamLimit) + why.message());
}

bool IsStreamLimitError(const Status& s) {
  return s.code() == Code::kInvalid && s.message().find(kStreamLimit) != std::string::npos;
}

StreamLimits TightestLimits(const StreamLimits& a, const StreamLimits& b) {
  return {Tighter(a.files, b.files), Tighter(a.bytes, b.bytes), Tighter(a.entries, b.entries)};
}

Status IntakeLimiter::CheckOffer(const MigrationOffer& offer) {
  const StreamLimits& d = offer.stream;
  const StreamLimits& c = options_.ceiling;
  std::string why = Over("files", d.files, c.files);
  if (why.empty()) why = Over("bytes", d.bytes, c.bytes);
  if (why.empty()) why = Over("entries", d.entries, c.entries);
  if (why.empty()) return Status::Ok();
  std::lock_guard lock(mu_);
  ++refused_offer_;
  return InvalidError("the offer's stream declares " + why);
}

StreamLimits IntakeLimiter::LimitsFor(const MigrationOffer& offer) const {
  return TightestLimits(offer.stream, options_.ceiling);
}

Status IntakeLimiter::Admit(const std::string& id) {
  std::lock_guard lock(mu_);
  if (holders_.contains(id)) return Status::Ok();
  if (options_.max_incoming > 0 && holders_.size() >= static_cast<size_t>(options_.max_incoming)) {
    ++refused_busy_;
    return BusyError("busy: " + std::to_string(holders_.size()) +
                         " incoming migrations in flight, the limit is " +
                         std::to_string(options_.max_incoming),
                     options_.retry_after);
  }
  holders_.emplace(id, 0);
  ++admitted_;
  return Status::Ok();
}

uint64_t IntakeLimiter::GrantPrefault(const std::string& id, uint64_t wanted) {
  std::lock_guard lock(mu_);
  auto it = holders_.find(id);
  if (it == holders_.end()) return 0;
  const uint64_t left = options_.prefault_budget_bytes > prefault_bytes_
                            ? options_.prefault_budget_bytes - prefault_bytes_
                            : 0;
  const uint64_t grant = std::min(wanted, left);
  it->second += grant;
  prefault_bytes_ += grant;
  return grant;
}

void IntakeLimiter::Release(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = holders_.find(id);
  if (it == holders_.end()) return;
  prefault_bytes_ -= it->second;
  holders_.erase(it);
}

IntakeSnapshot IntakeLimiter::Snapshot() const {
  std::lock_guard lock(mu_);
  IntakeSnapshot s;
  s.incoming = static_cast<int>(holders_.size());
  s.prefault_bytes = prefault_bytes_;
  s.admitted_total = admitted_;
  s.refused_busy_total = refused_busy_;
  s.refused_offer_total = refused_offer_;
  s.streams_cut_total = streams_cut_.load();
  return s;
}

}  // namespace kmosix
