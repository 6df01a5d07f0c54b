#include "load_sampler.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <set>
#include <string_view>

namespace kmosix::agent {
namespace {

constexpr size_t kMaxFileBytes = 4 << 20;   // far above any real /proc or cgroup file
constexpr double kWorkloadBusyCores = 0.2;  // run-queue estimate: "runnable" above this

// ---- reading -----------------------------------------------------------------

// Reads a whole regular file. `absent` is set (and the result is ok) when
// `optional` and the file does not exist or the kernel does not support it.
StatusOr<std::string> ReadText(const std::string& path, bool optional, bool* absent) {
  if (absent != nullptr) *absent = false;
  // O_NONBLOCK: a FIFO planted in place of a file must not hang the sampler.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    if (optional && (err == ENOENT || err == ENOTDIR || err == EOPNOTSUPP || err == ENODEV)) {
      *absent = true;
      return std::string();
    }
    return FailedError(path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FailedError(path + ": not a regular file");
  }
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      if (optional && (err == EOPNOTSUPP || err == ENODEV)) {
        *absent = true;
        return std::string();
      }
      return FailedError(path + ": " + std::strerror(err));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxFileBytes) {
      ::close(fd);
      return FailedError(path + ": malformed (larger than " + std::to_string(kMaxFileBytes) +
                         " bytes)");
    }
  }
  ::close(fd);
  return out;
}

StatusOr<std::string> ReadRequired(const std::string& path) {
  return ReadText(path, /*optional=*/false, nullptr);
}

// Ok with nullopt when the file is absent.
StatusOr<std::optional<std::string>> ReadOptional(const std::string& path) {
  bool absent = false;
  KMX_ASSIGN_OR_RETURN(std::string text, ReadText(path, /*optional=*/true, &absent));
  if (absent) return std::optional<std::string>();
  return std::optional<std::string>(std::move(text));
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool IsDir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ---- parsing -----------------------------------------------------------------

Status Malformed(const std::string& path, const std::string& why) {
  return FailedError(path + ": malformed (" + why + ")");
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::vector<std::string_view> Tokens(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && IsSpace(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !IsSpace(line[i])) ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::optional<uint64_t> ParseU64(std::string_view s) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// A finite, non-negative decimal number.
std::optional<double> ParseDouble(std::string_view s) {
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  if (!std::isfinite(v) || v < 0) return std::nullopt;
  return v;
}

// The value of the line "<key> <u64>" (cpu.stat, memory.stat).
StatusOr<uint64_t> KeyedValue(const std::string& text, std::string_view key,
                              const std::string& path) {
  for (std::string_view line : Lines(text)) {
    auto tok = Tokens(line);
    if (tok.empty() || tok[0] != key) continue;
    if (tok.size() != 2) return Malformed(path, "bad \"" + std::string(key) + "\" line");
    auto v = ParseU64(tok[1]);
    if (!v) return Malformed(path, "bad \"" + std::string(key) + "\" value");
    return *v;
  }
  return Malformed(path, "no \"" + std::string(key) + "\"");
}

// A file holding one unsigned number (cpuacct.usage, memory.current, ...).
StatusOr<uint64_t> SingleValue(const std::string& text, const std::string& path) {
  auto tok = Tokens(text);
  if (tok.size() != 1) return Malformed(path, "expected one number");
  auto v = ParseU64(tok[0]);
  if (!v) return Malformed(path, "expected one number");
  return *v;
}

// "some avg10=1.23 avg60=... total=..." -> 1.23
StatusOr<double> PsiSome10(const std::string& text, const std::string& path) {
  for (std::string_view line : Lines(text)) {
    auto tok = Tokens(line);
    if (tok.empty() || tok[0] != "some") continue;
    for (size_t i = 1; i < tok.size(); ++i) {
      constexpr std::string_view kAvg10 = "avg10=";
      if (tok[i].substr(0, kAvg10.size()) != kAvg10) continue;
      auto v = ParseDouble(tok[i].substr(kAvg10.size()));
      if (!v || *v > 100) return Malformed(path, "bad some avg10");
      return *v;
    }
    return Malformed(path, "no some avg10");
  }
  return Malformed(path, "no \"some\" line");
}

StatusOr<std::optional<double>> OptionalPsi(const std::string& path) {
  KMX_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadOptional(path));
  if (!text) return std::optional<double>();
  KMX_ASSIGN_OR_RETURN(double v, PsiSome10(*text, path));
  return std::optional<double>(v);
}

struct CpuTimes {
  uint64_t busy = 0;
  uint64_t total = 0;
  int cpus = 0;  // "cpuN" lines
};

StatusOr<CpuTimes> ParseProcStat(const std::string& text, const std::string& path) {
  CpuTimes t;
  bool found = false;
  for (std::string_view line : Lines(text)) {
    auto tok = Tokens(line);
    if (tok.empty() || tok[0].substr(0, 3) != "cpu") continue;
    if (tok[0].size() > 3) {
      if (ParseU64(tok[0].substr(3))) ++t.cpus;
      continue;
    }
    if (found) return Malformed(path, "two \"cpu\" lines");
    found = true;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if (tok.size() < 5) return Malformed(path, "short \"cpu\" line");
    uint64_t busy = 0, idle = 0;
    for (size_t i = 1; i < tok.size() && i <= 8; ++i) {
      auto v = ParseU64(tok[i]);
      if (!v) return Malformed(path, "bad number in \"cpu\" line");
      uint64_t& into = (i == 4 || i == 5) ? idle : busy;
      if (__builtin_add_overflow(into, *v, &into)) return Malformed(path, "overflow");
    }
    t.busy = busy;
    if (__builtin_add_overflow(busy, idle, &t.total)) return Malformed(path, "overflow");
  }
  if (!found) return Malformed(path, "no \"cpu\" line");
  if (t.cpus == 0) return Malformed(path, "no \"cpuN\" lines");
  return t;
}

StatusOr<double> ParseLoadavg(const std::string& text, const std::string& path) {
  auto tok = Tokens(text);
  if (tok.empty()) return Malformed(path, "empty");
  auto v = ParseDouble(tok[0]);
  if (!v) return Malformed(path, "bad 1-minute load");
  return *v;
}

struct MemInfo {
  uint64_t total = 0;
  uint64_t available = 0;
};

StatusOr<MemInfo> ParseMeminfo(const std::string& text, const std::string& path) {
  std::map<std::string_view, uint64_t> kv;
  for (std::string_view line : Lines(text)) {
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view key = line.substr(0, colon);
    if (key != "MemTotal" && key != "MemAvailable" && key != "MemFree" && key != "Buffers" &&
        key != "Cached") {
      continue;
    }
    auto tok = Tokens(line.substr(colon + 1));
    if (tok.empty() || tok.size() > 2) return Malformed(path, "bad " + std::string(key));
    auto v = ParseU64(tok[0]);
    if (!v) return Malformed(path, "bad " + std::string(key));
    uint64_t bytes = *v;
    if (tok.size() == 2) {
      if (tok[1] != "kB") return Malformed(path, "bad unit of " + std::string(key));
      if (__builtin_mul_overflow(bytes, uint64_t{1024}, &bytes)) {
        return Malformed(path, "overflow in " + std::string(key));
      }
    }
    kv[key] = bytes;
  }
  MemInfo m;
  auto total = kv.find("MemTotal");
  if (total == kv.end() || total->second == 0) return Malformed(path, "no MemTotal");
  m.total = total->second;
  if (auto a = kv.find("MemAvailable"); a != kv.end()) {
    m.available = a->second;
  } else if (kv.count("MemFree") != 0) {  // kernels before 3.14
    uint64_t sum = kv["MemFree"];
    for (std::string_view k : {"Buffers", "Cached"}) {
      if (__builtin_add_overflow(sum, kv[k], &sum)) return Malformed(path, "overflow");
    }
    m.available = sum;
  } else {
    return Malformed(path, "no MemAvailable");
  }
  m.available = std::min(m.available, m.total);
  return m;
}

// "0-3,5,7-8\n" -> 7
StatusOr<int> ParseCpuList(const std::string& text, const std::string& path) {
  auto tok = Tokens(text);
  if (tok.size() != 1) return Malformed(path, "expected a CPU list");
  std::string_view list = tok[0];
  uint64_t count = 0;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view item = list.substr(start, comma - start);
    size_t dash = item.find('-');
    auto lo = ParseU64(item.substr(0, dash));
    auto hi = dash == std::string_view::npos ? lo : ParseU64(item.substr(dash + 1));
    if (!lo || !hi || *hi < *lo || *hi - *lo >= 65536) return Malformed(path, "bad CPU range");
    count += *hi - *lo + 1;
    if (count > 65536) return Malformed(path, "too many CPUs");
    start = comma + 1;
  }
  return static_cast<int>(count);
}

// ---- paths -------------------------------------------------------------------

// "/" -> "", "/tmp/x/" -> "/tmp/x": a prefix for absolute paths.
std::string RootPrefix(std::string root) {
  while (!root.empty() && root.back() == '/') root.pop_back();
  return root;
}

// "kmosix-node1/" -> "/kmosix-node1"; "/" -> "". nullopt for "." or ".."
// segments.
std::optional<std::string> NormaliseCgroupPath(const std::string& p) {
  std::string out;
  size_t start = 0;
  while (start < p.size()) {
    size_t slash = p.find('/', start);
    if (slash == std::string::npos) slash = p.size();
    std::string seg = p.substr(start, slash - start);
    if (seg == "." || seg == ".." || seg.find('\0') != std::string::npos) return std::nullopt;
    if (!seg.empty()) out += "/" + seg;
    start = slash + 1;
  }
  return out;
}

bool PlainSegment(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// ---- cgroups -------------------------------------------------------------------

struct CgroupFs {
  bool v2 = false;
  std::string base;     // v2: <root>/sys/fs/cgroup; v1: <root>/sys/fs/cgroup
  std::string unified;  // v1 hybrid: <root>/sys/fs/cgroup/unified ("" if absent)

  std::string V2(const std::string& cg, const char* file) const { return base + cg + "/" + file; }
  std::string CpuAcct(const std::string& cg, const char* file) const {
    return base + "/cpuacct" + cg + "/" + file;
  }
  std::string Memory(const std::string& cg, const char* file) const {
    return base + "/memory" + cg + "/" + file;
  }
};

StatusOr<CgroupFs> DetectCgroupFs(const std::string& root_prefix) {
  CgroupFs fs;
  fs.base = root_prefix + "/sys/fs/cgroup";
  if (Exists(fs.base + "/cgroup.controllers")) {
    fs.v2 = true;
    return fs;
  }
  for (const char* h : {"/cpuacct", "/memory"}) {
    if (!IsDir(fs.base + h)) {
      return FailedError(fs.base + h + ": no cgroup v1 hierarchy (and no cgroup v2 at " + fs.base +
                         ")");
    }
  }
  if (Exists(fs.base + "/unified/cgroup.controllers")) fs.unified = fs.base + "/unified";
  return fs;
}

struct CgroupUsage {
  std::optional<uint64_t> cpu_ns;  // cumulative; nullopt: no such cgroup
  uint64_t memory_bytes = 0;       // usage minus inactive file cache
};

// Memory in use: usage minus the inactive file cache of memory.stat (if that
// file exists).
StatusOr<uint64_t> WorkingSet(const std::string& usage_path, const std::string& stat_path,
                              std::string_view inactive_key) {
  KMX_ASSIGN_OR_RETURN(std::optional<std::string> usage_text, ReadOptional(usage_path));
  if (!usage_text) return uint64_t{0};
  KMX_ASSIGN_OR_RETURN(uint64_t usage, SingleValue(*usage_text, usage_path));
  KMX_ASSIGN_OR_RETURN(std::optional<std::string> stat_text, ReadOptional(stat_path));
  if (!stat_text) return usage;
  KMX_ASSIGN_OR_RETURN(uint64_t inactive, KeyedValue(*stat_text, inactive_key, stat_path));
  return usage > inactive ? usage - inactive : 0;
}

StatusOr<CgroupUsage> ReadCgroup(const CgroupFs& fs, const std::string& cg) {
  CgroupUsage u;
  if (fs.v2) {
    std::string cpu_path = fs.V2(cg, "cpu.stat");
    KMX_ASSIGN_OR_RETURN(std::optional<std::string> cpu, ReadOptional(cpu_path));
    if (cpu) {
      KMX_ASSIGN_OR_RETURN(uint64_t usec, KeyedValue(*cpu, "usage_usec", cpu_path));
      uint64_t ns = 0;
      if (__builtin_mul_overflow(usec, uint64_t{1000}, &ns)) {
        return Malformed(cpu_path, "usage_usec overflows");
      }
      u.cpu_ns = ns;
    }
    KMX_ASSIGN_OR_RETURN(u.memory_bytes, WorkingSet(fs.V2(cg, "memory.current"),
                                                    fs.V2(cg, "memory.stat"), "inactive_file"));
    return u;
  }
  std::string cpu_path = fs.CpuAcct(cg, "cpuacct.usage");
  KMX_ASSIGN_OR_RETURN(std::optional<std::string> cpu, ReadOptional(cpu_path));
  if (cpu) {
    KMX_ASSIGN_OR_RETURN(uint64_t ns, SingleValue(*cpu, cpu_path));
    u.cpu_ns = ns;
  }
  KMX_ASSIGN_OR_RETURN(u.memory_bytes,
                       WorkingSet(fs.Memory(cg, "memory.usage_in_bytes"),
                                  fs.Memory(cg, "memory.stat"), "total_inactive_file"));
  return u;
}

// Per-workload usage under `parent`, with the smoothed CPU rates kept in
// `trackers` (entries for names not listed are dropped).
Status SampleWorkloads(const CgroupFs& fs, const std::string& parent,
                       const std::vector<std::string>& names, Clock::TimePoint now, double tau,
                       std::map<std::string, internal::SmoothedRate>& trackers,
                       std::map<std::string, WorkloadUsage>& out) {
  std::set<std::string> listed(names.begin(), names.end());
  for (auto it = trackers.begin(); it != trackers.end();) {
    it = listed.count(it->first) != 0 ? std::next(it) : trackers.erase(it);
  }
  for (const std::string& name : listed) {
    WorkloadUsage& usage = out[name];
    if (!PlainSegment(name)) continue;  // zeros
    KMX_ASSIGN_OR_RETURN(CgroupUsage u, ReadCgroup(fs, parent + "/" + name));
    usage.memory_bytes = u.memory_bytes;
    if (!u.cpu_ns) {
      trackers.erase(name);  // gone: starts fresh if it comes back
      continue;
    }
    internal::SmoothedRate& r = trackers[name];
    r.Feed(*u.cpu_ns, now, 1e-9, tau);
    usage.cpu = r.has_value ? r.value : 0;
  }
  return Status::Ok();
}

bool Moved(double a, double b, double threshold) {
  double d = std::fabs(a - b);
  return d > 0 && d >= threshold;
}

bool PsiMoved(const std::optional<double>& a, const std::optional<double>& b, double points) {
  if (a.has_value() != b.has_value()) return true;
  return a.has_value() && Moved(*a, *b, points);
}

Status CheckTimeConstant(Clock::Duration tau) {
  if (tau <= Clock::Duration::zero()) return InvalidError("time constant must be > 0");
  return Status::Ok();
}

}  // namespace

// ---- internal::SmoothedRate ------------------------------------------------------

namespace internal {

void SmoothedRate::Fold(double rate, double dt_seconds, double time_constant_seconds) {
  if (!has_value) {
    value = rate;
    has_value = true;
    return;
  }
  double alpha = 1 - std::exp(-dt_seconds / time_constant_seconds);
  value += alpha * (rate - value);
}

void SmoothedRate::Feed(uint64_t counter, Clock::TimePoint now, double scale,
                        double time_constant_seconds) {
  if (!has_base || counter < base) {  // first reading, or the counter restarted
    has_base = true;
    base = counter;
    base_time = now;
    has_value = false;
    value = 0;
    return;
  }
  double dt = Seconds(now - base_time);
  if (dt <= 0) return;  // no time passed: keep the older base
  Fold(static_cast<double>(counter - base) * scale / dt, dt, time_constant_seconds);
  base = counter;
  base_time = now;
}

}  // namespace internal

// ---- free functions ------------------------------------------------------------

void FillNodeLoad(const LoadSample& s, api::NodeLoad& out) {
  out.load_source = s.source;
  out.cpu_capacity = s.cpu_capacity;
  out.cpu_used = s.cpu_used;
  out.run_queue = s.run_queue;
  out.memory_capacity_bytes = s.memory_capacity_bytes;
  out.memory_available_bytes = s.memory_available_bytes;
  out.psi_cpu_some10 = s.psi_cpu_some10;
  out.psi_memory_some10 = s.psi_memory_some10;
  out.workloads = s.workloads;
  out.updated_ms = s.sampled_ms;
}

bool MateriallyChanged(const LoadSample& before, const LoadSample& now, const ChangeThresholds& t) {
  if (before.source != now.source || before.rates_valid != now.rates_valid) return true;
  if (before.cpu_capacity != now.cpu_capacity) return true;
  if (before.memory_capacity_bytes != now.memory_capacity_bytes) return true;
  if (Moved(before.cpu_used, now.cpu_used, t.cpu_fraction * now.cpu_capacity)) return true;
  uint64_t mem_delta = before.memory_available_bytes > now.memory_available_bytes
                           ? before.memory_available_bytes - now.memory_available_bytes
                           : now.memory_available_bytes - before.memory_available_bytes;
  double mem_threshold =
      std::min(t.memory_fraction * static_cast<double>(now.memory_capacity_bytes),
               static_cast<double>(t.memory_bytes));
  if (mem_delta > 0 && static_cast<double>(mem_delta) >= mem_threshold) return true;
  if (PsiMoved(before.psi_cpu_some10, now.psi_cpu_some10, t.psi_points)) return true;
  if (PsiMoved(before.psi_memory_some10, now.psi_memory_some10, t.psi_points)) return true;
  if (before.workloads.size() != now.workloads.size()) return true;
  for (const auto& [name, usage] : now.workloads) {
    auto it = before.workloads.find(name);
    if (it == before.workloads.end()) return true;
    if (Moved(it->second.cpu, usage.cpu, t.workload_cpu)) return true;
  }
  return false;
}

// ---- HostLoadSampler -----------------------------------------------------------

StatusOr<std::unique_ptr<HostLoadSampler>> HostLoadSampler::Create(HostSamplerOptions options,
                                                                   Clock& clock) {
  if (options.cpu_capacity &&
      (!std::isfinite(*options.cpu_capacity) || *options.cpu_capacity <= 0)) {
    return InvalidError("declared cpu capacity must be > 0");
  }
  KMX_RETURN_IF_ERROR(CheckTimeConstant(options.time_constant));
  if (!options.cgroup_parent.empty()) {
    auto parent = NormaliseCgroupPath(options.cgroup_parent);
    if (!parent) return InvalidError("bad cgroup parent \"" + options.cgroup_parent + "\"");
    // "/" stays enabled (workloads directly under the root): keep a marker.
    options.cgroup_parent = parent->empty() ? "/" : *parent;
  }
  return std::unique_ptr<HostLoadSampler>(new HostLoadSampler(std::move(options), clock));
}

HostLoadSampler::HostLoadSampler(HostSamplerOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

StatusOr<LoadSample> HostLoadSampler::Sample(const std::vector<std::string>& workloads) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string root = RootPrefix(options_.root);
  const Clock::TimePoint now = clock_.Now();
  const double tau = Seconds(options_.time_constant);
  LoadSample s;
  s.source = "host";
  s.sampled_ms = clock_.WallMillis();

  const std::string stat_path = root + "/proc/stat";
  KMX_ASSIGN_OR_RETURN(std::string stat_text, ReadRequired(stat_path));
  KMX_ASSIGN_OR_RETURN(CpuTimes cpu, ParseProcStat(stat_text, stat_path));

  const std::string loadavg_path = root + "/proc/loadavg";
  KMX_ASSIGN_OR_RETURN(std::string loadavg_text, ReadRequired(loadavg_path));
  KMX_ASSIGN_OR_RETURN(s.run_queue, ParseLoadavg(loadavg_text, loadavg_path));

  const std::string meminfo_path = root + "/proc/meminfo";
  KMX_ASSIGN_OR_RETURN(std::string meminfo_text, ReadRequired(meminfo_path));
  KMX_ASSIGN_OR_RETURN(MemInfo mem, ParseMeminfo(meminfo_text, meminfo_path));
  s.memory_capacity_bytes = mem.total;
  s.memory_available_bytes = mem.available;

  KMX_ASSIGN_OR_RETURN(s.psi_cpu_some10, OptionalPsi(root + "/proc/pressure/cpu"));
  KMX_ASSIGN_OR_RETURN(s.psi_memory_some10, OptionalPsi(root + "/proc/pressure/memory"));

  if (options_.cpu_capacity) {
    s.cpu_capacity = *options_.cpu_capacity;
  } else {
    const std::string online_path = root + "/sys/devices/system/cpu/online";
    KMX_ASSIGN_OR_RETURN(std::optional<std::string> online, ReadOptional(online_path));
    int n = cpu.cpus;
    if (online) {
      KMX_ASSIGN_OR_RETURN(n, ParseCpuList(*online, online_path));
    }
    s.cpu_capacity = n;
  }

  if (!options_.cgroup_parent.empty()) {
    KMX_ASSIGN_OR_RETURN(CgroupFs fs, DetectCgroupFs(root));
    std::string parent = options_.cgroup_parent == "/" ? "" : options_.cgroup_parent;
    KMX_RETURN_IF_ERROR(
        SampleWorkloads(fs, parent, workloads, now, tau, workload_cpu_, s.workloads));
  } else {
    for (const std::string& name : workloads) s.workloads[name];  // zeros
  }

  // Node CPU: busy share of the aggregate line's deltas, times the CPUs it covers.
  s.rates_valid = have_prev_;
  double dt = Seconds(now - prev_time_);
  if (!have_prev_ || cpu.busy < prev_busy_ || cpu.total < prev_total_) {
    have_prev_ = true;  // first sample or counters restarted: new base
    prev_busy_ = cpu.busy;
    prev_total_ = cpu.total;
    prev_time_ = now;
  } else if (dt > 0 && cpu.total > prev_total_) {
    double share =
        static_cast<double>(cpu.busy - prev_busy_) / static_cast<double>(cpu.total - prev_total_);
    cpu_.Fold(std::clamp(share, 0.0, 1.0) * cpu.cpus, dt, tau);
    prev_busy_ = cpu.busy;
    prev_total_ = cpu.total;
    prev_time_ = now;
  }
  s.cpu_used = cpu_.has_value ? cpu_.value : 0;
  return s;
}

// ---- CgroupLoadSampler ---------------------------------------------------------

StatusOr<std::unique_ptr<CgroupLoadSampler>> CgroupLoadSampler::Create(CgroupSamplerOptions options,
                                                                       Clock& clock) {
  auto parent = NormaliseCgroupPath(options.cgroup_parent);
  if (!parent || parent->empty()) {
    return InvalidError("bad cgroup parent \"" + options.cgroup_parent + "\"");
  }
  options.cgroup_parent = *parent;
  if (!std::isfinite(options.cpu_capacity) || options.cpu_capacity <= 0) {
    return InvalidError("declared cpu capacity must be > 0");
  }
  if (options.memory_capacity_bytes == 0) {
    return InvalidError("declared memory capacity must be > 0");
  }
  KMX_RETURN_IF_ERROR(CheckTimeConstant(options.time_constant));
  return std::unique_ptr<CgroupLoadSampler>(new CgroupLoadSampler(std::move(options), clock));
}

CgroupLoadSampler::CgroupLoadSampler(CgroupSamplerOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

StatusOr<LoadSample> CgroupLoadSampler::Sample(const std::vector<std::string>& workloads) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string root = RootPrefix(options_.root);
  const std::string& parent = options_.cgroup_parent;
  const Clock::TimePoint now = clock_.Now();
  const double tau = Seconds(options_.time_constant);
  LoadSample s;
  s.source = "cgroup";
  s.sampled_ms = clock_.WallMillis();
  s.cpu_capacity = options_.cpu_capacity;
  s.memory_capacity_bytes = options_.memory_capacity_bytes;

  KMX_ASSIGN_OR_RETURN(CgroupFs fs, DetectCgroupFs(root));
  KMX_ASSIGN_OR_RETURN(CgroupUsage node, ReadCgroup(fs, parent));
  KMX_RETURN_IF_ERROR(SampleWorkloads(fs, parent, workloads, now, tau, workload_cpu_, s.workloads));

  if (node.cpu_ns) {
    parent_cpu_.Feed(*node.cpu_ns, now, 1e-9, tau);
  } else {
    parent_cpu_ = {};  // no subtree yet: nothing runs
  }
  s.cpu_used = parent_cpu_.has_value ? parent_cpu_.value : 0;
  s.rates_valid = sampled_before_;
  sampled_before_ = true;
  s.memory_available_bytes = node.memory_bytes < options_.memory_capacity_bytes
                                 ? options_.memory_capacity_bytes - node.memory_bytes
                                 : 0;

  if (fs.v2) {
    KMX_ASSIGN_OR_RETURN(s.psi_cpu_some10, OptionalPsi(fs.V2(parent, "cpu.pressure")));
    KMX_ASSIGN_OR_RETURN(s.psi_memory_some10, OptionalPsi(fs.V2(parent, "memory.pressure")));
  } else if (!fs.unified.empty() && IsDir(fs.unified + parent)) {
    KMX_ASSIGN_OR_RETURN(s.psi_cpu_some10, OptionalPsi(fs.unified + parent + "/cpu.pressure"));
    KMX_ASSIGN_OR_RETURN(s.psi_memory_some10,
                         OptionalPsi(fs.unified + parent + "/memory.pressure"));
  } else {
    KMX_ASSIGN_OR_RETURN(s.psi_memory_some10, OptionalPsi(root + "/proc/pressure/memory"));
  }

  double rq = 0;
  for (const auto& [name, usage] : s.workloads) {
    if (usage.cpu >= kWorkloadBusyCores) rq += std::max(1.0, std::round(usage.cpu));
  }
  s.run_queue = rq;
  return s;
}

}  // namespace kmosix::agent
