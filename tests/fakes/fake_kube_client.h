// FakeClient: an in-memory Kubernetes API server behind the kube::Client seam
// (lib/kube/client.h), for unit tests of the bridge and the Informer.
//
// What it models (as a kube-apiserver does for a CRD with a status subresource):
// - Objects per resource (group + plural; the version is ignored), namespace
//   and name. One global resourceVersion counter (decimal strings); every
//   write that changes an object bumps it once. An Update that changes
//   nothing is a no-op (same resourceVersion, no event), like the server.
// - Create sets metadata.uid ("uid-<n>"), creationTimestamp (RFC 3339, from
//   the injected Clock's WallMillis, else a fixed base time + 1 s per
//   object), generation 1, resourceVersion, apiVersion/kind when missing
//   (kind from Resource::kind) and metadata.namespace for namespaced
//   resources; generateName gets a counter suffix. The status stanza of a
//   created object is dropped (status subresource). A set resourceVersion on
//   Create is kInvalid; an existing name is kConflict.
// - metadata.generation is bumped only when the object minus metadata and
//   status changes.
// - Update (PUT) keeps the stored status; UpdateStatus changes only status.
//   Both need metadata.resourceVersion (missing: kInvalid; stale: kConflict).
//   From the caller's metadata Update takes labels, annotations, finalizers
//   and ownerReferences; uid, creationTimestamp, deletionTimestamp and
//   generation stay the server's. MergePatch is RFC 7386 on the object
//   (status in the patch is ignored); a resourceVersion in the patch is a
//   precondition (kConflict when stale).
// - Delete: the uid (if given) is a precondition (kConflict). An object with
//   finalizers gets metadata.deletionTimestamp (MODIFIED event) and stays
//   until an Update/MergePatch empties metadata.finalizers; then it is
//   removed (DELETED event, the object with a new resourceVersion). A second
//   Delete of a terminating object is a no-op (Ok).
// - List: ns "" on a namespaced resource = all namespaces; items sorted by
//   namespace/name; the list's resourceVersion is the current global one.
//   ListOptions::limit is ignored (the real client follows continue tokens).
// - Label selectors: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k` (absent),
//   comma-separated (all must hold). Field selectors: metadata.name,
//   metadata.namespace and spec.<field> (a string field of spec, standing
//   for the selectable fields some kinds add, e.g. spec.signerName) with
//   = / == / !=. A malformed selector is kInvalid.
// - Watch(resource_version): "" is kInvalid (the real server on etcd 3.4
//   refuses it too); "0" sends an ADDED event per existing object, then live
//   events; any other version replays the kept history after it, then live
//   events. History is bounded (Options::history_limit events); a version
//   older than the oldest kept one, or older than the last Compact(), is
//   kConflict ("410 Gone"). Under a label selector an object that starts
//   (stops) matching arrives as ADDED (DELETED), as from the server.
//   SendBookmark() sends a BOOKMARK (metadata.resourceVersion = the current
//   version) to every watch open at that moment. EndWatches(status) ends
//   every open watch with `status` (Ok = the server closed the stream).
//   Watch checks `stop` every 10 ms (real time) and calls the handler
//   WITHOUT holding the fake's lock (a handler may call the client).
// - FailNext(method, status): the next call of `method` ("List", "Watch",
//   "Get", "Create", "Update", "UpdateStatus", "MergePatch", "Delete")
//   returns `status` without doing anything; several queue up in order.
//   Calls(method) counts every call of it, failed ones included.
//
// Thread-safety: every method may be called from several threads at once
// (one mutex; handlers run unlocked). Every Watch must have returned before
// the FakeClient is destroyed. Header-only; needs only client.h
// (no kmosix_kube symbols), nlohmann::json and kmosix_core's Status.
// Errors: as documented in client.h (kNotFound, kConflict, kInvalid, plus
// whatever FailNext injects).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/status.h"
#include "kube/client.h"

namespace kmosix::kube {

class FakeClient : public Client {
 public:
  struct Options {
    size_t history_limit = 1000;  // watch events kept for replay
  };

  FakeClient() : FakeClient(Options{}) {}
  explicit FakeClient(Options options, const Clock* clock = nullptr)
      : options_(options), clock_(clock) {}
  ~FakeClient() override { EndWatches(Status::Ok()); }
  FakeClient(const FakeClient&) = delete;
  FakeClient& operator=(const FakeClient&) = delete;

  // ---- test controls ----

  // The next call of `method` returns `status` (queued in order).
  void FailNext(const std::string& method, Status status) {
    std::lock_guard lock(mu_);
    failures_[method].push_back(std::move(status));
  }
  // How many times `method` was called (failed calls included).
  int Calls(const std::string& method) const {
    std::lock_guard lock(mu_);
    auto it = calls_.find(method);
    return it == calls_.end() ? 0 : it->second;
  }
  // Drops the watch history: a Watch from any version before the current
  // one fails with kConflict (410 Gone) from now on.
  void Compact() {
    std::lock_guard lock(mu_);
    history_.clear();
    floor_rv_ = rv_;
  }
  // Sends a BOOKMARK at the current resourceVersion to every open watch.
  void SendBookmark() {
    std::lock_guard lock(mu_);
    Entry e;
    e.seq = ++seq_;
    e.rv = rv_;
    e.bookmark = true;
    PushLocked(std::move(e));
  }
  // Ends every open watch with `status` (Ok: as if the server closed the stream).
  void EndWatches(Status status) {
    std::lock_guard lock(mu_);
    end_status_ = std::move(status);
    ++end_epoch_;
    cv_.notify_all();
  }
  // Number of Watch calls currently running.
  int ActiveWatches() const {
    std::lock_guard lock(mu_);
    return active_watches_;
  }
  // The current global resourceVersion.
  std::string ResourceVersion() const {
    std::lock_guard lock(mu_);
    return std::to_string(rv_);
  }
  // The stored object, or nullopt (no call is counted).
  std::optional<nlohmann::json> Peek(const Resource& r, const std::string& ns,
                                     const std::string& name) const {
    std::lock_guard lock(mu_);
    auto c = collections_.find(ResKey(r));
    if (c == collections_.end()) return std::nullopt;
    auto it = c->second.find(ObjKey(r.namespaced ? ns : "", name));
    if (it == c->second.end()) return std::nullopt;
    return it->second;
  }

  // ---- Client ----

  StatusOr<ObjectList> List(const Resource& r, const std::string& ns,
                            const ListOptions& options) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("List"); !s.ok()) return s;
    auto sel = ParseSelectors(options);
    if (!sel.ok()) return sel.status();
    ObjectList out;
    out.resource_version = std::to_string(rv_);
    auto c = collections_.find(ResKey(r));
    if (c == collections_.end()) return out;
    for (const auto& [key, obj] : c->second) {
      if (r.namespaced && !ns.empty() && Namespace(obj) != ns) continue;
      if (!Matches(*sel, obj)) continue;
      out.items.push_back(obj);
    }
    return out;
  }

  Status Watch(const Resource& r, const std::string& ns, const std::string& resource_version,
               const ListOptions& options, const WatchHandler& handler,
               const std::atomic<bool>& stop) override {
    std::unique_lock lock(mu_);
    if (auto s = EnterLocked("Watch"); !s.ok()) return s;
    auto sel = ParseSelectors(options);
    if (!sel.ok()) return sel.status();
    if (resource_version.empty()) {
      return InvalidError(
          "watch needs a resourceVersion (the API server on etcd 3.4 refuses one without)");
    }
    auto from = ParseRv(resource_version);
    if (!from) return InvalidError("bad resourceVersion \"" + resource_version + "\"");
    std::deque<WatchEvent> pending;
    const std::string res = ResKey(r);
    int64_t cursor_seq;  // deliver entries with seq > cursor_seq
    const int64_t connected_seq = seq_;
    if (*from == 0) {
      auto c = collections_.find(res);
      if (c != collections_.end()) {
        for (const auto& [key, obj] : c->second) {
          if (r.namespaced && !ns.empty() && Namespace(obj) != ns) continue;
          if (Matches(*sel, obj)) pending.push_back({EventType::kAdded, obj});
        }
      }
      cursor_seq = seq_;
    } else {
      if (*from < floor_rv_) {
        return ConflictError("410 Gone: too old resource version: " + resource_version + " (" +
                             std::to_string(floor_rv_) + ")");
      }
      cursor_seq = seq_;
      for (const auto& e : history_) {
        if (e.rv > *from) {
          cursor_seq = e.seq - 1;
          break;
        }
      }
    }
    const uint64_t epoch = end_epoch_;
    ++active_watches_;
    struct Leave {
      FakeClient* self;
      ~Leave() { --self->active_watches_; }
    } leave{this};
    while (true) {
      // Collect what is new for this watch.
      if (!history_.empty() && history_.front().seq > cursor_seq + 1 && cursor_seq < seq_) {
        return ConflictError("410 Gone: the watch fell behind the kept history");
      }
      for (const auto& e : history_) {
        if (e.seq <= cursor_seq) continue;
        cursor_seq = e.seq;
        if (e.bookmark) {
          if (e.seq > connected_seq) {
            pending.push_back({EventType::kBookmark,
                               {{"kind", r.kind},
                                {"apiVersion", r.ApiVersion()},
                                {"metadata", {{"resourceVersion", std::to_string(e.rv)}}}}});
          }
          continue;
        }
        if (e.res != res) continue;
        if (r.namespaced && !ns.empty() && Namespace(e.object) != ns) continue;
        bool now = e.type != EventType::kDeleted && Matches(*sel, e.object);
        bool before = e.type == EventType::kDeleted ? Matches(*sel, e.object)
                      : e.old.is_null()             ? false
                                                    : Matches(*sel, e.old);
        if (e.type == EventType::kDeleted) {
          if (before) pending.push_back({EventType::kDeleted, e.object});
        } else if (now && before) {
          pending.push_back({EventType::kModified, e.object});
        } else if (now) {
          pending.push_back({EventType::kAdded, e.object});
        } else if (before) {
          pending.push_back({EventType::kDeleted, e.object});
        }
      }
      while (!pending.empty()) {
        WatchEvent ev = std::move(pending.front());
        pending.pop_front();
        lock.unlock();
        bool more = handler(ev);
        lock.lock();
        if (!more) return Status::Ok();
        if (stop.load()) return Status::Ok();
      }
      if (stop.load()) return Status::Ok();
      bool fresh = false;
      for (const auto& e : history_) {
        if (e.seq > cursor_seq) fresh = true;
      }
      if (fresh) continue;  // written while the handler ran: deliver before ending
      if (end_epoch_ != epoch) return end_status_;
      cv_.wait_for(lock, std::chrono::milliseconds(10));
    }
  }

  StatusOr<nlohmann::json> Get(const Resource& r, const std::string& ns,
                               const std::string& name) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("Get"); !s.ok()) return s;
    auto* obj = FindLocked(r, ns, name);
    if (!obj) return NotFoundLocked(r, ns, name);
    return *obj;
  }

  StatusOr<nlohmann::json> Create(const Resource& r, const std::string& ns,
                                  const nlohmann::json& object) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("Create"); !s.ok()) return s;
    if (!object.is_object()) return InvalidError("create: the object is not a JSON object");
    nlohmann::json obj = object;
    nlohmann::json& meta = obj["metadata"];
    if (!meta.is_object()) return InvalidError("create: metadata is not an object");
    auto ons = ResolveNamespace(r, ns, meta);
    if (!ons.ok()) return ons.status();
    std::string name = Str(meta, "name");
    if (name.empty()) {
      std::string gen = Str(meta, "generateName");
      if (gen.empty())
        return InvalidError("metadata.name: Required value: name or generateName is required");
      name = gen + std::to_string(++name_counter_);
      meta["name"] = name;
    }
    if (meta.contains("resourceVersion") && !meta["resourceVersion"].is_null() &&
        meta["resourceVersion"] != "") {
      return InvalidError(
          "metadata.resourceVersion: Invalid value: resourceVersion should not be set on objects "
          "to be created");
    }
    auto& coll = collections_[ResKey(r)];
    const std::string key = ObjKey(*ons, name);
    if (coll.count(key)) {
      return ConflictError(r.plural + " \"" + name + "\" already exists");
    }
    if (!obj.contains("apiVersion")) obj["apiVersion"] = r.ApiVersion();
    if (!obj.contains("kind") && !r.kind.empty()) obj["kind"] = r.kind;
    if (r.namespaced) {
      meta["namespace"] = *ons;
    } else {
      meta.erase("namespace");
    }
    meta["uid"] = "uid-" + std::to_string(++uid_counter_);
    meta["creationTimestamp"] = TimestampLocked();
    meta["generation"] = 1;
    meta.erase("deletionTimestamp");
    obj.erase("status");
    meta["resourceVersion"] = std::to_string(++rv_);
    coll[key] = obj;
    RecordLocked(ResKey(r), EventType::kAdded, obj, nullptr);
    return obj;
  }

  StatusOr<nlohmann::json> Update(const Resource& r, const std::string& ns,
                                  const nlohmann::json& object) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("Update"); !s.ok()) return s;
    return WriteLocked(r, ns, object, /*status_only=*/false);
  }

  StatusOr<nlohmann::json> UpdateStatus(const Resource& r, const std::string& ns,
                                        const nlohmann::json& object) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("UpdateStatus"); !s.ok()) return s;
    return WriteLocked(r, ns, object, /*status_only=*/true);
  }

  StatusOr<nlohmann::json> MergePatch(const Resource& r, const std::string& ns,
                                      const std::string& name,
                                      const nlohmann::json& patch) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("MergePatch"); !s.ok()) return s;
    if (!patch.is_object()) return InvalidError("merge patch: the patch is not a JSON object");
    auto* cur = FindLocked(r, ns, name);
    if (!cur) return NotFoundLocked(r, ns, name);
    nlohmann::json next = *cur;
    next.merge_patch(patch);
    if (!next["metadata"].is_object())
      return InvalidError("merge patch: metadata is not an object");
    // A resourceVersion in the patch is a precondition; none means "any".
    if (!patch.contains("metadata") || !patch["metadata"].is_object() ||
        !patch["metadata"].contains("resourceVersion") ||
        patch["metadata"]["resourceVersion"].is_null()) {
      next["metadata"]["resourceVersion"] = (*cur)["metadata"]["resourceVersion"];
    }
    next["metadata"]["name"] = name;
    return WriteLocked(r, ns, next, /*status_only=*/false);
  }

  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const std::string& uid) override {
    std::lock_guard lock(mu_);
    if (auto s = EnterLocked("Delete"); !s.ok()) return s;
    auto* cur = FindLocked(r, ns, name);
    if (!cur) return NotFoundLocked(r, ns, name);
    nlohmann::json& meta = (*cur)["metadata"];
    if (!uid.empty() && Str(meta, "uid") != uid) {
      return ConflictError("Precondition failed: UID in precondition: " + uid +
                           ", UID in object meta: " + Str(meta, "uid"));
    }
    const bool has_finalizers =
        meta.contains("finalizers") && meta["finalizers"].is_array() && !meta["finalizers"].empty();
    if (has_finalizers) {
      if (meta.contains("deletionTimestamp")) return Status::Ok();
      nlohmann::json old = *cur;
      meta["deletionTimestamp"] = TimestampLocked();
      meta["deletionGracePeriodSeconds"] = 0;
      meta["resourceVersion"] = std::to_string(++rv_);
      RecordLocked(ResKey(r), EventType::kModified, *cur, old);
      return Status::Ok();
    }
    RemoveLocked(r, *cur);
    return Status::Ok();
  }

  // Parses a label selector (exposed for tests of selectors themselves).
  struct Requirement {
    enum Op { kEq, kNe, kExists, kAbsent } op = kEq;
    std::string key, value;
  };
  static StatusOr<std::vector<Requirement>> ParseSelector(const std::string& s) {
    std::vector<Requirement> out;
    size_t start = 0;
    if (Trim(s).empty()) return out;
    while (start <= s.size()) {
      size_t end = s.find(',', start);
      if (end == std::string::npos) end = s.size();
      std::string term = Trim(s.substr(start, end - start));
      start = end + 1;
      if (term.empty()) return InvalidError("bad selector \"" + s + "\": empty term");
      Requirement req;
      size_t p;
      if ((p = term.find("!=")) != std::string::npos) {
        req.op = Requirement::kNe;
        req.key = Trim(term.substr(0, p));
        req.value = Trim(term.substr(p + 2));
      } else if ((p = term.find("==")) != std::string::npos) {
        req.key = Trim(term.substr(0, p));
        req.value = Trim(term.substr(p + 2));
      } else if ((p = term.find('=')) != std::string::npos) {
        req.key = Trim(term.substr(0, p));
        req.value = Trim(term.substr(p + 1));
      } else if (term[0] == '!') {
        req.op = Requirement::kAbsent;
        req.key = Trim(term.substr(1));
      } else {
        req.op = Requirement::kExists;
        req.key = term;
      }
      if (req.key.empty() || req.key.find_first_of("=! ") != std::string::npos ||
          req.value.find_first_of("=!, ") != std::string::npos) {
        return InvalidError("bad selector \"" + s + "\" at \"" + term + "\"");
      }
      out.push_back(std::move(req));
      if (end == s.size()) break;
    }
    return out;
  }

 private:
  struct Entry {
    int64_t seq = 0;
    int64_t rv = 0;
    bool bookmark = false;
    std::string res;
    EventType type = EventType::kAdded;
    nlohmann::json object;
    nlohmann::json old;  // the object before (MODIFIED), null otherwise
  };
  struct Selectors {
    std::vector<Requirement> labels;
    std::vector<Requirement> fields;
  };

  static std::string Trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t");
    if (a == std::string::npos) return "";
    size_t b = s.find_last_not_of(" \t");
    return s.substr(a, b - a + 1);
  }
  // A string member, "" when absent or not a string (never throws).
  static std::string Str(const nlohmann::json& j, const char* key) {
    if (!j.is_object()) return "";
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : "";
  }
  static int64_t Int(const nlohmann::json& j, const char* key, int64_t def) {
    if (!j.is_object()) return def;
    auto it = j.find(key);
    return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : def;
  }
  static std::string ResKey(const Resource& r) { return r.group + "/" + r.plural; }
  static std::string ObjKey(const std::string& ns, const std::string& name) {
    return ns + "/" + name;
  }
  static std::string Namespace(const nlohmann::json& obj) {
    auto m = obj.find("metadata");
    if (m == obj.end() || !m->is_object()) return "";
    auto n = m->find("namespace");
    return n != m->end() && n->is_string() ? n->get<std::string>() : "";
  }
  static std::optional<int64_t> ParseRv(const std::string& s) {
    if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    return std::stoll(s);
  }
  static StatusOr<Selectors> ParseSelectors(const ListOptions& o) {
    Selectors s;
    auto l = ParseSelector(o.label_selector);
    if (!l.ok()) return l.status();
    s.labels = std::move(*l);
    auto f = ParseSelector(o.field_selector);
    if (!f.ok()) return f.status();
    for (const auto& req : *f) {
      // metadata.name/namespace for every kind; spec.<field> stands for the
      // selectable fields some kinds add (PodCertificateRequest: spec.signerName).
      if (req.key != "metadata.name" && req.key != "metadata.namespace" &&
          req.key.rfind("spec.", 0) != 0) {
        return InvalidError("field label not supported: " + req.key);
      }
      if (req.op != Requirement::kEq && req.op != Requirement::kNe) {
        return InvalidError("field selector needs = or !=: " + req.key);
      }
    }
    s.fields = std::move(*f);
    return s;
  }
  static bool Holds(const Requirement& req, const std::optional<std::string>& v) {
    switch (req.op) {
      case Requirement::kEq:
        return v && *v == req.value;
      case Requirement::kNe:
        return !v || *v != req.value;
      case Requirement::kExists:
        return v.has_value();
      case Requirement::kAbsent:
        return !v.has_value();
    }
    return false;
  }
  static bool Matches(const Selectors& sel, const nlohmann::json& obj) {
    const nlohmann::json empty = nlohmann::json::object();
    const nlohmann::json& meta =
        obj.contains("metadata") && obj["metadata"].is_object() ? obj["metadata"] : empty;
    for (const auto& req : sel.labels) {
      std::optional<std::string> v;
      if (meta.contains("labels") && meta["labels"].is_object()) {
        auto it = meta["labels"].find(req.key);
        if (it != meta["labels"].end() && it->is_string()) v = it->get<std::string>();
      }
      if (!Holds(req, v)) return false;
    }
    for (const auto& req : sel.fields) {
      if (req.key.rfind("spec.", 0) == 0) {
        const std::string field = req.key.substr(5);
        const auto spec = obj.find("spec");
        std::optional<std::string> v = std::string();
        if (spec != obj.end() && spec->is_object())
          if (auto it = spec->find(field); it != spec->end() && it->is_string())
            v = it->get<std::string>();
        if (!Holds(req, v)) return false;
        continue;
      }
      std::string field = req.key == "metadata.name" ? "name" : "namespace";
      std::optional<std::string> v =
          meta.contains(field) && meta[field].is_string()
              ? std::optional<std::string>(meta[field].get<std::string>())
              : std::optional<std::string>(std::string());
      if (!Holds(req, v)) return false;
    }
    return true;
  }

  Status EnterLocked(const std::string& method) {
    ++calls_[method];
    auto it = failures_.find(method);
    if (it != failures_.end() && !it->second.empty()) {
      Status s = std::move(it->second.front());
      it->second.pop_front();
      return s.ok() ? Status::Ok() : s;
    }
    return Status::Ok();
  }

  StatusOr<std::string> ResolveNamespace(const Resource& r, const std::string& ns,
                                         const nlohmann::json& meta) const {
    if (!r.namespaced) return std::string();
    std::string ons = meta.is_object() ? Str(meta, "namespace") : "";
    if (!ns.empty() && !ons.empty() && ns != ons) {
      return InvalidError("the namespace of the provided object (" + ons +
                          ") does not match the namespace sent on the request (" + ns + ")");
    }
    std::string out = ns.empty() ? ons : ns;
    if (out.empty()) return InvalidError("a namespace is required for " + r.plural);
    return out;
  }

  nlohmann::json* FindLocked(const Resource& r, const std::string& ns, const std::string& name) {
    auto c = collections_.find(ResKey(r));
    if (c == collections_.end()) return nullptr;
    auto it = c->second.find(ObjKey(r.namespaced ? ns : "", name));
    return it == c->second.end() ? nullptr : &it->second;
  }

  Status NotFoundLocked(const Resource& r, const std::string& ns, const std::string& name) const {
    return NotFoundError(r.plural + (r.group.empty() ? "" : "." + r.group) + " \"" + name +
                         "\" not found" + (r.namespaced ? " in namespace \"" + ns + "\"" : ""));
  }

  std::string TimestampLocked() {
    int64_t secs = clock_ ? clock_->WallMillis() / 1000 : 1'704'067'200 + (++time_counter_);
    std::time_t t = static_cast<std::time_t>(secs);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
  }

  static nlohmann::json Spec(const nlohmann::json& obj) {
    nlohmann::json s = obj;
    s.erase("metadata");
    s.erase("status");
    s.erase("apiVersion");
    s.erase("kind");
    return s;
  }

  // Update / UpdateStatus / MergePatch after the call is counted.
  StatusOr<nlohmann::json> WriteLocked(const Resource& r, const std::string& ns,
                                       const nlohmann::json& object, bool status_only) {
    if (!object.is_object() || !object.contains("metadata") || !object["metadata"].is_object()) {
      return InvalidError("update: the object has no metadata");
    }
    const nlohmann::json& in_meta = object["metadata"];
    auto ons = ResolveNamespace(r, ns, in_meta);
    if (!ons.ok()) return ons.status();
    std::string name = Str(in_meta, "name");
    if (name.empty()) return InvalidError("metadata.name: Required value");
    auto* cur = FindLocked(r, *ons, name);
    if (!cur) return NotFoundLocked(r, *ons, name);
    std::string want_rv;
    if (in_meta.contains("resourceVersion") && in_meta["resourceVersion"].is_string()) {
      want_rv = in_meta["resourceVersion"].get<std::string>();
    }
    if (want_rv.empty()) {
      return InvalidError(
          "metadata.resourceVersion: Invalid value: 0: must be specified for an update");
    }
    const std::string have_rv = Str((*cur)["metadata"], "resourceVersion");
    if (want_rv != have_rv) {
      return ConflictError("Operation cannot be fulfilled on " + r.plural + " \"" + name +
                           "\": the object has been modified; please apply your changes to the "
                           "latest version and try again");
    }
    if (!Str(in_meta, "uid").empty() && Str(in_meta, "uid") != Str((*cur)["metadata"], "uid")) {
      return ConflictError("Precondition failed: UID mismatch");
    }
    nlohmann::json next;
    if (status_only) {
      next = *cur;
      if (object.contains("status")) {
        next["status"] = object["status"];
      } else {
        next.erase("status");
      }
    } else {
      next = object;
      if (!next.contains("apiVersion")) next["apiVersion"] = (*cur)["apiVersion"];
      if (!next.contains("kind") && cur->contains("kind")) next["kind"] = (*cur)["kind"];
      if (cur->contains("status")) {
        next["status"] = (*cur)["status"];
      } else {
        next.erase("status");
      }
      nlohmann::json meta = (*cur)["metadata"];
      for (const char* f : {"labels", "annotations", "finalizers", "ownerReferences"}) {
        if (in_meta.contains(f) && !in_meta[f].is_null()) {
          meta[f] = in_meta[f];
        } else {
          meta.erase(f);
        }
      }
      next["metadata"] = meta;
      if (Spec(next) != Spec(*cur)) {
        next["metadata"]["generation"] = Int((*cur)["metadata"], "generation", 1) + 1;
      }
    }
    if (next == *cur) return *cur;  // a no-op write: no new version, no event
    nlohmann::json old = *cur;
    next["metadata"]["resourceVersion"] = std::to_string(++rv_);
    *cur = next;
    const nlohmann::json& meta = (*cur)["metadata"];
    const bool finalizers_left =
        meta.contains("finalizers") && meta["finalizers"].is_array() && !meta["finalizers"].empty();
    if (meta.contains("deletionTimestamp") && !finalizers_left) {
      nlohmann::json gone = *cur;
      RemoveLocked(r, gone);
      return gone;
    }
    RecordLocked(ResKey(r), EventType::kModified, *cur, old);
    return *cur;
  }

  // Removes `obj` (a copy or the stored one) with a DELETED event at a new version.
  void RemoveLocked(const Resource& r, nlohmann::json obj) {
    auto& coll = collections_[ResKey(r)];
    std::string key = ObjKey(Namespace(obj), Str(obj["metadata"], "name"));
    coll.erase(key);
    obj["metadata"]["resourceVersion"] = std::to_string(++rv_);
    RecordLocked(ResKey(r), EventType::kDeleted, obj, nullptr);
  }

  void RecordLocked(const std::string& res, EventType type, const nlohmann::json& obj,
                    const nlohmann::json& old) {
    Entry e;
    e.seq = ++seq_;
    e.rv = rv_;
    e.res = res;
    e.type = type;
    e.object = obj;
    e.old = old;
    PushLocked(std::move(e));
  }

  void PushLocked(Entry e) {
    history_.push_back(std::move(e));
    while (history_.size() > std::max<size_t>(options_.history_limit, 1)) {
      // Versions up to the dropped entry's can no longer be replayed.
      floor_rv_ = std::max(floor_rv_, history_.front().rv);
      history_.pop_front();
    }
    cv_.notify_all();
  }

  const Options options_;
  const Clock* clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // resource key -> "ns/name" -> object
  std::map<std::string, std::map<std::string, nlohmann::json>> collections_;
  std::deque<Entry> history_;
  int64_t rv_ = 1;
  int64_t floor_rv_ = 0;  // a watch from a version below this is 410 Gone
  int64_t seq_ = 0;
  int64_t uid_counter_ = 0;
  int64_t name_counter_ = 0;
  int64_t time_counter_ = 0;
  uint64_t end_epoch_ = 0;
  Status end_status_;
  int active_watches_ = 0;
  std::map<std::string, int> calls_;
  std::map<std::string, std::deque<Status>> failures_;
};

}  // namespace kmosix::kube
