// Informer: a local cache of one Resource kept current by LIST then WATCH,
// in its own thread.
//
// - Start() lists (Options::ns, Options::list), fills the cache, reports
//   every object through on_change and sets HasSynced(); then watches from
//   the list's resourceVersion. Watch events update the cache and call
//   on_change(key, object) (object nullptr = deleted). Bookmarks advance
//   the resourceVersion the next watch resumes from; a watch that ends (Ok,
//   the server's timeout) or fails (kRetry, ...) resumes from the last
//   version seen, after a backoff on failure.
// - A kConflict from Watch (410 Gone) relists: the new list replaces the
//   cache and on_change reports what changed across it (synthetic deletes
//   for objects gone, changes for objects whose resourceVersion differs,
//   adds for new ones).
// - Backoff: Options::min_backoff doubling to max_backoff per consecutive
//   failure, with "equal jitter" (half fixed, half Random), reset by a
//   successful list or a watch event. Sleeps go through the Clock in slices
//   of at most a second, so Stop() is prompt.
// - Keys: "<namespace>/<name>", or "<name>" for cluster-scoped objects.
// Thread-safety: Get/List/HasSynced/... from any thread. on_change runs on
// the informer's thread without the cache lock held (it may call Get); it
// must not call Stop(). Stop() joins; the destructor stops.
// Errors: none escape; the last failure is available as LastError() and the
// loop keeps trying until stopped. No exception escapes the thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/status.h"
#include "kube/client.h"

namespace kmosix::kube {

class Informer {
 public:
  using Handler = std::function<void(const std::string& key, const nlohmann::json* object)>;
  struct Options {
    std::string ns;  // "" = all namespaces
    ListOptions list;
    std::chrono::milliseconds min_backoff{200};
    std::chrono::milliseconds max_backoff{30000};
  };

  Informer(Client& client, Resource resource, Clock& clock, Random& random, Handler on_change,
           Options options);
  Informer(Client& client, Resource resource, Clock& clock, Random& random, Handler on_change)
      : Informer(client, std::move(resource), clock, random, std::move(on_change), Options{}) {}
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  void Start();  // idempotent
  void Stop();   // stops and joins; idempotent

  bool HasSynced() const { return synced_.load(); }
  std::optional<nlohmann::json> Get(const std::string& key) const;
  std::vector<nlohmann::json> List() const;  // sorted by key
  // The resourceVersion the next watch starts from.
  std::string ResourceVersion() const;
  // How many LISTs succeeded (1 after the first sync; +1 per relist).
  int Lists() const { return lists_.load(); }
  Status LastError() const;

  static std::string KeyOf(const nlohmann::json& object);

 private:
  void Run();
  Status Relist();
  void Backoff();
  // Sleeps `d` through the clock in slices, returning early on Stop().
  void Sleep(std::chrono::nanoseconds d);
  void SetError(const Status& s);

  Client& client_;
  const Resource resource_;
  Clock& clock_;
  Random& random_;
  const Handler on_change_;
  const Options options_;

  std::atomic<bool> stop_{false};
  std::atomic<bool> synced_{false};
  std::atomic<int> lists_{0};
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<std::string, nlohmann::json> cache_;
  std::string rv_;
  Status last_error_;
  int failures_ = 0;  // consecutive (informer thread only)
};

}  // namespace kmosix::kube
