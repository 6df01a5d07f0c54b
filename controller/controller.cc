#include "controller/controller.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string_view>
#include <unordered_map>

#include "api/validate.h"
#include "cluster/ownership.h"
#include "controller/record_update.h"
#include "kmosix/migration.h"

namespace kmosix::controller {
namespace {

using api::MigrationPhase;
using api::NodeLoad;
using api::NodeMember;
using api::ValidateName;
using api::WorkloadPhase;
using api::WorkloadStatus;
using cluster::KeyLayout;
namespace ownership = cluster::ownership;
using nlohmann::json;
using MigrationRecord = api::Migration;
using WorkloadRecord = api::Workload;

// Whether node load `n` may hold `image`: it lists its images and the image
// is among them, or it does not list them (unknown).
bool MayHoldImage(const NodeLoad& n, const std::string& image) {
  return !n.images || std::binary_search(n.images->begin(), n.images->end(), image);
}

constexpr int kCasAttempts = 8;
// A workload's CPU figure is trusted once it ran this long on its node: the
// agent's first rate needs two samples a second apart, then publishing lags
// by up to a second. Before that the figure it had on its last node counts.
constexpr int64_t kSettleMs = 3'000;

StatusOr<WorkloadRecord> ParseWorkload(const KeyValue& kv) {
  return cluster::ParseRecord<WorkloadRecord>(kv.value, &cluster::WorkloadFromJson);
}
StatusOr<MigrationRecord> ParseMigration(const KeyValue& kv) {
  return cluster::ParseRecord<MigrationRecord>(kv.value, &cluster::MigrationFromJson);
}
StatusOr<NodeMember> ParseMember(const KeyValue& kv) {
  return cluster::ParseRecord<NodeMember>(kv.value, &cluster::NodeMemberFromJson);
}

bool Occupies(WorkloadPhase p) {
  return p == WorkloadPhase::kScheduled || p == WorkloadPhase::kRunning ||
         p == WorkloadPhase::kMigrating;
}

api::MoveDecision MoveOf(const Decision& d) {
  api::MoveDecision m;
  m.kind = d.kind == Decision::Kind::kMemory ? api::MoveDecision::Kind::kMemory
                                             : api::MoveDecision::Kind::kCpu;
  m.workload = d.workload;
  m.source = d.source;
  m.target = d.target;
  m.source_load = d.source_load;
  m.target_load = d.target_load;
  m.workload_load = d.workload_load;
  m.reason = d.reason;
  return m;
}

}  // namespace

Controller::Controller(StateStore& store, Clock& clock, Random& random, ControllerOptions options,
                       ControllerObserver* observer)
    : store_(store),
      clock_(clock),
      random_(random),
      options_(std::move(options)),
      observer_(observer),
      // The caches keep metadata only: records live decoded in view_.
      nodes_(store, clock, options_.keys.Nodes(), /*keep_values=*/false),
      members_(store, clock, options_.keys.Members(), /*keep_values=*/false),
      workloads_(store, clock, options_.keys.Workloads(), /*keep_values=*/false),
      migrations_(store, clock, options_.keys.Migrations(), /*keep_values=*/false),
      queue_(clock, random),
      election_(store, clock,
                cluster::LeaderElection::Options{options_.keys.Leader(), options_.identity,
                                                 options_.leader_ttl}),
      compactor_(store, clock, options_.compaction, options_.keys.Leader()) {}

Controller::~Controller() { Stop(); }

void Controller::Start() {
  if (started_.exchange(true)) return;
  const KeyLayout& k = options_.keys;
  auto watch = [this](cluster::PrefixCache& cache, std::string dir, char kind) {
    threads_.emplace_back([this, &cache, dir, kind] {
      cache.Run([this, dir, kind](const std::string& key, const std::optional<KeyValue>& now) {
        std::string name = KeyLayout::NameIn(dir, key);
        if (!name.empty()) OnChange(kind, name, now);
      });
    });
  };
  watch(nodes_, k.Nodes(), 'n');
  watch(members_, k.Members(), 'c');
  watch(workloads_, k.Workloads(), 'w');
  watch(migrations_, k.Migrations(), 'm');
  threads_.emplace_back(
      [this] { election_.Run([this](const cluster::LeaderTerm& term) { Lead(term); }); });
}

namespace {
// Decodes a stored record into `into` (erasing it when deleted or damaged).
template <typename T>
void Decode(std::map<std::string, T>& into, const std::string& name,
            const std::optional<KeyValue>& now, StatusOr<T> (*from_json)(const json&)) {
  if (!now) {
    into.erase(name);
    return;
  }
  auto parsed = cluster::ParseRecord<T>(now->value, from_json);
  if (!parsed.ok()) {
    spdlog::warn("record {} is damaged, ignored: {}", now->key, parsed.status().message());
    into.erase(name);
    return;
  }
  into[name] = std::move(*parsed);
}

// The record under `name` (a copy for "before", a pointer for "after").
template <typename T>
std::optional<T> CopyOf(const std::map<std::string, T>& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) return std::nullopt;
  return it->second;
}
template <typename T>
const T* PointerTo(const std::map<std::string, T>& m, const std::string& name) {
  auto it = m.find(name);
  return it == m.end() ? nullptr : &it->second;
}
}  // namespace

void Controller::OnChange(char kind, const std::string& name, const std::optional<KeyValue>& now) {
  std::vector<std::string> items;
  bool notify_nodes = false;  // a live node's notReadyReason changed
  {
    std::lock_guard lock(view_mu_);
    switch (kind) {
      case 'n': {
        auto before = PointerTo(view_.nodes, name);
        const bool was = before != nullptr;
        std::optional<std::string> reason_before = was ? before->not_ready_reason : std::nullopt;
        Decode(view_.nodes, name, now, &cluster::NodeLoadFromJson);
        auto after = PointerTo(view_.nodes, name);
        std::optional<std::string> reason_after = after ? after->not_ready_reason : std::nullopt;
        if (after != nullptr && reason_before != reason_after) {
          // The agent runs but says it cannot take part in migrations (or
          // can again): no lease change, so no member event; say it here.
          if (reason_after)
            spdlog::warn("node {} is NotReady for migrations: {}", name, *reason_after);
          else
            spdlog::info("node {} is ready for migrations again", name);
          if (nodes_.Synced())
            events_.Publish(
                reason_after ? "node.notready" : "node.ready", clock_.WallMillis(),
                {{"node", name},
                 {"message", reason_after ? "NotReady: " + *reason_after : std::string("Ready")}});
          notify_nodes = true;
        }
        // Load updates are frequent; only readiness changes concern the
        // node's workloads and migrations.
        if (was == (after != nullptr)) break;
        items.push_back("n/" + name);
        for (const auto& [w, rec] : view_.workloads) {
          if (rec.status.node == name) items.push_back("w/" + w);
        }
        for (const auto& [id, m] : view_.migrations) {
          if (!api::IsFinal(m.phase) && (m.source == name || m.target == name))
            items.push_back("m/" + id);
        }
        break;
      }
      case 'c': {
        auto before = CopyOf(view_.members, name);
        Decode(view_.members, name, now, &cluster::NodeMemberFromJson);
        if (members_.Synced())
          PublishMemberEvents(before ? &*before : nullptr, PointerTo(view_.members, name));
        items.push_back("n/" + name);
        break;
      }
      case 'w': {
        auto before = CopyOf(view_.workloads, name);
        Decode(view_.workloads, name, now, &cluster::WorkloadFromJson);
        if (workloads_.Synced())
          PublishWorkloadEvents(before ? &*before : nullptr, PointerTo(view_.workloads, name));
        items.push_back("w/" + name);
        if (grants_) {
          for (const auto& node : NodesOfWorkloadChange(
                   before ? &*before : nullptr, PointerTo(view_.workloads, name), view_.migrations))
            items.push_back("g/" + node);
        }
        break;
      }
      case 'm': {
        auto before = CopyOf(view_.migrations, name);
        Decode(view_.migrations, name, now, &cluster::MigrationFromJson);
        if (migrations_.Synced())
          PublishMigrationEvents(before ? &*before : nullptr, PointerTo(view_.migrations, name));
        items.push_back("m/" + name);
        if (grants_) {
          for (const auto& node : NodesOfMigrationChange(before ? &*before : nullptr,
                                                         PointerTo(view_.migrations, name)))
            items.push_back("g/" + node);
        }
        break;
      }
    }
  }
  for (const auto& item : items) queue_.Add(item);
  if (kind == 'w' || kind == 'm' || notify_nodes) {
    for (const auto& listener : listeners_) listener(kind, name);
  }
}

void Controller::AddChangeListener(std::function<void(char kind, const std::string& name)> l) {
  listeners_.push_back(std::move(l));
}

void Controller::SetAccessGrants(AccessGrants* grants) {
  if (grants == nullptr) {
    grants_.reset();
    return;
  }
  GrantReconciler::Options o;
  o.keys = options_.keys;
  o.role_prefix = options_.node_role_prefix;
  o.revoke_grace = options_.grant_revoke_grace;
  grants_ = std::make_unique<GrantReconciler>(
      *grants, clock_, o,
      [this](const std::string& action, const std::string& node, const std::string& key,
             const Status& s) {
        if (observer_) observer_->OnGrant(action, s.ok());
        if (!s.ok())
          spdlog::warn("etcd {} of {} for node {} failed: {}", action, key, node, s.ToString());
      });
}

void Controller::Stop() {
  if (stopped_.exchange(true)) return;
  events_.Close();
  election_.Stop();
  queue_.ShutDown();
  nodes_.Stop();
  members_.Stop();
  workloads_.Stop();
  migrations_.Stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

bool Controller::IsLeader() const { return election_.IsLeader(); }

bool Controller::Ready() const {
  return nodes_.Synced() && members_.Synced() && workloads_.Synced() && migrations_.Synced();
}

void Controller::EnqueueAll() {
  std::vector<std::string> items = {"balance"};
  {
    std::lock_guard lock(view_mu_);
    for (const auto& [n, v] : view_.nodes) items.push_back("n/" + n);
    for (const auto& [n, v] : view_.members) items.push_back("n/" + n);
    for (const auto& [n, v] : view_.workloads) items.push_back("w/" + n);
    for (const auto& [id, v] : view_.migrations) items.push_back("m/" + id);
  }
  if (grants_) items.push_back("grants");
  if (options_.retention.interval.count() > 0) items.push_back("retention");
  if (options_.compaction.interval.count() > 0) items.push_back("compact");
  for (const auto& item : items) queue_.Add(item);
}

void Controller::EnqueueGrants() {
  std::set<std::string> nodes;
  {
    std::lock_guard lock(view_mu_);
    for (const auto& [n, v] : view_.nodes) nodes.insert(n);
    for (const auto& [n, v] : view_.members) nodes.insert(n);
    for (const auto& [n, keys] : DesiredGrants(options_.keys, view_.workloads, view_.migrations))
      nodes.insert(n);
  }
  for (const auto& n : nodes) queue_.Add("g/" + n);
}

Status Controller::ReconcileGrants(const std::string& node) {
  if (!grants_) return Status::Ok();
  if (!Ready()) return RetryError("caches not listed yet");
  std::set<std::string> desired;
  {
    std::lock_guard lock(view_mu_);
    NodeGrants all = DesiredGrants(options_.keys, view_.workloads, view_.migrations);
    if (auto it = all.find(node); it != all.end()) desired = std::move(it->second);
  }
  KMX_ASSIGN_OR_RETURN(GrantOutcome out, grants_->Reconcile(node, desired));
  if (out.again_in) queue_.AddAfter("g/" + node, *out.again_in + std::chrono::milliseconds(50));
  return Status::Ok();
}

void Controller::Lead(const cluster::LeaderTerm& term) {
  spdlog::info("controller {} leads (term {})", options_.identity, term.revision());
  if (observer_) observer_->OnLeadership(true);
  // Act only on a complete picture of the cluster.
  while (!term.Lost() && !Ready()) term.WaitLost(std::chrono::milliseconds(100));
  if (grants_) grants_->ResetGrace();  // a new term: node grants' grace clocks start afresh
  compactor_.Reset();                  // and the compactor's revision samples
  EnqueueAll();
  std::vector<std::thread> workers;
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers.emplace_back([this, &term] {
      while (!term.Lost()) {
        auto item = queue_.Get(std::chrono::milliseconds(200));
        if (!item) continue;
        Status s = Reconcile(*item, term);
        if (*item == "balance") {
          queue_.Done(*item);
          if (options_.balance) queue_.AddAfter(*item, options_.balance_interval);
          continue;
        }
        if (*item == "grants") {  // the periodic resync of every node's grants
          queue_.Done(*item);
          queue_.AddAfter(*item, options_.grants_resync);
          continue;
        }
        if (*item == "retention" || *item == "compact") {  // periodic upkeep of the store
          if (!s.ok()) spdlog::warn("{}: {}", *item, s.ToString());
          queue_.Done(*item);
          queue_.AddAfter(*item, *item == "retention" ? options_.retention.interval
                                                      : options_.compaction.interval);
          continue;
        }
        if (s.ok()) {
          queue_.Forget(*item);
        } else {
          auto delay = queue_.Retry(*item);
          spdlog::log(s.code() == Code::kConflict ? spdlog::level::debug : spdlog::level::warn,
                      "reconcile {}: {} (again in {} ms)", *item, s.ToString(),
                      std::chrono::duration_cast<std::chrono::milliseconds>(delay).count());
        }
        queue_.Done(*item);
      }
    });
  }
  for (auto& w : workers) w.join();
  if (observer_) observer_->OnLeadership(false);
  spdlog::info("controller {} stepped down", options_.identity);
}

Status Controller::Reconcile(const std::string& item, const cluster::LeaderTerm& term) {
  Status s;
  std::string kind;
  if (item == "balance") {
    kind = "balance";
    s = options_.balance ? BalanceRound(term) : Status::Ok();
  } else if (item.rfind("w/", 0) == 0) {
    kind = "workload";
    s = ReconcileWorkload(item.substr(2), term);
  } else if (item.rfind("m/", 0) == 0) {
    kind = "migration";
    s = ReconcileMigration(item.substr(2), term);
  } else if (item.rfind("n/", 0) == 0) {
    kind = "node";
    s = ReconcileNode(item.substr(2), term);
  } else if (item == "grants") {
    EnqueueGrants();
  } else if (item == "retention") {
    kind = "retention";
    s = TrimFinishedMigrations(term);
  } else if (item == "compact") {
    kind = "compact";
    auto compacted = compactor_.Step();
    if (!compacted.ok())
      s = compacted.status();
    else if (*compacted > 0)
      spdlog::info("compacted the store's history to revision {}", *compacted);
  } else if (item.rfind("g/", 0) == 0) {
    kind = "grants";
    s = ReconcileGrants(item.substr(2));
  }
  if (observer_ && !kind.empty()) observer_->OnReconcile(kind, s.ok());
  return s;
}

// ---- helpers over the store ------------------------------------------------

namespace {

// Reads a record fresh, lets `mutate` change it (returning false: nothing to
// write), and writes it back with a CAS on its mod_revision (plus `fence`).
// `read_at`, if given, holds the mod_revision of the version `mutate` sees.
template <typename Record>
Status UpdateRecord(StateStore& store, const std::string& key,
                    StatusOr<Record> (*from_json)(const json&), json (*to_json)(const Record&),
                    const std::optional<Compare>& fence,
                    const std::function<StatusOr<bool>(Record&)>& mutate,
                    int64_t* read_at = nullptr) {
  for (int attempt = 0; attempt < kCasAttempts; ++attempt) {
    KMX_ASSIGN_OR_RETURN(GetResult got, store.Get(key));
    if (!got.kv) return NotFoundError(key + " does not exist");
    if (read_at) *read_at = got.kv->mod_revision;
    auto record = cluster::ParseRecord<Record>(got.kv->value, from_json);
    if (!record.ok()) return record.status().Annotate(key);
    KMX_ASSIGN_OR_RETURN(bool write, mutate(*record));
    if (!write) return Status::Ok();
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(key, got.kv->mod_revision));
    if (fence) txn.compares.push_back(*fence);
    txn.then_ops.push_back(TxnOp::Put(key, to_json(*record).dump()));
    KMX_ASSIGN_OR_RETURN(TxnResult r, store.Commit(txn));
    if (r.succeeded) return Status::Ok();
    if (fence) {
      // Lost the term, or the record changed: tell which by re-reading.
      auto lead = store.Get(fence->key);
      if (lead.ok() && (!lead->kv || lead->kv->create_revision != fence->number))
        return ConflictError("no longer the leader");
    }
  }
  return ConflictError(key + " keeps changing");
}

}  // namespace

Status UpdateWorkloadRecord(StateStore& store, const std::string& key,
                            const std::optional<Compare>& fence,
                            const std::function<StatusOr<bool>(api::Workload&)>& mutate,
                            int64_t* read_at) {
  return UpdateRecord<WorkloadRecord>(store, key, &cluster::WorkloadFromJson,
                                      &cluster::WorkloadToJson, fence, mutate, read_at);
}

namespace {
// A copy of m[key] (nullopt if absent), read under `mu`.
template <typename T>
std::optional<T> CopyOut(std::mutex& mu, const std::map<std::string, T>& m,
                         const std::string& key) {
  std::lock_guard lock(mu);
  auto it = m.find(key);
  if (it == m.end()) return std::nullopt;
  return it->second;
}
}  // namespace

bool Controller::NodeReady(const std::string& node) {
  std::lock_guard lock(view_mu_);
  return view_.nodes.count(node) > 0;
}

bool Controller::NodeCordoned(const std::string& node) {
  std::lock_guard lock(view_mu_);
  auto it = view_.members.find(node);
  return it != view_.members.end() && it->second.cordoned;
}

std::optional<WorkloadRecord> Controller::CachedWorkload(const std::string& name) const {
  return CopyOut(view_mu_, view_.workloads, name);
}

std::optional<MigrationRecord> Controller::CachedMigration(const std::string& id) const {
  return CopyOut(view_mu_, view_.migrations, id);
}

std::optional<NodeLoad> Controller::CachedNode(const std::string& name) const {
  return CopyOut(view_mu_, view_.nodes, name);
}

std::optional<NodeMember> Controller::CachedMember(const std::string& name) const {
  return CopyOut(view_mu_, view_.members, name);
}

// ---- reconcilers (leader only) ---------------------------------------------

Status Controller::ReconcileNode(const std::string& node, const cluster::LeaderTerm& term) {
  const std::string key = options_.keys.Member(node);
  const bool ready = NodeReady(node);
  const int64_t now = clock_.WallMillis();
  KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(key));
  NodeMember member;
  member.node = node;
  if (got.kv) {
    auto parsed = ParseMember(*got.kv);
    if (parsed.ok()) member = *parsed;
    if (parsed.ok() && member.ready == ready) return Status::Ok();
  } else if (!ready) {
    return Status::Ok();  // never seen, not there: nothing to record
  }
  member.ready = ready;
  member.changed_ms = now;
  if (!ready) member.lost_ms = now;  // kept once Ready again (node_loss.h)
  Txn txn;
  txn.compares.push_back(got.kv ? Compare::Unchanged(key, got.kv->mod_revision)
                                : Compare::Absent(key));
  txn.compares.push_back(term.Fence());
  txn.then_ops.push_back(TxnOp::Put(key, cluster::NodeMemberToJson(member).dump()));
  KMX_ASSIGN_OR_RETURN(TxnResult r, store_.Commit(txn));
  if (!r.succeeded) return ConflictError("member record of " + node + " changed");
  spdlog::info("node {} is {}", node, ready ? "Ready" : "NotReady (its lease expired)");
  return Status::Ok();
}

Status Controller::ReconcileWorkload(const std::string& name, const cluster::LeaderTerm& term) {
  const std::string key = options_.keys.Workload(name);
  auto w = CachedWorkload(name);
  if (!w) return Status::Ok();  // gone, or damaged (logged when cached)
  const int64_t now = clock_.WallMillis();
  const WorkloadStatus& st = w->status;

  if (st.phase == WorkloadPhase::kPending) {
    ClusterSnapshot snap = Snapshot(w->spec.image);
    PlacementRequest req;
    req.cpus = w->spec.cpus;
    req.memory_bytes = static_cast<uint64_t>(w->spec.memory_mib) * 1024 * 1024;
    req.node = w->spec.node;
    auto target = Place(snap, req, random_);
    if (!target.ok()) {
      // Nowhere to go yet; try again later, say why in the record.
      std::string why = "not placed: " + target.status().message();
      if (st.message != why) {
        (void)UpdateWorkloadRecord(store_, key, term.Fence(), [&](WorkloadRecord& r) {
          if (r.status.phase != WorkloadPhase::kPending) return StatusOr<bool>(false);
          r.status.message = why;
          return StatusOr<bool>(true);
        });
      }
      return RetryError(why);
    }
    // Grant first, then write: the agent reports on the record at once.
    if (grants_) KMX_RETURN_IF_ERROR(grants_->GrantNow(*target, {key}));
    // The first epoch is the revision the record was read at, never less
    // than its create revision: every record write bumps the epoch by at most
    // one at a higher revision, so every epoch an earlier incarnation of this
    // name had (deleted and created again) is lower, and its agents fence
    // their copies of it (issue 13, hole 4).
    int64_t read_at = 0;
    Status s = UpdateWorkloadRecord(
        store_, key, term.Fence(),
        [&](WorkloadRecord& r) {
          if (r.status.phase != WorkloadPhase::kPending) return StatusOr<bool>(false);
          r.status.phase = WorkloadPhase::kScheduled;
          r.status.node = *target;
          r.status.epoch = std::max(r.status.epoch + 1, read_at);
          r.status.message = w->spec.node.empty() ? "placed on the least loaded node " + *target
                                                  : "placed on the requested node " + *target;
          return StatusOr<bool>(true);
        },
        &read_at);
    if (s.ok()) {
      spdlog::info("placed workload {} on {}", name, *target);
      if (observer_) observer_->OnPlacement();
    }
    return s;
  }

  // A migration the record points at that is over (or gone): the source
  // normally clears it; do it when the source cannot.
  if (!st.migration.empty()) {
    // Fresh read: the migrations cache may lag behind the workloads cache.
    KMX_ASSIGN_OR_RETURN(GetResult fresh, store_.Get(options_.keys.Migration(st.migration)));
    const std::optional<KeyValue>& mkv = fresh.kv;
    std::optional<MigrationRecord> m;
    if (mkv) {
      auto parsed = ParseMigration(*mkv);
      if (parsed.ok()) m = *parsed;
    }
    if (!mkv || (m && api::IsFinal(m->phase) && now - m->finished_ms > 5'000)) {
      const std::string id = st.migration;
      return UpdateWorkloadRecord(store_, key, term.Fence(), [&](WorkloadRecord& r) {
        if (r.status.migration != id) return StatusOr<bool>(false);
        r.status.migration.clear();
        if (m && m->phase == MigrationPhase::kSucceeded) r.status.migrations.push_back(id);
        if (r.status.phase == WorkloadPhase::kMigrating) r.status.phase = WorkloadPhase::kRunning;
        return StatusOr<bool>(true);
      });
    }
  }

  if (Occupies(st.phase) && !st.node.empty() && st.migration.empty() && !NodeReady(st.node)) {
    const std::string node = st.node;
    Status s = UpdateWorkloadRecord(store_, key, term.Fence(), [&](WorkloadRecord& r) {
      if (!Occupies(r.status.phase) || r.status.node != node || !r.status.migration.empty())
        return StatusOr<bool>(false);
      r.status.phase = WorkloadPhase::kLost;
      r.status.message = "node " + node + " lost its lease while running it";
      return StatusOr<bool>(true);
    });
    if (s.ok()) spdlog::warn("workload {} Lost: node {} is NotReady", name, node);
    return s;
  }

  if (st.phase == WorkloadPhase::kLost && NodeReady(st.node)) {
    // The node came back with it still running (only its agent had died).
    auto n = CachedNode(st.node);
    if (n && n->workloads.count(name)) {
      const std::string node = st.node;
      return UpdateWorkloadRecord(store_, key, term.Fence(), [&](WorkloadRecord& r) {
        if (r.status.phase != WorkloadPhase::kLost || r.status.node != node)
          return StatusOr<bool>(false);
        r.status.phase = WorkloadPhase::kRunning;
        r.status.message = "node " + node + " is back and runs it";
        return StatusOr<bool>(true);
      });
    }
  }

  // Lost with its node, restartPolicy FromImage/FromCheckpoint: placed
  // again elsewhere once the node has been NotReady long enough
  // (controller/node_loss.h).
  if (st.phase == WorkloadPhase::kLost && w->spec.restart_policy != api::RestartPolicy::kNever)
    return RestartLost(*w, term);
  return Status::Ok();
}

Status Controller::ReconcileMigration(const std::string& id, const cluster::LeaderTerm& term) {
  auto m = CachedMigration(id);
  if (!m) return Status::Ok();  // gone, or damaged (logged when cached)
  if (api::IsFinal(m->phase)) {
    queue_.AddAfter("w/" + m->workload, std::chrono::seconds(6));
    return Status::Ok();
  }
  const int64_t now = clock_.WallMillis();
  const std::string wkey = options_.keys.Workload(m->workload);

  // Decide whether the controller must end it, and for which fault (its
  // message is the error if its ownership never moved; the verdict itself is
  // the ownership protocol's).
  std::optional<MigrationPhase> phase;
  std::string error;
  api::FaultKind kind = api::FaultKind::kInternal;
  std::string fault_node;  // which side: "" = the cluster
  // Where the workload is when its ownership did not move.
  api::MigrationOutcome unmoved = api::MigrationOutcome::kUntouched;
  // Fresh read: the workloads cache may lag behind the migrations cache.
  KMX_ASSIGN_OR_RETURN(GetResult fresh, store_.Get(wkey));
  const std::optional<KeyValue>& wkv = fresh.kv;
  std::optional<WorkloadRecord> w;
  if (wkv) {
    auto parsed = ParseWorkload(*wkv);
    if (parsed.ok()) w = *parsed;
  }
  const bool source_ready = NodeReady(m->source);
  int64_t source_down_ms = 0;
  if (!source_ready) {
    source_down_ms = now - m->updated_ms;
    if (auto member = CachedMember(m->source); member && !member->ready)
      source_down_ms = now - member->changed_ms;
  }
  const int64_t grace_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(options_.source_lost_grace).count();
  if (m->phase == MigrationPhase::kPending && (!w || w->status.migration != id)) {
    phase = MigrationPhase::kFailed;
    error = "the workload is gone or no longer waits for this migration";
    kind = api::FaultKind::kSuperseded;
  } else if (!source_ready && source_down_ms >= grace_ms) {
    phase = MigrationPhase::kFailed;  // Succeeded if the ownership moved (the verdict says)
    error = "source node " + m->source + " was lost before ownership moved to " + m->target;
    kind = api::FaultKind::kSourceLost;
    fault_node = m->source;
    // Nothing was frozen before Preparing ended; from then on the copy
    // left on the lost node is for its node-loss policy to decide.
    unmoved = m->phase == MigrationPhase::kPending || m->phase == MigrationPhase::kPreparing
                  ? api::MigrationOutcome::kUntouched
                  : api::MigrationOutcome::kAbandoned;
  } else if (m->phase == MigrationPhase::kPending &&
             now - m->created_ms >
                 std::chrono::duration_cast<std::chrono::milliseconds>(options_.order_timeout)
                     .count()) {
    phase = MigrationPhase::kFailed;
    error = "source " + m->source + " did not pick the order up";
    kind = api::FaultKind::kTimedOut;
    fault_node = m->source;
  }
  if (!phase) {
    // Still the source's to finish: look again later.
    queue_.AddAfter("m/" + id, std::chrono::seconds(2));
    return Status::Ok();
  }

  // The verdict: the migration record's end and the workload record's release
  // in one transaction fenced by the term (cluster/ownership.h decides
  // Succeeded or Failed from the records it commits over, so a source
  // transferring meanwhile either lands first, and the verdict says
  // Succeeded, or is refused after it).
  const ownership::VerdictCause cause{api::MakeFault(kind, m->phase, fault_node, error, now),
                                      unmoved, api::Decider::kController};
  auto done =
      ownership::Apply(store_, options_.keys, m->workload, id, [&](const ownership::Records& rec) {
        return ownership::Verdict(options_.keys, id, cause, now, term.Fence(), rec);
      });
  if (!done.ok()) {
    if (done.status().code() == Code::kRetry) {
      // Lost the term, or the records kept changing: tell which.
      const Compare fence = term.Fence();
      auto lead = store_.Get(fence.key);
      if (lead.ok() && (!lead->kv || lead->kv->create_revision != fence.number))
        return ConflictError("no longer the leader");
    }
    return done.status();
  }
  if (done->txn && done->migration) {
    const api::Migration& ended = *done->migration;
    spdlog::warn("migration {} of {} ended {} by the controller (fault {}){}{}", id, m->workload,
                 api::MigrationPhaseName(ended.phase),
                 ended.fault ? api::FaultKindName(ended.fault->kind) : "none",
                 ended.error.empty() ? "" : ": ", ended.error);
  }
  return Status::Ok();
}

Status Controller::TrimFinishedMigrations(const cluster::LeaderTerm& term) {
  if (!Ready()) return Status::Ok();
  std::vector<RetentionDelete> plan;
  {
    std::lock_guard lock(view_mu_);
    plan = PlanMigrationRetention(view_.migrations, view_.workloads, clock_.WallMillis(),
                                  options_.retention);
  }
  if (plan.empty()) return Status::Ok();
  const size_t cap = std::max<size_t>(1, options_.retention.max_deletes);
  KMX_ASSIGN_OR_RETURN(TrimResult r,
                       TrimMigrations(store_, options_.keys, plan, term.Fence(), cap));
  if (r.deleted > 0)
    spdlog::info("removed {} finished migration record(s) past retention ({} to go)", r.deleted,
                 plan.size() > r.deleted + r.skipped ? plan.size() - r.deleted - r.skipped : 0);
  if (plan.size() > cap) queue_.Add("retention");  // more to do: again once this pass is Done
  return Status::Ok();
}

Status Controller::BalanceRound(const cluster::LeaderTerm& term) {
  if (!Ready()) return Status::Ok();
  auto started = clock_.Now();
  ClusterSnapshot snap = Snapshot();
  const PolicyConfig config = ApplyPolicies(snap);
  BalanceResult result = Balance(snap, config, random_);
  size_t ordered = 0;
  for (const Decision& d : result.moves) {
    api::MigrationRequest request;
    request.workload = d.workload;
    request.target = d.target;
    request.reason = d.reason;
    request.requested_by = std::string(api::kRequestedByPolicy);
    auto order = Order(request, term.Fence());
    if (order.ok()) {
      ++ordered;
      spdlog::info("ordered migration {}: {}", order->id, d.reason);
    } else {
      spdlog::info("could not order moving {} to {}: {}", d.workload, d.target,
                   order.status().ToString());
    }
  }
  if (observer_) observer_->OnBalanceRound(Seconds(clock_.Now() - started), ordered);
  return Status::Ok();
}

StatusOr<MigrationRecord> Controller::Order(const api::MigrationRequest& request,
                                            const std::optional<Compare>& fence) {
  const std::string& workload = request.workload;
  const std::string& target = request.target;
  const std::string wkey = options_.keys.Workload(workload);
  for (int attempt = 0; attempt < kCasAttempts; ++attempt) {
    std::optional<KeyValue> existing;
    if (!request.id.empty()) {
      // Idempotent order: the same id for the same workload is the same
      // migration, whatever became of it.
      KMX_ASSIGN_OR_RETURN(GetResult mgot, store_.Get(options_.keys.Migration(request.id)));
      if (mgot.kv) {
        auto m = ParseMigration(*mgot.kv);
        if (!m.ok()) return FailedError("migration record is damaged: " + m.status().message());
        if (m->workload != workload)
          return ConflictError("migration " + request.id + " exists for workload \"" + m->workload +
                               "\"");
        return *m;
      }
    }
    KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(wkey));
    if (!got.kv) return NotFoundError("no workload named \"" + workload + "\"");
    auto w = ParseWorkload(*got.kv);
    if (!w.ok()) return FailedError("workload record is damaged: " + w.status().message());
    if (!w->status.migration.empty())
      return ConflictError("workload \"" + workload + "\" is already migrating (" +
                           w->status.migration + ")");
    if (w->status.phase != WorkloadPhase::kRunning)
      return ConflictError("workload \"" + workload + "\" is " +
                           std::string(api::WorkloadPhaseName(w->status.phase)) + ", not Running");
    if (w->status.node == target)
      return ConflictError("workload \"" + workload + "\" already runs on " + target);
    MigrationRecord m;
    m.id = request.id.empty() ? RandomId(random_, "m-") : request.id;
    m.workload = workload;
    m.source = w->status.node;
    m.target = target;
    m.reason = request.reason;
    m.requested_by = request.requested_by;
    m.epoch = w->status.epoch;
    m.created_ms = m.updated_ms = clock_.WallMillis();
    w->status.migration = m.id;
    w->status.phase = WorkloadPhase::kMigrating;
    const std::string mkey = options_.keys.Migration(m.id);
    if (grants_) {
      // Grant first, then write: the source runs the order (and writes both
      // records), the target owns the workload from the ownership transfer.
      KMX_RETURN_IF_ERROR(grants_->GrantNow(m.source, {mkey, wkey}));
      KMX_RETURN_IF_ERROR(grants_->GrantNow(m.target, {wkey}));
    }
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(wkey, got.kv->mod_revision));
    txn.compares.push_back(Compare::Absent(mkey));
    if (fence) txn.compares.push_back(*fence);
    txn.then_ops.push_back(TxnOp::Put(mkey, cluster::MigrationToJson(m).dump()));
    txn.then_ops.push_back(TxnOp::Put(wkey, cluster::WorkloadToJson(*w).dump()));
    KMX_ASSIGN_OR_RETURN(TxnResult r, store_.Commit(txn));
    if (r.succeeded) {
      if (observer_) observer_->OnMigrationOrdered(request.requested_by);
      return m;
    }
    // With a caller's id, a lost race may be our own order landing twice:
    // look again (the id's record answers it).
    if (request.id.empty()) break;
  }
  return ConflictError("workload \"" + workload + "\" changed; try again");
}

// ---- the policy's view ------------------------------------------------------

ClusterSnapshot Controller::Snapshot(const std::string& image) {
  ClusterSnapshot snap;
  snap.now_ms = clock_.WallMillis();
  std::lock_guard view_lock(view_mu_);
  std::lock_guard settled_lock(settled_mu_);
  snap.nodes.reserve(view_.nodes.size());
  for (const auto& [name, n] : view_.nodes) {
    PolicyNode p;
    p.name = name;
    p.ready = !n.not_ready_reason;  // live, but unfit for migrations (e.g. no CRIU)
    auto member = view_.members.find(name);
    p.cordoned = member != view_.members.end() && member->second.cordoned;
    p.cpu_capacity = n.cpu_capacity;
    p.speed = n.speed;
    double known = 0;
    for (const auto& [w, u] : n.workloads) known += u.cpu;
    p.background_cpu = std::max(0.0, n.cpu_used - known);
    p.memory_capacity_bytes = n.memory_capacity_bytes;
    p.memory_available_bytes = n.memory_available_bytes;
    p.psi_memory_some10 = n.psi_memory_some10;
    p.has_image = image.empty() || MayHoldImage(n, image);
    snap.nodes.push_back(std::move(p));
  }
  std::unordered_map<std::string_view, const NodeLoad*> node_of;
  node_of.reserve(view_.nodes.size());
  for (const auto& [name, n] : view_.nodes) node_of.emplace(name, &n);
  snap.workloads.reserve(view_.workloads.size());
  // settled_cpu_ and view_.workloads are both sorted by name: walk them together.
  auto settled_it = settled_cpu_.begin();
  for (const auto& [name, w] : view_.workloads) {
    while (settled_it != settled_cpu_.end() && settled_it->first < name)
      settled_it = settled_cpu_.erase(settled_it);  // workload gone
    const bool have_settled = settled_it != settled_cpu_.end() && settled_it->first == name;
    if (!Occupies(w.status.phase) || w.status.node.empty()) {
      if (have_settled) ++settled_it;
      continue;
    }
    PolicyWorkload p;
    p.name = name;
    p.node = w.status.node;
    p.created_ms = w.status.created_ms;
    p.started_ms = w.status.started_ms > 0 ? w.status.started_ms : snap.now_ms;
    p.migratable = w.spec.migratable;
    p.pinned = w.spec.pinned;
    p.migrating = !w.status.migration.empty();
    // CPU: the owner's measurement once settled (agents smooth their
    // samples, so a fresh arrival reads low for a while); before that, what
    // it used where it settled last, else its request (1 core if none).
    double measured = -1;
    if (auto n = node_of.find(p.node); n != node_of.end()) {
      if (auto u = n->second->workloads.find(name); u != n->second->workloads.end()) {
        measured = u->second.cpu;
        p.memory_bytes = u->second.memory_bytes;
      }
    }
    const bool settled = measured >= 0 && snap.now_ms - p.started_ms >= kSettleMs;
    if (settled) {
      p.cpu = measured;
      if (have_settled) {
        settled_it->second = measured;
      } else {
        settled_it = settled_cpu_.emplace_hint(settled_it, name, measured);
      }
      ++settled_it;
    } else if (have_settled) {
      p.cpu = std::max(measured, settled_it->second);
      ++settled_it;
    } else {
      p.cpu = std::max(measured, w.spec.cpus > 0 ? w.spec.cpus : 1.0);
    }
    if (p.memory_bytes == 0) p.memory_bytes = static_cast<uint64_t>(w.spec.memory_mib) << 20;
    snap.workloads.push_back(std::move(p));
  }
  settled_cpu_.erase(settled_it, settled_cpu_.end());
  for (const auto& [id, m] : view_.migrations) {
    if (api::IsFinal(m.phase)) continue;
    snap.in_flight.push_back({m.workload, m.source, m.target});
  }
  return snap;
}

// ---- API --------------------------------------------------------------------

api::WorkloadView Controller::DescribeWorkload(const WorkloadRecord& w) {
  api::WorkloadView v;
  v.workload = w;
  const int64_t now = clock_.WallMillis();
  v.age_seconds = w.status.created_ms > 0 ? (now - w.status.created_ms) / 1000.0 : 0.0;
  if (!w.status.node.empty()) {
    std::lock_guard lock(view_mu_);
    if (auto n = view_.nodes.find(w.status.node); n != view_.nodes.end()) {
      if (auto u = n->second.workloads.find(w.spec.name); u != n->second.workloads.end())
        v.usage = u->second;
    }
  }
  return v;
}

StatusOr<api::WorkloadView> Controller::CreateWorkload(const api::WorkloadSpec& spec) {
  KMX_RETURN_IF_ERROR(api::ValidateWorkloadSpec(spec));
  if (!spec.node.empty() && !NodeReady(spec.node) && !CachedMember(spec.node))
    return InvalidError("node: no node named \"" + spec.node + "\" in the cluster");
  if (spec.pinned && spec.node.empty())
    return InvalidError("pinned: a pinned workload needs \"node\"");
  WorkloadRecord w;
  w.spec = spec;
  w.status.phase = WorkloadPhase::kPending;
  w.status.created_ms = clock_.WallMillis();
  w.status.message = "waiting for placement";
  const std::string key = options_.keys.Workload(spec.name);
  Txn txn;
  txn.compares.push_back(Compare::Absent(key));
  txn.then_ops.push_back(TxnOp::Put(key, cluster::WorkloadToJson(w).dump()));
  KMX_ASSIGN_OR_RETURN(TxnResult r, store_.Commit(txn));
  if (!r.succeeded) return ConflictError("a workload named \"" + spec.name + "\" exists");
  return DescribeWorkload(w);
}

Status Controller::CheckImageHeld(const api::WorkloadSpec& spec) {
  // Only what the caches know for sure: every ready node (or the named one)
  // lists its images, and none of them holds this one.
  std::lock_guard lock(view_mu_);
  size_t asked = 0;
  for (const auto& [name, n] : view_.nodes) {
    if (!spec.node.empty() && name != spec.node) continue;
    if (MayHoldImage(n, spec.image)) return Status::Ok();
    ++asked;
  }
  if (asked == 0) return Status::Ok();  // no ready node (or the named one is NotReady)
  return InvalidError("image: " +
                      (spec.node.empty()
                           ? "none of the " + std::to_string(asked) + " ready nodes holds"
                           : "node " + spec.node + " does not hold") +
                      " image \"" + spec.image + "\"");
}

std::vector<api::WorkloadView> Controller::ListWorkloads() {
  std::vector<WorkloadRecord> records;
  {
    std::lock_guard lock(view_mu_);
    for (const auto& [name, w] : view_.workloads) records.push_back(w);
  }
  std::vector<api::WorkloadView> items;
  items.reserve(records.size());
  for (const auto& w : records) items.push_back(DescribeWorkload(w));
  return items;
}

StatusOr<api::WorkloadView> Controller::GetWorkload(const std::string& name) {
  KMX_RETURN_IF_ERROR(ValidateName(name));
  auto w = CachedWorkload(name);
  if (!w) return NotFoundError("no workload named \"" + name + "\"");
  return DescribeWorkload(*w);
}

Status Controller::DeleteWorkload(const std::string& name) {
  KMX_RETURN_IF_ERROR(ValidateName(name));
  KMX_ASSIGN_OR_RETURN(DeleteResult r, store_.Delete(options_.keys.Workload(name)));
  if (r.deleted == 0) return NotFoundError("no workload named \"" + name + "\"");
  // Its periodic checkpoint's record goes with it (the keeper deletes the
  // files; node-agent/checkpoint_keeper.h). A failure here is left to the
  // keeper's clean-up.
  if (auto c = store_.Delete(options_.keys.Checkpoint(name)); !c.ok()) {
    spdlog::warn("workload {} deleted, its checkpoint record not: {}", name, c.status().ToString());
  }
  return Status::Ok();
}

StatusOr<std::string> Controller::WorkloadAgentUrl(const std::string& name) {
  KMX_RETURN_IF_ERROR(ValidateName(name));
  auto w = CachedWorkload(name);
  if (!w) return NotFoundError("no workload named \"" + name + "\"");
  if (w->status.node.empty()) return ConflictError("workload \"" + name + "\" is not placed yet");
  auto n = CachedNode(w->status.node);
  if (!n) return RetryError("node " + w->status.node + " is NotReady");
  if (n->url.empty()) return FailedError("node " + w->status.node + " has no URL");
  return n->url;
}

api::NodeView Controller::DescribeNode(const std::string& name) {
  api::NodeView v;
  v.name = name;
  const int64_t now = clock_.WallMillis();
  std::lock_guard lock(view_mu_);
  auto member = view_.members.find(name);
  auto n = view_.nodes.find(name);
  const bool live = n != view_.nodes.end();
  v.ready = live && !n->second.not_ready_reason;
  v.cordoned = member != view_.members.end() && member->second.cordoned;
  if (member != view_.members.end() && !live)
    v.not_ready_seconds = (now - member->second.changed_ms) / 1000.0;
  if (live) {
    v.not_ready_reason = n->second.not_ready_reason;
    v.load = n->second;
    v.heartbeat_age_seconds = std::max<int64_t>(0, now - n->second.updated_ms) / 1000.0;
  }
  for (const auto& [w, rec] : view_.workloads) {
    if (rec.status.node == name) v.workloads.push_back(w);
  }
  return v;
}

std::vector<api::NodeView> Controller::ListNodes() {
  std::set<std::string> names;
  {
    std::lock_guard lock(view_mu_);
    for (const auto& [n, v] : view_.nodes) names.insert(n);
    for (const auto& [n, v] : view_.members) names.insert(n);
  }
  std::vector<api::NodeView> items;
  items.reserve(names.size());
  for (const auto& n : names) items.push_back(DescribeNode(n));
  return items;
}

StatusOr<api::NodeView> Controller::GetNode(const std::string& name) {
  KMX_RETURN_IF_ERROR(ValidateName(name));
  if (!CachedNode(name) && !CachedMember(name))
    return NotFoundError("no node named \"" + name + "\"");
  return DescribeNode(name);
}

StatusOr<api::Migration> Controller::RequestMigration(const api::MigrationRequest& request) {
  KMX_RETURN_IF_ERROR(api::ValidateMigrationRequest(request));
  const std::string& workload = request.workload;
  if (!request.id.empty()) {
    // A repeated idempotent order answers the migration it made, whatever
    // the workload's state is now.
    if (auto m = CachedMigration(request.id)) {
      if (m->workload != workload)
        return ConflictError("migration " + request.id + " exists for workload \"" + m->workload +
                             "\"");
      return *m;
    }
  }
  api::MigrationRequest order = request;
  auto w = CachedWorkload(workload);
  if (!w) return NotFoundError("no workload named \"" + workload + "\"");
  if (!w->spec.migratable) return ConflictError("workload \"" + workload + "\" is not migratable");
  if (w->spec.pinned) return ConflictError("workload \"" + workload + "\" is pinned");
  const std::string who = request.requested_by == api::kRequestedByUser
                              ? "requested through Kubernetes"
                              : "requested through the API";
  if (auto source = CachedNode(w->status.node); source && source->not_ready_reason)
    return ConflictError("node " + w->status.node + " cannot checkpoint: it is NotReady (" +
                         *source->not_ready_reason + ")");
  if (!order.target.empty()) {
    const std::string& target = order.target;
    if (!NodeReady(target)) {
      if (!CachedMember(target)) return NotFoundError("no node named \"" + target + "\"");
      return ConflictError("node " + target + " is NotReady");
    }
    if (auto t = CachedNode(target); t && t->not_ready_reason)
      return ConflictError("node " + target + " is NotReady (" + *t->not_ready_reason + ")");
    if (NodeCordoned(target)) return ConflictError("node " + target + " is cordoned");
    if (order.reason.empty()) order.reason = who + ": move to " + target;
  } else {
    ClusterSnapshot snap = Snapshot(w->spec.image);
    for (auto& n : snap.nodes) {
      if (n.name == w->status.node) n.cordoned = true;
    }
    PlacementRequest req;
    req.cpus = w->spec.cpus;
    req.memory_bytes = static_cast<uint64_t>(w->spec.memory_mib) << 20;
    auto chosen = Place(snap, req, random_);
    if (!chosen.ok()) return ConflictError("no node can take it now: " + chosen.status().message());
    order.target = *chosen;
    if (order.reason.empty())
      order.reason = who + ": the least loaded other node is " + order.target;
  }
  return Order(order, std::nullopt);
}

std::vector<api::Migration> Controller::ListMigrations() {
  std::vector<MigrationRecord> records;
  {
    std::lock_guard lock(view_mu_);
    for (const auto& [id, m] : view_.migrations) records.push_back(m);
  }
  std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
    return a.created_ms != b.created_ms ? a.created_ms < b.created_ms : a.id < b.id;
  });
  return records;
}

StatusOr<api::Migration> Controller::GetMigration(const std::string& id) {
  KMX_RETURN_IF_ERROR(ValidateName(id));
  auto m = CachedMigration(id);
  if (!m) return NotFoundError("no migration \"" + id + "\"");
  return *m;
}

api::DecisionsView Controller::Decisions() {
  ClusterSnapshot snap = Snapshot();
  const PolicyConfig config = ApplyPolicies(snap);
  BalanceResult result = Balance(snap, config, random_);
  api::DecisionsView d;
  for (const Decision& m : result.moves) d.moves.push_back(MoveOf(m));
  d.held_back = result.held_back;
  std::vector<double> l = NodeLoads(snap);
  for (size_t i = 0; i < snap.nodes.size() && i < l.size(); ++i) d.loads[snap.nodes[i].name] = l[i];
  d.in_flight = snap.in_flight.size();
  d.stability = config.stability;
  return d;
}

PolicyConfig Controller::ApplyPolicies(ClusterSnapshot& snap) const {
  PolicyConfig config = options_.policy;
  if (!policy_source_) return config;
  bool cluster_enabled = true;
  if (auto c = policy_source_->ForCluster()) {
    cluster_enabled = c->enabled.value_or(true);
    if (c->stability) config.stability = *c->stability;
    if (c->min_residency_ms) config.min_residency_ms = *c->min_residency_ms;
    if (c->max_per_node) config.max_per_node = *c->max_per_node;
    if (c->max_cluster) config.max_cluster = *c->max_cluster;
    if (c->low_memory_fraction) config.low_memory_fraction = *c->low_memory_fraction;
    if (c->memory_psi_threshold) config.memory_psi_threshold = *c->memory_psi_threshold;
  }
  for (PolicyWorkload& w : snap.workloads) {
    w.balance = cluster_enabled;
    auto p = policy_source_->ForWorkload(w.name);
    if (!p) continue;
    if (p->enabled) w.balance = *p->enabled;
    if (p->stability) w.stability = *p->stability;
    if (p->min_residency_ms) w.min_residency_ms = *p->min_residency_ms;
  }
  return config;
}

api::LeaderInfo Controller::Leader() {
  auto leader = election_.CurrentLeader();
  api::LeaderInfo l;
  l.identity = options_.identity;
  if (leader.ok()) l.leader = *leader;
  l.is_leader = IsLeader();
  l.ready = Ready();
  return l;
}

// ---- API: operator actions ---------------------------------------------------

StatusOr<api::Migration> Controller::CancelMigration(const std::string& id,
                                                     const std::string& cancelled_by) {
  KMX_RETURN_IF_ERROR(ValidateName(id));
  // The workload's name is in the migration record (never changed once
  // written); the decision reads both records again and commits over both.
  KMX_ASSIGN_OR_RETURN(GetResult mgot, store_.Get(options_.keys.Migration(id)));
  if (!mgot.kv) return NotFoundError("no migration \"" + id + "\"");
  auto m = ParseMigration(*mgot.kv);
  if (!m.ok()) return FailedError("migration record is damaged: " + m.status().message());
  // The cancel must land before the ownership moves: the source's transfer
  // of ownership compares this record too, so one of the two writes loses
  // (cluster/ownership.h).
  const int64_t now = clock_.WallMillis();
  auto done = ownership::Apply(
      store_, options_.keys, m->workload, id,
      [&](const ownership::Records& rec) {
        return ownership::Cancel(options_.keys, id, cancelled_by, now, rec);
      },
      kCasAttempts);
  if (!done.ok()) {
    if (done.status().code() == Code::kRetry &&
        done.status().message().find("kept changing") != std::string::npos) {
      return ConflictError("migration " + id + " keeps changing; try again");
    }
    return done.status();
  }
  if (!done->migration) return NotFoundError("no migration \"" + id + "\"");
  if (done->txn) {
    spdlog::info("migration {} of {}: cancel requested by {} (phase {})", id, m->workload,
                 cancelled_by, api::MigrationPhaseName(done->migration->phase));
  }
  return *done->migration;
}

StatusOr<api::NodeView> Controller::SetCordoned(const std::string& node, bool cordoned) {
  KMX_RETURN_IF_ERROR(ValidateName(node));
  const std::string key = options_.keys.Member(node);
  Status s = UpdateRecord<NodeMember>(store_, key, &cluster::NodeMemberFromJson,
                                      &cluster::NodeMemberToJson, std::nullopt,
                                      [&](NodeMember& m) -> StatusOr<bool> {
                                        if (m.cordoned == cordoned) return false;
                                        m.cordoned = cordoned;
                                        return true;
                                      });
  if (s.code() == Code::kNotFound) {
    // A live node the leader has not recorded yet: record it here.
    if (!NodeReady(node)) return NotFoundError("no node named \"" + node + "\"");
    NodeMember m;
    m.node = node;
    m.ready = true;
    m.changed_ms = clock_.WallMillis();
    m.cordoned = cordoned;
    Txn txn;
    txn.compares.push_back(Compare::Absent(key));
    txn.then_ops.push_back(TxnOp::Put(key, cluster::NodeMemberToJson(m).dump()));
    KMX_ASSIGN_OR_RETURN(TxnResult r, store_.Commit(txn));
    if (!r.succeeded) return ConflictError("node " + node + " changed; try again");
    s = Status::Ok();
  }
  KMX_RETURN_IF_ERROR(s);
  spdlog::info("node {} {}", node, cordoned ? "cordoned" : "uncordoned");
  api::NodeView v = DescribeNode(node);
  v.cordoned = cordoned;  // the cache may not have seen the write yet
  return v;
}

StatusOr<api::WorkloadView> Controller::UpdateSpec(
    const std::string& name, const std::function<StatusOr<bool>(WorkloadRecord&)>& mutate) {
  KMX_RETURN_IF_ERROR(ValidateName(name));
  WorkloadRecord after;
  Status s = UpdateWorkloadRecord(store_, options_.keys.Workload(name), std::nullopt,
                                  [&](WorkloadRecord& r) -> StatusOr<bool> {
                                    after = r;
                                    KMX_ASSIGN_OR_RETURN(bool write, mutate(r));
                                    after = r;
                                    return write;
                                  });
  if (s.code() == Code::kNotFound) return NotFoundError("no workload named \"" + name + "\"");
  KMX_RETURN_IF_ERROR(s);
  return DescribeWorkload(after);
}

StatusOr<api::WorkloadView> Controller::SetPinned(const std::string& workload, bool pinned) {
  return UpdateSpec(workload, [&](WorkloadRecord& r) -> StatusOr<bool> {
    if (r.spec.pinned == pinned) return false;
    if (pinned && r.status.node.empty())
      return ConflictError("workload \"" + workload + "\" is not placed yet");
    r.spec.pinned = pinned;
    return true;
  });
}

StatusOr<api::WorkloadView> Controller::SetMigratable(const std::string& workload,
                                                      bool migratable) {
  return UpdateSpec(workload, [&](WorkloadRecord& r) -> StatusOr<bool> {
    if (r.spec.migratable == migratable) return false;
    r.spec.migratable = migratable;
    return true;
  });
}

StatusOr<api::DrainReport> Controller::Drain(const std::string& node,
                                             const api::DrainRequest& request) {
  KMX_RETURN_IF_ERROR(ValidateName(node));
  KMX_RETURN_IF_ERROR(SetCordoned(node, true).status());

  std::vector<WorkloadRecord> here;
  {
    std::lock_guard lock(view_mu_);
    for (const auto& [name, w] : view_.workloads) {
      if (w.status.node == node && Occupies(w.status.phase)) here.push_back(w);
    }
  }
  ClusterSnapshot snap = Snapshot();
  for (auto& n : snap.nodes) {
    if (n.name == node) n.cordoned = true;
  }
  api::DrainReport report;
  report.node = node;
  report.cordoned = true;
  auto refuse = [&](const std::string& w, const std::string& why) {
    report.not_moved.push_back({w, why});
  };
  for (const WorkloadRecord& w : here) {
    const std::string& name = w.spec.name;
    if (!w.status.migration.empty()) {
      report.in_flight.push_back({name, w.status.migration});
      continue;
    }
    if (w.status.phase != WorkloadPhase::kRunning) {
      refuse(name, std::string(api::WorkloadPhaseName(w.status.phase)) +
                       ", not Running yet: drain again once it runs");
      continue;
    }
    if (!w.spec.migratable) {
      refuse(name, "not migratable (migratable=false)");
      continue;
    }
    if (w.spec.pinned && !request.include_pinned) {
      refuse(name, "pinned (unpin it, or drain with includePinned)");
      continue;
    }
    PlacementRequest req;
    req.cpus = w.spec.cpus;
    req.memory_bytes = static_cast<uint64_t>(w.spec.memory_mib) << 20;
    auto target = Place(snap, req, random_);
    if (!target.ok()) {
      refuse(name, "no node can take it: " + target.status().message());
      continue;
    }
    api::MigrationRequest order;
    order.workload = name;
    order.target = *target;
    order.reason = "drain of node " + node + ": " + *target + " can take it";
    order.requested_by = std::string(api::kRequestedByDrain);
    auto ordered = Order(order, std::nullopt);
    if (!ordered.ok()) {
      refuse(name, ordered.status().message());
      continue;
    }
    report.ordered.push_back({name, ordered->id, *target});
    // Later placements of this drain see it on its target already.
    for (auto& p : snap.workloads) {
      if (p.name == name) p.node = *target;
    }
  }
  spdlog::info("drain of {}: {} ordered, {} already moving, {} not moved", node,
               report.ordered.size(), report.in_flight.size(), report.not_moved.size());
  return report;
}

// ---- events -------------------------------------------------------------------

void Controller::PublishWorkloadEvents(const WorkloadRecord* before, const WorkloadRecord* after) {
  const int64_t now = clock_.WallMillis();
  if (after == nullptr) {
    if (before != nullptr) {
      events_.Publish(
          "workload.deleted", now,
          {{"workload", before->spec.name}, {"node", before->status.node}, {"message", "deleted"}});
    }
    return;
  }
  const WorkloadStatus& st = after->status;
  auto fields = [&](const std::string& message) {
    return json{{"workload", after->spec.name},
                {"node", st.node},
                {"phase", std::string(api::WorkloadPhaseName(st.phase))},
                {"message", message}};
  };
  if (before == nullptr) {
    events_.Publish("workload.created", now, fields("created from image " + after->spec.image));
    return;
  }
  const int64_t recoveries_before = before->status.recovery ? before->status.recovery->count : 0;
  if (before->status.node.empty() && !st.node.empty()) {
    events_.Publish("workload.placed", now, fields(st.message));
  } else if (st.recovery && st.recovery->count > recoveries_before) {
    // Placed again after its node was lost (controller/node_loss.h).
    json f = fields(st.message);
    f["lostNode"] = st.recovery->lost_node;
    events_.Publish("workload.recovered", now, std::move(f));
  } else if (before->status.phase != st.phase) {
    events_.Publish("workload.phase", now, fields(st.message));
  }
  if (before->spec.pinned != after->spec.pinned) {
    events_.Publish(after->spec.pinned ? "workload.pinned" : "workload.unpinned", now,
                    fields(after->spec.pinned ? "pinned to " + st.node : "unpinned"));
  }
}

void Controller::PublishMigrationEvents(const MigrationRecord* before,
                                        const MigrationRecord* after) {
  if (after == nullptr) return;  // records are kept; a delete is housekeeping
  const int64_t now = clock_.WallMillis();
  auto fields = [&](const std::string& message) {
    json j = {{"migration", after->id},
              {"workload", after->workload},
              {"source", after->source},
              {"target", after->target},
              {"phase", api::MigrationPhaseName(after->phase)},
              {"message", message}};
    return j;
  };
  if (before == nullptr) {
    json j = fields(after->reason);
    j["requestedBy"] = after->requested_by;
    events_.Publish("migration.created", now, std::move(j));
    if (after->phase == MigrationPhase::kPending) return;
  }
  if (before != nullptr && before->cancel_requested_ms == 0 && after->cancel_requested_ms > 0) {
    events_.Publish("migration.cancelling", now,
                    fields("cancel requested by " + after->cancelled_by));
  }
  if (before == nullptr || before->phase != after->phase) {
    json j = fields(after->error);
    if (api::IsFinal(after->phase) && after->report)
      j["downtimeSeconds"] = after->report->timings.downtime;
    // Which fault it met (known from Resolving on) and, at its end, how it
    // ended and who decided.
    if (after->fault) j["fault"] = MigrationFaultToJson(*after->fault);
    if (api::IsFinal(after->phase) && after->resolution)
      j["resolution"] = MigrationResolutionToJson(*after->resolution);
    events_.Publish("migration.phase", now, std::move(j));
  }
}

void Controller::PublishMemberEvents(const NodeMember* before, const NodeMember* after) {
  if (after == nullptr) return;
  const int64_t now = clock_.WallMillis();
  auto publish = [&](const std::string& type, const std::string& message) {
    events_.Publish(type, now, {{"node", after->node}, {"message", message}});
  };
  if (before == nullptr) publish("node.joined", "joined the cluster");
  if ((before == nullptr ? true : before->ready) != after->ready) {
    publish(after->ready ? "node.ready" : "node.notready",
            after->ready ? "Ready" : "NotReady: its agent's lease expired");
  }
  if ((before != nullptr && before->cordoned) != after->cordoned) {
    publish(after->cordoned ? "node.cordoned" : "node.uncordoned",
            after->cordoned ? "takes no arrivals" : "takes arrivals again");
  }
}

}  // namespace kmosix::controller
