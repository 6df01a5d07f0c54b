// kube_bridge_bench: the Kubernetes bridge (controller/kube/bridge.h) at
// scale against a real kube-apiserver (issue 10, "Speed"). Prints markdown
// tables (what | value | unit) and one verdict line per goal, as measured;
// nothing is asserted.
//
// Set-up, all in this process except the servers:
//   - PrivateKubeApiserver (kube-apiserver 1.37 + its own etcd) with crd/
//     applied; PrivateEtcd for kmosix.
//   - a Controller (balance off) on an EtcdStateStore, with a Bridge whose
//     kube::Client is a real HttpClient wrapped in a counting decorator
//     (calls, conflicts, errors and time per method and resource);
//   - --nodes simulated node agents, each with its own etcd connection: it
//     publishes its node record under a 5 s lease (rewritten at most once a
//     second when its running set changed, as the real agent), watches
//     /kmosix/, marks every workload scheduled on it Running with a CAS (what
//     the real agent does once containerd started it), and, as a source, ends
//     every Pending migration ordered off it as Succeeded at once (workload
//     record moved to the target, epoch + 1, in one transaction, after a
//     Preparing step). So
//     "Running" is reached as in production apart from containerd.
//   - the "user" side: other HttpClients (one per creating thread) that create
//     the objects, and a list+watch observer of the objects' status; a
//     bench-side etcd watch of /kmosix/ (own connection) for the records.
//
// Phases:
//   (a) BASELINE (REST): --workloads specs created through the controller's
//       typed API (Controller::CreateWorkload, as the REST API does) from
//       --parallel threads; time until every record is Running in etcd. Then
//       --migrations REST migrations (Controller::RequestMigration), one at a
//       time: call -> the order's record seen in etcd. Then all deleted.
//   (b) KUBERNETES: the same number of MigratableWorkload objects created at
//       once by --parallel threads (parallel POSTs through the client, not
//       kubectl apply); time until every object's status.phase is Running in
//       the API server (watched); the bridge's calls per workload (status
//       writes, metadata patches, Events, conflicts), the real status changes
//       per workload (status as the watch shows it, conditions'
//       lastTransitionTime ignored) and the record changes in etcd behind
//       them; CPU: the bridge's own threads (worker + informers; per-thread
//       /proc/self/task/<tid>/schedstat), the controller's threads, the whole
//       process against phase (a), the servers (kube-apiserver, its etcd,
//       kmosix's etcd) from /proc/<pid>/stat; RSS growth of the process.
//   (c) watch event -> etcd order: --migrations Migration objects applied one
//       at a time for Running MigratableWorkloads (target: the next node);
//       latency from the create call's return to the migration record in
//       etcd (p50/p90/p99/max), and create -> Migration status Succeeded
//       written by the bridge; the next one is applied once the previous one
//       shows Succeeded (an idle bridge, not a queue).
//
//   kube_bridge_bench [--workloads 1000] [--nodes 8] [--migrations 200]
//                     [--parallel 8] [--timeout 600]
// Needs kube-apiserver and kubectl (scripts/kube-tools), etcd and openssl;
// without them it says SKIPPED and why, and exits 0.
#include <malloc.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/records.h"
#include "controller/controller.h"
#include "controller/kube/bridge.h"
#include "controller/kube/codec.h"
#include "etcd/etcd_state_store.h"
#include "kube/client.h"
#include "kube/config.h"
#include "kube/http_client.h"
#include "support/private_etcd.h"
#include "support/private_kube_apiserver.h"

namespace {

using namespace kmosix;
using nlohmann::json;
using Steady = std::chrono::steady_clock;

constexpr char kNamespace[] = "default";

double SecondsSince(Steady::time_point t) {
  return std::chrono::duration<double>(Steady::now() - t).count();
}
double Ms(Steady::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string Fmt(double v, int prec = 2) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string Seq(const char* prefix, int i) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%05d", prefix, i);
  return buf;
}

// ---- measuring the process --------------------------------------------------

std::set<int> Tids() {
  std::set<int> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    char* end = nullptr;
    long tid = std::strtol(e.path().filename().c_str(), &end, 10);
    if (end && *end == '\0') out.insert(static_cast<int>(tid));
  }
  return out;
}

// CPU seconds of one thread of this process (schedstat: ns on CPU); 0 once
// the thread is gone.
double ThreadCpu(int tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/schedstat");
  unsigned long long ns = 0;
  if (f >> ns) return static_cast<double>(ns) / 1e9;
  return 0;
}

double ThreadsCpu(const std::set<int>& tids) {
  double s = 0;
  for (int t : tids) s += ThreadCpu(t);
  return s;
}

double ProcessCpu() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

long StatusKiB(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(f, line)) {
    if (line.compare(0, n, field) == 0) return std::stol(line.substr(n));
  }
  return 0;
}
long RssKiB() { return StatusKiB("VmRSS:"); }
long PeakRssKiB() { return StatusKiB("VmHWM:"); }

// The servers this process started: CPU seconds by label ("kube-apiserver",
// "etcd (API server)", "etcd (kmosix)"), from /proc/<pid>/stat of children.
std::map<std::string, double> ChildrenCpu(const std::string& kube_etcd_dir,
                                          const std::string& kmx_etcd_dir) {
  std::map<std::string, double> out;
  const long tick = ::sysconf(_SC_CLK_TCK);
  const int self = ::getpid();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = e.path().filename().string();
    if (pid.empty() || !std::isdigit(static_cast<unsigned char>(pid[0]))) continue;
    std::ifstream f(e.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t close = stat.rfind(')');
    const size_t open = stat.find('(');
    if (close == std::string::npos || open == std::string::npos) continue;
    const std::string comm = stat.substr(open + 1, close - open - 1);
    std::istringstream rest(stat.substr(close + 2));
    std::vector<std::string> fields;
    std::string x;
    while (rest >> x) fields.push_back(x);
    // fields[0] = state (field 3); ppid = field 4; utime, stime = fields 14, 15.
    if (fields.size() < 13 || std::atoi(fields[1].c_str()) != self) continue;
    const double cpu =
        (std::atof(fields[11].c_str()) + std::atof(fields[12].c_str())) / static_cast<double>(tick);
    std::string label = comm;
    if (comm == "etcd") {
      std::ifstream cf(e.path() / "cmdline");
      std::string cmd((std::istreambuf_iterator<char>(cf)), std::istreambuf_iterator<char>());
      if (cmd.find(kube_etcd_dir) != std::string::npos) label = "etcd (API server)";
      if (cmd.find(kmx_etcd_dir) != std::string::npos) label = "etcd (kmosix)";
    }
    out[label] += cpu;
  }
  return out;
}

struct CpuMark {
  double process = 0;
  double bridge = 0;
  double controller = 0;
  std::map<std::string, double> children;
};

// ---- the counting decorator -------------------------------------------------

class CountingClient final : public kube::Client {
 public:
  struct Count {
    int64_t calls = 0;
    int64_t conflicts = 0;  // kConflict (409, 410)
    int64_t errors = 0;     // any other error
    double seconds = 0;     // time in the call (not for Watch)
  };
  using Counts = std::map<std::string, Count>;  // "Method plural"

  explicit CountingClient(kube::Client& inner) : inner_(inner) {}

  Counts Snapshot() const {
    std::lock_guard lock(mu_);
    return counts_;
  }

  StatusOr<kube::ObjectList> List(const kube::Resource& r, const std::string& ns,
                                  const kube::ListOptions& o) override {
    auto t = Steady::now();
    auto out = inner_.List(r, ns, o);
    Tally("List", r, out.status(), t);
    return out;
  }
  Status Watch(const kube::Resource& r, const std::string& ns, const std::string& rv,
               const kube::ListOptions& o, const kube::WatchHandler& h,
               const std::atomic<bool>& stop) override {
    Status s = inner_.Watch(r, ns, rv, o, h, stop);
    Tally("Watch", r, s, std::nullopt);
    return s;
  }
  StatusOr<json> Get(const kube::Resource& r, const std::string& ns,
                     const std::string& name) override {
    auto t = Steady::now();
    auto out = inner_.Get(r, ns, name);
    Tally("Get", r, out.status(), t);
    return out;
  }
  StatusOr<json> Create(const kube::Resource& r, const std::string& ns, const json& o) override {
    auto t = Steady::now();
    auto out = inner_.Create(r, ns, o);
    Tally("Create", r, out.status(), t);
    return out;
  }
  StatusOr<json> Update(const kube::Resource& r, const std::string& ns, const json& o) override {
    auto t = Steady::now();
    auto out = inner_.Update(r, ns, o);
    Tally("Update", r, out.status(), t);
    return out;
  }
  StatusOr<json> UpdateStatus(const kube::Resource& r, const std::string& ns,
                              const json& o) override {
    auto t = Steady::now();
    auto out = inner_.UpdateStatus(r, ns, o);
    Tally("UpdateStatus", r, out.status(), t);
    return out;
  }
  StatusOr<json> MergePatch(const kube::Resource& r, const std::string& ns, const std::string& name,
                            const json& patch) override {
    auto t = Steady::now();
    auto out = inner_.MergePatch(r, ns, name, patch);
    Tally("MergePatch", r, out.status(), t);
    return out;
  }
  Status Delete(const kube::Resource& r, const std::string& ns, const std::string& name,
                const std::string& uid) override {
    auto t = Steady::now();
    Status s = inner_.Delete(r, ns, name, uid);
    Tally("Delete", r, s, t);
    return s;
  }

 private:
  void Tally(const char* method, const kube::Resource& r, const Status& s,
             std::optional<Steady::time_point> started) {
    std::lock_guard lock(mu_);
    Count& c = counts_[std::string(method) + " " + r.plural];
    ++c.calls;
    if (!s.ok()) ++(s.code() == Code::kConflict ? c.conflicts : c.errors);
    if (started) c.seconds += SecondsSince(*started);
  }

  kube::Client& inner_;
  mutable std::mutex mu_;
  Counts counts_;
};

CountingClient::Count Diff(const CountingClient::Counts& after,
                           const CountingClient::Counts& before, const std::string& key) {
  CountingClient::Count out;
  if (auto a = after.find(key); a != after.end()) out = a->second;
  if (auto b = before.find(key); b != before.end()) {
    out.calls -= b->second.calls;
    out.conflicts -= b->second.conflicts;
    out.errors -= b->second.errors;
    out.seconds -= b->second.seconds;
  }
  return out;
}

int64_t NonWatchCalls(const CountingClient::Counts& c) {
  int64_t n = 0;
  for (const auto& [k, v] : c)
    if (k.rfind("Watch", 0) != 0) n += v.calls;
  return n;
}

// Waits until the bridge made no call (watches aside) for `quiet_s`, at most `max_s`.
void WaitQuiet(const CountingClient& c, double quiet_s, double max_s) {
  auto start = Steady::now();
  int64_t last = NonWatchCalls(c.Snapshot());
  auto since = Steady::now();
  while (SecondsSince(start) < max_s) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int64_t now = NonWatchCalls(c.Snapshot());
    if (now != last) {
      last = now;
      since = Steady::now();
    } else if (SecondsSince(since) >= quiet_s) {
      return;
    }
  }
}

// ---- simulated node agents --------------------------------------------------

class SimAgent {
 public:
  SimAgent(const std::string& endpoint, std::string node, cluster::KeyLayout keys, Clock& clock)
      : store_(testing::TestEtcdConfig(endpoint)),
        node_(std::move(node)),
        keys_(keys),
        clock_(clock) {}
  ~SimAgent() { Stop(); }

  Status Start() {
    KMX_ASSIGN_OR_RETURN(LeaseGrant lease, store_.GrantLease(std::chrono::seconds(5)));
    lease_ = lease.id;
    KMX_ASSIGN_OR_RETURN(keepalive_, store_.KeepAlive(lease_));
    KMX_RETURN_IF_ERROR(Publish());
    thread_ = std::thread([this] { Run(); });
    return Status::Ok();
  }
  void Stop() {
    if (stop_.exchange(true)) return;
    if (thread_.joinable()) thread_.join();
    keepalive_.reset();
  }
  int64_t started() const { return started_.load(); }
  int64_t migrated() const { return migrated_.load(); }
  int64_t cas_lost() const { return cas_lost_.load(); }

 private:
  Status Publish() {
    api::NodeLoad n;
    n.node = node_;
    n.url = "http://" + node_ + ".bench:7700";
    n.load_source = "host";
    n.cpu_capacity = 64;
    n.cpu_used = 0.01 * static_cast<double>(running_.size());
    n.memory_capacity_bytes = 1ULL << 40;
    n.memory_available_bytes = (1ULL << 40) - (static_cast<uint64_t>(running_.size()) << 24);
    for (const auto& w : running_) n.workloads[w] = api::WorkloadUsage{0.01, 16ULL << 20};
    n.updated_ms = clock_.WallMillis();
    PutOptions po;
    po.lease = lease_;
    auto put = store_.Put(keys_.Node(node_), cluster::NodeLoadToJson(n).dump(), po);
    if (put.ok()) dirty_ = false;
    return put.status();
  }

  void Run() {
    auto last_publish = Steady::now();
    while (!stop_) {
      auto list = store_.List(keys_.prefix);
      if (!list.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      for (const auto& kv : list->kvs) OnPut(kv);
      WatchOptions wo;
      wo.key = keys_.prefix;
      wo.prefix = true;
      wo.start_revision = list->revision + 1;
      auto watcher = store_.Watch(wo);
      if (!watcher.ok()) continue;
      while (!stop_) {
        auto batch = (*watcher)->Next(std::chrono::milliseconds(200));
        if (!batch.ok()) break;  // relist
        for (const auto& ev : *batch) {
          if (ev.type == kmosix::WatchEvent::Type::kPut) {
            OnPut(ev.kv);
          } else {
            const std::string name = cluster::KeyLayout::NameIn(keys_.Workloads(), ev.kv.key);
            if (!name.empty() && running_.erase(name)) dirty_ = true;
          }
        }
        if (dirty_ && SecondsSince(last_publish) >= 1.0) {
          (void)Publish();
          last_publish = Steady::now();
        }
      }
    }
  }

  void OnPut(const KeyValue& kv) {
    if (std::string w = cluster::KeyLayout::NameIn(keys_.Workloads(), kv.key); !w.empty()) {
      OnWorkload(w, kv);
    } else if (std::string m = cluster::KeyLayout::NameIn(keys_.Migrations(), kv.key); !m.empty()) {
      OnMigration(kv);
    }
  }

  void OnWorkload(const std::string& name, const KeyValue& kv) {
    auto w = cluster::ParseRecord<api::Workload>(kv.value, &cluster::WorkloadFromJson);
    if (!w.ok()) return;
    if (w->status.node != node_) {
      if (running_.erase(name)) dirty_ = true;
      return;
    }
    if (w->status.phase == api::WorkloadPhase::kScheduled) {
      // The real agent starts the container here, then reports it.
      w->status.phase = api::WorkloadPhase::kRunning;
      w->status.pid = 4242;
      w->status.started_ms = clock_.WallMillis();
      w->status.message.clear();
      Txn txn;
      txn.compares.push_back(Compare::Unchanged(kv.key, kv.mod_revision));
      txn.then_ops.push_back(TxnOp::Put(kv.key, cluster::WorkloadToJson(*w).dump()));
      auto r = store_.Commit(txn);
      if (r.ok() && r->succeeded) {
        ++started_;
      } else {
        ++cas_lost_;  // the record changed; its next event decides
      }
    }
    if (w->status.phase == api::WorkloadPhase::kRunning ||
        w->status.phase == api::WorkloadPhase::kMigrating) {
      if (running_.insert(name).second) dirty_ = true;
    }
  }

  // As the source: picks a Pending order up (Preparing), and on seeing its
  // own Preparing ends it Succeeded (no time spent moving anything).
  void OnMigration(const KeyValue& kv) {
    auto m = cluster::ParseRecord<api::Migration>(kv.value, &cluster::MigrationFromJson);
    if (!m.ok() || m->source != node_ || m->cancel_requested_ms != 0) return;
    if (m->phase == api::MigrationPhase::kPending) {
      m->phase = api::MigrationPhase::kPreparing;
      m->updated_ms = clock_.WallMillis();
      Txn txn;
      txn.compares.push_back(Compare::Unchanged(kv.key, kv.mod_revision));
      txn.then_ops.push_back(TxnOp::Put(kv.key, cluster::MigrationToJson(*m).dump()));
      auto r = store_.Commit(txn);
      if (!r.ok() || !r->succeeded) ++cas_lost_;
      return;
    }
    if (m->phase != api::MigrationPhase::kPreparing) return;
    const std::string wkey = keys_.Workload(m->workload);
    auto got = store_.Get(wkey);
    if (!got.ok() || !got->kv) return;
    auto w = cluster::ParseRecord<api::Workload>(got->kv->value, &cluster::WorkloadFromJson);
    if (!w.ok() || w->status.migration != m->id || w->status.node != node_) return;
    const int64_t now = clock_.WallMillis();
    w->status.node = m->target;
    w->status.epoch += 1;
    w->status.phase = api::WorkloadPhase::kRunning;
    w->status.migration.clear();
    w->status.migrations.push_back(m->id);
    w->status.started_ms = now;
    m->phase = api::MigrationPhase::kSucceeded;
    m->updated_ms = m->finished_ms = now;
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(wkey, got->kv->mod_revision));
    txn.compares.push_back(Compare::Unchanged(kv.key, kv.mod_revision));
    txn.then_ops.push_back(TxnOp::Put(wkey, cluster::WorkloadToJson(*w).dump()));
    txn.then_ops.push_back(TxnOp::Put(kv.key, cluster::MigrationToJson(*m).dump()));
    auto r = store_.Commit(txn);
    if (r.ok() && r->succeeded) {
      ++migrated_;
    } else {
      ++cas_lost_;
    }
  }

  EtcdStateStore store_;
  std::string node_;
  cluster::KeyLayout keys_;
  Clock& clock_;
  int64_t lease_ = 0;
  std::unique_ptr<LeaseKeepAlive> keepalive_;
  std::set<std::string> running_;  // the Run thread's
  bool dirty_ = true;
  std::atomic<int64_t> started_{0}, migrated_{0}, cas_lost_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- the bench's view of etcd -------------------------------------------------

class EtcdObserver {
 public:
  EtcdObserver(const std::string& endpoint, cluster::KeyLayout keys)
      : store_(testing::TestEtcdConfig(endpoint)), keys_(keys) {}
  ~EtcdObserver() { Stop(); }
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    if (stop_.exchange(true)) return;
    if (thread_.joinable()) thread_.join();
  }

  struct Group {
    std::set<std::string> running;  // names Running now
    std::set<std::string> present;
    int64_t changes = 0;  // (phase, node, epoch) changes of its records, creation included
    Steady::time_point last_running{};  // when `running` last grew
  };

  // Names starting with `prefix`.
  Group GroupOf(const std::string& prefix) const {
    std::lock_guard lock(mu_);
    Group g;
    for (const auto& [name, w] : workloads_) {
      if (name.rfind(prefix, 0) != 0) continue;
      g.present.insert(name);
      if (w.phase == api::WorkloadPhase::kRunning) g.running.insert(name);
      g.changes += w.changes;
      g.last_running = std::max(g.last_running, w.running_at);
    }
    return g;
  }
  std::string NodeOf(const std::string& name) const {
    std::lock_guard lock(mu_);
    auto it = workloads_.find(name);
    return it == workloads_.end() ? "" : it->second.node;
  }
  // Waits until migration `id` has a record; its first sighting.
  std::optional<Steady::time_point> WaitMigration(const std::string& id, double timeout_s) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                 [&] { return migrations_.count(id) > 0; });
    auto it = migrations_.find(id);
    if (it == migrations_.end()) return std::nullopt;
    return it->second.seen;
  }
  bool WaitMigrationDone(const std::string& id, double timeout_s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] {
      auto it = migrations_.find(id);
      return it != migrations_.end() && api::IsFinal(it->second.phase);
    });
  }
  // Waits until `pred` holds over the group `prefix`.
  bool WaitGroup(const std::string& prefix, const std::function<bool(const Group&)>& pred,
                 double timeout_s) {
    auto start = Steady::now();
    while (SecondsSince(start) < timeout_s) {
      if (pred(GroupOf(prefix))) return true;
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
    return pred(GroupOf(prefix));
  }

 private:
  struct Workload {
    api::WorkloadPhase phase = api::WorkloadPhase::kPending;
    std::string node;
    int64_t epoch = -1;
    int64_t changes = 0;
    Steady::time_point running_at{};
  };
  struct Migration {
    Steady::time_point seen;
    api::MigrationPhase phase = api::MigrationPhase::kPending;
  };

  void Run() {
    while (!stop_) {
      auto list = store_.List(keys_.prefix);
      if (!list.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      {
        std::lock_guard lock(mu_);
        for (const auto& kv : list->kvs) OnPutLocked(kv);
      }
      cv_.notify_all();
      WatchOptions wo;
      wo.key = keys_.prefix;
      wo.prefix = true;
      wo.start_revision = list->revision + 1;
      auto watcher = store_.Watch(wo);
      if (!watcher.ok()) continue;
      while (!stop_) {
        auto batch = (*watcher)->Next(std::chrono::milliseconds(200));
        if (!batch.ok()) break;
        if (batch->empty()) continue;
        {
          std::lock_guard lock(mu_);
          for (const auto& ev : *batch) {
            if (ev.type == kmosix::WatchEvent::Type::kPut) {
              OnPutLocked(ev.kv);
            } else if (auto n = cluster::KeyLayout::NameIn(keys_.Workloads(), ev.kv.key);
                       !n.empty()) {
              workloads_.erase(n);
            }
          }
        }
        cv_.notify_all();
      }
    }
  }

  void OnPutLocked(const KeyValue& kv) {
    const auto now = Steady::now();
    if (auto n = cluster::KeyLayout::NameIn(keys_.Workloads(), kv.key); !n.empty()) {
      auto w = cluster::ParseRecord<api::Workload>(kv.value, &cluster::WorkloadFromJson);
      if (!w.ok()) return;
      Workload& t = workloads_[n];
      const auto& st = w->status;
      if (t.epoch < 0 || t.phase != st.phase || t.node != st.node || t.epoch != st.epoch) {
        ++t.changes;
        if (st.phase == api::WorkloadPhase::kRunning && t.phase != st.phase) t.running_at = now;
      }
      t.phase = st.phase;
      t.node = st.node;
      t.epoch = st.epoch;
    } else if (auto id = cluster::KeyLayout::NameIn(keys_.Migrations(), kv.key); !id.empty()) {
      auto m = cluster::ParseRecord<api::Migration>(kv.value, &cluster::MigrationFromJson);
      if (!m.ok()) return;
      auto [it, added] = migrations_.try_emplace(id);
      if (added) it->second.seen = now;
      it->second.phase = m->phase;
    }
  }

  EtcdStateStore store_;
  cluster::KeyLayout keys_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Workload> workloads_;
  std::map<std::string, Migration> migrations_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- the user's view of the API server ------------------------------------------

// List then watch one resource in `ns` (relist on 410), handing every object
// version to `on_object`.
class KubeObserver {
 public:
  KubeObserver(kube::Client& client, kube::Resource r, std::function<void(const json&)> on_object)
      : client_(client), r_(std::move(r)), on_object_(std::move(on_object)) {}
  ~KubeObserver() { Stop(); }
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    if (stop_.exchange(true)) return;
    if (thread_.joinable()) thread_.join();
  }
  bool synced() const { return synced_.load(); }

 private:
  void Run() {
    std::string rv;
    while (!stop_) {
      if (rv.empty()) {
        auto list = client_.List(r_, kNamespace, {});
        if (!list.ok()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          continue;
        }
        for (const auto& o : list->items) on_object_(o);
        rv = list->resource_version;
        synced_ = true;
      }
      Status s = client_.Watch(
          r_, kNamespace, rv, {},
          [&](const kube::WatchEvent& ev) {
            if (auto m = ev.object.find("metadata"); m != ev.object.end() && m->is_object())
              rv = m->value("resourceVersion", rv);
            if (ev.type == kube::EventType::kAdded || ev.type == kube::EventType::kModified)
              on_object_(ev.object);
            return !stop_.load();
          },
          stop_);
      if (s.code() == Code::kConflict) {
        rv.clear();
      } else if (!s.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
  }

  kube::Client& client_;
  kube::Resource r_;
  std::function<void(const json&)> on_object_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> synced_{false};
  std::thread thread_;
};

// The status of MigratableWorkload objects as the watch shows them.
class WorkloadStatusTracker {
 public:
  void OnObject(const json& o) {
    const std::string name = o["metadata"].value("name", "");
    const json status = o.contains("status") ? o["status"] : json();
    json essential = status;
    if (essential.is_object() && essential.contains("conditions") &&
        essential["conditions"].is_array())
      for (auto& c : essential["conditions"])
        if (c.is_object()) c.erase("lastTransitionTime");
    // Hashes, not copies: the process's RSS is measured.
    const size_t status_hash = status.is_null() ? 0 : std::hash<std::string>{}(status.dump());
    const size_t essential_hash =
        essential.is_null() ? 0 : std::hash<std::string>{}(essential.dump());
    std::lock_guard lock(mu_);
    Track& t = tracks_[name];
    if (status_hash != t.status) {
      if (status_hash != 0) ++t.versions;
      t.status = status_hash;
    }
    if (essential_hash != t.essential) {
      if (essential_hash != 0) ++t.changes;
      t.essential = essential_hash;
    }
    if (!t.running && status.is_object() && status.value("phase", "") == "Running") {
      t.running = true;
      t.running_at = Steady::now();
      ++running_;
      last_running_ = Steady::now();
      cv_.notify_all();
    }
  }
  bool WaitRunning(size_t n, double timeout_s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                        [&] { return running_ >= n; });
  }
  size_t running() const {
    std::lock_guard lock(mu_);
    return running_;
  }
  Steady::time_point last_running() const {
    std::lock_guard lock(mu_);
    return last_running_;
  }
  // Totals over the objects: status versions written, real changes.
  std::pair<int64_t, int64_t> Totals() const {
    std::lock_guard lock(mu_);
    int64_t v = 0, c = 0;
    for (const auto& [n, t] : tracks_) {
      v += t.versions;
      c += t.changes;
    }
    return {v, c};
  }
  // When each object first showed status.phase Running.
  std::map<std::string, Steady::time_point> RunningTimes() const {
    std::lock_guard lock(mu_);
    std::map<std::string, Steady::time_point> out;
    for (const auto& [n, t] : tracks_)
      if (t.running) out[n] = t.running_at;
    return out;
  }
  // The distribution of real changes per object: changes -> objects.
  std::map<int64_t, int64_t> ChangeHistogram() const {
    std::lock_guard lock(mu_);
    std::map<int64_t, int64_t> h;
    for (const auto& [n, t] : tracks_) ++h[t.changes];
    return h;
  }

 private:
  struct Track {
    size_t status = 0;  // 0: none yet
    size_t essential = 0;
    int64_t versions = 0;
    int64_t changes = 0;
    bool running = false;
    Steady::time_point running_at{};
  };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Track> tracks_;
  size_t running_ = 0;
  Steady::time_point last_running_{};
};

// Migration objects' status.phase as the watch shows it.
class MigrationTracker {
 public:
  void OnObject(const json& o) {
    const std::string name = o["metadata"].value("name", "");
    std::string phase;
    if (o.contains("status") && o["status"].is_object()) phase = o["status"].value("phase", "");
    std::lock_guard lock(mu_);
    phases_[name] = phase;
    cv_.notify_all();
  }
  std::string WaitFinal(const std::string& name, double timeout_s) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] {
      auto it = phases_.find(name);
      return it != phases_.end() &&
             (it->second == "Succeeded" || it->second == "Failed" || it->second == "RolledBack");
    });
    auto it = phases_.find(name);
    return it == phases_.end() ? "" : it->second;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> phases_;
};

// ---- statistics and printing ----------------------------------------------------

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

struct Table {
  explicit Table(std::string t) : title(std::move(t)) {}
  std::string title;
  std::vector<std::array<std::string, 3>> rows;
  void Add(const std::string& what, const std::string& value, const std::string& unit) {
    rows.push_back({what, value, unit});
  }
  void Print() const {
    std::printf("\n### %s\n\n| what | value | unit |\n|---|---|---|\n", title.c_str());
    for (const auto& r : rows)
      std::printf("| %s | %s | %s |\n", r[0].c_str(), r[1].c_str(), r[2].c_str());
    std::fflush(stdout);
  }
};

void Note(const std::string& s) {
  std::fprintf(stderr, "kube-bridge-bench: %s\n", s.c_str());
  std::fflush(stderr);
}

struct Flags {
  int workloads = 1000;
  int nodes = 8;
  int migrations = 200;
  int parallel = 8;
  double timeout = 600;
};

bool ParseFlags(int argc, char** argv, Flags& f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return false;
    std::string v = argv[++i];
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (!end || *end != '\0' || x < 0) return false;
    if (a == "--workloads") {
      f.workloads = static_cast<int>(x);
    } else if (a == "--nodes") {
      f.nodes = static_cast<int>(x);
    } else if (a == "--migrations") {
      f.migrations = static_cast<int>(x);
    } else if (a == "--parallel") {
      f.parallel = std::max(1, static_cast<int>(x));
    } else if (a == "--timeout") {
      f.timeout = x;
    } else {
      return false;
    }
  }
  return f.workloads > 0 && f.nodes >= 2;
}

// Runs fn(i) for i in [0, n) on `threads` threads.
void ParallelFor(int n, int threads, const std::function<void(int thread, int i)>& fn) {
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int i = next++; i < n; i = next++) fn(t, i);
    });
  for (auto& th : pool) th.join();
}

api::WorkloadSpec Spec(const std::string& name) {
  api::WorkloadSpec s;
  s.name = name;
  s.image = "kmosix.local/demo:latest";
  s.args = {"/bin/kmosix-demo", "--mem", "16"};
  s.cpus = 0.1;
  s.memory_mib = 16;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, flags)) {
    std::fprintf(stderr,
                 "usage: %s [--workloads 1000] [--nodes 8 (>= 2)] [--migrations 200] "
                 "[--parallel 8] [--timeout 600]\n",
                 argv[0]);
    return 2;
  }
  flags.migrations = std::min(flags.migrations, flags.workloads);
  // The harness finds the tools and the repo from its header's path, which is
  // relative in a build with CCACHE_BASEDIR: point it at them from here.
  const std::string repo = KMX_REPO_DIR;
  if (!std::getenv("KMX_KUBE_APISERVER_BIN") || !std::getenv("KMX_KUBECTL_BIN")) {
    std::string dir;
    if (FILE* p = ::popen((repo + "/scripts/kube-tools --print 2>/dev/null").c_str(), "r")) {
      char buf[512];
      while (std::fgets(buf, sizeof buf, p)) dir += buf;
      ::pclose(p);
    }
    while (!dir.empty() && (dir.back() == '\n' || dir.back() == '\r')) dir.pop_back();
    ::setenv("KMX_KUBE_APISERVER_BIN", (dir + "/kube-apiserver").c_str(), 0);
    ::setenv("KMX_KUBECTL_BIN", (dir + "/kubectl").c_str(), 0);
  }
  if (auto why = testing::KubeApiserverSkipReason(); !why.empty()) {
    std::printf("kube_bridge_bench SKIPPED: %s\n", why.c_str());
    return 0;
  }
  // Logs go to stderr: stdout is the tables.
  spdlog::set_default_logger(spdlog::stderr_color_mt("kube-bridge-bench"));
  spdlog::set_level(spdlog::level::warn);
  const int N = flags.workloads;

  // ---- servers ----
  testing::PrivateKubeApiserver kube_api;
  if (!kube_api.Start()) {
    Note("kube-apiserver did not start: " + kube_api.error());
    return 1;
  }
  const std::string crd = repo + "/crd/";
  for (const char* f : {"kmosix.io_migratableworkloads.yaml", "kmosix.io_migrations.yaml",
                        "kmosix.io_migrationpolicies.yaml"}) {
    if (!kube_api.ApplyCrds(crd + f)) {
      Note("CRDs: " + kube_api.error());
      return 1;
    }
  }
  testing::PrivateEtcd kmx_etcd;
  if (!kmx_etcd.Start()) {
    Note("etcd did not start; see " + kmx_etcd.dir() + "/etcd.log");
    return 1;
  }
  Note("kube-apiserver " + kube_api.server() + ", kmosix etcd " + kmx_etcd.endpoint());

  SystemClock clock;
  SystemRandom random;
  cluster::KeyLayout keys;
  auto kcfg = kube::LoadKubeconfig(kube_api.kubeconfig());
  if (!kcfg.ok()) {
    Note("kubeconfig: " + kcfg.status().ToString());
    return 1;
  }
  auto bridge_http = kube::HttpClient::New(*kcfg, clock);
  auto observer_http = kube::HttpClient::New(*kcfg, clock);
  if (!bridge_http.ok() || !observer_http.ok()) {
    Note("client: " + bridge_http.status().ToString());
    return 1;
  }
  std::vector<std::unique_ptr<kube::HttpClient>> user_http;
  for (int i = 0; i < flags.parallel; ++i) {
    auto c = kube::HttpClient::New(*kcfg, clock);
    if (!c.ok()) return 1;
    user_http.push_back(std::move(*c));
  }
  CountingClient counting(**bridge_http);

  // ---- agents, observers, controller, bridge ----
  std::vector<std::string> node_names;
  std::vector<std::unique_ptr<SimAgent>> agents;
  for (int i = 0; i < flags.nodes; ++i) {
    node_names.push_back("node" + std::to_string(i + 1));
    agents.push_back(
        std::make_unique<SimAgent>(kmx_etcd.endpoint(), node_names.back(), keys, clock));
    if (Status s = agents.back()->Start(); !s.ok()) {
      Note("agent: " + s.ToString());
      return 1;
    }
  }
  EtcdObserver etcd_view(kmx_etcd.endpoint(), keys);
  etcd_view.Start();
  WorkloadStatusTracker mw_status;
  MigrationTracker mig_status;
  KubeObserver mw_watch(**observer_http, kube::MigratableWorkloads(),
                        [&](const json& o) { mw_status.OnObject(o); });
  KubeObserver mig_watch(**observer_http, kube::Migrations(),
                         [&](const json& o) { mig_status.OnObject(o); });
  mw_watch.Start();
  mig_watch.Start();

  EtcdStateStore ctl_store(testing::TestEtcdConfig(kmx_etcd.endpoint()));
  controller::ControllerOptions copts;
  copts.identity = "bench";
  copts.balance = false;
  controller::Controller ctl(ctl_store, clock, random, copts, nullptr);
  bridge::BridgeOptions bopts;
  bopts.identity = "bench";
  bridge::Bridge bridge(counting, ctl, clock, random, bopts);
  const std::set<int> before_bridge = Tids();
  bridge.Start();
  std::set<int> bridge_tids;
  for (int t : Tids())
    if (!before_bridge.count(t)) bridge_tids.insert(t);
  const std::set<int> before_ctl = Tids();
  ctl.Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::set<int> ctl_tids;
  for (int t : Tids())
    if (!before_ctl.count(t) && !bridge_tids.count(t)) ctl_tids.insert(t);

  auto ready = [&] {
    if (!ctl.IsLeader() || !ctl.Ready() || !bridge.Synced() || !mw_watch.synced() ||
        !mig_watch.synced())
      return false;
    size_t n = 0;
    for (const auto& v : ctl.ListNodes()) n += v.ready && !v.cordoned;
    return n == static_cast<size_t>(flags.nodes);
  };
  {
    auto start = Steady::now();
    while (!ready() && SecondsSince(start) < 60)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!ready()) {
      Note("controller not leading/ready, or nodes not ready, after 60 s");
      return 1;
    }
  }
  Note("ready: leader, " + std::to_string(flags.nodes) + " nodes, bridge synced; " +
       std::to_string(bridge_tids.size()) + " bridge threads, " + std::to_string(ctl_tids.size()) +
       " controller threads");

  auto mark = [&] {
    CpuMark m;
    m.process = ProcessCpu();
    m.bridge = ThreadsCpu(bridge_tids);
    m.controller = ThreadsCpu(ctl_tids);
    m.children = ChildrenCpu(kube_api.etcd().dir(), kmx_etcd.dir());
    return m;
  };
  auto child = [](const CpuMark& a, const CpuMark& b, const std::string& k) {
    auto x = a.children.find(k);
    auto y = b.children.find(k);
    return (x == a.children.end() ? 0 : x->second) - (y == b.children.end() ? 0 : y->second);
  };

  std::printf("## kube_bridge_bench: %d workloads, %d nodes, %d migrations, %d parallel clients\n",
              N, flags.nodes, flags.migrations, flags.parallel);
  std::string commit;
  if (FILE* p =
          ::popen(("git -C " + repo + " describe --always --dirty 2>/dev/null").c_str(), "r")) {
    char buf[128];
    while (std::fgets(buf, sizeof buf, p)) commit += buf;
    ::pclose(p);
  }
  while (!commit.empty() && commit.back() == '\n') commit.pop_back();
  double load1 = 0;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load1) != 1) load1 = 0;
    std::fclose(f);
  }
  std::printf(
      "\nkube-apiserver 1.37 + etcd (private), kmosix etcd (private), controller + bridge + %d "
      "simulated agents in this process; %u cores, load average %.1f at start; tree %s.\n",
      flags.nodes, std::thread::hardware_concurrency(), load1, commit.c_str());

  // ---- (a) baseline: the typed API (REST) ----
  double base_all_running = 0, base_creates = 0, base_process_cpu = 0, base_rss_mib = 0;
  std::vector<double> base_order_ms;
  int base_errors = 0;
  {
    malloc_trim(0);
    const long rss0 = RssKiB();
    const CpuMark m0 = mark();
    std::atomic<int> errors{0};
    auto t0 = Steady::now();
    ParallelFor(N, flags.parallel, [&](int, int i) {
      auto c = ctl.CreateWorkload(Spec(Seq("rest-", i)));
      if (!c.ok()) ++errors;
    });
    base_creates = SecondsSince(t0);
    const bool all = etcd_view.WaitGroup(
        "rest-", [&](const EtcdObserver::Group& g) { return g.running.size() >= size_t(N); },
        flags.timeout);
    const auto g = etcd_view.GroupOf("rest-");
    base_all_running = std::chrono::duration<double>(g.last_running - t0).count();
    const CpuMark m1 = mark();
    base_process_cpu = m1.process - m0.process;
    malloc_trim(0);
    base_rss_mib = (RssKiB() - rss0) / 1024.0;
    base_errors = errors;

    // REST migrations, one at a time: call -> the record in etcd.
    int refused = 0;
    for (int i = 0; i < flags.migrations; ++i) {
      const std::string name = Seq("rest-", i);
      const std::string node = etcd_view.NodeOf(name);
      auto it = std::find(node_names.begin(), node_names.end(), node);
      if (it == node_names.end()) continue;
      api::MigrationRequest req;
      req.workload = name;
      req.target = node_names[(it - node_names.begin() + 1) % node_names.size()];
      req.requested_by = std::string(api::kRequestedByApi);
      auto t = Steady::now();
      auto m = ctl.RequestMigration(req);
      if (!m.ok()) {
        ++refused;
        continue;
      }
      auto seen = etcd_view.WaitMigration(m->id, 30);
      if (seen) base_order_ms.push_back(Ms(*seen - t));
      etcd_view.WaitMigrationDone(m->id, 30);
    }

    Table t{"(a) BASELINE: " + std::to_string(N) + " workloads through the typed API (REST)"};
    t.Add("creates (Controller::CreateWorkload, " + std::to_string(flags.parallel) + " threads)",
          std::to_string(N - base_errors) + " ok, " + std::to_string(base_errors) + " failed", "");
    t.Add("all create calls returned", Fmt(base_creates), "s");
    t.Add(all ? "all Running in etcd" : "NOT all Running in etcd (timeout)", Fmt(base_all_running),
          "s");
    t.Add("record changes (phase, node, epoch) per workload",
          Fmt(static_cast<double>(g.changes) / N), "");
    t.Add("process CPU (controller, agents, bench, gRPC)", Fmt(base_process_cpu), "s");
    t.Add("process RSS growth (controller caches, agents)", Fmt(base_rss_mib, 1), "MiB");
    t.Add("controller threads CPU", Fmt(m1.controller - m0.controller), "s");
    t.Add("bridge threads CPU (idle: no objects)", Fmt(m1.bridge - m0.bridge), "s");
    t.Add("etcd (kmosix) CPU", Fmt(child(m1, m0, "etcd (kmosix)")), "s");
    t.Add("REST migrations: call -> order in etcd, p50 / p99 / max (n=" +
              std::to_string(base_order_ms.size()) + ", refused " + std::to_string(refused) + ")",
          Fmt(Percentile(base_order_ms, 0.5), 1) + " / " + Fmt(Percentile(base_order_ms, 0.99), 1) +
              " / " + Fmt(Percentile(base_order_ms, 1.0), 1),
          "ms");
    t.Print();

    // Clean up: the next phase starts from an empty cluster.
    ParallelFor(N, flags.parallel, [&](int, int i) { (void)ctl.DeleteWorkload(Seq("rest-", i)); });
    etcd_view.WaitGroup(
        "rest-", [](const EtcdObserver::Group& g) { return g.present.empty(); }, 60);
    auto start = Steady::now();
    while (SecondsSince(start) < 30) {
      bool clean = true;
      for (const auto& v : ctl.ListNodes())
        if (v.load && !v.load->workloads.empty()) clean = false;
      if (clean) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  // ---- (b) MigratableWorkloads applied at once ----
  double kube_all_running = 0, bridge_cpu = 0;
  double writes_per = 0, changes_per = 0;
  {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    malloc_trim(0);
    const long rss0 = RssKiB();
    const auto c0 = counting.Snapshot();
    const CpuMark m0 = mark();
    std::atomic<int> errors{0};
    std::vector<Steady::time_point> returned(static_cast<size_t>(N));
    auto t0 = Steady::now();
    ParallelFor(N, flags.parallel, [&](int th, int i) {
      api::WorkloadSpec spec = Spec("");
      spec.origin = api::WorkloadOrigin{bridge::kOriginKind, kNamespace, Seq("mw-", i), ""};
      auto c = user_http[th]->Create(kube::MigratableWorkloads(), kNamespace,
                                     bridge::MigratableWorkloadObject(spec));
      returned[static_cast<size_t>(i)] = Steady::now();
      if (!c.ok()) {
        if (++errors <= 3) Note("create: " + c.status().ToString());
      }
    });
    const double creates = SecondsSince(t0);
    const bool all = mw_status.WaitRunning(static_cast<size_t>(N), flags.timeout);
    kube_all_running = std::chrono::duration<double>(mw_status.last_running() - t0).count();
    const std::string mw_prefix = std::string(kNamespace) + "-mw-";
    etcd_view.WaitGroup(
        mw_prefix, [&](const EtcdObserver::Group& g) { return g.running.size() >= size_t(N); }, 10);
    const auto g = etcd_view.GroupOf(mw_prefix);
    const double etcd_all_running = std::chrono::duration<double>(g.last_running - t0).count();
    const CpuMark m1 = mark();
    malloc_trim(0);
    const long rss1 = RssKiB();
    // Writes after the last Running (trailing ones count too).
    WaitQuiet(counting, 2.0, 20);
    const CpuMark m2 = mark();
    const auto c1 = counting.Snapshot();
    const auto [versions, changes] = mw_status.Totals();
    std::vector<double> to_running_s;
    double first_running = 0;
    {
      const auto times = mw_status.RunningTimes();
      bool first = true;
      for (int i = 0; i < N; ++i) {
        auto it = times.find(Seq("mw-", i));
        if (it == times.end()) continue;
        to_running_s.push_back(
            std::chrono::duration<double>(it->second - returned[static_cast<size_t>(i)]).count());
        const double since_t0 = std::chrono::duration<double>(it->second - t0).count();
        first_running = first ? since_t0 : std::min(first_running, since_t0);
        first = false;
      }
    }

    auto d = [&](const std::string& k) { return Diff(c1, c0, k); };
    const auto us = d("UpdateStatus migratableworkloads");
    const auto mp = d("MergePatch migratableworkloads");
    const auto ev = d("Create events");
    int64_t calls = 0, conflicts = 0, errs = 0;
    double call_s = 0;
    for (const auto& [k, v] : c1) {
      if (k.rfind("Watch", 0) == 0) continue;
      auto x = d(k);
      calls += x.calls;
      conflicts += x.conflicts;
      errs += x.errors;
      call_s += x.seconds;
    }
    bridge_cpu = m2.bridge - m0.bridge;
    writes_per = static_cast<double>(us.calls) / N;
    changes_per = static_cast<double>(changes) / N;
    std::string hist;
    for (const auto& [k, v] : mw_status.ChangeHistogram())
      hist += (hist.empty() ? "" : ", ") + std::to_string(v) + " x " + std::to_string(k);

    Table t{"(b) KUBERNETES: " + std::to_string(N) + " MigratableWorkloads applied at once"};
    t.Add("creates (POST through the client, " + std::to_string(flags.parallel) +
              " threads, own connections)",
          std::to_string(N - errors) + " ok, " + std::to_string(errors.load()) + " failed", "");
    t.Add("all create calls returned", Fmt(creates), "s");
    t.Add("first status.phase Running in the API server", Fmt(first_running), "s");
    t.Add("per workload: create returned -> status.phase Running, p50 / p99",
          Fmt(Percentile(to_running_s, 0.5)) + " / " + Fmt(Percentile(to_running_s, 0.99)), "s");
    t.Add("all Running in etcd (kmosix records)", Fmt(etcd_all_running), "s");
    t.Add(all ? "all status.phase Running in the API server"
              : "NOT all status.phase Running in the API server (timeout)",
          Fmt(kube_all_running), "s");
    t.Add("baseline (a): all Running through the typed API", Fmt(base_all_running), "s");
    t.Add("Kubernetes / baseline", Fmt(kube_all_running / std::max(1e-9, base_all_running)), "x");
    t.Add("status writes (UpdateStatus) per workload", Fmt(writes_per),
          "(" + std::to_string(us.calls) + " calls, " + std::to_string(us.conflicts) +
              " conflicts, " + std::to_string(us.errors) + " errors)");
    t.Add("real status changes per workload (watch; lastTransitionTime ignored)", Fmt(changes_per),
          "(" + hist + ")");
    t.Add("status versions per workload (watch; any byte)", Fmt(static_cast<double>(versions) / N),
          "");
    t.Add("status writes per real change",
          Fmt(static_cast<double>(us.calls) / std::max<int64_t>(1, changes)), "");
    t.Add("record changes in etcd (phase, node, epoch) per workload",
          Fmt(static_cast<double>(g.changes) / N), "");
    t.Add("metadata patches (MergePatch) per workload", Fmt(static_cast<double>(mp.calls) / N),
          "(" + std::to_string(mp.conflicts) + " conflicts)");
    t.Add("Events created per workload", Fmt(static_cast<double>(ev.calls) / N), "");
    t.Add("all bridge API calls but watches per workload", Fmt(static_cast<double>(calls) / N),
          "(" + std::to_string(conflicts) + " conflicts, " + std::to_string(errs) + " errors)");
    t.Add("mean API call time (bridge)", Fmt(1000 * call_s / std::max<int64_t>(1, calls), 1), "ms");
    t.Add("bridge time inside API calls (one worker: serial)", Fmt(call_s), "s");
    for (const auto& [k, v] : c1) {
      if (k.rfind("Watch", 0) == 0) continue;
      auto x = d(k);
      if (x.calls == 0) continue;
      t.Add("- " + k,
            std::to_string(x.calls) + " calls, " + Fmt(1000 * x.seconds / x.calls, 1) + " ms mean" +
                (x.conflicts ? ", " + std::to_string(x.conflicts) + " conflicts" : ""),
            "");
    }
    t.Add("bridge threads CPU (worker + 3 informers)", Fmt(bridge_cpu), "s");
    t.Add("bridge CPU per workload", Fmt(1000 * bridge_cpu / N, 2), "ms");
    t.Add("controller threads CPU", Fmt(m2.controller - m0.controller), "s");
    t.Add("process CPU (all threads, to all Running)", Fmt(m1.process - m0.process), "s");
    t.Add("process CPU (a) baseline, same span", Fmt(base_process_cpu), "s");
    t.Add("process CPU (b) - (a)", Fmt(m1.process - m0.process - base_process_cpu), "s");
    t.Add("kube-apiserver CPU", Fmt(child(m2, m0, "kube-apiserver")), "s");
    t.Add("etcd (API server) CPU", Fmt(child(m2, m0, "etcd (API server)")), "s");
    t.Add("etcd (kmosix) CPU", Fmt(child(m2, m0, "etcd (kmosix)")), "s");
    t.Add("process RSS growth (bridge caches, controller caches, agents, bench's trackers)",
          Fmt((rss1 - rss0) / 1024.0, 1), "MiB");
    t.Add("process RSS growth (b) - (a): the bridge's share",
          Fmt((rss1 - rss0) / 1024.0 - base_rss_mib, 1), "MiB");
    if (auto one = (*observer_http)->Get(kube::MigratableWorkloads(), kNamespace, Seq("mw-", 0));
        one.ok()) {
      const json* mf = nullptr;
      if (auto m = one->find("metadata"); m != one->end() && m->is_object())
        if (auto f = m->find("managedFields"); f != m->end()) mf = &*f;
      t.Add(
          "one MigratableWorkload as the informer caches it (JSON text; of it "
          "metadata.managedFields)",
          std::to_string(one->dump().size()) + " (" + std::to_string(mf ? mf->dump().size() : 0) +
              ")",
          "bytes");
    }
    t.Add("process RSS now / peak",
          Fmt(RssKiB() / 1024.0, 1) + " / " + Fmt(PeakRssKiB() / 1024.0, 1), "MiB");
    t.Print();
  }

  // ---- (c) Migration objects: watch event -> etcd order ----
  std::vector<double> order_ms, create_ms, e2e_ms;
  {
    const auto c0 = counting.Snapshot();
    const CpuMark m0 = mark();
    int timeouts = 0, failed = 0;
    for (int i = 0; i < flags.migrations; ++i) {
      const std::string mw = Seq("mw-", i);
      const std::string node = etcd_view.NodeOf(bridge::WorkloadNameFor(kNamespace, mw));
      auto it = std::find(node_names.begin(), node_names.end(), node);
      if (it == node_names.end()) {
        ++failed;
        continue;
      }
      bridge::MigrationSpec spec{mw, node_names[(it - node_names.begin() + 1) % node_names.size()]};
      const std::string name = Seq("mig-", i);
      auto t = Steady::now();
      auto created = user_http[0]->Create(kube::Migrations(), kNamespace,
                                          bridge::MigrationObject(kNamespace, name, spec));
      auto returned = Steady::now();
      if (!created.ok()) {
        Note("create " + name + ": " + created.status().ToString());
        ++failed;
        continue;
      }
      create_ms.push_back(Ms(returned - t));
      const std::string id =
          bridge::MigrationIdFor((*created)["metadata"].value("uid", std::string()));
      auto seen = etcd_view.WaitMigration(id, 30);
      if (!seen) {
        ++timeouts;
        continue;
      }
      order_ms.push_back(Ms(*seen - returned));
      const std::string phase = mig_status.WaitFinal(name, 30);
      if (phase != "Succeeded") {
        ++failed;
        continue;
      }
      e2e_ms.push_back(Ms(Steady::now() - t));
    }
    WaitQuiet(counting, 2.0, 20);
    const CpuMark m1 = mark();
    const auto c1 = counting.Snapshot();
    const double M = std::max<double>(1, static_cast<double>(order_ms.size()));
    auto per = [&](const std::string& k) {
      auto x = Diff(c1, c0, k);
      return Fmt(x.calls / M) +
             (x.conflicts ? " (" + std::to_string(x.conflicts) + " conflicts)" : std::string());
    };
    Table t{"(c) " + std::to_string(flags.migrations) +
            " Migration objects, one at a time: watch event -> etcd order"};
    t.Add("ordered / timed out / failed",
          std::to_string(order_ms.size()) + " / " + std::to_string(timeouts) + " / " +
              std::to_string(failed),
          "");
    t.Add("create call (POST Migration)", Fmt(Percentile(create_ms, 0.5), 1), "ms p50");
    t.Add("create returned -> order in etcd, p50", Fmt(Percentile(order_ms, 0.5), 1), "ms");
    t.Add("create returned -> order in etcd, p90", Fmt(Percentile(order_ms, 0.9), 1), "ms");
    t.Add("create returned -> order in etcd, p99", Fmt(Percentile(order_ms, 0.99), 1), "ms");
    t.Add("create returned -> order in etcd, max", Fmt(Percentile(order_ms, 1.0), 1), "ms");
    t.Add("baseline: REST call -> order in etcd, p50 / p99",
          Fmt(Percentile(base_order_ms, 0.5), 1) + " / " + Fmt(Percentile(base_order_ms, 0.99), 1),
          "ms");
    t.Add("create -> Migration status Succeeded (agent finishes at once), p50 / p99",
          Fmt(Percentile(e2e_ms, 0.5), 1) + " / " + Fmt(Percentile(e2e_ms, 0.99), 1), "ms");
    t.Add("metadata patches (Migration) per migration", per("MergePatch migrations"), "");
    t.Add("status writes (Migration) per migration", per("UpdateStatus migrations"), "");
    t.Add("status writes (MigratableWorkload) per migration",
          per("UpdateStatus migratableworkloads"), "");
    t.Add("Events created per migration", per("Create events"), "");
    t.Add("bridge threads CPU per migration", Fmt(1000 * (m1.bridge - m0.bridge) / M, 2), "ms");
    t.Print();
  }

  // ---- verdicts ----
  std::printf("\n### verdicts (measured, not asserted)\n\n");
  std::printf(
      "- time to all Running: %d MigratableWorkloads in %s s through the API server, %s s for the "
      "same through the typed API (%sx).\n",
      N, Fmt(kube_all_running).c_str(), Fmt(base_all_running).c_str(),
      Fmt(kube_all_running / std::max(1e-9, base_all_running)).c_str());
  std::printf(
      "- status writes: %s per workload for %s real changes per workload: %s (goal: one per real "
      "change).\n",
      Fmt(writes_per).c_str(), Fmt(changes_per).c_str(),
      (writes_per <= changes_per + 0.005
           ? std::string("one write per real change")
           : Fmt(writes_per / std::max(1e-9, changes_per)) + " writes per real change")
          .c_str());
  std::printf("- bridge CPU: %s s for %d workloads (%s ms each).\n", Fmt(bridge_cpu).c_str(), N,
              Fmt(1000 * bridge_cpu / N, 2).c_str());
  std::printf(
      "- watch event -> etcd order: p50 %s ms, p99 %s ms over %zu Migration objects (REST "
      "call -> order: p50 %s ms).\n",
      Fmt(Percentile(order_ms, 0.5), 1).c_str(), Fmt(Percentile(order_ms, 0.99), 1).c_str(),
      order_ms.size(), Fmt(Percentile(base_order_ms, 0.5), 1).c_str());
  std::fflush(stdout);

  Note("stopping");
  mw_watch.Stop();
  mig_watch.Stop();
  bridge.Stop();
  ctl.Stop();
  for (auto& a : agents) a->Stop();
  etcd_view.Stop();
  return 0;
}
