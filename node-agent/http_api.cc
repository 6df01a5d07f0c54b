#include "http_api.h"

#include <spdlog/spdlog.h>

#include "rest_codec.h"
#include "transport_http/rest.h"

namespace kmosix::agent {
namespace {

using rest::Reply;
using rest::ReplyError;

// Replies with `to_json(*value)` (status `code`) or the error.
template <typename T, typename F>
void ReplyWith(httplib::Response& res, const StatusOr<T>& value, F to_json, int code = 200) {
  if (!value.ok()) return ReplyError(res, value.status());
  Reply(res, code, to_json(*value));
}

// Workload and migration bodies are small. (The transport's stream route reads
// its body incrementally and is not limited this way.)
constexpr size_t kMaxBody = 1 << 20;

bool BodyTooLarge(const httplib::Request& req, httplib::Response& res) {
  return rest::BodyTooLarge(req, res, kMaxBody);
}

}  // namespace

void RegisterApiRoutes(httplib::Server& server, Agent& agent, AgentMetrics& metrics) {
  server.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, HealthToJson(agent.Options().node));
  });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    metrics.SetWorkloads(static_cast<double>(agent.WorkloadCount()));
    metrics.SetFencedWorkloads(static_cast<double>(agent.FencedCount()));
    res.set_content(metrics.Render(), "text/plain; version=0.0.4");
  });
  server.Post("/v1/workloads", [&](const httplib::Request& req, httplib::Response& res) {
    if (BodyTooLarge(req, res)) return;
    auto spec = ParseWorkloadBody(req.body);
    if (!spec.ok()) return ReplyError(res, spec.status());
    ReplyWith(res, agent.CreateWorkload(*spec), AgentWorkloadViewToJson, 201);
  });
  server.Get("/v1/workloads", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, AgentWorkloadListToJson(agent.ListWorkloads()));
  });
  server.Get(R"(/v1/workloads/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyWith(res, agent.GetWorkload(req.matches[1]), AgentWorkloadViewToJson);
  });
  server.Delete(R"(/v1/workloads/([^/]+))",
                [&](const httplib::Request& req, httplib::Response& res) {
                  Status s = agent.DeleteWorkload(req.matches[1]);
                  if (s.ok()) {
                    Reply(res, 200, DeletedToJson(req.matches[1]));
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
                auto request = ParseMigrateBody(req.body);
                if (!request.ok()) return ReplyError(res, request.status());
                auto report = agent.Migrate(req.matches[1], *request);
                if (!report.ok()) return ReplyError(res, report.status());
                Reply(res, MigrateReplyStatus(*report), MigrateReplyToJson(*report));
              });
  server.Get("/v1/migrations", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, AgentMigrationListToJson(agent.ListMigrations()));
  });
  server.Get(R"(/v1/migrations/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    ReplyWith(res, agent.GetMigration(req.matches[1]), AgentMigrationViewToJson);
  });

  rest::InstallJsonErrorHandlers(server);
}

void RegisterFailpointRoutes(httplib::Server& server, Failpoints& failpoints) {
  server.Get("/v1/debug/failpoints", [&](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, {{"armed", failpoints.Armed()}, {"holding", failpoints.Holding()}});
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
