// Fuzz target: kmosixctl's text/event-stream parser (SseParser,
// kmosixctl/sse.h), which `kmosixctl events` and `top` feed the bytes of
// GET /v1/events as they arrive. Contract:
//  - the events, the last event id and the comment count are those of a
//    plain model of the rules sse.h documents, run on the whole input
//    (lines end in \n, \r\n or \r; ':' starts a comment; one optional space
//    after "field:"; data lines join with '\n'; a blank line dispatches when
//    data came; "id" without NUL sets the last id; an unfinished last line
//    is held back);
//  - the same whether the body arrives whole, in pieces cut at positions
//    taken from its own bytes, or one byte at a time (a "\r\n" split
//    between two chunks included);
//  - every event has a type ("message" by default) without line breaks, an
//    id without line breaks or NUL, data without '\r', and there are never
//    more events than blank lines.
// Built by kmx_fuzz (kmosixctl_sse_fuzz, kmosixctl_sse_fuzz_regress; seeds in
// corpus/sse).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kmosixctl/sse.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::ctl::SseEvent;
using kmosix::ctl::SseParser;

struct Run {
  std::vector<SseEvent> events;
  std::string last_id;
  size_t comments = 0;
  size_t blank_lines = 0;  // the model only
};

std::string Describe(const Run& r) {
  std::string out = std::to_string(r.events.size()) + " events, last id \"" + r.last_id + "\", " +
                    std::to_string(r.comments) + " comments:";
  for (const auto& e : r.events) out += " [" + e.id + "|" + e.event + "|" + e.data + "]";
  return out;
}

bool Same(const Run& a, const Run& b) {
  if (a.events.size() != b.events.size() || a.last_id != b.last_id || a.comments != b.comments)
    return false;
  for (size_t i = 0; i < a.events.size(); ++i) {
    const SseEvent& x = a.events[i];
    const SseEvent& y = b.events[i];
    if (x.id != y.id || x.event != y.event || x.data != y.data) return false;
  }
  return true;
}

// The rules of sse.h, written plainly over the whole input.
Run Model(std::string_view in) {
  Run r;
  std::string event, data;
  bool has_data = false;
  size_t start = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '\n' && in[i] != '\r') continue;
    const std::string_view line = in.substr(start, i - start);
    if (in[i] == '\r' && i + 1 < in.size() && in[i + 1] == '\n') ++i;
    start = i + 1;
    if (line.empty()) {
      ++r.blank_lines;
      if (has_data) r.events.push_back({r.last_id, event.empty() ? "message" : event, data});
      event.clear();
      data.clear();
      has_data = false;
      continue;
    }
    if (line.front() == ':') {
      ++r.comments;
      continue;
    }
    const size_t colon = line.find(':');
    const std::string_view field = line.substr(0, colon);
    std::string_view value;
    if (colon != std::string_view::npos) {
      value = line.substr(colon + 1);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    }
    if (field == "data") {
      if (has_data) data += '\n';
      data += value;
      has_data = true;
    } else if (field == "event") {
      event = value;
    } else if (field == "id" && value.find('\0') == std::string_view::npos) {
      r.last_id = value;
    }
  }
  return r;
}

// Feeds `in` in pieces: whole (step 0), one byte at a time (step 1), or
// pieces of 1..7 bytes taken from the input itself, each followed by an
// empty one (any other step).
Run Parse(std::string_view in, size_t step) {
  Run r;
  SseParser p;
  size_t pos = 0;
  while (pos < in.size()) {
    size_t n = step == 0   ? in.size()
               : step == 1 ? 1
                           : 1 + (static_cast<unsigned char>(in[pos]) + step) % 7;
    n = std::min(n, in.size() - pos);
    std::vector<SseEvent> got = p.Feed(in.substr(pos, n));
    r.events.insert(r.events.end(), got.begin(), got.end());
    if (step > 1) {  // an empty read changes nothing
      got = p.Feed({});
      r.events.insert(r.events.end(), got.begin(), got.end());
    }
    pos += n;
  }
  r.last_id = p.LastEventId();
  r.comments = p.Comments();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const Run model = Model(in);
  const Run whole = Parse(in, 0);
  KMX_FUZZ_CHECK(Same(whole, model), "parser: " + Describe(whole) + "\n  model: " + Describe(model),
                 in);
  const Run pieces = Parse(in, 3);
  KMX_FUZZ_CHECK(Same(pieces, whole),
                 "in pieces: " + Describe(pieces) + "\n  whole: " + Describe(whole), in);
  if (size <= 4096) {
    const Run bytes = Parse(in, 1);
    KMX_FUZZ_CHECK(Same(bytes, whole),
                   "byte by byte: " + Describe(bytes) + "\n  whole: " + Describe(whole), in);
  }
  KMX_FUZZ_CHECK(whole.events.size() <= model.blank_lines,
                 std::string("more events than blank lines"), in);
  for (const SseEvent& e : whole.events) {
    KMX_FUZZ_CHECK(!e.event.empty() && e.event.find_first_of("\r\n") == std::string::npos,
                   "event type \"" + e.event + "\"", in);
    KMX_FUZZ_CHECK(e.id.find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos,
                   "event id \"" + e.id + "\"", in);
    KMX_FUZZ_CHECK(e.data.find('\r') == std::string::npos, "data with a '\\r': " + e.data, in);
  }
  return 0;
}
