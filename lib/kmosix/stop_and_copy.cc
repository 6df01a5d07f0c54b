#include "kmosix/stop_and_copy.h"

#include <spdlog/spdlog.h>

#include <filesystem>

namespace kmosix {
namespace {

namespace fs = std::filesystem;

Status MakeEmptyDir(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) return FailedError("cannot create " + dir + ": " + ec.message());
  return Status::Ok();
}

const Section* FindSection(const Landing& landing, std::string_view name) {
  for (const auto& s : landing.sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace

StatusOr<Capture> StopAndCopyEngine::Freeze(const ContainerSpec& spec,
                                            const std::string& scratch_dir) {
  Capture capture;
  const std::string images = scratch_dir + "/criu";
  const std::string work = scratch_dir + "/work";
  KMX_RETURN_IF_ERROR(MakeEmptyDir(images));
  KMX_RETURN_IF_ERROR(MakeEmptyDir(work));

  auto t0 = clock_.Now();
  KMX_RETURN_IF_ERROR(runtime_.Pause(spec.name).Annotate("pause"));
  auto t1 = clock_.Now();
  capture.freeze_seconds = Seconds(t1 - t0);

  auto thaw_on_error = [&](const Status& s) -> Status {
    if (Status t = runtime_.Resume(spec.name); !t.ok()) {
      spdlog::error("{}: could not resume after a failed capture: {}", spec.name, t.ToString());
      return s.Annotate("and resume failed (" + t.ToString() + ")");
    }
    return s;
  };
  Status dumped = runtime_.CheckpointTask(spec.name, {images, work, /*leave_running=*/true});
  if (!dumped.ok()) return thaw_on_error(dumped.Annotate("checkpoint"));
  capture.checkpoint_seconds = Seconds(clock_.Now() - t1);

  auto info = runtime_.Inspect(spec.name);
  if (!info.ok()) return thaw_on_error(info.status().Annotate("inspect after checkpoint"));
  if (info->state != TaskState::kPaused) {
    // Running again would mean two copies once the target restores.
    return thaw_on_error(FailedError(std::string("task is ") +
                                     std::string(TaskStateName(info->state)) +
                                     " after the checkpoint, not paused"));
  }
  auto layer = runtime_.WritableLayerDir(spec.name);
  if (!layer.ok()) return thaw_on_error(layer.status().Annotate("writable layer"));

  capture.sections = {{"criu", images, false}, {"rootfs", *layer, false}};
  if (!spec.log_path.empty() && fs::exists(spec.log_path)) {
    capture.sections.push_back({"log", spec.log_path, true});
  }
  return capture;
}

Status StopAndCopyEngine::Thaw(const std::string& name) {
  auto info = runtime_.Inspect(name);
  if (!info.ok()) return info.status().Annotate("thaw");
  if (info->state == TaskState::kRunning) return Status::Ok();
  if (info->state != TaskState::kPaused) {
    return FailedError("cannot thaw " + name + ": task is " +
                       std::string(TaskStateName(info->state)));
  }
  return runtime_.Resume(name).Annotate("thaw");
}

Status StopAndCopyEngine::Release(const std::string& name) {
  return runtime_.Delete(name).Annotate("release");
}

StatusOr<Landing> StopAndCopyEngine::Prepare(const ContainerSpec& spec,
                                             const std::string& scratch_dir) {
  KMX_RETURN_IF_ERROR(MakeEmptyDir(scratch_dir + "/criu"));
  KMX_RETURN_IF_ERROR(MakeEmptyDir(scratch_dir + "/work"));
  KMX_RETURN_IF_ERROR(runtime_.CreateContainer(spec).Annotate("create container"));
  auto layer = runtime_.WritableLayerDir(spec.name);
  if (!layer.ok()) {
    (void)runtime_.Delete(spec.name);
    return layer.status().Annotate("writable layer");
  }
  Landing landing;
  landing.sections = {{"criu", scratch_dir + "/criu", false}, {"rootfs", *layer, false}};
  if (!spec.log_path.empty()) landing.sections.push_back({"log", spec.log_path, true});
  return landing;
}

Status StopAndCopyEngine::Restore(const ContainerSpec& spec, const Landing& landing) {
  const Section* images = FindSection(landing, "criu");
  if (images == nullptr) return InvalidError("landing has no criu section");
  const std::string work = fs::path(images->path).parent_path().string() + "/work";
  KMX_RETURN_IF_ERROR(runtime_.RestoreTask(spec.name, {images->path, work}));
  auto info = runtime_.Inspect(spec.name);
  if (!info.ok()) return info.status().Annotate("inspect after restore");
  if (info->state != TaskState::kRunning) {
    return FailedError(std::string("restored task is ") + std::string(TaskStateName(info->state)) +
                       ", not running");
  }
  return Status::Ok();
}

Status StopAndCopyEngine::Discard(const std::string& name) {
  return runtime_.Delete(name).Annotate("discard");
}

}  // namespace kmosix
