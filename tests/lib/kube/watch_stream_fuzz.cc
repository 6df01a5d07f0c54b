// Fuzz target: the watch-stream decoder (WatchDecoder, lib/kube/watch_stream.h).
// The input is fed whole, and again cut into pieces at positions taken from
// its own bytes; contract: no crash, both runs hand the same events to the
// handler and end with the same Status, and a failure is kRetry or kConflict
// (410) with a message. Every event handed over carries a string
// metadata.resourceVersion.
// Built by kmx_fuzz (watch_stream_fuzz, watch_stream_fuzz_regress; seeds in
// corpus/watch_stream).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kube/watch_stream.h"
#include "support/fuzz_checks.h"

namespace {

struct Run {
  std::vector<std::string> events;  // type + object dump
  kmosix::Status status;
};

Run Decode(std::string_view in, size_t step_seed) {
  Run run;
  kmosix::kube::WatchHandler h = [&](const kmosix::kube::WatchEvent& e) {
    run.events.push_back(std::to_string(static_cast<int>(e.type)) + e.object.dump());
    return true;
  };
  kmosix::kube::WatchDecoder d(h, 1 << 16);
  size_t pos = 0;
  bool more = true;
  while (more && pos < in.size()) {
    size_t n =
        step_seed == 0 ? in.size() : 1 + (static_cast<unsigned char>(in[pos]) + step_seed) % 7;
    n = std::min(n, in.size() - pos);
    more = d.Feed(in.substr(pos, n));
    pos += n;
  }
  if (more) d.Finish();
  run.status = d.status();
  return run;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Run whole = Decode(in, 0);
  Run pieces = Decode(in, 3);
  KMX_FUZZ_CHECK(
      whole.events == pieces.events,
      "events differ when the body arrives in pieces: " + std::to_string(whole.events.size()) +
          " vs " + std::to_string(pieces.events.size()),
      in);
  KMX_FUZZ_CHECK(whole.status.code() == pieces.status.code() &&
                     whole.status.message() == pieces.status.message(),
                 "status differs: " + whole.status.ToString() + " vs " + pieces.status.ToString(),
                 in);
  if (!whole.status.ok()) {
    KMX_FUZZ_CHECK(whole.status.code() == kmosix::Code::kRetry ||
                       whole.status.code() == kmosix::Code::kConflict,
                   "failed with " + whole.status.ToString(), in);
    KMX_FUZZ_CHECK(!whole.status.message().empty(), std::string("empty message"), in);
  }
  // The whole input as one line.
  auto ev = kmosix::kube::ParseWatchEvent(in);
  if (ev.ok()) {
    const auto& m = ev->object["metadata"];
    KMX_FUZZ_CHECK(m.is_object() && m["resourceVersion"].is_string(),
                   std::string("an event without a string resourceVersion"), in);
  }
  return 0;
}
