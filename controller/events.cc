#include "controller/events.h"

#include <sstream>

namespace kmosix::controller {

EventHub::EventHub(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

void EventHub::Publish(const std::string& type, int64_t time_ms, nlohmann::json fields) {
  {
    std::lock_guard lock(mu_);
    Event e;
    e.id = ++last_id_;
    e.type = type;
    e.data = {{"id", e.id}, {"type", type}, {"timeMs", time_ms}};
    if (fields.is_object()) e.data.update(fields);
    ring_.push_back(std::move(e));
    while (ring_.size() > capacity_) ring_.pop_front();
  }
  cv_.notify_all();
}

EventHub::Batch EventHub::Wait(int64_t after, std::chrono::milliseconds timeout) const {
  Batch b;
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return closed_ || last_id_ > after; });
  b.closed = closed_;
  if (last_id_ <= after) return b;
  // The ring holds ids (last_id_ - size, last_id_]; anything older is gone.
  const int64_t oldest = last_id_ - static_cast<int64_t>(ring_.size()) + 1;
  b.gap = after + 1 < oldest;
  for (auto it =
           ring_.begin() + static_cast<std::ptrdiff_t>(std::max<int64_t>(0, after + 1 - oldest));
       it != ring_.end(); ++it)
    b.events.push_back(*it);
  return b;
}

int64_t EventHub::LastId() const {
  std::lock_guard lock(mu_);
  return last_id_;
}

void EventHub::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

std::string FormatServerSentEvent(const Event& e) {
  // dump() escapes control characters, so the data is one line.
  return "id: " + std::to_string(e.id) + "\nevent: " + e.type +
         "\ndata: " + e.data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n\n";
}

std::vector<std::string> ParseEventFilter(const std::string& csv) {
  std::vector<std::string> out;
  std::stringstream in(csv);
  std::string item;
  while (std::getline(in, item, ',')) {
    auto b = item.find_first_not_of(' ');
    auto e = item.find_last_not_of(' ');
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

bool EventTypeMatches(const std::string& type, const std::vector<std::string>& filters) {
  if (filters.empty()) return true;
  for (const auto& f : filters) {
    if (type == f) return true;
    if (type.size() > f.size() && type.compare(0, f.size(), f) == 0 && type[f.size()] == '.')
      return true;
  }
  return false;
}

}  // namespace kmosix::controller
