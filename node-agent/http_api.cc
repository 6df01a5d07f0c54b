#include "http_api.h"

#include <spdlog/spdlog.h>

#include "kmosix/spec_json.h"

namespace kmosix::agent {
namespace {

using nlohmann::json;

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

// Workload and migration bodies are small. (The transport's stream route reads
// its body incrementally and is not limited this way.)
constexpr size_t kMaxBody = 1 << 20;

bool BodyTooLarge(const httplib::Request& req, httplib::Response& res) {
  if (req.body.size() <= kMaxBody) return false;
  ReplyError(res, InvalidError("request body larger than " + std::to_string(kMaxBody) + " bytes"));
  res.status = 413;
  return true;
}

}  // namespace

void RegisterApiRoutes(httplib::Server& server, Agent& agent, AgentMetrics& metrics) {
  server.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, {{"status", "ok"}, {"node", agent.Options().node}});
  });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    metrics.SetWorkloads(static_cast<double>(agent.WorkloadCount()));
    res.set_content(metrics.Render(), "text/plain; version=0.0.4");
  });
  server.Post("/v1/workloads", [&](const httplib::Request& req, httplib::Response& res) {
    if (BodyTooLarge(req, res)) return;
    ReplyOr(res, agent.CreateWorkload(req.body), 201);
  });
  server.Get("/v1/workloads", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, agent.ListWorkloads());
  });
  server.Get(R"(/v1/workloads/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyOr(res, agent.GetWorkload(req.matches[1]));
  });
  server.Delete(R"(/v1/workloads/([^/]+))",
                [&](const httplib::Request& req, httplib::Response& res) {
                  Status s = agent.DeleteWorkload(req.matches[1]);
                  if (s.ok()) {
                    Reply(res, 200, {{"deleted", std::string(req.matches[1])}});
                  } else {
                    ReplyError(res, s);
                  }
                });
  server.Get(R"(/v1/workloads/([^/]+)/logs)",
             [&](const httplib::Request& req, httplib::Response& res) {
               auto logs = agent.Logs(req.matches[1]);
               if (!logs.ok()) return ReplyError(res, logs.status());
               res.set_content(*logs, "text/plain; charset=utf-8");
             });
  server.Post(R"(/v1/workloads/([^/]+)/migrate)",
              [&](const httplib::Request& req, httplib::Response& res) {
                if (BodyTooLarge(req, res)) return;
                auto report = agent.Migrate(req.matches[1], req.body);
                if (!report.ok()) return ReplyError(res, report.status());
                json body = MigrationReportToJson(*report);
                if (report->error.ok()) return Reply(res, 200, body);
                // The report says what happened; code and message say why.
                body["code"] = CodeName(report->error.code());
                body["message"] = report->error.message();
                Reply(res, HttpStatus(report->error.code()), body);
              });
  server.Get("/v1/migrations", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, agent.ListMigrations());
  });
  server.Get(R"(/v1/migrations/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyOr(res, agent.GetMigration(req.matches[1]));
  });

  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    Status s = res.status == 404   ? NotFoundError("no route " + req.method + " " + req.path)
               : res.status == 413 ? InvalidError("request body too large")
                                   : Status(Code::kInvalid, "bad request");
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

void RegisterFailpointRoutes(httplib::Server& server, Failpoints& failpoints) {
  server.Get("/v1/debug/failpoints", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, {{"armed", failpoints.Armed()}});
  });
  server.Put(R"(/v1/debug/failpoints/([^/]+))",
             [&](const httplib::Request& req, httplib::Response& res) {
               std::string name = req.matches[1];
               if (!Failpoints::Known(name)) {
                 return ReplyError(res, NotFoundError("no failpoint " + name));
               }
               failpoints.Arm(name);
               Reply(res, 200, {{"armed", failpoints.Armed()}});
             });
  server.Delete(R"(/v1/debug/failpoints/([^/]+))",
                [&](const httplib::Request& req, httplib::Response& res) {
                  failpoints.Disarm(req.matches[1]);
                  Reply(res, 200, {{"armed", failpoints.Armed()}});
                });
}

}  // namespace kmosix::agent
