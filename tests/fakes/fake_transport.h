// In-process Transport for unit tests: every call goes straight to a
// MigrationTarget (normally a real IncomingMigrations over a FakeRuntime).
// Faults: Down() makes the peer unreachable; DropRequest(m) loses a call
// before delivery; DropResponse(m) delivers it and loses the answer; CutTransfer()
// cuts the stream after its first section record. All of these answer kRetry,
// as a network failure would. Fail(m, status) answers `status` to calls of m
// before delivering them (e.g. what a malformed reply parses to). Send runs the real transfer stream codec
// (encoder straight into decoder), held to target->ReceiveLimits(id).
// Thread-safe enough for single-threaded tests.
#pragma once

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "kmosix/intake_limits.h"
#include "kmosix/transfer_stream.h"
#include "kmosix/transport.h"

namespace kmosix::testing {

class FakeTransport : public Transport {
 public:
  explicit FakeTransport(MigrationTarget* target) : target_(target) {}

  void Down(bool down) { down_ = down; }
  void DropRequest(const std::string& m) { drop_request_.insert(m); }
  void DropResponse(const std::string& m) { drop_response_.insert(m); }
  void Heal() {
    down_ = false;
    drop_request_.clear();
    drop_response_.clear();
    cut_ = false;
    fail_.clear();
  }
  void CutTransfer() { cut_ = true; }
  void Fail(const std::string& m, Status s) { fail_[m] = std::move(s); }
  void SetNotAnAgent() { not_agent_ = true; }

  StatusOr<PeerInfo> Hello(const std::string&) override {
    KMX_RETURN_IF_ERROR(Before("Hello"));
    if (not_agent_) return FailedError("peer is not a kmosix agent");
    return After<PeerInfo>("Hello", target_->Info());
  }
  Status Prepare(const std::string&, const MigrationOffer& offer) override {
    KMX_RETURN_IF_ERROR(Before("Prepare"));
    Status s = target_->Prepare(offer);
    if (drop_response_.contains("Prepare")) return RetryError("response lost");
    return s;
  }
  StatusOr<TransferStats> Send(const std::string&, const std::string& id,
                               const std::vector<Section>& sections) override {
    KMX_RETURN_IF_ERROR(Before("Send"));
    KMX_ASSIGN_OR_RETURN(Landing landing, target_->BeginReceive(id));
    // Held to the target's bounds, as the real receiver (stream_receiver.h).
    const StreamLimits limits = target_->ReceiveLimits(id);
    DecoderOptions options;
    options.max_files = limits.files;
    options.max_bytes = limits.bytes;
    options.max_entries = limits.entries;
    StreamDecoder decoder(landing, options);
    Status result = Stream(sections, decoder);
    if (!result.ok() && decoder.over_limits()) result = StreamLimitError(result);
    if (result.ok()) result = decoder.Finish();
    Status end = target_->EndReceive(id, result, decoder.stats());
    if (!result.ok()) return result;
    KMX_RETURN_IF_ERROR(end);
    return After<TransferStats>("Send", decoder.stats());
  }
  StatusOr<RestoreReport> Restore(const std::string&, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Before("Restore"));
    return After("Restore", target_->Restore(id));
  }
  StatusOr<TargetPhase> Commit(const std::string&, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Before("Commit"));
    return After("Commit", target_->Commit(id));
  }
  StatusOr<TargetPhase> Abort(const std::string&, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Before("Abort"));
    return After("Abort", target_->Abort(id));
  }
  StatusOr<TargetPhase> Query(const std::string&, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Before("Query"));
    return After("Query", target_->Query(id));
  }

 private:
  Status Before(const std::string& m) {
    if (down_ || drop_request_.contains(m)) return RetryError(m + ": peer unreachable");
    if (auto it = fail_.find(m); it != fail_.end()) return it->second;
    return Status::Ok();
  }
  template <typename T>
  StatusOr<T> After(const std::string& m, StatusOr<T> v) {
    if (drop_response_.contains(m)) return RetryError(m + ": response lost");
    return v;
  }
  Status Stream(const std::vector<Section>& sections, StreamDecoder& decoder) {
    KMX_ASSIGN_OR_RETURN(auto encoder, StreamEncoder::Create(sections));
    std::vector<char> buf(64 << 10);
    // The cut falls right after the first section record (header 32 bytes,
    // length 4, record of 4 + name).
    const uint64_t cut_at = 32 + 4 + 4 + sections.front().name.size();
    uint64_t sent = 0;
    while (true) {
      size_t want = cut_ ? std::min<uint64_t>(buf.size(), cut_at - sent) : buf.size();
      if (want == 0) return RetryError("connection reset mid-stream");
      KMX_ASSIGN_OR_RETURN(size_t n, encoder->Read(buf.data(), want));
      if (n == 0) return Status::Ok();
      KMX_RETURN_IF_ERROR(decoder.Feed(buf.data(), n));
      sent += n;
    }
  }

  MigrationTarget* target_;
  bool down_ = false;
  bool cut_ = false;
  bool not_agent_ = false;
  std::set<std::string> drop_request_;
  std::set<std::string> drop_response_;
  std::map<std::string, Status> fail_;
};

}  // namespace kmosix::testing
