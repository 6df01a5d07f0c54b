// kmosixctl's output: pure functions from the controller's JSON (the shapes
// of controller/controller.cc Describe*, lib/cluster/records.cc) to text
// tables with aligned columns and human units (MiB, %, ages like 3m12s), and
// the pretty JSON of `-o json` (the server's JSON as it came, indented).
//
// Every renderer tolerates missing or mistyped fields (it shows "-"), so a
// newer or older controller never crashes the CLI. Times are relative to
// RenderOptions::now_ms (the caller's wall clock); clock times are local
// unless RenderOptions::utc.
//
// Thread-safety: stateless functions. No errors: bad input renders as "-".
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kmosix::ctl {

struct RenderOptions {
  int64_t now_ms = 0;  // wall clock, ms since the epoch
  bool utc = false;    // clock times in UTC instead of local time
};

// ---- building blocks -----------------------------------------------------------

struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<bool> right;  // per column: right-aligned (numbers); missing = left
};
// Columns separated by two spaces, padded to the widest cell; trailing spaces
// trimmed; one '\n' per line. An empty table prints just its header.
std::string FormatTable(const Table& table);
// The same, as lines without '\n' (with_header false: the rows alone).
std::vector<std::string> AlignRows(const Table& table, bool with_header);

// 1536 -> "1.5 KiB", 14<<20 -> "14 MiB", 3<<30 -> "3.0 GiB" (one decimal under 10 units).
std::string FormatBytes(double bytes);
// used/total in the unit of total: "812/2048 MiB", "1.5/64.0 GiB".
std::string FormatUsedTotal(double used_bytes, double total_bytes);
// Seconds as an age: "45s", "3m12s", "2h05m", "3d04h"; negative -> "0s".
std::string FormatAge(double seconds);
// A duration with sub-second precision: "412ms", "2.31s", "1m05s".
std::string FormatDuration(double seconds);
// 0.523 -> "52%".
std::string FormatPercent(double fraction);
// Cores: 1 -> "1", 0.5234 -> "0.52".
std::string FormatCores(double cores);
// A wall-clock time as "HH:MM:SS" (with_ms: ".mmm").
std::string FormatClock(int64_t ms, bool utc, bool with_ms = false);
// A bar of `width` cells (brackets included) for `value` on a 0..scale axis:
// "[#####.....]". With scale > 1, cells past load 1.0 fill with '+' and the
// cell where 1.0 falls shows '|' when it is empty. width < 3 gives "".
std::string LoadBar(double value, double scale, int width);

// `-o json`: the JSON indented by 2, with a final newline.
std::string PrettyJson(const nlohmann::json& j);

// ---- the commands' tables ----------------------------------------------------------

// GET /v1/nodes: NAME STATUS LOAD CPU MEMORY RUNQ WORKLOADS HEARTBEAT.
std::string RenderNodes(const nlohmann::json& list, const RenderOptions& o);
// GET /v1/nodes/{name} (also the cordon/uncordon answer): the table's row,
// then details (speed, load source, PSI, per-workload usage).
std::string RenderNode(const nlohmann::json& node, const RenderOptions& o);
// GET /v1/workloads: NAME PHASE NODE CPU MEMORY AGE MOVES FLAGS MESSAGE.
std::string RenderWorkloads(const nlohmann::json& list, const RenderOptions& o);
// One workload (run, pin, unpin answers): key: value lines.
std::string RenderWorkload(const nlohmann::json& w, const RenderOptions& o);
// GET /v1/migrations: ID WORKLOAD ROUTE PHASE BY AGE TOTAL DOWNTIME MOVED NOTE.
std::string RenderMigrations(const nlohmann::json& list, const RenderOptions& o);
// One migration record: key: value lines (timings, bytes, error, cancel).
std::string RenderMigration(const nlohmann::json& m, const RenderOptions& o);
// POST /v1/nodes/{name}/drain answer.
std::string RenderDrain(const nlohmann::json& d);
// GET /v1/decisions: node loads, the moves the balancer would order, held-back reasons.
std::string RenderDecisions(const nlohmann::json& d);
// GET /v1/leader.
std::string RenderLeader(const nlohmann::json& l);
// One event's data (GET /v1/events) as one line:
// "12:03:04.123  migration.phase     demo1 node1->node2        Transferring [m-3f9a0c12]".
std::string FormatEventLine(const nlohmann::json& data, const RenderOptions& o);

// ---- tolerant JSON access (shared with top) ------------------------------------------
std::string JStr(const nlohmann::json& j, const char* key);
double JNum(const nlohmann::json& j, const char* key, double fallback = 0);
bool JBool(const nlohmann::json& j, const char* key, bool fallback = false);
// j[key] if it is an object/array, else a null.
const nlohmann::json& JObj(const nlohmann::json& j, const char* key);
// The "items" array of a list answer (an empty array otherwise).
const nlohmann::json& Items(const nlohmann::json& list);

}  // namespace kmosix::ctl
