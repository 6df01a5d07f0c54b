// In-process Transport for unit tests: every call goes straight to a
// MigrationTarget (normally a real IncomingMigrations over a FakeRuntime).
// Faults: Down() makes the peer unreachable; DropRequest(m) loses a call
// before delivery; DropResponse(m) delivers it and loses the answer; CutTransfer()
// cuts the stream after the first section. All of these answer kRetry, as a
// network failure would. Thread-safe enough for single-threaded tests.
#pragma once

#include <filesystem>
#include <set>
#include <string>

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
  }
  void CutTransfer() { cut_ = true; }
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
    TransferStats stats;
    Status result;
    for (size_t i = 0; i < sections.size() && result.ok(); ++i) {
      if (cut_ && i == 1) {
        result = RetryError("connection reset mid-stream");
        break;
      }
      result = CopySection(sections[i], landing, stats);
    }
    Status end = target_->EndReceive(id, result, stats);
    if (!result.ok()) return result;
    KMX_RETURN_IF_ERROR(end);
    return After<TransferStats>("Send", stats);
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
    return Status::Ok();
  }
  template <typename T>
  StatusOr<T> After(const std::string& m, StatusOr<T> v) {
    if (drop_response_.contains(m)) return RetryError(m + ": response lost");
    return v;
  }
  static Status CopySection(const Section& s, const Landing& landing, TransferStats& stats) {
    namespace fs = std::filesystem;
    for (const auto& l : landing.sections) {
      if (l.name != s.name) continue;
      std::error_code ec;
      if (s.is_file) {
        fs::copy_file(s.path, l.path, fs::copy_options::overwrite_existing, ec);
        stats.bytes += fs::file_size(s.path, ec);
        stats.files++;
      } else {
        fs::copy(s.path, l.path, fs::copy_options::recursive | fs::copy_options::overwrite_existing,
                 ec);
        for (auto& e : fs::recursive_directory_iterator(s.path)) {
          if (e.is_regular_file()) {
            stats.bytes += e.file_size();
            stats.files++;
          }
        }
      }
      if (ec) return FailedError("copy " + s.name + ": " + ec.message());
      return Status::Ok();
    }
    return InvalidError("target has no landing for section " + s.name);
  }

  MigrationTarget* target_;
  bool down_ = false;
  bool cut_ = false;
  bool not_agent_ = false;
  std::set<std::string> drop_request_;
  std::set<std::string> drop_response_;
};

}  // namespace kmosix::testing
