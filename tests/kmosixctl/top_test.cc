// `kmosixctl top`: the frame (pure) against fixed JSON, and the loop over a
// fake screen, a fake HTTP seam and a FakeClock.
#include "kmosixctl/top.h"

#include <gtest/gtest.h>

#include <functional>
#include <sstream>

#include "fakes/fake_clock.h"
#include "kmosixctl/fake_http.h"
#include "kmosixctl/fixtures.h"

namespace kmosix::ctl {
namespace {

using nlohmann::json;
using testing::ErrorAnswer;
using testing::EventsFixture;
using testing::FakeHttp;
using testing::JsonAnswer;
using testing::kNowMs;
using testing::MigrationsFixture;
using testing::NodesFixture;
using testing::WorkloadsFixture;

TopModel Model() {
  TopModel m;
  m.nodes = NodesFixture();
  m.workloads = WorkloadsFixture();
  m.migrations = MigrationsFixture();
  m.events = EventsFixture();
  m.events_available = true;
  m.server = "https://10.77.0.1:7800";
  m.fetched_ms = kNowMs;
  return m;
}

TopView View(int width = 100) {
  TopView v;
  v.now_ms = kNowMs;
  v.utc = true;
  v.width = width;
  v.frame = 2;
  return v;
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST(TopTest, PlainFrame) {
  EXPECT_EQ(RenderTopFrame(Model(), View()),
            "=== kmosix top  22:13:20  frame 2  https://10.77.0.1:7800 ===\n"
            "nodes: 3 (2 ready, 1 cordoned), avg load 0.67   migrations in flight: 1\n"
            "workloads: 5 (2 Running, 1 Migrating, 1 Pending, 1 Lost)\n"
            "\n"
            "NODE   LOAD                                                        CPU        MEMORY  "
            "FLAGS\n"
            "node1  [###########################+++++++.......]  1.24  1.24/1 cores  768/2048 MiB  "
            "ready\n"
            "  demo1  Running    cpu 0.98  mem 14 MiB   pinned\n"
            "  demo2  Migrating  cpu 0.26  mem 20 MiB   migrating -> node2 (Transferring)\n"
            "node2  [###........................|.............]  0.10  0.20/2 cores  512/4096 MiB  "
            "ready,cordoned\n"
            "  demo3  Running    cpu 0.10  mem 512 KiB  no-migrate\n"
            "node3  [                NotReady                 ]     -             -             -  "
            "NOTREADY 12s\n"
            "  demo4  Lost       cpu -     mem -        node3 died with it\n"
            "(bars span load 0..1.5; '|' marks 1.0, a full node; '+' is beyond it)\n"
            "\n"
            "NOT ON A NODE\n"
            "  demo5  Pending  cpu -  mem -  waiting for placement\n"
            "\n"
            "IN FLIGHT           WORKLOAD  ROUTE         PHASE         AGE\n"
            "m-0000000000000002  demo2     node1->node2  Transferring   4s\n"
            "\n"
            "RECENT    MIGRATION           WORKLOAD  ROUTE         OUTCOME     DOWNTIME  NOTE\n"
            "22:08:21  m-0000000000000003  demo3     node1->node2  RolledBack  300ms     restore "
            "failed on node2:\n"
            "22:03:22  m-0000000000000001  demo2     node2->node1  Succeeded   412ms\n"
            "\n"
            "EVENTS\n"
            "  22:13:15.000  node.cordoned       node2                      takes no arrivals\n"
            "  22:13:17.000  migration.phase     demo2 node1->node2         Transferring "
            "[m-0000000000000002]\n"
            "  22:13:18.500  workload.placed     demo5@node1                Scheduled: placed on "
            "node1\n");
}

TEST(TopTest, EveryNodeHasABarAndNoLineIsWiderThanTheScreen) {
  for (int width : {40, 60, 80, 100, 160, 240}) {
    const std::string frame = RenderTopFrame(Model(), View(width));
    for (const auto& l : Lines(frame)) EXPECT_LE(static_cast<int>(l.size()), width) << l;
    for (const char* node : {"node1  [", "node2  [", "node3  ["}) {
      EXPECT_NE(frame.find(node), std::string::npos) << width << "\n" << frame;
    }
  }
}

TEST(TopTest, BarsStayOnAOneScaleWhenNothingIsOverloaded) {
  TopModel m = Model();
  m.nodes["items"][0]["load"] = 0.5;
  const std::string frame = RenderTopFrame(m, View());
  EXPECT_NE(frame.find("node1  [" + std::string(21, '#') + std::string(20, '.') + "]"),
            std::string::npos)
      << frame;
  EXPECT_EQ(frame.find("bars span"), std::string::npos);
}

TEST(TopTest, InteractiveTitleAndHeightLimit) {
  TopView v = View(100);
  v.interactive = true;
  v.height = 10;
  const auto lines = Lines(RenderTopFrame(Model(), v));
  v.height = 0;
  const size_t all = Lines(RenderTopFrame(Model(), v)).size();
  ASSERT_EQ(lines.size(), 10u);
  EXPECT_EQ(lines[0], "kmosix top  22:13:20  every 1s, q quits  https://10.77.0.1:7800");
  EXPECT_EQ(lines[9], "... " + std::to_string(all - 9) + " more lines (enlarge the window)");
}

TEST(TopTest, ColourDoesNotChangeTheVisibleText) {
  TopView plain = View(100), colour = View(100);
  colour.color = true;
  std::string a = RenderTopFrame(Model(), plain);
  std::string b = RenderTopFrame(Model(), colour);
  EXPECT_NE(a, b);
  EXPECT_NE(b.find("\x1b[31m"), std::string::npos);  // node1 over 1.0: red
  // Strip the escapes: the same text.
  std::string stripped;
  for (size_t i = 0; i < b.size(); ++i) {
    if (b[i] == '\x1b') {
      while (i < b.size() && b[i] != 'm') ++i;
      continue;
    }
    stripped += b[i];
  }
  EXPECT_EQ(stripped, a);
}

TEST(TopTest, FetchErrorIsShownWithTheAgeOfTheData) {
  TopModel m = Model();
  m.error = "Unreachable: https://10.77.0.1:7800: could not connect";
  m.fetched_ms = kNowMs - 7000;
  const auto lines = Lines(RenderTopFrame(m, View()));
  EXPECT_EQ(lines[1],
            "! Unreachable: https://10.77.0.1:7800: could not connect (data from 7s ago)");
}

TEST(TopTest, EmptyClusterFrame) {
  TopModel m;
  m.error = "Unreachable: x";
  const std::string frame = RenderTopFrame(m, View());
  EXPECT_NE(frame.find("No nodes."), std::string::npos);
  EXPECT_NE(frame.find("IN FLIGHT: none"), std::string::npos);
  EXPECT_EQ(frame.find("EVENTS"), std::string::npos);
}

// ---- the loop -----------------------------------------------------------------------

class FakeScreen final : public TopScreen {
 public:
  explicit FakeScreen(kmosix::testing::FakeClock& clock) : clock_(clock) {}
  bool Interactive() const override { return false; }
  bool Color() const override { return false; }
  int Width() override { return 100; }
  int Height() override { return 0; }
  void Begin() override { ++begins; }
  void Draw(const std::string& frame) override { frames.push_back(frame); }
  Wake Wait(std::chrono::milliseconds timeout) override {
    waits.push_back(timeout);
    if (on_wait) on_wait();
    if (!wakes.empty()) {
      Wake w = wakes.front();
      wakes.erase(wakes.begin());
      return w;
    }
    clock_.Advance(timeout);
    return Wake::kTimeout;
  }
  void End() override { ++ends; }

  std::vector<std::string> frames;
  std::vector<std::chrono::milliseconds> waits;
  std::vector<Wake> wakes;  // returned first, in order
  std::function<void()> on_wait;
  int begins = 0, ends = 0;

 private:
  kmosix::testing::FakeClock& clock_;
};

void ServeCluster(FakeHttp& http) {
  http.On("GET", "/v1/nodes", JsonAnswer(200, NodesFixture()));
  http.On("GET", "/v1/workloads", JsonAnswer(200, WorkloadsFixture()));
  http.On("GET", "/v1/migrations", JsonAnswer(200, MigrationsFixture()));
}

TEST(TopTest, IterationsStopTheLoop) {
  kmosix::testing::FakeClock clock;
  FakeHttp http;
  ServeCluster(http);
  ApiClient client(http, {"https://a:7800"});
  FakeScreen screen(clock);
  std::ostringstream err;
  TopOptions o;
  o.iterations = 3;
  o.interval_seconds = 2;
  EXPECT_EQ(RunTop(client, screen, clock, o, nullptr, err), kExitOk);
  ASSERT_EQ(screen.frames.size(), 3u);
  EXPECT_NE(screen.frames[0].find("frame 1"), std::string::npos);
  EXPECT_NE(screen.frames[2].find("frame 3"), std::string::npos);
  EXPECT_NE(screen.frames[2].find("node3  ["), std::string::npos);
  EXPECT_EQ(screen.waits, (std::vector<std::chrono::milliseconds>{
                              std::chrono::milliseconds(2000), std::chrono::milliseconds(2000)}));
  EXPECT_EQ(screen.begins, 1);
  EXPECT_EQ(screen.ends, 1);
  EXPECT_EQ(http.Calls().size(), 9u);
  EXPECT_EQ(err.str(), "");
}

TEST(TopTest, QuitAndSignalsEndTheLoopAndRestoreTheScreen) {
  struct Case {
    TopScreen::Wake wake;
    int code;
  };
  for (const Case& c : {Case{TopScreen::Wake::kQuit, 0}, Case{TopScreen::Wake::kInterrupt, 0},
                        Case{TopScreen::Wake::kTerminate, 143}}) {
    kmosix::testing::FakeClock clock;
    FakeHttp http;
    ServeCluster(http);
    ApiClient client(http, {"https://a:7800"});
    FakeScreen screen(clock);
    screen.wakes = {c.wake};
    std::ostringstream err;
    EXPECT_EQ(RunTop(client, screen, clock, {}, nullptr, err), c.code);
    EXPECT_EQ(screen.frames.size(), 1u);
    EXPECT_EQ(screen.ends, 1);
  }
}

TEST(TopTest, ResizeRedrawsWithoutFetching) {
  kmosix::testing::FakeClock clock;
  FakeHttp http;
  ServeCluster(http);
  ApiClient client(http, {"https://a:7800"});
  FakeScreen screen(clock);
  screen.wakes = {TopScreen::Wake::kResize, TopScreen::Wake::kQuit};
  std::ostringstream err;
  EXPECT_EQ(RunTop(client, screen, clock, {}, nullptr, err), kExitOk);
  EXPECT_EQ(screen.frames.size(), 2u);
  EXPECT_EQ(http.Calls().size(), 3u);
}

TEST(TopTest, AuthFailureStopsAtOnceWithExit5) {
  kmosix::testing::FakeClock clock;
  FakeHttp http;
  http.On("GET", "/v1/nodes", ErrorAnswer(401, "Unauthenticated", "missing bearer token"));
  ApiClient client(http, {"https://a:7800"});
  FakeScreen screen(clock);
  std::ostringstream err;
  EXPECT_EQ(RunTop(client, screen, clock, {}, nullptr, err), kExitAuth);
  EXPECT_TRUE(screen.frames.empty());
  EXPECT_EQ(screen.ends, 1);
  EXPECT_NE(err.str().find("Unauthenticated (HTTP 401): missing bearer token"), std::string::npos);
}

TEST(TopTest, OutageKeepsTheLastDataAndReturnsItsCode) {
  kmosix::testing::FakeClock clock;
  FakeHttp http;
  ServeCluster(http);
  ApiClient client(http, {"https://a:7800"});
  FakeScreen screen(clock);
  // After the first frame the server goes away.
  screen.on_wait = [&] {
    http.Fail("https://a:7800", TransportFailure::kConnect, "could not connect");
  };
  std::ostringstream err;
  TopOptions o;
  o.iterations = 2;
  EXPECT_EQ(RunTop(client, screen, clock, o, nullptr, err), kExitUnreachable);
  ASSERT_EQ(screen.frames.size(), 2u);
  EXPECT_NE(
      screen.frames[1].find("! Unreachable: https://a:7800: could not connect (data from 1s ago)"),
      std::string::npos)
      << screen.frames[1];
  EXPECT_NE(screen.frames[1].find("  demo1  Running"), std::string::npos);
  EXPECT_EQ(err.str(), "kmosixctl: Unreachable: https://a:7800: could not connect\n");
}

class FakeEvents final : public EventSource {
 public:
  std::vector<json> Recent(size_t n) override {
    auto all = EventsFixture();
    if (all.size() > n) all.erase(all.begin(), all.end() - static_cast<std::ptrdiff_t>(n));
    return all;
  }
  bool Available() override { return true; }
};

TEST(TopTest, EventsFromTheFeedAreShown) {
  kmosix::testing::FakeClock clock;
  FakeHttp http;
  ServeCluster(http);
  ApiClient client(http, {"https://a:7800"});
  FakeScreen screen(clock);
  FakeEvents events;
  std::ostringstream err;
  TopOptions o;
  o.iterations = 1;
  EXPECT_EQ(RunTop(client, screen, clock, o, &events, err), kExitOk);
  ASSERT_EQ(screen.frames.size(), 1u);
  EXPECT_NE(screen.frames[0].find("node.cordoned       node2"), std::string::npos);
}

}  // namespace
}  // namespace kmosix::ctl
