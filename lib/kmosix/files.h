// Small file helpers for durable agent state. Errors as values, never throw.
#pragma once

#include <string>
#include <vector>

#include "kmosix/status.h"

namespace kmosix {

// Writes `content` to `path` atomically (temp file, fsync, rename, fsync
// dir), mode 0600 (missing parent directories are made 0700).
Status WriteFileAtomic(const std::string& path, const std::string& content);
StatusOr<std::string> ReadFile(const std::string& path);
// Regular files in `dir` whose names end with `suffix`, sorted; empty if no dir.
std::vector<std::string> ListFiles(const std::string& dir, const std::string& suffix);
Status RemoveFile(const std::string& path);  // ok if missing

// Makes `path` (absolute) a directory private to this process's user, or
// checks that it is one: missing components are created (the last 0700, the
// others 0755); every existing component must be owned by root or this user
// and, if not sticky, not writable by group or others (a symlink is followed
// only if so owned); the directory itself must not be a symlink, must be
// owned by this user and have no group or other permissions. kInvalid when
// one of these does not hold (what exists is left as it is), kFailed for an
// I/O error. Never a predictable name in a world-writable directory: a
// sticky /tmp-like parent is allowed only because the next component must
// then already be ours.
Status MakePrivateDir(const std::string& path);

}  // namespace kmosix
