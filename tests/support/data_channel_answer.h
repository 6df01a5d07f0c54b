// The data channel's answer as a raw test client reads it (protocol in
// lib/transport_http/data_channel.h): the line after {"ready":true}, which
// the target sends once it accepted the stream's id, or the only line of an
// early refusal. `next(c)` reads one byte into c; false at the end or on an
// error. Header-only, no state.
#pragma once

#include <functional>
#include <string>

namespace kmosix::testing {

inline std::string ReadDataChannelAnswer(const std::function<bool(char&)>& next) {
  std::string answer;
  char c;
  while (next(c)) {
    if (c != '\n') {
      answer.push_back(c);
    } else if (answer == R"({"ready":true})") {
      answer.clear();
    } else {
      break;
    }
  }
  return answer;
}

}  // namespace kmosix::testing
