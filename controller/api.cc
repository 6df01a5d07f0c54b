#include "controller/api.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <regex>

#include "controller/openapi_document.h"  // generated from openapi.json
#include "controller/rest_codec.h"
#include "kmosix/spec_json.h"
#include "transport_http/rest.h"

namespace kmosix::controller {
namespace {

using nlohmann::json;
using rest::Reply;
using rest::ReplyError;

// Replies with `to_json(*value)` (status `code`) or the error.
template <typename T, typename F>
void ReplyWith(httplib::Response& res, const StatusOr<T>& value, F to_json, int code = 200) {
  if (!value.ok()) return ReplyError(res, value.status());
  Reply(res, code, to_json(*value));
}

constexpr size_t kMaxBody = 64 * 1024;
// Each event stream holds one server thread.
constexpr int kServerThreads = 64;
constexpr int kMaxEventStreams = 48;
constexpr auto kKeepAlive = std::chrono::seconds(15);

bool BodyRejected(const httplib::Request& req, httplib::Response& res) {
  return rest::BodyTooLarge(req, res, kMaxBody);
}

// Splits "http://host:port" into the scheme+authority httplib wants.
std::string BaseUrl(const std::string& url) {
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  return slash == std::string::npos ? url : url.substr(0, slash);
}

// Registers handlers under OpenAPI path templates ("{x}" = one segment) and
// remembers them.
class Router {
 public:
  explicit Router(httplib::Server& server) : server_(server) {}

  void Add(const std::string& method, const std::string& path, httplib::Server::Handler handler) {
    const std::string pattern = std::regex_replace(path, std::regex(R"(\{[^}/]+\})"), "([^/]+)");
    if (method == "GET") {
      server_.Get(pattern, std::move(handler));
    } else if (method == "POST") {
      server_.Post(pattern, std::move(handler));
    } else if (method == "DELETE") {
      server_.Delete(pattern, std::move(handler));
    }
    routes_.push_back({method, path});
  }
  std::vector<Route> routes() const { return routes_; }

 private:
  httplib::Server& server_;
  std::vector<Route> routes_;
};

// GET /v1/events: server-sent events from the controller's hub.
void ServeEvents(EventHub& hub, const Clock& clock, std::atomic<int>& streams,
                 const httplib::Request& req, httplib::Response& res) {
  std::vector<std::string> filters = ParseEventFilter(req.get_param_value("types"));
  std::string since = req.get_header_value("Last-Event-ID");
  if (since.empty()) since = req.get_param_value("since");
  int64_t cursor = hub.LastId();
  if (!since.empty()) {
    if (since.size() > 18 || since.find_first_not_of("0123456789") != std::string::npos)
      return ReplyError(res, InvalidError("since / Last-Event-ID: must be an event id"));
    cursor = std::stoll(since);
  }
  if (streams.fetch_add(1) >= kMaxEventStreams) {
    streams.fetch_sub(1);
    return ReplyError(res, RetryError("too many event streams open; try again later"));
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto last_write = std::make_shared<Clock::TimePoint>();
  res.set_chunked_content_provider(
      "text/event-stream",
      [&hub, &clock, filters, cursor, last_write](size_t, httplib::DataSink& sink) mutable {
        const auto now = clock.Now();
        if (*last_write == Clock::TimePoint{}) {
          *last_write = now;
          // Tells the client the stream is open (and proxies to flush).
          if (!sink.write(": kmosix events\n\n", 17)) return false;
        }
        EventHub::Batch batch = hub.Wait(cursor, std::chrono::seconds(1));
        if (batch.closed) {
          sink.done();
          return true;
        }
        std::string out;
        if (batch.gap) {
          Event gap;
          gap.id = batch.events.empty() ? cursor : batch.events.front().id - 1;
          gap.type = "gap";
          gap.data = {{"type", "gap"},
                      {"message", "events after id " + std::to_string(cursor) +
                                      " are no longer kept here; re-read the state"}};
          out += FormatServerSentEvent(gap);
        }
        for (const Event& e : batch.events) {
          cursor = e.id;
          if (EventTypeMatches(e.type, filters)) out += FormatServerSentEvent(e);
        }
        if (out.empty() && clock.Now() - *last_write >= kKeepAlive) out = ": keepalive\n\n";
        if (out.empty()) return true;
        *last_write = clock.Now();
        return sink.write(out.data(), out.size());
      },
      [&streams](bool) { streams.fetch_sub(1); });
}

}  // namespace

const std::string& OpenApiDocument() {
  static const std::string document(kOpenApiJson);
  return document;
}

std::vector<Route> RegisterControllerRoutes(httplib::Server& server, Controller& controller,
                                            ControllerMetrics& metrics, const tls::Files& agents) {
  server.set_payload_max_length(kMaxBody + 1);
  server.new_task_queue = [] { return new httplib::ThreadPool(kServerThreads); };
  Router r(server);
  using Req = const httplib::Request&;
  using Res = httplib::Response&;

  r.Add("GET", "/healthz", [&](Req, Res res) {
    Reply(res, 200, {{"status", "ok"}, {"identity", controller.Identity()}});
  });
  r.Add("GET", "/readyz", [&](Req, Res res) {
    if (controller.Ready()) return Reply(res, 200, {{"status", "ready"}});
    ReplyError(res, RetryError("caches not synced with the store yet"));
  });
  r.Add("GET", "/metrics",
        [&](Req, Res res) { res.set_content(metrics.Render(), "text/plain; version=0.0.4"); });
  r.Add("GET", "/openapi.json",
        [](Req, Res res) { res.set_content(OpenApiDocument(), "application/json"); });
  r.Add("GET", "/v1/leader",
        [&](Req, Res res) { Reply(res, 200, LeaderInfoToJson(controller.Leader())); });

  // workloads
  r.Add("POST", "/v1/workloads", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    auto spec = ParseWorkloadSpecBody(req.body);
    if (!spec.ok()) return ReplyError(res, spec.status());
    ReplyWith(res, controller.CreateWorkload(*spec), WorkloadViewToJson, 201);
  });
  r.Add("GET", "/v1/workloads",
        [&](Req, Res res) { Reply(res, 200, WorkloadListToJson(controller.ListWorkloads())); });
  r.Add("GET", "/v1/workloads/{name}", [&](Req req, Res res) {
    ReplyWith(res, controller.GetWorkload(req.matches[1]), WorkloadViewToJson);
  });
  r.Add("DELETE", "/v1/workloads/{name}", [&](Req req, Res res) {
    Status s = controller.DeleteWorkload(req.matches[1]);
    if (!s.ok()) return ReplyError(res, s);
    Reply(res, 200, {{"deleted", std::string(req.matches[1])}});
  });
  r.Add("GET", "/v1/workloads/{name}/logs", [&, agents](Req req, Res res) {
    std::string name = req.matches[1];
    auto url = controller.WorkloadAgentUrl(name);
    if (!url.ok()) return ReplyError(res, url.status());
    auto agent = rest::MakeClient(BaseUrl(*url), agents, "this controller (--node-ca)");
    if (!agent.ok()) return ReplyError(res, FailedError(agent.status().message()));
    (*agent)->set_connection_timeout(std::chrono::seconds(3));
    (*agent)->set_read_timeout(std::chrono::seconds(10));
    auto got = (*agent)->Get("/v1/workloads/" + name + "/logs");
    if (!got) {
      return ReplyError(
          res, RetryError("agent at " + *url + " unreachable: " + httplib::to_string(got.error())));
    }
    res.status = got->status;
    const std::string type = got->get_header_value("Content-Type");
    res.set_content(got->body, type.empty() ? "text/plain; charset=utf-8" : type);
  });
  r.Add("POST", "/v1/workloads/{name}/pin", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    ReplyWith(res, controller.SetPinned(req.matches[1], true), WorkloadViewToJson);
  });
  r.Add("POST", "/v1/workloads/{name}/unpin", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    ReplyWith(res, controller.SetPinned(req.matches[1], false), WorkloadViewToJson);
  });

  // nodes
  r.Add("GET", "/v1/nodes",
        [&](Req, Res res) { Reply(res, 200, NodeListToJson(controller.ListNodes())); });
  r.Add("GET", "/v1/nodes/{name}", [&](Req req, Res res) {
    ReplyWith(res, controller.GetNode(req.matches[1]), NodeViewToJson);
  });
  r.Add("POST", "/v1/nodes/{name}/cordon", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    ReplyWith(res, controller.SetCordoned(req.matches[1], true), NodeViewToJson);
  });
  r.Add("POST", "/v1/nodes/{name}/uncordon", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    ReplyWith(res, controller.SetCordoned(req.matches[1], false), NodeViewToJson);
  });
  r.Add("POST", "/v1/nodes/{name}/drain", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    // The node's name is checked before the body, as it always was.
    if (Status s = ValidateName(std::string(req.matches[1])); !s.ok()) return ReplyError(res, s);
    auto request = ParseDrainRequest(req.body);
    if (!request.ok()) return ReplyError(res, request.status());
    ReplyWith(res, controller.Drain(req.matches[1], *request), DrainReportToJson);
  });

  // migrations
  r.Add("POST", "/v1/migrations", [&](Req req, Res res) {
    if (BodyRejected(req, res)) return;
    auto request = ParseMigrationRequest(req.body);
    if (!request.ok()) return ReplyError(res, request.status());
    ReplyWith(res, controller.RequestMigration(*request), MigrationToJson, 201);
  });
  r.Add("GET", "/v1/migrations",
        [&](Req, Res res) { Reply(res, 200, MigrationListToJson(controller.ListMigrations())); });
  r.Add("GET", "/v1/migrations/{id}", [&](Req req, Res res) {
    ReplyWith(res, controller.GetMigration(req.matches[1]), MigrationToJson);
  });
  r.Add("DELETE", "/v1/migrations/{id}", [&](Req req, Res res) {
    ReplyWith(res, controller.CancelMigration(req.matches[1]), MigrationToJson, 202);
  });

  // cluster
  r.Add("GET", "/v1/decisions",
        [&](Req, Res res) { Reply(res, 200, DecisionsToJson(controller.Decisions())); });
  auto streams = std::make_shared<std::atomic<int>>(0);
  r.Add("GET", "/v1/events", [&controller, streams](Req req, Res res) {
    ServeEvents(controller.Events(), controller.clock(), *streams, req, res);
  });

  rest::InstallJsonErrorHandlers(server);
  return r.routes();
}

}  // namespace kmosix::controller
