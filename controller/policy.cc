// The balancing policy (see policy.h). Pure computation over one snapshot:
// the snapshot is indexed once (nodes by name, workloads by owner), loads live
// in vectors, and nodes are kept in two ordered sets (targets by ascending
// load, sources by descending load) that are updated as decisions are applied,
// so one round costs O((nodes + workloads) log nodes).
#include "controller/policy.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <set>
#include <string_view>
#include <unordered_map>

namespace kmosix::controller {
namespace {

constexpr double kTieEpsilon = 1e-9;      // loads/scores this close are tied
constexpr double kMinDenominator = 1e-6;  // floor for capacity*speed (bad records)
constexpr size_t kMaxHeldBack = 32;       // lines in BalanceResult::held_back
constexpr int kMaxHeldPerNode = 3;        // of which about one node
constexpr int kTargetsPerSource = 4;      // targets tried per source (memory misses)
constexpr double kMiB = 1024.0 * 1024.0;

std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return {};
  if (static_cast<size_t>(n) < sizeof buf) return std::string(buf, static_cast<size_t>(n));
  std::string out(static_cast<size_t>(n), '\0');
  va_start(ap, fmt);
  vsnprintf(out.data(), out.size() + 1, fmt, ap);
  va_end(ap);
  return out;
}

// Measurements that are negative or not finite count as zero.
double Sane(double v) { return std::isfinite(v) && v > 0 ? v : 0; }
double MiB(double bytes) { return bytes / kMiB; }
double Secs(double ms) { return ms / 1000.0; }

// The load view of a snapshot, shared by Balance, NodeLoads and Place.
struct Model {
  std::unordered_map<std::string_view, int> index;  // node name -> first entry
  std::vector<char> duplicate;                      // a later entry with a taken name
  std::vector<double> denom;                        // capacity * speed (floored)
  std::vector<char> denom_ok;                       // capacity * speed was usable
  std::vector<double> load;                         // L(n)
  std::vector<int> counts_on;                       // per workload: node index or -1
  std::vector<int> owner;                           // per workload: node index or -1
  std::vector<char> in_flight;                      // per workload
  std::vector<int> involved;                        // per node: in-flight migrations
  std::vector<double> arriving;   // per node: memory of in-flight workloads headed there
  std::vector<double> departing;  // per node: memory of in-flight workloads leaving it
  int cluster_in_flight = 0;

  int Find(std::string_view name) const {
    auto it = index.find(name);
    return it == index.end() ? -1 : it->second;
  }
};

Model BuildModel(const ClusterSnapshot& s) {
  Model m;
  const size_t n = s.nodes.size();
  m.index.reserve(n * 2);
  m.duplicate.assign(n, 0);
  m.denom.resize(n);
  m.denom_ok.resize(n);
  m.load.resize(n);
  m.involved.assign(n, 0);
  m.arriving.assign(n, 0);
  m.departing.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const PolicyNode& node = s.nodes[i];
    if (!m.index.emplace(node.name, static_cast<int>(i)).second) m.duplicate[i] = 1;
    double d = node.cpu_capacity * node.speed;
    m.denom_ok[i] = std::isfinite(d) && d >= kMinDenominator;
    m.denom[i] = m.denom_ok[i] ? d : kMinDenominator;
    m.load[i] = Sane(node.background_cpu) / m.denom[i];
  }

  std::unordered_map<std::string_view, int> flight_target;  // workload -> target (-1 unknown)
  m.cluster_in_flight = static_cast<int>(s.in_flight.size());
  for (const PolicyMigration& mig : s.in_flight) {
    int src = m.Find(mig.source);
    int tgt = m.Find(mig.target);
    if (src >= 0) ++m.involved[src];
    if (tgt >= 0 && tgt != src) ++m.involved[tgt];
    flight_target[mig.workload] = tgt;
  }

  const size_t w = s.workloads.size();
  m.counts_on.resize(w);
  m.owner.resize(w);
  m.in_flight.assign(w, 0);
  std::string_view last_node;  // workloads often come grouped by node
  int last_owner = -1;
  for (size_t i = 0; i < w; ++i) {
    const PolicyWorkload& wl = s.workloads[i];
    if (i == 0 || wl.node != last_node) {
      last_node = wl.node;
      last_owner = m.Find(wl.node);
    }
    const int owner = last_owner;
    int on = owner;
    if (!flight_target.empty()) {
      auto it = flight_target.find(wl.name);
      if (it != flight_target.end()) {
        m.in_flight[i] = 1;
        if (it->second >= 0) on = it->second;  // projected onto its target
      }
    }
    m.owner[i] = owner;
    m.counts_on[i] = on;
    if (on >= 0) m.load[on] += Sane(wl.cpu) / m.denom[on];
    // The target's reported memory does not show an arriving workload yet,
    // nor the source's the memory it will get back.
    if (on >= 0 && on != owner) {
      m.arriving[on] += static_cast<double>(wl.memory_bytes);
      if (owner >= 0) m.departing[owner] += static_cast<double>(wl.memory_bytes);
    }
  }
  return m;
}

double MemoryMargin(const PolicyNode& n, const PolicyConfig& c) {
  return Sane(c.low_memory_fraction) * static_cast<double>(n.memory_capacity_bytes);
}

// Short of memory by the numbers: available (plus what in-flight migrations
// will free) under the margin.
bool MemoryLow(const PolicyNode& n, const PolicyConfig& c, double departing) {
  return static_cast<double>(n.memory_available_bytes) + departing < MemoryMargin(n, c);
}

bool PsiHigh(const PolicyNode& n, const PolicyConfig& c) {
  return n.psi_memory_some10.has_value() && *n.psi_memory_some10 >= c.memory_psi_threshold;
}

// "(available 50 MiB < 10% of 1024 MiB, memory psi some10 25.0% >= 20.0%)"
std::string ShortWhy(const PolicyNode& n, const PolicyConfig& c, double departing) {
  std::string why;
  if (MemoryLow(n, c, departing)) {
    why = Fmt("available %.0f MiB", MiB(static_cast<double>(n.memory_available_bytes)));
    if (departing > 0) why += Fmt(" + %.0f MiB leaving", MiB(departing));
    why += Fmt(" < %g%% of %.0f MiB", c.low_memory_fraction * 100,
               MiB(static_cast<double>(n.memory_capacity_bytes)));
  }
  if (PsiHigh(n, c)) {
    if (!why.empty()) why += ", ";
    why += Fmt("memory psi some10 %.1f%% >= %.1f%%", *n.psi_memory_some10, c.memory_psi_threshold);
  }
  return why;
}

struct Entry {
  double load;
  uint64_t tie;  // random per node: equal loads come out in random order
  int idx;
};
struct Ascending {
  bool operator()(const Entry& a, const Entry& b) const {
    if (a.load != b.load) return a.load < b.load;
    if (a.tie != b.tie) return a.tie < b.tie;
    return a.idx < b.idx;
  }
};
struct Descending {
  bool operator()(const Entry& a, const Entry& b) const {
    if (a.load != b.load) return a.load > b.load;
    if (a.tie != b.tie) return a.tie < b.tie;
    return a.idx < b.idx;
  }
};

class Balancer {
 public:
  Balancer(const ClusterSnapshot& s, const PolicyConfig& c, Random& random)
      : s_(s), c_(c), random_(random), m_(BuildModel(s)) {}

  BalanceResult Run() {
    Index();
    Usher();
    Even();
    return std::move(result_);
  }

 private:
  using TargetSet = std::set<Entry, Ascending>;

  const PolicyWorkload& W(int w) const { return s_.workloads[static_cast<size_t>(w)]; }
  const PolicyNode& N(int n) const { return s_.nodes[static_cast<size_t>(n)]; }
  const char* Name(int n) const { return N(n).name.c_str(); }
  double Cpu(int w) const { return Sane(W(w).cpu); }
  double Mem(int w) const { return static_cast<double>(W(w).memory_bytes); }
  double Contribution(int w, int n) const { return Cpu(w) / m_.denom[n]; }

  void Index() {
    const int n = static_cast<int>(s_.nodes.size());
    const int w = static_cast<int>(s_.workloads.size());
    // Workloads by owner (CSR).
    start_.assign(n + 1, 0);
    for (int i = 0; i < w; ++i)
      if (m_.owner[i] >= 0) ++start_[m_.owner[i] + 1];
    for (int i = 0; i < n; ++i) start_[i + 1] += start_[i];
    owned_.resize(static_cast<size_t>(start_[n]));
    std::vector<int> fill(start_.begin(), start_.end() - 1);
    for (int i = 0; i < w; ++i)
      if (m_.owner[i] >= 0) owned_[fill[m_.owner[i]]++] = i;

    count_ = m_.involved;
    cluster_ = m_.cluster_in_flight;
    moved_.assign(w, 0);
    reserved_ = m_.arriving;
    freed_.assign(n, 0);
    margin_.resize(n);
    short_.assign(n, 0);
    target_ok_.assign(n, 0);
    role_.assign(n, kNone);
    out_.assign(n, {});
    in_.assign(n, {});
    tie_.resize(n);
    in_targets_.assign(n, 0);
    in_sources_.assign(n, 0);
    target_key_.assign(n, 0);
    source_key_.assign(n, 0);
    for (int i = 0; i < n; ++i) {
      const PolicyNode& node = N(i);
      margin_[i] = MemoryMargin(node, c_);
      short_[i] = MemoryLow(node, c_, m_.departing[i]) || PsiHigh(node, c_);
      target_ok_[i] =
          node.ready && !node.cordoned && !short_[i] && m_.denom_ok[i] && !m_.duplicate[i];
      tie_[i] = random_.Next();
      UpdateTarget(i);
    }
  }

  // ---- bookkeeping --------------------------------------------------------
  void UpdateTarget(int n) {
    if (in_targets_[n]) targets_.erase(Entry{target_key_[n], tie_[n], n});
    in_targets_[n] = target_ok_[n] && count_[n] < c_.max_per_node && role_[n] != kSource;
    if (in_targets_[n]) {
      target_key_[n] = m_.load[n];
      targets_.insert(Entry{target_key_[n], tie_[n], n});
    }
  }
  void InsertSource(int n) {
    source_key_[n] = m_.load[n];
    sources_.insert(Entry{source_key_[n], tie_[n], n});
    in_sources_[n] = 1;
  }
  void RemoveSource(int n) {
    if (!in_sources_[n]) return;
    sources_.erase(Entry{source_key_[n], tie_[n], n});
    in_sources_[n] = 0;
  }
  // The least-loaded target other than `except`.
  TargetSet::const_iterator FirstTarget(int except) const {
    auto it = targets_.begin();
    if (it != targets_.end() && it->idx == except) ++it;
    return it;
  }
  double Room(int n) const {
    return static_cast<double>(N(n).memory_available_bytes) - reserved_[n] - margin_[n];
  }
  bool HasRoom(int n, int w) const { return Room(n) > Mem(w); }
  bool Movable(int w) const {
    const PolicyWorkload& wl = W(w);
    return !moved_[w] && !m_.in_flight[w] && !wl.migrating && wl.migratable && !wl.pinned &&
           wl.balance;
  }
  // The hysteresis factor and minimum residency of w (its policy's, else the config's).
  double Stab(int w) const { return W(w).stability.value_or(c_.stability); }
  double MinResidency(int w) const {
    return static_cast<double>(W(w).min_residency_ms.value_or(c_.min_residency_ms));
  }
  // In ms, as doubles (no overflow on odd timestamps).
  double Residency(int w) const {
    return static_cast<double>(s_.now_ms) - static_cast<double>(W(w).started_ms);
  }
  double Age(int w) const {
    return static_cast<double>(s_.now_ms) - static_cast<double>(W(w).created_ms);
  }
  double CostMs(int w) const {
    return c_.bandwidth_bytes_per_s > 0 ? Mem(w) / c_.bandwidth_bytes_per_s * 1000.0 : 0.0;
  }
  bool ResidencyOk(int w) const { return Residency(w) >= MinResidency(w); }
  bool AgeOk(int w) const { return Age(w) > CostMs(w); }
  bool Full() const { return result_.held_back.size() >= kMaxHeldBack; }
  void Held(std::string line) {
    if (!Full()) result_.held_back.push_back(std::move(line));
  }

  void Apply(Decision d, int w, int a, int b) {
    m_.load[a] -= Contribution(w, a);
    m_.load[b] += Contribution(w, b);
    reserved_[b] += Mem(w);
    freed_[a] += Mem(w);
    ++count_[a];
    ++count_[b];
    ++cluster_;
    moved_[w] = 1;
    // A node either sheds or receives within a round, never both.
    role_[a] = kSource;
    role_[b] = kTarget;
    UpdateTarget(a);
    UpdateTarget(b);
    RemoveSource(b);
    if (in_sources_[a]) {
      RemoveSource(a);
      if (count_[a] < c_.max_per_node) InsertSource(a);
    }
    const bool memory = d.kind == Decision::Kind::kMemory;
    out_[a].push_back(static_cast<int>(round_moves_.size()));
    if (!memory) in_[b].push_back(static_cast<int>(round_moves_.size()));
    round_moves_.push_back({w, a, b, memory});
    result_.moves.push_back(std::move(d));
  }

  // ---- 1. memory ushering -------------------------------------------------
  void Usher() {
    const int n = static_cast<int>(s_.nodes.size());
    std::vector<int> shorts;
    for (int i = 0; i < n; ++i)
      if (short_[i] && N(i).ready && !m_.duplicate[i]) shorts.push_back(i);
    if (shorts.empty()) return;
    auto fraction = [&](int i) {
      double cap = static_cast<double>(N(i).memory_capacity_bytes);
      return cap > 0 ? (static_cast<double>(N(i).memory_available_bytes) + m_.departing[i]) / cap
                     : 1.0;
    };
    std::sort(shorts.begin(), shorts.end(), [&](int x, int y) {
      double fx = fraction(x), fy = fraction(y);
      return fx != fy ? fx < fy : x < y;
    });
    // An upper bound of every target's room (rooms only shrink): a quick "no".
    double max_room = -1;
    for (const Entry& e : targets_) max_room = std::max(max_room, Room(e.idx));

    std::vector<int> cands;
    for (int src : shorts) {
      const PolicyNode& node = N(src);
      const std::string why = ShortWhy(node, c_, m_.departing[src]);
      if (cluster_ >= c_.max_cluster) {
        Held(
            Fmt("memory: %s short of memory (%s): cluster limit reached (%d in flight, "
                "max %d)",
                Name(src), why.c_str(), cluster_, c_.max_cluster));
        return;
      }
      if (count_[src] >= c_.max_per_node) {
        Held(
            Fmt("memory: %s short of memory (%s): node limit reached (%d migration(s) "
                "involving it, max %d)",
                Name(src), why.c_str(), count_[src], c_.max_per_node));
        continue;
      }
      cands.clear();
      int settling = 0;
      for (int k = start_[src]; k < start_[src + 1]; ++k) {
        int w = owned_[k];
        if (!Movable(w)) continue;
        if (!ResidencyOk(w)) {
          ++settling;
          continue;
        }
        cands.push_back(w);
      }
      std::sort(cands.begin(), cands.end(), [&](int x, int y) {
        if (Mem(x) != Mem(y)) return Mem(x) > Mem(y);
        if (Cpu(x) != Cpu(y)) return Cpu(x) > Cpu(y);
        return x < y;
      });
      const bool low = MemoryLow(node, c_, m_.departing[src]);
      int shed = 0, held = 0;
      for (int w : cands) {
        const bool still_short =
            (low && MemoryLow(node, c_, m_.departing[src] + freed_[src])) || (!low && shed == 0);
        if (!still_short || cluster_ >= c_.max_cluster || count_[src] >= c_.max_per_node) break;
        int dst = -1;
        if (Mem(w) < max_room) {
          for (const Entry& e : targets_) {
            if (HasRoom(e.idx, w)) {
              dst = e.idx;
              break;
            }
          }
        }
        if (dst < 0) {
          if (held++ < kMaxHeldPerNode)
            Held(Fmt("memory: %s short of memory (%s): no target with room for %s (%.0f MiB)",
                     Name(src), why.c_str(), W(w).name.c_str(), MiB(Mem(w))));
          continue;
        }
        Decision d;
        d.kind = Decision::Kind::kMemory;
        d.workload = W(w).name;
        d.source = node.name;
        d.target = N(dst).name;
        d.source_load = m_.load[src];
        d.target_load = m_.load[dst];
        d.workload_load = Contribution(w, dst);
        d.reason = Fmt(
            "memory: %s short of memory (%s) -> %s (%.0f MiB, %.2f cores) to %s "
            "(available %.0f MiB, load %.2f)",
            Name(src), why.c_str(), W(w).name.c_str(), MiB(Mem(w)), Cpu(w), Name(dst),
            MiB(static_cast<double>(N(dst).memory_available_bytes) - reserved_[dst]), m_.load[dst]);
        Apply(std::move(d), w, src, dst);
        ++shed;
      }
      if (cands.empty()) {
        Held(
            Fmt("memory: %s short of memory (%s): no movable workload (%d within min "
                "residency)",
                Name(src), why.c_str(), settling));
      }
    }
  }

  // ---- 2. CPU balance -----------------------------------------------------
  void Even() {
    const int n = static_cast<int>(s_.nodes.size());
    for (int i = 0; i < n; ++i)
      if (N(i).ready && !m_.duplicate[i] && role_[i] != kTarget && start_[i + 1] > start_[i])
        InsertSource(i);

    while (!sources_.empty()) {
      const int a = sources_.begin()->idx;
      const double la = m_.load[a];
      auto first = FirstTarget(a);
      if (first == targets_.end()) {
        Held(
            Fmt("cpu: %s load %.2f: no eligible target (ready, uncordoned, not short of "
                "memory, under the migration limit)",
                Name(a), la));
        return;
      }
      if (la - first->load < c_.min_gain) return;  // balanced, within noise
      if (cluster_ >= c_.max_cluster) {
        Held(
            Fmt("cpu: cluster limit reached (%d migration(s) in flight, max %d): %s load "
                "%.2f, %s load %.2f",
                cluster_, c_.max_cluster, Name(a), la, Name(first->idx), first->load));
        return;
      }
      RemoveSource(a);
      if (count_[a] >= c_.max_per_node) {
        Held(
            Fmt("cpu: %s load %.2f: node limit reached (%d migration(s) involving it, max "
                "%d)",
                Name(a), la, count_[a], c_.max_per_node));
        continue;
      }
      if (MoveFrom(a) && count_[a] < c_.max_per_node) InsertSource(a);
    }
  }

  // Whether moving w from a to b passes the hysteresis and gains enough, and
  // keeps the round consistent.
  bool Passes(int w, int a, int b) const {
    const double la = m_.load[a], lb = m_.load[b];
    const double cb = Contribution(w, b);
    if (!(lb + Stab(w) * cb < la)) return false;
    return Gain(la, lb, Contribution(w, a), cb) >= c_.min_gain && Consistent(w, a, b);
  }  // After the move, no move of this round (this one included) may look worth
  // undoing, or a later move from the same source or to the same target could
  // set up a move straight back in the next round: for each CPU move c: x -> y,
  // L_y <= L_x + stability * l_c(x); for each memory move c out of x, x still
  // has no room for c.
  bool Consistent(int w, int a, int b) const {
    const double la = m_.load[a] - Contribution(w, a);
    const double lb = m_.load[b] + Contribution(w, b);
    auto ok = [&](double target_load, double source_load, double back, int moved) {
      return target_load <= source_load + Stab(moved) * back - kTieEpsilon;
    };
    if (!ok(lb, la, Contribution(w, a), w)) return false;
    for (int k : out_[a]) {
      const RoundMove& c = round_moves_[k];
      if (c.memory) {
        // (A node under memory pressure is no target while it lasts.)
        if (!PsiHigh(N(a), c_) && Room(a) + m_.departing[a] + freed_[a] + Mem(w) > Mem(c.w))
          return false;
      } else if (!ok(c.b == b ? lb : m_.load[c.b], la, Contribution(c.w, a), c.w)) {
        return false;
      }
    }
    for (int k : in_[b]) {
      const RoundMove& c = round_moves_[k];
      if (!ok(lb, c.a == a ? la : m_.load[c.a], Contribution(c.w, c.a), c.w)) return false;
    }
    return true;
  }
  // How much closer the move brings the two loads (0 for an idle workload).
  static double Gain(double la, double lb, double ca, double cb) {
    return (la - lb) - std::fabs((la - ca) - (lb + cb));
  }
  // Why Passes(w, a, b) is false ("" if it is true).
  std::string Why(int w, int a, int b) const {
    const double la = m_.load[a], lb = m_.load[b];
    const double ca = Contribution(w, a), cb = Contribution(w, b);
    if (!(lb + Stab(w) * cb < la)) {
      return Fmt("hysteresis not met for %s to %s: %.2f + %g x %.2f = %.2f >= %.2f",
                 W(w).name.c_str(), Name(b), lb, Stab(w), cb, lb + Stab(w) * cb, la);
    }
    const double gain = Gain(la, lb, ca, cb);
    if (gain < c_.min_gain) {
      return Fmt("moving %s to %s evens the loads by %.3f < min gain %.3f", W(w).name.c_str(),
                 Name(b), gain, c_.min_gain);
    }
    if (!Consistent(w, a, b)) {
      return Fmt("moving %s to %s would make an earlier move of this round worth undoing",
                 W(w).name.c_str(), Name(b));
    }
    return {};
  }

  bool MoveFrom(int a) {
    const double la = m_.load[a];
    cands_.clear();
    gated_.clear();
    int fixed = 0, migrating = 0;
    for (int k = start_[a]; k < start_[a + 1]; ++k) {
      const int w = owned_[k];
      if (moved_[w]) continue;
      const PolicyWorkload& wl = W(w);
      if (m_.in_flight[w] || wl.migrating) {
        ++migrating;
      } else if (wl.pinned || !wl.migratable || !wl.balance) {
        ++fixed;
      } else if (!ResidencyOk(w) || !AgeOk(w)) {
        gated_.push_back(w);
      } else {
        cands_.push_back(w);
      }
    }

    int best = -1, best_target = -1, ties = 0;
    double best_score = 0;
    int tried = 0;
    for (auto t = FirstTarget(a); t != targets_.end() && tried < kTargetsPerSource; ++t) {
      if (t->idx == a) continue;
      if (la - t->load < c_.min_gain) break;
      ++tried;
      const int b = t->idx;
      const double lb = m_.load[b];
      for (int w : cands_) {
        if (!Passes(w, a, b) || !HasRoom(b, w)) continue;
        const double score = std::fabs((la - Contribution(w, a)) - (lb + Contribution(w, b)));
        if (best < 0 || score < best_score - kTieEpsilon) {
          best = w;
          best_score = score;
          ties = 1;
        } else if (score <= best_score + kTieEpsilon) {
          ++ties;
          if (random_.Next() % static_cast<uint64_t>(ties) == 0) best = w;
        }
      }
      if (best >= 0) {
        best_target = b;
        break;
      }
    }

    if (best >= 0) {
      const int b = best_target;
      Decision d;
      d.kind = Decision::Kind::kCpu;
      d.workload = W(best).name;
      d.source = N(a).name;
      d.target = N(b).name;
      d.source_load = la;
      d.target_load = m_.load[b];
      d.workload_load = Contribution(best, b);
      d.reason =
          Fmt("cpu: %s load %.2f > %s load %.2f + %g x %.2f (workload %s: %.2f cores, age "
              "%.0f s, on %s for %.0f s)",
              Name(a), la, Name(b), d.target_load, Stab(best), d.workload_load, d.workload.c_str(),
              Cpu(best), Secs(Age(best)), Name(a), Secs(Residency(best)));
      Apply(std::move(d), best, a, b);
      return true;
    }

    if (Full()) return false;
    // Why nothing left this node: first the gated workloads that would have
    // been moved otherwise, then the closest candidate on the first target.
    const int b0 = FirstTarget(a)->idx;
    int lines = 0;
    for (int w : gated_) {
      if (lines >= kMaxHeldPerNode) break;
      if (!Passes(w, a, b0)) continue;
      std::string gate;
      if (!ResidencyOk(w)) {
        gate = Fmt("on %s for %.0f s < min residency %.0f s", Name(a), Secs(Residency(w)),
                   Secs(MinResidency(w)));
      } else {
        gate =
            Fmt("too young: age %.0f s <= migration cost %.1f s", Secs(Age(w)), CostMs(w) / 1000.0);
      }
      Held(
          Fmt("cpu: %s load %.2f: %s (%.2f cores) would go to %s (load %.2f) but is "
              "%s",
              Name(a), la, W(w).name.c_str(), Cpu(w), Name(b0), m_.load[b0], gate.c_str()));
      ++lines;
    }
    // Otherwise the workload that weighs least (the closest to passing).
    const std::vector<int>& pool = !cands_.empty() ? cands_ : gated_;
    if (lines < kMaxHeldPerNode && !pool.empty() && (!cands_.empty() || lines == 0)) {
      int w = *std::min_element(pool.begin(), pool.end(),
                                [&](int x, int y) { return Cpu(x) < Cpu(y); });
      std::string why = Why(w, a, b0);
      if (why.empty()) {
        // Passed hysteresis on b0 but no target had memory for any candidate.
        why = Fmt("no memory on %s for %s (%.0f MiB; room %.0f MiB)", Name(b0), W(w).name.c_str(),
                  MiB(Mem(w)), MiB(std::max(0.0, Room(b0))));
      }
      Held(Fmt("cpu: %s load %.2f: %s", Name(a), la, why.c_str()));
      ++lines;
    }
    if (lines == 0 && pool.empty() && fixed + migrating > 0) {
      Held(
          Fmt("cpu: %s load %.2f: no movable workload (%d pinned, non-migratable or held by a "
              "MigrationPolicy, %d "
              "migrating)",
              Name(a), la, fixed, migrating));
    }
    return false;
  }

  const ClusterSnapshot& s_;
  const PolicyConfig& c_;
  Random& random_;
  Model m_;
  BalanceResult result_;

  std::vector<int> start_, owned_;  // workloads by owner (CSR)
  std::vector<int> count_;          // migrations involving each node
  int cluster_ = 0;                 // migrations in flight or decided
  std::vector<char> moved_;
  std::vector<double> reserved_, freed_, margin_;
  std::vector<char> short_, target_ok_;
  std::vector<uint64_t> tie_;
  TargetSet targets_;
  std::set<Entry, Descending> sources_;
  std::vector<char> in_targets_, in_sources_;
  std::vector<double> target_key_, source_key_;
  std::vector<int> cands_, gated_;
  enum Role : char { kNone, kSource, kTarget };
  std::vector<char> role_;  // this round's role of each node
  struct RoundMove {
    int w, a, b;
    bool memory;
  };
  std::vector<RoundMove> round_moves_;      // this round's decisions
  std::vector<std::vector<int>> out_, in_;  // by source / by target (CPU moves only)
};

}  // namespace

BalanceResult Balance(const ClusterSnapshot& snapshot, const PolicyConfig& config, Random& random) {
  return Balancer(snapshot, config, random).Run();
}

std::vector<double> NodeLoads(const ClusterSnapshot& snapshot) {
  return std::move(BuildModel(snapshot).load);
}

StatusOr<std::string> Place(const ClusterSnapshot& snapshot, const PlacementRequest& request,
                            Random& random) {
  return Place(snapshot, request, PolicyConfig{}, random);
}

StatusOr<std::string> Place(const ClusterSnapshot& snapshot, const PlacementRequest& request,
                            const PolicyConfig& config, Random& random) {
  if (!std::isfinite(request.cpus) || request.cpus < 0) {
    return InvalidError(Fmt("placement: cpus must be a finite number >= 0 (got %g)", request.cpus));
  }
  const Model m = BuildModel(snapshot);
  const double cpus = request.cpus > 0 ? request.cpus : 1.0;
  const double mem = static_cast<double>(request.memory_bytes);
  auto room = [&](int i) {
    const PolicyNode& n = snapshot.nodes[static_cast<size_t>(i)];
    return static_cast<double>(n.memory_available_bytes) - m.arriving[static_cast<size_t>(i)] -
           MemoryMargin(n, config);
  };
  auto fits = [&](int i) {
    const PolicyNode& n = snapshot.nodes[static_cast<size_t>(i)];
    return room(i) > mem && !PsiHigh(n, config);
  };

  if (!request.node.empty()) {
    const int i = m.Find(request.node);
    if (i < 0) return NotFoundError("placement: node " + request.node + " is unknown");
    const PolicyNode& n = snapshot.nodes[static_cast<size_t>(i)];
    if (!n.ready) return ConflictError("placement: node " + n.name + " is not ready");
    if (n.cordoned) return ConflictError("placement: node " + n.name + " is cordoned");
    if (!n.has_image) return ConflictError("placement: node " + n.name + " lacks the image");
    if (!fits(i)) {
      return ConflictError(
          Fmt("placement: node %s has no room for %.0f MiB (available %.0f MiB, margin %.0f MiB%s)",
              n.name.c_str(), MiB(mem), MiB(static_cast<double>(n.memory_available_bytes)),
              MiB(MemoryMargin(n, config)), PsiHigh(n, config) ? ", under memory pressure" : ""));
    }
    return n.name;
  }

  int best = -1, ties = 0, not_ready = 0, cordoned = 0, full = 0, no_image = 0;
  double best_score = 0;
  for (size_t k = 0; k < snapshot.nodes.size(); ++k) {
    const int i = static_cast<int>(k);
    const PolicyNode& n = snapshot.nodes[k];
    if (m.duplicate[k]) continue;
    if (!n.ready) {
      ++not_ready;
      continue;
    }
    if (n.cordoned) {
      ++cordoned;
      continue;
    }
    if (!n.has_image) {
      ++no_image;
      continue;
    }
    if (!m.denom_ok[k] || !fits(i)) {
      ++full;
      continue;
    }
    const double score = m.load[k] + cpus / m.denom[k];
    if (best < 0 || score < best_score - kTieEpsilon) {
      best = i;
      best_score = score;
      ties = 1;
    } else if (score <= best_score + kTieEpsilon) {
      ++ties;
      if (random.Next() % static_cast<uint64_t>(ties) == 0) best = i;
    }
  }
  if (best < 0) {
    return RetryError(Fmt(
        "placement: no node fits %.0f MiB now (%zu node(s): %d not ready, %d cordoned, %d without "
        "the image, %d without room)",
        MiB(mem), snapshot.nodes.size(), not_ready, cordoned, no_image, full));
  }
  return snapshot.nodes[static_cast<size_t>(best)].name;
}

}  // namespace kmosix::controller
