// Contract checks shared by the fuzz targets of parsers (tests/**/*_fuzz.cc,
// built with kmx_fuzz from tests/CMakeLists.txt).
//
// A broken contract prints what broke, where, and the input (escaped,
// truncated), then aborts: libFuzzer saves the input as a crash artifact and
// the regression runner fails.
// Header-only; needs kmosix_core (Status, ErrorJson). Thread-safety: pure.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kmosix/spec_json.h"
#include "kmosix/status.h"

namespace kmosix::fuzz {

// The input made printable: non-ASCII and control bytes as \xNN, at most
// 300 bytes shown.
inline std::string Printable(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size() && i < 300; ++i) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (in.size() > 300) out += "... (" + std::to_string(in.size()) + " bytes)";
  return out;
}

[[noreturn]] inline void Fail(const char* file, int line, const std::string& what,
                              std::string_view input) {
  // line 0: `file` names the parser under test rather than a source file.
  std::string where = line > 0 ? std::string(file) + ":" + std::to_string(line) : file;
  std::fprintf(stderr, "%s: fuzz contract broken: %s\n  input: %s\n", where.c_str(), what.c_str(),
               Printable(input).c_str());
  std::abort();
}

// JSON text of `j`, as a REST reply or a stored record would carry it; a
// value that cannot be serialised (invalid UTF-8 in a string) breaks the
// contract.
inline std::string DumpOrFail(const nlohmann::json& j, const char* file, int line,
                              std::string_view input) {
  try {
    return j.dump();
  } catch (const nlohmann::json::exception& e) {
    Fail(file, line, std::string("cannot serialise: ") + e.what(), input);
  }
}

// The contract of a rejected input: kInvalid, a non-empty message, and an
// error reply ({"code","message"}) that serialises.
inline void CheckRejected(const Status& s, std::string_view input, const char* file, int line) {
  if (s.code() != Code::kInvalid) {
    Fail(file, line, "rejected with " + s.ToString() + ", want code Invalid", input);
  }
  if (s.message().empty()) Fail(file, line, "rejected with an empty message", input);
  (void)DumpOrFail(ErrorJson(s), file, line, input);
}

// Nesting depth of a JSON value (a scalar is 0), without recursion.
inline size_t Depth(const nlohmann::json& root) {
  size_t deepest = 0;
  std::vector<std::pair<const nlohmann::json*, size_t>> todo = {{&root, 0}};
  while (!todo.empty()) {
    auto [j, depth] = todo.back();
    todo.pop_back();
    deepest = std::max(deepest, depth);
    if (j->is_structured()) {
      for (const auto& child : *j) todo.emplace_back(&child, depth + 1);
    }
  }
  return deepest;
}

// Keys of every object in a JSON value, without recursion.
inline size_t KeysIn(const nlohmann::json& root) {
  size_t keys = 0;
  std::vector<const nlohmann::json*> todo = {&root};
  while (!todo.empty()) {
    const nlohmann::json* j = todo.back();
    todo.pop_back();
    if (j->is_object()) keys += j->size();
    if (j->is_structured()) {
      for (const auto& child : *j) todo.push_back(&child);
    }
  }
  return keys;
}

// The whole contract of a strict JSON body parser
//   StatusOr<T> parse(std::string_view)
// on one input:
//  - a rejection is CheckRejected;
//  - an accepted value passes `validate` (returns "" or what is wrong), and
//    round-trips: parse(to_json(v).dump()) is accepted, `equal` to v, and
//    serialises to the same text again;
//  - an object that repeats a key is rejected (nlohmann would keep the last
//    value);
//  - otherwise the verdict depends on the JSON value only, not on its
//    spelling: when the input is JSON, its canonical form (nlohmann's dump)
//    gets the same verdict and value.
// `what` names the parser in messages.
template <typename Parse, typename ToJson, typename Equal, typename Validate>
void CheckJsonParser(const char* what, std::string_view input, Parse parse, ToJson to_json,
                     Equal equal, Validate validate) {
  auto got = parse(input);
  if (!got.ok()) {
    CheckRejected(got.status(), input, what, 0);
  } else {
    if (std::string bad = validate(*got); !bad.empty()) {
      Fail(what, 0, "accepted a value that breaks its invariants: " + bad, input);
    }
    std::string text = DumpOrFail(to_json(*got), what, 0, input);
    auto again = parse(text);
    if (!again.ok()) {
      Fail(what, 0, "its own JSON " + text + " is rejected: " + again.status().ToString(), input);
    }
    if (!equal(*got, *again)) Fail(what, 0, "round trip changed the value: " + text, input);
    std::string text2 = DumpOrFail(to_json(*again), what, 0, input);
    if (text2 != text) Fail(what, 0, "JSON not stable: " + text + " then " + text2, input);
  }
  // A repeated key shows as more key events while parsing than keys kept.
  size_t key_events = 0;
  auto count_keys = [&](int, nlohmann::json::parse_event_t event, nlohmann::json&) {
    if (event == nlohmann::json::parse_event_t::key) ++key_events;
    return true;
  };
  nlohmann::json j = nlohmann::json::parse(input, count_keys, /*allow_exceptions=*/false);
  if (j.is_discarded()) return;
  if (key_events != KeysIn(j)) {
    if (got.ok()) Fail(what, 0, "accepted an object that repeats a key", input);
    return;
  }
  // dump() recurses: leave out deep values (the parsers themselves never dump
  // their input, and nlohmann parses and destroys without recursion).
  if (Depth(j) > 200) return;
  std::string canonical = DumpOrFail(j, what, 0, input);
  auto other = parse(canonical);
  if (other.ok() != got.ok()) {
    Fail(what, 0,
         "the canonical form " + canonical + " gets another verdict: " +
             (other.ok() ? std::string("accepted") : other.status().ToString()),
         input);
  }
  if (got.ok() && !equal(*got, *other)) {
    Fail(what, 0, "the canonical form " + canonical + " parses to another value", input);
  }
}

}  // namespace kmosix::fuzz

// Aborts with `what` (a std::string expression) and the input when `cond`
// is false. `input` is the target's std::string_view of the bytes.
#define KMX_FUZZ_CHECK(cond, what, input)                                   \
  do {                                                                      \
    if (!(cond)) ::kmosix::fuzz::Fail(__FILE__, __LINE__, (what), (input)); \
  } while (0)

#define KMX_FUZZ_CHECK_REJECTED(status, input) \
  ::kmosix::fuzz::CheckRejected((status), (input), __FILE__, __LINE__)

#define KMX_FUZZ_DUMP(j, input) ::kmosix::fuzz::DumpOrFail((j), __FILE__, __LINE__, (input))
