#include "kube/informer.h"

#include <algorithm>
#include <exception>

namespace kmosix::kube {
namespace {

using nlohmann::json;

std::string Meta(const json& obj, const char* key) {
  if (!obj.is_object()) return "";
  auto m = obj.find("metadata");
  if (m == obj.end() || !m->is_object()) return "";
  auto v = m->find(key);
  return v != m->end() && v->is_string() ? v->get<std::string>() : "";
}

}  // namespace

Informer::Informer(Client& client, Resource resource, Clock& clock, Random& random,
                   Handler on_change, Options options)
    : client_(client),
      resource_(std::move(resource)),
      clock_(clock),
      random_(random),
      on_change_(std::move(on_change)),
      options_(std::move(options)) {}

Informer::~Informer() { Stop(); }

std::string Informer::KeyOf(const json& object) {
  std::string ns = Meta(object, "namespace");
  std::string name = Meta(object, "name");
  return ns.empty() ? name : ns + "/" + name;
}

void Informer::Start() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void Informer::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::optional<json> Informer::Get(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  return it->second;
}

std::vector<json> Informer::List() const {
  std::lock_guard lock(mu_);
  std::vector<json> out;
  out.reserve(cache_.size());
  for (const auto& [k, v] : cache_) out.push_back(v);
  return out;
}

std::string Informer::ResourceVersion() const {
  std::lock_guard lock(mu_);
  return rv_;
}

Status Informer::LastError() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

void Informer::SetError(const Status& s) {
  std::lock_guard lock(mu_);
  last_error_ = s;
}

void Informer::Sleep(std::chrono::nanoseconds d) {
  while (d.count() > 0 && !stop_.load()) {
    auto slice = std::min<std::chrono::nanoseconds>(d, std::chrono::seconds(1));
    clock_.SleepFor(slice);
    d -= slice;
  }
}

void Informer::Backoff() {
  ++failures_;
  auto base = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.min_backoff);
  auto cap = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.max_backoff);
  for (int i = 1; i < failures_ && base < cap; ++i) base *= 2;
  base = std::min(base, cap);
  // Equal jitter: half of it fixed, the other half random.
  int64_t half = base.count() / 2;
  int64_t jitter =
      half > 0 ? static_cast<int64_t>(random_.Next() % static_cast<uint64_t>(half + 1)) : 0;
  Sleep(std::chrono::nanoseconds(half + jitter));
}

// metadata.managedFields is half of a small object's JSON and nothing here
// reads it: the cache drops it (as client-go's transform does). A write of a
// cached object without it leaves the server's untouched.
static void DropManagedFields(json& object) {
  if (auto m = object.find("metadata"); m != object.end() && m->is_object())
    m->erase("managedFields");
}

Status Informer::Relist() {
  auto list = client_.List(resource_, options_.ns, options_.list);
  if (!list.ok()) return list.status();
  std::map<std::string, json> fresh;
  for (auto& item : list->items) {
    std::string key = KeyOf(item);
    if (Meta(item, "name").empty()) continue;
    DropManagedFields(item);
    fresh[key] = std::move(item);
  }
  // What changed across the relist, reported after the cache is replaced.
  std::vector<std::pair<std::string, bool>> changes;  // key, deleted?
  std::vector<json> gone_objects;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, old] : cache_) {
      if (!fresh.count(key)) changes.emplace_back(key, true);
    }
    for (const auto& [key, obj] : fresh) {
      auto it = cache_.find(key);
      if (it == cache_.end() ||
          Meta(it->second, "resourceVersion") != Meta(obj, "resourceVersion")) {
        changes.emplace_back(key, false);
      }
    }
    cache_ = fresh;
    rv_ = list->resource_version;
  }
  ++lists_;
  synced_ = true;
  for (const auto& [key, deleted] : changes) {
    if (stop_.load()) break;
    if (deleted) {
      on_change_(key, nullptr);
    } else {
      on_change_(key, &fresh[key]);
    }
  }
  return Status::Ok();
}

void Informer::Run() {
  bool need_list = true;
  while (!stop_.load()) {
    try {
      if (need_list) {
        Status s = Relist();
        if (!s.ok()) {
          SetError(s.Annotate("list"));
          Backoff();
          continue;
        }
        failures_ = 0;
        need_list = false;
      }
      std::string from = ResourceVersion();
      size_t events = 0;
      Status s = client_.Watch(
          resource_, options_.ns, from, options_.list,
          [&](const WatchEvent& ev) {
            ++events;
            std::string rv = Meta(ev.object, "resourceVersion");
            if (ev.type == EventType::kBookmark) {
              std::lock_guard lock(mu_);
              if (!rv.empty()) rv_ = rv;
              return !stop_.load();
            }
            std::string key = KeyOf(ev.object);
            {
              std::lock_guard lock(mu_);
              if (!rv.empty()) rv_ = rv;
              if (ev.type == EventType::kDeleted) {
                cache_.erase(key);
              } else {
                DropManagedFields(cache_[key] = ev.object);
              }
            }
            failures_ = 0;
            on_change_(key, ev.type == EventType::kDeleted ? nullptr : &ev.object);
            return !stop_.load();
          },
          stop_);
      if (stop_.load()) break;
      if (s.ok()) {
        // The server ended the stream (its timeout): watch again at once,
        // unless it keeps ending without a single event.
        if (events == 0) Backoff();
        continue;
      }
      SetError(s.Annotate("watch"));
      if (s.code() == Code::kConflict) {
        need_list = true;  // 410 Gone: relist (a failing relist backs off)
        continue;
      }
      Backoff();
    } catch (const std::exception& e) {
      SetError(FailedError(std::string("informer: ") + e.what()));
      Backoff();
    } catch (...) {
      SetError(FailedError("informer: unknown exception"));
      Backoff();
    }
  }
}

}  // namespace kmosix::kube
