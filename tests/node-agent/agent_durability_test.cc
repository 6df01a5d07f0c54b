// The agent's durable writes (issue 13, holes 1 and 2): two agents on fake
// runtimes (node0 sends, node1 receives, over the fake transport), their
// state dirs on the real filesystem. A write is made to fail for real: a
// directory squats on the temporary file WriteFileAtomic writes first, or a
// regular file stands where a state directory should be (open, or mkdir of
// the parent, then fails, as on a full or broken disk). A "crash" is the
// agent object destroyed and a new one started over the same state dir and
// the same runtime (containerd keeps running across an agent restart).
// After every scenario the workload runs exactly once.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "agent.h"
#include "cluster/records.h"
#include "cluster_link.h"
#include "fake_load_sampler.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_state_store.h"
#include "fakes/fake_transport.h"
#include "kmosix/files.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using testing::FakeClock;
using testing::FakeLoadSampler;
using testing::FakeRuntime;
using testing::FakeStateStore;
using testing::FakeTransport;

constexpr char kImage[] = "kmosix.local/demo:latest";

class AgentDurabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-durability-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    runtime0_.AddImage(kImage);
    runtime1_.AddImage(kImage);
    no_peer_.SetNotAnAgent();
    StartTarget();
    StartSource();
    api::WorkloadSpec spec;
    spec.name = "work";
    spec.image = kImage;
    auto created = source_->CreateWorkload(spec);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    for (int i = 0; i < 42; ++i) runtime0_.Tick("work");
  }
  void TearDown() override {
    source_.reset();
    target_.reset();
    if (tmpfs_mounted_) ::umount2(TmpfsDir().c_str(), MNT_DETACH);
    fs::remove_all(root_);
  }

  AgentOptions Options(const std::string& node) {
    AgentOptions opts;
    opts.node = node;
    opts.advertise_url = "http://" + node + ":7700";
    opts.state_dir = state_dir_override_.count(node) ? state_dir_override_[node]
                                                     : (root_ / node / "state").string();
    opts.scratch_dir = root_ / node / "scratch";
    opts.resolve_timeout = std::chrono::seconds(5);
    return opts;
  }
  // (Re)starts node1 over its state dir; node0's transport follows it.
  void StartTarget() {
    target_.reset();
    target_ = std::make_unique<Agent>(Options("node1"), runtime1_, engine1_, no_peer_, clock_,
                                      random_, nullptr);
    ASSERT_TRUE(target_->Start().ok());
    to_node1_ = std::make_unique<FakeTransport>(&target_->Target());
    if (source_) StartSource();
  }
  // (Re)starts node0 over its state dir.
  void StartSource() {
    source_.reset();
    source_ = std::make_unique<Agent>(Options("node0"), runtime0_, engine0_, *to_node1_, clock_,
                                      random_, nullptr);
    ASSERT_TRUE(source_->Start().ok());
  }
  StatusOr<MigrationReport> Migrate() {
    return source_->Migrate("work", api::AgentMigrateRequest{.target = "http://node1:7700"});
  }
  fs::path State(const std::string& node) { return Options(node).state_dir; }
  // A directory where WriteFileAtomic(path) makes its temporary file.
  void BlockWrite(const fs::path& path) {
    fs::create_directories(path.string() + ".tmp");
    fs::create_directories(path.string() + ".tmp/x");  // and not an empty one
  }
  void UnblockWrite(const fs::path& path) { fs::remove_all(path.string() + ".tmp"); }
  // A regular file where state directory `dir` should be.
  void BreakDir(const fs::path& dir) {
    fs::remove_all(dir);
    std::ofstream(dir) << "not a directory\n";
  }
  void RepairDir(const fs::path& dir) {
    fs::remove(dir);
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all);
  }
  fs::path TmpfsDir() { return root_ / "tmpfs"; }
  // Rewrites a workload record's "state" (as an older write left it).
  void SetRecordState(const fs::path& record, const std::string& state) {
    auto text = ReadFile(record);
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    auto j = nlohmann::json::parse(*text, nullptr, false);
    ASSERT_TRUE(j.is_object());
    j["state"] = state;
    ASSERT_TRUE(WriteFileAtomic(record, j.dump(2)).ok());
  }

  // The invariant: exactly one running copy, carrying the state it had.
  void ExpectRunsOnceOn(FakeRuntime& where, int64_t counter) {
    int running = (runtime0_.State("work") == TaskState::kRunning) +
                  (runtime1_.State("work") == TaskState::kRunning);
    EXPECT_EQ(running, 1) << "node0 " << TaskStateName(runtime0_.State("work")) << ", node1 "
                          << TaskStateName(runtime1_.State("work"));
    EXPECT_EQ(where.State("work"), TaskState::kRunning);
    EXPECT_EQ(where.Counter("work"), counter);
  }

  fs::path root_;
  std::map<std::string, std::string> state_dir_override_;
  bool tmpfs_mounted_ = false;
  FakeClock clock_;
  SystemRandom random_;
  FakeRuntime runtime0_{"node0", "/tmp/kmx-durability-layers-" + std::to_string(::getpid())};
  FakeRuntime runtime1_{"node1", "/tmp/kmx-durability-layers-" + std::to_string(::getpid())};
  StopAndCopyEngine engine0_{runtime0_, clock_};
  StopAndCopyEngine engine1_{runtime1_, clock_};
  FakeTransport no_peer_{nullptr};
  std::unique_ptr<Agent> target_;
  std::unique_ptr<FakeTransport> to_node1_;
  std::unique_ptr<Agent> source_;
};

// Hole 1: the target persisted its Committed verdict but not the workload
// record (the record write failed, as if it had died right there), and the
// source released its copy. At its next start the target completes the
// record from the verdict instead of deleting the container as "unowned".
TEST_F(AgentDurabilityTest, TargetWithoutTheWorkloadRecordAdoptsTheCommittedCopyAtRestart) {
  const fs::path record = State("node1") / "workloads" / "work.json";
  BlockWrite(record);
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  ASSERT_EQ(done->phase, MigrationPhase::kSucceeded) << done->error.ToString();
  EXPECT_FALSE(runtime0_.Has("work"));  // the source released its copy
  ASSERT_FALSE(fs::exists(record));
  // The target dies; it comes back over the same state dir and containerd.
  UnblockWrite(record);
  StartTarget();
  ExpectRunsOnceOn(runtime1_, 42);
  auto got = target_->GetWorkload("work");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->state, "running");
  EXPECT_EQ(got->migrations, std::vector<std::string>{done->id});
  EXPECT_TRUE(fs::exists(record));
  // And once more: nothing changes.
  StartTarget();
  ExpectRunsOnceOn(runtime1_, 42);
  EXPECT_TRUE(target_->GetWorkload("work").ok());
  EXPECT_EQ(target_->WorkloadCount(), 1u);
}

// The fault soak's B3: containerd killed on the target during the restore;
// the restore fails and so does the discard (containerd still down). What is
// left (the container under the workload's name) is recorded and removed by
// the target's upkeep once containerd is back, and the next migration of the
// workload to that node succeeds (it failed "already exists" for good).
TEST_F(AgentDurabilityTest, TargetWhoseDiscardFailedRemovesTheLeftoversInItsUpkeep) {
  runtime1_.Fail("RestoreTask", RetryError("restore: start task work: Socket closed"));
  runtime1_.Fail("Delete", RetryError("discard: get task work: Connection refused"));
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  ASSERT_EQ(done->phase, MigrationPhase::kRolledBack) << done->error.ToString();
  ExpectRunsOnceOn(runtime0_, 42);
  ASSERT_TRUE(runtime1_.Has("work"));
  auto text = ReadFile(State("node1") / "migrations" / "in" / (done->id + ".json"));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  auto rec = nlohmann::json::parse(*text, nullptr, false);
  ASSERT_TRUE(rec.is_object());
  EXPECT_EQ(rec.value("discardPending", false), true) << rec.dump();
  // containerd answers again, but deletes still fail: kept.
  runtime1_.Fail("RestoreTask", Status::Ok());
  clock_.Advance(std::chrono::seconds(5));
  target_->Tick();
  EXPECT_TRUE(runtime1_.Has("work"));
  runtime1_.Fail("Delete", Status::Ok());
  clock_.Advance(std::chrono::seconds(5));
  target_->Tick();
  EXPECT_FALSE(runtime1_.Has("work"));
  EXPECT_FALSE(fs::exists(root_ / "node1" / "scratch" / ("in-" + done->id)));
  // The next migration of the workload to node1 succeeds.
  auto again = Migrate();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->phase, MigrationPhase::kSucceeded) << again->error.ToString();
  ExpectRunsOnceOn(runtime1_, 42);
  EXPECT_FALSE(runtime0_.Has("work"));
}

// B3, the agent's own create: a workload created on the node where an
// aborted migration of that name left its container clears it first.
TEST_F(AgentDurabilityTest, ACreateOnTheTargetClearsWhatAFailedDiscardLeft) {
  runtime1_.Fail("RestoreTask", RetryError("restore: start task work: Socket closed"));
  runtime1_.Fail("Delete", RetryError("discard: get task work: Connection refused"));
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  ASSERT_EQ(done->phase, MigrationPhase::kRolledBack) << done->error.ToString();
  ASSERT_TRUE(runtime1_.Has("work"));
  runtime1_.Fail("RestoreTask", Status::Ok());
  runtime1_.Fail("Delete", Status::Ok());
  // No upkeep ran yet. (A second workload of that name, for the test: the
  // agents are standalone.)
  api::WorkloadSpec spec;
  spec.name = "work";
  spec.image = kImage;
  auto created = target_->CreateWorkload(spec);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(runtime1_.State("work"), TaskState::kRunning);
  EXPECT_EQ(runtime1_.Counter("work"), 0);  // a fresh container, not the leftover
}

// Hole 2: the source cannot write its journal: the migration fails before
// the freeze and the workload runs on, untouched.
TEST_F(AgentDurabilityTest, SourceThatCannotJournalTheMigrationNeverFreezesIt) {
  BreakDir(State("node0") / "migrations" / "out");
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->phase, MigrationPhase::kFailed);
  EXPECT_EQ(done->error.code(), Code::kFailed) << done->error.ToString();
  EXPECT_EQ(runtime0_.Calls("Pause"), 0);
  EXPECT_FALSE(runtime1_.Has("work"));
  ExpectRunsOnceOn(runtime0_, 42);
  auto got = source_->GetWorkload("work");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, "running");
  // A restart with the disk repaired finds the workload as it was.
  RepairDir(State("node0") / "migrations" / "out");
  StartSource();
  source_->Tick();
  ExpectRunsOnceOn(runtime0_, 42);
  EXPECT_EQ(source_->GetWorkload("work")->state, "running");
}

// Hole 2, target side: it cannot record the incoming migration, so it
// refuses the offer; nothing is frozen.
TEST_F(AgentDurabilityTest, TargetThatCannotRecordTheOfferRefusesIt) {
  BreakDir(State("node1") / "migrations" / "in");
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->phase, MigrationPhase::kFailed) << done->error.ToString();
  EXPECT_EQ(runtime0_.Calls("Pause"), 0);
  EXPECT_FALSE(runtime1_.Has("work"));
  ExpectRunsOnceOn(runtime0_, 42);
  EXPECT_FALSE(target_->Local("work").has_value());  // the name is free again
}

// Hole 2, target side: the Committed verdict cannot be written, so it is not
// given: the target aborts its copy and the source runs the workload on.
TEST_F(AgentDurabilityTest, TargetThatCannotRecordItsCommitVerdictDoesNotGiveIt) {
  // Once the copy runs there, the incoming record cannot be written again
  // (the id is random: the blocks go in right after the restore answers).
  class BlockOnRestore : public FakeTransport {
   public:
    BlockOnRestore(MigrationTarget* t, std::function<void()> f)
        : FakeTransport(t), on_restore_(std::move(f)) {}
    StatusOr<RestoreReport> Restore(const std::string& url, const std::string& id) override {
      auto r = FakeTransport::Restore(url, id);
      on_restore_();
      return r;
    }

   private:
    std::function<void()> on_restore_;
  };
  const fs::path in = State("node1") / "migrations" / "in";
  BlockOnRestore transport(&target_->Target(), [&] {
    std::vector<fs::path> records;
    for (const auto& e : fs::directory_iterator(in)) records.push_back(e.path());
    for (const auto& r : records) BlockWrite(r);
  });
  source_.reset();
  source_ = std::make_unique<Agent>(Options("node0"), runtime0_, engine0_, transport, clock_,
                                    random_, nullptr);
  ASSERT_TRUE(source_->Start().ok());
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->phase, MigrationPhase::kRolledBack) << done->error.ToString();
  ExpectRunsOnceOn(runtime0_, 42);
  EXPECT_FALSE(runtime1_.Has("work"));
  // The target restarts over what it wrote: still exactly one copy.
  source_.reset();
  std::vector<fs::path> blocks;
  for (const auto& e : fs::directory_iterator(in)) {
    if (fs::is_directory(e.path())) blocks.push_back(e.path());
  }
  for (const auto& b : blocks) fs::remove_all(b);
  StartTarget();
  ExpectRunsOnceOn(runtime0_, 42);
  EXPECT_FALSE(target_->Local("work").has_value());
}

// A migration ended (its journal final) but the workload's record still
// says "frozen" (its last write failed, or the agent died before it): the
// next start settles the record from the journal instead of keeping the
// workload out of reach (no migration, no delete) for good.
TEST_F(AgentDurabilityTest, RecordLeftFrozenAfterARollbackIsSettledAtStart) {
  const fs::path record = State("node0") / "workloads" / "work.json";
  to_node1_->CutTransfer();
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  ASSERT_EQ(done->phase, MigrationPhase::kRolledBack);
  SetRecordState(record, "frozen");
  StartSource();
  auto got = source_->GetWorkload("work");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->state, "running");
  ExpectRunsOnceOn(runtime0_, 42);
  // And it can move again.
  to_node1_->Heal();
  auto again = Migrate();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->phase, MigrationPhase::kSucceeded) << again->error.ToString();
  ExpectRunsOnceOn(runtime1_, 42);
}

TEST_F(AgentDurabilityTest, RecordLeftFrozenAfterASuccessIsDroppedAtStart) {
  const fs::path record = State("node0") / "workloads" / "work.json";
  const std::string before = *ReadFile(record);
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  ASSERT_EQ(done->phase, MigrationPhase::kSucceeded);
  ASSERT_FALSE(fs::exists(record));
  // The record's removal failed after a round of Resolving had written it.
  std::ofstream(record) << before;
  SetRecordState(record, "frozen");
  StartSource();
  EXPECT_EQ(source_->GetWorkload("work").status().code(), Code::kNotFound);
  EXPECT_FALSE(fs::exists(record));
  ExpectRunsOnceOn(runtime1_, 42);
}

// The source released its copy (the target committed), then died before its
// journal said Succeeded and before the record went: the journal says
// Committing, the record "running", the container is gone. The restarted
// source must not restart the workload as lost (the target runs it): it
// holds it for the migration, which its first Tick finishes.
TEST_F(AgentDurabilityTest, SourceThatDiedAfterTheReleaseDoesNotRestartTheWorkload) {
  const fs::path record = State("node0") / "workloads" / "work.json";
  const std::string before = *ReadFile(record);
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  ASSERT_EQ(done->phase, MigrationPhase::kSucceeded);
  // The disk as that crash leaves it.
  const fs::path journal = State("node0") / "migrations" / "out" / (done->id + ".json");
  auto text = ReadFile(journal);
  ASSERT_TRUE(text.ok());
  auto j = nlohmann::json::parse(*text, nullptr, false);
  ASSERT_TRUE(j.is_object());
  j["report"]["phase"] = "Committing";
  j["report"]["outcome"] = "InProgress";
  ASSERT_TRUE(WriteFileAtomic(journal, j.dump(2)).ok());
  std::ofstream(record) << before;
  const int starts = runtime0_.Calls("StartTask");
  StartSource();
  EXPECT_FALSE(runtime0_.Has("work"));  // not started again here
  EXPECT_EQ(runtime0_.Calls("StartTask"), starts);
  ExpectRunsOnceOn(runtime1_, 42);
  source_->Tick();  // finishes the migration from its journal
  EXPECT_EQ(source_->GetWorkload("work").status().code(), Code::kNotFound);
  EXPECT_EQ(source_->OutgoingReport(done->id)->phase, MigrationPhase::kSucceeded);
  EXPECT_FALSE(runtime0_.Has("work"));
  ExpectRunsOnceOn(runtime1_, 42);
}

// Hole 2 with a real full disk (ENOSPC): the source's state dir on a small
// tmpfs filled to the last byte. Needs root (mount).
TEST_F(AgentDurabilityTest, SourceOnAFullDiskNeverFreezes) {
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED: mounting a tmpfs needs root";
  fs::create_directories(TmpfsDir());
  if (::mount("tmpfs", TmpfsDir().c_str(), "tmpfs", 0, "size=1m,mode=0700") != 0) {
    GTEST_SKIP() << "SKIPPED: cannot mount a tmpfs: " << std::strerror(errno);
  }
  tmpfs_mounted_ = true;
  // node0 again, its state on the tmpfs (the workload recreated there).
  source_.reset();
  ASSERT_TRUE(runtime0_.Delete("work").ok());
  state_dir_override_["node0"] = (TmpfsDir() / "state").string();
  StartSource();
  api::WorkloadSpec spec;
  spec.name = "work";
  spec.image = kImage;
  ASSERT_TRUE(source_->CreateWorkload(spec).ok());
  for (int i = 0; i < 42; ++i) runtime0_.Tick("work");
  {
    std::ofstream fill(TmpfsDir() / "fill", std::ios::binary);
    const std::string block(4096, 'x');
    while (fill.write(block.data(), block.size())) {
    }
  }
  auto done = Migrate();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->phase, MigrationPhase::kFailed);
  EXPECT_NE(done->error.message().find("No space left on device"), std::string::npos)
      << done->error.ToString();
  EXPECT_EQ(runtime0_.Calls("Pause"), 0);
  EXPECT_FALSE(runtime1_.Has("work"));
  ExpectRunsOnceOn(runtime0_, 42);
}

// Hole 1 in cluster mode: node1 moves the managed workload to node2 by a
// cluster order; node2 writes its Committed verdict, not its workload record,
// and dies. Restarted over its state dir (with its link), it adopts the
// committed copy, and the link claims it for the cluster: it runs once, on
// node2, with its state, managed at the epoch the ownership moved to.
class ClusterDurabilityTest : public ::testing::Test {
 protected:
  // An agent and its cluster link over a runtime that outlives them.
  struct Linked {
    Linked(const std::string& name, const fs::path& root, FakeRuntime& runtime, FakeClock& clock,
           Random& random, StateStore& store, Transport& transport)
        : engine(runtime, clock) {
      AgentOptions opts;
      opts.node = name;
      opts.advertise_url = "http://" + name + ":7700";
      opts.state_dir = root / name / "state";
      opts.scratch_dir = root / name / "scratch";
      opts.resolve_timeout = std::chrono::seconds(5);
      agent = std::make_unique<Agent>(opts, runtime, engine, transport, clock, random, nullptr);
      ClusterLinkOptions lo;
      lo.node = name;
      lo.url = opts.advertise_url;
      link = std::make_unique<ClusterLink>(lo, *agent, store, sampler, clock, random);
      agent->SetClusterHooks(link->Hooks());
    }
    ~Linked() {
      link.reset();  // before the agent it borrows
      agent.reset();
    }
    StopAndCopyEngine engine;
    FakeLoadSampler sampler;
    std::unique_ptr<Agent> agent;
    std::unique_ptr<ClusterLink> link;
  };

  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-cluster-durability-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    runtime1_.AddImage(kImage);
    runtime2_.AddImage(kImage);
    StartNode2();
    node1_ =
        std::make_unique<Linked>("node1", root_, runtime1_, clock_, random_, store_, *to_node2_);
    ASSERT_TRUE(node1_->agent->Start().ok());
  }
  void TearDown() override {
    node1_.reset();
    node2_.reset();
    fs::remove_all(root_);
  }
  // (Re)starts node2 over its state dir; node1's transport must be rebuilt
  // with it (only before node1 exists, or node1 is not used afterwards).
  void StartNode2() {
    node2_.reset();
    node2_ = std::make_unique<Linked>("node2", root_, runtime2_, clock_, random_, store_, no_peer_);
    ASSERT_TRUE(node2_->agent->Start().ok());
    to_node2_ = std::make_unique<FakeTransport>(&node2_->agent->Target());
  }
  void Put(const std::string& key, const std::string& value) {
    ASSERT_TRUE(store_.Put(key, value).ok());
  }
  api::Workload Record() {
    auto got = store_.Get(keys_.Workload("work"));
    EXPECT_TRUE(got.ok() && got->kv.has_value());
    if (!got.ok() || !got->kv) return {};
    auto w = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    return w.ok() ? *w : api::Workload{};
  }

  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  FakeStateStore store_{clock_};
  cluster::KeyLayout keys_;
  FakeRuntime runtime1_{"node1", "/tmp/kmx-cluster-durability-" + std::to_string(::getpid())};
  FakeRuntime runtime2_{"node2", "/tmp/kmx-cluster-durability-" + std::to_string(::getpid())};
  FakeTransport no_peer_{nullptr};
  std::unique_ptr<FakeTransport> to_node2_;
  std::unique_ptr<Linked> node2_;
  std::unique_ptr<Linked> node1_;
};

TEST_F(ClusterDurabilityTest, TargetThatDiesAfterItsVerdictKeepsTheWorkloadForTheCluster) {
  api::Workload w;
  w.spec.name = "work";
  w.spec.image = kImage;
  w.spec.args = {"/bin/tick"};
  w.status.node = "node1";
  w.status.phase = api::WorkloadPhase::kScheduled;
  w.status.epoch = 3;
  w.status.created_ms = 1234;
  Put(keys_.Workload("work"), cluster::WorkloadToJson(w).dump());
  ASSERT_TRUE(node1_->link->Reconcile("w/work").ok());
  ASSERT_EQ(runtime1_.State("work"), TaskState::kRunning);
  for (int i = 0; i < 7; ++i) runtime1_.Tick("work");

  api::NodeLoad n2;
  n2.node = "node2";
  n2.url = "http://node2:7700";
  Put(keys_.Node("node2"), cluster::NodeLoadToJson(n2).dump());
  w.status.phase = api::WorkloadPhase::kMigrating;
  w.status.migration = "m-1";
  Put(keys_.Workload("work"), cluster::WorkloadToJson(w).dump());
  api::Migration m;
  m.id = "m-1";
  m.workload = "work";
  m.source = "node1";
  m.target = "node2";
  m.phase = api::MigrationPhase::kPending;
  m.reason = "test";
  m.requested_by = "api";
  m.epoch = 3;
  Put(keys_.Migration("m-1"), cluster::MigrationToJson(m).dump());

  // node2 will not get to write its workload record.
  const fs::path record = root_ / "node2" / "state" / "workloads" / "work.json";
  fs::create_directories(record.string() + ".tmp/x");
  ASSERT_TRUE(node1_->link->Reconcile("m/m-1").ok());
  node1_->link->WaitMigrations();
  ASSERT_FALSE(runtime1_.Has("work"));  // node1 released its copy
  ASSERT_EQ(Record().status.node, "node2");
  ASSERT_FALSE(fs::exists(record));

  // node2 dies and comes back over its state dir, its containerd still up.
  fs::remove_all(record.string() + ".tmp");
  StartNode2();
  ASSERT_TRUE(node2_->link->Reconcile("w/work").ok());
  EXPECT_EQ(runtime2_.State("work"), TaskState::kRunning);
  EXPECT_EQ(runtime2_.Counter("work"), 7);  // the same copy, not a fresh start
  EXPECT_FALSE(runtime1_.Has("work"));
  auto local = node2_->agent->Local("work");
  ASSERT_TRUE(local.has_value());
  EXPECT_EQ(local->state, "running");
  EXPECT_TRUE(local->managed);
  EXPECT_EQ(local->epoch, Record().status.epoch);
  EXPECT_EQ(local->migrations, std::vector<std::string>{"m-1"});
  EXPECT_TRUE(fs::exists(record));
  EXPECT_EQ(Record().status.node, "node2");
}

}  // namespace
}  // namespace kmosix::agent
