#include "kmosixctl/sse.h"

namespace kmosix::ctl {

std::vector<SseEvent> SseParser::Feed(std::string_view chunk) {
  std::vector<SseEvent> out;
  size_t i = 0;
  if (skip_lf_ && !chunk.empty()) {
    if (chunk[0] == '\n') i = 1;
    skip_lf_ = false;
  }
  size_t start = i;
  for (; i < chunk.size(); ++i) {
    const char c = chunk[i];
    if (c != '\n' && c != '\r') continue;
    std::string_view piece = chunk.substr(start, i - start);
    if (partial_.empty()) {
      Line(piece, out);
    } else {
      partial_.append(piece);
      std::string line = std::move(partial_);
      partial_.clear();
      Line(line, out);
    }
    if (c == '\r') {
      if (i + 1 < chunk.size()) {
        if (chunk[i + 1] == '\n') ++i;
      } else {
        skip_lf_ = true;
      }
    }
    start = i + 1;
  }
  if (start < chunk.size()) partial_.append(chunk.substr(start));
  return out;
}

void SseParser::Line(std::string_view line, std::vector<SseEvent>& out) {
  if (line.empty()) {  // dispatch
    if (has_data_) {
      out.push_back({last_id_, event_.empty() ? "message" : event_, data_});
    }
    event_.clear();
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line[0] == ':') {
    ++comments_;
    return;
  }
  std::string_view field = line, value;
  if (auto colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) data_ += '\n';
    data_.append(value);
    has_data_ = true;
  } else if (field == "event") {
    event_ = std::string(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_id_ = std::string(value);
  }
  // "retry" and unknown fields: ignored.
}

}  // namespace kmosix::ctl
