// No exception escapes the agent (issue 13, hole 7), and a migration that
// meets one still ends with exactly one running copy. Two agents on fake
// runtimes (node0 sends, node1 receives) over a transport whose calls a test
// can script: an error whose message is not UTF-8 (a stream path, a peer's
// garbage reply: nlohmann::json::dump throws type_error 316 on such bytes),
// a call that throws while the workload is frozen, a phase hook that throws.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "agent.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_transport.h"
#include "kmosix/files.h"
#include "kmosix/stop_and_copy.h"
#include "rest_codec.h"
#include "transport_http/rest.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeTransport;

constexpr char kImage[] = "kmosix.local/demo:latest";
// Bytes that are not UTF-8, as a hostile stream path or a garbage reply has.
const std::string kNotUtf8 = "\xff\xfe\xc3(";

api::WorkloadSpec Spec(const std::string& name) {
  api::WorkloadSpec s;
  s.name = name;
  s.image = kImage;
  s.args = {"/bin/tick"};
  return s;
}

// FakeTransport to node1, with a hook run before each call (by method name)
// that may answer instead (a non-ok status) or throw.
class ScriptedTransport : public Transport {
 public:
  using Hook = std::function<Status(const std::string& id)>;
  explicit ScriptedTransport(MigrationTarget* target) : inner_(target), target_(target) {}
  void On(const std::string& method, Hook hook) { hooks_[method] = std::move(hook); }
  void Clear() { hooks_.clear(); }
  MigrationTarget& target() { return *target_; }

  StatusOr<PeerInfo> Hello(const std::string& t) override {
    KMX_RETURN_IF_ERROR(Run("Hello", ""));
    return inner_.Hello(t);
  }
  Status Prepare(const std::string& t, const MigrationOffer& o) override {
    KMX_RETURN_IF_ERROR(Run("Prepare", o.id));
    return inner_.Prepare(t, o);
  }
  StatusOr<TransferStats> Send(const std::string& t, const std::string& id,
                               const std::vector<Section>& s) override {
    KMX_RETURN_IF_ERROR(Run("Send", id));
    return inner_.Send(t, id, s);
  }
  StatusOr<RestoreReport> Restore(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Run("Restore", id));
    return inner_.Restore(t, id);
  }
  StatusOr<TargetPhase> Commit(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Run("Commit", id));
    return inner_.Commit(t, id);
  }
  StatusOr<TargetPhase> Abort(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Run("Abort", id));
    return inner_.Abort(t, id);
  }
  StatusOr<TargetPhase> Query(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(Run("Query", id));
    return inner_.Query(t, id);
  }

 private:
  Status Run(const std::string& method, const std::string& id) {
    auto it = hooks_.find(method);
    return it == hooks_.end() ? Status::Ok() : it->second(id);
  }
  FakeTransport inner_;
  MigrationTarget* target_;
  std::map<std::string, Hook> hooks_;
};

// A runtime whose checkpoint throws (on the engine's dump thread) while set.
class ThrowingCheckpointRuntime : public FakeRuntime {
 public:
  using FakeRuntime::FakeRuntime;
  std::atomic<bool> throw_checkpoint{false};
  Status CheckpointTask(const std::string& name, const CheckpointRequest& req) override {
    if (throw_checkpoint) throw std::runtime_error("criu: boom");
    return FakeRuntime::CheckpointTask(name, req);
  }
};

class OkLedger : public OwnershipLedger {
 public:
  Status Transfer(const MigrationReport&) override { return Status::Ok(); }
  Status Revert(const MigrationReport&) override { return Status::Ok(); }
};

class AgentExceptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-exc-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    runtime0_.AddImage(kImage);
    runtime1_.AddImage(kImage);
    node1_ = std::make_unique<Agent>(Options("node1"), runtime1_, engine1_, no_transport_, clock_,
                                     random_, nullptr);
    ASSERT_TRUE(node1_->Start().ok());
    to_node1_ = std::make_unique<ScriptedTransport>(&node1_->Target());
    AgentOptions opts0 = Options("node0");
    opts0.max_outgoing = 1;
    opts0.resolve_timeout = std::chrono::seconds(5);
    node0_ =
        std::make_unique<Agent>(opts0, runtime0_, engine0_, *to_node1_, clock_, random_, nullptr);
    ASSERT_TRUE(node0_->Start().ok());
    ASSERT_TRUE(node0_->CreateWorkload(Spec("w1")).ok());
  }
  void TearDown() override {
    node0_.reset();
    node1_.reset();
    fs::remove_all(root_);
  }
  AgentOptions Options(const std::string& node) {
    AgentOptions opts;
    opts.node = node;
    opts.advertise_url = "http://" + node + ":7700";
    opts.state_dir = root_ / node / "state";
    opts.scratch_dir = root_ / node / "scratch";
    return opts;
  }
  // Exactly one running copy, on node0 (kept) or node1 (moved).
  void ExpectRunsOnlyOn(FakeRuntime& where) {
    FakeRuntime& other = &where == &runtime0_ ? runtime1_ : runtime0_;
    EXPECT_EQ(where.State("w1"), TaskState::kRunning);
    EXPECT_FALSE(other.Has("w1")) << "a second copy on " << other.NodeName();
  }
  // Every record the agent wrote under `dir` is JSON.
  void ExpectRecordsParse(const fs::path& dir) {
    for (const auto& path : ListFiles(dir.string(), ".json")) {
      auto text = ReadFile(path);
      ASSERT_TRUE(text.ok()) << path;
      EXPECT_FALSE(json::parse(*text, nullptr, false).is_discarded()) << path << ": " << *text;
    }
  }
  // What GET /v1/migrations answers on an agent (the REST layer's own
  // rendering), parsed back.
  json MigrationsReply(Agent& agent) {
    httplib::Response res;
    rest::Reply(res, 200, AgentMigrationListToJson(agent.ListMigrations()));
    json j = json::parse(res.body, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << res.body;
    return j;
  }

  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  ThrowingCheckpointRuntime runtime0_{"node0", "/tmp/kmx-exc-layers-" + std::to_string(::getpid())};
  FakeRuntime runtime1_{"node1", "/tmp/kmx-exc-layers-" + std::to_string(::getpid())};
  StopAndCopyEngine engine0_{runtime0_, clock_};
  StopAndCopyEngine engine1_{runtime1_, clock_};
  FakeTransport no_transport_{nullptr};
  std::unique_ptr<ScriptedTransport> to_node1_;
  std::unique_ptr<Agent> node1_;
  std::unique_ptr<Agent> node0_;
};

// The target's stream decoder refuses a path that is not UTF-8 and names it;
// the target records the abort, the frozen source journals the failure and
// thaws, and both REST views still render.
TEST_F(AgentExceptionsTest, AStreamErrorNamingANonUtf8PathIsRecordedNotThrown) {
  const Status bad_path = InvalidError("absolute path \"/" + kNotUtf8 + "\"");
  to_node1_->On("Send", [&](const std::string& id) -> Status {
    auto landing = to_node1_->target().BeginReceive(id);
    if (!landing.ok()) return landing.status();
    (void)to_node1_->target().EndReceive(id, bad_path, {});
    return bad_path;
  });
  StatusOr<MigrationReport> report = InvalidError("not run");
  ASSERT_NO_THROW(report = node0_->Migrate("w1", {"http://node1:7700"}));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->phase, MigrationPhase::kRolledBack) << report->error.ToString();
  ExpectRunsOnlyOn(runtime0_);
  EXPECT_EQ(node0_->Local("w1")->state, "running");
  ExpectRecordsParse(root_ / "node0" / "state" / "migrations" / "out");
  ExpectRecordsParse(root_ / "node1" / "state" / "migrations" / "in");
  json sent = MigrationsReply(*node0_);
  ASSERT_EQ(sent["items"].size(), 1u);
  EXPECT_NE(sent["items"][0]["error"]["message"].get<std::string>().find("absolute path"),
            std::string::npos);
  json received = MigrationsReply(*node1_);
  ASSERT_EQ(received["items"].size(), 1u);
  EXPECT_EQ(received["items"][0]["phase"], "Aborted");
}

// The peer's reply to Restore was garbage (what StatusFromHttpError makes of
// a body that is not JSON) while the source was frozen.
TEST_F(AgentExceptionsTest, AMalformedReplyWhileFrozenThawsTheSource) {
  to_node1_->On("Restore", [&](const std::string&) {
    return FailedError("peer answered HTTP 502: <" + kNotUtf8 + ">");
  });
  StatusOr<MigrationReport> report = InvalidError("not run");
  ASSERT_NO_THROW(report = node0_->Migrate("w1", {"http://node1:7700"}));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->phase, MigrationPhase::kRolledBack) << report->error.ToString();
  EXPECT_EQ(report->failed_phase, "Restoring");
  ExpectRunsOnlyOn(runtime0_);
  EXPECT_EQ(node0_->Local("w1")->state, "running");
  ExpectRecordsParse(root_ / "node0" / "state" / "migrations" / "out");
  MigrationsReply(*node0_);
}

// Anything thrown in the middle of a migration (here: by the transport while
// the source is frozen) is caught; the migration is resolved from its
// journal (thawed here), and its slot among max_outgoing (1) is given back.
TEST_F(AgentExceptionsTest, AnExceptionWhileFrozenLeavesOneCopyAndFreesTheSlot) {
  to_node1_->On("Restore", [&](const std::string&) -> Status { throw std::runtime_error("boom"); });
  StatusOr<MigrationReport> report = InvalidError("not run");
  ASSERT_NO_THROW(report = node0_->Migrate("w1", {"http://node1:7700"}));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(IsFinal(report->phase)) << MigrationPhaseName(report->phase);
  EXPECT_EQ(report->phase, MigrationPhase::kRolledBack);
  ExpectRunsOnlyOn(runtime0_);
  EXPECT_EQ(node0_->Local("w1")->state, "running");
  auto journal = node0_->OutgoingReport(report->id);
  ASSERT_TRUE(journal.has_value());
  EXPECT_EQ(journal->phase, MigrationPhase::kRolledBack);

  to_node1_->Clear();
  report = node0_->Migrate("w1", {"http://node1:7700"});
  ASSERT_TRUE(report.ok()) << "the slot leaked: " << report.status().ToString();
  EXPECT_EQ(report->phase, MigrationPhase::kSucceeded) << report->error.ToString();
  ExpectRunsOnlyOn(runtime1_);
}

// The engine dumps on a thread of its own (page pipes); what the runtime
// throws there ends the checkpoint, not the process.
TEST_F(AgentExceptionsTest, ACheckpointThatThrowsOnTheDumpThreadRollsBack) {
  runtime0_.throw_checkpoint = true;
  StatusOr<MigrationReport> report = InvalidError("not run");
  ASSERT_NO_THROW(report = node0_->Migrate("w1", {"http://node1:7700"}));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->phase, MigrationPhase::kRolledBack) << report->error.ToString();
  EXPECT_NE(report->error.message().find("boom"), std::string::npos) << report->error.ToString();
  ExpectRunsOnlyOn(runtime0_);
  runtime0_.throw_checkpoint = false;
  report = node0_->Migrate("w1", {"http://node1:7700"});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->phase, MigrationPhase::kSucceeded) << report->error.ToString();
  ExpectRunsOnlyOn(runtime1_);
}

// The cluster link's phase hook writes etcd; whatever it throws is its own
// failure to report, not the migration's.
TEST_F(AgentExceptionsTest, AThrowingPhaseHookDoesNotBreakAManagedMigration) {
  ASSERT_TRUE(node0_->DeleteWorkload("w1").ok());
  ASSERT_TRUE(node0_->StartManaged(Spec("w1"), 1, 0).ok());
  OkLedger ledger;
  ManagedMigration order{"m-1", "w1", "node1", "http://node1:7700", {}};
  int calls = 0;
  StatusOr<MigrationReport> report = InvalidError("not run");
  ASSERT_NO_THROW(report = node0_->MigrateManaged(order, ledger, [&](const MigrationReport&) {
    ++calls;
    (void)json(kNotUtf8).dump();  // what the link's etcd write does with such an error
    return;
  }));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->phase, MigrationPhase::kSucceeded) << report->error.ToString();
  EXPECT_GE(calls, 5);
  ExpectRunsOnlyOn(runtime1_);
  EXPECT_FALSE(node0_->Local("w1").has_value());
}

}  // namespace
}  // namespace kmosix::agent
