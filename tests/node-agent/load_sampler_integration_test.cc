// The load samplers against the real kernel: HostLoadSampler on "/", and
// CgroupLoadSampler on a temporary cgroup v1 subtree holding a spinning child
// process. The cgroup test needs root and a v1 hierarchy; it skips loudly
// otherwise. Everything it creates is removed again.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kmosix/clock.h"
#include "load_sampler.h"

namespace kmosix::agent {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr char kCgroupFs[] = "/sys/fs/cgroup";

bool Exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

bool WriteTo(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.flush();
  return static_cast<bool>(out);
}

// utime + stime of a process, in clock ticks.
uint64_t ProcessTicks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  size_t paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::vector<std::string> f;
  for (std::string s; fields >> s;) f.push_back(s);
  // After "pid (comm) ": state is field 3; utime and stime are fields 14, 15.
  if (f.size() < 13) return 0;
  return std::stoull(f[11]) + std::stoull(f[12]);
}

TEST(LoadSamplerIntegrationTest, HostSamplerOnRealProcIsSane) {
  SystemClock clock;
  auto created = HostLoadSampler::Create({}, clock);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  auto sampler = std::move(created).value();
  auto first = sampler->Sample({"nothing-here"});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE(first->rates_valid);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto s = sampler->Sample({});
  ASSERT_TRUE(s.ok()) << s.status().ToString();

  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  struct sysinfo si {};
  ASSERT_EQ(::sysinfo(&si), 0);
  const double mem_total = static_cast<double>(si.totalram) * si.mem_unit;
  std::cout << "host: capacity " << s->cpu_capacity << " cores, used " << s->cpu_used
            << ", run queue " << s->run_queue << ", memory " << s->memory_available_bytes / kMiB
            << " of " << s->memory_capacity_bytes / kMiB << " MiB available, psi cpu "
            << (s->psi_cpu_some10 ? std::to_string(*s->psi_cpu_some10) : "none") << ", psi mem "
            << (s->psi_memory_some10 ? std::to_string(*s->psi_memory_some10) : "none") << "\n";

  EXPECT_EQ(s->source, "host");
  EXPECT_TRUE(s->rates_valid);
  EXPECT_EQ(s->cpu_capacity, static_cast<double>(online));
  EXPECT_GE(s->cpu_used, 0);
  EXPECT_LE(s->cpu_used, s->cpu_capacity + 1e-6);
  EXPECT_GE(s->run_queue, 0);
  EXPECT_NEAR(static_cast<double>(s->memory_capacity_bytes), mem_total, mem_total * 0.01);
  EXPECT_GT(s->memory_available_bytes, 0u);
  EXPECT_LE(s->memory_available_bytes, s->memory_capacity_bytes);
  EXPECT_EQ(s->psi_cpu_some10.has_value(), Exists("/proc/pressure/cpu"));
  EXPECT_EQ(s->psi_memory_some10.has_value(), Exists("/proc/pressure/memory"));
  EXPECT_TRUE(s->workloads.empty());
}

// A cgroup subtree <h>/<parent>/w1 in each hierarchy h, removed on exit along
// with the child process in it.
class TempCgroups {
 public:
  explicit TempCgroups(std::string parent) : parent_(std::move(parent)) {}
  ~TempCgroups() {
    if (child_ > 0) {
      ::kill(child_, SIGKILL);
      ::waitpid(child_, nullptr, 0);
    }
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
      for (int i = 0; i < 50 && ::rmdir(it->c_str()) != 0 && errno == EBUSY; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (Exists(*it)) std::cerr << "warning: could not remove " << *it << "\n";
    }
  }
  // Creates <hierarchy>/<parent>/w1; returns the w1 path ("" on failure).
  std::string Make(const std::string& hierarchy) {
    for (const std::string& d : {hierarchy + parent_, hierarchy + parent_ + "/w1"}) {
      ::rmdir(d.c_str());  // leftovers of an earlier, killed run (empty dirs only)
    }
    for (const std::string& d : {hierarchy + parent_, hierarchy + parent_ + "/w1"}) {
      if (::mkdir(d.c_str(), 0755) != 0) return "";
      dirs_.push_back(d);
    }
    return hierarchy + parent_ + "/w1";
  }
  pid_t child_ = -1;

 private:
  std::string parent_;
  std::vector<std::string> dirs_;
};

TEST(LoadSamplerIntegrationTest, CgroupV1SamplerSeesASpinningChild) {
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to create cgroups";
  if (Exists(std::string(kCgroupFs) + "/cgroup.controllers")) {
    GTEST_SKIP() << "SKIPPED: this host runs cgroup v2; the v1 path is what this test drives "
                    "(v2 is covered by the unit tests)";
  }
  const std::string cpuacct = std::string(kCgroupFs) + "/cpuacct";
  const std::string memory = std::string(kCgroupFs) + "/memory";
  const std::string unified = std::string(kCgroupFs) + "/unified";
  if (!Exists(cpuacct + "/cpuacct.usage") || !Exists(memory + "/memory.usage_in_bytes")) {
    GTEST_SKIP() << "SKIPPED: no cgroup v1 cpuacct and memory hierarchies under " << kCgroupFs;
  }
  const bool hybrid = Exists(unified + "/cgroup.controllers");
  const std::string parent = "/kmx-sampler-test-" + std::to_string(::getpid());

  TempCgroups cgroups(parent);
  std::vector<std::string> w1_dirs;
  for (const std::string& h : {cpuacct, memory}) {
    std::string d = cgroups.Make(h);
    ASSERT_FALSE(d.empty()) << "mkdir under " << h << ": " << std::strerror(errno);
    w1_dirs.push_back(d);
  }
  if (hybrid) {
    std::string d = cgroups.Make(unified);
    ASSERT_FALSE(d.empty()) << "mkdir under " << unified << ": " << std::strerror(errno);
    w1_dirs.push_back(d);
  }

  // The child waits until it sits in w1, then faults in 32 MiB (charged to
  // w1) and spins until killed.
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    char c;
    if (::read(go[0], &c, 1) != 1) ::_exit(1);
    const size_t size = 32 * kMiB;
    void* mem = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) ::_exit(1);
    for (size_t i = 0; i < size; i += 4096) static_cast<volatile char*>(mem)[i] = 1;
    volatile uint64_t spin = 0;
    for (;;) spin = spin + 1;
  }
  cgroups.child_ = pid;
  ::close(go[0]);
  for (const std::string& d : w1_dirs) {
    ASSERT_TRUE(WriteTo(d + "/cgroup.procs", std::to_string(pid))) << d;
  }
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  ::close(go[1]);

  SystemClock clock;
  CgroupSamplerOptions o;
  o.cgroup_parent = parent;
  o.cpu_capacity = 2;
  o.memory_capacity_bytes = 1024 * kMiB;
  o.time_constant = std::chrono::milliseconds(1);  // ~ the last interval's rate
  auto created = CgroupLoadSampler::Create(o, clock);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  auto sampler = std::move(created).value();

  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let it fault its memory in
  auto first = sampler->Sample({"w1", "w2"});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const uint64_t ticks0 = ProcessTicks(pid);
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  auto s = sampler->Sample({"w1", "w2"});
  const uint64_t ticks1 = ProcessTicks(pid);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(s.ok()) << s.status().ToString();

  const double by_proc = static_cast<double>(ticks1 - ticks0) / ::sysconf(_SC_CLK_TCK) / dt;
  const WorkloadUsage w1 = s->workloads.at("w1");
  std::cout << "cgroup v1" << (hybrid ? " (hybrid)" : "") << ": w1 " << w1.cpu << " cores ("
            << "/proc/<pid>/stat says " << by_proc << "), " << w1.memory_bytes / kMiB
            << " MiB; node " << s->cpu_used << " cores, " << s->memory_available_bytes / kMiB
            << " MiB available, run queue " << s->run_queue << ", psi cpu "
            << (s->psi_cpu_some10 ? std::to_string(*s->psi_cpu_some10) : "none") << ", psi mem "
            << (s->psi_memory_some10 ? std::to_string(*s->psi_memory_some10) : "none") << "\n";

  EXPECT_EQ(s->source, "cgroup");
  // A spinner gets up to a core, but on a saturated shared machine (load 18
  // on 2 cores was seen) far less: so no fixed floor. The cgroup's figure must
  // agree with the kernel's per-process accounting over the same interval.
  ASSERT_GT(by_proc, 0.02) << "the child hardly ran; cannot judge";
  EXPECT_GT(w1.cpu, 0.02);
  EXPECT_NEAR(w1.cpu, by_proc, 0.05 + 0.15 * by_proc);
  EXPECT_GE(s->cpu_used, w1.cpu - 0.05);  // the subtree includes w1
  EXPECT_LE(s->cpu_used, 1.1);            // one spinning thread
  EXPECT_GE(w1.memory_bytes, 24 * kMiB);
  EXPECT_LE(w1.memory_bytes, 256 * kMiB);
  EXPECT_LE(s->memory_available_bytes, o.memory_capacity_bytes - w1.memory_bytes);
  EXPECT_EQ(s->workloads.at("w2"), WorkloadUsage{});  // no cgroup: zeros
  EXPECT_EQ(s->psi_cpu_some10.has_value(), hybrid);
  EXPECT_EQ(s->psi_memory_some10.has_value(), hybrid || Exists("/proc/pressure/memory"));
}

}  // namespace
}  // namespace kmosix::agent
