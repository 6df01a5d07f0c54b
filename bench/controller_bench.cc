// Controller at scale: a synthetic cluster of N nodes x 30 workloads loaded
// into the in-memory store; the controller lists and watches it (no
// balancing thread), then the bench times (thread CPU time, median of the
// rounds) what one balancing round costs the leader: building the policy's snapshot from the
// caches, and the policy. Prints a markdown table with the controller's memory (RSS growth while
// holding the caches) and the snapshot/policy times per round.
//
//   kmosix-controller-bench [--nodes 50,500,5000] [--per-node 30] [--rounds 7]
#include <malloc.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/records.h"
#include "controller/controller.h"
#include "controller/policy.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"

namespace {

using namespace kmosix;

long RssKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

class SplitMix : public Random {
 public:
  uint64_t Next() override {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double Unit() { return static_cast<double>(Next() >> 11) / static_cast<double>(1ULL << 53); }

 private:
  uint64_t state_ = 42;
};

struct Row {
  int nodes = 0;
  int workloads = 0;
  double load_s = 0;  // store filled -> caches synced
  long rss_kib = 0;   // RSS growth of the controller's caches
  double snapshot_ms = 0;
  double policy_ms = 0;
  size_t moves = 0;
};

// CPU time of this thread (the machine may be busy; wall time would mostly
// measure the other processes).
double ThreadCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

Row Run(int nodes, int per_node, int rounds) {
  Row row;
  row.nodes = nodes;
  row.workloads = nodes * per_node;
  testing::FakeClock store_clock;
  SystemClock clock;
  SplitMix random;
  testing::FakeStateStore store(store_clock);
  cluster::KeyLayout keys;
  const int64_t now = clock.WallMillis();
  for (int n = 0; n < nodes; ++n) {
    api::NodeLoad load;
    load.node = "node" + std::to_string(n);
    load.url = "http://10.0." + std::to_string(n / 250) + "." + std::to_string(n % 250) + ":7700";
    load.load_source = "host";
    load.cpu_capacity = 16;
    load.memory_capacity_bytes = 64ULL << 30;
    const bool hot = n % 50 == 0;
    double used = 0;
    for (int w = 0; w < per_node; ++w) {
      std::string name = "w" + std::to_string(n) + "-" + std::to_string(w);
      api::WorkloadUsage u{(hot ? 1.0 : 0.3) * random.Unit(), (64ULL + (random.Next() % 512))
                                                                      << 20};
      used += u.cpu;
      load.workloads[name] = u;
      api::Workload rec;
      rec.spec.name = name;
      rec.spec.image = "registry.local/batch:1";
      rec.spec.args = {"/bin/sim", "--steps", "100000"};
      rec.status.phase = api::WorkloadPhase::kRunning;
      rec.status.node = load.node;
      rec.status.epoch = 1;
      rec.status.created_ms = now - 3'600'000;
      rec.status.started_ms = now - 3'600'000;
      (void)store.Put(keys.Workload(name), cluster::WorkloadToJson(rec).dump());
    }
    load.cpu_used = used + 0.2;
    load.memory_available_bytes = 32ULL << 30;
    load.updated_ms = now;
    (void)store.Put(keys.Node(load.node), cluster::NodeLoadToJson(load).dump());
  }

  malloc_trim(0);
  long before = RssKiB();
  controller::ControllerOptions opts;
  opts.identity = "bench";
  opts.balance = false;
  auto started = std::chrono::steady_clock::now();
  controller::Controller c(store, clock, random, opts, nullptr);
  c.Start();
  while (!c.Ready()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  row.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  malloc_trim(0);  // transient list buffers are not the controller's to keep
  row.rss_kib = RssKiB() - before;

  std::vector<double> snap_ms, policy_ms;
  controller::PolicyConfig config;
  for (int r = 0; r < rounds; ++r) {
    double t0 = ThreadCpuMs();
    controller::ClusterSnapshot snap = c.Snapshot();
    double t1 = ThreadCpuMs();
    controller::BalanceResult result = controller::Balance(snap, config, random);
    double t2 = ThreadCpuMs();
    snap_ms.push_back(t1 - t0);
    policy_ms.push_back(t2 - t1);
    row.moves = result.moves.size();
  }
  row.snapshot_ms = Median(snap_ms);
  row.policy_ms = Median(policy_ms);
  c.Stop();
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes = {50, 500, 5000};
  int per_node = 30, rounds = 7;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--nodes") {
      sizes.clear();
      std::stringstream ss(value);
      std::string item;
      while (std::getline(ss, item, ',')) sizes.push_back(std::stoi(item));
    } else if (flag == "--per-node") {
      per_node = std::stoi(value);
    } else if (flag == "--rounds") {
      rounds = std::stoi(value);
    } else {
      std::fprintf(stderr, "usage: %s [--nodes 50,500,5000] [--per-node 30] [--rounds 7]\n",
                   argv[0]);
      return 2;
    }
  }
  // One core, as the target says ("under 50 ms on one core").
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(0, &set);
  (void)sched_setaffinity(0, sizeof set, &set);

  std::printf(
      "| nodes | workloads | caches synced s | controller RSS MiB | snapshot ms | policy ms "
      "| round ms | moves |\n|---|---|---|---|---|---|---|---|\n");
  for (int n : sizes) {
    Row r = Run(n, per_node, rounds);
    std::printf("| %d | %d | %.2f | %.1f | %.1f | %.1f | %.1f | %zu |\n", r.nodes, r.workloads,
                r.load_s, r.rss_kib / 1024.0, r.snapshot_ms, r.policy_ms,
                r.snapshot_ms + r.policy_ms, r.moves);
    std::fflush(stdout);
  }
  return 0;
}
