// kmosix-agent: wires the concrete parts of one node together.
#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <thread>

#include "access.h"
#include "agent.h"
#include "auth/tokens.h"
#include "checkpoint_keeper.h"
#include "checkpointer.h"
#include "cluster_link.h"
#include "containerd/containerd_runtime.h"
#include "containerd/workload_network.h"
#include "criu_probe.h"
#include "etcd/etcd_state_store.h"
#include "http_api.h"
#include "kmosix/clock.h"
#include "kmosix/files.h"
#include "kmosix/spec_json.h"
#include "kmosix/stop_and_copy.h"
#include "load_sampler.h"
#include "metrics.h"
#include "tls/tls.h"
#include "transport_http/data_channel.h"
#include "transport_http/http_transport.h"
#include "transport_http/listener_limits.h"
#include "transport_http/peer_server.h"
#include "transport_http/rest.h"

namespace {

std::atomic<bool> g_stop{false};  // set by SIGTERM/SIGINT only

// MemTotal from /proc/meminfo, in bytes (0 if unreadable).
uint64_t MemTotalBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemTotal:") return kib * 1024;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kmosix-agent: runs workloads on this node and live-migrates them"};
  kmosix::agent::AgentOptions opts;
  kmosix::ContainerdConfig ctd;
  std::string listen = "127.0.0.1:7700";
  std::string log_level = "info";
  double idle_timeout = 120, resolve_timeout = 30;
  int data_port = -1;
  double history_hours = 24;
  bool enable_failpoints = false;
  std::string etcd;
  std::string etcd_prefix = "/kmosix/";
  int lease_ttl = 5;
  double fence_after = 4;
  std::string load_source = "host";
  double cpu_capacity = 0;
  int64_t memory_capacity_mib = 0;
  double speed = 1.0;
  double heartbeat = 10;
  std::string workload_network = "isolated";
  kmosix::WorkloadNetworkConfig wn_config;
  app.add_option("--node", opts.node, "this node's name")->required();
  app.add_option("--listen", listen, "address:port to serve the REST API on")
      ->capture_default_str();
  app.add_option("--advertise-url", opts.advertise_url,
                 "URL peers reach this agent at (default http://<listen>)");
  // The node plane's security (issue 11): TLS with node certificates, tokens.
  kmosix::tls::Files tls_files;
  std::string token_file;
  bool insecure = false;
  app.add_option("--tls-ca", tls_files.ca,
                 "the cluster's CA (PEM): peers', controllers' and admins' certificates must "
                 "chain to it");
  app.add_option("--tls-cert", tls_files.cert,
                 "this node's certificate (CN = --node, O = kmosix:nodes); re-read on change");
  app.add_option("--tls-key", tls_files.key, "the key of --tls-cert; re-read on change");
  app.add_option("--token-file", token_file,
                 "bearer tokens the REST API accepts (TOKEN,ROLE,NAME lines, as the "
                 "controller's); re-read on change");
  app.add_flag("--insecure", insecure,
               "plain HTTP and no authentication: anyone who reaches this agent runs code as "
               "root here. Debugging only");
  app.add_option("--containerd-socket", ctd.socket_path, "containerd's gRPC socket (absolute path)")
      ->required();
  app.add_option("--namespace", ctd.containerd_namespace, "containerd namespace")
      ->capture_default_str();
  app.add_option("--state-dir", opts.state_dir, "durable agent state")->required();
  app.add_option("--scratch-dir", opts.scratch_dir,
                 "CRIU images in flight (tmpfs is fastest; default /run/kmosix/<node>/scratch): "
                 "made 0700; the agent refuses to start if it exists as a symlink, owned by "
                 "someone else or open to group or others, or under a directory others may "
                 "write");
  app.add_option("--runc-root", ctd.runc_root, "runc state root for this node")->required();
  app.add_option("--criu-path", ctd.criu_path,
                 "the criu runc runs (passed to runc as --criu; a path on the node, where "
                 "containerd's shim runs runc); default: the first criu on the shim's PATH");
  std::string criu_check = "auto";
  app.add_option("--criu-check", criu_check,
                 "how the agent checks at start that this node's runc finds a CRIU >= 4 that "
                 "passes `criu check`: local (run it here), nsenter (run it in PID 1's mount "
                 "namespace: the host's, for an agent in a pod with hostPID), auto (nsenter when "
                 "PID 1's mount namespace is not the agent's, else local), off (no check). A "
                 "failed check leaves the agent running but its node NotReady for migrations "
                 "(the reason is in its node record); it is checked again every minute")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "off", "nsenter", "local"}));
  app.add_option("--cgroup-parent", ctd.cgroup_parent, "cgroup parent for this node's containers")
      ->required();
  app.add_option("--data-port", data_port,
                 "TCP port of the data channel that receives migration streams "
                 "(default: the --listen port + 1; 0: streams go over HTTP)")
      ->check(CLI::Range(0, 65535));
  kmosix::StopAndCopyEngine::Options engine_opts;
  app.add_option("--dump-pipes", engine_opts.pipes,
                 "page images of an outgoing dump made pipes the transfer reads while CRIU "
                 "dumps (one per process; 0: dump into files, then send them)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  uint64_t prefault_max_mib = engine_opts.prefault_max_bytes >> 20;
  app.add_option("--prefault-max-mib", prefault_max_mib,
                 "memory an incoming migration faults in before the source freezes and frees "
                 "right before its restore, at most (0: none; it never takes the memory the "
                 "landing needs)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 30));
  app.add_option("--max-outgoing", opts.max_outgoing,
                 "migrations that may leave this node at once (more get 503)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--history-hours", history_hours,
                 "hours finished migrations stay listed (and journaled)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--idle-timeout", idle_timeout,
                 "seconds an incoming migration may stall before it is aborted")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--resolve-timeout", resolve_timeout,
                 "seconds to keep asking a silent target before retrying in the background")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_flag("--enable-failpoints", enable_failpoints,
               "serve /v1/debug/failpoints to inject faults (tests only)");
  app.add_option("--etcd", etcd,
                 "comma-separated etcd endpoints (e.g. http://10.77.0.1:2379): join the cluster "
                 "and take orders from it (absent: standalone)");
  app.add_option("--etcd-prefix", etcd_prefix, "key prefix of the cluster state in etcd")
      ->capture_default_str();
  std::string etcd_ca, etcd_cert, etcd_key;
  app.add_option("--etcd-ca", etcd_ca, "CA file for https:// etcd endpoints (re-read on change)");
  app.add_option("--etcd-cert", etcd_cert,
                 "this node's client certificate for etcd (CN = node name; re-read on change)");
  app.add_option("--etcd-key", etcd_key, "the key of --etcd-cert (re-read on change)");
  app.add_option("--lease-ttl", lease_ttl, "seconds this node's key outlives a silent agent")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--fence-after", fence_after,
                 "seconds without a lease renewal after which this agent freezes (pauses) every "
                 "workload the cluster gave it, until a renewed lease and each workload's record "
                 "say it still owns it (then thawed) or not (then deleted); must be below "
                 "--lease-ttl, and the controller's --node-loss-restart-delay must exceed "
                 "--lease-ttl + --fence-after, so a node cut off is frozen before its workloads "
                 "restart elsewhere; 0: never fence")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--load-source", load_source,
                 "host: the whole machine (/proc); cgroup: this node's cgroup parent against "
                 "declared capacities (several nodes on one machine)")
      ->capture_default_str()
      ->check(CLI::IsMember({"host", "cgroup"}));
  app.add_option("--cpu-capacity", cpu_capacity,
                 "cores this node offers (required with --load-source cgroup; default: online "
                 "CPUs)")
      ->check(CLI::PositiveNumber);
  app.add_option("--memory-capacity-mib", memory_capacity_mib,
                 "memory this node offers, MiB (--load-source cgroup; default MemTotal)")
      ->check(CLI::PositiveNumber);
  app.add_option("--speed", speed, "relative CPU speed of this node (1 = reference core)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--heartbeat", heartbeat,
                 "seconds between load publications when nothing changed materially")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--workload-network", workload_network,
                 "isolated: each workload gets its own network namespace on --workload-bridge; "
                 "host: workloads share the node's network namespace (debugging only)")
      ->capture_default_str()
      ->check(CLI::IsMember({"isolated", "host"}));
  app.add_option("--workload-cidr", wn_config.cidr,
                 "IPv4 subnet of this node's workloads (distinct per node; the bridge takes "
                 "its first address, workloads the rest)")
      ->capture_default_str();
  app.add_option("--workload-bridge", wn_config.bridge, "bridge of this node's workloads")
      ->capture_default_str();
  // Bounded intake (issue 11): each limit has a flag and a metric
  // (kmosix_intake*, kmosix_listener*).
  uint64_t prefault_budget_mib = opts.intake.prefault_budget_bytes >> 20;
  int64_t retry_after = opts.intake.retry_after.count();
  double busy_wait = 120;
  kmosix::ListenerLimits http_limits;
  kmosix::DataServer::Options data_opts;
  app.add_option("--max-incoming", opts.intake.max_incoming,
                 "migrations this node receives at once (more are answered 503 with "
                 "Retry-After; their sources ask again); 0: no limit")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_option("--prefault-budget-mib", prefault_budget_mib,
                 "memory all incoming migrations together may fault in ahead of their "
                 "restores, MiB (each also at most --prefault-max-mib)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 30));
  app.add_option("--intake-retry-after", retry_after,
                 "seconds a busy refusal tells the source to wait")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--busy-wait", busy_wait,
                 "seconds an outgoing migration keeps asking a busy target before it fails")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--stream-max-bytes", opts.intake.ceiling.bytes,
                 "hard ceiling of an incoming stream's payload bytes, whatever its offer "
                 "declared (0: none)")
      ->capture_default_str();
  app.add_option("--stream-max-files", opts.intake.ceiling.files,
                 "hard ceiling of an incoming stream's files (0: none)")
      ->capture_default_str();
  app.add_option("--stream-max-entries", opts.intake.ceiling.entries,
                 "hard ceiling of an incoming stream's entries of any kind (0: none)")
      ->capture_default_str();
  app.add_option("--http-threads", http_limits.threads,
                 "handler threads of the HTTP listener (REST and peer routes)")
      ->capture_default_str()
      ->check(CLI::Range(4, 1024));
  app.add_option("--http-max-queued", http_limits.max_queued,
                 "accepted HTTP connections that may wait for a thread (beyond: the listener "
                 "stops accepting)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-body-bytes", http_limits.max_body,
                 "largest HTTP request body (except migration streams), refused 413 before it "
                 "is read")
      ->capture_default_str()
      ->check(CLI::Range(1024, 1 << 30));
  app.add_option("--data-max-connections", data_opts.max_connections,
                 "streams the data channel serves at once (more are refused busy)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  // restartPolicy FromCheckpoint (issue 13): this node keeps other nodes'
  // periodic checkpoints and takes its own workloads' (cluster mode).
  std::string checkpoint_dir;
  uint64_t checkpoint_max_mib = 0;
  app.add_option("--checkpoint-dir", checkpoint_dir,
                 "where this node keeps the latest periodic checkpoint of workloads other nodes "
                 "own (restartPolicy FromCheckpoint; default <state-dir>/checkpoints; made 0700)");
  app.add_option("--checkpoint-max-mib", checkpoint_max_mib,
                 "largest checkpoint this node keeps for another, MiB (0: no ceiling but the "
                 "free space of --checkpoint-dir, of which 256 MiB are always left)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  opts.intake.prefault_budget_bytes = prefault_budget_mib << 20;
  opts.intake.retry_after = std::chrono::seconds(retry_after);
  opts.busy_wait = std::chrono::milliseconds(static_cast<int64_t>(busy_wait * 1000));
  http_limits.stream_max_body = opts.intake.ceiling.bytes > 0
                                    ? opts.intake.ceiling.bytes + (uint64_t{1} << 30)
                                    : std::numeric_limits<uint64_t>::max() / 2;
  if (http_limits.threads < static_cast<size_t>(opts.max_outgoing + opts.intake.max_incoming + 2)) {
    spdlog::critical(
        "--http-threads {} is too few: outgoing migrations hold one each and incoming ones "
        "need them (at least --max-outgoing + --max-incoming + 2)",
        http_limits.threads);
    return 2;
  }

  if (fence_after >= lease_ttl) {
    spdlog::critical(
        "--fence-after {} s must be below --lease-ttl {} s: the workloads must be frozen before "
        "the lease can expire and the controller restart them elsewhere",
        fence_after, lease_ttl);
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [" + opts.node + "] %v");
  std::string host;
  int port = 0;
  if (!kmosix::rest::SplitHostPort(listen, host, port)) {
    spdlog::critical("--listen must be host:port, got \"{}\"", listen);
    return 2;
  }
  if (auto s = kmosix::ValidateName(opts.node); !s.ok()) {
    spdlog::critical("--node: {}", s.message());
    return 2;
  }
  if (ctd.socket_path.empty() || ctd.socket_path.front() != '/') {
    spdlog::critical("--containerd-socket must be an absolute path");
    return 2;
  }
  if (insecure && (!tls_files.ca.empty() || !tls_files.cert.empty() || !tls_files.key.empty() ||
                   !token_file.empty())) {
    spdlog::critical("--insecure contradicts --tls-* and --token-file; give one or the other");
    return 2;
  }
  if (!insecure && !tls_files.Complete()) {
    spdlog::critical(
        "TLS is on by default: give --tls-ca, --tls-cert and --tls-key (PEM; the certificate's CN "
        "is this node's name) or --insecure to serve plain HTTP to anyone");
    return 2;
  }
  if (opts.advertise_url.empty()) opts.advertise_url = (insecure ? "http://" : "https://") + listen;
  // Everything the agent writes is its own (0600 files, 0700 directories).
  ::umask(077);
  if (opts.scratch_dir.empty()) opts.scratch_dir = "/run/kmosix/" + opts.node + "/scratch";
  if (!opts.scratch_dir.empty() && opts.scratch_dir.front() != '/') {
    opts.scratch_dir = std::filesystem::absolute(opts.scratch_dir).string();
  }
  if (auto s = kmosix::MakePrivateDir(opts.scratch_dir); !s.ok()) {
    spdlog::critical("--scratch-dir: {}", s.ToString());
    return 2;
  }
  opts.idle_timeout = std::chrono::milliseconds(static_cast<int64_t>(idle_timeout * 1000));
  opts.resolve_timeout = std::chrono::milliseconds(static_cast<int64_t>(resolve_timeout * 1000));
  opts.history = std::chrono::seconds(static_cast<int64_t>(history_hours * 3600));
  ctd.node_name = opts.node;

  kmosix::SystemCommandRunner command_runner;
  kmosix::SystemClock clock;
  // CRIU readiness (before the cluster link starts, so the first node record
  // already says whether this node can take migrations).
  kmosix::agent::CriuProbeOptions criu_options;
  criu_options.mode = *kmosix::agent::ParseCriuCheckMode(criu_check);  // checked by CLI11
  criu_options.criu_path = ctd.criu_path;
  criu_options.containerd_socket = ctd.socket_path;
  kmosix::agent::CommandCriuProbe criu_probe(criu_options, command_runner);
  kmosix::agent::CriuReadiness criu_readiness(criu_probe, clock);
  if (criu_options.mode != kmosix::agent::CriuCheckMode::kOff) {
    criu_readiness.Check();
  } else {
    spdlog::warn("--criu-check off: this node is offered for migrations without asking CRIU");
  }
  std::unique_ptr<kmosix::WorkloadNetwork> network;
  if (workload_network == "isolated") {
    wn_config.node = opts.node;
    wn_config.lease_file = opts.state_dir + "/workload-network.json";
    std::error_code ec;
    std::filesystem::create_directories(opts.state_dir, ec);
    auto made = kmosix::WorkloadNetwork::Create(wn_config, command_runner);
    if (!made.ok()) {
      spdlog::critical("--workload-network isolated: {}", made.status().ToString());
      return 2;
    }
    network = std::move(*made);
    ctd.network = network.get();
  } else {
    spdlog::warn(
        "!!! --workload-network=host: workloads share this node's network namespace, can reach "
        "every port it listens on, loopback included (agent, etcd). For debugging only "
        "!!!");
  }

  kmosix::SystemRandom random;
  kmosix::ContainerdRuntime runtime(ctd);
  engine_opts.prefault_max_bytes = prefault_max_mib << 20;
  kmosix::StopAndCopyEngine stop_and_copy(runtime, clock, engine_opts);
  kmosix::agent::Failpoints failpoints;
  if (enable_failpoints) {
    opts.phase_entered = [&failpoints, &clock](const kmosix::MigrationReport& r) {
      failpoints.HoldAtPhase(r, clock);
    };
  }
  kmosix::agent::FailpointEngine failpoint_engine(stop_and_copy, failpoints);
  kmosix::CheckpointEngine& engine = enable_failpoints
                                         ? static_cast<kmosix::CheckpointEngine&>(failpoint_engine)
                                         : static_cast<kmosix::CheckpointEngine&>(stop_and_copy);
  std::unique_ptr<kmosix::tls::ServerCredentials> tls_creds;
  std::unique_ptr<kmosix::auth::Authenticator> tokens;
  if (!insecure) {
    auto loaded = kmosix::tls::ServerCredentials::Load(tls_files, clock);
    if (!loaded.ok()) {
      spdlog::critical("--tls-*: {}", loaded.status().ToString());
      return 2;
    }
    tls_creds = std::move(*loaded);
    if (tls_creds->Name() != opts.node) {
      spdlog::critical("--tls-cert names \"{}\", not this node ({}): peers would refuse it",
                       tls_creds->Name(), opts.node);
      return 2;
    }
    if (!token_file.empty()) {
      auto t = kmosix::auth::Authenticator::Load(token_file, clock);
      if (!t.ok()) {
        spdlog::critical("--token-file: {}", t.status().ToString());
        return 2;
      }
      tokens = std::move(*t);
    }
  } else {
    spdlog::warn(
        "!!! --insecure: plain HTTP, no authentication: anyone who reaches {} can run code as "
        "root on this node. Debugging only !!!",
        listen);
  }
  kmosix::HttpTransportOptions transport_opts;
  transport_opts.tls = tls_files;
  if (enable_failpoints) {
    transport_opts.cut_after = [&failpoints]() -> uint64_t {
      return failpoints.Take("stream.cut") ? uint64_t{32} << 20 : 0;
    };
    transport_opts.on_stream_written = [&failpoints, &clock](uint64_t written) {
      failpoints.HoldStream(written, clock);
    };
  }
  kmosix::HttpTransport http_transport(transport_opts, &clock);
  kmosix::agent::FailpointTransport failpoint_transport(http_transport, failpoints, clock);
  kmosix::Transport& transport = enable_failpoints
                                     ? static_cast<kmosix::Transport&>(failpoint_transport)
                                     : static_cast<kmosix::Transport&>(http_transport);
  kmosix::agent::AgentMetrics metrics(opts.node);
  kmosix::agent::Agent agent(opts, runtime, engine, transport, clock, random, &metrics);

  // Cluster mode: the link is built (and its hooks installed) before the
  // agent starts, so recovery already consults the cluster.
  std::unique_ptr<kmosix::EtcdStateStore> store;
  std::unique_ptr<kmosix::agent::LoadSampler> sampler;
  std::unique_ptr<kmosix::agent::ClusterLink> link;
  std::unique_ptr<kmosix::CheckpointStore> checkpoint_store;
  std::unique_ptr<kmosix::agent::CheckpointKeeper> keeper;
  if (!etcd.empty()) {
    auto etcd_flags = kmosix::EtcdConfigFromFlags(etcd, etcd_ca, etcd_cert, etcd_key);
    if (!etcd_flags.ok()) {
      spdlog::critical("--etcd: {}", etcd_flags.status().ToString());
      return 2;
    }
    kmosix::EtcdConfig etcd_config = *etcd_flags;
    if (etcd_prefix.empty() || etcd_prefix.front() != '/') etcd_prefix = "/" + etcd_prefix;
    if (etcd_prefix.back() != '/') etcd_prefix += '/';
    if (load_source == "cgroup") {
      if (cpu_capacity <= 0) {
        spdlog::critical("--load-source cgroup needs --cpu-capacity");
        return 2;
      }
      kmosix::agent::CgroupSamplerOptions so;
      so.cgroup_parent = ctd.cgroup_parent;
      so.cpu_capacity = cpu_capacity;
      so.memory_capacity_bytes = memory_capacity_mib > 0
                                     ? static_cast<uint64_t>(memory_capacity_mib) << 20
                                     : MemTotalBytes();
      auto made = kmosix::agent::CgroupLoadSampler::Create(so, clock);
      if (!made.ok()) {
        spdlog::critical("load sampler: {}", made.status().ToString());
        return 2;
      }
      sampler = std::move(*made);
    } else {
      kmosix::agent::HostSamplerOptions so;
      so.cgroup_parent = ctd.cgroup_parent;
      if (cpu_capacity > 0) so.cpu_capacity = cpu_capacity;
      auto made = kmosix::agent::HostLoadSampler::Create(so, clock);
      if (!made.ok()) {
        spdlog::critical("load sampler: {}", made.status().ToString());
        return 2;
      }
      sampler = std::move(*made);
    }
    store = std::make_unique<kmosix::EtcdStateStore>(etcd_config);
    kmosix::agent::ClusterLinkOptions lo;
    lo.node = opts.node;
    lo.url = opts.advertise_url;
    lo.keys.prefix = etcd_prefix;
    lo.lease_ttl = std::chrono::seconds(lease_ttl);
    lo.fence_after = std::chrono::milliseconds(static_cast<int64_t>(fence_after * 1000));
    lo.speed = speed;
    lo.heartbeat = std::chrono::milliseconds(static_cast<int64_t>(heartbeat * 1000));
    lo.not_ready_reason = [&criu_readiness] { return criu_readiness.NotReadyReason(); };
    checkpoint_store = std::make_unique<kmosix::CheckpointStore>(
        checkpoint_dir.empty() ? opts.state_dir + "/checkpoints" : checkpoint_dir);
    if (auto s = checkpoint_store->Open(); !s.ok()) {
      spdlog::critical("--checkpoint-dir: {}", s.ToString());
      return 2;
    }
    kmosix::agent::CheckpointKeeperOptions ko;
    ko.node = opts.node;
    ko.keys = lo.keys;
    ko.scratch_dir = opts.scratch_dir + "/restores";
    ko.authenticated_peers = !insecure;
    ko.max_bytes = checkpoint_max_mib << 20;
    keeper = std::make_unique<kmosix::agent::CheckpointKeeper>(ko, *checkpoint_store, *store,
                                                               stop_and_copy, clock);
    lo.start_from_checkpoint = [&keeper, &agent](const kmosix::api::Workload& rec,
                                                 std::string* note) {
      return keeper->StartFromCheckpoint(agent, rec, note);
    };
    link = std::make_unique<kmosix::agent::ClusterLink>(lo, agent, *store, *sampler, clock, random);
    agent.SetClusterHooks(link->Hooks());
  }
  if (auto s = agent.Start(); !s.ok()) {
    spdlog::critical("cannot start: {}", s.ToString());
    return 1;
  }

  std::unique_ptr<httplib::Server> server_ptr;
  if (tls_creds) {
    server_ptr = std::make_unique<httplib::SSLServer>(
        [&](SSL_CTX& ctx) { return tls_creds->Configure(ctx, /*require_client_cert=*/false); });
  } else {
    server_ptr = std::make_unique<httplib::Server>();
  }
  httplib::Server& server = *server_ptr;
  kmosix::agent::RegisterApiRoutes(server, agent, metrics);
  auto http_stats = std::make_shared<kmosix::ListenerStats>();
  kmosix::ApplyListenerLimits(server, http_limits, http_stats);
  std::unique_ptr<kmosix::agent::CheckpointPeerAuthorizer> peer_authorizer;
  kmosix::agent::PeerAuthorizer* peers = link.get();
  std::unique_ptr<kmosix::agent::CheckpointRouter> router;
  kmosix::MigrationTarget* target = &agent.Target();
  if (keeper) {  // checkpoint ids go to the keeper, the rest to migrations
    peer_authorizer =
        std::make_unique<kmosix::agent::CheckpointPeerAuthorizer>(link.get(), *keeper);
    peers = peer_authorizer.get();
    router = std::make_unique<kmosix::agent::CheckpointRouter>(agent.Target(), *keeper);
    target = router.get();
  }
  kmosix::agent::AccessControl access(tokens.get(), peers);
  if (tls_creds) {
    kmosix::agent::InstallAccess(
        server, access,
        [&](const httplib::Request& req, httplib::Response& res) {
          return kmosix::CheckRequestBody(req, res, http_limits, *http_stats);
        },
        [&](const kmosix::agent::AccessDecision& d) { metrics.Denied(d.surface, d.reason); });
  }
  if (tls_creds) {
    // The data channel: mutual TLS with node certificates, and a stream only
    // from the node etcd names as the migration's source (standalone: any
    // node of the CA), asked before a byte reaches the target.
    data_opts.tls = tls_creds.get();
    data_opts.authorize = [peers](const kmosix::tls::Identity& peer, const std::string& id) {
      if (!peer.In(kmosix::tls::kGroupNodes))
        return kmosix::PermissionDeniedError("\"" + peer.name + "\" is not a node certificate");
      return peers ? peers->AllowPeer(peer.name, id) : kmosix::Status::Ok();
    };
    data_opts.on_denied = [&metrics](const std::string& reason) { metrics.Denied("data", reason); };
  }
  kmosix::DataServer data_server(*target, clock, data_opts);
  metrics.SetIntakeSources({[&agent] { return agent.Intake().Snapshot(); }, opts.intake, http_stats,
                            data_opts.max_connections,
                            [&data_server] { return data_server.active_connections(); },
                            [&data_server] { return data_server.refused_connections(); },
                            [&data_server] { return data_server.handshake_failures(); }});
  if (data_port < 0) data_port = port < 65535 ? port + 1 : 0;
  if (data_port > 0) {
    if (auto s = data_server.Start(host, data_port); !s.ok()) {
      spdlog::critical("{}", s.ToString());
      return 1;
    }
  }
  kmosix::PeerServerOptions peer_options;
  peer_options.clock = &clock;
  peer_options.data_port = data_port;
  kmosix::RegisterPeerRoutes(server, *target, peer_options);
  if (enable_failpoints) {
    spdlog::warn("failpoints enabled: this agent accepts fault injection");
    kmosix::agent::RegisterFailpointRoutes(server, failpoints);
  }
  if (!server.bind_to_port(host, port)) {
    spdlog::critical("cannot listen on {}", listen);
    return 1;
  }

  std::signal(SIGTERM, [](int) { g_stop = true; });
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGPIPE, SIG_IGN);
  std::thread upkeep([&] {
    while (!g_stop) {
      agent.Tick();
      criu_readiness.Tick();
      for (int i = 0; i < 10 && !g_stop; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    server.stop();
  });
  if (link) link->Start();
  std::unique_ptr<kmosix::agent::CheckpointMetrics> checkpoint_metrics;
  std::unique_ptr<kmosix::agent::Checkpointer> checkpointer;
  if (link && keeper) {
    checkpoint_metrics = std::make_unique<kmosix::agent::CheckpointMetrics>(metrics.Registry());
    kmosix::agent::CheckpointerOptions co;
    co.node = opts.node;
    co.url = opts.advertise_url;
    co.keys.prefix = etcd_prefix;
    co.scratch_dir = opts.scratch_dir + "/checkpoints";
    co.fenced = [&link] { return link->Fenced(); };
    checkpointer = std::make_unique<kmosix::agent::Checkpointer>(
        co, agent, runtime, transport, *store, clock, random, checkpoint_metrics.get());
    auto last_collect = std::make_shared<kmosix::Clock::TimePoint>(clock.Now());
    checkpointer->Start([&keeper, &clock, last_collect] {
      keeper->ExpireIdle();
      if (clock.Now() - *last_collect >= std::chrono::seconds(30)) {
        *last_collect = clock.Now();
        keeper->Collect();
      }
    });
  }
  spdlog::info("agent {} serving on {} (advertised as {}), data channel on port {}{}", opts.node,
               listen, opts.advertise_url, data_port,
               link ? ", cluster at " + etcd + " under " + etcd_prefix : ", standalone");
  server.listen_after_bind();
  g_stop = true;
  upkeep.join();
  if (checkpointer) checkpointer->Stop();
  if (link) link->Stop();
  data_server.Stop();
  spdlog::info("agent {} stopped", opts.node);
  return 0;
}
