// kmosixctl's commands, one function each, over an ApiClient and two output
// streams, so they are tested with a fake HTTP seam (tests/kmosixctl/). main.cc
// parses the command line and calls them.
//
// Every command returns the process exit code (see client.h) and writes
// errors to `err` as "kmosixctl: CODE (HTTP n): message". In table mode the
// output is the render.h tables; in json mode the server's JSON as it came
// (indented).
//
// Waiting (migrate --wait, drain --wait, logs -f) polls through the injected
// Clock (SleepFor), so tests run them on a FakeClock.
//
// Ownership: borrows everything in CommandContext. Thread-safety: one command
// at a time per context.
#pragma once

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <variant>
#include <vector>

#include "kmosix/clock.h"
#include "kmosixctl/client.h"

namespace kmosix::ctl {

enum class OutputFormat { kTable, kJson };

struct CommandContext {
  ApiClient& client;
  Clock& clock;
  std::ostream& out;
  std::ostream& err;
  OutputFormat format = OutputFormat::kTable;
  bool utc = false;  // clock times in UTC (tests)
};

int CmdNodes(CommandContext& c, const std::string& name);  // name "" = all
int CmdPs(CommandContext& c, const std::string& node);     // node "" = all
int CmdDescribeWorkload(CommandContext& c, const std::string& name);

struct RunRequest {
  std::string name;
  std::string image;
  std::vector<std::string> args;
  std::vector<std::string> env;  // "K=V"
  std::optional<int64_t> memory_mib;
  std::optional<double> cpus;
  std::string node;
  bool pinned = false;
  bool no_migrate = false;
  std::string restart_policy;                          // "" = the server's default (Never)
  std::optional<int64_t> checkpoint_interval_seconds;  // with FromCheckpoint
};
// The POST /v1/workloads body, or an error message (bad --env, a
// --restart-policy other than Never, FromImage, FromCheckpoint).
std::variant<nlohmann::json, std::string> RunBody(const RunRequest& r);
int CmdRun(CommandContext& c, const RunRequest& r);
int CmdRm(CommandContext& c, const std::vector<std::string>& names);

struct LogsOptions {
  bool follow = false;
  std::chrono::milliseconds interval{1000};
  int max_polls = 0;  // follow: stop after this many polls (0: forever; tests)
};
int CmdLogs(CommandContext& c, const std::string& name, const LogsOptions& o);
// What `now` adds to `before` (the log as printed last): the suffix after
// `before` when it is a prefix; else, when the log was cut at the front, what
// follows the longest start of `now` that ends `before` (at least 32 bytes);
// else all of `now` (the log started over).
std::string NewLogBytes(const std::string& before, const std::string& now);

struct WaitOptions {
  bool wait = false;
  std::chrono::milliseconds timeout{300'000};
  std::chrono::milliseconds poll{250};
};
int CmdMigrate(CommandContext& c, const std::string& workload, const std::string& target,
               const WaitOptions& w);
int CmdMigrations(CommandContext& c, const std::string& id);  // id "" = all
int CmdCancel(CommandContext& c, const std::string& id);
int CmdDrain(CommandContext& c, const std::string& node, bool include_pinned, const WaitOptions& w);
int CmdCordon(CommandContext& c, const std::string& node, bool cordon);
int CmdPin(CommandContext& c, const std::string& workload, bool pin);
int CmdDecisions(CommandContext& c);
int CmdLeader(CommandContext& c);

struct EventsOptions {
  std::string types;             // comma-separated prefixes ("" = all)
  std::optional<int64_t> since;  // replay events after this id
  int limit = 0;                 // stop after this many events (0: follow forever)
  std::chrono::milliseconds reconnect{1000};
  int max_reconnects = -1;  // -1: forever
};
// Follows GET /v1/events: one line per event (json: the event's data, one
// JSON object per line), flushed at once; reconnects with Last-Event-ID when
// the stream breaks after it was up.
int CmdEvents(CommandContext& c, const EventsOptions& o);

}  // namespace kmosix::ctl
