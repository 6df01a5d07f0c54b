// EventHub: ids, the ring and its gap marker, waiting, closing; SSE framing
// and type filters.
#include "controller/events.h"

#include <gtest/gtest.h>

#include <thread>

namespace kmosix::controller {
namespace {

TEST(EventHubTest, NumbersEventsAndReturnsThoseAfterTheCursor) {
  EventHub hub(8);
  hub.Publish("node.ready", 1000, {{"node", "n1"}, {"message", "Ready"}});
  hub.Publish("node.cordoned", 2000, {{"node", "n1"}});
  EXPECT_EQ(hub.LastId(), 2);
  auto all = hub.Wait(0, std::chrono::milliseconds(0));
  ASSERT_EQ(all.events.size(), 2u);
  EXPECT_FALSE(all.gap);
  EXPECT_EQ(all.events[0].id, 1);
  EXPECT_EQ(all.events[0].data["type"], "node.ready");
  EXPECT_EQ(all.events[0].data["timeMs"], 1000);
  EXPECT_EQ(all.events[0].data["node"], "n1");
  auto rest = hub.Wait(1, std::chrono::milliseconds(0));
  ASSERT_EQ(rest.events.size(), 1u);
  EXPECT_EQ(rest.events[0].type, "node.cordoned");
  EXPECT_TRUE(hub.Wait(2, std::chrono::milliseconds(10)).events.empty());
}

TEST(EventHubTest, ReportsAGapWhenTheRingDroppedEventsTheClientMissed) {
  EventHub hub(3);
  for (int i = 0; i < 5; ++i) hub.Publish("workload.phase", i, {});
  auto b = hub.Wait(0, std::chrono::milliseconds(0));
  EXPECT_TRUE(b.gap);
  ASSERT_EQ(b.events.size(), 3u);
  EXPECT_EQ(b.events.front().id, 3);
  auto ok = hub.Wait(2, std::chrono::milliseconds(0));
  EXPECT_FALSE(ok.gap) << "event 3 onwards are all kept";
  EXPECT_EQ(ok.events.size(), 3u);
}

TEST(EventHubTest, WaitWakesOnPublishAndOnClose) {
  EventHub hub;
  std::thread publisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    hub.Publish("node.joined", 1, {});
  });
  auto b = hub.Wait(0, std::chrono::seconds(10));
  publisher.join();
  ASSERT_EQ(b.events.size(), 1u);
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    hub.Close();
  });
  auto c = hub.Wait(1, std::chrono::seconds(10));
  closer.join();
  EXPECT_TRUE(c.closed);
  EXPECT_TRUE(c.events.empty());
}

TEST(EventsTest, ServerSentEventFramingKeepsDataOnOneLine) {
  Event e;
  e.id = 7;
  e.type = "migration.phase";
  e.data = {{"id", 7}, {"message", "line one\nline two"}};
  const std::string s = FormatServerSentEvent(e);
  EXPECT_EQ(s.rfind("id: 7\nevent: migration.phase\ndata: {", 0), 0u) << s;
  EXPECT_EQ(s.substr(s.size() - 2), "\n\n");
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 4) << s;
}

TEST(EventsTest, TypeFiltersMatchWholeSegments) {
  auto f = ParseEventFilter(" migration , node.ready,,");
  ASSERT_EQ(f.size(), 2u);
  EXPECT_TRUE(EventTypeMatches("migration.phase", f));
  EXPECT_TRUE(EventTypeMatches("node.ready", f));
  EXPECT_FALSE(EventTypeMatches("node.notready", f));
  EXPECT_FALSE(EventTypeMatches("migrationx.phase", f));
  EXPECT_FALSE(EventTypeMatches("workload.created", f));
  EXPECT_TRUE(EventTypeMatches("anything", ParseEventFilter("")));
}

}  // namespace
}  // namespace kmosix::controller
