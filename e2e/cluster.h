// End-to-end harness: a local kmosix cluster (scripts/cluster: one network
// namespace, containerd and kmosix-agent per node; optionally one etcd and
// kmosix-controllers on the host), REST helpers for the agents and the
// controllers, a parser for the demo workload's tick lines, and a bounded
// waiter.
//
// Used by the e2e tests (e2e/migration_e2e_test.cc, e2e/brain_e2e_test.cc) and
// the migration benchmark (bench/migration_bench.cc); deliberately free of
// GoogleTest.
//
// Paths come from compile definitions (see e2e/CMakeLists.txt):
//   KMX_REPO_DIR        the source tree (scripts/cluster, images/demo/build.sh)
//   KMX_AGENT_BIN       the built kmosix-agent (passed to scripts/cluster as KMOSIX_AGENT)
//   KMX_CONTROLLER_BIN  the built kmosix-controller (as KMOSIX_CONTROLLER); may be
//                       empty where the controller is not built
//   KMX_DEMO_IMAGE      where the demo image tarball is (built if missing)
// Each may be overridden at run time by the environment variable of the same
// name.
//
// The controllers are secure unless ClusterOptions::insecure: HTTPS with a
// certificate of the cluster's own CA and bearer tokens. The harness reads the
// CA and the tokens from `scripts/cluster env`; a ControllerProc is an
// Endpoint carrying the CA and the admin token, so every request made with it
// is authenticated (ReadOnlyToken() for read-only checks, CtlEnv() for a
// kmosixctl run).
//
// Thread-safety: Cluster is used from one thread; the free functions are
// thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
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

// Where a request goes: a base URL ("http://host:port" or "https://host:port")
// and, for a secure controller, the CA its certificate is checked against and
// the bearer token sent. A plain URL string converts to one without either.
struct Endpoint {
  std::string url;
  std::string ca_file;  // PEM CA bundle for https ("" : the system's CAs)
  std::string token;    // "Authorization: Bearer <token>" ("" : no header)

  Endpoint() = default;
  Endpoint(std::string u) : url(std::move(u)) {}  // NOLINT: implicit by design
  Endpoint(const char* u) : url(u) {}             // NOLINT: implicit by design
  Endpoint(std::string u, std::string ca, std::string tok)
      : url(std::move(u)), ca_file(std::move(ca)), token(std::move(tok)) {}
};

struct HttpReply {
  int status = 0;  // 0: no answer (see error)
  std::string body;
  std::string error;  // transport-level error (connection refused, timeout, ...)
  // The body as JSON; a JSON null if it is not JSON.
  nlohmann::json Json() const;
  // "HTTP 404 {...}" or "no answer: <error>", for failure messages.
  std::string Describe() const;
};

// base: where to (a URL or an Endpoint); path: "/v1/...". timeout bounds
// connect and read.
HttpReply HttpGet(const Endpoint& base, const std::string& path,
                  std::chrono::seconds timeout = std::chrono::seconds(10));
HttpReply HttpDelete(const Endpoint& base, const std::string& path,
                     std::chrono::seconds timeout = std::chrono::seconds(30));
HttpReply HttpPost(const Endpoint& base, const std::string& path, const nlohmann::json& body,
                   std::chrono::seconds timeout = std::chrono::seconds(30));
HttpReply HttpPut(const Endpoint& base, const std::string& path, const std::string& body = "",
                  std::chrono::seconds timeout = std::chrono::seconds(10));
// POST of a raw body (malformed JSON for bad-input tests).
HttpReply HttpPostText(const Endpoint& base, const std::string& path, const std::string& body,
                       const std::string& content_type = "application/json",
                       std::chrono::seconds timeout = std::chrono::seconds(30));

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

// --- teardown on signals (ctest's timeout, Ctrl-C) ---------------------------
// Installs SIGINT/SIGTERM handlers that, while armed, run `scripts/cluster
// down` before the process dies of the signal (so an interrupted run leaves no
// cluster behind). Call once; arm after the cluster is up, disarm after it was
// torn down (or when it must be kept).
void InstallDownOnSignal();
void ArmDownOnSignal(bool armed);

// --- the cluster ---------------------------------------------------------------

// A node; as an Endpoint, its agent: url "https://10.77.0.11:7700"
// ("http://..." with up --insecure), the cluster CA and the admin token the
// agents accept (scripts/cluster env: KMOSIX_AGENT_TOKEN).
struct Node : Endpoint {
  int index = 0;     // 1-based
  std::string name;  // "node1"
  std::string addr;  // "10.77.0.11"
  std::string sock;  // containerd socket
};

// One kmosix-controller of the cluster (on the host, at the bridge address).
// As an Endpoint: url "https://10.77.0.1:7800" ("http://..." when insecure),
// the cluster CA and the admin token.
struct ControllerProc : Endpoint {
  int index = 0;     // 1-based (scripts/cluster kill-controller J)
  std::string name;  // "controller1" (also its --id)
};

struct ClusterOptions {
  int nodes = 2;
  std::vector<std::string> agent_args;  // e.g. {"--enable-failpoints"}
  // etcd on the host, the agents publishing to it (--etcd ... --load-source
  // cgroup). Off: `up --no-etcd`, agents alone (the migration e2e).
  bool etcd = false;
  int controllers = 0;                       // with etcd; 0: none
  std::vector<std::string> controller_args;  // e.g. {"--min-residency", "5"}
  int node_cpus = 0;        // CPU capacity each agent declares (0: the script's default, 1)
  int node_memory_mib = 0;  // memory capacity each agent declares (0: default, 2048)
  // Use a cluster that is already up instead of failing; never tear it down.
  bool reuse = false;
  // Tear down in Down() (and the destructor) only what Up() brought up.
  bool keep = false;
  // `up --insecure`: controllers on plain HTTP without tokens.
  bool insecure = false;
  // `up --kube`: a real kube-apiserver with the CRDs; the controllers mirror
  // kmosix.io objects (needs etcd and controllers).
  bool kube = false;
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
  // "http://10.77.0.1:2379", empty without etcd.
  std::string EtcdUrl() const { return etcd_url_; }
  const std::vector<ControllerProc>& Controllers() const { return controllers_; }
  const ControllerProc& controller(int index) const { return controllers_.at(index - 1); }
  // The controllers' security, from `scripts/cluster env` (all empty when
  // they run --insecure): the CA file, the admin and the read-only token.
  bool Secure() const { return !admin_token_.empty(); }
  std::string CaFile() const { return ca_file_; }
  std::string AdminToken() const { return admin_token_; }
  std::string ReadOnlyToken() const { return readonly_token_; }
  // `c` with the read-only token instead of the admin one.
  Endpoint ReadOnly(const ControllerProc& c) const { return {c.url, ca_file_, readonly_token_}; }
  // The environment for a kmosixctl run against the cluster: KMOSIX_SERVER
  // (every controller URL, comma-separated), KMOSIX_TOKEN (admin) and
  // KMOSIX_CA_FILE (the last two empty when insecure).
  std::map<std::string, std::string> CtlEnv() const;
  // The controller that says it leads (GET /v1/leader on each; exactly one
  // must say so), else nullptr and *why (if given) says what each answered.
  const ControllerProc* Leader(std::string* why = nullptr) const;

  // Fault injection through scripts/cluster; each returns "" or an error
  // message with the script's output. Start* wait until the process answers.
  std::string KillAgent(int node_index) const;
  std::string StartAgent(int node_index) const;
  std::string KillController(int index) const;
  std::string StartController(int index) const;
  std::string KillEtcd() const;
  std::string StartEtcd() const;
  std::string RestartEtcd() const;       // SIGTERM, then start on the same data
  std::string RestartApiserver() const;  // with kube: SIGTERM, then start again
  // Node loss (issue 13): power loss of node i (agent, containerd, shims and
  // workloads SIGKILLed at once); boot it again on its old state (keep) or
  // wiped (the images imported again); DROP rules between node i and `peer`
  // ("etcd", "controllers" or another node's index); heal removes them (of
  // node i, or of every node with 0).
  std::string KillNode(int node_index) const;
  std::string StartNode(int node_index, bool keep) const;
  std::string Partition(int node_index, const std::string& peer) const;
  std::string Heal(int node_index = 0) const;

  // With kube: runs the cluster's kubectl (KUBECONFIG = the admin's) with
  // `args` (shell words, quoted by the caller), `stdin_text` on its stdin.
  CommandResult Kubectl(const std::string& args, const std::string& stdin_text = "") const;

  // containerd state of `name` on a node, through ctr.
  struct CtrView {
    bool container = false;
    std::string task_status;  // "" when there is no task; else ctr's STATUS (RUNNING, PAUSED...)
    std::string error;        // ctr failed
  };
  CtrView Ctr(const Node& n, const std::string& name) const;

  // Last lines of a node's agent log, for failure messages.
  std::string AgentLogTail(const Node& n, int lines = 30) const;
  std::string ControllerLogTail(const ControllerProc& c, int lines = 30) const;
  std::string EtcdLogTail(int lines = 30) const;

  static std::string RepoDir();
  static std::string AgentBinary();
  static std::string ControllerBinary();
  static std::string DemoImagePath();

 private:
  std::string ReadLayout();
  std::string Script(const std::string& args) const;

  ClusterOptions options_;
  bool brought_up_ = false;
  std::vector<Node> nodes_;
  std::vector<ControllerProc> controllers_;
  std::string etcd_url_;
  std::string bridge_addr_;
  std::string ca_file_, admin_token_, readonly_token_;
  std::string agent_token_;  // the admin token the agents accept (KMOSIX_AGENT_TOKEN)
  std::string kubeconfig_, kube_bin_dir_;
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

// --- the controller's REST API (any replica serves it) ------------------------------

// A body for the controller's POST /v1/workloads running the demo:
// {"name","image":demo,"args","env":{},"migratable":true} plus "node" when given.
nlohmann::json DemoWorkloadSpec(const std::string& name, const std::vector<std::string>& extra,
                                const std::string& node = "");
// GET base+path and its "items" array; std::nullopt (and *error set) when the
// GET fails or the body has no items array.
std::optional<nlohmann::json> GetItems(const Endpoint& base, const std::string& path,
                                       std::string* error);
// GET base+path as a JSON object (200 only); std::nullopt and *error otherwise.
std::optional<nlohmann::json> GetObject(const Endpoint& base, const std::string& path,
                                        std::string* error);
// A workload's logs through any server of GET /v1/workloads/{name}/logs (an
// agent or a controller, which proxies to the owner).
std::optional<DemoLog> FetchLogFrom(const Endpoint& base, const std::string& name,
                                    std::string* error);
WaitResult WaitForTickAt(const Endpoint& base, const std::string& name, uint64_t tick,
                         std::chrono::milliseconds timeout);
// Empty if the reply is an API error as the controller must give it: a 4xx
// status and a JSON object with string "code" and "message"; else what is wrong.
std::string CheckApiError(const HttpReply& r);

}  // namespace kmosix::e2e
