// Failpoints: faults the e2e tests inject into a real agent, enabled only by
// --enable-failpoints (never in production). Each armed failpoint fires once.
//   restore.corrupt-images   the target truncates the landed CRIU page images
//                            before restoring, so CRIU's restore really fails
//   checkpoint.fail          the source's checkpoint step fails after the pause
//   commit.hang              the source waits, before asking the target to
//                            commit, until this failpoint is disarmed (at most
//                            300 s): its workload frozen, the target's copy
//                            restored and uncommitted; a window to kill agents in
//   restore.hang             the source waits, before asking the target to
//                            restore, until disarmed (at most 300 s): the
//                            workload frozen, its images on the target, the
//                            migration in phase Restoring; a window to cancel in
//   offer.understate         the source's offer declares a 1 MiB stream (the
//                            target cuts the real one: the migration rolls
//                            back, the workload runs on at the source)
//   stream.cut               the source drops its data-channel connection
//                            (TCP, no TLS close_notify) after 32 MiB of the
//                            stream: a network cut as the target sees it
// Thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/transport.h"

namespace kmosix::agent {

class Failpoints {
 public:
  static bool Known(const std::string& name);
  void Arm(const std::string& name);
  void Disarm(const std::string& name);
  // True once per Arm.
  bool Take(const std::string& name);
  bool IsArmed(const std::string& name);
  std::set<std::string> Armed();

 private:
  std::mutex mu_;
  std::set<std::string> armed_;
};

// A CheckpointEngine that consults the failpoints, then does the real work.
class FailpointEngine final : public CheckpointEngine {
 public:
  FailpointEngine(CheckpointEngine& inner, Failpoints& fp) : inner_(inner), fp_(fp) {}
  StatusOr<Capture> Freeze(const ContainerSpec& spec, const std::string& scratch_dir) override;
  Status Thaw(const std::string& name) override { return inner_.Thaw(name); }
  Status Release(const std::string& name) override { return inner_.Release(name); }
  Status Recover(const std::string& scratch_root) override { return inner_.Recover(scratch_root); }
  uint64_t MemoryBytes(const std::string& name) override { return inner_.MemoryBytes(name); }
  StreamLimits StreamBound(const ContainerSpec& spec, uint64_t memory_bytes) override;
  StatusOr<Landing> Prepare(const ContainerSpec& spec, const std::string& scratch_dir,
                            uint64_t memory_bytes) override {
    return inner_.Prepare(spec, scratch_dir, memory_bytes);
  }
  Status Restore(const ContainerSpec& spec, const Landing& landing) override;
  Status RestoreStopped(const ContainerSpec& spec, const Landing& landing) override;
  Status Resume(const std::string& name) override { return inner_.Resume(name); }
  Status Discard(const std::string& name) override { return inner_.Discard(name); }

 private:
  // restore.corrupt-images: truncates the landed page images.
  void CorruptImagesIfArmed(const ContainerSpec& spec, const Landing& landing);
  CheckpointEngine& inner_;
  Failpoints& fp_;
};

// A Transport that consults the failpoints, then does the real work.
class FailpointTransport final : public Transport {
 public:
  FailpointTransport(Transport& inner, Failpoints& fp, Clock& clock)
      : inner_(inner), fp_(fp), clock_(clock) {}
  StatusOr<PeerInfo> Hello(const std::string& t) override { return inner_.Hello(t); }
  Status Prepare(const std::string& t, const MigrationOffer& o) override {
    return inner_.Prepare(t, o);
  }
  StatusOr<TransferStats> Send(const std::string& t, const std::string& id,
                               const std::vector<Section>& s) override {
    return inner_.Send(t, id, s);
  }
  StatusOr<RestoreReport> Restore(const std::string& t, const std::string& id) override;
  StatusOr<TargetPhase> Commit(const std::string& t, const std::string& id) override;
  StatusOr<TargetPhase> Abort(const std::string& t, const std::string& id) override {
    return inner_.Abort(t, id);
  }
  StatusOr<TargetPhase> Query(const std::string& t, const std::string& id) override {
    return inner_.Query(t, id);
  }

 private:
  void HangWhileArmed(const std::string& name, const std::string& id);

  Transport& inner_;
  Failpoints& fp_;
  Clock& clock_;
};

}  // namespace kmosix::agent
