// Fixed controller answers (the shapes of controller/controller.cc Describe*,
// lib/cluster/records.cc) for kmosixctl's renderer and top tests. kNowMs is
// the wall clock the tests render at (22:13:20 UTC).
#pragma once

#include <nlohmann/json.hpp>

namespace kmosix::ctl::testing {

inline constexpr int64_t kNowMs = 1'700'000'000'000;
inline constexpr double kMiB = 1024.0 * 1024;
inline constexpr double kGiB = kMiB * 1024;

inline nlohmann::json NodesFixture() {
  using nlohmann::json;
  json node1 = {{"name", "node1"},
                {"ready", true},
                {"cordoned", false},
                {"url", "http://10.77.0.11:7700"},
                {"load", 1.24},
                {"capacity", {{"cpus", 1}, {"memoryBytes", 2 * kGiB}}},
                {"speed", 1.0},
                {"cpuUsed", 1.24},
                {"runQueue", 2.0},
                {"memoryAvailableBytes", 1.25 * kGiB},
                {"psi", {{"cpuSome10", 12.5}, {"memorySome10", nullptr}}},
                {"loadSource", "cgroup"},
                {"heartbeatAgeSeconds", 0.8},
                {"usage",
                 {{"demo1", {{"cpu", 0.98}, {"memoryBytes", 14 * kMiB}}},
                  {"demo2", {{"cpu", 0.26}, {"memoryBytes", 20 * kMiB}}}}},
                {"workloads", {"demo1", "demo2"}}};
  json node2 = {{"name", "node2"},
                {"ready", true},
                {"cordoned", true},
                {"url", "http://10.77.0.12:7700"},
                {"load", 0.1},
                {"capacity", {{"cpus", 2}, {"memoryBytes", 4 * kGiB}}},
                {"speed", 1.0},
                {"cpuUsed", 0.2},
                {"runQueue", 0.2},
                {"memoryAvailableBytes", 3.5 * kGiB},
                {"psi", {{"cpuSome10", 0.0}, {"memorySome10", 0.0}}},
                {"loadSource", "cgroup"},
                {"heartbeatAgeSeconds", 1.5},
                {"usage", {{"demo3", {{"cpu", 0.1}, {"memoryBytes", 512 * 1024}}}}},
                {"workloads", {"demo3"}}};
  json node3 = {{"name", "node3"},
                {"ready", false},
                {"cordoned", false},
                {"notReadySeconds", 12.4},
                {"workloads", {"demo4"}}};
  return {{"items", {node1, node2, node3}}};
}

inline nlohmann::json Workload(const std::string& name, const std::string& phase,
                               const std::string& node, double age_seconds) {
  using nlohmann::json;
  return {{"name", name},
          {"spec",
           {{"name", name},
            {"image", "kmosix.local/demo:latest"},
            {"args", {"/bin/kmosix-demo", "--mem", "16"}},
            {"env", json::object()},
            {"memoryMiB", 0},
            {"cpus", 0},
            {"migratable", true},
            {"node", ""},
            {"pinned", false}}},
          {"status",
           {{"phase", phase},
            {"node", node},
            {"epoch", 1},
            {"migration", ""},
            {"pid", 100},
            {"createdMs", kNowMs - static_cast<int64_t>(age_seconds * 1000)},
            {"startedMs", 0},
            {"migrations", json::array()},
            {"message", ""}}},
          {"ageSeconds", age_seconds}};
}

inline nlohmann::json WorkloadsFixture() {
  using nlohmann::json;
  json demo1 = Workload("demo1", "Running", "node1", 192);
  demo1["spec"]["pinned"] = true;
  demo1["spec"]["node"] = "node1";
  demo1["status"]["message"] = "running on node1";
  demo1["usage"] = {{"cpu", 0.98}, {"memoryBytes", 14 * kMiB}};
  json demo2 = Workload("demo2", "Migrating", "node1", 3725);
  demo2["spec"]["cpus"] = 0.5;
  demo2["spec"]["memoryMiB"] = 64;
  demo2["status"]["migration"] = "m-0000000000000002";
  demo2["status"]["migrations"] = {"m-0000000000000001"};
  demo2["usage"] = {{"cpu", 0.26}, {"memoryBytes", 20 * kMiB}};
  json demo3 = Workload("demo3", "Running", "node2", 45);
  demo3["spec"]["migratable"] = false;
  demo3["usage"] = {{"cpu", 0.1}, {"memoryBytes", 512 * 1024}};
  json demo4 = Workload("demo4", "Lost", "node3", 90000);
  demo4["status"]["message"] = "node3 died with it";
  json demo5 = Workload("demo5", "Pending", "", 2);
  demo5["status"]["message"] = "waiting for placement";
  return {{"items", {demo1, demo2, demo3, demo4, demo5}}};
}

inline nlohmann::json MigrationsFixture() {
  using nlohmann::json;
  json m1 = {{"id", "m-0000000000000001"},
             {"workload", "demo2"},
             {"source", "node2"},
             {"target", "node1"},
             {"phase", "Succeeded"},
             {"reason", "cpu: node2 load 1.50 > node1 0.20 + 1.3 x 0.98"},
             {"requestedBy", "policy"},
             {"epoch", 1},
             {"createdMs", kNowMs - 600000},
             {"updatedMs", kNowMs - 598000},
             {"finishedMs", kNowMs - 598000},
             {"report",
              {{"id", "m-0000000000000001"},
               {"phase", "Succeeded"},
               {"outcome", "Succeeded"},
               {"bytes", 15204352},
               {"files", 12},
               {"timings",
                {{"prepare", 0.1},
                 {"freeze", 0.002},
                 {"checkpoint", 0.15},
                 {"transfer", 0.2},
                 {"restore", 0.05},
                 {"commit", 0.01},
                 {"downtime", 0.412},
                 {"total", 2.3125}}}}},
             {"error", ""},
             {"cancelRequestedMs", 0},
             {"cancelledBy", ""},
             {"resolution",
              {{"outcome", "Committed"}, {"decidedBy", "Source"}, {"atMs", kNowMs - 598000}}}};
  json m2 = {{"id", "m-0000000000000002"},
             {"workload", "demo2"},
             {"source", "node1"},
             {"target", "node2"},
             {"phase", "Transferring"},
             {"reason", "requested through the API: move to node2"},
             {"requestedBy", "api"},
             {"epoch", 2},
             {"createdMs", kNowMs - 4000},
             {"updatedMs", kNowMs - 1000},
             {"finishedMs", 0},
             {"report", nullptr},
             {"error", ""},
             {"cancelRequestedMs", 0},
             {"cancelledBy", ""}};
  json m3 = {{"id", "m-0000000000000003"},
             {"workload", "demo3"},
             {"source", "node1"},
             {"target", "node2"},
             {"phase", "RolledBack"},
             {"reason", "drain of node node1: node2 can take it"},
             {"requestedBy", "drain"},
             {"epoch", 1},
             {"createdMs", kNowMs - 300000},
             {"updatedMs", kNowMs - 299000},
             {"finishedMs", kNowMs - 299000},
             {"report",
              {{"phase", "RolledBack"},
               {"bytes", 0},
               {"failedPhase", "Restoring"},
               {"timings", {{"total", 0.8}, {"downtime", 0.3}}}}},
             {"error", "restore failed on node2: criu exited 1"},
             {"cancelRequestedMs", 0},
             {"cancelledBy", ""},
             {"fault",
              {{"kind", "RestoreFailed"},
               {"phase", "Restoring"},
               {"node", "node2"},
               {"message", "restore failed on node2: criu exited 1"},
               {"atMs", kNowMs - 299500}}},
             {"resolution",
              {{"outcome", "RolledBack"}, {"decidedBy", "Target"}, {"atMs", kNowMs - 299000}}}};
  return {{"items", {m1, m2, m3}}};
}

inline std::vector<nlohmann::json> EventsFixture() {
  return {
      {{"id", 40},
       {"type", "node.cordoned"},
       {"timeMs", kNowMs - 5000},
       {"node", "node2"},
       {"message", "takes no arrivals"}},
      {{"id", 41},
       {"type", "migration.phase"},
       {"timeMs", kNowMs - 3000},
       {"migration", "m-0000000000000002"},
       {"workload", "demo2"},
       {"source", "node1"},
       {"target", "node2"},
       {"phase", "Transferring"},
       {"message", ""}},
      {{"id", 42},
       {"type", "workload.placed"},
       {"timeMs", kNowMs - 1500},
       {"workload", "demo5"},
       {"node", "node1"},
       {"phase", "Scheduled"},
       {"message", "placed on node1"}},
  };
}

}  // namespace kmosix::ctl::testing
