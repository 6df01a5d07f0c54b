// The controller's REST API (JSON under /v1) on a cpp-httplib server:
//   POST   /v1/workloads                 create (the controller places it)
//   GET    /v1/workloads[/{name}]        list / describe (node, phase, epoch, age, migrations)
//   DELETE /v1/workloads/{name}          stop it wherever it runs
//   GET    /v1/workloads/{name}/logs     its logs, from the node that runs it (text/plain)
//   GET    /v1/nodes[/{name}]            load vector, capacity, speed, readiness, heartbeat age
//   POST   /v1/migrations                {"workload","target"?}
//   GET    /v1/migrations[/{id}]         phase, source, target, reason, timings, bytes
//   GET    /v1/decisions                 what the balancer would do now (dry run)
//   GET    /v1/leader                    who leads
//   GET    /healthz, /readyz, /metrics
// Errors are JSON {"code","message"} with a 4xx/5xx status; bodies are
// size-limited. Borrows the controller and metrics; the server owns threads.
#pragma once

#include <httplib.h>

#include "controller/controller.h"
#include "controller/metrics.h"

namespace kmosix::controller {

void RegisterControllerRoutes(httplib::Server& server, Controller& controller,
                              ControllerMetrics& metrics);

}  // namespace kmosix::controller
