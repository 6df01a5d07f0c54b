// Failpoints: faults the e2e tests inject into a real agent, enabled only by
// --enable-failpoints (never in production). Each armed failpoint fires once.
//   restore.corrupt-images   the target truncates the landed CRIU page images
//                            before restoring, so CRIU's restore really fails
//   checkpoint.fail          the source's checkpoint step fails after the pause
// Thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "kmosix/checkpoint.h"

namespace kmosix::agent {

class Failpoints {
 public:
  static bool Known(const std::string& name);
  void Arm(const std::string& name);
  void Disarm(const std::string& name);
  // True once per Arm.
  bool Take(const std::string& name);
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
  StatusOr<Landing> Prepare(const ContainerSpec& spec, const std::string& scratch_dir) override {
    return inner_.Prepare(spec, scratch_dir);
  }
  Status Restore(const ContainerSpec& spec, const Landing& landing) override;
  Status Discard(const std::string& name) override { return inner_.Discard(name); }

 private:
  CheckpointEngine& inner_;
  Failpoints& fp_;
};

}  // namespace kmosix::agent
