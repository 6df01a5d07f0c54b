#include "controller/kube/recorder.h"

#include <spdlog/spdlog.h>

#include "controller/kube/codec.h"

namespace kmosix::bridge {
namespace {

using nlohmann::json;

// At most `max` bytes of `s`, not cutting a UTF-8 sequence.
std::string Truncate(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

}  // namespace

EventRecorder::EventRecorder(kube::Client& client, Clock& clock, Random& random,
                             std::string instance, size_t capacity)
    : client_(client),
      clock_(clock),
      random_(random),
      instance_(std::move(instance)),
      capacity_(capacity) {}

EventRecorder::~EventRecorder() { Stop(std::chrono::seconds(0)); }

void EventRecorder::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void EventRecorder::Stop(Clock::Duration drain) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    drain_until_ = clock_.Now() + drain;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EventRecorder::Record(const kube::Resource& r, const json& object, const std::string& type,
                           const std::string& reason, const std::string& message) {
  auto meta = DecodeMeta(object);
  if (!meta.ok()) return;
  const std::string now = FormatTime(clock_.WallMillis());
  // A cluster-scoped object's (a Node's) Events live in "default", as kubelet's.
  const std::string ns = meta->namespace_.empty() ? "default" : meta->namespace_;
  json event = {{"apiVersion", "v1"},
                {"kind", "Event"},
                {"metadata", {{"name", RandomId(random_, meta->name + ".")}, {"namespace", ns}}},
                {"involvedObject",
                 {{"apiVersion", r.ApiVersion()},
                  {"kind", r.kind},
                  {"namespace", meta->namespace_},
                  {"name", meta->name},
                  {"uid", meta->uid},
                  {"resourceVersion", meta->resource_version}}},
                {"reason", reason},
                {"message", Truncate(message, 1024)},
                {"type", type},
                {"source", {{"component", "kmosix-controller"}}},
                {"reportingComponent", "kmosix.io/controller"},
                {"reportingInstance", instance_},
                {"firstTimestamp", now},
                {"lastTimestamp", now},
                {"count", 1}};
  {
    std::lock_guard lock(mu_);
    if (stopping_ || queue_.size() >= capacity_) {
      ++dropped_;
      return;
    }
    queue_.emplace_back(ns, std::move(event));
  }
  cv_.notify_one();
}

void EventRecorder::Run() {
  while (true) {
    std::pair<std::string, json> next;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() || (stopping_ && clock_.Now() >= drain_until_)) {
        dropped_ += queue_.size();
        queue_.clear();
        return;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      auto created = client_.Create(kube::CoreEvents(), next.first, next.second);
      if (created.ok()) {
        ++sent_;
      } else {
        ++failed_;
        spdlog::debug("kube bridge: event {} in {} not recorded: {}",
                      next.second.value("reason", ""), next.first, created.status().ToString());
      }
    } catch (const std::exception& e) {
      ++failed_;
      spdlog::warn("kube bridge: event not recorded: {}", e.what());
    }
  }
}

}  // namespace kmosix::bridge
