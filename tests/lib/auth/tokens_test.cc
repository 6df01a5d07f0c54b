// controller/auth: the token file parser, role checks, reloads on a changed
// file (FakeClock), and InstallAuth on a real httplib server on 127.0.0.1.
#include "auth/tokens.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "fakes/fake_clock.h"

namespace kmosix::auth {
namespace {

using nlohmann::json;
using Verdict = AuthDecision::Verdict;

constexpr char kAdminToken[] = "adm1n-t0ken-0123456789abcdef";
constexpr char kViewerToken[] = "v1ewer-t0ken-0123456789abcdef";

std::string TwoTokens() {
  return std::string("# kmosix tokens\n") + kAdminToken + ",admin,alice\n\n" + kViewerToken +
         ",read-only,dashboard\n";
}

TokenSet MustParse(const std::string& text) {
  auto t = ParseTokenFile(text);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : TokenSet{};
}

// --- ParseTokenFile ---------------------------------------------------------------

TEST(ParseTokenFile, ReadsTokensRolesAndNamesSkippingCommentsAndBlankLines) {
  auto t = ParseTokenFile(TwoTokens());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(t->entries.size(), 2u);
  EXPECT_EQ(t->entries[0].token, kAdminToken);
  EXPECT_EQ(t->entries[0].role, Role::kAdmin);
  EXPECT_EQ(t->entries[0].name, "alice");
  EXPECT_EQ(t->entries[0].line, 2);
  EXPECT_EQ(t->entries[1].token, kViewerToken);
  EXPECT_EQ(t->entries[1].role, Role::kReadOnly);
  EXPECT_EQ(t->entries[1].name, "dashboard");
  EXPECT_EQ(t->entries[1].line, 4);
}

TEST(ParseTokenFile, TrimsSpacesAndCarriageReturnsAndAcceptsNoFinalNewline) {
  auto t =
      ParseTokenFile(std::string("  ") + kAdminToken + " , admin ,\talice  \r\n   # indented\r\n" +
                     kViewerToken + ",read-only,bob@example.com");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(t->entries.size(), 2u);
  EXPECT_EQ(t->entries[0].token, kAdminToken);
  EXPECT_EQ(t->entries[0].name, "alice");
  EXPECT_EQ(t->entries[1].name, "bob@example.com");
}

TEST(ParseTokenFile, AcceptsBase64AndBase64UrlTokens) {
  auto t = ParseTokenFile(
      "dGhpcyBpcyBhIHRva2Vu+/==,admin,a\n"
      "dGhpcyBpcyBhIHRva2Vu-_~.,read-only,b\n");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->entries.size(), 2u);
}

struct BadCase {
  std::string what;
  std::string text;
  std::string expected;  // substring of the error message
};

TEST(ParseTokenFile, RejectsBadLinesNamingTheLineAndNeverTheToken) {
  const std::string ok = std::string(kAdminToken) + ",admin,alice\n";
  const std::vector<BadCase> cases = {
      {"two fields", ok + "0123456789abcdef0123,admin\n", "line 2: expected TOKEN,ROLE,NAME"},
      {"four fields", "# c\n0123456789abcdef0123,admin,bob,extra\n", "line 2: expected"},
      {"one field", "0123456789abcdef0123\n", "line 1: expected"},
      {"short token", ok + "\n\nshort-token-123,admin,bob\n", "line 4: token shorter than 16"},
      {"long token", std::string(600, 'a') + ",admin,bob\n", "line 1: token longer than"},
      {"space in token", "0123456789 abcdef0123,admin,bob\n", "line 1: token has a character"},
      {"quote in token", "0123456789\"abcdef0123,admin,bob\n", "line 1: token has a character"},
      {"NUL in token", std::string("0123456789\0abcdef0123,admin,bob\n", 32),
       "line 1: token has a character"},
      {"unknown role", ok + "0123456789abcdef0123,root,bob\n", "line 2: role must be admin or"},
      {"role case", "0123456789abcdef0123,Admin,bob\n", "line 1: role must be"},
      {"empty role", "0123456789abcdef0123,,bob\n", "line 1: role must be"},
      {"empty name", "0123456789abcdef0123,admin,\n", "line 1: name must be"},
      {"name with space", "0123456789abcdef0123,admin,bob smith\n", "line 1: name must be"},
      {"long name", "0123456789abcdef0123,admin," + std::string(65, 'n') + "\n",
       "line 1: name must be"},
      {"duplicate token", ok + "# again\n" + kAdminToken + ",read-only,bob\n",
       "line 3: the same token as line 1"},
      {"duplicate name", ok + "0123456789abcdef0123,read-only,alice\n",
       "line 2: name \"alice\" already used on line 1"},
      {"empty file", "", "no tokens"},
      {"comments only", "# nothing\n\n   \n# here\n", "no tokens"},
  };
  for (const auto& c : cases) {
    auto t = ParseTokenFile(c.text);
    ASSERT_FALSE(t.ok()) << c.what;
    EXPECT_EQ(t.status().code(), Code::kInvalid) << c.what;
    EXPECT_NE(t.status().message().find(c.expected), std::string::npos)
        << c.what << ": " << t.status().message();
    EXPECT_EQ(t.status().message().find("0123456789abcdef0123"), std::string::npos) << c.what;
    EXPECT_EQ(t.status().message().find(kAdminToken), std::string::npos) << c.what;
  }
}

TEST(ParseTokenFile, OddInputNeverCrashes) {
  for (std::string s : {std::string("\n\n\n"), std::string(",,"), std::string(",,,,\n,"),
                        std::string("\r"), std::string(1, '\0'), std::string("#"),
                        std::string(3000, ','), std::string("a,b,c\r\r\n")}) {
    auto t = ParseTokenFile(s);
    EXPECT_FALSE(t.ok());
  }
}

// --- roles -----------------------------------------------------------------------------

TEST(Authenticator, AdminMayReadAndWrite) {
  Authenticator auth(MustParse(TwoTokens()));
  for (bool write : {false, true}) {
    AuthDecision d = auth.Authenticate(std::string("Bearer ") + kAdminToken, write);
    EXPECT_TRUE(d.allowed()) << d.message;
    EXPECT_EQ(d.name, "alice");
    EXPECT_EQ(d.role, Role::kAdmin);
    EXPECT_EQ(d.HttpStatus(), 200);
  }
}

TEST(Authenticator, ReadOnlyMayReadButNotWrite) {
  Authenticator auth(MustParse(TwoTokens()));
  AuthDecision r = auth.Authenticate(std::string("Bearer ") + kViewerToken, false);
  EXPECT_TRUE(r.allowed()) << r.message;
  EXPECT_EQ(r.name, "dashboard");
  EXPECT_EQ(r.role, Role::kReadOnly);

  AuthDecision w = auth.Authenticate(std::string("Bearer ") + kViewerToken, true);
  EXPECT_EQ(w.verdict, Verdict::kForbidden);
  EXPECT_EQ(w.HttpStatus(), 403);
  EXPECT_EQ(w.CodeName(), "permission_denied");
  EXPECT_EQ(w.name, "dashboard");
  EXPECT_NE(w.message.find("read-only"), std::string::npos) << w.message;
  EXPECT_EQ(w.message.find(kViewerToken), std::string::npos);
}

TEST(Authenticator, MissingMalformedOrUnknownTokensAreUnauthenticated) {
  Authenticator auth(MustParse(TwoTokens()));
  const std::string admin = kAdminToken;
  for (const std::string& h :
       {std::string(""), std::string("   "), std::string("Bearer"), std::string("Bearer    "),
        "Basic " + admin, admin, "Bearer" + admin, "Bearer " + admin + "x",
        "Bearer " + admin.substr(0, admin.size() - 1), std::string("Bearer 0123456789abcdef0123"),
        "Bearer " + admin + " extra"}) {
    for (bool write : {false, true}) {
      AuthDecision d = auth.Authenticate(h, write);
      EXPECT_EQ(d.verdict, Verdict::kUnauthenticated) << "header '" << h << "'";
      EXPECT_EQ(d.HttpStatus(), 401);
      EXPECT_EQ(d.CodeName(), "unauthenticated");
      EXPECT_TRUE(d.name.empty());
      EXPECT_FALSE(d.message.empty());
      EXPECT_EQ(d.message.find(admin), std::string::npos);
    }
  }
}

TEST(Authenticator, SchemeIsCaseInsensitiveAndSpacesAreTolerated) {
  Authenticator auth(MustParse(TwoTokens()));
  for (const std::string& h :
       {std::string("bearer ") + kAdminToken, std::string("BEARER\t") + kAdminToken,
        std::string("  Bearer   ") + kAdminToken + "  "}) {
    EXPECT_TRUE(auth.Authenticate(h, true).allowed()) << h;
  }
}

// --- reloads -------------------------------------------------------------------------------

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TMPDIR");
    std::string t = std::string(tmp && *tmp ? tmp : "/tmp") + "/kmx-auth-XXXXXX";
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    dir_ = t;
    path_ = dir_ + "/tokens.csv";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Writes the file and moves its mtime on by `bump` (so that the change is
  // visible whatever the file system's timestamp granularity).
  void Write(const std::string& text) {
    std::ofstream(path_, std::ios::trunc) << text;
    auto now = std::filesystem::last_write_time(path_);
    std::filesystem::last_write_time(path_, now + std::chrono::seconds(++bumps_));
  }
  bool Allowed(Authenticator& a, const std::string& token, bool write = false) {
    return a.Authenticate("Bearer " + token, write).allowed();
  }

  std::string dir_, path_;
  int bumps_ = 0;
  testing::FakeClock clock_;
};

TEST_F(TokenFileTest, LoadReportsAMissingOrInvalidFile) {
  auto missing = Authenticator::Load(path_, clock_);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  Write("0123456789abcdef0123,admin,alice\nshort,admin,bob\n");
  auto bad = Authenticator::Load(path_, clock_);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalid);
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find(path_), std::string::npos) << bad.status().message();
}

TEST_F(TokenFileTest, ReloadsAChangedFileAtMostEveryTwoSeconds) {
  const std::string a = "aaaaaaaaaaaaaaaaaaaa", b = "bbbbbbbbbbbbbbbbbbbb";
  Write(a + ",admin,alice\n");
  auto loaded = Authenticator::Load(path_, clock_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  Authenticator& auth = **loaded;
  EXPECT_TRUE(Allowed(auth, a, true));
  EXPECT_FALSE(Allowed(auth, b));

  Write(b + ",admin,bob\n" + a + ",read-only,alice\n");
  clock_.Advance(std::chrono::milliseconds(1500));  // not yet looked at
  EXPECT_FALSE(Allowed(auth, b));
  EXPECT_TRUE(Allowed(auth, a, true));
  clock_.Advance(std::chrono::milliseconds(600));  // 2.1 s: re-read
  EXPECT_TRUE(Allowed(auth, b, true));
  EXPECT_TRUE(Allowed(auth, a, false));
  EXPECT_EQ(auth.Authenticate("Bearer " + a, true).verdict, Verdict::kForbidden);
  EXPECT_EQ(auth.TokenCount(), 2u);
}

TEST_F(TokenFileTest, AnInvalidOrMissingNewFileKeepsTheTokensInForce) {
  const std::string a = "aaaaaaaaaaaaaaaaaaaa", c = "cccccccccccccccccccc";
  Write(a + ",admin,alice\n");
  auto loaded = Authenticator::Load(path_, clock_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  Authenticator& auth = **loaded;

  Write(c + ",admin,carol\nshort,admin,bob\n");  // line 2 is bad
  clock_.Advance(std::chrono::seconds(3));
  EXPECT_TRUE(Allowed(auth, a, true));
  EXPECT_FALSE(Allowed(auth, c));
  clock_.Advance(std::chrono::seconds(3));  // the same bad version: still the old tokens
  EXPECT_TRUE(Allowed(auth, a, true));

  std::filesystem::remove(path_);
  clock_.Advance(std::chrono::seconds(3));
  EXPECT_TRUE(Allowed(auth, a, true));
  EXPECT_EQ(auth.TokenCount(), 1u);

  Write(c + ",admin,carol\n");  // fixed: taken
  clock_.Advance(std::chrono::seconds(3));
  EXPECT_TRUE(Allowed(auth, c, true));
  EXPECT_FALSE(Allowed(auth, a));
}

TEST_F(TokenFileTest, AFileReplacedByRenameIsNoticed) {
  const std::string a = "aaaaaaaaaaaaaaaaaaaa", d = "dddddddddddddddddddd";
  Write(a + ",admin,alice\n");
  auto loaded = Authenticator::Load(path_, clock_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const std::string next = dir_ + "/tokens.csv.new";
  std::ofstream(next) << d << ",admin,dave\n";
  std::filesystem::rename(next, path_);
  clock_.Advance(std::chrono::seconds(2));
  EXPECT_TRUE(Allowed(**loaded, d, true));
  EXPECT_FALSE(Allowed(**loaded, a));
}

// --- InstallAuth on a real server -------------------------------------------------------

class AuthServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auth_ = std::make_unique<Authenticator>(MustParse(TwoTokens()));
    server_.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    server_.Get("/readyz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"status\":\"ready\"}", "application/json");
    });
    server_.Get("/v1/things", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"count\":" + std::to_string(count_.load()) + "}", "application/json");
    });
    server_.Post("/v1/things", [this](const httplib::Request& req, httplib::Response& res) {
      ++count_;
      last_body_ = req.body;
      res.status = 201;
      res.set_content("{}", "application/json");
    });
    server_.Delete("/v1/things", [this](const httplib::Request&, httplib::Response& res) {
      count_ = 0;
      res.set_content("{}", "application/json");
    });
    InstallAuth(server_, *auth_);
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // bind_to_any_port also listens: connections queue until the loop runs.
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  void TearDown() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  httplib::Client Client(const std::string& token = "") {
    httplib::Client c("127.0.0.1", port_);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(5, 0);
    if (!token.empty()) c.set_bearer_token_auth(token.c_str());
    return c;
  }
  static void ExpectError(const httplib::Result& r, int status, const std::string& code) {
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, status) << r->body;
    json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r->body;
    EXPECT_EQ(j.value("code", ""), code) << r->body;
    EXPECT_FALSE(j.value("message", "").empty()) << r->body;
    EXPECT_NE(r->get_header_value("Content-Type").find("application/json"), std::string::npos);
    if (status == 401) {
      EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer realm=\"kmosix\"");
    }
  }

  std::unique_ptr<Authenticator> auth_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> count_{0};
  std::string last_body_;
};

TEST_F(AuthServerTest, ProbesAreOpen) {
  auto c = Client();
  auto h = c.Get("/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto r = c.Get("/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(AuthServerTest, NoTokenOrAnUnknownOneIs401AndChangesNothing) {
  auto anon = Client();
  ExpectError(anon.Get("/v1/things"), 401, "unauthenticated");
  ExpectError(anon.Post("/v1/things", "{\"x\":1}", "application/json"), 401, "unauthenticated");
  auto stranger = Client("0123456789abcdef0123");
  ExpectError(stranger.Get("/v1/things"), 401, "unauthenticated");
  ExpectError(stranger.Delete("/v1/things"), 401, "unauthenticated");
  ExpectError(anon.Get("/v1/no-such-route"), 401, "unauthenticated");
  EXPECT_EQ(count_.load(), 0);
}

TEST_F(AuthServerTest, ReadOnlyTokenMayGetButNotWrite) {
  auto viewer = Client(kViewerToken);
  auto g = viewer.Get("/v1/things");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200) << g->body;
  auto h = viewer.Head("/v1/things");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  ExpectError(viewer.Post("/v1/things", "{\"x\":1}", "application/json"), 403, "permission_denied");
  ExpectError(viewer.Delete("/v1/things"), 403, "permission_denied");
  ExpectError(viewer.Put("/v1/things", "{}", "application/json"), 403, "permission_denied");
  EXPECT_EQ(count_.load(), 0);
  EXPECT_TRUE(last_body_.empty());
}

TEST_F(AuthServerTest, AdminTokenMayWrite) {
  auto admin = Client(kAdminToken);
  auto p = admin.Post("/v1/things", "{\"x\":1}", "application/json");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 201) << p->body;
  EXPECT_EQ(count_.load(), 1);
  EXPECT_EQ(last_body_, "{\"x\":1}");
  auto g = admin.Get("/v1/things");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200);
  EXPECT_EQ(g->body, "{\"count\":1}");
}

TEST_F(AuthServerTest, ADeniedRequestClosesTheConnectionSoItsUnreadBodyIsNeverParsed) {
  // A denial is answered before the body is read. It says Connection: close,
  // so the client's next request goes on a fresh connection and is not mixed
  // up with the unread body (which here looks like a request itself).
  auto c = Client(kViewerToken);
  c.set_keep_alive(true);
  std::string body = "GET /v1/things HTTP/1.1\r\nHost: x\r\n\r\n";
  body += std::string(100'000, 'x');
  auto denied = c.Post("/v1/things", body, "text/plain");
  ExpectError(denied, 403, "permission_denied");
  if (denied) {
    EXPECT_EQ(denied->get_header_value("Connection"), "close");
  }
  auto g = c.Get("/v1/things");
  ASSERT_TRUE(g) << httplib::to_string(g.error());
  EXPECT_EQ(g->status, 200) << g->body;
  EXPECT_EQ(g->body, "{\"count\":0}");
  EXPECT_EQ(count_.load(), 0);
}

}  // namespace
}  // namespace kmosix::auth
