// kmosix/memory.h: /proc readers over fake trees, PrefaultedMemory and the
// stop-and-copy engine's prefault over this process's real memory.
#include "kmosix/memory.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix {
namespace {

using testing::FakeClock;
using testing::FakeRuntime;
namespace fs = std::filesystem;
constexpr uint64_t kMiB = uint64_t{1} << 20;

class FakeProc : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-memory-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A process `name` (a pid or "self") in PID namespace `ns` with the given
  // /proc/PID/status text.
  void Process(const std::string& name, int ns, const std::string& status) {
    fs::create_directories(root_ / name / "ns");
    fs::create_symlink("pid:[" + std::to_string(ns) + "]", root_ / name / "ns" / "pid");
    std::ofstream(root_ / name / "status") << status;
  }
  void MemAvailableMiB(uint64_t mib) {
    std::ofstream(root_ / "meminfo")
        << "MemTotal: 24000000 kB\nMemAvailable:   " << mib * 1024 << " kB\n";
  }
  static std::string Status(int anon_kb, int shmem_kb) {
    return "Name:\tdemo\nVmRSS:\t 999999 kB\nRssAnon:\t " + std::to_string(anon_kb) +
           " kB\nRssFile:\t 777 kB\nRssShmem:\t " + std::to_string(shmem_kb) + " kB\n";
  }

  fs::path root_;
};

TEST_F(FakeProc, ContainerResidentBytesSumsAnonAndShmemOfItsPidNamespace) {
  Process("self", 1, Status(5000, 0));
  Process("10", 2, Status(1024, 2048));
  Process("11", 2, Status(4096, 0));  // a child in the container
  Process("12", 1, Status(8192, 0));  // a host process
  Process("13", 3, Status(8192, 0));  // another container
  fs::create_directories(root_ / "sys");
  EXPECT_EQ(ContainerResidentBytes(10, root_.string()), (1024 + 2048 + 4096) * 1024u);
  EXPECT_EQ(ContainerResidentBytes(11, root_.string()), (1024 + 2048 + 4096) * 1024u);
}

TEST_F(FakeProc, ContainerResidentBytesOfAHostProcessIsItsOwn) {
  Process("self", 1, Status(5000, 0));
  Process("12", 1, Status(8192, 16));
  Process("14", 1, Status(1, 0));
  EXPECT_EQ(ContainerResidentBytes(12, root_.string()), (8192 + 16) * 1024u);
}

TEST_F(FakeProc, ContainerResidentBytesIsZeroWhenUnknown) {
  Process("self", 1, Status(5000, 0));
  Process("10", 2, "Name:\tdemo\nRssAnon:\tlots kB\n");
  EXPECT_EQ(ContainerResidentBytes(0, root_.string()), 0u);
  EXPECT_EQ(ContainerResidentBytes(99, root_.string()), 0u);  // no such process
  EXPECT_EQ(ContainerResidentBytes(10, root_.string()), 0u);  // malformed status
}

TEST_F(FakeProc, MemAvailableBytes) {
  std::ofstream(root_ / "meminfo") << "MemTotal:       24000000 kB\nMemFree:  100 kB\n"
                                      "MemAvailable:   2048 kB\nBuffers: 1 kB\n";
  EXPECT_EQ(MemAvailableBytes(root_.string()), std::optional<uint64_t>(2 * kMiB));
  std::ofstream(root_ / "meminfo") << "MemTotal: 24000000 kB\nMemAvailable: 12 MB\n";
  EXPECT_EQ(MemAvailableBytes(root_.string()), std::nullopt);
  fs::remove(root_ / "meminfo");
  EXPECT_EQ(MemAvailableBytes(root_.string()), std::nullopt);
}

TEST(MemAvailableBytesTest, ThisHostHasSome) {
  auto available = MemAvailableBytes();
  ASSERT_TRUE(available.has_value());
  EXPECT_GT(*available, 0u);
}

// This process's RssAnon, in bytes.
uint64_t OwnResidentBytes() { return ContainerResidentBytes(static_cast<uint32_t>(::getpid())); }

TEST(PrefaultedMemoryTest, HoldsFaultedInPagesUntilReleased) {
  const uint64_t before = OwnResidentBytes();
  ASSERT_GT(before, 0u);
  PrefaultedMemory m = PrefaultedMemory::Take(64 * kMiB);
  EXPECT_EQ(m.bytes(), 64 * kMiB);
  const uint64_t held = OwnResidentBytes();
  EXPECT_GE(held, before + 60 * kMiB);

  PrefaultedMemory moved = std::move(m);
  EXPECT_EQ(m.bytes(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(moved.bytes(), 64 * kMiB);
  moved.Release();
  EXPECT_EQ(moved.bytes(), 0u);
  EXPECT_LE(OwnResidentBytes() + 60 * kMiB, held);
}

TEST(PrefaultedMemoryTest, StopsBetweenStepsWhenToldTo) {
  const uint64_t before = OwnResidentBytes();
  int asked = 0;
  PrefaultedMemory m = PrefaultedMemory::Take(256 * kMiB, [&] { return ++asked < 2; });
  EXPECT_EQ(m.bytes(), 128 * kMiB);  // the first step always, then one more
  EXPECT_EQ(asked, 2);
  const uint64_t held = OwnResidentBytes();
  EXPECT_GE(held, before + 120 * kMiB);
  EXPECT_LT(held, before + 200 * kMiB);
}

TEST(PrefaultedMemoryTest, ZeroHoldsNothing) {
  EXPECT_EQ(PrefaultedMemory::Take(0).bytes(), 0u);
  EXPECT_EQ(PrefaultedMemory::Take(1).bytes(), static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
}

// Over this process's real memory; the tests that give a proc_root read
// processes and MemAvailable from FakeProc's tree instead.
class PrefaultEngineTest : public FakeProc {
 protected:
  PrefaultEngineTest() { runtime_.AddImage("demo"); }
  void TearDown() override {
    fs::remove_all(scratch_);
    fs::remove_all(layers_);
    FakeProc::TearDown();
  }
  ContainerSpec Spec(const std::string& name) {
    ContainerSpec spec;
    spec.name = name;
    spec.image = "demo";
    return spec;
  }

  // How much this process's memory grew over engine.Prepare(name, memory).
  uint64_t GrowthOverPrepare(StopAndCopyEngine& engine, const std::string& name, uint64_t memory) {
    const uint64_t before = OwnResidentBytes();
    auto landing = engine.Prepare(Spec(name), scratch_ + "/in-" + name, memory);
    EXPECT_TRUE(landing.ok()) << landing.status().ToString();
    if (landing.ok()) landing_ = *landing;
    const uint64_t after = OwnResidentBytes();
    return after > before ? after - before : 0;
  }

  std::string layers_ = "/tmp/kmx-prefault-layers-" + std::to_string(::getpid());
  std::string scratch_ = "/tmp/kmx-prefault-scratch-" + std::to_string(::getpid());
  FakeClock clock_;
  FakeRuntime runtime_{"node2", layers_};
  Landing landing_;
};

TEST_F(PrefaultEngineTest, PrepareHoldsTheSourcesMemoryAndRestoreFreesItFirst) {
  StopAndCopyEngine engine(runtime_, clock_);
  EXPECT_GE(GrowthOverPrepare(engine, "w", 64 * kMiB), 60 * kMiB);
  const uint64_t held = OwnResidentBytes();
  // No images landed: the restore fails, after the memory was given back.
  EXPECT_FALSE(engine.Restore(Spec("w"), landing_).ok());
  EXPECT_LE(OwnResidentBytes() + 60 * kMiB, held);
  EXPECT_TRUE(engine.Discard("w").ok());
}

TEST_F(PrefaultEngineTest, DiscardFreesIt) {
  StopAndCopyEngine engine(runtime_, clock_);
  EXPECT_GE(GrowthOverPrepare(engine, "w", 64 * kMiB), 60 * kMiB);
  const uint64_t held = OwnResidentBytes();
  EXPECT_TRUE(engine.Discard("w").ok());
  EXPECT_LE(OwnResidentBytes() + 60 * kMiB, held);
  EXPECT_FALSE(runtime_.Has("w"));
}

TEST_F(PrefaultEngineTest, NothingWhenDisabledOrUnknown) {
  StopAndCopyEngine disabled(runtime_, clock_, {.prefault_max_bytes = 0});
  EXPECT_LT(GrowthOverPrepare(disabled, "a", 64 * kMiB), 32 * kMiB);
  StopAndCopyEngine engine(runtime_, clock_);
  EXPECT_LT(GrowthOverPrepare(engine, "b", 0), 32 * kMiB);
  EXPECT_TRUE(disabled.Discard("a").ok());
  EXPECT_TRUE(engine.Discard("b").ok());
}

TEST_F(PrefaultEngineTest, AtMostTheCap) {
  StopAndCopyEngine engine(runtime_, clock_, {.prefault_max_bytes = 16 * kMiB});
  const uint64_t growth = GrowthOverPrepare(engine, "w", 256 * kMiB);
  EXPECT_GE(growth, 14 * kMiB);
  EXPECT_LT(growth, 64 * kMiB);
  EXPECT_TRUE(engine.Discard("w").ok());
}

TEST_F(PrefaultEngineTest, StopsAtItsTimeBudget) {
  // The fake clock stands still: a zero budget is over after the first step.
  StopAndCopyEngine engine(runtime_, clock_, {.prefault_budget = std::chrono::milliseconds(0)});
  const uint64_t growth = GrowthOverPrepare(engine, "w", 512 * kMiB);
  EXPECT_GE(growth, 60 * kMiB);
  EXPECT_LT(growth, 128 * kMiB);
  EXPECT_TRUE(engine.Discard("w").ok());
}

TEST_F(PrefaultEngineTest, LeavesTheLastQuarterGiBOfMemAvailableAlone) {
  StopAndCopyEngine engine(runtime_, clock_, {.proc_root = root_.string()});
  MemAvailableMiB(256 + 80);  // room for the restore's share (64), 16 of the landing's
  uint64_t growth = GrowthOverPrepare(engine, "a", 64 * kMiB);
  EXPECT_GE(growth, 60 * kMiB);
  EXPECT_LT(growth, 100 * kMiB);
  MemAvailableMiB(256 + 32);  // part of the restore's share
  growth = GrowthOverPrepare(engine, "b", 64 * kMiB);
  EXPECT_GE(growth, 28 * kMiB);
  EXPECT_LT(growth, 48 * kMiB);
  MemAvailableMiB(200);
  EXPECT_LT(GrowthOverPrepare(engine, "c", 64 * kMiB), 16 * kMiB);
  fs::remove(root_ / "meminfo");  // unknown: nothing
  EXPECT_LT(GrowthOverPrepare(engine, "d", 64 * kMiB), 16 * kMiB);
  for (const char* name : {"a", "b", "c", "d"}) EXPECT_TRUE(engine.Discard(name).ok());
}

TEST_F(PrefaultEngineTest, MemoryBytesSumsTheContainersPidNamespace) {
  ASSERT_TRUE(runtime_.CreateContainer(Spec("w")).ok());
  ASSERT_TRUE(runtime_.StartTask("w").ok());
  auto info = runtime_.Inspect("w");
  ASSERT_TRUE(info.ok());
  const std::string pid = std::to_string(info->pid);
  Process("self", 1, Status(5000, 0));
  Process(pid, 7, Status(2048, 0));
  Process(std::to_string(info->pid + 1), 7, Status(1024, 512));  // its child
  Process(std::to_string(info->pid + 2), 1, Status(4096, 0));    // the host's
  StopAndCopyEngine engine(runtime_, clock_, {.proc_root = root_.string()});
  EXPECT_EQ(engine.MemoryBytes("w"), (2048 + 1024 + 512) * 1024u);
}

TEST_F(PrefaultEngineTest, MemoryBytesOfAnUnknownContainerIsZero) {
  StopAndCopyEngine engine(runtime_, clock_);
  EXPECT_EQ(engine.MemoryBytes("nobody"), 0u);
}

}  // namespace
}  // namespace kmosix
