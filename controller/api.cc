#include "controller/api.h"

#include <spdlog/spdlog.h>

#include "kmosix/spec_json.h"
#include "transport_http/rest.h"

namespace kmosix::controller {
namespace {

using nlohmann::json;
using rest::Reply;
using rest::ReplyError;
using rest::ReplyOr;

constexpr size_t kMaxBody = 64 * 1024;

bool BodyRejected(const httplib::Request& req, httplib::Response& res) {
  return rest::BodyTooLarge(req, res, kMaxBody);
}

// Splits "http://host:port" into the scheme+authority httplib wants.
std::string BaseUrl(const std::string& url) {
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  return slash == std::string::npos ? url : url.substr(0, slash);
}

}  // namespace

void RegisterControllerRoutes(httplib::Server& server, Controller& controller,
                              ControllerMetrics& metrics) {
  server.set_payload_max_length(kMaxBody + 1);
  server.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, {{"status", "ok"}, {"identity", controller.Identity()}});
  });
  server.Get("/readyz", [&](const httplib::Request&, httplib::Response& res) {
    if (controller.Ready()) return Reply(res, 200, {{"status", "ready"}});
    ReplyError(res, RetryError("caches not synced with the store yet"));
  });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.Render(), "text/plain; version=0.0.4");
  });
  server.Get("/v1/leader", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, controller.LeaderInfo());
  });

  server.Post("/v1/workloads", [&](const httplib::Request& req, httplib::Response& res) {
    if (BodyRejected(req, res)) return;
    ReplyOr(res, controller.CreateWorkload(req.body), 201);
  });
  server.Get("/v1/workloads", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, controller.ListWorkloads());
  });
  server.Get(R"(/v1/workloads/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyOr(res, controller.GetWorkload(req.matches[1]));
  });
  server.Delete(R"(/v1/workloads/([^/]+))",
                [&](const httplib::Request& req, httplib::Response& res) {
                  Status s = controller.DeleteWorkload(req.matches[1]);
                  if (!s.ok()) return ReplyError(res, s);
                  Reply(res, 200, {{"deleted", std::string(req.matches[1])}});
                });
  server.Get(R"(/v1/workloads/([^/]+)/logs)", [&](const httplib::Request& req,
                                                  httplib::Response& res) {
    std::string name = req.matches[1];
    auto url = controller.WorkloadAgentUrl(name);
    if (!url.ok()) return ReplyError(res, url.status());
    httplib::Client agent(BaseUrl(*url));
    agent.set_connection_timeout(std::chrono::seconds(3));
    agent.set_read_timeout(std::chrono::seconds(10));
    auto r = agent.Get("/v1/workloads/" + name + "/logs");
    if (!r) {
      return ReplyError(
          res, RetryError("agent at " + *url + " unreachable: " + httplib::to_string(r.error())));
    }
    res.status = r->status;
    res.set_content(r->body, r->get_header_value("Content-Type").empty()
                                 ? "text/plain; charset=utf-8"
                                 : r->get_header_value("Content-Type"));
  });

  server.Get("/v1/nodes", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, controller.ListNodes());
  });
  server.Get(R"(/v1/nodes/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyOr(res, controller.GetNode(req.matches[1]));
  });

  server.Post("/v1/migrations", [&](const httplib::Request& req, httplib::Response& res) {
    if (BodyRejected(req, res)) return;
    ReplyOr(res, controller.RequestMigration(req.body), 201);
  });
  server.Get("/v1/migrations", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, controller.ListMigrations());
  });
  server.Get(R"(/v1/migrations/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyOr(res, controller.GetMigration(req.matches[1]));
  });
  server.Get("/v1/decisions", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, controller.Decisions());
  });

  rest::InstallJsonErrorHandlers(server);
}

}  // namespace kmosix::controller
