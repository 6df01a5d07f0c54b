#include "agent.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "api/validate.h"
#include "kmosix/files.h"
#include "kmosix/json_text.h"
#include "kmosix/spec_json.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;

// Labels of a managed workload's spec: it is the cluster's, and at which epoch.
constexpr char kManagedLabel[] = "io.kmosix.managed";
constexpr char kEpochLabel[] = "io.kmosix.epoch";
using nlohmann::json;

// http(s)://host[:port][/]
Status ValidateAgentUrl(const std::string& url) {
  std::string rest;
  if (url.rfind("http://", 0) == 0) {
    rest = url.substr(7);
  } else if (url.rfind("https://", 0) == 0) {
    rest = url.substr(8);
  } else {
    return InvalidError("field \"target\" must be an http:// or https:// URL of an agent");
  }
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.size() > 255) return InvalidError("field \"target\" has no host");
  for (char c : rest) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
              c == '[' || c == ']';
    if (!ok) return InvalidError("field \"target\" must be scheme://host[:port], without a path");
  }
  return Status::Ok();
}

json SpecWithLog(const ContainerSpec& spec) {
  json j = ContainerSpecToJson(spec);
  return {{"spec", j}, {"logPath", spec.log_path}};
}

StatusOr<ContainerSpec> SpecFromRecord(const json& j) {
  auto spec_json = j.find("spec");
  auto log = j.find("logPath");
  if (spec_json == j.end() || log == j.end() || !log->is_string()) {
    return InvalidError("record lacks spec or logPath");
  }
  KMX_ASSIGN_OR_RETURN(ContainerSpec spec, ContainerSpecFromJson(*spec_json));
  spec.log_path = log->get<std::string>();
  return spec;
}

// Why a task that stopped by itself stopped, for the restart record.
std::string ExitReason(uint32_t status) {
  std::string why = "exited with status " + std::to_string(status);
  if (status > 128 && status <= 128 + 64) {
    const uint32_t sig = status - 128;
    why += " (signal " + std::to_string(sig);
    if (sig == 9) why += ", SIGKILL: killed, e.g. by the OOM killer";
    if (sig == 15) why += ", SIGTERM";
    if (sig == 11) why += ", SIGSEGV";
    if (sig == 6) why += ", SIGABRT";
    why += ")";
  }
  return why;
}

// A JSON object stored by this agent; an error if unreadable or malformed.
StatusOr<json> ReadRecord(const std::string& path) {
  KMX_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseJsonObject(text);
}

}  // namespace

Agent::Agent(AgentOptions options, ContainerRuntime& runtime, CheckpointEngine& engine,
             Transport& transport, Clock& clock, Random& random, MigrationObserver* observer)
    : options_(std::move(options)),
      runtime_(runtime),
      engine_(engine),
      transport_(transport),
      clock_(clock),
      random_(random),
      observer_(observer),
      intake_(options_.intake) {
  IncomingMigrations::Options in_opts{options_.node,         options_.version,
                                      options_.scratch_dir,  options_.state_dir + "/logs",
                                      options_.idle_timeout, &intake_};
  incoming_ =
      std::make_unique<IncomingMigrations>(engine_, runtime_, clock_, in_opts, TargetHooks());
  driver_options_.source_url = options_.advertise_url;
  driver_options_.scratch_dir = options_.scratch_dir;
  driver_options_.resolve_timeout = options_.resolve_timeout;
  driver_options_.busy_wait = options_.busy_wait;
  driver_ = std::make_unique<MigrationDriver>(engine_, transport_, clock_, driver_options_);
}

void Agent::SetClusterHooks(ClusterHooks hooks) {
  cluster_ = std::move(hooks);
  IncomingMigrations::Options in_opts{options_.node,         options_.version,
                                      options_.scratch_dir,  options_.state_dir + "/logs",
                                      options_.idle_timeout, &intake_};
  incoming_ =
      std::make_unique<IncomingMigrations>(engine_, runtime_, clock_, in_opts, TargetHooks());
}

IncomingMigrations::Hooks Agent::TargetHooks() {
  IncomingMigrations::Hooks hooks;
  hooks.reserve = [this](const std::string& name) -> Status {
    std::lock_guard lock(mu_);
    if (workloads_.contains(name)) {
      return ConflictError("a workload named " + name + " already exists on " + options_.node);
    }
    workloads_[name].state = "incoming";
    return Status::Ok();
  };
  hooks.unreserve = [this](const std::string& name) {
    std::lock_guard lock(mu_);
    auto it = workloads_.find(name);
    if (it != workloads_.end() && it->second.state == "incoming") workloads_.erase(it);
  };
  hooks.adopt = [this](const MigrationOffer& offer, uint32_t) -> Status {
    std::lock_guard lock(mu_);
    if (auto it = workloads_.find(offer.spec.name);
        it != workloads_.end() && it->second.state != "incoming") {
      // Start found the verdict not marked adopted, but the record was
      // written (loaded above): keep it as it is.
      return Status::Ok();
    }
    Workload& w = workloads_[offer.spec.name];
    w.spec = offer.spec;
    w.state = "running";
    w.started_ms = clock_.WallMillis();
    w.created_ms = offer.created_ms > 0 ? offer.created_ms : w.started_ms;
    w.migrations = offer.history;
    w.migrations.push_back(offer.id);
    w.running_since = clock_.Now();
    // A copy of the cluster's (its spec says so: kManagedLabel) is the
    // cluster's from its commit, not from the link's first look at it: an
    // agent killed in between (a power loss right after the commit) would
    // otherwise restart it as a standalone workload, without asking the
    // cluster, beside the copy a node-loss restart runs elsewhere. Epoch 0
    // until the link claims it at the record's epoch (ClaimManaged): no
    // restart claim matches it before, and a record that names another node
    // fences it. A standalone workload moved agent to agent stays standalone.
    auto label = offer.spec.labels.find(kManagedLabel);
    w.managed = static_cast<bool>(cluster_.claim_restart) && label != offer.spec.labels.end() &&
                label->second == "true";
    w.epoch = 0;
    return WriteWorkload(w);
  };
  // The target logs a failed write and acts on it (migration_target.h).
  hooks.persist = [this](const IncomingRecord& r) -> Status {
    return WriteFileAtomic(InPath(r.offer.id), DumpJson(IncomingRecordToJson(r), 2));
  };
  // Arrivals are managed (cluster mode) at epoch 0 until the cluster link
  // claims them at the record's epoch (ClaimManaged).
  hooks.owned_here = cluster_.owned_here;
  return hooks;
}

std::string Agent::WorkloadPath(const std::string& name) const {
  return options_.state_dir + "/workloads/" + name + ".json";
}
std::string Agent::OutPath(const std::string& id) const {
  return options_.state_dir + "/migrations/out/" + id + ".json";
}
std::string Agent::InPath(const std::string& id) const {
  return options_.state_dir + "/migrations/in/" + id + ".json";
}
std::string Agent::LogPath(const std::string& name) const {
  return options_.state_dir + "/logs/" + name + ".log";
}

Status Agent::WriteWorkload(const Workload& w) {
  json j = SpecWithLog(w.spec);
  j["state"] = w.state;
  j["createdMs"] = w.created_ms;
  j["startedMs"] = w.started_ms;
  j["migrations"] = w.migrations;
  if (w.managed) {
    j["managed"] = true;
    j["epoch"] = w.epoch;
  }
  if (w.restarts > 0 || !w.last_restart_reason.empty()) {
    j["restarts"] = w.restarts;
    j["lastRestartMs"] = w.last_restart_ms;
    j["lastRestartReason"] = w.last_restart_reason;
  }
  if (w.state == "fenced") {
    j["fenceReason"] = w.fence_reason;
    j["fencedMs"] = w.fenced_ms;
  }
  // The crash-loop back-off, so an agent restart does not restart a crash
  // looping workload any sooner (see "Restarts" in agent.h).
  if (w.crash_streak > 0) j["crashStreak"] = w.crash_streak;
  if (w.state == "restarting") {
    j["nextRestartMs"] = w.next_restart_ms;
    j["pendingReason"] = w.pending_reason;
  }
  return WriteFileAtomic(WorkloadPath(w.spec.name), DumpJson(j, 2));
}

void Agent::SaveWorkload(const Workload& w) {
  if (Status s = WriteWorkload(w); !s.ok()) {
    spdlog::error("cannot record workload {}: {}", w.spec.name, s.ToString());
  }
}

Status Agent::SaveOutgoing(const MigrationReport& r, const ContainerSpec& spec, bool managed) {
  json j = SpecWithLog(spec);
  j["report"] = MigrationReportToJson(r);
  if (managed) j["managed"] = true;
  // The driver logs a failed write and acts on it (migration.h); the map
  // holds the report either way (it is what happened).
  Status s = WriteFileAtomic(OutPath(r.id), DumpJson(j, 2));
  std::lock_guard lock(mu_);
  outgoing_[r.id] = r;
  return s;
}

std::shared_ptr<std::mutex> Agent::LockFor(const std::string& name) {
  std::lock_guard lock(mu_);
  auto& m = locks_[name];
  if (!m) m = std::make_shared<std::mutex>();
  return m;
}

Status Agent::Start() {
  // Journals, records and logs are the agent's alone: 0700 directories
  // (older agents made them 0755), 0600 files (files.h).
  for (const char* d :
       {"", "/workloads", "/migrations", "/migrations/out", "/migrations/in", "/logs"}) {
    std::error_code ec;
    fs::create_directories(options_.state_dir + d, ec);
    if (ec) return FailedError("cannot create state dir: " + ec.message());
    fs::permissions(options_.state_dir + d, fs::perms::owner_all, ec);
    if (ec) return FailedError("cannot make the state dir private: " + ec.message());
  }
  std::error_code ec;
  fs::create_directories(options_.scratch_dir, ec);
  if (ec) return FailedError("cannot create scratch dir: " + ec.message());
  fs::permissions(options_.scratch_dir, fs::perms::owner_all, ec);
  if (ec) return FailedError("cannot make the scratch dir private: " + ec.message());
  // Before any migration is recovered (and a workload thawed).
  if (Status s = engine_.Recover(options_.scratch_dir); !s.ok()) {
    spdlog::error("checkpoint engine recovery: {}", s.ToString());
  }

  for (const auto& path : ListFiles(options_.state_dir + "/workloads", ".json")) {
    auto record = ReadRecord(path);
    auto spec = record.ok() ? SpecFromRecord(*record) : StatusOr<ContainerSpec>(record.status());
    if (!spec.ok()) {
      spdlog::error("ignoring workload record {}: {}", path, spec.status().ToString());
      continue;
    }
    const json& j = *record;
    Workload w;
    w.spec = *spec;
    w.running_since = clock_.Now();
    try {
      w.state = j.value("state", "running");
      w.created_ms = j.value("createdMs", int64_t{0});
      w.started_ms = j.value("startedMs", w.created_ms);
      w.migrations = j.value("migrations", std::vector<std::string>{});
      w.managed = j.value("managed", false);
      w.epoch = j.value("epoch", int64_t{0});
      w.restarts = j.value("restarts", 0);
      w.last_restart_ms = j.value("lastRestartMs", int64_t{0});
      w.last_restart_reason = j.value("lastRestartReason", std::string());
      w.fence_reason = j.value("fenceReason", std::string());
      w.fenced_ms = j.value("fencedMs", int64_t{0});
      w.crash_streak = std::clamp(j.value("crashStreak", 0), 0, 30);
      w.next_restart_ms = j.value("nextRestartMs", int64_t{0});
      w.pending_reason = j.value("pendingReason", std::string());
    } catch (const json::exception& e) {
      spdlog::error("ignoring workload record {}: {}", path, e.what());
      continue;
    }
    // The back-off's moments, from the wall clock of the record: running
    // since its last start (the reset period counts from there), and a
    // pending restart not before its recorded time (each at most a period
    // away, whatever the wall clock did meanwhile).
    using std::chrono::milliseconds;
    const int64_t wall = clock_.WallMillis();
    const auto at_most = [](int64_t ms, Clock::Duration cap) {
      return std::min<Clock::Duration>(milliseconds(std::max<int64_t>(ms, 0)), cap);
    };
    w.running_since = clock_.Now() - at_most(wall - w.started_ms, options_.restart_reset);
    if (w.state == "restarting") {
      w.next_restart =
          clock_.Now() + at_most(w.next_restart_ms - wall, options_.restart_backoff_max);
    }
    std::lock_guard lock(mu_);
    workloads_[w.spec.name] = w;
  }

  std::vector<IncomingRecord> incoming;
  for (const auto& path : ListFiles(options_.state_dir + "/migrations/in", ".json")) {
    auto record = ReadRecord(path);
    auto r =
        record.ok() ? IncomingRecordFromJson(*record) : StatusOr<IncomingRecord>(record.status());
    if (!r.ok()) {
      spdlog::error("ignoring migration record {}: {}", path, r.status().ToString());
      continue;
    }
    incoming.push_back(*r);
  }
  // Before the orphan sweep below: a Committed verdict without a workload
  // record (a crash in between) is adopted here, never deleted as unowned.
  incoming_->Recover(std::move(incoming));

  for (const auto& path : ListFiles(options_.state_dir + "/migrations/out", ".json")) {
    auto record = ReadRecord(path);
    auto r = !record.ok() ? StatusOr<MigrationReport>(record.status())
             : record->contains("report")
                 ? MigrationReportFromJson((*record)["report"])
                 : StatusOr<MigrationReport>(InvalidError("record lacks report"));
    if (!r.ok()) {
      spdlog::error("ignoring migration journal {}: {}", path, r.status().ToString());
      continue;
    }
    std::lock_guard lock(mu_);
    outgoing_[r->id] = *r;
  }
  // Before the orphan sweep and the task checks below.
  SettleEndedMigrations();

  // What containerd runs must match the records: containers nobody owns were
  // never acknowledged to a client (a crash between create and record).
  auto names = runtime_.ListContainers();
  if (!names.ok()) return names.status().Annotate("containerd");
  for (const auto& name : *names) {
    bool owned;
    {
      std::lock_guard lock(mu_);
      owned = workloads_.contains(name);
    }
    if (!owned) {
      spdlog::warn("deleting container {}: no workload record owns it", name);
      (void)runtime_.Delete(name);
    }
  }
  {
    std::lock_guard lock(mu_);
    for (auto& [name, w] : workloads_) {
      if (w.state == "incoming" || InMigrationLocked(name)) continue;
      auto info = runtime_.Inspect(name);
      if (!info.ok() && info.status().code() == Code::kNotFound) {
        spdlog::error("workload {} has no container any more: marking it lost", name);
        w.state = "lost";
        SaveWorkload(w);
      }
    }
  }
  last_retry_ = clock_.Now() - std::chrono::hours(1);
  last_prune_ = clock_.Now();
  // After a reboot or a containerd restart the tasks may be gone.
  last_reconcile_ = clock_.Now();
  ReconcileTasks();
  return Status::Ok();
}

namespace {
// Runs one upkeep step; an exception is logged, never thrown to the caller
// (the agent's upkeep thread).
template <typename F>
void Guarded(const char* step, F f) {
  try {
    f();
  } catch (const std::exception& e) {
    spdlog::error("agent upkeep ({}): unexpected exception: {}", step, e.what());
  } catch (...) {
    spdlog::error("agent upkeep ({}): unexpected exception", step);
  }
}
}  // namespace

bool Agent::InMigrationLocked(const std::string& name) const {
  for (const auto& [_, r] : outgoing_) {
    if (r.workload == name && !IsFinal(r.phase)) return true;
  }
  return false;
}

void Agent::SettleEndedMigrations() {
  std::lock_guard lock(mu_);
  for (auto it = workloads_.begin(); it != workloads_.end();) {
    const std::string& name = it->first;
    Workload& w = it->second;
    if (w.state == "incoming" || w.state == "creating") {
      ++it;
      continue;
    }
    const MigrationReport* newest = nullptr;   // the newest ended migration
    const MigrationReport* left_by = nullptr;  // one it left by, this record before it
    bool unfinished = false;
    for (const auto& [_, r] : outgoing_) {
      if (r.workload != name) continue;
      if (!IsFinal(r.phase)) {
        unfinished = true;
        continue;
      }
      if (newest == nullptr || r.started_ms > newest->started_ms) newest = &r;
      // A record written before the migration (it does not name it, or
      // names it last: Finished wrote it while Resolving); a copy that came
      // back, or a new workload of that name, started after it.
      const bool named =
          std::find(w.migrations.begin(), w.migrations.end(), r.id) != w.migrations.end();
      if (r.phase == MigrationPhase::kSucceeded && w.started_ms <= r.started_ms &&
          (!named || w.migrations.back() == r.id)) {
        left_by = &r;
      }
    }
    if (unfinished) {
      // RetryUnresolved finishes it (at the first Tick); till then the
      // workload is the migration's, whatever its record says (a record
      // says "running" while a migration runs): never lost nor restarted
      // here meanwhile (its copy may be released: the target's now).
      if (w.state == "running") w.state = "frozen";
      ++it;
      continue;
    }
    if (newest == nullptr) {
      ++it;
      continue;
    }
    if (left_by != nullptr) {
      auto info = runtime_.Inspect(name);
      if (!info.ok() && info.status().code() == Code::kNotFound) {
        // Released here, owned by the target: never restart it as lost.
        spdlog::warn("workload {} left {} by migration {}: dropping its stale record", name,
                     options_.node, left_by->id);
        (void)RemoveFile(WorkloadPath(name));
        it = workloads_.erase(it);
        continue;
      }
    }
    if ((w.state == "frozen" || w.state == "migrating") &&
        newest->phase != MigrationPhase::kSucceeded) {
      spdlog::warn("workload {}: its record said {} but migration {} ended {}: running", name,
                   w.state, newest->id, MigrationPhaseName(newest->phase));
      w.state = "running";
      SaveWorkload(w);
    }
    ++it;
  }
}

void Agent::Tick() {
  Guarded("expire incoming migrations", [&] { incoming_->ExpireIdle(); });
  if (clock_.Now() - last_retry_ >= std::chrono::seconds(5)) {
    last_retry_ = clock_.Now();
    Guarded("resolve outgoing migrations", [&] { RetryUnresolved(); });
  }
  if (clock_.Now() - last_prune_ >= std::chrono::minutes(1)) {
    last_prune_ = clock_.Now();
    Guarded("forget old migrations", [&] { ForgetOldMigrations(); });
  }
  if (clock_.Now() - last_reconcile_ >= options_.reconcile_interval) {
    last_reconcile_ = clock_.Now();
    Guarded("restart workloads", [&] { ReconcileTasks(); });
  }
}

void Agent::ReconcileTasks() {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, w] : workloads_) names.push_back(name);
  }
  for (const auto& name : names) {
    // One workload's surprise must not starve the others.
    Guarded("restart a workload", [&] {
      const std::optional<LocalWorkload> before = Local(name, /*inspect=*/false);
      ReconcileTask(name);
      const std::optional<LocalWorkload> after = Local(name, /*inspect=*/false);
      const bool changed =
          before && after && (before->state != after->state || before->restarts != after->restarts);
      if (changed && after->managed && cluster_.changed) cluster_.changed(name);
    });
  }
}

void Agent::ReconcileTask(const std::string& name) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return;  // a migration, start or delete of it is under way
  Workload w;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end()) return;
    // An unfinished journal: the migration's to settle (its source copy may
    // be released already, the target running it), never restarted here.
    if (InMigrationLocked(name)) return;
    w = it->second;
  }
  const bool lost_unmanaged = w.state == "lost" && !w.managed;
  if (w.state != "running" && w.state != "restarting" && !lost_unmanaged) return;
  auto info = runtime_.Inspect(name);
  std::string why;
  if (info.ok()) {
    switch (info->state) {
      case TaskState::kStopped:
        if (info->exit_status == 0 && w.state == "running") {
          spdlog::info("workload {} on {} exited with status 0: done, not restarted", name,
                       options_.node);
          std::lock_guard l(mu_);
          auto it = workloads_.find(name);
          if (it != workloads_.end()) {
            it->second.state = "exited";
            SaveWorkload(it->second);
          }
          return;
        }
        why = ExitReason(info->exit_status);
        break;
      case TaskState::kNone:
        why = "its task is gone (node rebooted, or containerd lost it)";
        break;
      default:  // running, paused, created: it lives; unknown: cannot say
        if (w.state == "restarting" && info->state == TaskState::kRunning) {
          std::lock_guard l(mu_);
          auto it = workloads_.find(name);
          if (it != workloads_.end()) {
            it->second.state = "running";
            SaveWorkload(it->second);
          }
        }
        return;
    }
  } else if (info.status().code() == Code::kNotFound) {
    if (w.managed) {
      if (w.state != "lost") {
        spdlog::error("managed workload {} has no container any more: marking it lost", name);
        std::lock_guard l(mu_);
        auto it = workloads_.find(name);
        if (it != workloads_.end()) {
          it->second.state = "lost";
          SaveWorkload(it->second);
        }
      }
      return;  // the cluster link starts it afresh once the cluster agrees
    }
    why = "its container vanished";
  } else {
    return;  // the runtime cannot say (unreachable): nothing is verified, nothing done
  }

  const Clock::TimePoint now = clock_.Now();
  if (w.state == "running" || w.state == "lost") {
    // Newly found dead: decide when to start it again.
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end()) return;
    Workload& cur = it->second;
    if (now - cur.running_since >= options_.restart_reset) cur.crash_streak = 0;
    Clock::Duration delay{0};
    if (cur.crash_streak > 0) {
      delay = options_.restart_backoff;
      for (int i = 1; i < cur.crash_streak && delay < options_.restart_backoff_max; ++i) delay *= 2;
      delay = std::min(delay, options_.restart_backoff_max);
    }
    cur.state = "restarting";
    cur.pending_reason = why;
    cur.last_restart_reason = why;
    cur.next_restart = now + delay;
    cur.next_restart_ms =
        clock_.WallMillis() + std::chrono::duration_cast<std::chrono::milliseconds>(delay).count();
    SaveWorkload(cur);
    spdlog::warn("workload {} on {}: {}; starting it again {}", name, options_.node, why,
                 delay.count() == 0
                     ? std::string("now")
                     : fmt::format("in {:.0f} s (crash loop back-off)", Seconds(delay)));
    w = cur;
  }
  if (now < w.next_restart) return;
  RestartLocked(name, w.pending_reason.empty() ? w.last_restart_reason : w.pending_reason);
}

void Agent::RestartLocked(const std::string& name, const std::string& why) {
  Workload w;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end()) return;
    w = it->second;
  }
  if (w.managed) {
    // Never a second copy: only the owner the cluster names starts it again.
    // Not (yet) allowed: asked again a back-off later, the crash streak kept.
    auto ask_later = [&](Clock::Duration after) {
      std::lock_guard l(mu_);
      auto it = workloads_.find(name);
      if (it == workloads_.end()) return;
      it->second.next_restart = clock_.Now() + after;
      it->second.next_restart_ms =
          clock_.WallMillis() +
          std::chrono::duration_cast<std::chrono::milliseconds>(after).count();
    };
    if (!cluster_.claim_restart) {
      spdlog::error("managed workload {} is dead but this agent is not in cluster mode: left so",
                    name);
      return ask_later(options_.restart_backoff_max);
    }
    // Claimed before the start, never after: a new owner decided meanwhile
    // either loses its CAS to this claim or makes it fail here.
    auto owner = cluster_.claim_restart(name, RestartClaim{w.epoch, w.restarts + 1, why});
    if (!owner.ok()) {
      spdlog::warn("workload {}: cannot ask the cluster whether to restart it here: {}", name,
                   owner.status().ToString());
      return ask_later(options_.restart_backoff);
    }
    if (!*owner) {
      spdlog::warn("workload {}: the cluster does not name {} its owner; not restarting it", name,
                   options_.node);
      return ask_later(options_.restart_backoff);
    }
    w.spec.labels[kEpochLabel] = std::to_string(w.epoch);  // it may have been raised
  }
  // Whatever is left (a stopped task, the container, its snapshot) goes; the
  // workload starts afresh from its image, its log appended to.
  Status s = runtime_.Delete(name).Annotate("delete the dead container");
  if (s.ok()) s = runtime_.CreateContainer(w.spec).Annotate("create container");
  if (s.ok()) s = runtime_.StartTask(name).Annotate("start task");
  const Clock::TimePoint now = clock_.Now();
  std::lock_guard l(mu_);
  auto it = workloads_.find(name);
  if (it == workloads_.end()) return;
  Workload& cur = it->second;
  cur.crash_streak = std::min(cur.crash_streak + 1, 30);
  if (s.ok()) {
    cur.state = "running";
    cur.restarts++;
    cur.last_restart_ms = clock_.WallMillis();
    cur.last_restart_reason = why;
    cur.pending_reason.clear();
    cur.started_ms = cur.last_restart_ms;
    cur.running_since = now;
    cur.next_restart_ms = 0;
    SaveWorkload(cur);
    spdlog::warn("workload {} restarted on {} (restart {}): {}", name, options_.node, cur.restarts,
                 why);
    return;
  }
  Clock::Duration delay = options_.restart_backoff;
  for (int i = 1; i < cur.crash_streak && delay < options_.restart_backoff_max; ++i) delay *= 2;
  delay = std::min(delay, options_.restart_backoff_max);
  cur.state = "restarting";
  cur.pending_reason = why;
  cur.last_restart_reason = why + "; starting it again failed: " + s.ToString();
  cur.next_restart = now + delay;
  cur.next_restart_ms =
      clock_.WallMillis() + std::chrono::duration_cast<std::chrono::milliseconds>(delay).count();
  SaveWorkload(cur);
  spdlog::error("workload {} on {}: starting it again failed ({}); next attempt in {:.0f} s", name,
                options_.node, s.ToString(), Seconds(delay));
}

void Agent::ForgetOldMigrations() {
  for (const auto& id : incoming_->ForgetFinished(options_.history)) (void)RemoveFile(InPath(id));
  const int64_t cutoff =
      clock_.WallMillis() -
      std::chrono::duration_cast<std::chrono::milliseconds>(options_.history).count();
  std::vector<std::string> old;
  {
    std::lock_guard lock(mu_);
    for (auto it = outgoing_.begin(); it != outgoing_.end();) {
      if (IsFinal(it->second.phase) && it->second.finished_ms < cutoff) {
        old.push_back(it->first);
        it = outgoing_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& id : old) (void)RemoveFile(OutPath(id));
}

void Agent::RetryUnresolved() {
  std::vector<MigrationReport> pending;
  {
    std::lock_guard lock(mu_);
    for (const auto& [_, r] : outgoing_) {
      if (!IsFinal(r.phase)) pending.push_back(r);
    }
  }
  for (auto& r : pending) {
    auto lock = LockFor(r.workload);
    std::unique_lock guard(*lock, std::try_to_lock);
    if (!guard.owns_lock()) continue;  // a migration of it is running right now
    auto record = ReadRecord(OutPath(r.id));
    auto spec = record.ok() ? SpecFromRecord(*record) : StatusOr<ContainerSpec>(record.status());
    if (!spec.ok()) {
      spdlog::error("cannot finish migration {}: {}", r.id, spec.status().ToString());
      continue;
    }
    const auto managed_it = record->find("managed");
    const bool managed =
        managed_it != record->end() && managed_it->is_boolean() && managed_it->get<bool>();
    if (managed && cluster_.ledger == nullptr) {
      // Only the cluster can say who owns it now: never guess.
      spdlog::error(
          "migration {} of managed workload {} is unfinished ({}) and this agent is not "
          "in cluster mode: left frozen",
          r.id, r.workload, MigrationPhaseName(r.phase));
      continue;
    }
    spdlog::info("finishing interrupted migration {} of {} (phase {})", r.id, r.workload,
                 MigrationPhaseName(r.phase));
    auto persist = [this, &spec, managed](const MigrationReport& rep) -> Status {
      return SaveOutgoing(rep, *spec, managed);
    };
    MigrationReport done;
    if (managed) {
      MigrationDriver::Options opts = driver_options_;
      opts.ledger = cluster_.ledger;
      MigrationDriver driver(engine_, transport_, clock_, opts);
      done = driver.Recover(*spec, r, persist);
    } else {
      done = driver_->Recover(*spec, r, persist);
    }
    Finished(done, *spec);
  }
}

void Agent::Finished(const MigrationReport& r, const ContainerSpec& spec) {
  {
    std::lock_guard lock(mu_);
    auto it = workloads_.find(spec.name);
    // Succeeded, or superseded (another node owns it; the frozen copy was
    // released, never thawed): the copy is gone from here, at once. Never
    // "running": nothing runs, and the restart loop must not start it.
    if (r.phase == MigrationPhase::kSucceeded || (IsFinal(r.phase) && r.source_released)) {
      if (it != workloads_.end()) workloads_.erase(it);
      (void)RemoveFile(WorkloadPath(spec.name));
      (void)RemoveFile(spec.log_path);
    } else if (it != workloads_.end()) {
      Workload& w = it->second;
      w.state = IsFinal(r.phase) ? "running" : "frozen";
      if (std::find(w.migrations.begin(), w.migrations.end(), r.id) == w.migrations.end()) {
        w.migrations.push_back(r.id);
      }
      SaveWorkload(w);
    }
  }
  if (IsFinal(r.phase) && observer_ != nullptr) observer_->OnMigrationFinished(r);
}

StatusOr<api::AgentWorkloadView> Agent::CreateWorkload(const api::WorkloadSpec& ws) {
  // The agent's face of the one validator (as its REST body parser).
  KMX_RETURN_IF_ERROR(api::ValidateWorkloadSpec(ws, "workload"));
  ContainerSpec spec = ContainerSpecFor(ws);
  auto lock = LockFor(spec.name);
  std::lock_guard guard(*lock);
  {
    std::lock_guard l(mu_);
    if (workloads_.contains(spec.name)) {
      return ConflictError("a workload named " + spec.name + " already exists on " + options_.node);
    }
    workloads_[spec.name].state = "creating";
  }
  KMX_ASSIGN_OR_RETURN(Workload w, CreateLocked(std::move(spec), false, 0, 0));
  return View(w);
}

StatusOr<Agent::Workload> Agent::CreateLocked(ContainerSpec spec, bool managed, int64_t epoch,
                                              int64_t created_ms, const RestoreFn& restore) {
  spec.log_path = LogPath(spec.name);
  if (managed) {
    spec.labels[kManagedLabel] = "true";
    spec.labels[kEpochLabel] = std::to_string(epoch);
  }
  auto forget = [&] {
    std::lock_guard l(mu_);
    workloads_.erase(spec.name);
  };
  if (Status s = runtime_.ImageExists(spec.image); !s.ok()) {
    forget();
    if (s.code() == Code::kNotFound) {
      return InvalidError("image " + spec.image + " is not present on node " + options_.node +
                          " (import it first)");
    }
    return s;
  }
  // The name is claimed here (its registry entry): what aborted incoming
  // migrations of it left (a discard that failed while containerd was down)
  // or a container nothing here claims goes first, or the container could
  // not be made ("already exists").
  if (Status s = incoming_->ClearStale(spec.name); !s.ok()) {
    forget();
    return s.Annotate("node " + options_.node + " cannot clear what was left of " + spec.name);
  }
  {
    std::ofstream truncate(spec.log_path, std::ios::trunc);
    std::error_code perm_ec;  // the log is the agent's (and its API callers')
    fs::permissions(spec.log_path, fs::perms::owner_read | fs::perms::owner_write, perm_ec);
  }
  if (restore) {
    if (Status s = restore(spec); !s.ok()) {
      forget();
      return s.Annotate("restore");
    }
  } else {
    if (Status s = runtime_.CreateContainer(spec); !s.ok()) {
      forget();
      return s.Annotate("create container");
    }
    if (Status s = runtime_.StartTask(spec.name); !s.ok()) {
      (void)runtime_.Delete(spec.name);
      forget();
      return s.Annotate("start task");
    }
  }
  Workload w;
  w.spec = spec;
  w.state = "running";
  w.started_ms = clock_.WallMillis();
  w.created_ms = created_ms > 0 ? created_ms : w.started_ms;
  w.managed = managed;
  w.epoch = epoch;
  w.running_since = clock_.Now();
  if (Status s = WriteWorkload(w); !s.ok()) {
    // Never acknowledge a container no record names (the next start would
    // delete it as unowned).
    (void)runtime_.Delete(spec.name);
    forget();
    return s.Annotate("record workload " + spec.name);
  }
  {
    std::lock_guard l(mu_);
    workloads_[spec.name] = w;
  }
  spdlog::info("{}workload {} started on {}", managed ? "managed " : "", spec.name, options_.node);
  return w;
}

api::AgentWorkloadView Agent::View(const Workload& w) {
  api::AgentWorkloadView v;
  v.spec = WorkloadSpecOf(w.spec);
  v.node = options_.node;
  v.state = w.state;
  v.created_ms = w.created_ms;
  v.started_ms = w.started_ms;
  v.migrations = w.migrations;
  v.managed = w.managed;
  v.epoch = w.managed ? w.epoch : 0;
  v.restarts = w.restarts;
  v.last_restart_ms = w.last_restart_ms;
  v.last_restart_reason = w.last_restart_reason;
  if (w.state == "restarting") v.next_restart_ms = w.next_restart_ms;
  if (w.state == "fenced") {
    v.fence_reason = w.fence_reason;
    v.fenced_ms = w.fenced_ms;
  }
  if (w.state == "running" || w.state == "frozen" || w.state == "migrating" ||
      w.state == "restarting" || w.state == "exited" || w.state == "fenced") {
    auto info = runtime_.Inspect(w.spec.name);
    if (info.ok()) {
      v.pid = info->pid;
      v.task = std::string(TaskStateName(info->state));
      if (info->state == TaskState::kStopped) v.exit_status = info->exit_status;
    } else {
      v.task = std::string(TaskStateName(TaskState::kUnknown));
    }
  }
  return v;
}

api::AgentWorkloadList Agent::ListWorkloads() {
  std::vector<Workload> all;
  {
    std::lock_guard lock(mu_);
    for (const auto& [_, w] : workloads_) {
      if (w.state != "incoming" && w.state != "creating") all.push_back(w);
    }
  }
  api::AgentWorkloadList list;
  list.node = options_.node;
  for (const auto& w : all) list.items.push_back(View(w));
  return list;
}

StatusOr<api::AgentWorkloadView> Agent::GetWorkload(const std::string& name) {
  Workload w;
  {
    std::lock_guard lock(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || it->second.state == "incoming" ||
        it->second.state == "creating") {
      return NotFoundError("no workload " + name + " on " + options_.node);
    }
    w = it->second;
  }
  return View(w);
}

Status Agent::DeleteWorkload(const std::string& name) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return ConflictError("workload " + name + " is busy (migrating)");
  ContainerSpec spec;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || it->second.state == "incoming") {
      return NotFoundError("no workload " + name + " on " + options_.node);
    }
    if (it->second.state == "frozen") {
      return ConflictError("workload " + name +
                           " is frozen while a migration is resolved; try again later");
    }
    if (it->second.managed) {
      return ConflictError("workload " + name +
                           " is managed by the cluster; delete it through the controller");
    }
    spec = it->second.spec;
  }
  KMX_RETURN_IF_ERROR(runtime_.Delete(name).Annotate("delete"));
  {
    std::lock_guard l(mu_);
    workloads_.erase(name);
  }
  (void)RemoveFile(WorkloadPath(name));
  (void)RemoveFile(spec.log_path);
  spdlog::info("workload {} deleted from {}", name, options_.node);
  return Status::Ok();
}

StatusOr<std::string> Agent::Logs(const std::string& name) {
  std::string path;
  {
    std::lock_guard lock(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || it->second.state == "incoming") {
      return NotFoundError("no workload " + name + " on " + options_.node);
    }
    path = it->second.spec.log_path;
  }
  auto text = ReadFile(path);
  if (!text.ok() && text.status().code() == Code::kNotFound) return std::string();
  return text;
}

StatusOr<MigrationReport> Agent::Migrate(const std::string& name,
                                         const api::AgentMigrateRequest& request) {
  std::string target = request.target;
  KMX_RETURN_IF_ERROR(ValidateAgentUrl(target));
  while (target.back() == '/') target.pop_back();
  if (target == options_.advertise_url) return InvalidError("target is this agent");

  MigrationReport r;
  r.id = RandomId(random_, "m-");
  r.workload = name;
  r.source_node = options_.node;
  r.target_url = target;
  return RunOutgoing(name, std::move(r), /*managed=*/false, nullptr, {});
}

StatusOr<MigrationReport> Agent::MigrateManaged(const ManagedMigration& order,
                                                OwnershipLedger& ledger, const PhaseFn& on_phase) {
  KMX_RETURN_IF_ERROR(ValidateName(order.id).Annotate("migration id"));
  std::string target = order.target_url;
  KMX_RETURN_IF_ERROR(ValidateAgentUrl(target));
  while (target.back() == '/') target.pop_back();
  if (target == options_.advertise_url || order.target_node == options_.node) {
    return InvalidError("target is this agent");
  }
  MigrationReport r;
  r.id = order.id;
  r.workload = order.workload;
  r.source_node = options_.node;
  r.target_node = order.target_node;
  r.target_url = target;
  return RunOutgoing(order.workload, std::move(r), /*managed=*/true, &ledger, on_phase,
                     order.cancelled);
}

StatusOr<MigrationReport> Agent::RunOutgoing(const std::string& name, MigrationReport r,
                                             bool managed, OwnershipLedger* ledger,
                                             const PhaseFn& on_phase,
                                             const MigrationDriver::CancelFn& cancelled) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return ConflictError("workload " + name + " is busy");
  ContainerSpec spec;
  WorkloadLife life;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || it->second.state == "incoming") {
      return NotFoundError("no workload " + name + " on " + options_.node);
    }
    life = {it->second.created_ms, it->second.migrations};
    if (it->second.state != "running") {
      return ConflictError("workload " + name + " is " + it->second.state + ", not running");
    }
    if (it->second.managed != managed) {
      return ConflictError(managed ? "workload " + name + " is not managed by the cluster"
                                   : "workload " + name +
                                         " is managed by the cluster; order its migrations "
                                         "through the controller");
    }
    if (managed && outgoing_.contains(r.id)) {
      return ConflictError("migration " + r.id + " already ran on " + options_.node);
    }
    spec = it->second.spec;
  }
  auto info = runtime_.Inspect(name);
  if (!info.ok()) return info.status();
  if (info->state != TaskState::kRunning) {
    return ConflictError("task of " + name + " is " + std::string(TaskStateName(info->state)));
  }
  {
    std::lock_guard l(mu_);
    if (outgoing_running_ >= options_.max_outgoing) {
      return RetryError(std::to_string(outgoing_running_) + " migrations are leaving " +
                        options_.node + " already; retry later");
    }
    ++outgoing_running_;
    workloads_[name].state = "migrating";
  }
  // The slot is given back however this ends (an exception included).
  struct Slot {
    Agent& agent;
    ~Slot() {
      std::lock_guard l(agent.mu_);
      --agent.outgoing_running_;
    }
  } slot{*this};
  spdlog::info("migration {}: {} from {} to {}", r.id, name, options_.node, r.target_url);
  auto persist = [&](const MigrationReport& rep) -> Status {
    Status s = SaveOutgoing(rep, spec, managed);
    // The caller's notification (the cluster link writes etcd): its failure
    // is its own to report, never the migration's.
    if (on_phase) {
      try {
        on_phase(rep);
      } catch (const std::exception& e) {
        spdlog::error("migration {}: phase {} not reported: unexpected exception: {}", rep.id,
                      MigrationPhaseName(rep.phase), e.what());
      } catch (...) {
        spdlog::error("migration {}: phase {} not reported: unexpected exception", rep.id,
                      MigrationPhaseName(rep.phase));
      }
    }
    if (options_.phase_entered && !IsFinal(rep.phase)) options_.phase_entered(rep);
    return s;
  };
  MigrationReport done;
  std::string thrown;
  try {
    if (ledger != nullptr) {
      MigrationDriver::Options opts = driver_options_;
      opts.ledger = ledger;
      MigrationDriver driver(engine_, transport_, clock_, opts);
      done = driver.Run(spec, r, persist, life, cancelled);
    } else {
      done = driver_->Run(spec, r, persist, life, cancelled);
    }
  } catch (const std::exception& e) {
    thrown = e.what();
  } catch (...) {
    thrown = "unknown exception";
  }
  if (!thrown.empty()) done = AfterException(spec, r, ledger, persist, thrown);
  Finished(done, spec);
  spdlog::info("migration {}: {} ({:.3f} s downtime, {:.3f} s total, {} bytes){}", done.id,
               MigrationPhaseName(done.phase), done.timings.downtime, done.timings.total,
               done.bytes, done.error.ok() ? "" : ": " + done.error.ToString());
  return done;
}

MigrationReport Agent::AfterException(const ContainerSpec& spec, const MigrationReport& started,
                                      OwnershipLedger* ledger,
                                      const MigrationDriver::PersistFn& persist,
                                      const std::string& what) {
  spdlog::error("migration {} of {}: unexpected exception: {}; resolving it from its journal",
                started.id, spec.name, what);
  std::optional<MigrationReport> last = OutgoingReport(started.id);
  if (!last) {
    // Nothing was journaled, so nothing was frozen or prepared (the driver
    // journals before it acts).
    MigrationReport failed = started;
    failed.phase = MigrationPhase::kFailed;
    failed.failed_phase = std::string(MigrationPhaseName(MigrationPhase::kPending));
    failed.error = FailedError("unexpected exception: " + what);
    failed.finished_ms = clock_.WallMillis();
    failed.fault = api::MakeFault(api::FaultKind::kInternal, MigrationPhase::kPending,
                                  failed.source_node, failed.error.ToString(), failed.finished_ms);
    failed.resolution = api::MigrationResolution{api::MigrationOutcome::kUntouched,
                                                 api::Decider::kSource, failed.finished_ms};
    (void)persist(failed);
    return failed;
  }
  if (IsFinal(last->phase)) return *last;
  // The fault it met, unless the driver had recorded one before it threw
  // (Recover would otherwise take it for a restart).
  if (!last->fault) {
    last->fault = api::MakeFault(api::FaultKind::kInternal, last->phase, last->source_node,
                                 "unexpected exception: " + what, clock_.WallMillis());
  }
  // As after a crash at that point: the target is asked, the source thawed or
  // released (MigrationDriver::Recover). Should that throw too, the
  // workload stays frozen and Tick's RetryUnresolved tries again.
  try {
    if (ledger != nullptr) {
      MigrationDriver::Options opts = driver_options_;
      opts.ledger = ledger;
      MigrationDriver driver(engine_, transport_, clock_, opts);
      return driver.Recover(spec, *last, persist);
    }
    return driver_->Recover(spec, *last, persist);
  } catch (const std::exception& e) {
    spdlog::error("migration {}: resolving it failed too ({}); left frozen for the next round",
                  started.id, e.what());
  } catch (...) {
    spdlog::error("migration {}: resolving it failed too; left frozen for the next round",
                  started.id);
  }
  return *last;
}

api::AgentMigrationList Agent::ListMigrations() {
  api::AgentMigrationList list;
  list.node = options_.node;
  {
    std::lock_guard lock(mu_);
    for (const auto& [_, r] : outgoing_) {
      api::AgentMigrationView v;
      v.role = api::AgentMigrationView::Role::kSource;
      v.report = r;
      list.items.push_back(std::move(v));
    }
  }
  for (const auto& rec : incoming_->List()) {
    if (rec.offer.spec.name.empty()) continue;  // tombstone of an unknown id
    api::AgentMigrationView v;
    v.role = api::AgentMigrationView::Role::kTarget;
    v.incoming.id = rec.offer.id;
    v.incoming.workload = rec.offer.spec.name;
    v.incoming.source_node = rec.offer.source_node;
    v.incoming.target_node = options_.node;
    v.incoming.phase = std::string(TargetPhaseName(rec.phase));
    v.incoming.bytes = rec.stats.bytes;
    v.incoming.files = rec.stats.files;
    v.incoming.error = rec.error;
    list.items.push_back(std::move(v));
  }
  return list;
}

StatusOr<api::AgentMigrationView> Agent::GetMigration(const std::string& id) {
  api::AgentMigrationList all = ListMigrations();
  for (auto& item : all.items) {
    if (item.id() == id) return std::move(item);
  }
  return NotFoundError("no migration " + id + " on " + options_.node);
}

LocalWorkload Agent::ToLocal(const Workload& w) const {
  LocalWorkload l;
  l.name = w.spec.name;
  l.state = w.state;
  l.managed = w.managed;
  l.epoch = w.epoch;
  l.created_ms = w.created_ms;
  l.started_ms = w.started_ms;
  l.migrations = w.migrations;
  l.restarts = w.restarts;
  l.last_restart_ms = w.last_restart_ms;
  l.last_restart_reason = w.last_restart_reason;
  l.fence_reason = w.fence_reason;
  return l;
}

StatusOr<LocalWorkload> Agent::StartManaged(const api::WorkloadSpec& ws, int64_t epoch,
                                            int64_t created_ms, const RestoreFn& restore) {
  // The same checks as a REST body: the one validator.
  KMX_RETURN_IF_ERROR(api::ValidateWorkloadSpec(ws, "workload"));
  ContainerSpec spec = ContainerSpecFor(ws);
  auto lock = LockFor(spec.name);
  std::lock_guard guard(*lock);
  bool replace_lost = false;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(spec.name);
    if (it != workloads_.end()) {
      Workload& w = it->second;
      if (!w.managed) {
        return ConflictError("an unmanaged workload named " + spec.name + " exists on " +
                             options_.node);
      }
      if (w.state == "running") {
        if (epoch > w.epoch) {
          w.epoch = epoch;
          SaveWorkload(w);
        }
        LocalWorkload out = ToLocal(w);
        auto info = runtime_.Inspect(spec.name);
        if (info.ok()) {
          out.task = info->state;
          out.pid = info->pid;
          out.exit_status = info->exit_status;
        }
        return out;
      }
      // Dead copies (verified by the reconcile) are replaced; anything else
      // is a migration's or a start's.
      if (w.state != "lost" && w.state != "restarting" && w.state != "exited") {
        return ConflictError("workload " + spec.name + " is " + w.state + " on " + options_.node);
      }
      replace_lost = true;
      w.state = "creating";
    } else {
      workloads_[spec.name].state = "creating";
    }
  }
  if (replace_lost) {
    spdlog::warn("workload {} was lost, dead or done on {}; starting it afresh", spec.name,
                 options_.node);
    (void)runtime_.Delete(spec.name);
    (void)RemoveFile(WorkloadPath(spec.name));
  }
  KMX_ASSIGN_OR_RETURN(Workload w, CreateLocked(std::move(spec), true, epoch, created_ms, restore));
  LocalWorkload out = ToLocal(w);
  auto info = runtime_.Inspect(w.spec.name);
  if (info.ok()) {
    out.task = info->state;
    out.pid = info->pid;
  }
  return out;
}

Status Agent::WithManagedRunning(const std::string& name, int64_t epoch,
                                 const std::function<Status(const ContainerSpec&)>& fn) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return ConflictError("workload " + name + " is busy");
  ContainerSpec spec;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || !it->second.managed) {
      return NotFoundError("no managed workload " + name + " on " + options_.node);
    }
    const Workload& w = it->second;
    if (w.state != "running" || w.epoch != epoch || InMigrationLocked(name)) {
      return ConflictError("workload " + name + " is " + w.state + " at epoch " +
                           std::to_string(w.epoch) + " on " + options_.node + ", not running at " +
                           std::to_string(epoch));
    }
    spec = w.spec;
  }
  return fn(spec);
}

Status Agent::ClaimManaged(const std::string& name, int64_t epoch) {
  std::lock_guard l(mu_);
  auto it = workloads_.find(name);
  if (it == workloads_.end() || it->second.state == "incoming" || it->second.state == "creating") {
    return NotFoundError("no workload " + name + " on " + options_.node);
  }
  Workload& w = it->second;
  if (w.managed && w.epoch >= epoch) return Status::Ok();
  if (!w.managed) spdlog::info("workload {} is managed by the cluster from now on", name);
  w.managed = true;
  w.epoch = std::max(w.epoch, epoch);
  // Its next migration's offer says so (the target adopts it managed).
  w.spec.labels[kManagedLabel] = "true";
  w.spec.labels[kEpochLabel] = std::to_string(w.epoch);
  SaveWorkload(w);
  return Status::Ok();
}

Status Agent::DeleteManaged(const std::string& name) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return ConflictError("workload " + name + " is busy (migrating)");
  ContainerSpec spec;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || !it->second.managed) {
      return NotFoundError("no managed workload " + name + " on " + options_.node);
    }
    const std::string& state = it->second.state;
    if (state == "migrating" || state == "frozen" || state == "incoming" || state == "creating") {
      return ConflictError("workload " + name + " is " + state + " on " + options_.node);
    }
    spec = it->second.spec;
  }
  KMX_RETURN_IF_ERROR(runtime_.Delete(name).Annotate("delete"));
  {
    std::lock_guard l(mu_);
    workloads_.erase(name);
  }
  (void)RemoveFile(WorkloadPath(name));
  (void)RemoveFile(spec.log_path);
  spdlog::info("managed workload {} deleted from {}", name, options_.node);
  return Status::Ok();
}

Status Agent::FenceManaged(const std::string& name, const std::string& why) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return ConflictError("workload " + name + " is busy");
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || !it->second.managed) {
      return NotFoundError("no managed workload " + name + " on " + options_.node);
    }
    const std::string& state = it->second.state;
    if (state == "fenced") return Status::Ok();
    if (state != "running" && state != "restarting") {
      return ConflictError("workload " + name + " is " + state + " on " + options_.node);
    }
    if (InMigrationLocked(name)) {
      return ConflictError("workload " + name + " has an unfinished migration");
    }
  }
  auto info = runtime_.Inspect(name);
  if (!info.ok() && info.status().code() != Code::kNotFound) {
    return info.status().Annotate("fence " + name);
  }
  if (info.ok() && (info->state == TaskState::kRunning || info->state == TaskState::kCreated)) {
    KMX_RETURN_IF_ERROR(runtime_.Pause(name).Annotate("fence " + name + ": pause"));
  }
  std::lock_guard l(mu_);
  auto it = workloads_.find(name);
  if (it == workloads_.end()) return NotFoundError("workload " + name + " vanished");
  Workload& w = it->second;
  w.state = "fenced";
  w.fence_reason = why;
  w.fenced_ms = clock_.WallMillis();
  SaveWorkload(w);
  spdlog::error("fenced workload {} on {} (epoch {}, task {}): {}", name, options_.node, w.epoch,
                info.ok() ? TaskStateName(info->state) : TaskStateName(TaskState::kNone), why);
  return Status::Ok();
}

std::vector<std::string> Agent::FenceAllManaged(const std::string& why) {
  std::vector<std::string> names;
  {
    std::lock_guard l(mu_);
    for (const auto& [name, w] : workloads_) {
      if (w.managed && (w.state == "running" || w.state == "restarting")) names.push_back(name);
    }
  }
  std::vector<std::string> fenced;
  for (const auto& name : names) {
    Status s = FenceManaged(name, why);
    if (s.ok()) {
      fenced.push_back(name);
    } else {
      // Asked again at the next check: a debug line, not one a round.
      spdlog::debug("cannot fence workload {} on {} yet: {}", name, options_.node, s.ToString());
    }
  }
  return fenced;
}

Status Agent::UnfenceManaged(const std::string& name) {
  auto lock = LockFor(name);
  std::unique_lock guard(*lock, std::try_to_lock);
  if (!guard.owns_lock()) return ConflictError("workload " + name + " is busy");
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end() || it->second.state != "fenced") {
      return NotFoundError("no fenced workload " + name + " on " + options_.node);
    }
  }
  auto info = runtime_.Inspect(name);
  if (!info.ok() && info.status().code() != Code::kNotFound) {
    return info.status().Annotate("thaw " + name);
  }
  if (info.ok() && (info->state == TaskState::kPaused)) {
    KMX_RETURN_IF_ERROR(runtime_.Resume(name).Annotate("thaw " + name + ": resume"));
  }
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end()) return NotFoundError("workload " + name + " vanished");
    Workload& w = it->second;
    w.state = "running";
    w.fence_reason.clear();
    w.fenced_ms = 0;
    SaveWorkload(w);
    spdlog::warn("thawed workload {} on {}: the cluster still names this node its owner (epoch {})",
                 name, options_.node, w.epoch);
  }
  // A task that died while fenced is restarted by the next reconcile.
  return Status::Ok();
}

std::optional<LocalWorkload> Agent::Local(const std::string& name, bool inspect) {
  LocalWorkload out;
  {
    std::lock_guard l(mu_);
    auto it = workloads_.find(name);
    if (it == workloads_.end()) return std::nullopt;
    out = ToLocal(it->second);
    out.name = name;
  }
  if (inspect && out.state != "incoming" && out.state != "creating") {
    auto info = runtime_.Inspect(name);
    if (info.ok()) {
      out.task = info->state;
      out.pid = info->pid;
      out.exit_status = info->exit_status;
    } else if (info.status().code() == Code::kNotFound) {
      out.task = TaskState::kNone;
    }
  }
  return out;
}

std::vector<LocalWorkload> Agent::ListLocal() {
  std::vector<LocalWorkload> out;
  std::lock_guard l(mu_);
  for (const auto& [name, w] : workloads_) {
    out.push_back(ToLocal(w));
    out.back().name = name;
  }
  return out;
}

std::optional<MigrationReport> Agent::OutgoingReport(const std::string& id) {
  std::lock_guard l(mu_);
  auto it = outgoing_.find(id);
  if (it == outgoing_.end()) return std::nullopt;
  return it->second;
}

size_t Agent::WorkloadCount() {
  std::lock_guard lock(mu_);
  return workloads_.size();
}

size_t Agent::FencedCount() {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [_, w] : workloads_) n += w.state == "fenced" ? 1 : 0;
  return n;
}

}  // namespace kmosix::agent
