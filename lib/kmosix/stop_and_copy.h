// Stop-and-copy CheckpointEngine over a ContainerRuntime (containerd/runc +
// CRIU): pause the task, dump it with CRIU into a directory while it stays
// paused, ship the CRIU images, the writable layer and the log; restore from
// the landed images on the target.
//
// Ownership: borrows the runtime and clock. Thread-safety: as the runtime.
// Errors: the runtime's, annotated with the step.
#pragma once

#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/runtime.h"

namespace kmosix {

class StopAndCopyEngine final : public CheckpointEngine {
 public:
  StopAndCopyEngine(ContainerRuntime& runtime, Clock& clock) : runtime_(runtime), clock_(clock) {}

  StatusOr<Capture> Freeze(const ContainerSpec& spec, const std::string& scratch_dir) override;
  Status Thaw(const std::string& name) override;
  Status Release(const std::string& name) override;
  StatusOr<Landing> Prepare(const ContainerSpec& spec, const std::string& scratch_dir) override;
  Status Restore(const ContainerSpec& spec, const Landing& landing) override;
  Status Discard(const std::string& name) override;

 private:
  ContainerRuntime& runtime_;
  Clock& clock_;
};

}  // namespace kmosix
