// Transfer stream throughput: one file of 16/256/1024 MiB (hot page cache),
//   BM_Encode     - encoder only (read + SHA-256), output discarded;
//   BM_InProcess  - encoder -> decoder (read, hash, write, hash, verify);
//   BM_Http       - HttpTransport::Send -> loopback HTTP -> RegisterPeerRoutes
//                   (data_channel:1 - the stream over the raw data channel)
//                   -> decoder, as in a migration.
// Files live under $KMX_BENCH_DIR (default /dev/shm, like the agent's
// scratch dir). Throughput is reported as bytes_per_second and as "MB/s".
#include <benchmark/benchmark.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "kmosix/transfer_stream.h"
#include "transport_http/data_channel.h"
#include "transport_http/http_transport.h"
#include "transport_http/peer_server.h"

namespace {

namespace fs = std::filesystem;
using kmosix::Landing;
using kmosix::Section;

std::string BenchDir() {
  static const std::string dir = [] {
    const char* env = std::getenv("KMX_BENCH_DIR");
    std::string base = env != nullptr ? env : "/dev/shm";
    std::string d = base + "/kmx-bench-" + std::to_string(::getpid());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// A source directory holding one file of `mib` MiB, created once.
std::string Source(int64_t mib) {
  std::string dir = BenchDir() + "/src-" + std::to_string(mib);
  if (fs::exists(dir + "/pages.img")) return dir;
  fs::create_directories(dir);
  std::ofstream out(dir + "/pages.img", std::ios::binary);
  std::string block(1 << 20, '\0');
  uint64_t x = 88172645463325252ull;
  for (int64_t i = 0; i < mib; ++i) {
    for (size_t j = 0; j + 8 <= block.size(); j += 8) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      std::memcpy(&block[j], &x, 8);
    }
    out.write(block.data(), block.size());
  }
  return dir;
}

void Report(benchmark::State& state, int64_t mib) {
  state.SetBytesProcessed(state.iterations() * mib * (1 << 20));
  state.counters["MB/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * mib * (1 << 20) / 1e6, benchmark::Counter::kIsRate);
}

void BM_Encode(benchmark::State& state) {
  int64_t mib = state.range(0);
  std::string src = Source(mib);
  std::vector<char> buf(1 << 20);
  for (auto _ : state) {
    auto enc = kmosix::StreamEncoder::Create({{"criu", src, false}});
    if (!enc.ok()) state.SkipWithError(enc.status().ToString().c_str());
    for (;;) {
      auto n = (*enc)->Read(buf.data(), buf.size());
      if (!n.ok() || *n == 0) break;
      benchmark::DoNotOptimize(buf.data());
    }
  }
  Report(state, mib);
}

void BM_InProcess(benchmark::State& state) {
  int64_t mib = state.range(0);
  std::string src = Source(mib);
  std::string dst = BenchDir() + "/dst";
  std::vector<char> buf(1 << 20);
  for (auto _ : state) {
    state.PauseTiming();
    fs::remove_all(dst);
    fs::create_directories(dst);
    state.ResumeTiming();
    auto enc = kmosix::StreamEncoder::Create({{"criu", src, false}});
    kmosix::StreamDecoder dec(Landing{{{"criu", dst + "/criu", false}}});
    for (;;) {
      auto n = (*enc)->Read(buf.data(), buf.size());
      if (!n.ok() || *n == 0) break;
      if (!dec.Feed(buf.data(), *n).ok()) state.SkipWithError("decode failed");
    }
    if (!dec.Finish().ok()) state.SkipWithError("finish failed");
  }
  fs::remove_all(dst);
  Report(state, mib);
}

// Accepts every migration and lands it under `dir`.
class BenchTarget : public kmosix::MigrationTarget {
 public:
  explicit BenchTarget(std::string dir) : dir_(std::move(dir)) {}
  kmosix::PeerInfo Info() override { return {"bench", "0"}; }
  kmosix::Status Prepare(const kmosix::MigrationOffer&) override { return {}; }
  kmosix::StatusOr<Landing> BeginReceive(const std::string&) override {
    return Landing{{{"criu", dir_ + "/criu", false}}};
  }
  kmosix::Status EndReceive(const std::string&, const kmosix::Status& r,
                            const kmosix::TransferStats&) override {
    return r;
  }
  kmosix::StatusOr<kmosix::RestoreReport> Restore(const std::string&) override {
    return kmosix::RestoreReport{};
  }
  kmosix::StatusOr<kmosix::TargetPhase> Commit(const std::string&) override {
    return kmosix::TargetPhase::kCommitted;
  }
  kmosix::StatusOr<kmosix::TargetPhase> Abort(const std::string&) override {
    return kmosix::TargetPhase::kAborted;
  }
  kmosix::StatusOr<kmosix::TargetPhase> Query(const std::string&) override {
    return kmosix::TargetPhase::kUnknown;
  }

 private:
  std::string dir_;
};

// state.range(1): 0 = the HTTP stream route, 1 = the data channel.
void BM_Http(benchmark::State& state) {
  ::signal(SIGPIPE, SIG_IGN);
  int64_t mib = state.range(0);
  std::string src = Source(mib);
  std::string dst = BenchDir() + "/dst";
  BenchTarget target(dst);
  kmosix::SystemClock clock;
  kmosix::DataServer data(target, clock, {});
  kmosix::PeerServerOptions options;
  if (state.range(1) == 1) {
    if (!data.Start("127.0.0.1", 0).ok()) state.SkipWithError("data channel did not start");
    options.data_port = data.port();
  }
  httplib::Server server;
  kmosix::RegisterPeerRoutes(server, target, options);
  int port = server.bind_to_any_port("127.0.0.1");
  std::thread t([&] { server.listen_after_bind(); });
  while (!server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  kmosix::HttpTransport transport;
  std::string url = "http://127.0.0.1:" + std::to_string(port);
  if (!transport.Hello(url).ok()) state.SkipWithError("hello failed");
  for (auto _ : state) {
    state.PauseTiming();
    fs::remove_all(dst);
    fs::create_directories(dst);
    state.ResumeTiming();
    auto stats = transport.Send(url, "m-bench", {{"criu", src, false}});
    if (!stats.ok()) state.SkipWithError(stats.status().ToString().c_str());
  }
  server.stop();
  t.join();
  fs::remove_all(dst);
  Report(state, mib);
}

BENCHMARK(BM_Encode)->Arg(16)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_InProcess)->Arg(16)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Http)
    ->ArgNames({"MiB", "data_channel"})
    ->ArgsProduct({{16, 256, 1024}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  fs::remove_all(BenchDir());
  return 0;
}
