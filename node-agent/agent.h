// The node agent's core: the workloads of this node, the migrations it sends
// and receives, and their durable records under state_dir. HTTP-free: the
// REST layer (http_api.h) calls these methods and turns statuses into codes.
//
// State on disk (state_dir):
//   workloads/<name>.json      spec + record of each workload this node owns
//   migrations/out/<id>.json   journal of outgoing migrations (report + spec)
//   migrations/in/<id>.json    records of incoming migrations
//   logs/<name>.log            stdout+stderr of each workload
//
// Ownership: borrows the runtime, engine, transport, clock and random.
// Thread-safety: every public method is safe to call concurrently; operations
// on one workload are serialised by its lock.
// Errors: kInvalid for bad input (nothing changed), kNotFound for unknown
// names, kConflict for a name in use or a workload busy migrating, kRetry
// when containerd is unreachable, kFailed otherwise.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kmosix/checkpoint.h"
#include "kmosix/clock.h"
#include "kmosix/migration.h"
#include "kmosix/migration_target.h"
#include "kmosix/runtime.h"
#include "kmosix/transport.h"

namespace kmosix::agent {

struct AgentOptions {
  std::string node;
  std::string advertise_url;  // how peers reach this agent
  std::string state_dir;
  std::string scratch_dir;  // CRIU images in flight; tmpfs is fastest
  std::string version = "0.1.0";
  Clock::Duration idle_timeout = std::chrono::seconds(120);
  Clock::Duration resolve_timeout = std::chrono::seconds(30);
  // Finished migration records (both roles) are kept this long, then dropped.
  Clock::Duration history = std::chrono::hours(24);
  // Outgoing migrations at once; more are refused with kRetry. Each one holds
  // an HTTP server thread, which peers' protocol calls need too.
  int max_outgoing = 2;
};

// Counters the agent reports; the REST layer renders them for /metrics.
class MigrationObserver {
 public:
  virtual ~MigrationObserver() = default;
  virtual void OnMigrationFinished(const MigrationReport& report) = 0;
};

class Agent {
 public:
  Agent(AgentOptions options, ContainerRuntime& runtime, CheckpointEngine& engine,
        Transport& transport, Clock& clock, Random& random, MigrationObserver* observer);

  // Loads the records from state_dir and finishes what a crash interrupted.
  Status Start();
  // Periodic upkeep: expires idle incoming migrations, retries unresolved
  // outgoing ones. Call about once a second.
  void Tick();

  MigrationTarget& Target() { return *incoming_; }
  const AgentOptions& Options() const { return options_; }

  StatusOr<nlohmann::json> CreateWorkload(std::string_view body);
  nlohmann::json ListWorkloads();
  StatusOr<nlohmann::json> GetWorkload(const std::string& name);
  Status DeleteWorkload(const std::string& name);
  StatusOr<std::string> Logs(const std::string& name);

  // Migrates a workload to {"target":"http://host:port"}. Bad input or an
  // unusable target: an error and nothing changed. Otherwise the migration
  // runs to an end; the report says how it ended (its `error` is set unless
  // it succeeded).
  StatusOr<MigrationReport> Migrate(const std::string& name, std::string_view body);
  nlohmann::json ListMigrations();
  StatusOr<nlohmann::json> GetMigration(const std::string& id);

  size_t WorkloadCount();

 private:
  struct Workload {
    ContainerSpec spec;
    std::string state;       // "running", "migrating", "frozen", "incoming", "lost"
    int64_t created_ms = 0;  // first started, on any node
    int64_t started_ms = 0;  // started or arrived on this node
    std::vector<std::string> migrations;
  };
  std::string WorkloadPath(const std::string& name) const;
  std::string OutPath(const std::string& id) const;
  std::string InPath(const std::string& id) const;
  std::string LogPath(const std::string& name) const;
  void SaveWorkload(const Workload& w);
  void SaveOutgoing(const MigrationReport& r, const ContainerSpec& spec);
  std::shared_ptr<std::mutex> LockFor(const std::string& name);
  nlohmann::json Describe(const Workload& w);
  void Finished(const MigrationReport& r, const ContainerSpec& spec);
  void RetryUnresolved();
  void ForgetOldMigrations();

  AgentOptions options_;
  ContainerRuntime& runtime_;
  CheckpointEngine& engine_;
  Transport& transport_;
  Clock& clock_;
  Random& random_;
  MigrationObserver* observer_;
  std::unique_ptr<IncomingMigrations> incoming_;
  std::unique_ptr<MigrationDriver> driver_;

  std::mutex mu_;  // guards the maps below
  std::map<std::string, Workload> workloads_;
  std::map<std::string, std::shared_ptr<std::mutex>> locks_;
  std::map<std::string, MigrationReport> outgoing_;  // id -> latest report
  int outgoing_running_ = 0;
  Clock::TimePoint last_retry_{};
  Clock::TimePoint last_prune_{};
};

}  // namespace kmosix::agent
