#include "kube/watch_stream.h"

#include <nlohmann/json.hpp>

namespace kmosix::kube {
namespace {

std::string Snippet(std::string_view line) {
  std::string s(line.substr(0, 200));
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (line.size() > 200) s += "...";
  return s;
}

}  // namespace

StatusOr<WatchEvent> ParseWatchEvent(std::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return RetryError("watch: a line is not JSON: " + Snippet(line));
  if (!j.is_object()) return RetryError("watch: an event is not a JSON object: " + Snippet(line));
  auto t = j.find("type");
  auto o = j.find("object");
  if (t == j.end() || !t->is_string()) {
    return RetryError("watch: an event without a type: " + Snippet(line));
  }
  if (o == j.end() || !o->is_object()) {
    return RetryError("watch: an event without an object: " + Snippet(line));
  }
  const std::string& type = t->get_ref<const std::string&>();
  WatchEvent ev;
  if (type == "ADDED") {
    ev.type = EventType::kAdded;
  } else if (type == "MODIFIED") {
    ev.type = EventType::kModified;
  } else if (type == "DELETED") {
    ev.type = EventType::kDeleted;
  } else if (type == "BOOKMARK") {
    ev.type = EventType::kBookmark;
  } else if (type == "ERROR") {
    // The object is a metav1.Status: {"code": 410, "reason": "Expired", "message": ...}
    int64_t code = 0;
    if (auto c = o->find("code"); c != o->end() && c->is_number_integer()) code = c->get<int64_t>();
    std::string message;
    if (auto m = o->find("message"); m != o->end() && m->is_string())
      message = m->get<std::string>();
    if (message.empty()) message = Snippet(line);
    if (code == 410) return ConflictError("410 Gone: " + message);
    return RetryError("watch: the server sent an error (" + std::to_string(code) + "): " + message);
  } else {
    return RetryError("watch: unknown event type \"" + Snippet(type) + "\"");
  }
  // Every event carries metadata.resourceVersion: the watch resumes from it.
  auto m = o->find("metadata");
  if (m == o->end() || !m->is_object() || !m->contains("resourceVersion") ||
      !(*m)["resourceVersion"].is_string()) {
    return RetryError("watch: an event without metadata.resourceVersion: " + Snippet(line));
  }
  ev.object = std::move(*o);
  return ev;
}

bool WatchDecoder::Line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.find_first_not_of(" \t") == std::string_view::npos) return true;  // blank
  auto ev = ParseWatchEvent(line);
  if (!ev.ok()) {
    status_ = ev.status();
    ended_ = true;
    return false;
  }
  ++events_;
  if (!handler_(*ev)) {
    handler_stopped_ = true;
    ended_ = true;
    return false;
  }
  return true;
}

bool WatchDecoder::Feed(std::string_view data) {
  if (ended_) return false;
  while (!data.empty()) {
    size_t nl = data.find('\n');
    if (nl == std::string_view::npos) {
      if (partial_.size() + data.size() > max_line_) {
        status_ = RetryError("watch: a line longer than " + std::to_string(max_line_) + " bytes");
        ended_ = true;
        return false;
      }
      partial_.append(data);
      return true;
    }
    bool ok;
    if (partial_.empty()) {
      ok = Line(data.substr(0, nl));
    } else {
      if (partial_.size() + nl > max_line_) {
        status_ = RetryError("watch: a line longer than " + std::to_string(max_line_) + " bytes");
        ended_ = true;
        return false;
      }
      partial_.append(data.substr(0, nl));
      std::string line = std::move(partial_);
      partial_.clear();
      ok = Line(line);
    }
    if (!ok) return false;
    data.remove_prefix(nl + 1);
  }
  return true;
}

bool WatchDecoder::Finish() {
  if (ended_) return false;
  std::string line = std::move(partial_);
  partial_.clear();
  bool ok = Line(line);
  ended_ = true;
  return ok;
}

}  // namespace kmosix::kube
