// Node loss: what the leading controller does with a workload that is Lost
// because its node's agent stopped renewing its lease (issue 13). The
// workload's spec.restartPolicy says:
//   Never           it stays Lost (the node may come back and report it).
//   FromImage       once the node has been NotReady for the restart delay,
//                   it is placed again (Scheduled) on another ready node,
//                   chosen by the placement policy, and starts from its image.
//                   A node back before the delay keeps it if it reports it
//                   running; one Ready again for the delay without it
//                   (rebooted empty) loses it the same way.
//                   status.recovery.lostMs is when the node went NotReady
//                   (members/<node> changedMs, or lostMs once it is Ready
//                   again; a member record without lostMs: when it came back).
//   FromCheckpoint  the same, but on the keeper of its latest checkpoint
//                   (checkpoints/<name>) with status.restoreCheckpoint set, so
//                   the keeper restores it; when there is no usable checkpoint
//                   (none, another owner epoch's, its keeper not ready or
//                   full), from its image as FromImage, and status.message and
//                   status.recovery say so.
// The placement is one CAS on the workload record (fenced by the leader's
// term) that bumps the epoch, so the old node's copy, if that node comes
// back, is fenced by its agent; the CAS only applies to the record decided on
// (still Lost, same node, same epoch), so a second reconcile or a new leader
// never places it twice.
//
// Timing rule: the restart delay must exceed the agents' lease TTL plus
// their fence deadline (--fence-after): an agent that cannot renew its lease
// freezes its workloads within fence-after, so by the time another node may
// start a copy, the old one is frozen even when the controller saw the node
// go NotReady at once. CheckNodeLossTiming states it; the controller binary
// refuses to start without it.
//
// DecideNodeLoss is pure (its clock is `now_ms`, its placement the policy's
// Place over a snapshot); Controller::RestartLost (node_loss.cc) feeds it
// from the caches and the store and writes its decision.
//
// Thread-safety: pure functions. Errors: CheckNodeLossTiming answers kInvalid
// naming the flags; DecideNodeLoss never fails (what it cannot do now is a
// kWait with the reason).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "api/types.h"
#include "controller/policy.h"
#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::controller {

// The defaults of the controller's flags (matching the agents' defaults).
inline constexpr std::chrono::seconds kDefaultNodeLossRestartDelay{15};
inline constexpr std::chrono::seconds kDefaultLeaseTtlAssumed{5};
inline constexpr std::chrono::seconds kDefaultAgentFenceAfter{4};

// kInvalid unless restart_delay > lease_ttl + fence_after and
// 0 < fence_after < lease_ttl (the agents' own rule).
Status CheckNodeLossTiming(Clock::Duration restart_delay, Clock::Duration lease_ttl,
                           Clock::Duration fence_after);

struct NodeLossInput {
  api::Workload workload;                           // as cached; phase kLost
  std::optional<api::NodeMember> member;            // members/<status.node>
  bool lost_node_ready = false;                     // its agent holds its lease again
  bool lost_node_runs_it = false;                   // ... and reports it running
  std::optional<api::CheckpointRecord> checkpoint;  // checkpoints/<name>, if any
  ClusterSnapshot snapshot;                         // Controller::Snapshot(spec.image)
  PolicyConfig policy;                              // placement margins
  int64_t now_ms = 0;
  Clock::Duration restart_delay = kDefaultNodeLossRestartDelay;
};

struct NodeLossDecision {
  enum class Kind {
    kNone,     // nothing to do (policy Never, node back, not Lost)
    kWait,     // not yet (delay not over, readiness not recorded, no node fits)
    kRestart,  // place it as below
  };
  Kind kind = Kind::kNone;
  std::string why;              // kNone/kWait: why
  Clock::Duration again_in{0};  // kWait: look again after this long
  // kWait: `why` is news for status.message (no node can take it), not a
  // countdown (which would rewrite the record at every look).
  bool tell = false;
  // kRestart:
  std::string target;
  std::string restore_checkpoint;  // "" = from the image
  api::Recovery recovery;          // count already incremented
  std::string message;             // the new status.message
};

// The first half of DecideNodeLoss, without the checkpoint and the
// snapshot: kNone or kWait while the workload is not (yet) to be restarted;
// nullopt once it is due.
std::optional<NodeLossDecision> NodeLossNotDue(const NodeLossInput& in);

NodeLossDecision DecideNodeLoss(const NodeLossInput& in, Random& random);

// Applies a kRestart decision taken on `decided_on` to `fresh` (the record
// read again for the CAS): false, leaving it alone, unless it is still the
// same Lost record (phase Lost, same node and epoch, no migration, policy not
// Never). Sets phase Scheduled, node target, epoch + 1, pid 0, restarts 0
// (they count restarts on its current node), restoreCheckpoint, recovery,
// message.
bool ApplyNodeLoss(const NodeLossDecision& decision, const api::WorkloadStatus& decided_on,
                   api::Workload& fresh);

}  // namespace kmosix::controller
