#include "controller/node_loss.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "cluster/records.h"
#include "controller/controller.h"
#include "controller/record_update.h"

namespace kmosix::controller {
namespace {

using api::RestartPolicy;
using api::WorkloadPhase;

int64_t Millis(Clock::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

std::string SecondsText(int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms) / 1000.0);
  return buf;
}

// How long to wait before looking again at a workload that cannot be placed
// yet, or whose node's readiness is not recorded yet.
constexpr Clock::Duration kLookAgain = std::chrono::seconds(1);

}  // namespace

Status CheckNodeLossTiming(Clock::Duration restart_delay, Clock::Duration lease_ttl,
                           Clock::Duration fence_after) {
  const std::string values = " (--node-loss-restart-delay " + SecondsText(Millis(restart_delay)) +
                             ", --lease-ttl-assumed " + SecondsText(Millis(lease_ttl)) +
                             ", --agent-fence-after " + SecondsText(Millis(fence_after)) + ")";
  if (fence_after <= Clock::Duration::zero() || fence_after >= lease_ttl)
    return InvalidError(
        "--agent-fence-after must be more than 0 and less than --lease-ttl-assumed: an agent "
        "freezes its workloads before its lease can expire" +
        values);
  if (restart_delay <= lease_ttl + fence_after)
    return InvalidError(
        "--node-loss-restart-delay must be longer than --lease-ttl-assumed + "
        "--agent-fence-after, so a lost node's agent has frozen its workloads before they "
        "start anywhere else" +
        values);
  return Status::Ok();
}

namespace {

NodeLossDecision None(std::string why) {
  NodeLossDecision d;
  d.kind = NodeLossDecision::Kind::kNone;
  d.why = std::move(why);
  return d;
}

NodeLossDecision Wait(std::string why, Clock::Duration again_in, bool tell = false) {
  NodeLossDecision d;
  d.kind = NodeLossDecision::Kind::kWait;
  d.why = std::move(why);
  d.again_in = std::max<Clock::Duration>(again_in, std::chrono::milliseconds(1));
  d.tell = tell;
  return d;
}

}  // namespace

std::optional<NodeLossDecision> NodeLossNotDue(const NodeLossInput& in) {
  const api::WorkloadSpec& spec = in.workload.spec;
  const api::WorkloadStatus& st = in.workload.status;
  auto none = [](std::string why) { return None(std::move(why)); };
  auto wait = [](std::string why, Clock::Duration again_in) {
    return Wait(std::move(why), again_in);
  };
  if (st.phase != WorkloadPhase::kLost || st.node.empty()) return none("not Lost");
  if (spec.restart_policy == RestartPolicy::kNever) return none("restartPolicy Never");
  if (!st.migration.empty()) return none("a migration of it is being resolved");
  if (in.lost_node_ready && in.lost_node_runs_it)
    return none("node " + st.node + " is back and runs it");
  // When the node went NotReady (or Ready again), as the leader recorded it
  // (members/<node>): durable, so a new leader counts from the same moment.
  if (!in.member || in.member->ready != in.lost_node_ready)
    return wait("node " + st.node + "'s readiness is not recorded yet", kLookAgain);
  const int64_t since_ms = in.member->changed_ms;
  const int64_t due_ms = since_ms + Millis(in.restart_delay);
  if (in.now_ms < due_ms) {
    const std::string state =
        in.lost_node_ready ? " Ready again without it for " : " NotReady for ";
    return wait("node " + st.node + state + SecondsText(in.now_ms - since_ms) + "; restart after " +
                    SecondsText(Millis(in.restart_delay)),
                std::chrono::milliseconds(due_ms - in.now_ms));
  }
  return std::nullopt;
}

NodeLossDecision DecideNodeLoss(const NodeLossInput& in, Random& random) {
  if (auto not_due = NodeLossNotDue(in)) return *not_due;
  const api::WorkloadSpec& spec = in.workload.spec;
  const api::WorkloadStatus& st = in.workload.status;
  // The recorded NotReady time; for a node back without it, when it went
  // NotReady before coming back (member lostMs), or, in a record written
  // before that was kept, the best fact left: when it came back.
  const int64_t back_ms = in.member->changed_ms;
  const int64_t lost_ms =
      in.lost_node_ready && in.member->lost_ms > 0 && in.member->lost_ms <= in.member->changed_ms
          ? in.member->lost_ms
          : in.member->changed_ms;
  NodeLossDecision d;

  // Never the lost node, whatever the snapshot says of it.
  ClusterSnapshot snap = in.snapshot;
  snap.nodes.erase(std::remove_if(snap.nodes.begin(), snap.nodes.end(),
                                  [&](const PolicyNode& n) { return n.name == st.node; }),
                   snap.nodes.end());
  PlacementRequest req;
  req.cpus = spec.cpus;
  req.memory_bytes = static_cast<uint64_t>(spec.memory_mib) * 1024 * 1024;

  d.recovery.lost_node = st.node;
  d.recovery.lost_ms = lost_ms;
  d.recovery.restarted_ms = in.now_ms;
  d.recovery.count = (st.recovery ? st.recovery->count : 0) + 1;
  const std::string lost_text =
      in.lost_node_ready
          ? "node " + st.node + " came back without it (Ready " + SecondsText(in.now_ms - back_ms) +
                (lost_ms < back_ms ? ", lost " + SecondsText(in.now_ms - lost_ms) + " ago" : "") +
                ")"
          : "node " + st.node + " was lost (NotReady " + SecondsText(in.now_ms - lost_ms) + ")";

  std::string fallback;  // FromCheckpoint without a usable checkpoint: why
  if (spec.restart_policy == RestartPolicy::kFromCheckpoint) {
    const auto& ck = in.checkpoint;
    if (!ck) {
      fallback = "no checkpoint of it was taken";
    } else if (ck->workload != spec.name) {
      fallback = "its checkpoint record names workload " + ck->workload;
    } else if (ck->epoch != st.epoch) {
      fallback = "checkpoint " + ck->id + " was taken at epoch " + std::to_string(ck->epoch) +
                 ", not at the lost owner's epoch " + std::to_string(st.epoch);
    } else if (ck->keeper == st.node) {
      fallback = "checkpoint " + ck->id + " is kept on the lost node " + st.node;
    } else {
      PlacementRequest on_keeper = req;
      on_keeper.node = ck->keeper;
      auto keeper = Place(snap, on_keeper, in.policy, random);
      if (!keeper.ok()) {
        fallback = "checkpoint " + ck->id + "'s keeper " + ck->keeper +
                   " cannot take it: " + keeper.status().message();
      } else {
        d.kind = NodeLossDecision::Kind::kRestart;
        d.target = *keeper;
        d.restore_checkpoint = ck->id;
        d.recovery.policy = RestartPolicy::kFromCheckpoint;
        d.recovery.checkpoint = ck->id;
        d.recovery.checkpoint_taken_ms = ck->taken_ms;
        d.recovery.progress_lost_ms = std::max<int64_t>(0, lost_ms - ck->taken_ms);
        d.message = lost_text + "; restored on " + d.target + " from checkpoint " + ck->id +
                    " (progress lost " + SecondsText(d.recovery.progress_lost_ms) + ")";
        return d;
      }
    }
  }
  auto target = Place(snap, req, in.policy, random);
  if (!target.ok()) {
    return Wait(lost_text + "; no node can take it yet: " + target.status().message() +
                    (fallback.empty() ? "" : " (restartPolicy FromCheckpoint: " + fallback + ")"),
                kLookAgain, /*tell=*/true);
  }
  d.kind = NodeLossDecision::Kind::kRestart;
  d.target = *target;
  d.recovery.policy = RestartPolicy::kFromImage;
  d.message = lost_text + "; restarted from its image on " + d.target;
  if (!fallback.empty())
    d.message += " (restartPolicy FromCheckpoint, but " + fallback + ": from the image)";
  return d;
}

bool ApplyNodeLoss(const NodeLossDecision& d, const api::WorkloadStatus& decided_on,
                   api::Workload& fresh) {
  api::WorkloadStatus& s = fresh.status;
  if (d.kind != NodeLossDecision::Kind::kRestart || s.phase != WorkloadPhase::kLost ||
      s.node != decided_on.node || s.epoch != decided_on.epoch || !s.migration.empty() ||
      fresh.spec.restart_policy == RestartPolicy::kNever || d.target == decided_on.node)
    return false;
  s.phase = WorkloadPhase::kScheduled;
  s.node = d.target;
  s.epoch = decided_on.epoch + 1;  // ownership moves: the old node's copy is fenced
  s.pid = 0;
  s.restarts = 0;
  s.restore_checkpoint = d.restore_checkpoint;
  s.recovery = d.recovery;
  s.message = d.message;
  return true;
}

// ---- the controller's step (leader only) -----------------------------------

Status Controller::RestartLost(const api::Workload& w, const cluster::LeaderTerm& term) {
  const std::string& name = w.spec.name;
  const std::string key = options_.keys.Workload(name);
  NodeLossInput in;
  in.workload = w;
  in.member = CachedMember(w.status.node);
  in.lost_node_ready = NodeReady(w.status.node);
  if (auto n = CachedNode(w.status.node)) in.lost_node_runs_it = n->workloads.count(name) > 0;
  in.now_ms = clock_.WallMillis();
  in.restart_delay = options_.node_loss_restart_delay;
  in.policy = options_.policy;
  // Cheap checks first: the store and the snapshot only once it is due.
  if (auto not_due = NodeLossNotDue(in)) {
    if (not_due->kind == NodeLossDecision::Kind::kWait)
      queue_.AddAfter("w/" + name, not_due->again_in);
    return Status::Ok();
  }
  if (w.spec.restart_policy == api::RestartPolicy::kFromCheckpoint) {
    KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(options_.keys.Checkpoint(name)));
    if (got.kv) {
      auto ck =
          cluster::ParseRecord<api::CheckpointRecord>(got.kv->value, &cluster::CheckpointFromJson);
      if (ck.ok())
        in.checkpoint = *ck;
      else
        spdlog::warn("checkpoint record of {} is damaged, ignored: {}", name,
                     ck.status().message());
    }
  }
  in.snapshot = Snapshot(w.spec.image);
  NodeLossDecision d = DecideNodeLoss(in, random_);
  if (d.kind == NodeLossDecision::Kind::kNone) return Status::Ok();
  if (d.kind == NodeLossDecision::Kind::kWait) {
    queue_.AddAfter("w/" + name, d.again_in);
    if (!d.tell || w.status.message == d.why) return Status::Ok();
    // Say why in the record (the CAS only touches a record still Lost there).
    return UpdateLostMessage(name, w.status, d.why, term);
  }
  // Grant first, then write: the target's agent reports on the record at once.
  if (grants_) KMX_RETURN_IF_ERROR(grants_->GrantNow(d.target, {key}));
  bool applied = false;
  api::WorkloadStatus written;
  Status s = UpdateWorkloadRecord(store_, key, term.Fence(), [&](api::Workload& fresh) {
    applied = ApplyNodeLoss(d, w.status, fresh);  // false: decided on an old record
    written = fresh.status;
    return StatusOr<bool>(applied);
  });
  if (s.code() == Code::kNotFound) return Status::Ok();  // deleted meanwhile
  if (s.ok() && applied) {
    spdlog::warn("workload {}: {} (restartPolicy {}, epoch {}, recovery {})", name, d.message,
                 api::RestartPolicyName(w.spec.restart_policy), written.epoch,
                 written.recovery->count);
    if (observer_) observer_->OnPlacement();
  }
  return s;
}

Status Controller::UpdateLostMessage(const std::string& name, const api::WorkloadStatus& decided_on,
                                     const std::string& message, const cluster::LeaderTerm& term) {
  const std::string key = options_.keys.Workload(name);
  KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(key));
  if (!got.kv) return Status::Ok();
  auto fresh = cluster::ParseRecord<api::Workload>(got.kv->value, &cluster::WorkloadFromJson);
  if (!fresh.ok()) return fresh.status().Annotate(key);
  api::WorkloadStatus& s = fresh->status;
  if (s.phase != WorkloadPhase::kLost || s.node != decided_on.node || s.epoch != decided_on.epoch ||
      s.message == message)
    return Status::Ok();
  s.message = message;
  Txn txn;
  txn.compares.push_back(Compare::Unchanged(key, got.kv->mod_revision));
  txn.compares.push_back(term.Fence());
  txn.then_ops.push_back(TxnOp::Put(key, cluster::WorkloadToJson(*fresh).dump()));
  KMX_ASSIGN_OR_RETURN(TxnResult r, store_.Commit(txn));
  (void)r;  // a changed record is reconciled again anyway
  return Status::Ok();
}

}  // namespace kmosix::controller
