#include "transport_http/stream_receiver.h"

#include <spdlog/spdlog.h>

#include "kmosix/intake_limits.h"

namespace kmosix {

StreamReceiver::~StreamReceiver() {
  if (decoder_ && !reported_) Report(FailedError("receive abandoned"));
}

Status StreamReceiver::Begin(const std::string& id) {
  id_ = id;
  StatusOr<Landing> landing = target_.BeginReceive(id);
  if (!landing.ok()) return result_ = landing.status();
  start_ = clock_.Now();
  // The target's bounds for this stream (its offer's, under the node's
  // ceiling) tighten the carrier's own.
  const StreamLimits own{options_.max_files, options_.max_bytes, options_.max_entries};
  const StreamLimits limits = TightestLimits(own, target_.ReceiveLimits(id));
  options_.max_files = limits.files;
  options_.max_bytes = limits.bytes;
  options_.max_entries = limits.entries;
  decoder_.emplace(std::move(*landing), options_);
  return Status::Ok();
}

void StreamReceiver::Report(const Status& s) {
  reported_ = true;
  TransferStats stats = decoder_->stats();
  stats.seconds = Seconds(clock_.Now() - start_);
  if (Status e = target_.EndReceive(id_, s, stats); !e.ok() && s.ok()) {
    result_ = e;
  } else if (!e.ok()) {
    spdlog::warn("migration {}: EndReceive: {}", id_, e.ToString());
  }
}

Status StreamReceiver::Feed(const char* data, size_t n) {
  if (!result_.ok() || !decoder_) return result_;
  result_ = decoder_->Feed(data, n);
  if (!result_.ok() && decoder_->over_limits()) result_ = StreamLimitError(result_);
  if (!result_.ok()) {
    spdlog::warn("migration {}: receive failed: {}", id_, result_.ToString());
    Report(result_);  // abort early; the carrier may still be draining
  }
  return result_;
}

StatusOr<TransferStats> StreamReceiver::End(bool cut) {
  if (!decoder_) return result_.ok() ? FailedError("no stream begun") : result_;
  if (result_.ok()) {
    result_ = cut ? FailedError("stream cut after " + std::to_string(decoder_->consumed()) +
                                " bytes (connection closed or timed out)")
                  : decoder_->Finish();
    if (!result_.ok()) spdlog::warn("migration {}: receive failed: {}", id_, result_.ToString());
  }
  if (!reported_) Report(result_);
  if (!result_.ok()) return result_;
  TransferStats stats = decoder_->stats();
  stats.seconds = Seconds(clock_.Now() - start_);
  return stats;
}

}  // namespace kmosix
