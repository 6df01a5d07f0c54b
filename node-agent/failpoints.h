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
//   phase.hang.<Phase>       Phase one of Preparing, Checkpointing,
//                            Transferring, Restoring, Committing, Resolving:
//                            the source waits at the entry of that phase of
//                            an outgoing migration, once it was journaled and
//                            reported (etcd's record says the phase) and
//                            before its work, until disarmed (at most 300 s);
//                            a window to kill the source, the target (which
//                            waits meanwhile), a controller or etcd in. Held
//                            only in the migration's first run (not when a
//                            restarted agent recovers it). Resolving is
//                            entered when the target or the ownership ledger
//                            did not answer for --resolve-timeout, e.g. a
//                            target killed while the source was held at
//                            Committing.
//   transfer.hang            the source's data-channel stream waits once
//                            kTransferHangBytes (8 MiB) of it were written,
//                            until disarmed (at most 300 s): both agents mid-
//                            stream in Transferring (keep it shorter than the
//                            channel's 30 s I/O timeout to find the target
//                            still waiting)
// A hold (the *.hang failpoints) is listed by Holding() while a migration
// waits in it, so a test knows the migration got there.
// Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "api/types.h"
#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/transport.h"

namespace kmosix::agent {

class Failpoints {
 public:
  // The longest a hang failpoint holds a migration.
  static constexpr Clock::Duration kHoldLimit = std::chrono::seconds(300);
  // transfer.hang holds the stream once this much of it was written.
  static constexpr uint64_t kTransferHangBytes = uint64_t{8} << 20;

  static bool Known(const std::string& name);
  // "phase.hang.<Phase>" (whether or not that phase can be held).
  static std::string PhaseHang(api::MigrationPhase phase);
  void Arm(const std::string& name);
  void Disarm(const std::string& name);
  // True once per Arm.
  bool Take(const std::string& name);
  bool IsArmed(const std::string& name);
  std::set<std::string> Armed();
  // The hang failpoints migrations wait in now, one entry per waiter, sorted.
  std::vector<std::string> Holding();

  // Waits while `name` is armed (asking every 100 ms of `clock`, at most
  // kHoldLimit), listed in Holding() meanwhile; `what` names the waiter in
  // the log. False when it was not armed (returns at once).
  bool HoldWhileArmed(const std::string& name, Clock& clock, const std::string& what);
  // phase.hang.<r.phase>: the source at the entry of a phase (AgentOptions::
  // phase_entered).
  void HoldAtPhase(const api::MigrationReport& r, Clock& clock);
  // transfer.hang, once `written` >= kTransferHangBytes (HttpTransportOptions::
  // on_stream_written).
  void HoldStream(uint64_t written, Clock& clock);

 private:
  std::mutex mu_;
  std::set<std::string> armed_;
  std::multiset<std::string> holding_;
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
  Transport& inner_;
  Failpoints& fp_;
  Clock& clock_;
};

}  // namespace kmosix::agent
