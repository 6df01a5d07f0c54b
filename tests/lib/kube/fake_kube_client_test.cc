// Tests of the FakeClient (tests/fakes/fake_kube_client.h): the API-server
// behaviours the bridge's and the Informer's tests rely on.
#include "fakes/fake_kube_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace kmosix::kube {
namespace {

using nlohmann::json;

json Obj(const std::string& name, json spec = {{"x", 1}}) {
  return {{"metadata", {{"name", name}}}, {"spec", spec}};
}

// Collects the events of one watch (until `n` arrived or the watch ended).
struct Collected {
  Status status;
  std::vector<WatchEvent> events;
};
Collected WatchN(FakeClient& c, const Resource& r, const std::string& ns, const std::string& rv,
                 size_t n, const ListOptions& o = {}) {
  Collected out;
  std::atomic<bool> stop{false};
  out.status = c.Watch(
      r, ns, rv, o,
      [&](const WatchEvent& e) {
        out.events.push_back(e);
        return out.events.size() < n;
      },
      stop);
  return out;
}

ListOptions Labels(const std::string& s) {
  ListOptions o;
  o.label_selector = s;
  return o;
}
ListOptions Fields(const std::string& s) {
  ListOptions o;
  o.field_selector = s;
  return o;
}

std::string Rv(const json& o) { return o["metadata"]["resourceVersion"].get<std::string>(); }

TEST(FakeKubeClient, CreateSetsServerFieldsAndDropsStatus) {
  FakeClient c;
  json in = Obj("a");
  in["status"] = {{"phase", "X"}};
  auto out = c.Create(Migrations(), "ns", in);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ((*out)["metadata"]["namespace"], "ns");
  EXPECT_FALSE((*out)["metadata"]["uid"].get<std::string>().empty());
  EXPECT_TRUE((*out)["metadata"].contains("creationTimestamp"));
  EXPECT_EQ((*out)["metadata"]["generation"], 1);
  EXPECT_EQ((*out)["kind"], "Migration");
  EXPECT_EQ((*out)["apiVersion"], "kmosix.io/v1alpha1");
  EXPECT_FALSE(out->contains("status"));
  EXPECT_EQ(c.Create(Migrations(), "ns", Obj("a")).status().code(), Code::kConflict);
  EXPECT_EQ(c.Get(Migrations(), "other", "a").status().code(), Code::kNotFound);
}

TEST(FakeKubeClient, GenerationBumpsOnlyOnSpecChange) {
  FakeClient c;
  auto a = c.Create(Migrations(), "ns", Obj("a"));
  ASSERT_TRUE(a.ok());
  json u = *a;
  u["metadata"]["labels"] = {{"k", "v"}};
  auto b = c.Update(Migrations(), "ns", u);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ((*b)["metadata"]["generation"], 1);
  EXPECT_NE(Rv(*b), Rv(*a));
  json s = *b;
  s["status"] = {{"phase", "Running"}};
  auto st = c.UpdateStatus(Migrations(), "ns", s);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["metadata"]["generation"], 1);
  json sp = *st;
  sp["spec"]["x"] = 2;
  auto d = c.Update(Migrations(), "ns", sp);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)["metadata"]["generation"], 2);
  EXPECT_EQ((*d)["status"]["phase"], "Running");  // Update keeps the status
  // A no-op update keeps the version.
  auto e = c.Update(Migrations(), "ns", *d);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(Rv(*e), Rv(*d));
}

TEST(FakeKubeClient, StaleResourceVersionConflicts) {
  FakeClient c;
  auto a = c.Create(Migrations(), "ns", Obj("a"));
  ASSERT_TRUE(a.ok());
  json s = *a;
  s["status"] = {{"phase", "P1"}};
  ASSERT_TRUE(c.UpdateStatus(Migrations(), "ns", s).ok());
  s["status"] = {{"phase", "P2"}};  // still the old version
  EXPECT_EQ(c.UpdateStatus(Migrations(), "ns", s).status().code(), Code::kConflict);
  EXPECT_EQ(c.Update(Migrations(), "ns", s).status().code(), Code::kConflict);
  json p = {{"metadata", {{"resourceVersion", Rv(*a)}}}, {"spec", {{"y", 1}}}};
  EXPECT_EQ(c.MergePatch(Migrations(), "ns", "a", p).status().code(), Code::kConflict);
  json no_rv = *a;
  no_rv["metadata"].erase("resourceVersion");
  EXPECT_EQ(c.Update(Migrations(), "ns", no_rv).status().code(), Code::kInvalid);
  // UpdateStatus changes only the status.
  auto cur = c.Get(Migrations(), "ns", "a");
  ASSERT_TRUE(cur.ok());
  json t = *cur;
  t["spec"]["x"] = 99;
  t["status"] = {{"phase", "P3"}};
  auto out = c.UpdateStatus(Migrations(), "ns", t);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)["spec"]["x"], 1);
  EXPECT_EQ((*out)["status"]["phase"], "P3");
}

TEST(FakeKubeClient, MergePatchWithoutVersionApplies) {
  FakeClient c;
  ASSERT_TRUE(c.Create(Migrations(), "ns", Obj("a")).ok());
  auto out = c.MergePatch(Migrations(), "ns", "a",
                          {{"spec", {{"y", 2}}}, {"status", {{"phase", "ignored"}}}});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ((*out)["spec"]["x"], 1);
  EXPECT_EQ((*out)["spec"]["y"], 2);
  EXPECT_FALSE(out->contains("status"));
  EXPECT_EQ((*out)["metadata"]["generation"], 2);
}

TEST(FakeKubeClient, FinalizersHoldTheObjectUntilRemoved) {
  FakeClient c;
  json o = Obj("a");
  o["metadata"]["finalizers"] = {"kmosix.io/cleanup"};
  auto a = c.Create(Migrations(), "ns", o);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(c.Delete(Migrations(), "ns", "a", "wrong-uid").code(), Code::kConflict);
  ASSERT_TRUE(c.Delete(Migrations(), "ns", "a", (*a)["metadata"]["uid"]).ok());
  auto t = c.Get(Migrations(), "ns", "a");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE((*t)["metadata"].contains("deletionTimestamp"));
  auto ev = WatchN(c, Migrations(), "ns", Rv(*a), 1);
  ASSERT_EQ(ev.events.size(), 1u);
  EXPECT_EQ(ev.events[0].type, EventType::kModified);
  json p = {{"metadata", {{"finalizers", nullptr}}}};
  ASSERT_TRUE(c.MergePatch(Migrations(), "ns", "a", p).ok());
  EXPECT_EQ(c.Get(Migrations(), "ns", "a").status().code(), Code::kNotFound);
  auto ev2 = WatchN(c, Migrations(), "ns", Rv(*t), 1);
  ASSERT_EQ(ev2.events.size(), 1u);
  EXPECT_EQ(ev2.events[0].type, EventType::kDeleted);
  EXPECT_EQ(c.Delete(Migrations(), "ns", "a", "").code(), Code::kNotFound);
}

TEST(FakeKubeClient, ListFiltersByNamespaceAndLabels) {
  FakeClient c;
  json a = Obj("a"), b = Obj("b"), d = Obj("d");
  a["metadata"]["labels"] = {{"app", "x"}, {"tier", "1"}};
  b["metadata"]["labels"] = {{"app", "x"}};
  ASSERT_TRUE(c.Create(Migrations(), "n1", a).ok());
  ASSERT_TRUE(c.Create(Migrations(), "n2", b).ok());
  ASSERT_TRUE(c.Create(Migrations(), "n2", d).ok());
  ASSERT_TRUE(c.Create(MigrationPolicies(), "", Obj("p")).ok());
  EXPECT_EQ(c.List(Migrations(), "", {})->items.size(), 3u);
  EXPECT_EQ(c.List(Migrations(), "n2", {})->items.size(), 2u);
  EXPECT_EQ(c.List(Migrations(), "", Labels("app=x"))->items.size(), 2u);
  EXPECT_EQ(c.List(Migrations(), "", Labels("app=x,tier=1"))->items.size(), 1u);
  EXPECT_EQ(c.List(Migrations(), "", Labels("app!=x"))->items.size(), 1u);
  EXPECT_EQ(c.List(Migrations(), "", Fields("metadata.name=d"))->items.size(), 1u);
  EXPECT_EQ(c.List(Migrations(), "", Labels("a=b=c")).status().code(), Code::kInvalid);
  auto p = c.List(MigrationPolicies(), "", {});
  ASSERT_EQ(p->items.size(), 1u);
  EXPECT_FALSE(p->items[0]["metadata"].contains("namespace"));
  EXPECT_EQ(p->resource_version, c.ResourceVersion());
}

TEST(FakeKubeClient, WatchReplaysFromVersionAndGoneAfterCompact) {
  FakeClient c;
  auto l = c.List(Migrations(), "", {});
  ASSERT_TRUE(l.ok());
  ASSERT_TRUE(c.Create(Migrations(), "ns", Obj("a")).ok());
  ASSERT_TRUE(c.Create(Migrations(), "ns", Obj("b")).ok());
  ASSERT_TRUE(c.Create(Migrations(), "other", Obj("c")).ok());
  auto ev = WatchN(c, Migrations(), "ns", l->resource_version, 2);
  ASSERT_TRUE(ev.status.ok());
  ASSERT_EQ(ev.events.size(), 2u);
  EXPECT_EQ(ev.events[0].object["metadata"]["name"], "a");
  EXPECT_EQ(ev.events[1].object["metadata"]["name"], "b");
  EXPECT_EQ(c.Watch(
                 Migrations(), "", "", {}, [](const WatchEvent&) { return false; },
                 std::atomic<bool>{false})
                .code(),
            Code::kInvalid);
  c.Compact();
  auto gone = WatchN(c, Migrations(), "ns", l->resource_version, 1);
  EXPECT_EQ(gone.status.code(), Code::kConflict);
  // From "0": ADDED for what exists.
  auto zero = WatchN(c, Migrations(), "", "0", 3);
  ASSERT_EQ(zero.events.size(), 3u);
  EXPECT_EQ(zero.events[0].type, EventType::kAdded);
}

TEST(FakeKubeClient, BoundedHistoryGoesGone) {
  FakeClient c(FakeClient::Options{.history_limit = 2});
  std::string rv0 = c.ResourceVersion();
  for (auto n : {"a", "b", "c"}) ASSERT_TRUE(c.Create(Migrations(), "ns", Obj(n)).ok());
  EXPECT_EQ(WatchN(c, Migrations(), "ns", rv0, 1).status.code(), Code::kConflict);
}

TEST(FakeKubeClient, LiveEventsBookmarksAndEnd) {
  FakeClient c;
  std::string rv0 = c.ResourceVersion();
  std::vector<WatchEvent> got;
  std::atomic<bool> stop{false};
  Status st;
  std::thread t([&] {
    st = c.Watch(
        Migrations(), "ns", rv0, {},
        [&](const WatchEvent& e) {
          got.push_back(e);
          return true;
        },
        stop);
  });
  while (c.ActiveWatches() == 0) std::this_thread::yield();
  ASSERT_TRUE(c.Create(Migrations(), "ns", Obj("a")).ok());
  c.SendBookmark();
  c.EndWatches(RetryError("server went away"));
  t.join();
  EXPECT_EQ(st.code(), Code::kRetry);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, EventType::kAdded);
  EXPECT_EQ(got[1].type, EventType::kBookmark);
  EXPECT_EQ(got[1].object["metadata"]["resourceVersion"], c.ResourceVersion());
}

TEST(FakeKubeClient, StopEndsTheWatch) {
  FakeClient c;
  std::atomic<bool> stop{false};
  Status st = FailedError("not run");
  std::thread t([&] {
    st = c.Watch(
        Migrations(), "ns", c.ResourceVersion(), {}, [](const WatchEvent&) { return true; }, stop);
  });
  while (c.ActiveWatches() == 0) std::this_thread::yield();
  stop = true;
  t.join();
  EXPECT_TRUE(st.ok());
}

TEST(FakeKubeClient, LabelSelectedWatchSeesObjectsLeaveAndEnter) {
  FakeClient c;
  std::string rv0 = c.ResourceVersion();
  json a = Obj("a");
  a["metadata"]["labels"] = {{"app", "x"}};
  auto made = c.Create(Migrations(), "ns", a);
  ASSERT_TRUE(made.ok());
  json u = *made;
  u["metadata"]["labels"] = {{"app", "y"}};
  ASSERT_TRUE(c.Update(Migrations(), "ns", u).ok());
  auto ev = WatchN(c, Migrations(), "ns", rv0, 2, Labels("app=x"));
  ASSERT_EQ(ev.events.size(), 2u);
  EXPECT_EQ(ev.events[0].type, EventType::kAdded);
  EXPECT_EQ(ev.events[1].type, EventType::kDeleted);
}

TEST(FakeKubeClient, FailNextAndCalls) {
  FakeClient c;
  c.FailNext("Get", RetryError("injected"));
  EXPECT_EQ(c.Get(Migrations(), "ns", "a").status().code(), Code::kRetry);
  EXPECT_EQ(c.Get(Migrations(), "ns", "a").status().code(), Code::kNotFound);
  EXPECT_EQ(c.Calls("Get"), 2);
  EXPECT_EQ(c.Calls("UpdateStatus"), 0);
}

}  // namespace
}  // namespace kmosix::kube
