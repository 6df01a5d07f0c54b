#include "checkpoint_keeper.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>

#include "api/validate.h"
#include "kmosix/checkpoint_capture.h"
#include "kmosix/files.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;

StatusOr<std::optional<api::Workload>> ReadWorkload(StateStore& state,
                                                    const cluster::KeyLayout& keys,
                                                    const std::string& name) {
  auto got = state.Get(keys.Workload(name));
  if (!got.ok()) return RetryError("read " + keys.Workload(name) + ": " + got.status().message());
  if (!got->kv) return std::optional<api::Workload>();
  auto w = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
  if (!w.ok()) return w.status().Annotate(keys.Workload(name));
  return std::optional<api::Workload>(std::move(*w));
}

}  // namespace

bool IsCheckpointId(const std::string& id) { return id.rfind(kCheckpointIdPrefix, 0) == 0; }

std::set<std::string> CheckpointsToKeep(const std::vector<StoredCheckpoint>& stored,
                                        const std::optional<api::Workload>& workload,
                                        const std::optional<api::CheckpointRecord>& record,
                                        const std::string& self, int64_t now_ms, int64_t grace_ms) {
  std::set<std::string> keep;
  if (!workload) return keep;  // gone: everything goes
  if (!workload->status.restore_checkpoint.empty())
    keep.insert(workload->status.restore_checkpoint);
  if (record && record->keeper == self) keep.insert(record->id);
  if (!record && !stored.empty()) {
    const auto newest = std::max_element(
        stored.begin(), stored.end(), [](const StoredCheckpoint& a, const StoredCheckpoint& b) {
          return a.stored_ms != b.stored_ms ? a.stored_ms < b.stored_ms : a.id < b.id;
        });
    keep.insert(newest->id);
  }
  for (const StoredCheckpoint& s : stored) {
    if (now_ms - s.stored_ms < grace_ms) keep.insert(s.id);
  }
  return keep;
}

CheckpointKeeper::CheckpointKeeper(CheckpointKeeperOptions options, CheckpointStore& store,
                                   StateStore& state, CheckpointEngine& engine, Clock& clock)
    : options_(std::move(options)), store_(store), state_(state), engine_(engine), clock_(clock) {}

CheckpointKeeper::Counts CheckpointKeeper::counts() {
  std::lock_guard l(mu_);
  return counts_;
}

Status CheckpointKeeper::AllowPeer(const std::string& peer_node, const std::string& id) {
  if (Status s = api::ValidateName(id); !s.ok() || !IsCheckpointId(id)) {
    return PermissionDeniedError("checkpoint id: " +
                                 (s.ok() ? "not a checkpoint id" : s.message()));
  }
  if (peer_node.empty() || peer_node == options_.node) {
    return PermissionDeniedError("a checkpoint comes from another node");
  }
  std::lock_guard l(mu_);
  auto [it, fresh] = bound_.try_emplace(id, peer_node, clock_.Now());
  if (!fresh && it->second.first != peer_node) {
    counts_.refused += 1;
    return PermissionDeniedError("checkpoint " + id + " is " + it->second.first + "'s, not " +
                                 peer_node + "'s");
  }
  it->second.second = clock_.Now();
  return Status::Ok();
}

PeerInfo CheckpointKeeper::Info() { return {options_.node, ""}; }

Status CheckpointKeeper::Prepare(const MigrationOffer& offer) {
  auto refuse = [&](Status s) {
    std::lock_guard l(mu_);
    counts_.refused += 1;
    spdlog::warn("checkpoint {} of {} from {} refused: {}", offer.id, offer.spec.name,
                 offer.source_node, s.ToString());
    return s;
  };
  if (!IsCheckpointId(offer.id) || !api::ValidateName(offer.id).ok()) {
    return refuse(InvalidError("not a checkpoint id: " + offer.id));
  }
  const std::string& name = offer.spec.name;
  if (!api::ValidateName(name).ok()) return refuse(InvalidError("bad workload name"));
  if (offer.source_node.empty() || offer.source_node == options_.node) {
    return refuse(PermissionDeniedError("a checkpoint comes from another node"));
  }
  {
    std::lock_guard l(mu_);
    auto b = bound_.find(offer.id);
    if (options_.authenticated_peers &&
        (b == bound_.end() || b->second.first != offer.source_node)) {
      counts_.refused += 1;
      return PermissionDeniedError("checkpoint " + offer.id + " was not offered by " +
                                   offer.source_node);
    }
  }
  // etcd must name the source as the workload's owner, running it.
  auto read = ReadWorkload(state_, options_.keys, name);
  if (!read.ok()) return read.status();
  const std::optional<api::Workload>& rec = *read;
  if (!rec) return refuse(PermissionDeniedError("no workload " + name + " in the cluster"));
  const api::WorkloadStatus& st = rec->status;
  if (st.node != offer.source_node || st.phase != api::WorkloadPhase::kRunning ||
      !st.migration.empty() || rec->spec.restart_policy != api::RestartPolicy::kFromCheckpoint) {
    return refuse(
        PermissionDeniedError("etcd does not name " + offer.source_node + " the owner of " + name +
                              " running with restartPolicy FromCheckpoint (owner " + st.node +
                              ", phase " + std::string(api::WorkloadPhaseName(st.phase)) +
                              (st.migration.empty() ? "" : ", migrating") + ")"));
  }
  if (offer.stream.bytes == 0 || offer.stream.files == 0 || offer.stream.entries == 0) {
    return refuse(InvalidError("a checkpoint offer declares its stream's limits"));
  }
  if (options_.max_bytes > 0 && offer.stream.bytes > options_.max_bytes) {
    return refuse(InvalidError("checkpoint of " + std::to_string(offer.stream.bytes) +
                               " bytes is over this keeper's ceiling of " +
                               std::to_string(options_.max_bytes)));
  }
  if (auto free = FreeBytes(store_.root());
      free && *free < offer.stream.bytes + options_.reserve_bytes) {
    return refuse(RetryError("no room for a checkpoint of " + std::to_string(offer.stream.bytes) +
                             " bytes (" + std::to_string(*free) + " free)"));
  }
  std::lock_guard l(mu_);
  if (static_cast<int>(arrivals_.size()) >= options_.max_incoming) {
    counts_.refused += 1;
    return RetryError("busy: " + std::to_string(arrivals_.size()) + " checkpoints arriving");
  }
  for (const auto& [id, a] : arrivals_) {
    if (a.offer.spec.name == name) {
      counts_.refused += 1;
      return ConflictError("checkpoint " + id + " of " + name + " is arriving");
    }
  }
  KMX_ASSIGN_OR_RETURN(Landing landing, store_.BeginIncoming(name, offer.id));
  Arrival a;
  a.offer = offer;
  a.epoch = st.epoch;
  a.landing = std::move(landing);
  a.touched = clock_.Now();
  arrivals_[offer.id] = std::move(a);
  return Status::Ok();
}

StatusOr<Landing> CheckpointKeeper::BeginReceive(const std::string& id) {
  std::lock_guard l(mu_);
  auto it = arrivals_.find(id);
  if (it == arrivals_.end()) return NotFoundError("no checkpoint " + id + " prepared here");
  if (it->second.phase != TargetPhase::kPrepared) {
    return ConflictError("checkpoint " + id + " is " +
                         std::string(TargetPhaseName(it->second.phase)));
  }
  it->second.phase = TargetPhase::kReceiving;
  it->second.touched = clock_.Now();
  return it->second.landing;
}

StreamLimits CheckpointKeeper::ReceiveLimits(const std::string& id) {
  std::lock_guard l(mu_);
  auto it = arrivals_.find(id);
  if (it == arrivals_.end()) return {};
  return it->second.offer.stream;
}

StatusOr<std::set<std::string>> CheckpointKeeper::Protected(const std::string& workload) {
  std::set<std::string> keep;
  KMX_ASSIGN_OR_RETURN(auto rec, ReadWorkload(state_, options_.keys, workload));
  if (rec && !rec->status.restore_checkpoint.empty()) keep.insert(rec->status.restore_checkpoint);
  auto got = state_.Get(options_.keys.Checkpoint(workload));
  if (!got.ok()) return RetryError(got.status().message());
  if (got->kv) {
    auto c =
        cluster::ParseRecord<api::CheckpointRecord>(got->kv->value, cluster::CheckpointFromJson);
    if (!c.ok()) return c.status();
    if (c->keeper == options_.node) keep.insert(c->id);
  }
  return keep;
}

Status CheckpointKeeper::EndReceive(const std::string& id, const Status& result,
                                    const TransferStats& stats) {
  Arrival a;
  {
    std::lock_guard l(mu_);
    auto it = arrivals_.find(id);
    if (it == arrivals_.end()) return NotFoundError("no checkpoint " + id + " arriving here");
    a = std::move(it->second);
    arrivals_.erase(it);
    bound_.erase(id);
  }
  const std::string& name = a.offer.spec.name;
  if (!result.ok()) {
    store_.Abort(name, id);
    std::lock_guard l(mu_);
    counts_.failed += 1;
    spdlog::warn("checkpoint {} of {} from {} failed: {}", id, name, a.offer.source_node,
                 result.ToString());
    return result;
  }
  // The old one goes only if etcd does not need it; unreadable: all stay
  // (Collect decides later).
  std::set<std::string> protect;
  if (auto p = Protected(name); p.ok()) {
    protect = std::move(*p);
  } else {
    for (const auto& c : store_.List(name)) protect.insert(c.id);
  }
  StoredCheckpoint meta;
  meta.workload = name;
  meta.id = id;
  meta.source = a.offer.source_node;
  meta.epoch = a.epoch;
  meta.taken_ms = a.offer.created_ms;
  meta.stored_ms = clock_.WallMillis();
  meta.bytes = stats.bytes;
  meta.files = stats.files;
  if (Status s = store_.Commit(meta, protect); !s.ok()) {
    store_.Abort(name, id);
    std::lock_guard l(mu_);
    counts_.failed += 1;
    return s.Annotate("store checkpoint " + id);
  }
  std::lock_guard l(mu_);
  counts_.received += 1;
  spdlog::info("kept checkpoint {} of {} from {} ({} bytes, {} files, epoch {})", id, name,
               meta.source, meta.bytes, meta.files, meta.epoch);
  return Status::Ok();
}

StatusOr<RestoreReport> CheckpointKeeper::Restore(const std::string& id) {
  return InvalidError("checkpoint " + id + " is kept, not restored on request");
}

StatusOr<TargetPhase> CheckpointKeeper::Commit(const std::string& id) {
  return InvalidError("checkpoint " + id + " is kept, not committed");
}

StatusOr<TargetPhase> CheckpointKeeper::Abort(const std::string& id) {
  Arrival a;
  {
    std::lock_guard l(mu_);
    auto it = arrivals_.find(id);
    if (it == arrivals_.end()) return TargetPhase::kAborted;
    if (it->second.phase == TargetPhase::kReceiving) {
      return ConflictError("checkpoint " + id + " is arriving");  // the stream's end drops it
    }
    a = std::move(it->second);
    arrivals_.erase(it);
    bound_.erase(id);
  }
  store_.Abort(a.offer.spec.name, id);
  return TargetPhase::kAborted;
}

StatusOr<TargetPhase> CheckpointKeeper::Query(const std::string& id) {
  std::lock_guard l(mu_);
  auto it = arrivals_.find(id);
  return it == arrivals_.end() ? TargetPhase::kUnknown : it->second.phase;
}

void CheckpointKeeper::ExpireIdle() {
  std::vector<std::pair<std::string, std::string>> expired;  // workload, id
  {
    std::lock_guard l(mu_);
    const auto now = clock_.Now();
    for (auto it = arrivals_.begin(); it != arrivals_.end();) {
      // An arrival in Receiving is the stream's: its end (or the channel's
      // io timeout) settles it.
      if (it->second.phase == TargetPhase::kPrepared &&
          now - it->second.touched >= options_.idle_timeout) {
        expired.emplace_back(it->second.offer.spec.name, it->first);
        bound_.erase(it->first);
        it = arrivals_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = bound_.begin(); it != bound_.end();) {
      if (!arrivals_.contains(it->first) && now - it->second.second >= options_.idle_timeout) {
        it = bound_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& [workload, id] : expired) {
    spdlog::warn("checkpoint {} of {} never arrived: dropped", id, workload);
    store_.Abort(workload, id);
  }
}

int CheckpointKeeper::Collect() {
  int removed = 0;
  const int64_t now_ms = clock_.WallMillis();
  const int64_t grace_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(options_.grace).count();
  for (const std::string& name : store_.Workloads()) {
    {
      std::lock_guard l(mu_);
      bool arriving = false;
      for (const auto& [id, a] : arrivals_) arriving = arriving || a.offer.spec.name == name;
      if (arriving) continue;
    }
    auto rec = ReadWorkload(state_, options_.keys, name);
    if (!rec.ok()) continue;  // unreadable: nothing deleted on a guess
    auto got = state_.Get(options_.keys.Checkpoint(name));
    if (!got.ok()) continue;
    std::optional<api::CheckpointRecord> record;
    if (got->kv) {
      auto c =
          cluster::ParseRecord<api::CheckpointRecord>(got->kv->value, cluster::CheckpointFromJson);
      if (!c.ok()) continue;
      record = std::move(*c);
    }
    const std::vector<StoredCheckpoint> stored = store_.List(name);
    const std::set<std::string> keep =
        CheckpointsToKeep(stored, *rec, record, options_.node, now_ms, grace_ms);
    for (const StoredCheckpoint& c : stored) {
      if (keep.contains(c.id)) continue;
      if (Status s = store_.Remove(name, c.id); !s.ok()) {
        spdlog::warn("checkpoint {} of {}: {}", c.id, name, s.ToString());
        continue;
      }
      removed += 1;
      spdlog::info("deleted checkpoint {} of {} ({})", c.id, name,
                   !*rec ? "the workload is gone" : "superseded");
    }
    if (!*rec && record && record->keeper == options_.node) {
      // The record outlived its workload: delete it while the workload is
      // still absent (the controller deletes it with the workload; this
      // covers a delete that failed there).
      Txn txn;
      txn.compares = {Compare::Absent(options_.keys.Workload(name)),
                      Compare::Unchanged(options_.keys.Checkpoint(name), got->kv->mod_revision)};
      txn.then_ops = {TxnOp::Delete(options_.keys.Checkpoint(name))};
      auto done = state_.Commit(txn);
      if (!done.ok()) {
        spdlog::debug("cannot delete {}: {}", options_.keys.Checkpoint(name),
                      done.status().ToString());
      }
    }
  }
  std::lock_guard l(mu_);
  counts_.collected += static_cast<uint64_t>(removed);
  return removed;
}

StatusOr<LocalWorkload> CheckpointKeeper::StartFromCheckpoint(Agent& agent,
                                                              const api::Workload& rec,
                                                              std::string* note) {
  const std::string& name = rec.spec.name;
  const std::string& id = rec.status.restore_checkpoint;
  auto from_image = [&](const std::string& why) {
    *note = "checkpoint " + id + " " + why + ": started from the image on " + options_.node;
    spdlog::warn("workload {}: {}", name, *note);
    {
      std::lock_guard l(mu_);
      counts_.restore_fallbacks += 1;
    }
    return agent.StartManaged(rec.spec, rec.status.epoch, rec.status.created_ms);
  };
  std::optional<StoredCheckpoint> stored = store_.Find(name, id);
  if (!stored) return from_image("is not kept on " + options_.node);
  store_.Pin(name, id);
  struct Unpin {
    CheckpointStore& s;
    std::string w, i;
    ~Unpin() { s.Unpin(w, i); }
  } unpin{store_, name, id};

  bool restored = false;
  const std::string scratch = options_.scratch_dir + "/restore-" + name;
  auto restore = [&](const ContainerSpec& spec) -> Status {
    restored = true;
    // A CRIU killed mid-restore leaves its cgroup yard mounted in there.
    KMX_RETURN_IF_ERROR(RemoveTree(scratch));
    std::error_code ec;
    fs::create_directories(scratch, ec);
    if (ec) return FailedError("create " + scratch + ": " + ec.message());
    Status s = [&]() -> Status {
      KMX_ASSIGN_OR_RETURN(Landing landing, engine_.Prepare(spec, scratch, 0));
      auto copied = CopySections(CheckpointStore::SectionsOf(*stored), landing);
      if (!copied.ok()) return copied.status().Annotate("read checkpoint " + id);
      return engine_.Restore(spec, landing);
    }();
    if (!s.ok()) (void)engine_.Discard(spec.name);
    (void)RemoveTree(scratch);
    return s;
  };
  auto started = agent.StartManaged(rec.spec, rec.status.epoch, rec.status.created_ms, restore);
  if (started.ok()) {
    if (restored) {
      *note = "restored on " + options_.node + " from checkpoint " + id + " (taken by " +
              stored->source + ")";
      std::lock_guard l(mu_);
      counts_.restored += 1;
    }
    spdlog::info("workload {}: {}", name, restored ? *note : "already running here");
    return started;
  }
  if (!restored) return started;  // never got to the restore (the error is the start's)
  return from_image("could not be restored (" + started.status().ToString() + ")");
}

}  // namespace kmosix::agent
