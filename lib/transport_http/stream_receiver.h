// Receives one transfer stream for a MigrationTarget, whatever carries it
// (the HTTP stream route or the raw data channel): Begin moves the migration
// to Receiving and opens the decoder, Feed decodes, End verifies the end and
// reports the outcome to the target exactly once. The decoder is held to the
// tightest of the carrier's DecoderOptions and target.ReceiveLimits(id); a
// stream cut for going beyond them fails with StreamLimitError
// (kmosix/intake_limits.h).
// Not thread-safe: one receiver per stream. Internal to this adapter.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "kmosix/clock.h"
#include "kmosix/transfer_stream.h"
#include "kmosix/transport.h"

namespace kmosix {

class StreamReceiver {
 public:
  StreamReceiver(MigrationTarget& target, Clock& clock, DecoderOptions options)
      : target_(target), clock_(clock), options_(options) {}
  ~StreamReceiver();

  Status Begin(const std::string& id);
  // After an error, further data is ignored (the caller may drain it).
  Status Feed(const char* data, size_t n);
  // `cut`: the carrier ended before the stream did (closed, timed out).
  // Returns the stream's outcome; the target has been told.
  StatusOr<TransferStats> End(bool cut);
  const Status& status() const { return result_; }

 private:
  void Report(const Status& s);

  MigrationTarget& target_;
  Clock& clock_;
  DecoderOptions options_;
  std::string id_;
  std::optional<StreamDecoder> decoder_;
  Clock::TimePoint start_{};
  Status result_;
  bool reported_ = false;
};

}  // namespace kmosix
