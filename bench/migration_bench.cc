// kmosix-migration-bench: live-migration timings on a local two-node cluster.
//
// For each engine (default all three, each on a cluster of its own: "files",
// the dump written into files then sent, as the baseline; "streamed", the
// transfer reading the dump's page pipes while CRIU dumps; "prefault", the
// agent's default: streamed, and the target faults in the memory of the
// landing and the restore before the source freezes; "prefault-plain", the
// same on a cluster brought up --insecure: the data channel and the peer
// routes without TLS, the baseline of the secured default) and each memory
// size (default 16, 256, 1024 MiB) it starts the demo workload touching that
// much memory (verifying only --verify-mib per tick so it does not burn CPU),
// migrates it R times (alternating node1 -> node2 -> node1 ...), each after
// --settle-ms of quiet (a VM that hands freed memory back to its host has
// done so by then, as between migrations in practice), and prints the median
// of each column:
//   prepare, checkpoint, transfer, restore, total: the agent's report (seconds;
//                     streamed, checkpoint and transfer overlap)
//   downtime (agent): the report's freeze-until-running-on-target
//   downtime (ticks): the largest gap between the demo's t_ms lines around the
//                     migration, minus the tick interval
//   bytes, MB/s (10^6 bytes per transfer second)
// the ratio of the tick downtime to the FIELD-NOTES baseline (gRPC,
// checkpoint to an image_path directory: 0.92 s @16 MiB, 1.95 s @256 MiB,
// 8.75 s @1 GiB), and each engine against the others per size.
//
//   kmosix-migration-bench [--engine all|files,streamed,prefault,prefault-plain]
//                          [--mem 16,256,1024]
//                          [--runs 3] [--settle-ms 5000] [--interval-ms 100]
//                          [--verify-mib 1] [--reuse] [--keep] [--json FILE]
// --reuse: use the cluster that is up (scripts/cluster up) and leave it up
//          (one --engine: the label of what that cluster runs).
// --keep: leave the cluster this program brought up running.
// Exit: 0 every migration succeeded; 1 some failed; 2 usage; 3 cannot run here.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"

namespace {

using kmosix::e2e::Cluster;
using kmosix::e2e::ClusterOptions;
using kmosix::e2e::DemoLog;
using kmosix::e2e::FetchLog;
using kmosix::e2e::HttpDelete;
using kmosix::e2e::HttpPost;
using kmosix::e2e::Node;
using kmosix::e2e::Tick;
using nlohmann::json;

struct Args {
  std::vector<int> mem = {16, 256, 1024};
  int runs = 3;
  int interval_ms = 100;
  int settle_ms = 5000;
  int verify_mib = 1;
  bool reuse = false;
  bool keep = false;
  std::string json_out;
  // Engines measured, each on a cluster of its own, in this order.
  std::vector<std::string> engines = {"files", "streamed", "prefault", "prefault-plain"};
};

// The agent flags that select an engine ("files": the dump goes into files
// that are sent after it; "streamed": the transfer reads the dump's pipes;
// "prefault": streamed, and the target prefaults the landing's and the
// restore's memory).
std::vector<std::string> EngineArgs(const std::string& engine) {
  if (engine == "files") return {"--dump-pipes", "0", "--prefault-max-mib", "0"};
  if (engine == "streamed") return {"--prefault-max-mib", "0"};
  return {};
}

void Usage(int code) {
  std::fprintf(
      code == 0 ? stdout : stderr,
      "usage: kmosix-migration-bench [--engine all|files,streamed,prefault,prefault-plain]\n"
      "                              [--mem 16,256,1024] [--runs 3] [--settle-ms 5000]\n"
      "                              [--interval-ms 100] [--verify-mib 1]\n"
      "                              [--reuse] [--keep] [--json FILE]\n");
  std::exit(code);
}

int PositiveInt(const std::string& s, const char* flag) {
  try {
    size_t used = 0;
    int v = std::stoi(s, &used);
    if (used == s.size() && v > 0) return v;
  } catch (const std::exception&) {
  }
  std::fprintf(stderr, "bad value for %s: %s\n", flag, s.c_str());
  Usage(2);
  return 0;
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(2);
      return argv[++i];
    };
    if (f == "--mem") {
      a.mem.clear();
      std::stringstream ss(value());
      for (std::string item; std::getline(ss, item, ',');) {
        a.mem.push_back(PositiveInt(item, "--mem"));
      }
      if (a.mem.empty()) Usage(2);
    } else if (f == "--runs") {
      a.runs = PositiveInt(value(), "--runs");
    } else if (f == "--interval-ms") {
      a.interval_ms = PositiveInt(value(), "--interval-ms");
    } else if (f == "--verify-mib") {
      a.verify_mib = PositiveInt(value(), "--verify-mib");
    } else if (f == "--settle-ms") {
      std::string v = value();
      a.settle_ms = v == "0" ? 0 : PositiveInt(v, "--settle-ms");
    } else if (f == "--engine") {
      std::string list = value();
      if (list != "all") {
        a.engines.clear();
        std::stringstream ss(list);
        for (std::string e; std::getline(ss, e, ',');) {
          if (e != "files" && e != "streamed" && e != "prefault" && e != "prefault-plain") {
            std::fprintf(stderr, "bad value for --engine: %s\n", e.c_str());
            Usage(2);
          }
          a.engines.push_back(e);
        }
        if (a.engines.empty()) Usage(2);
      }
    } else if (f == "--reuse") {
      a.reuse = true;
    } else if (f == "--keep") {
      a.keep = true;
    } else if (f == "--json") {
      a.json_out = value();
    } else if (f == "-h" || f == "--help") {
      Usage(0);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", f.c_str());
      Usage(2);
    }
  }
  if (a.reuse && a.engines.size() > 1) {
    std::fprintf(stderr,
                 "--reuse measures the cluster as it runs: give one --engine (its label)\n");
    Usage(2);
  }
  return a;
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::optional<double> Baseline(int mib) {
  static const std::map<int, double> kBaseline = {{16, 0.92}, {256, 1.95}, {1024, 8.75}};
  auto it = kBaseline.find(mib);
  if (it == kBaseline.end()) return std::nullopt;
  return it->second;
}

struct Run {
  double prepare = 0, checkpoint = 0, transfer = 0, restore = 0, total = 0, agent_downtime = 0;
  double tick_downtime = 0;  // largest gap - interval, seconds
  double bytes = 0;
  double mbps = 0;
};

struct Row {
  std::string engine;
  int mib = 0;
  std::vector<Run> runs;
  int failures = 0;
  std::vector<std::string> notes;
};

Cluster* g_cluster = nullptr;
void OnSignal(int sig) {
  if (g_cluster != nullptr) (void)g_cluster->Down();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

std::string Fmt(double v, int prec = 2) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

// One memory size: start, migrate `runs` times, delete.
Row Measure(Cluster& c, const Args& args, int mib) {
  Row row;
  row.mib = mib;
  const std::string name = "bench-" + std::to_string(mib);
  const Node* nodes[2] = {&c.node(1), &c.node(2)};
  for (const auto& n : c.Nodes()) (void)HttpDelete(n, "/v1/workloads/" + name);

  std::string err = kmosix::e2e::CreateDemo(
      *nodes[0], name,
      {"--mem", std::to_string(mib), "--verify-mib", std::to_string(args.verify_mib),
       "--interval-ms", std::to_string(args.interval_ms)});
  if (!err.empty()) {
    row.notes.push_back(err);
    row.failures = args.runs;
    return row;
  }
  // Allocating and writing the pattern takes a while for big sizes.
  auto started = kmosix::e2e::WaitForTick(*nodes[0], name, 10, std::chrono::seconds(180));
  if (!started) {
    row.notes.push_back(started.message);
    row.failures = args.runs;
    return row;
  }

  int at = 0;
  for (int r = 0; r < args.runs; ++r) {
    const Node& from = *nodes[at];
    const Node& to = *nodes[1 - at];
    std::this_thread::sleep_for(std::chrono::milliseconds(args.settle_ms));
    auto before = FetchLog(from, name, &err);
    uint64_t pre = before && !before->ticks.empty() ? before->ticks.back().tick : 0;
    auto reply = HttpPost(from, "/v1/workloads/" + name + "/migrate", {{"target", to.url}},
                          std::chrono::seconds(900));
    json rep = reply.Json();
    if (reply.status != 200 || !rep.is_object() || rep.value("outcome", "") != "Succeeded") {
      ++row.failures;
      row.notes.push_back("run " + std::to_string(r + 1) + " " + from.name + "->" + to.name + ": " +
                          reply.Describe());
      if (rep.is_object() && rep.value("outcome", "") == "RolledBack") continue;  // still on from
      break;  // unknown where it is: stop this size
    }
    at = 1 - at;
    Run run;
    const json& t = rep["timings"];
    run.prepare = t.value("prepare", 0.0);
    run.checkpoint = t.value("checkpoint", 0.0) + t.value("freeze", 0.0);
    run.transfer = t.value("transfer", 0.0);
    run.restore = t.value("restore", 0.0);
    run.total = t.value("total", 0.0);
    run.agent_downtime = t.value("downtime", 0.0);
    run.bytes = rep.value("bytes", 0.0);
    run.mbps = run.transfer > 0 ? run.bytes / 1e6 / run.transfer : NAN;
    // The tick gap: wait for a few ticks on the target, then look at the
    // ticks around `pre`.
    auto w = kmosix::e2e::WaitForTick(to, name, pre + 5, std::chrono::seconds(60));
    auto log = FetchLog(to, name, &err);
    if (!w || !log || log->ticks.empty()) {
      row.notes.push_back("run " + std::to_string(r + 1) +
                          ": no ticks after the migration: " + (w ? err : w.message));
      run.tick_downtime = NAN;
    } else {
      auto g = kmosix::e2e::MaxGap(log->ticks, pre > 3 ? pre - 3 : 0);
      run.tick_downtime = static_cast<double>(g.ms - args.interval_ms) / 1000.0;
      std::string broken = kmosix::e2e::CheckConsecutive(log->ticks);
      if (!broken.empty()) row.notes.push_back("run " + std::to_string(r + 1) + ": " + broken);
      for (const Tick& tk : log->ticks) {
        if (tk.mem_ok != 1) {
          row.notes.push_back("run " + std::to_string(r + 1) + ": mem_ok=0 at tick " +
                              std::to_string(tk.tick));
          break;
        }
      }
    }
    std::fprintf(stderr,
                 "bench: %4d MiB run %d %s->%s: prepare %.2f s checkpoint %.2f s transfer %.2f s "
                 "restore %.2f s downtime %.2f s (ticks %.2f s) total %.2f s, %.0f bytes\n",
                 mib, r + 1, from.name.c_str(), to.name.c_str(), run.prepare, run.checkpoint,
                 run.transfer, run.restore, run.agent_downtime, run.tick_downtime, run.total,
                 run.bytes);
    row.runs.push_back(run);
  }
  for (const auto& n : c.Nodes()) (void)HttpDelete(n, "/v1/workloads/" + name);
  return row;
}

template <typename F>
double MedianOf(const Row& row, F f) {
  std::vector<double> v;
  for (const Run& r : row.runs) {
    double x = f(r);
    if (!std::isnan(x)) v.push_back(x);
  }
  return Median(v);
}

void PrintTable(const std::vector<Row>& rows, const Args& args) {
  std::printf("\nkmosix live migration, stop-and-copy, 2 namespace nodes, median of %d run(s)\n\n",
              args.runs);
  std::printf(
      "| engine | memory | prepare s | checkpoint s | transfer s | restore s | downtime (agent) s |"
      " downtime (ticks) s | total s | bytes | MB/s | baseline s | ticks/baseline |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& row : rows) {
    double tick_dt = MedianOf(row, [](const Run& r) { return r.tick_downtime; });
    auto base = Baseline(row.mib);
    std::string mem = row.mib % 1024 == 0 ? std::to_string(row.mib / 1024) + " GiB"
                                          : std::to_string(row.mib) + " MiB";
    std::printf(
        "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.engine.c_str(),
        mem.c_str(), Fmt(MedianOf(row, [](const Run& r) { return r.prepare; })).c_str(),
        Fmt(MedianOf(row, [](const Run& r) { return r.checkpoint; })).c_str(),
        Fmt(MedianOf(row, [](const Run& r) { return r.transfer; })).c_str(),
        Fmt(MedianOf(row, [](const Run& r) { return r.restore; })).c_str(),
        Fmt(MedianOf(row, [](const Run& r) { return r.agent_downtime; })).c_str(),
        Fmt(tick_dt).c_str(), Fmt(MedianOf(row, [](const Run& r) { return r.total; })).c_str(),
        Fmt(MedianOf(row, [](const Run& r) { return r.bytes; }), 0).c_str(),
        Fmt(MedianOf(row, [](const Run& r) { return r.mbps; }), 0).c_str(),
        base ? Fmt(*base).c_str() : "-",
        base && !std::isnan(tick_dt) ? (Fmt(tick_dt / *base) + "x").c_str() : "-");
  }
  std::printf(
      "\nbaseline: FIELD-NOTES, gRPC + checkpoint to an image_path directory "
      "(downtime = gap in the ticks).\n");
  // Each engine against the one before it in the list, same run.
  const std::vector<std::string>& engines = args.engines;
  auto tick_downtime = [&](const std::string& engine, int mib) {
    for (const Row& row : rows) {
      if (row.engine == engine && row.mib == mib) {
        return MedianOf(row, [](const Run& r) { return r.tick_downtime; });
      }
    }
    return static_cast<double>(NAN);
  };
  if (engines.size() > 1) {
    std::printf("\nengines against each other, same run (median downtime, ticks):\n\n| memory |");
    for (const auto& e : engines) std::printf(" %s s |", e.c_str());
    for (size_t i = 1; i < engines.size(); ++i) {
      std::printf(" %s/%s |", engines[i].c_str(), engines[i - 1].c_str());
    }
    std::printf("\n|---|");
    for (size_t i = 0; i < 2 * engines.size() - 1; ++i) std::printf("---|");
    std::printf("\n");
    for (int mib : args.mem) {
      std::printf("| %d MiB |", mib);
      for (const auto& e : engines) std::printf(" %s |", Fmt(tick_downtime(e, mib)).c_str());
      for (size_t i = 1; i < engines.size(); ++i) {
        double before = tick_downtime(engines[i - 1], mib);
        double now = tick_downtime(engines[i], mib);
        std::printf(" %s |",
                    before > 0 && !std::isnan(now) ? (Fmt(now / before) + "x").c_str() : "-");
      }
      std::printf("\n");
    }
  }
  bool any_notes = false;
  for (const Row& row : rows) {
    if (row.failures > 0 || !row.notes.empty()) {
      if (!any_notes) std::printf("\nproblems:\n");
      any_notes = true;
      std::printf("  %s %d MiB: %d failed migration(s)\n", row.engine.c_str(), row.mib,
                  row.failures);
      for (const auto& n : row.notes) std::printf("    %s\n", n.c_str());
    }
  }
}

void WriteJson(const std::string& path, const std::vector<Row>& rows) {
  json out = json::array();
  for (const Row& row : rows) {
    json runs = json::array();
    for (const Run& r : row.runs) {
      runs.push_back(
          {{"prepare", r.prepare},
           {"checkpoint", r.checkpoint},
           {"transfer", r.transfer},
           {"restore", r.restore},
           {"agentDowntime", r.agent_downtime},
           {"tickDowntime", std::isnan(r.tick_downtime) ? json() : json(r.tick_downtime)},
           {"total", r.total},
           {"bytes", r.bytes}});
    }
    out.push_back({{"engine", row.engine},
                   {"memoryMiB", row.mib},
                   {"runs", runs},
                   {"failures", row.failures},
                   {"notes", row.notes}});
  }
  std::ofstream(path) << out.dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Parse(argc, argv);
  if (std::string missing = Cluster::MissingCapability(); !missing.empty()) {
    std::fprintf(stderr, "kmosix-migration-bench: cannot run here: %s\n", missing.c_str());
    return 3;
  }
  std::vector<Row> rows;
  int failures = 0;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  for (const std::string& engine : args.engines) {
    ClusterOptions opts;
    opts.nodes = 2;
    opts.reuse = args.reuse;
    opts.keep = args.keep && engine == args.engines.back();
    opts.agent_args = EngineArgs(engine);
    opts.insecure = engine == "prefault-plain";  // TLS off: the secured default's baseline
    Cluster cluster(opts);
    g_cluster = &cluster;
    if (std::string err = cluster.Up(); !err.empty()) {
      std::fprintf(stderr, "kmosix-migration-bench: cluster (%s): %s\n", engine.c_str(),
                   err.c_str());
      return 1;
    }
    std::fprintf(stderr, "bench: engine %s\n", engine.c_str());
    for (int mib : args.mem) {
      rows.push_back(Measure(cluster, args, mib));
      rows.back().engine = engine;
      failures += rows.back().failures;
    }
    g_cluster = nullptr;
    if (std::string err = cluster.Down(); !err.empty()) std::fprintf(stderr, "%s\n", err.c_str());
  }
  PrintTable(rows, args);
  if (!args.json_out.empty()) WriteJson(args.json_out, rows);
  return failures == 0 ? 0 : 1;
}
