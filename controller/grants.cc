#include "controller/grants.h"

#include <spdlog/spdlog.h>

#include <vector>

namespace kmosix::controller {
namespace {

using api::WorkloadPhase;

// Phases in which status.node has something to write.
bool OwnerWrites(WorkloadPhase p) {
  return p != WorkloadPhase::kPending && p != WorkloadPhase::kFailed && p != WorkloadPhase::kExited;
}

// The migration record `w` names, if it is one of this workload.
const api::Migration* NamedMigration(const api::Workload& w,
                                     const std::map<std::string, api::Migration>& migrations) {
  if (w.status.migration.empty()) return nullptr;
  auto it = migrations.find(w.status.migration);
  if (it == migrations.end() || it->second.workload != w.spec.name) return nullptr;
  return &it->second;
}

void Add(NodeGrants& out, const std::string& node, const std::string& key) {
  if (!node.empty()) out[node].insert(key);
}

}  // namespace

NodeGrants DesiredGrants(const cluster::KeyLayout& keys,
                         const std::map<std::string, api::Workload>& workloads,
                         const std::map<std::string, api::Migration>& migrations) {
  NodeGrants out;
  for (const auto& [name, w] : workloads) {
    const std::string key = keys.Workload(name);
    if (OwnerWrites(w.status.phase)) Add(out, w.status.node, key);
    // restartPolicy FromCheckpoint: the owner records its periodic checkpoints.
    if (w.spec.restart_policy == api::RestartPolicy::kFromCheckpoint &&
        w.status.phase == api::WorkloadPhase::kRunning && !w.status.node.empty()) {
      Add(out, w.status.node, keys.Checkpoint(name));
    }
    if (const api::Migration* m = NamedMigration(w, migrations)) {
      Add(out, m->source, key);
      Add(out, m->target, key);
    }
  }
  for (const auto& [id, m] : migrations) {
    bool named = false;
    if (auto w = workloads.find(m.workload); w != workloads.end())
      named = w->second.status.migration == id;
    if (!api::IsFinal(m.phase) || named) Add(out, m.source, keys.Migration(id));
  }
  return out;
}

std::set<std::string> NodesOfWorkloadChange(
    const api::Workload* before, const api::Workload* after,
    const std::map<std::string, api::Migration>& migrations) {
  std::set<std::string> nodes;
  for (const api::Workload* w : {before, after}) {
    if (w == nullptr) continue;
    if (!w->status.node.empty()) nodes.insert(w->status.node);
    if (auto it = migrations.find(w->status.migration); it != migrations.end()) {
      if (!it->second.source.empty()) nodes.insert(it->second.source);
      if (!it->second.target.empty()) nodes.insert(it->second.target);
    }
  }
  return nodes;
}

std::set<std::string> NodesOfMigrationChange(const api::Migration* before,
                                             const api::Migration* after) {
  std::set<std::string> nodes;
  for (const api::Migration* m : {before, after}) {
    if (m == nullptr) continue;
    if (!m->source.empty()) nodes.insert(m->source);
    if (!m->target.empty()) nodes.insert(m->target);
  }
  return nodes;
}

bool ManagedGrantKey(const cluster::KeyLayout& keys, const std::string& key) {
  return !cluster::KeyLayout::NameIn(keys.Workloads(), key).empty() ||
         !cluster::KeyLayout::NameIn(keys.Migrations(), key).empty() ||
         !cluster::KeyLayout::NameIn(keys.Checkpoints(), key).empty();
}

GrantReconciler::GrantReconciler(AccessGrants& grants, Clock& clock, Options options,
                                 Observer observer)
    : grants_(grants),
      clock_(clock),
      options_(std::move(options)),
      observer_(std::move(observer)) {}

Status GrantReconciler::GrantNow(const std::string& node, const std::set<std::string>& keys) {
  const std::string role = RoleOf(node);
  std::string listed;
  for (const auto& key : keys) listed += (listed.empty() ? "" : ", ") + key;
  spdlog::info("etcd grant before writing the record: node {} may write {}", node, listed);
  for (const auto& key : keys) {
    Status s = grants_.Grant(role, key);
    if (observer_) observer_("grant", node, key, s);
    if (!s.ok()) return s.Annotate("grant " + key + " to node " + node + " (role " + role + ")");
    {
      std::lock_guard lock(mu_);
      auto it = extra_since_.find(node);
      if (it != extra_since_.end()) it->second.erase(key);
    }
  }
  return Status::Ok();
}

void GrantReconciler::ResetGrace() {
  std::lock_guard lock(mu_);
  extra_since_.clear();
}

StatusOr<GrantOutcome> GrantReconciler::Reconcile(const std::string& node,
                                                  const std::set<std::string>& desired) {
  const std::string role = RoleOf(node);
  auto held = grants_.Granted(role);
  if (!held.ok()) return held.status().Annotate("grants of node " + node + " (role " + role + ")");
  std::set<std::string> actual;
  for (const auto& key : *held) {
    if (ManagedGrantKey(options_.keys, key)) actual.insert(key);
  }
  GrantOutcome out;
  for (const auto& key : desired) {
    if (actual.count(key)) continue;
    Status s = grants_.Grant(role, key);
    if (observer_) observer_("grant", node, key, s);
    if (!s.ok()) return s.Annotate("grant " + key + " to node " + node + " (role " + role + ")");
    spdlog::info("etcd grant: node {} may write {}", node, key);
    ++out.granted;
  }
  // Extra keys: revoked once extra for the grace period.
  const Clock::TimePoint now = clock_.Now();
  std::vector<std::string> revoke;
  {
    std::lock_guard lock(mu_);
    auto& since = extra_since_[node];
    // Forget keys no longer extra (granted again, or revoked by someone).
    for (auto it = since.begin(); it != since.end();) {
      if (!actual.count(it->first) || desired.count(it->first))
        it = since.erase(it);
      else
        ++it;
    }
    for (const auto& key : actual) {
      if (desired.count(key)) continue;
      auto [it, fresh] = since.emplace(key, now);
      const Clock::Duration age = now - it->second;
      if (age >= options_.revoke_grace) {
        revoke.push_back(key);
      } else {
        const Clock::Duration left = options_.revoke_grace - age;
        if (!out.again_in || left < *out.again_in) out.again_in = left;
      }
    }
    if (since.empty()) extra_since_.erase(node);
  }
  for (const auto& key : revoke) {
    Status s = grants_.Revoke(role, key);
    if (observer_) observer_("revoke", node, key, s);
    if (!s.ok()) return s.Annotate("revoke " + key + " from node " + node + " (role " + role + ")");
    spdlog::info("etcd grant revoked: node {} may no longer write {}", node, key);
    ++out.revoked;
    std::lock_guard lock(mu_);
    if (auto it = extra_since_.find(node); it != extra_since_.end()) {
      it->second.erase(key);
      if (it->second.empty()) extra_since_.erase(it);
    }
  }
  return out;
}

}  // namespace kmosix::controller
