#include "cluster_link.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "api/validate.h"
#include "cluster/ownership.h"
#include "kmosix/json_text.h"

namespace kmosix::agent {
namespace {

using MigrationRecord = api::Migration;
using api::WorkloadPhase;
using WorkloadRecord = api::Workload;
namespace ownership = cluster::ownership;

constexpr char kWorkloadKey[] = "w/";
constexpr char kMigrationKey[] = "m/";

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// A migration of it is in flight here (leaving, being resolved, arriving).
bool InFlightState(const LocalWorkload& w) {
  return w.state == "migrating" || w.state == "frozen" || w.state == "incoming" ||
         w.state == "creating";
}

// A copy run under `local_epoch` is of an earlier incarnation of the name
// (deleted and created again) than the record `kv` holding `record_epoch`:
// the controller places a workload at an epoch no lower than its record's
// create revision and every record write raises the epoch by at most one at
// a higher revision, so every epoch of an earlier incarnation is below that
// revision (issue 13, hole 4). Records placed before that rule (epoch below
// their create revision) tell nothing; nor does a copy whose epoch is unknown.
bool EarlierIncarnation(int64_t local_epoch, int64_t record_epoch, const KeyValue& kv) {
  return local_epoch > 0 && local_epoch < kv.create_revision && record_epoch >= kv.create_revision;
}

// Failures that retrying will not fix.
bool ForGood(const Status& s) {
  return s.code() == Code::kInvalid || s.code() == Code::kNotFound || s.code() == Code::kFailed;
}

std::string ErrorText(const Status& s) { return s.ok() ? "" : s.ToString(); }

// A record write etcd refused for this node's identity: the controller grants
// a node write access to the records it takes part in (controller/grants.h)
// and has not (yet) granted this one, or took it away as the record moved
// on. Never a failure for good: kRetry, so the caller backs off and re-reads
// (a Transfer stays unsettled and the source frozen; nothing is lost).
Status NotGrantedIsRetry(const Status& s, const std::string& key) {
  if (s.code() != Code::kPermissionDenied) return s;
  return RetryError("write " + key + " not granted to this node (yet): " + s.message());
}

bool Cancelled(const MigrationRecord& m) { return m.cancel_requested_ms > 0; }

std::string CancelText(const MigrationRecord& m) {
  return m.cancelled_by.empty() ? "cancelled" : "cancelled by " + m.cancelled_by;
}

// Runs f in one of the link's threads; an exception becomes a kFailed status
// (logged by the caller), never the thread's end.
template <typename F>
Status Caught(const char* what, F f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return FailedError(std::string(what) + ": unexpected exception: " + e.what());
  } catch (...) {
    return FailedError(std::string(what) + ": unexpected exception");
  }
}

}  // namespace

ClusterLink::ClusterLink(ClusterLinkOptions options, Agent& agent, StateStore& store,
                         LoadSampler& sampler, Clock& clock, Random& random)
    : options_(std::move(options)),
      agent_(agent),
      store_(store),
      sampler_(sampler),
      clock_(clock),
      queue_(clock, random, options_.queue),
      workloads_(store, clock, options_.keys.Workloads()),
      migrations_(store, clock, options_.keys.Migrations()),
      nodes_(store, clock, options_.keys.Nodes()),
      alive_at_(clock.Now()) {}

ClusterLink::~ClusterLink() { Stop(); }

ClusterHooks ClusterLink::Hooks() {
  ClusterHooks hooks;
  hooks.ledger = this;
  hooks.owned_here = [this](const IncomingRecord& r) { return OwnedHere(r); };
  hooks.claim_restart = [this](const std::string& name,
                               const RestartClaim& claim) -> StatusOr<bool> {
    // Fenced: nothing starts here until the lease is renewed.
    if (Fenced()) return RetryError("node " + options_.node + " is fenced (lease not renewed)");
    return ClaimRestart(name, claim);
  };
  // A restart, exit or loss here: its record is written now, not at resync.
  hooks.changed = [this](const std::string& name) { queue_.Add(kWorkloadKey + name); };
  return hooks;
}

// ---- threads ---------------------------------------------------------------

void ClusterLink::Start() {
  {
    std::lock_guard lock(mu_);
    if (started_ || stopping_) return;
    started_ = true;
  }
  // The fence deadline counts from the start, not from the construction: an
  // agent whose start-up took longer than --fence-after (a scratch recovery,
  // a slow containerd) is not fenced before its link ever asked for a lease.
  MarkLeaseAlive(clock_.Now());
  // Every callback and step of these threads catches what it throws.
  threads_.emplace_back([this] {
    workloads_.Run([this](const std::string& k, const std::optional<KeyValue>& kv) {
      Status s = Caught("workload event", [&] {
        OnWorkloadKey(k, kv);
        return Status::Ok();
      });
      if (!s.ok()) spdlog::error("{}: {}", k, s.ToString());
    });
  });
  threads_.emplace_back([this] {
    migrations_.Run([this](const std::string& k, const std::optional<KeyValue>& kv) {
      Status s = Caught("migration event", [&] {
        OnMigrationKey(k, kv);
        return Status::Ok();
      });
      if (!s.ok()) spdlog::error("{}: {}", k, s.ToString());
    });
  });
  threads_.emplace_back([this] { nodes_.Run([](const std::string&, const auto&) {}); });
  threads_.emplace_back([this] { WorkerLoop(); });
  threads_.emplace_back([this] { PublisherLoop(); });
  threads_.emplace_back([this] { LeaseProbeLoop(); });
  threads_.emplace_back([this] { FenceLoop(); });
  spdlog::info("cluster link of {} started (prefix {}, lease TTL {} s)", options_.node,
               options_.keys.prefix, options_.lease_ttl.count());
}

void ClusterLink::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  workloads_.Stop();
  migrations_.Stop();
  nodes_.Stop();
  queue_.ShutDown();
  for (auto& t : threads_) t.join();
  threads_.clear();
  WaitMigrations();
  std::lock_guard lock(lease_mu_);
  keepalive_.reset();  // the lease expires a TTL from now
  if (started_) spdlog::info("cluster link of {} stopped", options_.node);
}

void ClusterLink::PublisherLoop() {
  auto last_resync = clock_.Now();
  bool resynced = false;
  std::string failing;  // the error last logged, so an outage logs once
  while (true) {
    Status s = Caught("publish", [&] { return PublishOnce(); });
    if (!s.ok() && s.ToString() != failing) {
      failing = s.ToString();
      spdlog::warn("publishing the load of {}: {}", options_.node, failing);
    } else if (s.ok() && !failing.empty()) {
      failing.clear();
      spdlog::info("publishing the load of {} again", options_.node);
    }
    // The first resync once the caches have their first list (so a local
    // workload whose record is gone is noticed after a restart).
    const bool synced = workloads_.Synced() && migrations_.Synced();
    if ((synced && !resynced) || clock_.Now() - last_resync >= options_.resync) {
      resynced = resynced || synced;
      last_resync = clock_.Now();
      Status r = Caught("resync", [&] {
        Resync();
        return Status::Ok();
      });
      if (!r.ok()) spdlog::error("{}", r.ToString());
    }
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, options_.sample_interval, [&] { return stopping_ || lease_lost_; });
    if (stopping_) return;
    lease_lost_ = false;
  }
}

void ClusterLink::LeaseProbeLoop() {
  while (true) {
    (void)Caught("lease probe", [&] { return ProbeLeaseOnce(); });
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, options_.lease_probe, [&] { return stopping_; })) return;
  }
}

void ClusterLink::FenceLoop() {
  if (options_.fence_after <= Clock::Duration::zero()) return;
  while (true) {
    Status s = Caught("fence check", [&] {
      FenceOnce();
      return Status::Ok();
    });
    if (!s.ok()) spdlog::error("{}", s.ToString());
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, options_.fence_check, [&] { return stopping_; })) return;
  }
}

void ClusterLink::WorkerLoop() {
  while (true) {
    auto key = queue_.Get(std::chrono::seconds(1));
    if (!key) {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      continue;
    }
    Status s = Caught("reconcile", [&] { return Reconcile(*key); });
    if (s.ok()) {
      queue_.Forget(*key);
    } else if (s.code() == Code::kRetry || s.code() == Code::kConflict ||
               s.message().find("unexpected exception") != std::string::npos) {
      // Level-based: a surprise is retried with back-off, never forgotten.
      auto delay = queue_.Retry(*key);
      // Quiet while it is a blip; a key still failing after ~6 s of back-off
      // says why (then every 5th try), or a stuck reconcile is invisible.
      const int tries = queue_.Retries(*key);
      if (tries >= 5 && tries % 5 == 0) {
        spdlog::warn("{}: still failing after {} tries: {} (again in {:.1f} s)", *key, tries,
                     s.ToString(), Seconds(delay));
      } else {
        spdlog::debug("{}: {} (again in {:.1f} s)", *key, s.ToString(), Seconds(delay));
      }
    } else {
      spdlog::warn("{}: {}", *key, s.ToString());
      queue_.Forget(*key);
    }
    queue_.Done(*key);
  }
}

void ClusterLink::OnWorkloadKey(const std::string& key, const std::optional<KeyValue>& kv) {
  const std::string name = cluster::KeyLayout::NameIn(options_.keys.Workloads(), key);
  if (name.empty()) return;
  if (kv) {
    // Other nodes' workloads concern this node only if it has a copy.
    auto rec = cluster::ParseRecord<WorkloadRecord>(kv->value, cluster::WorkloadFromJson);
    if (rec.ok() && rec->status.node != options_.node && !agent_.Local(name, /*inspect=*/false)) {
      return;
    }
  }
  queue_.Add(kWorkloadKey + name);
}

void ClusterLink::OnMigrationKey(const std::string& key, const std::optional<KeyValue>& kv) {
  const std::string id = cluster::KeyLayout::NameIn(options_.keys.Migrations(), key);
  if (id.empty() || !kv) return;
  auto rec = cluster::ParseRecord<MigrationRecord>(kv->value, cluster::MigrationFromJson);
  if (!rec.ok()) return;
  // As its target: only its end matters here (SettleIncoming).
  if (rec->source == options_.node || (rec->target == options_.node && api::IsFinal(rec->phase)))
    queue_.Add(kMigrationKey + id);
}

void ClusterLink::Resync() {
  std::set<std::string> arriving;  // workloads with an incoming copy here
  for (const auto& w : agent_.ListLocal()) {
    queue_.Add(kWorkloadKey + w.name);
    if (w.state == "incoming") arriving.insert(w.name);
  }
  for (const auto& [key, kv] : workloads_.Items()) OnWorkloadKey(key, kv);
  for (const auto& [key, kv] : migrations_.Items()) {
    auto rec = cluster::ParseRecord<MigrationRecord>(kv.value, cluster::MigrationFromJson);
    if (!rec.ok()) continue;
    // As a target, an ended one of a workload still arriving here (never the
    // target's own state asked here: a restore may hold it for seconds).
    if ((rec->source == options_.node && !api::IsFinal(rec->phase)) ||
        (rec->target == options_.node && api::IsFinal(rec->phase) &&
         arriving.contains(rec->workload))) {
      queue_.Add(kMigrationKey + rec->id);
    }
  }
}

// ---- lease and load --------------------------------------------------------

int64_t ClusterLink::Lease() const {
  std::lock_guard lock(lease_mu_);
  return lease_;
}

void ClusterLink::DropLease() {
  std::lock_guard lock(lease_mu_);
  keepalive_.reset();
  lease_ = 0;
}

Status ClusterLink::EnsureLease() {
  std::lock_guard lock(lease_mu_);
  if (keepalive_) {
    Status s = keepalive_->status();
    if (s.ok()) return Status::Ok();
    spdlog::warn("lease {} of {} lost ({}); granting a new one", lease_, options_.node,
                 s.ToString());
    keepalive_.reset();
    lease_ = 0;
  }
  const Clock::TimePoint asked = clock_.Now();
  KMX_ASSIGN_OR_RETURN(LeaseGrant grant, store_.GrantLease(options_.lease_ttl));
  auto ka = store_.KeepAlive(grant.id, [this](const Status&) {
    {
      std::lock_guard l(mu_);
      lease_lost_ = true;
    }
    cv_.notify_all();
  });
  if (!ka.ok()) return ka.status().Annotate("keep-alive of lease " + std::to_string(grant.id));
  keepalive_ = std::move(*ka);
  lease_ = grant.id;
  force_publish_ = true;
  MarkLeaseAlive(asked);
  spdlog::info("{} holds lease {} (TTL {} s)", options_.node, grant.id, grant.ttl.count());
  return Status::Ok();
}

Status ClusterLink::PublishOnce() {
  KMX_RETURN_IF_ERROR(EnsureLease());
  std::vector<std::string> names;
  for (const auto& w : agent_.ListLocal()) {
    if (w.state == "running" || w.state == "migrating") names.push_back(w.name);
  }
  KMX_ASSIGN_OR_RETURN(LoadSample sample, sampler_.Sample(names));
  if (!sample.rates_valid) return Status::Ok();  // first sample: no rates yet
  // Every sample: an image imported a moment ago is placeable a sample later.
  if (auto images = agent_.ListImages(); images.ok()) {
    images_ = std::move(*images);
  } else {
    // The last list stands until the runtime answers again.
    spdlog::warn("{}: cannot list images: {}", options_.node, images.status().ToString());
  }
  std::optional<std::string> reason;
  if (options_.not_ready_reason) reason = options_.not_ready_reason();
  int64_t lease;
  {
    std::lock_guard lock(lease_mu_);
    const bool due = force_publish_ || !published_ || MateriallyChanged(*published_, sample) ||
                     images_ != published_images_ || reason != published_reason_ ||
                     clock_.Now() - published_at_ >= options_.heartbeat;
    if (!due) return Status::Ok();
    lease = lease_;
  }
  api::NodeLoad load;
  load.node = options_.node;
  load.url = options_.url;
  load.speed = options_.speed;
  FillNodeLoad(sample, load);
  load.images = images_;
  load.not_ready_reason = reason;
  const Clock::TimePoint asked = clock_.Now();
  auto put = store_.Put(options_.keys.Node(options_.node), DumpJson(cluster::NodeLoadToJson(load)),
                        PutOptions{lease});
  if (!put.ok()) {
    if (put.status().code() == Code::kNotFound) DropLease();  // re-granted next round
    return put.status().Annotate("write " + options_.keys.Node(options_.node));
  }
  MarkLeaseAlive(asked);
  std::lock_guard lock(lease_mu_);
  published_ = sample;
  published_images_ = images_;
  published_reason_ = reason;
  published_at_ = clock_.Now();
  force_publish_ = false;
  return Status::Ok();
}

// ---- fencing -------------------------------------------------------------------

void ClusterLink::MarkLeaseAlive(Clock::TimePoint at) {
  std::lock_guard lock(fence_mu_);
  alive_at_ = std::max(alive_at_, at);
}

bool ClusterLink::Fenced() const {
  std::lock_guard lock(fence_mu_);
  return fenced_;
}

Status ClusterLink::ProbeLeaseOnce() {
  int64_t lease;
  {
    std::lock_guard lock(lease_mu_);
    if (!keepalive_ || lease_ == 0 || !keepalive_->status().ok()) return Status::Ok();
    lease = lease_;
  }
  const Clock::TimePoint asked = clock_.Now();
  KMX_ASSIGN_OR_RETURN(std::chrono::seconds left, store_.LeaseTimeToLive(lease));
  if (left.count() <= 0) return NotFoundError("lease " + std::to_string(lease) + " expired");
  MarkLeaseAlive(asked);
  return Status::Ok();
}

void ClusterLink::FenceOnce() {
  if (options_.fence_after <= Clock::Duration::zero()) return;
  const Clock::TimePoint now = clock_.Now();
  bool fence_now = false, ended = false;
  Clock::Duration silent{};
  {
    std::lock_guard lock(fence_mu_);
    silent = now - alive_at_;
    if (!fenced_ && silent >= options_.fence_after) {
      fenced_ = true;
      fenced_at_ = now;
      fence_now = true;
    } else if (fenced_ && alive_at_ > fenced_at_) {
      fenced_ = false;
      ended = true;
    }
  }
  if (ended) {
    // Each fenced copy is decided by its record, read afresh (ReconcileFenced).
    std::vector<std::string> fenced;
    for (const auto& w : agent_.ListLocal()) {
      if (w.state == "fenced") fenced.push_back(w.name);
    }
    spdlog::warn("{}: lease confirmed again; the fence ends: {} fenced workload(s) to settle",
                 options_.node, fenced.size());
    for (const auto& name : fenced) queue_.Add(kWorkloadKey + name);
    Resync();
    return;
  }
  {
    std::lock_guard lock(fence_mu_);
    if (!fenced_) return;
  }
  // Fenced (now or earlier): every managed workload running here is frozen,
  // again each round (a rolled-back migration or a restart may thaw one).
  const std::string why =
      fmt::format("node {} fenced: its lease was not renewed for {:.1f} s (--fence-after {:.1f} s)",
                  options_.node, Seconds(silent), Seconds(options_.fence_after));
  if (fence_now) spdlog::error("{}: freezing every managed workload here", why);
  auto frozen = agent_.FenceAllManaged(why);
  if (!frozen.empty()) {
    spdlog::error("{}: froze {} workload(s): {}", options_.node, frozen.size(),
                  fmt::join(frozen, ", "));
  }
  if (fence_now) {
    size_t left = 0;
    for (const auto& w : agent_.ListLocal()) {
      if (w.managed && (w.state == "running" || w.state == "restarting")) ++left;
    }
    if (left > 0) {
      spdlog::error(
          "{}: {} managed workload(s) could not be frozen yet; trying again every {:.1f} s",
          options_.node, left, Seconds(options_.fence_check));
    }
  }
}

Status ClusterLink::ReconcileFenced(const WorkloadRecord& rec, const KeyValue& kv,
                                    const LocalWorkload& local) {
  const std::string& name = rec.spec.name;
  const auto& st = rec.status;
  const bool ours = st.node == options_.node && st.epoch == local.epoch &&
                    !EarlierIncarnation(local.epoch, st.epoch, kv);
  const bool live = st.phase == WorkloadPhase::kRunning || st.phase == WorkloadPhase::kScheduled ||
                    st.phase == WorkloadPhase::kMigrating || st.phase == WorkloadPhase::kLost;
  if (!ours || !live) {
    spdlog::warn(
        "fenced workload {}: the cluster names {} at epoch {} ({}; ours: epoch {}); deleting the "
        "copy here",
        name, st.node.empty() ? "no node" : st.node, st.epoch, api::WorkloadPhaseName(st.phase),
        local.epoch);
    KMX_RETURN_IF_ERROR(agent_.DeleteManaged(name));
    // Placed here again (a new epoch): started afresh from the record.
    if (st.node == options_.node) queue_.Add(kWorkloadKey + name);
    return Status::Ok();
  }
  if (Fenced()) return Status::Ok();  // never thawed while the lease is out
  if (st.phase == WorkloadPhase::kLost) {
    // The controller saw the node go. Take the record back before thawing: a
    // restart elsewhere decided meanwhile then fails its CAS (or this one
    // fails, and the next round deletes the copy).
    bool took = false;
    KMX_RETURN_IF_ERROR(UpdateWorkload(name, [&](WorkloadRecord& now) -> StatusOr<bool> {
      auto& cur = now.status;
      if (cur.node != options_.node || cur.epoch != local.epoch ||
          cur.phase != WorkloadPhase::kLost) {
        return false;
      }
      cur.phase = WorkloadPhase::kRunning;
      cur.message = "node " + options_.node + " is back: its fenced copy thawed";
      took = true;
      return true;
    }));
    if (!took) return RetryError("the record of " + name + " changed; reading it again");
  }
  KMX_RETURN_IF_ERROR(agent_.UnfenceManaged(name));
  spdlog::warn("fenced workload {}: still this node's at epoch {} ({}); thawed", name, st.epoch,
               api::WorkloadPhaseName(st.phase));
  return Status::Ok();
}

// ---- peers ---------------------------------------------------------------------

Status ClusterLink::AllowPeer(const std::string& peer_node, const std::string& id) {
  if (Status s = api::ValidateName(id); !s.ok())
    return PermissionDeniedError("migration id: " + s.message());
  const std::string key = options_.keys.Migration(id);
  std::optional<KeyValue> kv = migrations_.Get(key);
  if (!kv) {  // the cache may lag a fresh order: ask etcd itself
    auto got = store_.Get(key);
    if (!got.ok()) return RetryError("read " + key + ": " + got.status().message());
    kv = std::move(got->kv);
  }
  if (!kv) return Status::Ok();  // an unmanaged workload's move (see the header)
  auto m = cluster::ParseRecord<api::Migration>(kv->value, cluster::MigrationFromJson);
  if (!m.ok()) return PermissionDeniedError("migration " + id + ": damaged record in etcd");
  if (m->target != options_.node)
    return PermissionDeniedError("migration " + id + " goes to " + m->target + ", not to " +
                                 options_.node);
  if (m->source != peer_node)
    return PermissionDeniedError("migration " + id + " moves from " + m->source + "; " + peer_node +
                                 " is not its source");
  return Status::Ok();
}

// ---- record updates --------------------------------------------------------

Status ClusterLink::UpdateWorkload(const std::string& name, const WorkloadChange& change) {
  return UpdateWorkloadGuarded(
      name, "", [&](WorkloadRecord& rec, const KeyValue&, const std::optional<KeyValue>&) {
        return change(rec);
      });
}

Status ClusterLink::UpdateWorkloadGuarded(const std::string& name, const std::string& guard_key,
                                          const GuardedWorkloadChange& change) {
  const std::string key = options_.keys.Workload(name);
  for (int attempt = 0; attempt < options_.cas_attempts; ++attempt) {
    std::optional<KeyValue> guard;
    if (!guard_key.empty()) {
      KMX_ASSIGN_OR_RETURN(GetResult g, store_.Get(guard_key));
      guard = std::move(g.kv);
    }
    KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(key));
    if (!got.kv) return NotFoundError("no record " + key);
    KMX_ASSIGN_OR_RETURN(WorkloadRecord rec, cluster::ParseRecord<WorkloadRecord>(
                                                 got.kv->value, cluster::WorkloadFromJson));
    KMX_ASSIGN_OR_RETURN(bool write, change(rec, *got.kv, guard));
    if (!write) return Status::Ok();
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(key, got.kv->mod_revision));
    if (!guard_key.empty()) {
      // An absent key has mod_revision 0 (etcd compares the zero value).
      txn.compares.push_back(Compare::Unchanged(guard_key, guard ? guard->mod_revision : 0));
    }
    txn.then_ops.push_back(TxnOp::Put(key, DumpJson(cluster::WorkloadToJson(rec))));
    auto done = store_.Commit(txn);
    if (!done.ok()) return NotGrantedIsRetry(done.status(), key);  // a grant may be on its way
    if (done->succeeded) return Status::Ok();
  }
  return RetryError(key + " kept changing");
}

Status ClusterLink::UpdateMigration(const std::string& id, const MigrationChange& change) {
  const std::string key = options_.keys.Migration(id);
  for (int attempt = 0; attempt < options_.cas_attempts; ++attempt) {
    KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(key));
    if (!got.kv) return NotFoundError("no record " + key);
    KMX_ASSIGN_OR_RETURN(MigrationRecord rec, cluster::ParseRecord<MigrationRecord>(
                                                  got.kv->value, cluster::MigrationFromJson));
    KMX_ASSIGN_OR_RETURN(bool write, change(rec));
    if (!write) return Status::Ok();
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(key, got.kv->mod_revision));
    txn.then_ops.push_back(TxnOp::Put(key, DumpJson(cluster::MigrationToJson(rec))));
    auto done = store_.Commit(txn);
    if (!done.ok()) return NotGrantedIsRetry(done.status(), key);  // a grant may be on its way
    if (done->succeeded) return Status::Ok();
  }
  return RetryError(key + " kept changing");
}

// ---- ledger and oracle -----------------------------------------------------

// The decisions are the ownership protocol's (cluster/ownership.h); the link
// reads both records, commits the one transaction the decision holds, and
// reads again when its compares fail.
namespace {
ownership::MigrationRef RefOf(const MigrationReport& r) {
  return {r.id, r.workload, r.source_node, r.target_node};
}
}  // namespace

Status ClusterLink::ApplyOwnership(const MigrationReport& r, const OwnershipDecide& decide) {
  auto done =
      ownership::Apply(store_, options_.keys, r.workload, r.id, decide, options_.cas_attempts);
  if (done.ok()) return Status::Ok();
  // A grant may be on its way (see the file comment); any other store error
  // is the store's (kRetry when unreachable).
  return NotGrantedIsRetry(done.status(), options_.keys.Workload(r.workload));
}

Status ClusterLink::Transfer(const MigrationReport& r) {
  // Refused once the migration record is cancelled or final: a cancel or a
  // controller verdict written between the read and the write fails the
  // transaction's compare, and the re-read refuses.
  Status s = ApplyOwnership(r, [&](const ownership::Records& rec) {
    return ownership::Transfer(options_.keys, RefOf(r), r.target_pid, clock_.WallMillis(), rec);
  });
  if (s.ok()) {
    spdlog::info("migration {}: ownership of {} moved to {}", r.id, r.workload, r.target_node);
  }
  return s;
}

Status ClusterLink::Revert(const MigrationReport& r) {
  Status s = ApplyOwnership(r, [&](const ownership::Records& rec) {
    return ownership::Revert(options_.keys, RefOf(r), rec);
  });
  if (s.ok()) {
    spdlog::info("migration {}: ownership of {} is with {}", r.id, r.workload, r.source_node);
  }
  return s;
}

StatusOr<OwnershipLedger::InDoubtAnswer> ClusterLink::InDoubt(const MigrationReport& r) {
  KMX_ASSIGN_OR_RETURN(ownership::Records rec,
                       ownership::Read(store_, options_.keys, r.workload, r.id));
  ownership::InDoubtVerdict v = ownership::InDoubt(RefOf(r), rec);
  if (!rec.workload && v.answer != ownership::InDoubtAnswer::kUndecided) {
    // Only a cluster that knows this node may say its workload is gone
    // (under a wrong --etcd-prefix every record looks deleted).
    KMX_ASSIGN_OR_RETURN(GetResult member, store_.Get(options_.keys.Member(options_.node)));
    if (!member.kv) {
      v = {ownership::InDoubtAnswer::kUndecided,
           "the cluster has no record of the workload nor of this node (wrong --etcd-prefix?)"};
    }
  }
  spdlog::info("migration {} of {}: the target has no answer; the records say {}: {}", r.id,
               r.workload, ownership::InDoubtAnswerName(v.answer), v.reason);
  using A = OwnershipLedger::Answer;
  switch (v.answer) {
    case ownership::InDoubtAnswer::kCommitted:
      return InDoubtAnswer{A::kCommitted, v.reason};
    case ownership::InDoubtAnswer::kNotCommitted:
      return InDoubtAnswer{A::kNotCommitted, v.reason};
    case ownership::InDoubtAnswer::kSuperseded:
      return InDoubtAnswer{A::kSuperseded, v.reason};
    case ownership::InDoubtAnswer::kUndecided:
      break;
  }
  return InDoubtAnswer{A::kUndecided, v.reason};
}

StatusOr<bool> ClusterLink::OwnedHere(const IncomingRecord& record) {
  KMX_ASSIGN_OR_RETURN(
      ownership::Records rec,
      ownership::Read(store_, options_.keys, record.offer.spec.name, record.offer.id));
  return ownership::OwnedHere(options_.node, record.offer.id, rec);
}

StatusOr<bool> ClusterLink::ClaimRecord(const std::string& name, int64_t epoch,
                                        const ClaimChange& claim) {
  bool ours = false;
  // A fresh read in every round (UpdateWorkloadGuarded): the cache may lag a
  // new owner; a lost CAS reads again and decides again.
  Status s = UpdateWorkloadGuarded(name, "",
                                   [&](WorkloadRecord& rec, const KeyValue& kv,
                                       const std::optional<KeyValue>&) -> StatusOr<bool> {
                                     const auto& st = rec.status;
                                     // Another node or epoch (a placement elsewhere, a migration's
                                     // move), a migration of it, an earlier incarnation: not this
                                     // copy's.
                                     ours = st.node == options_.node && st.epoch == epoch &&
                                            st.migration.empty() &&
                                            !EarlierIncarnation(epoch, st.epoch, kv);
                                     if (!ours) return false;
                                     std::optional<bool> write = claim(rec);
                                     if (!write) ours = false;  // a phase no start may claim
                                     return write.value_or(false);
                                   });
  // Gone or unreadable: nothing of it is this node's to start.
  if (s.code() == Code::kNotFound || s.code() == Code::kInvalid) return false;
  KMX_RETURN_IF_ERROR(s);
  return ours;
}

StatusOr<bool> ClusterLink::ClaimRestart(const std::string& name, const RestartClaim& claim) {
  const std::string message = "restarted on " + options_.node + " (restart " +
                              std::to_string(claim.restart) + "): " + claim.why;
  return ClaimRecord(name, claim.epoch, [&](WorkloadRecord& rec) -> std::optional<bool> {
    auto& st = rec.status;
    // Lost: the controller marked it so while this node was away (a reboot);
    // the node is back and still its owner.
    if (st.phase != WorkloadPhase::kRunning && st.phase != WorkloadPhase::kLost)
      return std::nullopt;
    if (st.phase == WorkloadPhase::kRunning && st.restarts == claim.restart &&
        st.message == message) {
      return false;  // claimed by an earlier attempt whose start failed
    }
    st.phase = WorkloadPhase::kRunning;
    st.restarts = claim.restart;
    st.message = message;
    return true;
  });
}

StatusOr<bool> ClusterLink::ClaimStart(const WorkloadRecord& rec) {
  const std::string message = "starting on " + options_.node;
  return ClaimRecord(rec.spec.name, rec.status.epoch,
                     [&](WorkloadRecord& now) -> std::optional<bool> {
                       auto& st = now.status;
                       switch (st.phase) {
                         case WorkloadPhase::kLost:
                           // The node is back and still its owner: Running, so a placement
                           // elsewhere the controller decided on the Lost record fails.
                           st.phase = WorkloadPhase::kRunning;
                           st.message = "node " + options_.node + " is back: " + message;
                           return true;
                         case WorkloadPhase::kScheduled:
                         case WorkloadPhase::kRunning:
                           // Claimed by an earlier attempt whose start failed: no write (a
                           // write would bring this reconcile back at once, in a loop).
                           if (st.message == message) return false;
                           st.message = message;
                           return true;
                         default:
                           return std::nullopt;  // Migrating, Exited, Failed, Pending: never
                       }
                     });
}

// ---- reconcilers -----------------------------------------------------------

Status ClusterLink::Reconcile(const std::string& key) {
  if (key.rfind(kWorkloadKey, 0) == 0) return ReconcileWorkload(key.substr(2));
  if (key.rfind(kMigrationKey, 0) == 0) {
    // Fenced: no migration runs from here (the fence's end resyncs them).
    if (Fenced()) return RetryError("node " + options_.node + " is fenced (lease not renewed)");
    return ReconcileMigration(key.substr(2));
  }
  return InvalidError("unknown queue key " + key);
}

Status ClusterLink::ReconcileWorkload(const std::string& name) {
  KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(options_.keys.Workload(name)));
  std::optional<LocalWorkload> local = agent_.Local(name);
  const bool in_flight = local && InFlightState(*local);
  if (!got.kv) {
    if (!local || !local->managed) return Status::Ok();
    if (in_flight) return RetryError("record gone; waiting for the migration of " + name);
    // Only a cluster that knows this node may take its workloads away: under
    // a wrong --etcd-prefix every record looks deleted.
    KMX_ASSIGN_OR_RETURN(GetResult member, store_.Get(options_.keys.Member(options_.node)));
    if (!member.kv) {
      spdlog::error(
          "workload {} is managed here but {} has no record of it, nor of this node; keeping it "
          "(wrong --etcd-prefix?)",
          name, options_.keys.prefix);
      return Status::Ok();
    }
    spdlog::warn("workload {} has no record in the cluster any more: deleting it here", name);
    return agent_.DeleteManaged(name);
  }
  auto parsed = cluster::ParseRecord<WorkloadRecord>(got.kv->value, cluster::WorkloadFromJson);
  if (!parsed.ok()) {
    spdlog::warn("ignoring unreadable record of workload {}: {}", name, parsed.status().ToString());
    return Status::Ok();
  }
  const WorkloadRecord& rec = *parsed;
  const auto& st = rec.status;
  if (!st.migration.empty()) queue_.Add(kMigrationKey + st.migration);
  if (local && local->managed && local->state == "fenced") {
    return ReconcileFenced(rec, *got.kv, *local);
  }

  // A copy of an earlier incarnation of the name (this node was away while
  // it was deleted and created again) is never this one's: fenced, wherever
  // the new one is placed (here: started afresh from its own spec). A record
  // still Pending was never placed, so no copy anywhere is of it.
  bool replaced = false;
  if (local && local->managed && !in_flight &&
      (st.phase == WorkloadPhase::kPending ||
       EarlierIncarnation(local->epoch, st.epoch, *got.kv))) {
    spdlog::warn(
        "fencing workload {}: the copy here (epoch {}) is of an earlier incarnation than the "
        "cluster's record (created at revision {}, epoch {}, {}); deleting it",
        name, local->epoch, got.kv->create_revision, st.epoch, api::WorkloadPhaseName(st.phase));
    KMX_RETURN_IF_ERROR(agent_.DeleteManaged(name));
    local.reset();
    replaced = true;
  }

  if (st.node != options_.node) {
    if (local && local->managed && !in_flight) {
      if (st.epoch > local->epoch) {
        spdlog::warn(
            "fencing workload {}: the cluster gave it to {} at epoch {} (ours: {}); "
            "deleting the copy here",
            name, st.node, st.epoch, local->epoch);
        return agent_.DeleteManaged(name);
      }
      spdlog::warn("workload {} runs here at epoch {} but the cluster names {} at epoch {}", name,
                   local->epoch, st.node, st.epoch);
    }
    return Status::Ok();
  }

  // The cluster names this node the owner.
  if (local && !local->managed) {
    if (in_flight) return Status::Ok();
    const bool arrived =
        !local->migrations.empty() && (local->migrations.back() == st.migration ||
                                       Contains(st.migrations, local->migrations.back()));
    if (!arrived) {
      if (st.phase != WorkloadPhase::kScheduled) return Status::Ok();
      return UpdateWorkload(name, [&](WorkloadRecord& now) -> StatusOr<bool> {
        if (now.status.node != options_.node || now.status.epoch != st.epoch ||
            now.status.phase != WorkloadPhase::kScheduled) {
          return false;
        }
        now.status.phase = WorkloadPhase::kFailed;
        now.status.message =
            "a workload named " + name + " not managed by the cluster runs on " + options_.node;
        return true;
      });
    }
    KMX_RETURN_IF_ERROR(agent_.ClaimManaged(name, st.epoch));
    local = agent_.Local(name);
  } else if (local && local->managed && !in_flight && local->epoch < st.epoch) {
    KMX_RETURN_IF_ERROR(agent_.ClaimManaged(name, st.epoch));
    local->epoch = st.epoch;
  }
  if (local && InFlightState(*local)) return Status::Ok();

  switch (st.phase) {
    case WorkloadPhase::kScheduled:
      return StartHere(rec);  // idempotent: a copy running here is just reported
    case WorkloadPhase::kRunning:
      if (!st.migration.empty()) return Status::Ok();  // the migration's end frees it
      // Done: exited with status 0 (any other end is restarted by the agent).
      if (local && (local->state == "exited" ||
                    (local->state == "running" && local->task == TaskState::kStopped &&
                     local->exit_status == 0))) {
        return UpdateWorkload(name, [&](WorkloadRecord& now) -> StatusOr<bool> {
          if (now.status.node != options_.node || now.status.epoch != st.epoch ||
              now.status.phase != WorkloadPhase::kRunning || !now.status.migration.empty()) {
            return false;
          }
          now.status.phase = WorkloadPhase::kExited;
          now.status.message =
              "exited on " + options_.node + " with status " + std::to_string(local->exit_status);
          return true;
        });
      }
      if (!local || local->state == "lost") {
        spdlog::warn("workload {} should run here (epoch {}) but does not: starting it", name,
                     st.epoch);
        return StartHere(rec);
      }
      if (local->state == "running" && local->task == TaskState::kRunning && local->pid != 0 &&
          (st.pid != local->pid || st.restarts != local->restarts)) {
        // The agent started it again (its task had died or vanished).
        return UpdateWorkload(name, [&](WorkloadRecord& now) -> StatusOr<bool> {
          auto& cur = now.status;
          if (cur.node != options_.node || cur.epoch != st.epoch || !cur.migration.empty() ||
              cur.phase != WorkloadPhase::kRunning) {
            return false;
          }
          cur.pid = local->pid;
          cur.started_ms = local->started_ms;
          cur.restarts = local->restarts;
          if (local->restarts > 0) {
            cur.message = "restarted on " + options_.node + " (restart " +
                          std::to_string(local->restarts) + "): " + local->last_restart_reason;
          }
          return true;
        });
      }
      return Status::Ok();
    case WorkloadPhase::kLost:
      // Lost while this node was away, which ran an earlier incarnation's
      // copy (just deleted): the record still names this node, so the
      // agent's restart would have run it here; start this one instead.
      if (replaced && st.migration.empty()) return StartHere(rec);
      return Status::Ok();
    default:
      // Migrating: never started here (the migration decides); Pending,
      // Failed, Exited (and Lost otherwise): the controller's to act on.
      return Status::Ok();
  }
}

Status ClusterLink::StartHere(const WorkloadRecord& rec) {
  const std::string& name = rec.spec.name;
  const int64_t epoch = rec.status.epoch;
  // Fenced: nothing starts here until the lease is renewed.
  if (Fenced()) return RetryError("node " + options_.node + " is fenced (lease not renewed)");
  // Claimed first, as a restart is (ClaimStart): a controller write landing
  // after this node read the record (a placement elsewhere, a delete) makes
  // the claim fail or answer false, and nothing starts here.
  KMX_ASSIGN_OR_RETURN(bool claimed, ClaimStart(rec));
  if (!claimed) {
    spdlog::info("workload {}: not started on {}: its record changed (read again)", name,
                 options_.node);
    queue_.Add(kWorkloadKey + name);
    return Status::Ok();
  }
  std::string note;  // the Running write's message
  auto started = [&]() -> StatusOr<LocalWorkload> {
    if (rec.status.restore_checkpoint.empty()) {
      return agent_.StartManaged(rec.spec, epoch, rec.status.created_ms);
    }
    if (options_.start_from_checkpoint) return options_.start_from_checkpoint(rec, &note);
    note = "checkpoint " + rec.status.restore_checkpoint + " not restored (" + options_.node +
           " keeps no checkpoints): started from the image";
    return agent_.StartManaged(rec.spec, epoch, rec.status.created_ms);
  }();
  if (!started.ok()) {
    if (!ForGood(started.status())) return started.status();
    spdlog::warn("workload {} cannot start on {}: {}", name, options_.node,
                 started.status().ToString());
    return UpdateWorkload(name, [&](WorkloadRecord& now) -> StatusOr<bool> {
      if (now.status.node != options_.node || now.status.epoch != epoch) return false;
      now.status.phase = WorkloadPhase::kFailed;
      now.status.message = "cannot start on " + options_.node + ": " + started.status().ToString();
      return true;
    });
  }
  const LocalWorkload& w = *started;
  return UpdateWorkload(name, [&](WorkloadRecord& now) -> StatusOr<bool> {
    auto& st = now.status;
    // Changed meanwhile (new owner, migration): the next event decides.
    if (st.node != options_.node || st.epoch != epoch || !st.migration.empty()) return false;
    if (st.phase != WorkloadPhase::kScheduled && st.phase != WorkloadPhase::kRunning) return false;
    if (st.phase == WorkloadPhase::kRunning && st.pid == w.pid && st.started_ms == w.started_ms &&
        st.restore_checkpoint.empty()) {
      return false;
    }
    st.phase = WorkloadPhase::kRunning;
    st.pid = w.pid;
    st.started_ms = w.started_ms;
    st.message = note;
    st.restore_checkpoint.clear();
    return true;
  });
}

bool ClusterLink::InFlight(const std::string& id) {
  std::lock_guard lock(mu_);
  return running_.contains(id);
}

bool ClusterLink::CancelInFlight(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = running_.find(id);
  if (it == running_.end()) return false;
  it->second->store(true);
  return true;
}

StatusOr<std::string> ClusterLink::NodeUrl(const std::string& node) {
  std::optional<KeyValue> kv;
  if (nodes_.Synced()) {
    kv = nodes_.Get(options_.keys.Node(node));
  } else {
    KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(options_.keys.Node(node)));
    kv = got.kv;
  }
  if (!kv) return NotFoundError("node " + node + " is not in the cluster");
  KMX_ASSIGN_OR_RETURN(api::NodeLoad load,
                       cluster::ParseRecord<api::NodeLoad>(kv->value, cluster::NodeLoadFromJson));
  if (load.url.empty()) return NotFoundError("node " + node + " publishes no URL");
  return load.url;
}

Status ClusterLink::ReconcileMigration(const std::string& id) {
  KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(options_.keys.Migration(id)));
  if (!got.kv) return Status::Ok();
  auto parsed = cluster::ParseRecord<MigrationRecord>(got.kv->value, cluster::MigrationFromJson);
  if (!parsed.ok()) {
    spdlog::warn("ignoring unreadable record of migration {}: {}", id, parsed.status().ToString());
    return Status::Ok();
  }
  const MigrationRecord& rec = *parsed;
  if (rec.source != options_.node) {
    if (rec.target == options_.node && api::IsFinal(rec.phase)) return SettleIncoming(rec);
    return Status::Ok();
  }
  if (Cancelled(rec) && !api::IsFinal(rec.phase) && CancelInFlight(id)) {
    spdlog::info("migration {} of {} {}: rolling it back", id, rec.workload, CancelText(rec));
    return Status::Ok();
  }
  if (InFlight(id)) return Status::Ok();
  std::optional<MigrationReport> journal = agent_.OutgoingReport(id);
  if (api::IsFinal(rec.phase)) {
    // Ended: make sure the workload record lets go of it.
    Status s = FinishWorkload(rec.workload, id, journal ? &*journal : nullptr);
    return s.code() == Code::kNotFound || s.code() == Code::kInvalid ? Status::Ok() : s;
  }
  if (journal) {
    if (IsFinal(journal->phase)) {
      KMX_RETURN_IF_ERROR(WriteReport(*journal));
      Status s = FinishWorkload(rec.workload, id, &*journal);
      return s.code() == Code::kNotFound || s.code() == Code::kInvalid ? Status::Ok() : s;
    }
    // The agent is still resolving it (Tick): mirror the phase, look again.
    if (journal->phase != rec.phase) KMX_RETURN_IF_ERROR(WriteReport(*journal));
    queue_.AddAfter(kMigrationKey + id, options_.journal_poll);
    return Status::Ok();
  }
  if (rec.phase != MigrationPhase::kPending) {
    spdlog::warn("migration {} of {} is {} in the cluster but has no journal here", id,
                 rec.workload, MigrationPhaseName(rec.phase));
    // Ended and the workload record freed in one transaction, as the
    // controller's verdict (cluster/ownership.h): Succeeded if the ownership
    // had moved to the target (which then owns and commits it), else Failed.
    const int64_t now = clock_.WallMillis();
    MigrationReport ref;
    ref.id = id;
    ref.workload = rec.workload;
    return ApplyOwnership(ref, [&](const ownership::Records& r) {
      // Its journal is gone (lost with the agent's state): nothing of it
      // runs here; if the ownership moved, the target has it.
      const ownership::VerdictCause cause{
          api::MakeFault(api::FaultKind::kSourceRestarted, rec.phase, options_.node,
                         "source has no record of this migration", now),
          api::MigrationOutcome::kUntouched, api::Decider::kSource};
      return ownership::Verdict(options_.keys, id, cause, now, std::nullopt, r);
    });
  }

  // A cancelled order never runs (the controller cancels only while the
  // workload record names this node and this migration).
  if (Cancelled(rec)) return RefuseOrder(rec, CancelText(rec), api::FaultKind::kCancelled);

  // A Pending order for this node: only once the workload record agrees.
  KMX_ASSIGN_OR_RETURN(GetResult w, store_.Get(options_.keys.Workload(rec.workload)));
  if (!w.kv) {
    return RefuseOrder(rec, "workload " + rec.workload + " does not exist",
                       api::FaultKind::kSuperseded);
  }
  auto wrec = cluster::ParseRecord<WorkloadRecord>(w.kv->value, cluster::WorkloadFromJson);
  if (!wrec.ok()) return Status::Ok();  // unreadable: its next version requeues us
  if (wrec->status.node != options_.node || wrec->status.migration != id) {
    return Status::Ok();  // not (yet) ours to run: the workload's next change requeues us
  }
  if (rec.target.empty() || rec.target == options_.node) {
    return RefuseOrder(rec, "bad target \"" + rec.target + "\"");
  }
  auto url = NodeUrl(rec.target);
  if (!url.ok()) {
    if (url.status().code() == Code::kRetry) return url.status();
    return RefuseOrder(rec, "target node not ready (" + url.status().message() + ")",
                       api::FaultKind::kTargetUnreachable);
  }
  Launch(rec, *url);
  return Status::Ok();
}

bool ClusterLink::IncomingOpen(const std::string& id) {
  auto phase = agent_.Target().Query(id);
  return phase.ok() && *phase != TargetPhase::kUnknown && *phase != TargetPhase::kCommitted &&
         *phase != TargetPhase::kAborted;
}

Status ClusterLink::SettleIncoming(const MigrationRecord& rec) {
  if (!IncomingOpen(rec.id)) return Status::Ok();
  // The cluster ended it (the controller's verdict on a lost source, or the
  // source's own end that never reached this node): the records say whether
  // it moved here, as the target's oracle would say after its idle timeout.
  // Final means it never moves again (a Transfer refuses a final record), so
  // the answer is for good.
  KMX_ASSIGN_OR_RETURN(ownership::Records records,
                       ownership::Read(store_, options_.keys, rec.workload, rec.id));
  const bool owned = ownership::OwnedHere(options_.node, rec.id, records);
  spdlog::warn(
      "incoming migration {} of {} ended {} in the cluster ({}) while still open here: {}", rec.id,
      rec.workload, api::MigrationPhaseName(rec.phase), rec.error.empty() ? "no error" : rec.error,
      owned ? "it moved here; committing" : "it did not move here; aborting the copy here");
  if (owned) {
    auto done = agent_.Target().Commit(rec.id);
    if (!done.ok()) return done.status();
  } else {
    auto done = agent_.Target().Abort(rec.id);
    if (!done.ok()) return done.status();
  }
  // The workload's name is free again (or its copy adopted): the record,
  // which may name this node, decides what runs here now.
  queue_.Add(kWorkloadKey + rec.workload);
  return Status::Ok();
}

Status ClusterLink::RefuseOrder(const MigrationRecord& rec, const std::string& why,
                                api::FaultKind kind) {
  spdlog::warn("migration {} of {} refused: {}", rec.id, rec.workload, why);
  Status s = UpdateMigration(rec.id, [&](MigrationRecord& now) -> StatusOr<bool> {
    if (now.phase != MigrationPhase::kPending) return false;
    now.phase = MigrationPhase::kFailed;
    now.error = why;
    now.updated_ms = now.finished_ms = clock_.WallMillis();
    if (!now.fault) {
      const std::string side = kind == api::FaultKind::kCancelled           ? ""
                               : kind == api::FaultKind::kTargetUnreachable ? rec.target
                                                                            : options_.node;
      now.fault = api::MakeFault(kind, MigrationPhase::kPending, side, why, now.updated_ms);
    }
    now.resolution = api::MigrationResolution{api::MigrationOutcome::kUntouched,
                                              api::Decider::kSource, now.updated_ms};
    return true;
  });
  if (!s.ok() && s.code() != Code::kNotFound) return s;
  s = FinishWorkload(rec.workload, rec.id, nullptr);
  return s.code() == Code::kNotFound || s.code() == Code::kInvalid ? Status::Ok() : s;
}

void ClusterLink::Launch(const MigrationRecord& rec, const std::string& url) {
  std::vector<std::thread> finished;
  {
    std::lock_guard lock(mu_);
    // Threads of migrations that ended are joined here (and by
    // WaitMigrations): the list holds running ones and those ended since.
    for (auto it = threads_of_migrations_.begin(); it != threads_of_migrations_.end();) {
      if (it->done->load()) {
        finished.push_back(std::move(it->thread));
        it = threads_of_migrations_.erase(it);
      } else {
        ++it;
      }
    }
    if (!stopping_ && !running_.contains(rec.id)) {
      auto cancel = std::make_shared<std::atomic<bool>>(false);
      running_.emplace(rec.id, cancel);
      auto done = std::make_shared<std::atomic<bool>>(false);
      threads_of_migrations_.push_back({std::thread([this, rec, url, cancel, done] {
                                          RunMigration(rec, url, cancel);
                                          done->store(true);
                                        }),
                                        done});
    }
  }
  for (auto& t : finished) t.join();  // ended: returns at once
}

void ClusterLink::RunMigration(MigrationRecord rec, std::string url,
                               std::shared_ptr<std::atomic<bool>> cancel) {
  // However this ends (an exception included), the migration stops counting
  // as running here and the next reconcile of its keys settles the records.
  struct Ended {
    ClusterLink& link;
    const MigrationRecord& rec;
    bool requeue = true;
    ~Ended() {
      {
        std::lock_guard lock(link.mu_);
        link.running_.erase(rec.id);
      }
      link.cv_.notify_all();
      if (requeue) {
        link.queue_.Add(kMigrationKey + rec.id);
        link.queue_.Add(kWorkloadKey + rec.workload);
      }
    }
  } ended{*this, rec};
  Status s = Caught("migration", [&] {
    RunMigrationSteps(rec, url, cancel, ended.requeue);
    return Status::Ok();
  });
  if (!s.ok()) spdlog::error("migration {} of {}: {}", rec.id, rec.workload, s.ToString());
}

void ClusterLink::RunMigrationSteps(const MigrationRecord& rec, const std::string& url,
                                    const std::shared_ptr<std::atomic<bool>>& cancel,
                                    bool& requeue) {
  ManagedMigration order{rec.id, rec.workload, rec.target, url,
                         [cancel] { return cancel->load(); }};
  spdlog::info("migration {}: moving {} to {} ({}), ordered by {}: {}", rec.id, rec.workload,
               rec.target, url, rec.requested_by, rec.reason);
  auto done = agent_.MigrateManaged(order, *this, [this](const MigrationReport& r) {
    if (Status s = WriteReport(r); !s.ok()) {
      // Level-based: the final state is written from the journal later.
      spdlog::warn("migration {}: phase {} not written: {}", r.id, MigrationPhaseName(r.phase),
                   s.ToString());
    }
  });
  const std::string key = kMigrationKey + rec.id;
  if (!done.ok()) {
    const Status& s = done.status();
    if (ForGood(s)) {
      const api::FaultKind kind =
          s.code() == Code::kFailed ? api::FaultKind::kInternal : api::FaultKind::kInvalidOrder;
      if (Status w = RefuseOrder(rec, s.ToString(), kind); !w.ok()) {
        spdlog::warn("migration {}: {}", rec.id, w.ToString());
      }
    } else {
      spdlog::info("migration {} of {} not started yet: {}", rec.id, rec.workload, s.ToString());
    }
    requeue = false;
    {
      std::lock_guard lock(mu_);
      running_.erase(rec.id);  // before the retry can find it in flight
    }
    if (!ForGood(s)) queue_.Retry(key);
    return;
  }
  if (IsFinal(done->phase)) {
    if (Status s = FinishWorkload(rec.workload, rec.id, &*done); !s.ok()) {
      spdlog::warn("migration {}: workload record not updated: {}", rec.id, s.ToString());
    }
  }
  // Whatever was not written (store down, still Resolving) is picked up when
  // the run ends (Ended requeues its keys).
}

void ClusterLink::WaitMigrations() {
  std::vector<MigrationThread> threads;
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return running_.empty(); });
    threads.swap(threads_of_migrations_);
  }
  for (auto& t : threads) t.thread.join();
}

size_t ClusterLink::RunningMigrations() {
  std::lock_guard lock(mu_);
  return running_.size();
}

size_t ClusterLink::MigrationThreads() {
  std::lock_guard lock(mu_);
  return threads_of_migrations_.size();
}

Status ClusterLink::WriteReport(const MigrationReport& r) {
  const bool final = IsFinal(r.phase);
  return UpdateMigration(r.id, [&](MigrationRecord& now) -> StatusOr<bool> {
    if (api::IsFinal(now.phase)) return false;  // never overwritten
    now.phase = r.phase;
    now.updated_ms = clock_.WallMillis();
    now.report = r;
    // The fault it met (known while it is still resolving) and how it ended.
    if (r.fault) now.fault = r.fault;
    if (final) {
      now.finished_ms = r.finished_ms > 0 ? r.finished_ms : now.updated_ms;
      now.error = ErrorText(r.error);
      now.resolution = r.resolution;
    }
    return true;
  });
}

Status ClusterLink::FinishWorkload(const std::string& workload, const std::string& id,
                                   const MigrationReport* report) {
  return UpdateWorkload(workload, [&](WorkloadRecord& rec) -> StatusOr<bool> {
    auto& st = rec.status;
    if (st.migration != id) return false;
    st.migration.clear();
    if (report != nullptr && !Contains(st.migrations, id)) st.migrations.push_back(id);
    if (report != nullptr && report->phase == MigrationPhase::kSucceeded) {
      if (st.node == report->target_node) {
        st.phase = WorkloadPhase::kRunning;
        st.pid = report->target_pid;
        st.started_ms = clock_.WallMillis();
      }
    } else if (st.node == options_.node && st.phase == WorkloadPhase::kMigrating) {
      // It runs here again (or never stopped); if not, the workload's
      // reconciler starts it.
      st.phase = WorkloadPhase::kRunning;
      auto local = agent_.Local(workload);
      if (local && local->task == TaskState::kRunning) st.pid = local->pid;
    }
    return true;
  });
}

}  // namespace kmosix::agent
