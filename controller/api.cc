#include "controller/api.h"

#include <spdlog/spdlog.h>

#include "kmosix/spec_json.h"

namespace kmosix::controller {
namespace {

using nlohmann::json;

constexpr size_t kMaxBody = 64 * 1024;

void Reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(2) + "\n", "application/json");
}

void ReplyError(httplib::Response& res, const Status& s) {
  Reply(res, HttpStatus(s.code()), ErrorJson(s));
}

template <typename T>
void ReplyOr(httplib::Response& res, const StatusOr<T>& v, int ok_status = 200) {
  if (v.ok()) {
    Reply(res, ok_status, *v);
  } else {
    ReplyError(res, v.status());
  }
}

bool BodyRejected(const httplib::Request& req, httplib::Response& res) {
  if (req.body.size() > kMaxBody) {
    ReplyError(res,
               InvalidError("request body larger than " + std::to_string(kMaxBody) + " bytes"));
    res.status = 413;
    return true;
  }
  return false;
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

  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    Status s = res.status == 404   ? NotFoundError("no route " + req.method + " " + req.path)
               : res.status == 413 ? InvalidError("request body too large")
               : res.status == 405 ? InvalidError("method not allowed")
                                   : InvalidError("bad request");
    res.set_content(ErrorJson(s).dump() + "\n", "application/json");
  });
  server.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        spdlog::error("{} {}: {}", req.method, req.path, what);
        Reply(res, 500, ErrorJson(FailedError(what)));
      });
}

}  // namespace kmosix::controller
