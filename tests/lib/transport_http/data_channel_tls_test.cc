// The data channel over mutual TLS (lib/transport_http/data_channel.h), on
// loopback sockets with certificates made by TestPki: streams arrive intact
// and equal to the plain channel's; clients without a certificate, with one
// of another CA, or in plain TCP are refused before the target sees a byte;
// the authorize hook refuses a node for a migration that is not its own with
// permission_denied; the client refuses a server whose certificate does not
// name the host it dialled or the node it expected; large streams through
// small buffers; TLS 1.2's half-close; rotation of the server's certificate;
// session resumption; the busy answer before TLS.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "fakes/fake_clock.h"
#include "kmosix/transfer_stream.h"
#include "support/data_channel_answer.h"
#include "support/test_pki.h"
#include "tls/tls.h"
#include "transport_http/data_channel.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Lands every migration under land/<id>/criu and records what it saw.
class RecordingTarget : public MigrationTarget {
 public:
  explicit RecordingTarget(std::string land) : land_(std::move(land)) {}
  PeerInfo Info() override { return {"node2", "test"}; }
  Status Prepare(const MigrationOffer&) override { return Status::Ok(); }
  StatusOr<Landing> BeginReceive(const std::string& id) override {
    std::lock_guard l(mu_);
    ++begins_;
    fs::create_directories(land_ + "/" + id + "/criu");
    return Landing{{{"criu", land_ + "/" + id + "/criu", false}}};
  }
  Status EndReceive(const std::string&, const Status& result, const TransferStats&) override {
    std::lock_guard l(mu_);
    ends_.push_back(result);
    return Status::Ok();
  }
  StatusOr<RestoreReport> Restore(const std::string&) override { return NotFoundError("none"); }
  StatusOr<TargetPhase> Commit(const std::string&) override { return TargetPhase::kAborted; }
  StatusOr<TargetPhase> Abort(const std::string&) override { return TargetPhase::kAborted; }
  StatusOr<TargetPhase> Query(const std::string&) override { return TargetPhase::kUnknown; }

  int begins() {
    std::lock_guard l(mu_);
    return begins_;
  }
  std::vector<Status> ends() {
    std::lock_guard l(mu_);
    return ends_;
  }

 private:
  std::string land_;
  std::mutex mu_;
  int begins_ = 0;
  std::vector<Status> ends_;
};

template <typename F>
bool WaitUntil(F f) {
  for (int i = 0; i < 1000; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return f();
}

class DataChannelTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);
    if (!testing::TestPki::OpensslPresent())
      GTEST_SKIP() << "SKIPPED: openssl CLI not found: cannot make test certificates";
    char tmpl[] = "/tmp/kmx-dctls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    pki_ = std::make_unique<testing::TestPki>(tmp_ + "/pki");
    ASSERT_EQ(pki_->MakeCa(), "");
    ASSERT_EQ(pki_->MakeCa("other"), "");
    ASSERT_EQ(pki_->MakeLeaf("server", "node2", {tls::kGroupNodes}), "");
    ASSERT_EQ(pki_->MakeLeaf("node1", "node1", {tls::kGroupNodes}), "");
    ASSERT_EQ(pki_->MakeLeaf("node3", "node3", {tls::kGroupNodes}), "");
    ASSERT_EQ(pki_->MakeLeaf("stranger", "node1", {tls::kGroupNodes}, {}, "other"), "");
    fs::create_directories(tmp_ + "/src/criu");
    fs::create_directories(tmp_ + "/land");
    target_ = std::make_unique<RecordingTarget>(tmp_ + "/land");
  }
  void TearDown() override {
    if (server_) server_->Stop();
    server_.reset();
    creds_.reset();
    if (!tmp_.empty()) fs::remove_all(tmp_);
  }

  // A source file of `bytes` pseudo-random bytes at src/criu/pages-1.img.
  void MakeSource(size_t bytes) {
    std::string data(bytes, '\0');
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < bytes; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      data[i] = static_cast<char>(x);
    }
    std::ofstream(tmp_ + "/src/criu/pages-1.img", std::ios::binary) << data;
    std::ofstream(tmp_ + "/src/criu/core-1.img") << "core";
  }
  std::string SourcePages() { return ReadFile(tmp_ + "/src/criu/pages-1.img"); }
  std::string LandedPages(const std::string& id) {
    return ReadFile(tmp_ + "/land/" + id + "/criu/pages-1.img");
  }

  void Serve(bool with_tls, DataServer::Options o = {}, const std::string& host = "127.0.0.1") {
    if (with_tls) {
      auto loaded = tls::ServerCredentials::Load(
          {pki_->Ca(), pki_->Cert("server"), pki_->Key("server")}, clock_);
      ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
      creds_ = std::move(*loaded);
      o.tls = creds_.get();
    }
    server_ = std::make_unique<DataServer>(*target_, clock_, o);
    Status s = server_->Start(host, 0);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  tls::Files ClientFiles(const std::string& who, const std::string& ca = "ca") {
    return {pki_->Ca(ca), pki_->Cert(who), pki_->Key(who)};
  }

  StatusOr<TransferStats> Send(const std::string& id, DataChannelOptions o,
                               const std::string& host = "127.0.0.1", EncoderOptions e = {}) {
    auto enc = StreamEncoder::Create({{"criu", tmp_ + "/src/criu", false}}, e);
    if (!enc.ok()) return enc.status();
    return SendStream(host, server_->port(), id, **enc, o);
  }

  // The whole transfer stream of the source, as bytes.
  std::string EncodedStream() {
    auto enc = StreamEncoder::Create({{"criu", tmp_ + "/src/criu", false}});
    EXPECT_TRUE(enc.ok());
    std::string out;
    std::vector<char> buf(1 << 20);
    while (true) {
      auto n = (*enc)->Read(buf.data(), buf.size());
      if (!n.ok() || *n == 0) break;
      out.append(buf.data(), *n);
    }
    return out;
  }

  // A hand-made TLS client (`ctx` as the test sets it up): handshake, the
  // bytes, close_notify (or only a TCP half-close), and the server's answer
  // line ("" if none).
  std::string RawTlsSend(SSL_CTX* ctx, const std::string& bytes, bool close_notify = true) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(server_->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return "";
    }
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    std::string answer;
    if (SSL_connect(ssl) == 1) {
      size_t off = 0;
      while (off < bytes.size()) {
        int w = SSL_write(ssl, bytes.data() + off, static_cast<int>(bytes.size() - off));
        if (w <= 0) break;
        off += static_cast<size_t>(w);
      }
      if (close_notify) {
        SSL_shutdown(ssl);
      } else {
        ::shutdown(fd, SHUT_WR);
      }
      answer = testing::ReadDataChannelAnswer([&](char& c) { return SSL_read(ssl, &c, 1) == 1; });
    }
    SSL_free(ssl);
    ::close(fd);
    ERR_clear_error();
    return answer;
  }

  std::string tmp_;
  std::unique_ptr<testing::TestPki> pki_;
  testing::FakeClock clock_;
  std::unique_ptr<RecordingTarget> target_;
  std::unique_ptr<tls::ServerCredentials> creds_;
  std::unique_ptr<DataServer> server_;
};

TEST_F(DataChannelTlsTest, StreamOverMutualTlsArrivesIntactLikeThePlainOne) {
  MakeSource(5 << 20);
  Serve(/*with_tls=*/false);
  auto plain = Send("m-plain", {});
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  server_->Stop();

  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> asked;  // (peer, migration)
  DataServer::Options o;
  o.authorize = [&](const tls::Identity& peer, const std::string& id) {
    std::lock_guard l(mu);
    asked.emplace_back(peer.name + (peer.In(tls::kGroupNodes) ? "|nodes" : ""), id);
    return Status::Ok();
  };
  Serve(/*with_tls=*/true, o);
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  c.expected_server_name = "node2";
  auto secured = Send("m-tls", c);
  ASSERT_TRUE(secured.ok()) << secured.status().ToString();

  EXPECT_EQ(secured->bytes, plain->bytes);
  EXPECT_EQ(secured->files, plain->files);
  EXPECT_EQ(LandedPages("m-tls"), SourcePages());
  EXPECT_EQ(LandedPages("m-plain"), SourcePages());
  std::lock_guard l(mu);
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].first, "node1|nodes");
  EXPECT_EQ(asked[0].second, "m-tls");
  EXPECT_EQ(server_->handshake_failures(), 0u);
}

// A stream without file digests (what HttpTransport sends over TLS) lands
// over mutual TLS, whose records authenticate it, and is refused on a plain
// channel, where nothing would catch a changed byte.
TEST_F(DataChannelTlsTest, StreamsWithoutFileDigestsOnlyOverTls) {
  MakeSource(3 << 20);
  EncoderOptions undigested;
  undigested.content_digests = false;
  Serve(/*with_tls=*/false);
  auto plain = Send("m-plain", {}, "127.0.0.1", undigested);
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.status().message().find("without file digests"), std::string::npos)
      << plain.status().ToString();
  EXPECT_FALSE(fs::exists(tmp_ + "/land/m-plain/criu/pages-1.img"));
  server_->Stop();

  Serve(/*with_tls=*/true);
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  c.expected_server_name = "node2";
  auto secured = Send("m-tls", c, "127.0.0.1", undigested);
  ASSERT_TRUE(secured.ok()) << secured.status().ToString();
  EXPECT_EQ(LandedPages("m-tls"), SourcePages());
}

// A target that fails while the source is still sending (here: the stream
// declares more than it takes) answers at once and drains; the source stops
// and reports the target's reason, not a reset connection. Plain and TLS.
TEST_F(DataChannelTlsTest, TargetFailingMidStreamIsHeardNotReset) {
  MakeSource(24 << 20);  // more than the sockets hold
  for (bool with_tls : {false, true}) {
    SCOPED_TRACE(with_tls ? "tls" : "plain");
    DataServer::Options o;
    o.decoder.max_bytes = 1 << 20;
    Serve(with_tls, o);
    DataChannelOptions c;
    if (with_tls) {
      c.tls = ClientFiles("node1");
      c.expected_server_name = "node2";
    }
    for (int i = 0; i < 3; ++i) {
      auto sent = Send("m-big-" + std::to_string(i) + (with_tls ? "t" : "p"), c);
      ASSERT_FALSE(sent.ok());
      EXPECT_EQ(sent.status().code(), Code::kInvalid) << sent.status().ToString();
      EXPECT_NE(sent.status().message().find("limit"), std::string::npos)
          << sent.status().ToString();
    }
    server_->Stop();
  }
}

TEST_F(DataChannelTlsTest, ClientsWithoutACertificateOfTheCaAreRefusedBeforeTheTarget) {
  MakeSource(1 << 20);
  Serve(/*with_tls=*/true);
  const std::string stream = "KMXDATA2 m-1\n" + EncodedStream();

  // No client certificate at all (a client that trusts the server's CA).
  tls::CtxPtr anonymous(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  ASSERT_EQ(SSL_CTX_load_verify_locations(anonymous.get(), pki_->Ca().c_str(), nullptr), 1);
  SSL_CTX_set_verify(anonymous.get(), SSL_VERIFY_PEER, nullptr);
  EXPECT_EQ(RawTlsSend(anonymous.get(), stream), "");
  EXPECT_TRUE(WaitUntil([&] { return server_->handshake_failures() == 1; }));

  // A valid certificate of another CA (the client itself trusts ours).
  DataChannelOptions c;
  c.tls = {pki_->Ca(), pki_->Cert("stranger"), pki_->Key("stranger")};
  auto stranger = Send("m-1", c);
  EXPECT_FALSE(stranger.ok());
  EXPECT_TRUE(WaitUntil([&] { return server_->handshake_failures() == 2; }));

  // Plain TCP to a TLS channel.
  auto plain = Send("m-1", {});
  EXPECT_FALSE(plain.ok());
  EXPECT_TRUE(WaitUntil([&] { return server_->handshake_failures() == 3; }));

  EXPECT_EQ(target_->begins(), 0) << "the target saw a refused stream";
  EXPECT_FALSE(fs::exists(tmp_ + "/land/m-1"));
}

TEST_F(DataChannelTlsTest, AuthorizeRefusesANodeThatIsNotTheMigrationsSource) {
  MakeSource(24 << 20);  // more than the sockets hold: the refusal meets a writing source
  DataServer::Options o;
  std::atomic<int> heard{0};
  o.on_denied = [&](const std::string& reason) {
    if (reason == "not_allowed") heard.fetch_add(1);
  };
  // This target was told: m-1 comes from node1, and only from node1.
  o.authorize = [](const tls::Identity& peer, const std::string& id) {
    if (id == "m-1" && peer.name == "node1" && peer.In(tls::kGroupNodes)) return Status::Ok();
    return PermissionDeniedError("node " + peer.name + " is not the source of " + id);
  };
  Serve(/*with_tls=*/true, o);

  DataChannelOptions wrong_node;
  wrong_node.tls = ClientFiles("node3");
  auto refused = Send("m-1", wrong_node);
  EXPECT_EQ(refused.status().code(), Code::kPermissionDenied) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("node3 is not the source of m-1"), std::string::npos)
      << refused.status().message();

  DataChannelOptions right_node;
  right_node.tls = ClientFiles("node1");
  auto unordered = Send("m-2", right_node);  // a migration nobody gave node1
  EXPECT_EQ(unordered.status().code(), Code::kPermissionDenied);
  EXPECT_EQ(target_->begins(), 0) << "the target saw a refused stream";
  EXPECT_EQ(server_->denied_streams(), 2u);
  EXPECT_EQ(heard.load(), 2);

  auto ok = Send("m-1", right_node);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(target_->begins(), 1);
  EXPECT_EQ(LandedPages("m-1"), SourcePages());
}

TEST_F(DataChannelTlsTest, ClientRefusesAServerNotNamedForTheHostOrTheNode) {
  MakeSource(64 << 10);
  // The server's certificate names 127.0.0.1 and localhost, not 127.0.0.2.
  Serve(/*with_tls=*/true, {}, "127.0.0.2");
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  auto other_host = Send("m-1", c, "127.0.0.2");
  EXPECT_EQ(other_host.status().code(), Code::kFailed) << other_host.status().ToString();
  EXPECT_NE(other_host.status().message().find("mismatch"), std::string::npos)
      << other_host.status().message();
  server_->Stop();

  Serve(/*with_tls=*/true);
  c.expected_server_name = "node3";  // the server is node2
  auto other_node = Send("m-1", c);
  EXPECT_EQ(other_node.status().code(), Code::kFailed) << other_node.status().ToString();
  EXPECT_NE(other_node.status().message().find("\"node2\", not the expected \"node3\""),
            std::string::npos)
      << other_node.status().message();

  // A server of another CA.
  DataChannelOptions trusting_other = c;
  trusting_other.tls = ClientFiles("stranger", "other");
  trusting_other.expected_server_name.clear();
  auto untrusted = Send("m-1", trusting_other);
  EXPECT_EQ(untrusted.status().code(), Code::kFailed) << untrusted.status().ToString();
  EXPECT_EQ(target_->begins(), 0);

  // By DNS name, the right node: accepted.
  c.expected_server_name = "node2";
  auto by_name = Send("m-1", c, "localhost");
  EXPECT_TRUE(by_name.ok()) << by_name.status().ToString();
}

TEST_F(DataChannelTlsTest, SeveralMiBThroughSmallOddBuffersOnBothSides) {
  MakeSource((9 << 20) + 12345);
  DataServer::Options o;
  o.buffer_size = 100003;  // reads end mid-record, records end mid-buffer
  Serve(/*with_tls=*/true, o);
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  c.buffer_size = (3 << 20) + 7;
  auto sent = Send("m-big", c);
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_EQ(LandedPages("m-big"), SourcePages());
}

TEST_F(DataChannelTlsTest, Tls12HalfCloseCarriesTheStreamAndTheAnswer) {
  MakeSource(2 << 20);
  Serve(/*with_tls=*/true);
  auto ctx = tls::MakeClientContext(ClientFiles("node1"));
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  SSL_CTX_set_max_proto_version(ctx->get(), TLS1_2_VERSION);
  auto answer = nlohmann::json::parse(RawTlsSend(ctx->get(), "KMXDATA2 m-12\n" + EncodedStream()),
                                      nullptr, false);
  ASSERT_TRUE(answer.is_object());
  EXPECT_TRUE(answer.contains("bytes")) << answer.dump();
  EXPECT_EQ(LandedPages("m-12"), SourcePages());

  // Without close_notify (a TCP FIN only: a truncation attack, or a cut) the
  // target aborts, even though every byte of the stream came. (It cannot
  // answer: the session ended in a TLS error.)
  RawTlsSend(ctx->get(), "KMXDATA2 m-cut\n" + EncodedStream(), /*close_notify=*/false);
  ASSERT_TRUE(WaitUntil([&] { return target_->ends().size() == 2; }));
  auto ends = target_->ends();
  ASSERT_EQ(ends.size(), 2u);
  EXPECT_TRUE(ends[0].ok()) << ends[0].ToString();
  EXPECT_FALSE(ends[1].ok());
}

TEST_F(DataChannelTlsTest, RotatedServerCertificateIsUsedByTheNextStream) {
  MakeSource(256 << 10);
  Serve(/*with_tls=*/true);
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  c.expected_server_name = "node2";
  ASSERT_TRUE(Send("m-1", c).ok());

  // The same files, now a certificate for node2b (written by rename, as a
  // rotation would), and the reload interval passed.
  ASSERT_EQ(pki_->MakeLeaf("server", "node2b", {tls::kGroupNodes}), "");
  clock_.Advance(tls::ServerCredentials::kReloadInterval + 1s);
  auto old_name = Send("m-2", c);
  EXPECT_EQ(old_name.status().code(), Code::kFailed) << "still the old certificate";
  c.expected_server_name = "node2b";
  auto rotated = Send("m-3", c);
  ASSERT_TRUE(rotated.ok()) << rotated.status().ToString();
  EXPECT_EQ(creds_->Reloads(), 1u);
  EXPECT_EQ(LandedPages("m-3"), SourcePages());
}

TEST_F(DataChannelTlsTest, SessionsResumeAndKeepTheClientsIdentity) {
  MakeSource(64 << 10);
  std::mutex mu;
  std::vector<std::string> peers;
  DataServer::Options o;
  o.authorize = [&](const tls::Identity& peer, const std::string&) {
    std::lock_guard l(mu);
    peers.push_back(peer.name);
    return Status::Ok();
  };
  Serve(/*with_tls=*/true, o);
  DataSessionCache cache;
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  c.sessions = &cache;
  ASSERT_TRUE(Send("m-1", c).ok());
  EXPECT_EQ(cache.resumed(), 0u);
  auto again = Send("m-2", c);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(cache.resumed(), 1u);
  std::lock_guard l(mu);
  EXPECT_EQ(peers, (std::vector<std::string>{"node1", "node1"}));
}

TEST_F(DataChannelTlsTest, BusyIsAnsweredBeforeTlsAndReadAsRetry) {
  MakeSource(64 << 10);
  DataServer::Options o;
  o.max_connections = 1;
  o.io_timeout = 3s;
  Serve(/*with_tls=*/true, o);
  // A connection that never starts its handshake holds the only slot.
  int hold = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(server_->port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(hold, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_TRUE(WaitUntil([&] { return server_->active_connections() == 1; }));
  DataChannelOptions c;
  c.tls = ClientFiles("node1");
  auto busy = Send("m-1", c);
  EXPECT_EQ(busy.status().code(), Code::kRetry) << busy.status().ToString();
  EXPECT_NE(busy.status().message().find("busy"), std::string::npos) << busy.status().message();
  EXPECT_EQ(server_->refused_connections(), 1u);
  ::close(hold);
  EXPECT_EQ(target_->begins(), 0);
}

}  // namespace
}  // namespace kmosix
