// In-memory ContainerRuntime for unit tests. A container's "memory" is a
// counter that a test can advance with Tick() while its task runs; a CRIU
// dump writes it to <image_dir>/state and a restore reads it back, so state
// travels through the same directories as with the real engine. Like CRIU, a
// dump also writes the "memory" into <image_dir>/pages-1.img when that is a
// named pipe the engine made (and a restore then checks it), outside the lock
// since the pipe blocks until read; a vanished reader is an EPIPE error, as
// CRIU ignores SIGPIPE (so does this process once a FakeRuntime exists).
// Failures are injected per method with Fail(method, status); a task can end
// (EndTask) or vanish (LoseTask) behind its owner's back.
// Thread-safe.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "kmosix/runtime.h"

namespace kmosix::testing {

class FakeRuntime : public ContainerRuntime {
 public:
  explicit FakeRuntime(std::string node, std::string layer_root)
      : node_(std::move(node)), layer_root_(std::move(layer_root)) {
    std::filesystem::create_directories(layer_root_);
    std::signal(SIGPIPE, SIG_IGN);
  }

  void AddImage(const std::string& image) {
    std::lock_guard l(mu_);
    images_.insert(image);
  }
  // Makes the next calls of `method` fail with `s` (until cleared with ok).
  void Fail(const std::string& method, Status s) {
    std::lock_guard l(mu_);
    failures_[method] = std::move(s);
  }
  // Restores that found (and checked) a page image.
  int PagesRestored() {
    std::lock_guard l(mu_);
    return pages_restored_;
  }
  // Advances the counter of a running task (a paused one, or one restored
  // stopped and not continued, does not move).
  void Tick(const std::string& name) {
    std::lock_guard l(mu_);
    auto it = containers_.find(name);
    if (it != containers_.end() && it->second.task == TaskState::kRunning && !it->second.stopped)
      it->second.counter++;
  }
  // Whether the task was restored with leave_stopped and not continued since
  // (Inspect still says running, as containerd does).
  bool Stopped(const std::string& name) {
    std::lock_guard l(mu_);
    auto it = containers_.find(name);
    return it != containers_.end() && it->second.stopped;
  }
  int64_t Counter(const std::string& name) {
    std::lock_guard l(mu_);
    auto it = containers_.find(name);
    return it == containers_.end() ? -1 : it->second.counter;
  }
  TaskState State(const std::string& name) {
    std::lock_guard l(mu_);
    auto it = containers_.find(name);
    return it == containers_.end() ? TaskState::kUnknown : it->second.task;
  }
  // The task's process ended behind the agent's back (a crash, an OOM kill:
  // 137 for SIGKILL): the task is kStopped with `exit_status`, as containerd
  // reports it until the task is deleted.
  void EndTask(const std::string& name, uint32_t exit_status) {
    std::lock_guard l(mu_);
    auto* c = Find(name);
    if (c == nullptr) return;
    c->task = TaskState::kStopped;
    c->exit_status = exit_status;
  }
  // The task vanished while the container stayed (a node reboot, a
  // containerd that lost its shims): Inspect says kNone.
  void LoseTask(const std::string& name) {
    std::lock_guard l(mu_);
    auto* c = Find(name);
    if (c == nullptr) return;
    c->task = TaskState::kNone;
    c->pid = 0;
    c->exit_status = 0;
  }
  bool Has(const std::string& name) {
    std::lock_guard l(mu_);
    return containers_.contains(name);
  }
  int Calls(const std::string& method) {
    std::lock_guard l(mu_);
    return calls_[method];
  }

  std::string NodeName() const override { return node_; }

  Status ImageExists(const std::string& image) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("ImageExists"));
    return images_.contains(image) ? Status::Ok() : NotFoundError("image " + image);
  }
  StatusOr<std::vector<std::string>> ListImages() override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("ListImages"));
    return std::vector<std::string>(images_.begin(), images_.end());
  }
  Status CreateContainer(const ContainerSpec& spec) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("CreateContainer"));
    if (!images_.contains(spec.image)) return NotFoundError("image " + spec.image);
    if (containers_.contains(spec.name)) return ConflictError("container " + spec.name + " exists");
    std::string layer = layer_root_ + "/" + node_ + "/" + spec.name;
    std::filesystem::create_directories(layer);
    containers_[spec.name] = {spec, TaskState::kNone, 0, 0, layer, 0};
    return Status::Ok();
  }
  Status StartTask(const std::string& name) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("StartTask"));
    auto* c = Find(name);
    if (!c) return NotFoundError(name);
    if (c->task != TaskState::kNone) return ConflictError("task exists");
    c->task = TaskState::kRunning;
    c->stopped = false;
    c->pid = next_pid_++;
    return Status::Ok();
  }
  StatusOr<TaskInfo> Inspect(const std::string& name) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("Inspect"));
    auto* c = Find(name);
    if (!c) return NotFoundError(name);
    return TaskInfo{c->task, c->pid, c->task == TaskState::kStopped ? c->exit_status : 0};
  }
  StatusOr<std::vector<std::string>> ListContainers() override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("ListContainers"));
    std::vector<std::string> names;
    for (auto& [n, _] : containers_) names.push_back(n);
    return names;
  }
  Status Pause(const std::string& name) override {
    return Move(name, "Pause", TaskState::kRunning, TaskState::kPaused);
  }
  Status Resume(const std::string& name) override {
    return Move(name, "Resume", TaskState::kPaused, TaskState::kRunning);
  }
  Status Delete(const std::string& name) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("Delete"));
    auto it = containers_.find(name);
    if (it == containers_.end()) return Status::Ok();
    std::error_code ec;
    std::filesystem::remove_all(it->second.layer, ec);
    containers_.erase(it);
    return Status::Ok();
  }
  StatusOr<std::string> WritableLayerDir(const std::string& name) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("WritableLayerDir"));
    auto* c = Find(name);
    if (!c) return NotFoundError(name);
    return c->layer;
  }
  Status CheckpointTask(const std::string& name, const CheckpointRequest& req) override {
    int64_t counter = 0;
    {
      std::lock_guard l(mu_);
      KMX_RETURN_IF_ERROR(Enter("CheckpointTask"));
      auto* c = Find(name);
      if (!c) return NotFoundError(name);
      if (c->task != TaskState::kRunning && c->task != TaskState::kPaused) {
        return ConflictError("task not running");
      }
      counter = c->counter;
    }
    const std::string pages = req.image_dir + "/pages-1.img";
    if (std::filesystem::is_fifo(pages)) {
      int fd = ::open(pages.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return FailedError("open pages: " + std::string(std::strerror(errno)));
      const std::string memory = PagesOf(counter);
      ssize_t w = ::write(fd, memory.data(), memory.size());
      int err = errno;
      ::close(fd);
      if (w != static_cast<ssize_t>(memory.size())) {
        return FailedError("write pages: " + std::string(std::strerror(err)));
      }
    }
    std::ofstream(req.image_dir + "/state") << counter;
    std::lock_guard l(mu_);
    if (auto* c = Find(name); c && !req.leave_running) c->task = TaskState::kStopped;
    return Status::Ok();
  }
  // What a dump of a task at `counter` writes into its page pipe.
  static std::string PagesOf(int64_t counter) {
    return "pages at " + std::to_string(counter) + std::string(100000, '.');
  }
  Status RestoreTask(const std::string& name, const RestoreRequest& req) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("RestoreTask"));
    auto* c = Find(name);
    if (!c) return NotFoundError(name);
    if (c->task != TaskState::kNone) return ConflictError("task exists");
    std::ifstream in(req.image_dir + "/state");
    int64_t counter = -1;
    if (!(in >> counter)) return FailedError("no CRIU images in " + req.image_dir);
    const std::string pages = req.image_dir + "/pages-1.img";
    if (std::filesystem::exists(pages)) {
      std::ifstream p(pages, std::ios::binary);
      std::string memory(std::istreambuf_iterator<char>(p), {});
      if (memory != PagesOf(counter)) return FailedError("pages-1.img does not match the dump");
      pages_restored_++;
    }
    c->counter = counter;
    c->task = TaskState::kRunning;
    c->stopped = req.leave_stopped;
    c->pid = next_pid_++;
    return Status::Ok();
  }
  Status Continue(const std::string& name) override {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter("Continue"));
    auto* c = Find(name);
    if (!c) return NotFoundError(name);
    if (c->task != TaskState::kRunning) return ConflictError("task not running");
    c->stopped = false;
    return Status::Ok();
  }

 private:
  struct Container {
    ContainerSpec spec;
    TaskState task;
    uint32_t pid;
    int64_t counter;
    std::string layer;
    uint32_t exit_status = 0;  // when task == kStopped
    bool stopped = false;      // restored with leave_stopped, not continued
  };
  Status Enter(const std::string& method) {
    calls_[method]++;
    auto it = failures_.find(method);
    if (it != failures_.end() && !it->second.ok()) return it->second;
    return Status::Ok();
  }
  Container* Find(const std::string& name) {
    auto it = containers_.find(name);
    return it == containers_.end() ? nullptr : &it->second;
  }
  Status Move(const std::string& name, const std::string& method, TaskState from, TaskState to) {
    std::lock_guard l(mu_);
    KMX_RETURN_IF_ERROR(Enter(method));
    auto* c = Find(name);
    if (!c) return NotFoundError(name);
    if (c->task != from)
      return ConflictError(method + ": task is " + std::string(TaskStateName(c->task)));
    c->task = to;
    return Status::Ok();
  }

  std::mutex mu_;
  std::string node_;
  std::string layer_root_;
  std::set<std::string> images_;
  std::map<std::string, Container> containers_;
  std::map<std::string, Status> failures_;
  std::map<std::string, int> calls_;
  uint32_t next_pid_ = 100;
  int pages_restored_ = 0;
};

}  // namespace kmosix::testing
