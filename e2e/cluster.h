// End-to-end harness: a local kmosix cluster (scripts/cluster: one network
// namespace, containerd and kmosix-agent per node), REST helpers for the
// agents, a parser for the demo workload's tick lines, and a bounded waiter.
//
// Used by the e2e tests (e2e/migration_e2e_test.cc) and the migration
// benchmark (bench/migration_bench.cc); deliberately free of GoogleTest.
//
// Paths come from compile definitions (see e2e/CMakeLists.txt):
//   KMX_REPO_DIR    the source tree (scripts/cluster, images/demo/build.sh)
//   KMX_AGENT_BIN   the built kmosix-agent (passed to scripts/cluster as KMOSIX_AGENT)
//   KMX_DEMO_IMAGE  where the demo image tarball is (built if missing)
// Each may be overridden at run time by the environment variable of the same
// name.
//
// Thread-safety: Cluster is used from one thread; the free functions are
// thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kmosix::e2e {

// --- processes -------------------------------------------------------------

struct CommandResult {
  int exit_code = -1;  // -1: could not run / killed by a signal
  std::string output;  // stdout and stderr, interleaved
};
// Runs `command` with /bin/sh -c, stderr folded into stdout.
CommandResult RunCommand(const std::string& command);
// Quotes one argument for /bin/sh.
std::string ShellQuote(const std::string& s);

// --- HTTP --------------------------------------------------------------------

struct HttpReply {
  int status = 0;  // 0: no answer (see error)
  std::string body;
  std::string error;  // transport-level error (connection refused, timeout, ...)
  // The body as JSON; a JSON null if it is not JSON.
  nlohmann::json Json() const;
  // "HTTP 404 {...}" or "no answer: <error>", for failure messages.
  std::string Describe() const;
};

// base: "http://host:port"; path: "/v1/...". timeout bounds connect and read.
HttpReply HttpGet(const std::string& base, const std::string& path,
                  std::chrono::seconds timeout = std::chrono::seconds(10));
HttpReply HttpDelete(const std::string& base, const std::string& path,
                     std::chrono::seconds timeout = std::chrono::seconds(30));
HttpReply HttpPost(const std::string& base, const std::string& path, const nlohmann::json& body,
                   std::chrono::seconds timeout = std::chrono::seconds(30));
HttpReply HttpPut(const std::string& base, const std::string& path, const std::string& body = "",
                  std::chrono::seconds timeout = std::chrono::seconds(10));

// --- the demo workload's log ----------------------------------------------------

// One "tick=..." line of kmosix-demo (see images/demo/kmosix-demo.c).
struct Tick {
  uint64_t tick = 0;
  int64_t t_ms = 0;
  int mem_ok = -1;
  int64_t mem_mib = 0;
  int64_t mem_passes = 0;
  int64_t child_tick = -1;
  int child_alive = -1;
  int file_ok = -1;
  int rootfs_ok = -1;
  int64_t pid = 0;
};
// One "child_tick=..." line of the demo's child.
struct ChildTick {
  uint64_t tick = 0;
  int64_t t_ms = 0;
  int64_t pid = 0;
};

struct DemoLog {
  std::vector<Tick> ticks;
  std::vector<ChildTick> child_ticks;
  int start_lines = 0;       // "demo: start ..." lines (1 unless it restarted)
  int corruption_lines = 0;  // "demo: MEMORY CORRUPTION ..." lines
  int malformed_lines = 0;   // complete tick lines that did not parse
};
// Parses complete lines (a last line without '\n' is ignored: it may be half
// written).
DemoLog ParseDemoLog(const std::string& text);
std::optional<Tick> ParseTickLine(const std::string& line);

// Empty if ticks[i].tick == ticks[0].tick + i for all i, else a description of
// the first break ("tick 41 followed by tick 1 at line index 40").
std::string CheckConsecutive(const std::vector<Tick>& ticks);
std::string CheckConsecutive(const std::vector<ChildTick>& ticks);

// The largest gap in t_ms between consecutive ticks whose tick number is >=
// from_tick (0: all); `after_tick` is the tick before the gap.
struct Gap {
  int64_t ms = 0;
  uint64_t after_tick = 0;
};
Gap MaxGap(const std::vector<Tick>& ticks, uint64_t from_tick = 0);

// --- waiting -------------------------------------------------------------------

struct Observation {
  bool done = false;
  std::string seen;  // what the probe saw, for the failure message
};
struct WaitResult {
  bool ok = false;
  std::string message;  // on failure: what was awaited, for how long, what was seen
  explicit operator bool() const { return ok; }
};
// Calls probe every `interval` until it reports done or `timeout` passes. On
// timeout the message lists the distinct observations (the last ones if many).
WaitResult WaitFor(const std::string& what, std::chrono::milliseconds timeout,
                   const std::function<Observation()>& probe,
                   std::chrono::milliseconds interval = std::chrono::milliseconds(200));

// --- the cluster ---------------------------------------------------------------

struct Node {
  int index = 0;     // 1-based
  std::string name;  // "node1"
  std::string addr;  // "10.77.0.11"
  std::string url;   // "http://10.77.0.11:7700"
  std::string sock;  // containerd socket
};

struct ClusterOptions {
  int nodes = 2;
  std::vector<std::string> agent_args;  // e.g. {"--enable-failpoints"}
  // Use a cluster that is already up instead of failing; never tear it down.
  bool reuse = false;
  // Tear down in Down() (and the destructor) only what Up() brought up.
  bool keep = false;
};

class Cluster {
 public:
  static constexpr const char* kNamespace = "kmosix";
  static constexpr const char* kDemoImage = "kmosix.local/demo:latest";

  explicit Cluster(ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Empty when this machine can run a cluster, else why not (not root, no
  // working CRIU, no network namespaces, a tool missing).
  static std::string MissingCapability();

  // Builds the demo image if needed, brings the cluster up (or adopts a
  // running one with reuse), reads its layout and imports the demo image.
  // Returns an error message, empty on success.
  std::string Up();
  // scripts/cluster down, unless reused or keep. Returns its output on failure.
  std::string Down();

  const std::vector<Node>& Nodes() const { return nodes_; }
  const Node& node(int index) const { return nodes_.at(index - 1); }
  std::string BridgeAddress() const { return bridge_addr_; }
  std::string LogsDir() const { return data_dir_ + "/logs"; }

  // containerd state of `name` on a node, through ctr.
  struct CtrView {
    bool container = false;
    std::string task_status;  // "" when there is no task; else ctr's STATUS (RUNNING, PAUSED...)
    std::string error;        // ctr failed
  };
  CtrView Ctr(const Node& n, const std::string& name) const;

  // Last lines of a node's agent log, for failure messages.
  std::string AgentLogTail(const Node& n, int lines = 30) const;

  static std::string RepoDir();
  static std::string AgentBinary();
  static std::string DemoImagePath();

 private:
  std::string ReadLayout();

  ClusterOptions options_;
  bool brought_up_ = false;
  std::vector<Node> nodes_;
  std::string bridge_addr_;
  std::string data_dir_ = "/var/lib/kmosix-cluster";
};

// --- workloads -----------------------------------------------------------------

// The demo's command line: {"/bin/kmosix-demo", extra...}.
nlohmann::json DemoArgs(const std::vector<std::string>& extra);
// POST /v1/workloads {"name","image":demo,"args"}. Returns an error message or "".
std::string CreateDemo(const Node& n, const std::string& name,
                       const std::vector<std::string>& extra);
// GET .../logs parsed; std::nullopt (and *error set) when the GET fails.
std::optional<DemoLog> FetchLog(const Node& n, const std::string& name, std::string* error);
// Waits until the workload's log on n has ticks up to at least `tick`.
WaitResult WaitForTick(const Node& n, const std::string& name, uint64_t tick,
                       std::chrono::milliseconds timeout);
// Where the workload is: empty if it runs on exactly `owner` (agent says
// running/running there and 404 everywhere else; containerd has a RUNNING task
// there and neither container nor task elsewhere), else every discrepancy.
std::string CheckRunsExactlyOn(const Cluster& c, const std::string& name, const Node& owner);
// Empty if no node has the workload (agent 404, no container, no task).
std::string CheckGoneEverywhere(const Cluster& c, const std::string& name);

}  // namespace kmosix::e2e
