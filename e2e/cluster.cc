#include "cluster.h"

#include <httplib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <sstream>
#include <thread>

#ifndef KMX_REPO_DIR
#error "KMX_REPO_DIR must be defined (see e2e/CMakeLists.txt)"
#endif
#ifndef KMX_AGENT_BIN
#error "KMX_AGENT_BIN must be defined (see e2e/CMakeLists.txt)"
#endif
#ifndef KMX_DEMO_IMAGE
#error "KMX_DEMO_IMAGE must be defined (see e2e/CMakeLists.txt)"
#endif
#ifndef KMX_CONTROLLER_BIN
#define KMX_CONTROLLER_BIN ""
#endif

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using Millis = std::chrono::milliseconds;

// The PATH the cluster's daemons get (scripts/cluster DAEMON_PATH): runc finds
// criu through it, so the capability check must look at the same criu.
constexpr char kDaemonPath[] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : fallback;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string Excerpt(const std::string& s, size_t max = 600) {
  if (s.size() <= max) return s;
  return s.substr(0, max) + "...(" + std::to_string(s.size()) + " bytes)";
}

std::string ClusterScript() { return ShellQuote(Cluster::RepoDir() + "/scripts/cluster"); }

httplib::Client MakeClient(const Endpoint& base, std::chrono::seconds timeout) {
  // An https client writes its TLS close_notify after the answer; a server
  // that already closed (it answered 401/403/413 without reading the body)
  // makes that write fail with EPIPE, which must not kill the process.
  ::signal(SIGPIPE, SIG_IGN);
  httplib::Client cli(base.url);
  cli.set_connection_timeout(std::min<time_t>(timeout.count(), 5), 0);
  cli.set_read_timeout(timeout.count(), 0);
  cli.set_write_timeout(timeout.count(), 0);
  cli.set_keep_alive(false);
  if (!base.ca_file.empty()) cli.set_ca_cert_path(base.ca_file.c_str());
  cli.enable_server_certificate_verification(true);
  if (!base.token.empty()) cli.set_bearer_token_auth(base.token.c_str());
  return cli;
}

// The value of a line "[export ]NAME=VALUE" as a shell reads it: plain
// characters, '...' quoted parts and backslash escapes (what scripts/cluster
// env prints).
std::string ShellUnquote(const std::string& v) {
  std::string out;
  bool quoted = false;
  for (size_t i = 0; i < v.size(); ++i) {
    const char c = v[i];
    if (quoted) {
      if (c == '\'') {
        quoted = false;
      } else {
        out += c;
      }
    } else if (c == '\'') {
      quoted = true;
    } else if (c == '\\' && i + 1 < v.size()) {
      out += v[++i];
    } else {
      out += c;
    }
  }
  return out;
}

HttpReply FromResult(const httplib::Result& res) {
  HttpReply r;
  if (!res) {
    r.error = httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.body = res->body;
  return r;
}

// Parses "key=value" fields of a line into (key, value) pairs.
std::vector<std::pair<std::string, std::string>> Fields(const std::string& line) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(line);
  std::string word;
  while (in >> word) {
    auto eq = word.find('=');
    if (eq == std::string::npos) continue;
    out.emplace_back(word.substr(0, eq), word.substr(eq + 1));
  }
  return out;
}

bool ToInt(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  out = v;
  return true;
}

std::optional<ChildTick> ParseChildLine(const std::string& line) {
  ChildTick c;
  bool have_tick = false, have_t = false, have_pid = false;
  for (const auto& [k, v] : Fields(line)) {
    int64_t x = 0;
    if (!ToInt(v, x)) return std::nullopt;
    if (k == "child_tick") {
      c.tick = static_cast<uint64_t>(x);
      have_tick = true;
    } else if (k == "t_ms") {
      c.t_ms = x;
      have_t = true;
    } else if (k == "pid") {
      c.pid = x;
      have_pid = true;
    }
  }
  if (!have_tick || !have_t || !have_pid) return std::nullopt;
  return c;
}

}  // namespace

// --- processes ------------------------------------------------------------------

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

CommandResult RunCommand(const std::string& command) {
  CommandResult r;
  std::string full = "( " + command + " ) 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (p == nullptr) {
    r.output = "popen failed: " + std::string(std::strerror(errno));
    return r;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = ::pclose(p);
  if (st != -1 && WIFEXITED(st)) r.exit_code = WEXITSTATUS(st);
  return r;
}

// --- HTTP -------------------------------------------------------------------------

json HttpReply::Json() const {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? json() : j;
}

std::string HttpReply::Describe() const {
  if (status == 0) return "no answer: " + error;
  return "HTTP " + std::to_string(status) + " " + Excerpt(Trim(body));
}

HttpReply HttpGet(const Endpoint& base, const std::string& path, std::chrono::seconds timeout) {
  auto cli = MakeClient(base, timeout);
  return FromResult(cli.Get(path));
}

HttpReply HttpDelete(const Endpoint& base, const std::string& path, std::chrono::seconds timeout) {
  auto cli = MakeClient(base, timeout);
  return FromResult(cli.Delete(path));
}

HttpReply HttpPost(const Endpoint& base, const std::string& path, const json& body,
                   std::chrono::seconds timeout) {
  auto cli = MakeClient(base, timeout);
  return FromResult(cli.Post(path, body.dump(), "application/json"));
}

HttpReply HttpPut(const Endpoint& base, const std::string& path, const std::string& body,
                  std::chrono::seconds timeout) {
  auto cli = MakeClient(base, timeout);
  return FromResult(cli.Put(path, body, "application/json"));
}

HttpReply HttpPostText(const Endpoint& base, const std::string& path, const std::string& body,
                       const std::string& content_type, std::chrono::seconds timeout) {
  auto cli = MakeClient(base, timeout);
  return FromResult(cli.Post(path, body, content_type));
}

// --- the demo's log ------------------------------------------------------------------

std::optional<Tick> ParseTickLine(const std::string& line) {
  if (line.rfind("tick=", 0) != 0) return std::nullopt;
  Tick t;
  int seen = 0;
  for (const auto& [k, v] : Fields(line)) {
    int64_t x = 0;
    if (!ToInt(v, x)) return std::nullopt;
    if (k == "tick") {
      if (x < 0) return std::nullopt;
      t.tick = static_cast<uint64_t>(x);
    } else if (k == "t_ms") {
      t.t_ms = x;
    } else if (k == "mem_ok") {
      t.mem_ok = static_cast<int>(x);
    } else if (k == "mem_mib") {
      t.mem_mib = x;
    } else if (k == "mem_passes") {
      t.mem_passes = x;
    } else if (k == "child_tick") {
      t.child_tick = x;
    } else if (k == "child_alive") {
      t.child_alive = static_cast<int>(x);
    } else if (k == "file_ok") {
      t.file_ok = static_cast<int>(x);
    } else if (k == "rootfs_ok") {
      t.rootfs_ok = static_cast<int>(x);
    } else if (k == "pid") {
      t.pid = x;
    } else {
      continue;
    }
    ++seen;
  }
  if (seen != 10) return std::nullopt;  // all ten fields, or a torn line
  return t;
}

DemoLog ParseDemoLog(const std::string& text) {
  DemoLog log;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;  // a half-written last line
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.rfind("tick=", 0) == 0) {
      if (auto t = ParseTickLine(line)) {
        log.ticks.push_back(*t);
      } else {
        ++log.malformed_lines;
      }
    } else if (line.rfind("child_tick=", 0) == 0) {
      if (auto c = ParseChildLine(line)) {
        log.child_ticks.push_back(*c);
      } else {
        ++log.malformed_lines;
      }
    } else if (line.rfind("demo: start", 0) == 0) {
      ++log.start_lines;
    } else if (line.rfind("demo: MEMORY CORRUPTION", 0) == 0) {
      ++log.corruption_lines;
    }
  }
  return log;
}

template <typename T>
static std::string CheckConsecutiveImpl(const std::vector<T>& ticks, const char* what) {
  for (size_t i = 1; i < ticks.size(); ++i) {
    if (ticks[i].tick != ticks[i - 1].tick + 1) {
      return std::string(what) + " " + std::to_string(ticks[i - 1].tick) + " (t_ms " +
             std::to_string(ticks[i - 1].t_ms) + ") followed by " + what + " " +
             std::to_string(ticks[i].tick) + " (t_ms " + std::to_string(ticks[i].t_ms) +
             ") at index " + std::to_string(i) + " of " + std::to_string(ticks.size());
    }
  }
  return "";
}

std::string CheckConsecutive(const std::vector<Tick>& ticks) {
  return CheckConsecutiveImpl(ticks, "tick");
}
std::string CheckConsecutive(const std::vector<ChildTick>& ticks) {
  return CheckConsecutiveImpl(ticks, "child_tick");
}

Gap MaxGap(const std::vector<Tick>& ticks, uint64_t from_tick) {
  Gap g;
  for (size_t i = 1; i < ticks.size(); ++i) {
    if (ticks[i - 1].tick < from_tick) continue;
    int64_t d = ticks[i].t_ms - ticks[i - 1].t_ms;
    if (d > g.ms) {
      g.ms = d;
      g.after_tick = ticks[i - 1].tick;
    }
  }
  return g;
}

// --- waiting ---------------------------------------------------------------------------

WaitResult WaitFor(const std::string& what, Millis timeout,
                   const std::function<Observation()>& probe, Millis interval) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  std::deque<std::string> seen;  // distinct consecutive observations
  size_t dropped = 0, polls = 0;
  while (true) {
    Observation o = probe();
    ++polls;
    if (o.done) return {true, ""};
    if (seen.empty() || seen.back() != o.seen) {
      seen.push_back(o.seen);
      if (seen.size() > 8) {
        seen.pop_front();
        ++dropped;
      }
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(interval);
  }
  auto waited =
      std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - start).count();
  std::string msg = "timed out after " + std::to_string(waited) + " ms (" + std::to_string(polls) +
                    " polls) waiting for: " + what + "\n  observed";
  if (dropped > 0) msg += " (last " + std::to_string(seen.size()) + " distinct)";
  msg += ":";
  for (const auto& s : seen) msg += "\n    - " + s;
  return {false, msg};
}

// --- the cluster -------------------------------------------------------------------

std::string Cluster::RepoDir() { return EnvOr("KMX_REPO_DIR", KMX_REPO_DIR); }
std::string Cluster::AgentBinary() { return EnvOr("KMX_AGENT_BIN", KMX_AGENT_BIN); }
std::string Cluster::ControllerBinary() { return EnvOr("KMX_CONTROLLER_BIN", KMX_CONTROLLER_BIN); }
std::string Cluster::DemoImagePath() { return EnvOr("KMX_DEMO_IMAGE", KMX_DEMO_IMAGE); }

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {}

Cluster::~Cluster() { (void)Down(); }

std::string Cluster::MissingCapability() {
  if (::geteuid() != 0) {
    return "not running as root (the cluster needs network namespaces, containerd, runc, CRIU)";
  }
  for (const char* tool : {"ip", "nsenter", "unshare", "ctr", "containerd", "runc", "criu", "curl",
                           "python3", "tar", "gcc"}) {
    auto r = RunCommand(std::string("PATH=") + kDaemonPath + " command -v " + tool);
    if (r.exit_code != 0) return std::string(tool) + " not found on PATH";
  }
  if (!std::filesystem::exists("/bin/busybox") && !std::filesystem::exists("/usr/bin/busybox") &&
      std::getenv("BUSYBOX") == nullptr) {
    return "busybox (busybox-static) not found: the demo image cannot be built";
  }
  auto criu = RunCommand(std::string("PATH=") + kDaemonPath + " criu check");
  if (criu.exit_code != 0) {
    return "`criu check` fails (checkpoint/restore cannot work here): " +
           Excerpt(Trim(criu.output));
  }
  auto netns = RunCommand("unshare --net -- ip link show lo");
  if (netns.exit_code != 0) {
    return "cannot create network namespaces (unshare --net): " + Excerpt(Trim(netns.output));
  }
  return "";
}

std::string Cluster::Up() {
  std::string agent = AgentBinary();
  if (::access(agent.c_str(), X_OK) != 0) {
    return "agent binary " + agent + " is missing or not executable (build target kmosix-agent)";
  }
  std::string controller = ControllerBinary();
  if (options_.etcd && options_.controllers > 0 &&
      (controller.empty() || ::access(controller.c_str(), X_OK) != 0)) {
    return "controller binary " + (controller.empty() ? std::string("(not built)") : controller) +
           " is missing or not executable (build target kmosix-controller)";
  }
  std::string image = DemoImagePath();
  auto built =
      RunCommand(ShellQuote(RepoDir() + "/images/demo/build.sh") + " " + ShellQuote(image));
  if (built.exit_code != 0 || !std::filesystem::exists(image)) {
    return "building the demo image " + image + " failed:\n" + built.output;
  }

  auto status = RunCommand(ClusterScript() + " status");
  if (status.exit_code != 4) {  // 4: not up
    if (!options_.reuse) {
      return "a kmosix cluster is already up (or left over) on this machine:\n" + status.output +
             "run `scripts/cluster down` first (or reuse it where that is an option)";
    }
    if (status.exit_code != 0) return "the running cluster is unhealthy:\n" + status.output;
  } else {
    std::string cmd = "KMOSIX_AGENT=" + ShellQuote(agent);
    if (!controller.empty()) cmd += " KMOSIX_CONTROLLER=" + ShellQuote(controller);
    if (options_.node_cpus > 0) cmd += " KMOSIX_NODE_CPUS=" + std::to_string(options_.node_cpus);
    if (options_.node_memory_mib > 0) {
      cmd += " KMOSIX_NODE_MEMORY_MIB=" + std::to_string(options_.node_memory_mib);
    }
    cmd += " " + ClusterScript() + " up --nodes " + std::to_string(options_.nodes);
    for (const auto& a : options_.agent_args) cmd += " --agent-arg " + ShellQuote(a);
    if (!options_.etcd) {
      cmd += " --no-etcd";
    } else if (options_.controllers <= 0) {
      cmd += " --no-controllers";
    } else {
      cmd += " --controllers " + std::to_string(options_.controllers);
      for (const auto& a : options_.controller_args) cmd += " --controller-arg " + ShellQuote(a);
      if (options_.insecure) cmd += " --insecure";
      if (options_.kube) cmd += " --kube";
    }
    brought_up_ = true;  // whatever happens now, Down() cleans up
    auto up = RunCommand(cmd);
    if (up.exit_code != 0) {
      std::string err =
          "`" + cmd + "` failed (exit " + std::to_string(up.exit_code) + "):\n" + up.output;
      std::string down = Down();
      if (!down.empty()) err += "\nand the teardown failed too:\n" + down;
      return err;
    }
  }
  if (std::string err = ReadLayout(); !err.empty()) return err;
  if (static_cast<int>(nodes_.size()) < options_.nodes) {
    return "the cluster has " + std::to_string(nodes_.size()) + " nodes, " +
           std::to_string(options_.nodes) + " needed";
  }
  if (options_.etcd && etcd_url_.empty()) return "the cluster runs without etcd; etcd needed";
  if (options_.etcd && static_cast<int>(controllers_.size()) < options_.controllers) {
    return "the cluster has " + std::to_string(controllers_.size()) + " controllers, " +
           std::to_string(options_.controllers) + " needed";
  }
  for (const auto& a : options_.agent_args) {
    if (a != "--enable-failpoints") continue;
    for (const auto& n : nodes_) {
      auto r = HttpGet(n, "/v1/debug/failpoints");
      if (r.status != 200) {
        return n.name + " does not serve /v1/debug/failpoints (agent without " +
               "--enable-failpoints?): " + r.Describe();
      }
    }
  }
  auto imp = RunCommand(ClusterScript() + " import " + ShellQuote(image));
  if (imp.exit_code != 0) return "scripts/cluster import " + image + " failed:\n" + imp.output;
  return "";
}

std::string Cluster::ReadLayout() {
  auto st = RunCommand(ClusterScript() + " status --json");
  json j = json::parse(st.output, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.value("up", false)) {
    return "scripts/cluster status --json (exit " + std::to_string(st.exit_code) +
           ") said: " + st.output;
  }
  try {
    nodes_.clear();
    bridge_addr_ = j.at("bridge_address").get<std::string>();
    data_dir_ = j.at("data_dir").get<std::string>();
    int i = 0;
    for (const auto& n : j.at("nodes")) {
      Node node;
      node.index = ++i;
      node.name = n.at("name").get<std::string>();
      node.addr = n.at("address").get<std::string>();
      node.url = n.at("agent_url").get<std::string>();
      node.sock = n.at("containerd_socket").get<std::string>();
      nodes_.push_back(node);
    }
    etcd_url_.clear();
    controllers_.clear();
    if (j.contains("etcd") && j["etcd"].is_object()) {
      etcd_url_ = j["etcd"].at("url").get<std::string>();
    }
    if (j.contains("controllers") && j["controllers"].is_array()) {
      int k = 0;
      for (const auto& c : j["controllers"]) {
        ControllerProc p;
        p.index = ++k;
        p.name = c.at("name").get<std::string>();
        p.url = c.at("url").get<std::string>();
        controllers_.push_back(p);
      }
    }
  } catch (const json::exception& e) {
    return std::string("unexpected scripts/cluster status --json: ") + e.what() + ": " + st.output;
  }
  // The controllers' CA and tokens (empty when they run --insecure).
  ca_file_.clear();
  admin_token_.clear();
  readonly_token_.clear();
  const bool agents_https = !nodes_.empty() && nodes_.front().url.rfind("https://", 0) == 0;
  if (!controllers_.empty() || agents_https) {
    auto env = RunCommand(ClusterScript() + " env 2>/dev/null");
    if (env.exit_code != 0) {
      return "scripts/cluster env (exit " + std::to_string(env.exit_code) + ") said: " + env.output;
    }
    std::istringstream in(env.output);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("export ", 0) == 0) line = line.substr(7);
      auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      const std::string key = line.substr(0, eq), value = ShellUnquote(line.substr(eq + 1));
      if (key == "KMOSIX_CA_FILE") ca_file_ = value;
      if (key == "KMOSIX_TOKEN") admin_token_ = value;
      if (key == "KMOSIX_READONLY_TOKEN") readonly_token_ = value;
      if (key == "KMOSIX_AGENT_TOKEN") agent_token_ = value;
      if (key == "KUBECONFIG") kubeconfig_ = value;
      if (key == "KMX_KUBE_BIN_DIR") kube_bin_dir_ = value;
    }
    if (options_.kube && (kubeconfig_.empty() || kube_bin_dir_.empty())) {
      return "up --kube, but scripts/cluster env gave no KUBECONFIG or KMX_KUBE_BIN_DIR:\n" +
             env.output;
    }
    if (agents_https && (ca_file_.empty() || agent_token_.empty())) {
      return "the agents serve https but scripts/cluster env gave no CA file or agent token:\n" +
             env.output;
    }
    for (auto& n : nodes_) {
      n.ca_file = ca_file_;
      n.token = agent_token_;
    }
    const bool https = !controllers_.empty() && controllers_.front().url.rfind("https://", 0) == 0;
    if (https && (ca_file_.empty() || admin_token_.empty() || readonly_token_.empty())) {
      return "the controllers serve https but scripts/cluster env gave no CA file or tokens:\n" +
             env.output;
    }
    for (auto& c : controllers_) {
      c.ca_file = ca_file_;
      c.token = admin_token_;
    }
  }
  return "";
}

std::map<std::string, std::string> Cluster::CtlEnv() const {
  std::string servers;
  for (const auto& c : controllers_) servers += (servers.empty() ? "" : ",") + c.url;
  return {{"KMOSIX_SERVER", servers}, {"KMOSIX_TOKEN", admin_token_}, {"KMOSIX_CA_FILE", ca_file_}};
}

std::string Cluster::Down() {
  if (!brought_up_ || options_.keep) return "";
  brought_up_ = false;
  auto r = RunCommand(ClusterScript() + " down");
  if (r.exit_code != 0) return "scripts/cluster down failed:\n" + r.output;
  return "";
}

Cluster::CtrView Cluster::Ctr(const Node& n, const std::string& name) const {
  CtrView v;
  std::string base = "ctr -a " + ShellQuote(n.sock) + " -n " + kNamespace;
  auto cs = RunCommand("timeout 20 " + base + " containers ls -q");
  if (cs.exit_code != 0) {
    v.error = "ctr containers ls: " + Trim(cs.output);
    return v;
  }
  std::istringstream cin(cs.output);
  for (std::string line; std::getline(cin, line);) {
    if (Trim(line) == name) v.container = true;
  }
  auto ts = RunCommand("timeout 20 " + base + " tasks ls");
  if (ts.exit_code != 0) {
    v.error = "ctr tasks ls: " + Trim(ts.output);
    return v;
  }
  std::istringstream tin(ts.output);
  for (std::string line; std::getline(tin, line);) {
    std::istringstream words(line);
    std::string id, pid, status;
    if (words >> id >> pid >> status && id == name) v.task_status = status;
  }
  return v;
}

std::string Cluster::AgentLogTail(const Node& n, int lines) const {
  std::string path = LogsDir() + "/" + n.name + "-agent.log";
  auto r = RunCommand("tail -n " + std::to_string(lines) + " " + ShellQuote(path));
  return "--- " + path + " (last " + std::to_string(lines) + " lines) ---\n" + r.output;
}

std::string Cluster::ControllerLogTail(const ControllerProc& c, int lines) const {
  std::string path = LogsDir() + "/" + c.name + ".log";
  auto r = RunCommand("tail -n " + std::to_string(lines) + " " + ShellQuote(path));
  return "--- " + path + " (last " + std::to_string(lines) + " lines) ---\n" + r.output;
}

std::string Cluster::EtcdLogTail(int lines) const {
  std::string path = LogsDir() + "/etcd.log";
  auto r = RunCommand("tail -n " + std::to_string(lines) + " " + ShellQuote(path));
  return "--- " + path + " (last " + std::to_string(lines) + " lines) ---\n" + r.output;
}

const ControllerProc* Cluster::Leader(std::string* why) const {
  const ControllerProc* leader = nullptr;
  int leaders = 0;
  std::string seen;
  for (const auto& c : controllers_) {
    auto r = HttpGet(c, "/v1/leader", std::chrono::seconds(3));
    json j = r.Json();
    bool leads = r.status == 200 && j.is_object() && j.contains("isLeader") &&
                 j["isLeader"].is_boolean() && j["isLeader"].get<bool>();
    if (leads) {
      leader = &c;
      ++leaders;
    }
    seen += c.name + ": " + r.Describe() + "; ";
  }
  if (leaders == 1) return leader;
  if (why != nullptr) *why = std::to_string(leaders) + " leaders: " + seen;
  return nullptr;
}

std::string Cluster::Script(const std::string& args) const {
  auto r = RunCommand(ClusterScript() + " " + args);
  if (r.exit_code == 0) return "";
  return "scripts/cluster " + args + " failed (exit " + std::to_string(r.exit_code) + "):\n" +
         r.output;
}

std::string Cluster::KillAgent(int i) const { return Script("kill-agent " + std::to_string(i)); }
std::string Cluster::StartAgent(int i) const { return Script("start-agent " + std::to_string(i)); }
std::string Cluster::KillController(int j) const {
  return Script("kill-controller " + std::to_string(j));
}
std::string Cluster::StartController(int j) const {
  return Script("start-controller " + std::to_string(j));
}
std::string Cluster::KillEtcd() const { return Script("kill-etcd"); }
std::string Cluster::RestartApiserver() const { return Script("restart-apiserver"); }

CommandResult Cluster::Kubectl(const std::string& args, const std::string& stdin_text) const {
  std::string cmd = "KUBECONFIG=" + ShellQuote(kubeconfig_) + " " +
                    ShellQuote(kube_bin_dir_ + "/kubectl") + " " + args;
  if (!stdin_text.empty()) cmd = "printf '%s' " + ShellQuote(stdin_text) + " | " + cmd;
  return RunCommand(cmd);
}
std::string Cluster::StartEtcd() const { return Script("start-etcd"); }
std::string Cluster::RestartEtcd() const { return Script("restart-etcd"); }
std::string Cluster::KillNode(int i) const { return Script("kill-node " + std::to_string(i)); }
std::string Cluster::StartNode(int i, bool keep) const {
  return Script("start-node " + std::to_string(i) + (keep ? " --keep" : " --empty"));
}
std::string Cluster::Partition(int i, const std::string& peer) const {
  return Script("partition " + std::to_string(i) + " " + ShellQuote(peer));
}
std::string Cluster::Heal(int i) const {
  return Script(i > 0 ? "heal " + std::to_string(i) : std::string("heal"));
}

// --- workloads -------------------------------------------------------------------------

json DemoArgs(const std::vector<std::string>& extra) {
  json args = json::array({"/bin/kmosix-demo"});
  for (const auto& a : extra) args.push_back(a);
  return args;
}

std::string CreateDemo(const Node& n, const std::string& name,
                       const std::vector<std::string>& extra) {
  json body = {{"name", name},
               {"image", Cluster::kDemoImage},
               {"args", DemoArgs(extra)},
               {"env", json::object()}};
  auto r = HttpPost(n, "/v1/workloads", body, std::chrono::seconds(60));
  if (r.status != 201) return "POST /v1/workloads on " + n.name + ": " + r.Describe();
  return "";
}

std::optional<DemoLog> FetchLog(const Node& n, const std::string& name, std::string* error) {
  auto r = HttpGet(n, "/v1/workloads/" + name + "/logs");
  if (r.status != 200) {
    if (error != nullptr) *error = "GET logs of " + name + " on " + n.name + ": " + r.Describe();
    return std::nullopt;
  }
  return ParseDemoLog(r.body);
}

std::optional<DemoLog> FetchLogFrom(const Endpoint& base, const std::string& name,
                                    std::string* error) {
  auto r = HttpGet(base, "/v1/workloads/" + name + "/logs", std::chrono::seconds(20));
  if (r.status != 200) {
    if (error != nullptr)
      *error = "GET " + base.url + "/v1/workloads/" + name + "/logs: " + r.Describe();
    return std::nullopt;
  }
  return ParseDemoLog(r.body);
}

WaitResult WaitForTickAt(const Endpoint& base, const std::string& name, uint64_t tick,
                         Millis timeout) {
  return WaitFor(
      name + " (logs through " + base.url + ") to reach tick " + std::to_string(tick), timeout,
      [&]() -> Observation {
        std::string err;
        auto log = FetchLogFrom(base, name, &err);
        if (!log) return {false, err};
        if (log->ticks.empty()) return {false, "no tick lines yet"};
        const Tick& last = log->ticks.back();
        return {last.tick >= tick, "last tick=" + std::to_string(last.tick) + " (" +
                                       std::to_string(log->ticks.size()) + " tick lines)"};
      },
      Millis(500));
}

WaitResult WaitForTick(const Node& n, const std::string& name, uint64_t tick, Millis timeout) {
  return WaitFor(name + " on " + n.name + " to reach tick " + std::to_string(tick), timeout,
                 [&]() -> Observation {
                   std::string err;
                   auto log = FetchLog(n, name, &err);
                   if (!log) return {false, err};
                   if (log->ticks.empty()) return {false, "no tick lines yet"};
                   const Tick& last = log->ticks.back();
                   return {last.tick >= tick, "last tick=" + std::to_string(last.tick) + " (" +
                                                  std::to_string(log->ticks.size()) +
                                                  " tick lines)"};
                 });
}

std::string CheckRunsExactlyOn(const Cluster& c, const std::string& name, const Node& owner) {
  std::string problems;
  auto add = [&](const Node& n, const std::string& p) { problems += n.name + ": " + p + "\n"; };
  for (const auto& n : c.Nodes()) {
    bool is_owner = n.index == owner.index;
    auto r = HttpGet(n, "/v1/workloads/" + name);
    if (is_owner) {
      json j = r.Json();
      if (r.status != 200) {
        add(n, "agent: expected the workload, got " + r.Describe());
      } else if (j.value("state", "") != "running" || j.value("task", "") != "running" ||
                 j.value("node", "") != n.name) {
        add(n,
            "agent: expected state=running task=running node=" + n.name + ", got " + r.Describe());
      }
    } else if (r.status != 404) {
      add(n, "agent: expected 404 (not here), got " + r.Describe());
    }
    auto v = c.Ctr(n, name);
    if (!v.error.empty()) {
      add(n, "containerd: " + v.error);
    } else if (is_owner) {
      if (!v.container) add(n, "containerd: no container " + name);
      if (v.task_status != "RUNNING") {
        add(n, "containerd: task status '" + v.task_status + "', expected RUNNING");
      }
    } else {
      if (v.container) add(n, "containerd: container " + name + " exists (should be gone)");
      if (!v.task_status.empty()) add(n, "containerd: task " + name + " is " + v.task_status);
    }
  }
  return problems;
}

std::string CheckGoneEverywhere(const Cluster& c, const std::string& name) {
  std::string problems;
  for (const auto& n : c.Nodes()) {
    auto r = HttpGet(n, "/v1/workloads/" + name);
    if (r.status != 404) problems += n.name + ": agent: expected 404, got " + r.Describe() + "\n";
    auto v = c.Ctr(n, name);
    if (!v.error.empty()) problems += n.name + ": containerd: " + v.error + "\n";
    if (v.container) problems += n.name + ": containerd: container " + name + " still exists\n";
    if (!v.task_status.empty()) {
      problems += n.name + ": containerd: task " + name + " is " + v.task_status + "\n";
    }
  }
  return problems;
}

}  // namespace kmosix::e2e

namespace kmosix::e2e {

// --- the controller's REST API ---------------------------------------------------------

json DemoWorkloadSpec(const std::string& name, const std::vector<std::string>& extra,
                      const std::string& node) {
  json body = {{"name", name},
               {"image", Cluster::kDemoImage},
               {"args", DemoArgs(extra)},
               {"env", json::object()},
               {"migratable", true}};
  if (!node.empty()) body["node"] = node;
  return body;
}

std::optional<json> GetObject(const Endpoint& base, const std::string& path, std::string* error) {
  auto r = HttpGet(base, path, std::chrono::seconds(10));
  json j = r.Json();
  if (r.status != 200 || !j.is_object()) {
    if (error != nullptr) *error = "GET " + base.url + path + ": " + r.Describe();
    return std::nullopt;
  }
  return j;
}

std::optional<json> GetItems(const Endpoint& base, const std::string& path, std::string* error) {
  auto j = GetObject(base, path, error);
  if (!j) return std::nullopt;
  if (!j->contains("items") || !(*j)["items"].is_array()) {
    if (error != nullptr)
      *error = "GET " + base.url + path + ": no items array: " + Excerpt(j->dump());
    return std::nullopt;
  }
  return (*j)["items"];
}

std::string CheckApiError(const HttpReply& r) {
  if (r.status < 400 || r.status > 499) return "expected a 4xx status, got " + r.Describe();
  json j = r.Json();
  if (!j.is_object()) return "the error body is not a JSON object: " + r.Describe();
  if (!j.contains("code") || !j["code"].is_string() || j["code"].get<std::string>().empty()) {
    return "the error body has no string \"code\": " + r.Describe();
  }
  if (!j.contains("message") || !j["message"].is_string() ||
      j["message"].get<std::string>().empty()) {
    return "the error body has no string \"message\": " + r.Describe();
  }
  return "";
}

// --- teardown on signals -----------------------------------------------------

namespace {
volatile sig_atomic_t g_down_armed = 0;
const char* g_down_script = nullptr;  // points into a string that lives forever

void DownOnSignal(int sig) {
  if (g_down_armed != 0 && g_down_script != nullptr) {
    pid_t p = ::fork();
    if (p == 0) {
      ::execl("/bin/bash", "bash", g_down_script, "down", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (p > 0) ::waitpid(p, nullptr, 0);
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}
}  // namespace

void InstallDownOnSignal() {
  static const std::string script = Cluster::RepoDir() + "/scripts/cluster";
  g_down_script = script.c_str();
  ::signal(SIGINT, DownOnSignal);
  ::signal(SIGTERM, DownOnSignal);
}

void ArmDownOnSignal(bool armed) { g_down_armed = armed ? 1 : 0; }

}  // namespace kmosix::e2e
