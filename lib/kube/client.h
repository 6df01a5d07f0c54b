// A small Kubernetes API client: the seam the controller's Kubernetes bridge
// talks through. Objects are Kubernetes JSON (nlohmann::json) here because
// this IS the Kubernetes edge; the bridge turns them into the typed model
// with its codecs (controller/kube/codec.h) and nothing past the bridge sees
// them.
//
// Implementations: HttpClient (lib/kube/http_client.h: kubeconfig or
// in-cluster config, TLS, bearer tokens or client certificates) and
// FakeClient (tests/fakes/fake_kube_client.h: an in-memory API server with
// resourceVersions, conflicts, finalizers and watches).
//
// Errors (Status codes, chosen by what the caller should do):
//   kNotFound   404: the object (or its namespace/kind) does not exist.
//   kConflict   409: resourceVersion mismatch or the name exists (re-read,
//               retry); from Watch: 410 Gone, the resourceVersion is too old
//               (relist, then watch from the new list's resourceVersion).
//   kInvalid    400/422: the API server refused the object (schema, CEL);
//               the message carries the server's message. Do not retry.
//   kRetry      5xx, 429, timeouts, connection failures: back off and retry.
//   kFailed     401/403 and anything else: report, do not retry blindly.
// Thread-safety: every method may be called from several threads at once.
// Ownership: the caller owns the client; it holds its own connections.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kmosix/status.h"

namespace kmosix::kube {

// Which collection: apis/<group>/<version>/[namespaces/<ns>/]<plural>
// (group "" = the core API, /api/v1/...).
struct Resource {
  std::string group;    // "kmosix.io", "" for core
  std::string version;  // "v1alpha1", "v1"
  std::string plural;   // "migratableworkloads"
  std::string kind;     // "MigratableWorkload" (for objects this client builds)
  bool namespaced = true;
  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
};

struct ListOptions {
  std::string label_selector;  // "" = all
  std::string field_selector;
  int64_t limit = 0;  // 0 = no paging; else continue tokens are followed internally
};

struct ObjectList {
  std::vector<nlohmann::json> items;
  std::string resource_version;  // of the list: watch from here
};

enum class EventType { kAdded, kModified, kDeleted, kBookmark };

struct WatchEvent {
  EventType type = EventType::kAdded;
  nlohmann::json object;  // for kBookmark only metadata.resourceVersion is meaningful
};

// Returns false to end the watch.
using WatchHandler = std::function<bool(const WatchEvent&)>;

class Client {
 public:
  virtual ~Client() = default;

  // ns "" on a namespaced resource = all namespaces.
  virtual StatusOr<ObjectList> List(const Resource& r, const std::string& ns,
                                    const ListOptions& options) = 0;
  // Watches from `resource_version` (required: the API server on Debian's
  // etcd 3.4 refuses a watch without one) with allowWatchBookmarks=true.
  // Calls `handler` for each event as it arrives, until the handler returns
  // false, `stop` becomes true (checked at least every `poll` of the
  // implementation, about a second), the server ends the stream (Ok: watch
  // again from the last resourceVersion seen) or an error (410 Gone -> kConflict).
  virtual Status Watch(const Resource& r, const std::string& ns, const std::string& resource_version,
                       const ListOptions& options, const WatchHandler& handler,
                       const std::atomic<bool>& stop) = 0;
  virtual StatusOr<nlohmann::json> Get(const Resource& r, const std::string& ns,
                                       const std::string& name) = 0;
  virtual StatusOr<nlohmann::json> Create(const Resource& r, const std::string& ns,
                                          const nlohmann::json& object) = 0;
  // PUT of the whole object; metadata.resourceVersion must be set (kConflict
  // when it is stale). Status is ignored by the server (subresource).
  virtual StatusOr<nlohmann::json> Update(const Resource& r, const std::string& ns,
                                          const nlohmann::json& object) = 0;
  // PUT .../status; metadata.resourceVersion must be set.
  virtual StatusOr<nlohmann::json> UpdateStatus(const Resource& r, const std::string& ns,
                                                const nlohmann::json& object) = 0;
  // application/merge-patch+json (RFC 7386) of the object (not its status).
  virtual StatusOr<nlohmann::json> MergePatch(const Resource& r, const std::string& ns,
                                              const std::string& name,
                                              const nlohmann::json& patch) = 0;
  // Deletes; `uid` (if not empty) is sent as a precondition. kNotFound if gone.
  virtual Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                        const std::string& uid) = 0;
};

// The resources kmosix uses.
Resource MigratableWorkloads();  // kmosix.io/v1alpha1, namespaced
Resource Migrations();           // kmosix.io/v1alpha1, namespaced
Resource MigrationPolicies();    // kmosix.io/v1alpha1, cluster-scoped
Resource CoreEvents();           // v1 events, namespaced
Resource Nodes();                // v1 nodes, cluster-scoped

}  // namespace kmosix::kube
