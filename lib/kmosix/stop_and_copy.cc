#include "kmosix/stop_and_copy.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "kmosix/files.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;

Status MakeEmptyDir(const std::string& dir) {
  KMX_RETURN_IF_ERROR(RemoveTree(dir));
  std::error_code ec;
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

std::vector<std::string> PipesIn(const std::string& dir) {
  std::vector<std::string> pipes;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_fifo(ec)) pipes.push_back(e.path().string());
  }
  return pipes;
}

// Unlinks the pipes in `dir`. With `unblock`, each is first opened for
// reading (a writer blocked opening it goes on) and closed only after all
// are unlinked: the writer's next write fails with EPIPE, and a later open of
// that name creates a plain file instead of blocking.
void RemovePipes(const std::string& dir, bool unblock) {
  std::vector<int> fds;
  for (const std::string& p : PipesIn(dir)) {
    if (unblock) {
      int fd = ::open(p.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) fds.push_back(fd);
    }
    ::unlink(p.c_str());
  }
  for (int fd : fds) ::close(fd);
}

// Whether another process has a file open under `root`.
bool FilesOpenUnder(const std::string& root) {
  const std::string self = std::to_string(::getpid());
  std::error_code ec;
  for (const auto& proc : fs::directory_iterator("/proc", ec)) {
    const std::string pid = proc.path().filename().string();
    if (pid == self || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code fec;
    for (const auto& fd : fs::directory_iterator(proc.path() / "fd", fec)) {
      std::error_code lec;
      std::string target = fs::read_symlink(fd.path(), lec).string();
      if (!lec && target.rfind(root + "/", 0) == 0) return true;
    }
  }
  return false;
}

}  // namespace

// One dump in flight: a thread runs CRIU (through the runtime) while the
// transfer reads its pipes.
struct StopAndCopyEngine::Dump {
  std::string images;
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  Status result;
  double seconds = 0;
  Status told_reader;  // the failure before_read handed the transfer

  void Finish(Status s, double secs) {
    std::lock_guard l(mu);
    finished = true;
    result = std::move(s);
    seconds = secs;
    cv.notify_all();
  }
  bool Done() {
    std::lock_guard l(mu);
    return finished;
  }
  Status Wait() {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return finished; });
    return result;
  }
  double Seconds() {
    (void)Wait();
    std::lock_guard l(mu);
    return seconds;
  }
};

StopAndCopyEngine::~StopAndCopyEngine() {
  std::vector<std::string> names;
  {
    std::lock_guard l(mu_);
    for (const auto& [name, dump] : dumps_) names.push_back(name);
  }
  for (const auto& name : names) EndDump(name, /*disarm=*/true);
}

void StopAndCopyEngine::EndDump(const std::string& name, bool disarm) {
  std::shared_ptr<Dump> dump;
  {
    std::lock_guard l(mu_);
    auto it = dumps_.find(name);
    if (it == dumps_.end()) return;
    dump = std::move(it->second);
    dumps_.erase(it);
  }
  if (disarm && !dump->Done()) RemovePipes(dump->images, /*unblock=*/true);
  if (dump->thread.joinable()) dump->thread.join();
}

Status StopAndCopyEngine::Recover(const std::string& scratch_root) {
  // Pipes left under <root>/<migration>/criu mean a dump was streaming when
  // the previous run died; CRIU may be blocked opening the next one.
  bool found = false;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(scratch_root, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it.depth() > 2) it.disable_recursion_pending();
    std::error_code fec;
    if (it->is_directory(fec) && !PipesIn(it->path().string()).empty()) {
      spdlog::warn("unblocking a dump left streaming in {}", it->path().string());
      RemovePipes(it->path().string(), /*unblock=*/true);
      found = true;
    }
  }
  if (!found) return Status::Ok();
  const auto deadline = clock_.Now() + options_.recover_wait;
  while (FilesOpenUnder(scratch_root)) {
    if (clock_.Now() >= deadline) {
      return RetryError("a dump under " + scratch_root + " is still running");
    }
    clock_.SleepFor(std::chrono::milliseconds(50));
  }
  return Status::Ok();
}

StatusOr<Capture> StopAndCopyEngine::Freeze(const ContainerSpec& spec,
                                            const std::string& scratch_dir) {
  Capture capture;
  const std::string images = scratch_dir + "/criu";
  const std::string work = scratch_dir + "/work";
  KMX_RETURN_IF_ERROR(MakeEmptyDir(images));
  KMX_RETURN_IF_ERROR(MakeEmptyDir(work));

  {
    std::lock_guard l(mu_);
    if (dumps_.contains(spec.name)) return ConflictError(spec.name + " is being dumped already");
  }
  if (options_.pipes > 0) {
    for (int i = 1; i <= options_.pipes; ++i) {
      const std::string pipe = images + "/pages-" + std::to_string(i) + ".img";
      if (::mkfifo(pipe.c_str(), 0600) != 0) {
        return FailedError("mkfifo " + pipe + ": " + std::strerror(errno));
      }
    }
  }

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
  auto layer = runtime_.WritableLayerDir(spec.name);
  if (!layer.ok()) return thaw_on_error(layer.status().Annotate("writable layer"));
  // Dumps with the task paused, then checks it still is: running again would
  // mean two copies once the target restores.
  auto dump_and_check = [this, name = spec.name, images, work, t1](double* seconds) -> Status {
    Status dumped = runtime_.CheckpointTask(name, {images, work, /*leave_running=*/true});
    *seconds = Seconds(clock_.Now() - t1);
    if (!dumped.ok()) return dumped.Annotate("checkpoint");
    auto info = runtime_.Inspect(name);
    if (!info.ok()) return info.status().Annotate("inspect after checkpoint");
    if (info->state != TaskState::kPaused) {
      return FailedError(std::string("task is ") + std::string(TaskStateName(info->state)) +
                         " after the checkpoint, not paused");
    }
    return Status::Ok();
  };

  if (options_.pipes > 0) {
    auto dump = std::make_shared<Dump>();
    dump->images = images;
    dump->thread = std::thread([dump, dump_and_check, images] {
      double seconds = 0;
      Status s;
      try {  // nothing may end this thread unfinished (the reader waits for Finish)
        s = dump_and_check(&seconds);
      } catch (const std::exception& e) {
        s = FailedError(std::string("checkpoint: unexpected exception: ") + e.what());
      } catch (...) {
        s = FailedError("checkpoint: unexpected exception");
      }
      RemovePipes(images, /*unblock=*/false);  // the ones read stay open in the reader
      dump->Finish(std::move(s), seconds);
    });
    {
      std::lock_guard l(mu_);
      dumps_[spec.name] = dump;
    }
    Section pages{"criu-pages", images, false};
    pages.pipes = true;
    pages.producer_done = [dump] { return dump->Done(); };
    Section rest{"criu", images, false};
    rest.before_read = [dump] {
      Status s = dump->Wait();
      std::lock_guard l(dump->mu);
      dump->told_reader = s;
      return s;
    };
    capture.sections = {std::move(pages), std::move(rest)};
    capture.streamed_dump_error = [dump] {
      std::lock_guard l(dump->mu);
      return dump->told_reader;
    };
    capture.streamed_checkpoint_seconds = [dump] { return dump->Seconds(); };
  } else {
    Status dumped = dump_and_check(&capture.checkpoint_seconds);
    if (!dumped.ok()) return thaw_on_error(dumped);
    capture.sections = {{"criu", images, false}};
  }
  capture.sections.push_back({"rootfs", *layer, false});
  if (!spec.log_path.empty() && fs::exists(spec.log_path)) {
    capture.sections.push_back({"log", spec.log_path, true});
  }
  return capture;
}

Status StopAndCopyEngine::Thaw(const std::string& name) {
  EndDump(name, /*disarm=*/true);
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
  EndDump(name, /*disarm=*/true);
  return runtime_.Delete(name).Annotate("release");
}

uint64_t StopAndCopyEngine::MemoryBytes(const std::string& name) {
  auto info = runtime_.Inspect(name);
  return info.ok() ? ContainerResidentBytes(info->pid, options_.proc_root) : 0;
}

StreamLimits StopAndCopyEngine::StreamBound(const ContainerSpec& spec, uint64_t memory_bytes) {
  // Memory: what the processes hold now, or their cgroup limit if larger;
  // unknown without either (then nothing is declared).
  const uint64_t limit = spec.memory_mib > 0 ? static_cast<uint64_t>(spec.memory_mib) << 20 : 0;
  const uint64_t memory = std::max(memory_bytes, limit);
  auto layer = runtime_.WritableLayerDir(spec.name);
  if (memory == 0 || !layer.ok()) return {};
  uint64_t files = 0, bytes = 0, entries = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(
           *layer, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    entries += 1;
    std::error_code fec;
    if (it->is_regular_file(fec) && !it->is_symlink(fec)) {
      files += 1;
      bytes += it->file_size(fec);
    }
  }
  if (ec) return {};  // the layer could not be walked: declare nothing
  if (!spec.log_path.empty()) {
    files += 1;
    entries += 1;
    bytes += fs::file_size(spec.log_path, ec);
  }
  // The workload runs on until the freeze (and its dump adds CRIU's image
  // files and metadata): twice what it has now, plus room.
  StreamLimits bound;
  bound.bytes = 2 * (bytes + memory) + (uint64_t{256} << 20);
  bound.files = 2 * files + 16384;
  bound.entries = 2 * entries + 32768;
  return bound;
}

StatusOr<Landing> StopAndCopyEngine::Prepare(const ContainerSpec& spec,
                                             const std::string& scratch_dir,
                                             uint64_t memory_bytes) {
  KMX_RETURN_IF_ERROR(MakeEmptyDir(scratch_dir + "/criu"));
  KMX_RETURN_IF_ERROR(MakeEmptyDir(scratch_dir + "/work"));
  KMX_RETURN_IF_ERROR(runtime_.CreateContainer(spec).Annotate("create container"));
  auto layer = runtime_.WritableLayerDir(spec.name);
  if (!layer.ok()) {
    (void)runtime_.Delete(spec.name);
    return layer.status().Annotate("writable layer");
  }
  // The landing (tmpfs) and then the restore allocate memory_bytes each
  // inside the downtime: fault both in now. The restore's share is held until
  // Restore, the landing's freed on return (the source freezes next).
  const uint64_t available = MemAvailableBytes(options_.proc_root).value_or(0);
  const uint64_t spare = uint64_t{256} << 20;
  uint64_t room = available > spare ? available - spare : 0;
  const uint64_t for_restore = std::min({memory_bytes, options_.prefault_max_bytes, room});
  room -= for_restore;
  const uint64_t for_landing = std::min({memory_bytes, options_.prefault_max_bytes, room});
  if (for_restore > 0) {
    const auto t0 = clock_.Now();
    const auto deadline = t0 + options_.prefault_budget;
    auto in_budget = [&] { return clock_.Now() < deadline; };
    PrefaultedMemory restore = PrefaultedMemory::Take(for_restore, in_budget);
    PrefaultedMemory landing_share = for_landing > 0 && in_budget()
                                         ? PrefaultedMemory::Take(for_landing, in_budget)
                                         : PrefaultedMemory();
    spdlog::debug("{}: faulted in {} MiB for the restore and {} MiB for the landing in {:.2f} s",
                  spec.name, restore.bytes() >> 20, landing_share.bytes() >> 20,
                  Seconds(clock_.Now() - t0));
    std::lock_guard l(mu_);
    prefaulted_[spec.name] = std::move(restore);
  }
  Landing landing;
  // A streaming source sends the page images as "criu-pages": same place.
  landing.sections = {{"criu-pages", scratch_dir + "/criu", false},
                      {"criu", scratch_dir + "/criu", false},
                      {"rootfs", *layer, false}};
  if (!spec.log_path.empty()) landing.sections.push_back({"log", spec.log_path, true});
  return landing;
}

Status StopAndCopyEngine::Restore(const ContainerSpec& spec, const Landing& landing) {
  return RestoreTask(spec, landing, /*stopped=*/false);
}

Status StopAndCopyEngine::RestoreStopped(const ContainerSpec& spec, const Landing& landing) {
  return RestoreTask(spec, landing, /*stopped=*/true);
}

Status StopAndCopyEngine::Resume(const std::string& name) {
  return runtime_.Continue(name).Annotate("resume");
}

Status StopAndCopyEngine::RestoreTask(const ContainerSpec& spec, const Landing& landing,
                                      bool stopped) {
  const Section* images = FindSection(landing, "criu");
  if (images == nullptr) return InvalidError("landing has no criu section");
  const std::string work = fs::path(images->path).parent_path().string() + "/work";
  ReleasePrefaulted(spec.name);  // the restore allocates next
  RestoreRequest req{images->path, work};
  req.leave_stopped = stopped;
  KMX_RETURN_IF_ERROR(runtime_.RestoreTask(spec.name, req));
  auto info = runtime_.Inspect(spec.name);
  if (!info.ok()) return info.status().Annotate("inspect after restore");
  if (info->state != TaskState::kRunning) {
    return FailedError(std::string("restored task is ") + std::string(TaskStateName(info->state)) +
                       ", not running");
  }
  return Status::Ok();
}

void StopAndCopyEngine::ReleasePrefaulted(const std::string& name) {
  PrefaultedMemory memory;  // freed on return, outside the lock
  std::lock_guard l(mu_);
  if (auto it = prefaulted_.find(name); it != prefaulted_.end()) {
    memory = std::move(it->second);
    prefaulted_.erase(it);
  }
}

Status StopAndCopyEngine::Discard(const std::string& name) {
  ReleasePrefaulted(name);
  return runtime_.Delete(name).Annotate("discard");
}

}  // namespace kmosix
