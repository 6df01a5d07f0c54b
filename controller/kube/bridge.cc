#include "controller/kube/bridge.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

namespace kmosix::bridge {
namespace {

using nlohmann::json;

constexpr char kAnnotationNodeName[] = "kmosix.io/observed-node-name";

std::string KeyOf(const std::string& ns, const std::string& name) { return ns + "/" + name; }

// The condition reason of a workload the controller refused: the field its
// message starts with names what is missing in the cluster.
std::string RefusalReason(const Status& s) {
  const std::string& m = s.message();
  if (m.rfind("image:", 0) == 0) return "ImageNotFound";
  if (m.rfind("node:", 0) == 0) return "NodeNotFound";
  return "Invalid";
}

// "mw/ns/name" -> {"ns", "name"}.
std::pair<std::string, std::string> SplitKey(const std::string& rest) {
  auto slash = rest.find('/');
  if (slash == std::string::npos) return {"", rest};
  return {rest.substr(0, slash), rest.substr(slash + 1)};
}

const json& StatusOf(const json& object) {
  static const json kEmpty = json::object();
  auto it = object.find("status");
  return it != object.end() && it->is_object() ? *it : kEmpty;
}

std::string Annotation(const json& object, const std::string& key) {
  const json* a = nullptr;
  if (auto m = object.find("metadata"); m != object.end() && m->is_object())
    if (auto it = m->find("annotations"); it != m->end() && it->is_object()) a = &*it;
  if (!a) return "";
  auto v = a->find(key);
  return v != a->end() && v->is_string() ? v->get<std::string>() : "";
}

// Status equality that ignores nothing: MergeConditions keeps the times of
// unchanged conditions, so an unchanged world yields an identical status.
bool SameStatus(const json& object, const json& status) { return StatusOf(object) == status; }

std::string Downtime(const api::Migration& m) {
  if (!m.report || m.report->timings.downtime <= 0) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, ", downtime %.3f s", m.report->timings.downtime);
  return buf;
}

}  // namespace

Bridge::Bridge(kube::Client& client, controller::Controller& controller, Clock& clock,
               Random& random, BridgeOptions options)
    : client_(client),
      controller_(controller),
      clock_(clock),
      random_(random),
      options_(std::move(options)),
      queue_(clock, random),
      recorder_(client, clock, random, options_.identity) {}

Bridge::~Bridge() { Stop(); }

void Bridge::Start() {
  if (started_.exchange(true)) return;
  link_->bridge = this;
  controller_.SetPolicySource(link_);
  controller_.AddChangeListener([link = link_](char kind, const std::string& name) {
    std::lock_guard lock(link->mu);
    if (link->bridge) link->bridge->OnControllerChange(kind, name);
  });
  workloads_ = std::make_unique<kube::Informer>(
      client_, kube::MigratableWorkloads(), clock_, random_,
      [this](const std::string& key, const json* obj) { OnWorkloadObject(key, obj); });
  migrations_ = std::make_unique<kube::Informer>(
      client_, kube::Migrations(), clock_, random_,
      [this](const std::string& key, const json* obj) { OnMigrationObject(key, obj); });
  policies_ = std::make_unique<kube::Informer>(
      client_, kube::MigrationPolicies(), clock_, random_,
      [this](const std::string& key, const json*) { OnPolicyObject(key); });
  recorder_.Start();
  workloads_->Start();
  migrations_->Start();
  policies_->Start();
  worker_ = std::thread([this] { Run(); });
}

void Bridge::Stop() {
  {
    std::lock_guard lock(link_->mu);
    link_->bridge = nullptr;
  }
  if (stop_.exchange(true)) return;
  queue_.ShutDown();
  if (worker_.joinable()) worker_.join();
  if (workloads_) workloads_->Stop();
  if (migrations_) migrations_->Stop();
  if (policies_) policies_->Stop();
  recorder_.Stop();
}

bool Bridge::Synced() const {
  return workloads_ && migrations_ && policies_ && workloads_->HasSynced() &&
         migrations_->HasSynced() && policies_->HasSynced();
}

void Bridge::OnWorkloadObject(const std::string& key, const json* object) {
  auto [ns, name] = SplitKey(key);
  {
    std::lock_guard lock(mu_);
    const std::string wname = WorkloadNameFor(ns, name);
    if (!object) {
      workloads_by_name_.erase(wname);
      stopping_.erase(wname);
    } else {
      KnownWorkload& w = workloads_by_name_[wname];
      w.key = "mw/" + key;
      auto meta = DecodeMeta(*object);
      w.labels = meta.ok() ? meta->labels : std::map<std::string, std::string>{};
    }
  }
  queue_.Add("mw/" + key);
}

void Bridge::OnMigrationObject(const std::string& key, const json* object) {
  if (object) {
    auto meta = DecodeMeta(*object);
    if (meta.ok()) {
      auto label = meta->labels.find(kLabelMigrationId);
      const std::string id =
          label != meta->labels.end() ? label->second : MigrationIdFor(meta->uid);
      std::lock_guard lock(mu_);
      migration_keys_[id] = "mig/" + key;
      migration_ids_[key] = id;
    }
    // A finished migration may push an older one of its workload out.
    if (auto spec = DecodeMigration(*object); spec.ok() && IsFinalMigrationStatus(*object))
      queue_.Add("trim/" + SplitKey(key).first + "/" + spec->workload);
  } else {
    std::lock_guard lock(mu_);
    if (auto it = migration_ids_.find(key); it != migration_ids_.end()) {
      migration_keys_.erase(it->second);
      migration_ids_.erase(it);
    }
  }
  queue_.Add("mig/" + key);
}

void Bridge::OnPolicyObject(const std::string& key) {
  // Decoded once per change: the balancer asks for every workload each round.
  std::vector<MigrationPolicy> decoded;
  for (const json& o : policies_->List())  // sorted by name
    if (auto p = DecodeMigrationPolicy(o); p.ok()) decoded.push_back(std::move(*p));
  {
    std::lock_guard lock(mu_);
    policies_by_name_ = std::move(decoded);
  }
  queue_.Add("mpol/" + key);
}

void Bridge::OnControllerChange(char kind, const std::string& name) {
  std::lock_guard lock(mu_);
  if (kind == 'w') {
    if (auto it = workloads_by_name_.find(name); it != workloads_by_name_.end())
      queue_.Add(it->second.key);
  } else if (kind == 'm') {
    queue_.Add("m/" + name);
    if (auto it = migration_keys_.find(name); it != migration_keys_.end()) queue_.Add(it->second);
  } else if (kind == 'n') {
    queue_.Add("node/" + name);
  }
}

void Bridge::EnqueueAll() {
  for (const json& o : workloads_->List()) queue_.Add("mw/" + kube::Informer::KeyOf(o));
  for (const json& o : migrations_->List()) queue_.Add("mig/" + kube::Informer::KeyOf(o));
  for (const json& o : policies_->List()) queue_.Add("mpol/" + kube::Informer::KeyOf(o));
  // Finished records were mirrored (or skipped) when they changed, and the
  // controller reports every record once when it starts: only those in
  // flight need another look.
  for (const api::Migration& m : controller_.ListMigrations())
    if (!api::IsFinal(m.phase)) queue_.Add("m/" + m.id);
  for (const api::NodeView& n : controller_.ListNodes())
    if (n.not_ready_reason) queue_.Add("node/" + n.name);
  queue_.Add("orphans");
}

void Bridge::Run() {
  cluster::RunLeaderWorker(
      queue_, clock_, stop_,
      {.name = "kube bridge",
       .lead = [this] { return controller_.IsLeader() && controller_.Ready() && Synced(); },
       .enqueue_all = [this] { EnqueueAll(); },
       .reconcile = [this](const std::string& key) { return Reconcile(key); },
       .resync = options_.resync});
}

Status Bridge::Reconcile(const std::string& key) {
  if (key == "orphans") return CollectOrphans();
  const auto slash = key.find('/');
  const std::string kind = key.substr(0, slash);
  const std::string rest = key.substr(slash + 1);
  if (kind == "m") return MirrorMigration(rest);
  if (kind == "node") return ReconcileNode(rest);
  if (kind == "mpol") return ReconcilePolicy(rest);
  auto [ns, name] = SplitKey(rest);
  if (kind == "mw") return ReconcileWorkload(ns, name);
  if (kind == "mig") return ReconcileMigration(ns, name);
  if (kind == "trim") return TrimMigrations(ns, name);
  return Status::Ok();
}

// ---- Nodes ---------------------------------------------------------------------

Status Bridge::ReconcileNode(const std::string& name) {
  auto v = controller_.GetNode(name);
  if (!v.ok() && v.status().code() != Code::kNotFound) return v.status();
  const std::optional<std::string> reason = v.ok() ? v->not_ready_reason : std::nullopt;
  auto [it, first] = node_reasons_.try_emplace(name, std::nullopt);
  const std::optional<std::string> before = it->second;
  if (!v.ok()) {
    node_reasons_.erase(it);  // gone: nothing to say about it
    return Status::Ok();
  }
  if (!first && before == reason) return Status::Ok();
  it->second = reason;
  // Events on a Node live in "default"; kubelet's own name the node by its
  // name as uid too, which `kubectl describe node` matches.
  const json node = {{"metadata", {{"name", name}, {"uid", name}}}};
  if (reason) {
    Record(kube::Nodes(), node, "Warning", "MigrationsUnavailable",
           "kmosix: this node takes part in no migration: " + *reason);
  } else if (before) {
    Record(kube::Nodes(), node, "Normal", "MigrationsAvailable",
           "kmosix: this node takes part in migrations again");
  }
  return Status::Ok();
}

// ---- MigratableWorkload -------------------------------------------------------

Status Bridge::ReconcileWorkload(const std::string& ns, const std::string& name) {
  const kube::Resource res = kube::MigratableWorkloads();
  std::optional<json> object = workloads_->Get(KeyOf(ns, name));
  const std::string wname = WorkloadNameFor(ns, name);
  if (!object) return Status::Ok();  // gone: CollectOrphans stops what it left
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(*object));
  auto existing = controller_.GetWorkload(wname);
  if (!existing.ok() && existing.status().code() != Code::kNotFound) return existing.status();
  const bool ours = existing.ok() && existing->workload.spec.origin &&
                    existing->workload.spec.origin->uid == meta.uid;

  if (meta.deleting) {
    if (!meta.HasFinalizer(kFinalizer)) return Status::Ok();
    // The name is another's (a REST workload or an older object's): this
    // delete does not stop it.
    if (existing.ok() && !ours) return ReleaseDeleted(res, *object, wname);
    Stopping stopping;
    {
      std::lock_guard lock(mu_);
      auto [it, first] = stopping_.try_emplace(wname);
      if (first) {
        it->second.since_ms = clock_.WallMillis();
        // Where it runs; any node while a migration may have put a copy elsewhere.
        if (ours && existing->workload.status.migration.empty() &&
            !existing->workload.status.node.empty())
          it->second.nodes = {existing->workload.status.node};
      }
      stopping = it->second;
    }
    if (ours) {
      Status d = controller_.DeleteWorkload(wname);
      if (!d.ok() && d.code() != Code::kNotFound) return d;
      Record(res, *object, "Normal", "Stopping",
             "workload " + wname + " deleted; its node stops it");
    }
    // Let go once no node lists it in a load sampled after the delete.
    for (const api::NodeView& n : controller_.ListNodes()) {
      const bool may_hold = stopping.nodes.empty() || stopping.nodes.count(n.name) > 0;
      const bool listed = n.load && n.load->workloads.count(wname) > 0;
      // n.load is there while the node's agent holds its lease (ready or not).
      const bool stale = may_hold && n.load && n.load->updated_ms < stopping.since_ms;
      if (listed || stale) {
        queue_.AddAfter("mw/" + KeyOf(ns, name), options_.wait_poll);
        return Status::Ok();
      }
    }
    return ReleaseDeleted(res, *object, wname);
  }

  if (!meta.HasFinalizer(kFinalizer)) {
    return PatchMetadata(res, *object).status();  // the update re-queues the key
  }

  Status deferred;  // a wait to retry after the status is written
  WorkloadStatusInput in;
  in.generation = meta.generation;
  in.workload = wname;
  auto spec = DecodeMigratableWorkload(*object);
  if (!spec.ok()) {
    in.rejected = Condition{"Accepted", "False", "InvalidSpec", spec.status().message()};
  } else if (existing.ok() && !ours) {
    const auto& origin = existing->workload.spec.origin;
    if (origin && origin->kind == kOriginKind && origin->namespace_ == ns && origin->name == name) {
      // The previous object of this name is still being stopped.
      queue_.AddAfter("mw/" + KeyOf(ns, name), options_.wait_poll);
      in.rejected = Condition{"Accepted", "False", "PreviousStopping",
                              "the previous object of this name is still stopping"};
    } else {
      in.rejected = Condition{
          "Accepted", "False", "NameInUse",
          "kmosix already has a workload named " + wname + " that this object does not own"};
    }
  } else if (!existing.ok()) {
    // An image no node holds is refused here (REST workloads wait Pending).
    Status held = controller_.CheckImageHeld(*spec);
    StatusOr<api::WorkloadView> created =
        held.ok() ? controller_.CreateWorkload(*spec) : StatusOr<api::WorkloadView>(held);
    if (created.ok()) {
      Record(res, *object, "Normal", "Created", "kmosix workload " + wname + " created");
      existing = created;
      // Placement honours spec.nodeName: it is observed from now on.
      if (!spec->node.empty()) {
        KMX_ASSIGN_OR_RETURN(object,
                             PatchMetadata(res, *object, {}, {{kAnnotationNodeName, spec->node}}));
      }
    } else if (created.status().code() == Code::kInvalid) {
      in.rejected = Condition{"Accepted", "False", RefusalReason(created.status()),
                              created.status().message()};
      // Level-based: the image may arrive on a node (the agents list theirs
      // every sample); look again soon rather than at the next resync.
      if (!held.ok()) queue_.AddAfter("mw/" + KeyOf(ns, name), 4 * options_.wait_poll);
    } else {
      return created.status();
    }
  } else {
    const api::WorkloadSpec& have = existing->workload.spec;
    if (have.pinned != spec->pinned) {
      auto r = controller_.SetPinned(wname, spec->pinned);
      if (!r.ok()) return r.status();
      existing = r;
    }
    if (have.migratable != spec->migratable) {
      auto r = controller_.SetMigratable(wname, spec->migratable);
      if (!r.ok()) return r.status();
      existing = r;
    }
    // spec.nodeName changed since the bridge last acted on it: move there.
    const std::string observed = Annotation(*object, kAnnotationNodeName);
    if (spec->node != observed) {
      const api::WorkloadStatus& st = existing->workload.status;
      const bool there = st.node == spec->node || (st.node.empty() && have.node == spec->node);
      if (!spec->node.empty() && !there) {
        api::MigrationRequest req;
        req.workload = wname;
        req.target = spec->node;
        req.requested_by = std::string(api::kRequestedByUser);
        req.reason =
            "spec.nodeName of MigratableWorkload " + ns + "/" + name + " set to " + spec->node;
        req.id = MigrationIdForMove(meta.uid, meta.generation);
        auto m = controller_.RequestMigration(req);
        if (m.ok()) {
          Record(res, *object, "Normal", "Migrating",
                 "spec.nodeName changed: migration " + m->id + " to " + spec->node);
        } else if (m.status().code() == Code::kInvalid || m.status().code() == Code::kNotFound) {
          in.rejected = Condition{"Accepted", "False", "InvalidNodeName", m.status().message()};
        } else {
          // Busy, pinned, target not ready: said in status, retried with backoff.
          in.migration_note = "cannot move to " + spec->node + " yet: " + m.status().message();
          deferred = RetryError(in.migration_note);
        }
      }
      if (!in.rejected && deferred.ok()) {
        KMX_ASSIGN_OR_RETURN(object,
                             PatchMetadata(res, *object, {}, {{kAnnotationNodeName, spec->node}}));
      }
    }
  }
  if (existing.ok() && (!in.rejected || in.rejected->reason != "NameInUse")) in.view = *existing;
  json status = MigratableWorkloadStatus(StatusOf(*object), in, clock_.WallMillis());
  // Events on transitions from the status the object had, recorded once the
  // new status is written (a conflicting write is retried, not re-announced).
  const json& old = StatusOf(*object);
  std::vector<PendingEvent> events;
  if (in.view) {
    const std::string node = in.view->workload.status.node;
    const std::string phase(api::WorkloadPhaseName(in.view->workload.status.phase));
    const std::string was = old.value("node", "");
    // A node-loss recovery the object's status has not shown yet.
    const auto& recovery = in.view->workload.status.recovery;
    int64_t old_count = 0;
    if (const auto r = old.find("recovery"); r != old.end() && r->is_object()) {
      if (const auto c = r->find("count"); c != r->end() && c->is_number_integer())
        old_count = c->get<int64_t>();
    }
    const bool recovered = recovery && recovery->count > old_count;
    if (recovered) {
      events.push_back({res, *object, "Warning", "Recovered", in.view->workload.status.message});
    } else if (!node.empty() && was != node) {
      events.push_back(
          {res, *object, "Normal", was.empty() ? "Placed" : "Moved",
           was.empty() ? "placed on " + node : "now runs on " + node + " (was " + was + ")"});
    }
    if (old.value("phase", "") != phase && (phase == "Failed" || phase == "Lost"))
      events.push_back({res, *object, "Warning", phase, in.view->workload.status.message});
  }
  if (in.rejected && old.value("message", "") != in.rejected->message)
    events.push_back({res, *object, "Warning", in.rejected->reason, in.rejected->message});
  KMX_RETURN_IF_ERROR(WriteStatus(res, *object, std::move(status), events));
  return deferred;
}

// ---- Migration ------------------------------------------------------------------

Status Bridge::ReconcileMigration(const std::string& ns, const std::string& name) {
  const kube::Resource res = kube::Migrations();
  std::optional<json> object = migrations_->Get(KeyOf(ns, name));
  if (!object) return Status::Ok();
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(*object));
  auto label = meta.labels.find(kLabelMigrationId);
  const bool mirrored = label != meta.labels.end();
  const std::string id = mirrored ? label->second : MigrationIdFor(meta.uid);
  auto record = controller_.GetMigration(id);
  if (!record.ok() && record.status().code() != Code::kNotFound) return record.status();

  if (meta.deleting) {
    if (!meta.HasFinalizer(kFinalizer)) return Status::Ok();
    if (record.ok() && !api::IsFinal(record->phase)) {
      if (record->cancel_requested_ms == 0) {
        auto c = controller_.CancelMigration(id, "user");
        if (c.ok()) {
          Record(res, *object, "Normal", "Cancelling",
                 "deleted before its commit point: rolling back");
        } else if (c.status().code() != Code::kConflict) {
          return c.status();
        }
        // kConflict: past its commit point; the delete waits for the end.
      }
      queue_.AddAfter("mig/" + KeyOf(ns, name), options_.wait_poll);
      return Status::Ok();
    }
    return RemoveFinalizer(res, *object);
  }

  auto spec = DecodeMigration(*object);
  if (!meta.HasFinalizer(kFinalizer) || (spec.ok() && !meta.labels.count(kLabelWorkload))) {
    std::map<std::string, std::string> labels;
    if (spec.ok()) labels[kLabelWorkload] = spec->workload;
    if (!meta.labels.count(kLabelRequestedBy)) labels[kLabelRequestedBy] = "user";
    return PatchMetadata(res, *object, labels).status();
  }
  const json& old = StatusOf(*object);
  if (!record.ok()) {
    if (IsFinalMigrationStatus(*object)) return Status::Ok();  // refused before, or record trimmed
    if (mirrored) return Status::Ok();  // its record is gone; nothing to mirror
    // Ordered once already (its status names the id) and its record since
    // removed by the leader's retention: never order it a second time.
    if (old.value("id", "") == id) return Status::Ok();
    if (!spec.ok())
      return WriteStatus(res, *object,
                         MigrationRefusedStatus(old, meta.generation, "InvalidSpec",
                                                spec.status().message(), clock_.WallMillis()));
    std::optional<json> mw = workloads_->Get(KeyOf(ns, spec->workload));
    if (!mw)
      return WriteStatus(
          res, *object,
          MigrationRefusedStatus(old, meta.generation, "WorkloadNotFound",
                                 "no MigratableWorkload " + spec->workload + " in namespace " + ns,
                                 clock_.WallMillis()));
    api::MigrationRequest req;
    req.workload = WorkloadNameFor(ns, spec->workload);
    req.target = spec->target_node;
    req.requested_by = std::string(api::kRequestedByUser);
    req.reason = "Migration " + ns + "/" + name + " applied" +
                 (spec->target_node.empty() ? "" : ": move to " + spec->target_node);
    req.id = id;
    auto ordered = controller_.RequestMigration(req);
    if (!ordered.ok()) {
      const Code code = ordered.status().code();
      if (code == Code::kRetry) return ordered.status();
      const std::string reason = code == Code::kNotFound  ? "NotFound"
                                 : code == Code::kInvalid ? "Invalid"
                                                          : "Refused";
      return WriteStatus(res, *object,
                         MigrationRefusedStatus(old, meta.generation, reason,
                                                ordered.status().message(), clock_.WallMillis()),
                         {{res, *object, "Warning", reason, ordered.status().message()}});
    }
    Record(res, *object, "Normal", "Ordered",
           "migration " + ordered->id + ": " + ordered->source + " -> " + ordered->target);
    record = ordered;
  }
  json status = MigrationStatus(old, meta.generation, *record, clock_.WallMillis());
  std::vector<PendingEvent> events;
  if (old.value("phase", "") != status.value("phase", "") && api::IsFinal(record->phase)) {
    const bool ok = record->phase == api::MigrationPhase::kSucceeded;
    const std::string msg =
        ok ? "moved " + record->source + " -> " + record->target + Downtime(*record)
           : std::string(api::MigrationPhaseName(record->phase)) + ": " + record->error;
    events.push_back({res, *object, ok ? "Normal" : "Warning",
                      std::string(api::MigrationPhaseName(record->phase)), msg});
    if (spec.ok())
      if (std::optional<json> mw = workloads_->Get(KeyOf(ns, spec->workload)))
        events.push_back({kube::MigratableWorkloads(), *mw, ok ? "Normal" : "Warning",
                          ok ? "Migrated" : "MigrationFailed",
                          "migration " + record->id + ": " + msg});
  }
  return WriteStatus(res, *object, std::move(status), events);
}

Status Bridge::MirrorMigration(const std::string& id) {
  auto m = controller_.GetMigration(id);
  if (!m.ok()) return m.status().code() == Code::kNotFound ? Status::Ok() : m.status();
  if (m->requested_by == api::kRequestedByUser) return Status::Ok();  // it came from an object
  auto w = controller_.GetWorkload(m->workload);
  if (!w.ok()) return w.status().code() == Code::kNotFound ? Status::Ok() : w.status();
  const auto& origin = w->workload.spec.origin;
  if (!origin || origin->kind != kOriginKind) return Status::Ok();  // a REST workload
  if (migrations_->Get(KeyOf(origin->namespace_, id))) return Status::Ok();
  // Only mirror what happened while the object existed, and not what was
  // already trimmed: a finished record older than the kept ones stays out.
  if (api::IsFinal(m->phase)) {
    size_t newer = 0;
    for (const api::Migration& other : controller_.ListMigrations())
      if (other.workload == m->workload && api::IsFinal(other.phase) &&
          other.created_ms > m->created_ms)
        ++newer;
    if (newer >= options_.keep_finished) return Status::Ok();
  }
  auto created =
      client_.Create(kube::Migrations(), origin->namespace_, MirrorMigrationObject(*m, *origin));
  if (!created.ok() && created.status().code() != Code::kConflict) return created.status();
  return Status::Ok();
}

Status Bridge::TrimMigrations(const std::string& ns, const std::string& workload) {
  struct Finished {
    std::string completion;
    json object;
  };
  std::vector<Finished> finished;
  for (const json& o : migrations_->List()) {
    auto meta = DecodeMeta(o);
    if (!meta.ok() || meta->namespace_ != ns || meta->deleting) continue;
    auto w = meta->labels.find(kLabelWorkload);
    if (w == meta->labels.end() || w->second != workload || !IsFinalMigrationStatus(o)) continue;
    finished.push_back({StatusOf(o).value("completionTime", "") + meta->creation_timestamp, o});
  }
  if (finished.size() <= options_.keep_finished) return Status::Ok();
  std::sort(finished.begin(), finished.end(),
            [](const Finished& a, const Finished& b) { return a.completion < b.completion; });
  for (size_t i = 0; i + options_.keep_finished < finished.size(); ++i) {
    auto meta = DecodeMeta(finished[i].object);
    Status d = client_.Delete(kube::Migrations(), ns, meta->name, meta->uid);
    if (!d.ok() && d.code() != Code::kNotFound) return d;
  }
  return Status::Ok();
}

Status Bridge::CollectOrphans() {
  // Workloads mirrored from objects that no longer exist (deleted while the
  // finalizer was forced away, or re-created with a new UID) are stopped.
  for (const api::WorkloadView& v : controller_.ListWorkloads()) {
    const auto& origin = v.workload.spec.origin;
    if (!origin || origin->kind != kOriginKind) continue;
    std::optional<json> object = workloads_->Get(KeyOf(origin->namespace_, origin->name));
    std::string uid;
    if (object)
      if (auto meta = DecodeMeta(*object); meta.ok()) uid = meta->uid;
    if (uid == origin->uid) continue;
    spdlog::info("kube bridge: stopping workload {}: its MigratableWorkload {}/{} (uid {}) is gone",
                 v.workload.spec.name, origin->namespace_, origin->name, origin->uid);
    Status d = controller_.DeleteWorkload(v.workload.spec.name);
    if (!d.ok() && d.code() != Code::kNotFound) return d;
    if (object) queue_.Add("mw/" + KeyOf(origin->namespace_, origin->name));
  }
  return Status::Ok();
}

// ---- MigrationPolicy ---------------------------------------------------------------

Status Bridge::ReconcilePolicy(const std::string& name) {
  std::optional<json> object = policies_->Get(name);
  if (!object) return Status::Ok();
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(*object));
  auto policy = DecodeMigrationPolicy(*object);
  int64_t matched = 0;
  if (policy.ok())
    for (const json& o : workloads_->List())
      if (auto m = DecodeMeta(o); m.ok() && policy->selector.Matches(m->labels)) ++matched;
  return WriteStatus(kube::MigrationPolicies(), *object,
                     MigrationPolicyStatus(StatusOf(*object), meta.generation,
                                           policy.ok() ? Status::Ok() : policy.status(), matched,
                                           clock_.WallMillis()));
}

// ---- writes ------------------------------------------------------------------------

StatusOr<json> Bridge::PatchMetadata(const kube::Resource& r, const json& object,
                                     const std::map<std::string, std::string>& labels,
                                     const std::map<std::string, std::string>& annotations) {
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(object));
  json finalizers = json::array();
  for (const auto& f : meta.finalizers) finalizers.push_back(f);
  if (!meta.HasFinalizer(kFinalizer)) finalizers.push_back(kFinalizer);
  json patch_meta = {{"resourceVersion", meta.resource_version}, {"finalizers", finalizers}};
  if (!labels.empty()) patch_meta["labels"] = labels;
  if (!annotations.empty()) patch_meta["annotations"] = annotations;
  return client_.MergePatch(r, meta.namespace_, meta.name, {{"metadata", patch_meta}});
}

Status Bridge::ReleaseDeleted(const kube::Resource& r, const json& object,
                              const std::string& wname) {
  KMX_RETURN_IF_ERROR(RemoveFinalizer(r, object));
  std::lock_guard lock(mu_);
  stopping_.erase(wname);
  return Status::Ok();
}

Status Bridge::RemoveFinalizer(const kube::Resource& r, const json& object) {
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(object));
  json finalizers = json::array();
  for (const auto& f : meta.finalizers)
    if (f != kFinalizer) finalizers.push_back(f);
  auto r2 = client_.MergePatch(
      r, meta.namespace_, meta.name,
      {{"metadata", {{"resourceVersion", meta.resource_version}, {"finalizers", finalizers}}}});
  if (!r2.ok() && r2.status().code() == Code::kNotFound) return Status::Ok();
  return r2.ok() ? Status::Ok() : r2.status();
}

Status Bridge::WriteStatus(const kube::Resource& r, const json& object, json status,
                           const std::vector<PendingEvent>& events) {
  if (SameStatus(object, status)) return Status::Ok();
  json updated = object;
  updated["status"] = std::move(status);
  auto w = client_.UpdateStatus(r, updated["metadata"].value("namespace", ""), updated);
  if (!w.ok() && w.status().code() == Code::kNotFound) return Status::Ok();
  if (!w.ok()) return w.status();
  for (const auto& e : events) Record(e.resource, e.object, e.type, e.reason, e.message);
  return Status::Ok();
}

void Bridge::Record(const kube::Resource& r, const json& object, const std::string& type,
                    const std::string& reason, const std::string& message) {
  recorder_.Record(r, object, type, reason, message);
}

std::optional<api::PolicySettings> Bridge::ForWorkload(const std::string& workload) const {
  std::lock_guard lock(mu_);
  auto w = workloads_by_name_.find(workload);
  if (w == workloads_by_name_.end()) return std::nullopt;
  const MigrationPolicy* best = nullptr;
  for (const MigrationPolicy& p : policies_by_name_)  // by name: ties go to the first
    if (p.selector.Matches(w->second.labels) &&
        (!best || p.selector.Terms() > best->selector.Terms()))
      best = &p;
  if (!best) return std::nullopt;
  return best->settings;
}

std::optional<api::PolicySettings> Bridge::Link::ForWorkload(const std::string& w) const {
  std::lock_guard lock(mu);
  return bridge ? bridge->ForWorkload(w) : std::nullopt;
}

std::optional<api::PolicySettings> Bridge::Link::ForCluster() const {
  std::lock_guard lock(mu);
  return bridge ? bridge->ForCluster() : std::nullopt;
}

std::optional<api::PolicySettings> Bridge::ForCluster() const {
  std::lock_guard lock(mu_);
  for (const MigrationPolicy& p : policies_by_name_)
    if (p.selector.Terms() == 0) return p.settings;
  return std::nullopt;
}

}  // namespace kmosix::bridge
