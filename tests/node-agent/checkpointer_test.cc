// restartPolicy FromCheckpoint, agent side (issue 13): the keeper choice,
// the schedule, the keeper's store and clean-up rule, and a whole periodic
// checkpoint from a source agent to a keeper agent and a restore from it,
// over fakes at the seams (FakeRuntime: a container's memory is a counter
// that a dump writes and a restore reads back; FakeStateStore for etcd;
// FakeTransport into the keeper's router, behind the peer authorizer as the
// agent's listener puts it). Fake clock: nothing waits for real time.
#include "checkpointer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "agent.h"
#include "checkpoint_keeper.h"
#include "cluster_link.h"
#include "fake_load_sampler.h"
#include "fakes/fake_clock.h"
#include "fakes/fake_runtime.h"
#include "fakes/fake_state_store.h"
#include "fakes/fake_transport.h"
#include "kmosix/checkpoint_capture.h"
#include "kmosix/checkpoint_store.h"
#include "kmosix/json_text.h"
#include "kmosix/stop_and_copy.h"

namespace kmosix::agent {
namespace {

namespace fs = std::filesystem;
using testing::FakeClock;
using testing::FakeRuntime;
using testing::FakeStateStore;
using testing::FakeTransport;

constexpr char kImage[] = "kmosix.local/demo:latest";

api::NodeLoad Node(const std::string& name, std::optional<std::string> not_ready = std::nullopt,
                   std::optional<std::vector<std::string>> images = std::nullopt) {
  api::NodeLoad n;
  n.node = name;
  n.url = "https://" + name + ":7700";
  n.not_ready_reason = std::move(not_ready);
  n.images = std::move(images);
  return n;
}

fs::path TestRoot(const std::string& what) {
  fs::path root =
      fs::temp_directory_path() / ("kmx-ckpt-" + what + "-" + std::to_string(::getpid()) + "-" +
                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(root);
  fs::create_directories(root);
  return root;
}

// ---- keeper choice ---------------------------------------------------------------

TEST(ChooseKeeperTest, NeverTheOwnerNorANodeNotReadyOrWithoutTheImage) {
  std::vector<api::NodeLoad> nodes = {Node("a"), Node("b", "no CRIU"),
                                      Node("c", std::nullopt, std::vector<std::string>{"other"})};
  EXPECT_EQ(ChooseKeeper("w", "b", nodes, kImage), "a");
  EXPECT_EQ(ChooseKeeper("w", "a", nodes, kImage), std::nullopt);
  nodes.push_back(Node("d", std::nullopt, std::vector<std::string>{kImage}));
  auto k = ChooseKeeper("w", "a", nodes, kImage);
  EXPECT_EQ(k, "d");
}

TEST(ChooseKeeperTest, StableAndMovesOnlyWhenItsKeeperGoes) {
  std::vector<api::NodeLoad> nodes;
  for (const char* n : {"n1", "n2", "n3", "n4", "n5", "n6"}) nodes.push_back(Node(n));
  int moved = 0;
  std::set<std::string> keepers;
  for (int i = 0; i < 50; ++i) {
    const std::string w = "work-" + std::to_string(i);
    auto k = ChooseKeeper(w, "n1", nodes, kImage);
    ASSERT_TRUE(k.has_value());
    EXPECT_NE(*k, "n1");
    keepers.insert(*k);
    // Same answer whatever the order of the nodes.
    std::vector<api::NodeLoad> reversed(nodes.rbegin(), nodes.rend());
    EXPECT_EQ(ChooseKeeper(w, "n1", reversed, kImage), k);
    // Another node leaving does not move it (rendezvous hashing).
    std::vector<api::NodeLoad> fewer;
    const std::string gone = *k == "n6" ? "n5" : "n6";
    for (const auto& n : nodes)
      if (n.node != gone) fewer.push_back(n);
    EXPECT_EQ(ChooseKeeper(w, "n1", fewer, kImage), k);
    // Its keeper leaving moves it to another node.
    std::vector<api::NodeLoad> without;
    for (const auto& n : nodes)
      if (n.node != *k) without.push_back(n);
    auto again = ChooseKeeper(w, "n1", without, kImage);
    ASSERT_TRUE(again.has_value());
    moved += *again != *k;
  }
  EXPECT_EQ(moved, 50);
  EXPECT_GE(keepers.size(), 3u) << "50 workloads should spread over the 5 candidates";
}

// ---- schedule ------------------------------------------------------------------

TEST(CheckpointScheduleTest, DueAnIntervalAfterFirstSeenOrLastTakenMostOverdueFirst) {
  CheckpointSchedule s;
  s.Track("a", 10'000, 1'000, 0);
  s.Track("b", 30'000, 1'000, 5'000);  // taken at 5 s: due at 35 s
  EXPECT_EQ(s.Due(10'999), std::nullopt);
  EXPECT_EQ(s.Due(11'000), "a");
  s.Attempted("a", 11'000);
  EXPECT_EQ(s.NextDueMs("a"), 21'000);
  EXPECT_EQ(s.NextDueMs("b"), 35'000);
  EXPECT_EQ(s.Due(40'000), "a") << "a (due 21 s) is more overdue than b (due 35 s)";
  s.Attempted("a", 40'000);
  EXPECT_EQ(s.Due(40'000), "b");
  s.Track("b", 60'000, 40'000, 0);  // a new interval keeps the due time
  EXPECT_EQ(s.NextDueMs("b"), 35'000);
  s.Retain({"a"});
  EXPECT_EQ(s.NextDueMs("b"), std::nullopt);
  EXPECT_EQ(s.size(), 1u);
}

// ---- clean-up rule ------------------------------------------------------------

StoredCheckpoint Stored(const std::string& id, int64_t stored_ms) {
  StoredCheckpoint c;
  c.workload = "w";
  c.id = id;
  c.stored_ms = stored_ms;
  return c;
}

TEST(CheckpointsToKeepTest, TheRule) {
  const std::vector<StoredCheckpoint> stored = {Stored("ckpt-old", 1'000),
                                                Stored("ckpt-new", 2'000)};
  api::Workload w;
  w.spec.name = "w";
  api::CheckpointRecord rec;
  rec.workload = "w";
  rec.id = "ckpt-old";
  rec.keeper = "me";
  const int64_t later = 1'000'000, grace = 60'000;
  // Workload gone: nothing stays.
  EXPECT_TRUE(CheckpointsToKeep(stored, std::nullopt, rec, "me", later, grace).empty());
  // The recorded one here stays; the newer unrecorded one only within grace.
  EXPECT_EQ(CheckpointsToKeep(stored, w, rec, "me", later, grace),
            std::set<std::string>{"ckpt-old"});
  EXPECT_EQ(CheckpointsToKeep(stored, w, rec, "me", 2'000 + grace - 1, grace),
            (std::set<std::string>{"ckpt-old", "ckpt-new"}));
  // Recorded on another keeper: none of these, unless a restore names one.
  rec.keeper = "other";
  EXPECT_TRUE(CheckpointsToKeep(stored, w, rec, "me", later, grace).empty());
  w.status.restore_checkpoint = "ckpt-old";
  EXPECT_EQ(CheckpointsToKeep(stored, w, rec, "me", later, grace),
            std::set<std::string>{"ckpt-old"});
  // No record at all: the newest.
  w.status.restore_checkpoint.clear();
  EXPECT_EQ(CheckpointsToKeep(stored, w, std::nullopt, "me", later, grace),
            std::set<std::string>{"ckpt-new"});
}

// ---- the keeper's store ----------------------------------------------------------

void Land(CheckpointStore& store, const std::string& w, const std::string& id,
          const std::string& content) {
  auto landing = store.BeginIncoming(w, id);
  ASSERT_TRUE(landing.ok()) << landing.status().ToString();
  fs::create_directories(landing->sections[0].path);
  std::ofstream(landing->sections[0].path + "/inventory.img") << content;
}

TEST(CheckpointStoreTest, CommitReplacesTheOldOneAfterTheNewOneIsInPlace) {
  const fs::path root = TestRoot("store");
  CheckpointStore store(root / "ckpt");
  ASSERT_TRUE(store.Open().ok());
  Land(store, "w", "ckpt-1", "one");
  EXPECT_TRUE(store.List("w").empty()) << "an arrival is not a checkpoint";
  StoredCheckpoint meta = Stored("ckpt-1", 1'000);
  meta.source = "n1";
  meta.epoch = 7;
  ASSERT_TRUE(store.Commit(meta, {}).ok());
  ASSERT_EQ(store.List("w").size(), 1u);
  EXPECT_EQ(store.List("w")[0].epoch, 7);
  EXPECT_EQ(store.List("w")[0].source, "n1");

  // A second one: the first stays while protected, goes otherwise.
  Land(store, "w", "ckpt-2", "two");
  ASSERT_TRUE(store.Commit(Stored("ckpt-2", 2'000), {"ckpt-1"}).ok());
  EXPECT_EQ(store.List("w").size(), 2u);
  Land(store, "w", "ckpt-3", "three");
  ASSERT_TRUE(store.Commit(Stored("ckpt-3", 3'000), {}).ok());
  ASSERT_EQ(store.List("w").size(), 1u);
  EXPECT_EQ(store.List("w")[0].id, "ckpt-3");
  auto found = store.Find("w", "ckpt-3");
  ASSERT_TRUE(found.has_value());
  std::ifstream in(found->dir + "/criu/inventory.img");
  std::string text;
  in >> text;
  EXPECT_EQ(text, "three");

  // A pinned one (being restored from) is never deleted.
  store.Pin("w", "ckpt-3");
  EXPECT_EQ(store.Remove("w", "ckpt-3").code(), Code::kConflict);
  store.Unpin("w", "ckpt-3");
  EXPECT_TRUE(store.Remove("w", "ckpt-3").ok());
  EXPECT_TRUE(store.List("w").empty());
  fs::remove_all(root);
}

TEST(CheckpointStoreTest, OpenRemovesWhatACrashLeft) {
  const fs::path root = TestRoot("store-crash");
  {
    CheckpointStore store(root / "ckpt");
    ASSERT_TRUE(store.Open().ok());
    Land(store, "w", "ckpt-1", "one");
    ASSERT_TRUE(store.Commit(Stored("ckpt-1", 1'000), {}).ok());
    Land(store, "w", "ckpt-2", "cut by a crash");
    fs::create_directories(root / "ckpt" / "w" / "ckpt-3" / "criu");  // no meta.json
  }
  CheckpointStore store(root / "ckpt");
  ASSERT_TRUE(store.Open().ok());
  EXPECT_FALSE(fs::exists(root / "ckpt" / "w" / ".in-ckpt-2"));
  EXPECT_FALSE(fs::exists(root / "ckpt" / "w" / "ckpt-3"));
  ASSERT_EQ(store.List("w").size(), 1u);
  EXPECT_EQ(store.List("w")[0].id, "ckpt-1");
  EXPECT_FALSE(StoredCheckpointFromJson("{\"workload\":\"w\"}").ok());
  EXPECT_FALSE(StoredCheckpointFromJson("[").ok());
  fs::remove_all(root);
}

// ---- a source agent, a keeper agent -------------------------------------------------

// The agent's listener in front of the keeper: every call naming an id is
// first put to the peer authorizer as coming from `peer` (AccessControl and
// the data channel's authorize do this with the TLS identity).
class AuthorizingTransport : public Transport {
 public:
  AuthorizingTransport(Transport& inner, PeerAuthorizer& peers, std::string peer)
      : inner_(inner), peers_(peers), peer_(std::move(peer)) {}
  StatusOr<PeerInfo> Hello(const std::string& t) override { return inner_.Hello(t); }
  Status Prepare(const std::string& t, const MigrationOffer& offer) override {
    KMX_RETURN_IF_ERROR(peers_.AllowPeer(peer_, offer.id));
    return inner_.Prepare(t, offer);
  }
  StatusOr<TransferStats> Send(const std::string& t, const std::string& id,
                               const std::vector<Section>& sections) override {
    KMX_RETURN_IF_ERROR(peers_.AllowPeer(peer_, id));
    return inner_.Send(t, id, sections);
  }
  StatusOr<RestoreReport> Restore(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(peers_.AllowPeer(peer_, id));
    return inner_.Restore(t, id);
  }
  StatusOr<TargetPhase> Commit(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(peers_.AllowPeer(peer_, id));
    return inner_.Commit(t, id);
  }
  StatusOr<TargetPhase> Abort(const std::string& t, const std::string& id) override {
    KMX_RETURN_IF_ERROR(peers_.AllowPeer(peer_, id));
    return inner_.Abort(t, id);
  }
  StatusOr<TargetPhase> Query(const std::string& t, const std::string& id) override {
    return inner_.Query(t, id);
  }

 private:
  Transport& inner_;
  PeerAuthorizer& peers_;
  std::string peer_;
};

// Standalone agents' migration ids are allowed; checkpoints are the keeper's.
class AllowAll : public PeerAuthorizer {
 public:
  Status AllowPeer(const std::string&, const std::string&) override { return Status::Ok(); }
};

struct TestNode {
  TestNode(const std::string& name, const fs::path& root, Clock& clock, Random& random,
           StateStore& state, const cluster::KeyLayout& keys)
      : runtime(name, (root / name / "layers").string()),
        engine(runtime, clock),
        peer_transport(nullptr),
        store((root / name / "checkpoints").string()) {
    runtime.AddImage(kImage);
    peer_transport.SetNotAnAgent();
    AgentOptions opts;
    opts.node = name;
    opts.advertise_url = "https://" + name + ":7700";
    opts.state_dir = (root / name / "state").string();
    opts.scratch_dir = (root / name / "scratch").string();
    agent = std::make_unique<Agent>(opts, runtime, engine, peer_transport, clock, random, nullptr);
    EXPECT_TRUE(agent->Start().ok());
    EXPECT_TRUE(store.Open().ok());
    CheckpointKeeperOptions ko;
    ko.node = name;
    ko.keys = keys;
    ko.scratch_dir = (root / name / "scratch" / "restores").string();
    ko.reserve_bytes = 0;
    keeper = std::make_unique<CheckpointKeeper>(ko, store, state, engine, clock);
    router = std::make_unique<CheckpointRouter>(agent->Target(), *keeper);
    peers = std::make_unique<CheckpointPeerAuthorizer>(&allow_all, *keeper);
  }
  FakeRuntime runtime;
  StopAndCopyEngine engine;
  FakeTransport peer_transport;  // this node's own migrations: none here
  CheckpointStore store;
  std::unique_ptr<Agent> agent;
  std::unique_ptr<CheckpointKeeper> keeper;
  std::unique_ptr<CheckpointRouter> router;
  AllowAll allow_all;
  std::unique_ptr<CheckpointPeerAuthorizer> peers;
};

class CheckpointFlowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TestRoot("flow");
    keys_.prefix = "/kmosix/";
    src_ = std::make_unique<TestNode>("node1", root_, clock_, random_, state_, keys_);
    keeper_ = std::make_unique<TestNode>("node2", root_, clock_, random_, state_, keys_);
    to_keeper_ = std::make_unique<FakeTransport>(keeper_->router.get());
    as_node1_ = std::make_unique<AuthorizingTransport>(*to_keeper_, *keeper_->peers, "node1");
    for (const char* n : {"node1", "node2"}) {
      ASSERT_TRUE(state_.Put(keys_.Node(n), DumpJson(cluster::NodeLoadToJson(Node(n)))).ok());
    }
    spec_.name = "w1";
    spec_.image = kImage;
    spec_.args = {"/bin/tick"};
    spec_.restart_policy = api::RestartPolicy::kFromCheckpoint;
    spec_.checkpoint_interval_seconds = 10;
    PutWorkload("node1", api::WorkloadPhase::kRunning, kEpoch);
    auto started = src_->agent->StartManaged(spec_, kEpoch, 0);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    CheckpointerOptions co;
    co.node = "node1";
    co.url = "https://node1:7700";
    co.keys = keys_;
    co.scratch_dir = (root_ / "node1" / "scratch" / "checkpoints").string();
    co.scratch_reserve = 0;
    co.fenced = [this] { return fenced_; };
    checkpointer_ = std::make_unique<Checkpointer>(co, *src_->agent, src_->runtime, *as_node1_,
                                                   state_, clock_, random_);
  }
  void TearDown() override {
    checkpointer_.reset();
    src_.reset();
    keeper_.reset();
    fs::remove_all(root_);
  }
  void PutWorkload(const std::string& node, api::WorkloadPhase phase, int64_t epoch,
                   const std::string& restore = "") {
    api::Workload w;
    w.spec = spec_;
    w.status.node = node;
    w.status.phase = phase;
    w.status.epoch = epoch;
    w.status.restore_checkpoint = restore;
    ASSERT_TRUE(state_.Put(keys_.Workload("w1"), DumpJson(cluster::WorkloadToJson(w))).ok());
  }
  std::optional<api::CheckpointRecord> Record() {
    auto got = state_.Get(keys_.Checkpoint("w1"));
    if (!got.ok() || !got->kv) return std::nullopt;
    auto c =
        cluster::ParseRecord<api::CheckpointRecord>(got->kv->value, cluster::CheckpointFromJson);
    return c.ok() ? std::optional(*c) : std::nullopt;
  }
  void Tick(int n) {
    for (int i = 0; i < n; ++i) src_->runtime.Tick("w1");
  }

  static constexpr int64_t kEpoch = 4242;
  fs::path root_;
  FakeClock clock_;
  SystemRandom random_;
  FakeStateStore state_{clock_};
  cluster::KeyLayout keys_;
  api::WorkloadSpec spec_;
  bool fenced_ = false;
  std::unique_ptr<TestNode> src_, keeper_;
  std::unique_ptr<FakeTransport> to_keeper_;
  std::unique_ptr<AuthorizingTransport> as_node1_;
  std::unique_ptr<Checkpointer> checkpointer_;
};

TEST_F(CheckpointFlowTest, TakenWhileRunningKeptByTheKeeperRecordedAndRestoredThere) {
  Tick(5);
  auto rec = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(rec->keeper, "node2");
  EXPECT_EQ(rec->source, "node1");
  EXPECT_EQ(rec->epoch, kEpoch);
  EXPECT_GT(rec->bytes, 0u);
  EXPECT_EQ(Record(), *rec) << "recorded in etcd as checkpoints/w1";
  // The workload was resumed and goes on.
  EXPECT_EQ(src_->runtime.State("w1"), TaskState::kRunning);
  Tick(3);
  EXPECT_EQ(src_->runtime.Counter("w1"), 8);
  EXPECT_EQ(src_->runtime.Calls("Pause"), 1);
  EXPECT_EQ(src_->runtime.Calls("Resume"), 1);
  // Nothing of it left in the source's scratch.
  EXPECT_TRUE(fs::is_empty(root_ / "node1" / "scratch" / "checkpoints"));
  ASSERT_EQ(keeper_->store.List("w1").size(), 1u);
  EXPECT_EQ(keeper_->store.List("w1")[0].epoch, kEpoch);

  // node1 is lost; the controller places w1 on its keeper with the checkpoint.
  PutWorkload("node2", api::WorkloadPhase::kScheduled, kEpoch + 10, rec->id);
  auto wrec = state_.Get(keys_.Workload("w1"));
  auto w = cluster::ParseRecord<api::Workload>(wrec->kv->value, cluster::WorkloadFromJson);
  ASSERT_TRUE(w.ok());
  std::string note;
  auto started = keeper_->keeper->StartFromCheckpoint(*keeper_->agent, *w, &note);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  EXPECT_EQ(keeper_->runtime.Counter("w1"), 5) << "continues from the checkpoint's counter";
  EXPECT_EQ(keeper_->runtime.State("w1"), TaskState::kRunning);
  EXPECT_NE(note.find("restored on node2 from checkpoint " + rec->id), std::string::npos) << note;
  EXPECT_EQ(started->epoch, kEpoch + 10);
  EXPECT_TRUE(started->managed);
}

TEST_F(CheckpointFlowTest, TheLinkStartsAScheduledWorkloadFromItsCheckpointAndClearsIt) {
  Tick(6);
  auto rec = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  PutWorkload("node2", api::WorkloadPhase::kScheduled, kEpoch + 10, rec->id);
  testing::FakeLoadSampler sampler;
  ClusterLinkOptions lo;
  lo.node = "node2";
  lo.url = "https://node2:7700";
  lo.keys = keys_;
  lo.start_from_checkpoint = [this](const api::Workload& w, std::string* note) {
    return keeper_->keeper->StartFromCheckpoint(*keeper_->agent, w, note);
  };
  ClusterLink link(lo, *keeper_->agent, state_, sampler, clock_, random_);
  ASSERT_TRUE(link.Reconcile("w/w1").ok());
  auto got = state_.Get(keys_.Workload("w1"));
  auto w = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->status.phase, api::WorkloadPhase::kRunning);
  EXPECT_EQ(w->status.restore_checkpoint, "") << "cleared with the Running write";
  EXPECT_NE(w->status.message.find("restored on node2 from checkpoint " + rec->id),
            std::string::npos)
      << w->status.message;
  EXPECT_EQ(keeper_->runtime.Counter("w1"), 6);
  // Again: nothing more happens (the copy runs, the record says so).
  ASSERT_TRUE(link.Reconcile("w/w1").ok());
  EXPECT_EQ(keeper_->keeper->counts().restored, 1u);
}

TEST_F(CheckpointFlowTest, ALinkThatKeepsNoCheckpointsStartsFromTheImageAndSaysSo) {
  PutWorkload("node2", api::WorkloadPhase::kScheduled, kEpoch + 10, "ckpt-00000000000000dd");
  testing::FakeLoadSampler sampler;
  ClusterLinkOptions lo;
  lo.node = "node2";
  lo.url = "https://node2:7700";
  lo.keys = keys_;
  ClusterLink link(lo, *keeper_->agent, state_, sampler, clock_, random_);
  ASSERT_TRUE(link.Reconcile("w/w1").ok());
  auto got = state_.Get(keys_.Workload("w1"));
  auto w = cluster::ParseRecord<api::Workload>(got->kv->value, cluster::WorkloadFromJson);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->status.phase, api::WorkloadPhase::kRunning);
  EXPECT_EQ(w->status.restore_checkpoint, "");
  EXPECT_NE(w->status.message.find("not restored"), std::string::npos) << w->status.message;
  EXPECT_EQ(keeper_->runtime.Counter("w1"), 0);
}

// Calls go to the transport registered for their URL.
class UrlTransport : public Transport {
 public:
  void Add(const std::string& url, Transport* t) { by_url_[url] = t; }
  StatusOr<PeerInfo> Hello(const std::string& u) override { return To(u).Hello(u); }
  Status Prepare(const std::string& u, const MigrationOffer& o) override {
    return To(u).Prepare(u, o);
  }
  StatusOr<TransferStats> Send(const std::string& u, const std::string& id,
                               const std::vector<Section>& s) override {
    return To(u).Send(u, id, s);
  }
  StatusOr<RestoreReport> Restore(const std::string& u, const std::string& id) override {
    return To(u).Restore(u, id);
  }
  StatusOr<TargetPhase> Commit(const std::string& u, const std::string& id) override {
    return To(u).Commit(u, id);
  }
  StatusOr<TargetPhase> Abort(const std::string& u, const std::string& id) override {
    return To(u).Abort(u, id);
  }
  StatusOr<TargetPhase> Query(const std::string& u, const std::string& id) override {
    return To(u).Query(u, id);
  }

 private:
  Transport& To(const std::string& u) { return *by_url_.at(u); }
  std::map<std::string, Transport*> by_url_;
};

TEST_F(CheckpointFlowTest, AKeeperThatRefusesHandsTheCheckpointToTheNext) {
  TestNode node3("node3", root_, clock_, random_, state_, keys_);
  ASSERT_TRUE(
      state_.Put(keys_.Node("node3"), DumpJson(cluster::NodeLoadToJson(Node("node3")))).ok());
  FakeTransport to_node3(node3.router.get());
  AuthorizingTransport as_node1_to_3(to_node3, *node3.peers, "node1");
  UrlTransport by_url;
  by_url.Add("https://node2:7700", as_node1_.get());
  by_url.Add("https://node3:7700", &as_node1_to_3);
  CheckpointerOptions co;
  co.node = "node1";
  co.url = "https://node1:7700";
  co.keys = keys_;
  co.scratch_dir = (root_ / "node1" / "scratch" / "checkpoints").string();
  co.scratch_reserve = 0;
  Checkpointer cp(co, *src_->agent, src_->runtime, by_url, state_, clock_, random_);

  const std::vector<std::string> ranked =
      RankKeepers("w1", "node1", {Node("node1"), Node("node2"), Node("node3")}, kImage);
  ASSERT_EQ(ranked.size(), 2u);
  EXPECT_EQ(ranked.front(), ChooseKeeper("w1", "node1", {Node("node2"), Node("node3")}, kImage));
  // The first keeper is busy.
  (ranked.front() == "node2" ? *to_keeper_ : to_node3).Fail("Prepare", RetryError("busy"));
  auto rec = cp.TakeOne("w1");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(rec->keeper, ranked.back());
  EXPECT_EQ(src_->runtime.Calls("Pause"), 1) << "one capture, offered twice";
  EXPECT_EQ(Record()->keeper, ranked.back());
}

TEST_F(CheckpointFlowTest, ANewCheckpointReplacesTheOldOnceRecorded) {
  Tick(2);
  auto first = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  Tick(2);
  auto second = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_NE(first->id, second->id);
  EXPECT_EQ(Record()->id, second->id);
  // The first was still recorded when the second landed, so it stayed; the
  // clean-up drops it once past the grace.
  EXPECT_EQ(keeper_->store.List("w1").size(), 2u);
  clock_.Advance(std::chrono::minutes(3));
  EXPECT_EQ(keeper_->keeper->Collect(), 1);
  ASSERT_EQ(keeper_->store.List("w1").size(), 1u);
  EXPECT_EQ(keeper_->store.List("w1")[0].id, second->id);
  // A third one: the recorded second is protected at commit, then collected.
  auto third = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(third.ok());
  clock_.Advance(std::chrono::minutes(3));
  keeper_->keeper->Collect();
  ASSERT_EQ(keeper_->store.List("w1").size(), 1u);
  EXPECT_EQ(keeper_->store.List("w1")[0].id, third->id);
}

TEST_F(CheckpointFlowTest, SkippedWhenFencedNotOwnedOrMigratingAndNeverPaused) {
  fenced_ = true;
  EXPECT_EQ(checkpointer_->TakeOne("w1").status().code(), Code::kConflict);
  fenced_ = false;
  PutWorkload("node3", api::WorkloadPhase::kRunning, kEpoch + 1);
  EXPECT_EQ(checkpointer_->TakeOne("w1").status().code(), Code::kConflict);
  PutWorkload("node1", api::WorkloadPhase::kMigrating, kEpoch);
  EXPECT_EQ(checkpointer_->TakeOne("w1").status().code(), Code::kConflict);
  // etcd names this node at another epoch than the local copy's.
  PutWorkload("node1", api::WorkloadPhase::kRunning, kEpoch + 5);
  EXPECT_EQ(checkpointer_->TakeOne("w1").status().code(), Code::kConflict);
  EXPECT_EQ(src_->runtime.Calls("Pause"), 0);
  EXPECT_EQ(checkpointer_->counts().skipped, 4u);
  EXPECT_FALSE(Record().has_value());
}

TEST_F(CheckpointFlowTest, AFailedStreamLeavesTheWorkloadRunningAndNothingRecorded) {
  to_keeper_->CutTransfer();
  Tick(1);
  auto taken = checkpointer_->TakeOne("w1");
  EXPECT_FALSE(taken.ok());
  EXPECT_EQ(src_->runtime.State("w1"), TaskState::kRunning);
  EXPECT_FALSE(Record().has_value());
  EXPECT_EQ(checkpointer_->counts().failed, 1u);
  EXPECT_TRUE(keeper_->store.List("w1").empty());
  // A keeper that answers as another node is not used.
  to_keeper_->Heal();
  ASSERT_TRUE(
      state_.Put(keys_.Node("node2"), DumpJson(cluster::NodeLoadToJson(Node("node2", "no CRIU"))))
          .ok());
  EXPECT_EQ(checkpointer_->TakeOne("w1").status().code(), Code::kRetry) << "no keeper left";
  EXPECT_EQ(src_->runtime.State("w1"), TaskState::kRunning);
}

TEST_F(CheckpointFlowTest, TheKeeperTakesACheckpointOnlyFromTheOwnerEtcdNames) {
  MigrationOffer offer;
  offer.id = "ckpt-0123456789abcdef";
  offer.source_node = "node3";
  offer.source_url = "https://node3:7700";
  offer.spec = ContainerSpecFor(spec_);
  offer.stream = {10, 1 << 20, 100};
  // node3 is not the owner.
  ASSERT_TRUE(keeper_->peers->AllowPeer("node3", offer.id).ok());
  EXPECT_EQ(keeper_->router->Prepare(offer).code(), Code::kPermissionDenied);
  // An id node3 used cannot be taken over by node1, nor claimed in its name.
  EXPECT_EQ(keeper_->peers->AllowPeer("node1", offer.id).code(), Code::kPermissionDenied);
  offer.source_node = "node1";
  EXPECT_EQ(keeper_->router->Prepare(offer).code(), Code::kPermissionDenied);
  // The owner with a fresh id: accepted, unless the workload is not
  // FromCheckpoint or the offer declares no limits.
  offer.id = "ckpt-00000000000000aa";
  ASSERT_TRUE(keeper_->peers->AllowPeer("node1", offer.id).ok());
  offer.stream = {};
  EXPECT_EQ(keeper_->router->Prepare(offer).code(), Code::kInvalid);
  offer.stream = {10, 1 << 20, 100};
  EXPECT_TRUE(keeper_->router->Prepare(offer).ok());
  EXPECT_EQ(keeper_->router->Query(offer.id).value(), TargetPhase::kPrepared);
  // Restore or Commit of a checkpoint id: never.
  EXPECT_EQ(keeper_->router->Restore(offer.id).status().code(), Code::kInvalid);
  EXPECT_EQ(keeper_->router->Commit(offer.id).status().code(), Code::kInvalid);
  // Never streamed: dropped after the idle timeout.
  clock_.Advance(std::chrono::minutes(3));
  keeper_->keeper->ExpireIdle();
  EXPECT_EQ(keeper_->router->Query(offer.id).value(), TargetPhase::kUnknown);
  EXPECT_TRUE(fs::is_empty(root_ / "node2" / "checkpoints") ||
              !fs::exists(root_ / "node2" / "checkpoints" / "w1"));
  // Not FromCheckpoint any more.
  spec_.restart_policy = api::RestartPolicy::kFromImage;
  spec_.checkpoint_interval_seconds = 0;
  PutWorkload("node1", api::WorkloadPhase::kRunning, kEpoch);
  offer.id = "ckpt-00000000000000bb";
  ASSERT_TRUE(keeper_->peers->AllowPeer("node1", offer.id).ok());
  EXPECT_EQ(keeper_->router->Prepare(offer).code(), Code::kPermissionDenied);
  // Migration ids still go to the migration target.
  EXPECT_EQ(keeper_->router->Query("m-1").value(), TargetPhase::kUnknown);
}

TEST_F(CheckpointFlowTest, AGoneWorkloadLosesItsCheckpointsAndTheirRecord) {
  auto rec = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  ASSERT_TRUE(state_.Delete(keys_.Workload("w1")).ok());
  EXPECT_EQ(keeper_->keeper->Collect(), 1);
  EXPECT_TRUE(keeper_->store.List("w1").empty());
  EXPECT_FALSE(Record().has_value()) << "the keeper deletes a record that outlived its workload";
}

TEST_F(CheckpointFlowTest, AMissingOrBrokenCheckpointStartsFromTheImageAndSaysSo) {
  PutWorkload("node2", api::WorkloadPhase::kScheduled, kEpoch + 10, "ckpt-00000000000000cc");
  auto wrec = state_.Get(keys_.Workload("w1"));
  auto w = cluster::ParseRecord<api::Workload>(wrec->kv->value, cluster::WorkloadFromJson);
  ASSERT_TRUE(w.ok());
  std::string note;
  auto started = keeper_->keeper->StartFromCheckpoint(*keeper_->agent, *w, &note);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  EXPECT_EQ(keeper_->runtime.Counter("w1"), 0) << "from the image";
  EXPECT_NE(note.find("is not kept on node2: started from the image"), std::string::npos) << note;
  ASSERT_TRUE(keeper_->agent->DeleteManaged("w1").ok());

  // A checkpoint whose images are damaged: the restore fails, the image runs.
  PutWorkload("node1", api::WorkloadPhase::kRunning, kEpoch);
  Tick(4);
  auto rec = checkpointer_->TakeOne("w1");
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  auto stored = keeper_->store.Find("w1", rec->id);
  ASSERT_TRUE(stored.has_value());
  fs::remove(stored->dir + "/criu/state");
  PutWorkload("node2", api::WorkloadPhase::kScheduled, kEpoch + 20, rec->id);
  wrec = state_.Get(keys_.Workload("w1"));
  w = cluster::ParseRecord<api::Workload>(wrec->kv->value, cluster::WorkloadFromJson);
  started = keeper_->keeper->StartFromCheckpoint(*keeper_->agent, *w, &note);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  EXPECT_EQ(keeper_->runtime.Counter("w1"), 0);
  EXPECT_EQ(keeper_->runtime.State("w1"), TaskState::kRunning);
  EXPECT_NE(note.find("could not be restored"), std::string::npos) << note;
}

TEST_F(CheckpointFlowTest, TheScheduleTakesOneAnIntervalAfterTheWorkloadWasFirstSeen) {
  checkpointer_->RunOnce();
  EXPECT_EQ(checkpointer_->counts().ok, 0u);
  auto due = checkpointer_->NextDueMs("w1");
  ASSERT_TRUE(due.has_value());
  EXPECT_EQ(*due, clock_.WallMillis() + 10'000);
  clock_.Advance(std::chrono::seconds(10));
  checkpointer_->RunOnce();
  EXPECT_EQ(checkpointer_->counts().ok, 1u);
  EXPECT_EQ(checkpointer_->NextDueMs("w1"), clock_.WallMillis() + 10'000);
  clock_.Advance(std::chrono::seconds(5));
  checkpointer_->RunOnce();
  EXPECT_EQ(checkpointer_->counts().ok, 1u);
  // A failure is tried again at the next interval, not at once.
  to_keeper_->Down(true);
  clock_.Advance(std::chrono::seconds(5));
  checkpointer_->RunOnce();
  EXPECT_EQ(checkpointer_->counts().failed, 1u);
  checkpointer_->RunOnce();
  EXPECT_EQ(checkpointer_->counts().failed, 1u);
  to_keeper_->Heal();
  clock_.Advance(std::chrono::seconds(10));
  checkpointer_->RunOnce();
  EXPECT_EQ(checkpointer_->counts().ok, 2u);
}

}  // namespace
}  // namespace kmosix::agent
