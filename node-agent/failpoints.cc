#include "failpoints.h"

#include <spdlog/spdlog.h>

#include <filesystem>

namespace kmosix::agent {

namespace {

// The phases a source can be held at the entry of (phase.hang.<Phase>).
constexpr api::MigrationPhase kHoldablePhases[] = {
    api::MigrationPhase::kPreparing,    api::MigrationPhase::kCheckpointing,
    api::MigrationPhase::kTransferring, api::MigrationPhase::kRestoring,
    api::MigrationPhase::kCommitting,   api::MigrationPhase::kResolving,
};

}  // namespace

bool Failpoints::Known(const std::string& name) {
  if (name == "restore.corrupt-images" || name == "checkpoint.fail" || name == "commit.hang" ||
      name == "restore.hang" || name == "offer.understate" || name == "stream.cut" ||
      name == "transfer.hang") {
    return true;
  }
  for (api::MigrationPhase p : kHoldablePhases) {
    if (name == PhaseHang(p)) return true;
  }
  return false;
}

std::string Failpoints::PhaseHang(api::MigrationPhase phase) {
  return "phase.hang." + std::string(api::MigrationPhaseName(phase));
}

void Failpoints::Arm(const std::string& name) {
  std::lock_guard lock(mu_);
  armed_.insert(name);
}

void Failpoints::Disarm(const std::string& name) {
  std::lock_guard lock(mu_);
  armed_.erase(name);
}

bool Failpoints::Take(const std::string& name) {
  std::lock_guard lock(mu_);
  return armed_.erase(name) > 0;
}

bool Failpoints::IsArmed(const std::string& name) {
  std::lock_guard lock(mu_);
  return armed_.contains(name);
}

std::set<std::string> Failpoints::Armed() {
  std::lock_guard lock(mu_);
  return armed_;
}

std::vector<std::string> Failpoints::Holding() {
  std::lock_guard lock(mu_);
  return {holding_.begin(), holding_.end()};
}

bool Failpoints::HoldWhileArmed(const std::string& name, Clock& clock, const std::string& what) {
  {
    std::lock_guard lock(mu_);
    if (!armed_.contains(name)) return false;
    holding_.insert(name);
  }
  spdlog::warn("failpoint {}: {} waits", name, what);
  const auto deadline = clock.Now() + kHoldLimit;
  while (IsArmed(name) && clock.Now() < deadline) {
    clock.SleepFor(std::chrono::milliseconds(100));
  }
  {
    std::lock_guard lock(mu_);
    holding_.erase(holding_.find(name));
  }
  spdlog::warn("failpoint {} released {}", name, what);
  return true;
}

void Failpoints::HoldAtPhase(const api::MigrationReport& r, Clock& clock) {
  (void)HoldWhileArmed(PhaseHang(r.phase), clock,
                       "migration " + r.id + " of " + r.workload + " at the entry of " +
                           std::string(api::MigrationPhaseName(r.phase)));
}

void Failpoints::HoldStream(uint64_t written, Clock& clock) {
  if (written < kTransferHangBytes) return;
  (void)HoldWhileArmed("transfer.hang", clock,
                       "a stream after " + std::to_string(written >> 20) + " MiB");
}

StatusOr<Capture> FailpointEngine::Freeze(const ContainerSpec& spec,
                                          const std::string& scratch_dir) {
  auto capture = inner_.Freeze(spec, scratch_dir);
  if (capture.ok() && fp_.Take("checkpoint.fail")) {
    spdlog::warn("failpoint checkpoint.fail fired for {}", spec.name);
    (void)inner_.Thaw(spec.name);
    return FailedError("failpoint checkpoint.fail");
  }
  return capture;
}

StreamLimits FailpointEngine::StreamBound(const ContainerSpec& spec, uint64_t memory_bytes) {
  StreamLimits bound = inner_.StreamBound(spec, memory_bytes);
  if (fp_.Take("offer.understate")) {
    spdlog::warn("failpoint offer.understate fired for {}: the offer declares 1 MiB", spec.name);
    bound.bytes = uint64_t{1} << 20;
  }
  return bound;
}

Status FailpointEngine::Restore(const ContainerSpec& spec, const Landing& landing) {
  CorruptImagesIfArmed(spec, landing);
  return inner_.Restore(spec, landing);
}

Status FailpointEngine::RestoreStopped(const ContainerSpec& spec, const Landing& landing) {
  CorruptImagesIfArmed(spec, landing);
  return inner_.RestoreStopped(spec, landing);
}

void FailpointEngine::CorruptImagesIfArmed(const ContainerSpec& spec, const Landing& landing) {
  if (fp_.Take("restore.corrupt-images")) {
    namespace fs = std::filesystem;
    for (const auto& s : landing.sections) {
      if (s.name != "criu") continue;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(s.path, ec)) {
        const std::string file = e.path().filename().string();
        if (file.rfind("pages-", 0) == 0 || file.rfind("pagemap-", 0) == 0) {
          fs::resize_file(e.path(), 0, ec);
        }
      }
    }
    spdlog::warn("failpoint restore.corrupt-images fired for {}", spec.name);
  }
}

// Both hangs wait while armed (at most 300 s), then go on.
StatusOr<RestoreReport> FailpointTransport::Restore(const std::string& t, const std::string& id) {
  (void)fp_.HoldWhileArmed("restore.hang", clock_, "migration " + id);
  return inner_.Restore(t, id);
}

StatusOr<TargetPhase> FailpointTransport::Commit(const std::string& t, const std::string& id) {
  (void)fp_.HoldWhileArmed("commit.hang", clock_, "migration " + id);
  return inner_.Commit(t, id);
}

}  // namespace kmosix::agent
