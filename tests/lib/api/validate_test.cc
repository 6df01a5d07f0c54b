// The one validator (api/validate.h): names, workload specs at and past every
// limit (with the messages the REST API has always answered), migration
// requests and policy settings.
#include "api/validate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace kmosix::api {
namespace {

WorkloadSpec Good() {
  WorkloadSpec s;
  s.name = "w-1";
  s.image = "docker.io/library/busybox:latest";
  return s;
}

void ExpectInvalid(const Status& s, const std::string& needle) {
  EXPECT_EQ(s.code(), Code::kInvalid) << s.ToString();
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
}

TEST(ValidateNameTest, AcceptsDnsLabelsOnly) {
  EXPECT_TRUE(ValidateName("a").ok());
  EXPECT_TRUE(ValidateName("node-2").ok());
  EXPECT_TRUE(ValidateName(std::string(63, 'x')).ok());
  ExpectInvalid(ValidateName(""), "1 to 63");
  ExpectInvalid(ValidateName(std::string(64, 'x')), "1 to 63");
  ExpectInvalid(ValidateName("Node"), "a-z, 0-9");
  ExpectInvalid(ValidateName("a_b"), "a-z, 0-9");
  ExpectInvalid(ValidateName("../etc"), "a-z, 0-9");
  ExpectInvalid(ValidateName("-a"), "start and end");
  ExpectInvalid(ValidateName("a-"), "start and end");
}

TEST(ValidateWorkloadSpecTest, AcceptsEveryLimitExactly) {
  WorkloadSpec s = Good();
  s.image = std::string(kMaxImageBytes, 'i');
  s.args.assign(kMaxArgs, "x");
  s.env = {{"A", ""}, {"B_2", "x=y"}};
  s.memory_mib = kMaxMemoryMiB;
  s.cpus = kMaxCpus;
  s.node = "n1";
  s.pinned = true;
  s.origin = WorkloadOrigin{"MigratableWorkload", "default", "web", "uid-1"};
  EXPECT_TRUE(ValidateWorkloadSpec(s).ok()) << ValidateWorkloadSpec(s).ToString();
  s.origin->namespace_.clear();  // cluster-scoped origins have none
  EXPECT_TRUE(ValidateWorkloadSpec(s).ok());
}

TEST(ValidateWorkloadSpecTest, RejectsPastEveryLimitNamingTheField) {
  auto with = [](auto edit) {
    WorkloadSpec s = Good();
    edit(s);
    return ValidateWorkloadSpec(s);
  };
  ExpectInvalid(with([](WorkloadSpec& s) { s.name = "Bad_Name"; }), "field \"name\"");
  ExpectInvalid(with([](WorkloadSpec& s) { s.image = ""; }),
                "field \"image\" in workload spec must be 1 to 512 characters");
  ExpectInvalid(with([](WorkloadSpec& s) { s.image = std::string(513, 'i'); }), "image");
  ExpectInvalid(with([](WorkloadSpec& s) { s.args.assign(kMaxArgs + 1, "x"); }), "args");
  ExpectInvalid(with([](WorkloadSpec& s) { s.env[""] = "x"; }), "env name");
  ExpectInvalid(with([](WorkloadSpec& s) { s.env["A=B"] = "x"; }), "env name \"A=B\"");
  ExpectInvalid(with([](WorkloadSpec& s) { s.env[std::string("A\0B", 3)] = "x"; }), "env name");
  ExpectInvalid(with([](WorkloadSpec& s) { s.memory_mib = -1; }),
                "field \"memoryMiB\" in workload spec must be >= 0");
  ExpectInvalid(with([](WorkloadSpec& s) { s.memory_mib = kMaxMemoryMiB + 1; }),
                "field \"memoryMiB\" in workload spec must be at most 2^30");
  ExpectInvalid(with([](WorkloadSpec& s) { s.cpus = -0.5; }), "cpus");
  ExpectInvalid(with([](WorkloadSpec& s) { s.cpus = std::nan(""); }), "cpus");
  ExpectInvalid(with([](WorkloadSpec& s) { s.cpus = std::numeric_limits<double>::infinity(); }),
                "cpus");
  ExpectInvalid(with([](WorkloadSpec& s) { s.cpus = 4096.5; }),
                "field \"cpus\" in workload spec must be at most 4096");
  ExpectInvalid(with([](WorkloadSpec& s) { s.node = "No.de"; }), "field \"node\"");
  ExpectInvalid(with([](WorkloadSpec& s) {
                  s.origin = WorkloadOrigin{"", "ns", "n", "u"};
                }),
                "origin");
  ExpectInvalid(with([](WorkloadSpec& s) {
                  s.origin = WorkloadOrigin{"K", "ns", "", "u"};
                }),
                "origin");
  ExpectInvalid(with([](WorkloadSpec& s) {
                  s.origin = WorkloadOrigin{"K", "ns", "n", ""};
                }),
                "origin");
}

TEST(ValidateWorkloadSpecTest, WhatNamesTheValue) {
  WorkloadSpec s = Good();
  s.image.clear();
  ExpectInvalid(ValidateWorkloadSpec(s, "workload"), "field \"image\" in workload must be");
}

TEST(ValidateMigrationRequestTest, NamesAndRequesters) {
  MigrationRequest r;
  r.workload = "w1";
  EXPECT_TRUE(ValidateMigrationRequest(r).ok());
  EXPECT_EQ(r.requested_by, "api");
  for (const char* by : {"policy", "api", "drain", "user"}) {
    r.requested_by = by;
    EXPECT_TRUE(ValidateMigrationRequest(r).ok()) << by;
  }
  r.requested_by = "balancer";
  ExpectInvalid(ValidateMigrationRequest(r), "requestedBy");
  r.requested_by = "user";
  r.target = "n2";
  r.id = "m-uid-1234";
  EXPECT_TRUE(ValidateMigrationRequest(r).ok());
  r.id = "M_1";
  ExpectInvalid(ValidateMigrationRequest(r), "id: ");
  r.id = "ckpt-0123456789abcdef";  // the agents' checkpoint ids
  ExpectInvalid(ValidateMigrationRequest(r), "id: \"ckpt-\"");
  r.id.clear();
  r.target = "N2";
  ExpectInvalid(ValidateMigrationRequest(r), "target: ");
  r.target.clear();
  r.workload = "";
  ExpectInvalid(ValidateMigrationRequest(r), "workload: ");
}

TEST(ValidatePolicySettingsTest, EmptyIsValidAndEveryKnobHasItsRange) {
  EXPECT_TRUE(ValidatePolicySettings({}).ok());
  PolicySettings p;
  p.enabled = false;
  p.stability = 1;
  p.min_residency_ms = 0;
  p.max_per_node = 1;
  p.max_cluster = 1;
  p.low_memory_fraction = 1;
  p.memory_psi_threshold = 100;
  EXPECT_TRUE(ValidatePolicySettings(p).ok());
  auto with = [&](auto edit) {
    PolicySettings q = p;
    edit(q);
    return ValidatePolicySettings(q);
  };
  ExpectInvalid(with([](PolicySettings& q) { q.stability = 0.9; }), "stability");
  ExpectInvalid(with([](PolicySettings& q) { q.stability = std::nan(""); }), "stability");
  ExpectInvalid(with([](PolicySettings& q) { q.min_residency_ms = -1; }), "minResidencyMs");
  ExpectInvalid(with([](PolicySettings& q) { q.max_per_node = 0; }), "maxPerNode");
  ExpectInvalid(with([](PolicySettings& q) { q.max_cluster = 0; }), "maxCluster");
  ExpectInvalid(with([](PolicySettings& q) { q.low_memory_fraction = 1.5; }), "lowMemoryFraction");
  ExpectInvalid(with([](PolicySettings& q) { q.low_memory_fraction = -0.1; }), "lowMemoryFraction");
  ExpectInvalid(with([](PolicySettings& q) { q.memory_psi_threshold = 101; }),
                "memoryPsiThreshold");
}

TEST(PhasesTest, NamesRoundTripAndFinals) {
  for (int i = 0; i <= static_cast<int>(MigrationPhase::kFailed); ++i) {
    auto p = static_cast<MigrationPhase>(i);
    auto back = ParseMigrationPhase(MigrationPhaseName(p));
    ASSERT_TRUE(back.ok()) << MigrationPhaseName(p);
    EXPECT_EQ(*back, p);
    EXPECT_EQ(IsFinal(p), p == MigrationPhase::kSucceeded || p == MigrationPhase::kRolledBack ||
                              p == MigrationPhase::kFailed);
  }
  EXPECT_EQ(ParseMigrationPhase("succeeded").status().code(), Code::kInvalid);
  for (int i = 0; i <= static_cast<int>(WorkloadPhase::kExited); ++i) {
    auto p = static_cast<WorkloadPhase>(i);
    auto back = ParseWorkloadPhase(WorkloadPhaseName(p));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, p);
  }
}

// Issue 13, node loss: the restart policy and the checkpoint interval.
TEST(RestartPolicyTest, NamesRoundTripAndUnknownValuesAreRefused) {
  for (RestartPolicy p :
       {RestartPolicy::kNever, RestartPolicy::kFromImage, RestartPolicy::kFromCheckpoint}) {
    auto back = ParseRestartPolicy(RestartPolicyName(p));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, p);
  }
  ExpectInvalid(ParseRestartPolicy("Always").status(), "\"Always\"");
  ExpectInvalid(ParseRestartPolicy("fromimage").status(),
                "one of Never, FromImage, FromCheckpoint");
  ExpectInvalid(ParseRestartPolicy("").status(), "restart policy");
}

TEST(RestartPolicyTest, CheckpointIntervalIsRequiredWithFromCheckpointAndOnlyThere) {
  WorkloadSpec s = Good();
  EXPECT_EQ(s.restart_policy, RestartPolicy::kNever) << "the default is Never";
  s.restart_policy = RestartPolicy::kFromImage;
  EXPECT_TRUE(ValidateWorkloadSpec(s).ok());
  s.checkpoint_interval_seconds = 30;
  ExpectInvalid(ValidateWorkloadSpec(s), "\"checkpointIntervalSeconds\"");
  s.restart_policy = RestartPolicy::kNever;
  ExpectInvalid(ValidateWorkloadSpec(s), "unless restartPolicy is FromCheckpoint");

  s.restart_policy = RestartPolicy::kFromCheckpoint;
  for (int64_t ok : {kMinCheckpointIntervalSeconds, int64_t{60}, kMaxCheckpointIntervalSeconds}) {
    s.checkpoint_interval_seconds = ok;
    EXPECT_TRUE(ValidateWorkloadSpec(s).ok()) << ok;
  }
  for (int64_t bad : {int64_t{0}, int64_t{9}, kMaxCheckpointIntervalSeconds + 1, int64_t{-10}}) {
    s.checkpoint_interval_seconds = bad;
    ExpectInvalid(ValidateWorkloadSpec(s, "MigratableWorkload"),
                  "field \"checkpointIntervalSeconds\" in MigratableWorkload must be an integer "
                  "from 10 to 86400");
  }
}

TEST(RestartPolicyTest, RecoveryAndCheckpointRecordLimits) {
  Recovery r;
  r.policy = RestartPolicy::kFromCheckpoint;
  r.lost_node = "node-1";
  r.checkpoint = "c-1";
  r.lost_ms = 10;
  r.restarted_ms = 20;
  r.checkpoint_taken_ms = 5;
  r.progress_lost_ms = 5;
  r.count = 1;
  EXPECT_TRUE(ValidateRecovery(r).ok());
  Recovery bad = r;
  bad.policy = RestartPolicy::kNever;
  ExpectInvalid(ValidateRecovery(bad), "\"policy\"");
  bad = r;
  bad.lost_node = "";
  ExpectInvalid(ValidateRecovery(bad), "\"lostNode\"");
  bad = r;
  bad.checkpoint = "../x";
  ExpectInvalid(ValidateRecovery(bad), "\"checkpoint\"");
  bad = r;
  bad.progress_lost_ms = -1;
  ExpectInvalid(ValidateRecovery(bad), "\"progressLostMs\"");
  bad = r;
  bad.count = -1;
  ExpectInvalid(ValidateRecovery(bad), "\"count\"");

  CheckpointRecord c{"w-1", "c-17", 42, "node-1", "node-2", 1000, 4096};
  EXPECT_TRUE(ValidateCheckpointRecord(c).ok());
  for (auto [field, mutate] : std::vector<std::pair<std::string, void (*)(CheckpointRecord&)>>{
           {"workload", [](CheckpointRecord& x) { x.workload = ""; }},
           {"id", [](CheckpointRecord& x) { x.id = "a/b"; }},
           {"source", [](CheckpointRecord& x) { x.source = "N"; }},
           {"keeper", [](CheckpointRecord& x) { x.keeper = ""; }},
           {"epoch", [](CheckpointRecord& x) { x.epoch = -1; }},
           {"takenMs", [](CheckpointRecord& x) { x.taken_ms = -1; }}}) {
    CheckpointRecord b = c;
    mutate(b);
    ExpectInvalid(ValidateCheckpointRecord(b), "\"" + field + "\"");
  }
}

}  // namespace
}  // namespace kmosix::api
