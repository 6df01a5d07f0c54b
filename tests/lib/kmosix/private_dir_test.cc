// MakePrivateDir and WriteFileAtomic's modes (kmosix/files.h): the agent's
// scratch directory is created 0700 and refused when it is a symlink, someone
// else's, open to group or others, or under a directory others may write;
// journals are 0600.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "kmosix/files.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;

class PrivateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("kmx-private-dir-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    fs::permissions(root_, fs::perms::owner_all);
  }
  void TearDown() override { fs::remove_all(root_); }
  static unsigned Mode(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
  }
  fs::path root_;
};

TEST_F(PrivateDirTest, CreatesTheDirectory0700AndItsParents0755) {
  const fs::path dir = root_ / "run" / "kmosix" / "node1" / "scratch";
  Status s = MakePrivateDir(dir);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(Mode(dir), 0700u);
  EXPECT_EQ(Mode(root_ / "run" / "kmosix"), 0755u);
  // Again: it is ours and private, so it is accepted as it is.
  EXPECT_TRUE(MakePrivateDir(dir).ok());
}

TEST_F(PrivateDirTest, RefusesAnExistingDirectoryOpenToOthers) {
  const fs::path dir = root_ / "scratch";
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  Status s = MakePrivateDir(dir);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_NE(s.message().find("0750"), std::string::npos) << s.ToString();
  EXPECT_EQ(Mode(dir), 0750u) << "left as it was";
}

TEST_F(PrivateDirTest, RefusesASymlink) {
  fs::create_directories(root_ / "elsewhere");
  fs::permissions(root_ / "elsewhere", fs::perms::owner_all);
  fs::create_directory_symlink(root_ / "elsewhere", root_ / "scratch");
  Status s = MakePrivateDir(root_ / "scratch");
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_NE(s.message().find("symlink"), std::string::npos) << s.ToString();
}

TEST_F(PrivateDirTest, RefusesSomeoneElsesDirectory) {
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to chown a directory";
  const fs::path dir = root_ / "scratch";
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all);
  ASSERT_EQ(::chown(dir.c_str(), 65534, 65534), 0);
  Status s = MakePrivateDir(dir);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_NE(s.message().find("owned by uid 65534"), std::string::npos) << s.ToString();
}

TEST_F(PrivateDirTest, RefusesAPathUnderADirectoryOthersMayWrite) {
  const fs::path open = root_ / "open";
  fs::create_directories(open);
  fs::permissions(open, fs::perms::all);  // 0777, not sticky
  Status s = MakePrivateDir(open / "scratch");
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_NE(s.message().find("writable by group or others"), std::string::npos) << s.ToString();
  EXPECT_FALSE(fs::exists(open / "scratch")) << "nothing made under it";
}

TEST_F(PrivateDirTest, StickyWorldWritableParentNeedsTheDirectoryToBeOurs) {
  const fs::path shm = root_ / "shm";
  fs::create_directories(shm);
  fs::permissions(shm, fs::perms::all | fs::perms::sticky_bit);  // like /dev/shm
  EXPECT_TRUE(MakePrivateDir(shm / "kmosix-node1").ok());
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to plant someone else's directory";
  fs::create_directories(shm / "planted");
  fs::permissions(shm / "planted", fs::perms::owner_all);
  ASSERT_EQ(::chown((shm / "planted").c_str(), 65534, 65534), 0);
  EXPECT_EQ(MakePrivateDir(shm / "planted").code(), Code::kInvalid);
}

TEST_F(PrivateDirTest, RelativeOrRootPathsAreInvalid) {
  EXPECT_EQ(MakePrivateDir("relative/dir").code(), Code::kInvalid);
  EXPECT_EQ(MakePrivateDir("/").code(), Code::kInvalid);
}

TEST_F(PrivateDirTest, JournalsAreWritten0600InA0700Directory) {
  const fs::path file = root_ / "state" / "migrations" / "in" / "m-1.json";
  ASSERT_TRUE(WriteFileAtomic(file, "{}").ok());
  EXPECT_EQ(Mode(file), 0600u);
  EXPECT_EQ(Mode(file.parent_path()), 0700u);
  // One an older agent left 0644 is made private on its next write.
  fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                            fs::perms::others_read);
  ASSERT_TRUE(WriteFileAtomic(file, "{\"a\":1}").ok());
  EXPECT_EQ(Mode(file), 0600u);
}

}  // namespace
}  // namespace kmosix
