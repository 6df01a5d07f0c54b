// The balancing simulator (see sim.h). One Cluster object runs one strategy
// over one trace: per node the workloads it runs (processor sharing, advanced
// lazily to the time of each change), per workload its remaining work; every
// change of a node reschedules that node's next completion (older completion
// events are recognised by their version and skipped). The ideal is a fluid
// pool and has its own, O(log n) per event, loop.
#include "bench/sim/sim.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <unordered_map>

namespace kmosix::sim {

double SeededRandom::Exponential(double mean) { return -mean * std::log(1.0 - Uniform()); }

void EventQueue::Push(double time, int kind, int64_t id, uint64_t version) {
  heap_.push(Event{time, seq_++, kind, id, version});
}

Event EventQueue::Pop() {
  Event e = heap_.top();
  heap_.pop();
  return e;
}

const char* Name(Strategy s) {
  switch (s) {
    case Strategy::kPlacement:
      return "placement";
    case Strategy::kKmosix:
      return "kmosix";
    case Strategy::kEvictRestart:
      return "evict-restart";
    case Strategy::kIdeal:
      return "ideal";
  }
  return "?";
}

// ---- the trace ------------------------------------------------------------

Status Validate(const TraceConfig& c) {
  if (c.nodes < 1) return InvalidError("nodes must be >= 1");
  if (!(c.load > 0 && c.load < 10)) return InvalidError("load must be in (0, 10)");
  if (!(c.hours > 0)) return InvalidError("hours must be > 0");
  if (!(c.work_min_s > 0 && c.work_max_s > c.work_min_s && c.work_alpha > 0))
    return InvalidError("work distribution: need 0 < min < max and alpha > 0");
  if (!(c.memory_min_mib > 0 && c.memory_max_mib >= c.memory_min_mib))
    return InvalidError("memory distribution: need 0 < min <= max");
  if (!(c.phase_mean_s >= 0 && c.phase_quiet_fraction > 0 && c.phase_quiet_fraction <= 1))
    return InvalidError("phases: need mean >= 0 and 0 < quiet fraction <= 1");
  if (!(c.burst_high >= 0 && c.burst_low >= 0 && c.burst_high + c.burst_low > 0 &&
        c.burst_mean_s > 0))
    return InvalidError("bursts: need non-negative rates and a positive mean duration");
  return Status::Ok();
}

double MeanWork(const TraceConfig& c) {
  const double k = c.work_min_s, p = c.work_max_s, a = c.work_alpha;
  if (std::abs(a - 1.0) < 1e-9) return (k * p / (p - k)) * std::log(p / k);
  const double norm = 1.0 - std::pow(k / p, a);
  return a * std::pow(k, a) / norm * (std::pow(k, 1 - a) - std::pow(p, 1 - a)) / (a - 1);
}

namespace {
// Cores asked: mostly small containers, a few large.
constexpr double kCpus[] = {0.1, 0.25, 0.5, 1, 2};
constexpr double kCpuWeights[] = {0.5, 0.25, 0.15, 0.08, 0.02};
}  // namespace

double MeanCpu(const TraceConfig& config) {
  if (config.unit_cpu) return 1;
  double m = 0;
  for (size_t i = 0; i < std::size(kCpus); ++i) m += kCpus[i] * kCpuWeights[i];
  return m;
}

Trace MakeTrace(const TraceConfig& c, uint64_t seed) {
  SeededRandom r(seed);
  Trace t;
  t.horizon_s = c.hours * 3600;
  t.phases.mean_s = c.phase_mean_s;
  t.phases.quiet_fraction = c.phase_quiet_fraction;
  t.phases.seed = seed * 0x9e3779b97f4a7c15ull + 1;
  t.nodes.resize(static_cast<size_t>(c.nodes));
  for (NodeSpec& n : t.nodes) {
    n.capacity = r.Uniform() < c.big_fraction ? 8 : 4;
    if (c.node_cores > 0) n.capacity = c.node_cores;
    n.speed = r.Uniform() < c.fast_fraction ? 1.5 : 1.0;
    t.capacity += n.capacity * n.speed;
  }
  // Bounded Pareto by inversion.
  const double k = c.work_min_s, p = c.work_max_s, a = c.work_alpha;
  const double ratio = std::pow(k / p, a);
  auto work = [&] {
    const double u = r.Uniform();
    return k / std::pow(1.0 - u * (1.0 - ratio), 1.0 / a);
  };
  const double mean_rate = c.load * t.capacity / (MeanWork(c) * MeanCpu(c));  // per second
  const double avg = (c.burst_high + c.burst_low) / 2;
  bool on = r.Uniform() < 0.5;
  double now = 0, switch_at = r.Exponential(c.burst_mean_s);
  while (true) {
    const double rate = mean_rate * (on ? c.burst_high : c.burst_low) / avg;
    const double next =
        rate > 0 ? now + r.Exponential(1.0 / rate) : std::numeric_limits<double>::infinity();
    if (next >= switch_at) {  // memoryless: redraw in the new state
      now = switch_at;
      on = !on;
      switch_at = now + r.Exponential(c.burst_mean_s);
      if (now >= t.horizon_s) break;
      continue;
    }
    now = next;
    if (now >= t.horizon_s) break;
    Arrival arr;
    arr.time = now;
    double u = r.Uniform(), acc = 0;
    arr.cpu = kCpus[std::size(kCpus) - 1];
    for (size_t i = 0; i < std::size(kCpus); ++i) {
      acc += kCpuWeights[i];
      if (u < acc) {
        arr.cpu = kCpus[i];
        break;
      }
    }
    if (c.unit_cpu) arr.cpu = 1;
    arr.work = work() * arr.cpu;  // CPU-seconds: lifetime on an idle node x cores
    const double mib =
        c.memory_min_mib * std::pow(c.memory_max_mib / c.memory_min_mib, r.Uniform());
    arr.memory_bytes = static_cast<uint64_t>(mib * 1024 * 1024);
    t.arrivals.push_back(arr);
  }
  return t;
}

std::string WriteTraceCsv(const Trace& trace) {
  std::string out = "time_s,cpu,work_cpu_s,memory_mib\n";
  char line[128];
  for (const Arrival& a : trace.arrivals) {
    std::snprintf(line, sizeof line, "%.6f,%g,%.6f,%.3f\n", a.time, a.cpu, a.work,
                  static_cast<double>(a.memory_bytes) / (1024.0 * 1024));
    out += line;
  }
  return out;
}

StatusOr<Trace> ReadTraceCsv(const std::string& csv, const TraceConfig& config, uint64_t seed) {
  TraceConfig none = config;
  none.hours = 1e-9;  // nodes and phases only
  Trace t = MakeTrace(none, seed);
  t.arrivals.clear();
  size_t at = 0;
  int lineno = 0;
  bool header = false;
  while (at < csv.size()) {
    size_t end = csv.find('\n', at);
    if (end == std::string::npos) end = csv.size();
    std::string line = csv.substr(at, end - at);
    at = end + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    if (!header) {
      if (line != "time_s,cpu,work_cpu_s,memory_mib")
        return InvalidError("trace line " + std::to_string(lineno) +
                            ": want the header time_s,cpu,work_cpu_s,memory_mib");
      header = true;
      continue;
    }
    double v[4];
    const char* p = line.c_str();
    const char* const stop = p + line.size();
    for (int k = 0; k < 4; ++k) {
      auto [next, ec] = std::from_chars(p, stop, v[k]);
      const bool last = k == 3;
      if (ec != std::errc() || (last ? next != stop : (next == stop || *next != ',')))
        return InvalidError("trace line " + std::to_string(lineno) + ": want 4 numbers");
      p = next + 1;
    }
    if (!(v[0] >= 0 && v[1] > 0 && v[2] > 0 && v[3] >= 0) ||
        !std::isfinite(v[0] + v[1] + v[2] + v[3]))
      return InvalidError("trace line " + std::to_string(lineno) +
                          ": want time >= 0, cpu > 0, work > 0, memory >= 0");
    t.arrivals.push_back(Arrival{v[0], v[1], v[2], static_cast<uint64_t>(v[3] * 1024 * 1024)});
  }
  if (!header) return InvalidError("trace: no header");
  std::stable_sort(t.arrivals.begin(), t.arrivals.end(),
                   [](const Arrival& a, const Arrival& b) { return a.time < b.time; });
  t.horizon_s = std::max(1.0, t.arrivals.empty() ? 0.0 : t.arrivals.back().time);
  return t;
}

namespace {

using Wall = std::chrono::steady_clock;
double Since(Wall::time_point t0) {
  return std::chrono::duration<double>(Wall::now() - t0).count();
}

enum Kind { kArrival, kNodeDone, kTick, kLanded, kEvictTick, kRetry };

constexpr double kDoneEpsilon = 1e-7;  // CPU-seconds

std::string NodeName(size_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "n%05zu", i);
  return buf;
}
std::string WorkloadName(size_t i) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "w%zu", i);
  return buf;
}
// "n00042" / "w42" -> 42, -1 if malformed.
int64_t Index(const std::string& name) {
  if (name.size() < 2) return -1;
  int64_t v = -1;
  auto [ptr, ec] = std::from_chars(name.data() + 1, name.data() + name.size(), v);
  if (ec != std::errc() || ptr != name.data() + name.size()) return -1;
  return v;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
  k = std::min(k, v.size() - 1);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

// A workload's phases (sim.h): its current ask, the work left in the
// phase, its reference time so far, and its own generator (splitmix64).
struct PhaseState {
  double demand = 0;
  double phase_left = 0;
  double ref = 0;
  bool busy = true;
  uint64_t rng = 0;
};

uint64_t Mix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void NextPhaseLength(const Trace& t, double remaining, PhaseState& p) {
  double len = remaining;
  if (t.phases.mean_s > 0) {
    const double u = static_cast<double>(Mix(p.rng) >> 11) * 0x1.0p-53;
    len = p.demand * -t.phases.mean_s * std::log(1.0 - u);
  }
  p.phase_left = std::min(remaining, len);
  p.ref += p.phase_left / p.demand;
}

// From the start (an arrival, or a restart that redoes the same phases).
void StartPhases(const Trace& t, size_t j, PhaseState& p) {
  const Arrival& a = t.arrivals[j];
  p = PhaseState{};
  p.rng = t.phases.seed ^ (static_cast<uint64_t>(j) * 0xd1342543de82ef95ull);
  p.demand = a.cpu;
  NextPhaseLength(t, a.work, p);
}

void TogglePhase(const Trace& t, size_t j, double remaining, PhaseState& p) {
  const Arrival& a = t.arrivals[j];
  p.busy = !p.busy;
  p.demand = p.busy ? a.cpu : a.cpu * t.phases.quiet_fraction;
  NextPhaseLength(t, remaining, p);
}

void Summarise(const Trace& trace, const std::vector<double>& slowdowns, Result& r) {
  r.workloads = static_cast<int64_t>(trace.arrivals.size());
  if (!slowdowns.empty()) {
    r.mean_slowdown = std::accumulate(slowdowns.begin(), slowdowns.end(), 0.0) /
                      static_cast<double>(slowdowns.size());
    r.p99_slowdown = Percentile(slowdowns, 0.99);
  }
}

// ---- the cluster strategies -----------------------------------------------

struct Job {
  double remaining = 0;
  double done = 0;
  int node = -1;    // running on (-1: waiting or frozen)
  int owner = -1;   // the node of record (the source while migrating)
  int target = -1;  // while frozen: where it lands
  bool frozen = false;
  bool restart = false;  // frozen for a restart (evict-restart), not a migration
  bool finished = false;
  double on_since = 0;  // on `node` since
  bool started = false;
  PhaseState ph;
  std::vector<std::pair<int, double>> left;  // (node, time left), for ping-pong
};

struct NodeState {
  std::vector<int> jobs;
  double demand = 0;    // cores asked by the running jobs
  double incoming = 0;  // cores asked by jobs frozen on their way here
  double last = 0;      // advanced to
  uint64_t version = 0;
  uint64_t memory_used = 0;  // jobs whose owner this is
};

class Cluster {
 public:
  Cluster(const Trace& trace, Strategy strategy, const SimConfig& config)
      : t_(trace), s_(strategy), c_(config), random_(config.seed) {
    jobs_.resize(t_.arrivals.size());
    nodes_.resize(t_.nodes.size());
    place_.nodes.resize(t_.nodes.size());
    for (size_t i = 0; i < t_.nodes.size(); ++i) {
      controller::PolicyNode& n = place_.nodes[i];
      n.name = NodeName(i);
      n.cpu_capacity = t_.nodes[i].capacity;
      n.speed = t_.nodes[i].speed;
      n.memory_capacity_bytes = t_.nodes[i].memory_bytes;
      n.memory_available_bytes = t_.nodes[i].memory_bytes;
    }
  }

  Result Run() {
    const auto t0 = Wall::now();
    for (size_t i = 0; i < t_.arrivals.size(); ++i)
      q_.Push(t_.arrivals[i].time, kArrival, static_cast<int64_t>(i));
    if (s_ == Strategy::kKmosix) q_.Push(c_.tick_s, kTick, 0);
    if (s_ == Strategy::kEvictRestart) q_.Push(c_.evict_interval_s, kEvictTick, 0);
    const double cap = t_.horizon_s * c_.drain_factor;
    int64_t left = static_cast<int64_t>(t_.arrivals.size());
    while (!q_.Empty() && left > 0) {
      const Event e = q_.Pop();
      if (e.time > cap) break;
      Integrate(e.time);
      now_ = e.time;
      switch (e.kind) {
        case kArrival:
          ++in_system_;
          Admit(static_cast<int>(e.id));
          break;
        case kRetry:
          Admit(static_cast<int>(e.id));
          break;
        case kNodeDone:
          if (e.version == nodes_[static_cast<size_t>(e.id)].version)
            left -= Complete(static_cast<int>(e.id));
          break;
        case kTick:
          Tick();
          q_.Push(now_ + c_.tick_s, kTick, 0);
          break;
        case kEvictTick:
          Evict();
          q_.Push(now_ + c_.evict_interval_s, kEvictTick, 0);
          break;
        case kLanded:
          Land(static_cast<int>(e.id));
          break;
      }
    }
    // Unfinished at the cap: count the time spent so far.
    Result r;
    r.strategy = s_;
    for (size_t i = 0; i < jobs_.size(); ++i) {
      if (jobs_[i].finished) continue;
      ++r.unfinished;
      const Arrival& a = t_.arrivals[i];
      const double ref = jobs_[i].started ? jobs_[i].ph.ref : a.work / a.cpu;
      slowdowns_.push_back((std::max(now_, a.time) - a.time) / ref);
    }
    Summarise(t_, slowdowns_, r);
    double total_work = 0;
    for (const Arrival& a : t_.arrivals) total_work += a.work;
    const double n = std::max<double>(1, static_cast<double>(jobs_.size()));
    r.work_lost = total_work > 0 ? lost_ / total_work : 0;
    r.migrations_per_workload = static_cast<double>(moves_) / n;
    r.pingpong_per_workload = static_cast<double>(pingpongs_) / n;
    r.utilisation = useful_ / (t_.capacity * t_.horizon_s);
    r.mean_in_system_per_node =
        in_system_integral_ / t_.horizon_s / static_cast<double>(t_.nodes.size());
    r.policy_calls = policy_calls_;
    r.policy_seconds = policy_seconds_;
    r.balance_max_seconds = balance_max_;
    r.balance_calls = balance_calls_;
    r.balance_seconds = balance_seconds_;
    r.wall_seconds = Since(t0);
    return r;
  }

 private:
  double Factor(const NodeState& n, const NodeSpec& spec) const {
    return n.demand > spec.capacity ? spec.capacity / n.demand : 1.0;
  }

  void Integrate(double t) {
    const double hi = std::min(t, t_.horizon_s);
    if (hi > now_) in_system_integral_ += static_cast<double>(in_system_) * (hi - now_);
  }

  // Brings node i's jobs' progress up to now.
  void Advance(int i) {
    NodeState& n = nodes_[static_cast<size_t>(i)];
    const NodeSpec& spec = t_.nodes[static_cast<size_t>(i)];
    const double dt = now_ - n.last;
    if (dt > 0 && !n.jobs.empty()) {
      const double f = Factor(n, spec) * spec.speed;
      // The share of [last, now] inside [0, horizon], for utilisation.
      const double in_h = std::clamp((t_.horizon_s - n.last) / dt, 0.0, 1.0);
      for (int j : n.jobs) {
        Job& job = jobs_[static_cast<size_t>(j)];
        const double prog = std::min(job.ph.phase_left, job.ph.demand * f * dt);
        job.remaining = std::max(0.0, job.remaining - prog);
        job.ph.phase_left -= prog;
        job.done += prog;
        useful_ += prog * in_h;
      }
    }
    n.last = now_;
  }

  // After a change of node i: its next completion, and what Place sees of it.
  void Reschedule(int i) {
    NodeState& n = nodes_[static_cast<size_t>(i)];
    const NodeSpec& spec = t_.nodes[static_cast<size_t>(i)];
    ++n.version;
    const double f = Factor(n, spec);
    double soonest = std::numeric_limits<double>::infinity();
    double usage = n.incoming;
    for (int j : n.jobs) {
      const Job& job = jobs_[static_cast<size_t>(j)];
      const double ask = t_.arrivals[static_cast<size_t>(j)].cpu;
      const double cpu = job.ph.demand;
      soonest = std::min(soonest, job.ph.phase_left / (cpu * f * spec.speed));
      usage += c_.signal_demand                    ? cpu
               : now_ - job.on_since < c_.settle_s ? std::max(ask, cpu * f)
                                                   : cpu * f;
    }
    if (std::isfinite(soonest)) q_.Push(now_ + soonest, kNodeDone, i, n.version);
    controller::PolicyNode& pn = place_.nodes[static_cast<size_t>(i)];
    pn.background_cpu = usage;
    pn.memory_available_bytes =
        spec.memory_bytes > n.memory_used ? spec.memory_bytes - n.memory_used : 0;
  }

  void Start(int j, int i) {
    Advance(i);
    NodeState& n = nodes_[static_cast<size_t>(i)];
    Job& job = jobs_[static_cast<size_t>(j)];
    job.node = i;
    job.on_since = now_;
    n.jobs.push_back(j);
    n.demand += job.ph.demand;
    Reschedule(i);
  }

  void Stop(int j) {
    Job& job = jobs_[static_cast<size_t>(j)];
    const int i = job.node;
    Advance(i);
    NodeState& n = nodes_[static_cast<size_t>(i)];
    n.jobs.erase(std::find(n.jobs.begin(), n.jobs.end(), j));
    n.demand -= job.ph.demand;
    if (n.jobs.empty()) n.demand = 0;  // no drift
    job.node = -1;
    Reschedule(i);
  }

  void Own(int j, int i) {
    Job& job = jobs_[static_cast<size_t>(j)];
    const uint64_t mem = t_.arrivals[static_cast<size_t>(j)].memory_bytes;
    if (job.owner >= 0) nodes_[static_cast<size_t>(job.owner)].memory_used -= mem;
    job.owner = i;
    if (i >= 0) nodes_[static_cast<size_t>(i)].memory_used += mem;
  }

  // The scheduler: the controller's Place on what it sees now.
  int PlaceJob(int j) {
    const Arrival& a = t_.arrivals[static_cast<size_t>(j)];
    controller::PlacementRequest req;
    req.cpus = a.cpu;
    req.memory_bytes = a.memory_bytes;
    const auto t0 = Wall::now();
    auto chosen = controller::Place(place_, req, c_.policy, random_);
    policy_seconds_ += Since(t0);
    ++policy_calls_;
    if (!chosen.ok()) return -1;
    return static_cast<int>(Index(*chosen));
  }

  void Admit(int j) {
    Job& job = jobs_[static_cast<size_t>(j)];
    if (!job.started) {
      job.started = true;
      job.remaining = t_.arrivals[static_cast<size_t>(j)].work;
      StartPhases(t_, static_cast<size_t>(j), job.ph);
    }
    const int i = PlaceJob(j);
    if (i < 0) {
      q_.Push(now_ + 1, kRetry, j);
      return;
    }
    if (job.restart) {  // an evicted workload, restarted
      NodeState& n = nodes_[static_cast<size_t>(i)];
      n.incoming += job.ph.demand;
      Own(j, i);
      job.target = i;
      Reschedule(i);
      q_.Push(now_ + c_.restart_s, kLanded, j);
      return;
    }
    Own(j, i);
    Start(j, i);
  }

  int Complete(int i) {
    Advance(i);
    NodeState& n = nodes_[static_cast<size_t>(i)];
    int finished = 0;
    for (size_t k = 0; k < n.jobs.size();) {
      const int j = n.jobs[k];
      Job& job = jobs_[static_cast<size_t>(j)];
      if (job.ph.phase_left > kDoneEpsilon) {
        ++k;
        continue;
      }
      if (job.remaining > kDoneEpsilon) {  // the next phase
        n.demand -= job.ph.demand;
        TogglePhase(t_, static_cast<size_t>(j), job.remaining, job.ph);
        n.demand += job.ph.demand;
        ++k;
        continue;
      }
      const Arrival& a = t_.arrivals[static_cast<size_t>(j)];
      job.finished = true;
      job.node = -1;
      Own(j, -1);
      n.demand -= job.ph.demand;
      n.jobs[k] = n.jobs.back();
      n.jobs.pop_back();
      slowdowns_.push_back((now_ - a.time) / job.ph.ref);
      --in_system_;
      ++finished;
    }
    if (n.jobs.empty()) n.demand = 0;
    Reschedule(i);
    return finished;
  }

  void CountMove(Job& job, int from, int to) {
    ++moves_;
    for (const auto& [node, when] : job.left) {
      if (node == to && now_ - when <= c_.pingpong_window_s) {
        ++pingpongs_;
        break;
      }
    }
    // Keep only what the window can still match.
    std::erase_if(job.left, [&](const auto& p) { return now_ - p.second > c_.pingpong_window_s; });
    job.left.emplace_back(from, now_);
  }

  void Land(int j) {
    Job& job = jobs_[static_cast<size_t>(j)];
    const int i = job.target;
    NodeState& n = nodes_[static_cast<size_t>(i)];
    n.incoming -= job.ph.demand;
    if (n.incoming < 1e-9) n.incoming = 0;
    if (!job.restart) {
      Own(j, i);  // the memory moves at the commit
      in_flight_.erase(std::find_if(in_flight_.begin(), in_flight_.end(),
                                    [&](const controller::PolicyMigration& m) {
                                      return m.workload == WorkloadName(static_cast<size_t>(j));
                                    }));
    }
    job.frozen = false;
    job.restart = false;
    job.target = -1;
    Start(j, i);
  }

  // kmosix: one controller round over the full snapshot.
  void Tick() {
    controller::ClusterSnapshot& s = snap_;
    s.now_ms = static_cast<int64_t>(now_ * 1000);
    s.nodes = place_.nodes;
    for (size_t i = 0; i < s.nodes.size(); ++i) s.nodes[i].background_cpu = 0;
    s.workloads.clear();
    for (size_t i = 0; i < nodes_.size(); ++i) {
      const NodeState& n = nodes_[i];
      const double f = Factor(n, t_.nodes[i]);
      for (int j : n.jobs) {
        const Job& job = jobs_[static_cast<size_t>(j)];
        const Arrival& a = t_.arrivals[static_cast<size_t>(j)];
        controller::PolicyWorkload w;
        w.name = WorkloadName(static_cast<size_t>(j));
        w.node = s.nodes[i].name;
        w.cpu = c_.signal_demand                    ? job.ph.demand
                : now_ - job.on_since < c_.settle_s ? std::max(a.cpu, job.ph.demand * f)
                                                    : job.ph.demand * f;
        w.memory_bytes = a.memory_bytes;
        w.created_ms = static_cast<int64_t>(a.time * 1000);
        w.started_ms = static_cast<int64_t>(job.on_since * 1000);
        s.workloads.push_back(std::move(w));
      }
    }
    for (const controller::PolicyMigration& m : in_flight_) {
      const int j = static_cast<int>(Index(m.workload));
      const Arrival& a = t_.arrivals[static_cast<size_t>(j)];
      controller::PolicyWorkload w;
      w.name = m.workload;
      w.node = m.source;
      w.cpu = jobs_[static_cast<size_t>(j)].ph.demand;
      w.memory_bytes = a.memory_bytes;
      w.created_ms = static_cast<int64_t>(a.time * 1000);
      w.started_ms = static_cast<int64_t>(jobs_[static_cast<size_t>(j)].on_since * 1000);
      w.migrating = true;
      s.workloads.push_back(std::move(w));
    }
    s.in_flight = in_flight_;
    const auto t0 = Wall::now();
    controller::BalanceResult result = controller::Balance(s, c_.policy, random_);
    const double took = Since(t0);
    policy_seconds_ += took;
    balance_max_ = std::max(balance_max_, took);
    balance_seconds_ += took;
    ++balance_calls_;
    ++policy_calls_;
    for (const controller::Decision& d : result.moves) {
      const int j = static_cast<int>(Index(d.workload));
      const int to = static_cast<int>(Index(d.target));
      if (j < 0 || to < 0) continue;
      Job& job = jobs_[static_cast<size_t>(j)];
      if (job.node < 0 || job.frozen) continue;  // not running: a policy bug, skip
      const int from = job.node;
      const Arrival& a = t_.arrivals[static_cast<size_t>(j)];
      Stop(j);
      CountMove(job, from, to);
      job.frozen = true;
      job.target = to;
      nodes_[static_cast<size_t>(to)].incoming += job.ph.demand;
      Reschedule(to);
      in_flight_.push_back({d.workload, d.source, d.target});
      const double gib = static_cast<double>(a.memory_bytes) / (1024.0 * 1024 * 1024);
      q_.Push(now_ + c_.downtime_base_s + c_.downtime_per_gib_s * gib, kLanded, j);
    }
  }

  // evict-restart: the descheduler's LowNodeUtilization, on requests.
  void Evict() {
    auto ratio = [&](size_t i) {
      return (nodes_[i].demand + nodes_[i].incoming) / t_.nodes[i].capacity;
    };
    auto some_low = [&] {
      for (size_t i = 0; i < nodes_.size(); ++i)
        if (ratio(i) < c_.evict_low) return true;
      return false;
    };
    if (!some_low()) return;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (ratio(i) <= c_.evict_high) continue;
      Advance(static_cast<int>(i));
      // The youngest first (the least work to lose).
      std::vector<int> victims = nodes_[i].jobs;
      std::sort(victims.begin(), victims.end(), [&](int x, int y) {
        return jobs_[static_cast<size_t>(x)].done < jobs_[static_cast<size_t>(y)].done;
      });
      for (int j : victims) {
        if (ratio(i) <= c_.evict_high || !some_low()) break;
        Job& job = jobs_[static_cast<size_t>(j)];
        Stop(j);
        lost_ += job.done;
        job.remaining = t_.arrivals[static_cast<size_t>(j)].work;
        job.done = 0;
        StartPhases(t_, static_cast<size_t>(j), job.ph);
        job.restart = true;
        job.frozen = true;
        Admit(j);  // Place; lands after restart_s (or retries)
        const int to = job.target >= 0 ? job.target : -1;
        CountMove(job, static_cast<int>(i), to);
      }
    }
  }

  const Trace& t_;
  Strategy s_;
  SimConfig c_;
  SeededRandom random_;
  EventQueue q_;
  std::vector<Job> jobs_;
  std::vector<NodeState> nodes_;
  controller::ClusterSnapshot place_;  // nodes only; their load as background
  controller::ClusterSnapshot snap_;   // the full snapshot of a balance round
  std::vector<controller::PolicyMigration> in_flight_;
  std::vector<double> slowdowns_;
  double now_ = 0;
  int64_t in_system_ = 0;
  double in_system_integral_ = 0;
  double useful_ = 0;
  double lost_ = 0;
  int64_t moves_ = 0;
  int64_t pingpongs_ = 0;
  int64_t policy_calls_ = 0;
  double policy_seconds_ = 0;
  double balance_max_ = 0;
  int64_t balance_calls_ = 0;
  double balance_seconds_ = 0;
};

// ---- the ideal: one fluid pool --------------------------------------------
// Demand D is served by the fastest capacity first (free, instant migration):
// the pool does R(D) work per second, and every workload runs at
// cpu * R(D) / D, so each one's remaining work / cpu falls at the same pace
// g = R(D) / D: a heap of "virtual finish times" gives O(log n) per event.
Result RunIdeal(const Trace& t) {
  const auto t0 = Wall::now();
  std::vector<std::pair<double, double>> tiers;  // (speed, capacity), fastest first
  for (const NodeSpec& n : t.nodes) {
    auto it = std::find_if(tiers.begin(), tiers.end(), [&](auto& p) { return p.first == n.speed; });
    if (it == tiers.end())
      tiers.emplace_back(n.speed, n.capacity);
    else
      it->second += n.capacity;
  }
  std::sort(tiers.begin(), tiers.end(), [](auto& a, auto& b) { return a.first > b.first; });
  auto rate = [&](double d) {
    double r = 0;
    for (const auto& [speed, cap] : tiers) {
      const double take = std::min(d, cap);
      r += take * speed;
      d -= take;
      if (d <= 0) break;
    }
    return r;
  };
  using Item = std::pair<double, int>;  // virtual end of the job's phase, job
  std::vector<PhaseState> ph(t.arrivals.size());
  std::vector<double> remaining(t.arrivals.size());
  std::priority_queue<Item, std::vector<Item>, std::greater<>> heap;
  std::vector<double> slowdowns;
  slowdowns.reserve(t.arrivals.size());
  double now = 0, v = 0, demand = 0, useful = 0, in_system_integral = 0;
  size_t next = 0;
  int64_t in_system = 0;
  auto advance = [&](double to) {
    const double g = demand > 0 ? rate(demand) / demand : 0;
    const double hi = std::min(to, t.horizon_s);
    if (hi > now) {
      useful += rate(demand) * (hi - now);
      in_system_integral += static_cast<double>(in_system) * (hi - now);
    }
    v += g * (to - now);
    now = to;
  };
  while (next < t.arrivals.size() || !heap.empty()) {
    const double g = demand > 0 ? rate(demand) / demand : 0;
    const double done_at = heap.empty() ? std::numeric_limits<double>::infinity()
                                        : now + std::max(0.0, heap.top().first - v) / g;
    const double arrive_at =
        next < t.arrivals.size() ? t.arrivals[next].time : std::numeric_limits<double>::infinity();
    if (arrive_at <= done_at) {
      advance(arrive_at);
      StartPhases(t, next, ph[next]);
      remaining[next] = t.arrivals[next].work;
      heap.emplace(v + ph[next].phase_left / ph[next].demand, static_cast<int>(next));
      demand += ph[next].demand;
      ++in_system;
      ++next;
    } else {
      advance(done_at);
      const size_t j = static_cast<size_t>(heap.top().second);
      heap.pop();
      PhaseState& p = ph[j];
      remaining[j] = std::max(0.0, remaining[j] - p.phase_left);
      demand -= p.demand;
      if (remaining[j] > kDoneEpsilon) {  // the next phase
        TogglePhase(t, j, remaining[j], p);
        demand += p.demand;
        heap.emplace(v + p.phase_left / p.demand, static_cast<int>(j));
        continue;
      }
      if (heap.empty()) demand = 0;
      --in_system;
      slowdowns.push_back((now - t.arrivals[j].time) / p.ref);
    }
  }
  Result r;
  r.strategy = Strategy::kIdeal;
  Summarise(t, slowdowns, r);
  r.utilisation = useful / (t.capacity * t.horizon_s);
  r.mean_in_system_per_node =
      in_system_integral / t.horizon_s / static_cast<double>(t.nodes.size());
  r.wall_seconds = Since(t0);
  return r;
}

}  // namespace

Result Simulate(const Trace& trace, Strategy strategy, const SimConfig& config) {
  if (strategy == Strategy::kIdeal) return RunIdeal(trace);
  return Cluster(trace, strategy, config).Run();
}

}  // namespace kmosix::sim
