// Integration test of StopAndCopyEngine's streamed dump over real containerd,
// runc and CRIU, in one process: one private containerd daemon (own root,
// state and socket in a temp dir) serves two simulated nodes, the containerd
// namespaces "src" and "dst", each with its own ContainerdRuntime (runc root,
// cgroup parent) and its own engine (default options: page images are pipes).
// The transfer is the real StreamEncoder pumped straight into a StreamDecoder
// writing the target's landing. The workload is the demo image
// (images/demo/kmosix-demo.c): a counter kept in process memory that touches
// and verifies --mem MiB and prints one "tick=..." line per tick.
//
// Needs root, containerd/runc/CRIU (`criu check`) and the demo image tarball
// (ninja kmosix-demo-image); skips loudly when something is missing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"  // the demo's log format: ParseDemoLog, CheckConsecutive
#include "containerd/containerd_runtime.h"
#include "kmosix/clock.h"
#include "kmosix/migration_target.h"
#include "kmosix/stop_and_copy.h"
#include "kmosix/transfer_stream.h"
#include "private_containerd.h"

#ifndef KMX_DEMO_IMAGE
#error "KMX_DEMO_IMAGE must point at the demo image tarball"
#endif

namespace kmosix::testing {
namespace {

namespace fs = std::filesystem;
using kmosix::e2e::CheckConsecutive;
using kmosix::e2e::DemoLog;
using kmosix::e2e::ParseDemoLog;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kDemoImage[] = "kmosix.local/demo:latest";
constexpr int kMemMib = 64;
constexpr uint64_t kMiB = 1 << 20;

// Entries of a directory (none on error; never throws, also when the directory
// vanishes, as /proc/<pid>/fd does).
std::vector<fs::path> List(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    out.push_back(it->path());
  }
  return out;
}

bool LinksUnder(const fs::path& link, const std::string& prefix) {
  std::error_code ec;
  std::string target = fs::read_symlink(link, ec).string();
  return !ec && target.rfind(prefix, 0) == 0;
}

// Pids (not ours) with a file descriptor or cwd under `dir`.
std::vector<pid_t> PidsWithFilesUnder(const std::string& dir) {
  std::vector<pid_t> out;
  const std::string prefix = dir + "/";
  for (const fs::path& proc : List("/proc")) {
    const std::string name = proc.filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == ::getpid()) continue;
    bool uses = LinksUnder(proc / "cwd", prefix);
    for (const fs::path& fd : List(proc / "fd")) uses = uses || LinksUnder(fd, prefix);
    if (uses) out.push_back(pid);
  }
  return out;
}

std::string Comm(pid_t pid) {
  std::string s = ReadFile("/proc/" + std::to_string(pid) + "/comm");
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// A CRIU process working under `dir` that sleeps opening a FIFO (no reader).
bool CriuBlockedOnPipeOpen(const std::string& dir) {
  for (pid_t pid : PidsWithFilesUnder(dir)) {
    if (Comm(pid) == "criu" &&
        ReadFile("/proc/" + std::to_string(pid) + "/wchan") == "wait_for_partner") {
      return true;
    }
  }
  return false;
}

std::string Describe(const std::vector<pid_t>& pids) {
  std::string s;
  for (pid_t p : pids) s += std::to_string(p) + "(" + Comm(p) + ") ";
  return s.empty() ? "none" : s;
}

// Runs fn on its own thread and waits up to `limit`. If it has not returned
// by then, *timed_out is set and the processes holding files under
// `unblock_dir` (CRIU) are killed so that fn can return; the thread is always
// joined before this returns.
Status RunBounded(const std::function<Status()>& fn, milliseconds limit,
                  const std::string& unblock_dir, bool* timed_out) {
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
  std::thread t([&] { done.set_value(fn()); });
  *timed_out = result.wait_for(limit) != std::future_status::ready;
  if (*timed_out) {
    for (pid_t p : PidsWithFilesUnder(unblock_dir)) ::kill(p, SIGKILL);
  }
  t.join();
  return result.get();
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

bool IsFifo(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

const Section* FindSection(const std::vector<Section>& sections, const std::string& name) {
  for (const auto& s : sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

// Reads the encoder into the decoder (in 64 KiB chunks) until the stream
// ends or, with `stop_after` > 0, at least that many bytes went through.
// *sent counts the bytes fed. Bounded: a pipe nobody writes fails the encoder
// after EncoderOptions::pipe_stall, and CRIU is bounded by criu_timeout.
Status Pump(StreamEncoder& encoder, StreamDecoder& decoder, uint64_t stop_after, uint64_t* sent) {
  std::vector<char> buf(64 << 10);
  *sent = 0;
  while (stop_after == 0 || *sent < stop_after) {
    KMX_ASSIGN_OR_RETURN(size_t n, encoder.Read(buf.data(), buf.size()));
    if (n == 0) return Status::Ok();
    KMX_RETURN_IF_ERROR(decoder.Feed(buf.data(), n));
    *sent += n;
  }
  return Status::Ok();
}

class StopAndCopyIntegrationTest : public ::testing::Test {
 protected:
  // One daemon per test process (ctest runs each test in its own process).
  static void SetUpTestSuite() {
    skip_reason_ = MissingCapability();
    if (skip_reason_.empty()) skip_reason_ = CriuProblem();
    if (skip_reason_.empty() && !fs::exists(KMX_DEMO_IMAGE)) {
      skip_reason_ = std::string("demo image ") + KMX_DEMO_IMAGE +
                     " missing (build it: ninja kmosix-demo-image)";
    }
    if (!skip_reason_.empty()) return;
    daemon_ = std::make_unique<PrivateContainerd>("sac");
    start_error_ = daemon_->Start();
    for (const char* ns : {"src", "dst"}) {
      if (start_error_.empty()) start_error_ = daemon_->ImportImage(KMX_DEMO_IMAGE, ns);
    }
    if (!start_error_.empty()) start_error_ += "\n" + daemon_->DaemonLogTail();
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) {
      GTEST_SKIP() << "STOP-AND-COPY INTEGRATION SKIPPED: " << skip_reason_;
    }
    ASSERT_TRUE(start_error_.empty()) << "private containerd: " << start_error_;
    src_rt_ = daemon_->NewRuntime("src");
    dst_rt_ = daemon_->NewRuntime("dst");
    ASSERT_NE(src_rt_->config().runc_root, dst_rt_->config().runc_root);
    ASSERT_NE(src_rt_->config().cgroup_parent, dst_rt_->config().cgroup_parent);
    src_ = std::make_unique<StopAndCopyEngine>(*src_rt_, clock_);
    dst_ = std::make_unique<StopAndCopyEngine>(*dst_rt_, clock_);

    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::transform(name_.begin(), name_.end(), name_.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const std::string base = daemon_->dir() + "/" + name_;
    fs::create_directories(base + "/logs");
    fs::create_directories(base + "/scratch-src");
    fs::create_directories(base + "/scratch-dst");
    src_scratch_ = base + "/scratch-src/m1";
    dst_scratch_ = base + "/scratch-dst/m1";
    spec_.name = name_;
    spec_.image = kDemoImage;
    spec_.args = {"/bin/kmosix-demo", "--mem", std::to_string(kMemMib)};
    spec_.memory_mib = 4 * kMemMib;
    spec_.log_path = base + "/logs/src.log";
    tspec_ = spec_;
    tspec_.log_path = base + "/logs/dst.log";
  }

  void TearDown() override {
    src_.reset();  // joins a dump still in flight
    dst_.reset();
    if (src_rt_) (void)src_rt_->Delete(name_);
    if (dst_rt_) (void)dst_rt_->Delete(name_);
  }

  DemoLog Log(const std::string& path) { return ParseDemoLog(ReadFile(path)); }
  uint64_t LastTick(const std::string& path) {
    DemoLog l = Log(path);
    return l.ticks.empty() ? 0 : l.ticks.back().tick;
  }
  int64_t LastPasses(const std::string& path) {
    DemoLog l = Log(path);
    return l.ticks.empty() ? 0 : l.ticks.back().mem_passes;
  }

  // Starts the demo on the source and waits for a full memory pass.
  void StartDemo() {
    Status s = src_rt_->CreateContainer(spec_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    s = src_rt_->StartTask(name_);
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << daemon_->DaemonLogTail();
    ASSERT_TRUE(
        WaitFor([&] { return LastPasses(spec_.log_path) >= 1 && LastTick(spec_.log_path) >= 5; },
                seconds(60)))
        << "demo did not tick: " << ReadFile(spec_.log_path);
  }

  // The workload's log holds consecutive ticks from 1, started once, with
  // every memory check passing, through at least a full memory pass after
  // `passes_at_freeze` and tick `frozen_tick` + 5.
  void ExpectContinued(const std::string& log_path, uint64_t frozen_tick,
                       int64_t passes_at_freeze) {
    EXPECT_TRUE(WaitFor(
        [&] {
          return LastTick(log_path) >= frozen_tick + 5 &&
                 LastPasses(log_path) >= passes_at_freeze + 2;
        },
        seconds(60)))
        << "ticks did not continue past " << frozen_tick << ": last tick " << LastTick(log_path);
    DemoLog log = Log(log_path);
    ASSERT_FALSE(log.ticks.empty()) << ReadFile(log_path);
    EXPECT_EQ(log.ticks.front().tick, 1u);
    EXPECT_EQ(CheckConsecutive(log.ticks), "") << "a counter value was lost or repeated";
    EXPECT_GT(log.ticks.back().tick, frozen_tick);
    EXPECT_EQ(log.start_lines, 1) << "the workload restarted";
    EXPECT_EQ(log.corruption_lines, 0) << ReadFile(log_path);
    EXPECT_EQ(log.malformed_lines, 0);
    int bad = 0;
    for (const auto& t : log.ticks) bad += t.mem_ok != 1;
    EXPECT_EQ(bad, 0) << "ticks with mem_ok != 1";
    EXPECT_EQ(log.ticks.back().mem_mib, kMemMib);
  }

  TaskState State(ContainerRuntime& rt) {
    auto info = rt.Inspect(name_);
    return info.ok() ? info->state : TaskState::kUnknown;
  }

  std::string DumpLog() { return ReadFile(src_scratch_ + "/work/dump.log"); }
  static std::string Tail(const std::string& s, size_t n = 4000) {
    return s.size() > n ? s.substr(s.size() - n) : s;
  }

  // Source Thaw, bounded; asserts it returned ok in time and the task runs.
  void ThawBounded() {
    bool timed_out = false;
    Status s =
        RunBounded([&] { return src_->Thaw(name_); }, seconds(120), src_scratch_, &timed_out);
    EXPECT_FALSE(timed_out) << "Thaw did not return within 120 s (CRIU killed to unblock it)\n"
                            << Tail(DumpLog());
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(DumpLog());
    EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kRunning));
    EXPECT_EQ(Describe(PidsWithFilesUnder(src_scratch_)), "none")
        << "the dump is still running after Thaw";
  }

  static inline std::unique_ptr<PrivateContainerd> daemon_;
  static inline std::string skip_reason_;
  static inline std::string start_error_;

  SystemClock clock_;
  std::unique_ptr<ContainerdRuntime> src_rt_, dst_rt_;
  std::unique_ptr<StopAndCopyEngine> src_, dst_;
  std::string name_, src_scratch_, dst_scratch_;
  ContainerSpec spec_, tspec_;
};

TEST_F(StopAndCopyIntegrationTest, StreamedMigrationKeepsMemoryAndCounter) {
  ASSERT_NO_FATAL_FAILURE(StartDemo());
  // What the target is told to get ready: the demo's memory, give or take.
  const uint64_t memory = src_->MemoryBytes(spec_.name);
  EXPECT_GE(memory, static_cast<uint64_t>(kMemMib) * kMiB);
  EXPECT_LT(memory, static_cast<uint64_t>(kMemMib + 64) * kMiB);

  auto t0 = std::chrono::steady_clock::now();
  auto capture = src_->Freeze(spec_, src_scratch_);
  ASSERT_TRUE(capture.ok()) << capture.status().ToString();
  const Section* pages = FindSection(capture->sections, "criu-pages");
  ASSERT_NE(pages, nullptr) << "the dump does not stream";
  EXPECT_TRUE(pages->pipes);
  EXPECT_TRUE(IsFifo(pages->path + "/pages-1.img")) << "page images are not pipes";
  ASSERT_NE(FindSection(capture->sections, "criu"), nullptr);
  ASSERT_NE(FindSection(capture->sections, "rootfs"), nullptr);
  ASSERT_NE(FindSection(capture->sections, "log"), nullptr);
  std::this_thread::sleep_for(milliseconds(200));  // the shim copies the last lines
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);

  auto landing = dst_->Prepare(tspec_, dst_scratch_, memory);
  ASSERT_TRUE(landing.ok()) << landing.status().ToString();
  StreamDecoder decoder(*landing);
  auto encoder = StreamEncoder::Create(capture->sections);
  ASSERT_TRUE(encoder.ok()) << encoder.status().ToString();
  uint64_t sent = 0;
  Status s = Pump(**encoder, decoder, 0, &sent);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(DumpLog());
  s = decoder.Finish();
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto t1 = std::chrono::steady_clock::now();
  EXPECT_TRUE(capture->streamed_dump_error().ok()) << capture->streamed_dump_error().ToString();
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "source ran while frozen";

  // The memory went through the pipe: landed on the target, never stored on
  // the source.
  const uint64_t landed_pages = FileSize(dst_scratch_ + "/criu/pages-1.img");
  EXPECT_GE(landed_pages, static_cast<uint64_t>(kMemMib) * kMiB);
  EXPECT_TRUE(fs::exists(dst_scratch_ + "/criu/inventory.img"));
  for (const fs::path& p : List(src_scratch_ + "/criu")) {
    const std::string f = p.filename().string();
    if (f.rfind("pages-", 0) == 0) {
      EXPECT_LT(FileSize(p.string()), kMiB) << "source stored " << f;
    }
  }

  s = dst_->Restore(tspec_, *landing);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(ReadFile(dst_scratch_ + "/work/restore.log"));
  auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(TaskStateName(State(*dst_rt_)), TaskStateName(TaskState::kRunning));
  s = src_->Release(name_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(src_rt_->Inspect(name_).status().code(), Code::kNotFound) << "source still there";
  auto src_list = src_rt_->ListContainers();
  ASSERT_TRUE(src_list.ok());
  EXPECT_EQ(std::count(src_list->begin(), src_list->end(), name_), 0);

  ASSERT_NO_FATAL_FAILURE(ExpectContinued(tspec_.log_path, frozen_tick, passes));
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "the source log moved after Release";

  std::cout << "[ figures  ] stream " << sent << " bytes, pages-1.img " << landed_pages
            << " bytes; freeze " << capture->freeze_seconds << " s, dump "
            << capture->streamed_checkpoint_seconds() << " s, freeze+transfer "
            << std::chrono::duration<double>(t1 - t0).count() << " s, restore "
            << std::chrono::duration<double>(t2 - t1).count() << " s\n";
}

TEST_F(StopAndCopyIntegrationTest, StreamCutMidDumpRollsBackIntact) {
  ASSERT_NO_FATAL_FAILURE(StartDemo());

  auto capture = src_->Freeze(spec_, src_scratch_);
  ASSERT_TRUE(capture.ok()) << capture.status().ToString();
  std::this_thread::sleep_for(milliseconds(200));
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);

  auto landing = dst_->Prepare(tspec_, dst_scratch_, 0);
  ASSERT_TRUE(landing.ok()) << landing.status().ToString();
  uint64_t sent = 0;
  {
    StreamDecoder decoder(*landing);
    auto encoder = StreamEncoder::Create(capture->sections);
    ASSERT_TRUE(encoder.ok()) << encoder.status().ToString();
    Status s = Pump(**encoder, decoder, kMiB, &sent);
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(DumpLog());
    EXPECT_GE(sent, kMiB);
    EXPECT_FALSE((*encoder)->done()) << "the whole capture fit in 1 MiB?";
    // The reader goes away mid-dump: the encoder closes the pipe it reads.
  }
  Status s = dst_->Discard(name_);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(dst_rt_->Inspect(name_).status().code(), Code::kNotFound);
  // CRIU fails on its next write into the closed pipe; the task it leaves
  // behind is still paused.
  EXPECT_TRUE(WaitFor([&] { return PidsWithFilesUnder(src_scratch_).empty(); }, seconds(60)))
      << "CRIU still running after the reader went away: "
      << Describe(PidsWithFilesUnder(src_scratch_));
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "source ran while frozen";
  EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kPaused));

  ASSERT_NO_FATAL_FAILURE(ThawBounded());
  EXPECT_FALSE(fs::exists(src_scratch_ + "/criu/inventory.img")) << "the dump ran to its end";
  std::cout << "[ figures  ] cut after " << sent << " stream bytes\n";
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(spec_.log_path, frozen_tick, passes));
}

TEST_F(StopAndCopyIntegrationTest, ThawBeforeAnyReadEndsTheDump) {
  ASSERT_NO_FATAL_FAILURE(StartDemo());

  auto capture = src_->Freeze(spec_, src_scratch_);
  ASSERT_TRUE(capture.ok()) << capture.status().ToString();
  std::this_thread::sleep_for(milliseconds(200));
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);
  // No encoder: CRIU sleeps opening its first page pipe.
  EXPECT_TRUE(WaitFor([&] { return CriuBlockedOnPipeOpen(src_scratch_); }, seconds(60)))
      << "CRIU never blocked on a page pipe; processes under the scratch dir: "
      << Describe(PidsWithFilesUnder(src_scratch_)) << "\n"
      << Tail(DumpLog());
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "source ran while frozen";

  ASSERT_NO_FATAL_FAILURE(ThawBounded());
  EXPECT_TRUE(capture->streamed_dump_error().ok()) << "no reader was told anything";
  EXPECT_FALSE(fs::exists(src_scratch_ + "/criu/inventory.img")) << "the dump ran to its end";
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(spec_.log_path, frozen_tick, passes));
}

// The target side of a live migration (IncomingMigrations over the "dst"
// engine) with the demo appending one line per tick to /journal in its
// writable layer: what the target's copy does between its restore and the
// verdict.
class TargetCopyIntegrationTest : public StopAndCopyIntegrationTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StopAndCopyIntegrationTest::SetUp());
    if (IsSkipped()) return;
    spec_.args.insert(spec_.args.end(), {"--append-file", "/journal"});
    const std::string base = daemon_->dir() + "/" + name_;
    fs::create_directories(base + "/logs-dst");
    IncomingMigrations::Options options;
    options.node = "dst";
    options.scratch_dir = base + "/scratch-dst";
    options.log_dir = base + "/logs-dst";
    target_ = std::make_unique<IncomingMigrations>(*dst_, *dst_rt_, clock_, options,
                                                   IncomingMigrations::Hooks{});
    target_log_ = options.log_dir + "/" + name_ + ".log";
  }

  // Freezes the source, streams it into migration m1 of the target and has
  // the target restore it; *frozen_tick and *passes are the source's last
  // tick and memory passes when frozen.
  void MigrateUntilRestored(uint64_t* frozen_tick, int64_t* passes) {
    ASSERT_NO_FATAL_FAILURE(StartDemo());
    MigrationOffer offer;
    offer.id = "m1";
    offer.source_node = "src";
    offer.spec = spec_;
    offer.memory_bytes = src_->MemoryBytes(spec_.name);
    Status s = target_->Prepare(offer);
    ASSERT_TRUE(s.ok()) << s.ToString();
    auto landing = target_->BeginReceive("m1");
    ASSERT_TRUE(landing.ok()) << landing.status().ToString();
    auto capture = src_->Freeze(spec_, src_scratch_);
    ASSERT_TRUE(capture.ok()) << capture.status().ToString();
    StreamDecoder decoder(*landing);
    auto encoder = StreamEncoder::Create(capture->sections);
    ASSERT_TRUE(encoder.ok()) << encoder.status().ToString();
    uint64_t sent = 0;
    s = Pump(**encoder, decoder, 0, &sent);
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(DumpLog());
    ASSERT_TRUE(decoder.Finish().ok());
    *frozen_tick = LastTick(spec_.log_path);  // the log went with the capture
    *passes = LastPasses(spec_.log_path);
    s = target_->EndReceive("m1", Status::Ok(), TransferStats{sent, 0, 0});
    ASSERT_TRUE(s.ok()) << s.ToString();
    auto t0 = std::chrono::steady_clock::now();
    auto restored = target_->Restore("m1");
    restore_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    target_pid_ = restored->pid;
    ASSERT_GT(target_pid_, 0u);
  }

  // Processes of the target's task (its freezer cgroup), each with its
  // /proc state letter.
  std::vector<std::pair<pid_t, char>> TargetProcesses() {
    std::vector<std::pair<pid_t, char>> out;
    std::string cgroup;
    std::istringstream lines(ReadFile("/proc/" + std::to_string(target_pid_) + "/cgroup"));
    for (std::string line; std::getline(lines, line);) {
      const auto at = line.find(":freezer:");
      if (at != std::string::npos) cgroup = line.substr(at + 9);
    }
    if (cgroup.empty()) return out;
    std::istringstream procs(ReadFile("/sys/fs/cgroup/freezer" + cgroup + "/cgroup.procs"));
    for (pid_t pid; procs >> pid;) {
      std::istringstream status(ReadFile("/proc/" + std::to_string(pid) + "/status"));
      char state = '?';
      for (std::string line; std::getline(status, line);) {
        if (line.rfind("State:", 0) == 0 && line.size() > 7)
          state = line[line.find_first_not_of(" \t", 6)];
      }
      out.emplace_back(pid, state);
    }
    return out;
  }
  std::string StatesOf(const std::vector<std::pair<pid_t, char>>& procs) {
    std::string s;
    for (const auto& [pid, state] : procs) s += std::to_string(pid) + ":" + state + " ";
    return s;
  }

  // Lines of the workload's /journal in a node's copy of its writable layer.
  int64_t JournalLines(ContainerRuntime& rt) {
    auto layer = rt.WritableLayerDir(name_);
    if (!layer.ok()) return -1;
    const std::string text = ReadFile(*layer + "/journal");
    return std::count(text.begin(), text.end(), '\n');
  }

  // While the verdict is held: the target's copy has not run. Its log has
  // no tick past the source's last, its journal no line past the source's,
  // and every one of its processes is stopped (the hold lasts 1.5 s, 15
  // ticks of the demo, so a copy that runs has ticked by then).
  void ExpectTargetNeverRan(uint64_t frozen_tick) {
    const int64_t source_lines = JournalLines(*src_rt_);
    ASSERT_GT(source_lines, 0) << "the demo wrote no journal";
    std::this_thread::sleep_for(milliseconds(1500));
    EXPECT_EQ(LastTick(target_log_), frozen_tick) << "the target's copy ran before the verdict";
    EXPECT_EQ(JournalLines(*dst_rt_), source_lines)
        << "the target's copy appended to its journal before the verdict";
    auto procs = TargetProcesses();
    ASSERT_FALSE(procs.empty()) << "no process of the target's task";
    for (const auto& [pid, state] : procs) {
      EXPECT_EQ(state, 'T') << "process " << pid << " of the uncommitted copy is not stopped ("
                            << StatesOf(procs) << ")";
    }
    EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kPaused));
  }

  std::unique_ptr<IncomingMigrations> target_;
  std::string target_log_;
  uint32_t target_pid_ = 0;
  double restore_seconds_ = 0;
};

TEST_F(TargetCopyIntegrationTest, RestoredCopyWaitsForTheCommitThenContinues) {
  uint64_t frozen_tick = 0;
  int64_t passes = 0;
  ASSERT_NO_FATAL_FAILURE(MigrateUntilRestored(&frozen_tick, &passes));
  ASSERT_NO_FATAL_FAILURE(ExpectTargetNeverRan(frozen_tick));

  const auto commit_start = std::chrono::steady_clock::now();
  auto committed = target_->Commit("m1");
  const double commit_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - commit_start).count();
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(*committed, TargetPhase::kCommitted);
  Status s = src_->Release(name_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(target_log_, frozen_tick, passes));
  for (const auto& [pid, state] : TargetProcesses()) {
    EXPECT_NE(state, 'T') << "process " << pid << " still stopped after the commit";
  }
  EXPECT_GT(JournalLines(*dst_rt_), static_cast<int64_t>(frozen_tick));
  std::cout << "[ figures  ] target restore (stopped) " << restore_seconds_
            << " s, commit (verdict, resume) " << commit_seconds << " s\n";
}

TEST_F(TargetCopyIntegrationTest, AbortedCopyNeverRanAndTheSourceContinues) {
  uint64_t frozen_tick = 0;
  int64_t passes = 0;
  ASSERT_NO_FATAL_FAILURE(MigrateUntilRestored(&frozen_tick, &passes));
  ASSERT_NO_FATAL_FAILURE(ExpectTargetNeverRan(frozen_tick));
  const int64_t source_lines = JournalLines(*src_rt_);

  auto aborted = target_->Abort("m1");
  ASSERT_TRUE(aborted.ok()) << aborted.status().ToString();
  EXPECT_EQ(*aborted, TargetPhase::kAborted);
  EXPECT_EQ(dst_rt_->Inspect(name_).status().code(), Code::kNotFound) << "the copy is still there";
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(target_pid_))) << "its process is alive";

  ASSERT_NO_FATAL_FAILURE(ThawBounded());
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(spec_.log_path, frozen_tick, passes));
  // The source's journal goes on from where it was frozen: one line per tick.
  EXPECT_GT(JournalLines(*src_rt_), source_lines);
}

}  // namespace
}  // namespace kmosix::testing
