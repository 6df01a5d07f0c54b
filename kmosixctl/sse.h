// Incremental parser of a text/event-stream body (server-sent events, as
// GET /v1/events sends them), following the HTML living standard's rules:
// lines end in \n, \r\n or \r (also when split across chunks); a line
// starting with ':' is a comment (keepalives); "field: value" with one
// optional space after the colon; several data lines join with '\n'; a blank
// line dispatches the event (nothing is dispatched when no data came); "id"
// sets the last event id (kept across events, for Last-Event-ID on
// reconnect); unknown fields are ignored.
//
// Ownership: a value type. Thread-safety: one thread at a time. No errors:
// malformed input is skipped the way the standard says.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kmosix::ctl {

struct SseEvent {
  std::string id;     // the last event id when it was dispatched ("" = none yet)
  std::string event;  // "message" when the stream named no type
  std::string data;   // data lines joined with '\n'
};

class SseParser {
 public:
  // Parses a chunk; returns the events it completed, in order.
  std::vector<SseEvent> Feed(std::string_view chunk);
  const std::string& LastEventId() const { return last_id_; }
  // Comment lines seen so far (keepalives).
  size_t Comments() const { return comments_; }

 private:
  void Line(std::string_view line, std::vector<SseEvent>& out);

  std::string partial_;   // an unfinished line
  bool skip_lf_ = false;  // the last chunk ended in '\r': a leading '\n' belongs to it
  std::string event_;
  std::string data_;
  bool has_data_ = false;
  std::string last_id_;
  size_t comments_ = 0;
};

}  // namespace kmosix::ctl
