#include "http_api.h"

#include <spdlog/spdlog.h>

#include "kmosix/spec_json.h"
#include "transport_http/rest.h"

namespace kmosix::agent {
namespace {

using nlohmann::json;
using rest::Reply;
using rest::ReplyError;
using rest::ReplyOr;

// Workload and migration bodies are small. (The transport's stream route reads
// its body incrementally and is not limited this way.)
constexpr size_t kMaxBody = 1 << 20;

bool BodyTooLarge(const httplib::Request& req, httplib::Response& res) {
  return rest::BodyTooLarge(req, res, kMaxBody);
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

  rest::InstallJsonErrorHandlers(server);
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
