// The text/event-stream parser: events split across chunks anywhere, line
// endings, comments, multi-line data, ids.
#include "kmosixctl/sse.h"

#include <gtest/gtest.h>

namespace kmosix::ctl {
namespace {

std::string Describe(const std::vector<SseEvent>& events) {
  std::string out;
  for (const auto& e : events) out += "[" + e.id + "|" + e.event + "|" + e.data + "]";
  return out;
}

const std::string kStream =
    ": welcome\n"
    "id: 1\nevent: migration.phase\ndata: {\"id\":1,\"phase\":\"Pending\"}\n\n"
    ": keepalive\n\n"
    "id: 2\nevent: node.ready\ndata: {\"id\":2}\n\n"
    "data: line one\ndata: line two\ndata\ndata:  indented\n\n"
    "event: no.data\n\n"
    "id: 3\nretry: 100\nunknown: x\ndata:x\n\n";
const std::string kExpected =
    "[1|migration.phase|{\"id\":1,\"phase\":\"Pending\"}]"
    "[2|node.ready|{\"id\":2}]"
    "[2|message|line one\nline two\n\n indented]"
    "[3|message|x]";

TEST(SseTest, WholeStreamInOneChunk) {
  SseParser p;
  EXPECT_EQ(Describe(p.Feed(kStream)), kExpected);
  EXPECT_EQ(p.LastEventId(), "3");
  EXPECT_EQ(p.Comments(), 2u);
}

TEST(SseTest, SplitAtEveryPositionGivesTheSameEvents) {
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    SseParser p;
    auto a = p.Feed(kStream.substr(0, cut));
    auto b = p.Feed(kStream.substr(cut));
    a.insert(a.end(), b.begin(), b.end());
    EXPECT_EQ(Describe(a), kExpected) << "cut at " << cut;
  }
}

TEST(SseTest, ByteByByte) {
  SseParser p;
  std::vector<SseEvent> all;
  for (char c : kStream) {
    auto got = p.Feed(std::string_view(&c, 1));
    all.insert(all.end(), got.begin(), got.end());
  }
  EXPECT_EQ(Describe(all), kExpected);
}

TEST(SseTest, CrLfAndCrLineEndingsEvenWhenSplitBetweenCrAndLf) {
  std::string crlf = kStream, cr = kStream;
  for (size_t i = 0; (i = crlf.find('\n', i)) != std::string::npos; i += 2)
    crlf.replace(i, 1, "\r\n");
  for (auto& c : cr)
    if (c == '\n') c = '\r';
  for (const std::string& s : {crlf, cr}) {
    for (size_t cut = 0; cut <= s.size(); ++cut) {
      SseParser p;
      auto a = p.Feed(s.substr(0, cut));
      auto b = p.Feed(s.substr(cut));
      a.insert(a.end(), b.begin(), b.end());
      ASSERT_EQ(Describe(a), kExpected) << "cut at " << cut;
    }
  }
}

TEST(SseTest, AnUnfinishedEventIsHeldBack) {
  SseParser p;
  EXPECT_TRUE(p.Feed("id: 9\ndata: {\"a\":1}\n").empty());
  EXPECT_EQ(p.LastEventId(), "9");
  auto got = p.Feed("\n");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "{\"a\":1}");
}

TEST(SseTest, CommentsOnlyDispatchNothing) {
  SseParser p;
  EXPECT_TRUE(p.Feed(": keepalive\n\n: keepalive\n\n").empty());
  EXPECT_EQ(p.Comments(), 2u);
}

}  // namespace
}  // namespace kmosix::ctl
