// The controller test fixture: a fake StateStore whose leases run on a fake
// clock, controllers on the system clock with short intervals, and helpers
// that play the agents' part (node records under leases, workload status).
// Shared by controller_test.cc (methods) and api_test.cc (REST routes).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <thread>

#include "api/validate.h"
#include "cluster/records.h"
#include "controller/controller.h"
#include "controller/rest_codec.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_state_store.h"

namespace kmosix::controller {

using api::NodeLoad;
using api::WorkloadPhase;
using cluster::KeyLayout;
using nlohmann::json;
using MigrationRecord = api::Migration;
using WorkloadRecord = api::Workload;

class SeqRandom : public Random {
 public:
  uint64_t Next() override { return next_ += 0x9e3779b97f4a7c15ULL; }

 private:
  uint64_t next_ = 1;
};

inline bool Eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// The controller's REST face without HTTP: bodies parsed and replies rendered
// with controller/rest_codec.h around the typed methods, as controller/api.cc
// does; the tests written against request bodies and JSON replies use it.
class RestFace {
 public:
  explicit RestFace(Controller& c) : c_(c) {}

  StatusOr<json> CreateWorkload(std::string_view body) {
    KMX_ASSIGN_OR_RETURN(api::WorkloadSpec spec, ParseWorkloadSpecBody(body));
    return Render(c_.CreateWorkload(spec), WorkloadViewToJson);
  }
  json ListWorkloads() { return WorkloadListToJson(c_.ListWorkloads()); }
  StatusOr<json> GetWorkload(const std::string& name) {
    return Render(c_.GetWorkload(name), WorkloadViewToJson);
  }
  StatusOr<json> SetPinned(const std::string& name, bool pinned) {
    return Render(c_.SetPinned(name, pinned), WorkloadViewToJson);
  }
  json ListNodes() { return NodeListToJson(c_.ListNodes()); }
  StatusOr<json> GetNode(const std::string& name) {
    return Render(c_.GetNode(name), NodeViewToJson);
  }
  StatusOr<json> SetCordoned(const std::string& node, bool cordoned) {
    return Render(c_.SetCordoned(node, cordoned), NodeViewToJson);
  }
  StatusOr<json> Drain(const std::string& node, std::string_view body) {
    KMX_RETURN_IF_ERROR(api::ValidateName(node));
    KMX_ASSIGN_OR_RETURN(api::DrainRequest request, ParseDrainRequest(body));
    return Render(c_.Drain(node, request), DrainReportToJson);
  }
  StatusOr<json> RequestMigration(std::string_view body) {
    KMX_ASSIGN_OR_RETURN(api::MigrationRequest request, ParseMigrationRequest(body));
    return Render(c_.RequestMigration(request), MigrationToJson);
  }
  json ListMigrations() { return MigrationListToJson(c_.ListMigrations()); }
  StatusOr<json> GetMigration(const std::string& id) {
    return Render(c_.GetMigration(id), MigrationToJson);
  }
  StatusOr<json> CancelMigration(const std::string& id) {
    return Render(c_.CancelMigration(id), MigrationToJson);
  }
  json Decisions() { return DecisionsToJson(c_.Decisions()); }
  json LeaderInfo() { return LeaderInfoToJson(c_.Leader()); }

 private:
  template <typename T, typename F>
  static StatusOr<json> Render(const StatusOr<T>& v, F to_json) {
    if (!v.ok()) return v.status();
    return to_json(*v);
  }
  Controller& c_;
};
inline RestFace Rest(Controller& c) { return RestFace(c); }

class ControllerTest : public ::testing::Test {
 protected:
  ControllerTest() : store_(store_clock_) {}
  ~ControllerTest() override {
    for (auto& c : controllers_) c->Stop();
  }

  ControllerOptions Options(const std::string& id) {
    ControllerOptions o;
    o.identity = id;
    o.balance_interval = std::chrono::milliseconds(100);
    o.leader_ttl = std::chrono::seconds(2);
    o.order_timeout = std::chrono::seconds(2);
    o.source_lost_grace = std::chrono::milliseconds(200);
    o.policy.min_residency_ms = 0;
    return o;
  }

  Controller& StartController(ControllerOptions o) {
    controllers_.push_back(std::make_unique<Controller>(store_, clock_, random_, o, nullptr));
    controllers_.back()->Start();
    return *controllers_.back();
  }

  // An agent's node record, under its own lease (revoke it to "kill" the agent).
  int64_t PublishNode(const std::string& name, double cpu_used,
                      std::map<std::string, api::WorkloadUsage> usage = {}, int64_t lease = 0,
                      std::optional<std::vector<std::string>> images = std::nullopt,
                      std::optional<std::string> not_ready_reason = std::nullopt) {
    if (lease == 0) {
      auto grant = store_.GrantLease(std::chrono::seconds(5));
      EXPECT_TRUE(grant.ok());
      lease = grant->id;
    }
    NodeLoad n;
    n.node = name;
    n.url = "http://" + name + ":7700";
    n.load_source = "cgroup";
    n.cpu_capacity = 1;
    n.cpu_used = cpu_used;
    n.memory_capacity_bytes = 8ULL << 30;
    n.memory_available_bytes = 6ULL << 30;
    n.workloads = std::move(usage);
    n.images = std::move(images);
    n.not_ready_reason = std::move(not_ready_reason);
    n.updated_ms = clock_.WallMillis();
    PutOptions po;
    po.lease = lease;
    EXPECT_TRUE(store_.Put(keys_.Node(name), cluster::NodeLoadToJson(n).dump(), po).ok());
    return lease;
  }

  std::optional<WorkloadRecord> Workload(const std::string& name) {
    auto got = store_.Get(keys_.Workload(name));
    if (!got.ok() || !got->kv) return std::nullopt;
    auto w = cluster::ParseRecord<WorkloadRecord>(got->kv->value, &cluster::WorkloadFromJson);
    if (!w.ok()) return std::nullopt;
    return *w;
  }

  std::vector<MigrationRecord> Migrations() {
    std::vector<MigrationRecord> out;
    auto list = store_.List(keys_.Migrations());
    if (!list.ok()) return out;
    for (const auto& kv : list->kvs) {
      auto m = cluster::ParseRecord<MigrationRecord>(kv.value, &cluster::MigrationFromJson);
      if (m.ok()) out.push_back(*m);
    }
    return out;
  }

  // What an agent does once it runs a workload it was assigned.
  void MarkRunning(const std::string& name, int64_t started_ms) {
    auto got = store_.Get(keys_.Workload(name));
    ASSERT_TRUE(got.ok() && got->kv);
    auto w = cluster::ParseRecord<WorkloadRecord>(got->kv->value, &cluster::WorkloadFromJson);
    ASSERT_TRUE(w.ok());
    w->status.phase = WorkloadPhase::kRunning;
    w->status.started_ms = started_ms;
    ASSERT_TRUE(store_.Put(keys_.Workload(name), cluster::WorkloadToJson(*w).dump()).ok());
  }

  void Create(Controller& c, const json& body) {
    auto r = Rest(c).CreateWorkload(body.dump());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  size_t KeyCount() {
    auto l = store_.List("");
    return l.ok() ? l->kvs.size() : 0;
  }

  testing::FakeClock store_clock_;
  SystemClock clock_;
  SeqRandom random_;
  testing::FakeStateStore store_;
  KeyLayout keys_;
  std::vector<std::unique_ptr<Controller>> controllers_;
};

}  // namespace kmosix::controller
