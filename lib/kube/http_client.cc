#include "kube/http_client.h"

#include <fstream>
#include <sstream>

#include "kube/watch_stream.h"

namespace kmosix::kube {
namespace {

using nlohmann::json;

constexpr const char* kJson = "application/json";

json ParseJson(std::string_view body) {
  return json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
}

std::string Str(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t a = s.find_first_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a);
}

// Fills apiVersion/kind of an object the server listed without them.
void FillKind(json& obj, const Resource& r) {
  if (!obj.is_object()) return;
  if (!obj.contains("apiVersion")) obj["apiVersion"] = r.ApiVersion();
  if (!obj.contains("kind") && !r.kind.empty()) obj["kind"] = r.kind;
}

std::string Query(const ListOptions& o) {
  std::string q;
  if (!o.label_selector.empty()) q += "&labelSelector=" + HttpClient::Escape(o.label_selector);
  if (!o.field_selector.empty()) q += "&fieldSelector=" + HttpClient::Escape(o.field_selector);
  return q;
}

}  // namespace

HttpClient::HttpClient(Config config, std::unique_ptr<Transport> transport, Clock& clock,
                       Options options)
    : config_(std::move(config)),
      transport_(std::move(transport)),
      clock_(clock),
      options_(options),
      token_(config_.token) {}

StatusOr<std::unique_ptr<HttpClient>> HttpClient::New(const Config& config, Clock& clock,
                                                      Options options) {
  auto t = NewHttpTransport(config, std::chrono::seconds(options.watch_timeout_seconds + 60));
  if (!t.ok()) return t.status();
  return std::make_unique<HttpClient>(config, std::move(*t), clock, options);
}

std::string HttpClient::Escape(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

std::string HttpClient::CollectionPath(const Resource& r, const std::string& ns) {
  std::string p = r.group.empty() ? "/api/" + Escape(r.version)
                                  : "/apis/" + Escape(r.group) + "/" + Escape(r.version);
  if (r.namespaced && !ns.empty()) p += "/namespaces/" + Escape(ns);
  return p + "/" + Escape(r.plural);
}

std::string HttpClient::ObjectPath(const Resource& r, const std::string& ns,
                                   const std::string& name, const std::string& subresource) {
  std::string p = CollectionPath(r, ns) + "/" + Escape(name);
  if (!subresource.empty()) p += "/" + Escape(subresource);
  return p;
}

Status HttpClient::ErrorFor(const std::string& what, int http_status, std::string_view body) {
  json j = ParseJson(body);
  std::string message = Str(j, "message");
  if (message.empty()) {
    message = std::string(body.substr(0, 300));
    if (message.empty()) message = "(no body)";
  }
  std::string text = what + ": HTTP " + std::to_string(http_status) + ": " + message;
  switch (http_status) {
    case 404:
      return NotFoundError(text);
    case 409:
    case 410:
      return ConflictError(text);
    case 400:
    case 422:
      return InvalidError(text);
    case 429:
      return RetryError(text);
    default:
      if (http_status >= 500 && http_status <= 599) return RetryError(text);
      return FailedError(text);
  }
}

std::string HttpClient::Bearer(bool force) {
  std::lock_guard lock(token_mu_);
  if (!config_.token_file.empty()) {
    auto now = clock_.Now();
    if (force || !token_read_ || now - token_read_at_ >= options_.token_reread) {
      std::ifstream in(config_.token_file, std::ios::binary);
      if (in) {
        std::ostringstream ss;
        ss << in.rdbuf();
        std::string t = Trimmed(ss.str());
        if (!t.empty()) token_ = t;  // keep the last good token if the file is mid-rewrite
      }
      token_read_ = true;
      token_read_at_ = now;
    }
  }
  return token_.empty() ? "" : "Bearer " + token_;
}

StatusOr<HttpResponse> HttpClient::Send(HttpRequest req) {
  req.headers["Accept"] = kJson;
  for (int attempt = 0;; ++attempt) {
    std::string bearer = Bearer(attempt > 0);
    if (!bearer.empty()) req.headers["Authorization"] = bearer;
    auto resp = transport_->Do(req);
    if (!resp.ok()) return resp.status().Annotate(req.method + " " + req.target);
    if (resp->status == 401 && attempt == 0 && !config_.token_file.empty()) continue;
    return resp;
  }
}

StatusOr<json> HttpClient::SendForObject(HttpRequest req, const Resource& r) {
  std::string what = req.method + " " + req.target;
  auto resp = Send(std::move(req));
  if (!resp.ok()) return resp.status();
  if (resp->status / 100 != 2) return ErrorFor(what, resp->status, resp->body);
  json j = ParseJson(resp->body);
  if (!j.is_object()) return RetryError(what + ": the answer is not a JSON object");
  FillKind(j, r);
  return j;
}

StatusOr<std::string> HttpClient::NamespaceFor(const Resource& r, const std::string& ns,
                                               const json& object) const {
  if (!r.namespaced) return std::string();
  std::string ons = object.is_object() ? Str(object.value("metadata", json::object()), "namespace")
                                       : std::string();
  if (!ns.empty() && !ons.empty() && ns != ons) {
    return InvalidError("the object's namespace \"" + ons + "\" is not \"" + ns + "\"");
  }
  std::string out = ns.empty() ? ons : ns;
  if (out.empty()) return InvalidError(r.plural + ": a namespace is required");
  return out;
}

StatusOr<ObjectList> HttpClient::List(const Resource& r, const std::string& ns,
                                      const ListOptions& options) {
  ObjectList out;
  std::string cont;
  do {
    std::string q = Query(options);
    if (options.limit > 0) q += "&limit=" + std::to_string(options.limit);
    if (!cont.empty()) q += "&continue=" + Escape(cont);
    HttpRequest req{
        "GET", CollectionPath(r, ns) + (q.empty() ? "" : "?" + q.substr(1)), {}, "", ""};
    std::string what = "list " + req.target;
    auto resp = Send(std::move(req));
    if (!resp.ok()) return resp.status();
    if (resp->status / 100 != 2) return ErrorFor(what, resp->status, resp->body);
    json j = ParseJson(resp->body);
    if (!j.is_object()) return RetryError(what + ": the answer is not a JSON object");
    json meta = j.value("metadata", json::object());
    out.resource_version = Str(meta, "resourceVersion");
    cont = options.limit > 0 ? Str(meta, "continue") : "";
    auto items = j.find("items");
    if (items != j.end() && items->is_array()) {
      for (auto& item : *items) {
        if (!item.is_object()) return RetryError(what + ": an item is not a JSON object");
        FillKind(item, r);
        out.items.push_back(std::move(item));
      }
    } else if (items != j.end() && !items->is_null()) {
      return RetryError(what + ": items is not a list");
    }
  } while (!cont.empty());
  if (out.resource_version.empty()) return RetryError("list: the answer has no resourceVersion");
  return out;
}

Status HttpClient::Watch(const Resource& r, const std::string& ns,
                         const std::string& resource_version, const ListOptions& options,
                         const WatchHandler& handler, const std::atomic<bool>& stop) {
  if (resource_version.empty()) {
    return InvalidError("watch needs a resourceVersion (list first)");
  }
  HttpRequest req{"GET",
                  CollectionPath(r, ns) + "?watch=1&resourceVersion=" + Escape(resource_version) +
                      "&allowWatchBookmarks=true&timeoutSeconds=" +
                      std::to_string(options_.watch_timeout_seconds) + Query(options),
                  {{"Accept", kJson}},
                  "",
                  ""};
  std::string what = "watch " + req.target;
  for (int attempt = 0;; ++attempt) {
    std::string bearer = Bearer(attempt > 0);
    if (!bearer.empty()) req.headers["Authorization"] = bearer;
    WatchDecoder decoder(handler);
    auto resp = transport_->Stream(
        req, [&](std::string_view data) { return decoder.Feed(data); }, stop);
    if (!decoder.status().ok()) return decoder.status();
    if (decoder.handler_stopped() || stop.load()) return Status::Ok();
    if (!resp.ok()) return resp.status().Annotate(what);
    if (resp->status == 401 && attempt == 0 && !config_.token_file.empty()) continue;
    if (resp->status / 100 != 2) return ErrorFor(what, resp->status, resp->body);
    if (!decoder.Finish() && !decoder.status().ok()) return decoder.status();
    return Status::Ok();
  }
}

StatusOr<json> HttpClient::Get(const Resource& r, const std::string& ns, const std::string& name) {
  if (name.empty()) return InvalidError("get " + r.plural + ": no name");
  return SendForObject({"GET", ObjectPath(r, ns, name), {}, "", ""}, r);
}

std::string HttpClient::WriteQuery() const {
  std::string q;
  if (options_.dry_run) q += "&dryRun=All";
  if (!options_.field_validation.empty())
    q += "&fieldValidation=" + Escape(options_.field_validation);
  if (!q.empty()) q[0] = '?';
  return q;
}

StatusOr<json> HttpClient::Create(const Resource& r, const std::string& ns, const json& object) {
  if (!object.is_object()) return InvalidError("create " + r.plural + ": not a JSON object");
  auto n = NamespaceFor(r, ns, object);
  if (!n.ok()) return n.status();
  json obj = object;
  FillKind(obj, r);
  return SendForObject({"POST", CollectionPath(r, *n) + WriteQuery(), {}, obj.dump(), kJson}, r);
}

StatusOr<json> HttpClient::Update(const Resource& r, const std::string& ns, const json& object) {
  if (!object.is_object()) return InvalidError("update " + r.plural + ": not a JSON object");
  auto n = NamespaceFor(r, ns, object);
  if (!n.ok()) return n.status();
  std::string name = Str(object.value("metadata", json::object()), "name");
  if (name.empty()) return InvalidError("update " + r.plural + ": metadata.name is missing");
  json obj = object;
  FillKind(obj, r);
  return SendForObject({"PUT", ObjectPath(r, *n, name) + WriteQuery(), {}, obj.dump(), kJson}, r);
}

StatusOr<json> HttpClient::UpdateStatus(const Resource& r, const std::string& ns,
                                        const json& object) {
  if (!object.is_object()) return InvalidError("update status " + r.plural + ": not a JSON object");
  auto n = NamespaceFor(r, ns, object);
  if (!n.ok()) return n.status();
  std::string name = Str(object.value("metadata", json::object()), "name");
  if (name.empty()) return InvalidError("update status " + r.plural + ": metadata.name is missing");
  json obj = object;
  FillKind(obj, r);
  return SendForObject(
      {"PUT", ObjectPath(r, *n, name, "status") + WriteQuery(), {}, obj.dump(), kJson}, r);
}

StatusOr<json> HttpClient::MergePatch(const Resource& r, const std::string& ns,
                                      const std::string& name, const json& patch) {
  if (name.empty()) return InvalidError("patch " + r.plural + ": no name");
  if (!patch.is_object()) return InvalidError("patch " + r.plural + ": not a JSON object");
  if (r.namespaced && ns.empty()) return InvalidError(r.plural + ": a namespace is required");
  return SendForObject({"PATCH",
                        ObjectPath(r, ns, name) + WriteQuery(),
                        {},
                        patch.dump(),
                        "application/merge-patch+json"},
                       r);
}

Status HttpClient::Delete(const Resource& r, const std::string& ns, const std::string& name,
                          const std::string& uid) {
  if (name.empty()) return InvalidError("delete " + r.plural + ": no name");
  if (r.namespaced && ns.empty()) return InvalidError(r.plural + ": a namespace is required");
  json opts = {{"kind", "DeleteOptions"}, {"apiVersion", "v1"}};
  if (!uid.empty()) opts["preconditions"] = {{"uid", uid}};
  HttpRequest req{"DELETE", ObjectPath(r, ns, name), {}, opts.dump(), kJson};
  std::string what = "delete " + req.target;
  auto resp = Send(std::move(req));
  if (!resp.ok()) return resp.status();
  if (resp->status / 100 != 2) return ErrorFor(what, resp->status, resp->body);
  return Status::Ok();
}

}  // namespace kmosix::kube
