#include "kmosix/checkpoint_capture.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

#include "kmosix/transfer_stream.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;

Status MakeEmptyDir(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  ec.clear();
  fs::create_directories(dir, ec);
  if (ec) return FailedError("cannot create " + dir + ": " + ec.message());
  return Status::Ok();
}

// Copies the first `size` bytes of `from` into a new file `to`.
Status CopyPrefix(const std::string& from, const std::string& to, uint64_t size) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return FailedError("open " + from + ": " + std::strerror(errno));
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (out < 0) {
    Status s = FailedError("create " + to + ": " + std::strerror(errno));
    ::close(in);
    return s;
  }
  std::vector<char> buf(1 << 20);
  Status s;
  uint64_t left = size;
  while (left > 0 && s.ok()) {
    ssize_t n = ::read(in, buf.data(), std::min<uint64_t>(buf.size(), left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // shorter than it was (truncated meanwhile): what there is
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::write(out, buf.data() + off, static_cast<size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        s = FailedError("write " + to + ": " + std::strerror(errno));
        break;
      }
      off += w;
    }
    left -= static_cast<uint64_t>(n);
  }
  ::close(in);
  if (::close(out) != 0 && s.ok()) s = FailedError("close " + to + ": " + std::strerror(errno));
  return s;
}

}  // namespace

StatusOr<TransferStats> CopySections(const std::vector<Section>& from, const Landing& to) {
  KMX_ASSIGN_OR_RETURN(std::unique_ptr<StreamEncoder> enc, StreamEncoder::Create(from));
  StreamDecoder dec(to);
  std::vector<char> buf(4 << 20);
  while (true) {
    KMX_ASSIGN_OR_RETURN(size_t n, enc->Read(buf.data(), buf.size()));
    if (n == 0) break;
    KMX_RETURN_IF_ERROR(dec.Feed(buf.data(), n));
  }
  KMX_RETURN_IF_ERROR(dec.Finish());
  return dec.stats();
}

TreeSize SizeOf(const std::vector<Section>& sections) {
  TreeSize size;
  for (const Section& s : sections) {
    std::error_code ec;
    if (s.is_file) {
      const uint64_t n = fs::file_size(s.path, ec);
      if (ec) continue;
      size.bytes += n;
      size.files += 1;
      size.entries += 1;
      continue;
    }
    if (!fs::is_directory(s.path, ec)) continue;
    size.entries += 1;  // the root
    for (auto it = fs::recursive_directory_iterator(s.path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      size.entries += 1;
      std::error_code fec;
      if (it->is_regular_file(fec) && !it->is_symlink(fec)) {
        size.files += 1;
        size.bytes += it->file_size(fec);
      }
    }
  }
  return size;
}

std::optional<uint64_t> FreeBytes(const std::string& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

StatusOr<RunningCapture> CaptureRunning(ContainerRuntime& runtime, Clock& clock,
                                        const ContainerSpec& spec, const std::string& scratch_dir,
                                        const CaptureOptions& options) {
  const std::string images = scratch_dir + "/criu";
  const std::string work = scratch_dir + "/work";
  const std::string rootfs = scratch_dir + "/rootfs";
  const std::string log = scratch_dir + "/log";
  KMX_RETURN_IF_ERROR(MakeEmptyDir(scratch_dir));
  KMX_RETURN_IF_ERROR(MakeEmptyDir(images));
  KMX_RETURN_IF_ERROR(MakeEmptyDir(work));
  auto layer_dir = runtime.WritableLayerDir(spec.name);
  if (!layer_dir.ok()) return layer_dir.status().Annotate("writable layer");
  const std::string layer = *layer_dir;
  {
    auto info = runtime.Inspect(spec.name);
    if (!info.ok()) return info.status().Annotate("inspect");
    if (info->state != TaskState::kRunning) {
      return ConflictError("cannot checkpoint " + spec.name + ": task is " +
                           std::string(TaskStateName(info->state)) + ", not running");
    }
  }

  RunningCapture capture;
  const Clock::TimePoint t0 = clock.Now();
  KMX_RETURN_IF_ERROR(runtime.Pause(spec.name).Annotate("pause"));
  capture.taken_ms = clock.WallMillis();
  // The log only grows: its size at the pause is what matches the memory.
  std::error_code lec;
  const uint64_t log_size =
      spec.log_path.empty() ? 0 : static_cast<uint64_t>(fs::file_size(spec.log_path, lec));
  const bool carry_log = !spec.log_path.empty() && !lec && log_size <= options.max_log_bytes;

  // Inside the freeze: the dump (leaving the task in place, paused) and the
  // layer copy. Whatever happens, the task is resumed.
  Status frozen = runtime.CheckpointTask(spec.name, {images, work, /*leave_running=*/true})
                      .Annotate("checkpoint (leave running)");
  const Clock::TimePoint t1 = clock.Now();
  capture.dump_seconds = Seconds(t1 - t0);
  if (frozen.ok()) {
    Landing to;
    to.sections = {{"rootfs", rootfs, false}};
    auto copied = CopySections({{"rootfs", layer, false}}, to);
    if (!copied.ok()) frozen = copied.status().Annotate("copy writable layer");
  }
  const Clock::TimePoint t2 = clock.Now();
  capture.layer_seconds = Seconds(t2 - t1);
  Status resumed;
  for (int attempt = 0; attempt < std::max(1, options.resume_attempts); ++attempt) {
    if (attempt > 0) clock.SleepFor(std::chrono::milliseconds(200 * attempt));
    auto info = runtime.Inspect(spec.name);
    if (info.ok() && info->state == TaskState::kRunning) {
      resumed = Status::Ok();
      break;
    }
    resumed = runtime.Resume(spec.name);
    if (resumed.ok()) break;
  }
  capture.freeze_seconds = Seconds(clock.Now() - t0);
  if (!resumed.ok()) {
    spdlog::error("{}: could not resume after a periodic checkpoint: {}", spec.name,
                  resumed.ToString());
    return FailedError(
        "resume after checkpoint failed, workload left paused: " + resumed.ToString() +
        (frozen.ok() ? "" : " (after " + frozen.ToString() + ")"));
  }
  KMX_RETURN_IF_ERROR(frozen);

  capture.sections = {{"criu", images, false}, {"rootfs", rootfs, false}};
  if (carry_log) {
    KMX_RETURN_IF_ERROR(CopyPrefix(spec.log_path, log, log_size).Annotate("copy log"));
    capture.sections.push_back({"log", log, true});
  }
  const TreeSize size = SizeOf(capture.sections);
  capture.bytes = size.bytes;
  capture.files = size.files;
  capture.entries = size.entries;
  return capture;
}

}  // namespace kmosix
