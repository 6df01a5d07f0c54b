#include "controller/kube/node_signer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "controller/kube/codec.h"
#include "kube/config.h"
#include "tls/tls.h"

namespace kmosix::bridge {
namespace {

using nlohmann::json;

const json* Child(const json& o, const char* key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(key);
  return it == o.end() ? nullptr : &*it;
}

StatusOr<std::string> String(const json& o, const char* key, const std::string& path,
                             bool required = true) {
  const json* v = Child(o, key);
  if (v == nullptr || v->is_null()) {
    if (required) return InvalidError(path + ": required");
    return std::string();
  }
  if (!v->is_string()) return InvalidError(path + ": must be a string");
  std::string s = v->get<std::string>();
  if (required && s.empty()) return InvalidError(path + ": required");
  return s;
}

std::string SplitNs(const std::string& key, std::string* name) {
  const auto slash = key.find('/');
  if (slash == std::string::npos) {
    *name = key;
    return "";
  }
  *name = key.substr(slash + 1);
  return key.substr(0, slash);
}

int64_t ToUnixSeconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

json Answered(const PodCertificateRequest& req, const std::string& type, const std::string& reason,
              const std::string& message, int64_t now_ms) {
  return json::array({{{"type", type},
                       {"status", "True"},
                       {"reason", reason},
                       {"message", message},
                       {"observedGeneration", req.generation},
                       {"lastTransitionTime", FormatTime(now_ms)}}});
}

// The node's names and addresses, for the certificate's SANs.
void NodeAddresses(const json& node, std::set<std::string>* dns, std::set<std::string>* ips) {
  const json* status = Child(node, "status");
  const json* addresses = status ? Child(*status, "addresses") : nullptr;
  if (addresses == nullptr || !addresses->is_array()) return;
  for (const json& a : *addresses) {
    auto type = String(a, "type", "", false);
    auto address = String(a, "address", "", false);
    if (!type.ok() || !address.ok() || address->empty()) continue;
    if (*type == "InternalIP" || *type == "ExternalIP") ips->insert(*address);
    if (*type == "Hostname" || *type == "InternalDNS" || *type == "ExternalDNS")
      dns->insert(*address);
  }
}

}  // namespace

kube::Resource PodCertificateRequests() {
  return {"certificates.k8s.io", "v1", "podcertificaterequests", "PodCertificateRequest", true};
}
kube::Resource Pods() { return {"", "v1", "pods", "Pod", true}; }

StatusOr<PodCertificateRequest> DecodePodCertificateRequest(const json& object) {
  PodCertificateRequest r;
  const json* meta = Child(object, "metadata");
  if (meta == nullptr || !meta->is_object()) return InvalidError("metadata: required");
  KMX_ASSIGN_OR_RETURN(r.ns, String(*meta, "namespace", "metadata.namespace"));
  KMX_ASSIGN_OR_RETURN(r.name, String(*meta, "name", "metadata.name"));
  if (const json* g = Child(*meta, "generation"); g && g->is_number_integer())
    r.generation = g->get<int64_t>();
  const json* spec = Child(object, "spec");
  if (spec == nullptr || !spec->is_object()) return InvalidError("spec: required");
  KMX_ASSIGN_OR_RETURN(r.signer_name, String(*spec, "signerName", "spec.signerName"));
  KMX_ASSIGN_OR_RETURN(r.pod_name, String(*spec, "podName", "spec.podName"));
  KMX_ASSIGN_OR_RETURN(r.pod_uid, String(*spec, "podUID", "spec.podUID"));
  KMX_ASSIGN_OR_RETURN(r.service_account,
                       String(*spec, "serviceAccountName", "spec.serviceAccountName"));
  KMX_ASSIGN_OR_RETURN(r.node_name, String(*spec, "nodeName", "spec.nodeName"));
  if (const json* m = Child(*spec, "maxExpirationSeconds"); m && !m->is_null()) {
    if (!m->is_number_integer() || m->get<int64_t>() <= 0)
      return InvalidError("spec.maxExpirationSeconds: must be a positive integer");
    r.max_expiration_seconds = m->get<int64_t>();
  }
  KMX_ASSIGN_OR_RETURN(std::string csr64,
                       String(*spec, "stubPKCS10Request", "spec.stubPKCS10Request"));
  auto csr = kube::Base64Decode(csr64);
  if (!csr) return InvalidError("spec.stubPKCS10Request: not base64");
  r.csr_der = std::move(*csr);
  if (const json* a = Child(*spec, "unverifiedUserAnnotations"); a && !a->is_null()) {
    if (!a->is_object()) return InvalidError("spec.unverifiedUserAnnotations: must be an object");
    for (const auto& [k, v] : a->items())
      r.user_annotations[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  if (const json* st = Child(object, "status"))
    if (const json* cs = Child(*st, "conditions"); cs && cs->is_array())
      for (const json& c : *cs) {
        auto type = String(c, "type", "", false);
        auto status = String(c, "status", "", false);
        if (type.ok() && status.ok() && *status == "True" &&
            (*type == "Issued" || *type == "Denied" || *type == "Failed"))
          r.answered = *type;
      }
  return r;
}

NodeSigner::NodeSigner(kube::Client& client, tls::Issuer& issuer, Clock& clock, Random& random,
                       std::function<bool()> leading, NodeSignerOptions options)
    : client_(client),
      issuer_(issuer),
      clock_(clock),
      random_(random),
      leading_(std::move(leading)),
      options_(std::move(options)),
      queue_(clock, random) {}

NodeSigner::~NodeSigner() { Stop(); }

void NodeSigner::Start() {
  if (started_.exchange(true)) return;
  kube::Informer::Options io;
  io.list.field_selector = "spec.signerName=" + options_.signer_name;
  requests_ = std::make_unique<kube::Informer>(
      client_, PodCertificateRequests(), clock_, random_,
      [this](const std::string& key, const json* object) {
        if (object != nullptr) queue_.Add(key);
      },
      io);
  requests_->Start();
  worker_ = std::thread([this] { Run(); });
}

void NodeSigner::Stop() {
  stop_ = true;
  queue_.ShutDown();
  if (worker_.joinable()) worker_.join();
  if (requests_) requests_->Stop();
}

bool NodeSigner::Synced() const { return requests_ && requests_->HasSynced(); }

void NodeSigner::Run() {
  cluster::RunLeaderWorker(queue_, clock_, stop_,
                           {.name = "node signer",
                            .lead = [this] { return leading_() && Synced(); },
                            // Level-based: every pending request again (a new leader, or one the
                            // old leader had not finished).
                            .enqueue_all =
                                [this] {
                                  for (const json& o : requests_->List())
                                    queue_.Add(kube::Informer::KeyOf(o));
                                },
                            .reconcile = [this](const std::string& key) { return Reconcile(key); },
                            .resync = options_.resync});
}

Status NodeSigner::Reconcile(const std::string& key) {
  std::string name;
  const std::string ns = SplitNs(key, &name);
  std::optional<json> object;
  if (requests_) {
    object = requests_->Get(key);
  } else {
    auto got = client_.Get(PodCertificateRequests(), ns, name);
    if (!got.ok() && got.status().code() != Code::kNotFound) return got.status();
    if (got.ok()) object = std::move(*got);
  }
  if (!object) return Status::Ok();  // gone (the kubelet deletes answered ones)
  auto req = DecodePodCertificateRequest(*object);
  if (!req.ok()) {
    // The API server validated it; a request we cannot read is denied, so
    // the kubelet is not left waiting.
    PodCertificateRequest bare;
    bare.ns = ns;
    bare.name = name;
    if (auto m = object->find("metadata"); m != object->end() && m->is_object())
      if (auto g = m->find("generation"); g != m->end() && g->is_number_integer())
        bare.generation = g->get<int64_t>();
    if (auto s = object->find("status");
        s != object->end() && s->is_object() && s->contains("conditions"))
      return Status::Ok();  // answered already (by us or someone else)
    return Deny(*object, bare, "InvalidRequest", req.status().message());
  }
  if (!req->answered.empty()) return Status::Ok();
  if (req->signer_name != options_.signer_name) return Status::Ok();  // not ours
  return Answer(*object, *req);
}

Status NodeSigner::Answer(const json& object, const PodCertificateRequest& req) {
  KMX_ASSIGN_OR_RETURN(auto refusal, Refusal(req));
  if (refusal) return Deny(object, req, refusal->first, refusal->second);
  return Issue(object, req);
}

StatusOr<std::optional<std::pair<std::string, std::string>>> NodeSigner::Refusal(
    const PodCertificateRequest& req) {
  using Why = std::optional<std::pair<std::string, std::string>>;
  const std::string agents = options_.agent_namespace + "/" + options_.agent_service_account;
  if (req.ns != options_.agent_namespace)
    return Why{{"WrongNamespace", options_.signer_name + " signs only for the kmosix agents (" +
                                      agents + "), not for pods of namespace " + req.ns}};
  if (req.service_account != options_.agent_service_account)
    return Why{{"WrongServiceAccount",
                options_.signer_name + " signs only for the kmosix agents (" + agents +
                    "), not for ServiceAccount " + req.ns + "/" + req.service_account}};
  if (options_.reserved_names.contains(req.node_name) ||
      (req.node_name.rfind("controller", 0) == 0 && req.node_name.size() > 10 &&
       req.node_name.find_first_not_of("0123456789", 10) == std::string::npos))
    return Why{{"ReservedName", "node " + req.node_name +
                                    " has the name of an etcd or controller identity; a node "
                                    "certificate with that CN would be that identity: rename "
                                    "the node"}};
  if (!req.user_annotations.empty())
    return Why{{"UnknownAnnotation", options_.signer_name + " knows no user annotations (got " +
                                         req.user_annotations.begin()->first + ")"}};
  auto key_type = tls::CsrKeyType(req.csr_der);
  if (!key_type.ok())
    return Why{{"UnsupportedKeyType",
                key_type.status().message() + "; use keyType ECDSAP256 (what the chart asks)"}};
  // NodeRestriction already ties the request to the kubelet's own pods;
  // this check holds on API servers without it too.
  auto pod = client_.Get(Pods(), req.ns, req.pod_name);
  if (!pod.ok()) {
    if (pod.status().code() != Code::kNotFound) return pod.status();
    return Why{{"PodMismatch", "pod " + req.ns + "/" + req.pod_name + " does not exist"}};
  }
  const json* meta = Child(*pod, "metadata");
  const json* spec = Child(*pod, "spec");
  auto uid = meta ? String(*meta, "uid", "", false) : StatusOr<std::string>(std::string());
  auto node = spec ? String(*spec, "nodeName", "", false) : StatusOr<std::string>(std::string());
  auto sa =
      spec ? String(*spec, "serviceAccountName", "", false) : StatusOr<std::string>(std::string());
  if (!uid.ok() || *uid != req.pod_uid)
    return Why{{"PodMismatch", "pod " + req.ns + "/" + req.pod_name + " has another uid than " +
                                   req.pod_uid + " (recreated)"}};
  if (!node.ok() || *node != req.node_name)
    return Why{
        {"PodMismatch", "pod " + req.ns + "/" + req.pod_name + " is not on node " + req.node_name}};
  if (!sa.ok() || *sa != req.service_account)
    return Why{{"PodMismatch", "pod " + req.ns + "/" + req.pod_name +
                                   " runs as another ServiceAccount than " + req.service_account}};
  return Why{};
}

Status NodeSigner::Deny(const json& object, const PodCertificateRequest& req,
                        const std::string& reason, const std::string& message) {
  json updated = object;
  updated["status"] = {
      {"conditions", Answered(req, "Denied", reason, message, clock_.WallMillis())}};
  auto s = client_.UpdateStatus(PodCertificateRequests(), req.ns, updated);
  if (!s.ok()) return s.status().Annotate("deny " + req.ns + "/" + req.name);
  ++denied_;
  spdlog::warn("node signer: denied {}/{} (pod {}, node {}): {}: {}", req.ns, req.name,
               req.pod_name, req.node_name, reason, message);
  return Status::Ok();
}

Status NodeSigner::Issue(const json& object, const PodCertificateRequest& req) {
  std::set<std::string> dns{req.node_name};
  std::set<std::string> ips;
  auto node = client_.Get(kube::Nodes(), "", req.node_name);
  if (!node.ok()) {
    // The request names the node the kubelet runs on: a missing Node is a
    // moment of the node's registration, not an answer.
    return RetryError("node " + req.node_name + ": " + node.status().message());
  }
  NodeAddresses(*node, &dns, &ips);

  const int64_t now_s = clock_.WallMillis() / 1000;
  const std::chrono::seconds lifetime =
      std::min(options_.max_lifetime, std::chrono::seconds(req.max_expiration_seconds));
  tls::CertificateRequest cr;
  cr.csr_der = req.csr_der;
  cr.common_name = req.node_name;
  cr.organizations = {tls::kGroupNodes};
  cr.dns_names.assign(dns.begin(), dns.end());
  cr.ip_addresses.assign(ips.begin(), ips.end());
  cr.not_before =
      std::chrono::system_clock::time_point(std::chrono::seconds(now_s)) - options_.backdate;
  cr.lifetime = lifetime;
  cr.server_auth = true;
  cr.client_auth = true;
  auto issued = issuer_.Issue(cr);
  if (!issued.ok()) {
    if (issued.status().code() == Code::kInvalid) {
      // Something of the request itself (a node name that is no DNS name...).
      return Deny(object, req, "InvalidRequest", issued.status().message());
    }
    return issued.status().Annotate("issue for node " + req.node_name);
  }
  const int64_t nb = ToUnixSeconds(issued->not_before);
  const int64_t na = ToUnixSeconds(issued->not_after);
  if (na - nb < 3600) {
    // The API refuses lifetimes under an hour: an issuer about to expire
    // cannot serve.
    return FailedError("the node issuer's certificate expires at " + FormatTime(na * 1000) +
                       ": too soon to issue (renew the issuer)");
  }
  const int64_t refresh = std::clamp(nb + (na - nb) / 2, nb + 600, na - 600);
  if (options_.access_grants != nullptr) {
    // The identity is only useful with its etcd user: make that first, and
    // write nothing if it fails (the request stays pending; retried).
    const std::string& node = req.node_name;
    KMX_RETURN_IF_ERROR(options_.access_grants
                            ->EnsureNodeIdentity(node, options_.node_role_prefix + node,
                                                 options_.etcd_prefix,
                                                 options_.etcd_prefix + "nodes/" + node)
                            .Annotate("etcd user and role of node " + node));
  }

  json updated = object;
  updated["status"] = {
      {"conditions",
       Answered(req, "Issued", "Issued", "issued CN=" + req.node_name + " O=" + tls::kGroupNodes,
                clock_.WallMillis())},
      {"certificateChain", issued->chain_pem},
      {"notBefore", FormatTime(nb * 1000)},
      {"notAfter", FormatTime(na * 1000)},
      {"beginRefreshAt", FormatTime(refresh * 1000)}};
  auto s = client_.UpdateStatus(PodCertificateRequests(), req.ns, updated);
  if (!s.ok()) return s.status().Annotate("issue " + req.ns + "/" + req.name);
  ++issued_;
  spdlog::info("node signer: issued {}/{}: CN={} for pod {} ({} DNS, {} IP SANs) until {}", req.ns,
               req.name, req.node_name, req.pod_name, dns.size(), ips.size(),
               FormatTime(na * 1000));
  return Status::Ok();
}

}  // namespace kmosix::bridge
