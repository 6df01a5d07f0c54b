#include "kmosix/migration_target.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>

#include "kmosix/files.h"
#include "kmosix/spec_json.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;

bool IsFinalPhase(TargetPhase p) {
  return p == TargetPhase::kCommitted || p == TargetPhase::kAborted;
}

Status WrongPhase(const IncomingRecord& r, std::string_view wanted) {
  return ConflictError("migration " + r.offer.id + " is " + std::string(TargetPhaseName(r.phase)) +
                       ", not " + std::string(wanted));
}

}  // namespace

nlohmann::json IncomingRecordToJson(const IncomingRecord& r) {
  nlohmann::json sections = nlohmann::json::array();
  for (const auto& s : r.landing.sections) {
    sections.push_back({{"name", s.name}, {"path", s.path}, {"isFile", s.is_file}});
  }
  return {{"offer", MigrationOfferToJson(r.offer)},
          {"logPath", r.offer.spec.log_path},
          {"phase", TargetPhaseName(r.phase)},
          {"updatedMs", r.updated_ms},
          {"pid", r.pid},
          {"error", r.error},
          {"adopted", r.adopted},
          {"resumed", r.resumed},
          {"discardPending", r.discard_pending},
          {"bytes", r.stats.bytes},
          {"files", r.stats.files},
          {"landing", sections}};
}

StatusOr<IncomingRecord> IncomingRecordFromJson(const nlohmann::json& j) {
  IncomingRecord r;
  try {
    KMX_ASSIGN_OR_RETURN(r.offer, ParseMigrationOffer(j.at("offer").dump()));
    r.offer.spec.log_path = j.at("logPath").get<std::string>();
    r.phase = ParseTargetPhase(j.at("phase").get<std::string>());
    if (r.phase == TargetPhase::kUnknown) return InvalidError("bad phase in incoming record");
    r.updated_ms = j.at("updatedMs").get<int64_t>();
    r.pid = j.at("pid").get<uint32_t>();
    r.error = j.at("error").get<std::string>();
    // Absent in records of older agents: taken as not adopted (a restart
    // asks the registry, which keeps a record it already has).
    r.adopted = j.value("adopted", false);
    // Absent in records of older agents, whose restored copies ran at once.
    r.resumed = j.value("resumed", true);
    // Absent in records of older agents, which never retried a discard.
    r.discard_pending = j.value("discardPending", false);
    r.stats.bytes = j.at("bytes").get<uint64_t>();
    r.stats.files = j.at("files").get<uint64_t>();
    for (const auto& s : j.at("landing")) {
      r.landing.sections.push_back({s.at("name").get<std::string>(),
                                    s.at("path").get<std::string>(), s.at("isFile").get<bool>()});
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidError(std::string("bad incoming record: ") + e.what());
  }
  return r;
}

IncomingMigrations::IncomingMigrations(CheckpointEngine& engine, ContainerRuntime& runtime,
                                       Clock& clock, Options options, Hooks hooks)
    : engine_(engine),
      runtime_(runtime),
      clock_(clock),
      options_(std::move(options)),
      hooks_(std::move(hooks)) {}

PeerInfo IncomingMigrations::Info() { return {options_.node, options_.version}; }

std::shared_ptr<IncomingMigrations::Entry> IncomingMigrations::Find(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second;
}

Status IncomingMigrations::Save(IncomingRecord& r, TargetPhase phase) {
  IncomingRecord next = r;
  next.phase = phase;
  next.touched = clock_.Now();
  next.updated_ms = clock_.WallMillis();
  if (hooks_.persist) {
    if (Status s = hooks_.persist(next); !s.ok()) {
      spdlog::error("incoming migration {} of {}: phase {} not recorded: {}", r.offer.id,
                    r.offer.spec.name, TargetPhaseName(phase), s.ToString());
      return s.Annotate("node " + options_.node + " cannot record migration " + r.offer.id +
                        " as " + std::string(TargetPhaseName(phase)));
    }
  }
  r = std::move(next);
  return Status::Ok();
}

Status IncomingMigrations::DiscardCopy(const IncomingRecord& r) {
  Status s = engine_.Discard(r.offer.spec.name);
  const std::string scratch = options_.scratch_dir + "/in-" + r.offer.id;
  // Keep CRIU's logs of a failed restore for whoever investigates.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(scratch + "/work", ec)) {
    if (e.path().extension() == ".log") {
      std::error_code copy_ec;
      const std::string kept =
          options_.log_dir + "/criu-" + r.offer.id + "-" + e.path().filename().string();
      fs::copy_file(e.path(), kept, fs::copy_options::overwrite_existing, copy_ec);
      fs::permissions(kept, fs::perms::owner_read | fs::perms::owner_write, copy_ec);
    }
  }
  // A CRIU killed mid-restore leaves its cgroup yard mounted in there.
  if (Status removed = RemoveTree(scratch); !removed.ok() && s.ok()) {
    s = RetryError(removed.message());
  }
  return s;
}

void IncomingMigrations::AbortLocked(Entry& e, const std::string& why) {
  IncomingRecord& r = e.record;
  if (IsFinalPhase(r.phase)) return;
  spdlog::warn("incoming migration {} of {} aborted: {}", r.offer.id, r.offer.spec.name, why);
  const Status discarded = DiscardCopy(r);
  if (!discarded.ok()) {
    // containerd down or restarting (the fault soak's B3): what is left here
    // would refuse every later migration of the workload to this node.
    spdlog::error(
        "incoming migration {} of {}: discard failed: {}; recorded, and tried again until it is "
        "gone",
        r.offer.id, r.offer.spec.name, discarded.ToString());
  }
  std::error_code ec;
  if (!r.offer.spec.log_path.empty()) fs::remove(r.offer.spec.log_path, ec);
  r.error = why;
  r.pid = 0;
  r.discard_pending = !discarded.ok();
  if (!Save(r, TargetPhase::kAborted).ok()) {
    // Acted on even if not recorded: the copy is gone, and a record left in
    // any phase before Committed recovers to Aborted.
    r.phase = TargetPhase::kAborted;
    r.touched = clock_.Now();
  }
  ReleaseIntake(r.offer.id);
  if (hooks_.unreserve) hooks_.unreserve(r.offer.spec.name);
}

void IncomingMigrations::ReleaseIntake(const std::string& id) {
  if (options_.intake != nullptr) options_.intake->Release(id);
}

StreamLimits IncomingMigrations::ReceiveLimits(const std::string& id) {
  auto e = Find(id);
  if (!e) return {};
  std::lock_guard lock(e->mu);
  return options_.intake != nullptr ? options_.intake->LimitsFor(e->record.offer)
                                    : e->record.offer.stream;
}

Status IncomingMigrations::Prepare(const MigrationOffer& offer_in) {
  KMX_RETURN_IF_ERROR(ValidateName(offer_in.id).Annotate("migration id"));
  KMX_RETURN_IF_ERROR(ValidateName(offer_in.spec.name).Annotate("workload name"));
  if (auto existing = Find(offer_in.id)) {
    std::lock_guard lock(existing->mu);
    if (existing->record.phase == TargetPhase::kPrepared &&
        existing->record.offer.spec.name == offer_in.spec.name) {
      return Status::Ok();  // a retried Prepare
    }
    return WrongPhase(existing->record, "new");
  }
  if (options_.intake != nullptr) {
    KMX_RETURN_IF_ERROR(options_.intake->CheckOffer(offer_in).Annotate("node " + options_.node));
    if (Status s = options_.intake->Admit(offer_in.id); !s.ok()) {
      spdlog::info("incoming migration {} of {} refused: {}", offer_in.id, offer_in.spec.name,
                   s.message());
      return s.Annotate("node " + options_.node);
    }
  }
  if (Status s = runtime_.ImageExists(offer_in.spec.image); !s.ok()) {
    ReleaseIntake(offer_in.id);
    if (s.code() == Code::kNotFound) {
      return NotFoundError("image " + offer_in.spec.image + " is not on node " + options_.node);
    }
    return s;
  }
  auto entry = std::make_shared<Entry>();
  entry->name = offer_in.spec.name;
  {
    std::lock_guard lock(mu_);
    // A concurrent Prepare of the same id won: its slot is its own.
    if (entries_.contains(offer_in.id)) return ConflictError("migration id in use");
    entries_[offer_in.id] = entry;
  }
  std::lock_guard lock(entry->mu);
  IncomingRecord& r = entry->record;
  r.offer = offer_in;
  r.offer.spec.log_path = options_.log_dir + "/" + offer_in.spec.name + ".log";
  if (Status s = hooks_.reserve ? hooks_.reserve(r.offer.spec.name) : Status::Ok(); !s.ok()) {
    ReleaseIntake(offer_in.id);
    std::lock_guard map_lock(mu_);
    entries_.erase(offer_in.id);
    return s;
  }
  // The name is ours here now: what an earlier copy of it left (an abort
  // whose discard failed, a container nothing claims) goes first, or the
  // new container could not be made (B3: "already exists", for good).
  if (Status s = ClearStaleClaimed(r.offer.spec.name, entry.get()); !s.ok()) {
    ReleaseIntake(offer_in.id);
    if (hooks_.unreserve) hooks_.unreserve(r.offer.spec.name);
    r.phase = TargetPhase::kAborted;  // for a call already waiting on the entry
    std::lock_guard map_lock(mu_);
    entries_.erase(offer_in.id);
    return s.Annotate("node " + options_.node + " cannot take " + r.offer.spec.name);
  }
  if (Status s = Save(r, TargetPhase::kPrepared); !s.ok()) {
    // Nothing is made here that the records cannot name: refuse the offer.
    ReleaseIntake(offer_in.id);
    if (hooks_.unreserve) hooks_.unreserve(r.offer.spec.name);
    r.phase = TargetPhase::kAborted;  // for a call already waiting on the entry
    std::lock_guard map_lock(mu_);
    entries_.erase(offer_in.id);
    return s;
  }
  // What the engine may fault in ahead comes from the node's shared budget.
  const uint64_t prefault = options_.intake != nullptr
                                ? options_.intake->GrantPrefault(r.offer.id, r.offer.memory_bytes)
                                : r.offer.memory_bytes;
  auto landing =
      engine_.Prepare(r.offer.spec, options_.scratch_dir + "/in-" + r.offer.id, prefault);
  if (!landing.ok()) {
    AbortLocked(*entry, landing.status().ToString());
    return landing.status().Annotate("prepare on " + options_.node);
  }
  r.landing = *landing;
  if (Status s = Save(r, TargetPhase::kPrepared); !s.ok()) {
    AbortLocked(*entry, s.ToString());
    return s;
  }
  return Status::Ok();
}

StatusOr<Landing> IncomingMigrations::BeginReceive(const std::string& id) {
  auto e = Find(id);
  if (!e) return NotFoundError("no migration " + id + " here");
  std::lock_guard lock(e->mu);
  if (e->record.phase != TargetPhase::kPrepared) return WrongPhase(e->record, "Prepared");
  KMX_RETURN_IF_ERROR(Save(e->record, TargetPhase::kReceiving));
  return e->record.landing;
}

Status IncomingMigrations::EndReceive(const std::string& id, const Status& result,
                                      const TransferStats& stats) {
  auto e = Find(id);
  if (!e) return NotFoundError("no migration " + id + " here");
  std::lock_guard lock(e->mu);
  if (e->record.phase != TargetPhase::kReceiving) return WrongPhase(e->record, "Receiving");
  if (!result.ok()) {
    if (IsStreamLimitError(result) && options_.intake != nullptr) options_.intake->CountStreamCut();
    AbortLocked(*e, "transfer failed: " + result.ToString());
    return result;
  }
  e->record.stats = stats;
  if (Status s = Save(e->record, TargetPhase::kReceived); !s.ok()) {
    AbortLocked(*e, s.ToString());
    return s;
  }
  return Status::Ok();
}

StatusOr<RestoreReport> IncomingMigrations::Restore(const std::string& id) {
  auto e = Find(id);
  if (!e) return NotFoundError("no migration " + id + " here");
  std::lock_guard lock(e->mu);
  IncomingRecord& r = e->record;
  if (r.phase == TargetPhase::kRestored) return RestoreReport{r.pid, 0};  // retried
  if (r.phase != TargetPhase::kReceived) return WrongPhase(r, "Received");
  KMX_RETURN_IF_ERROR(Save(r, TargetPhase::kRestoring));  // nothing restored yet
  const auto start = clock_.Now();
  // Stopped until the commit: if the migration aborts, the source runs on
  // from its freeze, and a copy that ran here meanwhile would have done the
  // same work (and its side effects) once already.
  if (Status s = engine_.RestoreStopped(r.offer.spec, r.landing); !s.ok()) {
    AbortLocked(*e, "restore failed: " + s.ToString());
    return s.Annotate("restore on " + options_.node);
  }
  auto info = runtime_.Inspect(r.offer.spec.name);
  if (!info.ok() || info->state != TaskState::kRunning) {
    Status s = info.ok() ? FailedError("restored task is not running") : info.status();
    AbortLocked(*e, "restore check failed: " + s.ToString());
    return s.Annotate("restore on " + options_.node);
  }
  r.pid = info->pid;
  if (Status s = Save(r, TargetPhase::kRestored); !s.ok()) {
    // A running copy the records do not name could never be committed.
    AbortLocked(*e, s.ToString());
    return s;
  }
  ReleaseIntake(r.offer.id);  // it no longer receives
  // The images are no longer needed once the task runs.
  (void)RemoveTree(options_.scratch_dir + "/in-" + r.offer.id);
  return RestoreReport{r.pid, Seconds(clock_.Now() - start)};
}

Status IncomingMigrations::CommitLocked(Entry& e) {
  IncomingRecord& r = e.record;
  r.adopted = false;  // until the registry has written its record
  r.resumed = false;  // until the copy runs
  if (Status s = Save(r, TargetPhase::kCommitted); !s.ok()) {
    // A verdict that cannot be remembered is not given: still Restored
    // (and still stopped: the copy never ran).
    return RetryError(s.message() + "; not committed");
  }
  ReleaseIntake(r.offer.id);
  // The copy runs from here (the workload's downtime ends), before the
  // registry's write; AdoptLocked's write records both.
  ResumeLocked(e, "committed", /*save=*/false);
  AdoptLocked(e, "committed");
  return Status::Ok();
}

bool IncomingMigrations::ResumeLocked(Entry& e, const std::string& when, bool save) {
  IncomingRecord& r = e.record;
  if (Status s = engine_.Resume(r.offer.spec.name); !s.ok()) {
    if (s.code() == Code::kConflict) {
      // Paused meanwhile (the agent freezes what it owns when it loses its
      // lease): its processes are still stopped under the freezer, so
      // resume them once it is thawed.
      auto info = runtime_.Inspect(r.offer.spec.name);
      if (info.ok() && info->state == TaskState::kPaused) return false;
    }
    if (s.code() != Code::kNotFound && s.code() != Code::kConflict) {
      spdlog::error(
          "incoming migration {} of {} ({}): the committed copy could not be resumed ({}); "
          "trying again later",
          r.offer.id, r.offer.spec.name, when, s.ToString());
      return false;
    }
    // No container, or no task: nothing stopped is left to resume.
    spdlog::warn("incoming migration {} of {} ({}): nothing to resume: {}", r.offer.id,
                 r.offer.spec.name, when, s.ToString());
  }
  r.resumed = true;
  if (save && !Save(r, TargetPhase::kCommitted).ok()) {
    // The next start resumes it again, which a running copy ignores.
    r.resumed = false;
  }
  return true;
}

void IncomingMigrations::AdoptLocked(Entry& e, const std::string& when) {
  IncomingRecord& r = e.record;
  if (hooks_.adopt) {
    if (Status s = hooks_.adopt(r.offer, r.pid); !s.ok()) {
      spdlog::error(
          "incoming migration {} of {} ({}): the workload record was not written ({}); the "
          "next start completes it from the Committed verdict",
          r.offer.id, r.offer.spec.name, when, s.ToString());
      return;
    }
  }
  r.adopted = true;
  if (Status s = Save(r, TargetPhase::kCommitted); !s.ok()) {
    // The next start asks the registry again, which keeps the record it has.
    r.adopted = false;
  }
}

bool IncomingMigrations::AskOracleLocked(Entry& e, const std::string& when) {
  IncomingRecord& r = e.record;
  auto owned = hooks_.owned_here(r);
  if (!owned.ok()) {
    spdlog::warn(
        "incoming migration {} of {} ({}): cannot tell who owns it ({}); kept running "
        "uncommitted, asking again later",
        r.offer.id, r.offer.spec.name, when, owned.status().ToString());
    return false;
  }
  if (*owned) {
    spdlog::warn(
        "incoming migration {} of {} ({}): the cluster names this node the owner; "
        "committing without the source",
        r.offer.id, r.offer.spec.name, when);
    if (Status s = CommitLocked(e); !s.ok()) {
      spdlog::warn("incoming migration {} of {}: {}; asking again later", r.offer.id,
                   r.offer.spec.name, s.ToString());
      return false;
    }
  } else {
    AbortLocked(e, when + "; the cluster does not name this node the owner");
  }
  return true;
}

StatusOr<TargetPhase> IncomingMigrations::Commit(const std::string& id) {
  auto e = Find(id);
  if (!e) return NotFoundError("no migration " + id + " here");
  std::lock_guard lock(e->mu);
  IncomingRecord& r = e->record;
  if (IsFinalPhase(r.phase)) return r.phase;
  if (r.phase != TargetPhase::kRestored) return WrongPhase(r, "Restored");
  KMX_RETURN_IF_ERROR(CommitLocked(*e));
  return TargetPhase::kCommitted;
}

StatusOr<TargetPhase> IncomingMigrations::Abort(const std::string& id) {
  auto e = Find(id);
  if (!e) {
    // Never heard of it: nothing of it runs here. Remember the verdict so a
    // late Prepare of the same id cannot start it.
    auto tomb = std::make_shared<Entry>();
    tomb->record.offer.id = id;
    tomb->record.phase = TargetPhase::kAborted;
    tomb->record.error = "aborted before it was prepared";
    tomb->record.touched = clock_.Now();
    std::lock_guard lock(mu_);
    auto [it, inserted] = entries_.emplace(id, tomb);
    if (!inserted)
      e = it->second;
    else
      return TargetPhase::kAborted;
  }
  std::lock_guard lock(e->mu);
  AbortLocked(*e, "aborted by the source");
  return e->record.phase;
}

StatusOr<TargetPhase> IncomingMigrations::Query(const std::string& id) {
  auto e = Find(id);
  if (!e) return TargetPhase::kUnknown;
  std::lock_guard lock(e->mu);
  return e->record.phase;
}

void IncomingMigrations::ExpireIdle() {
  std::vector<std::shared_ptr<Entry>> all;
  {
    std::lock_guard lock(mu_);
    for (auto& [_, e] : entries_) all.push_back(e);
  }
  const auto now = clock_.Now();
  for (auto& e : all) {
    std::unique_lock lock(e->mu, std::try_to_lock);
    if (!lock.owns_lock()) continue;  // busy, so not idle
    if (e->record.phase == TargetPhase::kCommitted && !e->record.resumed) {
      (void)ResumeLocked(*e, "resume retried", /*save=*/true);
      continue;
    }
    if (e->record.phase == TargetPhase::kAborted && e->record.discard_pending) {
      if (now - e->record.touched >= options_.discard_retry) {
        (void)RetryDiscardLocked(*e, "discard retried", /*claimed=*/false);
      }
      continue;
    }
    if (IsFinalPhase(e->record.phase)) continue;
    if (now - e->record.touched >= options_.idle_timeout) {
      const std::string why = "no progress from the source for " +
                              std::to_string(Seconds(options_.idle_timeout)) + " s";
      if (e->record.phase == TargetPhase::kRestored && hooks_.owned_here) {
        (void)AskOracleLocked(*e, why);  // not answered: asked again next time
      } else {
        AbortLocked(*e, why);
      }
    }
  }
}

std::vector<std::string> IncomingMigrations::ForgetFinished(Clock::Duration age) {
  std::vector<std::string> forgotten;
  const auto now = clock_.Now();
  std::lock_guard lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    std::unique_lock elock(it->second->mu, std::try_to_lock);
    const IncomingRecord& r = it->second->record;
    // A Committed verdict whose workload record is not known written is kept
    // whatever its age: the next start completes the record from it.
    // So is one whose copy is not known resumed (ExpireIdle resumes it).
    const bool pending_adoption = r.phase == TargetPhase::kCommitted && (!r.adopted || !r.resumed);
    // So is an abort whose leftovers are not removed yet (ExpireIdle).
    const bool pending_discard = r.phase == TargetPhase::kAborted && r.discard_pending;
    if (elock.owns_lock() && IsFinalPhase(r.phase) && !pending_adoption && !pending_discard &&
        now - r.touched >= age) {
      forgotten.push_back(it->first);
      elock.unlock();
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  return forgotten;
}

void IncomingMigrations::Recover(std::vector<IncomingRecord> records) {
  // Only the newest record of a workload name can name the copy running
  // under that name now (an older Committed one's copy may have left since).
  std::map<std::string, int64_t> newest;
  for (const auto& record : records) {
    auto [it, inserted] = newest.emplace(record.offer.spec.name, record.updated_ms);
    if (!inserted) it->second = std::max(it->second, record.updated_ms);
  }
  for (auto& record : records) {
    auto e = std::make_shared<Entry>();
    e->record = std::move(record);
    e->name = e->record.offer.spec.name;
    e->record.touched = clock_.Now();
    {
      std::lock_guard lock(mu_);
      entries_[e->record.offer.id] = e;
    }
    std::lock_guard lock(e->mu);
    IncomingRecord& r = e->record;
    // A verdict whose adoption is settled without one: marked adopted, so
    // that it is forgotten in its time (ForgetFinished).
    auto settled = [&](const char* why) {
      spdlog::warn("incoming migration {} of {}: committed, not adopted: {}", r.offer.id,
                   r.offer.spec.name, why);
      r.adopted = true;
      if (!Save(r, TargetPhase::kCommitted).ok()) r.adopted = false;
    };
    if (r.phase == TargetPhase::kCommitted && !r.adopted &&
        r.updated_ms < newest[r.offer.spec.name]) {
      settled("a newer migration names the workload");
      continue;
    }
    if (r.phase == TargetPhase::kCommitted && !r.resumed) {
      // Committed, and maybe still stopped (the agent died between the
      // verdict and the resume): the copy is this node's to run. An older
      // verdict's copy may have left since: only the newest one's.
      if (r.updated_ms < newest[r.offer.spec.name]) {
        r.resumed = true;
        if (!Save(r, TargetPhase::kCommitted).ok()) r.resumed = false;
      } else if (auto info = runtime_.Inspect(r.offer.spec.name); info.ok()) {
        (void)ResumeLocked(*e, "agent restarted after the commit", /*save=*/r.adopted);
      }
    }
    if (r.phase == TargetPhase::kCommitted && !r.adopted) {
      // The verdict was written but the registry's record maybe not (the
      // agent died in between): this node owns the committed copy; complete
      // the record, never take the copy for an orphan.
      auto info = runtime_.Inspect(r.offer.spec.name);
      if (!info.ok() && info.status().code() == Code::kNotFound) {
        settled("its copy is gone");
        continue;
      }
      // Unsure (the runtime cannot say): adopt; a record whose container is
      // gone is marked lost, a container nobody records would be deleted.
      if (info.ok()) r.pid = info->pid;
      spdlog::warn("incoming migration {} of {}: committed before a restart; adopting its copy",
                   r.offer.id, r.offer.spec.name);
      AdoptLocked(*e, "agent restarted after the commit");
      continue;
    }
    if (IsFinalPhase(e->record.phase)) continue;
    if (hooks_.reserve) (void)hooks_.reserve(e->record.offer.spec.name);
    if (e->record.phase == TargetPhase::kRestored && hooks_.owned_here) {
      // Its task is there, stopped since the restore (a running state to
      // containerd); the oracle's commit resumes it.
      auto info = runtime_.Inspect(e->record.offer.spec.name);
      if (info.ok() && info->state == TaskState::kRunning) {
        if (!AskOracleLocked(*e, "agent restarted before the commit")) {
          // Unanswered: the next ExpireIdle asks again.
          e->record.touched = clock_.Now() - options_.idle_timeout;
        }
        continue;
      }
    }
    AbortLocked(*e, "agent restarted before the commit");
  }
  // What aborts left (containerd was down): now that every record is back
  // (the names they claim count), removed again; ExpireIdle goes on.
  std::vector<std::shared_ptr<Entry>> all;
  {
    std::lock_guard lock(mu_);
    for (auto& [_, e] : entries_) all.push_back(e);
  }
  for (auto& e : all) {
    std::lock_guard lock(e->mu);
    if (e->record.phase != TargetPhase::kAborted || !e->record.discard_pending) continue;
    (void)RetryDiscardLocked(*e, "agent restarted", /*claimed=*/false);
  }
}

std::vector<std::shared_ptr<IncomingMigrations::Entry>> IncomingMigrations::EntriesNamed(
    const std::string& name, const Entry* except) {
  std::vector<std::shared_ptr<Entry>> out;
  std::lock_guard lock(mu_);
  for (auto& [_, e] : entries_) {
    if (e.get() != except && e->name == name) out.push_back(e);
  }
  return out;
}

Status IncomingMigrations::RetryDiscardLocked(Entry& e, const std::string& when, bool claimed) {
  IncomingRecord& r = e.record;
  const std::string name = r.offer.spec.name;
  auto later = [&](Status s) {
    r.touched = clock_.Now();  // the next try after options_.discard_retry
    return s;
  };
  if (hooks_.owned_here) {
    // Cluster mode: never a copy the cluster names this node the owner of.
    auto owned = hooks_.owned_here(r);
    if (!owned.ok()) {
      spdlog::warn(
          "incoming migration {} of {} ({}): what its abort left is kept: cannot tell who owns "
          "it ({}); trying again later",
          r.offer.id, name, when, owned.status().ToString());
      return later(owned.status());
    }
    if (*owned) {
      spdlog::error(
          "incoming migration {} of {} ({}): aborted here, but the cluster names this node its "
          "owner through it: what is left of its copy is kept",
          r.offer.id, name, when);
      return later(RetryError("the cluster names " + options_.node + " the owner of " + name +
                              " through migration " + r.offer.id));
    }
  }
  if (!claimed) {
    if (Status s = hooks_.reserve ? hooks_.reserve(name) : Status::Ok(); !s.ok()) {
      // A workload or a live incoming migration holds the name here: its
      // container is not this abort's to remove (whoever took the name
      // cleared what was left first, or gives the name back soon).
      spdlog::info("incoming migration {} of {} ({}): leftovers kept for now: {}", r.offer.id, name,
                   when, s.message());
      return later(RetryError(s.message()));
    }
    for (auto& other : EntriesNamed(name, &e)) {
      std::unique_lock lock(other->mu, std::try_to_lock);
      const bool committed_here =
          !lock.owns_lock() ||
          (other->record.phase == TargetPhase::kCommitted && !other->record.adopted);
      if (committed_here) {
        if (hooks_.unreserve) hooks_.unreserve(name);
        return later(RetryError("a copy of " + name + " may be committed here, not adopted yet"));
      }
    }
  }
  Status s = DiscardCopy(r);
  if (!claimed && hooks_.unreserve) hooks_.unreserve(name);
  if (!s.ok()) {
    spdlog::warn(
        "incoming migration {} of {} ({}): what its abort left cannot be removed yet: {}; trying "
        "again later",
        r.offer.id, name, when, s.ToString());
    return later(s);
  }
  spdlog::info("incoming migration {} of {} ({}): what its abort left is removed", r.offer.id, name,
               when);
  r.discard_pending = false;
  // Not recorded: the next start removes it again, which finds nothing.
  (void)Save(r, TargetPhase::kAborted);
  return Status::Ok();
}

Status IncomingMigrations::ClearStale(const std::string& name) {
  return ClearStaleClaimed(name, nullptr);
}

Status IncomingMigrations::ClearStaleClaimed(const std::string& name, const Entry* except) {
  // A committed copy of that name not adopted yet is this node's.
  for (auto& other : EntriesNamed(name, except)) {
    std::lock_guard lock(other->mu);
    if (other->record.phase == TargetPhase::kCommitted && !other->record.adopted) {
      return ConflictError("migration " + other->record.offer.id + " committed " + name +
                           " here; its record is not written yet");
    }
  }
  for (auto& other : EntriesNamed(name, except)) {
    std::lock_guard lock(other->mu);
    if (other->record.phase != TargetPhase::kAborted || !other->record.discard_pending) continue;
    KMX_RETURN_IF_ERROR(
        RetryDiscardLocked(*other, "before a new copy of " + name, /*claimed=*/true));
  }
  // Left by something no record names any more (a discard that "succeeded"
  // before this agent recorded failures, a release that failed): nothing
  // here claims it, the caller holds the name.
  auto info = runtime_.Inspect(name);
  if (info.ok()) {
    spdlog::warn(
        "deleting stale container {} on {}: no workload and no live incoming migration here "
        "claims it",
        name, options_.node);
    return engine_.Discard(name).Annotate("delete the stale container " + name);
  }
  if (info.status().code() == Code::kNotFound) return Status::Ok();
  return info.status().Annotate("inspect " + name);
}

std::vector<IncomingRecord> IncomingMigrations::List() {
  std::vector<std::shared_ptr<Entry>> all;
  {
    std::lock_guard lock(mu_);
    for (auto& [_, e] : entries_) all.push_back(e);
  }
  std::vector<IncomingRecord> out;
  for (auto& e : all) {
    std::lock_guard lock(e->mu);
    out.push_back(e->record);
  }
  return out;
}

}  // namespace kmosix
