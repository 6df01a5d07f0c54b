// Load samplers over fake /proc and cgroup (v1 and v2) trees in a temp dir,
// with a FakeClock: rates from counter deltas, EWMA smoothing, PSI, missing
// and hostile files; plus MateriallyChanged and FillNodeLoad.
#include "load_sampler.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "fakes/fake_clock.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;
using testing::FakeClock;

constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kMiB = 1ull << 20;

class LoadSamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() /
            ("kmx-sampler-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void Write(const std::string& rel, const std::string& content) {
    fs::path p = root_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
  }
  void Remove(const std::string& rel) { fs::remove_all(root_ / rel); }

  // /proc/stat with an aggregate line of `busy` user ticks and `idle` idle
  // ticks over two CPUs.
  void WriteProcStat(uint64_t busy, uint64_t idle) {
    Write("proc/stat", "cpu  " + std::to_string(busy) + " 0 0 " + std::to_string(idle) +
                           " 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\n"
                           "intr 12345 0 0\nctxt 999\nbtime 1700000000\n");
  }
  void WriteHost() {
    WriteProcStat(1000, 9000);
    Write("proc/loadavg", "1.50 0.75 0.25 3/120 4242\n");
    Write("proc/meminfo",
          "MemTotal:        4096000 kB\nMemFree:          100000 kB\n"
          "MemAvailable:    2048000 kB\nBuffers:            1000 kB\nCached:   5000 kB\n");
    Write("proc/pressure/cpu",
          "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\n"
          "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    Write("proc/pressure/memory",
          "some avg10=0.75 avg60=0.10 avg300=0.00 total=42\n"
          "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    Write("sys/devices/system/cpu/online", "0-1\n");
  }

  // cgroup v1: separate cpuacct and memory hierarchies (as on the dev box).
  void MakeV1() {
    fs::create_directories(root_ / "sys/fs/cgroup/cpuacct");
    fs::create_directories(root_ / "sys/fs/cgroup/memory");
  }
  void V1Cgroup(const std::string& cg, uint64_t cpu_ns, uint64_t mem, uint64_t inactive_file) {
    Write("sys/fs/cgroup/cpuacct" + cg + "/cpuacct.usage", std::to_string(cpu_ns) + "\n");
    Write("sys/fs/cgroup/memory" + cg + "/memory.usage_in_bytes", std::to_string(mem) + "\n");
    Write("sys/fs/cgroup/memory" + cg + "/memory.stat",
          "cache 1\nrss 2\ntotal_cache 10\ntotal_inactive_file " + std::to_string(inactive_file) +
              "\ntotal_active_file 5\n");
  }
  void MakeV2() { Write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n"); }
  void V2Cgroup(const std::string& cg, uint64_t cpu_us, uint64_t mem, uint64_t inactive_file) {
    Write("sys/fs/cgroup" + cg + "/cpu.stat",
          "usage_usec " + std::to_string(cpu_us) +
              "\nuser_usec 1\nsystem_usec 1\nnr_periods 0\nnr_throttled 0\n");
    Write("sys/fs/cgroup" + cg + "/memory.current", std::to_string(mem) + "\n");
    Write(
        "sys/fs/cgroup" + cg + "/memory.stat",
        "anon 100\nfile 200\nactive_file 7\ninactive_file " + std::to_string(inactive_file) + "\n");
  }

  std::unique_ptr<HostLoadSampler> Host(HostSamplerOptions o = {}) {
    o.root = root_.string();
    auto s = HostLoadSampler::Create(o, clock_);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::unique_ptr<CgroupLoadSampler> Cgroup(double cores = 2, uint64_t mem = 4 * kGiB) {
    CgroupSamplerOptions o;
    o.root = root_.string();
    o.cgroup_parent = "/kmosix-node1";
    o.cpu_capacity = cores;
    o.memory_capacity_bytes = mem;
    auto s = CgroupLoadSampler::Create(o, clock_);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }

  fs::path root_;
  FakeClock clock_;
};

// ---- HostLoadSampler ---------------------------------------------------------

TEST_F(LoadSamplerTest, HostFirstSampleHasNoRatesSecondComputesFromDeltas) {
  WriteHost();
  auto sampler = Host();
  auto first = sampler->Sample({});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->source, "host");
  EXPECT_FALSE(first->rates_valid);
  EXPECT_EQ(first->cpu_used, 0);
  EXPECT_EQ(first->cpu_capacity, 2);
  EXPECT_DOUBLE_EQ(first->run_queue, 1.5);
  EXPECT_EQ(first->memory_capacity_bytes, 4096000ull * 1024);
  EXPECT_EQ(first->memory_available_bytes, 2048000ull * 1024);
  EXPECT_EQ(first->sampled_ms, clock_.WallMillis());

  // 300 busy of 400 ticks over 2 CPUs: 1.5 cores.
  WriteProcStat(1300, 9100);
  clock_.Advance(seconds(1));
  auto second = sampler->Sample({});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_TRUE(second->rates_valid);
  EXPECT_DOUBLE_EQ(second->cpu_used, 1.5);  // the first rate seeds the average
}

TEST_F(LoadSamplerTest, HostEwmaMovesByAlphaAndConverges) {
  WriteHost();
  HostSamplerOptions o;
  o.time_constant = seconds(3);
  auto sampler = Host(o);
  uint64_t busy = 1000, idle = 9000;
  ASSERT_TRUE(sampler->Sample({}).ok());
  // One interval at 0.5 cores (seed), then 1.5 cores steady.
  busy += 25, idle += 75;
  clock_.Advance(seconds(1));
  WriteProcStat(busy, idle);
  ASSERT_DOUBLE_EQ(sampler->Sample({})->cpu_used, 0.5);

  busy += 75, idle += 25;
  clock_.Advance(seconds(1));
  WriteProcStat(busy, idle);
  double alpha = 1 - std::exp(-1.0 / 3.0);
  EXPECT_NEAR(sampler->Sample({})->cpu_used, 0.5 + alpha * 1.0, 1e-9);

  double last = 0;
  for (int i = 0; i < 40; ++i) {
    busy += 75, idle += 25;
    clock_.Advance(seconds(1));
    WriteProcStat(busy, idle);
    auto s = sampler->Sample({});
    ASSERT_TRUE(s.ok());
    EXPECT_GE(s->cpu_used, last);  // monotone towards the new rate
    last = s->cpu_used;
  }
  EXPECT_NEAR(last, 1.5, 1e-4);
}

TEST_F(LoadSamplerTest, HostLongerIntervalWeighsMore) {
  WriteHost();
  auto sampler = Host();
  ASSERT_TRUE(sampler->Sample({}).ok());
  clock_.Advance(seconds(1));
  WriteProcStat(1000, 9100);  // 0 cores: seed
  ASSERT_EQ(sampler->Sample({})->cpu_used, 0);
  clock_.Advance(seconds(6));  // 2 cores for 6 s (= two time constants)
  WriteProcStat(1600, 9100);
  EXPECT_NEAR(sampler->Sample({})->cpu_used, 2 * (1 - std::exp(-2.0)), 1e-9);
}

TEST_F(LoadSamplerTest, HostNoTimePassedOrCounterResetKeepsSane) {
  WriteHost();
  auto sampler = Host();
  ASSERT_TRUE(sampler->Sample({}).ok());
  WriteProcStat(1100, 9100);
  auto same_time = sampler->Sample({});  // dt = 0: no rate yet
  ASSERT_TRUE(same_time.ok());
  EXPECT_EQ(same_time->cpu_used, 0);
  clock_.Advance(seconds(1));
  auto s = sampler->Sample({});  // delta spans from the first sample
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->cpu_used, 1.0);
  WriteProcStat(10, 10);  // counters went backwards: new base, value kept
  clock_.Advance(seconds(1));
  s = sampler->Sample({});
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->cpu_used, 1.0);
}

TEST_F(LoadSamplerTest, HostCapacityFromOnlineListStatOrDeclared) {
  WriteHost();
  Write("sys/devices/system/cpu/online", "0-3,6,8-9\n");
  EXPECT_EQ(Host()->Sample({})->cpu_capacity, 7);
  Remove("sys/devices/system/cpu/online");
  EXPECT_EQ(Host()->Sample({})->cpu_capacity, 2);  // cpuN lines of /proc/stat
  HostSamplerOptions o;
  o.cpu_capacity = 1.5;
  EXPECT_EQ(Host(o)->Sample({})->cpu_capacity, 1.5);
}

TEST_F(LoadSamplerTest, HostPsiParsedAndMissingIsNullopt) {
  WriteHost();
  auto s = Host()->Sample({});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE(s->psi_cpu_some10.has_value());
  EXPECT_DOUBLE_EQ(*s->psi_cpu_some10, 12.5);
  ASSERT_TRUE(s->psi_memory_some10.has_value());
  EXPECT_DOUBLE_EQ(*s->psi_memory_some10, 0.75);

  Remove("proc/pressure");
  s = Host()->Sample({});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_FALSE(s->psi_cpu_some10.has_value());
  EXPECT_FALSE(s->psi_memory_some10.has_value());
}

TEST_F(LoadSamplerTest, HostMemAvailableFallsBackOnOldKernels) {
  WriteHost();
  Write("proc/meminfo",
        "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\nHugePages_Total: 0\n");
  auto s = Host()->Sample({});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->memory_available_bytes, 420ull * 1024);
}

TEST_F(LoadSamplerTest, HostMissingRequiredFileIsFailedWithPath) {
  WriteHost();
  for (const char* file : {"proc/stat", "proc/loadavg", "proc/meminfo"}) {
    SCOPED_TRACE(file);
    WriteHost();
    Remove(file);
    auto s = Host()->Sample({});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Code::kFailed);
    EXPECT_NE(s.status().message().find((root_ / file).string()), std::string::npos)
        << s.status().message();
  }
}

TEST_F(LoadSamplerTest, HostMalformedFilesAreFailedNamingTheFile) {
  struct Case {
    const char* file;
    std::string content;
  };
  const std::vector<Case> cases = {
      {"proc/stat", ""},
      {"proc/stat", "cpu 1 2\ncpu0 1 2 3 4\n"},
      {"proc/stat", "cpu x 0 0 0 0\ncpu0 1 2 3 4\n"},
      {"proc/stat", "cpu -1 0 0 0 0\ncpu0 1 2 3 4\n"},
      {"proc/stat", "cpu 18446744073709551615 1 0 0 0\ncpu0 1 2 3 4\n"},
      {"proc/stat", "cpu 99999999999999999999999 0 0 0\ncpu0 1 2 3 4\n"},
      {"proc/stat", "cpu 1 0 0 1 0\n"},  // no cpuN lines
      {"proc/stat", "cpu 1 0 0 1\ncpu 1 0 0 1\ncpu0 1 0 0 1\n"},
      {"proc/loadavg", ""},
      {"proc/loadavg", "nan 1 1 1/1 1\n"},
      {"proc/loadavg", "inf 1 1\n"},
      {"proc/loadavg", "-1 1 1\n"},
      {"proc/loadavg", "1.5x 1 1\n"},
      {"proc/meminfo", "MemAvailable: 1 kB\n"},
      {"proc/meminfo", "MemTotal: 1 MB\nMemAvailable: 1 kB\n"},
      {"proc/meminfo", "MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n"},
      {"proc/meminfo", "MemTotal: 100 kB\n"},
      {"proc/meminfo", "MemTotal: 0 kB\nMemAvailable: 0 kB\n"},
      {"proc/meminfo", "MemTotal:\nMemAvailable: 1 kB\n"},
      {"proc/pressure/cpu", "full avg10=1.00\n"},
      {"proc/pressure/cpu", "some avg10=abc avg60=1\n"},
      {"proc/pressure/cpu", "some avg10=101 avg60=1\n"},
      {"proc/pressure/cpu", "some avg60=1.0\n"},
      {"proc/pressure/memory", "some avg10=-3\n"},
      {"sys/devices/system/cpu/online", "\n"},
      {"sys/devices/system/cpu/online", "3-1\n"},
      {"sys/devices/system/cpu/online", "0-4000000000\n"},
      {"sys/devices/system/cpu/online", "0,,1\n"},
      {"sys/devices/system/cpu/online", "0-1 2\n"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.file) + ": " + c.content);
    WriteHost();
    Write(c.file, c.content);
    auto s = Host()->Sample({});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Code::kFailed);
    EXPECT_NE(s.status().message().find((root_ / c.file).string()), std::string::npos)
        << s.status().message();
  }
}

TEST_F(LoadSamplerTest, HostDirectoryOrFifoInPlaceOfFileFailsWithoutHanging) {
  WriteHost();
  Remove("proc/loadavg");
  fs::create_directories(root_ / "proc/loadavg");
  auto s = Host()->Sample({});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kFailed);

  Remove("proc/loadavg");
  ASSERT_EQ(::mkfifo((root_ / "proc/loadavg").c_str(), 0600), 0);
  s = Host()->Sample({});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("proc/loadavg"), std::string::npos);
}

TEST_F(LoadSamplerTest, RandomGarbageNeverCrashes) {
  // Fuzz-ish: every input file replaced by random bytes or mutated real
  // content; each sample is ok or kFailed, never a crash or a hang.
  const std::vector<std::string> files = {
      "proc/stat",
      "proc/loadavg",
      "proc/meminfo",
      "proc/pressure/cpu",
      "proc/pressure/memory",
      "sys/devices/system/cpu/online",
      "sys/fs/cgroup/cpuacct/kmosix-node1/cpuacct.usage",
      "sys/fs/cgroup/cpuacct/kmosix-node1/w1/cpuacct.usage",
      "sys/fs/cgroup/memory/kmosix-node1/memory.usage_in_bytes",
      "sys/fs/cgroup/memory/kmosix-node1/memory.stat",
      "sys/fs/cgroup/memory/kmosix-node1/w1/memory.stat",
  };
  std::mt19937_64 rng(12345);
  const std::string alphabet = "0123456789 \n\t-.:=,kBcpuavgsomeinftotal_\x01\xff";
  for (int round = 0; round < 300; ++round) {
    WriteHost();
    MakeV1();
    V1Cgroup("/kmosix-node1", 1000, 4096, 10);
    V1Cgroup("/kmosix-node1/w1", 500, 2048, 5);
    const std::string& file = files[rng() % files.size()];
    std::string content;
    if (round % 2 == 0) {
      size_t n = rng() % 200;
      for (size_t i = 0; i < n; ++i) content += alphabet[rng() % alphabet.size()];
    } else {
      std::ifstream in(root_ / file, std::ios::binary);
      content.assign(std::istreambuf_iterator<char>(in), {});
      for (int k = 0; k < 3 && !content.empty(); ++k) {
        content[rng() % content.size()] = alphabet[rng() % alphabet.size()];
      }
    }
    Write(file, content);
    HostSamplerOptions ho;
    ho.cgroup_parent = "/kmosix-node1";
    auto host = Host(ho);
    auto cg = Cgroup();
    for (int i = 0; i < 2; ++i) {
      clock_.Advance(seconds(1));
      auto a = host->Sample({"w1", "w2"});
      auto b = cg->Sample({"w1", "w2"});
      EXPECT_TRUE(a.ok() ? std::isfinite(a->cpu_used) : a.status().code() == Code::kFailed);
      EXPECT_TRUE(b.ok() ? std::isfinite(b->cpu_used) : b.status().code() == Code::kFailed);
    }
  }
}

TEST_F(LoadSamplerTest, HostPerWorkloadUsageFromCgroups) {
  WriteHost();
  MakeV1();
  V1Cgroup("/kmx/w1", 0, 300 * kMiB, 100 * kMiB);
  HostSamplerOptions o;
  o.cgroup_parent = "kmx/";
  auto sampler = Host(o);
  auto s = sampler->Sample({"w1", "ghost"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(s->workloads.size(), 2u);
  EXPECT_EQ(s->workloads["w1"].memory_bytes, 200 * kMiB);
  EXPECT_EQ(s->workloads["w1"].cpu, 0);
  EXPECT_EQ(s->workloads["ghost"], WorkloadUsage{});
  V1Cgroup("/kmx/w1", 750'000'000, 300 * kMiB, 100 * kMiB);
  clock_.Advance(seconds(1));
  s = sampler->Sample({"w1"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->workloads["w1"].cpu, 0.75);
  EXPECT_EQ(s->workloads.count("ghost"), 0u);

  // No cgroup parent configured: listed workloads with zeros.
  auto plain = Host()->Sample({"w1"});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->workloads.at("w1"), WorkloadUsage{});
}

// ---- CgroupLoadSampler: v1 -------------------------------------------------------

TEST_F(LoadSamplerTest, CgroupV1RatesMemoryAndRunQueue) {
  MakeV1();
  Write("proc/pressure/memory", "some avg10=3.25 avg60=0 avg300=0 total=1\n");
  V1Cgroup("/kmosix-node1", 10'000'000'000, 1 * kGiB, 256 * kMiB);
  V1Cgroup("/kmosix-node1/w1", 4'000'000'000, 600 * kMiB, 100 * kMiB);
  V1Cgroup("/kmosix-node1/w2", 1'000'000'000, 100 * kMiB, 0);
  auto sampler = Cgroup(/*cores=*/2, /*mem=*/4 * kGiB);
  auto first = sampler->Sample({"w1", "w2"});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->source, "cgroup");
  EXPECT_FALSE(first->rates_valid);
  EXPECT_EQ(first->cpu_capacity, 2);
  EXPECT_EQ(first->cpu_used, 0);
  EXPECT_EQ(first->memory_capacity_bytes, 4 * kGiB);
  EXPECT_EQ(first->memory_available_bytes, 4 * kGiB - 768 * kMiB);
  EXPECT_EQ(first->workloads.at("w1").memory_bytes, 500 * kMiB);
  EXPECT_EQ(first->workloads.at("w2").memory_bytes, 100 * kMiB);
  EXPECT_EQ(first->run_queue, 0);
  // v1 without a unified hierarchy: no CPU PSI, the host's memory PSI.
  EXPECT_FALSE(first->psi_cpu_some10.has_value());
  ASSERT_TRUE(first->psi_memory_some10.has_value());
  EXPECT_DOUBLE_EQ(*first->psi_memory_some10, 3.25);

  // Over 2 s: w1 used 3 s of CPU (1.5 cores), w2 0.2 s (0.1), the subtree 3.6 s.
  V1Cgroup("/kmosix-node1", 13'600'000'000, 1 * kGiB, 256 * kMiB);
  V1Cgroup("/kmosix-node1/w1", 7'000'000'000, 600 * kMiB, 100 * kMiB);
  V1Cgroup("/kmosix-node1/w2", 1'200'000'000, 100 * kMiB, 0);
  clock_.Advance(seconds(2));
  auto s = sampler->Sample({"w1", "w2"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(s->rates_valid);
  EXPECT_DOUBLE_EQ(s->cpu_used, 1.8);
  EXPECT_DOUBLE_EQ(s->workloads.at("w1").cpu, 1.5);
  EXPECT_DOUBLE_EQ(s->workloads.at("w2").cpu, 0.1);
  EXPECT_EQ(s->run_queue, 2);  // w1 rounds to 2, w2 is below 0.2 cores
}

TEST_F(LoadSamplerTest, CgroupV1HybridReadsPsiFromUnified) {
  MakeV1();
  V1Cgroup("/kmosix-node1", 0, 0, 0);
  Write("sys/fs/cgroup/unified/cgroup.controllers", "");
  Write("sys/fs/cgroup/unified/kmosix-node1/cpu.pressure",
        "some avg10=40.00 avg60=1 avg300=1 total=9\nfull avg10=1.00 avg60=0 avg300=0 total=1\n");
  Write("sys/fs/cgroup/unified/kmosix-node1/memory.pressure",
        "some avg10=6.00 avg60=1 avg300=1 total=9\nfull avg10=0.00 avg60=0 avg300=0 total=0\n");
  Write("proc/pressure/memory", "some avg10=99.00 avg60=0 avg300=0 total=1\n");
  auto s = Cgroup()->Sample({});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE(s->psi_cpu_some10.has_value());
  EXPECT_DOUBLE_EQ(*s->psi_cpu_some10, 40);
  ASSERT_TRUE(s->psi_memory_some10.has_value());
  EXPECT_DOUBLE_EQ(*s->psi_memory_some10, 6);
}

TEST_F(LoadSamplerTest, CgroupWorkloadsComeAndGo) {
  MakeV1();
  V1Cgroup("/kmosix-node1", 0, 0, 0);
  V1Cgroup("/kmosix-node1/w1", 0, 0, 0);
  auto sampler = Cgroup();
  ASSERT_TRUE(sampler->Sample({"w1"}).ok());

  // w1 busy at 1 core; w2 appears (its first sample: 0 CPU); "nodir" has no cgroup.
  V1Cgroup("/kmosix-node1/w1", 1'000'000'000, 0, 0);
  V1Cgroup("/kmosix-node1/w2", 5'000'000'000, 0, 0);
  clock_.Advance(seconds(1));
  auto s = sampler->Sample({"w1", "w2", "nodir", "../w1", ".", ""});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->workloads.at("w1").cpu, 1.0);
  EXPECT_EQ(s->workloads.at("w2").cpu, 0);
  EXPECT_EQ(s->workloads.at("nodir"), WorkloadUsage{});
  EXPECT_EQ(s->workloads.at("../w1"), WorkloadUsage{});  // not a plain name: zeros
  EXPECT_EQ(s->workloads.size(), 6u);

  // w1 no longer listed: drops out. w2 now has a rate.
  V1Cgroup("/kmosix-node1/w2", 5'500'000'000, 0, 0);
  clock_.Advance(seconds(1));
  s = sampler->Sample({"w2"});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->workloads.count("w1"), 0u);
  EXPECT_DOUBLE_EQ(s->workloads.at("w2").cpu, 0.5);

  // w1 listed again: starts fresh (no rate from its old base).
  V1Cgroup("/kmosix-node1/w1", 9'000'000'000, 0, 0);
  clock_.Advance(seconds(1));
  s = sampler->Sample({"w1", "w2"});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->workloads.at("w1").cpu, 0);

  // w2's cgroup recreated (counter restarted): its rate restarts.
  V1Cgroup("/kmosix-node1/w2", 100, 0, 0);
  clock_.Advance(seconds(1));
  s = sampler->Sample({"w1", "w2"});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->workloads.at("w2").cpu, 0);
  V1Cgroup("/kmosix-node1/w2", 250'000'100, 0, 0);
  clock_.Advance(seconds(1));
  s = sampler->Sample({"w1", "w2"});
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->workloads.at("w2").cpu, 0.25);

  // The cgroup vanishes while listed: zeros, and a fresh start later.
  Remove("sys/fs/cgroup/cpuacct/kmosix-node1/w2");
  Remove("sys/fs/cgroup/memory/kmosix-node1/w2");
  clock_.Advance(seconds(1));
  s = sampler->Sample({"w2"});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->workloads.at("w2"), WorkloadUsage{});
}

TEST_F(LoadSamplerTest, CgroupMissingParentIsIdleNotAnError) {
  MakeV1();
  auto sampler = Cgroup(2, 1 * kGiB);
  auto s = sampler->Sample({"w1"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->cpu_used, 0);
  EXPECT_EQ(s->memory_available_bytes, 1 * kGiB);
  EXPECT_EQ(s->workloads.at("w1"), WorkloadUsage{});
  EXPECT_FALSE(s->psi_memory_some10.has_value());  // no /proc/pressure in the fake root
}

TEST_F(LoadSamplerTest, CgroupMemoryAboveDeclaredCapacityLeavesZeroAvailable) {
  MakeV1();
  V1Cgroup("/kmosix-node1", 0, 3 * kGiB, 0);
  auto s = Cgroup(1, 2 * kGiB)->Sample({});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->memory_available_bytes, 0u);
}

TEST_F(LoadSamplerTest, CgroupNoHierarchyIsFailed) {
  auto s = Cgroup()->Sample({});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kFailed);
  EXPECT_NE(s.status().message().find("sys/fs/cgroup"), std::string::npos);
}

// ---- CgroupLoadSampler: v2 -------------------------------------------------------

TEST_F(LoadSamplerTest, CgroupV2RatesMemoryAndPsi) {
  MakeV2();
  // v1-looking directories must be ignored once cgroup.controllers exists.
  fs::create_directories(root_ / "sys/fs/cgroup/cpuacct");
  V2Cgroup("/kmosix-node1", 1'000'000, 2 * kGiB, 512 * kMiB);
  V2Cgroup("/kmosix-node1/w1", 500'000, 1 * kGiB, 24 * kMiB);
  Write("sys/fs/cgroup/kmosix-node1/cpu.pressure",
        "some avg10=21.50 avg60=2 avg300=1 total=9\nfull avg10=1.00 avg60=0 avg300=0 total=1\n");
  Write("sys/fs/cgroup/kmosix-node1/memory.pressure",
        "some avg10=0.00 avg60=0 avg300=0 total=0\nfull avg10=0.00 avg60=0 avg300=0 total=0\n");
  auto sampler = Cgroup(4, 8 * kGiB);
  auto first = sampler->Sample({"w1"});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->memory_available_bytes, 8 * kGiB - (2 * kGiB - 512 * kMiB));
  EXPECT_EQ(first->workloads.at("w1").memory_bytes, 1 * kGiB - 24 * kMiB);
  ASSERT_TRUE(first->psi_cpu_some10.has_value());
  EXPECT_DOUBLE_EQ(*first->psi_cpu_some10, 21.5);
  ASSERT_TRUE(first->psi_memory_some10.has_value());
  EXPECT_DOUBLE_EQ(*first->psi_memory_some10, 0);

  // 4 s: the subtree used 10 s of CPU (2.5 cores), w1 6 s (1.5 cores).
  V2Cgroup("/kmosix-node1", 11'000'000, 2 * kGiB, 512 * kMiB);
  V2Cgroup("/kmosix-node1/w1", 6'500'000, 1 * kGiB, 24 * kMiB);
  clock_.Advance(seconds(4));
  auto s = sampler->Sample({"w1"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->cpu_used, 2.5);
  EXPECT_DOUBLE_EQ(s->workloads.at("w1").cpu, 1.5);
  EXPECT_EQ(s->run_queue, 2);

  // PSI files absent (kernel without PSI): nullopt.
  Remove("sys/fs/cgroup/kmosix-node1/cpu.pressure");
  Remove("sys/fs/cgroup/kmosix-node1/memory.pressure");
  s = sampler->Sample({"w1"});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_FALSE(s->psi_cpu_some10.has_value());
  EXPECT_FALSE(s->psi_memory_some10.has_value());
}

TEST_F(LoadSamplerTest, CgroupV2EwmaConverges) {
  MakeV2();
  CgroupSamplerOptions o;
  o.root = root_.string();
  o.cgroup_parent = "/kmosix-node1";
  o.cpu_capacity = 2;
  o.memory_capacity_bytes = kGiB;
  o.time_constant = std::chrono::milliseconds(1500);
  auto created = CgroupLoadSampler::Create(o, clock_);
  ASSERT_TRUE(created.ok());
  auto sampler = std::move(created).value();
  uint64_t usec = 0;
  V2Cgroup("/kmosix-node1", usec, 0, 0);
  ASSERT_TRUE(sampler->Sample({}).ok());
  usec += 2'000'000;  // 2 cores over 1 s: seed
  V2Cgroup("/kmosix-node1", usec, 0, 0);
  clock_.Advance(seconds(1));
  ASSERT_DOUBLE_EQ(sampler->Sample({})->cpu_used, 2);
  double expect = 2;
  for (int i = 0; i < 20; ++i) {  // then idle, 500 ms steps
    clock_.Advance(std::chrono::milliseconds(500));
    auto s = sampler->Sample({});
    ASSERT_TRUE(s.ok());
    expect *= std::exp(-0.5 / 1.5);
    EXPECT_NEAR(s->cpu_used, expect, 1e-9);
  }
  EXPECT_LT(expect, 0.01);
}

TEST_F(LoadSamplerTest, CgroupMalformedFilesAreFailedNamingTheFile) {
  struct Case {
    bool v2;
    const char* file;
    std::string content;
  };
  const std::vector<Case> cases = {
      {false, "sys/fs/cgroup/cpuacct/kmosix-node1/cpuacct.usage", "abc\n"},
      {false, "sys/fs/cgroup/cpuacct/kmosix-node1/cpuacct.usage", "1 2\n"},
      {false, "sys/fs/cgroup/cpuacct/kmosix-node1/cpuacct.usage", ""},
      {false, "sys/fs/cgroup/cpuacct/kmosix-node1/w1/cpuacct.usage", "-5\n"},
      {false, "sys/fs/cgroup/memory/kmosix-node1/memory.usage_in_bytes", "1e9\n"},
      {false, "sys/fs/cgroup/memory/kmosix-node1/memory.stat", "cache 1\n"},
      {false, "sys/fs/cgroup/memory/kmosix-node1/w1/memory.stat", "total_inactive_file x\n"},
      {false, "sys/fs/cgroup/memory/kmosix-node1/memory.stat", "total_inactive_file 1 2\n"},
      {true, "sys/fs/cgroup/kmosix-node1/cpu.stat", "user_usec 5\n"},
      {true, "sys/fs/cgroup/kmosix-node1/w1/cpu.stat", "usage_usec 18446744073709551615\n"},
      {true, "sys/fs/cgroup/kmosix-node1/memory.current", "max\n"},
      {true, "sys/fs/cgroup/kmosix-node1/w1/memory.stat", "anon 1\n"},
      {true, "sys/fs/cgroup/kmosix-node1/cpu.pressure", "some avg10=nan\n"},
      {true, "sys/fs/cgroup/kmosix-node1/memory.pressure", "garbage\n"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.file) + ": " + c.content);
    Remove("sys");
    if (c.v2) {
      MakeV2();
      V2Cgroup("/kmosix-node1", 0, 0, 0);
      V2Cgroup("/kmosix-node1/w1", 0, 0, 0);
    } else {
      MakeV1();
      V1Cgroup("/kmosix-node1", 0, 0, 0);
      V1Cgroup("/kmosix-node1/w1", 0, 0, 0);
    }
    Write(c.file, c.content);
    auto s = Cgroup()->Sample({"w1"});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), Code::kFailed);
    EXPECT_NE(s.status().message().find((root_ / c.file).string()), std::string::npos)
        << s.status().message();
  }
}

TEST_F(LoadSamplerTest, CreateRejectsBadOptions) {
  CgroupSamplerOptions ok;
  ok.cgroup_parent = "/kmosix-node1";
  ok.cpu_capacity = 1;
  ok.memory_capacity_bytes = kGiB;
  ASSERT_TRUE(CgroupLoadSampler::Create(ok, clock_).ok());
  auto bad = [&](auto mutate) {
    CgroupSamplerOptions o = ok;
    mutate(o);
    auto s = CgroupLoadSampler::Create(o, clock_);
    return !s.ok() && s.status().code() == Code::kInvalid;
  };
  EXPECT_TRUE(bad([](auto& o) { o.cgroup_parent = ""; }));
  EXPECT_TRUE(bad([](auto& o) { o.cgroup_parent = "/"; }));
  EXPECT_TRUE(bad([](auto& o) { o.cgroup_parent = "/a/../b"; }));
  EXPECT_TRUE(bad([](auto& o) { o.cpu_capacity = 0; }));
  EXPECT_TRUE(bad([](auto& o) { o.cpu_capacity = std::nan(""); }));
  EXPECT_TRUE(bad([](auto& o) { o.memory_capacity_bytes = 0; }));
  EXPECT_TRUE(bad([](auto& o) { o.time_constant = seconds(0); }));

  HostSamplerOptions h;
  h.cpu_capacity = -1;
  EXPECT_EQ(HostLoadSampler::Create(h, clock_).status().code(), Code::kInvalid);
  h.cpu_capacity.reset();
  h.cgroup_parent = "x/./y";
  EXPECT_EQ(HostLoadSampler::Create(h, clock_).status().code(), Code::kInvalid);
}

// ---- MateriallyChanged, FillNodeLoad ---------------------------------------------

LoadSample Base() {
  LoadSample s;
  s.source = "cgroup";
  s.rates_valid = true;
  s.cpu_capacity = 4;
  s.cpu_used = 1;
  s.memory_capacity_bytes = 10 * kGiB;
  s.memory_available_bytes = 5 * kGiB;
  s.psi_cpu_some10 = 10;
  s.psi_memory_some10 = 0;
  s.workloads["w1"] = {0.5, 100 * kMiB};
  return s;
}

TEST(MateriallyChangedTest, SmallMovesAreNotMaterial) {
  LoadSample a = Base();
  EXPECT_FALSE(MateriallyChanged(a, a));
  LoadSample b = a;
  b.cpu_used += 0.19;                     // < 0.05 * 4 cores
  b.memory_available_bytes -= 60 * kMiB;  // < 64 MiB (5% is 512 MiB)
  b.psi_cpu_some10 = 14.9;
  b.psi_memory_some10 = 4.9;
  b.workloads["w1"].cpu += 0.09;
  b.workloads["w1"].memory_bytes += 1 * kGiB;  // workload memory is not a trigger
  b.run_queue = 7;                             // nor is the run queue
  b.sampled_ms += 1000;
  EXPECT_FALSE(MateriallyChanged(a, b));
}

TEST(MateriallyChangedTest, EachThresholdTriggers) {
  const LoadSample a = Base();
  auto changed = [&](auto mutate) {
    LoadSample b = a;
    mutate(b);
    return MateriallyChanged(a, b) && MateriallyChanged(b, a);
  };
  EXPECT_TRUE(changed([](LoadSample& b) { b.cpu_used += 0.21; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.cpu_used -= 0.25; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.memory_available_bytes += 64 * kMiB; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.workloads["w2"] = {}; }));
  EXPECT_TRUE(changed([](LoadSample& b) {
    b.workloads.erase("w1");
    b.workloads["w9"] = {0.5, 100 * kMiB};  // same size, different names
  }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.workloads["w1"].cpu += 0.11; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.psi_cpu_some10 = 15; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.psi_memory_some10 = 5; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.psi_cpu_some10.reset(); }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.cpu_capacity = 3; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.memory_capacity_bytes += 1; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.source = "host"; }));
  EXPECT_TRUE(changed([](LoadSample& b) { b.rates_valid = false; }));
}

TEST(MateriallyChangedTest, SmallMemoryCapacityUsesFivePercent) {
  LoadSample a = Base();
  a.memory_capacity_bytes = 512 * kMiB;  // 5% = 25.6 MiB < 64 MiB
  a.memory_available_bytes = 256 * kMiB;
  LoadSample b = a;
  b.memory_available_bytes -= 25 * kMiB;
  EXPECT_FALSE(MateriallyChanged(a, b));
  b.memory_available_bytes -= 1 * kMiB;
  EXPECT_TRUE(MateriallyChanged(a, b));
}

TEST(MateriallyChangedTest, ZeroCapacityDoesNotAlwaysFire) {
  LoadSample a = Base();
  a.cpu_capacity = 0;
  a.memory_capacity_bytes = 0;
  EXPECT_FALSE(MateriallyChanged(a, a));
}

TEST(FillNodeLoadTest, CopiesFiguresKeepsIdentity) {
  LoadSample s = Base();
  s.run_queue = 3;
  s.sampled_ms = 1234;
  api::NodeLoad n;
  n.node = "node1";
  n.url = "http://10.0.0.1:7700";
  n.speed = 2;
  FillNodeLoad(s, n);
  EXPECT_EQ(n.node, "node1");
  EXPECT_EQ(n.url, "http://10.0.0.1:7700");
  EXPECT_EQ(n.speed, 2);
  EXPECT_EQ(n.load_source, "cgroup");
  EXPECT_EQ(n.cpu_capacity, 4);
  EXPECT_EQ(n.cpu_used, 1);
  EXPECT_EQ(n.run_queue, 3);
  EXPECT_EQ(n.memory_capacity_bytes, 10 * kGiB);
  EXPECT_EQ(n.memory_available_bytes, 5 * kGiB);
  EXPECT_EQ(n.psi_cpu_some10, std::optional<double>(10));
  EXPECT_EQ(n.psi_memory_some10, std::optional<double>(0));
  EXPECT_EQ(n.workloads, s.workloads);
  EXPECT_EQ(n.updated_ms, 1234);
}

}  // namespace
}  // namespace kmosix::agent
