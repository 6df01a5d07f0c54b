// EventRecorder (controller/kube/recorder.h): Events built from the object,
// sent from its own thread, dropped (and counted) when the queue is full,
// drained at Stop, failures counted, nothing thrown.
#include "controller/kube/recorder.h"

#include <gtest/gtest.h>

#include <thread>

#include "fakes/fake_kube_client.h"

namespace kmosix::bridge {
namespace {

using nlohmann::json;

json Object(const std::string& name) {
  return {
      {"apiVersion", "kmosix.io/v1alpha1"},
      {"kind", "MigratableWorkload"},
      {"metadata",
       {{"name", name}, {"namespace", "default"}, {"uid", "u-" + name}, {"resourceVersion", "7"}}}};
}

std::vector<json> Events(kube::FakeClient& c) {
  auto l = c.List(kube::CoreEvents(), "", {});
  return l.ok() ? l->items : std::vector<json>{};
}

bool Eventually(const std::function<bool()>& pred) {
  for (int i = 0; i < 500 && !pred(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return pred();
}

TEST(EventRecorder, SendsTheEventItBuilt) {
  kube::FakeClient client;
  SystemClock clock;
  SystemRandom random;
  EventRecorder r(client, clock, random, "controller1");
  r.Start();
  r.Record(kube::MigratableWorkloads(), Object("counter"), "Normal", "Placed", "placed on node1");
  ASSERT_TRUE(Eventually([&] { return Events(client).size() == 1; }));
  const json e = Events(client)[0];
  EXPECT_EQ(e["involvedObject"]["kind"], "MigratableWorkload");
  EXPECT_EQ(e["involvedObject"]["name"], "counter");
  EXPECT_EQ(e["involvedObject"]["uid"], "u-counter");
  EXPECT_EQ(e["involvedObject"]["apiVersion"], "kmosix.io/v1alpha1");
  EXPECT_EQ(e["reason"], "Placed");
  EXPECT_EQ(e["type"], "Normal");
  EXPECT_EQ(e["reportingInstance"], "controller1");
  EXPECT_EQ(e["metadata"]["namespace"], "default");
  r.Stop();
  EXPECT_EQ(r.Sent(), 1u);
}

TEST(EventRecorder, LongMessagesAreCutOnACharacterBoundary) {
  kube::FakeClient client;
  SystemClock clock;
  SystemRandom random;
  EventRecorder r(client, clock, random, "c");
  r.Start();
  std::string message(1023, 'x');
  message += "\xc3\xa9\xc3\xa9";  // "éé": the cut falls inside the first
  r.Record(kube::MigratableWorkloads(), Object("w"), "Warning", "Failed", message);
  ASSERT_TRUE(Eventually([&] { return Events(client).size() == 1; }));
  EXPECT_EQ(Events(client)[0]["message"].get<std::string>(), std::string(1023, 'x'));
  r.Stop();
}

TEST(EventRecorder, AFullQueueDropsAndCountsAndStopDrains) {
  kube::FakeClient client;
  SystemClock clock;
  SystemRandom random;
  EventRecorder r(client, clock, random, "c", /*capacity=*/3);
  // Not started: the queue fills.
  for (int i = 0; i < 5; ++i)
    r.Record(kube::MigratableWorkloads(), Object("w" + std::to_string(i)), "Normal", "X", "m");
  EXPECT_EQ(r.Dropped(), 2u);
  r.Start();
  r.Stop();  // drains the three queued
  EXPECT_EQ(r.Sent(), 3u);
  EXPECT_EQ(Events(client).size(), 3u);
  r.Record(kube::MigratableWorkloads(), Object("late"), "Normal", "X", "m");
  EXPECT_EQ(r.Dropped(), 3u) << "recorded after Stop: dropped";
}

TEST(EventRecorder, FailuresAreCountedNotThrown) {
  kube::FakeClient client;
  SystemClock clock;
  SystemRandom random;
  EventRecorder r(client, clock, random, "c");
  client.FailNext("Create", RetryError("API server unavailable"));
  r.Start();
  r.Record(kube::MigratableWorkloads(), Object("a"), "Normal", "X", "m");
  r.Record(kube::MigratableWorkloads(), Object("b"), "Normal", "X", "m");
  ASSERT_TRUE(Eventually([&] { return r.Failed() + r.Sent() == 2; }));
  EXPECT_EQ(r.Failed(), 1u);
  EXPECT_EQ(r.Sent(), 1u);
  r.Record(kube::MigratableWorkloads(), json::object(), "Normal", "X", "no metadata: ignored");
  r.Stop();
  EXPECT_EQ(r.Sent(), 1u);
}

}  // namespace
}  // namespace kmosix::bridge
