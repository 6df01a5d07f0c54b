// The agent's REST API (JSON under /v1) on a cpp-httplib server:
//   POST   /v1/workloads                  run a workload
//   GET    /v1/workloads[/{name}]         list / describe
//   DELETE /v1/workloads/{name}
//   GET    /v1/workloads/{name}/logs      stdout+stderr, text/plain
//   POST   /v1/workloads/{name}/migrate   {"target":"http://host:port"}
//   GET    /v1/migrations[/{id}]
//   GET    /healthz, /metrics
// plus the agent-to-agent routes of the transport (/v1/peer/...).
// The only JSON speaker of the agent's API: each route parses its body with
// rest_codec.h, calls the agent's typed method and renders the reply.
// Errors are JSON {"code","message"} with a 4xx/5xx status; request bodies
// are size-limited. Borrows the agent and metrics; the server owns threads.
#pragma once

#include <httplib.h>

#include "agent.h"
#include "failpoints.h"
#include "metrics.h"

namespace kmosix::agent {

void RegisterApiRoutes(httplib::Server& server, Agent& agent, AgentMetrics& metrics);
// PUT/DELETE /v1/debug/failpoints/{name}, GET /v1/debug/failpoints
// ({"armed":[names],"holding":[the hang failpoints migrations wait in now]}):
// only registered when the agent runs with --enable-failpoints.
void RegisterFailpointRoutes(httplib::Server& server, Failpoints& failpoints);

}  // namespace kmosix::agent
