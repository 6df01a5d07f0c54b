// The balancing simulator (bench/sim): its event order, its processor sharing
// on hand-computed cases, determinism by seed, and what each strategy may do.
#include "bench/sim/sim.h"

#include <gtest/gtest.h>

#include "bench/sim/plot.h"

namespace kmosix::sim {
namespace {

TEST(SimEventQueue, PopsByTimeThenInsertionOrder) {
  EventQueue q;
  q.Push(5, 0, 1);
  q.Push(1, 0, 2);
  q.Push(3, 0, 3);
  q.Push(1, 0, 4);  // same time as 2, pushed later
  q.Push(0.5, 0, 5);
  std::vector<int64_t> order;
  while (!q.Empty()) order.push_back(q.Pop().id);
  EXPECT_EQ(order, (std::vector<int64_t>{5, 2, 4, 3, 1}));
}

Trace OneNode(double capacity, double speed, std::vector<Arrival> arrivals) {
  Trace t;
  t.nodes.push_back(NodeSpec{capacity, speed, 64ull << 30});
  t.capacity = capacity * speed;
  t.arrivals = std::move(arrivals);
  t.horizon_s = 100;
  return t;
}

// Two 1-core workloads of 10 and 20 CPU-s on one 1-core node: both run at half
// speed until the first is done at t=20 (slowdown 20/10 = 2); the second has
// 10 left, alone at full speed: done at t=30 (slowdown 30/20 = 1.5).
TEST(SimProcessorSharing, SharesACoreAndSpeedsUpWhenAlone) {
  const Trace t = OneNode(1, 1, {{0, 1, 10, 1 << 20}, {0, 1, 20, 1 << 20}});
  const Result r = Simulate(t, Strategy::kPlacement, SimConfig{});
  EXPECT_EQ(r.unfinished, 0);
  EXPECT_NEAR(r.mean_slowdown, (2.0 + 1.5) / 2, 1e-6);
  EXPECT_NEAR(r.p99_slowdown, 2.0, 1e-6);
  // The ideal pool of one node is the same node.
  EXPECT_NEAR(Simulate(t, Strategy::kIdeal, SimConfig{}).mean_slowdown, 1.75, 1e-6);
}

// Under capacity every workload runs at its ask, times the speed: a 0.5-core
// workload of 10 CPU-s on a 2-core node of speed 2 with a 1-core neighbour
// takes 10 / (0.5 * 2) = 10 s, its reference 10 / 0.5 = 20 s: slowdown 0.5.
TEST(SimProcessorSharing, UnderCapacityRunsAtTheAskTimesSpeed) {
  const Trace t = OneNode(2, 2, {{0, 0.5, 10, 1 << 20}, {0, 1, 10, 1 << 20}});
  const Result r = Simulate(t, Strategy::kPlacement, SimConfig{});
  EXPECT_NEAR(r.mean_slowdown, 0.5, 1e-6);
}

// A late arrival slows the one already running: 1 core of 10 CPU-s alone for
// 4 s (4 done), then shared with an equal one from t=4: 6 left at 0.5/s ->
// t=16 (slowdown 1.6); the newcomer did 6 by then, 4 left alone -> t=20
// (slowdown 16/10 = 1.6).
TEST(SimProcessorSharing, LateArrivalSharesFromItsArrival) {
  const Trace t = OneNode(1, 1, {{0, 1, 10, 1 << 20}, {4, 1, 10, 1 << 20}});
  const Result r = Simulate(t, Strategy::kPlacement, SimConfig{});
  EXPECT_NEAR(r.mean_slowdown, 1.6, 1e-6);
  EXPECT_NEAR(r.p99_slowdown, 1.6, 1e-6);
}

// With phases, a workload alone on an idle speed-1 node takes exactly its
// reference time (the sum of each phase's work / its ask): slowdown 1.
TEST(SimProcessorSharing, PhasesAloneOnAnIdleNodeGiveSlowdownOne) {
  Trace t = OneNode(4, 1, {{0, 2, 3000, 1 << 20}, {5000, 0.5, 600, 1 << 20}});
  t.phases.mean_s = 60;
  t.phases.quiet_fraction = 0.25;
  t.phases.seed = 42;
  t.horizon_s = 10000;  // the drain cap is 20x this
  for (Strategy s : {Strategy::kPlacement, Strategy::kIdeal}) {
    const Result r = Simulate(t, s, SimConfig{});
    EXPECT_EQ(r.unfinished, 0) << Name(s);
    EXPECT_NEAR(r.mean_slowdown, 1.0, 1e-6) << Name(s);
  }
  // Sharing one core, the same two workloads at once are slower than alone.
  Trace shared = OneNode(1, 1, {{0, 1, 300, 1 << 20}, {0, 1, 300, 1 << 20}});
  shared.phases = t.phases;
  EXPECT_GT(Simulate(shared, Strategy::kPlacement, SimConfig{}).mean_slowdown, 1.0);
}

// Against queueing theory: one 1-core node, unit asks, Poisson arrivals (no
// bursts, no phases) at load rho is an M/G/1 processor-sharing queue, whose
// mean slowdown is 1 / (1 - rho) whatever the work distribution.
TEST(SimProcessorSharing, OneNodeMatchesMG1ProcessorSharing) {
  TraceConfig c;
  c.nodes = 1;
  c.node_cores = 1;
  c.fast_fraction = 0;
  c.unit_cpu = true;
  c.burst_high = c.burst_low = 1;
  c.phase_mean_s = 0;
  c.work_min_s = 10;
  c.work_max_s = 40;
  c.hours = 300;
  for (double rho : {0.5, 0.8}) {
    c.load = rho;
    const Trace t = MakeTrace(c, 9);
    const Result r = Simulate(t, Strategy::kPlacement, SimConfig{});
    EXPECT_NEAR(r.mean_slowdown, 1 / (1 - rho), 0.1 / (1 - rho)) << "rho " << rho;
    EXPECT_NEAR(r.utilisation, rho, 0.05) << "rho " << rho;
  }
}

TraceConfig Small(int nodes, double load, double hours) {
  TraceConfig c;
  c.nodes = nodes;
  c.load = load;
  c.hours = hours;
  return c;
}

TEST(SimStrategies, SameSeedGivesTheSameTable) {
  const TraceConfig tc = Small(8, 0.8, 0.5);
  SimConfig sc;
  sc.seed = 7;
  for (Strategy s : kAllStrategies) {
    const Result a = Simulate(MakeTrace(tc, 7), s, sc);
    const Result b = Simulate(MakeTrace(tc, 7), s, sc);
    EXPECT_EQ(a.workloads, b.workloads) << Name(s);
    EXPECT_EQ(a.mean_slowdown, b.mean_slowdown) << Name(s);
    EXPECT_EQ(a.p99_slowdown, b.p99_slowdown) << Name(s);
    EXPECT_EQ(a.work_lost, b.work_lost) << Name(s);
    EXPECT_EQ(a.migrations_per_workload, b.migrations_per_workload) << Name(s);
    EXPECT_EQ(a.pingpong_per_workload, b.pingpong_per_workload) << Name(s);
    EXPECT_EQ(a.utilisation, b.utilisation) << Name(s);
  }
  // And another seed another trace.
  EXPECT_NE(MakeTrace(tc, 7).arrivals.size(), MakeTrace(tc, 8).arrivals.size());
}

TEST(SimStrategies, OfferedLoadMatchesTheTrace) {
  const TraceConfig tc = Small(64, 0.8, 4);
  const Trace t = MakeTrace(tc, 3);
  double work = 0;
  for (const Arrival& a : t.arrivals) work += a.work;
  // Heavy tails: the realised load of 4 h wanders; within 25 %.
  EXPECT_NEAR(work / (t.capacity * t.horizon_s), 0.8, 0.2);
}

TEST(SimStrategies, PlacementNeverMigratesAndKmosixLosesNoWork) {
  const Trace t = MakeTrace(Small(8, 0.9, 1), 11);
  const Result placement = Simulate(t, Strategy::kPlacement, SimConfig{});
  EXPECT_EQ(placement.migrations_per_workload, 0);
  EXPECT_EQ(placement.pingpong_per_workload, 0);
  EXPECT_EQ(placement.work_lost, 0);
  const Result kmosix = Simulate(t, Strategy::kKmosix, SimConfig{});
  EXPECT_GT(kmosix.migrations_per_workload, 0) << "the real Balance moved nothing";
  EXPECT_EQ(kmosix.work_lost, 0);
  EXPECT_EQ(kmosix.unfinished, 0);
}

TEST(SimStrategies, EvictRestartLosesWork) {
  const Trace t = MakeTrace(Small(16, 0.95, 1), 5);
  const Result r = Simulate(t, Strategy::kEvictRestart, SimConfig{});
  EXPECT_GT(r.migrations_per_workload, 0);
  EXPECT_GT(r.work_lost, 0);
}

TEST(SimStrategies, IdealIsABound) {
  for (uint64_t seed : {1, 2}) {
    const Trace t = MakeTrace(Small(8, 0.8, 0.5), seed);
    const double ideal = Simulate(t, Strategy::kIdeal, SimConfig{}).mean_slowdown;
    for (Strategy s : {Strategy::kPlacement, Strategy::kKmosix, Strategy::kEvictRestart})
      EXPECT_LE(ideal, Simulate(t, s, SimConfig{}).mean_slowdown) << Name(s) << " seed " << seed;
  }
}

TEST(SimTrace, CsvRoundTripsAndRefusesMalformedLines) {
  const TraceConfig tc = Small(8, 0.8, 0.25);
  const Trace t = MakeTrace(tc, 4);
  auto back = ReadTraceCsv(WriteTraceCsv(t), tc, 4);
  ASSERT_TRUE(back.ok()) << back.status().message();
  ASSERT_EQ(back->arrivals.size(), t.arrivals.size());
  ASSERT_EQ(back->nodes.size(), t.nodes.size());
  for (size_t i = 0; i < t.arrivals.size(); ++i) {
    EXPECT_NEAR(back->arrivals[i].time, t.arrivals[i].time, 1e-5);
    EXPECT_EQ(back->arrivals[i].cpu, t.arrivals[i].cpu);
    EXPECT_NEAR(back->arrivals[i].work, t.arrivals[i].work, 1e-5);
  }
  const std::string header = "time_s,cpu,work_cpu_s,memory_mib\n";
  auto sorted = ReadTraceCsv(header + "# c\n5,1,10,64\n1,0.5,20,32\n", tc, 4);
  ASSERT_TRUE(sorted.ok()) << sorted.status().message();
  EXPECT_EQ(sorted->arrivals[0].time, 1);
  EXPECT_EQ(sorted->arrivals[1].memory_bytes, 64ull << 20);
  EXPECT_EQ(sorted->horizon_s, 5);
  for (const std::string& bad :
       {header + "1,1,10\n", header + "1,1,10,64,9\n", header + "1,0,10,64\n",
        header + "1,x,10,64\n", std::string("1,1,10,64\n")}) {
    auto r = ReadTraceCsv(bad, tc, 4);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalid) << bad;
  }
}

TEST(SimPlot, EncodesAPng) {
  const std::string png = EncodePng(2, 1, {255, 0, 0, 0, 0, 255});
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_NE(png.find("IHDR"), std::string::npos);
  EXPECT_NE(png.find("IEND"), std::string::npos);
  EXPECT_FALSE(WritePlot("/nonexistent-dir/x.png", "t", "x", {{"a", {{0, 1}, {1, 2}}}}).ok());
}

}  // namespace
}  // namespace kmosix::sim
