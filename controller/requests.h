// Parsers of the controller API's request bodies (pure; fuzzed in
// tests/controller/requests_fuzz.cc). Every parser rejects malformed JSON,
// unknown fields and wrong types with kInvalid and a message naming the field.
// Thread-safety: stateless functions.
#pragma once

#include <string>
#include <string_view>

#include "kmosix/status.h"

namespace kmosix::controller {

// POST /v1/migrations: {"workload": NAME, "target"?: NODE}
struct MigrationRequest {
  std::string workload;
  std::string target;  // "" = the policy picks the least loaded other node
};
StatusOr<MigrationRequest> ParseMigrationRequest(std::string_view body);

// POST /v1/nodes/{name}/drain: {} or {"includePinned"?: bool}; an empty body
// is the same as {}.
struct DrainRequest {
  bool include_pinned = false;  // move pinned workloads too
};
StatusOr<DrainRequest> ParseDrainRequest(std::string_view body);

}  // namespace kmosix::controller
