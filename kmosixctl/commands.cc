#include "kmosixctl/commands.h"

#include <cctype>
#include <functional>
#include <map>
#include <set>

#include "kmosixctl/render.h"
#include "kmosixctl/sse.h"

namespace kmosix::ctl {
namespace {

using nlohmann::json;

int Fail(CommandContext& c, const ApiError& e) {
  c.err << "kmosixctl: " << e.ToString() << "\n";
  return e.exit_code;
}

RenderOptions Opts(CommandContext& c) { return {.now_ms = c.clock.WallMillis(), .utc = c.utc}; }

bool Json(CommandContext& c) { return c.format == OutputFormat::kJson; }

bool IsFinalPhase(const std::string& phase) {
  return phase == "Succeeded" || phase == "RolledBack" || phase == "Failed";
}

// A failure worth polling through (server restarting, leader changing).
bool Transient(const ApiError& e) {
  return e.exit_code == kExitUnreachable || (e.exit_code == kExitError && e.http_status >= 500);
}

std::string Outcome(const json& m) {
  const std::string phase = JStr(m, "phase");
  const json& report = JObj(m, "report");
  const json& t = JObj(report, "timings");
  std::string s = phase + ": " + JStr(m, "workload");
  if (phase == "Succeeded") {
    s += " moved " + JStr(m, "source") + " -> " + JStr(m, "target");
    if (t.is_object()) {
      s += " in " + FormatDuration(JNum(t, "total")) + ", downtime " +
           FormatDuration(JNum(t, "downtime"));
    }
    if (JNum(report, "bytes") > 0) s += ", " + FormatBytes(JNum(report, "bytes")) + " transferred";
  } else {
    // Where the workload is now, as the migration's resolution says (records
    // written before it existed: on its source).
    const std::string outcome = JStr(JObj(m, "resolution"), "outcome");
    if (outcome == "Released") {
      s += " was released on " + JStr(m, "source") + ": another node owns it";
    } else if (outcome == "SourceGone") {
      s += " is gone from " + JStr(m, "source");
    } else if (outcome == "Abandoned") {
      s += " was left with " + JStr(m, "source") + " (its node was lost)";
    } else {
      s += " stays on " + JStr(m, "source");
    }
    if (!JStr(m, "error").empty()) s += ": " + JStr(m, "error");
    const std::string failed = JStr(report, "failedPhase");
    if (!failed.empty()) s += " (failed in " + failed + ")";
    if (const std::string kind = JStr(JObj(m, "fault"), "kind"); !kind.empty())
      s += " [" + kind + "]";
  }
  return s;
}

// Polls migrations until all are final or the deadline passes; prints each
// phase change (table mode) via on_change. Returns the final records by id,
// or an error exit code (transient failures are polled through).
struct WaitResult {
  std::map<std::string, json> records;
  int exit_code = kExitOk;  // kExitError on timeout, else a fatal API error's code
};

WaitResult WaitForMigrations(
    CommandContext& c, std::map<std::string, json> records, const WaitOptions& w,
    const std::function<void(const json& before, const json& now)>& on_change) {
  WaitResult result;
  const auto deadline = c.clock.Now() + w.timeout;
  bool warned = false;
  auto pending = [&] {
    for (const auto& [id, m] : records)
      if (!IsFinalPhase(JStr(m, "phase"))) return true;
    return false;
  };
  while (pending()) {
    if (c.clock.Now() >= deadline) {
      std::string what;
      for (const auto& [id, m] : records) {
        if (!IsFinalPhase(JStr(m, "phase"))) what += " " + id + " is " + JStr(m, "phase") + ";";
      }
      c.err << "kmosixctl: timed out after " << FormatAge(w.timeout.count() / 1000.0)
            << " waiting:" << what << " still in progress (see `kmosixctl migrations`)\n";
      result.records = std::move(records);
      result.exit_code = kExitError;
      return result;
    }
    c.clock.SleepFor(w.poll);
    for (auto& [id, m] : records) {
      if (IsFinalPhase(JStr(m, "phase"))) continue;
      auto got = c.client.Get("/v1/migrations/" + PathEscape(id));
      if (!got.ok()) {
        if (Transient(got.error())) {
          if (!warned) c.err << "kmosixctl: still waiting (" << got.error().message << ")\n";
          warned = true;
          continue;
        }
        result.records = std::move(records);
        result.exit_code = Fail(c, got.error());
        return result;
      }
      warned = false;
      if (JStr(*got, "phase") != JStr(m, "phase") ||
          JNum(*got, "cancelRequestedMs") != JNum(m, "cancelRequestedMs")) {
        on_change(m, *got);
      }
      m = *got;
    }
  }
  result.records = std::move(records);
  return result;
}

std::string Query(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string q;
  for (const auto& [k, v] : params) {
    q += (q.empty() ? "?" : "&") + k + "=";
    for (unsigned char ch : v) {
      if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == ',' || ch == '~') {
        q += static_cast<char>(ch);
      } else {
        static constexpr char kHex[] = "0123456789ABCDEF";
        q += '%';
        q += kHex[ch >> 4];
        q += kHex[ch & 15];
      }
    }
  }
  return q;
}

}  // namespace

// ---- reads ------------------------------------------------------------------------

int CmdNodes(CommandContext& c, const std::string& name) {
  auto r = c.client.Get(name.empty() ? "/v1/nodes" : "/v1/nodes/" + PathEscape(name));
  if (!r.ok()) return Fail(c, r.error());
  if (Json(c)) {
    c.out << PrettyJson(*r);
  } else {
    c.out << (name.empty() ? RenderNodes(*r, Opts(c)) : RenderNode(*r, Opts(c)));
  }
  return kExitOk;
}

int CmdPs(CommandContext& c, const std::string& node) {
  auto r = c.client.Get("/v1/workloads");
  if (!r.ok()) return Fail(c, r.error());
  json list = *r;
  if (!node.empty()) {
    json items = json::array();
    for (const auto& w : Items(list)) {
      if (JStr(JObj(w, "status"), "node") == node) items.push_back(w);
    }
    list["items"] = std::move(items);
  }
  c.out << (Json(c) ? PrettyJson(list) : RenderWorkloads(list, Opts(c)));
  return kExitOk;
}

int CmdDescribeWorkload(CommandContext& c, const std::string& name) {
  auto r = c.client.Get("/v1/workloads/" + PathEscape(name));
  if (!r.ok()) return Fail(c, r.error());
  c.out << (Json(c) ? PrettyJson(*r) : RenderWorkload(*r, Opts(c)));
  return kExitOk;
}

int CmdMigrations(CommandContext& c, const std::string& id) {
  auto r = c.client.Get(id.empty() ? "/v1/migrations" : "/v1/migrations/" + PathEscape(id));
  if (!r.ok()) return Fail(c, r.error());
  if (Json(c)) {
    c.out << PrettyJson(*r);
  } else {
    c.out << (id.empty() ? RenderMigrations(*r, Opts(c)) : RenderMigration(*r, Opts(c)));
  }
  return kExitOk;
}

int CmdDecisions(CommandContext& c) {
  auto r = c.client.Get("/v1/decisions");
  if (!r.ok()) return Fail(c, r.error());
  c.out << (Json(c) ? PrettyJson(*r) : RenderDecisions(*r));
  return kExitOk;
}

int CmdLeader(CommandContext& c) {
  auto r = c.client.Get("/v1/leader");
  if (!r.ok()) return Fail(c, r.error());
  c.out << (Json(c) ? PrettyJson(*r) : RenderLeader(*r));
  return kExitOk;
}

// ---- workloads ----------------------------------------------------------------------

std::variant<json, std::string> RunBody(const RunRequest& r) {
  json body = {{"name", r.name}, {"image", r.image}};
  if (!r.args.empty()) body["args"] = r.args;
  if (!r.env.empty()) {
    json env = json::object();
    for (const auto& kv : r.env) {
      const auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) return "--env \"" + kv + "\": expected KEY=VALUE";
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    body["env"] = env;
  }
  if (r.memory_mib) body["memoryMiB"] = *r.memory_mib;
  if (r.cpus) body["cpus"] = *r.cpus;
  if (!r.node.empty()) body["node"] = r.node;
  if (r.pinned) body["pinned"] = true;
  if (r.no_migrate) body["migratable"] = false;
  if (!r.restart_policy.empty()) {
    if (r.restart_policy != "Never" && r.restart_policy != "FromImage" &&
        r.restart_policy != "FromCheckpoint")
      return "--restart-policy \"" + r.restart_policy +
             "\": expected Never, FromImage or FromCheckpoint";
    body["restartPolicy"] = r.restart_policy;
  }
  if (r.checkpoint_interval_seconds)
    body["checkpointIntervalSeconds"] = *r.checkpoint_interval_seconds;
  return body;
}

int CmdRun(CommandContext& c, const RunRequest& req) {
  auto body = RunBody(req);
  if (body.index() == 1) {
    c.err << "kmosixctl: " << std::get<1>(body) << "\n";
    return kExitUsage;
  }
  auto r = c.client.Post("/v1/workloads", std::get<0>(body));
  if (!r.ok()) return Fail(c, r.error());
  if (Json(c)) {
    c.out << PrettyJson(*r);
    return kExitOk;
  }
  const json& st = JObj(*r, "status");
  std::string name = JStr(*r, "name");
  if (name.empty()) name = req.name;
  c.out << "workload " << name << " created";
  const std::string phase = JStr(st, "phase");
  if (!phase.empty()) c.out << " (" << phase;
  if (!JStr(st, "node").empty()) c.out << " on " << JStr(st, "node");
  if (!phase.empty() && !JStr(st, "message").empty()) c.out << ": " << JStr(st, "message");
  if (!phase.empty()) c.out << ")";
  c.out << "\n";
  return kExitOk;
}

int CmdRm(CommandContext& c, const std::vector<std::string>& names) {
  int code = kExitOk;
  for (const auto& name : names) {
    auto r = c.client.Delete("/v1/workloads/" + PathEscape(name));
    if (!r.ok()) {
      const int e = Fail(c, r.error());
      if (code == kExitOk) code = e;
      continue;
    }
    if (Json(c)) {
      c.out << PrettyJson(*r);
    } else {
      c.out << "workload " << name << " deleted\n";
    }
  }
  return code;
}

std::string NewLogBytes(const std::string& before, const std::string& now) {
  if (now.size() >= before.size() && now.compare(0, before.size(), before) == 0)
    return now.substr(before.size());
  // The log was cut at the front: the longest start of `now` that ends
  // `before` is what was shown already (prefix function, linear time).
  constexpr size_t kWindow = 1 << 20;
  const std::string_view pattern = std::string_view(now).substr(0, std::min(now.size(), kWindow));
  const std::string_view text =
      std::string_view(before).substr(before.size() > kWindow ? before.size() - kWindow : 0);
  std::vector<size_t> fail(pattern.size(), 0);
  for (size_t i = 1, k = 0; i < pattern.size(); ++i) {
    while (k > 0 && pattern[i] != pattern[k]) k = fail[k - 1];
    if (pattern[i] == pattern[k]) ++k;
    fail[i] = k;
  }
  size_t matched = 0;
  for (char ch : text) {
    while (matched > 0 && (matched == pattern.size() || ch != pattern[matched]))
      matched = fail[matched - 1];
    if (matched < pattern.size() && ch == pattern[matched]) ++matched;
  }
  // A short overlap ("\n") is a coincidence: then the log started over.
  if (matched >= std::min<size_t>(before.size(), 32)) return now.substr(matched);
  return now;
}

int CmdLogs(CommandContext& c, const std::string& name, const LogsOptions& o) {
  const std::string path = "/v1/workloads/" + PathEscape(name) + "/logs";
  auto r = c.client.GetText(path);
  if (!r.ok()) return Fail(c, r.error());
  c.out << *r << std::flush;
  if (!o.follow) return kExitOk;
  std::string shown = *r;
  bool warned = false;
  for (int polls = 0; o.max_polls == 0 || polls < o.max_polls; ++polls) {
    c.clock.SleepFor(o.interval);
    auto next = c.client.GetText(path);
    if (!next.ok()) {
      const ApiError& e = next.error();
      // Moving between nodes, controller restarting: keep following.
      if (Transient(e) || e.exit_code == kExitConflict) {
        if (!warned) c.err << "kmosixctl: logs unavailable for now (" << e.message << ")\n";
        warned = true;
        continue;
      }
      return Fail(c, e);
    }
    warned = false;
    const std::string add = NewLogBytes(shown, *next);
    if (!add.empty()) c.out << add << std::flush;
    if (!c.out) return kExitOk;  // stdout closed (| head)
    shown = std::move(*next);
  }
  return kExitOk;
}

int CmdPin(CommandContext& c, const std::string& workload, bool pin) {
  auto r =
      c.client.Post("/v1/workloads/" + PathEscape(workload) + (pin ? "/pin" : "/unpin"), json());
  if (!r.ok()) return Fail(c, r.error());
  if (Json(c)) {
    c.out << PrettyJson(*r);
  } else {
    const std::string node = JStr(JObj(*r, "status"), "node");
    c.out << "workload " << workload << (pin ? " pinned" : " unpinned");
    if (pin && !node.empty()) c.out << ": it stays on " << node;
    if (!pin) c.out << ": the balancer may move it again";
    c.out << "\n";
  }
  return kExitOk;
}

// ---- migrations -------------------------------------------------------------------

int CmdMigrate(CommandContext& c, const std::string& workload, const std::string& target,
               const WaitOptions& w) {
  json body = {{"workload", workload}};
  if (!target.empty()) body["target"] = target;
  auto r = c.client.Post("/v1/migrations", body);
  if (!r.ok()) return Fail(c, r.error());
  const std::string id = JStr(*r, "id");
  if (!w.wait) {
    if (Json(c)) {
      c.out << PrettyJson(*r);
    } else {
      c.out << "migration " << id << " ordered: " << JStr(*r, "workload") << " "
            << JStr(*r, "source") << " -> " << JStr(*r, "target") << "\n"
            << RenderMigration(*r, Opts(c));
    }
    return kExitOk;
  }
  const bool table = !Json(c);
  if (table) {
    c.out << "migration " << id << " ordered: " << JStr(*r, "workload") << " " << JStr(*r, "source")
          << " -> " << JStr(*r, "target") << "\n";
    c.out << "  " << FormatClock(c.clock.WallMillis(), c.utc, true) << "  " << JStr(*r, "phase")
          << "\n"
          << std::flush;
  }
  auto result = WaitForMigrations(c, {{id, *r}}, w, [&](const json& before, const json& now) {
    if (!table) return;
    std::string line = JStr(now, "phase");
    if (JNum(now, "cancelRequestedMs") > 0 && JNum(before, "cancelRequestedMs") == 0)
      line += " (cancel requested by " + JStr(now, "cancelledBy") + ")";
    c.out << "  " << FormatClock(c.clock.WallMillis(), c.utc, true) << "  " << line << "\n"
          << std::flush;
  });
  const json& m = result.records[id];
  if (result.exit_code != kExitOk) return result.exit_code;
  if (table) {
    c.out << Outcome(m) << "\n";
  } else {
    c.out << PrettyJson(m);
  }
  return JStr(m, "phase") == "Succeeded" ? kExitOk : kExitMigrationFailed;
}

int CmdCancel(CommandContext& c, const std::string& id) {
  auto r = c.client.Delete("/v1/migrations/" + PathEscape(id));
  if (!r.ok()) return Fail(c, r.error());
  if (Json(c)) {
    c.out << PrettyJson(*r);
  } else {
    c.out << "cancel requested for migration " << id << " (" << JStr(*r, "workload") << ", "
          << JStr(*r, "phase") << "): the source rolls it back; " << JStr(*r, "workload")
          << " stays on " << JStr(*r, "source") << "\n";
  }
  return kExitOk;
}

// ---- nodes ----------------------------------------------------------------------------

int CmdCordon(CommandContext& c, const std::string& node, bool cordon) {
  auto r =
      c.client.Post("/v1/nodes/" + PathEscape(node) + (cordon ? "/cordon" : "/uncordon"), json());
  if (!r.ok()) return Fail(c, r.error());
  if (Json(c)) {
    c.out << PrettyJson(*r);
  } else {
    c.out << "node " << node
          << (cordon ? " cordoned: it takes no new workloads or migrations"
                     : " uncordoned: it takes workloads again")
          << "\n";
  }
  return kExitOk;
}

int CmdDrain(CommandContext& c, const std::string& node, bool include_pinned,
             const WaitOptions& w) {
  json body = json::object();
  if (include_pinned) body["includePinned"] = true;
  auto r = c.client.Post("/v1/nodes/" + PathEscape(node) + "/drain", body);
  if (!r.ok()) return Fail(c, r.error());
  const bool table = !Json(c);
  if (table) c.out << RenderDrain(*r) << std::flush;
  if (!w.wait) {
    if (!table) c.out << PrettyJson(*r);
    return kExitOk;
  }
  std::map<std::string, json> records;
  for (const char* key : {"ordered", "inFlight"}) {
    const json& list = JObj(*r, key);
    if (!list.is_array()) continue;
    for (const auto& x : list) {
      const std::string id = JStr(x, "migration");
      if (id.empty()) continue;
      records[id] = {{"id", id}, {"workload", JStr(x, "workload")}, {"phase", "Pending"}};
    }
  }
  auto result = WaitForMigrations(c, std::move(records), w, [&](const json&, const json& now) {
    if (table && IsFinalPhase(JStr(now, "phase"))) {
      c.out << "  " << FormatClock(c.clock.WallMillis(), c.utc, true) << "  " << JStr(now, "id")
            << "  " << Outcome(now) << "\n"
            << std::flush;
    }
  });
  if (result.exit_code != kExitOk) return result.exit_code;
  int failed = 0, moved = 0;
  json finals = json::array();
  for (const auto& [id, m] : result.records) {
    finals.push_back(m);
    (JStr(m, "phase") == "Succeeded" ? moved : failed) += 1;
  }
  if (table) {
    c.out << "drain of " << node << ": " << moved << " moved, " << failed << " did not move\n";
  } else {
    c.out << PrettyJson({{"drain", *r}, {"migrations", finals}});
  }
  return failed > 0 ? kExitMigrationFailed : kExitOk;
}

// ---- events ----------------------------------------------------------------------------

int CmdEvents(CommandContext& c, const EventsOptions& o) {
  std::string last_id;
  if (o.since) last_id = std::to_string(*o.since);
  int printed = 0;
  bool was_up = false;
  for (int attempt = 0;; ++attempt) {
    std::vector<std::pair<std::string, std::string>> params;
    if (!o.types.empty()) params.push_back({"types", o.types});
    if (!last_id.empty()) params.push_back({"since", last_id});
    std::vector<std::pair<std::string, std::string>> headers;
    if (!last_id.empty() && was_up) headers.push_back({"Last-Event-ID", last_id});
    SseParser parser;
    bool got_data = false, ended = false, done = false;
    auto error = c.client.Stream(
        "/v1/events" + Query(params), headers,
        [&](std::string_view chunk) {
          got_data = true;
          for (const SseEvent& e : parser.Feed(chunk)) {
            if (Json(c)) {
              c.out << e.data << "\n";
            } else {
              json data = json::parse(e.data, nullptr, /*allow_exceptions=*/false);
              if (!data.is_discarded() && data.is_object()) {
                c.out << FormatEventLine(data, Opts(c)) << "\n";
              } else {
                c.out << e.event << ": " << e.data << "\n";
              }
            }
            c.out << std::flush;
            if (!c.out) {  // stdout closed (| head): stop
              done = true;
              return false;
            }
            if (!e.id.empty()) last_id = e.id;
            if (o.limit > 0 && ++printed >= o.limit) {
              done = true;
              return false;
            }
          }
          return true;
        },
        &ended);
    if (done) return kExitOk;
    if (error) {
      // Never connected, or a refusal (auth, bad filter, no such endpoint): give up.
      if ((!was_up && !got_data) || error->http_status != 0) return Fail(c, *error);
    } else if (!ended) {
      return kExitOk;  // cancelled
    }
    was_up = was_up || got_data || ended;
    if (o.max_reconnects >= 0 && attempt >= o.max_reconnects) {
      if (error) return Fail(c, *error);
      return kExitOk;
    }
    c.err << "kmosixctl: event stream "
          << (error ? "lost (" + error->message + ")" : std::string("ended by the server"))
          << "; reconnecting" << (last_id.empty() ? "" : " after event " + last_id) << "\n";
    c.clock.SleepFor(o.reconnect);
  }
}

}  // namespace kmosix::ctl
