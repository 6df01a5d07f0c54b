#include "controller/retention.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <tuple>

namespace kmosix::controller {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

// When a finished record finished (older records lack finishedMs).
int64_t FinishedAt(const api::Migration& m) {
  if (m.finished_ms > 0) return m.finished_ms;
  return m.updated_ms > 0 ? m.updated_ms : m.created_ms;
}

int64_t Ms(Clock::Duration d) { return duration_cast<milliseconds>(d).count(); }

}  // namespace

std::vector<RetentionDelete> PlanMigrationRetention(
    const std::map<std::string, api::Migration>& migrations,
    const std::map<std::string, api::Workload>& workloads, int64_t now_ms,
    const RetentionOptions& options) {
  // Finished records per workload, oldest first (ties by id).
  std::map<std::string, std::vector<std::pair<int64_t, std::string>>> finished;
  for (const auto& [id, m] : migrations) {
    if (api::IsFinal(m.phase)) finished[m.workload].emplace_back(FinishedAt(m), id);
  }
  const int64_t ttl_ms = Ms(options.finished_ttl);
  const int64_t min_age_ms = Ms(options.min_age);
  std::vector<RetentionDelete> out;
  for (auto& [workload, records] : finished) {
    std::sort(records.begin(), records.end());
    auto w = workloads.find(workload);
    const bool exists = w != workloads.end();
    const std::string in_use = exists ? w->second.status.migration : "";
    for (size_t i = 0; i < records.size(); ++i) {
      const auto& [at, id] = records[i];
      const size_t newer = records.size() - 1 - i;
      if (exists && newer == 0) continue;  // the newest of a workload stays
      if (id == in_use) continue;          // the workload still names it
      const int64_t age = now_ms - at;
      if (age < min_age_ms) continue;
      std::string why;
      if (options.keep_finished > 0 && newer >= options.keep_finished) {
        why = "count";
      } else if (ttl_ms > 0 && age > ttl_ms) {
        why = "age";
      } else {
        continue;
      }
      out.push_back({id, workload, at, why});
    }
  }
  std::sort(out.begin(), out.end(), [](const RetentionDelete& a, const RetentionDelete& b) {
    return std::tie(a.finished_ms, a.id) < std::tie(b.finished_ms, b.id);
  });
  return out;
}

StatusOr<TrimResult> TrimMigrations(StateStore& store, const cluster::KeyLayout& keys,
                                    const std::vector<RetentionDelete>& plan,
                                    const std::optional<Compare>& fence, size_t max_deletes) {
  TrimResult result;
  for (const RetentionDelete& d : plan) {
    if (result.deleted + result.skipped >= max_deletes) break;
    const std::string key = keys.Migration(d.id);
    KMX_ASSIGN_OR_RETURN(GetResult got, store.Get(key));
    if (!got.kv) {
      ++result.skipped;  // gone already
      continue;
    }
    auto m = cluster::ParseRecord<api::Migration>(got.kv->value, &cluster::MigrationFromJson);
    // Still the finished record the plan saw? (A damaged record is left alone.)
    if (!m.ok() || !api::IsFinal(m->phase) || m->workload != d.workload ||
        FinishedAt(*m) != d.finished_ms) {
      ++result.skipped;
      continue;
    }
    Txn txn;
    txn.compares.push_back(Compare::Unchanged(key, got.kv->mod_revision));
    if (fence) txn.compares.push_back(*fence);
    txn.then_ops.push_back(TxnOp::Delete(key));
    KMX_ASSIGN_OR_RETURN(TxnResult r, store.Commit(txn));
    if (r.succeeded) {
      ++result.deleted;
      continue;
    }
    if (fence) {
      auto lead = store.Get(fence->key);
      if (lead.ok() && (!lead->kv || lead->kv->create_revision != fence->number))
        return ConflictError("no longer the leader");
    }
    ++result.skipped;  // changed since read: the next pass looks again
  }
  return result;
}

Compactor::Compactor(StateStore& store, Clock& clock, CompactionOptions options,
                     std::string probe_key)
    : store_(store), clock_(clock), options_(options), probe_key_(std::move(probe_key)) {}

void Compactor::Reset() {
  std::lock_guard lock(mu_);
  samples_.clear();
}

int64_t Compactor::compacted() const {
  std::lock_guard lock(mu_);
  return compacted_;
}

StatusOr<int64_t> Compactor::Step() {
  KMX_ASSIGN_OR_RETURN(GetResult got, store_.Get(probe_key_));
  const Clock::TimePoint now = clock_.Now();
  const int64_t head = got.revision;
  int64_t target = 0;
  {
    std::lock_guard lock(mu_);
    samples_.emplace_back(now, head);
    // Keep one sample at least `retain` old (the newest such), and the newer.
    while (samples_.size() >= 2 && now - samples_[1].first >= options_.retain) samples_.pop_front();
    if (now - samples_.front().first >= options_.retain) target = samples_.front().second;
    target = std::min(target, head - options_.min_revisions);
    if (target <= compacted_) return int64_t{0};
  }
  Status s = store_.Compact(target);
  if (!s.ok() && s.code() != Code::kConflict) return s;
  std::lock_guard lock(mu_);
  compacted_ = std::max(compacted_, target);
  // kConflict: compacted there or beyond already (etcd's own compaction).
  return s.ok() ? target : int64_t{0};
}

}  // namespace kmosix::controller
