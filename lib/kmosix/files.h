// Small file helpers for durable agent state. Errors as values, never throw.
#pragma once

#include <string>
#include <vector>

#include "kmosix/status.h"

namespace kmosix {

// Writes `content` to `path` atomically (temp file, fsync, rename, fsync dir).
Status WriteFileAtomic(const std::string& path, const std::string& content);
StatusOr<std::string> ReadFile(const std::string& path);
// Regular files in `dir` whose names end with `suffix`, sorted; empty if no dir.
std::vector<std::string> ListFiles(const std::string& dir, const std::string& suffix);
Status RemoveFile(const std::string& path);  // ok if missing

}  // namespace kmosix
