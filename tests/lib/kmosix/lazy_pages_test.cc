// Unit tests of the pure pieces of kmosix/lazy_pages.h: the relay between the
// target's lazy-pages daemon and the page stream (over socketpairs), and the
// parser of the daemon's log that decides "every page arrived".
#include "kmosix/lazy_pages.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

namespace kmosix {
namespace {

struct Pair {
  int near = -1, far = -1;
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0) {
      near = fds[0];
      far = fds[1];
    }
  }
  ~Pair() {
    if (near >= 0) ::close(near);
    if (far >= 0) ::close(far);
  }
};

std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

void WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    ASSERT_GT(n, 0);
    off += static_cast<size_t>(n);
  }
}

TEST(RelayBytesTest, CarriesBothWaysAndPassesEachEndOfFileOn) {
  Pair daemon, source;  // relay between daemon.near and source.near
  ASSERT_GE(daemon.near, 0);
  ASSERT_GE(source.near, 0);
  RelayCounts counts;
  std::thread relay([&] { counts = RelayBytes(daemon.near, source.near); });
  const std::string request = "GET pages 1..4";
  const std::string pages(3 << 20, 'p');  // larger than any socket buffer
  std::string got_pages, got_request;
  std::thread src([&] {
    got_request = ReadAll(source.far);  // until the daemon's half-close
    WriteAll(source.far, pages);
    ::shutdown(source.far, SHUT_WR);
  });
  WriteAll(daemon.far, request);
  ::shutdown(daemon.far, SHUT_WR);
  got_pages = ReadAll(daemon.far);  // until the source's half-close
  src.join();
  relay.join();
  EXPECT_EQ(got_request, request);
  EXPECT_EQ(got_pages.size(), pages.size());
  EXPECT_EQ(got_pages, pages);
  EXPECT_TRUE(counts.status.ok()) << counts.status.ToString();
  EXPECT_EQ(counts.a_to_b, request.size());
  EXPECT_EQ(counts.b_to_a, pages.size());
}

TEST(RelayBytesTest, AShutdownFromOutsideEndsIt) {
  Pair daemon, source;
  RelayCounts counts;
  std::thread relay([&] { counts = RelayBytes(daemon.near, source.near); });
  WriteAll(daemon.far, "x");
  char c = 0;
  ASSERT_EQ(::read(source.far, &c, 1), 1);
  EXPECT_EQ(c, 'x');
  // Neither end closed: the relay waits; shutting its sockets down (what
  // LazyTarget does when the daemon ends) ends it.
  ::shutdown(source.near, SHUT_RDWR);
  ::shutdown(daemon.near, SHUT_RDWR);
  relay.join();
  EXPECT_EQ(counts.a_to_b, 1u);
  EXPECT_EQ(counts.b_to_a, 0u);
}

TEST(LazyPagesLogTest, CompleteOnlyWhenEveryProcessGotAllItsPages) {
  EXPECT_FALSE(ParseLazyPagesLog("").complete);
  EXPECT_FALSE(ParseLazyPagesLog("(00.1) uffd: 7-5: #PF at 0x1000\n").complete);
  TransferSummary s = ParseLazyPagesLog(
      "(00.5) uffd: 7-5: UFFD transferred pages: (65600/65600)\n"
      "(00.6) uffd: 8-6: UFFD transferred pages: (12/12)\n");
  EXPECT_TRUE(s.complete);
  EXPECT_EQ(s.processes, 2);
  EXPECT_EQ(s.copied, 65612u);
  EXPECT_EQ(s.total, 65612u);
  s = ParseLazyPagesLog(
      "uffd: 7-5: UFFD transferred pages: (65600/65600)\n"
      "uffd: 8-6: UFFD transferred pages: (3/12)\n");
  EXPECT_FALSE(s.complete);
  EXPECT_EQ(s.processes, 2);
  EXPECT_EQ(s.total, 65612u);
  EXPECT_FALSE(ParseLazyPagesLog("uffd: 7-5: UFFD transferred pages: (garbage)\n").complete);
}

}  // namespace
}  // namespace kmosix
