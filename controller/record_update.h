// The controller's read-mutate-CAS of one workloads/<name> record, shared by
// controller.cc and node_loss.cc (both Controller's implementation).
// Reads the record fresh, lets `mutate` change it (false: nothing to write),
// writes it back with a compare on its mod_revision (plus `fence`), and
// retries a lost compare a few times. Errors: kNotFound when the record is
// gone; the record's parse error; kConflict "no longer the leader" (the
// fence's key changed) or "<key> keeps changing"; store errors as returned.
// `read_at`, if given, holds the mod_revision of the version `mutate` saw.
// Thread-safety: as the store's; `mutate` runs on the caller's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "api/types.h"
#include "kmosix/state_store.h"
#include "kmosix/status.h"

namespace kmosix::controller {

Status UpdateWorkloadRecord(StateStore& store, const std::string& key,
                            const std::optional<Compare>& fence,
                            const std::function<StatusOr<bool>(api::Workload&)>& mutate,
                            int64_t* read_at = nullptr);

}  // namespace kmosix::controller
