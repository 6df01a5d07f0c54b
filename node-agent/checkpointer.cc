#include "checkpointer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>

#include "checkpoint_keeper.h"
#include "kmosix/json_text.h"
#include "kmosix/memory.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using api::WorkloadPhase;

// FNV-1a over the bytes, then splitmix64's finalizer: fixed across builds
// and machines (std::hash is not).
uint64_t RendezvousScore(const std::string& workload, const std::string& node) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(workload);
  h ^= 0xff;
  h *= 1099511628211ull;
  mix(node);
  h += 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

// Whether the record lets this node checkpoint it now.
Status Checkpointable(const api::Workload& w, const std::string& node) {
  const auto& st = w.status;
  if (w.spec.restart_policy != api::RestartPolicy::kFromCheckpoint ||
      w.spec.checkpoint_interval_seconds <= 0) {
    return ConflictError("restartPolicy is not FromCheckpoint");
  }
  if (st.node != node) return ConflictError("owned by " + st.node);
  if (st.phase != WorkloadPhase::kRunning) {
    return ConflictError("phase " + std::string(api::WorkloadPhaseName(st.phase)));
  }
  if (!st.migration.empty()) return ConflictError("migrating (" + st.migration + ")");
  return Status::Ok();
}

}  // namespace

std::vector<std::string> RankKeepers(const std::string& workload, const std::string& owner,
                                     const std::vector<api::NodeLoad>& nodes,
                                     const std::string& image) {
  std::vector<std::pair<uint64_t, std::string>> scored;
  for (const api::NodeLoad& n : nodes) {
    if (n.node.empty() || n.node == owner || n.not_ready_reason) continue;
    if (n.images && std::find(n.images->begin(), n.images->end(), image) == n.images->end()) {
      continue;
    }
    scored.emplace_back(RendezvousScore(workload, n.node), n.node);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<std::string> out;
  for (auto& [score, node] : scored) {
    if (out.empty() || out.back() != node) out.push_back(std::move(node));
  }
  return out;
}

std::optional<std::string> ChooseKeeper(const std::string& workload, const std::string& owner,
                                        const std::vector<api::NodeLoad>& nodes,
                                        const std::string& image) {
  std::vector<std::string> ranked = RankKeepers(workload, owner, nodes, image);
  if (ranked.empty()) return std::nullopt;
  return ranked.front();
}

// ---- schedule ------------------------------------------------------------------

void CheckpointSchedule::Track(const std::string& name, int64_t interval_ms, int64_t now_ms,
                               int64_t last_taken_ms) {
  auto [it, fresh] = entries_.try_emplace(name);
  it->second.interval_ms = interval_ms;
  if (fresh) it->second.due_ms = std::max(now_ms, last_taken_ms) + interval_ms;
}

void CheckpointSchedule::Retain(const std::set<std::string>& names) {
  std::erase_if(entries_, [&](const auto& e) { return !names.contains(e.first); });
}

std::optional<std::string> CheckpointSchedule::Due(int64_t now_ms) const {
  std::optional<std::string> best;
  int64_t best_due = 0;
  for (const auto& [name, e] : entries_) {
    if (e.due_ms > now_ms) continue;
    if (!best || e.due_ms < best_due) {
      best = name;
      best_due = e.due_ms;
    }
  }
  return best;
}

void CheckpointSchedule::Attempted(const std::string& name, int64_t now_ms) {
  auto it = entries_.find(name);
  if (it != entries_.end()) it->second.due_ms = now_ms + it->second.interval_ms;
}

std::optional<int64_t> CheckpointSchedule::NextDueMs(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return std::nullopt;
  return it->second.due_ms;
}

// ---- metrics -------------------------------------------------------------------

CheckpointMetrics::CheckpointMetrics(prometheus::Registry& registry)
    : taken_(prometheus::BuildCounter()
                 .Name("kmosix_checkpoints_total")
                 .Help("Periodic checkpoints this node tried to take (restartPolicy "
                       "FromCheckpoint), by result: ok (kept by a keeper and recorded), failed, "
                       "skipped (not owned here now, busy, fenced)")
                 .Register(registry)),
      freeze_(prometheus::BuildHistogram()
                  .Name("kmosix_checkpoint_freeze_seconds")
                  .Help("How long a periodic checkpoint kept its workload paused")
                  .Register(registry)
                  .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.025, 0.05, 0.1, 0.25,
                                                                   0.5, 1, 2.5, 5, 10})),
      bytes_(prometheus::BuildCounter()
                 .Name("kmosix_checkpoint_bytes_total")
                 .Help("Payload bytes of periodic checkpoints sent to keepers")
                 .Register(registry)
                 .Add({})) {}

void CheckpointMetrics::Taken(const std::string& result) {
  taken_.Add({{"result", result}}).Increment();
}

// ---- checkpointer ----------------------------------------------------------------

Checkpointer::Checkpointer(CheckpointerOptions options, Agent& agent, ContainerRuntime& runtime,
                           Transport& transport, StateStore& state, Clock& clock, Random& random,
                           CheckpointMetrics* metrics)
    : options_(std::move(options)),
      agent_(agent),
      runtime_(runtime),
      transport_(transport),
      state_(state),
      clock_(clock),
      random_(random),
      metrics_(metrics) {}

Checkpointer::~Checkpointer() { Stop(); }

void Checkpointer::Start(std::function<void()> upkeep) {
  thread_ = std::thread([this, upkeep = std::move(upkeep)] {
    while (true) {
      {
        std::unique_lock l(mu_);
        if (cv_.wait_for(l, options_.poll, [&] { return stop_; })) return;
      }
      try {  // nothing ends this thread but Stop
        if (upkeep) upkeep();
        RunOnce();
      } catch (const std::exception& e) {
        spdlog::error("checkpointer: unexpected exception: {}", e.what());
      } catch (...) {
        spdlog::error("checkpointer: unexpected exception");
      }
    }
  });
}

void Checkpointer::Stop() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Checkpointer::Counts Checkpointer::counts() {
  std::lock_guard l(mu_);
  return counts_;
}

std::optional<int64_t> Checkpointer::NextDueMs(const std::string& name) {
  std::lock_guard l(run_mu_);
  return schedule_.NextDueMs(name);
}

void Checkpointer::Refresh() {
  const int64_t now_ms = clock_.WallMillis();
  std::set<std::string> owned;
  for (const LocalWorkload& local : agent_.ListLocal()) {
    if (!local.managed || local.state != "running") continue;
    auto got = state_.Get(options_.keys.Workload(local.name));
    if (!got.ok()) {
      // etcd unreachable: keep what is tracked (the checkpoint itself
      // checks ownership again).
      if (schedule_.NextDueMs(local.name)) owned.insert(local.name);
      continue;
    }
    if (!got->kv) continue;
    auto w = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
    if (!w.ok() || !Checkpointable(*w, options_.node).ok() || w->status.epoch != local.epoch) {
      continue;
    }
    owned.insert(local.name);
    int64_t last_taken_ms = 0;
    if (!schedule_.NextDueMs(local.name)) {
      // A checkpoint this node took at this epoch before a restart counts.
      auto rec = state_.Get(options_.keys.Checkpoint(local.name));
      if (rec.ok() && rec->kv) {
        auto c = cluster::ParseRecord<api::CheckpointRecord>(rec->kv->value,
                                                             cluster::CheckpointFromJson);
        if (c.ok() && c->source == options_.node && c->epoch == local.epoch) {
          last_taken_ms = std::min(c->taken_ms, now_ms);
        }
      }
    }
    schedule_.Track(local.name, w->spec.checkpoint_interval_seconds * 1000, now_ms, last_taken_ms);
  }
  schedule_.Retain(owned);
}

void Checkpointer::RunOnce() {
  std::lock_guard run(run_mu_);
  if (!refreshed_ || clock_.Now() - last_refresh_ >= options_.refresh) {
    Refresh();
    refreshed_ = true;
    last_refresh_ = clock_.Now();
  }
  std::optional<std::string> due = schedule_.Due(clock_.WallMillis());
  if (!due) return;
  auto taken = TakeOneLocked(*due);
  schedule_.Attempted(*due, clock_.WallMillis());
  if (!taken.ok()) {
    const bool skipped = taken.status().code() == Code::kConflict;
    spdlog::log(skipped ? spdlog::level::info : spdlog::level::warn,
                "checkpoint of {} {}: {} (next in {} s)", *due, skipped ? "skipped" : "failed",
                taken.status().ToString(),
                (schedule_.NextDueMs(*due).value_or(0) - clock_.WallMillis()) / 1000);
  }
}

StatusOr<api::CheckpointRecord> Checkpointer::TakeOne(const std::string& name) {
  std::lock_guard run(run_mu_);
  return TakeOneLocked(name);
}

StatusOr<api::CheckpointRecord> Checkpointer::TakeOneLocked(const std::string& name) {
  auto count = [&](const char* result) {
    if (metrics_ != nullptr) metrics_->Taken(result);
    std::lock_guard l(mu_);
    if (std::string_view(result) == "ok") counts_.ok += 1;
    if (std::string_view(result) == "failed") counts_.failed += 1;
    if (std::string_view(result) == "skipped") counts_.skipped += 1;
  };
  auto skip = [&](Status s) -> Status {
    count("skipped");
    return s;
  };
  auto fail = [&](Status s) -> Status {
    count("failed");
    return s;
  };
  // 1. Not fenced, owned here, at the local copy's epoch.
  if (options_.fenced && options_.fenced()) return skip(ConflictError("this node is fenced"));
  const std::string wkey = options_.keys.Workload(name);
  auto got = state_.Get(wkey);
  if (!got.ok()) return fail(RetryError("read " + wkey + ": " + got.status().message()));
  if (!got->kv) return skip(ConflictError("no record " + wkey));
  const int64_t workload_rev = got->kv->mod_revision;
  auto rec = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
  if (!rec.ok()) return fail(rec.status().Annotate(wkey));
  if (Status s = Checkpointable(*rec, options_.node); !s.ok()) return skip(s);
  const int64_t epoch = rec->status.epoch;

  // 2. The keeper.
  auto listed = state_.List(options_.keys.Nodes());
  if (!listed.ok()) return fail(RetryError("list nodes: " + listed.status().message()));
  std::vector<api::NodeLoad> nodes;
  for (const KeyValue& kv : listed->kvs) {
    auto n = cluster::ParseRecord<api::NodeLoad>(kv.value, cluster::NodeLoadFromJson);
    if (n.ok()) nodes.push_back(std::move(*n));
  }
  std::vector<std::string> ranked = RankKeepers(name, options_.node, nodes, rec->spec.image);
  if (ranked.empty()) return fail(RetryError("no ready node other than this one can keep it"));
  if (ranked.size() > static_cast<size_t>(std::max(1, options_.keeper_attempts))) {
    ranked.resize(static_cast<size_t>(std::max(1, options_.keeper_attempts)));
  }
  // A keeper is used once it answers Hello as itself (which also tells the
  // transport its data channel).
  auto reach = [&](const std::string& keeper) -> StatusOr<std::string> {
    std::string url;
    for (const auto& n : nodes) {
      if (n.node == keeper) url = n.url;
    }
    if (url.empty()) return RetryError("keeper " + keeper + " publishes no URL");
    auto hello = transport_.Hello(url);
    if (!hello.ok()) return hello.status().Annotate("keeper " + keeper);
    if (hello->node != keeper) {
      return FailedError("keeper at " + url + " answers as " + hello->node + ", not " + keeper);
    }
    return url;
  };
  size_t next = 0;
  std::optional<std::string> keeper;
  std::string url;
  Status unreachable;
  for (; next < ranked.size() && !keeper; ++next) {
    auto u = reach(ranked[next]);
    if (!u.ok()) {
      unreachable = u.status();
      continue;
    }
    keeper = ranked[next];
    url = *u;
  }
  if (!keeper) return fail(unreachable);

  // 3. Bounded scratch: one capture at a time, room for it, removed after.
  const std::string id = RandomId(random_, kCheckpointIdPrefix);
  const std::string dir = options_.scratch_dir + "/" + id;
  struct RemoveDir {
    std::string path;
    ~RemoveDir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } cleanup{dir};
  {
    std::error_code ec;
    fs::create_directories(options_.scratch_dir, ec);
    uint64_t need = options_.scratch_reserve;
    if (auto info = runtime_.Inspect(name); info.ok()) need += ContainerResidentBytes(info->pid);
    if (auto layer = runtime_.WritableLayerDir(name); layer.ok()) {
      need += SizeOf({{"rootfs", *layer, false}}).bytes;
    }
    auto free = FreeBytes(options_.scratch_dir);
    if (free && *free < need) {
      return fail(RetryError("scratch " + options_.scratch_dir + " has " + std::to_string(*free) +
                             " bytes free, a checkpoint needs about " + std::to_string(need)));
    }
  }

  // 4. The capture, under the workload's lock; it runs again after it.
  ContainerSpec spec;
  RunningCapture capture;
  Status captured = agent_.WithManagedRunning(name, epoch, [&](const ContainerSpec& s) -> Status {
    // A fence waits for this lock: asked again once it is held.
    if (options_.fenced && options_.fenced()) return ConflictError("this node is fenced");
    spec = s;
    auto c = CaptureRunning(runtime_, clock_, s, dir, options_.capture);
    if (!c.ok()) return c.status();
    capture = std::move(*c);
    return Status::Ok();
  });
  if (!captured.ok()) {
    return captured.code() == Code::kConflict || captured.code() == Code::kNotFound
               ? skip(captured)
               : fail(captured.Annotate("capture"));
  }
  if (metrics_ != nullptr) metrics_->Freeze(capture.freeze_seconds);

  // 5. Offer and stream to the keeper.
  MigrationOffer offer;
  offer.id = id;
  offer.source_node = options_.node;
  offer.source_url = options_.url;
  offer.spec = spec;
  offer.spec.log_path.clear();
  offer.spec.labels.clear();
  offer.created_ms = capture.taken_ms;  // a checkpoint offer: when it was dumped
  offer.stream.files = capture.files + 16;
  offer.stream.bytes = capture.bytes + (capture.bytes >> 6) + (uint64_t{1} << 20);
  offer.stream.entries = capture.entries + 64;
  // A keeper that refuses (busy, full) or whose stream fails: the next one
  // in rendezvous order, with the same capture.
  Clock::TimePoint send_start;
  StatusOr<TransferStats> sent = RetryError("not sent");
  while (true) {
    Status offered = transport_.Prepare(url, offer).Annotate("offer to keeper " + *keeper);
    if (offered.ok()) {
      send_start = clock_.Now();
      sent = transport_.Send(url, id, capture.sections);
      if (sent.ok()) break;
      (void)transport_.Abort(url, id);
      offered = sent.status().Annotate("stream to keeper " + *keeper);
    }
    spdlog::warn("checkpoint {} of {}: {}", id, name, offered.ToString());
    keeper.reset();
    for (; next < ranked.size() && !keeper; ++next) {
      auto u = reach(ranked[next]);
      if (!u.ok()) continue;
      keeper = ranked[next];
      url = *u;
    }
    if (!keeper) return fail(offered);
  }
  const double send_seconds = Seconds(clock_.Now() - send_start);
  if (metrics_ != nullptr) metrics_->Sent(sent->bytes);

  // 6. The record, while etcd still names this node at that epoch.
  api::CheckpointRecord record;
  record.workload = name;
  record.id = id;
  record.epoch = epoch;
  record.source = options_.node;
  record.keeper = *keeper;
  record.taken_ms = capture.taken_ms;
  record.bytes = sent->bytes;
  const std::string ckey = options_.keys.Checkpoint(name);
  auto prev = state_.Get(ckey);
  if (!prev.ok()) return fail(RetryError("read " + ckey + ": " + prev.status().message()));
  Txn txn;
  txn.compares.push_back(Compare::Unchanged(wkey, workload_rev));
  txn.compares.push_back(prev->kv ? Compare::Unchanged(ckey, prev->kv->mod_revision)
                                  : Compare::Absent(ckey));
  txn.then_ops.push_back(TxnOp::Put(ckey, DumpJson(cluster::CheckpointToJson(record))));
  auto done = state_.Commit(txn);
  if (!done.ok()) return fail(RetryError("write " + ckey + ": " + done.status().message()));
  if (!done->succeeded) {
    return fail(FailedError("the workload or its checkpoint record changed meanwhile: " + id +
                            " not recorded (the keeper drops it)"));
  }
  spdlog::info(
      "checkpoint {} of {} kept by {}: {} bytes, paused {:.3f} s (dump {:.3f} s, layer {:.3f} "
      "s), sent in {:.3f} s",
      id, name, *keeper, sent->bytes, capture.freeze_seconds, capture.dump_seconds,
      capture.layer_seconds, send_seconds);
  count("ok");
  std::lock_guard l(mu_);
  counts_.last = {
      name,         *keeper,    capture.freeze_seconds, capture.dump_seconds, capture.layer_seconds,
      send_seconds, sent->bytes};
  return record;
}

}  // namespace kmosix::agent
