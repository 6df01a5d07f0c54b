// Tests for the transfer stream codec: round trips of every entry kind, and a
// hostile or damaged stream never completing nor writing outside its landing.
// Needs root (whiteouts are device nodes; ownership; trusted.* xattrs).
#include "kmosix/transfer_stream.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace kmosix {
namespace {

namespace fs = std::filesystem;

std::string Sha256Of(std::string_view data) {
  unsigned char d[32];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), d, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(d), 32);
}

std::string Hex(std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

void WriteFile(const std::string& path, std::string_view content, mode_t mode = 0644) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  ::close(fd);
  ASSERT_EQ(::chmod(path.c_str(), mode), 0);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void SetMtime(const std::string& path, int64_t sec, long nsec) {
  struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << path;
}

// A canonical description of every entry under root, keyed by relative path.
std::map<std::string, std::string> Snapshot(const std::string& root) {
  std::map<std::string, std::string> out;
  auto describe = [](const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return std::string("missing");
    std::string d = "mode=" + std::to_string(st.st_mode) + " uid=" + std::to_string(st.st_uid) +
                    " gid=" + std::to_string(st.st_gid);
    if (!S_ISDIR(st.st_mode)) {  // directory mtimes are compared separately
      d += " mtime=" + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
    }
    if (S_ISREG(st.st_mode)) d += " sha=" + Hex(Sha256Of(ReadFile(path)));
    if (S_ISLNK(st.st_mode)) d += " target=" + fs::read_symlink(path).string();
    if (S_ISCHR(st.st_mode)) d += " rdev=" + std::to_string(st.st_rdev);
    char buf[64];
    ssize_t n = ::lgetxattr(path.c_str(), "trusted.overlay.opaque", buf, sizeof(buf));
    if (n >= 0) d += " opaque=" + std::string(buf, n);
    return d;
  };
  out[""] = describe(root);
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    out[fs::relative(it->path(), root).string()] = describe(it->path().string());
  }
  return out;
}

std::map<std::string, std::string> DirMtimes(const std::string& root) {
  std::map<std::string, std::string> out;
  auto mt = [](const fs::path& p) {
    struct stat st {};
    ::lstat(p.c_str(), &st);
    return std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  };
  out[""] = mt(root);
  for (auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_directory() && !e.is_symlink()) out[fs::relative(e.path(), root).string()] = mt(e);
  }
  return out;
}

class TransferStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kmx-xfer-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    src_ = tmp_ + "/src";
    dst_ = tmp_ + "/dst";
    outside_ = tmp_ + "/outside";
    fs::create_directories(src_);
    fs::create_directories(dst_);
    fs::create_directories(outside_);
  }
  void TearDown() override { fs::remove_all(tmp_); }

  // Pulls the whole stream with reads of random sizes.
  std::string EncodeAll(const std::vector<Section>& sections, uint32_t seed = 1,
                        TransferStats* stats = nullptr, EncoderOptions options = {}) {
    auto enc = StreamEncoder::Create(sections, options);
    EXPECT_TRUE(enc.ok()) << enc.status().ToString();
    if (!enc.ok()) return "";
    std::mt19937 rng(seed);
    std::string out;
    std::vector<char> buf(3 << 20);
    for (;;) {
      size_t want = seed == 0 ? buf.size() : 1 + rng() % (rng() % 4 == 0 ? buf.size() : 9000);
      auto n = (*enc)->Read(buf.data(), want);
      EXPECT_TRUE(n.ok()) << n.status().ToString();
      if (!n.ok() || *n == 0) break;
      out.append(buf.data(), *n);
    }
    EXPECT_TRUE((*enc)->done());
    if (stats != nullptr) *stats = (*enc)->stats();
    if ((*enc)->sized()) {
      EXPECT_EQ(out.size(), (*enc)->stream_size());
      EXPECT_EQ((*enc)->stats().files, (*enc)->total_files());
      EXPECT_EQ((*enc)->stats().bytes, (*enc)->total_bytes());
    }
    return out;
  }

  // Feeds the stream in random chunks; returns the first error, or Finish().
  Status DecodeAll(std::string_view stream, const Landing& landing, uint32_t seed = 7,
                   TransferStats* stats = nullptr, DecoderOptions options = {}) {
    StreamDecoder dec(landing, options);
    std::mt19937 rng(seed);
    size_t off = 0;
    while (off < stream.size()) {
      size_t n = seed == 0 ? stream.size() : 1 + rng() % (rng() % 4 == 0 ? 2 << 20 : 5000);
      n = std::min(n, stream.size() - off);
      Status s = dec.Feed(stream.data() + off, n);
      if (!s.ok()) return s;
      off += n;
    }
    Status s = dec.Finish();
    if (stats != nullptr) *stats = dec.stats();
    if (s.ok()) {
      EXPECT_TRUE(dec.complete());
    }
    return s;
  }

  Landing DstLanding() {
    return Landing{{{"rootfs", dst_ + "/rootfs", false},
                    {"criu", dst_ + "/criu", false},
                    {"log", dst_ + "/log.txt", true}}};
  }

  // A tree with every entry kind, owners, modes, mtimes and an opaque dir.
  void BuildRichTree() {
    std::string r = src_ + "/rootfs";
    fs::create_directories(r + "/etc/deep/er");
    fs::create_directories(r + "/opaque/sub");
    fs::create_directories(r + "/empty");
    WriteFile(r + "/etc/hosts", "127.0.0.1 localhost\n");
    WriteFile(r + "/etc/empty", "");
    WriteFile(r + "/etc/deep/er/file", std::string(100000, 'x'), 0600);
    WriteFile(r + "/suid", "#!/bin/sh\n", 04755);
    WriteFile(r + "/opaque/sub/f", "in opaque");
    ASSERT_EQ(::chown((r + "/etc/hosts").c_str(), 1234, 5678), 0);
    ASSERT_EQ(::chown((r + "/suid").c_str(), 42, 43), 0);
    ASSERT_EQ(::chmod((r + "/suid").c_str(), 04755), 0);  // chown cleared it
    ASSERT_EQ(::chown((r + "/etc/deep").c_str(), 7, 8), 0);
    ASSERT_EQ(::chmod((r + "/etc/deep").c_str(), 0705), 0);
    ASSERT_EQ(::chmod((r + "/empty").c_str(), 0500), 0);
    ASSERT_EQ(::setxattr((r + "/opaque").c_str(), "trusted.overlay.opaque", "y", 1, 0), 0);
    ASSERT_EQ(::symlink("/etc/passwd", (r + "/abs-link").c_str()), 0);
    ASSERT_EQ(::symlink("../hosts", (r + "/etc/deep/rel-link").c_str()), 0);
    ASSERT_EQ(::symlink("nowhere", (r + "/dangling").c_str()), 0);
    ASSERT_EQ(::lchown((r + "/dangling").c_str(), 11, 12), 0);
    ASSERT_EQ(::mknod((r + "/etc/removed").c_str(), S_IFCHR | 0, makedev(0, 0)), 0);
    ASSERT_EQ(::mkfifo((r + "/fifo").c_str(), 0640), 0);
    SetMtime(r + "/etc/hosts", 1500000000, 123456789);
    SetMtime(r + "/abs-link", 1400000000, 5);
    SetMtime(r + "/etc/removed", 1300000000, 7);
    SetMtime(r + "/fifo", 1200000000, 9);
    std::string c = src_ + "/criu";
    fs::create_directories(c);
    std::string pages(1 << 20, '\0');
    for (size_t i = 0; i < pages.size(); ++i) pages[i] = static_cast<char>(i * 31 + (i >> 9));
    WriteFile(c + "/pages-1.img", pages);
    WriteFile(c + "/core-1.img", "core");
    WriteFile(src_ + "/log.txt", "line 1\nline 2\n");
    // Directory mtimes last (creating entries changes them).
    SetMtime(r + "/etc/deep/er", 1100000000, 1);
    SetMtime(r + "/etc/deep", 1100000000, 2);
    SetMtime(r + "/opaque", 1100000000, 3);
    SetMtime(r, 1000000000, 4);
  }

  std::vector<Section> RichSections() {
    return {{"rootfs", src_ + "/rootfs", false},
            {"criu", src_ + "/criu", false},
            {"log", src_ + "/log.txt", true}};
  }

  void ExpectOutsideEmpty() {
    EXPECT_TRUE(fs::is_empty(outside_)) << "something was written outside the landing";
  }

  std::string tmp_, src_, dst_, outside_;
};

TEST_F(TransferStreamTest, RoundTripEveryEntryKind) {
  BuildRichTree();
  std::string stream = EncodeAll(RichSections());
  ASSERT_FALSE(stream.empty());
  TransferStats stats;
  Status s = DecodeAll(stream, DstLanding(), 7, &stats);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(Snapshot(src_ + "/rootfs"), Snapshot(dst_ + "/rootfs"));
  EXPECT_EQ(Snapshot(src_ + "/criu"), Snapshot(dst_ + "/criu"));
  EXPECT_EQ(DirMtimes(src_ + "/rootfs"), DirMtimes(dst_ + "/rootfs"));
  EXPECT_EQ(ReadFile(dst_ + "/log.txt"), "line 1\nline 2\n");
  EXPECT_EQ(stats.files, 8u);
  struct stat st {};
  ASSERT_EQ(::lstat((dst_ + "/rootfs/etc/removed").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  ASSERT_EQ(::lstat((dst_ + "/rootfs/suid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
  EXPECT_EQ(st.st_uid, 42u);
}

TEST_F(TransferStreamTest, RoundTripWholeChunks) {
  BuildRichTree();
  std::string stream = EncodeAll(RichSections(), /*seed=*/0);
  ASSERT_TRUE(DecodeAll(stream, DstLanding(), /*seed=*/0).ok());
  EXPECT_EQ(Snapshot(src_ + "/rootfs"), Snapshot(dst_ + "/rootfs"));
}

TEST_F(TransferStreamTest, EncodingIsDeterministic) {
  BuildRichTree();
  EXPECT_EQ(EncodeAll(RichSections(), 1), EncodeAll(RichSections(), 2));
}

TEST_F(TransferStreamTest, LargeFileAndEmptyFiles) {
  std::string c = src_ + "/criu";
  fs::create_directories(c);
  std::string big(64 << 20, '\0');
  std::mt19937_64 rng(3);
  for (size_t i = 0; i + 8 <= big.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&big[i], &v, 8);
  }
  WriteFile(c + "/pages.img", big);
  WriteFile(c + "/a-empty", "");
  WriteFile(c + "/z-empty", "");
  std::string stream = EncodeAll({{"criu", c, false}});
  TransferStats stats;
  Status s = DecodeAll(stream, Landing{{{"criu", dst_ + "/criu", false}}}, 9, &stats);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(stats.files, 3u);
  EXPECT_EQ(stats.bytes, 64u << 20);
  EXPECT_TRUE(ReadFile(dst_ + "/criu/pages.img") == big);
  EXPECT_EQ(fs::file_size(dst_ + "/criu/a-empty"), 0u);
}

TEST_F(TransferStreamTest, EmptySectionListAndEmptyDirectory) {
  std::string stream = EncodeAll({});
  EXPECT_TRUE(DecodeAll(stream, Landing{}).ok());
  fs::create_directories(src_ + "/e");
  stream = EncodeAll({{"criu", src_ + "/e", false}});
  EXPECT_TRUE(DecodeAll(stream, Landing{{{"criu", dst_ + "/e", false}}}).ok());
  EXPECT_TRUE(fs::is_directory(dst_ + "/e"));
}

TEST_F(TransferStreamTest, FlipInFileBodyIsChecksumError) {
  std::string c = src_ + "/criu";
  fs::create_directories(c);
  std::string body(200000, 'a');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>('a' + i % 23);
  WriteFile(c + "/pages.img", body);
  std::string stream = EncodeAll({{"criu", c, false}});
  size_t start = stream.find(body);
  ASSERT_NE(start, std::string::npos);
  for (size_t off : {size_t{0}, size_t{1}, body.size() / 2, body.size() - 1}) {
    std::string bad = stream;
    bad[start + off] ^= 0x20;
    fs::remove_all(dst_ + "/criu");
    Status s = DecodeAll(bad, Landing{{{"criu", dst_ + "/criu", false}}});
    EXPECT_EQ(s.code(), Code::kFailed) << off;
    EXPECT_NE(s.message().find("checksum mismatch for criu/pages.img"), std::string::npos)
        << s.ToString();
  }
}

// Over an authenticating carrier (TLS) the stream skips the per-file SHA-256:
// the same files land, every file is 32 bytes shorter on the wire, and a
// decoder not told the carrier authenticates refuses it before writing.
TEST_F(TransferStreamTest, UndigestedStreamRoundTripsOnlyWhereAccepted) {
  BuildRichTree();
  EncoderOptions undigested;
  undigested.content_digests = false;
  TransferStats sent;
  std::string stream = EncodeAll(RichSections(), 3, &sent, undigested);
  std::string digested = EncodeAll(RichSections());
  EXPECT_EQ(digested.size() - stream.size(), 32 * sent.files);

  Status refused = DecodeAll(stream, DstLanding());
  EXPECT_EQ(refused.code(), Code::kInvalid);
  EXPECT_NE(refused.message().find("without file digests"), std::string::npos)
      << refused.ToString();
  EXPECT_TRUE(fs::is_empty(dst_)) << "a refused stream wrote something";

  DecoderOptions accept;
  accept.accept_undigested = true;
  TransferStats got;
  Status s = DecodeAll(stream, DstLanding(), 7, &got, accept);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(Snapshot(src_ + "/rootfs"), Snapshot(dst_ + "/rootfs"));
  EXPECT_EQ(Snapshot(src_ + "/criu"), Snapshot(dst_ + "/criu"));
  EXPECT_EQ(DirMtimes(src_ + "/rootfs"), DirMtimes(dst_ + "/rootfs"));
  EXPECT_EQ(ReadFile(dst_ + "/log.txt"), "line 1\nline 2\n");
  EXPECT_EQ(got.files, sent.files);
  EXPECT_EQ(got.bytes, sent.bytes);

  // A digested stream is still accepted by a decoder that allows both.
  fs::remove_all(dst_);
  fs::create_directories(dst_);
  EXPECT_TRUE(DecodeAll(digested, DstLanding(), 7, nullptr, accept).ok());
}

// The entry records stay covered by the end record's digest without file
// digests, and truncation is still found.
TEST_F(TransferStreamTest, UndigestedStreamStillChecksItsRecords) {
  BuildRichTree();
  fs::remove(src_ + "/criu/pages-1.img");
  fs::remove(src_ + "/rootfs/etc/deep/er/file");
  EncoderOptions undigested;
  undigested.content_digests = false;
  std::string stream = EncodeAll(RichSections(), 1, nullptr, undigested);
  DecoderOptions accept;
  accept.accept_undigested = true;
  const std::string path = "etc/deep/rel-link";
  size_t at = stream.find(path);
  ASSERT_NE(at, std::string::npos);
  std::string bad = stream;
  bad[at] ^= 0x01;  // a path inside an entry record
  EXPECT_FALSE(DecodeAll(bad, DstLanding(), 5, nullptr, accept).ok());
  for (size_t cut : {stream.size() - 1, stream.size() / 2, size_t{40}}) {
    fs::remove_all(dst_);
    fs::create_directories(dst_);
    Status s = DecodeAll(stream.substr(0, cut), DstLanding(), 5, nullptr, accept);
    EXPECT_FALSE(s.ok()) << "cut at " << cut;
  }
}

TEST_F(TransferStreamTest, EveryFlippedByteIsDetected) {
  BuildRichTree();
  fs::remove(src_ + "/criu/pages-1.img");
  fs::remove(src_ + "/rootfs/etc/deep/er/file");
  std::string stream = EncodeAll(RichSections());
  for (size_t off = 0; off < stream.size(); ++off) {
    std::string bad = stream;
    bad[off] ^= static_cast<char>(1 << (off % 8));
    fs::remove_all(dst_);
    fs::create_directories(dst_);
    Status s = DecodeAll(bad, DstLanding(), static_cast<uint32_t>(off));
    ASSERT_FALSE(s.ok()) << "flip at " << off << " went unnoticed";
  }
  ExpectOutsideEmpty();
}

TEST_F(TransferStreamTest, EveryTruncationIsDetected) {
  BuildRichTree();
  fs::remove(src_ + "/criu/pages-1.img");
  std::string stream = EncodeAll(RichSections());
  for (size_t len = 0; len < stream.size(); len += 1 + len / 50) {
    fs::remove_all(dst_);
    fs::create_directories(dst_);
    Status s = DecodeAll(std::string_view(stream).substr(0, len), DstLanding(),
                         static_cast<uint32_t>(len));
    ASSERT_FALSE(s.ok()) << "truncation at " << len;
    EXPECT_EQ(s.code(), Code::kFailed) << s.ToString();
    EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();
  }
  // One byte short of the end is truncated, too.
  fs::remove_all(dst_);
  fs::create_directories(dst_);
  Status s = DecodeAll(std::string_view(stream).substr(0, stream.size() - 1), DstLanding());
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();
}

TEST_F(TransferStreamTest, TrailingDataIsRejected) {
  fs::create_directories(src_ + "/c");
  std::string stream = EncodeAll({{"criu", src_ + "/c", false}}) + "x";
  Status s = DecodeAll(stream, Landing{{{"criu", dst_ + "/c", false}}});
  EXPECT_EQ(s.code(), Code::kInvalid) << s.ToString();
}

TEST_F(TransferStreamTest, EncoderRejectsSocketsAndMissingSections) {
  fs::create_directories(src_ + "/c");
  std::string sock = src_ + "/c/sock";
  ASSERT_EQ(::mknod(sock.c_str(), S_IFSOCK | 0600, 0), 0);
  auto enc = StreamEncoder::Create({{"criu", src_ + "/c", false}});
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), Code::kInvalid);
  EXPECT_NE(enc.status().message().find("socket"), std::string::npos) << enc.status().ToString();
  ASSERT_EQ(::unlink(sock.c_str()), 0);
  ASSERT_EQ(::mknod(sock.c_str(), S_IFBLK | 0600, makedev(7, 0)), 0);
  enc = StreamEncoder::Create({{"criu", src_ + "/c", false}});
  EXPECT_EQ(enc.status().code(), Code::kInvalid);

  enc = StreamEncoder::Create({{"criu", src_ + "/nope", false}});
  EXPECT_EQ(enc.status().code(), Code::kNotFound);
  enc = StreamEncoder::Create({{"log", src_ + "/c", true}});
  EXPECT_EQ(enc.status().code(), Code::kInvalid);
  enc = StreamEncoder::Create({{"a", src_, false}, {"a", src_, false}});
  EXPECT_EQ(enc.status().code(), Code::kInvalid);
}

TEST_F(TransferStreamTest, EncoderFailsWhenAFileShrinks) {
  fs::create_directories(src_ + "/c");
  WriteFile(src_ + "/c/f", std::string(10000, 'q'));
  auto enc = StreamEncoder::Create({{"criu", src_ + "/c", false}});
  ASSERT_TRUE(enc.ok());
  ASSERT_EQ(::truncate((src_ + "/c/f").c_str(), 10), 0);
  char buf[4096];
  Status last;
  for (int i = 0; i < 100; ++i) {
    auto n = (*enc)->Read(buf, sizeof(buf));
    if (!n.ok()) {
      last = n.status();
      break;
    }
    ASSERT_NE(*n, 0u);
  }
  EXPECT_EQ(last.code(), Code::kFailed);
  EXPECT_NE(last.message().find("changed"), std::string::npos) << last.ToString();
  // Sticky.
  EXPECT_FALSE((*enc)->Read(buf, sizeof(buf)).ok());
}

// ---------------------------------------------------------------------------
// Hand-made (hostile) streams.

class Builder {
 public:
  explicit Builder(uint64_t files = 0, uint64_t bytes = 0, uint32_t version = 1,
                   uint32_t flags = 0) {
    header_.append("KMXSTRM", 8);
    U32(header_, version);
    U32(header_, flags);
    U64(header_, files);
    U64(header_, bytes);
    out_ = header_;
    hashed_ = header_;
  }
  Builder& Section(std::string_view name, bool is_file = false) {
    std::string r;
    r.push_back(1);
    r.push_back(is_file ? 1 : 0);
    Str16(r, name);
    return Record(r);
  }
  Builder& Entry(uint8_t kind, std::string_view path, std::string_view target = "",
                 uint64_t size = 0, std::string_view xattr_name = "", uint32_t mode = 0644) {
    std::string r;
    r.push_back(2);
    r.push_back(static_cast<char>(kind));
    U32(r, mode);
    U32(r, 0);
    U32(r, 0);
    U64(r, 1600000000000000000ull);
    Str16(r, path);
    Str16(r, target);
    if (xattr_name.empty()) {
      r.push_back(0);
    } else {
      r.push_back(1);
      r.push_back(static_cast<char>(xattr_name.size()));
      r.append(xattr_name);
      Str16(r, "y");
    }
    U64(r, size);
    entries_++;
    return Record(r);
  }
  Builder& File(std::string_view path, std::string_view content) {
    Entry(1, path, "", content.size());
    out_.append(content);
    out_.append(Sha256Of(content));
    files_++;
    bytes_ += content.size();
    return *this;
  }
  // A chunked file (kind 6) whose content comes in `chunks`.
  Builder& Chunked(std::string_view path, const std::vector<std::string>& chunks) {
    Entry(6, path);
    std::string content;
    for (const std::string& c : chunks) {
      U32(out_, static_cast<uint32_t>(c.size()));
      out_.append(c);
      content += c;
    }
    U32(out_, 0);
    out_.append(Sha256Of(content));
    files_++;
    bytes_ += content.size();
    return *this;
  }
  Builder& Raw(std::string_view bytes) {
    out_.append(bytes);
    return *this;
  }
  std::string End() {
    std::string r;
    r.push_back(3);
    U64(r, entries_);
    U64(r, files_);
    U64(r, bytes_);
    r.append(Sha256Of(hashed_));
    std::string f;
    U32(f, static_cast<uint32_t>(r.size()));
    return out_ + f + r;
  }
  std::string Partial() const { return out_; }

  static void U32(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  }
  static void U64(std::string& s, uint64_t v) {
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  }
  static void Str16(std::string& s, std::string_view v) {
    s.push_back(static_cast<char>(v.size() & 0xff));
    s.push_back(static_cast<char>(v.size() >> 8));
    s.append(v);
  }

 private:
  Builder& Record(const std::string& r) {
    std::string f;
    U32(f, static_cast<uint32_t>(r.size()));
    f += r;
    out_ += f;
    hashed_ += f;
    return *this;
  }
  std::string header_, out_, hashed_;
  uint64_t entries_ = 0, files_ = 0, bytes_ = 0;
};

TEST_F(TransferStreamTest, HandBuiltValidStreamIsAccepted) {
  std::string s = Builder(1, 5)
                      .Section("rootfs")
                      .Entry(2, "")
                      .Entry(2, "d")
                      .File("d/f", "hello")
                      .Entry(3, "d/l", "/abs")
                      .End();
  Status st = DecodeAll(s, DstLanding());
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(ReadFile(dst_ + "/rootfs/d/f"), "hello");
}

struct HostileCase {
  const char* name;
  std::string stream;
  Code code;
  const char* message;
};

TEST_F(TransferStreamTest, HostileStreamsAreRejected) {
  std::string out = outside_;
  std::vector<HostileCase> cases = {
      {"bad magic", "KMXSTRX" + std::string(25, '\0'), Code::kInvalid, "bad magic"},
      {"bad version", Builder(0, 0, 2).End(), Code::kInvalid, "version"},
      {"unknown section", Builder().Section("etc").End(), Code::kInvalid, "unknown section"},
      {"section kind mismatch", Builder().Section("log", false).End(), Code::kInvalid,
       "directory in the stream"},
      {"duplicate section", Builder().Section("criu").Section("criu").End(), Code::kInvalid,
       "duplicate section"},
      {"entry before section", Builder(1, 1).File("f", "x").End(), Code::kInvalid,
       "before any section"},
      {"dotdot", Builder(1, 1).Section("rootfs").File("../x", "x").End(), Code::kInvalid, ".."},
      {"inner dotdot", Builder(1, 1).Section("rootfs").Entry(2, "a").File("a/../../x", "x").End(),
       Code::kInvalid, ".."},
      {"absolute", Builder(1, 1).Section("rootfs").File(out + "/x", "x").End(), Code::kInvalid,
       "absolute"},
      {"empty component", Builder(1, 1).Section("rootfs").File("a//x", "x").End(), Code::kInvalid,
       "empty component"},
      {"dot", Builder(1, 1).Section("rootfs").File("./x", "x").End(), Code::kInvalid, "\".\""},
      {"nul in path", Builder(1, 1).Section("rootfs").File(std::string("a\0b", 3), "x").End(),
       Code::kInvalid, "NUL"},
      {"through symlink",
       Builder(1, 1).Section("rootfs").Entry(3, "l", out).File("l/pwned", "x").End(),
       Code::kInvalid, "not a directory"},
      {"dir through symlink",
       Builder().Section("rootfs").Entry(3, "l", out).Entry(2, "l/sub").End(), Code::kInvalid,
       "not a directory"},
      {"relative symlink escape",
       Builder(1, 1).Section("rootfs").Entry(3, "l", "../outside").File("l/pwned", "x").End(),
       Code::kInvalid, "not a directory"},
      {"symlink then file over it",
       Builder(1, 1).Section("rootfs").Entry(3, "l", out + "/pwned").File("l", "x").End(),
       Code::kInvalid, "already exists"},
      {"symlink then dir over it",
       Builder().Section("rootfs").Entry(3, "l", out).Entry(2, "l").End(), Code::kInvalid,
       "not a directory"},
      {"file then dir inside it",
       Builder(1, 1).Section("rootfs").File("f", "x").Entry(2, "f/d").End(), Code::kInvalid,
       "not a directory"},
      {"duplicate file", Builder(2, 2).Section("rootfs").File("f", "x").File("f", "y").End(),
       Code::kInvalid, "already exists"},
      {"missing parent", Builder(1, 1).Section("rootfs").File("no/f", "x").End(), Code::kInvalid,
       "not in the stream"},
      {"more files than declared",
       Builder(1, 2).Section("rootfs").File("a", "x").File("b", "y").End(), Code::kInvalid,
       "more files"},
      {"more bytes than declared", Builder(1, 1).Section("rootfs").File("a", "xy").End(),
       Code::kInvalid, "beyond"},
      {"fewer than declared", Builder(2, 2).Section("rootfs").File("a", "x").End(), Code::kInvalid,
       "declared"},
      {"oversized record", Builder().Raw(std::string("\x01\x00\x01\x00", 4)).End(), Code::kInvalid,
       "out of range"},
      {"zero record", Builder().Raw(std::string(4, '\0')).End(), Code::kInvalid, "out of range"},
      {"unknown record type", Builder().Raw(std::string("\x01\x00\x00\x00\x09", 5)).End(),
       Code::kInvalid, "record type"},
      {"unknown kind", Builder().Section("rootfs").Entry(9, "x").End(), Code::kInvalid,
       "entry kind"},
      {"forbidden xattr",
       Builder().Section("rootfs").Entry(2, "d", "", 0, "security.capability").End(),
       Code::kInvalid, "xattr"},
      {"opaque on a fifo",
       Builder().Section("rootfs").Entry(5, "p", "", 0, "trusted.overlay.opaque").End(),
       Code::kInvalid, "non-directory"},
      {"bad mode", Builder().Section("rootfs").Entry(2, "d", "", 0, "", 0170000).End(),
       Code::kInvalid, "mode"},
      {"dir with size", Builder().Section("rootfs").Entry(2, "d", "", 5).End(), Code::kInvalid,
       "has a size"},
      {"symlink without target", Builder().Section("rootfs").Entry(3, "l").End(), Code::kInvalid,
       "target"},
      {"file section with a dir", Builder().Section("log", true).Entry(2, "").End(), Code::kInvalid,
       "exactly one file"},
      {"file section with a path", Builder(1, 1).Section("log", true).File("x", "x").End(),
       Code::kInvalid, "exactly one file"},
      {"file section empty", Builder().Section("log", true).End(), Code::kInvalid, "has no file"},
      {"root entry not first", Builder().Section("rootfs").Entry(2, "a").Entry(2, "").End(),
       Code::kInvalid, "bad root entry"},
      {"root as symlink", Builder().Section("rootfs").Entry(3, "", "/").End(), Code::kInvalid,
       "bad root entry"},
      {"header digest mismatch",
       [] {
         std::string s = Builder().Section("rootfs").End();
         s[s.size() - 1] ^= 1;
         return s;
       }(),
       Code::kFailed, "checksum mismatch"},
  };
  for (const HostileCase& c : cases) {
    SCOPED_TRACE(c.name);
    fs::remove_all(dst_);
    fs::create_directories(dst_);
    Status s = DecodeAll(c.stream, DstLanding());
    EXPECT_EQ(s.code(), c.code) << s.ToString();
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.ToString();
    ExpectOutsideEmpty();
  }
}

TEST_F(TransferStreamTest, DecoderLimits) {
  std::string s = Builder(2, 2).Section("rootfs").File("a", "x").File("b", "y").End();
  DecoderOptions o;
  o.max_files = 1;
  EXPECT_EQ(DecodeAll(s, DstLanding(), 1, nullptr, o).code(), Code::kInvalid);
  fs::remove_all(dst_);
  fs::create_directories(dst_);
  o = {};
  o.max_bytes = 1;
  EXPECT_EQ(DecodeAll(s, DstLanding(), 1, nullptr, o).code(), Code::kInvalid);
  fs::remove_all(dst_);
  fs::create_directories(dst_);
  o = {};
  o.max_entries = 1;
  EXPECT_EQ(DecodeAll(s, DstLanding(), 1, nullptr, o).code(), Code::kInvalid);
}

TEST_F(TransferStreamTest, ErrorsAreSticky) {
  StreamDecoder dec(DstLanding());
  std::string bad = "garbage-garbage-garbage-garbage-garbage";
  Status s = dec.Feed(bad.data(), bad.size());
  EXPECT_EQ(s.code(), Code::kInvalid);
  std::string good = Builder().End();
  EXPECT_EQ(dec.Feed(good.data(), good.size()).code(), Code::kInvalid);
  EXPECT_EQ(dec.Finish().code(), Code::kInvalid);
  EXPECT_FALSE(dec.complete());
}

// ---------------------------------------------------------------------------
// Open totals: sections produced while they are sent.

Builder Open() { return Builder(0, 0, 1, kOpenTotals); }

// A section of pipes that `done` says are all written.
Section PipesSection(std::string name, std::string path, std::function<bool()> done) {
  Section s;
  s.name = std::move(name);
  s.path = std::move(path);
  s.pipes = true;
  s.producer_done = std::move(done);
  return s;
}

// A section walked only after `before_read`.
Section LateSection(std::string name, std::string path, std::function<Status()> before_read,
                    bool is_file = false) {
  Section s;
  s.name = std::move(name);
  s.path = std::move(path);
  s.is_file = is_file;
  s.before_read = std::move(before_read);
  return s;
}

// Opens `path` for writing (blocking until the encoder opened it too).
int OpenWriter(const std::string& path) { return ::open(path.c_str(), O_WRONLY | O_CLOEXEC); }

// The stream `encode` makes of a pipes section `dir` holding one pipe "p",
// which a writer thread fills with `content` and closes (joined before this
// returns).
std::string EncodeOnePipe(const std::string& dir, const std::string& content,
                          const std::function<std::string(const Section&)>& encode) {
  fs::create_directories(dir);
  EXPECT_EQ(::mkfifo((dir + "/p").c_str(), 0600), 0);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    int fd = OpenWriter(dir + "/p");
    EXPECT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
    ::close(fd);
    done = true;
  });
  std::string stream = encode(PipesSection("criu", dir, [&] { return done.load(); }));
  writer.join();
  return stream;
}

// Reads until an error or the end (ok).
Status ReadUntilError(StreamEncoder& enc, std::string* out = nullptr) {
  std::vector<char> buf(1 << 16);
  for (;;) {
    auto n = enc.Read(buf.data(), buf.size());
    if (!n.ok()) return n.status();
    if (*n == 0) return Status::Ok();
    if (out != nullptr) out->append(buf.data(), *n);
  }
}

TEST_F(TransferStreamTest, PipesSectionRoundTrip) {
  std::string pipes = src_ + "/pipes";
  std::string criu = src_ + "/criu";
  fs::create_directories(pipes);
  fs::create_directories(criu);
  for (const char* name : {"pages-1.img", "pages-2.img", "pages-3.img"}) {
    ASSERT_EQ(::mkfifo((pipes + "/" + name).c_str(), 0600), 0);
  }
  ASSERT_EQ(::chown((pipes + "/pages-2.img").c_str(), 1234, 5678), 0);
  ASSERT_EQ(::chmod((pipes + "/pages-2.img").c_str(), 0640), 0);
  SetMtime(pipes + "/pages-2.img", 1500000000, 42);
  WriteFile(pipes + "/not-a-pipe", "ignored");
  std::string big(8 << 20, '\0');
  std::mt19937_64 rng(5);
  for (size_t i = 0; i + 8 <= big.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&big[i], &v, 8);
  }

  // The producer fills pages-2 (more than a pipe holds, slowly), then
  // pages-1 (empty); pages-3 is never opened.
  std::atomic<bool> done{false};
  std::thread writer([&] {
    int fd = OpenWriter(pipes + "/pages-2.img");
    for (size_t off = 0; fd >= 0 && off < big.size(); off += 256 << 10) {
      size_t n = std::min<size_t>(256 << 10, big.size() - off);
      if (::write(fd, big.data() + off, n) != static_cast<ssize_t>(n)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ::close(fd);
    ::close(OpenWriter(pipes + "/pages-1.img"));
    done = true;
  });
  bool before_read_ran = false;
  Section pages = PipesSection("criu-pages", pipes, [&] { return done.load(); });
  Section rest = LateSection("criu", criu, [&] {
    writer.join();
    before_read_ran = true;
    WriteFile(criu + "/core-1.img", "core");
    return Status::Ok();
  });
  TransferStats sent;
  std::string stream = EncodeAll({pages, rest}, 3, &sent);
  if (writer.joinable()) writer.join();
  ASSERT_TRUE(before_read_ran);
  EXPECT_EQ(sent.files, 3u);
  EXPECT_EQ(sent.bytes, big.size() + 4);

  // The target lands both sections in one directory.
  TransferStats got;
  Landing landing{{{"criu-pages", dst_ + "/criu", false}, {"criu", dst_ + "/criu", false}}};
  Status s = DecodeAll(stream, landing, 11, &got);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(got.files, 3u);
  EXPECT_EQ(got.bytes, big.size() + 4);
  EXPECT_TRUE(ReadFile(dst_ + "/criu/pages-2.img") == big);
  EXPECT_EQ(Hex(Sha256Of(ReadFile(dst_ + "/criu/pages-2.img"))), Hex(Sha256Of(big)));
  EXPECT_TRUE(fs::is_regular_file(dst_ + "/criu/pages-1.img"));
  EXPECT_EQ(fs::file_size(dst_ + "/criu/pages-1.img"), 0u);
  EXPECT_FALSE(fs::exists(dst_ + "/criu/pages-3.img"));
  EXPECT_FALSE(fs::exists(dst_ + "/criu/not-a-pipe"));
  EXPECT_EQ(ReadFile(dst_ + "/criu/core-1.img"), "core");
  struct stat st {};
  ASSERT_EQ(::lstat((dst_ + "/criu/pages-2.img").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1500000000);
  // Sent in the order the producer filled them.
  size_t at2 = stream.find("pages-2.img");
  size_t at1 = stream.find("pages-1.img");
  ASSERT_NE(at1, std::string::npos);
  EXPECT_LT(at2, at1);
  EXPECT_EQ(stream.find("pages-3.img"), std::string::npos);
}

TEST_F(TransferStreamTest, PipesSectionWithWholeReads) {
  std::string content(3 << 20, 'z');
  std::string stream = EncodeOnePipe(src_ + "/pipes", content,
                                     [&](const Section& pages) { return EncodeAll({pages}, 0); });
  Status s = DecodeAll(stream, DstLanding(), 0);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(ReadFile(dst_ + "/criu/p") == content);
}

// Chunked files (pipes sections) without digests.
TEST_F(TransferStreamTest, UndigestedPipesSection) {
  std::string content(3 << 20, 'q');
  EncoderOptions undigested;
  undigested.content_digests = false;
  std::string stream = EncodeOnePipe(src_ + "/pipes", content, [&](const Section& pages) {
    return EncodeAll({pages}, 2, nullptr, undigested);
  });
  DecoderOptions accept;
  accept.accept_undigested = true;
  Status s = DecodeAll(stream, DstLanding(), 3, nullptr, accept);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(ReadFile(dst_ + "/criu/p") == content);
}

TEST_F(TransferStreamTest, SizedOnlyWithoutPipesOrBeforeRead) {
  fs::create_directories(src_ + "/c");
  auto enc = StreamEncoder::Create({{"criu", src_ + "/c", false}});
  ASSERT_TRUE(enc.ok());
  EXPECT_TRUE((*enc)->sized());
  enc = StreamEncoder::Create({LateSection("criu", src_ + "/c", [] { return Status::Ok(); })});
  ASSERT_TRUE(enc.ok());
  EXPECT_FALSE((*enc)->sized());
  enc = StreamEncoder::Create({PipesSection("criu", src_ + "/c", [] { return true; })});
  ASSERT_TRUE(enc.ok());
  EXPECT_FALSE((*enc)->sized());
  // A pipes section needs producer_done and a directory.
  enc = StreamEncoder::Create({PipesSection("criu", src_ + "/c", nullptr)});
  EXPECT_EQ(enc.status().code(), Code::kInvalid);
}

TEST_F(TransferStreamTest, OpenTotalsWalkSectionsWhenReached) {
  // Paths missing at Create are fine when the stream has open totals; they
  // must exist when reached.
  std::string c = src_ + "/late";
  Section late = LateSection("criu", c, [&] {
    fs::create_directories(c + "/sub");
    WriteFile(c + "/sub/f", "late file");
    return Status::Ok();
  });
  Section log{"log", src_ + "/log.txt", true};
  auto enc = StreamEncoder::Create({late, log});
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  WriteFile(src_ + "/log.txt", "written after Create");
  std::string stream = EncodeAll({late, log});
  Status s = DecodeAll(stream, DstLanding());
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ReadFile(dst_ + "/criu/sub/f"), "late file");
  EXPECT_EQ(ReadFile(dst_ + "/log.txt"), "written after Create");

  Section missing = LateSection("rootfs", src_ + "/nope", [] { return Status::Ok(); });
  enc = StreamEncoder::Create({missing});
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(ReadUntilError(**enc).code(), Code::kNotFound);
}

TEST_F(TransferStreamTest, BeforeReadErrorFailsRead) {
  fs::create_directories(src_ + "/c");
  WriteFile(src_ + "/c/f", "x");
  int calls = 0;
  Section sec = LateSection("criu", src_ + "/c", [&] {
    ++calls;
    return RetryError("dump failed");
  });
  auto enc = StreamEncoder::Create({sec});
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(calls, 0);
  char buf[4096];
  Status last;
  for (int i = 0; i < 10 && last.ok(); ++i) {
    auto n = (*enc)->Read(buf, sizeof(buf));
    if (!n.ok()) last = n.status();
  }
  EXPECT_EQ(last.code(), Code::kRetry);
  EXPECT_EQ(last.message(), "dump failed");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ((*enc)->Read(buf, sizeof(buf)).status().message(), "dump failed");  // sticky
}

TEST_F(TransferStreamTest, ProducerStalledFails) {
  std::string pipes = src_ + "/pipes";
  fs::create_directories(pipes);
  ASSERT_EQ(::mkfifo((pipes + "/p").c_str(), 0600), 0);
  EncoderOptions options;
  options.pipe_poll = std::chrono::milliseconds(1);
  options.pipe_stall = std::chrono::milliseconds(20);
  Section sec = PipesSection("criu", pipes, [] { return false; });

  // Nobody ever opens the pipe.
  auto enc = StreamEncoder::Create({sec}, options);
  ASSERT_TRUE(enc.ok());
  Status s = ReadUntilError(**enc);
  EXPECT_EQ(s.code(), Code::kFailed);
  EXPECT_NE(s.message().find("producer stalled"), std::string::npos) << s.ToString();

  // A writer sends some bytes, then nothing while keeping the pipe open.
  enc = StreamEncoder::Create({sec}, options);
  ASSERT_TRUE(enc.ok());
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    int fd = OpenWriter(pipes + "/p");
    EXPECT_EQ(::write(fd, "hello", 5), 5);
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ::close(fd);
  });
  std::string got;
  s = ReadUntilError(**enc, &got);
  stop = true;
  writer.join();
  EXPECT_EQ(s.code(), Code::kFailed);
  EXPECT_NE(s.message().find("producer stalled"), std::string::npos) << s.ToString();
  EXPECT_NE(got.find("hello"), std::string::npos);
}

TEST_F(TransferStreamTest, WriterGetsEpipeWhenTheEncoderGoes) {
  ::signal(SIGPIPE, SIG_IGN);
  std::string pipes = src_ + "/pipes";
  fs::create_directories(pipes);
  ASSERT_EQ(::mkfifo((pipes + "/p").c_str(), 0600), 0);
  std::atomic<bool> done{false};
  int write_errno = 0;
  std::thread writer([&] {
    int fd = OpenWriter(pipes + "/p");
    std::string block(64 << 10, 'w');
    while (::write(fd, block.data(), block.size()) > 0) {
    }
    write_errno = errno;
    ::close(fd);
    done = true;
  });
  auto enc = StreamEncoder::Create({PipesSection("criu", pipes, [&] { return done.load(); })});
  ASSERT_TRUE(enc.ok());
  std::vector<char> buf(1 << 20);
  size_t total = 0;
  while (total < (4u << 20)) {
    auto n = (*enc)->Read(buf.data(), buf.size());
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    ASSERT_GT(*n, 0u);
    total += *n;
  }
  enc->reset();  // mid-file
  writer.join();
  EXPECT_EQ(write_errno, EPIPE);
}

TEST_F(TransferStreamTest, TwoSectionsIntoOneDirectory) {
  fs::create_directories(src_ + "/a/d");
  fs::create_directories(src_ + "/b/d");
  WriteFile(src_ + "/a/pages-1.img", "pages");
  WriteFile(src_ + "/a/d/x", "x");
  WriteFile(src_ + "/b/core-1.img", "core");
  WriteFile(src_ + "/b/d/y", "y");
  Landing landing{{{"criu-pages", dst_ + "/criu", false}, {"criu", dst_ + "/criu", false}}};
  std::string stream =
      EncodeAll({{"criu-pages", src_ + "/a", false}, {"criu", src_ + "/b", false}});
  Status s = DecodeAll(stream, landing);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ReadFile(dst_ + "/criu/pages-1.img"), "pages");
  EXPECT_EQ(ReadFile(dst_ + "/criu/core-1.img"), "core");
  EXPECT_EQ(ReadFile(dst_ + "/criu/d/x"), "x");
  EXPECT_EQ(ReadFile(dst_ + "/criu/d/y"), "y");

  // The same name in both is still a clash.
  WriteFile(src_ + "/b/pages-1.img", "again");
  fs::remove_all(dst_ + "/criu");
  stream = EncodeAll({{"criu-pages", src_ + "/a", false}, {"criu", src_ + "/b", false}});
  s = DecodeAll(stream, landing);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_NE(s.message().find("already exists"), std::string::npos) << s.ToString();
}

TEST_F(TransferStreamTest, HandBuiltOpenTotalsStreamIsAccepted) {
  std::string s = Open()
                      .Section("criu")
                      .Entry(2, "")
                      .Chunked("pages", {"hel", "lo", std::string(100000, 'p')})
                      .Chunked("empty", {})
                      .File("core", "core")
                      .Section("log", true)
                      .Chunked("", {"line\n"})
                      .End();
  TransferStats stats;
  Status st = DecodeAll(s, DstLanding(), 5, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(ReadFile(dst_ + "/criu/pages"), "hello" + std::string(100000, 'p'));
  EXPECT_EQ(fs::file_size(dst_ + "/criu/empty"), 0u);
  EXPECT_EQ(ReadFile(dst_ + "/criu/core"), "core");
  EXPECT_EQ(ReadFile(dst_ + "/log.txt"), "line\n");
  EXPECT_EQ(stats.files, 4u);
  EXPECT_EQ(stats.bytes, 100000u + 5 + 4 + 5);
  struct stat st_buf {};
  ASSERT_EQ(::lstat((dst_ + "/criu/pages").c_str(), &st_buf), 0);
  EXPECT_EQ(st_buf.st_mode & 07777, 0644u);
  EXPECT_EQ(st_buf.st_mtim.tv_sec, 1600000000);
}

TEST_F(TransferStreamTest, HostileOpenTotalsStreamsAreRejected) {
  auto huge_chunk = [] {
    std::string s = Open().Section("criu").Entry(2, "").Entry(6, "p").Partial();
    Builder::U32(s, kMaxChunk + 1);
    return s + std::string(100, 'x');
  };
  auto digest_mismatch = [] {
    std::string s = Open().Section("criu").Entry(2, "").Chunked("p", {"abc"}).End();
    s[s.find("abc") + 1] ^= 1;
    return s;
  };
  auto end_count_mismatch = [] {
    std::string s = Open().Section("criu").Entry(2, "").Chunked("p", {"abc"}).Partial();
    std::string r;
    r.push_back(3);
    Builder::U64(r, 2);
    Builder::U64(r, 2);  // files: 1 received
    Builder::U64(r, 3);
    r.append(32, '\0');
    std::string f;
    Builder::U32(f, static_cast<uint32_t>(r.size()));
    return s + f + r;
  };
  std::vector<HostileCase> cases = {
      {"chunked in a sized stream",
       Builder().Section("criu").Entry(2, "").Chunked("p", {"x"}).End(), Code::kInvalid,
       "declared totals"},
      {"open totals with files", Builder(1, 0, 1, kOpenTotals).End(), Code::kInvalid,
       "declares totals"},
      {"open totals with bytes", Builder(0, 7, 1, kOpenTotals).End(), Code::kInvalid,
       "declares totals"},
      {"unknown flags", Builder(0, 0, 1, 4).End(), Code::kInvalid, "flags"},
      {"no digests, not accepted", Builder(0, 0, 1, kNoContentDigests).End(), Code::kInvalid,
       "without file digests"},
      {"chunked with a size", Open().Section("criu").Entry(2, "").Entry(6, "p", "", 3).End(),
       Code::kInvalid, "has a size"},
      {"chunk too big", huge_chunk(), Code::kInvalid, "larger than"},
      {"chunk digest mismatch", digest_mismatch(), Code::kFailed, "checksum mismatch for criu/p"},
      {"end counts", end_count_mismatch(), Code::kInvalid, "do not match"},
      {"chunked over a symlink",
       Open().Section("criu").Entry(2, "").Entry(3, "l", "/x").Chunked("l", {"x"}).End(),
       Code::kInvalid, "already exists"},
      {"chunked through a symlink",
       Open().Section("criu").Entry(2, "").Entry(3, "l", outside_).Chunked("l/p", {"x"}).End(),
       Code::kInvalid, "not a directory"},
      {"chunked dotdot", Open().Section("criu").Entry(2, "").Chunked("../p", {"x"}).End(),
       Code::kInvalid, ".."},
      {"two files in a file section",
       Open().Section("log", true).Chunked("", {"x"}).Chunked("", {"y"}).End(), Code::kInvalid,
       "exactly one file"},
  };
  for (const HostileCase& c : cases) {
    SCOPED_TRACE(c.name);
    fs::remove_all(dst_);
    fs::create_directories(dst_);
    Status s = DecodeAll(c.stream, DstLanding());
    EXPECT_EQ(s.code(), c.code) << s.ToString();
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.ToString();
    ExpectOutsideEmpty();
  }
}

TEST_F(TransferStreamTest, OpenTotalsLimitsAndTruncation) {
  std::string s =
      Open().Section("criu").Entry(2, "").Chunked("a", {"xx", "yy"}).Chunked("b", {"z"}).End();
  DecoderOptions o;
  o.max_bytes = 5;
  EXPECT_TRUE(DecodeAll(s, DstLanding(), 1, nullptr, o).ok());
  fs::remove_all(dst_);
  fs::create_directories(dst_);
  o.max_bytes = 3;  // beyond in the second chunk of a
  Status st = DecodeAll(s, DstLanding(), 1, nullptr, o);
  EXPECT_EQ(st.code(), Code::kInvalid);
  EXPECT_NE(st.message().find("beyond the 3 bytes allowed"), std::string::npos) << st.ToString();
  fs::remove_all(dst_);
  fs::create_directories(dst_);
  o = {};
  o.max_files = 1;
  st = DecodeAll(s, DstLanding(), 1, nullptr, o);
  EXPECT_EQ(st.code(), Code::kInvalid);
  EXPECT_NE(st.message().find("more files than the 1 allowed"), std::string::npos) << st.ToString();

  // Every truncation fails, mid-chunk included.
  std::string big = Open().Section("criu").Entry(2, "").Chunked("a", {"0123456789"}).End();
  for (size_t len = 0; len < big.size(); ++len) {
    fs::remove_all(dst_);
    fs::create_directories(dst_);
    st = DecodeAll(std::string_view(big).substr(0, len), DstLanding(), static_cast<uint32_t>(len));
    ASSERT_FALSE(st.ok()) << len;
    if (len > big.find("0123")) {
      EXPECT_NE(st.message().find("truncated"), std::string::npos) << len << st.ToString();
    }
  }
}

}  // namespace
}  // namespace kmosix
