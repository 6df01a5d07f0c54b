// kmosix-brain-bench: the cluster brain (issue 3) on a local three-node
// cluster (scripts/cluster) with a real etcd and two leader-elected
// kmosix-controllers (--min-residency 5, as in e2e/brain_e2e_test.cc), one
// declared core and 2 GiB per node. It prints markdown tables of:
//
//   1. etcd writes at steady state, over a --window (default 60 s) each:
//      no workloads; 4 idle demos (tick once a second, 1 MiB verified per
//      tick); 4 CPU-bound demos (placed by the controller, measured once the
//      placement has been unchanged for --quiet s). Figures:
//        write txns/s  etcd revisions / s: header.revision of a range request
//                      on etcd's JSON gateway, read at both ends of the
//                      window. Exact: one revision per committed transaction
//                      that changed at least one key (put, delete, txn, lease
//                      expiry); reads, failed compares and lease keep-alives
//                      do not count.
//        per node      the above / number of nodes
//        key writes/s  the keys changed: a watch on every key replayed from
//                      the window's first revision to its last (etcdctl watch
//                      --rev, JSON), one event per key put or deleted; also
//                      broken down by key (nodes/<node>, members/<node>,
//                      workloads/, migrations/, leader). Cross-checked against
//                      etcd_mvcc_put_total + etcd_mvcc_delete_total.
//        keep-alives/s etcd_debugging_lease_renewed_total (requests the leader
//                      served; no store write)
//   2. a hot spot, --runs times (default 3): four CPU-bound demos created on
//      node1 at t=0, as test (a) of the brain e2e; the times from t=0 until
//      node1's published load lists all four, until the first migration order
//      (its createdMs), the first migration done and the cluster settled
//      (every one Running with nothing in flight, no node holding more than
//      two, at least one migration, and all of that unchanged for --quiet s:
//      the time reported is the last migration's finishedMs); the number of
//      migrations, the final placement, and etcd write txns/s over the run.
//      Workloads are deleted and the cluster left to go quiet (every node's
//      load < 0.2, no workload listed) between runs. Median, min, max.
//
//   kmosix-brain-bench [--runs 3] [--window 60] [--quiet 15] [--warmup 20]
//                      [--no-steady] [--no-hotspot] [--reuse] [--keep]
//                      [--json FILE]
// --reuse: use the cluster that is up (scripts/cluster up, with etcd and
// controllers) and leave it up. --keep: leave the cluster this program brought
// up running.
// Exit: 0 measured (tables printed); 0 also when this machine cannot run the
// cluster (not root, CRIU unusable, etcd missing: the reason is printed); 1 a
// step failed (cluster did not come up, a workload did not run, a hot spot did
// not settle; the tables list the problems); 2 usage.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"

namespace {

using kmosix::e2e::ArmDownOnSignal;
using kmosix::e2e::CheckGoneEverywhere;
using kmosix::e2e::Cluster;
using kmosix::e2e::ClusterOptions;
using kmosix::e2e::DemoWorkloadSpec;
using kmosix::e2e::Endpoint;
using kmosix::e2e::GetItems;
using kmosix::e2e::GetObject;
using kmosix::e2e::HttpDelete;
using kmosix::e2e::HttpGet;
using kmosix::e2e::HttpPost;
using kmosix::e2e::InstallDownOnSignal;
using kmosix::e2e::Observation;
using kmosix::e2e::RunCommand;
using kmosix::e2e::ShellQuote;
using kmosix::e2e::WaitFor;
using kmosix::e2e::WaitForTickAt;
using kmosix::e2e::WaitResult;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kNodes = 3;
constexpr int kControllers = 2;
constexpr int kWorkloads = 4;
constexpr auto kRunningTimeout = milliseconds(120'000);
constexpr auto kGoneTimeout = milliseconds(120'000);
constexpr auto kQuietTimeout = milliseconds(180'000);
constexpr auto kSettleTimeout = milliseconds(300'000);
constexpr double kQuietLoad = 0.2;

// The demo burning a whole core (as in the brain e2e): --verify-mib 0
// verifies all 128 MiB per tick, and a 1 ms interval leaves no time to sleep.
const std::vector<std::string> kCpuBound = {"--mem", "128",           "--verify-mib",
                                            "0",     "--interval-ms", "1"};
// An idle demo: one tick a second, 1 MiB of 16 verified per tick.
const std::vector<std::string> kIdle = {"--mem",         "16",  "--verify-mib", "1",
                                        "--interval-ms", "1000"};

struct Args {
  int runs = 3;
  int window_s = 60;
  int quiet_s = 15;
  int warmup_s = 20;
  bool steady = true;
  bool hotspot = true;
  bool reuse = false;
  bool keep = false;
  std::string json_out;
};

void Usage(int code) {
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: kmosix-brain-bench [--runs 3] [--window 60] [--quiet 15] [--warmup 20]\n"
               "                          [--no-steady] [--no-hotspot] [--reuse] [--keep]\n"
               "                          [--json FILE]\n");
  std::exit(code);
}

int PositiveInt(const std::string& s, const char* flag) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (!s.empty() && end != nullptr && *end == '\0' && v > 0 && v < 1'000'000) {
    return static_cast<int>(v);
  }
  std::fprintf(stderr, "bad value for %s: %s\n", flag, s.c_str());
  Usage(2);
  return 0;
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(2);
      return argv[++i];
    };
    if (f == "--runs") {
      a.runs = PositiveInt(value(), "--runs");
    } else if (f == "--window") {
      a.window_s = PositiveInt(value(), "--window");
    } else if (f == "--quiet") {
      a.quiet_s = PositiveInt(value(), "--quiet");
    } else if (f == "--warmup") {
      a.warmup_s = PositiveInt(value(), "--warmup");
    } else if (f == "--no-steady") {
      a.steady = false;
    } else if (f == "--no-hotspot") {
      a.hotspot = false;
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
  return a;
}

// --- small helpers -------------------------------------------------------------------

int64_t WallMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Str(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}
int64_t Int(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}
double Num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}
std::string StatusStr(const json& w, const char* key) {
  return w.is_object() && w.contains("status") ? Str(w["status"], key) : "";
}
bool IsFinalPhase(const std::string& p) {
  return p == "Succeeded" || p == "RolledBack" || p == "Failed";
}

std::string Fmt(double v, int prec = 1) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

void Progress(const std::string& s) {
  std::fprintf(stderr, "brain-bench: %s\n", s.c_str());
  std::fflush(stderr);
}

struct Stats {
  double median = NAN, min = NAN, max = NAN;
  size_t n = 0;
};
Stats Summarize(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  s.median = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.min = v.front();
  s.max = v.back();
  return s;
}

// Standard base64 (etcd's JSON encodes keys so); invalid characters end it.
std::string Base64Decode(const std::string& in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = val(c);
    if (v < 0) break;  // '=' padding or garbage
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

// --- etcd ------------------------------------------------------------------------------

// The store's current revision (a count-only range of the key "\0" on the
// JSON gateway).
std::optional<int64_t> EtcdRevision(const std::string& url, std::string* error) {
  auto r = HttpPost(url, "/v3/kv/range", {{"key", "AA=="}, {"count_only", true}}, seconds(5));
  json j = r.Json();
  if (r.status == 200 && j.is_object() && j.contains("header") && j["header"].is_object()) {
    const json& rev = j["header"].value("revision", json());
    if (rev.is_number_integer()) return rev.get<int64_t>();
    if (rev.is_string()) {
      const std::string s = rev.get<std::string>();
      char* end = nullptr;
      long long v = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && *end == '\0') return v;
    }
  }
  *error = "etcd revision: POST /v3/kv/range: " + r.Describe();
  return std::nullopt;
}

// Unlabelled samples of etcd's /metrics.
std::map<std::string, double> EtcdMetrics(const std::string& url) {
  std::map<std::string, double> out;
  auto r = HttpGet(url, "/metrics", seconds(5));
  if (r.status != 200) return out;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line.find('{') != std::string::npos) continue;
    std::istringstream words(line);
    std::string name, value;
    if (!(words >> name >> value)) continue;
    char* end = nullptr;
    double v = std::strtod(value.c_str(), &end);
    if (end != nullptr && *end == '\0') out[name] = v;
  }
  return out;
}

double MetricDelta(const std::map<std::string, double>& a, const std::map<std::string, double>& b,
                   const std::vector<std::string>& names) {
  double sum = 0;
  for (const auto& n : names) {
    auto ia = a.find(n);
    auto ib = b.find(n);
    if (ia == a.end() || ib == b.end()) return NAN;
    sum += ib->second - ia->second;
  }
  return sum;
}

struct KeyEvent {
  int64_t revision = 0;
  std::string key;
};

// Every key changed in revisions [from, to]: a watch on all keys replayed from
// `from` (etcdctl, JSON lines), stopped after a few seconds. std::nullopt and
// *error when the replay did not reach `to`.
std::optional<std::vector<KeyEvent>> EtcdHistory(const std::string& url, int64_t from, int64_t to,
                                                 std::string* error) {
  std::vector<KeyEvent> events;
  if (to < from) return events;
  auto r = RunCommand("ETCDCTL_API=3 timeout 5 etcdctl --endpoints " + ShellQuote(url) +
                      " watch --prefix '' --rev " + std::to_string(from) + " -w json");
  int64_t reached = from - 1;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("Events") || !j["Events"].is_array()) {
      continue;
    }
    for (const auto& e : j["Events"]) {
      if (!e.is_object() || !e.contains("kv") || !e["kv"].is_object()) continue;
      const json& kv = e["kv"];
      const int64_t rev = Int(kv, "mod_revision");
      reached = std::max(reached, rev);
      if (rev < from || rev > to) continue;
      events.push_back({rev, Base64Decode(Str(kv, "key"))});
    }
  }
  if (reached < to) {
    std::string out = r.output.size() > 400 ? r.output.substr(0, 400) + "..." : r.output;
    *error = "etcdctl watch --rev " + std::to_string(from) + " reached revision " +
             std::to_string(reached) + " of " + std::to_string(to) + ": " + out;
    return std::nullopt;
  }
  return events;
}

// nodes/<node> and members/<node> per node, the rest by their first component.
std::string KeyGroup(const std::string& key) {
  const std::string prefix = "/kmosix/";
  if (key.rfind(prefix, 0) != 0) return "(outside " + prefix + ")";
  const std::string rest = key.substr(prefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string::npos) return rest;
  const std::string top = rest.substr(0, slash);
  if (top == "nodes" || top == "members") return rest;
  return top + "/";
}

// --- results ------------------------------------------------------------------------------

struct Window {
  std::string label;
  double seconds = 0;
  int64_t revisions = 0;
  int64_t key_writes = -1;  // -1: unknown (no history)
  double mvcc_writes = NAN;
  double renewals = NAN;
  std::map<std::string, int64_t> by_group;
  int migrations = 0;
  std::string placement;
  std::vector<std::string> notes;
  bool ok = false;
};

struct HotRun {
  int index = 0;
  bool settled = false;
  double visible_s = NAN, first_order_s = NAN, first_done_s = NAN, settled_s = NAN;
  double load_when_visible = NAN;
  double etcd_txn_per_s = NAN;
  int migrations = 0, succeeded = 0, most = 0;
  std::map<std::string, std::string> placement;
  std::string first_reason;
  std::vector<std::string> notes;     // problems: the run counts as failed
  std::vector<std::string> warnings;  // worth knowing, not a failure
};

std::string Counts(const std::map<std::string, std::string>& placement) {
  std::map<std::string, int> per;
  for (const auto& [w, n] : placement) ++per[n.empty() ? "?" : n];
  std::string s;
  for (const auto& [n, k] : per) s += (s.empty() ? "" : " ") + n + ":" + std::to_string(k);
  return s;
}

// --- the bench --------------------------------------------------------------------------------

class Bench {
 public:
  Bench(Cluster& c, const Args& args) : c_(c), args_(args) {}

  // A controller to talk to (URL, CA, admin token): the leader if there is
  // one, else any that answers.
  Endpoint Api() const {
    if (const auto* l = c_.Leader()) return *l;
    for (const auto& ctl : c_.Controllers()) {
      if (HttpGet(ctl, "/healthz", seconds(2)).status == 200) return ctl;
    }
    return c_.controller(1);
  }

  // One leader and every node Ready.
  std::string AwaitReady() {
    auto w = WaitFor(
        "one leading controller and every node Ready", milliseconds(120'000),
        [&]() -> Observation {
          std::string why;
          const auto* l = c_.Leader(&why);
          if (l == nullptr) return {false, why};
          std::string err;
          auto items = GetItems(*l, "/v1/nodes", &err);
          if (!items) return {false, err};
          int ready = 0;
          for (const auto& n : *items) ready += n.value("ready", false) ? 1 : 0;
          return {ready >= kNodes, std::to_string(ready) + " nodes Ready"};
        },
        milliseconds(500));
    return w.ok ? "" : w.message;
  }

  std::string Create(const std::vector<std::string>& names, const std::vector<std::string>& demo,
                     const std::string& node) {
    const Endpoint api = Api();
    for (const auto& name : names) {
      auto r = HttpPost(api, "/v1/workloads", DemoWorkloadSpec(name, demo, node));
      if (r.status != 201) return "POST /v1/workloads " + name + ": " + r.Describe();
    }
    return "";
  }

  // Every one Running and ticking.
  std::string AwaitRunning(const std::vector<std::string>& names) {
    for (const auto& name : names) {
      auto w = WaitFor(
          name + " to be Running", kRunningTimeout,
          [&]() -> Observation {
            std::string err;
            auto j = GetObject(Api(), "/v1/workloads/" + name, &err);
            if (!j) return {false, err};
            const std::string phase = StatusStr(*j, "phase");
            return {phase == "Running", "phase=" + phase + " message=" + StatusStr(*j, "message")};
          },
          milliseconds(500));
      if (!w.ok) return w.message;
      auto t = WaitForTickAt(Api(), name, 3, milliseconds(90'000));
      if (!t.ok) return t.message;
    }
    return "";
  }

  std::string DeleteAll(const std::vector<std::string>& names) {
    const Endpoint api = Api();
    for (const auto& name : names) {
      auto r = HttpDelete(api, "/v1/workloads/" + name);
      if (r.status != 200 && r.status != 404) {
        return "DELETE /v1/workloads/" + name + ": " + r.Describe();
      }
    }
    for (const auto& name : names) {
      auto w = WaitFor(
          name + " to be gone from the API and every node", kGoneTimeout,
          [&]() -> Observation {
            auto r = HttpGet(Api(), "/v1/workloads/" + name);
            if (r.status != 404) return {false, "controller: " + r.Describe()};
            std::string left = CheckGoneEverywhere(c_, name);
            return {left.empty(), left};
          },
          milliseconds(1000));
      if (!w.ok) return w.message;
    }
    return "";
  }

  // Every node Ready, listing no workload, with a load under kQuietLoad.
  std::string AwaitQuiet() {
    auto w = WaitFor(
        "every node Ready, no workload listed, load < " + Fmt(kQuietLoad, 1), kQuietTimeout,
        [&]() -> Observation {
          std::string err;
          auto items = GetItems(Api(), "/v1/nodes", &err);
          if (!items) return {false, err};
          bool quiet = static_cast<int>(items->size()) >= kNodes;
          std::string seen;
          for (const auto& n : *items) {
            const bool ready = n.value("ready", false);
            const double load = Num(n, "load");
            const size_t listed =
                n.contains("usage") && n["usage"].is_object() ? n["usage"].size() : 0;
            quiet = quiet && ready && listed == 0 && load < kQuietLoad;
            seen += Str(n, "name") + ":" + (ready ? "" : "NotReady,") + "load=" + Fmt(load, 2) +
                    ",listed=" + std::to_string(listed) + " ";
          }
          return {quiet, seen};
        },
        milliseconds(1000));
    return w.ok ? "" : w.message;
  }

  // Placement of `names` unchanged for --quiet s with every one Running and
  // nothing in flight; returns the placement or an error.
  std::string AwaitPlacementStable(const std::vector<std::string>& names,
                                   std::map<std::string, std::string>* placement) {
    std::string last;
    int64_t since = 0;
    auto w = WaitFor(
        "placement unchanged for " + std::to_string(args_.quiet_s) + " s", kSettleTimeout,
        [&]() -> Observation {
          std::string seen;
          bool steady = true;
          placement->clear();
          for (const auto& name : names) {
            std::string err;
            auto j = GetObject(Api(), "/v1/workloads/" + name, &err);
            if (!j) return {false, err};
            const std::string node = StatusStr(*j, "node");
            (*placement)[name] = node;
            steady =
                steady && StatusStr(*j, "phase") == "Running" && StatusStr(*j, "migration").empty();
            seen += name + "@" + node + ":" + StatusStr(*j, "phase") + " ";
          }
          const int64_t now = WallMs();
          if (seen != last) {
            last = seen;
            since = now;
          }
          return {steady && now - since >= args_.quiet_s * 1000LL, seen};
        },
        milliseconds(500));
    return w.ok ? "" : w.message;
  }

  // Measures etcd writes over --window s.
  Window Measure(const std::string& label) {
    Window win;
    win.label = label;
    const std::string etcd = c_.EtcdUrl();
    Progress(label + ": measuring etcd writes for " + std::to_string(args_.window_s) + " s");
    std::string err;
    const auto m0 = EtcdMetrics(etcd);
    auto r0 = EtcdRevision(etcd, &err);
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t wall0 = WallMs();
    if (!r0) {
      win.notes.push_back(err);
      return win;
    }
    std::this_thread::sleep_for(seconds(args_.window_s));
    auto r1 = EtcdRevision(etcd, &err);
    const auto t1 = std::chrono::steady_clock::now();
    const int64_t wall1 = WallMs();
    const auto m1 = EtcdMetrics(etcd);
    if (!r1) {
      win.notes.push_back(err);
      return win;
    }
    win.ok = true;
    win.seconds = std::chrono::duration<double>(t1 - t0).count();
    win.revisions = *r1 - *r0;
    win.mvcc_writes = MetricDelta(m0, m1, {"etcd_mvcc_put_total", "etcd_mvcc_delete_total"});
    win.renewals = MetricDelta(m0, m1, {"etcd_debugging_lease_renewed_total"});
    if (auto events = EtcdHistory(etcd, *r0 + 1, *r1, &err)) {
      win.key_writes = static_cast<int64_t>(events->size());
      std::set<int64_t> revs;
      for (const auto& e : *events) {
        ++win.by_group[KeyGroup(e.key)];
        revs.insert(e.revision);
      }
      if (static_cast<int64_t>(revs.size()) != win.revisions) {
        win.notes.push_back("the watch saw " + std::to_string(revs.size()) +
                            " revisions, the header counted " + std::to_string(win.revisions));
      }
      if (!std::isnan(win.mvcc_writes) &&
          std::llround(win.mvcc_writes) != static_cast<long long>(win.key_writes)) {
        win.notes.push_back("etcd_mvcc_put_total + etcd_mvcc_delete_total rose by " +
                            Fmt(win.mvcc_writes, 0) + ", the watch saw " +
                            std::to_string(win.key_writes) + " key writes");
      }
    } else {
      win.notes.push_back("no breakdown: " + err);
    }
    std::string e2;
    if (auto ms = GetItems(Api(), "/v1/migrations", &e2)) {
      for (const auto& m : *ms) {
        const int64_t created = Int(m, "createdMs");
        if (created >= wall0 && created <= wall1) ++win.migrations;
      }
    }
    Progress(label + ": " + std::to_string(win.revisions) + " write txns, " +
             std::to_string(win.key_writes) + " key writes in " + Fmt(win.seconds, 1) + " s");
    return win;
  }

  // Steady states: nothing; 4 idle; 4 CPU-bound. Appends to *out; returns
  // false when a step failed (noted in the window).
  bool Steady(std::vector<Window>* out) {
    if (std::string q = AwaitQuiet(); !q.empty()) Progress("warning: " + q);
    Progress("no workloads: warming up " + std::to_string(args_.warmup_s) + " s");
    std::this_thread::sleep_for(seconds(args_.warmup_s));
    out->push_back(Measure("no workloads"));
    bool ok = out->back().ok;

    struct Case {
      std::string label, prefix;
      const std::vector<std::string>* demo;
      bool settle;
    };
    const Case cases[] = {{"4 idle workloads", "idle-", &kIdle, false},
                          {"4 CPU-bound workloads", "busy-", &kCpuBound, true}};
    for (const Case& k : cases) {
      std::vector<std::string> names;
      for (int i = 1; i <= kWorkloads; ++i) names.push_back(k.prefix + std::to_string(i));
      Progress(k.label + ": creating (placed by the controller)");
      std::string err = Create(names, *k.demo, "");
      if (err.empty()) err = AwaitRunning(names);
      std::map<std::string, std::string> placement;
      if (err.empty() && k.settle) err = AwaitPlacementStable(names, &placement);
      if (err.empty()) {
        std::this_thread::sleep_for(seconds(k.settle ? 5 : args_.warmup_s));
        out->push_back(Measure(k.label));
        ok = ok && out->back().ok;
      } else {
        Window w;
        w.label = k.label;
        w.notes.push_back(err);
        out->push_back(w);
        ok = false;
      }
      std::string e2;
      for (const auto& name : names) {
        if (auto j = GetObject(Api(), "/v1/workloads/" + name, &e2)) {
          placement[name] = StatusStr(*j, "node");
        }
      }
      out->back().placement = Counts(placement);
      if (std::string d = DeleteAll(names); !d.empty()) {
        out->back().notes.push_back("cleanup: " + d);
        ok = false;
      }
    }
    return ok;
  }

  // One hot-spot run (as e2e test (a)).
  HotRun HotSpot(int run) {
    HotRun hr;
    hr.index = run;
    if (std::string q = AwaitQuiet(); !q.empty()) hr.warnings.push_back("not quiet before: " + q);
    std::vector<std::string> names;
    for (int i = 1; i <= kWorkloads; ++i) {
      names.push_back("hot" + std::to_string(run) + "-" + std::to_string(i));
    }
    const std::set<std::string> ours_set(names.begin(), names.end());
    const std::string etcd = c_.EtcdUrl();
    std::string err;
    auto rev0 = EtcdRevision(etcd, &err);
    const int64_t t0 = WallMs();
    Progress("hot spot run " + std::to_string(run) + ": four CPU-bound workloads on node1");
    if (std::string e = Create(names, kCpuBound, "node1"); !e.empty()) {
      hr.notes.push_back(e);
      (void)DeleteAll(names);
      return hr;
    }
    int64_t visible_ms = -1, first_order_ms = -1, first_done_ms = -1, last_done_ms = 0;
    std::string last_state;
    int64_t state_since = 0;
    std::vector<json> ours;
    auto settled = WaitFor(
        "the hot spot on node1 to be relieved and the cluster to settle", kSettleTimeout,
        [&]() -> Observation {
          std::string e;
          const Endpoint api = Api();
          if (visible_ms < 0) {
            if (auto nodes = GetItems(api, "/v1/nodes", &e)) {
              for (const auto& n : *nodes) {
                if (Str(n, "name") != "node1" || !n.contains("usage") || !n["usage"].is_object()) {
                  continue;
                }
                int listed = 0;
                for (const auto& name : names) listed += n["usage"].contains(name) ? 1 : 0;
                if (listed == kWorkloads) {
                  visible_ms = WallMs();
                  hr.load_when_visible = Num(n, "load");
                }
              }
            }
          }
          auto ms = GetItems(api, "/v1/migrations", &e);
          if (!ms) return {false, e};
          ours.clear();
          bool in_flight = false;
          for (const auto& m : *ms) {
            if (!ours_set.contains(Str(m, "workload"))) continue;
            ours.push_back(m);
            if (!IsFinalPhase(Str(m, "phase"))) in_flight = true;
            const int64_t created = Int(m, "createdMs");
            if (first_order_ms < 0 || created < first_order_ms) {
              first_order_ms = created;
              hr.first_reason = Str(m, "reason");
            }
          }
          std::map<std::string, int> per_node;
          bool all_running = true;
          std::string seen;
          hr.placement.clear();
          for (const auto& name : names) {
            auto w = GetObject(api, "/v1/workloads/" + name, &e);
            if (!w) return {false, e};
            const std::string node = StatusStr(*w, "node");
            hr.placement[name] = node;
            ++per_node[node];
            if (StatusStr(*w, "phase") != "Running" || !StatusStr(*w, "migration").empty()) {
              all_running = false;
            }
            seen += name + "@" + node + ":" + StatusStr(*w, "phase") + " ";
          }
          hr.most = 0;
          for (const auto& [n, k] : per_node) hr.most = std::max(hr.most, k);
          seen += "| migrations " + std::to_string(ours.size()) + (in_flight ? " (in flight)" : "");
          const bool good = all_running && !in_flight && hr.most <= 2 && !ours.empty();
          const int64_t now = WallMs();
          if (seen != last_state) {
            last_state = seen;
            state_since = now;
          }
          return {good && now - state_since >= args_.quiet_s * 1000LL, seen};
        },
        milliseconds(250));
    const int64_t t_end = WallMs();
    auto rev1 = EtcdRevision(etcd, &err);
    if (rev0 && rev1 && t_end > t0) {
      hr.etcd_txn_per_s = static_cast<double>(*rev1 - *rev0) / ((t_end - t0) / 1000.0);
    }
    hr.settled = settled.ok;
    if (!settled.ok) hr.notes.push_back(settled.message);
    std::map<std::string, std::vector<std::string>> route;
    std::sort(ours.begin(), ours.end(), [](const json& a, const json& b) {
      return Int(a, "createdMs") < Int(b, "createdMs");
    });
    for (const auto& m : ours) {
      const std::string phase = Str(m, "phase");
      if (phase == "Succeeded") {
        ++hr.succeeded;
        const int64_t fin = Int(m, "finishedMs");
        if (first_done_ms < 0 || fin < first_done_ms) first_done_ms = fin;
        auto& p = route[Str(m, "workload")];
        if (p.empty()) p.push_back(Str(m, "source"));
        p.push_back(Str(m, "target"));
      } else {
        hr.notes.push_back("migration " + Str(m, "id") + " of " + Str(m, "workload") + " ended " +
                           phase + " " + Str(m, "error"));
      }
      last_done_ms = std::max(last_done_ms, Int(m, "finishedMs"));
    }
    for (const auto& [name, p] : route) {
      if (std::set<std::string>(p.begin(), p.end()).size() != p.size()) {
        std::string r;
        for (const auto& n : p) r += (r.empty() ? "" : " -> ") + n;
        hr.notes.push_back(name + " went back to a node it left: " + r);
      }
    }
    hr.migrations = static_cast<int>(ours.size());
    if (visible_ms >= 0) hr.visible_s = (visible_ms - t0) / 1000.0;
    if (first_order_ms >= 0) hr.first_order_s = (first_order_ms - t0) / 1000.0;
    if (first_done_ms >= 0) hr.first_done_s = (first_done_ms - t0) / 1000.0;
    if (hr.settled && last_done_ms > 0) hr.settled_s = (last_done_ms - t0) / 1000.0;
    Progress("hot spot run " + std::to_string(run) + ": visible " + Fmt(hr.visible_s) +
             " s, first order " + Fmt(hr.first_order_s) + " s, settled " + Fmt(hr.settled_s) +
             " s, " + std::to_string(hr.migrations) + " migrations, " + Counts(hr.placement));
    if (std::string d = DeleteAll(names); !d.empty()) hr.notes.push_back("cleanup: " + d);
    return hr;
  }

 private:
  Cluster& c_;
  const Args& args_;
};

// --- output ---------------------------------------------------------------------------------

void PrintSteady(const std::vector<Window>& wins, int nodes) {
  std::printf("\n### etcd writes at steady state (%d nodes, %d controllers)\n\n", nodes,
              kControllers);
  std::printf(
      "| state | placement | window s | write txns/s | write txns/s per node | key writes/s | "
      "lease keep-alives/s | migrations in window |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Window& w : wins) {
    if (!w.ok) {
      std::printf("| %s | %s | - | - | - | - | - | - |\n", w.label.c_str(),
                  w.placement.empty() ? "-" : w.placement.c_str());
      continue;
    }
    const double rate = w.revisions / w.seconds;
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %d |\n", w.label.c_str(),
                w.placement.empty() ? "-" : w.placement.c_str(), Fmt(w.seconds, 1).c_str(),
                Fmt(rate, 2).c_str(), Fmt(rate / nodes, 2).c_str(),
                w.key_writes >= 0 ? Fmt(w.key_writes / w.seconds, 2).c_str() : "-",
                Fmt(w.renewals / w.seconds, 2).c_str(), w.migrations);
  }
  std::set<std::string> groups;
  for (const Window& w : wins) {
    for (const auto& [g, n] : w.by_group) groups.insert(g);
  }
  if (!groups.empty()) {
    std::printf(
        "\nkey writes/s by key (puts + deletes, from a watch replayed over the window):\n\n");
    std::printf("| key (under /kmosix/) |");
    for (const Window& w : wins) std::printf(" %s |", w.label.c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < wins.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (const auto& g : groups) {
      std::printf("| %s |", g.c_str());
      for (const Window& w : wins) {
        auto it = w.by_group.find(g);
        if (!w.ok || w.key_writes < 0) {
          std::printf(" - |");
        } else {
          const int64_t n = it == w.by_group.end() ? 0 : it->second;
          std::printf(" %s (%lld) |", Fmt(n / w.seconds, 3).c_str(), static_cast<long long>(n));
        }
      }
      std::printf("\n");
    }
  }
  std::printf(
      "\nwrite txns = etcd revisions (header.revision delta; exact: one per committed "
      "transaction that changed a key, lease expiries included); key writes = keys put or "
      "deleted (watch events; several per txn possible), cross-checked with "
      "etcd_mvcc_put_total + etcd_mvcc_delete_total; lease keep-alives = "
      "etcd_debugging_lease_renewed_total (served by the leader, no store write). "
      "(n) = count in the window.\n");
  for (const Window& w : wins) {
    for (const auto& n : w.notes) std::printf("- %s: %s\n", w.label.c_str(), n.c_str());
  }
}

void PrintHot(const std::vector<HotRun>& runs, int quiet_s) {
  std::printf(
      "\n### hot spot: 4 CPU-bound workloads created on node1 at t=0 (3 nodes x 1 core, "
      "--min-residency 5), %zu run(s)\n\n",
      runs.size());
  std::printf(
      "| run | node1 lists all four s | first order s | first migration done s | settled (last "
      "finish) s | migrations | final placement | etcd write txns/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const HotRun& r : runs) {
    std::printf("| %d | %s | %s | %s | %s | %d | %s | %s |\n", r.index, Fmt(r.visible_s).c_str(),
                Fmt(r.first_order_s).c_str(), Fmt(r.first_done_s).c_str(),
                r.settled ? Fmt(r.settled_s).c_str() : "not settled", r.migrations,
                Counts(r.placement).c_str(), Fmt(r.etcd_txn_per_s, 2).c_str());
  }
  struct Fig {
    const char* name;
    double HotRun::*field;
  };
  std::vector<double> after, migs;
  for (const HotRun& r : runs) {
    after.push_back(r.first_order_s - r.visible_s);
    migs.push_back(r.settled ? r.migrations : NAN);
  }
  std::printf("\n| figure (s from t=0) | median | min | max | runs |\n|---|---|---|---|---|\n");
  const Fig figs[] = {{"node1's load lists all four", &HotRun::visible_s},
                      {"first migration order", &HotRun::first_order_s},
                      {"first migration done", &HotRun::first_done_s},
                      {"settled (last migration finished)", &HotRun::settled_s}};
  auto row = [](const char* name, const Stats& s, int prec) {
    std::printf("| %s | %s | %s | %s | %zu |\n", name, Fmt(s.median, prec).c_str(),
                Fmt(s.min, prec).c_str(), Fmt(s.max, prec).c_str(), s.n);
  };
  for (const Fig& f : figs) {
    std::vector<double> v;
    for (const HotRun& r : runs) v.push_back(r.*(f.field));
    row(f.name, Summarize(v), 1);
  }
  row("first order after the load was visible", Summarize(after), 1);
  row("migrations (settled runs)", Summarize(migs), 1);
  std::printf(
      "\nsettled = every workload Running with no migration in flight, no node holding more "
      "than two, at least one migration, unchanged for %d s; its time is the last migration's "
      "finishedMs. Times are wall clock against the controllers' createdMs / the agents' "
      "finishedMs (same host); the load column is polled every 250 ms.\n",
      quiet_s);
  for (const HotRun& r : runs) {
    std::string pl;
    for (const auto& [w, n] : r.placement) pl += (pl.empty() ? "" : " ") + w + "@" + n;
    std::printf("- run %d: %s; node1 load %s when visible; first reason: %s\n", r.index, pl.c_str(),
                Fmt(r.load_when_visible, 2).c_str(),
                r.first_reason.empty() ? "-" : r.first_reason.c_str());
    for (const auto& n : r.notes) std::printf("  - problem: %s\n", n.c_str());
    for (const auto& n : r.warnings) std::printf("  - warning: %s\n", n.c_str());
  }
}

json NumOrNull(double v) { return std::isnan(v) ? json() : json(v); }

void WriteJson(const std::string& path, const std::vector<Window>& wins,
               const std::vector<HotRun>& runs) {
  json out = {{"steady", json::array()}, {"hotspot", json::array()}};
  for (const Window& w : wins) {
    out["steady"].push_back({{"state", w.label},
                             {"ok", w.ok},
                             {"placement", w.placement},
                             {"seconds", w.seconds},
                             {"writeTxns", w.revisions},
                             {"keyWrites", w.key_writes},
                             {"leaseRenewals", NumOrNull(w.renewals)},
                             {"byKey", w.by_group},
                             {"migrations", w.migrations},
                             {"notes", w.notes}});
  }
  for (const HotRun& r : runs) {
    out["hotspot"].push_back({{"run", r.index},
                              {"settled", r.settled},
                              {"visibleS", NumOrNull(r.visible_s)},
                              {"firstOrderS", NumOrNull(r.first_order_s)},
                              {"firstDoneS", NumOrNull(r.first_done_s)},
                              {"settledS", NumOrNull(r.settled_s)},
                              {"migrations", r.migrations},
                              {"placement", r.placement},
                              {"etcdWriteTxnsPerS", NumOrNull(r.etcd_txn_per_s)},
                              {"notes", r.notes}});
  }
  std::ofstream(path) << out.dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  std::string missing = Cluster::MissingCapability();
  if (missing.empty() && RunCommand("command -v etcd").exit_code != 0) {
    missing = "etcd not found on PATH";
  }
  if (!missing.empty()) {
    std::printf("kmosix-brain-bench: SKIPPED, this machine cannot run the cluster: %s\n",
                missing.c_str());
    return 0;
  }
  if (RunCommand("command -v etcdctl").exit_code != 0) {
    Progress("warning: etcdctl not found: no per-key breakdown of the writes");
  }
  ClusterOptions opts;
  opts.nodes = kNodes;
  opts.etcd = true;
  opts.controllers = kControllers;
  opts.controller_args = {"--min-residency", "5"};
  opts.node_cpus = 1;
  opts.node_memory_mib = 2048;
  opts.reuse = args.reuse;
  opts.keep = args.keep;
  Cluster cluster(opts);
  InstallDownOnSignal();
  ArmDownOnSignal(!args.reuse && !args.keep);
  Progress("bringing up " + std::to_string(kNodes) + " nodes, etcd and " +
           std::to_string(kControllers) + " controllers");
  if (std::string err = cluster.Up(); !err.empty()) {
    std::fprintf(stderr, "kmosix-brain-bench: cluster: %s\n", err.c_str());
    ArmDownOnSignal(false);
    (void)cluster.Down();
    return 1;
  }
  Bench bench(cluster, args);
  bool ok = true;
  std::vector<Window> wins;
  std::vector<HotRun> runs;
  if (std::string err = bench.AwaitReady(); !err.empty()) {
    std::fprintf(stderr, "kmosix-brain-bench: %s\n", err.c_str());
    ok = false;
  } else {
    if (args.steady) ok = bench.Steady(&wins) && ok;
    if (args.hotspot) {
      for (int r = 1; r <= args.runs; ++r) {
        runs.push_back(bench.HotSpot(r));
        ok = ok && runs.back().settled && runs.back().notes.empty();
      }
    }
  }
  std::printf("\n## kmosix brain bench\n");
  if (!wins.empty()) PrintSteady(wins, kNodes);
  if (!runs.empty()) PrintHot(runs, args.quiet_s);
  std::fflush(stdout);
  if (!args.json_out.empty()) WriteJson(args.json_out, wins, runs);
  ArmDownOnSignal(false);
  if (std::string err = cluster.Down(); !err.empty()) {
    std::fprintf(stderr, "%s\n", err.c_str());
  }
  return ok ? 0 : 1;
}
