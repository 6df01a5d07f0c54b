// Fuzz target: ParseTokenFile (auth/tokens.h), the --token-file parser.
// The contract checked on every input:
//  - a rejection is kInvalid with a non-empty message "line N: ..." naming
//    an input line (any message only for a file of comments and blank
//    lines), that quotes no token (no first field of a line that could be a
//    token, unless that text also occurs in another field of the file);
//  - an accepted set is non-empty, every token is 16..512 characters of
//    [A-Za-z0-9._~+/=-], every role admin or read-only, every name 1..64
//    characters of [A-Za-z0-9._@:-], no token and no name twice, and each
//    entry's line number points at an input line whose first field is its
//    token, in increasing order;
//  - an accepted set round-trips: written back as "TOKEN,ROLE,NAME" lines it
//    parses to the same entries;
//  - comments and blank lines do not change the verdict: with "# c\n\n"
//    prepended, the result is the same with every line number moved by 2,
//    and with "\n# c\n" appended it is the same.
// Built by kmx_fuzz (auth_fuzz, auth_fuzz_regress; seeds in corpus/auth).
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "auth/tokens.h"
#include "support/fuzz_checks.h"

namespace {

using kmosix::auth::ParseTokenFile;
using kmosix::auth::Role;
using kmosix::auth::RoleName;
using kmosix::auth::TokenEntry;
using kmosix::auth::TokenSet;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

bool AllOf(std::string_view s, std::string_view extra) {
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              extra.find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

std::string Validate(const TokenSet& set, const std::vector<std::string_view>& lines) {
  if (set.entries.empty()) return "no entries";
  std::set<std::string> tokens, names;
  int last_line = 0;
  for (const TokenEntry& e : set.entries) {
    std::string at = "entry of line " + std::to_string(e.line) + ": ";
    if (e.token.size() < 16 || e.token.size() > 512 || !AllOf(e.token, "._~+/=-")) {
      return at + "bad token of " + std::to_string(e.token.size()) + " characters";
    }
    if (e.role != Role::kAdmin && e.role != Role::kReadOnly) return at + "bad role";
    if (e.name.empty() || e.name.size() > 64 || !AllOf(e.name, "._@:-")) {
      return at + "bad name \"" + e.name + "\"";
    }
    if (!tokens.insert(e.token).second) return at + "token twice";
    if (!names.insert(e.name).second) return at + "name twice";
    if (e.line <= last_line || e.line > static_cast<int>(lines.size())) {
      return at + "line out of order or range";
    }
    last_line = e.line;
    if (Trim(Split(lines[e.line - 1], ',')[0]) != e.token) return at + "token not on its line";
  }
  return "";
}

// N of an error "line N: ..." (1-based), 0 when the message has no such
// prefix (allowed only for a file without any entry line).
int ErrorLine(const std::string& message) {
  if (message.rfind("line ", 0) != 0) return 0;
  int n = 0;
  size_t i = 5;
  for (; i < message.size() && i < 16 && message[i] >= '0' && message[i] <= '9'; ++i) {
    n = n * 10 + (message[i] - '0');
  }
  return i < message.size() && message[i] == ':' && n > 0 ? n : -1;
}

std::string Write(const TokenSet& set) {
  std::string out;
  for (const TokenEntry& e : set.entries) {
    out += e.token + "," + std::string(RoleName(e.role)) + "," + e.name + "\n";
  }
  return out;
}

bool SameEntries(const TokenSet& a, const TokenSet& b, int line_shift, bool compare_lines) {
  if (a.entries.size() != b.entries.size()) return false;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const TokenEntry& x = a.entries[i];
    const TokenEntry& y = b.entries[i];
    if (x.token != y.token || x.role != y.role || x.name != y.name) return false;
    if (compare_lines && x.line + line_shift != y.line) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> lines = Split(in, '\n');
  auto got = ParseTokenFile(in);

  if (!got.ok()) {
    const kmosix::Status& s = got.status();
    KMX_FUZZ_CHECK(s.code() == kmosix::Code::kInvalid, "rejected with " + s.ToString(), in);
    KMX_FUZZ_CHECK(!s.message().empty(), "rejected with an empty message", in);
    int line = ErrorLine(s.message());
    KMX_FUZZ_CHECK(line >= 0 && line <= static_cast<int>(lines.size()),
                   "the error names no input line: " + s.message(), in);
    if (line == 0) {
      for (std::string_view l : lines) {
        l = Trim(l);
        KMX_FUZZ_CHECK(l.empty() || l.front() == '#',
                       "an error without a line for a file with entry lines: " + s.message(), in);
      }
    }
    std::vector<std::string_view> other_fields;
    for (std::string_view line : lines) {
      std::vector<std::string_view> f = Split(line, ',');
      for (size_t i = 1; i < f.size(); ++i) other_fields.push_back(f[i]);
    }
    auto elsewhere = [&](std::string_view s) {
      for (std::string_view f : other_fields) {
        if (f.find(s) != std::string_view::npos) return true;
      }
      return false;
    };
    for (std::string_view line : lines) {
      std::string_view first = Trim(Split(line, ',')[0]);
      if (first.size() < 16 || !AllOf(first, "._~+/=-") || elsewhere(first)) continue;
      KMX_FUZZ_CHECK(s.message().find(first) == std::string::npos,
                     "the error quotes a token: " + s.message(), in);
    }
  } else {
    std::string bad = Validate(*got, lines);
    KMX_FUZZ_CHECK(bad.empty(), "accepted a set that breaks its invariants: " + bad, in);
    std::string text = Write(*got);
    auto again = ParseTokenFile(text);
    KMX_FUZZ_CHECK(again.ok(), "its own file is rejected: " + again.status().ToString(), in);
    KMX_FUZZ_CHECK(SameEntries(*got, *again, 0, false), "round trip changed the entries", in);
  }

  std::string prefixed = "# c\n\n" + std::string(in);
  auto shifted = ParseTokenFile(prefixed);
  KMX_FUZZ_CHECK(shifted.ok() == got.ok(), "a leading comment changed the verdict", in);
  if (!got.ok()) {
    int line = ErrorLine(got.status().message());
    int moved = ErrorLine(shifted.status().message());
    KMX_FUZZ_CHECK(line == 0 ? moved == 0 : moved == line + 2,
                   "a leading comment did not move the error's line: " + got.status().message() +
                       " then " + shifted.status().message(),
                   in);
  }
  if (got.ok()) {
    KMX_FUZZ_CHECK(SameEntries(*got, *shifted, 2, true), "a leading comment changed the entries",
                   in);
  }
  std::string suffixed = std::string(in) + "\n# c\n";
  auto appended = ParseTokenFile(suffixed);
  KMX_FUZZ_CHECK(appended.ok() == got.ok(), "a trailing comment changed the verdict", in);
  if (got.ok()) {
    KMX_FUZZ_CHECK(SameEntries(*got, *appended, 0, true), "a trailing comment changed the entries",
                   in);
  }
  return 0;
}
