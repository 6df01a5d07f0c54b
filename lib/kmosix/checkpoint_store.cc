#include "kmosix/checkpoint_store.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "api/validate.h"
#include "kmosix/files.h"
#include "kmosix/json_fields.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kIncoming[] = ".in-";
constexpr char kMeta[] = "meta.json";

Status CheckNames(const std::string& workload, const std::string& id) {
  KMX_RETURN_IF_ERROR(api::ValidateName(workload).Annotate("checkpoint workload"));
  KMX_RETURN_IF_ERROR(api::ValidateName(id).Annotate("checkpoint id"));
  return Status::Ok();
}

Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return FailedError("open " + dir + ": " + std::strerror(errno));
  Status s;
  if (::fsync(fd) != 0) s = FailedError("fsync " + dir + ": " + std::strerror(errno));
  ::close(fd);
  return s;
}

}  // namespace

std::string StoredCheckpointToJson(const StoredCheckpoint& c) {
  return json{{"workload", c.workload}, {"id", c.id},
              {"source", c.source},     {"epoch", c.epoch},
              {"takenMs", c.taken_ms},  {"storedMs", c.stored_ms},
              {"bytes", c.bytes},       {"files", c.files}}
      .dump();
}

StatusOr<StoredCheckpoint> StoredCheckpointFromJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidError("checkpoint meta is not JSON");
  JsonFields f(j, "checkpoint meta");
  KMX_RETURN_IF_ERROR(
      f.Check({"workload", "id", "source", "epoch", "takenMs", "storedMs", "bytes", "files"}));
  StoredCheckpoint c;
  KMX_RETURN_IF_ERROR(f.Name("workload", c.workload, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Name("id", c.id, /*required=*/true, /*allow_empty=*/false));
  KMX_RETURN_IF_ERROR(f.Name("source", c.source, /*required=*/false, /*allow_empty=*/true));
  KMX_RETURN_IF_ERROR(f.Int("epoch", c.epoch));
  KMX_RETURN_IF_ERROR(f.Int("takenMs", c.taken_ms));
  KMX_RETURN_IF_ERROR(f.Int("storedMs", c.stored_ms));
  KMX_RETURN_IF_ERROR(f.Uint("bytes", c.bytes));
  KMX_RETURN_IF_ERROR(f.Uint("files", c.files));
  return c;
}

Status CheckpointStore::Open() {
  KMX_RETURN_IF_ERROR(MakePrivateDir(root_).Annotate("checkpoint store"));
  std::lock_guard l(mu_);
  std::error_code ec;
  for (const auto& w : fs::directory_iterator(root_, ec)) {
    std::error_code wec;
    if (!w.is_directory(wec)) continue;
    const std::string workload = w.path().filename().string();
    for (const auto& c : fs::directory_iterator(w.path(), wec)) {
      const std::string name = c.path().filename().string();
      std::error_code rec;
      if (name.rfind(kIncoming, 0) == 0) {
        spdlog::info("checkpoint store: removing {} (arrival cut by a restart)", c.path().string());
        fs::remove_all(c.path(), rec);
      } else if (!ReadMeta(workload, name)) {
        spdlog::warn("checkpoint store: removing {} (no readable {})", c.path().string(), kMeta);
        fs::remove_all(c.path(), rec);
      }
    }
  }
  if (ec) return FailedError("list " + root_ + ": " + ec.message());
  return Status::Ok();
}

StatusOr<Landing> CheckpointStore::BeginIncoming(const std::string& workload,
                                                 const std::string& id) {
  KMX_RETURN_IF_ERROR(CheckNames(workload, id));
  std::lock_guard l(mu_);
  const std::string done = Dir(workload) + "/" + id;
  const std::string in = Dir(workload) + "/" + kIncoming + id;
  std::error_code ec;
  if (fs::exists(done, ec) || fs::exists(in, ec)) {
    return ConflictError("checkpoint " + id + " of " + workload + " exists here already");
  }
  fs::create_directories(in, ec);
  if (ec) return FailedError("create " + in + ": " + ec.message());
  Landing landing;
  landing.sections = {{"criu", in + "/criu", false},
                      {"criu-pages", in + "/criu", false},
                      {"rootfs", in + "/rootfs", false},
                      {"log", in + "/log", true}};
  return landing;
}

Status CheckpointStore::Commit(StoredCheckpoint meta, const std::set<std::string>& protect) {
  KMX_RETURN_IF_ERROR(CheckNames(meta.workload, meta.id));
  std::lock_guard l(mu_);
  const std::string in = Dir(meta.workload) + "/" + kIncoming + meta.id;
  const std::string done = Dir(meta.workload) + "/" + meta.id;
  std::error_code ec;
  if (!fs::is_directory(in, ec)) {
    return NotFoundError("no arrival " + meta.id + " of " + meta.workload);
  }
  meta.dir.clear();
  KMX_RETURN_IF_ERROR(WriteFileAtomic(in + "/" + kMeta, StoredCheckpointToJson(meta)));
  if (::rename(in.c_str(), done.c_str()) != 0) {
    return FailedError("rename " + in + ": " + std::strerror(errno));
  }
  KMX_RETURN_IF_ERROR(SyncDir(Dir(meta.workload)));
  // The new one is in place: the older ones go (unless protected or pinned).
  for (const auto& c : fs::directory_iterator(Dir(meta.workload), ec)) {
    const std::string name = c.path().filename().string();
    if (name == meta.id || name.rfind(kIncoming, 0) == 0 || protect.contains(name)) continue;
    if (Status s = RemoveLocked(meta.workload, name); !s.ok()) {
      spdlog::warn("checkpoint store: {}", s.ToString());
    }
  }
  return Status::Ok();
}

void CheckpointStore::Abort(const std::string& workload, const std::string& id) {
  if (!CheckNames(workload, id).ok()) return;
  std::lock_guard l(mu_);
  std::error_code ec;
  fs::remove_all(Dir(workload) + "/" + kIncoming + id, ec);
  fs::remove(Dir(workload), ec);  // only if empty
}

std::optional<StoredCheckpoint> CheckpointStore::ReadMeta(const std::string& workload,
                                                          const std::string& id) {
  auto text = ReadFile(Dir(workload) + "/" + id + "/" + kMeta);
  if (!text.ok()) return std::nullopt;
  auto meta = StoredCheckpointFromJson(*text);
  if (!meta.ok() || meta->workload != workload || meta->id != id) return std::nullopt;
  meta->dir = Dir(workload) + "/" + id;
  return *meta;
}

std::vector<StoredCheckpoint> CheckpointStore::List(const std::string& workload) {
  std::vector<StoredCheckpoint> out;
  if (!api::ValidateName(workload).ok()) return out;
  std::lock_guard l(mu_);
  std::error_code ec;
  for (const auto& c : fs::directory_iterator(Dir(workload), ec)) {
    const std::string name = c.path().filename().string();
    if (name.rfind(kIncoming, 0) == 0) continue;
    if (auto meta = ReadMeta(workload, name)) out.push_back(std::move(*meta));
  }
  std::sort(out.begin(), out.end(), [](const StoredCheckpoint& a, const StoredCheckpoint& b) {
    return a.stored_ms != b.stored_ms ? a.stored_ms < b.stored_ms : a.id < b.id;
  });
  return out;
}

std::vector<std::string> CheckpointStore::Workloads() {
  std::vector<std::string> out;
  std::lock_guard l(mu_);
  std::error_code ec;
  for (const auto& w : fs::directory_iterator(root_, ec)) {
    std::error_code wec;
    const std::string name = w.path().filename().string();
    if (w.is_directory(wec) && api::ValidateName(name).ok()) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<StoredCheckpoint> CheckpointStore::Find(const std::string& workload,
                                                      const std::string& id) {
  if (!CheckNames(workload, id).ok()) return std::nullopt;
  std::lock_guard l(mu_);
  return ReadMeta(workload, id);
}

Status CheckpointStore::Remove(const std::string& workload, const std::string& id) {
  KMX_RETURN_IF_ERROR(CheckNames(workload, id));
  std::lock_guard l(mu_);
  KMX_RETURN_IF_ERROR(RemoveLocked(workload, id));
  std::error_code ec;
  fs::remove(Dir(workload), ec);  // only if empty
  return Status::Ok();
}

Status CheckpointStore::RemoveLocked(const std::string& workload, const std::string& id) {
  if (auto it = pins_.find({workload, id}); it != pins_.end() && it->second > 0) {
    return ConflictError("checkpoint " + id + " of " + workload + " is being restored from");
  }
  std::error_code ec;
  fs::remove_all(Dir(workload) + "/" + id, ec);
  if (ec) return FailedError("remove checkpoint " + id + " of " + workload + ": " + ec.message());
  return Status::Ok();
}

std::vector<Section> CheckpointStore::SectionsOf(const StoredCheckpoint& c) {
  std::vector<Section> sections = {{"criu", c.dir + "/criu", false},
                                   {"rootfs", c.dir + "/rootfs", false}};
  std::error_code ec;
  if (fs::is_regular_file(c.dir + "/log", ec)) sections.push_back({"log", c.dir + "/log", true});
  return sections;
}

void CheckpointStore::Pin(const std::string& workload, const std::string& id) {
  std::lock_guard l(mu_);
  pins_[{workload, id}] += 1;
}

void CheckpointStore::Unpin(const std::string& workload, const std::string& id) {
  std::lock_guard l(mu_);
  auto it = pins_.find({workload, id});
  if (it != pins_.end() && --it->second <= 0) pins_.erase(it);
}

}  // namespace kmosix
