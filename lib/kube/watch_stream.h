// Decoding a watch response body: newline-delimited JSON events
// ({"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}),
// arriving in chunks that split lines anywhere.
//
// Errors (as client.h's Watch reports them):
//   an ERROR event whose Status has code 410 -> kConflict ("410 Gone: ...");
//   any other ERROR event                    -> kRetry, with the server's message;
//   a line that is not a JSON event, an unknown type, a line longer than
//   the limit                                -> kRetry, naming what was wrong.
// Nothing throws (nlohmann::json is parsed without exceptions).
// Thread-safety: a WatchDecoder is used by one thread; ParseWatchEvent is pure.
#pragma once

#include <string>
#include <string_view>

#include "kmosix/status.h"
#include "kube/client.h"

namespace kmosix::kube {

// One line (without its newline) -> one event.
StatusOr<WatchEvent> ParseWatchEvent(std::string_view line);

class WatchDecoder {
 public:
  explicit WatchDecoder(const WatchHandler& handler, size_t max_line = 64u << 20)
      : handler_(handler), max_line_(max_line) {}

  // Feeds the next piece of the body; calls the handler for every complete
  // line. Returns false when the watch should end: the handler returned
  // false (status() ok, handler_stopped() true) or a line was bad (status()
  // not ok). Feeding after false does nothing and returns false.
  bool Feed(std::string_view data);
  // The body ended: a last line without a newline is decoded too.
  bool Finish();

  const Status& status() const { return status_; }
  bool handler_stopped() const { return handler_stopped_; }
  // Events handed to the handler (bookmarks included).
  size_t events() const { return events_; }

 private:
  bool Line(std::string_view line);

  const WatchHandler& handler_;
  const size_t max_line_;
  std::string partial_;
  Status status_;
  bool ended_ = false;
  bool handler_stopped_ = false;
  size_t events_ = 0;
};

}  // namespace kmosix::kube
