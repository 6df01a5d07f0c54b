// The agent's CRIU readiness check (node-agent/criu_probe.h): the version
// parser, the probe over a fake CommandRunner (what it runs, in which mount
// namespace, and the reason it gives for each way CRIU can be unusable), and
// the readiness tracker's re-checks.
#include "criu_probe.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "fakes/fake_clock.h"

namespace kmosix::agent {
namespace {

std::string Str(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Answers commands from a table (exact command line -> result); a command
// missing from the table "is not installed" (kFailed, as SystemCommandRunner
// says for a program not on PATH).
class TableRunner : public CommandRunner {
 public:
  StatusOr<CommandResult> Run(const std::vector<std::string>& argv, std::string_view) override {
    std::lock_guard lock(mu);
    std::string cmd = Str(argv);
    calls.push_back(cmd);
    auto it = answers.find(cmd);
    if (it == answers.end()) return FailedError(argv[0] + ": not found on PATH");
    return it->second;
  }
  std::mutex mu;
  std::map<std::string, CommandResult> answers;
  std::vector<std::string> calls;
};

constexpr char kVersion41[] = "Version: 4.1.1\nGitID: v4.1.1\n";

TEST(ParseCriuVersion, ReadsTheVersionLine) {
  auto v = ParseCriuVersion(kVersion41);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->major, 4);
  EXPECT_EQ(v->minor, 1);
  EXPECT_EQ(v->sublevel, 1);
  EXPECT_EQ(v->text, "4.1.1");
  auto two = ParseCriuVersion("Version: 3.17\n");
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  EXPECT_EQ(two->major, 3);
  EXPECT_EQ(two->minor, 17);
  EXPECT_EQ(two->sublevel, 0);
  auto later = ParseCriuVersion("Warning: something\nVersion: 4.0-dirty\n");
  ASSERT_TRUE(later.ok()) << later.status().ToString();
  EXPECT_EQ(later->text, "4.0");
}

TEST(ParseCriuVersion, RefusesOutputWithoutAVersion) {
  for (const char* bad : {"", "criu: command not found\n", "Version: four\n", "Version: 4\n",
                          "Version: 4.\n", "Version: 4.1.\n", "Version: 1234567.1\n"}) {
    auto v = ParseCriuVersion(bad);
    EXPECT_EQ(v.status().code(), Code::kInvalid) << "\"" << bad << "\"";
  }
}

TEST(CriuCheckMode, ParsesTheFlagValues) {
  for (auto m : {CriuCheckMode::kAuto, CriuCheckMode::kOff, CriuCheckMode::kNsenter,
                 CriuCheckMode::kLocal}) {
    auto back = ParseCriuCheckMode(CriuCheckModeName(m));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, m);
  }
  EXPECT_EQ(ParseCriuCheckMode("on").status().code(), Code::kInvalid);
}

CriuProbeOptions Local(std::string criu_path = "") {
  CriuProbeOptions o;
  o.mode = CriuCheckMode::kLocal;
  o.criu_path = std::move(criu_path);
  return o;
}

TEST(CommandCriuProbe, ReadyWithCriu4ThatPassesItsCheck) {
  TableRunner runner;
  runner.answers["criu --version"] = {0, kVersion41};
  runner.answers["criu check"] = {0, "Looks good.\n"};
  CommandCriuProbe probe(Local(), runner);
  CriuProbeResult r = probe.Probe();
  EXPECT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.reason, "");
  EXPECT_EQ(r.version, "4.1.1");
  EXPECT_EQ(r.where, "local");
  EXPECT_EQ(runner.calls, (std::vector<std::string>{"criu --version", "criu check"}));
}

TEST(CommandCriuProbe, AVersionBelow4IsNotReadyAndNotChecked) {
  TableRunner runner;
  runner.answers["criu --version"] = {0, "Version: 3.17.1\n"};
  runner.answers["criu check"] = {0, "Looks good.\n"};
  CommandCriuProbe probe(Local(), runner);
  CriuProbeResult r = probe.Probe();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.version, "3.17.1");
  EXPECT_NE(r.reason.find("3.17.1"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find(">= 4"), std::string::npos) << r.reason;
  EXPECT_EQ(runner.calls, (std::vector<std::string>{"criu --version"}));
}

TEST(CommandCriuProbe, AFailedCheckIsNotReadyWithItsLastLine) {
  TableRunner runner;
  runner.answers["criu --version"] = {0, kVersion41};
  runner.answers["criu check"] = {
      1,
      "Warn  (criu/cr-check.c:1230): Dirty tracking is OFF\nError (criu/cr-check.c:1410): "
      "CRIU needs CAP_SYS_ADMIN\n"};
  CommandCriuProbe probe(Local(), runner);
  CriuProbeResult r = probe.Probe();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.reason.find("criu check"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("exited 1"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("CRIU needs CAP_SYS_ADMIN"), std::string::npos) << r.reason;
  EXPECT_EQ(r.reason.find('\n'), std::string::npos) << "one line: " << r.reason;
}

TEST(CommandCriuProbe, AMissingBinaryIsNotReady) {
  TableRunner runner;  // nothing installed
  CommandCriuProbe probe(Local("/opt/criu/sbin/criu"), runner);
  CriuProbeResult r = probe.Probe();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.reason.find("/opt/criu/sbin/criu"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("not found"), std::string::npos) << r.reason;
  EXPECT_EQ(runner.calls, (std::vector<std::string>{"/opt/criu/sbin/criu --version"}));
}

TEST(CommandCriuProbe, NsenterRunsTheNodesCriuAndReportsItMissing) {
  TableRunner runner;
  // nsenter itself is there; the host has no criu: nsenter exits 127.
  runner.answers["nsenter -t 1 -m -- criu --version"] = {
      127, "nsenter: failed to execute criu: No such file or directory\n"};
  CriuProbeOptions o;
  o.mode = CriuCheckMode::kNsenter;
  CommandCriuProbe probe(o, runner);
  CriuProbeResult r = probe.Probe();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.where, "nsenter");
  EXPECT_NE(r.reason.find("in containerd's mount namespace"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("exited 127"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("No such file or directory"), std::string::npos) << r.reason;

  runner.answers["nsenter -t 1 -m -- criu --version"] = {0, kVersion41};
  runner.answers["nsenter -t 1 -m -- criu check"] = {0, "Looks good.\n"};
  EXPECT_TRUE(probe.Probe().ok);
}

// The namespace entered is the one of the process serving containerd's
// socket (runc runs CRIU there), found through SO_PEERCRED.
TEST(CommandCriuProbe, NsenterTargetsTheProcessServingTheContainerdSocket) {
  namespace fs = std::filesystem;
  const std::string path =
      (fs::temp_directory_path() / ("kmx-criu-sock-" + std::to_string(::getpid()))).string();
  ::unlink(path.c_str());
  int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  EXPECT_EQ(SocketServerPid(path), ::getpid());
  EXPECT_EQ(SocketServerPid(path + ".missing"), 0);

  const std::string me = std::to_string(::getpid());
  TableRunner runner;
  runner.answers["nsenter -t " + me + " -m -- criu --version"] = {0, kVersion41};
  runner.answers["nsenter -t " + me + " -m -- criu check"] = {0, "Looks good.\n"};
  CriuProbeOptions o;
  o.mode = CriuCheckMode::kNsenter;
  o.containerd_socket = path;
  CriuProbeResult r = CommandCriuProbe(o, runner).Probe();
  EXPECT_TRUE(r.ok) << r.reason;
  ::close(lfd);
  ::unlink(path.c_str());
}

TEST(CommandCriuProbe, AutoEntersContainerdsMountNamespaceOnlyWhenItIsAnother) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("kmx-criu-probe-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::create_symlink("mnt:[4026531841]", dir / "host");
  fs::create_symlink("mnt:[4026531841]", dir / "same");
  fs::create_symlink("mnt:[4026532999]", dir / "other");
  TableRunner runner;
  CriuProbeOptions o;
  o.mode = CriuCheckMode::kAuto;
  o.host_mnt_ns = (dir / "host").string();
  o.self_mnt_ns = (dir / "same").string();
  EXPECT_EQ(CommandCriuProbe(o, runner).EffectiveMode(), CriuCheckMode::kLocal);
  o.self_mnt_ns = (dir / "other").string();
  EXPECT_EQ(CommandCriuProbe(o, runner).EffectiveMode(), CriuCheckMode::kNsenter);
  o.host_mnt_ns = (dir / "unreadable").string();  // no hostPID, or not allowed to look
  EXPECT_EQ(CommandCriuProbe(o, runner).EffectiveMode(), CriuCheckMode::kLocal);
  fs::remove_all(dir);
}

class ScriptedProbe : public CriuProbe {
 public:
  CriuProbeResult Probe() override {
    ++probes;
    return next;
  }
  CriuProbeResult next;
  int probes = 0;
};

TEST(CriuReadiness, ReportsTheReasonAndRechecksOnlyWhileFailing) {
  testing::FakeClock clock;
  ScriptedProbe probe;
  CriuReadiness readiness(probe, clock, std::chrono::seconds(60));
  EXPECT_FALSE(readiness.NotReadyReason().has_value()) << "nothing known before the check";
  readiness.Tick();
  EXPECT_EQ(probe.probes, 0) << "Tick does not make the first check";

  probe.next = {false, "CRIU not usable: criu is version 3.17.1", "3.17.1", "local"};
  readiness.Check();
  EXPECT_EQ(readiness.NotReadyReason(), "CRIU not usable: criu is version 3.17.1");
  clock.Advance(std::chrono::seconds(59));
  readiness.Tick();
  EXPECT_EQ(probe.probes, 1) << "not before `recheck`";
  clock.Advance(std::chrono::seconds(1));
  probe.next = {true, "", "4.1.1", "local"};
  readiness.Tick();
  EXPECT_EQ(probe.probes, 2);
  EXPECT_FALSE(readiness.NotReadyReason().has_value()) << "a CRIU installed later counts";
  clock.Advance(std::chrono::seconds(600));
  readiness.Tick();
  EXPECT_EQ(probe.probes, 2) << "a passing check is not repeated";
}

}  // namespace
}  // namespace kmosix::agent
