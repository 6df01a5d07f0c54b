// The node signer: each agent's per-node TLS identity, issued through
// Kubernetes pod certificates (certificates.k8s.io/v1 PodCertificateRequest,
// GA in Kubernetes 1.37).
//
// The agent's pod mounts a `podCertificate` projected volume with signer
// `kmosix.io/node`. The kubelet makes the key on the node (it never leaves
// it), creates a PodCertificateRequest whose spec the API server fills with
// the pod, its ServiceAccount and its node (NodeRestriction checks that the
// kubelet asks only for its own pods), and writes the key and the chain we
// issue into the pod, refreshing it at status.beginRefreshAt. The leading
// controller answers every request for its signer:
//
//   Issued   the pod is the one named (uid), runs on spec.nodeName, as the
//            agent ServiceAccount of the agent namespace; no annotations we
//            do not know; a supported key: a certificate for the request's
//            public key with O=kmosix:nodes, CN=<node>, SANs the node's
//            name, DNS names and IP addresses (Node.status.addresses), server
//            and client use, valid min(spec.maxExpirationSeconds,
//            max_lifetime) from now - backdate, refresh at half its life.
//   Denied   anything else, with a reason (UnsupportedKeyType,
//            WrongNamespace, WrongServiceAccount, UnknownAnnotation,
//            PodMismatch, ReservedName, InvalidRequest) and a message a user can act on;
//            terminal, as the API requires (the kubelet asks again).
//
// With NodeSignerOptions::access_grants set (etcd node grants on), the node's
// etcd identity is made before a certificate is written: user <node> holding
// role <node_role_prefix><node>, with read on the whole etcd_prefix and
// readwrite on exactly <etcd_prefix>nodes/<node> (AccessGrants::
// EnsureNodeIdentity; idempotent, so every issuance checks it). If that
// fails nothing is written and the request stays pending (retried; the
// kubelet waits), never Denied. The chart's pki-refresh CronJob makes the
// same, and deletes the users of nodes that are gone.
//
// Requests of other signers are never looked at (field selector). Issuer
// failures (unreadable CA files), etcd identity and API errors are retried
// with backoff, never answered Failed: fixing the cause makes them succeed.
//
// Ownership: borrows the client, issuer, clock, random and access grants
// (they must outlive the signer); owns its informer, queue and thread.
// Thread-safety: Start/Stop from one thread; Reconcile from one thread at a
// time (the worker, or a test with the worker not started).
// Errors: Reconcile returns kRetry/kConflict (retry with backoff), kFailed
// (the issuer cannot sign; retried with backoff too), and EnsureNodeIdentity's
// errors as they are (kPermissionDenied: the controller lacks etcd's root
// role; retried with backoff and logged as warnings). None escape a thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "cluster/work_queue.h"
#include "kmosix/access_grants.h"
#include "kmosix/clock.h"
#include "kmosix/status.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "tls/issuer.h"

namespace kmosix::bridge {

inline constexpr char kNodeSignerName[] = "kmosix.io/node";

struct NodeSignerOptions {
  std::string signer_name = kNodeSignerName;
  std::string agent_namespace;        // where the agents' pods run (required)
  std::string agent_service_account;  // their ServiceAccount (required)
  std::chrono::seconds max_lifetime{24 * 3600};
  std::chrono::seconds backdate{60};  // notBefore = now - backdate (clock skew)
  Clock::Duration resync = std::chrono::seconds(60);
  // Names no node may have: a node's CN is also its etcd user, and these are
  // etcd's and the controllers' identities (a node named "root" would be
  // etcd's root). Denied with reason ReservedName.
  std::set<std::string> reserved_names = {"root", "kmosix-controller"};
  // Optional (borrowed): make each node's etcd user and role before issuing.
  AccessGrants* access_grants = nullptr;
  std::string etcd_prefix;       // the cluster state's key prefix, ending in '/'
  std::string node_role_prefix;  // the etcd role of node N is this + N
};

// The Kubernetes edge: a PodCertificateRequest object, decoded.
struct PodCertificateRequest {
  std::string ns;
  std::string name;
  int64_t generation = 0;
  std::string signer_name;
  std::string pod_name;
  std::string pod_uid;
  std::string service_account;
  std::string node_name;
  int64_t max_expiration_seconds = 86400;
  std::string csr_der;
  std::map<std::string, std::string> user_annotations;
  // "Issued", "Denied" or "Failed" once answered ("" while pending).
  std::string answered;
};
// kInvalid (naming the field) when the object is not a well-formed request.
StatusOr<PodCertificateRequest> DecodePodCertificateRequest(const nlohmann::json& object);

// The resource (certificates.k8s.io/v1, namespaced).
kube::Resource PodCertificateRequests();
kube::Resource Pods();

class NodeSigner {
 public:
  NodeSigner(kube::Client& client, tls::Issuer& issuer, Clock& clock, Random& random,
             std::function<bool()> leading, NodeSignerOptions options);
  ~NodeSigner();
  NodeSigner(const NodeSigner&) = delete;
  NodeSigner& operator=(const NodeSigner&) = delete;

  void Start();
  void Stop();  // idempotent; joins
  bool Synced() const;

  // Answers the request "<namespace>/<name>" if it is still pending. Exposed
  // for tests (with Start() not called, it reads through the client).
  Status Reconcile(const std::string& key);

  // Answers so far (this process), for logs and tests.
  int Issued() const { return issued_.load(); }
  int Denied() const { return denied_.load(); }

 private:
  void Run();
  Status Answer(const nlohmann::json& object, const PodCertificateRequest& req);
  // Why `req` must be denied ({reason, message}), or nullopt to issue.
  StatusOr<std::optional<std::pair<std::string, std::string>>> Refusal(
      const PodCertificateRequest& req);
  Status Deny(const nlohmann::json& object, const PodCertificateRequest& req,
              const std::string& reason, const std::string& message);
  Status Issue(const nlohmann::json& object, const PodCertificateRequest& req);

  kube::Client& client_;
  tls::Issuer& issuer_;
  Clock& clock_;
  Random& random_;
  const std::function<bool()> leading_;
  const NodeSignerOptions options_;
  cluster::WorkQueue queue_;
  std::unique_ptr<kube::Informer> requests_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> started_{false};
  std::thread worker_;
  std::atomic<int> issued_{0};
  std::atomic<int> denied_{0};
};

}  // namespace kmosix::bridge
