// The real kmosix-controller binary with authentication and TLS: a private
// etcd, a token file (one admin, one read-only token) and a freshly generated
// CA and server certificate (openssl CLI, SAN IP:127.0.0.1 and DNS:localhost).
// Checks: HTTPS with the CA works, without it (or over plain HTTP) it does
// not; no token 401; read-only GET 200 and POST 403 (nothing written);
// admin POST 201/400 as usual; the token file is re-read when it changes;
// the binary refuses to start (exit 2) without --no-auth/--no-tls when the
// token file, certificate or key is missing or unusable.
//
// Skips loudly without the controller binary, etcd or openssl.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "etcd/etcd_state_store.h"
#include "support/private_etcd.h"

#ifndef KMX_CONTROLLER_BIN
#error "KMX_CONTROLLER_BIN must be defined (see tests/controller/CMakeLists.txt)"
#endif

namespace kmosix::testing {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kAdminToken[] = "itest-admin-0123456789abcdefABCDEF";
constexpr char kViewerToken[] = "itest-viewer-0123456789abcdefABCDEF";
constexpr char kPrefix[] = "/kmx-auth-itest/";

std::string ControllerBinary() {
  const char* env = std::getenv("KMX_CONTROLLER_BIN");
  return env != nullptr && *env != '\0' ? env : KMX_CONTROLLER_BIN;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a shell command; its exit code and output (stderr folded in).
std::pair<int, std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(("( " + cmd + " ) 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A child process with its output in a file.
class Process {
 public:
  Process(std::vector<std::string> args, std::string log) : log_(std::move(log)) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Process() { Stop(); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // The exit code if it ended within `timeout` (-1: killed by a signal), else
  // std::nullopt (it still runs).
  std::optional<int> Wait(milliseconds timeout) {
    if (pid_ <= 0) return exit_code_;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        return exit_code_;
      }
      if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(milliseconds(50));
    }
  }
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    if (!Wait(seconds(10))) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  bool running() const { return pid_ > 0; }
  std::string Log() const { return ReadAll(log_); }

 private:
  std::string log_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

std::string WhyCannotRun() {
  std::string bin = ControllerBinary();
  if (bin.empty() || ::access(bin.c_str(), X_OK) != 0) {
    return "controller binary " + bin + " not built (target kmosix-controller)";
  }
  if (auto why = EtcdSkipReason(); !why.empty()) return why;
  if (Shell("command -v openssl").first != 0) return "openssl CLI not found on PATH";
  return "";
}

// A temporary directory with a CA, a server certificate signed by it, an
// unrelated key, and token files.
class Files {
 public:
  Files() {
    const char* tmp = std::getenv("TMPDIR");
    std::string t = std::string(tmp && *tmp ? tmp : "/tmp") + "/kmx-auth-itest-XXXXXX";
    if (::mkdtemp(t.data()) != nullptr) dir_ = t;
  }
  ~Files() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  const std::string& dir() const { return dir_; }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Empty on success, else openssl's output.
  std::string MakePki() {
    std::ofstream(Path("server.ext")) << "basicConstraints=CA:FALSE\n"
                                         "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                         "extendedKeyUsage=serverAuth\n"
                                         "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    const std::string d = Quote(dir_);
    std::string cmd =
        "cd " + d +
        " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout ca.key -out ca.crt -days 2 -subj /CN=kmosix-itest-ca"
        " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout server.key -out server.csr -subj /CN=localhost"
        " && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 0x1234"
        " -days 2 -extfile server.ext -out server.crt"
        " && openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:prime256v1 -out other.key";
    auto [code, out] = Shell(cmd);
    return code == 0 ? "" : "openssl failed (exit " + std::to_string(code) + "): " + out;
  }

  void WriteTokens(const std::string& name, const std::string& text) {
    std::ofstream(Path(name), std::ios::trunc) << text;
    ::chmod(Path(name).c_str(), 0600);
  }

 private:
  std::string dir_;
};

std::string TokenText() {
  return std::string("# test tokens\n") + kAdminToken + ",admin,itest-admin\n" + kViewerToken +
         ",read-only,itest-viewer\n";
}

// --- the secure controller -------------------------------------------------------------

class SecureControllerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A TLS client writes its close_notify after reading the answer; when the
    // server closed first (it does not read the body of a denied request),
    // that write must be an error, not the death of the test.
    ::signal(SIGPIPE, SIG_IGN);
    skip_ = WhyCannotRun();
    if (!skip_.empty()) return;
    files_ = new Files();
    if (files_->dir().empty()) {
      error_ = "cannot create a temporary directory";
      return;
    }
    if (std::string e = files_->MakePki(); !e.empty()) {
      error_ = e;
      return;
    }
    files_->WriteTokens("tokens.csv", TokenText());
    etcd_ = new PrivateEtcd();
    if (!etcd_->Start()) {
      error_ = "private etcd did not start; log: " + etcd_->dir() + "/etcd.log";
      return;
    }
    port_ = FreePort();
    controller_ = new Process({ControllerBinary(), "--etcd", etcd_->endpoint(), "--etcd-prefix",
                               kPrefix, "--listen", "127.0.0.1:" + std::to_string(port_), "--id",
                               "itest", "--token-file", files_->Path("tokens.csv"), "--tls-cert",
                               files_->Path("server.crt"), "--tls-key", files_->Path("server.key")},
                              files_->Path("controller.log"));
    // Wait until it answers /healthz over HTTPS (open: no token needed).
    auto deadline = std::chrono::steady_clock::now() + seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto code = controller_->Wait(milliseconds(0))) {
        error_ =
            "kmosix-controller exited with " + std::to_string(*code) + ":\n" + controller_->Log();
        return;
      }
      auto c = Https();
      if (auto r = c.Get("/healthz"); r && r->status == 200) return;
      std::this_thread::sleep_for(milliseconds(100));
    }
    error_ = "kmosix-controller did not answer https://127.0.0.1:" + std::to_string(port_) +
             "/healthz within 30 s:\n" + controller_->Log();
  }
  static void TearDownTestSuite() {
    delete controller_;
    controller_ = nullptr;
    delete etcd_;
    etcd_ = nullptr;
    delete files_;
    files_ = nullptr;
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << "CONTROLLER AUTH TEST SKIPPED: " << skip_;
    ASSERT_TRUE(error_.empty()) << error_;
  }
  void TearDown() override {
    if (HasFailure() && controller_ != nullptr) {
      std::cerr << "--- controller log ---\n" << controller_->Log() << "\n";
    }
  }

  // An HTTPS client that trusts the test CA, with `token` (if any).
  static httplib::Client Https(const std::string& token = "", bool trust_ca = true) {
    httplib::Client c("https://127.0.0.1:" + std::to_string(port_));
    if (trust_ca) c.set_ca_cert_path(files_->Path("ca.crt").c_str());
    c.enable_server_certificate_verification(true);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(10, 0);
    if (!token.empty()) c.set_bearer_token_auth(token.c_str());
    return c;
  }

  static std::optional<KeyValue> EtcdKey(const std::string& key) {
    EtcdStateStore store(TestEtcdConfig(etcd_->endpoint()));
    auto r = store.Get(key);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->kv : std::nullopt;
  }

  static std::string Spec(const std::string& name) {
    return json{{"name", name}, {"image", "kmosix.local/demo:latest"}}.dump();
  }

  static inline std::string skip_, error_;
  static inline Files* files_ = nullptr;
  static inline PrivateEtcd* etcd_ = nullptr;
  static inline Process* controller_ = nullptr;
  static inline int port_ = 0;
};

// `code`: the JSON error code expected ("": any non-empty one).
void ExpectApiError(const httplib::Result& r, int status, const std::string& code) {
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, status) << r->body;
  json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r->body;
  if (code.empty()) {
    EXPECT_FALSE(j.value("code", "").empty()) << r->body;
  } else {
    EXPECT_EQ(j.value("code", ""), code) << r->body;
  }
  EXPECT_FALSE(j.value("message", "").empty()) << r->body;
}

TEST_F(SecureControllerTest, HttpsWithTheCaWorksAndProbesAreOpen) {
  auto c = Https();
  auto h = c.Get("/healthz");
  ASSERT_TRUE(h) << httplib::to_string(h.error());
  EXPECT_EQ(h->status, 200) << h->body;
  auto r = c.Get("/readyz");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_TRUE(r->status == 200 || r->status == 503) << r->status << " " << r->body;
}

TEST_F(SecureControllerTest, ServerNotTrustedWithoutTheCa) {
  auto c = Https("", /*trust_ca=*/false);
  auto r = c.Get("/healthz");
  EXPECT_FALSE(r) << "an HTTPS client without the test CA was answered " << r->status;
  if (!r) {
    EXPECT_EQ(r.error(), httplib::Error::SSLServerVerification);
  }
}

TEST_F(SecureControllerTest, PlainHttpIsNotServed) {
  httplib::Client c("http://127.0.0.1:" + std::to_string(port_));
  c.set_connection_timeout(5, 0);
  c.set_read_timeout(5, 0);
  c.set_bearer_token_auth(kAdminToken);
  auto r = c.Get("/v1/workloads");
  EXPECT_TRUE(!r || r->status >= 400) << "plain HTTP was answered " << r->status << ": " << r->body;
  auto h = c.Get("/healthz");
  EXPECT_TRUE(!h || h->status >= 400) << "plain HTTP was answered " << h->status;
}

TEST_F(SecureControllerTest, NoTokenIsUnauthenticated) {
  auto c = Https();
  auto r = c.Get("/v1/workloads");
  ExpectApiError(r, 401, "unauthenticated");
  if (r) {
    EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer realm=\"kmosix\"");
  }
  ExpectApiError(Https("not-a-known-token-0123456789").Get("/v1/nodes"), 401, "unauthenticated");
  ExpectApiError(c.Post("/v1/workloads", Spec("anon"), "application/json"), 401, "unauthenticated");
  EXPECT_FALSE(EtcdKey(std::string(kPrefix) + "workloads/anon").has_value());
}

TEST_F(SecureControllerTest, ReadOnlyTokenMayReadButNotWrite) {
  auto viewer = Https(kViewerToken);
  for (const char* path :
       {"/v1/workloads", "/v1/nodes", "/v1/migrations", "/v1/leader", "/metrics"}) {
    auto r = viewer.Get(path);
    ASSERT_TRUE(r) << path << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 200) << path << ": " << r->body;
  }
  ExpectApiError(viewer.Post("/v1/workloads", Spec("denied"), "application/json"), 403,
                 "permission_denied");
  ExpectApiError(viewer.Delete("/v1/workloads/denied"), 403, "permission_denied");
  ExpectApiError(viewer.Post("/v1/migrations", "{\"workload\":\"denied\"}", "application/json"),
                 403, "permission_denied");
  // Nothing was written.
  EXPECT_FALSE(EtcdKey(std::string(kPrefix) + "workloads/denied").has_value());
  auto g = Https(kAdminToken).Get("/v1/workloads/denied");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 404) << g->body;
}

TEST_F(SecureControllerTest, AdminTokenWritesAsUsual) {
  auto admin = Https(kAdminToken);
  auto created = admin.Post("/v1/workloads", Spec("allowed"), "application/json");
  ASSERT_TRUE(created) << httplib::to_string(created.error());
  EXPECT_EQ(created->status, 201) << created->body;
  EXPECT_TRUE(EtcdKey(std::string(kPrefix) + "workloads/allowed").has_value());
  ExpectApiError(admin.Post("/v1/workloads", "{\"name\":", "application/json"), 400, "");
  // The read-only token sees it once the controller's cache has it.
  auto viewer = Https(kViewerToken);
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    auto r = viewer.Get("/v1/workloads/allowed");
    status = r ? r->status : 0;
    if (status != 200) std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_EQ(status, 200);
  auto del = admin.Delete("/v1/workloads/allowed");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
}

TEST_F(SecureControllerTest, AChangedTokenFileIsReRead) {
  const std::string fresh = "itest-fresh-0123456789abcdefABCDEF";
  files_->WriteTokens("tokens.csv", TokenText() + fresh + ",read-only,itest-fresh\n");
  // The controller looks at the file at most every 2 s; wait up to 30 s.
  int status = 0;
  for (int i = 0; i < 300 && status != 200; ++i) {
    auto r = Https(fresh).Get("/v1/leader");
    status = r ? r->status : 0;
    if (status != 200) std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_EQ(status, 200) << "the new token was not accepted";
  // A broken file keeps the tokens in force.
  files_->WriteTokens("tokens.csv", "this is, not a token file\n");
  std::this_thread::sleep_for(milliseconds(2500));
  auto r = Https(fresh).Get("/v1/leader");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  files_->WriteTokens("tokens.csv", TokenText());
}

// --- refusing to start -----------------------------------------------------------------

class ControllerRefusesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string bin = ControllerBinary();
    if (bin.empty() || ::access(bin.c_str(), X_OK) != 0) {
      GTEST_SKIP() << "CONTROLLER AUTH TEST SKIPPED: controller binary " << bin << " not built";
    }
    if (Shell("command -v openssl").first != 0) {
      GTEST_SKIP() << "CONTROLLER AUTH TEST SKIPPED: openssl CLI not found";
    }
    ASSERT_FALSE(files_.dir().empty());
    ASSERT_EQ(files_.MakePki(), "");
    files_.WriteTokens("tokens.csv", TokenText());
    files_.WriteTokens("bad-tokens.csv", "0123456789abcdef0123,superuser,x\n");
  }

  // Runs the controller with `args` (after an etcd nobody listens on) and
  // expects it to exit 2 at once, saying `expected`.
  void ExpectRefusal(const std::vector<std::string>& args, const std::string& expected) {
    std::vector<std::string> all = {ControllerBinary(), "--etcd", "127.0.0.1:1", "--listen",
                                    "127.0.0.1:" + std::to_string(FreePort())};
    all.insert(all.end(), args.begin(), args.end());
    std::string what;
    for (const auto& a : args) what += " " + a;
    Process p(all, files_.Path("refused.log"));
    auto code = p.Wait(seconds(20));
    ASSERT_TRUE(code.has_value()) << what << ": still running after 20 s:\n" << p.Log();
    EXPECT_EQ(*code, 2) << what << ":\n" << p.Log();
    EXPECT_NE(p.Log().find(expected), std::string::npos) << what << ":\n" << p.Log();
  }

  Files files_;
};

TEST_F(ControllerRefusesTest, WithoutATokenFileOrNoAuth) {
  ExpectRefusal({"--tls-cert", files_.Path("server.crt"), "--tls-key", files_.Path("server.key")},
                "--token-file");
  ExpectRefusal({"--no-tls"}, "--no-auth");
}

TEST_F(ControllerRefusesTest, WithoutACertificateOrNoTls) {
  ExpectRefusal({"--token-file", files_.Path("tokens.csv")}, "--no-tls");
  ExpectRefusal({"--no-auth"}, "--tls-cert");
  ExpectRefusal({"--no-auth", "--tls-cert", files_.Path("server.crt")}, "--tls-key");
}

TEST_F(ControllerRefusesTest, WhenTheFilesAreMissingOrUnusable) {
  ExpectRefusal({"--no-tls", "--token-file", files_.Path("missing.csv")},
                files_.Path("missing.csv"));
  ExpectRefusal({"--no-tls", "--token-file", files_.Path("bad-tokens.csv")}, "line 1");
  ExpectRefusal({"--no-auth", "--tls-cert", files_.Path("missing.crt"), "--tls-key",
                 files_.Path("server.key")},
                files_.Path("missing.crt"));
  // A key that is not the certificate's.
  ExpectRefusal(
      {"--no-auth", "--tls-cert", files_.Path("server.crt"), "--tls-key", files_.Path("other.key")},
      "--tls-cert");
  // Not PEM at all.
  ExpectRefusal({"--no-auth", "--tls-cert", files_.Path("tokens.csv"), "--tls-key",
                 files_.Path("server.key")},
                "--tls-cert");
}

TEST_F(ControllerRefusesTest, ContradictoryFlags) {
  ExpectRefusal({"--no-auth", "--no-tls", "--token-file", files_.Path("tokens.csv")},
                "--no-auth and --token-file");
  ExpectRefusal({"--no-auth", "--no-tls", "--tls-cert", files_.Path("server.crt")},
                "--no-tls and --tls-cert");
}

}  // namespace
}  // namespace kmosix::testing
