// Transfer stream throughput: one file of 16/256/1024 MiB (hot page cache),
//   BM_Encode     - encoder only (read + SHA-256), output discarded;
//   BM_InProcess  - encoder -> decoder (read, hash, write, hash, verify);
//   BM_Http       - HttpTransport::Send -> loopback HTTP -> RegisterPeerRoutes
//                   (data_channel:1 - the stream over the raw data channel)
//                   -> decoder, as in a migration.
//   BM_DataChannel - SendStream -> loopback data channel -> decoder, plain
//                   (tls:0), over mutual TLS with the per-file SHA-256
//                   (tls:1) and over mutual TLS as agents send it, without
//                   file digests (tls:2; transfer_stream.h kNoContentDigests);
//                   throwaway node certificates made by the openssl CLI, one
//                   handshake per stream. A plain-vs-TLS table is printed at
//                   the end.
// Files live under $KMX_BENCH_DIR (default /dev/shm, like the agent's
// scratch dir). Throughput is reported as bytes_per_second and as "MB/s".
#include <benchmark/benchmark.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "fakes/fake_clock.h"
#include "kmosix/transfer_stream.h"
#include "support/test_pki.h"
#include "tls/tls.h"
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

// Certificates for BM_DataChannel (a CA, node1 as the source, node2 as the
// target), made once; "" if the openssl CLI failed.
const kmosix::testing::TestPki* Pki() {
  static const kmosix::testing::TestPki* pki = [] {
    auto* p = new kmosix::testing::TestPki(BenchDir() + "/pki");
    if (!p->MakeCa().empty() ||
        !p->MakeLeaf("node1", "node1", {kmosix::tls::kGroupNodes}).empty() ||
        !p->MakeLeaf("node2", "node2", {kmosix::tls::kGroupNodes}).empty()) {
      delete p;
      return static_cast<kmosix::testing::TestPki*>(nullptr);
    }
    return p;
  }();
  return pki;
}

// Seconds and streams of BM_DataChannel (over all repetitions), by (MiB, tls).
struct Total {
  double seconds = 0;
  double cpu_seconds = 0;  // the whole process: both ends
  int64_t streams = 0;
  double Mean() const { return seconds / static_cast<double>(streams); }
  double MeanCpu() const { return cpu_seconds / static_cast<double>(streams); }
};

double ProcessCpuSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}
std::map<std::pair<int64_t, int64_t>, Total>& Totals() {
  static std::map<std::pair<int64_t, int64_t>, Total> m;
  return m;
}

// state.range(0): 0 = plain TCP, 1 = mutual TLS with file digests, 2 =
// mutual TLS without (what agents send); state.range(1): MiB.
void BM_DataChannel(benchmark::State& state) {
  ::signal(SIGPIPE, SIG_IGN);
  const int64_t mib = state.range(1);
  const bool tls = state.range(0) >= 1;
  kmosix::EncoderOptions encoding;
  encoding.content_digests = state.range(0) != 2;
  std::string src = Source(mib);
  std::string dst = BenchDir() + "/dst";
  BenchTarget target(dst);
  kmosix::testing::FakeClock clock;  // credentials never reload mid-bench
  std::unique_ptr<kmosix::tls::ServerCredentials> creds;
  kmosix::DataServer::Options o;
  kmosix::DataChannelOptions c;
  if (tls) {
    const auto* pki = Pki();
    if (pki == nullptr) return state.SkipWithError("openssl CLI could not make certificates");
    auto loaded = kmosix::tls::ServerCredentials::Load(
        {pki->Ca(), pki->Cert("node2"), pki->Key("node2")}, clock);
    if (!loaded.ok()) return state.SkipWithError(loaded.status().ToString().c_str());
    creds = std::move(*loaded);
    o.tls = creds.get();
    c.tls = {pki->Ca(), pki->Cert("node1"), pki->Key("node1")};
    c.expected_server_name = "node2";
  }
  kmosix::DataServer data(target, clock, o);
  if (!data.Start("127.0.0.1", 0).ok()) return state.SkipWithError("data channel did not start");
  double seconds = 0, cpu_seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    fs::remove_all(dst);
    fs::create_directories(dst);
    state.ResumeTiming();
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = ProcessCpuSeconds();
    auto enc = kmosix::StreamEncoder::Create({{"criu", src, false}}, encoding);
    if (!enc.ok()) return state.SkipWithError(enc.status().ToString().c_str());
    auto stats = kmosix::SendStream("127.0.0.1", data.port(), "m-bench", **enc, c);
    if (!stats.ok()) return state.SkipWithError(stats.status().ToString().c_str());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    cpu_seconds += ProcessCpuSeconds() - cpu_start;
  }
  data.Stop();
  fs::remove_all(dst);
  Total& total = Totals()[{mib, state.range(0)}];
  total.seconds += seconds;
  total.cpu_seconds += cpu_seconds;
  total.streams += state.iterations();
  Report(state, mib);
}

void PrintTlsTable() {
  const auto& m = Totals();
  if (m.empty()) return;
  std::printf(
      "\nData channel over loopback, plain vs mutual TLS (mean per stream over all "
      "repetitions):\n\n");
  std::printf(
      "| stream | variant | ms | MB/s | time vs plain | CPU ms | CPU vs plain |\n"
      "|---:|---|---:|---:|---:|---:|---:|\n");
  const char* names[] = {"plain, SHA-256", "mutual TLS + SHA-256", "mutual TLS (agents)"};
  for (int64_t mib : {16, 256, 1024}) {
    auto p = m.find({mib, 0});
    if (p == m.end()) continue;
    const double bytes = static_cast<double>(mib) * (1 << 20);
    const double plain = p->second.Mean(), plain_cpu = p->second.MeanCpu();
    for (int64_t v : {0, 1, 2}) {
      auto t = m.find({mib, v});
      if (t == m.end()) continue;
      const double s = t->second.Mean(), cpu = t->second.MeanCpu();
      std::printf("| %lld MiB | %s | %.1f | %.0f | %+.1f %% | %.0f | %+.1f %% |\n",
                  static_cast<long long>(mib), names[v], s * 1e3, bytes / s / 1e6,
                  (s / plain - 1) * 100, cpu * 1e3, (cpu / plain_cpu - 1) * 100);
    }
  }
  std::printf(
      "\n(CPU: both ends' threads, this process; on a loaded or small machine the wall times\n"
      "compete with other work, the CPU times less.)\n");
}

BENCHMARK(BM_Encode)->Arg(16)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_InProcess)->Arg(16)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Http)
    ->ArgNames({"MiB", "data_channel"})
    ->ArgsProduct({{16, 256, 1024}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_DataChannel)  // plain and TLS of a size run one after the other
    ->ArgNames({"tls", "MiB"})
    ->ArgsProduct({{0, 1, 2}, {16, 256, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()  // both ends' threads: the cost of TLS on a shared machine
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintTlsTable();
  fs::remove_all(BenchDir());
  return 0;
}
