// kmosix-controller: wires the store, the controller and its REST API, served
// over TLS (--tls-cert/--tls-key) with bearer tokens (--token-file) unless
// --no-tls / --no-auth say otherwise; without either it refuses to start
// (exit 2).
#include <httplib.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <sstream>
#include <thread>

#include "auth/tokens.h"
#include "controller/api.h"
#include "controller/controller.h"
#include "controller/kube/bridge.h"
#include "controller/kube/node_signer.h"
#include "controller/metrics.h"
#include "etcd/etcd_access_grants.h"
#include "etcd/etcd_state_store.h"
#include "kmosix/clock.h"
#include "kube/config.h"
#include "kube/http_client.h"
#include "transport_http/rest.h"

namespace {

std::atomic<bool> g_stop{false};  // set by SIGTERM/SIGINT only

std::string DefaultIdentity() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(getpid());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kmosix-controller: balances the cluster and serves the scheduler REST API"};
  kmosix::controller::ControllerOptions opts;
  std::string etcd = "http://127.0.0.1:2379";
  std::string listen = "127.0.0.1:7800";
  std::string log_level = "info";
  int lease_ttl = 5;
  double balance_interval = 2, min_residency = 30, order_timeout = 60, lost_grace = 5;
  bool no_balance = false;
  std::string token_file, tls_cert, tls_key;
  bool no_auth = false, no_tls = false;
  std::string kubeconfig, kube_context;
  bool kube_in_cluster = false;
  size_t kube_keep_migrations = 10;
  std::string signer_cert, signer_key;
  kmosix::bridge::NodeSignerOptions signer_opts;
  int64_t signer_lifetime = signer_opts.max_lifetime.count();
  app.add_option("--etcd", etcd, "etcd endpoints, comma-separated")->capture_default_str();
  app.add_option("--etcd-prefix", opts.keys.prefix, "key prefix of the cluster's state")
      ->capture_default_str();
  std::string etcd_ca, etcd_cert, etcd_key;
  app.add_option("--etcd-ca", etcd_ca, "CA file for https:// etcd endpoints (re-read on change)");
  app.add_option("--etcd-cert", etcd_cert,
                 "the controller's client certificate for etcd (re-read on change)");
  app.add_option("--etcd-key", etcd_key, "the key of --etcd-cert (re-read on change)");
  std::string node_grants = "auto";
  double grant_grace = 3;
  app.add_option("--etcd-node-grants", node_grants,
                 "keep each node's etcd role's write grants as narrow as the records say (the "
                 "workloads it owns or moves, the migrations it runs; needs etcd's root role): "
                 "on, off, or auto = on with an etcd client certificate (--etcd-cert)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--etcd-node-role-prefix", opts.node_role_prefix,
                 "the etcd role of node N is this prefix + N (default: the node's name)");
  app.add_option("--etcd-grant-grace", grant_grace,
                 "seconds a node keeps a write grant it no longer needs (covers records "
                 "written right after their grant)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--listen", listen, "address:port of the REST API")->capture_default_str();
  app.add_option("--id", opts.identity, "this replica's name in the election (default host:pid)");
  app.add_option("--lease-ttl", lease_ttl, "seconds a dead leader keeps the lead")
      ->capture_default_str()
      ->check(CLI::Range(2, 300));
  app.add_option("--balance-interval", balance_interval, "seconds between balancing rounds")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  app.add_flag("--no-balance", no_balance, "place workloads but never move them automatically");
  app.add_option("--stability", opts.policy.stability,
                 "hysteresis: move only when L_target + stability * l_c < L_source")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 10.0));
  app.add_option("--min-residency", min_residency,
                 "seconds a workload stays on a node before it may move again")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--max-migrations", opts.policy.max_cluster,
                 "automatic migrations in flight in the whole cluster")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--max-per-node", opts.policy.max_per_node,
                 "automatic migrations in flight per node (as source or target)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--bandwidth-mib", opts.policy.bandwidth_bytes_per_s,
                 "assumed migration bandwidth (MiB/s), for the age-versus-cost rule")
      ->check(CLI::Range(1.0, 1e6));
  app.add_option("--order-timeout", order_timeout,
                 "seconds before an order its source never picked up is Failed")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 86400.0));
  app.add_option("--source-lost-grace", lost_grace,
                 "seconds a migration's source may be NotReady before the controller ends it")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--token-file", token_file,
                 "bearer tokens, CSV lines TOKEN,ROLE,NAME (ROLE admin or read-only); re-read "
                 "when it changes. Required unless --no-auth");
  app.add_flag("--no-auth", no_auth,
               "serve the API without tokens (anyone may change the cluster)");
  app.add_option("--tls-cert", tls_cert,
                 "PEM certificate (chain) of the API. Required unless --no-tls");
  app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert. Required unless --no-tls");
  app.add_flag("--no-tls", no_tls, "serve the API over plain HTTP");
  std::string node_ca;
  app.add_option("--node-ca", node_ca,
                 "the CA of the agents' certificates: the controller reaches https:// agents with "
                 "its --tls-cert/--tls-key as client identity (O=kmosix:controllers)");
  app.add_option("--kubeconfig", kubeconfig,
                 "mirror kmosix.io objects (MigratableWorkload, Migration, MigrationPolicy) of "
                 "the Kubernetes API server this kubeconfig names");
  app.add_option("--kube-context", kube_context, "context of --kubeconfig (default: current)");
  app.add_flag("--kube-in-cluster", kube_in_cluster,
               "mirror kmosix.io objects, reaching the API server with the pod's service account");
  app.add_option("--kube-keep-migrations", kube_keep_migrations,
                 "finished Migration objects kept per MigratableWorkload")
      ->capture_default_str();
  app.add_option("--node-signer-cert", signer_cert,
                 "be the kmosix.io/node signer of pod certificates (the agents' identities): "
                 "the issuing CA's certificate (chain), PEM; needs the Kubernetes client "
                 "(--kubeconfig or --kube-in-cluster) and --node-signer-namespace");
  app.add_option("--node-signer-key", signer_key,
                 "the key of --node-signer-cert (both re-read on change)");
  app.add_option("--node-signer-namespace", signer_opts.agent_namespace,
                 "the namespace of the agents' pods: the only one the signer issues for");
  app.add_option("--node-signer-service-account", signer_opts.agent_service_account,
                 "the agents' ServiceAccount: the only one the signer issues for")
      ->default_val("kmosix-agent")
      ->capture_default_str();
  app.add_option("--node-signer-lifetime", signer_lifetime,
                 "seconds an agent certificate is valid at most (refreshed at half)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{3600}, int64_t{7862400}));
  size_t keep_finished = opts.retention.keep_finished;
  int64_t finished_ttl = 7 * 24 * 3600, compact_interval = 300, compact_retain = 3600;
  app.add_option("--keep-finished-migrations", keep_finished,
                 "finished migration records kept in etcd per workload, the oldest removed "
                 "first (0: no limit by count); the newest of a workload always stays")
      ->capture_default_str();
  app.add_option("--finished-migration-ttl", finished_ttl,
                 "seconds a finished migration record is kept in etcd (0: no limit by age); "
                 "the newest of a workload always stays")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{10} * 365 * 86400));
  app.add_option("--etcd-compact-interval", compact_interval,
                 "seconds between compactions of etcd's history by the leader (0: never; "
                 "e.g. when etcd runs with --auto-compaction-retention)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{86400}));
  app.add_option("--etcd-compact-retain", compact_retain,
                 "seconds of etcd history kept by those compactions (watchers further behind "
                 "relist)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{60}, int64_t{30} * 86400));
  double node_loss_delay = 15, lease_ttl_assumed = 5, agent_fence_after = 4;
  app.add_option("--node-loss-restart-delay", node_loss_delay,
                 "seconds a node must be NotReady before its Lost workloads with restartPolicy "
                 "FromImage or FromCheckpoint are placed on another node. Rule: it must exceed "
                 "--lease-ttl-assumed + --agent-fence-after, so the lost node's agent has "
                 "frozen them first (the controller refuses to start otherwise)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--lease-ttl-assumed", lease_ttl_assumed,
                 "the agents' node lease TTL in seconds (their --lease-ttl), for the rule above")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--agent-fence-after", agent_fence_after,
                 "the agents' --fence-after in seconds (an agent that has not renewed its lease "
                 "for this long freezes its workloads), for the rule above")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);

  if (opts.identity.empty()) opts.identity = DefaultIdentity();
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [controller " + opts.identity + "] %v");
  std::string host;
  int port = 0;
  if (!kmosix::rest::SplitHostPort(listen, host, port)) {
    spdlog::critical("--listen must be host:port, got \"{}\"", listen);
    return 2;
  }
  if (opts.keys.prefix.empty() || opts.keys.prefix.back() != '/') {
    spdlog::critical("--etcd-prefix must end with '/'");
    return 2;
  }
  {
    auto to_ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
    opts.node_loss_restart_delay = to_ms(node_loss_delay);
    opts.lease_ttl_assumed = to_ms(lease_ttl_assumed);
    opts.agent_fence_after = to_ms(agent_fence_after);
    kmosix::Status timing = kmosix::controller::CheckNodeLossTiming(
        opts.node_loss_restart_delay, opts.lease_ttl_assumed, opts.agent_fence_after);
    if (!timing.ok()) {
      spdlog::critical("{}", timing.message());
      return 2;
    }
  }
  auto etcd_flags = kmosix::EtcdConfigFromFlags(etcd, etcd_ca, etcd_cert, etcd_key);
  if (!etcd_flags.ok()) {
    spdlog::critical("--etcd: {}", etcd_flags.status().ToString());
    return 2;
  }
  kmosix::EtcdConfig etcd_config = *etcd_flags;
  // Secure by default: authentication and TLS are on unless explicitly declined.
  if (no_auth && !token_file.empty()) {
    spdlog::critical("--no-auth and --token-file contradict each other; give one");
    return 2;
  }
  if (!no_auth && token_file.empty()) {
    spdlog::critical(
        "authentication is on by default: give --token-file PATH (CSV lines TOKEN,ROLE,NAME) or "
        "--no-auth to serve the API without it");
    return 2;
  }
  if (no_tls && (!tls_cert.empty() || !tls_key.empty())) {
    spdlog::critical("--no-tls and --tls-cert/--tls-key contradict each other; give one");
    return 2;
  }
  if (!no_tls && (tls_cert.empty() || tls_key.empty())) {
    spdlog::critical(
        "TLS is on by default: give --tls-cert PATH and --tls-key PATH (PEM) or --no-tls to serve "
        "plain HTTP");
    return 2;
  }
  for (const std::string* f : {&tls_cert, &tls_key}) {
    if (!f->empty() && ::access(f->c_str(), R_OK) != 0) {
      spdlog::critical("cannot read {}: {}", *f, std::strerror(errno));
      return 2;
    }
  }
  const bool signer = !signer_cert.empty() || !signer_key.empty();
  if (signer) {
    if (signer_cert.empty() || signer_key.empty()) {
      spdlog::critical("--node-signer-cert and --node-signer-key go together");
      return 2;
    }
    if (kubeconfig.empty() && !kube_in_cluster) {
      spdlog::critical("--node-signer-cert needs --kubeconfig or --kube-in-cluster");
      return 2;
    }
    if (signer_opts.agent_namespace.empty()) {
      spdlog::critical("--node-signer-cert needs --node-signer-namespace (the agents' namespace)");
      return 2;
    }
  }
  signer_opts.max_lifetime = std::chrono::seconds(signer_lifetime);
  kmosix::SystemClock clock;
  std::unique_ptr<kmosix::tls::Issuer> issuer;
  if (signer) {
    auto loaded = kmosix::tls::Issuer::Load(signer_cert, signer_key);
    if (!loaded.ok()) {
      spdlog::critical("--node-signer-cert/--node-signer-key: {}", loaded.status().ToString());
      return 2;
    }
    issuer = std::move(loaded).value();
  }
  std::unique_ptr<kmosix::auth::Authenticator> auth;
  if (!no_auth) {
    auto loaded = kmosix::auth::Authenticator::Load(token_file, clock);
    if (!loaded.ok()) {
      spdlog::critical("--token-file: {}", loaded.status().message());
      return 2;
    }
    auth = std::move(loaded).value();
  } else {
    spdlog::warn("--no-auth: the API is open; anyone who can reach {} can change the cluster",
                 listen);
  }
  std::unique_ptr<httplib::Server> server;
  if (!no_tls) {
    auto tls = std::make_unique<httplib::SSLServer>(tls_cert.c_str(), tls_key.c_str());
    if (!tls->is_valid()) {
      spdlog::critical(
          "cannot use --tls-cert {} / --tls-key {} (not PEM, or the key does not match the "
          "certificate)",
          tls_cert, tls_key);
      return 2;
    }
    server = std::move(tls);
  } else {
    spdlog::warn("--no-tls: the API{} travels in plain HTTP",
                 no_auth ? "" : " (bearer tokens too)");
    server = std::make_unique<httplib::Server>();
  }

  if (app.count("--bandwidth-mib")) opts.policy.bandwidth_bytes_per_s *= 1024.0 * 1024.0;
  opts.leader_ttl = std::chrono::seconds(lease_ttl);
  opts.balance = !no_balance;
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  opts.balance_interval = ms(balance_interval);
  opts.policy.min_residency_ms = static_cast<int64_t>(min_residency * 1000);
  opts.order_timeout = ms(order_timeout);
  opts.source_lost_grace = ms(lost_grace);
  opts.grant_revoke_grace = ms(grant_grace);
  opts.retention.keep_finished = keep_finished;
  opts.retention.finished_ttl = std::chrono::seconds(finished_ttl);
  opts.compaction.interval = std::chrono::seconds(compact_interval);
  opts.compaction.retain = std::chrono::seconds(compact_retain);

  kmosix::SystemRandom random;
  kmosix::EtcdStateStore store(etcd_config);
  kmosix::controller::ControllerMetrics metrics(opts.identity);
  // etcd node grants (issue 11): an insecure etcd has no auth to narrow.
  // Declared before the controller, which borrows it.
  std::unique_ptr<kmosix::EtcdAccessGrants> access_grants;
  kmosix::controller::Controller controller(store, clock, random, opts, &metrics);
  if (node_grants == "on" || (node_grants == "auto" && !etcd_cert.empty())) {
    access_grants = std::make_unique<kmosix::EtcdAccessGrants>(etcd_config);
    controller.SetAccessGrants(access_grants.get());
    spdlog::info("etcd node grants on: node roles {}<node> get write grants per record",
                 opts.node_role_prefix);
  } else {
    spdlog::info("etcd node grants off ({})",
                 node_grants == "off" ? "--etcd-node-grants=off" : "no etcd client certificate");
  }

  // The Kubernetes face: kmosix.io objects mirrored into the cluster's state.
  std::unique_ptr<kmosix::kube::Client> kube_client;
  std::unique_ptr<kmosix::bridge::Bridge> bridge;
  std::unique_ptr<kmosix::bridge::NodeSigner> node_signer;
  if (!kubeconfig.empty() || kube_in_cluster) {
    auto config = kube_in_cluster ? kmosix::kube::InClusterConfig()
                                  : kmosix::kube::LoadKubeconfig(kubeconfig, kube_context);
    if (!config.ok()) {
      spdlog::critical("{}: {}", kube_in_cluster ? "--kube-in-cluster" : "--kubeconfig",
                       config.status().message());
      return 2;
    }
    auto client = kmosix::kube::HttpClient::New(*config, clock);
    if (!client.ok()) {
      spdlog::critical("Kubernetes client: {}", client.status().message());
      return 2;
    }
    kube_client = std::move(client).value();
    kmosix::bridge::BridgeOptions bo;
    bo.keep_finished = kube_keep_migrations;
    bo.identity = opts.identity;
    bridge = std::make_unique<kmosix::bridge::Bridge>(*kube_client, controller, clock, random, bo);
    bridge->Start();
    spdlog::info("mirroring kmosix.io objects of {}", config->server);
    if (issuer) {
      if (access_grants) {
        // Each node's etcd user and role, made when its identity is signed
        // (access_grants is declared before node_signer: it outlives it).
        signer_opts.access_grants = access_grants.get();
        signer_opts.etcd_prefix = opts.keys.prefix;
        signer_opts.node_role_prefix = opts.node_role_prefix;
      }
      node_signer = std::make_unique<kmosix::bridge::NodeSigner>(
          *kube_client, *issuer, clock, random,
          [&controller] { return controller.IsLeader() && controller.Ready(); }, signer_opts);
      node_signer->Start();
      spdlog::info("signing {} pod certificates for {}/{} (at most {} s)", signer_opts.signer_name,
                   signer_opts.agent_namespace, signer_opts.agent_service_account,
                   signer_opts.max_lifetime.count());
      if (access_grants)
        spdlog::info("node signer makes each node's etcd user <node> with role {}<node>",
                     signer_opts.node_role_prefix);
    }
  }

  kmosix::tls::Files agents_tls;
  if (!node_ca.empty()) agents_tls = {node_ca, tls_cert, tls_key};
  kmosix::controller::RegisterControllerRoutes(*server, controller, metrics, agents_tls);
  if (auth) kmosix::auth::InstallAuth(*server, *auth);
  if (!server->bind_to_port(host, port)) {
    spdlog::critical("cannot listen on {}", listen);
    return 1;
  }
  std::signal(SIGTERM, [](int) { g_stop = true; });
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGPIPE, SIG_IGN);
  controller.Start();
  std::thread watchdog([&] {
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server->stop();
  });
  spdlog::info("controller {} serving on {}://{} ({}), etcd {}, prefix {}", opts.identity,
               no_tls ? "http" : "https", listen, no_auth ? "no auth" : "bearer tokens", etcd,
               opts.keys.prefix);
  server->listen_after_bind();
  g_stop = true;
  watchdog.join();
  if (node_signer) node_signer->Stop();
  if (bridge) bridge->Stop();
  controller.Stop();
  spdlog::info("controller {} stopped", opts.identity);
  return 0;
}
