// The real kmosix-controller states and enforces the node-loss timing rule
// (issue 13): its --help says the restart delay must exceed the agents'
// lease TTL plus their fence deadline, and it refuses to start (exit 2, the
// rule in its message) when the flags break it. Nothing here reaches etcd:
// the check comes before the store is opened.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#ifndef KMX_CONTROLLER_BIN
#error "KMX_CONTROLLER_BIN must be defined (see tests/controller/CMakeLists.txt)"
#endif

namespace {

// Runs the controller with `args` (under `timeout`, so a controller that does
// start cannot hang the test); its exit code and output.
std::pair<int, std::string> Controller(const std::string& args) {
  const std::string cmd = "( timeout 20 '" + std::string(KMX_CONTROLLER_BIN) + "' " + args +
                          " --no-tls --no-auth --etcd http://127.0.0.1:9 ) 2>&1";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

TEST(NodeLossFlagsTest, HelpStatesTheRule) {
  auto [code, out] = Controller("--help");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("--node-loss-restart-delay"), std::string::npos) << out;
  EXPECT_NE(out.find("it must exceed --lease-ttl-assumed + --agent-fence-after"), std::string::npos)
      << out;
  EXPECT_NE(out.find("--lease-ttl-assumed"), std::string::npos) << out;
  EXPECT_NE(out.find("--agent-fence-after"), std::string::npos) << out;
}

TEST(NodeLossFlagsTest, ARestartDelayNotAboveLeaseTtlPlusFenceAfterIsRefused) {
  auto [code, out] = Controller("--node-loss-restart-delay 9");
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("--node-loss-restart-delay must be longer than --lease-ttl-assumed + "
                     "--agent-fence-after"),
            std::string::npos)
      << out;
  auto [code2, out2] = Controller(
      "--node-loss-restart-delay 20 --lease-ttl-assumed 10 "
      "--agent-fence-after 10");
  EXPECT_EQ(code2, 2) << out2;
  EXPECT_NE(out2.find("--agent-fence-after must be more than 0 and less than "
                      "--lease-ttl-assumed"),
            std::string::npos)
      << out2;
}

}  // namespace
