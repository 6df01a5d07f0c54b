// Integration test of the post-copy pieces (kmosix/lazy_pages.h) over real
// containerd, runc and CRIU, in one process: one private containerd serves
// two simulated nodes (containerd namespaces "src" and "dst", each with its
// own runc root, cgroup parent and workload network, as agents run them:
// --workload-network isolated). The test process first moves into a network
// namespace of its own (the "node"). The small CRIU images, the writable
// layer and the log go through the real StreamEncoder/StreamDecoder; the
// memory goes only through the page stream, here the target's relay dialing
// the source's ConnectPageServer directly (between agents: the data channel).
// The workload is the demo (images/demo/kmosix-demo.c) touching 256 MiB and
// verifying a 32 MiB window of it per tick.
//
// Needs root, containerd/runc/CRIU with userfaultfd (`criu check`), `ip` and
// `nft`, fs.pipe-max-size >= 4194304 and the demo image (ninja
// kmosix-demo-image); skips loudly when something is missing.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cluster.h"  // the demo's log format: ParseDemoLog, CheckConsecutive, MaxGap
#include "containerd/containerd_runtime.h"
#include "containerd/workload_network.h"
#include "kmosix/clock.h"
#include "kmosix/lazy_pages.h"
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
using kmosix::e2e::MaxGap;
using kmosix::e2e::ParseDemoLog;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kDemoImage[] = "kmosix.local/demo:latest";
// 256 MiB; KMX_LAZY_MEM_MIB sets another size for measurements.
const int kMemMib = [] {
  const char* v = std::getenv("KMX_LAZY_MEM_MIB");
  const int n = v ? std::atoi(v) : 0;
  return n > 0 ? n : 256;
}();
constexpr uint64_t kMiB = 1 << 20;

double Since(std::chrono::steady_clock::time_point t0, std::chrono::steady_clock::time_point t1) {
  return std::chrono::duration<double>(t1 - t0).count();
}

Status Pump(StreamEncoder& encoder, StreamDecoder& decoder, uint64_t* sent) {
  std::vector<char> buf(64 << 10);
  *sent = 0;
  for (;;) {
    KMX_ASSIGN_OR_RETURN(size_t n, encoder.Read(buf.data(), buf.size()));
    if (n == 0) return Status::Ok();
    KMX_RETURN_IF_ERROR(decoder.Feed(buf.data(), n));
    *sent += n;
  }
}

// Whether a TCP connect from this thread's network namespace (the node's)
// to address:port succeeds.
bool Reachable(const std::string& address, uint16_t port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  const bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(s);
  return ok;
}

std::string Tail(const std::string& s, size_t n = 3000) {
  return s.size() > n ? s.substr(s.size() - n) : s;
}

class LazyPagesIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = MissingCapability();
    if (skip_reason_.empty()) skip_reason_ = CriuProblem();
    for (const char* bin : {"ip", "nft", "sysctl"}) {
      if (skip_reason_.empty() && RunCommand(std::string("command -v ") + bin) != 0)
        skip_reason_ = std::string(bin) + " not on PATH";
    }
    if (skip_reason_.empty() && RunCommand("criu check --feature uffd-noncoop") != 0)
      skip_reason_ = "criu check --feature uffd-noncoop fails (no userfaultfd for lazy pages)";
    if (skip_reason_.empty()) {
      long pipe_max = std::atol(ReadFile("/proc/sys/fs/pipe-max-size").c_str());
      if (pipe_max < 4194304)
        skip_reason_ = "fs.pipe-max-size is " + std::to_string(pipe_max) +
                       " (< 4194304: a lazy dump fails with \"page-pipe: splice: Bad file "
                       "descriptor\"; run sysctl fs.pipe-max-size=4194304)";
    }
    if (skip_reason_.empty() && !fs::exists(KMX_DEMO_IMAGE))
      skip_reason_ = std::string("demo image ") + KMX_DEMO_IMAGE +
                     " missing (build it: ninja kmosix-demo-image)";
    if (!skip_reason_.empty()) return;
    // The "node": a network namespace of this thread, inherited by the
    // threads and children made from here (containerd and its shims).
    if (::unshare(CLONE_NEWNET) != 0) {
      skip_reason_ = std::string("unshare(CLONE_NEWNET): ") + strerror(errno);
      return;
    }
    std::string out;
    if (RunCommand("ip link set lo up", &out) != 0) {
      start_error_ = "node namespace setup: " + out;
      return;
    }
    daemon_ = std::make_unique<PrivateContainerd>("lzp");
    start_error_ = daemon_->Start();
    for (const char* ns : {"src", "dst"}) {
      if (start_error_.empty()) start_error_ = daemon_->ImportImage(KMX_DEMO_IMAGE, ns);
    }
    if (!start_error_.empty()) start_error_ += "\n" + daemon_->DaemonLogTail();
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << "LAZY PAGES INTEGRATION SKIPPED: " << skip_reason_;
    ASSERT_TRUE(start_error_.empty()) << "private containerd: " << start_error_;
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::transform(name_.begin(), name_.end(), name_.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (name_.rfind("disabled_", 0) == 0) name_ = name_.substr(9);  // names are a-z0-9-
    base_ = daemon_->dir() + "/" + name_;
    fs::create_directories(base_ + "/logs");
    src_scratch_ = base_ + "/scratch-src/m1";
    dst_scratch_ = base_ + "/scratch-dst/m1";
    fs::create_directories(src_scratch_);
    fs::create_directories(dst_scratch_);
    src_rt_ = Node("src", "kmxlz0", "10.211.0.0/24", &src_net_);
    dst_rt_ = Node("dst", "kmxlz1", "10.212.0.0/24", &dst_net_);
    ASSERT_TRUE(src_rt_ && dst_rt_);
    spec_.name = name_;
    spec_.image = kDemoImage;
    spec_.args = {"/bin/kmosix-demo", "--mem", std::to_string(kMemMib)};
    spec_.memory_mib = 2 * kMemMib;
    spec_.log_path = base_ + "/logs/src.log";
    tspec_ = spec_;
    tspec_.log_path = base_ + "/logs/dst.log";
  }

  void TearDown() override {
    if (src_rt_) (void)src_rt_->Delete(name_);
    if (dst_rt_) (void)dst_rt_->Delete(name_);
  }

  std::unique_ptr<ContainerdRuntime> Node(const std::string& ns, const std::string& bridge,
                                          const std::string& cidr,
                                          std::unique_ptr<WorkloadNetwork>* net) {
    WorkloadNetworkConfig c;
    c.node = "lz-" + ns;
    c.bridge = bridge;
    c.cidr = cidr;
    c.lease_file = base_ + "/" + ns + "-leases.json";
    auto wn = WorkloadNetwork::Create(c, runner_);
    EXPECT_TRUE(wn.ok()) << wn.status().ToString();
    if (!wn.ok()) return nullptr;
    *net = std::move(*wn);
    ContainerdConfig cfg = daemon_->Config(ns);
    cfg.network = net->get();
    return std::make_unique<ContainerdRuntime>(cfg);
  }

  LazyPagesOptions Options(const ContainerdRuntime& rt, const std::string& ns) {
    LazyPagesOptions o;
    o.runc_root = rt.config().runc_root + "/" + ns;  // the shim adds the namespace
    if (!rt.config().criu_path.empty()) o.criu = rt.config().criu_path;
    return o;
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
  TaskState State(ContainerRuntime& rt) {
    auto info = rt.Inspect(name_);
    return info.ok() ? info->state : TaskState::kUnknown;
  }

  void StartDemo() {
    Status s = src_rt_->CreateContainer(spec_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    s = src_rt_->StartTask(name_);
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << daemon_->DaemonLogTail();
    ASSERT_TRUE(
        WaitFor([&] { return LastPasses(spec_.log_path) >= 1 && LastTick(spec_.log_path) >= 5; },
                seconds(90)))
        << "demo did not tick: " << ReadFile(spec_.log_path);
  }

  // Ticks consecutive from 1, started once, every memory check passing,
  // through two full memory passes after `passes_at_freeze` (the whole
  // memory verified after the move).
  void ExpectContinued(const std::string& log_path, uint64_t frozen_tick,
                       int64_t passes_at_freeze) {
    EXPECT_TRUE(WaitFor(
        [&] {
          return LastTick(log_path) >= frozen_tick + 5 &&
                 LastPasses(log_path) >= passes_at_freeze + 2;
        },
        seconds(120)))
        << "ticks did not continue past " << frozen_tick << ": last tick " << LastTick(log_path);
    DemoLog log = Log(log_path);
    ASSERT_FALSE(log.ticks.empty()) << ReadFile(log_path);
    EXPECT_EQ(log.ticks.front().tick, 1u);
    EXPECT_EQ(CheckConsecutive(log.ticks), "") << "a counter value was lost or repeated";
    EXPECT_EQ(log.start_lines, 1) << "the workload restarted";
    EXPECT_EQ(log.corruption_lines, 0) << Tail(ReadFile(log_path));
    EXPECT_EQ(log.malformed_lines, 0);
    int bad = 0;
    for (const auto& t : log.ticks) bad += t.mem_ok != 1;
    EXPECT_EQ(bad, 0) << "ticks with mem_ok != 1";
    EXPECT_EQ(log.ticks.back().mem_mib, kMemMib);
  }

  // Lazily dumps the source, streams its images, layer and log to the
  // target's landing, starts the target's daemon relayed to the source's
  // page server and restores there.
  void MoveLazily() {
    t0_ = std::chrono::steady_clock::now();
    auto src = LazySource::Start(*src_rt_, clock_, Options(*src_rt_, "src"), name_, src_scratch_);
    ASSERT_TRUE(src.ok()) << src.status().ToString();
    src_ = std::move(*src);
    t_dumped_ = std::chrono::steady_clock::now();
    EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kPaused));
    // The page server serves its first client without authentication: no
    // one on the node (its loopback, its workload bridge) may reach it. (A
    // connection here would also end the dump: the migration fails then.)
    const uint16_t port = Options(*src_rt_, "src").port;
    EXPECT_FALSE(Reachable("127.0.0.1", port)) << "page server reachable on the node's loopback";
    EXPECT_FALSE(Reachable("10.211.0.1", port)) << "page server reachable on the node's bridge";

    Status s = dst_rt_->CreateContainer(tspec_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    auto layer = dst_rt_->WritableLayerDir(name_);
    ASSERT_TRUE(layer.ok()) << layer.status().ToString();
    auto src_layer = src_rt_->WritableLayerDir(name_);
    ASSERT_TRUE(src_layer.ok()) << src_layer.status().ToString();
    std::vector<Section> sections{{"criu", src_->images_dir(), false},
                                  {"rootfs", *src_layer, false},
                                  {"log", spec_.log_path, true}};
    Landing landing;
    landing.sections = {{"criu", dst_scratch_ + "/criu", false},
                        {"rootfs", *layer, false},
                        {"log", tspec_.log_path, true}};
    fs::create_directories(dst_scratch_ + "/criu");
    fs::create_directories(dst_scratch_ + "/work");
    StreamDecoder decoder(landing);
    auto encoder = StreamEncoder::Create(sections);
    ASSERT_TRUE(encoder.ok()) << encoder.status().ToString();
    s = Pump(**encoder, decoder, &stream_bytes_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    s = decoder.Finish();
    ASSERT_TRUE(s.ok()) << s.ToString();
    t_streamed_ = std::chrono::steady_clock::now();

    LazySource* source = src_.get();
    auto dst =
        LazyTarget::Start(clock_, Options(*dst_rt_, "dst"), dst_scratch_ + "/criu",
                          dst_scratch_ + "/work", [source] { return source->ConnectPageServer(); });
    ASSERT_TRUE(dst.ok()) << dst.status().ToString();
    dst_ = std::move(*dst);
    t_daemon_ = std::chrono::steady_clock::now();
    s = dst_->Restore(*dst_rt_, name_);
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n"
                        << Tail(ReadFile(dst_scratch_ + "/work/restore.log"));
    t_restored_ = std::chrono::steady_clock::now();
    EXPECT_EQ(TaskStateName(State(*dst_rt_)), TaskStateName(TaskState::kRunning));
  }

  static inline std::unique_ptr<PrivateContainerd> daemon_;
  static inline std::string skip_reason_;
  static inline std::string start_error_;

  SystemClock clock_;
  SystemCommandRunner runner_;
  std::unique_ptr<WorkloadNetwork> src_net_, dst_net_;
  std::unique_ptr<ContainerdRuntime> src_rt_, dst_rt_;
  std::unique_ptr<LazySource> src_;
  std::unique_ptr<LazyTarget> dst_;
  std::string name_, base_, src_scratch_, dst_scratch_;
  ContainerSpec spec_, tspec_;
  uint64_t stream_bytes_ = 0;
  std::chrono::steady_clock::time_point t0_, t_dumped_, t_streamed_, t_daemon_, t_restored_;
};

TEST_F(LazyPagesIntegrationTest, LazyMigrationKeepsMemoryAndCounter) {
  ASSERT_NO_FATAL_FAILURE(StartDemo());
  ASSERT_NO_FATAL_FAILURE(MoveLazily());
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);

  auto result = dst_->Wait(milliseconds(180000));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  const auto t_all = std::chrono::steady_clock::now();
  EXPECT_TRUE(result->done) << result->error << "\n"
                            << Tail(ReadFile(dst_scratch_ + "/work/lazy-pages.log"));
  EXPECT_FALSE(result->task_killed);
  EXPECT_GE(result->pages * 4096, static_cast<uint64_t>(kMemMib) * kMiB);
  EXPECT_GE(result->bytes_in, static_cast<uint64_t>(kMemMib) * kMiB);

  // The source served every page, exited, and is frozen, never ran again.
  Status s = src_->Finish();
  EXPECT_TRUE(s.ok()) << s.ToString() << "\n" << Tail(ReadFile(src_scratch_ + "/work/dump.log"));
  EXPECT_TRUE(src_->criu_exited());
  EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kPaused));
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "the source ran after its dump";
  s = src_->Release();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(src_rt_->Inspect(name_).status().code(), Code::kNotFound) << "source still there";

  ASSERT_NO_FATAL_FAILURE(ExpectContinued(tspec_.log_path, frozen_tick, passes));
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "the source log moved after Release";
  // Downtime: the gap between the last tick before the freeze and the next;
  // the lazy window's slowdown: the largest gap after that.
  const auto ticks = Log(tspec_.log_path).ticks;
  int64_t downtime_ms = -1;
  for (size_t i = 0; i + 1 < ticks.size(); ++i) {
    if (ticks[i].tick == frozen_tick) downtime_ms = ticks[i + 1].t_ms - ticks[i].t_ms;
  }
  const auto gap = MaxGap(ticks, frozen_tick + 1);
  std::cout << "[ figures  ] " << kMemMib << " MiB: tick gap at the move " << downtime_ms
            << " ms (interval 100), largest later gap " << gap.ms << " ms after tick "
            << gap.after_tick << " (frozen at " << frozen_tick << "); pause "
            << src_->freeze_seconds() << " s, lazy dump " << src_->dump_seconds()
            << " s, images+layer+log stream " << stream_bytes_ << " bytes in "
            << Since(t_dumped_, t_streamed_) << " s, daemon ready " << Since(t_streamed_, t_daemon_)
            << " s, restore " << Since(t_daemon_, t_restored_) << " s; freeze to running "
            << Since(t0_, t_restored_) << " s; all pages " << Since(t_restored_, t_all)
            << " s after the restore (daemon " << result->seconds << " s): " << result->pages << "/"
            << result->total_pages << " pages, " << result->bytes_in << " bytes relayed in, "
            << result->bytes_out << " out; uffds held " << dst_->guarded_uffds() << "; daemon log "
            << ReadFile(dst_scratch_ + "/work/lazy-pages.log").size() << " bytes\n";
}

TEST_F(LazyPagesIntegrationTest, DaemonKilledMidTransferKillsTargetAndSourceResumes) {
  ASSERT_NO_FATAL_FAILURE(StartDemo());
  ASSERT_NO_FATAL_FAILURE(MoveLazily());
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);
  const int held = dst_->guarded_uffds();
  EXPECT_GE(held, 1) << "the guard holds no userfaultfd";
  // Mid-transfer, while the target runs: once it ticked past the freeze.
  EXPECT_TRUE(WaitFor([&] { return LastTick(tspec_.log_path) > frozen_tick; }, seconds(20)))
      << "the target did not tick";

  ASSERT_EQ(::kill(dst_->daemon_pid(), SIGKILL), 0);
  auto result = dst_->Wait(milliseconds(60000));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_FALSE(result->done);
  EXPECT_EQ(result->exit_status, -1) << "killed by a signal";
  EXPECT_TRUE(result->task_killed) << result->error;
  EXPECT_LT(result->bytes_in, static_cast<uint64_t>(kMemMib) * kMiB)
      << "the daemon was killed after every page arrived: not mid-transfer";

  // The target's copy is dead and never ran on a zero-filled page.
  EXPECT_TRUE(WaitFor([&] { return State(*dst_rt_) == TaskState::kStopped; }, seconds(10)))
      << "target task is " << TaskStateName(State(*dst_rt_));
  DemoLog dlog = Log(tspec_.log_path);
  EXPECT_EQ(dlog.corruption_lines, 0) << "the target read zero-filled memory\n"
                                      << Tail(ReadFile(tspec_.log_path));
  int bad = 0;
  for (const auto& t : dlog.ticks) bad += t.mem_ok != 1;
  EXPECT_EQ(bad, 0) << "target ticks with mem_ok != 1";
  const uint64_t target_last = dlog.ticks.empty() ? 0 : dlog.ticks.back().tick;
  (void)dst_rt_->Delete(name_);

  // The source: its CRIU ended with the stream, it is frozen, still the
  // same process, and has not run.
  EXPECT_TRUE(WaitFor([&] { return src_->criu_exited(); }, seconds(30)));
  EXPECT_GE(src_->refreezes(), 1);
  EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kPaused));
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick) << "the source ran while the target held it";

  // Rollback: the source resumes, and is the only copy that runs.
  Status s = src_->Thaw();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kRunning));
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(spec_.log_path, frozen_tick, passes));
  EXPECT_EQ(LastTick(tspec_.log_path), target_last) << "the target's copy still runs";
  std::cout << "[ figures  ] daemon killed after " << result->bytes_in
            << " bytes relayed; uffds held " << held << "; target ticks after the move "
            << (target_last > frozen_tick ? target_last - frozen_tick : 0) << "\n";
}

// Two processes sharing a page (the demo's child ticks its own counter in a
// MAP_SHARED page the parent reads; shared memory is never lazy): each
// process's userfaultfd is held, both counters continue, all pages arrive.
// The memory limit is twice the usual: the child was forked after the parent
// filled its memory, and the lazy restore copies each process's pages into
// it separately (UFFDIO_COPY), so pages the two shared copy-on-write on the
// source are two copies on the target. Under the usual limit (2 x --mem) the
// target's memory cgroup killed the child (dmesg: "criu invoked oom-killer",
// the child killed; its parent then printed child_alive=0), 3 runs of 3.
TEST_F(LazyPagesIntegrationTest, ParentAndChildWithSharedMemoryMoveLazily) {
  spec_.memory_mib = 4 * kMemMib;
  spec_.args.push_back("--child");
  tspec_.args = spec_.args;
  tspec_.memory_mib = spec_.memory_mib;
  ASSERT_NO_FATAL_FAILURE(StartDemo());
  ASSERT_TRUE(WaitFor([&] { return Log(spec_.log_path).child_ticks.size() >= 3; }, seconds(30)))
      << "the child did not tick";
  ASSERT_NO_FATAL_FAILURE(MoveLazily());
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);
  const size_t child_ticks = Log(spec_.log_path).child_ticks.size();
  EXPECT_GE(dst_->guarded_uffds(), 2) << "not every process's userfaultfd is held";

  auto result = dst_->Wait(milliseconds(60000));
  ASSERT_TRUE(result.ok()) << result.status().ToString() << "\n"
                           << Tail(ReadFile(tspec_.log_path)) << "\n"
                           << Tail(ReadFile(dst_scratch_ + "/work/lazy-pages.log"));
  EXPECT_TRUE(result->done) << result->error << "\n"
                            << Tail(ReadFile(dst_scratch_ + "/work/lazy-pages.log"));
  TransferSummary sum = ParseLazyPagesLog(ReadFile(dst_scratch_ + "/work/lazy-pages.log"));
  EXPECT_GE(sum.processes, 2);
  Status s = src_->Finish();
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = src_->Release();
  EXPECT_TRUE(s.ok()) << s.ToString();

  ASSERT_NO_FATAL_FAILURE(ExpectContinued(tspec_.log_path, frozen_tick, passes));
  DemoLog log = Log(tspec_.log_path);
  EXPECT_GT(log.child_ticks.size(), child_ticks) << "the child did not tick on the target";
  EXPECT_EQ(CheckConsecutive(log.child_ticks), "") << "the child's counter broke";
  int dead = 0;
  for (const auto& t : log.ticks) dead += t.tick > frozen_tick && t.child_alive != 1;
  EXPECT_EQ(dead, 0) << "ticks after the move without the child\n"
                     << Tail(ReadFile(tspec_.log_path));
  std::cout << "[ figures  ] parent+child " << kMemMib << " MiB: " << sum.processes
            << " processes, " << result->pages << "/" << result->total_pages
            << " pages, uffds held " << dst_->guarded_uffds() << ", all pages " << result->seconds
            << " s after the restore\n";
}

// The source's CRIU dies mid-transfer (never done by the engine; a crash):
// CRIU has thawed the freezer and lets the tasks go, so the watcher must
// freeze them again at once; the target loses its page stream, its daemon
// fails and the guard kills its copy; the source then resumes on Thaw.
TEST_F(LazyPagesIntegrationTest, SourceCriuKilledMidTransferRefreezesSource) {
  ASSERT_NO_FATAL_FAILURE(StartDemo());
  ASSERT_NO_FATAL_FAILURE(MoveLazily());
  const uint64_t frozen_tick = LastTick(spec_.log_path);
  const int64_t passes = LastPasses(spec_.log_path);
  ASSERT_GT(src_->criu_pid(), 0) << "CRIU's pid unknown: the watcher watches runc only";
  EXPECT_TRUE(WaitFor([&] { return LastTick(tspec_.log_path) > frozen_tick; }, seconds(20)))
      << "the target did not tick";

  ASSERT_EQ(::kill(src_->criu_pid(), SIGKILL), 0);
  EXPECT_TRUE(WaitFor([&] { return src_->criu_exited(); }, seconds(30)));
  EXPECT_GE(src_->refreezes(), 1);
  auto result = dst_->Wait(milliseconds(60000));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_FALSE(result->done) << "the target counted a cut stream as done";
  EXPECT_TRUE(result->task_killed) << result->error;
  EXPECT_TRUE(WaitFor([&] { return State(*dst_rt_) == TaskState::kStopped; }, seconds(10)))
      << "target task is " << TaskStateName(State(*dst_rt_));
  DemoLog dlog = Log(tspec_.log_path);
  EXPECT_EQ(dlog.corruption_lines, 0) << "the target read zero-filled memory\n"
                                      << Tail(ReadFile(tspec_.log_path));
  const uint64_t target_last = dlog.ticks.empty() ? 0 : dlog.ticks.back().tick;
  (void)dst_rt_->Delete(name_);

  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(LastTick(spec_.log_path), frozen_tick)
      << "the source ran after its CRIU died (two copies)";
  EXPECT_EQ(TaskStateName(State(*src_rt_)), TaskStateName(TaskState::kPaused));
  Status s = src_->Thaw();
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(spec_.log_path, frozen_tick, passes));
  EXPECT_EQ(LastTick(tspec_.log_path), target_last) << "the target's copy still runs";
  std::cout << "[ figures  ] source CRIU killed after the target ran "
            << (target_last > frozen_tick ? target_last - frozen_tick : 0) << " ticks; "
            << result->bytes_in << " bytes relayed; " << src_->refreezes() << " re-freezes\n";
}

}  // namespace
}  // namespace kmosix::testing
