// The node-loss decision (controller/node_loss.h), pure: its clock is the
// input's now_ms, its cluster a snapshot. Restart after the delay and not
// before, never on the lost node, FromCheckpoint on the keeper with the
// progress lost, the fallbacks to the image, Never and a node back leave it
// alone, and the CAS half (ApplyNodeLoss) refuses any record but the one
// decided on. Plus the timing rule of the flags (issue 13, node loss).
#include "controller/node_loss.h"

#include <gtest/gtest.h>

namespace kmosix::controller {
namespace {

using api::RestartPolicy;
using api::WorkloadPhase;
using std::chrono::milliseconds;
using std::chrono::seconds;

class FixedRandom : public Random {
 public:
  uint64_t Next() override { return 7; }
};

constexpr int64_t kLostMs = 1'700'000'000'000;
constexpr seconds kDelay{15};

PolicyNode Node(const std::string& name, double cpu_used = 0) {
  PolicyNode n;
  n.name = name;
  n.cpu_capacity = 4;
  n.background_cpu = cpu_used;
  n.memory_capacity_bytes = 8ULL << 30;
  n.memory_available_bytes = 6ULL << 30;
  return n;
}

// w1, Lost with node n1 (NotReady since kLostMs), at epoch 40; n1 (the
// emptiest, as if its stale load were still known), n2 and n3 in the
// snapshot.
NodeLossInput Lost(RestartPolicy policy) {
  NodeLossInput in;
  in.workload.spec.name = "w1";
  in.workload.spec.image = "demo";
  in.workload.spec.restart_policy = policy;
  if (policy == RestartPolicy::kFromCheckpoint) in.workload.spec.checkpoint_interval_seconds = 30;
  in.workload.status.phase = WorkloadPhase::kLost;
  in.workload.status.node = "n1";
  in.workload.status.epoch = 40;
  in.workload.status.restarts = 2;
  in.workload.status.pid = 99;
  in.member = api::NodeMember{"n1", /*ready=*/false, kLostMs, /*cordoned=*/false};
  in.snapshot.nodes = {Node("n1", 0), Node("n2", 2), Node("n3", 3)};
  in.now_ms = kLostMs + 15'000;
  in.restart_delay = kDelay;
  return in;
}

api::CheckpointRecord Checkpoint(int64_t epoch = 40, const std::string& keeper = "n3") {
  return api::CheckpointRecord{"w1", "c-7", epoch, "n1", keeper, kLostMs - 12'345, 1 << 20};
}

TEST(NodeLossTimingTest, TheDelayMustExceedLeaseTtlPlusFenceAfter) {
  EXPECT_TRUE(CheckNodeLossTiming(kDefaultNodeLossRestartDelay, kDefaultLeaseTtlAssumed,
                                  kDefaultAgentFenceAfter)
                  .ok())
      << "the defaults keep the rule";
  EXPECT_TRUE(CheckNodeLossTiming(milliseconds(9'001), seconds(5), seconds(4)).ok());
  Status equal = CheckNodeLossTiming(seconds(9), seconds(5), seconds(4));
  EXPECT_EQ(equal.code(), Code::kInvalid);
  EXPECT_NE(equal.message().find("--node-loss-restart-delay must be longer than "
                                 "--lease-ttl-assumed + --agent-fence-after"),
            std::string::npos)
      << equal.message();
  EXPECT_NE(equal.message().find("--node-loss-restart-delay 9.0 s"), std::string::npos)
      << equal.message();
  EXPECT_EQ(CheckNodeLossTiming(seconds(3), seconds(5), seconds(4)).code(), Code::kInvalid);
  // The agents' own rule: they freeze before their lease can expire.
  Status fence = CheckNodeLossTiming(seconds(60), seconds(5), seconds(5));
  EXPECT_EQ(fence.code(), Code::kInvalid);
  EXPECT_NE(fence.message().find("--agent-fence-after"), std::string::npos) << fence.message();
  EXPECT_EQ(CheckNodeLossTiming(seconds(60), seconds(5), seconds(0)).code(), Code::kInvalid);
}

TEST(NodeLossTest, FromImageRestartsAfterTheDelayAndNotBefore) {
  FixedRandom random;
  NodeLossInput in = Lost(RestartPolicy::kFromImage);
  in.now_ms = kLostMs + 15'000 - 1;
  NodeLossDecision early = DecideNodeLoss(in, random);
  EXPECT_EQ(early.kind, NodeLossDecision::Kind::kWait) << early.why;
  EXPECT_EQ(early.again_in, milliseconds(1)) << "looks again exactly when it is due";
  EXPECT_FALSE(early.tell) << "a countdown is not written into the record";
  ASSERT_TRUE(NodeLossNotDue(in));

  in.now_ms = kLostMs + 15'000;
  EXPECT_FALSE(NodeLossNotDue(in));
  NodeLossDecision d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart) << d.why;
  EXPECT_EQ(d.target, "n2") << "the least loaded node but the lost one";
  EXPECT_EQ(d.restore_checkpoint, "");
  EXPECT_EQ(d.recovery, (api::Recovery{RestartPolicy::kFromImage, "n1", kLostMs, kLostMs + 15'000,
                                       "", 0, 0, 1}));
  EXPECT_NE(d.message.find("restarted from its image on n2"), std::string::npos) << d.message;
}

TEST(NodeLossTest, NeverTheLostNodeEvenWhenItIsTheOnlyOneThatFits) {
  FixedRandom random;
  NodeLossInput in = Lost(RestartPolicy::kFromImage);
  in.snapshot.nodes = {Node("n1")};  // a stale view of the lost node, nothing else
  NodeLossDecision d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kWait);
  EXPECT_TRUE(d.tell) << "why it waits is news for the record";
  EXPECT_NE(d.why.find("no node can take it yet"), std::string::npos) << d.why;

  // A checkpoint kept on the lost node is not used either.
  in = Lost(RestartPolicy::kFromCheckpoint);
  in.checkpoint = Checkpoint(40, "n1");
  d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart);
  EXPECT_NE(d.target, "n1");
  EXPECT_NE(d.message.find("kept on the lost node"), std::string::npos) << d.message;
}

TEST(NodeLossTest, FromCheckpointGoesToTheKeeperWithTheProgressLost) {
  FixedRandom random;
  NodeLossInput in = Lost(RestartPolicy::kFromCheckpoint);
  in.checkpoint = Checkpoint();
  in.workload.status.recovery =
      api::Recovery{RestartPolicy::kFromImage, "n0", 1, 2, "", 0, 0, /*count=*/2};
  NodeLossDecision d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart) << d.why;
  EXPECT_EQ(d.target, "n3") << "the keeper, although n2 is less loaded";
  EXPECT_EQ(d.restore_checkpoint, "c-7");
  EXPECT_EQ(d.recovery, (api::Recovery{RestartPolicy::kFromCheckpoint, "n1", kLostMs,
                                       kLostMs + 15'000, "c-7", kLostMs - 12'345, 12'345, 3}));
  EXPECT_NE(d.message.find("from checkpoint c-7 (progress lost 12.3 s)"), std::string::npos)
      << d.message;
}

TEST(NodeLossTest, FromCheckpointWithoutAUsableCheckpointFallsBackToTheImage) {
  FixedRandom random;
  struct Case {
    const char* what;
    std::optional<api::CheckpointRecord> checkpoint;
    std::vector<PolicyNode> nodes;
    const char* said;
  };
  PolicyNode cordoned = Node("n3", 3);
  cordoned.cordoned = true;
  const std::vector<Case> cases = {
      {"none", std::nullopt, {Node("n2", 2), Node("n3", 3)}, "no checkpoint of it was taken"},
      {"another epoch's",
       Checkpoint(39),
       {Node("n2", 2), Node("n3", 3)},
       "taken at epoch 39, not at the lost owner's epoch 40"},
      {"keeper not ready", Checkpoint(), {Node("n2", 2)}, "keeper n3 cannot take it"},
      {"keeper cordoned", Checkpoint(), {Node("n2", 2), cordoned}, "keeper n3 cannot take it"},
  };
  for (const Case& c : cases) {
    NodeLossInput in = Lost(RestartPolicy::kFromCheckpoint);
    in.checkpoint = c.checkpoint;
    in.snapshot.nodes = c.nodes;
    NodeLossDecision d = DecideNodeLoss(in, random);
    ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart) << c.what << ": " << d.why;
    EXPECT_EQ(d.target, "n2") << c.what;
    EXPECT_EQ(d.restore_checkpoint, "") << c.what;
    EXPECT_EQ(d.recovery.policy, RestartPolicy::kFromImage) << c.what;
    EXPECT_EQ(d.recovery.checkpoint, "") << c.what;
    EXPECT_EQ(d.recovery.progress_lost_ms, 0) << c.what;
    EXPECT_NE(d.message.find("restartPolicy FromCheckpoint, but "), std::string::npos)
        << c.what << ": " << d.message;
    EXPECT_NE(d.message.find(c.said), std::string::npos) << c.what << ": " << d.message;
  }
}

TEST(NodeLossTest, NeverANodeBackOrAnUnrecordedLossLeaveItAlone) {
  FixedRandom random;
  NodeLossInput never = Lost(RestartPolicy::kNever);
  never.now_ms = kLostMs + 3'600'000;
  EXPECT_EQ(DecideNodeLoss(never, random).kind, NodeLossDecision::Kind::kNone);

  NodeLossInput back = Lost(RestartPolicy::kFromImage);
  back.lost_node_ready = true;  // its agent holds a lease again, before the delay
  back.lost_node_runs_it = true;
  back.member = api::NodeMember{"n1", /*ready=*/true, kLostMs + 5'000, false};
  back.now_ms = kLostMs + 60'000;
  NodeLossDecision d = DecideNodeLoss(back, random);
  EXPECT_EQ(d.kind, NodeLossDecision::Kind::kNone);
  EXPECT_NE(d.why.find("back and runs it"), std::string::npos) << d.why;

  NodeLossInput unrecorded = Lost(RestartPolicy::kFromImage);
  unrecorded.member->ready = true;  // the leader has not written NotReady yet
  EXPECT_EQ(DecideNodeLoss(unrecorded, random).kind, NodeLossDecision::Kind::kWait);
  unrecorded.member.reset();
  EXPECT_EQ(DecideNodeLoss(unrecorded, random).kind, NodeLossDecision::Kind::kWait);

  NodeLossInput running = Lost(RestartPolicy::kFromImage);
  running.workload.status.phase = WorkloadPhase::kRunning;
  EXPECT_EQ(DecideNodeLoss(running, random).kind, NodeLossDecision::Kind::kNone);

  NodeLossInput resolving = Lost(RestartPolicy::kFromImage);
  resolving.workload.status.migration = "m-1";
  EXPECT_EQ(DecideNodeLoss(resolving, random).kind, NodeLossDecision::Kind::kNone);
}

// A node that comes back empty (rebooted, its state wiped) would leave the
// workload Lost for ever: once it has been Ready for the delay without it,
// the workload goes elsewhere like from a lost node.
TEST(NodeLossTest, ANodeBackWithoutItLosesItAfterTheDelay) {
  FixedRandom random;
  NodeLossInput in = Lost(RestartPolicy::kFromImage);
  in.lost_node_ready = true;
  // NotReady at kLostMs, Ready again (without it) 5 s later.
  in.member = api::NodeMember{"n1", /*ready=*/true, kLostMs + 5'000, false, /*lost_ms=*/kLostMs};
  in.now_ms = kLostMs + 5'000 + 15'000 - 1;
  NodeLossDecision wait = DecideNodeLoss(in, random);
  EXPECT_EQ(wait.kind, NodeLossDecision::Kind::kWait) << wait.why;
  EXPECT_NE(wait.why.find("Ready again without it"), std::string::npos) << wait.why;

  in.now_ms += 1;
  NodeLossDecision d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart) << d.why;
  EXPECT_EQ(d.target, "n2") << "not the node that lost it, although it is the emptiest";
  // Lost when the node went, not when it came back.
  EXPECT_EQ(d.recovery.lost_ms, kLostMs);
  EXPECT_NE(d.message.find("node n1 came back without it (Ready 15.0 s, lost 20.0 s ago)"),
            std::string::npos)
      << d.message;
  // A member record from before lostMs was kept: the best fact left.
  NodeLossInput old_record = in;
  old_record.member->lost_ms = 0;
  EXPECT_EQ(DecideNodeLoss(old_record, random).recovery.lost_ms, kLostMs + 5'000);

  // Its Ready not recorded yet (the member record still says NotReady).
  in.member = api::NodeMember{"n1", /*ready=*/false, kLostMs, false};
  EXPECT_EQ(DecideNodeLoss(in, random).kind, NodeLossDecision::Kind::kWait);
}

// FromCheckpoint from a node back without it: the progress lost runs to when
// the node was lost, not to when it came back.
TEST(NodeLossTest, ANodeBackWithoutItCountsTheProgressLostToTheLoss) {
  FixedRandom random;
  NodeLossInput in = Lost(RestartPolicy::kFromCheckpoint);
  in.checkpoint = Checkpoint();
  in.lost_node_ready = true;
  in.member = api::NodeMember{"n1", /*ready=*/true, kLostMs + 5'000, false, /*lost_ms=*/kLostMs};
  in.now_ms = kLostMs + 20'000;
  NodeLossDecision d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart) << d.why;
  EXPECT_EQ(d.recovery.lost_ms, kLostMs);
  EXPECT_EQ(d.recovery.progress_lost_ms, 12'345);
}

TEST(NodeLossTest, ApplyBumpsTheEpochOnceAndOnlyOnTheRecordDecidedOn) {
  FixedRandom random;
  NodeLossInput in = Lost(RestartPolicy::kFromCheckpoint);
  in.checkpoint = Checkpoint();
  const NodeLossDecision d = DecideNodeLoss(in, random);
  ASSERT_EQ(d.kind, NodeLossDecision::Kind::kRestart);

  api::Workload fresh = in.workload;
  ASSERT_TRUE(ApplyNodeLoss(d, in.workload.status, fresh));
  EXPECT_EQ(fresh.status.phase, WorkloadPhase::kScheduled);
  EXPECT_EQ(fresh.status.node, "n3");
  EXPECT_EQ(fresh.status.epoch, 41) << "ownership moves: the old node's copy is fenced";
  EXPECT_EQ(fresh.status.pid, 0u);
  EXPECT_EQ(fresh.status.restarts, 0) << "restarts count those on its current node";
  EXPECT_EQ(fresh.status.restore_checkpoint, "c-7");
  ASSERT_TRUE(fresh.status.recovery);
  EXPECT_EQ(fresh.status.recovery->count, 1);
  EXPECT_EQ(fresh.status.message, d.message);

  // Applied again (a second reconcile, a new leader on the same decision):
  // the record is no longer the one decided on.
  api::Workload again = fresh;
  EXPECT_FALSE(ApplyNodeLoss(d, in.workload.status, again));
  EXPECT_EQ(again, fresh);

  auto refuses = [&](const char* what, auto edit) {
    api::Workload changed = in.workload;
    edit(changed);
    api::Workload before = changed;
    EXPECT_FALSE(ApplyNodeLoss(d, in.workload.status, changed)) << what;
    EXPECT_EQ(changed, before) << what;
  };
  refuses("back and Running", [](api::Workload& w) { w.status.phase = WorkloadPhase::kRunning; });
  refuses("another epoch", [](api::Workload& w) { w.status.epoch = 41; });
  refuses("another node", [](api::Workload& w) { w.status.node = "n2"; });
  refuses("a migration", [](api::Workload& w) { w.status.migration = "m-1"; });
  refuses("policy now Never", [](api::Workload& w) {
    w.spec.restart_policy = RestartPolicy::kNever;
    w.spec.checkpoint_interval_seconds = 0;
  });
  NodeLossDecision wait = d;
  wait.kind = NodeLossDecision::Kind::kWait;
  api::Workload untouched = in.workload;
  EXPECT_FALSE(ApplyNodeLoss(wait, in.workload.status, untouched));
}

}  // namespace
}  // namespace kmosix::controller
