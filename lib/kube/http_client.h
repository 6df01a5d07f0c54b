// HttpClient: kube::Client (client.h) over HTTP(S) to a kube-apiserver,
// through the Transport seam (transport.h).
//
// - Paths: /apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>[/status]]
//   (core: /api/v1/...); query values are percent-escaped.
// - Auth: Config::token_file (re-read at most every Options::token_reread,
//   and at once on a 401, after which the request is sent once more), else
//   Config::token, as "Authorization: Bearer"; client certificates are the
//   transport's.
// - List follows continue tokens when ListOptions::limit > 0; items get
//   apiVersion/kind filled in when the server leaves them out.
// - Watch: GET ...?watch=1&resourceVersion=..&allowWatchBookmarks=true&
//   timeoutSeconds=<Options::watch_timeout_seconds>, decoded by WatchDecoder.
// - Errors exactly as client.h: 404 kNotFound; 409 and 410 kConflict;
//   400/422 kInvalid; 429/5xx and transport failures kRetry; 401/403 and
//   anything else kFailed. The message names the call and carries the
//   server's Status message.
// Thread-safety: every method may be called from several threads at once.
// Ownership: owns its Transport; borrows the Clock (must outlive it).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "kmosix/clock.h"
#include "kube/client.h"
#include "kube/config.h"
#include "kube/transport.h"

namespace kmosix::kube {

class HttpClient final : public Client {
 public:
  struct Options {
    std::chrono::seconds token_reread{60};
    int watch_timeout_seconds = 300;  // the server ends a watch after this (Ok: watch again)
    // Writes (Create, Update, UpdateStatus, MergePatch) with dryRun=All: the
    // server validates and admits them, answers the object it would store,
    // and stores nothing. For tests that ask the server's verdict.
    bool dry_run = false;
    // fieldValidation= on writes ("Strict": unknown or duplicate fields are
    // refused, as kubectl does; "" = the server's default, which drops them).
    std::string field_validation;
  };

  HttpClient(Config config, std::unique_ptr<Transport> transport, Clock& clock)
      : HttpClient(std::move(config), std::move(transport), clock, Options{}) {}
  HttpClient(Config config, std::unique_ptr<Transport> transport, Clock& clock, Options options);
  // With the real transport (NewHttpTransport); kInvalid for unusable config.
  static StatusOr<std::unique_ptr<HttpClient>> New(const Config& config, Clock& clock,
                                                   Options options);
  static StatusOr<std::unique_ptr<HttpClient>> New(const Config& config, Clock& clock) {
    return New(config, clock, Options{});
  }

  StatusOr<ObjectList> List(const Resource& r, const std::string& ns,
                            const ListOptions& options) override;
  Status Watch(const Resource& r, const std::string& ns, const std::string& resource_version,
               const ListOptions& options, const WatchHandler& handler,
               const std::atomic<bool>& stop) override;
  StatusOr<nlohmann::json> Get(const Resource& r, const std::string& ns,
                               const std::string& name) override;
  StatusOr<nlohmann::json> Create(const Resource& r, const std::string& ns,
                                  const nlohmann::json& object) override;
  StatusOr<nlohmann::json> Update(const Resource& r, const std::string& ns,
                                  const nlohmann::json& object) override;
  StatusOr<nlohmann::json> UpdateStatus(const Resource& r, const std::string& ns,
                                        const nlohmann::json& object) override;
  StatusOr<nlohmann::json> MergePatch(const Resource& r, const std::string& ns,
                                      const std::string& name,
                                      const nlohmann::json& patch) override;
  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const std::string& uid) override;

  // The config's default namespace ("" if none).
  const std::string& default_namespace() const { return config_.namespace_; }

  // URL building (exposed for tests).
  static std::string CollectionPath(const Resource& r, const std::string& ns);
  static std::string ObjectPath(const Resource& r, const std::string& ns, const std::string& name,
                                const std::string& subresource = "");
  // Percent-escapes a query value or path segment (RFC 3986 unreserved kept).
  static std::string Escape(std::string_view s);
  // The Status for a non-2xx answer (`what` names the call).
  static Status ErrorFor(const std::string& what, int http_status, std::string_view body);

 private:
  // Sends with auth; on 401 with a token file re-reads it and retries once.
  StatusOr<HttpResponse> Send(HttpRequest req);
  StatusOr<nlohmann::json> SendForObject(HttpRequest req, const Resource& r);
  // The Authorization header value ("" = none); `force` re-reads the token file.
  std::string Bearer(bool force);
  // "?dryRun=All&fieldValidation=..." per Options ("" when neither is set).
  std::string WriteQuery() const;
  StatusOr<std::string> NamespaceFor(const Resource& r, const std::string& ns,
                                     const nlohmann::json& object) const;

  const Config config_;
  const std::unique_ptr<Transport> transport_;
  Clock& clock_;
  const Options options_;
  std::mutex token_mu_;
  std::string token_;
  Clock::TimePoint token_read_at_{};
  bool token_read_ = false;
};

}  // namespace kmosix::kube
