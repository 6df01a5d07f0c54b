#include "kmosix/files.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kmosix {
namespace {

namespace fs = std::filesystem;

Status Errno(const std::string& what) { return FailedError(what + ": " + std::strerror(errno)); }

}  // namespace

Status WriteFileAtomic(const std::string& path, const std::string& content) {
  std::error_code ec;
  fs::path p(path);
  if (!fs::is_directory(p.parent_path(), ec)) {
    fs::create_directories(p.parent_path(), ec);
    if (ec) return FailedError("mkdir " + p.parent_path().string() + ": " + ec.message());
    fs::permissions(p.parent_path(), fs::perms::owner_all, ec);
  }
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return Errno("open " + tmp);
  // Any failure before the rename leaves `path` as it was and no temporary
  // file (a full disk must not keep the half-written one).
  auto fail = [&](const std::string& what) {
    Status s = Errno(what);
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write " + tmp);
    }
    off += static_cast<size_t>(n);
  }
  // A file left by an older agent (0644) is made private too.
  if (::fchmod(fd, 0600) != 0) return fail("chmod " + tmp);
  if (::fsync(fd) != 0) return fail("fsync " + tmp);
  const int closed = ::close(fd);
  fd = -1;
  if (closed != 0) return fail("close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename " + tmp);
  // The rename is durable only once the directory is.
  int dfd = ::open(p.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    return Errno("open " + p.parent_path().string() + " (the new content may be in place)");
  }
  if (::fsync(dfd) != 0) {
    Status s = Errno("fsync " + p.parent_path().string() + " (the new content may be in place)");
    ::close(dfd);
    return s;
  }
  ::close(dfd);
  return Status::Ok();
}

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!fs::exists(path)) return NotFoundError(path + " does not exist");
    return Errno("open " + path);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> ListFiles(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (it->is_regular_file() && name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      out.push_back(it->path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

Status RemoveFile(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) return FailedError("remove " + path + ": " + ec.message());
  return Status::Ok();
}

namespace {

// Mount points at or below `root` (absolute, normalised), from
// /proc/self/mountinfo (field 5; octal escapes for space, tab, newline and
// backslash decoded).
std::vector<std::string> MountsUnder(const std::string& root) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, mroot, point;
    if (!(fields >> id >> parent >> dev >> mroot >> point)) continue;
    std::string decoded;
    for (size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        const std::string oct = point.substr(i + 1, 3);
        if (oct.size() == 3 &&
            std::all_of(oct.begin(), oct.end(), [](char c) { return c >= '0' && c <= '7'; })) {
          decoded.push_back(static_cast<char>(std::stoi(oct, nullptr, 8)));
          i += 3;
          continue;
        }
      }
      decoded.push_back(point[i]);
    }
    if (decoded == root || decoded.rfind(root + "/", 0) == 0) out.push_back(decoded);
  }
  return out;
}

}  // namespace

Status RemoveTree(const std::string& path) {
  std::error_code ec;
  std::string root = fs::absolute(path, ec).lexically_normal().string();
  if (ec) return FailedError("remove " + path + ": " + ec.message());
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  std::vector<std::string> mounts = MountsUnder(root);
  // Deepest first; a path mounted over several times is listed once per mount.
  std::sort(mounts.begin(), mounts.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  for (const auto& m : mounts) {
    if (::umount2(m.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
      return Errno("remove " + path + ": unmount " + m);
    }
  }
  fs::remove_all(root, ec);
  if (ec) return FailedError("remove " + path + ": " + ec.message());
  return Status::Ok();
}

Status MakePrivateDir(const std::string& path) {
  const fs::path target = fs::path(path).lexically_normal();
  if (!target.is_absolute() || target == target.root_path()) {
    return InvalidError("private directory " + path + " must be an absolute path below /");
  }
  const uid_t me = ::geteuid();
  fs::path cur = target.root_path();
  for (auto it = target.begin(); it != target.end(); ++it) {
    if (it == target.begin()) continue;  // the root
    cur /= *it;
    const bool leaf = cur == target;
    struct stat st {};
    if (::lstat(cur.c_str(), &st) != 0) {
      if (errno != ENOENT) return Errno("lstat " + cur.string());
      if (::mkdir(cur.c_str(), leaf ? 0700 : 0755) != 0 && errno != EEXIST) {
        return Errno("mkdir " + cur.string());
      }
      if (::lstat(cur.c_str(), &st) != 0) return Errno("lstat " + cur.string());
      if (::chmod(cur.c_str(), leaf ? 0700 : 0755) != 0) return Errno("chmod " + cur.string());
      if (::lstat(cur.c_str(), &st) != 0) return Errno("lstat " + cur.string());
    }
    if (S_ISLNK(st.st_mode)) {
      if (leaf) return InvalidError(cur.string() + " is a symlink");
      if (st.st_uid != 0 && st.st_uid != me) {
        return InvalidError(cur.string() + " is a symlink owned by uid " +
                            std::to_string(st.st_uid));
      }
      if (::stat(cur.c_str(), &st) != 0) return Errno("stat " + cur.string());
    }
    if (!S_ISDIR(st.st_mode)) return InvalidError(cur.string() + " is not a directory");
    if (leaf) {
      if (st.st_uid != me) {
        return InvalidError(cur.string() + " is owned by uid " + std::to_string(st.st_uid) +
                            ", not this agent's " + std::to_string(me));
      }
      if ((st.st_mode & 077) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
        return InvalidError(cur.string() + " has mode " + mode +
                            ": group or others may use it (want 0700)");
      }
    } else {
      if (st.st_uid != 0 && st.st_uid != me) {
        return InvalidError(cur.string() + " is owned by uid " + std::to_string(st.st_uid));
      }
      if ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0) {
        return InvalidError(cur.string() + " is writable by group or others");
      }
    }
  }
  return Status::Ok();
}

}  // namespace kmosix
