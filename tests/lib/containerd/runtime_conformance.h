// Conformance suite for ContainerRuntime implementations (the contract in
// kmosix/runtime.h): create/start/inspect/list, pause/resume, idempotent
// delete, not-found codes, name conflicts.
//
// Header-only. Use:
//   #include "lib/containerd/runtime_conformance.h"   (tests/ on the include path)
//   // at global scope, once per binary:
//   KMX_INSTANTIATE_RUNTIME_CONFORMANCE(Fake, kmosix::testing::RuntimeConformanceParam{
//       "fake", [] { return std::make_unique<FakeRuntime>(); }, "busybox:latest"});
//
// The image's default command must keep running (the suite starts tasks with
// empty args). A param may name a skip reason (e.g. no containerd here): the
// cases then GTEST_SKIP with it, loudly.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>

#include "kmosix/runtime.h"
#include "kmosix/status.h"

namespace kmosix::testing {

struct RuntimeConformanceParam {
  std::string label;  // test name suffix: [A-Za-z0-9_]
  std::function<std::unique_ptr<ContainerRuntime>()> factory;
  std::string image;  // present in the runtime's store, long-running default command
  // Non-empty: why the suite cannot run for this param (cases GTEST_SKIP).
  std::function<std::string()> skip_reason = nullptr;
  // Directory for log files (empty: no log_path in specs).
  std::function<std::string()> log_dir = nullptr;
};

// Keeps gtest/ctest names readable (the default prints the param's bytes).
inline void PrintTo(const RuntimeConformanceParam& p, std::ostream* os) { *os << p.label; }

inline std::string RuntimeConformanceName(
    const ::testing::TestParamInfo<RuntimeConformanceParam>& info) {
  return info.param.label;
}

class RuntimeConformance : public ::testing::TestWithParam<RuntimeConformanceParam> {
 protected:
  void SetUp() override {
    const auto& p = GetParam();
    if (p.skip_reason) {
      std::string why = p.skip_reason();
      if (!why.empty())
        GTEST_SKIP() << "RUNTIME CONFORMANCE SKIPPED for " << p.label << ": " << why;
    }
    rt_ = p.factory();
    ASSERT_NE(rt_, nullptr) << "factory returned null";
  }

  void TearDown() override {
    if (!rt_) return;
    for (const auto& n : created_) (void)rt_->Delete(n);
  }

  std::string UniqueName(const std::string& stem) {
    static std::atomic<int> counter{0};
    std::string n = "conf-" + stem + "-" + std::to_string(counter.fetch_add(1));
    std::replace(n.begin(), n.end(), '_', '-');
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
    return n;
  }

  ContainerSpec Spec(const std::string& name) {
    ContainerSpec s;
    s.name = name;
    s.image = GetParam().image;
    if (GetParam().log_dir) s.log_path = GetParam().log_dir() + "/" + name + ".log";
    s.labels["test"] = "conformance";
    return s;
  }

  // Creates and remembers for cleanup.
  ::testing::AssertionResult Create(const std::string& name) {
    created_.push_back(name);
    Status s = rt_->CreateContainer(Spec(name));
    if (!s.ok()) return ::testing::AssertionFailure() << "CreateContainer: " << s.ToString();
    return ::testing::AssertionSuccess();
  }

  ::testing::AssertionResult CreateAndStart(const std::string& name) {
    auto r = Create(name);
    if (!r) return r;
    Status s = rt_->StartTask(name);
    if (!s.ok()) return ::testing::AssertionFailure() << "StartTask: " << s.ToString();
    return ::testing::AssertionSuccess();
  }

  TaskState StateOf(const std::string& name) {
    auto info = rt_->Inspect(name);
    if (!info.ok()) {
      ADD_FAILURE() << "Inspect(" << name << "): " << info.status().ToString();
      return TaskState::kUnknown;
    }
    return info->state;
  }

  std::unique_ptr<ContainerRuntime> rt_;
  std::vector<std::string> created_;
};

TEST_P(RuntimeConformance, ListImagesNamesWhatImageExistsFinds) {
  auto images = rt_->ListImages();
  ASSERT_TRUE(images.ok()) << images.status().ToString();
  EXPECT_TRUE(std::is_sorted(images->begin(), images->end()));
  EXPECT_NE(std::find(images->begin(), images->end(), GetParam().image), images->end());
  for (const auto& name : *images) EXPECT_TRUE(rt_->ImageExists(name).ok()) << name;
}

TEST_P(RuntimeConformance, ImageExists) {
  EXPECT_TRUE(rt_->ImageExists(GetParam().image).ok());
  EXPECT_EQ(rt_->ImageExists("kmosix.invalid/no-such-image:never").code(), Code::kNotFound);
}

TEST_P(RuntimeConformance, CreateStartInspectListDelete) {
  std::string n = UniqueName("lifecycle");
  ASSERT_TRUE(Create(n));
  EXPECT_EQ(StateOf(n), TaskState::kNone) << "a created container has no task";
  auto list = rt_->ListContainers();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_NE(std::find(list->begin(), list->end(), n), list->end());

  ASSERT_TRUE(rt_->StartTask(n).ok());
  auto info = rt_->Inspect(n);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->state, TaskState::kRunning);
  EXPECT_GT(info->pid, 0u);

  ASSERT_TRUE(rt_->Delete(n).ok());
  EXPECT_EQ(rt_->Inspect(n).status().code(), Code::kNotFound);
  list = rt_->ListContainers();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(std::find(list->begin(), list->end(), n), list->end());
}

TEST_P(RuntimeConformance, DeleteIsIdempotent) {
  std::string n = UniqueName("delete");
  EXPECT_TRUE(rt_->Delete(n).ok()) << "deleting an unknown container is ok";
  ASSERT_TRUE(CreateAndStart(n));
  Status s = rt_->Delete(n);
  EXPECT_TRUE(s.ok()) << s.ToString();
  s = rt_->Delete(n);
  EXPECT_TRUE(s.ok()) << "second delete: " << s.ToString();
  // A container without a task deletes too.
  std::string m = UniqueName("delete-notask");
  ASSERT_TRUE(Create(m));
  EXPECT_TRUE(rt_->Delete(m).ok());
  EXPECT_EQ(rt_->Inspect(m).status().code(), Code::kNotFound);
}

TEST_P(RuntimeConformance, DeletePausedTask) {
  std::string n = UniqueName("delete-paused");
  ASSERT_TRUE(CreateAndStart(n));
  ASSERT_TRUE(rt_->Pause(n).ok());
  Status s = rt_->Delete(n);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(rt_->Inspect(n).status().code(), Code::kNotFound);
}

TEST_P(RuntimeConformance, UnknownContainerIsNotFound) {
  std::string n = UniqueName("missing");
  EXPECT_EQ(rt_->Inspect(n).status().code(), Code::kNotFound);
  EXPECT_EQ(rt_->StartTask(n).code(), Code::kNotFound);
  EXPECT_EQ(rt_->Pause(n).code(), Code::kNotFound);
  EXPECT_EQ(rt_->Resume(n).code(), Code::kNotFound);
  EXPECT_EQ(rt_->Continue(n).code(), Code::kNotFound);
  EXPECT_EQ(rt_->WritableLayerDir(n).status().code(), Code::kNotFound);
}

// Continue (SIGCONT to all) is for a running task; running processes
// ignore it.
TEST_P(RuntimeConformance, ContinueNeedsARunningTask) {
  std::string n = UniqueName("continue");
  ASSERT_TRUE(Create(n));
  EXPECT_EQ(rt_->Continue(n).code(), Code::kConflict) << "no task yet";
  ASSERT_TRUE(rt_->StartTask(n).ok());
  Status s = rt_->Continue(n);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(StateOf(n), TaskState::kRunning);
  ASSERT_TRUE(rt_->Pause(n).ok());
  EXPECT_EQ(rt_->Continue(n).code(), Code::kConflict) << "continue a paused task";
  ASSERT_TRUE(rt_->Resume(n).ok());
}

TEST_P(RuntimeConformance, UnknownImageIsNotFound) {
  std::string n = UniqueName("noimage");
  ContainerSpec s = Spec(n);
  s.image = "kmosix.invalid/no-such-image:never";
  created_.push_back(n);
  EXPECT_EQ(rt_->CreateContainer(s).code(), Code::kNotFound);
  EXPECT_EQ(rt_->Inspect(n).status().code(), Code::kNotFound) << "nothing left behind";
}

TEST_P(RuntimeConformance, NameInUseIsConflict) {
  std::string n = UniqueName("conflict");
  ASSERT_TRUE(Create(n));
  EXPECT_EQ(rt_->CreateContainer(Spec(n)).code(), Code::kConflict);
  ASSERT_TRUE(rt_->StartTask(n).ok()) << "the first container is intact";
  EXPECT_EQ(rt_->StartTask(n).code(), Code::kConflict) << "a second task is a conflict";
}

TEST_P(RuntimeConformance, PauseResume) {
  std::string n = UniqueName("pause");
  ASSERT_TRUE(Create(n));
  EXPECT_EQ(rt_->Pause(n).code(), Code::kConflict) << "no task yet";
  ASSERT_TRUE(rt_->StartTask(n).ok());
  EXPECT_EQ(rt_->Resume(n).code(), Code::kConflict) << "resume a running task";
  ASSERT_TRUE(rt_->Pause(n).ok());
  EXPECT_EQ(StateOf(n), TaskState::kPaused);
  EXPECT_EQ(rt_->Pause(n).code(), Code::kConflict) << "pause a paused task";
  ASSERT_TRUE(rt_->Resume(n).ok());
  EXPECT_EQ(StateOf(n), TaskState::kRunning);
}

TEST_P(RuntimeConformance, WritableLayerDirOfExistingContainer) {
  std::string n = UniqueName("layer");
  ASSERT_TRUE(Create(n));
  auto dir = rt_->WritableLayerDir(n);
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  EXPECT_FALSE(dir->empty());
}

TEST_P(RuntimeConformance, NodeNameIsStable) { EXPECT_EQ(rt_->NodeName(), rt_->NodeName()); }

}  // namespace kmosix::testing

// Instantiates the suite for one or more RuntimeConformanceParam values. Use at
// global namespace scope, in exactly one translation unit per test binary.
#define KMX_INSTANTIATE_RUNTIME_CONFORMANCE(prefix, ...)                               \
  namespace kmosix::testing {                                                          \
  INSTANTIATE_TEST_SUITE_P(prefix, RuntimeConformance, ::testing::Values(__VA_ARGS__), \
                           RuntimeConformanceName);                                    \
  }                                                                                    \
  static_assert(true, "")
