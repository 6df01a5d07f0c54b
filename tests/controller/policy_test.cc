// Unit and property tests for the balancing policy (controller/policy.h).
#include "controller/policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace kmosix::controller {
namespace {

constexpr uint64_t kMiB = 1024ull * 1024;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr int64_t kNow = 1'000'000;  // ms

// Deterministic Random (SplitMix64 over a seed).
class FakeRandom final : public Random {
 public:
  explicit FakeRandom(uint64_t seed = 1) : state_(seed) {}
  uint64_t Next() override {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  int Int(int lo, int hi) {
    return lo + static_cast<int>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }
  bool Chance(double p) { return Uniform() < p; }

 private:
  uint64_t state_;
};

PolicyNode Node(const std::string& name, double capacity = 1) {
  PolicyNode n;
  n.name = name;
  n.cpu_capacity = capacity;
  n.memory_capacity_bytes = 16 * kGiB;
  n.memory_available_bytes = 12 * kGiB;
  return n;
}

// A workload that has lived on its node for 10 minutes.
PolicyWorkload Wl(const std::string& name, const std::string& node, double cpu,
                  uint64_t memory = 100 * kMiB) {
  PolicyWorkload w;
  w.name = name;
  w.node = node;
  w.cpu = cpu;
  w.memory_bytes = memory;
  w.created_ms = kNow - 600'000;
  w.started_ms = kNow - 600'000;
  return w;
}

ClusterSnapshot Snap(std::vector<PolicyNode> nodes, std::vector<PolicyWorkload> workloads,
                     std::vector<PolicyMigration> in_flight = {}) {
  ClusterSnapshot s;
  s.now_ms = kNow;
  s.nodes = std::move(nodes);
  s.workloads = std::move(workloads);
  s.in_flight = std::move(in_flight);
  return s;
}

bool AnyContains(const std::vector<std::string>& lines, const std::string& needle) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](const std::string& l) { return l.find(needle) != std::string::npos; });
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

std::string Moves(const BalanceResult& r) {
  std::string out;
  for (const Decision& d : r.moves) out += d.workload + ":" + d.source + "->" + d.target + " ";
  return out;
}

// ---- table-driven cases ----------------------------------------------------

struct Expect {
  std::string workload;  // "" = any
  std::string source;
  std::set<std::string> targets;  // any of
  Decision::Kind kind = Decision::Kind::kCpu;
};

struct Case {
  std::string name;
  ClusterSnapshot snapshot;
  PolicyConfig config;
  std::vector<Expect> moves;  // exactly these, in order
  std::string held;           // a held_back line contains this ("" = not checked)
};

Case MakeCase(std::string name, ClusterSnapshot snapshot) {
  Case c;
  c.name = std::move(name);
  c.snapshot = std::move(snapshot);
  return c;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  auto hot = [](const std::string& node, int n, double cpu, const std::string& prefix) {
    std::vector<PolicyWorkload> ws;
    for (int i = 0; i < n; ++i) ws.push_back(Wl(prefix + std::to_string(i + 1), node, cpu));
    return ws;
  };
  {
    Case c =
        MakeCase("HotNodeOneMove", Snap({Node("a"), Node("b"), Node("c")}, hot("a", 4, 0.5, "w")));
    c.moves = {{"", "a", {"b", "c"}}};
    cases.push_back(c);
  }
  {
    // a at 1.0, b at 0.5: 0.5 + 1.3 x 0.5 = 1.15 >= 1.0.
    auto ws = hot("a", 2, 0.5, "w");
    ws.push_back(Wl("x", "b", 0.5));
    Case c = MakeCase("BelowHysteresisNoMove", Snap({Node("a"), Node("b")}, ws));
    c.held = "hysteresis not met for w";
    cases.push_back(c);
  }
  {
    // Exactly at the hysteresis (1.0 = 0 + 1 x 1.0): strict, no move.
    Case c = MakeCase("AtHysteresisNoMove", Snap({Node("a"), Node("b")}, {Wl("w1", "a", 1.0)}));
    c.config.stability = 1.0;
    c.held = "hysteresis not met for w1 to b: 0.00 + 1 x 1.00 = 1.00 >= 1.00";
    cases.push_back(c);
  }
  {
    // Just above: 1.2 > 0 + 1.3 x 0.6 = 0.78.
    Case c = MakeCase("AboveHysteresisMoves", Snap({Node("a"), Node("b")}, hot("a", 2, 0.6, "w")));
    c.moves = {{"", "a", {"b"}}};
    cases.push_back(c);
  }
  {
    // Noise-sized workloads pass the hysteresis but would even the loads by
    // less than min_gain (1.2 vs 0 -> 1.18 vs 0.02: 0.04 closer).
    auto ws = hot("a", 60, 0.02, "t");
    Case c = MakeCase("BelowMinGainNoMove", Snap({Node("a"), Node("b")}, ws));
    c.held = "evens the loads by 0.040 < min gain 0.050";
    cases.push_back(c);
  }
  {
    // Idle workloads on a node loaded by something else are not moved.
    std::vector<PolicyNode> nodes = {Node("a"), Node("b")};
    nodes[0].background_cpu = 2.0;
    Case c = MakeCase("IdleWorkloadsNotMoved", Snap(nodes, hot("a", 3, 0.0, "i")));
    c.held = "evens the loads by 0.000";
    cases.push_back(c);
  }
  {
    auto ws = hot("a", 4, 0.5, "w");
    ws[0].pinned = true;
    ws[1].migratable = false;
    ws[2].migrating = true;
    ws[3].pinned = true;
    Case c = MakeCase("PinnedNonMigratableMigratingNeverMoved", Snap({Node("a"), Node("b")}, ws));
    c.held =
        "no movable workload (3 pinned, non-migratable or held by a MigrationPolicy, 1 migrating)";
    cases.push_back(c);
  }
  {
    auto ws = hot("a", 4, 0.5, "w");
    ws[0].pinned = true;
    ws[1].migratable = false;
    ws[2].migrating = true;
    Case c = MakeCase("OnlyTheFreeWorkloadMoves", Snap({Node("a"), Node("b")}, ws));
    c.moves = {{"w4", "a", {"b"}}};
    cases.push_back(c);
  }
  {
    std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c"), Node("d")};
    nodes[1].cordoned = true;
    nodes[2].ready = false;
    Case c = MakeCase("CordonedAndNotReadyNeverTargets", Snap(nodes, hot("a", 4, 0.5, "w")));
    c.moves = {{"", "a", {"d"}}};
    cases.push_back(c);
  }
  {
    std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c")};
    nodes[1].cordoned = true;
    nodes[2].ready = false;
    Case c = MakeCase("NoEligibleTarget", Snap(nodes, hot("a", 4, 0.5, "w")));
    c.held = "no eligible target";
    cases.push_back(c);
  }
  {
    auto ws = hot("a", 4, 0.5, "w");
    for (auto& w : ws) w.started_ms = kNow - 10'000;  // arrived 10 s ago
    Case c = MakeCase("ResidencyGate", Snap({Node("a"), Node("b")}, ws));
    c.held = "on a for 10 s < min residency 30 s";
    cases.push_back(c);
  }
  {
    auto ws = hot("a", 4, 0.5, "w");
    ws[0].started_ms = kNow - 10'000;
    ws[1].started_ms = kNow - 10'000;
    ws[2].started_ms = kNow - 10'000;
    Case c = MakeCase("ResidencyGateLeavesTheSettled", Snap({Node("a"), Node("b")}, ws));
    c.moves = {{"w4", "a", {"b"}}};
    cases.push_back(c);
  }
  {
    // 1 GiB at 10 MiB/s costs 102.4 s; the workloads are 60 s old.
    auto ws = hot("a", 4, 0.5, "w");
    for (auto& w : ws) {
      w.memory_bytes = kGiB;
      w.created_ms = kNow - 60'000;
      w.started_ms = kNow - 60'000;
    }
    Case c = MakeCase("AgeGate", Snap({Node("a"), Node("b")}, ws));
    c.config.bandwidth_bytes_per_s = 10.0 * kMiB;
    c.held = "too young: age 60 s <= migration cost 102.4 s";
    cases.push_back(c);
  }
  {
    // a is already the source of a migration in flight: at the per-node limit.
    auto ws = hot("a", 4, 0.5, "w");
    ws.push_back(Wl("m", "a", 0.0));
    Case c = MakeCase("PerNodeLimitCountsInFlightSource",
                      Snap({Node("a"), Node("b"), Node("c"), Node("x")}, ws, {{"m", "a", "x"}}));
    c.held = "a load 2.00: node limit reached (1 migration(s) involving it, max 1)";
    cases.push_back(c);
  }
  {
    // b is the target of a migration in flight: the move goes to c.
    auto ws = hot("a", 4, 0.5, "w");
    ws.push_back(Wl("m", "x", 0.0));
    Case c = MakeCase("PerNodeLimitCountsInFlightTarget",
                      Snap({Node("a"), Node("b"), Node("c"), Node("x")}, ws, {{"m", "x", "b"}}));
    c.config.max_cluster = 5;
    c.moves = {{"", "a", {"c"}}};
    cases.push_back(c);
  }
  {
    // Two migrations in flight elsewhere reach max_cluster = 2.
    auto ws = hot("a", 4, 0.5, "w");
    ws.push_back(Wl("m1", "x", 0.0));
    ws.push_back(Wl("m2", "y", 0.0));
    Case c = MakeCase("ClusterLimitCountsInFlight",
                      Snap({Node("a"), Node("b"), Node("x"), Node("y"), Node("p"), Node("q")}, ws,
                           {{"m1", "x", "p"}, {"m2", "y", "q"}}));
    c.held = "cluster limit reached (2 migration(s) in flight, max 2)";
    cases.push_back(c);
  }
  {
    // Two hot nodes, one migration in flight, max_cluster 3: two moves.
    auto ws = hot("a", 4, 0.5, "w");
    auto more = hot("b", 4, 0.5, "v");
    ws.insert(ws.end(), more.begin(), more.end());
    ws.push_back(Wl("m1", "x", 0.0));
    Case c =
        MakeCase("ClusterLimitAllowsTheRest",
                 Snap({Node("a"), Node("b"), Node("c"), Node("d"), Node("e"), Node("x"), Node("y")},
                      ws, {{"m1", "x", "y"}}));
    c.config.max_cluster = 3;
    c.moves = {{"", "", {"c", "d", "e"}}, {"", "", {"c", "d", "e"}}};
    cases.push_back(c);
  }
  {
    // Per-node limit 2: the hot node sheds two workloads in one round.
    Case c = MakeCase("SeveralMovesPerRound",
                      Snap({Node("a"), Node("b"), Node("c"), Node("d")}, hot("a", 6, 0.5, "w")));
    c.config.max_per_node = 2;
    c.config.max_cluster = 10;
    c.moves = {{"", "a", {"b", "c", "d"}}, {"", "a", {"b", "c", "d"}}};
    cases.push_back(c);
  }
  {
    // a is short of memory (1 GiB available < 10% of 16 GiB); b is CPU-hot.
    // With one migration allowed, the memory move wins, biggest workload first,
    // to the least-loaded node with room (c is less loaded but has no room).
    std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c"), Node("d")};
    nodes[0].memory_available_bytes = 1 * kGiB;
    nodes[2].memory_available_bytes = 2 * kGiB;  // room 2 - 1.6 GiB < 1 GiB
    auto ws = hot("b", 4, 0.5, "w");
    ws.push_back(Wl("small", "a", 0.1, 200 * kMiB));
    ws.push_back(Wl("big", "a", 0.1, 1 * kGiB));
    ws.push_back(Wl("d1", "d", 0.2));
    Case c = MakeCase("MemoryUsheringBeforeCpu", Snap(nodes, ws));
    c.config.max_cluster = 1;
    c.moves = {{"big", "a", {"d"}, Decision::Kind::kMemory}};
    c.held = "cluster limit reached";
    cases.push_back(c);
  }
  {
    // Memory PSI over the threshold: one workload is shed.
    std::vector<PolicyNode> nodes = {Node("a"), Node("b")};
    nodes[0].psi_memory_some10 = 35.0;
    Case c =
        MakeCase("MemoryPsiSheds",
                 Snap(nodes, {Wl("w1", "a", 0.1, 300 * kMiB), Wl("w2", "a", 0.1, 500 * kMiB)}));
    c.moves = {{"w2", "a", {"b"}, Decision::Kind::kMemory}};
    cases.push_back(c);
  }
  {
    // A node short of memory never receives CPU load.
    std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c")};
    nodes[1].psi_memory_some10 = 50.0;
    auto ws = hot("a", 4, 0.5, "w");
    ws.push_back(Wl("c1", "c", 0.5));
    Case c = MakeCase("ShortNodeNeverTarget", Snap(nodes, ws));
    c.moves = {{"", "a", {"c"}}};
    c.held = "memory: b short of memory (memory psi some10 50.0% >= 20.0%): no movable workload";
    cases.push_back(c);
  }
  {
    // w1 (1.0 cores) is in flight a->b and already weighs on b: a is at 0.5,
    // b at 1.0, c idle; nothing is worth moving (b's only load is migrating).
    auto ws = std::vector<PolicyWorkload>{Wl("w1", "a", 1.0), Wl("w2", "a", 0.5)};
    ws[0].migrating = true;
    Case c = MakeCase("InFlightProjectedToTarget",
                      Snap({Node("a"), Node("b"), Node("c")}, ws, {{"w1", "a", "b"}}));
    c.config.max_per_node = 2;
    c.config.max_cluster = 5;
    c.held = "hysteresis not met for w2 to c: 0.00 + 1.3 x 0.50 = 0.65 >= 0.50";
    cases.push_back(c);
  }
  {
    // A fast target: l_c(B) is c's cpu over B's capacity*speed.
    std::vector<PolicyNode> nodes = {Node("a"), Node("big", 4)};
    nodes[1].background_cpu = 2.0;  // 0.5 of its 4 cores
    Case c = MakeCase("HeterogeneousTarget", Snap(nodes, hot("a", 2, 0.5, "w")));
    c.moves = {{"", "a", {"big"}}};
    cases.push_back(c);
  }
  return cases;
}

class PolicyCaseTest : public ::testing::TestWithParam<Case> {};

TEST_P(PolicyCaseTest, Decides) {
  const Case& c = GetParam();
  FakeRandom random(7);
  BalanceResult r = Balance(c.snapshot, c.config, random);
  SCOPED_TRACE("moves: " + Moves(r) + "\nheld:\n" + Join(r.held_back));
  ASSERT_EQ(r.moves.size(), c.moves.size());
  for (size_t i = 0; i < c.moves.size(); ++i) {
    const Expect& e = c.moves[i];
    const Decision& d = r.moves[i];
    if (!e.workload.empty()) {
      EXPECT_EQ(d.workload, e.workload);
    }
    if (!e.source.empty()) {
      EXPECT_EQ(d.source, e.source);
    }
    EXPECT_TRUE(e.targets.count(d.target)) << d.target;
    EXPECT_EQ(d.kind, e.kind);
    EXPECT_FALSE(d.reason.empty());
  }
  if (!c.held.empty()) {
    EXPECT_TRUE(AnyContains(r.held_back, c.held)) << c.held;
  }
  EXPECT_LE(r.held_back.size(), 32u);
}

INSTANTIATE_TEST_SUITE_P(Table, PolicyCaseTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// ---- specific cases ----------------------------------------------------------

TEST(PolicyTest, CpuMoveCarriesItsReasonAndNumbers) {
  auto w1 = Wl("w1", "node-a", 0.5), w2 = Wl("w2", "node-a", 0.5), w3 = Wl("w3", "node-a", 1.0);
  for (auto* w : {&w1, &w2, &w3}) w->created_ms = w->started_ms = kNow - 42'000;
  FakeRandom random;
  BalanceResult r =
      Balance(Snap({Node("node-a"), Node("node-b")}, {w1, w2, w3}), PolicyConfig{}, random);
  ASSERT_EQ(r.moves.size(), 1u) << Join(r.held_back);
  const Decision& d = r.moves[0];
  // w3 evens the two nodes best (1.0 / 1.0).
  EXPECT_EQ(d.workload, "w3");
  EXPECT_EQ(d.kind, Decision::Kind::kCpu);
  EXPECT_EQ(d.source, "node-a");
  EXPECT_EQ(d.target, "node-b");
  EXPECT_DOUBLE_EQ(d.source_load, 2.0);
  EXPECT_DOUBLE_EQ(d.target_load, 0.0);
  EXPECT_DOUBLE_EQ(d.workload_load, 1.0);
  EXPECT_EQ(d.reason,
            "cpu: node-a load 2.00 > node-b load 0.00 + 1.3 x 1.00 (workload w3: 1.00 cores, age "
            "42 s, on node-a for 42 s)");
}

// A MigrationPolicy's knobs apply to the workloads it selects only.
TEST(PolicyTest, PerWorkloadPolicyKnobs) {
  FakeRandom random;
  auto snap = [](PolicyWorkload mover) {
    PolicyWorkload rest = Wl("rest", "node-a", 0.5);
    rest.pinned = true;
    return Snap({Node("node-a"), Node("node-b")}, {mover, rest});
  };
  // node-a 1.5 vs node-b 0: moving w (1.0) passes 1.3 but not a factor of 2.
  PolicyWorkload w = Wl("w", "node-a", 1.0);
  ASSERT_EQ(Balance(snap(w), PolicyConfig{}, random).moves.size(), 1u);
  w.stability = 2.0;
  BalanceResult strict = Balance(snap(w), PolicyConfig{}, random);
  for (const auto& d : strict.moves) EXPECT_NE(d.workload, "w") << d.reason;
  w.stability = 1.1;
  BalanceResult loose = Balance(snap(w), PolicyConfig{}, random);
  ASSERT_FALSE(loose.moves.empty());
  EXPECT_NE(loose.moves[0].reason.find("+ 1.1 x"), std::string::npos) << loose.moves[0].reason;

  // Its own minimum residency gates it, and says so.
  w = Wl("w", "node-a", 1.0);
  w.started_ms = kNow - 60'000;
  w.min_residency_ms = 120'000;
  BalanceResult young = Balance(snap(w), PolicyConfig{}, random);
  for (const auto& d : young.moves) EXPECT_NE(d.workload, "w");
  EXPECT_TRUE(AnyContains(young.held_back, "min residency 120 s")) << Join(young.held_back);

  // Balancing disabled for it: never moved, and the dry run says why.
  w = Wl("w", "node-a", 1.0);
  w.balance = false;
  BalanceResult off = Balance(snap(w), PolicyConfig{}, random);
  EXPECT_TRUE(off.moves.empty());
  EXPECT_TRUE(AnyContains(off.held_back, "held by a MigrationPolicy")) << Join(off.held_back);
}

TEST(PolicyTest, MemoryMoveCarriesItsReason) {
  std::vector<PolicyNode> nodes = {Node("a"), Node("b")};
  nodes[0].memory_available_bytes = 1 * kGiB;
  FakeRandom random;
  BalanceResult r = Balance(Snap(nodes, {Wl("big", "a", 0.25, 1 * kGiB)}), PolicyConfig{}, random);
  ASSERT_EQ(r.moves.size(), 1u) << Join(r.held_back);
  EXPECT_EQ(r.moves[0].kind, Decision::Kind::kMemory);
  EXPECT_EQ(r.moves[0].reason,
            "memory: a short of memory (available 1024 MiB < 10% of 16384 MiB) -> big (1024 MiB, "
            "0.25 cores) to b (available 12288 MiB, load 0.00)");
}

TEST(PolicyTest, MemoryTargetsNeedRoomBeyondTheMargin) {
  // b has 2 GiB available; margin 1.6 GiB; a 500 MiB workload does not fit.
  std::vector<PolicyNode> nodes = {Node("a"), Node("b")};
  nodes[0].memory_available_bytes = 1 * kGiB;
  nodes[1].memory_available_bytes = 2 * kGiB;
  FakeRandom random;
  BalanceResult r = Balance(Snap(nodes, {Wl("w", "a", 0.1, 500 * kMiB)}), PolicyConfig{}, random);
  EXPECT_TRUE(r.moves.empty()) << Moves(r);
  EXPECT_TRUE(AnyContains(r.held_back, "no target with room for w (500 MiB)")) << Join(r.held_back);
}

TEST(PolicyTest, MemoryReservationsAccumulateWithinARound) {
  // Two short nodes each shed a 3 GiB workload; c has room for only one
  // (5 GiB available, 1.6 GiB margin), d gets the other.
  std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c"), Node("d")};
  nodes[0].memory_available_bytes = 1 * kGiB;
  nodes[1].memory_available_bytes = 1 * kGiB;
  nodes[2].memory_available_bytes = 5 * kGiB;
  nodes[3].memory_available_bytes = 5 * kGiB;
  nodes[3].background_cpu = 0.5;  // c is preferred (less loaded)
  FakeRandom random;
  PolicyConfig config;
  config.max_cluster = 4;
  config.max_per_node = 2;
  BalanceResult r = Balance(
      Snap(nodes, {Wl("wa", "a", 0.1, 3 * kGiB), Wl("wb", "b", 0.1, 3 * kGiB)}), config, random);
  ASSERT_EQ(r.moves.size(), 2u) << Join(r.held_back);
  std::set<std::string> targets = {r.moves[0].target, r.moves[1].target};
  EXPECT_EQ(targets, (std::set<std::string>{"c", "d"}));
}

TEST(PolicyTest, NodeLoadsProjectInFlightMigrations) {
  std::vector<PolicyNode> nodes = {Node("a"), Node("b", 2), Node("c")};
  nodes[1].speed = 2;  // b: 4 reference cores
  nodes[2].background_cpu = 0.25;
  auto s = Snap(
      nodes,
      {Wl("w1", "a", 1.0), Wl("w2", "a", 0.5), Wl("w3", "b", 2.0), Wl("ghost", "nowhere", 3.0)},
      {{"w1", "a", "b"}});
  std::vector<double> loads = NodeLoads(s);
  ASSERT_EQ(loads.size(), 3u);
  EXPECT_DOUBLE_EQ(loads[0], 0.5);
  EXPECT_DOUBLE_EQ(loads[1], 0.75);  // (2.0 + 1.0) / 4
  EXPECT_DOUBLE_EQ(loads[2], 0.25);
}

TEST(PolicyTest, EmptySnapshotIsHarmless) {
  FakeRandom random;
  BalanceResult r = Balance(ClusterSnapshot{}, PolicyConfig{}, random);
  EXPECT_TRUE(r.moves.empty());
  EXPECT_TRUE(NodeLoads(ClusterSnapshot{}).empty());
}

TEST(PolicyTest, OddInputsAreHarmless) {
  // Duplicate names, unknown nodes, NaN/negative numbers, extreme timestamps,
  // zero capacity: no crash, no move onto a broken node, finite loads.
  std::vector<PolicyNode> nodes = {Node("a"), Node("a"), Node("zero", 0), Node("nan"), Node("ok")};
  nodes[3].background_cpu = NAN;
  nodes[3].speed = NAN;
  nodes[4].psi_memory_some10 = NAN;
  std::vector<PolicyWorkload> ws;
  for (int i = 0; i < 6; ++i) ws.push_back(Wl("w" + std::to_string(i), "a", 0.5));
  ws[0].cpu = NAN;
  ws[1].cpu = -3;
  ws[2].created_ms = INT64_MIN;
  ws[2].started_ms = INT64_MIN;
  ws[3].created_ms = INT64_MAX;
  ws.push_back(Wl("lost", "nowhere", 1.0));
  auto s = Snap(nodes, ws, {{"ghost", "nowhere", "a"}, {"w5", "a", "nowhere"}});
  s.now_ms = INT64_MAX;
  PolicyConfig c;
  c.max_cluster = 10;
  c.max_per_node = 10;
  FakeRandom random;
  BalanceResult r = Balance(s, c, random);
  for (const Decision& d : r.moves) EXPECT_EQ(d.target, "ok") << d.reason;
  for (double l : NodeLoads(s)) EXPECT_TRUE(std::isfinite(l));
  auto placed = Place(s, PlacementRequest{1, 0, ""}, random);
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_TRUE(*placed == "a" || *placed == "ok") << *placed;
}

TEST(PolicyTest, HeldBackIsBounded) {
  // 100 hot nodes whose workloads are all too fresh.
  std::vector<PolicyNode> nodes;
  std::vector<PolicyWorkload> ws;
  for (int i = 0; i < 100; ++i) {
    nodes.push_back(Node("n" + std::to_string(i)));
    for (int k = 0; k < 4; ++k) {
      auto w = Wl("w" + std::to_string(i) + "-" + std::to_string(k), nodes.back().name, 0.5);
      w.started_ms = kNow - 1000;
      ws.push_back(w);
    }
  }
  nodes.push_back(Node("idle"));
  FakeRandom random;
  BalanceResult r = Balance(Snap(nodes, ws), PolicyConfig{}, random);
  EXPECT_TRUE(r.moves.empty());
  EXPECT_EQ(r.held_back.size(), 32u);
}

// ---- Place ---------------------------------------------------------------------

TEST(PlaceTest, LeastLoadedWithRoom) {
  std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c"), Node("d")};
  nodes[0].background_cpu = 0.5;
  nodes[1].background_cpu = 0.1;
  nodes[2].cordoned = true;
  nodes[3].ready = false;
  FakeRandom random;
  auto placed = Place(Snap(nodes, {}), PlacementRequest{1.0, 100 * kMiB, ""}, random);
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_EQ(*placed, "b");
}

TEST(PlaceTest, OnlyNodesWithTheImage) {
  std::vector<PolicyNode> nodes = {Node("idle"), Node("busy")};
  nodes[0].has_image = false;
  nodes[1].background_cpu = 0.8;
  FakeRandom random;
  auto placed = Place(Snap(nodes, {}), PlacementRequest{1.0, 0, ""}, random);
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_EQ(*placed, "busy");
  auto named = Place(Snap(nodes, {}), PlacementRequest{1.0, 0, "idle"}, random);
  EXPECT_EQ(named.status().code(), Code::kConflict);
  nodes[1].has_image = false;
  auto none = Place(Snap(nodes, {}), PlacementRequest{1.0, 0, ""}, random);
  EXPECT_EQ(none.status().code(), Code::kRetry);
  EXPECT_NE(none.status().message().find("2 without the image"), std::string::npos)
      << none.status().ToString();
}

TEST(PlaceTest, ZeroCpusAssumesOneCoreOnHeterogeneousNodes) {
  // small: 0.2 + 1/1 = 1.2; big: 0.5 + 1/4 = 0.75 -> big, though its load is higher.
  std::vector<PolicyNode> nodes = {Node("small"), Node("big", 4)};
  nodes[0].background_cpu = 0.2;
  nodes[1].background_cpu = 2.0;
  FakeRandom random;
  auto placed = Place(Snap(nodes, {}), PlacementRequest{0, 0, ""}, random);
  ASSERT_TRUE(placed.ok()) << placed.status().ToString();
  EXPECT_EQ(*placed, "big");
}

TEST(PlaceTest, MemoryCheckUsesTheMargin) {
  // a: 2 GiB available - 1.6 GiB margin = 0.4 GiB < 500 MiB; b fits.
  std::vector<PolicyNode> nodes = {Node("a"), Node("b")};
  nodes[0].memory_available_bytes = 2 * kGiB;
  nodes[1].background_cpu = 0.9;
  FakeRandom random;
  auto placed = Place(Snap(nodes, {}), PlacementRequest{1, 500 * kMiB, ""}, random);
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ(*placed, "b");
  // With a smaller margin from the config, a fits again.
  PolicyConfig config;
  config.low_memory_fraction = 0.05;
  placed = Place(Snap(nodes, {}), PlacementRequest{1, 500 * kMiB, ""}, config, random);
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ(*placed, "a");
}

TEST(PlaceTest, TiesAreBrokenByRandom) {
  std::set<std::string> chosen;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    FakeRandom random(seed);
    auto placed =
        Place(Snap({Node("a"), Node("b"), Node("c")}, {}), PlacementRequest{1, 0, ""}, random);
    ASSERT_TRUE(placed.ok());
    chosen.insert(*placed);
  }
  EXPECT_EQ(chosen, (std::set<std::string>{"a", "b", "c"}));
}

TEST(PlaceTest, RequiredNode) {
  std::vector<PolicyNode> nodes = {Node("a"), Node("b"), Node("c"), Node("d"), Node("e")};
  nodes[0].background_cpu = 0.9;  // busiest, still fine when asked for
  nodes[1].cordoned = true;
  nodes[2].ready = false;
  nodes[3].memory_available_bytes = 1 * kGiB;
  nodes[4].psi_memory_some10 = 60;
  auto s = Snap(nodes, {});
  FakeRandom random;
  auto placed = Place(s, PlacementRequest{1, 0, "a"}, random);
  ASSERT_TRUE(placed.ok());
  EXPECT_EQ(*placed, "a");
  EXPECT_EQ(Place(s, PlacementRequest{1, 0, "zz"}, random).status().code(), Code::kNotFound);
  EXPECT_EQ(Place(s, PlacementRequest{1, 0, "b"}, random).status().code(), Code::kConflict);
  EXPECT_EQ(Place(s, PlacementRequest{1, 0, "c"}, random).status().code(), Code::kConflict);
  EXPECT_EQ(Place(s, PlacementRequest{1, 0, "d"}, random).status().code(), Code::kConflict);
  EXPECT_EQ(Place(s, PlacementRequest{1, 0, "e"}, random).status().code(), Code::kConflict);
  EXPECT_EQ(Place(s, PlacementRequest{1, 20 * kGiB, "a"}, random).status().code(), Code::kConflict);
}

TEST(PlaceTest, Errors) {
  FakeRandom random;
  std::vector<PolicyNode> nodes = {Node("a"), Node("b")};
  nodes[0].ready = false;
  nodes[1].cordoned = true;
  auto s = Snap(nodes, {});
  auto none = Place(s, PlacementRequest{1, 0, ""}, random);
  EXPECT_EQ(none.status().code(), Code::kRetry);
  EXPECT_NE(none.status().message().find("1 not ready, 1 cordoned"), std::string::npos)
      << none.status().message();
  EXPECT_EQ(Place(ClusterSnapshot{}, PlacementRequest{}, random).status().code(), Code::kRetry);
  auto big = Place(Snap({Node("a")}, {}), PlacementRequest{1, 100 * kGiB, ""}, random);
  EXPECT_EQ(big.status().code(), Code::kRetry);
  EXPECT_EQ(Place(s, PlacementRequest{-1, 0, ""}, random).status().code(), Code::kInvalid);
  EXPECT_EQ(Place(s, PlacementRequest{NAN, 0, ""}, random).status().code(), Code::kInvalid);
}

// ---- properties over random snapshots ---------------------------------------------

ClusterSnapshot RandomSnapshot(FakeRandom& r) {
  ClusterSnapshot s;
  s.now_ms = kNow;
  const int nodes = r.Int(2, 12);
  for (int i = 0; i < nodes; ++i) {
    PolicyNode n = Node("n" + std::to_string(i));
    n.cpu_capacity = std::vector<double>{1, 2, 4}[r.Int(0, 2)];
    n.speed = r.Chance(0.3) ? 1.5 : 1.0;
    n.ready = r.Chance(0.9);
    n.cordoned = r.Chance(0.1);
    n.background_cpu = r.Uniform() * 0.5;
    n.memory_capacity_bytes = 16 * kGiB;
    n.memory_available_bytes = r.Chance(0.15)
                                   ? static_cast<uint64_t>(r.Uniform() * 2 * kGiB)
                                   : 2 * kGiB + static_cast<uint64_t>(r.Uniform() * 12 * kGiB);
    if (r.Chance(0.5)) n.psi_memory_some10 = r.Chance(0.1) ? 30.0 : r.Uniform() * 10;
    s.nodes.push_back(n);
  }
  const bool hot = r.Chance(0.7);
  for (int i = 0; i < nodes; ++i) {
    int count = r.Int(0, hot && i < 2 ? 10 : 4);
    for (int k = 0; k < count; ++k) {
      PolicyWorkload w;
      w.name = "w" + std::to_string(i) + "-" + std::to_string(k);
      w.node = s.nodes[i].name;
      w.cpu = r.Uniform() * 1.5;
      w.memory_bytes = 50 * kMiB + static_cast<uint64_t>(r.Uniform() * 3 * kGiB);
      w.created_ms = kNow - r.Int(0, 600'000);
      w.started_ms = std::max(w.created_ms, kNow - r.Int(0, 600'000));
      w.pinned = r.Chance(0.1);
      w.migratable = !r.Chance(0.1);
      w.migrating = r.Chance(0.05);
      s.workloads.push_back(w);
    }
  }
  // A few migrations in flight.
  for (auto& w : s.workloads) {
    if (w.migrating || !r.Chance(0.05)) continue;
    const std::string target = s.nodes[r.Int(0, nodes - 1)].name;
    if (target == w.node) continue;
    w.migrating = true;
    s.in_flight.push_back({w.name, w.node, target});
  }
  return s;
}

PolicyConfig RandomConfig(FakeRandom& r) {
  PolicyConfig c;
  c.stability = std::vector<double>{1.0, 1.3, 2.0}[r.Int(0, 2)];
  c.max_per_node = r.Int(1, 3);
  c.max_cluster = r.Int(1, 6);
  c.min_residency_ms = r.Chance(0.5) ? 0 : 30'000;
  c.bandwidth_bytes_per_s = r.Chance(0.5) ? 200.0 * kMiB : 20.0 * kMiB;
  return c;
}

const PolicyNode* FindNode(const ClusterSnapshot& s, const std::string& name) {
  for (const auto& n : s.nodes)
    if (n.name == name) return &n;
  return nullptr;
}

bool Short(const PolicyNode& n, const PolicyConfig& c) {
  return static_cast<double>(n.memory_available_bytes) <
             c.low_memory_fraction * static_cast<double>(n.memory_capacity_bytes) ||
         (n.psi_memory_some10 && *n.psi_memory_some10 >= c.memory_psi_threshold);
}

// Checks every documented invariant of one round; returns the decisions.
void CheckRound(const ClusterSnapshot& s, const PolicyConfig& c, const BalanceResult& r) {
  std::map<std::string, size_t> node_index;
  for (size_t i = 0; i < s.nodes.size(); ++i) node_index[s.nodes[i].name] = i;
  std::map<std::string, const PolicyWorkload*> by_name;
  for (const auto& w : s.workloads) by_name[w.name] = &w;
  std::set<std::string> in_flight;
  std::map<std::string, int> involved;
  for (const auto& m : s.in_flight) {
    in_flight.insert(m.workload);
    ++involved[m.source];
    if (m.target != m.source) ++involved[m.target];
  }
  std::map<std::string, int> fresh;
  std::map<std::string, double> reserved;
  std::vector<double> loads = NodeLoads(s);
  std::set<std::string> moved;

  EXPECT_LE(r.held_back.size(), 32u);
  if (!r.moves.empty()) {
    EXPECT_LE(static_cast<int>(s.in_flight.size() + r.moves.size()), c.max_cluster);
  }
  for (const Decision& d : r.moves) {
    SCOPED_TRACE(d.reason);
    ASSERT_TRUE(by_name.count(d.workload));
    const PolicyWorkload& w = *by_name[d.workload];
    EXPECT_TRUE(moved.insert(d.workload).second) << "moved twice";
    EXPECT_EQ(w.node, d.source);
    EXPECT_TRUE(w.migratable && !w.pinned && !w.migrating && !in_flight.count(w.name));
    EXPECT_GE(s.now_ms - w.started_ms, c.min_residency_ms);
    const PolicyNode* src = FindNode(s, d.source);
    const PolicyNode* dst = FindNode(s, d.target);
    ASSERT_TRUE(src && dst);
    EXPECT_NE(src, dst);
    EXPECT_TRUE(src->ready);
    EXPECT_TRUE(dst->ready);
    EXPECT_FALSE(dst->cordoned);
    EXPECT_FALSE(Short(*dst, c));
    const double margin = c.low_memory_fraction * static_cast<double>(dst->memory_capacity_bytes);
    EXPECT_GT(static_cast<double>(dst->memory_available_bytes) - reserved[d.target] - margin,
              static_cast<double>(w.memory_bytes));
    reserved[d.target] += static_cast<double>(w.memory_bytes);
    // Limits, counting migrations already in flight.
    ++fresh[d.source];
    ++fresh[d.target];
    EXPECT_LE(involved[d.source] + fresh[d.source], c.max_per_node);
    EXPECT_LE(involved[d.target] + fresh[d.target], c.max_per_node);
    // Loads as recorded match an independent working copy.
    const size_t a = node_index[d.source], b = node_index[d.target];
    const double la = w.cpu / (src->cpu_capacity * src->speed);
    const double lb = w.cpu / (dst->cpu_capacity * dst->speed);
    EXPECT_NEAR(d.source_load, loads[a], 1e-9);
    EXPECT_NEAR(d.target_load, loads[b], 1e-9);
    EXPECT_NEAR(d.workload_load, lb, 1e-9);
    if (d.kind == Decision::Kind::kCpu) {
      // Never below the hysteresis; gates respected.
      EXPECT_LT(d.target_load + c.stability * d.workload_load, d.source_load);
      EXPECT_GE(
          (d.source_load - d.target_load) - std::fabs((d.source_load - la) - (d.target_load + lb)),
          c.min_gain - 1e-12);
      EXPECT_GT(static_cast<double>(s.now_ms - w.created_ms),
                static_cast<double>(w.memory_bytes) / c.bandwidth_bytes_per_s * 1000.0);
    } else {
      EXPECT_TRUE(Short(*src, c));
    }
    loads[a] -= la;
    loads[b] += lb;
  }
}

// The world after the round: in-flight migrations and decisions complete.
ClusterSnapshot ApplyRound(const ClusterSnapshot& s, const BalanceResult& r) {
  ClusterSnapshot next = s;
  std::map<std::string, std::string> target;
  for (const auto& m : s.in_flight) target[m.workload] = m.target;
  for (const auto& d : r.moves) target[d.workload] = d.target;
  std::map<std::string, PolicyNode*> nodes;
  for (auto& n : next.nodes) nodes[n.name] = &n;
  for (auto& w : next.workloads) {
    auto it = target.find(w.name);
    if (it == target.end()) continue;
    PolicyNode* from = nodes.count(w.node) ? nodes[w.node] : nullptr;
    PolicyNode* to = nodes[it->second];
    if (from) from->memory_available_bytes += w.memory_bytes;
    to->memory_available_bytes -= std::min(to->memory_available_bytes, w.memory_bytes);
    w.node = it->second;
    w.started_ms = next.now_ms;
    w.migrating = false;
  }
  next.in_flight.clear();
  return next;
}

TEST(PolicyPropertyTest, RandomSnapshotsKeepTheInvariants) {
  FakeRandom gen(20260101);
  int with_moves = 0, memory_moves = 0;
  for (int iter = 0; iter < 500; ++iter) {
    SCOPED_TRACE("iteration " + std::to_string(iter));
    ClusterSnapshot s = RandomSnapshot(gen);
    PolicyConfig c = RandomConfig(gen);
    FakeRandom random(static_cast<uint64_t>(iter) + 1);
    BalanceResult r = Balance(s, c, random);
    CheckRound(s, c, r);
    if (!r.moves.empty()) ++with_moves;
    for (const auto& d : r.moves) memory_moves += d.kind == Decision::Kind::kMemory;
    if (::testing::Test::HasFailure()) return;
  }
  // The generator exercises the policy (not vacuous).
  EXPECT_GT(with_moves, 150);
  EXPECT_GT(memory_moves, 10);
}

TEST(PolicyPropertyTest, NoWorkloadMovesStraightBack) {
  // Apply the decisions, let time pass with no residency gate, decide again:
  // nothing goes back where it just came from; rounds settle.
  FakeRandom gen(4242);
  for (int iter = 0; iter < 500; ++iter) {
    SCOPED_TRACE("iteration " + std::to_string(iter));
    ClusterSnapshot s = RandomSnapshot(gen);
    PolicyConfig c = RandomConfig(gen);
    c.min_residency_ms = 0;
    FakeRandom random(static_cast<uint64_t>(iter) + 99);
    std::map<std::string, std::string> came_from;  // last round's moves
    std::string history;                           // for failure messages
    int round = 0;
    for (; round < 200; ++round) {
      BalanceResult r = Balance(s, c, random);
      CheckRound(s, c, r);
      std::vector<double> loads = NodeLoads(s);
      history += "round " + std::to_string(round) + " loads:";
      for (size_t i = 0; i < loads.size(); ++i)
        history += " " + s.nodes[i].name + "=" + std::to_string(loads[i]);
      history += " in flight: " + std::to_string(s.in_flight.size()) + "\n";
      for (const Decision& d : r.moves) history += "  " + d.reason + "\n";
      for (const Decision& d : r.moves) {
        auto it = came_from.find(d.workload);
        EXPECT_FALSE(it != came_from.end() && it->second == d.target)
            << "round " << round << ": " << d.workload << " " << d.source << "->" << d.target
            << " right after coming from there; stability " << c.stability << ", max_per_node "
            << c.max_per_node << ", max_cluster " << c.max_cluster << "\n"
            << history;
      }
      if (::testing::Test::HasFailure()) return;
      if (r.moves.empty() && s.in_flight.empty()) break;
      came_from.clear();
      for (const Decision& d : r.moves) came_from[d.workload] = d.source;
      s = ApplyRound(s, r);
      s.now_ms += 1000;
    }
    EXPECT_LT(round, 200) << "did not settle";
  }
}

// ---- the e2e scenario --------------------------------------------------------------

TEST(PolicyScenarioTest, FourBusyWorkloadsOnThreeOneCoreNodesSettle) {
  // 3 nodes declaring 1 core each; 4 CPU-bound workloads on node1 sharing 2
  // real cores: each measures 0.5 cores wherever it is.
  ClusterSnapshot s = Snap({Node("node1"), Node("node2"), Node("node3")},
                           {Wl("w1", "node1", 0.5), Wl("w2", "node1", 0.5), Wl("w3", "node1", 0.5),
                            Wl("w4", "node1", 0.5)});
  PolicyConfig c;
  FakeRandom random(3);
  int moves = 0, quiet = 0;
  for (int round = 0; round < 20; ++round) {
    BalanceResult r = Balance(s, c, random);
    CheckRound(s, c, r);
    moves += static_cast<int>(r.moves.size());
    quiet = r.moves.empty() ? quiet + 1 : 0;
    s = ApplyRound(s, r);
    for (auto& w : s.workloads) w.cpu = 0.5;  // re-measured: 2 cores / 4 busy workloads
    s.now_ms += 60'000;                       // past the residency
  }
  std::map<std::string, int> per_node;
  for (const auto& w : s.workloads) ++per_node[w.node];
  for (const auto& [node, n] : per_node) EXPECT_LE(n, 2) << node;
  EXPECT_EQ(moves, 2);
  EXPECT_GE(quiet, 15);  // settled, and stays settled
}

}  // namespace
}  // namespace kmosix::controller
