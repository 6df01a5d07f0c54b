// The controller's REST API (JSON under /v1) on a cpp-httplib server. The
// routes, with their request and response bodies, are documented in the
// OpenAPI 3 document controller/openapi.json, which the server also serves at
// /openapi.json; tests/controller/api_test.cc checks that the two match.
//
//   workloads   POST/GET /v1/workloads, GET/DELETE /v1/workloads/{name},
//               GET /v1/workloads/{name}/logs, POST .../{name}/pin, .../unpin
//   nodes       GET /v1/nodes[/{name}], POST /v1/nodes/{name}/cordon|uncordon|drain
//   migrations  POST/GET /v1/migrations, GET/DELETE /v1/migrations/{id} (cancel)
//   cluster     GET /v1/decisions, /v1/leader, /v1/events (server-sent events)
//   operations  GET /healthz, /readyz, /metrics, /openapi.json
// Errors are JSON {"code","message"} with a 4xx/5xx status; bodies are
// size-limited and unknown fields rejected. Authentication is installed
// separately (auth/tokens.h).
//
// Ownership: borrows the controller and metrics, which must outlive the
// server; the server owns its threads. Thread-safety: handlers run
// concurrently on the server's pool.
#pragma once

#include <httplib.h>

#include <string>
#include <vector>

#include "controller/controller.h"
#include "controller/metrics.h"
#include "tls/tls.h"

namespace kmosix::controller {

// One registered route, as the OpenAPI document names it.
struct Route {
  std::string method;  // "GET", "POST", "DELETE"
  std::string path;    // OpenAPI template, e.g. "/v1/workloads/{name}"
};

// Registers every route on `server` and returns them. `agents`: the
// controller's client identity toward the agents (the logs proxy); complete
// for https:// agents (verified against agents.ca), empty for plain ones.
std::vector<Route> RegisterControllerRoutes(httplib::Server& server, Controller& controller,
                                            ControllerMetrics& metrics,
                                            const tls::Files& agents = {});

// The OpenAPI document (controller/openapi.json, compiled in).
const std::string& OpenApiDocument();

}  // namespace kmosix::controller
