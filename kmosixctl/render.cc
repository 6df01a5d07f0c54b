#include "kmosixctl/render.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <sstream>

namespace kmosix::ctl {

using nlohmann::json;

// ---- tolerant JSON access -------------------------------------------------------

std::string JStr(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

double JNum(const json& j, const char* key, double fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

bool JBool(const json& j, const char* key, bool fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

const json& JObj(const json& j, const char* key) {
  static const json kNull;  // an immutable constant, not state
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it != j.end() && (it->is_object() || it->is_array()) ? *it : kNull;
}

const json& Items(const json& list) {
  static const json kEmpty = json::array();
  const json& items = JObj(list, "items");
  return items.is_array() ? items : kEmpty;
}

namespace {

bool Has(const json& j, const char* key) { return j.is_object() && j.contains(key); }

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

std::string Join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

std::string Shorten(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  return s.substr(0, max - 3) + "...";
}

// "key:        value" lines with the values aligned.
std::string KeyValues(const std::vector<std::pair<std::string, std::string>>& kv) {
  size_t w = 0;
  for (const auto& [k, v] : kv) w = std::max(w, k.size());
  std::string out;
  for (const auto& [k, v] : kv) {
    out += k + ":" + std::string(w - k.size() + 2, ' ') + v + "\n";
  }
  return out;
}

double SecondsSince(int64_t then_ms, const RenderOptions& o) {
  return then_ms > 0 ? static_cast<double>(o.now_ms - then_ms) / 1000.0 : -1;
}

// ---- nodes ------------------------------------------------------------------------

std::vector<std::string> NodeRow(const json& n) {
  const bool ready = JBool(n, "ready");
  const bool cordoned = JBool(n, "cordoned");
  // An agent that runs but reports itself unfit (notReadyReason, e.g. no
  // usable CRIU) still publishes its load.
  const bool live = ready || Has(n, "notReadyReason");
  std::string status = ready ? "Ready" : (live ? "NotReady,Unfit" : "NotReady");
  if (cordoned) status += ",Cordoned";
  std::string load = "-", cpu = "-", mem = "-", runq = "-", heartbeat = "-";
  if (live) {
    const json& cap = JObj(n, "capacity");
    load = Fixed(JNum(n, "load"), 2);
    cpu = FormatCores(JNum(n, "cpuUsed")) + "/" + FormatCores(JNum(cap, "cpus"));
    const double total = JNum(cap, "memoryBytes");
    const double avail = JNum(n, "memoryAvailableBytes");
    if (total > 0) mem = FormatUsedTotal(std::max(0.0, total - avail), total);
    runq = Fixed(JNum(n, "runQueue"), 1);
    if (Has(n, "heartbeatAgeSeconds")) heartbeat = FormatAge(JNum(n, "heartbeatAgeSeconds"));
  } else if (Has(n, "notReadySeconds")) {
    heartbeat = "lost " + FormatAge(JNum(n, "notReadySeconds")) + " ago";
  }
  const json& owned = JObj(n, "workloads");
  const std::string count = std::to_string(owned.is_array() ? owned.size() : 0);
  return {OrDash(JStr(n, "name")), status, load, cpu, mem, runq, count, heartbeat};
}

Table NodesTable() {
  Table t;
  t.header = {"NAME", "STATUS", "LOAD", "CPU", "MEMORY", "RUNQ", "WORKLOADS", "HEARTBEAT"};
  t.right = {false, false, true, true, true, true, true, true};
  return t;
}

std::string ReportTimings(const json& report) {
  const json& t = JObj(report, "timings");
  if (!t.is_object()) return "-";
  std::vector<std::string> parts;
  parts.push_back("total " + FormatDuration(JNum(t, "total")));
  parts.push_back("downtime " + FormatDuration(JNum(t, "downtime")));
  std::vector<std::string> phases;
  for (const char* k : {"prepare", "freeze", "checkpoint", "transfer", "restore", "commit"}) {
    if (JNum(t, k) > 0) phases.push_back(std::string(k) + " " + FormatDuration(JNum(t, k)));
  }
  std::string s = Join(parts, ", ");
  if (!phases.empty()) s += " (" + Join(phases, ", ") + ")";
  return s;
}

bool IsFinalPhase(const std::string& phase) {
  return phase == "Succeeded" || phase == "RolledBack" || phase == "Failed";
}

}  // namespace

// ---- building blocks ----------------------------------------------------------------

std::vector<std::string> AlignRows(const Table& table, bool with_header) {
  size_t cols = table.header.size();
  for (const auto& r : table.rows) cols = std::max(cols, r.size());
  std::vector<size_t> width(cols, 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  };
  if (with_header) measure(table.header);
  for (const auto& r : table.rows) measure(r);
  auto line = [&](const std::vector<std::string>& row) {
    std::string out;
    for (size_t c = 0; c < cols; ++c) {
      const std::string cell = c < row.size() ? row[c] : "";
      const bool right = c < table.right.size() && table.right[c];
      const std::string pad(width[c] - cell.size(), ' ');
      if (c > 0) out += "  ";
      out += right ? pad + cell : cell + pad;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
  };
  std::vector<std::string> lines;
  if (with_header) lines.push_back(line(table.header));
  for (const auto& r : table.rows) lines.push_back(line(r));
  return lines;
}

std::string FormatTable(const Table& table) {
  std::string out;
  for (const auto& l : AlignRows(table, true)) out += l + "\n";
  return out;
}

std::string FormatBytes(double bytes) {
  if (!(bytes >= 0)) bytes = 0;
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  double v = bytes;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return Fixed(v, 0) + " B";
  // One decimal below 10 units, unless it would print as "10.0".
  if (v < 9.95) return Fixed(v, 1) + " " + kUnits[u];
  return Fixed(v, 0) + " " + kUnits[u];
}

std::string FormatUsedTotal(double used, double total) {
  if (!(total > 0)) return FormatBytes(used) + "/-";
  constexpr double kMiB = 1024.0 * 1024, kGiB = kMiB * 1024;
  if (total >= 10 * kGiB) return Fixed(used / kGiB, 1) + "/" + Fixed(total / kGiB, 1) + " GiB";
  if (total >= kMiB) return Fixed(used / kMiB, 0) + "/" + Fixed(total / kMiB, 0) + " MiB";
  return FormatBytes(used) + "/" + FormatBytes(total);
}

std::string FormatAge(double seconds) {
  if (!(seconds > 0)) return "0s";
  const int64_t s = static_cast<int64_t>(seconds);
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  }
  return buf;
}

std::string FormatDuration(double seconds) {
  if (!(seconds > 0)) return "0ms";
  if (seconds < 1) return Fixed(std::round(seconds * 1000), 0) + "ms";
  if (seconds < 60) return Fixed(seconds, 2) + "s";
  return FormatAge(seconds);
}

std::string FormatPercent(double fraction) {
  if (!std::isfinite(fraction)) return "-";
  return Fixed(fraction * 100, 0) + "%";
}

std::string FormatCores(double cores) {
  if (!std::isfinite(cores)) return "-";
  if (std::fabs(cores - std::round(cores)) < 0.005) return Fixed(std::round(cores), 0);
  return Fixed(cores, 2);
}

std::string FormatClock(int64_t ms, bool utc, bool with_ms) {
  const time_t secs = static_cast<time_t>(ms / 1000);
  struct tm tm {};
  if (utc) {
    gmtime_r(&secs, &tm);
  } else {
    localtime_r(&secs, &tm);
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
  std::string out = buf;
  if (with_ms) {
    std::snprintf(buf, sizeof buf, ".%03d", static_cast<int>(((ms % 1000) + 1000) % 1000));
    out += buf;
  }
  return out;
}

std::string LoadBar(double value, double scale, int width) {
  if (width < 3) return "";
  const int inner = width - 2;
  if (!(scale > 0)) scale = 1;
  if (!(value > 0)) value = 0;
  int filled = static_cast<int>(std::lround(std::min(value, scale) / scale * inner));
  if (value > 0 && filled == 0) filled = 1;  // something is running: show it
  std::string bar = "[";
  const int one = scale > 1 ? static_cast<int>(1.0 / scale * inner) : -1;
  for (int i = 0; i < inner; ++i) {
    if (i < filled) {
      bar += one >= 0 && i >= one ? '+' : '#';
    } else if (i == one) {
      bar += '|';
    } else {
      bar += '.';
    }
  }
  return bar + "]";
}

std::string PrettyJson(const json& j) {
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// ---- nodes ----------------------------------------------------------------------------

std::string RenderNodes(const json& list, const RenderOptions&) {
  Table t = NodesTable();
  for (const auto& n : Items(list)) t.rows.push_back(NodeRow(n));
  if (t.rows.empty()) return "No nodes.\n";
  return FormatTable(t);
}

std::string RenderNode(const json& n, const RenderOptions&) {
  Table t = NodesTable();
  t.rows.push_back(NodeRow(n));
  std::string out = FormatTable(t) + "\n";
  std::vector<std::pair<std::string, std::string>> kv;
  if (Has(n, "notReadyReason")) kv.push_back({"Not ready", JStr(n, "notReadyReason")});
  if (JBool(n, "ready") || Has(n, "notReadyReason")) {
    kv.push_back({"URL", OrDash(JStr(n, "url"))});
    kv.push_back({"Speed", Fixed(JNum(n, "speed", 1), 2) + " (load source " +
                               OrDash(JStr(n, "loadSource")) + ")"});
    const json& psi = JObj(n, "psi");
    auto pct = [&](const char* k) {
      return Has(psi, k) && psi[k].is_number() ? Fixed(psi[k].get<double>(), 1) + "%" : "-";
    };
    kv.push_back({"Pressure", "cpu " + pct("cpuSome10") + ", memory " + pct("memorySome10") +
                                  " (some, avg10)"});
  }
  const json& owned = JObj(n, "workloads");
  const json& usage = JObj(n, "usage");
  std::vector<std::string> ws;
  if (owned.is_array()) {
    for (const auto& w : owned) {
      if (!w.is_string()) continue;
      std::string name = w.get<std::string>();
      const json& u = JObj(usage, name.c_str());
      if (u.is_object()) {
        name += " (cpu " + FormatCores(JNum(u, "cpu")) + ", " +
                FormatBytes(JNum(u, "memoryBytes")) + ")";
      }
      ws.push_back(name);
    }
  }
  kv.push_back({"Workloads", ws.empty() ? "none" : Join(ws, ", ")});
  return out + KeyValues(kv);
}

// ---- workloads ------------------------------------------------------------------------

std::string RenderWorkloads(const json& list, const RenderOptions&) {
  Table t;
  t.header = {"NAME", "PHASE", "NODE", "CPU", "MEMORY", "AGE", "MOVES", "FLAGS", "MESSAGE"};
  t.right = {false, false, false, true, true, true, true, false, false};
  for (const auto& w : Items(list)) {
    const json& spec = JObj(w, "spec");
    const json& st = JObj(w, "status");
    const json& usage = JObj(w, "usage");
    const std::string phase = JStr(st, "phase");
    std::string cpu = "-", mem = "-";
    if (usage.is_object()) {
      cpu = FormatCores(JNum(usage, "cpu"));
      if (JNum(spec, "cpus") > 0) cpu += "/" + FormatCores(JNum(spec, "cpus"));
      const double used = JNum(usage, "memoryBytes");
      const double limit = JNum(spec, "memoryMiB") * 1024 * 1024;
      mem = limit > 0 ? FormatUsedTotal(used, limit) : FormatBytes(used);
    }
    std::vector<std::string> flags;
    if (JBool(spec, "pinned")) flags.push_back("pinned");
    if (!JBool(spec, "migratable", true)) flags.push_back("no-migrate");
    if (!JStr(st, "migration").empty()) flags.push_back("migrating(" + JStr(st, "migration") + ")");
    if (JNum(st, "restarts") > 0) {
      flags.push_back("restarted(" + std::to_string(static_cast<int64_t>(JNum(st, "restarts"))) +
                      ")");
    }
    if (const std::string policy = JStr(spec, "restartPolicy");
        !policy.empty() && policy != "Never")
      flags.push_back("restart=" + policy);
    if (const json& rec = JObj(st, "recovery"); rec.is_object() && JNum(rec, "count") > 0) {
      flags.push_back("recovered(" + std::to_string(static_cast<int64_t>(JNum(rec, "count"))) +
                      ")");
    }
    const json& moves = JObj(st, "migrations");
    std::string message;
    // A running workload's message is news only when it was restarted (why).
    if ((phase != "Running" && phase != "Migrating") || JNum(st, "restarts") > 0) {
      message = Shorten(JStr(st, "message"), 70);
    }
    std::string name = JStr(w, "name");
    if (name.empty()) name = JStr(spec, "name");
    t.rows.push_back({OrDash(name), OrDash(phase), OrDash(JStr(st, "node")), cpu, mem,
                      Has(w, "ageSeconds") ? FormatAge(JNum(w, "ageSeconds")) : "-",
                      std::to_string(moves.is_array() ? moves.size() : 0),
                      flags.empty() ? "-" : Join(flags, ","), message});
  }
  if (t.rows.empty()) return "No workloads.\n";
  return FormatTable(t);
}

std::string RenderWorkload(const json& w, const RenderOptions&) {
  const json& spec = JObj(w, "spec");
  const json& st = JObj(w, "status");
  std::vector<std::pair<std::string, std::string>> kv;
  std::string name = JStr(w, "name");
  if (name.empty()) name = JStr(spec, "name");
  kv.push_back({"Name", OrDash(name)});
  kv.push_back({"Image", OrDash(JStr(spec, "image"))});
  std::vector<std::string> args;
  if (const json& a = JObj(spec, "args"); a.is_array()) {
    for (const auto& x : a)
      if (x.is_string()) args.push_back(x.get<std::string>());
  }
  if (!args.empty()) kv.push_back({"Args", Join(args, " ")});
  std::string phase = OrDash(JStr(st, "phase"));
  if (!JStr(st, "node").empty()) phase += " on " + JStr(st, "node");
  kv.push_back({"Phase", phase});
  if (const json& u = JObj(w, "usage"); u.is_object()) {
    kv.push_back({"Usage", "cpu " + FormatCores(JNum(u, "cpu")) + ", memory " +
                               FormatBytes(JNum(u, "memoryBytes"))});
  }
  std::vector<std::string> limits;
  if (JNum(spec, "cpus") > 0) limits.push_back("cpus " + FormatCores(JNum(spec, "cpus")));
  if (JNum(spec, "memoryMiB") > 0)
    limits.push_back("memory " + FormatBytes(JNum(spec, "memoryMiB") * 1024 * 1024));
  kv.push_back({"Limits", limits.empty() ? "none" : Join(limits, ", ")});
  std::vector<std::string> flags;
  if (JBool(spec, "pinned")) flags.push_back("pinned");
  if (!JBool(spec, "migratable", true)) flags.push_back("no-migrate (never moved)");
  if (!JStr(spec, "node").empty()) flags.push_back("asked for node " + JStr(spec, "node"));
  kv.push_back({"Flags", flags.empty() ? "-" : Join(flags, ", ")});
  if (Has(spec, "restartPolicy")) {  // servers before the field leave it out
    const std::string policy = JStr(spec, "restartPolicy");
    std::string shown = policy;
    if (policy == "Never") shown += " (stays Lost if its node is lost)";
    if (JNum(spec, "checkpointIntervalSeconds") > 0)
      shown += ", checkpoint every " + FormatDuration(JNum(spec, "checkpointIntervalSeconds"));
    kv.push_back({"Restart policy", shown});
  }
  if (const json& rec = JObj(st, "recovery"); rec.is_object()) {
    std::string line =
        JStr(rec, "policy") + " after node " + OrDash(JStr(rec, "lostNode")) + " was lost";
    if (!JStr(rec, "checkpoint").empty()) {
      line += ", restored from checkpoint " + JStr(rec, "checkpoint") + " (progress lost " +
              FormatDuration(JNum(rec, "progressLostMs") / 1000.0) + ")";
    } else {
      line += ", started from its image";
    }
    if (JNum(rec, "lostMs") > 0 && JNum(rec, "restartedMs") >= JNum(rec, "lostMs"))
      line += ", " + FormatDuration((JNum(rec, "restartedMs") - JNum(rec, "lostMs")) / 1000.0) +
              " after the loss";
    line += "; " + std::to_string(static_cast<int64_t>(JNum(rec, "count"))) + " so far";
    kv.push_back({"Recovery", line});
  }
  if (!JStr(st, "restoreCheckpoint").empty())
    kv.push_back({"Restoring", "from checkpoint " + JStr(st, "restoreCheckpoint")});
  if (!JStr(st, "migration").empty()) kv.push_back({"Migrating", JStr(st, "migration")});
  if (const json& m = JObj(st, "migrations"); m.is_array() && !m.empty()) {
    std::vector<std::string> ids;
    for (const auto& x : m)
      if (x.is_string()) ids.push_back(x.get<std::string>());
    kv.push_back({"Moves", std::to_string(ids.size()) + " (" + Join(ids, ", ") + ")"});
  }
  if (Has(w, "ageSeconds")) kv.push_back({"Age", FormatAge(JNum(w, "ageSeconds"))});
  if (JNum(st, "restarts") > 0) {
    kv.push_back({"Restarts", std::to_string(static_cast<int64_t>(JNum(st, "restarts"))) +
                                  " (its task died or vanished; see Message)"});
  }
  if (!JStr(st, "message").empty()) kv.push_back({"Message", JStr(st, "message")});
  return KeyValues(kv);
}

// ---- migrations -----------------------------------------------------------------------

namespace {

std::string ToLower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// "Committed/target": how a migration ended and who decided ("" if unknown).
std::string OutcomeText(const json& m) {
  const json& res = JObj(m, "resolution");
  if (JStr(res, "outcome").empty()) return "";
  const std::string by = ToLower(JStr(res, "decidedBy"));
  return JStr(res, "outcome") + (by.empty() ? "" : "/" + by);
}

}  // namespace

std::string RenderMigrations(const json& list, const RenderOptions& o) {
  Table t;
  t.header = {"ID", "WORKLOAD", "ROUTE", "PHASE",    "FAULT", "OUTCOME",
              "BY", "AGE",      "TOTAL", "DOWNTIME", "MOVED", "NOTE"};
  t.right = {false, false, false, false, false, false, false, true, true, true, true, false};
  for (const auto& m : Items(list)) {
    const std::string phase = JStr(m, "phase");
    const json& report = JObj(m, "report");
    const json& timings = JObj(report, "timings");
    std::string shown = OrDash(phase);
    if (JNum(m, "cancelRequestedMs") > 0 && !IsFinalPhase(phase)) shown += "(cancelling)";
    std::string total = "-", downtime = "-", moved = "-";
    if (timings.is_object() && IsFinalPhase(phase)) {
      if (JNum(timings, "total") > 0) total = FormatDuration(JNum(timings, "total"));
      if (JNum(timings, "downtime") > 0) downtime = FormatDuration(JNum(timings, "downtime"));
    }
    if (JNum(report, "bytes") > 0) moved = FormatBytes(JNum(report, "bytes"));
    const double age = SecondsSince(static_cast<int64_t>(JNum(m, "createdMs")), o);
    std::string note = JStr(m, "error");
    if (note.empty()) note = JStr(m, "reason");
    t.rows.push_back({OrDash(JStr(m, "id")), OrDash(JStr(m, "workload")),
                      OrDash(JStr(m, "source")) + "->" + OrDash(JStr(m, "target")), shown,
                      OrDash(JStr(JObj(m, "fault"), "kind")), OrDash(OutcomeText(m)),
                      OrDash(JStr(m, "requestedBy")), age >= 0 ? FormatAge(age) : "-", total,
                      downtime, moved, Shorten(note, 60)});
  }
  if (t.rows.empty()) return "No migrations.\n";
  return FormatTable(t);
}

std::string RenderMigration(const json& m, const RenderOptions& o) {
  std::vector<std::pair<std::string, std::string>> kv;
  kv.push_back({"Migration", OrDash(JStr(m, "id"))});
  kv.push_back({"Workload", OrDash(JStr(m, "workload"))});
  kv.push_back({"Route", OrDash(JStr(m, "source")) + " -> " + OrDash(JStr(m, "target"))});
  kv.push_back({"Phase", OrDash(JStr(m, "phase"))});
  std::string requested = OrDash(JStr(m, "requestedBy"));
  const double age = SecondsSince(static_cast<int64_t>(JNum(m, "createdMs")), o);
  if (age >= 0) requested += ", " + FormatAge(age) + " ago";
  kv.push_back({"Requested", requested});
  if (!JStr(m, "reason").empty()) kv.push_back({"Reason", JStr(m, "reason")});
  const json& report = JObj(m, "report");
  if (report.is_object()) {
    kv.push_back({"Timings", ReportTimings(report)});
    if (JNum(report, "bytes") > 0) {
      kv.push_back({"Moved", FormatBytes(JNum(report, "bytes")) + " in " +
                                 Fixed(JNum(report, "files"), 0) + " files"});
    }
  }
  if (!JStr(report, "failedPhase").empty())
    kv.push_back({"Failed in", JStr(report, "failedPhase")});
  if (const json& f = JObj(m, "fault"); !JStr(f, "kind").empty()) {
    std::string text = JStr(f, "kind") + " in " + OrDash(JStr(f, "phase"));
    text += JStr(f, "node").empty() ? " (cluster)" : " on " + JStr(f, "node");
    if (!JStr(f, "message").empty()) text += ": " + JStr(f, "message");
    kv.push_back({"Fault", text});
  }
  if (const std::string outcome = OutcomeText(m); !outcome.empty()) {
    const json& res = JObj(m, "resolution");
    kv.push_back({"Outcome", JStr(res, "outcome") + ", decided by " +
                                 (JStr(res, "decidedBy") == "Records"
                                      ? std::string("the ownership records")
                                      : "the " + ToLower(JStr(res, "decidedBy")))});
  }
  if (JNum(m, "cancelRequestedMs") > 0) {
    kv.push_back({"Cancel", "requested by " + OrDash(JStr(m, "cancelledBy"))});
  }
  if (!JStr(m, "error").empty()) kv.push_back({"Error", JStr(m, "error")});
  return KeyValues(kv);
}

// ---- drain, decisions, leader ----------------------------------------------------------

std::string RenderDrain(const json& d) {
  const json& ordered = JObj(d, "ordered");
  const json& in_flight = JObj(d, "inFlight");
  const json& not_moved = JObj(d, "notMoved");
  auto size = [](const json& a) { return a.is_array() ? a.size() : size_t{0}; };
  std::string out = "Node " + OrDash(JStr(d, "node")) +
                    (JBool(d, "cordoned") ? " is cordoned" : " is not cordoned") + ": " +
                    std::to_string(size(ordered)) + " migration(s) ordered, " +
                    std::to_string(size(in_flight)) + " already moving, " +
                    std::to_string(size(not_moved)) + " not moved.\n";
  Table t;
  t.header = {"WORKLOAD", "ACTION", "MIGRATION", "TARGET", "REASON"};
  if (ordered.is_array()) {
    for (const auto& x : ordered) {
      t.rows.push_back({OrDash(JStr(x, "workload")), "ordered", OrDash(JStr(x, "migration")),
                        OrDash(JStr(x, "target")), ""});
    }
  }
  if (in_flight.is_array()) {
    for (const auto& x : in_flight) {
      t.rows.push_back(
          {OrDash(JStr(x, "workload")), "moving", OrDash(JStr(x, "migration")), "-", ""});
    }
  }
  if (not_moved.is_array()) {
    for (const auto& x : not_moved) {
      t.rows.push_back(
          {OrDash(JStr(x, "workload")), "not moved", "-", "-", OrDash(JStr(x, "reason"))});
    }
  }
  if (!t.rows.empty()) out += FormatTable(t);
  return out;
}

std::string RenderDecisions(const json& d) {
  std::string out;
  const json& loads = JObj(d, "loads");
  std::vector<std::string> parts;
  if (loads.is_object()) {
    for (const auto& [node, v] : loads.items()) {
      parts.push_back(node + " " + (v.is_number() ? Fixed(v.get<double>(), 2) : "-"));
    }
  }
  out += "Node loads: " + (parts.empty() ? std::string("none") : Join(parts, ", ")) + "\n";
  out += "Stability factor " + Fixed(JNum(d, "stability", 0), 2) + ", " +
         Fixed(JNum(d, "inFlight", 0), 0) + " migration(s) in flight.\n\n";
  const json& moves = JObj(d, "moves");
  if (!moves.is_array() || moves.empty()) {
    out += "No moves: the balancer would order nothing now.\n";
  } else {
    Table t;
    t.header = {"KIND",      "WORKLOAD", "FROM",          "TO",
                "FROM LOAD", "TO LOAD",  "WORKLOAD LOAD", "REASON"};
    t.right = {false, false, false, false, true, true, true, false};
    for (const auto& m : moves) {
      t.rows.push_back({OrDash(JStr(m, "kind")), OrDash(JStr(m, "workload")),
                        OrDash(JStr(m, "source")), OrDash(JStr(m, "target")),
                        Fixed(JNum(m, "sourceLoad"), 2), Fixed(JNum(m, "targetLoad"), 2),
                        Fixed(JNum(m, "workloadLoad"), 2), JStr(m, "reason")});
    }
    out += "Moves the balancer would order now:\n" + FormatTable(t);
  }
  const json& held = JObj(d, "heldBack");
  if (held.is_array() && !held.empty()) {
    out += "\nHeld back:\n";
    for (const auto& h : held) {
      if (h.is_string()) out += "  - " + h.get<std::string>() + "\n";
    }
  }
  return out;
}

std::string RenderLeader(const json& l) {
  std::vector<std::pair<std::string, std::string>> kv;
  const std::string leader = JStr(l, "leader");
  kv.push_back({"Leader", leader.empty() ? "(none elected)" : leader});
  kv.push_back({"Answered by", OrDash(JStr(l, "identity")) +
                                   (JBool(l, "isLeader") ? " (the leader)" : " (a follower)")});
  kv.push_back({"Ready", JBool(l, "ready") ? "yes" : "no (caches not synced)"});
  return KeyValues(kv);
}

// ---- events ---------------------------------------------------------------------------

std::string FormatEventLine(const json& e, const RenderOptions& o) {
  const std::string type = JStr(e, "type");
  const std::string time = Has(e, "timeMs") && e["timeMs"].is_number()
                               ? FormatClock(static_cast<int64_t>(JNum(e, "timeMs")), o.utc, true)
                               : std::string(12, '-');
  std::string subject, detail;
  const std::string phase = JStr(e, "phase");
  const std::string message = JStr(e, "message");
  if (type.rfind("migration.", 0) == 0) {
    subject = OrDash(JStr(e, "workload")) + " " + OrDash(JStr(e, "source")) + "->" +
              OrDash(JStr(e, "target"));
    detail = phase;
    if (Has(e, "downtimeSeconds"))
      detail += " downtime " + FormatDuration(JNum(e, "downtimeSeconds"));
    // The fault it met and how it ended: "(fault TargetUnreachable; Committed/target)".
    std::vector<std::string> ended;
    if (!JStr(JObj(e, "fault"), "kind").empty())
      ended.push_back("fault " + JStr(JObj(e, "fault"), "kind"));
    if (!OutcomeText(e).empty()) ended.push_back(OutcomeText(e));
    if (!ended.empty())
      detail += " (" + ended.front() + (ended.size() > 1 ? "; " + ended.back() : "") + ")";
    if (!message.empty()) detail += (detail.empty() ? "" : ": ") + message;
    if (!JStr(e, "migration").empty()) detail += " [" + JStr(e, "migration") + "]";
  } else if (type.rfind("workload.", 0) == 0) {
    subject = OrDash(JStr(e, "workload"));
    if (!JStr(e, "node").empty()) subject += "@" + JStr(e, "node");
    detail = phase;
    if (!message.empty()) detail += (detail.empty() ? "" : ": ") + message;
  } else {
    subject = JStr(e, "node");
    if (subject.empty()) subject = JStr(e, "workload");
    detail = message;
  }
  auto pad = [](std::string s, size_t w) {
    if (s.size() < w) s += std::string(w - s.size(), ' ');
    return s;
  };
  std::string line = time + "  " + pad(type.empty() ? "event" : type, 19) + " " +
                     pad(OrDash(subject), 26) + " " + detail;
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line;
}

}  // namespace kmosix::ctl
