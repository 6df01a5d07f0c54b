// kmosixctl: the command-line client of the kmosix controller's REST API.
// Parses the command line (CLI11), resolves the connection settings
// (config.h), builds the HTTP transport and runs one command (commands.h,
// top.h). Exit codes: see client.h (and the --help footer).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "kmosix/clock.h"
#include "kmosixctl/client.h"
#include "kmosixctl/commands.h"
#include "kmosixctl/config.h"
#include "kmosixctl/top.h"

namespace {

using namespace kmosix::ctl;

constexpr const char* kFooter =
    R"FOOTER(Connection settings (flag > environment > config file > default):
  --server/-s      KMOSIX_SERVER    server:  URL, or several comma-separated (replicas;
                                             the next is tried when one is unreachable)
  --token          KMOSIX_TOKEN     token:   bearer token (admin, or read-only for reads)
  --ca-file        KMOSIX_CA_FILE   caFile:  CA certificate (PEM) to verify https servers
  --config         KMOSIX_CONFIG    the YAML config file; default
                   $XDG_CONFIG_HOME/kmosix/config.yaml or ~/.config/kmosix/config.yaml
  default server: http://127.0.0.1:7800. For the local cluster: eval "$(scripts/cluster env)".

Exit codes: 0 ok, 1 other/server error, 2 usage, 3 not found, 4 conflict,
  5 unauthenticated or forbidden, 6 unreachable/TLS failure, 7 invalid request,
  8 a waited-for migration did not succeed (RolledBack/Failed).

Examples:
  kmosixctl nodes
  kmosixctl run demo1 kmosix.local/demo:latest -- /bin/kmosix-demo --mem 64
  kmosixctl migrate demo1 node2 --wait
  kmosixctl drain node1 --wait
  kmosixctl events --types migration
  kmosixctl top)FOOTER";

EnvMap ReadEnv() {
  EnvMap env;
  for (const char* k : {"KMOSIX_SERVER", "KMOSIX_TOKEN", "KMOSIX_CA_FILE", "KMOSIX_CONFIG",
                        "XDG_CONFIG_HOME", "HOME"}) {
    if (const char* v = std::getenv(k)) env[k] = v;
  }
  return env;
}

// Reads the config file if there is one; nullopt when there is none.
// Returns false (message in *error) when it cannot be used.
bool LoadConfigFile(const ConfigFileLocation& where, std::optional<FileConfig>* out,
                    std::string* error) {
  if (where.path.empty()) return true;
  std::ifstream in(where.path);
  if (!in) {
    if (!where.required) return true;
    *error = "config file " + where.path + ": cannot read it";
    return false;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = ParseConfigFile(text.str(), where.path);
  if (!parsed.ok()) {
    *error = parsed.status().message();
    return false;
  }
  *out = *parsed;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // A TLS peer that closed first (an early 401/403) makes the close_notify
  // write fail with EPIPE; a closed stdout (| head) is noticed by the writers.
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "kmosixctl: the command line of kmosix, the cluster that live-migrates running containers\n"
      "(openMosix for containers). Talks to the controller's REST API."};
  app.name("kmosixctl");
  app.require_subcommand(1, 1);
  app.fallthrough();
  app.set_version_flag("--version", std::string("kmosixctl 0.1.0"));

  ConfigFlags flags;
  std::string output = "table";
  double timeout_s = 10;
  app.add_option("-s,--server", flags.server,
                 "controller URL(s), comma-separated, e.g. https://10.77.0.1:7800");
  app.add_option("--token", flags.token, "bearer token for the API");
  app.add_option("--ca-file", flags.ca_file, "CA certificate (PEM) to verify the server with");
  app.add_flag("--insecure-skip-tls-verify", flags.insecure_skip_tls_verify,
               "do not verify the server's certificate (testing only)");
  app.add_option("--config", flags.config, "config file (YAML: server, token, caFile)");
  app.add_option("-o,--output", output, "output format: table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));
  app.add_option("--timeout", timeout_s, "seconds to wait for each request (default 10)")
      ->check(CLI::PositiveNumber);

  // nodes
  std::string node_name;
  auto* nodes = app.add_subcommand("nodes", "List the nodes: load, CPU, memory, readiness");
  nodes->add_option("NAME", node_name, "show one node in detail");
  nodes->footer("LOAD is CPU in use / (cores x speed): 1.0 is a full node.");

  // ps
  std::string ps_node, ps_name;
  auto* ps = app.add_subcommand("ps", "List workloads: phase, node, CPU, memory, flags");
  ps->add_option("NAME", ps_name, "show one workload in detail");
  ps->add_option("--node", ps_node, "only the workloads on this node");

  // run
  RunRequest run_req;
  int64_t run_memory = 0;
  double run_cpus = 0;
  auto* run = app.add_subcommand("run", "Create a workload (the controller places it)");
  run->add_option("NAME", run_req.name, "workload name (DNS label)")->required();
  run->add_option("IMAGE", run_req.image, "image reference, e.g. kmosix.local/demo:latest")
      ->required();
  run->add_option("ARGS", run_req.args, "command and arguments, after --");
  run->add_option("-e,--env", run_req.env, "environment variable KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  auto* run_memory_opt =
      run->add_option("--memory", run_memory, "memory limit in MiB")->check(CLI::NonNegativeNumber);
  auto* run_cpus_opt =
      run->add_option("--cpus", run_cpus, "CPU limit in cores")->check(CLI::NonNegativeNumber);
  run->add_option("--node", run_req.node, "start it on this node");
  run->add_flag("--pinned", run_req.pinned, "never move it automatically (needs --node)");
  run->add_flag("--no-migrate", run_req.no_migrate, "never migrate it at all");
  run->add_option("--restart-policy", run_req.restart_policy,
                  "when its node is lost: Never (default; it stays Lost), FromImage (start it "
                  "again on another node), FromCheckpoint (restore it there from its latest "
                  "checkpoint; needs --checkpoint-interval)");
  int64_t run_checkpoint_interval = 0;
  auto* run_checkpoint_opt =
      run->add_option("--checkpoint-interval", run_checkpoint_interval,
                      "seconds between checkpoints to another node (10 to 86400; with "
                      "--restart-policy FromCheckpoint)");
  run->footer("Example: kmosixctl run demo1 kmosix.local/demo:latest -- /bin/kmosix-demo --mem 64");

  // rm
  std::vector<std::string> rm_names;
  auto* rm = app.add_subcommand("rm", "Delete workloads (their containers stop)");
  rm->add_option("NAME", rm_names, "workload names")->required();

  // logs
  std::string logs_name;
  LogsOptions logs_opts;
  auto* logs = app.add_subcommand("logs", "Print a workload's output (from its node's agent)");
  logs->add_option("NAME", logs_name, "workload name")->required();
  logs->add_flag("-f,--follow", logs_opts.follow,
                 "keep polling and print new output (Ctrl-C stops)");

  // migrate
  std::string mig_workload, mig_target;
  WaitOptions mig_wait;
  double mig_timeout = 300;
  auto* migrate = app.add_subcommand(
      "migrate", "Live-migrate a workload to NODE (or to the least loaded other node)");
  migrate->add_option("WORKLOAD", mig_workload, "workload name")->required();
  migrate->add_option("NODE", mig_target, "target node (default: the balancer picks)");
  migrate->add_flag("--wait", mig_wait.wait,
                    "follow its phases and print the outcome; exit 8 unless it Succeeded");
  migrate
      ->add_option("--timeout", mig_timeout, "with --wait: give up after S seconds (default 300)")
      ->check(CLI::PositiveNumber);

  // migrations
  std::string mig_id;
  auto* migrations = app.add_subcommand("migrations", "List migrations (or show one in detail)");
  migrations->add_option("ID", mig_id, "a migration id");

  // cancel
  std::string cancel_id;
  auto* cancel = app.add_subcommand(
      "cancel", "Cancel a migration before its commit point (the source rolls back)");
  cancel->add_option("ID", cancel_id, "migration id")->required();

  // drain, cordon, uncordon
  std::string drain_node;
  bool drain_pinned = false;
  WaitOptions drain_wait;
  double drain_timeout = 600;
  auto* drain = app.add_subcommand(
      "drain", "Cordon a node and migrate its workloads away (prints what did not move)");
  drain->add_option("NODE", drain_node, "node name")->required();
  drain->add_flag("--include-pinned", drain_pinned, "move pinned workloads too");
  drain->add_flag("--wait", drain_wait.wait,
                  "wait for the migrations to end; exit 8 if any did not succeed");
  drain
      ->add_option("--timeout", drain_timeout, "with --wait: give up after S seconds (default 600)")
      ->check(CLI::PositiveNumber);
  std::string cordon_node;
  auto* cordon =
      app.add_subcommand("cordon", "Mark a node as taking no new workloads or migrations");
  cordon->add_option("NODE", cordon_node, "node name")->required();
  auto* uncordon = app.add_subcommand("uncordon", "Let a cordoned node take workloads again");
  uncordon->add_option("NODE", cordon_node, "node name")->required();

  // pin, unpin
  std::string pin_name;
  auto* pin = app.add_subcommand("pin", "Keep a workload where it is (no automatic or API moves)");
  pin->add_option("NAME", pin_name, "workload name")->required();
  auto* unpin = app.add_subcommand("unpin", "Let the balancer move a pinned workload again");
  unpin->add_option("NAME", pin_name, "workload name")->required();

  // events
  EventsOptions ev_opts;
  int64_t ev_since = -1;
  auto* events = app.add_subcommand(
      "events", "Follow the cluster's events (placements, phases, migrations, node readiness)");
  events->add_option("--types", ev_opts.types,
                     "comma-separated type prefixes, e.g. migration,node.ready");
  events->add_option("--since", ev_since, "replay the events after this id first (0: all kept)")
      ->check(CLI::NonNegativeNumber);
  events->add_option("--limit", ev_opts.limit, "exit after N events")->check(CLI::PositiveNumber);
  events->footer(
      "One line per event: time, type, subject, phase/message. With -o json, each event's data "
      "as one JSON object per line.");

  auto* decisions = app.add_subcommand(
      "decisions", "What the balancer would do now, and why not more (a dry run)");
  auto* leader = app.add_subcommand("leader", "Which controller replica leads");

  // top
  TopOptions top_opts;
  bool top_plain = false, top_no_events = false;
  auto* top =
      app.add_subcommand("top", "Live view of node load, workloads and migrations (mosmon)");
  top->add_option("--interval", top_opts.interval_seconds, "seconds between refreshes (default 1)")
      ->check(CLI::Range(0.1, 3600.0));
  top->add_flag("--plain", top_plain, "print successive frames instead of redrawing in place");
  top->add_option("--iterations", top_opts.iterations, "stop after N frames")
      ->check(CLI::PositiveNumber);
  top->add_flag("--no-events", top_no_events, "do not follow the event stream");
  top->footer("Keys: q quits, space refreshes. Bars: capacity-normalised load, 1.0 = full node.");

  // Every command's help says where the connection options are (set before
  // the main footer, which subcommands would otherwise inherit whole).
  for (CLI::App* sub : app.get_subcommands({})) {
    std::string footer = sub->get_footer();
    if (!footer.empty()) footer += "\n\n";
    sub->footer(footer +
                "Global options, before or after the command: -s/--server URL[,URL...], --token,\n"
                "--ca-file, --insecure-skip-tls-verify, --config, -o table|json, --timeout S.\n"
                "Environment, config file and exit codes: kmosixctl --help.");
  }
  app.footer(kFooter);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const auto rest = app.remaining();
    if (app.get_subcommands().empty() && !rest.empty() && !rest.front().starts_with("-")) {
      std::cerr << "kmosixctl: unknown command \"" << rest.front() << "\" (see kmosixctl --help)\n";
      return kExitUsage;
    }
    app.exit(e);
    return kExitUsage;
  }
  if (run_memory_opt->count() > 0) run_req.memory_mib = run_memory;
  if (run_cpus_opt->count() > 0) run_req.cpus = run_cpus;
  if (run_checkpoint_opt->count() > 0)
    run_req.checkpoint_interval_seconds = run_checkpoint_interval;

  // Connection settings.
  const EnvMap env = ReadEnv();
  const ConfigFileLocation where = LocateConfigFile(flags, env);
  std::optional<FileConfig> file;
  std::string config_error;
  if (!LoadConfigFile(where, &file, &config_error)) {
    std::cerr << "kmosixctl: " << config_error << "\n";
    return kExitUsage;
  }
  auto config = ResolveConfig(flags, env, file, where.path);
  if (!config.ok()) {
    std::cerr << "kmosixctl: " << config.status().message() << "\n";
    return kExitUsage;
  }
  if (!config->ca_file.empty() && ::access(config->ca_file.c_str(), R_OK) != 0) {
    std::cerr << "kmosixctl: CA file " << config->ca_file << ": cannot read it\n";
    return kExitUsage;
  }
  TransportOptions topts;
  topts.token = config->token;
  topts.ca_file = config->ca_file;
  topts.insecure_skip_tls_verify = config->insecure_skip_tls_verify;
  topts.read_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  topts.connect_timeout = std::min(topts.read_timeout, std::chrono::milliseconds(3000));
  auto transport = MakeHttplibTransport(topts);
  ApiClient client(*transport, config->servers);
  kmosix::SystemClock clock;
  CommandContext ctx{.client = client,
                     .clock = clock,
                     .out = std::cout,
                     .err = std::cerr,
                     .format = output == "json" ? OutputFormat::kJson : OutputFormat::kTable};

  if (nodes->parsed()) return CmdNodes(ctx, node_name);
  if (ps->parsed()) {
    if (!ps_name.empty()) return CmdDescribeWorkload(ctx, ps_name);
    return CmdPs(ctx, ps_node);
  }
  if (run->parsed()) return CmdRun(ctx, run_req);
  if (rm->parsed()) return CmdRm(ctx, rm_names);
  if (logs->parsed()) return CmdLogs(ctx, logs_name, logs_opts);
  if (migrate->parsed()) {
    mig_wait.timeout = std::chrono::milliseconds(static_cast<int64_t>(mig_timeout * 1000));
    return CmdMigrate(ctx, mig_workload, mig_target, mig_wait);
  }
  if (migrations->parsed()) return CmdMigrations(ctx, mig_id);
  if (cancel->parsed()) return CmdCancel(ctx, cancel_id);
  if (drain->parsed()) {
    drain_wait.timeout = std::chrono::milliseconds(static_cast<int64_t>(drain_timeout * 1000));
    return CmdDrain(ctx, drain_node, drain_pinned, drain_wait);
  }
  if (cordon->parsed()) return CmdCordon(ctx, cordon_node, true);
  if (uncordon->parsed()) return CmdCordon(ctx, cordon_node, false);
  if (pin->parsed()) return CmdPin(ctx, pin_name, true);
  if (unpin->parsed()) return CmdPin(ctx, pin_name, false);
  if (events->parsed()) {
    if (ev_since >= 0) ev_opts.since = ev_since;
    return CmdEvents(ctx, ev_opts);
  }
  if (decisions->parsed()) return CmdDecisions(ctx);
  if (leader->parsed()) return CmdLeader(ctx);
  if (top->parsed()) {
    // The screen blocks the signals it handles before the feed's thread starts.
    auto screen = MakeTerminalScreen(top_plain);
    EventFeed feed(*transport, config->servers);
    if (!top_no_events) feed.Start();
    const int code =
        RunTop(client, *screen, clock, top_opts, top_no_events ? nullptr : &feed, std::cerr);
    feed.Stop();
    return code;
  }
  std::cerr << app.help();
  return kExitUsage;
}
