// The controller restarting workloads lost with their node (issue 13, node
// loss), on the fake store (controller_fixture.h): agents are simulated by
// their node records under leases and by writing workload status; a node is
// lost when the test revokes its lease. The restart delay is short here;
// "not before the delay" is read from the record (restartedMs - lostMs), never
// from a timer.
#include <gtest/gtest.h>

#include <thread>

#include "cluster/records.h"
#include "controller/controller_fixture.h"

namespace kmosix::controller {
namespace {

constexpr auto kDelay = std::chrono::milliseconds(600);

class NodeLossControllerTest : public ControllerTest {
 protected:
  ControllerOptions NodeLossOptions(const std::string& id) {
    ControllerOptions o = Options(id);
    o.node_loss_restart_delay = kDelay;
    return o;
  }

  // w1 with `policy`, placed on n1 and running there (n1 the least loaded
  // node so the placement picks it; n2 and n3 ready too).
  void RunOnN1(Controller& c, const json& extra = json::object()) {
    json body = {{"name", "w1"}, {"image", "demo"}, {"node", "n1"}};
    body.update(extra);
    Create(c, body);
    ASSERT_TRUE(Eventually([&] {
      auto w = Workload("w1");
      return w && w->status.phase == WorkloadPhase::kScheduled;
    }));
    ASSERT_EQ(Workload("w1")->status.node, "n1");
    MarkRunning("w1", clock_.WallMillis());
  }

  bool PlacedAwayFromN1() {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kScheduled && w->status.node != "n1";
  }

  void PutCheckpoint(const api::CheckpointRecord& c) {
    ASSERT_TRUE(store_.Put(keys_.Checkpoint(c.workload), cluster::CheckpointToJson(c).dump()).ok());
  }

  // The member record's changedMs of a NotReady node (the loss time).
  int64_t LostMs(const std::string& node) {
    auto got = store_.Get(keys_.Member(node));
    if (!got.ok() || !got->kv) return -1;
    auto m = cluster::ParseRecord<api::NodeMember>(got->kv->value, &cluster::NodeMemberFromJson);
    return m.ok() && !m->ready ? m->changed_ms : -1;
  }

  // A workload created after `c` took the lead is placed once the queue has
  // come to it: everything queued before it (EnqueueAll) was handed out.
  void PlaceMarker(Controller& c) {
    Create(c, {{"name", "marker"}, {"image", "demo"}});
    ASSERT_TRUE(Eventually([&] {
      auto w = Workload("marker");
      return w && w->status.phase == WorkloadPhase::kScheduled;
    }));
  }
};

TEST_F(NodeLossControllerTest, FromImageIsPlacedOnAnotherNodeAfterTheDelayWithANewEpoch) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  PublishNode("n3", 0.9);
  Controller& c = StartController(NodeLossOptions("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  RunOnN1(c, {{"restartPolicy", "FromImage"}});
  const int64_t epoch = Workload("w1")->status.epoch;

  const int64_t cursor = c.Events().LastId();
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());  // n1 lost
  ASSERT_TRUE(Eventually([&] { return PlacedAwayFromN1(); }, std::chrono::seconds(15)));
  auto w = Workload("w1");
  EXPECT_EQ(w->status.node, "n2") << "the least loaded ready node";
  // The event stream says it once, as a recovery.
  std::vector<json> recovered;
  ASSERT_TRUE(Eventually([&] {
    recovered.clear();
    for (const Event& e : c.Events().Wait(cursor, std::chrono::milliseconds(50)).events)
      if (e.data["type"] == "workload.recovered") recovered.push_back(e.data);
    return !recovered.empty();
  }));
  ASSERT_EQ(recovered.size(), 1u);
  EXPECT_EQ(recovered[0]["node"], "n2");
  EXPECT_EQ(recovered[0]["lostNode"], "n1");
  EXPECT_EQ(w->status.epoch, epoch + 1);
  EXPECT_EQ(w->status.restore_checkpoint, "");
  ASSERT_TRUE(w->status.recovery);
  const api::Recovery& r = *w->status.recovery;
  EXPECT_EQ(r.policy, api::RestartPolicy::kFromImage);
  EXPECT_EQ(r.lost_node, "n1");
  EXPECT_EQ(r.count, 1);
  EXPECT_EQ(r.lost_ms, LostMs("n1")) << "the loss time is the member record's";
  EXPECT_GE(r.restarted_ms - r.lost_ms, kDelay.count()) << "restarted before the delay";
  EXPECT_NE(w->status.message.find("restarted from its image on n2"), std::string::npos)
      << w->status.message;

  // The new owner runs it; the record changes and is reconciled again: still
  // one recovery, the same epoch.
  MarkRunning("w1", clock_.WallMillis());
  PlaceMarker(c);
  w = Workload("w1");
  EXPECT_EQ(w->status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w->status.epoch, epoch + 1);
  EXPECT_EQ(w->status.recovery->count, 1);
}

TEST_F(NodeLossControllerTest, ANewLeaderDoesNotPlaceItAgain) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  PublishNode("n3", 0.9);
  Controller& c1 = StartController(NodeLossOptions("c1"));
  ASSERT_TRUE(Eventually([&] { return c1.IsLeader() && c1.Ready(); }));
  RunOnN1(c1, {{"restartPolicy", "FromImage"}});
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  ASSERT_TRUE(Eventually([&] { return PlacedAwayFromN1(); }, std::chrono::seconds(15)));
  auto placed = store_.Get(keys_.Workload("w1"));
  ASSERT_TRUE(placed.ok() && placed->kv);

  c1.Stop();
  Controller& c2 = StartController(NodeLossOptions("c2"));
  ASSERT_TRUE(Eventually([&] { return c2.IsLeader() && c2.Ready(); }, std::chrono::seconds(20)));
  PlaceMarker(c2);  // c2 went through every workload, w1 included
  auto after = store_.Get(keys_.Workload("w1"));
  ASSERT_TRUE(after.ok() && after->kv);
  EXPECT_EQ(after->kv->mod_revision, placed->kv->mod_revision) << "w1 was written again";
}

TEST_F(NodeLossControllerTest, FromCheckpointIsRestoredOnTheKeeperWithTheProgressLost) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  PublishNode("n3", 0.9);
  Controller& c = StartController(NodeLossOptions("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  RunOnN1(c, {{"restartPolicy", "FromCheckpoint"}, {"checkpointIntervalSeconds", 10}});
  const int64_t epoch = Workload("w1")->status.epoch;
  const int64_t taken = clock_.WallMillis() - 4'000;
  PutCheckpoint({"w1", "c-3", epoch, "n1", "n3", taken, 4096});

  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  ASSERT_TRUE(Eventually([&] { return PlacedAwayFromN1(); }, std::chrono::seconds(15)));
  auto w = Workload("w1");
  EXPECT_EQ(w->status.node, "n3") << "the keeper, although n2 is less loaded";
  EXPECT_EQ(w->status.epoch, epoch + 1);
  EXPECT_EQ(w->status.restore_checkpoint, "c-3");
  ASSERT_TRUE(w->status.recovery);
  EXPECT_EQ(w->status.recovery->policy, api::RestartPolicy::kFromCheckpoint);
  EXPECT_EQ(w->status.recovery->checkpoint, "c-3");
  EXPECT_EQ(w->status.recovery->checkpoint_taken_ms, taken);
  EXPECT_EQ(w->status.recovery->progress_lost_ms, w->status.recovery->lost_ms - taken);
  EXPECT_GE(w->status.recovery->restarted_ms - w->status.recovery->lost_ms, kDelay.count());
}

TEST_F(NodeLossControllerTest, FromCheckpointOfAnotherEpochFallsBackToTheImageAndSaysSo) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  PublishNode("n3", 0.9);
  Controller& c = StartController(NodeLossOptions("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  RunOnN1(c, {{"restartPolicy", "FromCheckpoint"}, {"checkpointIntervalSeconds", 10}});
  const int64_t epoch = Workload("w1")->status.epoch;
  PutCheckpoint({"w1", "c-2", epoch - 1, "n2", "n3", clock_.WallMillis(), 4096});

  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  ASSERT_TRUE(Eventually([&] { return PlacedAwayFromN1(); }, std::chrono::seconds(15)));
  auto w = Workload("w1");
  EXPECT_EQ(w->status.node, "n2") << "placed by the policy, not on the keeper";
  EXPECT_EQ(w->status.restore_checkpoint, "");
  ASSERT_TRUE(w->status.recovery);
  EXPECT_EQ(w->status.recovery->policy, api::RestartPolicy::kFromImage);
  EXPECT_EQ(w->status.recovery->checkpoint, "");
  EXPECT_NE(w->status.message.find("restartPolicy FromCheckpoint, but checkpoint c-2 was taken at "
                                   "epoch"),
            std::string::npos)
      << w->status.message;
}

TEST_F(NodeLossControllerTest, NeverStaysLost) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  Controller& c = StartController(NodeLossOptions("c1"));
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  RunOnN1(c);  // no restartPolicy: Never
  const int64_t epoch = Workload("w1")->status.epoch;
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kLost && LostMs("n1") > 0;
  }));
  // Well past the delay, and past a full pass of the queue.
  std::this_thread::sleep_for(3 * kDelay);
  PlaceMarker(c);
  auto w = Workload("w1");
  EXPECT_EQ(w->status.phase, WorkloadPhase::kLost);
  EXPECT_EQ(w->status.node, "n1");
  EXPECT_EQ(w->status.epoch, epoch);
  EXPECT_FALSE(w->status.recovery);
}

TEST_F(NodeLossControllerTest, ANodeBackBeforeTheDelayKeepsItsWorkload) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  ControllerOptions o = NodeLossOptions("c1");
  o.node_loss_restart_delay = std::chrono::seconds(3);
  Controller& c = StartController(o);
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  RunOnN1(c, {{"restartPolicy", "FromImage"}});
  const int64_t epoch = Workload("w1")->status.epoch;
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kLost;
  }));
  PublishNode("n1", 0.1, {{"w1", {0.1, 1 << 20}}});  // its agent is back, still running it
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kRunning;
  }));
  // Past the delay: nothing moved.
  std::this_thread::sleep_for(std::chrono::milliseconds(3'500));
  PlaceMarker(c);
  auto w = Workload("w1");
  EXPECT_EQ(w->status.phase, WorkloadPhase::kRunning);
  EXPECT_EQ(w->status.node, "n1");
  EXPECT_EQ(w->status.epoch, epoch);
  EXPECT_FALSE(w->status.recovery);
}

TEST_F(NodeLossControllerTest, ANodeBackWithoutItLosesItAfterTheDelay) {
  int64_t lease1 = PublishNode("n1", 0.0);
  PublishNode("n2", 0.2);
  ControllerOptions o = NodeLossOptions("c1");
  o.node_loss_restart_delay = std::chrono::seconds(1);
  Controller& c = StartController(o);
  ASSERT_TRUE(Eventually([&] { return c.IsLeader() && c.Ready(); }));
  RunOnN1(c, {{"restartPolicy", "FromImage"}});
  const int64_t epoch = Workload("w1")->status.epoch;
  ASSERT_TRUE(store_.RevokeLease(lease1).ok());
  ASSERT_TRUE(Eventually([&] {
    auto w = Workload("w1");
    return w && w->status.phase == WorkloadPhase::kLost;
  }));
  ASSERT_TRUE(Eventually([&] { return LostMs("n1") > 0; }));
  const int64_t lost_ms = LostMs("n1");
  // (Back at least a millisecond later, so the two moments differ.)
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  PublishNode("n1", 0.0);  // rebooted empty: its agent is back without it
  ASSERT_TRUE(Eventually([&] { return PlacedAwayFromN1(); }, std::chrono::seconds(15)));
  auto w = Workload("w1");
  EXPECT_EQ(w->status.node, "n2");
  EXPECT_EQ(w->status.epoch, epoch + 1);
  ASSERT_TRUE(w->status.recovery);
  EXPECT_EQ(w->status.recovery->count, 1);
  // Lost when n1 went NotReady, not when it came back empty.
  EXPECT_EQ(w->status.recovery->lost_ms, lost_ms);
  auto got = store_.Get(keys_.Member("n1"));
  ASSERT_TRUE(got.ok() && got->kv);
  auto m = cluster::ParseRecord<api::NodeMember>(got->kv->value, &cluster::NodeMemberFromJson);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->ready);
  EXPECT_GT(m->changed_ms, lost_ms);
  EXPECT_EQ(m->lost_ms, lost_ms) << "the member record kept when n1 went";
}

}  // namespace
}  // namespace kmosix::controller
