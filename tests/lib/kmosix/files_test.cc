// WriteFileAtomic's durable-write contract (kmosix/files.h): ok only once
// written; on an error the previous content stays and no temporary file is
// left. A real full disk (a small tmpfs, needs root) and a write blocked by a
// directory where the temporary file goes.
#include "kmosix/files.h"

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace kmosix {
namespace {

namespace fs = std::filesystem;

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("kmx-files-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    if (mounted_) ::umount2(root_.c_str(), MNT_DETACH);
    fs::remove_all(root_);
  }
  // root_ becomes a tmpfs of `bytes`; false (and a loud skip) if it cannot.
  bool MountSmallTmpfs(size_t bytes) {
    if (::geteuid() != 0) return false;
    const std::string opts = "size=" + std::to_string(bytes) + ",mode=0700";
    if (::mount("tmpfs", root_.c_str(), "tmpfs", 0, opts.c_str()) != 0) return false;
    mounted_ = true;
    return true;
  }
  void Fill() {
    std::ofstream fill(root_ / "fill", std::ios::binary);
    const std::string block(4096, 'x');
    while (fill.write(block.data(), block.size())) {
    }
  }
  std::string Read(const fs::path& p) {
    auto text = ReadFile(p);
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    return text.ok() ? *text : "";
  }
  fs::path root_;
  bool mounted_ = false;
};

TEST_F(FilesTest, WritesAndReplaces) {
  const fs::path p = root_ / "records" / "a.json";
  ASSERT_TRUE(WriteFileAtomic(p, "one").ok());
  ASSERT_TRUE(WriteFileAtomic(p, "two").ok());
  EXPECT_EQ(Read(p), "two");
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
}

TEST_F(FilesTest, AFullDiskIsAnErrorThatKeepsTheOldContentAndLeavesNoTemporaryFile) {
  if (!MountSmallTmpfs(64 * 1024)) {
    GTEST_SKIP() << "SKIPPED: needs root to mount a tmpfs (" << std::strerror(errno) << ")";
  }
  const fs::path p = root_ / "journal.json";
  ASSERT_TRUE(WriteFileAtomic(p, "old").ok());
  Fill();
  Status s = WriteFileAtomic(p, std::string(16 * 1024, 'n'));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kFailed);
  EXPECT_NE(s.message().find("No space left on device"), std::string::npos) << s.ToString();
  EXPECT_EQ(Read(p), "old");
  EXPECT_FALSE(fs::exists(p.string() + ".tmp"));  // its blocks given back
  // Room again: the next write works.
  fs::remove(root_ / "fill");
  ASSERT_TRUE(WriteFileAtomic(p, "new").ok());
  EXPECT_EQ(Read(p), "new");
}

TEST_F(FilesTest, AWriteThatCannotStartIsAnErrorThatKeepsTheOldContent) {
  const fs::path p = root_ / "record.json";
  ASSERT_TRUE(WriteFileAtomic(p, "old").ok());
  fs::create_directories(p.string() + ".tmp/x");  // where the temporary file goes
  Status s = WriteFileAtomic(p, "new");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(Read(p), "old");
  EXPECT_TRUE(fs::is_directory(p.string() + ".tmp"));  // not someone's to remove
}

TEST_F(FilesTest, AParentThatIsAFileIsAnError) {
  std::ofstream(root_ / "state") << "not a directory";
  EXPECT_FALSE(WriteFileAtomic(root_ / "state" / "a.json", "x").ok());
}

// What a CRIU killed mid-restore leaves in its work dir: a mount (its cgroup
// yard) with another inside it, and files under both. A plain recursive
// remove fails on them for good; RemoveTree detaches them first.
TEST_F(FilesTest, RemoveTreeDetachesMountsLeftInsideTheTree) {
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to mount a tmpfs";
  const fs::path yard = root_ / "in-m-1" / "work" / ".criu.cgyard.x";
  const fs::path inner = yard / "blkio";
  fs::create_directories(yard);
  ASSERT_EQ(::mount("tmpfs", yard.c_str(), "tmpfs", 0, "size=1m"), 0) << std::strerror(errno);
  fs::create_directories(inner);
  ASSERT_EQ(::mount("tmpfs", inner.c_str(), "tmpfs", MS_RDONLY, "size=1m"), 0)
      << std::strerror(errno);
  std::ofstream(yard / "cgroup.procs") << "1\n";
  std::error_code ec;
  fs::remove_all(root_ / "in-m-1", ec);
  ASSERT_TRUE(ec) << "a plain remove got through: the test would prove nothing";

  Status s = RemoveTree((root_ / "in-m-1").string() + "/");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(fs::exists(root_ / "in-m-1"));
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    EXPECT_EQ(line.find(root_.string() + "/in-m-1"), std::string::npos) << line;
  }
  EXPECT_TRUE(RemoveTree((root_ / "in-m-1").string()).ok()) << "a missing tree is ok";
}

}  // namespace
}  // namespace kmosix
