// End-to-end test of kmosixctl, the CLI, against the real local cluster
// (scripts/cluster: three namespace nodes, etcd, two leader-elected
// controllers over HTTPS with bearer tokens). The built kmosixctl binary runs
// as a subprocess with the cluster's environment (Cluster::CtlEnv(): both
// controller URLs, the admin token, the CA), the way a user runs it after
// `eval "$(scripts/cluster env)"`; every check reads its output text (and its
// exit code):
//
//   RunPsLogs            run a demo, ps shows it Running, logs shows its ticks,
//                        -o json ps parses
//   MigrateWait          migrate --wait to another node: phases, "Succeeded"
//                        with the downtime; ps shows the new node; ticks go on
//   PinBlocksMigrate     pin, then migrate fails with exit 4; unpin
//   CordonShowsInNodes   cordon: nodes says Ready,Cordoned; uncordon
//   DrainEmptiesANode    drain --wait: the node's workloads left, it is cordoned
//   EventsShowPhases     events --since 0 --types migration shows the phases
//   TopPlain             top --plain --iterations 2: two frames, every node a bar
//   JsonOutputsParse     -o json of every read command is JSON
//   ReadOnlyToken        reads work, rm is exit 5 (Forbidden); no token: exit 5
//   WrongServer          an unreachable server is exit 6; a wrong CA is exit 6
//                        (TLS); a dead first server fails over to the next
//
// The controllers run with --no-balance so the workloads stay where the test
// puts them. The cluster comes up once for the binary and is torn down at
// the end, on failure and on SIGINT/SIGTERM; a machine that cannot run it
// makes every test skip ("KMOSIX-E2E-SKIPPED").
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"
#include "e2e_environment.h"

#ifndef KMX_CTL_BIN
#error "KMX_CTL_BIN must be defined (see e2e/CMakeLists.txt)"
#endif

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

constexpr int kNodes = 3;
constexpr int kControllers = 2;
constexpr auto kRunningTimeout = milliseconds(120'000);
// A light demo: ticks every 100 ms, verifies 4 MiB of its 16 per tick.
const char* kDemoArgs = "/bin/kmosix-demo --mem 16 --verify-mib 4";

// The binary's cluster (ClusterEnvironment), set by the fixture's SetUp.
Cluster* g_cluster = nullptr;

// ---- running kmosixctl ---------------------------------------------------------

struct Ctl {
  int exit_code = -1;
  std::string out;
  std::string err;
  std::string Describe() const {
    return "exit " + std::to_string(exit_code) + "\n--- stdout\n" + out + "--- stderr\n" + err;
  }
};

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs kmosixctl with `env` (the cluster's by default; a value "" unsets the
// variable) and `args` (already shell-quoted where needed), no config file
// unless env names one. stdout and stderr apart.
Ctl RunCtl(const std::string& args, std::map<std::string, std::string> env = {},
           const std::string& prefix = "") {
  std::map<std::string, std::string> full =
      g_cluster ? g_cluster->CtlEnv() : std::map<std::string, std::string>{};
  for (const auto& [k, v] : env) full[k] = v;
  std::string cmd =
      "env -u KMOSIX_CONFIG -u KMOSIX_SERVER -u KMOSIX_TOKEN -u KMOSIX_CA_FILE "
      "XDG_CONFIG_HOME=/nonexistent-kmosixctl-e2e";
  for (const auto& [k, v] : full) {
    if (!v.empty()) cmd += " " + k + "=" + ShellQuote(v);
  }
  static int counter = 0;
  const std::string err_file =
      "/tmp/kmosixctl-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(++counter) + ".err";
  cmd += " " + prefix + ShellQuote(KMX_CTL_BIN) + " " + args + " 2>" + ShellQuote(err_file);
  auto r = RunCommand(cmd);
  Ctl c;
  c.exit_code = r.exit_code;
  c.out = r.output;
  c.err = ReadFileText(err_file);
  std::remove(err_file.c_str());
  return c;
}

bool Contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// The whitespace-separated cells of the table row starting with `first`.
std::vector<std::string> Row(const std::string& table, const std::string& first) {
  for (const auto& l : Lines(table)) {
    std::istringstream in(l);
    std::vector<std::string> cells;
    for (std::string c; in >> c;) cells.push_back(c);
    if (!cells.empty() && cells[0] == first) return cells;
  }
  return {};
}

// `ps` row of a workload: NAME PHASE NODE ...
struct PsRow {
  std::string phase, node;
  std::string line;
};
std::optional<PsRow> PsOf(const std::string& name, std::string* seen) {
  Ctl ps = RunCtl("ps");
  *seen = ps.Describe();
  if (ps.exit_code != 0) return std::nullopt;
  auto cells = Row(ps.out, name);
  if (cells.size() < 3) return std::nullopt;
  PsRow r;
  r.phase = cells[1];
  r.node = cells[2];
  for (const auto& l : Lines(ps.out))
    if (l.rfind(name + " ", 0) == 0) r.line = l;
  return r;
}

WaitResult WaitRunning(const std::string& name, std::string* node) {
  return WaitFor(
      "kmosixctl ps shows " + name + " Running", kRunningTimeout,
      [&] {
        std::string seen;
        auto r = PsOf(name, &seen);
        if (r && r->phase == "Running") {
          *node = r->node;
          return Observation{true, r->line};
        }
        return Observation{false, r ? r->line : seen};
      },
      milliseconds(500));
}

// The highest tick in `kmosixctl logs NAME`.
int64_t LastTick(const std::string& name, std::string* seen) {
  Ctl logs = RunCtl("logs " + name);
  *seen = logs.Describe().substr(0, 2000);
  if (logs.exit_code != 0) return -1;
  DemoLog log = ParseDemoLog(logs.out);
  return log.ticks.empty() ? -1 : static_cast<int64_t>(log.ticks.back().tick);
}

// A ready node other than `not_this`.
std::string OtherNode(const std::string& not_this) {
  for (const auto& n : g_cluster->Nodes()) {
    if (n.name != not_this) return n.name;
  }
  return "";
}

class KmosixctlE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    g_cluster = ClusterForTest();
    if (g_cluster == nullptr) return;
    ASSERT_TRUE(g_cluster->Secure()) << "the cluster is expected to run with TLS and tokens";
  }
  void TearDown() override {
    if (HasFailure() && g_cluster != nullptr) {
      for (const auto& c : g_cluster->Controllers()) {
        std::cerr << "--- " << c.name << " log tail\n" << g_cluster->ControllerLogTail(c, 40);
      }
    }
  }

  // Creates a demo through kmosixctl and waits until ps shows it Running.
  std::string RunDemo(const std::string& name, const std::string& extra = "") {
    Ctl run = RunCtl("run " + name + " " + Cluster::kDemoImage + " " + extra + " -- " + kDemoArgs);
    EXPECT_EQ(run.exit_code, 0) << run.Describe();
    EXPECT_TRUE(Contains(run.out, "workload " + name + " created")) << run.Describe();
    std::string node;
    auto w = WaitRunning(name, &node);
    EXPECT_TRUE(w) << w.message;
    return node;
  }
};

// ---- the tests --------------------------------------------------------------------

TEST_F(KmosixctlE2E, RunPsLogs) {
  const std::string node = RunDemo("ctl-a");
  ASSERT_FALSE(node.empty());
  // ps: one row, Running on a node of the cluster, with CPU/memory figures.
  std::set<std::string> names;
  for (const auto& n : g_cluster->Nodes()) names.insert(n.name);
  EXPECT_TRUE(names.count(node)) << node;
  Ctl ps = RunCtl("ps --node " + node);
  ASSERT_EQ(ps.exit_code, 0) << ps.Describe();
  EXPECT_TRUE(Lines(ps.out)[0].rfind("NAME   PHASE", 0) == 0) << ps.out;
  EXPECT_EQ(Row(ps.out, "ctl-a").at(1), "Running") << ps.out;

  // logs: the demo's tick lines, consecutive.
  std::string seen;
  auto ticks = WaitFor("kmosixctl logs ctl-a shows 10 ticks", milliseconds(60'000), [&] {
    int64_t t = LastTick("ctl-a", &seen);
    return Observation{t >= 10, seen};
  });
  ASSERT_TRUE(ticks) << ticks.message;
  Ctl logs = RunCtl("logs ctl-a");
  ASSERT_EQ(logs.exit_code, 0) << logs.Describe();
  EXPECT_TRUE(Contains(logs.out, "tick=")) << logs.out.substr(0, 500);
  DemoLog log = ParseDemoLog(logs.out);
  EXPECT_EQ(CheckConsecutive(log.ticks), "");

  // logs -f: what was there, then only the new lines (a duplicate would break
  // the consecutive ticks).
  Ctl follow = RunCtl("logs -f ctl-a", {}, "timeout -s TERM 4 ");
  EXPECT_EQ(follow.exit_code, 124) << follow.Describe();  // ended by timeout
  DemoLog followed = ParseDemoLog(follow.out);
  EXPECT_EQ(CheckConsecutive(followed.ticks), "") << follow.out.substr(0, 2000);
  ASSERT_FALSE(followed.ticks.empty());
  EXPECT_GT(static_cast<int64_t>(followed.ticks.back().tick),
            static_cast<int64_t>(log.ticks.back().tick) + 10)
      << "logs -f printed no new ticks";
  EXPECT_EQ(followed.start_lines, 1);

  // The same through -o json: the server's workload record.
  Ctl js = RunCtl("-o json ps");
  ASSERT_EQ(js.exit_code, 0) << js.Describe();
  json parsed = json::parse(js.out, nullptr, false);
  ASSERT_TRUE(parsed.is_object()) << js.out;
  bool found = false;
  for (const auto& w : parsed["items"]) {
    if (w.value("name", "") == "ctl-a") {
      found = true;
      EXPECT_EQ(w["status"]["phase"], "Running");
      EXPECT_EQ(w["status"]["node"], node);
      EXPECT_EQ(w["spec"]["image"], Cluster::kDemoImage);
    }
  }
  EXPECT_TRUE(found) << js.out;
  // One workload in detail.
  Ctl one = RunCtl("ps ctl-a");
  ASSERT_EQ(one.exit_code, 0) << one.Describe();
  EXPECT_TRUE(std::regex_search(one.out, std::regex("\nPhase: +Running on " + node + "\n")))
      << one.out;
  // An unknown workload: exit 3 with the server's message.
  Ctl missing = RunCtl("logs no-such-workload");
  EXPECT_EQ(missing.exit_code, 3) << missing.Describe();
  EXPECT_TRUE(Contains(missing.err, "(HTTP 404)")) << missing.Describe();
}

TEST_F(KmosixctlE2E, MigrateWait) {
  std::string seen;
  auto before = PsOf("ctl-a", &seen);
  ASSERT_TRUE(before && before->phase == "Running") << seen;
  const std::string target = OtherNode(before->node);
  const int64_t tick_before = LastTick("ctl-a", &seen);
  ASSERT_GE(tick_before, 0) << seen;

  Ctl m = RunCtl("migrate ctl-a " + target + " --wait --timeout 240");
  ASSERT_EQ(m.exit_code, 0) << m.Describe();
  std::cerr << "[ kmosixctl ] migrate ctl-a " << target << " --wait:\n" << m.out;
  EXPECT_TRUE(Contains(m.out, "ordered: ctl-a " + before->node + " -> " + target)) << m.out;
  EXPECT_TRUE(Contains(m.out, "  Pending\n")) << m.out;
  EXPECT_TRUE(
      std::regex_search(m.out, std::regex("Succeeded: ctl-a moved " + before->node + " -> " +
                                          target + " in [0-9.]+m?s, downtime [0-9.]+m?s")))
      << m.out;

  // ps shows the new node; the counter went on from where it was.
  std::string node;
  auto running = WaitRunning("ctl-a", &node);
  ASSERT_TRUE(running) << running.message;
  EXPECT_EQ(node, target);
  auto more = WaitFor("ticks after the move", milliseconds(60'000), [&] {
    return Observation{LastTick("ctl-a", &seen) > tick_before + 5, seen};
  });
  ASSERT_TRUE(more) << more.message;
  Ctl logs = RunCtl("logs ctl-a");
  DemoLog log = ParseDemoLog(logs.out);
  EXPECT_EQ(CheckConsecutive(log.ticks), "") << "the tick counter must survive the migration";
  EXPECT_EQ(log.start_lines, 1) << "the demo must not have restarted";

  // migrations lists it, Succeeded, with its downtime.
  Ctl ms = RunCtl("migrations");
  ASSERT_EQ(ms.exit_code, 0) << ms.Describe();
  bool listed = false;
  for (const auto& l : Lines(ms.out)) {
    if (Contains(l, "ctl-a") && Contains(l, before->node + "->" + target) &&
        Contains(l, "Succeeded") && Contains(l, "api")) {
      listed = true;
    }
  }
  EXPECT_TRUE(listed) << ms.out;
}

TEST_F(KmosixctlE2E, PinBlocksMigrate) {
  std::string seen;
  auto at = PsOf("ctl-a", &seen);
  ASSERT_TRUE(at && at->phase == "Running") << seen;
  Ctl pin = RunCtl("pin ctl-a");
  ASSERT_EQ(pin.exit_code, 0) << pin.Describe();
  EXPECT_EQ(pin.out, "workload ctl-a pinned: it stays on " + at->node + "\n");
  auto pinned = PsOf("ctl-a", &seen);
  ASSERT_TRUE(pinned) << seen;
  EXPECT_TRUE(Contains(pinned->line, "pinned")) << pinned->line;

  Ctl m = RunCtl("migrate ctl-a " + OtherNode(at->node));
  EXPECT_EQ(m.exit_code, 4) << m.Describe();
  EXPECT_TRUE(Contains(m.err, "(HTTP 409)")) << m.Describe();
  EXPECT_TRUE(Contains(m.err, "pinned")) << m.Describe();
  EXPECT_EQ(m.out, "");

  Ctl unpin = RunCtl("unpin ctl-a");
  ASSERT_EQ(unpin.exit_code, 0) << unpin.Describe();
  EXPECT_EQ(unpin.out, "workload ctl-a unpinned: the balancer may move it again\n");
  auto after = PsOf("ctl-a", &seen);
  ASSERT_TRUE(after) << seen;
  EXPECT_FALSE(Contains(after->line, "pinned")) << after->line;
}

TEST_F(KmosixctlE2E, CordonShowsInNodes) {
  const std::string node = g_cluster->node(3).name;
  Ctl c = RunCtl("cordon " + node);
  ASSERT_EQ(c.exit_code, 0) << c.Describe();
  EXPECT_EQ(c.out, "node " + node + " cordoned: it takes no new workloads or migrations\n");
  auto shown = WaitFor("nodes shows " + node + " Ready,Cordoned", milliseconds(30'000), [&] {
    Ctl n = RunCtl("nodes");
    auto row = Row(n.out, node);
    return Observation{row.size() > 1 && row[1] == "Ready,Cordoned", n.Describe()};
  });
  EXPECT_TRUE(shown) << shown.message;
  Ctl js = RunCtl("-o json nodes " + node);
  json parsed = json::parse(js.out, nullptr, false);
  ASSERT_TRUE(parsed.is_object()) << js.Describe();
  EXPECT_EQ(parsed["cordoned"], true);

  Ctl u = RunCtl("uncordon " + node);
  ASSERT_EQ(u.exit_code, 0) << u.Describe();
  auto back = WaitFor("nodes shows " + node + " Ready", milliseconds(30'000), [&] {
    Ctl n = RunCtl("nodes");
    auto row = Row(n.out, node);
    return Observation{row.size() > 1 && row[1] == "Ready", n.Describe()};
  });
  EXPECT_TRUE(back) << back.message;
}

TEST_F(KmosixctlE2E, DrainEmptiesANode) {
  // ctl-b on the node that does not hold ctl-a; drain it.
  std::string seen;
  auto a = PsOf("ctl-a", &seen);
  ASSERT_TRUE(a) << seen;
  const std::string node = OtherNode(a->node);
  EXPECT_EQ(RunDemo("ctl-b", "--node " + node), node);

  Ctl d = RunCtl("drain " + node + " --wait --timeout 300");
  ASSERT_EQ(d.exit_code, 0) << d.Describe();
  std::cerr << "[ kmosixctl ] drain " << node << " --wait:\n" << d.out;
  EXPECT_TRUE(Contains(d.out, "Node " + node + " is cordoned: 1 migration(s) ordered")) << d.out;
  EXPECT_TRUE(std::regex_search(d.out, std::regex("ctl-b +ordered +m-[0-9a-f]+ +node[0-9]")))
      << d.out;
  EXPECT_TRUE(Contains(d.out, "Succeeded: ctl-b moved " + node + " -> ")) << d.out;
  EXPECT_TRUE(Contains(d.out, "drain of " + node + ": 1 moved, 0 did not move")) << d.out;

  // Its workloads left; it stays cordoned.
  Ctl ps = RunCtl("ps --node " + node);
  ASSERT_EQ(ps.exit_code, 0) << ps.Describe();
  EXPECT_EQ(ps.out, "No workloads.\n");
  std::string b_node;
  auto b = WaitRunning("ctl-b", &b_node);
  ASSERT_TRUE(b) << b.message;
  EXPECT_NE(b_node, node);
  Ctl nodes = RunCtl("nodes");
  auto row = Row(nodes.out, node);
  ASSERT_GT(row.size(), 1u) << nodes.out;
  EXPECT_EQ(row[1], "Ready,Cordoned") << nodes.out;
  // Draining again: nothing left to move.
  Ctl again = RunCtl("drain " + node);
  EXPECT_EQ(again.exit_code, 0) << again.Describe();
  EXPECT_TRUE(Contains(again.out, "0 migration(s) ordered, 0 already moving, 0 not moved"))
      << again.out;
  EXPECT_EQ(RunCtl("uncordon " + node).exit_code, 0);
}

TEST_F(KmosixctlE2E, EventsShowPhases) {
  // The stream never ends: a few seconds of it (the ring replays the past).
  Ctl ev = RunCtl("events --since 0 --types migration", {}, "timeout -s TERM 6 ");
  EXPECT_EQ(ev.exit_code, 124) << ev.Describe();  // stopped by timeout, not failed
  std::set<std::string> phases;
  for (const auto& l : Lines(ev.out)) {
    if (!Contains(l, "migration.phase") || !Contains(l, "ctl-a ")) continue;
    for (const char* p :
         {"Pending", "Checkpointing", "Transferring", "Restoring", "Committing", "Succeeded"}) {
      if (Contains(l, std::string(" ") + p)) phases.insert(p);
    }
  }
  EXPECT_TRUE(phases.count("Succeeded")) << ev.out;
  EXPECT_GE(phases.size(), 3u) << "the migration's phases, one line each:\n" << ev.out;
  EXPECT_TRUE(Contains(ev.out, "migration.created")) << ev.out;
  std::cerr << "[ kmosixctl ] events --since 0 --types migration:\n" << ev.out;
  for (const auto& l : Lines(ev.out)) {
    EXPECT_TRUE(l.rfind("migration.", 14) == 14) << "only migration events: " << l;
  }

  // -o json: one JSON object per line.
  Ctl js = RunCtl("-o json events --since 0 --types migration.phase --limit 3");
  ASSERT_EQ(js.exit_code, 0) << js.Describe();
  auto lines = Lines(js.out);
  ASSERT_EQ(lines.size(), 3u) << js.out;
  for (const auto& l : lines) {
    json e = json::parse(l, nullptr, false);
    ASSERT_TRUE(e.is_object()) << l;
    EXPECT_EQ(e["type"], "migration.phase");
    EXPECT_TRUE(e.contains("phase")) << l;
  }
}

TEST_F(KmosixctlE2E, TopPlain) {
  Ctl top = RunCtl("top --plain --iterations 2 --interval 1");
  ASSERT_EQ(top.exit_code, 0) << top.Describe();
  int headers = 0;
  std::map<std::string, int> bars;
  for (const auto& l : Lines(top.out)) {
    if (l.rfind("=== kmosix top", 0) == 0) ++headers;
    for (const auto& n : g_cluster->Nodes()) {
      if (std::regex_search(l, std::regex("^" + n.name + " +\\[[#+|. ]+\\] +[0-9]+\\.[0-9]{2} ")))
        ++bars[n.name];
    }
  }
  EXPECT_EQ(headers, 2) << top.out;
  for (const auto& n : g_cluster->Nodes()) {
    EXPECT_EQ(bars[n.name], 2) << n.name << " needs a load bar in each frame:\n" << top.out;
  }
  EXPECT_TRUE(Contains(top.out, "  ctl-a  Running")) << top.out;
  EXPECT_TRUE(Contains(top.out, "nodes: 3 (3 ready")) << top.out;
  for (const auto& l : Lines(top.out)) EXPECT_LE(l.size(), 100u) << l;
  std::cerr << "[ kmosixctl ] top --plain, last frame:\n";
  auto lines = Lines(top.out);
  size_t last = 0;
  for (size_t i = 0; i < lines.size(); ++i)
    if (lines[i].rfind("=== kmosix top", 0) == 0) last = i;
  for (size_t i = last; i < lines.size(); ++i) std::cerr << lines[i] << "\n";
}

TEST_F(KmosixctlE2E, JsonOutputsParse) {
  for (const char* cmd : {"nodes", "ps", "migrations", "decisions", "leader"}) {
    Ctl c = RunCtl(std::string("-o json ") + cmd);
    ASSERT_EQ(c.exit_code, 0) << cmd << "\n" << c.Describe();
    json j = json::parse(c.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << cmd << ": " << c.out;
    if (std::string(cmd) != "decisions" && std::string(cmd) != "leader") {
      EXPECT_TRUE(j.contains("items") && j["items"].is_array()) << cmd << ": " << c.out;
    }
  }
  Ctl l = RunCtl("-o json leader");
  json leader = json::parse(l.out, nullptr, false);
  ASSERT_TRUE(leader.is_object());
  EXPECT_TRUE(leader["leader"].is_string()) << l.out;
  // The table forms of the same, for the eye.
  Ctl lt = RunCtl("leader");
  EXPECT_TRUE(Contains(lt.out, "Leader:       controller")) << lt.Describe();
  Ctl dt = RunCtl("decisions");
  EXPECT_EQ(dt.exit_code, 0) << dt.Describe();
  EXPECT_TRUE(Contains(dt.out, "Node loads: ")) << dt.out;
  std::cerr << "[ kmosixctl ] nodes:\n"
            << RunCtl("nodes").out << "[ kmosixctl ] ps:\n"
            << RunCtl("ps").out << "[ kmosixctl ] migrations:\n"
            << RunCtl("migrations").out << "[ kmosixctl ] leader:\n"
            << lt.out << "[ kmosixctl ] decisions:\n"
            << dt.out;
}

TEST_F(KmosixctlE2E, ReadOnlyToken) {
  const std::map<std::string, std::string> ro = {{"KMOSIX_TOKEN", g_cluster->ReadOnlyToken()}};
  Ctl ps = RunCtl("ps", ro);
  EXPECT_EQ(ps.exit_code, 0) << ps.Describe();
  EXPECT_TRUE(Contains(ps.out, "ctl-a")) << ps.out;
  Ctl rm = RunCtl("rm ctl-a", ro);
  EXPECT_EQ(rm.exit_code, 5) << rm.Describe();
  EXPECT_TRUE(Contains(rm.err, "(HTTP 403)")) << rm.Describe();
  EXPECT_TRUE(Contains(rm.err, "hint: this token may only read")) << rm.Describe();
  EXPECT_EQ(rm.out, "");
  std::string seen;
  EXPECT_TRUE(PsOf("ctl-a", &seen).has_value()) << "rm with a read-only token deleted it:\n"
                                                << seen;
  // No token at all: 401.
  Ctl none = RunCtl("nodes", {{"KMOSIX_TOKEN", ""}});
  EXPECT_EQ(none.exit_code, 5) << none.Describe();
  EXPECT_TRUE(Contains(none.err, "(HTTP 401)")) << none.Describe();
  Ctl wrong = RunCtl("nodes --token not-a-token");
  EXPECT_EQ(wrong.exit_code, 5) << wrong.Describe();
}

TEST_F(KmosixctlE2E, WrongServer) {
  Ctl refused = RunCtl("nodes", {{"KMOSIX_SERVER", "https://127.0.0.1:1"}});
  EXPECT_EQ(refused.exit_code, 6) << refused.Describe();
  EXPECT_TRUE(Contains(refused.err, "Unreachable: https://127.0.0.1:1: ")) << refused.Describe();
  // The right server with a CA that did not sign its certificate: TLS failure.
  const std::string other_ca = "/tmp/kmosixctl-e2e-other-ca.pem";
  auto gen = RunCommand("openssl req -x509 -newkey rsa:2048 -nodes -keyout /dev/null -out " +
                        other_ca + " -subj /CN=other -days 1 2>&1");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  Ctl tls = RunCtl("nodes", {{"KMOSIX_CA_FILE", other_ca}});
  EXPECT_EQ(tls.exit_code, 6) << tls.Describe();
  EXPECT_TRUE(Contains(tls.err, "TLS")) << tls.Describe();
  EXPECT_TRUE(Contains(tls.err, "--ca-file")) << tls.Describe();
  std::remove(other_ca.c_str());
  // Plain http to the https controllers.
  std::string plain = g_cluster->controller(1).url;
  plain.replace(0, 5, "http");
  Ctl http = RunCtl("nodes", {{"KMOSIX_SERVER", plain}});
  EXPECT_EQ(http.exit_code, 6) << http.Describe();
  // A dead first server: the next one answers.
  Ctl failover =
      RunCtl("nodes", {{"KMOSIX_SERVER", "https://127.0.0.1:1," + g_cluster->controller(1).url}});
  EXPECT_EQ(failover.exit_code, 0) << failover.Describe();
  EXPECT_TRUE(Contains(failover.out, "node1")) << failover.Describe();
  // The cluster's own config file works alone (scripts/cluster writes it).
  auto st = RunCommand(ShellQuote(Cluster::RepoDir() + "/scripts/cluster") +
                       " status --json 2>/dev/null");
  json layout = json::parse(st.output, nullptr, false);
  if (layout.is_object() && layout.contains("kmosixctl_config") &&
      layout["kmosixctl_config"].is_string()) {
    Ctl cfg = RunCtl("nodes", {{"KMOSIX_SERVER", ""},
                               {"KMOSIX_TOKEN", ""},
                               {"KMOSIX_CA_FILE", ""},
                               {"KMOSIX_CONFIG", layout["kmosixctl_config"].get<std::string>()}});
    EXPECT_EQ(cfg.exit_code, 0) << cfg.Describe();
    EXPECT_TRUE(Contains(cfg.out, "node1")) << cfg.Describe();
  }
}

TEST_F(KmosixctlE2E, Cleanup) {
  Ctl rm = RunCtl("rm ctl-a ctl-b");
  EXPECT_EQ(rm.exit_code, 0) << rm.Describe();
  EXPECT_EQ(rm.out, "workload ctl-a deleted\nworkload ctl-b deleted\n");
  auto gone = WaitFor("ps shows no workloads", milliseconds(60'000), [&] {
    Ctl ps = RunCtl("ps");
    return Observation{ps.exit_code == 0 && ps.out == "No workloads.\n", ps.Describe()};
  });
  EXPECT_TRUE(gone) << gone.message;
  Ctl again = RunCtl("rm ctl-a");
  EXPECT_EQ(again.exit_code, 3) << again.Describe();
}

}  // namespace
}  // namespace kmosix::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  kmosix::e2e::ClusterOptions opts;
  opts.nodes = kmosix::e2e::kNodes;
  opts.etcd = true;
  opts.controllers = kmosix::e2e::kControllers;
  opts.controller_args = {"--no-balance"};
  opts.node_cpus = 1;
  opts.node_memory_mib = 2048;
  ::testing::AddGlobalTestEnvironment(new kmosix::e2e::ClusterEnvironment(opts));
  return RUN_ALL_TESTS();
}
