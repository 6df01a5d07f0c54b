// The text of a JSON value that may carry bytes from outside: error messages
// of peers and of CRIU, paths from a stream, names from a request. Such bytes
// need not be UTF-8, and nlohmann::json::dump() throws type_error 316 on
// invalid UTF-8 unless told otherwise; DumpJson replaces each bad byte with
// U+FFFD instead. Use it for every dump of such values (records, journals,
// replies, etcd writes).
//
// Thread-safety: pure functions. Errors: none; never throws on bad UTF-8.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace kmosix {

// j.dump(indent), bad UTF-8 replaced by U+FFFD (indent -1: one line).
inline std::string DumpJson(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace kmosix
