// kmosix-sim: the balancing simulator's command line (issue 15).
//
//   kmosix-sim --nodes N --load L --hours H --seed S
//       one markdown table row per strategy (placement, kmosix, evict-restart,
//       ideal) on the same trace, then what the run and the policy cost.
//   kmosix-sim --trace FILE.csv --nodes N ...
//       the same on recorded arrivals (--write-trace FILE.csv shows the form).
//   kmosix-sim --sweep [--csv FILE] [--plot FILE.png]
//       the same over loads 0.5..0.95, one table; the CSV and a PNG of mean
//       slowdown against load for every strategy.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "bench/sim/plot.h"
#include "bench/sim/sim.h"

namespace {

using kmosix::sim::Result;

void Header(bool with_load) {
  std::printf(
      "| %sstrategy | mean_slowdown | p99_slowdown | work_lost | migrations_per_workload | "
      "pingpong_per_workload | utilisation |\n",
      with_load ? "load | " : "");
  std::printf("|%s---|---:|---:|---:|---:|---:|---:|\n", with_load ? "---:|" : "");
}

void Row(const Result& r, double load, bool with_load) {
  char l[32] = "";
  if (with_load) std::snprintf(l, sizeof l, "%.2f | ", load);
  std::printf("| %s%s | %.2f | %.1f | %.4f | %.3f | %.4f | %.3f |\n", l,
              kmosix::sim::Name(r.strategy), r.mean_slowdown, r.p99_slowdown, r.work_lost,
              r.migrations_per_workload, r.pingpong_per_workload, r.utilisation);
}

void Costs(const std::vector<Result>& rs) {
  std::printf(
      "\n| strategy | workloads | unfinished | in system per node | Place calls | Place us/call | "
      "Balance rounds | Balance ms/round (max) | wall s |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Result& r : rs) {
    const int64_t place = r.policy_calls - r.balance_calls;
    const double place_s = r.policy_seconds - r.balance_seconds;
    std::printf("| %s | %lld | %lld | %.1f | %lld | %.1f | %lld | %.2f (%.2f) | %.2f |\n",
                kmosix::sim::Name(r.strategy), static_cast<long long>(r.workloads),
                static_cast<long long>(r.unfinished), r.mean_in_system_per_node,
                static_cast<long long>(place), place > 0 ? place_s / place * 1e6 : 0,
                static_cast<long long>(r.balance_calls),
                r.balance_calls > 0 ? r.balance_seconds / r.balance_calls * 1000 : 0,
                r.balance_max_seconds * 1000, r.wall_seconds);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kmosix-sim: balancing strategies on one synthetic trace, over the real policy"};
  kmosix::sim::TraceConfig tc;
  kmosix::sim::SimConfig sc;
  uint64_t seed = 1;
  bool sweep = false, costs = false;
  std::string csv, plot;
  app.add_option("--nodes", tc.nodes, "cluster size")->capture_default_str();
  app.add_option("--load", tc.load, "offered load (fraction of capacity x speed)")
      ->capture_default_str();
  app.add_option("--hours", tc.hours, "simulated hours of arrivals")->capture_default_str();
  app.add_option("--seed", seed, "trace and tie-breaking seed")->capture_default_str();
  app.add_flag("--sweep", sweep, "loads 0.5, 0.6, 0.7, 0.8, 0.9, 0.95");
  app.add_option("--csv", csv, "write the rows as CSV to this file");
  app.add_option("--plot", plot, "draw mean slowdown against load (a PNG; implies --sweep)");
  app.add_flag("--costs", costs, "also print what each run cost (policy time, wall time)");
  app.add_option("--tick", sc.tick_s, "controller balance interval, s")->capture_default_str();
  app.add_option("--stability", sc.policy.stability, "PolicyConfig::stability")
      ->capture_default_str();
  app.add_option("--min-residency", sc.policy.min_residency_ms, "PolicyConfig, ms")
      ->capture_default_str();
  app.add_option("--max-cluster", sc.policy.max_cluster, "PolicyConfig::max_cluster")
      ->capture_default_str();
  app.add_option("--max-per-node", sc.policy.max_per_node, "PolicyConfig::max_per_node")
      ->capture_default_str();
  app.add_option("--evict-interval", sc.evict_interval_s, "descheduler interval, s")
      ->capture_default_str();
  app.add_option("--node-cores", tc.node_cores, "every node this many cores (0: a 4/8 mix)")
      ->capture_default_str();
  app.add_flag("--unit-cpu", tc.unit_cpu, "every workload asks 1 core (MOSIX-like)");
  app.add_option("--fast-fraction", tc.fast_fraction, "fraction of 1.5x nodes")
      ->capture_default_str();
  app.add_flag("--signal-demand", sc.signal_demand,
               "tell the policy each workload's ask, not its (capped) usage");
  std::string trace_in, trace_out;
  app.add_option("--trace", trace_in, "arrivals from this CSV (time_s,cpu,work_cpu_s,memory_mib)");
  app.add_option("--write-trace", trace_out, "write the synthetic arrivals as that CSV and exit");
  std::vector<std::string> only;
  app.add_option("--strategies", only, "run only these (placement kmosix evict-restart ideal)");
  app.add_option("--work-alpha", tc.work_alpha, "Pareto shape of the work")->capture_default_str();
  app.add_option("--work-min", tc.work_min_s, "shortest lifetime on an idle node, s")
      ->capture_default_str();
  app.add_option("--work-max", tc.work_max_s, "longest lifetime on an idle node, s")
      ->capture_default_str();
  app.add_option("--phase-mean", tc.phase_mean_s, "mean busy/quiet phase, s (0: no phases)")
      ->capture_default_str();
  app.add_option("--quiet-fraction", tc.phase_quiet_fraction, "ask in a quiet phase, x ask")
      ->capture_default_str();
  app.add_option("--burst-high", tc.burst_high, "arrival rate in a burst, x mean")
      ->capture_default_str();
  app.add_option("--burst-low", tc.burst_low, "arrival rate between bursts, x mean")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!plot.empty()) sweep = true;
  if (auto s = kmosix::sim::Validate(tc); !s.ok()) {
    std::fprintf(stderr, "kmosix-sim: %s\n", s.message().c_str());
    return 2;
  }

  std::string trace_csv;
  if (!trace_in.empty()) {
    if (sweep) {
      std::fprintf(stderr, "kmosix-sim: --trace fixes the arrivals; no --sweep\n");
      return 2;
    }
    std::ifstream in(trace_in, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "kmosix-sim: cannot read %s\n", trace_in.c_str());
      return 2;
    }
    trace_csv.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (!trace_out.empty()) {
    std::ofstream out(trace_out, std::ios::binary);
    out << kmosix::sim::WriteTraceCsv(kmosix::sim::MakeTrace(tc, seed));
    if (!out) {
      std::fprintf(stderr, "kmosix-sim: cannot write %s\n", trace_out.c_str());
      return 1;
    }
    return 0;
  }

  std::vector<double> loads =
      sweep ? std::vector<double>{0.5, 0.6, 0.7, 0.8, 0.9, 0.95} : std::vector<double>{tc.load};
  std::vector<std::pair<double, Result>> rows;
  std::printf(
      "nodes %d, %.2f h of arrivals, seed %llu, tick %.1f s, stability %.2f, "
      "min residency %lld ms, max %d per node / %d in the cluster\n\n",
      tc.nodes, tc.hours, static_cast<unsigned long long>(seed), sc.tick_s, sc.policy.stability,
      static_cast<long long>(sc.policy.min_residency_ms), sc.policy.max_per_node,
      sc.policy.max_cluster);
  Header(sweep);
  std::vector<Result> all;
  for (double load : loads) {
    tc.load = load;
    kmosix::sim::Trace trace;
    if (trace_csv.empty()) {
      trace = kmosix::sim::MakeTrace(tc, seed);
    } else {
      auto read = kmosix::sim::ReadTraceCsv(trace_csv, tc, seed);
      if (!read.ok()) {
        std::fprintf(stderr, "kmosix-sim: %s: %s\n", trace_in.c_str(),
                     read.status().message().c_str());
        return 2;
      }
      trace = std::move(read).value();
    }
    sc.seed = seed;
    for (kmosix::sim::Strategy s : kmosix::sim::kAllStrategies) {
      if (!only.empty() && std::find(only.begin(), only.end(), kmosix::sim::Name(s)) == only.end())
        continue;
      Result r = kmosix::sim::Simulate(trace, s, sc);
      Row(r, load, sweep);
      std::fflush(stdout);
      rows.emplace_back(load, r);
      all.push_back(r);
    }
  }
  if (costs) Costs(all);
  if (!csv.empty()) {
    std::ofstream out(csv);
    out << "nodes,load,strategy,mean_slowdown,p99_slowdown,work_lost,migrations_per_workload,"
           "pingpong_per_workload,utilisation\n";
    for (const auto& [load, r] : rows) {
      out << tc.nodes << ',' << load << ',' << kmosix::sim::Name(r.strategy) << ','
          << r.mean_slowdown << ',' << r.p99_slowdown << ',' << r.work_lost << ','
          << r.migrations_per_workload << ',' << r.pingpong_per_workload << ',' << r.utilisation
          << '\n';
    }
    if (!out) {
      std::fprintf(stderr, "kmosix-sim: cannot write %s\n", csv.c_str());
      return 1;
    }
  }
  if (!plot.empty()) {
    std::vector<kmosix::sim::Series> series;
    for (kmosix::sim::Strategy s : kmosix::sim::kAllStrategies) {
      kmosix::sim::Series line;
      line.name = kmosix::sim::Name(s);
      for (const auto& [load, r] : rows)
        if (r.strategy == s) line.points.emplace_back(load, r.mean_slowdown);
      series.push_back(std::move(line));
    }
    char title[96];
    std::snprintf(title, sizeof title, "mean slowdown vs load, %d nodes, seed %llu", tc.nodes,
                  static_cast<unsigned long long>(seed));
    if (auto s = kmosix::sim::WritePlot(plot, title, "load", series); !s.ok()) {
      std::fprintf(stderr, "kmosix-sim: %s\n", s.message().c_str());
      return 1;
    }
    std::printf("\nplot: %s\n", plot.c_str());
  }
  return 0;
}
