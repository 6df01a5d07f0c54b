// Small file helpers for durable agent state (the agent's journals and
// records). Errors as values (kFailed with the errno text, e.g. "No space
// left on device"), never throw. Stateless; thread-safe, except that two
// concurrent writes of the same path share its temporary file.
//
// The durable-write contract the agent's records build on: WriteFileAtomic
// returns ok only once `content` is durable at `path` (data fsynced, renamed
// over `path`, directory fsynced). An error means "not written": callers
// must not act as if it were (a journal phase not entered, a verdict not
// given, kmosix/migration.h and migration_target.h). On an error before the
// rename, `path` keeps its previous content (or stays absent) and no
// temporary file is left behind; on an error after it (the directory's
// fsync) the new content may be visible but is not known to survive a
// crash, and the message says so.
#pragma once

#include <string>
#include <vector>

#include "kmosix/status.h"

namespace kmosix {

// Writes `content` to `path` atomically (`path`.tmp, fsync, rename, fsync
// dir), mode 0600 (missing parent directories are made 0700). See above for
// what an error leaves.
Status WriteFileAtomic(const std::string& path, const std::string& content);
StatusOr<std::string> ReadFile(const std::string& path);
// Regular files in `dir` whose names end with `suffix`, sorted; empty if no dir.
std::vector<std::string> ListFiles(const std::string& dir, const std::string& suffix);
Status RemoveFile(const std::string& path);  // ok if missing

// Removes the tree at `path` (ok if missing), first detaching (umount2
// MNT_DETACH) every mount at or below it, deepest first, as this process's
// mount table lists them: a CRIU killed mid-restore leaves its cgroup yard
// (.criu.cgyard.*, a cgroupfs mount) in its work dir, and a plain recursive
// remove then fails on it for good. kFailed naming what could not go.
Status RemoveTree(const std::string& path);

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
