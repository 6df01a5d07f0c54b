#include "failpoints.h"

#include <spdlog/spdlog.h>

#include <filesystem>

namespace kmosix::agent {

bool Failpoints::Known(const std::string& name) {
  return name == "restore.corrupt-images" || name == "checkpoint.fail" || name == "commit.hang" ||
         name == "restore.hang" || name == "offer.understate" || name == "stream.cut";
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
void FailpointTransport::HangWhileArmed(const std::string& name, const std::string& id) {
  if (!fp_.IsArmed(name)) return;
  spdlog::warn("failpoint {}: migration {} waits", name, id);
  const auto deadline = clock_.Now() + std::chrono::seconds(300);
  while (fp_.IsArmed(name) && clock_.Now() < deadline) {
    clock_.SleepFor(std::chrono::milliseconds(100));
  }
  spdlog::warn("failpoint {} released for migration {}", name, id);
}

StatusOr<RestoreReport> FailpointTransport::Restore(const std::string& t, const std::string& id) {
  HangWhileArmed("restore.hang", id);
  return inner_.Restore(t, id);
}

StatusOr<TargetPhase> FailpointTransport::Commit(const std::string& t, const std::string& id) {
  HangWhileArmed("commit.hang", id);
  return inner_.Commit(t, id);
}

}  // namespace kmosix::agent
