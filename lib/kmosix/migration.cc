#include "kmosix/migration.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <utility>

#include "kmosix/files.h"
#include "kmosix/intake_limits.h"
#include "kmosix/json_fields.h"

namespace kmosix {
namespace {

using api::Decider;
using api::FaultKind;
using api::MigrationOutcome;

constexpr std::string_view kNotJournaled = "migration journal not written";

constexpr std::string_view kFrozenSuffix =
    "; kept frozen here until the target and the ownership ledger answer";

StatusOr<Code> ParseCode(std::string_view s) {
  for (Code c : {Code::kOk, Code::kRetry, Code::kConflict, Code::kInvalid, Code::kNotFound,
                 Code::kFailed, Code::kPermissionDenied}) {
    if (CodeName(c) == s) return c;
  }
  return InvalidError("unknown error code \"" + std::string(s) + "\"");
}

}  // namespace

nlohmann::json MigrationReportToJson(const MigrationReport& r) {
  const auto& t = r.timings;
  nlohmann::json j = {
      {"id", r.id},
      {"workload", r.workload},
      {"sourceNode", r.source_node},
      {"targetNode", r.target_node},
      {"target", r.target_url},
      {"phase", MigrationPhaseName(r.phase)},
      {"outcome", IsFinal(r.phase) ? MigrationPhaseName(r.phase) : "InProgress"},
      {"startedMs", r.started_ms},
      {"finishedMs", r.finished_ms},
      {"bytes", r.bytes},
      {"files", r.files},
      {"targetPid", r.target_pid},
      {"timings",
       {{"prepare", t.prepare},
        {"freeze", t.freeze},
        {"checkpoint", t.checkpoint},
        {"transfer", t.transfer},
        {"restore", t.restore},
        {"commit", t.commit},
        {"downtime", t.downtime},
        {"total", t.total}}},
  };
  if (!r.error.ok()) {
    j["error"] = {{"code", CodeName(r.error.code())}, {"message", r.error.message()}};
    j["failedPhase"] = r.failed_phase;
  }
  if (r.source_released) j["sourceReleased"] = true;
  if (r.fault) j["fault"] = MigrationFaultToJson(*r.fault);
  if (r.resolution) j["resolution"] = MigrationResolutionToJson(*r.resolution);
  return j;
}

nlohmann::json MigrationFaultToJson(const api::MigrationFault& f) {
  return {{"kind", api::FaultKindName(f.kind)},
          {"phase", MigrationPhaseName(f.phase)},
          {"node", f.node},
          {"message", f.message},
          {"atMs", f.at_ms}};
}

StatusOr<api::MigrationFault> MigrationFaultFromJson(const nlohmann::json& j) {
  JsonFields f(j, "migration fault");
  KMX_RETURN_IF_ERROR(f.Check({"kind", "phase", "node", "message", "atMs"}));
  api::MigrationFault out;
  std::string kind, phase;
  KMX_RETURN_IF_ERROR(f.String("kind", kind, /*required=*/true));
  auto k = api::ParseFaultKind(kind);
  if (!k.ok()) return k.status().Annotate("field \"kind\" in migration fault");
  out.kind = *k;
  KMX_RETURN_IF_ERROR(f.String("phase", phase, /*required=*/true));
  auto p = ParseMigrationPhase(phase);
  if (!p.ok()) return p.status().Annotate("field \"phase\" in migration fault");
  out.phase = *p;
  KMX_RETURN_IF_ERROR(f.String("node", out.node));
  KMX_RETURN_IF_ERROR(f.String("message", out.message));
  KMX_RETURN_IF_ERROR(f.Int("atMs", out.at_ms));
  KMX_RETURN_IF_ERROR(api::ValidateMigrationFault(out));
  return out;
}

nlohmann::json MigrationResolutionToJson(const api::MigrationResolution& r) {
  return {{"outcome", api::MigrationOutcomeName(r.outcome)},
          {"decidedBy", api::DeciderName(r.decided_by)},
          {"atMs", r.at_ms}};
}

StatusOr<api::MigrationResolution> MigrationResolutionFromJson(const nlohmann::json& j) {
  JsonFields f(j, "migration resolution");
  KMX_RETURN_IF_ERROR(f.Check({"outcome", "decidedBy", "atMs"}));
  api::MigrationResolution out;
  std::string outcome, by;
  KMX_RETURN_IF_ERROR(f.String("outcome", outcome, /*required=*/true));
  auto o = api::ParseMigrationOutcome(outcome);
  if (!o.ok()) return o.status().Annotate("field \"outcome\" in migration resolution");
  out.outcome = *o;
  KMX_RETURN_IF_ERROR(f.String("decidedBy", by, /*required=*/true));
  auto d = api::ParseDecider(by);
  if (!d.ok()) return d.status().Annotate("field \"decidedBy\" in migration resolution");
  out.decided_by = *d;
  KMX_RETURN_IF_ERROR(f.Int("atMs", out.at_ms));
  KMX_RETURN_IF_ERROR(api::ValidateMigrationResolution(out));
  return out;
}

StatusOr<MigrationReport> MigrationReportFromJson(const nlohmann::json& j) {
  MigrationReport r;
  try {
    r.id = j.at("id").get<std::string>();
    r.workload = j.at("workload").get<std::string>();
    r.source_node = j.at("sourceNode").get<std::string>();
    r.target_node = j.at("targetNode").get<std::string>();
    r.target_url = j.at("target").get<std::string>();
    KMX_ASSIGN_OR_RETURN(r.phase, ParseMigrationPhase(j.at("phase").get<std::string>()));
    r.started_ms = j.at("startedMs").get<int64_t>();
    r.finished_ms = j.at("finishedMs").get<int64_t>();
    r.bytes = j.at("bytes").get<uint64_t>();
    r.files = j.at("files").get<uint64_t>();
    r.target_pid = j.at("targetPid").get<uint32_t>();
    const auto& t = j.at("timings");
    r.timings = {t.at("prepare"), t.at("freeze"), t.at("checkpoint"), t.at("transfer"),
                 t.at("restore"), t.at("commit"), t.at("downtime"),   t.at("total")};
    if (auto e = j.find("error"); e != j.end()) {
      KMX_ASSIGN_OR_RETURN(Code code, ParseCode(e->at("code").get<std::string>()));
      r.error = Status(code, e->at("message").get<std::string>());
      r.failed_phase = j.value("failedPhase", "");
    }
    r.source_released = j.value("sourceReleased", false);
    if (auto fault = j.find("fault"); fault != j.end() && !fault->is_null()) {
      auto parsed = MigrationFaultFromJson(*fault);
      if (!parsed.ok()) return parsed.status().Annotate("bad migration record");
      r.fault = std::move(*parsed);
    }
    if (auto res = j.find("resolution"); res != j.end() && !res->is_null()) {
      auto parsed = MigrationResolutionFromJson(*res);
      if (!parsed.ok()) return parsed.status().Annotate("bad migration record");
      r.resolution = *parsed;
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidError(std::string("bad migration record: ") + e.what());
  }
  return r;
}

MigrationDriver::MigrationDriver(CheckpointEngine& engine, Transport& transport, Clock& clock,
                                 Options options)
    : engine_(engine), transport_(transport), clock_(clock), options_(std::move(options)) {}

Status MigrationDriver::Enter(MigrationReport& r, MigrationPhase p, const PersistFn& persist) {
  r.phase = p;
  if (!persist) return Status::Ok();
  Status s = persist(r);
  if (!s.ok()) {
    spdlog::error("migration {} of {}: phase {} not journaled: {}", r.id, r.workload,
                  MigrationPhaseName(p), s.ToString());
  }
  return s;
}

std::string MigrationDriver::ScratchFor(const MigrationReport& r) const {
  return options_.scratch_dir + "/out-" + r.id;
}

void MigrationDriver::RemoveScratch(const MigrationReport& r) const {
  (void)RemoveTree(ScratchFor(r));  // a CRIU killed mid-dump may leave mounts in it
}

MigrationReport& MigrationDriver::Finish(MigrationReport& r, MigrationPhase p,
                                         const PersistFn& persist, Decider by,
                                         std::optional<MigrationOutcome> outcome) {
  RemoveScratch(r);
  r.finished_ms = clock_.WallMillis();
  r.timings.total = static_cast<double>(r.finished_ms - r.started_ms) / 1000.0;
  if (!outcome) {
    outcome = p == MigrationPhase::kSucceeded    ? MigrationOutcome::kCommitted
              : p == MigrationPhase::kRolledBack ? MigrationOutcome::kRolledBack
              : r.source_released                ? MigrationOutcome::kReleased
                                                 : MigrationOutcome::kUntouched;
  }
  r.resolution = api::MigrationResolution{*outcome, by, r.finished_ms};
  // An end not journaled is logged: it has happened, and an earlier phase
  // in the journal recovers to the same end (see the header).
  (void)Enter(r, p, persist);
  return r;
}

void MigrationDriver::Met(MigrationReport& r, FaultKind kind, Side side, const Status& why,
                          std::optional<MigrationPhase> in) const {
  if (r.fault) return;  // the first fault met stays
  const std::string node = side == Side::kSource   ? r.source_node
                           : side == Side::kTarget ? r.target_node
                                                   : std::string();
  r.fault = api::MakeFault(kind, in.value_or(r.phase), node, why.ToString(), clock_.WallMillis());
}

MigrationReport& MigrationDriver::Fail(MigrationReport& r, const Status& why,
                                       const PersistFn& persist) {
  r.failed_phase = std::string(MigrationPhaseName(r.phase));
  r.error = why;
  spdlog::warn("migration {} of {} failed in {} (workload untouched): {}", r.id, r.workload,
               r.failed_phase, why.ToString());
  return Finish(r, MigrationPhase::kFailed, persist, Decider::kSource);
}

MigrationReport& MigrationDriver::RollBack(MigrationReport& r, const std::string& name,
                                           const Status& why, const PersistFn& persist,
                                           std::optional<MigrationPhase> failed_in) {
  r.failed_phase = std::string(MigrationPhaseName(failed_in.value_or(r.phase)));
  r.error = why;
  spdlog::warn("migration {} of {} failed in {}, rolling back: {}", r.id, r.workload,
               r.failed_phase, why.ToString());
  // The journal says the target was never asked to restore (its phases are
  // written before their work), so it cannot be running the workload: tell it
  // to clean up, and thaw here even if it does not answer (its idle timeout
  // cleans up then). But if it answers Committed (a journal written by an
  // agent that went on after a failed write), it owns the workload: never
  // thaw then; release this copy instead.
  auto a = transport_.Abort(r.target_url, r.id);
  if (a.ok() && *a == TargetPhase::kCommitted) {
    spdlog::warn("migration {} of {}: rollback found the target committed; it owns the workload",
                 r.id, r.workload);
    return Succeed(r, name, persist, Decider::kTarget);
  }
  if (!a.ok()) {
    spdlog::warn("migration {}: target did not confirm abort: {}", r.id, a.status().ToString());
  }
  Status cause = why;
  bool gone = false;
  if (Status s = ThawSource(r, name, cause, gone); !s.ok()) {
    r.error = why.Annotate("rollback could not thaw the workload (" + s.ToString() + ")");
    Met(r, FaultKind::kCheckpointFailed, Side::kSource, r.error);
    (void)Enter(r, MigrationPhase::kResolving, persist);
    return r;
  }
  r.error = cause;
  return Finish(r, MigrationPhase::kRolledBack, persist, Decider::kSource,
                gone ? MigrationOutcome::kSourceGone : MigrationOutcome::kRolledBack);
}

Status MigrationDriver::ThawSource(const MigrationReport& r, const std::string& name, Status& cause,
                                   bool& gone) {
  Status s = engine_.Thaw(name);
  if (s.code() != Code::kNotFound) return s;
  gone = true;
  // Its container is gone (the node lost it): nothing can thaw it, nor run
  // it twice. Waiting in Resolving would never end; the migration ends here
  // and the agent's own checks (lost, restart) take the workload over.
  spdlog::error("migration {} of {}: the source copy is gone, nothing to thaw: {}", r.id,
                r.workload, s.ToString());
  cause = Status(cause.ok() ? Code::kFailed : cause.code(),
                 cause.message() + "; the source copy is gone from " + r.source_node + " (" +
                     s.message() + ")");
  return Status::Ok();
}

MigrationReport& MigrationDriver::Superseded(MigrationReport& r, const std::string& name,
                                             const Status& why, const PersistFn& persist) {
  spdlog::warn("migration {} of {}: releasing the source copy, never thawing it: {}", r.id,
               r.workload, why.ToString());
  if (r.failed_phase.empty()) r.failed_phase = std::string(MigrationPhaseName(r.phase));
  Met(r, FaultKind::kSuperseded, Side::kCluster, why);
  if (Status s = engine_.Release(name); !s.ok() && s.code() != Code::kNotFound) {
    r.error = why.Annotate("the source copy could not be released (" + s.ToString() + ")");
    (void)Enter(r, MigrationPhase::kResolving, persist);
    return r;
  }
  r.error = Status(why.code(), why.message() + "; the source copy was released, not thawed");
  r.source_released = true;
  return Finish(r, MigrationPhase::kFailed, persist, Decider::kRecords,
                MigrationOutcome::kReleased);
}

MigrationReport& MigrationDriver::Succeed(MigrationReport& r, const std::string& name,
                                          const PersistFn& persist, Decider by) {
  if (Status s = engine_.Release(name); !s.ok()) {
    // Ownership moved; the frozen copy never runs again. Recover retries.
    r.error = s.Annotate("target committed but the source copy could not be released");
    Met(r, FaultKind::kCheckpointFailed, Side::kSource, r.error);
    (void)Enter(r, MigrationPhase::kResolving, persist);
    return r;
  }
  r.error = Status::Ok();
  r.failed_phase.clear();
  return Finish(r, MigrationPhase::kSucceeded, persist, by);
}

// The order that keeps one owner: the ledger names the target before the
// target may commit (Transfer, then Commit), and names the source again
// before the source is thawed (target Aborted, then Revert, then Thaw). The
// target's commit-or-abort record decides; an unknown answer from the target
// or the ledger leaves the source frozen until a later call (Recover) gets one.
MigrationReport& MigrationDriver::Settle(MigrationReport& r, const std::string& name,
                                         const Status& why, bool restored, const Marks& marks,
                                         const PersistFn& persist, bool cancelled,
                                         const CancelFn* poll) {
  OwnershipLedger& ledger = *options_.ledger;
  // Timings of what ends here (Run passes its marks; Recover has none).
  auto stamp = [&](bool thawed) {
    if (marks.commit_start) r.timings.commit = Seconds(clock_.Now() - *marks.commit_start);
    if (thawed && marks.frozen_at) r.timings.downtime = Seconds(clock_.Now() - *marks.frozen_at);
  };
  const auto deadline = clock_.Now() + options_.resolve_timeout;
  Status cause = why;  // why the migration did not succeed, if it does not
  // The ledger refused the transfer in this call (or a cancel forbids it).
  bool refused = cancelled;
  bool known = restored;  // `restored` holds for the first round only
  Status last;            // the latest unknown answer
  if (cancelled) Met(r, FaultKind::kCancelled, Side::kCluster, why);
  while (true) {
    TargetPhase phase = TargetPhase::kUnknown;
    bool answered = true;
    // Run's own path decides in its first round; later rounds follow the
    // target's remembered verdict.
    const Decider by = known ? Decider::kSource : Decider::kTarget;
    if (known) {
      phase = TargetPhase::kRestored;
      known = false;
    } else {
      auto q = transport_.Query(r.target_url, r.id);
      if (q.ok()) {
        phase = *q;
      } else {
        answered = false;
        last = q.status().Annotate("query target");
        Met(r, FaultKind::kTargetUnreachable, Side::kTarget, last);
      }
    }
    if (answered && phase == TargetPhase::kUnknown) {
      // The target has no record of the id, yet it was prepared before
      // anything froze: it forgot it (its history ended) or lost its
      // records. It may have committed and run the workload since, and its
      // Abort would answer Aborted (a fresh tombstone). Never take that for
      // an abort: the cluster's records answer (hole 5).
      auto v = ledger.InDoubt(r);
      if (!v.ok()) {
        answered = false;
        last = v.status().Annotate("target " + r.target_url + " has no record of " + r.id +
                                   "; ownership records");
        Met(r, FaultKind::kEtcdUnavailable, Side::kCluster, last);
      } else if (v->answer == OwnershipLedger::Answer::kCommitted) {
        spdlog::warn("migration {} of {}: the target forgot it; the records say it committed ({})",
                     r.id, r.workload, v->reason);
        stamp(false);
        return Succeed(r, name, persist, Decider::kRecords);
      } else if (v->answer == OwnershipLedger::Answer::kSuperseded) {
        stamp(false);
        return Superseded(r, name, FailedError("the target forgot the migration and " + v->reason),
                          persist);
      } else if (v->answer == OwnershipLedger::Answer::kUndecided) {
        answered = false;
        last = FailedError("target " + r.target_url + " has no record of migration " + r.id +
                           " and the ownership records cannot say (" + v->reason + ")");
        Met(r, FaultKind::kEtcdUnavailable, Side::kCluster, last);
      }
      // kNotCommitted: the source owns it and the target cannot commit: the
      // target's Abort below bars the id, then the source thaws.
    }
    if (answered && phase == TargetPhase::kRestored && !refused) {
      // The target runs an uncommitted copy: move the ownership, then commit.
      Status t = ledger.Transfer(r);
      if (t.ok()) {
        auto c = transport_.Commit(r.target_url, r.id);
        if (c.ok() && *c == TargetPhase::kCommitted) {
          stamp(true);  // the target's copy ran from its commit (restored stopped)
          return Succeed(r, name, persist, by);
        }
        if (c.ok()) {
          phase = TargetPhase::kAborted;
          if (cause.ok()) cause = FailedError("target aborted the migration before the commit");
          Met(r, FaultKind::kRestoreFailed, Side::kTarget, cause);
        } else {
          answered = false;
          last = c.status().Annotate("commit");
          Met(r,
              c.status().code() == Code::kRetry ? FaultKind::kTargetUnreachable
                                                : FaultKind::kRestoreFailed,
              Side::kTarget, last);
        }
      } else if (t.code() == Code::kRetry) {
        answered = false;
        last = t.Annotate("ownership transfer");
        Met(r, FaultKind::kEtcdUnavailable, Side::kCluster, last);
      } else {
        refused = true;
        cause = t.Annotate("ownership transfer refused; not committed");
        spdlog::warn("migration {} of {}: {}", r.id, r.workload, cause.ToString());
        // A cancel landing after Run's last check is refused here too.
        Met(r,
            poll != nullptr && *poll && (*poll)() ? FaultKind::kCancelled : FaultKind::kSuperseded,
            Side::kCluster, cause);
      }
    }
    if (answered && phase != TargetPhase::kAborted && phase != TargetPhase::kCommitted) {
      // Anything else (unknown id, still receiving, a refused transfer):
      // make the target decide. Abort is idempotent and remembered.
      auto a = transport_.Abort(r.target_url, r.id);
      if (a.ok()) {
        phase = *a;
      } else {
        answered = false;
        last = a.status().Annotate("abort");
        Met(r, FaultKind::kTargetUnreachable, Side::kTarget, last);
      }
    }
    if (answered && phase == TargetPhase::kCommitted) {
      stamp(false);
      return Succeed(r, name, persist, Decider::kTarget);
    }
    if (answered) {
      // Aborted: nothing runs there. Name the source the owner again (unless
      // this call saw the transfer refused, so it never happened), then thaw;
      // but never while the records name another owner: a refused revert or
      // transfer (not a cancel) is put to InDoubt first.
      Status rv = refused ? Status::Ok() : ledger.Revert(r);
      if (rv.code() != Code::kRetry && (!rv.ok() || (refused && !cancelled))) {
        auto v = ledger.InDoubt(r);
        if (!v.ok()) {
          rv = v.status().Annotate("ownership records");
        } else if (v->answer == OwnershipLedger::Answer::kUndecided) {
          rv = RetryError("the ownership records cannot say who owns it (" + v->reason + ")");
        } else if (v->answer != OwnershipLedger::Answer::kNotCommitted) {
          spdlog::warn("migration {} of {}: {}; the records name another owner: {}", r.id,
                       r.workload, rv.ok() ? "transfer refused" : rv.ToString(), v->reason);
          stamp(false);
          return Superseded(r, name, FailedError("target aborted the migration and " + v->reason),
                            persist);
        } else {
          rv = Status::Ok();
        }
      }
      if (rv.code() == Code::kRetry || !rv.ok()) {
        last = rv.Annotate("ownership revert");
        Met(r, FaultKind::kEtcdUnavailable, Side::kCluster, last);
      } else {
        if (cause.ok()) cause = FailedError("target aborted the migration");
        Met(r, FaultKind::kRestoreFailed, Side::kTarget, cause);
        bool gone = false;
        if (Status s = ThawSource(r, name, cause, gone); !s.ok()) {
          r.failed_phase =
              r.failed_phase.empty() ? std::string(MigrationPhaseName(r.phase)) : r.failed_phase;
          r.error =
              cause.Annotate("could not thaw after the target aborted (" + s.ToString() + ")");
          (void)Enter(r, MigrationPhase::kResolving, persist);
          return r;
        }
        if (r.failed_phase.empty()) r.failed_phase = std::string(MigrationPhaseName(r.phase));
        r.error = cause;
        stamp(true);
        return Finish(r, MigrationPhase::kRolledBack, persist, by,
                      gone ? MigrationOutcome::kSourceGone : MigrationOutcome::kRolledBack);
      }
    }
    if (clock_.Now() >= deadline) break;
    clock_.SleepFor(options_.retry_interval);
  }
  stamp(true);
  if (r.failed_phase.empty()) r.failed_phase = std::string(MigrationPhaseName(r.phase));
  if (cause.ok()) cause = FailedError("ownership not settled");
  // Recover passes the previous error back in: keep one suffix, not a chain.
  std::string message = cause.message();
  if (auto cut = message.find(kFrozenSuffix); cut != std::string::npos) message.resize(cut);
  r.error =
      Status(cause.code(), message + std::string(kFrozenSuffix) + " (" + last.ToString() + ")");
  spdlog::error("migration {} of {} unresolved: {}", r.id, r.workload, r.error.ToString());
  (void)Enter(r, MigrationPhase::kResolving, persist);
  return r;
}

MigrationReport& MigrationDriver::Resolve(MigrationReport& r, const std::string& name,
                                          const Status& why, const PersistFn& persist) {
  if (options_.ledger != nullptr) return Settle(r, name, why, /*restored=*/false, {}, persist);
  if (r.phase != MigrationPhase::kResolving) {
    r.failed_phase = std::string(MigrationPhaseName(r.phase));
    r.error = why;
    (void)Enter(r, MigrationPhase::kResolving, persist);
  }
  const auto deadline = clock_.Now() + options_.resolve_timeout;
  Status last = why;
  while (true) {
    // The target had a record of this id (it was prepared before anything
    // was frozen). One that knows the id no more forgot it (finished records
    // are dropped after a while) or lost its records: it may have committed
    // and run the workload, and its Abort would answer Aborted (a new
    // tombstone). That is no answer: keep the copy frozen.
    if (auto q = transport_.Query(r.target_url, r.id); q.ok() && *q == TargetPhase::kUnknown) {
      last = FailedError("target " + r.target_url + " has no record of migration " + r.id +
                         " any more (forgotten or lost): it may run the workload");
      Met(r, FaultKind::kTargetUnreachable, Side::kTarget, last);
      if (clock_.Now() >= deadline) break;
      clock_.SleepFor(options_.retry_interval);
      continue;
    }
    auto answer = transport_.Abort(r.target_url, r.id);
    if (answer.ok() && *answer == TargetPhase::kCommitted) {
      // The target owns it: drop the frozen copy.
      if (Status s = engine_.Release(name); !s.ok()) {
        r.error = s.Annotate("target committed but the source copy could not be released");
        Met(r, FaultKind::kCheckpointFailed, Side::kSource, r.error);
        (void)Enter(r, r.phase, persist);
        return r;
      }
      r.error = Status::Ok();
      r.failed_phase.clear();
      return Finish(r, MigrationPhase::kSucceeded, persist, Decider::kTarget);
    }
    if (answer.ok()) {
      // Aborted (or never heard of it): nothing runs there; run here again.
      Status cause = why;
      bool gone = false;
      if (Status s = ThawSource(r, name, cause, gone); !s.ok()) {
        r.error = why.Annotate("could not thaw after the target aborted (" + s.ToString() + ")");
        Met(r, FaultKind::kCheckpointFailed, Side::kSource, r.error);
        (void)Enter(r, r.phase, persist);
        return r;
      }
      r.error = cause;
      return Finish(r, MigrationPhase::kRolledBack, persist, Decider::kTarget,
                    gone ? MigrationOutcome::kSourceGone : MigrationOutcome::kRolledBack);
    }
    last = answer.status();
    Met(r, FaultKind::kTargetUnreachable, Side::kTarget, last);
    if (clock_.Now() >= deadline) break;
    clock_.SleepFor(options_.retry_interval);
  }
  r.error = why.Annotate("target has not said whether it runs the workload (" + last.ToString() +
                         "); kept frozen here until it does");
  spdlog::error("migration {} of {} unresolved: {}", r.id, r.workload, r.error.ToString());
  (void)Enter(r, r.phase, persist);
  return r;
}

MigrationReport MigrationDriver::Run(const ContainerSpec& spec, MigrationReport r,
                                     const PersistFn& persist, const WorkloadLife& life,
                                     const CancelFn& cancelled) {
  auto cancel_now = [&] { return cancelled && cancelled(); };
  const Status kCancelled = FailedError("migration cancelled");
  const auto start = clock_.Now();
  r.started_ms = clock_.WallMillis();
  // Ends it Failed before anything froze: the fault met, then why.
  auto fail = [&](FaultKind kind, Side side, const Status& why) -> MigrationReport {
    Met(r, kind, side, why);
    return Fail(r, why, persist);
  };
  if (Status j = Enter(r, MigrationPhase::kPreparing, persist); !j.ok()) {
    // Nothing asked, nothing frozen.
    return fail(FaultKind::kStorageFailed, Side::kSource, j.Annotate(kNotJournaled));
  }

  auto peer = transport_.Hello(r.target_url);
  if (!peer.ok()) {
    const Status& s = peer.status();
    // Unreachable is worth a retry; anything else that answers is not an agent.
    if (s.code() == Code::kRetry) {
      return fail(FaultKind::kTargetUnreachable, Side::kTarget,
                  s.Annotate("target " + r.target_url + " unreachable"));
    }
    return fail(FaultKind::kInvalidOrder, Side::kTarget,
                InvalidError("target " + r.target_url + " is not a kmosix agent: " + s.message()));
  }
  if (!r.target_node.empty() && r.target_node != peer->node) {
    return fail(FaultKind::kInvalidOrder, Side::kTarget,
                InvalidError("target " + r.target_url + " is node " + peer->node + ", not " +
                             r.target_node));
  }
  r.target_node = peer->node;
  if (r.target_node == r.source_node) {
    return fail(FaultKind::kInvalidOrder, Side::kTarget,
                InvalidError("target " + r.target_url + " is this node"));
  }
  MigrationOffer offer{r.id, r.source_node,   options_.source_url,
                       spec, life.created_ms, life.history};
  offer.spec.log_path.clear();
  offer.memory_bytes = engine_.MemoryBytes(spec.name);
  offer.stream = engine_.StreamBound(spec, offer.memory_bytes);
  if (cancel_now()) return fail(FaultKind::kCancelled, Side::kCluster, kCancelled);  // check 1
  Status prepared = transport_.Prepare(r.target_url, offer);
  const auto busy_until = clock_.Now() + options_.busy_wait;
  while (!prepared.ok()) {
    // A busy target prepared nothing: ask again after its retry-after.
    const auto after = RetryAfterOf(prepared);
    const auto now = clock_.Now();
    if (!after || now >= busy_until) break;
    const Clock::Duration wait = std::min<Clock::Duration>(
        std::clamp<Clock::Duration>(*after, std::chrono::seconds(1), std::chrono::seconds(30)),
        busy_until - now);
    spdlog::info("migration {} of {}: target {} is busy ({}); asking again in {:.1f} s", r.id,
                 r.workload, r.target_url, prepared.message(), Seconds(wait));
    clock_.SleepFor(wait);
    // Still nothing asked of it.
    if (cancel_now()) return fail(FaultKind::kCancelled, Side::kCluster, kCancelled);
    prepared = transport_.Prepare(r.target_url, offer);
  }
  if (!prepared.ok()) {
    // A timeout may have prepared it anyway; prepared containers never run.
    // (A busy answer prepared nothing, and an abort would bar the id there.)
    const bool unanswered = prepared.code() == Code::kRetry && !RetryAfterOf(prepared);
    if (unanswered) (void)transport_.Abort(r.target_url, r.id);
    return fail(unanswered ? FaultKind::kTargetUnreachable : FaultKind::kTargetRefused,
                Side::kTarget, prepared.Annotate("target refused"));
  }
  r.timings.prepare = Seconds(clock_.Now() - start);
  if (cancel_now()) {  // check 2: prepared there, nothing frozen here
    (void)transport_.Abort(r.target_url, r.id);
    return fail(FaultKind::kCancelled, Side::kCluster, kCancelled);
  }

  if (Status j = Enter(r, MigrationPhase::kCheckpointing, persist); !j.ok()) {
    // Never freeze what the journal could not say was being frozen.
    (void)transport_.Abort(r.target_url, r.id);
    return fail(FaultKind::kStorageFailed, Side::kSource, j.Annotate(kNotJournaled));
  }
  std::error_code ec;
  std::filesystem::create_directories(ScratchFor(r), ec);
  if (ec) {
    (void)transport_.Abort(r.target_url, r.id);
    return fail(FaultKind::kStorageFailed, Side::kSource,
                FailedError("cannot create scratch dir: " + ec.message()));
  }
  const auto frozen_at = clock_.Now();
  auto capture = engine_.Freeze(spec, ScratchFor(r));
  if (!capture.ok()) {
    // The engine thawed the workload before returning.
    (void)transport_.Abort(r.target_url, r.id);
    r.failed_phase = "Checkpointing";
    r.error = capture.status();
    r.timings.downtime = Seconds(clock_.Now() - frozen_at);
    Met(r, FaultKind::kCheckpointFailed, Side::kSource, r.error);
    return Finish(r, MigrationPhase::kRolledBack, persist, Decider::kSource);
  }
  r.timings.freeze = capture->freeze_seconds;
  r.timings.checkpoint = capture->checkpoint_seconds;
  // Checks 3 and 4: frozen here, nothing restored there.
  auto roll_back = [&](FaultKind kind, Side side, const Status& why,
                       std::optional<MigrationPhase> failed_in = {}) -> MigrationReport {
    Met(r, kind, side, why, failed_in);
    RollBack(r, spec.name, why, persist, failed_in);
    r.timings.downtime = Seconds(clock_.Now() - frozen_at);
    return r;
  };
  if (cancel_now()) return roll_back(FaultKind::kCancelled, Side::kCluster, kCancelled);

  if (Status j = Enter(r, MigrationPhase::kTransferring, persist); !j.ok()) {
    return roll_back(FaultKind::kStorageFailed, Side::kSource, j.Annotate(kNotJournaled));
  }
  auto sent = transport_.Send(r.target_url, r.id, capture->sections);
  if (!sent.ok()) {
    if (capture->streamed_dump_error) {
      // The dump ran during the transfer: say which of them failed.
      if (Status dump = capture->streamed_dump_error(); !dump.ok()) {
        return roll_back(FaultKind::kCheckpointFailed, Side::kSource, dump,
                         MigrationPhase::kCheckpointing);
      }
    }
    return roll_back(FaultKind::kTransferFailed, Side::kTarget, sent.status().Annotate("transfer"));
  }
  r.bytes = sent->bytes;
  r.files = sent->files;
  r.timings.transfer = sent->seconds;
  if (capture->streamed_checkpoint_seconds) {
    // The dump ran during the transfer (and has ended: all of it was read).
    r.timings.checkpoint = capture->streamed_checkpoint_seconds();
  }
  if (cancel_now()) return roll_back(FaultKind::kCancelled, Side::kCluster, kCancelled);

  if (Status j = Enter(r, MigrationPhase::kRestoring, persist); !j.ok()) {
    // Nothing restored there yet.
    return roll_back(FaultKind::kStorageFailed, Side::kSource, j.Annotate(kNotJournaled));
  }
  const auto restore_start = clock_.Now();
  auto restored = transport_.Restore(r.target_url, r.id);
  r.timings.restore = Seconds(clock_.Now() - restore_start);
  r.timings.downtime = Seconds(clock_.Now() - frozen_at);
  if (!restored.ok()) {
    // Whether or not the target answered, only its commit-or-abort record
    // says what runs there: resolve through it.
    Met(r,
        restored.status().code() == Code::kRetry ? FaultKind::kTargetUnreachable
                                                 : FaultKind::kRestoreFailed,
        Side::kTarget, restored.status());
    Resolve(r, spec.name, restored.status(), persist);
    r.timings.downtime = Seconds(clock_.Now() - frozen_at);
    return r;
  }
  r.target_pid = restored->pid;
  if (cancel_now()) {
    // Check 5: the target runs an uncommitted copy. Make it abort (never
    // transfer or commit), then thaw here.
    Met(r, FaultKind::kCancelled, Side::kCluster, kCancelled);
    if (options_.ledger != nullptr) {
      return Settle(r, spec.name, kCancelled, /*restored=*/true, {&frozen_at, nullptr}, persist,
                    /*cancelled=*/true);
    }
    Resolve(r, spec.name, kCancelled, persist);
    r.timings.downtime = Seconds(clock_.Now() - frozen_at);
    return r;
  }

  if (Status j = Enter(r, MigrationPhase::kCommitting, persist); !j.ok()) {
    // Never commit what the journal could not say was being committed: make
    // the target abort its copy (never transfer or commit), then thaw here.
    const Status why = j.Annotate(kNotJournaled);
    Met(r, FaultKind::kStorageFailed, Side::kSource, why);
    if (options_.ledger != nullptr) {
      return Settle(r, spec.name, why, /*restored=*/true, {&frozen_at, nullptr}, persist,
                    /*cancelled=*/true);
    }
    Resolve(r, spec.name, why, persist);
    r.timings.downtime = Seconds(clock_.Now() - frozen_at);
    return r;
  }
  const auto commit_start = clock_.Now();
  if (options_.ledger != nullptr) {
    return Settle(r, spec.name, Status::Ok(), /*restored=*/true, {&frozen_at, &commit_start},
                  persist, /*cancelled=*/false, &cancelled);
  }
  auto committed = transport_.Commit(r.target_url, r.id);
  if (committed.ok() && *committed == TargetPhase::kCommitted) {
    // The target's copy, restored stopped, runs from its commit.
    r.timings.downtime = Seconds(clock_.Now() - frozen_at);
    if (Status s = engine_.Release(spec.name); !s.ok()) {
      // Ownership moved; the frozen copy never runs again. Recover retries.
      r.error = s.Annotate("target committed but the source copy could not be released");
      Met(r, FaultKind::kCheckpointFailed, Side::kSource, r.error);
      (void)Enter(r, MigrationPhase::kResolving, persist);
      return r;
    }
    r.timings.commit = Seconds(clock_.Now() - commit_start);
    return Finish(r, MigrationPhase::kSucceeded, persist, Decider::kSource);
  }
  Status why = committed.ok() ? FailedError("target aborted the migration before the commit")
                              : committed.status().Annotate("commit");
  Met(r,
      !committed.ok() && committed.status().code() == Code::kRetry ? FaultKind::kTargetUnreachable
                                                                   : FaultKind::kRestoreFailed,
      Side::kTarget, why);
  Resolve(r, spec.name, why, persist);
  r.timings.commit = Seconds(clock_.Now() - commit_start);
  return r;
}

MigrationReport MigrationDriver::Recover(const ContainerSpec& spec, MigrationReport r,
                                         const PersistFn& persist) {
  if (!IsFinal(r.phase)) {
    // A journal left mid-way without a fault: the agent stopped (crashed,
    // restarted) in this phase. One left Resolving already says its fault.
    Met(r, FaultKind::kSourceRestarted, Side::kSource,
        FailedError("the source agent stopped during " + std::string(MigrationPhaseName(r.phase)) +
                    " and finished the migration from its journal"));
  }
  switch (r.phase) {
    case MigrationPhase::kSucceeded:
    case MigrationPhase::kRolledBack:
    case MigrationPhase::kFailed:
      return r;
    case MigrationPhase::kPending:
    case MigrationPhase::kPreparing: {
      auto a = transport_.Abort(r.target_url, r.id);
      if (a.ok() && *a == TargetPhase::kCommitted) {
        // Cannot be, with a journal written before each phase's work; if it
        // is, the target owns the workload: never run it here too.
        return Succeed(r, spec.name, persist, Decider::kTarget);
      }
      return Fail(r, FailedError("interrupted before the workload was frozen"), persist);
    }
    case MigrationPhase::kCheckpointing:
    case MigrationPhase::kTransferring:
      RollBack(r, spec.name, FailedError("interrupted before the target restored"), persist);
      return r;
    case MigrationPhase::kRestoring:
    case MigrationPhase::kCommitting:
    case MigrationPhase::kResolving:
      Resolve(r, spec.name,
              r.error.ok() ? FailedError("interrupted while the target restored or committed")
                           : r.error,
              persist);
      return r;
  }
  return r;
}

}  // namespace kmosix
