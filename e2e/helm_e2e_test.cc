// The chart end to end (issue 12): charts/kmosix installed with helm on a
// real Kubernetes on this machine (scripts/kube up --nodes 2: kubelets in
// network namespaces, containerd, runc and the host's CRIU per node; the
// kmosix images built by scripts/images from this build directory and
// imported by `up`), as a user would, then used, upgraded and uninstalled:
//   a. helm install --wait with the chart's defaults (the namespace labelled
//      privileged, as the chart README says): both agents Ready, both nodes
//      Ready in the controllers' API, reached as NOTES.txt says (kubectl
//      port-forward, the CA and admin token from the chart's Secrets);
//   b. a MigratableWorkload (the demo counter) runs; a Migration moves it to
//      the other node with its state intact (counter continues, one start,
//      memory verified);
//   d. helm upgrade changing the agents' pod template (log level and
//      agent.extraArgs --load-source=cgroup --cpu-capacity=1: on one machine
//      every node sees the whole host's load, so the balancer needs each
//      node's own cgroup) rolls the agents one node at a time (never both not
//      Ready), and the running workload keeps its task (same pid), epoch and
//      counter;
//   c. (after d, which gives the balancer per-node loads) four CPU-bound
//      workloads on one node are spread by the balancer (it moves at least
//      one off, by policy, and settles; both nodes share this machine's
//      CPUs, so the measured loads can be even with three left on node1);
//   e. the secured plane holds: an agent's API without a token -> 401, its
//      peer route without a client certificate -> 401, etcd refuses a client
//      without a certificate (and serves its root's);
//   e2. each agent's identity is a pod certificate the controllers' signer
//      (kmosix.io/node) issued: it serves CN=<its node>, O=kmosix:nodes from
//      the node issuer; no Secret holds node keys; pods that are not agents
//      (another namespace, another ServiceAccount) are denied and never start;
//   f. helm uninstall removes every kmosix pod and every object of the
//      release, keeps the CRDs, the MigratableWorkloads and etcd's PVC, and
//      leaves running workloads running in containerd (unmanaged), as the
//      chart README says.
// Needs root, the kube tools (scripts/kube-tools: kubelet..., kubectl, helm),
// containerd, CRIU: a missing one FAILS the test (never a silent skip).
// Every failure prints the relevant kubectl describe / logs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "cluster.h"

#ifndef KMX_REPO_DIR
#error KMX_REPO_DIR must be defined
#endif
#ifndef KMX_BUILD_DIR
#error KMX_BUILD_DIR must be defined
#endif

namespace kmosix::e2e {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

const std::string kRepo = KMX_REPO_DIR;
const std::string kNs = "kmosix";
const std::string kNode1 = "kube-node1";
const std::string kNode2 = "kube-node2";
const std::string kDemoImage = "kmosix.local/demo:latest";
const std::vector<std::string> kLight = {"--mem", "16", "--verify-mib", "4"};
const std::vector<std::string> kCpuBound = {"--mem", "128",           "--verify-mib",
                                            "0",     "--interval-ms", "1"};
constexpr milliseconds kRunning{90'000};
constexpr milliseconds kMigration{120'000};
constexpr int kPortForwardPort = 17800;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

json WorkloadObject(const std::string& name, const std::vector<std::string>& args,
                    const std::string& node) {
  json command = json::array({"/bin/kmosix-demo"});
  for (const auto& a : args) command.push_back(a);
  json spec = {{"image", kDemoImage}, {"command", command}, {"nodeName", node}};
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "MigratableWorkload"},
          {"metadata", {{"name", name}, {"namespace", "default"}}},
          {"spec", spec}};
}

// The state shared by the ordered steps: the cluster, the install, the
// workload of step b.
struct Shared {
  bool up = false;
  std::string up_error;
  std::string env_file;  // `scripts/kube env` output, sourced by every command
  std::map<std::string, std::string> env;
  std::string dir;  // scratch: CA, port-forward log
  pid_t port_forward = 0;
  Endpoint api;         // the controllers through the port-forward, admin token
  std::string counter;  // kmosix name of step b's workload ("" until it runs)
  Clock::time_point started;
};
Shared* g = nullptr;

class HelmE2E : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    g = new Shared();
    g->started = Clock::now();
    char tmpl[] = "/tmp/kmx-helm-e2e-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      g->up_error = "mkdtemp failed";
      return;
    }
    g->dir = tmpl;
    if (::geteuid() != 0) {
      g->up_error = "needs root (scripts/kube up: network namespaces, containerd, kubelet)";
      return;
    }
    // Leftovers of an interrupted run would make `up` refuse.
    (void)RunCommand(kRepo + "/scripts/kube down");
    auto t = Clock::now();
    auto up =
        RunCommand(kRepo + "/scripts/kube up --nodes 2 --build-dir " + ShellQuote(KMX_BUILD_DIR));
    if (up.exit_code != 0) {
      g->up_error = "scripts/kube up --nodes 2 failed (exit " + std::to_string(up.exit_code) +
                    "; 3: a binary is missing, e.g. the kube tools: run scripts/kube-tools):\n" +
                    up.output;
      return;
    }
    std::printf("[ helm ] scripts/kube up --nodes 2: %.1f s\n%s", Since(t),
                Tail(up.output, 4).c_str());
    g->env_file = g->dir + "/kube.env";
    auto env = RunCommand(kRepo + "/scripts/kube env > " + ShellQuote(g->env_file));
    if (env.exit_code != 0) {
      g->up_error = "scripts/kube env failed: " + env.output;
      return;
    }
    std::ifstream in(g->env_file);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("export ", 0) == 0) continue;
      auto eq = line.find('=');
      if (eq != std::string::npos) g->env[line.substr(0, eq)] = line.substr(eq + 1);
    }
    auto helm = Sh("command -v helm && command -v kubectl");
    if (helm.exit_code != 0) {
      g->up_error =
          "helm or kubectl not on the kube tools' PATH (scripts/kube-tools builds "
          "them): " +
          helm.output;
      return;
    }
    g->up = true;
  }
  static void TearDownTestSuite() {
    if (g == nullptr) return;
    if (g->port_forward > 0) (void)::kill(g->port_forward, SIGTERM);
    auto down = RunCommand(kRepo + "/scripts/kube down");
    if (down.exit_code != 0) std::printf("[ helm ] scripts/kube down:\n%s", down.output.c_str());
    std::printf("[ helm ] whole test, up to down: %.1f s\n", Since(g->started));
    if (!g->dir.empty()) (void)RunCommand("rm -rf " + ShellQuote(g->dir));
    delete g;
    g = nullptr;
  }

 protected:
  void SetUp() override {
    ASSERT_TRUE(g != nullptr && g->up)
        << "HELM-E2E: the Kubernetes cluster is not up: " << (g ? g->up_error : "");
  }

  static std::string Tail(const std::string& s, int lines) {
    size_t pos = s.size();
    for (int i = 0; i <= lines && pos != std::string::npos && pos > 0; ++i)
      pos = s.rfind('\n', pos - 1);
    return pos == std::string::npos ? s : s.substr(pos + 1);
  }
  // A shell command with the cluster's environment (KUBECONFIG, PATH with kubectl, helm).
  static CommandResult Sh(const std::string& cmd) {
    return RunCommand(". " + ShellQuote(g->env_file) + " && cd " + ShellQuote(kRepo) + " && " +
                      cmd);
  }
  static CommandResult Kubectl(const std::string& args, const std::string& in = "") {
    if (in.empty()) return Sh("kubectl " + args);
    std::string f = g->dir + "/in.json";
    std::ofstream(f) << in;
    return Sh("kubectl " + args + " < " + ShellQuote(f));
  }
  static json KubectlJson(const std::string& args) {
    auto r = Kubectl(args + " -o json");
    if (r.exit_code != 0) return json();
    json j = json::parse(r.output, nullptr, false);
    return j.is_discarded() ? json() : j;
  }
  // What a failure in the kmosix namespace needs: pods, describe, logs.
  static std::string Diagnose() {
    auto r =
        Sh("kubectl -n kmosix get pods -o wide; kubectl -n kmosix describe pods | tail -60; "
           "for p in $(kubectl -n kmosix get pods -o name); do echo \"--- logs $p\"; "
           "kubectl -n kmosix logs $p --all-containers --tail=15; done; "
           "kubectl get mw,mig -A; kubectl get events -A --sort-by=.lastTimestamp | tail -20");
    return r.output;
  }
  static std::string NodeSock(const std::string& node) {
    return g->env["KMX_KUBE_NODE" + node.substr(node.size() - 1) + "_SOCK"];
  }
  // containerd's task of a workload on a node: its pid ("" if none running).
  static std::string TaskPid(const std::string& node, const std::string& wname) {
    auto r = RunCommand("ctr -a " + ShellQuote(NodeSock(node)) + " -n kmosix tasks ls");
    std::istringstream in(r.output);
    for (std::string id, pid, status; in >> id >> pid >> status;)
      if (id == wname && status == "RUNNING") return pid;
    return "";
  }
  static std::string S(const json& o, const std::string& field) {
    if (!o.is_object() || !o.contains("status") || !o["status"].contains(field)) return "";
    const json& v = o["status"][field];
    return v.is_string() ? v.get<std::string>() : v.dump();
  }
  json AwaitStatus(const std::string& kind, const std::string& name, const std::string& field,
                   const std::string& want, milliseconds timeout) {
    json last;
    auto r = WaitFor(kind + " " + name + " status." + field + " == " + want, timeout,
                     [&]() -> Observation {
                       last = KubectlJson("get " + kind + " " + name + " -n default");
                       return {S(last, field) == want, field + "=" + S(last, field)};
                     });
    EXPECT_TRUE(r.ok) << r.message << "\n" << last.dump() << "\n" << Diagnose();
    return last;
  }
  // Pods of a component: name -> {node, ready}.
  static std::map<std::string, std::pair<std::string, bool>> Pods(const std::string& component) {
    std::map<std::string, std::pair<std::string, bool>> out;
    json j = KubectlJson("-n kmosix get pods -l app.kubernetes.io/component=" + component);
    if (!j.is_object()) return out;
    for (const auto& p : j.value("items", json::array())) {
      bool ready = false;
      for (const auto& c : p["status"].value("conditions", json::array()))
        if (c.value("type", "") == "Ready") ready = c.value("status", "") == "True";
      out[p["metadata"].value("name", "")] = {p["spec"].value("nodeName", ""), ready};
    }
    return out;
  }
  uint64_t LastTick(const std::string& wname) {
    std::string err;
    auto log = FetchLogFrom(g->api, wname, &err);
    return log && !log->ticks.empty() ? log->ticks.back().tick : 0;
  }
  // The demo went on where it was: consecutive ticks, one start, memory intact.
  void CheckCounter(const std::string& wname, uint64_t before) {
    auto more = WaitForTickAt(g->api, wname, before + 10, kRunning);
    ASSERT_TRUE(more.ok) << more.message << "\n" << Diagnose();
    std::string err;
    auto log = FetchLogFrom(g->api, wname, &err);
    ASSERT_TRUE(log) << err;
    EXPECT_EQ(CheckConsecutive(log->ticks), "");
    EXPECT_EQ(log->corruption_lines, 0);
    EXPECT_EQ(log->start_lines, 1) << "the workload restarted";
    for (const auto& t : log->ticks) ASSERT_EQ(t.mem_ok, 1) << "tick " << t.tick;
  }
  std::string StartWorkload(const std::string& name, const std::vector<std::string>& args,
                            const std::string& node) {
    auto r = Kubectl("apply -f -", WorkloadObject(name, args, node).dump());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    json o = AwaitStatus("mw", name, "phase", "Running", kRunning);
    EXPECT_EQ(S(o, "node"), node);
    return S(o, "workload");
  }
};

// --- a. install ------------------------------------------------------------------------

TEST_F(HelmE2E, Step1InstallWithDefaultsBringsUpAgentsOnBothNodesAndTheControllersSeeThem) {
  auto t = Clock::now();
  // The chart README: privileged pods must be allowed in the release namespace.
  auto ns = Kubectl(
      "create namespace kmosix && kubectl label namespace kmosix "
      "pod-security.kubernetes.io/enforce=privileged");
  ASSERT_EQ(ns.exit_code, 0) << ns.output;
  auto install = Sh("helm install kmosix charts/kmosix -n kmosix --wait --timeout 5m");
  ASSERT_EQ(install.exit_code, 0) << install.output << "\n" << Diagnose();
  std::printf("[ helm ] helm install --wait: %.1f s\n", Since(t));
  std::printf("$ helm install kmosix charts/kmosix -n kmosix --wait\n%s\n",
              install.output.substr(0, 400).c_str());
  auto agents = Pods("agent");
  std::set<std::string> ready_nodes;
  for (const auto& [name, p] : agents)
    if (p.second) ready_nodes.insert(p.first);
  EXPECT_EQ(ready_nodes, (std::set<std::string>{kNode1, kNode2})) << Diagnose();
  std::printf("$ kubectl -n kmosix get pods -o wide\n%s",
              Kubectl("-n kmosix get pods -o wide").output.c_str());

  // NOTES.txt's way in: a port-forward to the Service, the CA and the admin
  // token from the chart's Secrets.
  auto notes = Sh("helm get notes kmosix -n kmosix");
  ASSERT_NE(notes.output.find("port-forward svc/kmosix-controller 7800:7800"), std::string::npos)
      << notes.output;
  const std::string ca = g->dir + "/kmosix-ca.crt";
  auto secrets =
      Sh("kubectl -n kmosix get secret kmosix-ca -o jsonpath='{.data.ca\\.crt}' | "
         "base64 -d > " +
         ShellQuote(ca) +
         " && kubectl -n kmosix get secret kmosix-tokens -o "
         "jsonpath='{.data.admin-token}' | base64 -d");
  ASSERT_EQ(secrets.exit_code, 0) << secrets.output;
  const std::string token = secrets.output;
  ASSERT_FALSE(token.empty());
  auto pf = Sh("setsid kubectl -n kmosix port-forward svc/kmosix-controller " +
               std::to_string(kPortForwardPort) + ":7800 > " + ShellQuote(g->dir + "/pf.log") +
               " 2>&1 < /dev/null & echo $!");
  ASSERT_EQ(pf.exit_code, 0) << pf.output;
  g->port_forward = std::atoi(pf.output.c_str());
  // The controllers' certificate names localhost (NOTES.txt).
  g->api = Endpoint("https://localhost:" + std::to_string(kPortForwardPort), ca, token);
  json nodes;
  auto seen = WaitFor(
      "both kmosix nodes Ready in the controllers' API (through the port-forward)", kRunning,
      [&]() -> Observation {
        std::string err;
        auto items = GetItems(g->api, "/v1/nodes", &err);
        if (!items) return {false, err};
        nodes = *items;
        std::set<std::string> ready;
        for (const auto& n : *items)
          if (n.value("ready", false)) ready.insert(n.value("name", ""));
        return {ready == std::set<std::string>{kNode1, kNode2}, items->dump().substr(0, 300)};
      },
      milliseconds(500));
  ASSERT_TRUE(seen.ok) << seen.message << "\nport-forward: "
                       << RunCommand("cat " + ShellQuote(g->dir + "/pf.log")).output << "\n"
                       << Diagnose();
  // A token that is not there: 401 through the same way.
  auto anon = HttpGet(Endpoint(g->api.url, ca, ""), "/v1/nodes");
  EXPECT_EQ(anon.status, 401) << anon.Describe();
  std::printf("[ helm ] install to both nodes Ready in the API: %.1f s\n", Since(t));
}

// --- b. a workload and a migration ---------------------------------------------------------

TEST_F(HelmE2E, Step2AMigratableWorkloadRunsAndAMigrationMovesItWithItsStateIntact) {
  auto t = Clock::now();
  const std::string wname = StartWorkload("counter", kLight, kNode1);
  ASSERT_FALSE(wname.empty());
  ASSERT_TRUE(WaitForTickAt(g->api, wname, 5, kRunning).ok) << Diagnose();
  EXPECT_FALSE(TaskPid(kNode1, wname).empty()) << "no RUNNING task on " << kNode1;
  const uint64_t before = LastTick(wname);
  json mig = {{"apiVersion", "kmosix.io/v1alpha1"},
              {"kind", "Migration"},
              {"metadata", {{"name", "counter-to-node2"}, {"namespace", "default"}}},
              {"spec", {{"workload", "counter"}, {"targetNode", kNode2}}}};
  auto r = Kubectl("apply -f -", mig.dump());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Until it is final (a rollback fails at once, with the reason).
  json m;
  auto fin = WaitFor("Migration counter-to-node2 final", kMigration, [&]() -> Observation {
    m = KubectlJson("get mig counter-to-node2 -n default");
    const std::string p = S(m, "phase");
    return {p == "Succeeded" || p == "RolledBack" || p == "Failed" || p == "Cancelled",
            "phase=" + p};
  });
  ASSERT_TRUE(fin.ok) << fin.message << "\n" << Diagnose();
  ASSERT_EQ(S(m, "phase"), "Succeeded") << m.dump() << "\n" << Diagnose();
  EXPECT_EQ(S(m, "sourceNode"), kNode1);
  EXPECT_EQ(S(m, "targetNode"), kNode2);
  json o = AwaitStatus("mw", "counter", "node", kNode2, kRunning);
  EXPECT_EQ(S(o, "migrations"), "1");
  EXPECT_FALSE(TaskPid(kNode2, wname).empty()) << "no RUNNING task on " << kNode2;
  EXPECT_TRUE(TaskPid(kNode1, wname).empty()) << "still a task on " << kNode1;
  CheckCounter(wname, before);
  g->counter = wname;
  std::printf("$ kubectl get mw,mig\n%s", Kubectl("get mw,mig -n default").output.c_str());
  std::printf("[ helm ] workload up and migrated, counter checked: %.1f s (downtime %s s)\n",
              Since(t), S(m, "downtimeSeconds").c_str());
}

// --- d. upgrade (before c: it gives the balancer per-node loads) ------------------------------

TEST_F(HelmE2E, Step3UpgradeRollsTheAgentsOneNodeAtATimeAndKeepsTheWorkloadRunning) {
  ASSERT_FALSE(g->counter.empty()) << "step b did not leave a running workload";
  const std::string wname = g->counter;
  const json mw = KubectlJson("get mw counter -n default");
  const std::string node = S(mw, "node");
  const std::string epoch = S(mw, "epoch");
  const std::string pid = TaskPid(node, wname);
  ASSERT_FALSE(pid.empty()) << "no RUNNING task of " << wname << " on " << node;
  const auto agents_before = Pods("agent");
  const uint64_t before = LastTick(wname);

  // Watch the agents while helm upgrades: the fewest Ready at any time.
  std::atomic<bool> stop{false};
  std::atomic<int> fewest_ready{2};
  std::atomic<int> samples{0};
  std::string worst;
  std::thread watch([&] {
    while (!stop) {
      auto pods = Pods("agent");
      std::set<std::string> ready;
      for (const auto& [name, p] : pods)
        if (p.second) ready.insert(p.first);
      if (!pods.empty()) {
        ++samples;
        if (static_cast<int>(ready.size()) < fewest_ready) {
          fewest_ready = static_cast<int>(ready.size());
          worst.clear();
          for (const auto& [name, p] : pods)
            worst += name + "@" + p.first + (p.second ? ":Ready " : ":NotReady ");
        }
      }
      std::this_thread::sleep_for(milliseconds(200));
    }
  });
  auto t = Clock::now();
  auto up =
      Sh("helm upgrade kmosix charts/kmosix -n kmosix --reuse-values "
         "--set agent.logLevel=debug "
         "--set-json 'agent.extraArgs=[\"--load-source=cgroup\",\"--cpu-capacity=1\"]' "
         "--wait --timeout 5m");
  const double took = Since(t);
  stop = true;
  watch.join();
  ASSERT_EQ(up.exit_code, 0) << up.output << "\n" << Diagnose();
  std::printf(
      "[ helm ] helm upgrade --wait (agents rolled): %.1f s, %d samples, fewest Ready "
      "agents at once: %d\n",
      took, samples.load(), fewest_ready.load());
  const auto agents_after = Pods("agent");
  for (const auto& [name, p] : agents_after) {
    EXPECT_FALSE(agents_before.contains(name)) << name << " was not replaced";
    EXPECT_TRUE(p.second) << name << " not Ready after the upgrade";
  }
  EXPECT_EQ(agents_after.size(), 2u);
  EXPECT_GE(fewest_ready.load(), 1) << "both agents were not Ready at once: " << worst;
  // The workload: the same containerd task, the same epoch, its counter went on.
  EXPECT_EQ(TaskPid(node, wname), pid) << "the workload's task changed";
  json o = KubectlJson("get mw counter -n default");
  EXPECT_EQ(S(o, "epoch"), epoch);
  EXPECT_EQ(S(o, "node"), node);
  EXPECT_EQ(S(o, "phase"), "Running");
  CheckCounter(wname, before);
  // The agents run with the new flags.
  auto args = Kubectl(
      "-n kmosix get ds kmosix-agent -o jsonpath='{.spec.template.spec."
      "containers[0].args}'");
  EXPECT_NE(args.output.find("--load-source=cgroup"), std::string::npos) << args.output;
}

// --- c. the balancer ------------------------------------------------------------------------

TEST_F(HelmE2E, Step4TheBalancerSpreadsFourCpuBoundWorkloadsFromOneNode) {
  auto t = Clock::now();
  const std::vector<std::string> hot = {"hot-1", "hot-2", "hot-3", "hot-4"};
  for (const auto& name : hot) {
    auto r = Kubectl("apply -f -", WorkloadObject(name, kCpuBound, kNode1).dump());
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  // Spread: the balancer moved some off node1 and all run, nothing in flight,
  // unchanged for 15 s (longer than a balancing round plus the 10 s in which
  // a fresh arrival's CPU is estimated). Not "at most two a node": both nodes
  // share this machine's cores (and other tests' load), so the balancer sees
  // each node's measured CPU (agent --load-source=cgroup), and once node2
  // holds one of them the measured loads may be even with three on node1
  // (GET /v1/decisions then says why it holds back; printed below).
  std::set<std::string> hot_names;
  std::string last_state;
  auto state_since = Clock::now();
  std::string err;
  auto spread = WaitFor(
      "the balancer to move CPU-bound workloads off " + kNode1 + " and settle",
      milliseconds(300'000),
      [&]() -> Observation {
        std::map<std::string, int> per_node;
        bool running = true;
        std::string seen;
        hot_names.clear();
        for (const auto& name : hot) {
          json o = KubectlJson("get mw " + name + " -n default");
          ++per_node[S(o, "node")];
          if (S(o, "phase") != "Running") running = false;
          hot_names.insert(S(o, "workload"));
          seen += name + "@" + S(o, "node") + ":" + S(o, "phase") + " ";
        }
        auto migs = GetItems(g->api, "/v1/migrations", &err);
        if (!migs) return {false, err};
        int done = 0;
        bool in_flight = false;
        for (const auto& m : *migs) {
          if (!hot_names.contains(m.value("workload", ""))) continue;
          const std::string p = m.value("phase", "");
          if (p == "Succeeded")
            ++done;
          else if (p != "RolledBack" && p != "Failed" && p != "Cancelled")
            in_flight = true;
        }
        seen += "| moves " + std::to_string(done) + (in_flight ? " (in flight)" : "");
        if (seen != last_state) {
          last_state = seen;
          state_since = Clock::now();
        }
        const bool good = running && !in_flight && done >= 1 && per_node[kNode1] <= 3;
        return {good && Since(state_since) >= 15, seen};
      },
      milliseconds(1000));
  EXPECT_TRUE(spread.ok) << spread.message << "\n" << Diagnose();
  std::printf("$ kubectl get mw,mig\n%s", Kubectl("get mw,mig -n default").output.c_str());
  std::printf("$ GET /v1/decisions\n%s\n", HttpGet(g->api, "/v1/decisions").body.c_str());
  // The balancer's moves: policy-requested, each Succeeded.
  auto migs = GetItems(g->api, "/v1/migrations", &err);
  ASSERT_TRUE(migs) << err;
  int policy = 0;
  for (const auto& m : *migs) {
    if (!hot_names.contains(m.value("workload", ""))) continue;
    EXPECT_EQ(m.value("phase", ""), "Succeeded") << m.dump();
    if (m.value("requestedBy", "") == "policy") ++policy;
  }
  EXPECT_GE(policy, 1) << migs->dump().substr(0, 2000);
  std::printf("[ helm ] four CPU-bound workloads spread: %.1f s\n", Since(t));
  // They burn the machine's CPU: gone before the next steps.
  (void)Kubectl("delete mw hot-1 hot-2 hot-3 hot-4 -n default --wait=true --timeout=120s");
}

// --- e. the secured plane -------------------------------------------------------------------

TEST_F(HelmE2E, Step5TheSecuredPlaneHoldsInTheInstall) {
  const std::string ca = g->dir + "/kmosix-ca.crt";
  auto code = [&](const std::string& curl_args) {
    auto r = RunCommand("curl -s -o /dev/null -w '%{http_code}' -m 10 --cacert " + ShellQuote(ca) +
                        " " + curl_args);
    return r.output + " (exit " + std::to_string(r.exit_code) + ")";
  };
  for (const std::string addr : {"10.78.0.11", "10.78.0.12"}) {
    EXPECT_EQ(code("https://" + addr + ":7700/v1/workloads"), "401 (exit 0)")
        << "agent " << addr << " without a token";
    EXPECT_EQ(code("https://" + addr + ":7700/v1/peer/info"), "401 (exit 0)")
        << "agent " << addr << " peer route without a client certificate";
    EXPECT_EQ(code("-H 'Authorization: Bearer " + g->api.token + "' https://" + addr +
                   ":7700/v1/peer/info"),
              "401 (exit 0)")
        << "agent " << addr << " peer route with the admin token (a token is not a node)";
  }
  // etcd at its pod IP: without a client certificate the TLS handshake fails;
  // with its root's (the chart's Secret) it answers.
  auto ip = Kubectl("-n kmosix get pod kmosix-etcd-0 -o jsonpath='{.status.podIP}'");
  ASSERT_EQ(ip.exit_code, 0) << ip.output;
  const std::string etcd = "https://" + ip.output + ":2379/version";
  auto anon = RunCommand("curl -sk -m 10 " + etcd);
  EXPECT_NE(anon.exit_code, 0) << "etcd answered a client without a certificate: " << anon.output;
  auto root = Sh(
      "kubectl -n kmosix get secret kmosix-etcd-root -o jsonpath='{.data.tls\\.crt}' "
      "| base64 -d > " +
      ShellQuote(g->dir + "/root.crt") +
      " && kubectl -n kmosix get secret kmosix-etcd-root -o "
      "jsonpath='{.data.tls\\.key}' | base64 -d > " +
      ShellQuote(g->dir + "/root.key") + " && curl -sk -m 10 --cert " +
      ShellQuote(g->dir + "/root.crt") + " --key " + ShellQuote(g->dir + "/root.key") + " " + etcd);
  EXPECT_EQ(root.exit_code, 0) << root.output;
  EXPECT_NE(root.output.find("etcdserver"), std::string::npos) << root.output;
  std::printf(
      "[ helm ] agents 401 without token / without client certificate; etcd: no "
      "certificate -> curl exit %d, root's -> %s\n",
      anon.exit_code, root.output.c_str());
}

// --- e2. node identities are pod certificates -------------------------------------------------

// Each agent serves the certificate the controllers' signer (kmosix.io/node)
// issued to its pod: CN=<its node>, O=kmosix:nodes, from the node issuer; no
// Secret holds a node key; a pod that is not an agent asking the signer is
// denied (another namespace, another ServiceAccount) and never starts.
TEST_F(HelmE2E, Step5bNodeIdentitiesArePodCertificatesOnlyAgentsGet) {
  for (int i : {1, 2}) {
    const std::string addr = "10.78.0.1" + std::to_string(i);
    auto subject = RunCommand("openssl s_client -connect " + addr +
                              ":7700 -verify_quiet </dev/null 2>/dev/null | "
                              "openssl x509 -noout -subject -issuer -nameopt RFC2253");
    EXPECT_EQ(subject.exit_code, 0) << subject.output;
    EXPECT_NE(subject.output.find("subject=CN=kube-node" + std::to_string(i) + ",O=kmosix:nodes"),
              std::string::npos)
        << "agent " << addr << " serves:\n"
        << subject.output;
    EXPECT_NE(subject.output.find("issuer=CN=kmosix node issuer"), std::string::npos)
        << subject.output;
    std::printf("[ helm ] agent %s serves: %s", addr.c_str(), subject.output.c_str());
  }
  auto secrets = Kubectl("-n kmosix get secrets -o name");
  EXPECT_EQ(secrets.output.find("agent-tls"), std::string::npos) << secrets.output;
  auto pcrs = Kubectl(
      "get podcertificaterequests -A -o "
      "custom-columns=NS:.metadata.namespace,POD:.spec.podName,NODE:.spec.nodeName,"
      "SIGNER:.spec.signerName,STATE:.status.conditions[0].type");
  std::printf("$ kubectl get podcertificaterequests -A\n%s", pcrs.output.c_str());

  // Impostors: pods mounting a kmosix.io/node pod certificate that are not
  // the agents.
  auto impostor = [](const std::string& ns, const std::string& sa) {
    return json{{"apiVersion", "v1"},
                {"kind", "Pod"},
                {"metadata", {{"name", "impostor"}, {"namespace", ns}}},
                {"spec",
                 {{"serviceAccountName", sa},
                  {"nodeName", "kube-node1"},
                  {"containers",
                   {{{"name", "c"},
                     {"image", "kmosix.local/kmosix-tools:0.1.0"},
                     {"command", {"sleep", "3600"}},
                     {"volumeMounts", {{{"name", "id"}, {"mountPath", "/id"}}}}}}},
                  {"volumes",
                   {{{"name", "id"},
                     {"projected",
                      {{"sources",
                        {{{"podCertificate",
                           {{"signerName", "kmosix.io/node"},
                            {"keyType", "ECDSAP256"},
                            {"credentialBundlePath", "tls.pem"}}}}}}}}}}}}}};
  };
  struct Case {
    std::string ns, sa, reason;
  };
  (void)Kubectl("-n kmosix create serviceaccount not-the-agent");
  for (const Case& c : {Case{"default", "default", "WrongNamespace"},
                        Case{"kmosix", "not-the-agent", "WrongServiceAccount"}}) {
    auto made = Kubectl("apply -f -", impostor(c.ns, c.sa).dump());
    ASSERT_EQ(made.exit_code, 0) << made.output;
    std::string seen;
    auto denied =
        WaitFor("the signer denies the impostor in " + c.ns, kRunning, [&]() -> Observation {
          json j = KubectlJson("get podcertificaterequests -n " + c.ns);
          seen = j.dump().substr(0, 1500);
          for (const auto& r : j.value("items", json::array())) {
            if (r["spec"].value("podName", "") != "impostor") continue;
            for (const auto& cond :
                 r.value("status", json::object()).value("conditions", json::array()))
              if (cond.value("type", "") == "Denied" && cond.value("reason", "") == c.reason)
                return {true, cond.dump()};
          }
          return {false, seen};
        });
    EXPECT_TRUE(denied.ok) << denied.message;
    auto phase = Kubectl("-n " + c.ns + " get pod impostor -o jsonpath='{.status.phase}'");
    EXPECT_EQ(phase.output, "Pending") << "an impostor pod started";
    std::printf("[ helm ] impostor in %s as %s: %s\n", c.ns.c_str(), c.sa.c_str(),
                denied.ok ? c.reason.c_str() : "NOT DENIED");
    (void)Kubectl("-n " + c.ns + " delete pod impostor --wait=false");
  }
  (void)Kubectl("-n kmosix delete serviceaccount not-the-agent");
}

// --- f. uninstall ---------------------------------------------------------------------------

TEST_F(HelmE2E, Step6UninstallRemovesTheReleaseKeepsCrdsAndPvcAndLeavesWorkloadsRunning) {
  ASSERT_FALSE(g->counter.empty()) << "step b did not leave a running workload";
  const std::string wname = g->counter;
  const std::string node = S(KubectlJson("get mw counter -n default"), "node");
  const std::string pid = TaskPid(node, wname);
  ASSERT_FALSE(pid.empty()) << "no RUNNING task of " << wname << " on " << node;
  if (g->port_forward > 0) {
    (void)::kill(g->port_forward, SIGTERM);
    g->port_forward = 0;
  }
  auto t = Clock::now();
  auto un = Sh("helm uninstall kmosix -n kmosix --wait --timeout 3m");
  ASSERT_EQ(un.exit_code, 0) << un.output << "\n" << Diagnose();
  std::printf("[ helm ] helm uninstall --wait: %.1f s\n$ helm uninstall kmosix -n kmosix\n%s",
              Since(t), un.output.c_str());
  auto pods_gone = WaitFor("every kmosix pod gone", kRunning, [&]() -> Observation {
    auto r = Kubectl("-n kmosix get pods -o name");
    return {r.exit_code == 0 && r.output.find("pod/") == std::string::npos, r.output};
  });
  EXPECT_TRUE(pods_gone.ok) << pods_gone.message;
  // Nothing the chart made is left but the CRDs, the etcd PVC and the namespace.
  auto left = Kubectl(
      "-n kmosix get all,secrets,configmaps,serviceaccounts,roles,rolebindings,"
      "pdb,cronjobs,jobs -o name");
  std::set<std::string> extra;
  std::istringstream in(left.output);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line == "serviceaccount/default" || line == "configmap/kube-root-ca.crt")
      continue;
    extra.insert(line);
  }
  EXPECT_TRUE(extra.empty()) << "left in namespace kmosix:\n" << left.output;
  auto cluster_wide = Sh("kubectl get clusterroles,clusterrolebindings -o name | grep kmosix");
  EXPECT_EQ(cluster_wide.output, "") << "cluster-wide objects left";
  auto crds = Kubectl("get crd -o name");
  for (const std::string crd :
       {"migratableworkloads.kmosix.io", "migrations.kmosix.io", "migrationpolicies.kmosix.io"})
    EXPECT_NE(crds.output.find(crd), std::string::npos) << crd << " removed:\n" << crds.output;
  auto mw = Kubectl("get mw counter -n default -o name");
  EXPECT_EQ(mw.exit_code, 0) << "the MigratableWorkload object went with the chart: " << mw.output;
  auto pvc = Kubectl("-n kmosix get pvc -o name");
  EXPECT_NE(pvc.output.find("persistentvolumeclaim/data-kmosix-etcd-0"), std::string::npos)
      << "etcd's PVC (kept, as for every StatefulSet):\n"
      << pvc.output;
  // The workload keeps running in containerd, unmanaged, its counter counting.
  EXPECT_EQ(TaskPid(node, wname), pid) << "the running workload was stopped by the uninstall";
  std::this_thread::sleep_for(milliseconds(1500));
  auto ls = RunCommand("ctr -a " + ShellQuote(NodeSock(node)) + " -n kmosix tasks ls");
  std::printf("$ ctr -n kmosix tasks ls   (on %s, after helm uninstall)\n%s", node.c_str(),
              ls.output.c_str());
  // Cleanup for a reinstall: the unmanaged task (as the README says, by hand).
  (void)RunCommand("ctr -a " + ShellQuote(NodeSock(node)) + " -n kmosix tasks kill -s KILL " +
                   ShellQuote(wname));
}

}  // namespace
}  // namespace kmosix::e2e
