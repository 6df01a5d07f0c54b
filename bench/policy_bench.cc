// Balancing policy cost against cluster size: time per Balance() round and per
// Place() call for 50 / 500 / 5,000 nodes x 30 workloads (random loads, a few
// hot nodes, a few short of memory), the process memory for the largest
// snapshot, and a ratio against a naive O(nodes^2) pairwise-scan balancer in
// the same process. Prints a markdown table; asserts nothing.
//
// Usage: kmosix-policy-bench [--quick]
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "controller/policy.h"

namespace {

using kmosix::controller::Balance;
using kmosix::controller::BalanceResult;
using kmosix::controller::ClusterSnapshot;
using kmosix::controller::Place;
using kmosix::controller::PlacementRequest;
using kmosix::controller::PolicyConfig;
using kmosix::controller::PolicyNode;
using kmosix::controller::PolicyWorkload;

constexpr uint64_t kMiB = 1024ull * 1024;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr int kWorkloadsPerNode = 30;

class BenchRandom final : public kmosix::Random {
 public:
  explicit BenchRandom(uint64_t seed) : engine_(seed) {}
  uint64_t Next() override { return engine_(); }
  double Uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(engine_);
  }
  bool Chance(double p) { return Uniform(0, 1) < p; }

 private:
  std::mt19937_64 engine_;
};

// "VmRSS" / "VmHWM" from /proc/self/status, in KiB (-1 if unavailable).
long StatusKiB(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') {
      return std::strtol(line.c_str() + n + 1, nullptr, 10);
    }
  }
  return -1;
}

ClusterSnapshot MakeSnapshot(int nodes, BenchRandom& r) {
  ClusterSnapshot s;
  s.now_ms = 10'000'000;
  s.nodes.reserve(static_cast<size_t>(nodes));
  s.workloads.reserve(static_cast<size_t>(nodes) * kWorkloadsPerNode);
  char name[32];
  for (int i = 0; i < nodes; ++i) {
    PolicyNode n;
    std::snprintf(name, sizeof name, "node-%05d", i);
    n.name = name;
    n.cpu_capacity = r.Chance(0.25) ? 8 : 4;
    n.speed = r.Chance(0.2) ? 1.5 : 1.0;
    n.ready = !r.Chance(0.01);
    n.cordoned = r.Chance(0.01);
    n.background_cpu = r.Uniform(0, 0.5);
    n.memory_capacity_bytes = 64 * kGiB;
    const bool short_of_memory = r.Chance(0.005);
    n.memory_available_bytes =
        short_of_memory ? 2 * kGiB : static_cast<uint64_t>(r.Uniform(8, 48) * kGiB);
    n.psi_memory_some10 = r.Uniform(0, 5);
    const bool hot = r.Chance(0.02);
    for (int k = 0; k < kWorkloadsPerNode; ++k) {
      PolicyWorkload w;
      std::snprintf(name, sizeof name, "w-%05d-%02d", i, k);
      w.name = name;
      w.node = n.name;
      w.cpu = hot ? r.Uniform(0.3, 0.6) : r.Uniform(0, 0.2);
      w.memory_bytes = static_cast<uint64_t>(r.Uniform(64, 1024) * kMiB);
      w.created_ms = s.now_ms - static_cast<int64_t>(r.Uniform(60'000, 7'200'000));
      w.started_ms =
          std::max(w.created_ms, s.now_ms - static_cast<int64_t>(r.Uniform(0, 3'600'000)));
      w.pinned = r.Chance(0.02);
      w.migratable = !r.Chance(0.02);
      s.workloads.push_back(std::move(w));
    }
    s.nodes.push_back(std::move(n));
  }
  // A few migrations in flight.
  for (int k = 0; k < 1; ++k) {
    PolicyWorkload& w = s.workloads[static_cast<size_t>(k) * 7 % s.workloads.size()];
    w.migrating = true;
    s.in_flight.push_back(
        {w.name, w.node, s.nodes[static_cast<size_t>(k) * 13 % s.nodes.size()].name});
  }
  return s;
}

// The naive baseline: same load model and move rule, no index or ordering:
// each move scans every ordered pair of nodes and every workload of the
// source, keeping the pair and workload that even the loads best.
size_t NaiveBalance(const ClusterSnapshot& s, const PolicyConfig& c) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < s.nodes.size(); ++i) index[s.nodes[i].name] = i;
  std::vector<double> denom(s.nodes.size()), load(s.nodes.size());
  for (size_t i = 0; i < s.nodes.size(); ++i) {
    denom[i] = s.nodes[i].cpu_capacity * s.nodes[i].speed;
    load[i] = s.nodes[i].background_cpu / denom[i];
  }
  std::vector<std::vector<size_t>> by_node(s.nodes.size());
  for (size_t k = 0; k < s.workloads.size(); ++k) {
    auto it = index.find(s.workloads[k].node);
    if (it == index.end()) continue;
    by_node[it->second].push_back(k);
    load[it->second] += s.workloads[k].cpu / denom[it->second];
  }
  std::vector<char> moved(s.workloads.size(), 0), busy(s.nodes.size(), 0);
  size_t moves = 0;
  for (int round = static_cast<int>(s.in_flight.size()); round < c.max_cluster; ++round) {
    double best_score = 1e300;
    size_t best_w = 0, best_a = 0, best_b = 0;
    bool found = false;
    for (size_t a = 0; a < s.nodes.size(); ++a) {
      if (busy[a] || !s.nodes[a].ready) continue;
      for (size_t b = 0; b < s.nodes.size(); ++b) {
        const PolicyNode& nb = s.nodes[b];
        if (b == a || busy[b] || !nb.ready || nb.cordoned) continue;
        if (load[a] - load[b] < c.min_gain) continue;
        for (size_t w : by_node[a]) {
          const PolicyWorkload& wl = s.workloads[w];
          if (moved[w] || wl.pinned || !wl.migratable || wl.migrating) continue;
          const double ca = wl.cpu / denom[a], cb = wl.cpu / denom[b];
          if (!(load[b] + c.stability * cb < load[a])) continue;
          if (static_cast<double>(nb.memory_available_bytes) <
              static_cast<double>(wl.memory_bytes) +
                  c.low_memory_fraction * static_cast<double>(nb.memory_capacity_bytes))
            continue;
          const double score = std::fabs((load[a] - ca) - (load[b] + cb));
          if (score < best_score) {
            best_score = score;
            best_w = w, best_a = a, best_b = b;
            found = true;
          }
        }
      }
    }
    if (!found) break;
    const double cpu = s.workloads[best_w].cpu;
    load[best_a] -= cpu / denom[best_a];
    load[best_b] += cpu / denom[best_b];
    moved[best_w] = 1;
    busy[best_a] = busy[best_b] = 1;
    ++moves;
  }
  return moves;
}

double ThreadCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

// Sorted per-run times in ms: CPU time of this thread (what the work costs,
// unaffected by waiting for the core on a busy machine) and wall time.
struct Times {
  std::vector<double> cpu, wall;
};
template <typename F>
Times TimeRuns(int runs, F&& f) {
  Times t;
  for (int i = 0; i < runs; ++i) {
    const double c0 = ThreadCpuMs();
    auto t0 = std::chrono::steady_clock::now();
    f();
    auto t1 = std::chrono::steady_clock::now();
    t.cpu.push_back(ThreadCpuMs() - c0);
    t.wall.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(t.cpu.begin(), t.cpu.end());
  std::sort(t.wall.begin(), t.wall.end());
  return t;
}
double Median(const std::vector<double>& v) { return v[v.size() / 2]; }
double P90(const std::vector<double>& v) {
  return v[std::min(v.size() - 1, static_cast<size_t>(std::ceil(0.9 * v.size())) - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int cpu = sched_getcpu();
  bool pinned = false;
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pinned = sched_setaffinity(0, sizeof set, &set) == 0;
  }

  struct Row {
    int nodes;
    double bal_med, bal_p90, bal_wall, wide_med, wide_p90, place_us, naive_med;
    size_t moves, wide_moves, naive_moves;
    size_t held;
  };
  std::vector<Row> rows;
  long rss_before = 0, rss_after = 0, hwm_after = 0;
  size_t sink = 0;

  for (int nodes : {50, 500, 5000}) {
    BenchRandom gen(static_cast<uint64_t>(nodes) * 7919);
    if (nodes == 5000) rss_before = StatusKiB("VmRSS");
    ClusterSnapshot s = MakeSnapshot(nodes, gen);
    if (nodes == 5000) rss_after = StatusKiB("VmRSS");

    PolicyConfig config;  // defaults: max_cluster 2, max_per_node 1
    PolicyConfig wide;    // many moves in one round
    wide.max_cluster = nodes;
    const int runs = quick ? 5 : (nodes <= 500 ? 101 : 31);
    const int naive_runs = quick ? 1 : (nodes <= 50 ? 21 : (nodes <= 500 ? 5 : 3));

    Row row{};
    row.nodes = nodes;
    BenchRandom random(1);
    BalanceResult last;
    auto t = TimeRuns(runs, [&] { last = Balance(s, config, random); });
    row.bal_med = Median(t.cpu);
    row.bal_p90 = P90(t.cpu);
    row.bal_wall = Median(t.wall);
    row.moves = last.moves.size();
    row.held = last.held_back.size();
    t = TimeRuns(runs, [&] { last = Balance(s, wide, random); });
    row.wide_med = Median(t.cpu);
    row.wide_p90 = P90(t.cpu);
    row.wide_moves = last.moves.size();

    const int place_calls = quick ? 5 : 51;
    t = TimeRuns(place_calls, [&] {
      auto placed = Place(s, PlacementRequest{0.5, 256 * kMiB, ""}, random);
      sink += placed.ok() ? placed->size() : 0;
    });
    row.place_us = Median(t.cpu) * 1000.0;

    t = TimeRuns(naive_runs, [&] { row.naive_moves = NaiveBalance(s, config); });
    row.naive_med = Median(t.cpu);
    rows.push_back(row);
    if (nodes == 5000) hwm_after = StatusKiB("VmHWM");
  }

  std::printf(
      "# kmosix policy bench (%s; %d workloads per node; times are thread CPU time unless "
      "marked wall)\n\n",
      pinned ? ("pinned to cpu " + std::to_string(cpu)).c_str() : "not pinned", kWorkloadsPerNode);
  std::printf(
      "| nodes | workloads | Balance median (ms) | Balance p90 (ms) | Balance wall median (ms) | "
      "moves | Balance, max_cluster=nodes: median / p90 (ms) | moves | Place median (us) | "
      "naive O(N^2) baseline (ms) | baseline / Balance |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf(
        "| %d | %d | %.3f | %.3f | %.3f | %zu | %.3f / %.3f | %zu | %.1f | %.2f | %.0fx |\n",
        r.nodes, r.nodes * kWorkloadsPerNode, r.bal_med, r.bal_p90, r.bal_wall, r.moves, r.wide_med,
        r.wide_p90, r.wide_moves, r.place_us, r.naive_med, r.naive_med / r.bal_med);
  }
  std::printf(
      "\nMemory (5,000 x 30 snapshot): VmRSS %.1f MiB before building it, %.1f MiB after "
      "(+%.1f MiB); VmHWM %.1f MiB after all rounds.\n",
      rss_before / 1024.0, rss_after / 1024.0, (rss_after - rss_before) / 1024.0,
      hwm_after / 1024.0);
  std::printf("(baseline moves per round: %zu / %zu / %zu; sink %zu)\n", rows[0].naive_moves,
              rows[1].naive_moves, rows[2].naive_moves, sink % 10);
  return 0;
}
