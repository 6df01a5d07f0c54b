#include "kmosix/transfer_stream.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>
#include <utility>

namespace kmosix {
namespace {

constexpr char kMagic[8] = {'K', 'M', 'X', 'S', 'T', 'R', 'M', '\0'};
constexpr uint8_t kRecSection = 1;
constexpr uint8_t kRecEntry = 2;
constexpr uint8_t kRecEnd = 3;
constexpr size_t kDigestSize = 32;
constexpr size_t kMaxPath = 4095;
constexpr size_t kMaxComponent = 255;
constexpr size_t kMaxSectionName = 255;
constexpr size_t kMaxXattrValue = 256;
constexpr size_t kMaxXattrs = 4;
constexpr char kOpaqueXattr[] = "trusted.overlay.opaque";

using Digest = std::array<unsigned char, kDigestSize>;

std::string ErrnoText(int err) { return std::error_code(err, std::generic_category()).message(); }

// Owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) Reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Incremental SHA-256 (OpenSSL EVP; uses SHA-NI where the CPU has it).
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { Reset(); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Reset() { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  void Update(const void* p, size_t n) {
    if (n > 0) EVP_DigestUpdate(ctx_, p, n);
  }
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  Digest Final() {
    Digest d{};
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, d.data(), &len);
    Reset();
    return d;
  }

 private:
  EVP_MD_CTX* ctx_;
};

void PutU8(std::string& s, uint8_t v) { s.push_back(static_cast<char>(v)); }
void PutU16(std::string& s, uint16_t v) {
  for (int i = 0; i < 2; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void PutU32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void PutStr16(std::string& s, std::string_view v) {
  PutU16(s, static_cast<uint16_t>(v.size()));
  s.append(v);
}

// Bounds-checked little-endian reader over one record; `ok()` turns false on
// the first read past the end and stays false.
class ByteReader {
 public:
  explicit ByteReader(std::string_view data) : data_(data) {}
  bool ok() const { return ok_; }
  bool at_end() const { return off_ == data_.size(); }
  uint64_t Uint(int bytes) {
    if (!Need(bytes)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) {
      v |= uint64_t{static_cast<unsigned char>(data_[off_ + i])} << (8 * i);
    }
    off_ += bytes;
    return v;
  }
  std::string_view Bytes(size_t n) {
    if (!Need(n)) return {};
    std::string_view v = data_.substr(off_, n);
    off_ += n;
    return v;
  }
  std::string_view Str16() { return Bytes(Uint(2)); }
  std::string_view Str8() { return Bytes(Uint(1)); }

 private:
  bool Need(size_t n) {
    if (!ok_ || data_.size() - off_ < n) ok_ = false;
    return ok_;
  }
  std::string_view data_;
  size_t off_ = 0;
  bool ok_ = true;
};

int64_t MtimeNs(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
}

struct timespec TimespecFromNs(int64_t ns) {
  int64_t sec = ns / 1000000000;
  int64_t rem = ns % 1000000000;
  if (rem < 0) {
    rem += 1000000000;
    sec -= 1;
  }
  struct timespec ts {};
  ts.tv_sec = static_cast<time_t>(sec);
  ts.tv_nsec = static_cast<long>(rem);
  return ts;
}

bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// A relative path inside a section: "" (the root) or '/'-separated non-empty
// components other than "." and "..".
Status ValidatePath(std::string_view path) {
  if (path.empty()) return Status::Ok();
  if (path.size() > kMaxPath) return InvalidError("path longer than 4095 bytes");
  if (HasNul(path)) return InvalidError("path contains a NUL byte");
  if (path.front() == '/') return InvalidError("absolute path \"" + std::string(path) + "\"");
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view comp = path.substr(start, end - start);
    if (comp.empty()) return InvalidError("empty component in path \"" + std::string(path) + "\"");
    if (comp == "." || comp == "..") {
      return InvalidError("path \"" + std::string(path) + "\" contains \"" + std::string(comp) +
                          "\"");
    }
    if (comp.size() > kMaxComponent) return InvalidError("path component longer than 255 bytes");
    start = end + 1;
  }
  return Status::Ok();
}

std::string_view KindName(EntryKind k) {
  switch (k) {
    case EntryKind::kFile:
      return "file";
    case EntryKind::kDirectory:
      return "directory";
    case EntryKind::kSymlink:
      return "symlink";
    case EntryKind::kWhiteout:
      return "whiteout";
    case EntryKind::kFifo:
      return "fifo";
    case EntryKind::kChunkedFile:
      return "chunked file";
  }
  return "?";
}

// Opens directory `rel` under `root` one component at a time, never following
// a symlink. `rel` is a validated relative path ("" = root itself, dup'ed).
StatusOr<UniqueFd> OpenDirBeneath(int root, std::string_view rel, std::string_view label) {
  if (rel.empty()) {
    int fd = ::fcntl(root, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return FailedError("dup: " + ErrnoText(errno));
    return UniqueFd(fd);
  }
  UniqueFd cur;
  int at = root;
  size_t start = 0;
  while (start <= rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string_view::npos) end = rel.size();
    std::string comp(rel.substr(start, end - start));
    int fd = ::openat(at, comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      std::string where = std::string(label) + ": \"" + std::string(rel.substr(0, end)) + "\"";
      if (err == ENOENT) return InvalidError(where + " is not in the stream before its contents");
      if (err == ELOOP || err == ENOTDIR) return InvalidError(where + " is not a directory");
      return FailedError("open " + where + ": " + ErrnoText(err));
    }
    cur.Reset(fd);
    at = fd;
    start = end + 1;
  }
  return cur;
}

std::string SectionRecord(std::string_view name, bool is_file) {
  std::string r;
  PutU8(r, kRecSection);
  PutU8(r, is_file ? 1 : 0);
  PutStr16(r, name);
  return r;
}

std::string Frame(const std::string& record) {
  std::string f;
  f.reserve(4 + record.size());
  PutU32(f, static_cast<uint32_t>(record.size()));
  f += record;
  return f;
}

constexpr size_t kEndRecordSize = 1 + 8 * 3 + kDigestSize;
// Body pieces at least this big are written without going through the buffer.
constexpr size_t kDirectWrite = 64 * 1024;

}  // namespace

// ---------------------------------------------------------------------------
// Encoder

struct StreamEncoder::Sha {
  Sha256 sha;
};

struct StreamEncoder::Planned {
  bool is_section = false;
  size_t section = 0;
  EntryKind kind = EntryKind::kFile;
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t mtime_ns = 0;
  std::string path;  // relative to the section root
  std::string target;
  bool opaque = false;
  std::string opaque_value;
  uint64_t size = 0;
  UniqueFd pipe;  // a chunked file's pipe, until it is sent

  std::string Record(const std::vector<Section>& sections) const {
    if (is_section) return SectionRecord(sections[section].name, sections[section].is_file);
    std::string r;
    PutU8(r, kRecEntry);
    PutU8(r, static_cast<uint8_t>(kind));
    PutU32(r, mode);
    PutU32(r, uid);
    PutU32(r, gid);
    PutU64(r, static_cast<uint64_t>(mtime_ns));
    PutStr16(r, path);
    PutStr16(r, target);
    PutU8(r, opaque ? 1 : 0);
    if (opaque) {
      PutU8(r, sizeof(kOpaqueXattr) - 1);
      r.append(kOpaqueXattr);
      PutStr16(r, opaque_value);
    }
    PutU64(r, size);
    return r;
  }
};

namespace {

// Reads trusted.overlay.opaque of `path` (not following symlinks).
StatusOr<std::optional<std::string>> ReadOpaque(const std::string& path) {
  char buf[kMaxXattrValue];
  ssize_t n = ::lgetxattr(path.c_str(), kOpaqueXattr, buf, sizeof(buf));
  if (n < 0) {
    if (errno == ENODATA || errno == ENOTSUP) return std::optional<std::string>();
    return FailedError("getxattr " + path + ": " + ErrnoText(errno));
  }
  return std::optional<std::string>(std::string(buf, static_cast<size_t>(n)));
}

// The names in directory `abs` but "." and "..", sorted.
StatusOr<std::vector<std::string>> ListDir(const std::string& abs) {
  DIR* dir = ::opendir(abs.c_str());
  if (dir == nullptr) return FailedError("opendir " + abs + ": " + ErrnoText(errno));
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* de = ::readdir(dir)) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  int err = errno;
  ::closedir(dir);
  if (err != 0) return FailedError("readdir " + abs + ": " + ErrnoText(err));
  std::sort(names.begin(), names.end());
  return names;
}

// Polls `fds` for POLLIN until one has data or hang-up (a writer came and
// went) and returns its index. Each poll lasts pipe_poll; when one times out,
// -1 if `done` (may be null) says the producer finished and a last look finds
// nothing, else that time counts as idle, up to pipe_stall (kFailed).
StatusOr<int> WaitPipes(std::vector<struct pollfd>& fds, const EncoderOptions& o,
                        const std::function<bool()>* done) {
  const int64_t tick = std::max<int64_t>(1, o.pipe_poll.count());
  int64_t idle = 0;
  for (;;) {
    int r = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(tick, 1 << 30)));
    if (r == 0 && done != nullptr && (*done)()) {
      r = ::poll(fds.data(), fds.size(), 0);  // a writer may have finished just before
      if (r == 0) return -1;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      return FailedError("poll: " + ErrnoText(errno));
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents != 0) return static_cast<int>(i);
    }
    idle += tick;
    if (idle >= o.pipe_stall.count()) {
      return FailedError("producer stalled: no data for " + std::to_string(idle) + " ms");
    }
  }
}

// Reads up to `want` bytes from a non-blocking pipe: as much as it holds once
// it holds something, waiting (WaitPipes) while it is empty. 0 means the
// writer closed it.
StatusOr<size_t> ReadPipe(int fd, char* dst, size_t want, const EncoderOptions& o,
                          const std::string& label) {
  size_t got = 0;
  while (got < want) {
    ssize_t r = ::read(fd, dst + got, want - got);
    if (r > 0) {
      got += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno != EAGAIN) return FailedError("read " + label + ": " + ErrnoText(errno));
    if (got > 0) break;
    std::vector<struct pollfd> fds = {{fd, POLLIN, 0}};
    // No writer right now: the end, if one came and went (POLLHUP).
    if (r == 0 && ::poll(fds.data(), 1, 0) == 1 && (fds[0].revents & POLLHUP) != 0) break;
    KMX_RETURN_IF_ERROR(WaitPipes(fds, o, nullptr).status());
  }
  return got;
}

}  // namespace

StreamEncoder::StreamEncoder(std::vector<Section> sections, EncoderOptions options)
    : sections_(std::move(sections)),
      options_(options),
      body_sha_(std::make_unique<Sha>()),
      record_sha_(std::make_unique<Sha>()) {
  if (options_.max_read == 0) options_.max_read = 1 << 20;
}

StreamEncoder::~StreamEncoder() {
  if (fd_ >= 0) ::close(fd_);
}

StatusOr<std::unique_ptr<StreamEncoder>> StreamEncoder::Create(std::vector<Section> sections,
                                                               EncoderOptions options) {
  std::unique_ptr<StreamEncoder> enc(new StreamEncoder(std::move(sections), options));
  KMX_RETURN_IF_ERROR(enc->Plan());
  return enc;
}

Status StreamEncoder::Plan() {
  auto add_entry = [&](size_t section, std::string rel, const std::string& abs,
                       const struct stat& st, bool pipe) -> Status {
    Planned p;
    p.section = section;
    p.mode = st.st_mode & 07777;
    p.uid = st.st_uid;
    p.gid = st.st_gid;
    p.mtime_ns = MtimeNs(st);
    p.path = std::move(rel);
    if (p.path.size() > kMaxPath) return InvalidError("path too long: " + abs);
    if (pipe) {
      // Non-blocking, so that neither we nor a writer's open waits for the other.
      int fd = ::open(abs.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
      // Gone: its producer removed it unused (a pipe is only written while
      // a reader has it open, and we never had).
      if (fd < 0 && errno == ENOENT) return Status::Ok();
      if (fd < 0) return FailedError("open " + abs + ": " + ErrnoText(errno));
      p.pipe.Reset(fd);
      ::fcntl(fd, F_SETPIPE_SZ, 1 << 20);  // fewer, larger reads; best effort
      p.kind = EntryKind::kChunkedFile;
    } else if (S_ISREG(st.st_mode)) {
      p.kind = EntryKind::kFile;
      p.size = static_cast<uint64_t>(st.st_size);
      total_files_ += 1;
      total_bytes_ += p.size;
      stream_size_ += p.size + (options_.content_digests ? kDigestSize : 0);
    } else if (S_ISDIR(st.st_mode)) {
      p.kind = EntryKind::kDirectory;
      KMX_ASSIGN_OR_RETURN(auto opaque, ReadOpaque(abs));
      if (opaque) {
        p.opaque = true;
        p.opaque_value = std::move(*opaque);
      }
    } else if (S_ISLNK(st.st_mode)) {
      p.kind = EntryKind::kSymlink;
      std::string target(kMaxPath + 1, '\0');
      ssize_t n = ::readlink(abs.c_str(), target.data(), target.size());
      if (n < 0) return FailedError("readlink " + abs + ": " + ErrnoText(errno));
      if (n == 0 || static_cast<size_t>(n) > kMaxPath) {
        return InvalidError("symlink target of " + abs + " is empty or too long");
      }
      target.resize(static_cast<size_t>(n));
      p.target = std::move(target);
    } else if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
      p.kind = EntryKind::kWhiteout;
    } else if (S_ISFIFO(st.st_mode)) {
      p.kind = EntryKind::kFifo;
    } else {
      const char* what = S_ISSOCK(st.st_mode)  ? "socket"
                         : S_ISCHR(st.st_mode) ? "character device"
                         : S_ISBLK(st.st_mode) ? "block device"
                                               : "unknown file type";
      return InvalidError("cannot stream " + abs + ": " + what + " is not supported");
    }
    stream_size_ += 4 + p.Record(sections_).size();
    plan_.push_back(std::move(p));
    return Status::Ok();
  };

  // Depth-first, sorted, pre-order walk of abs (whose relative path is rel).
  // A pipes section instead gets one chunked file per FIFO directly in it.
  std::function<Status(size_t, const std::string&, const std::string&)> walk =
      [&](size_t section, const std::string& abs, const std::string& rel) -> Status {
    KMX_ASSIGN_OR_RETURN(std::vector<std::string> children, ListDir(abs));
    for (const std::string& child : children) {
      std::string child_abs = abs + "/" + child;
      std::string child_rel = rel.empty() ? child : rel + "/" + child;
      struct stat st {};
      if (::lstat(child_abs.c_str(), &st) != 0) {
        if (errno == ENOENT && sections_[section].pipes) continue;  // see add_entry
        return FailedError("lstat " + child_abs + ": " + ErrnoText(errno));
      }
      if (sections_[section].pipes) {
        if (S_ISFIFO(st.st_mode)) {
          KMX_RETURN_IF_ERROR(add_entry(section, child, child_abs, st, true));
        }
        continue;
      }
      KMX_RETURN_IF_ERROR(add_entry(section, child_rel, child_abs, st, false));
      if (S_ISDIR(st.st_mode)) KMX_RETURN_IF_ERROR(walk(section, child_abs, child_rel));
    }
    return Status::Ok();
  };

  if (state_ == State::kStart) {  // from Create
    stream_size_ = kTransferHeaderSize + 4 + kEndRecordSize;
    std::set<std::string> names;
    for (const Section& s : sections_) {
      if (s.name.empty() || s.name.size() > kMaxSectionName || HasNul(s.name)) {
        return InvalidError("bad section name \"" + s.name + "\"");
      }
      if (!names.insert(s.name).second) return InvalidError("duplicate section \"" + s.name + "\"");
      if (s.pipes && (s.is_file || !s.producer_done)) {
        return InvalidError("section " + s.name + ": pipes need a directory and producer_done");
      }
    }
    // Open totals: each section is planned when the stream reaches it.
    if (!sized()) return Status::Ok();
  }
  size_t first = plan_.empty() ? 0 : plan_.back().section + 1;
  size_t last = sized() ? sections_.size() : std::min(first + 1, sections_.size());
  for (size_t i = first; i < last; ++i) {
    const Section& s = sections_[i];
    if (s.before_read) KMX_RETURN_IF_ERROR(s.before_read());
    Planned sec;
    sec.is_section = true;
    sec.section = i;
    stream_size_ += 4 + sec.Record(sections_).size();
    plan_.push_back(std::move(sec));
    std::string root = s.path;
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    struct stat st {};
    if (::lstat(root.c_str(), &st) != 0) {
      int err = errno;
      if (err == ENOENT) return NotFoundError("section " + s.name + ": " + root + " not found");
      return FailedError("section " + s.name + ": lstat " + root + ": " + ErrnoText(err));
    }
    if (s.is_file) {
      if (!S_ISREG(st.st_mode)) {
        return InvalidError("section " + s.name + ": " + root + " is not a regular file");
      }
      KMX_RETURN_IF_ERROR(add_entry(i, "", root, st, false));
    } else {
      if (!S_ISDIR(st.st_mode)) {
        return InvalidError("section " + s.name + ": " + root + " is not a directory");
      }
      KMX_RETURN_IF_ERROR(add_entry(i, "", root, st, false));
      KMX_RETURN_IF_ERROR(walk(i, root, ""));
    }
    sections_[i].path = root;
  }
  return Status::Ok();
}

bool StreamEncoder::sized() const {
  return std::none_of(sections_.begin(), sections_.end(),
                      [](const Section& s) { return s.pipes || s.before_read; });
}

bool StreamEncoder::done() const {
  return state_ == State::kDone && pending_off_ >= pending_.size();
}

Status StreamEncoder::NextRecord() {
  if (state_ == State::kStart) {
    pending_.append(kMagic, sizeof(kMagic));
    PutU32(pending_, kTransferStreamVersion);
    PutU32(pending_,
           (sized() ? 0 : kOpenTotals) | (options_.content_digests ? 0 : kNoContentDigests));
    PutU64(pending_, sized() ? total_files_ : 0);
    PutU64(pending_, sized() ? total_bytes_ : 0);
    record_sha_->sha.Update(pending_);
    state_ = State::kRecords;
    return Status::Ok();
  }
  if (next_ == plan_.size()) {
    size_t planned = plan_.empty() ? 0 : plan_.back().section + 1;
    if (planned < sections_.size()) return Plan();  // open totals: the next section
    std::string end;
    PutU8(end, kRecEnd);
    PutU64(end, entries_);
    PutU64(end, stats_.files);
    PutU64(end, stats_.bytes);
    Digest d = record_sha_->sha.Final();
    end.append(reinterpret_cast<const char*>(d.data()), d.size());
    pending_ = Frame(end);
    state_ = State::kDone;
    return Status::Ok();
  }
  if (plan_[next_].pipe.valid()) {
    // A pipes section: the rest of the plan are its unsent pipes. Send the
    // first one a writer fills; at the end, drop those nobody opened.
    std::vector<struct pollfd> fds;
    for (size_t i = next_; i < plan_.size(); ++i) fds.push_back({plan_[i].pipe.get(), POLLIN, 0});
    const Section& s = sections_[plan_[next_].section];
    KMX_ASSIGN_OR_RETURN(int ready, WaitPipes(fds, options_, &s.producer_done));
    if (ready < 0) {
      plan_.erase(plan_.begin() + static_cast<ptrdiff_t>(next_), plan_.end());
      return Status::Ok();
    }
    std::swap(plan_[next_], plan_[next_ + static_cast<size_t>(ready)]);
  }
  Planned& p = plan_[next_++];
  pending_ = Frame(p.Record(sections_));
  record_sha_->sha.Update(pending_);
  if (p.is_section) return Status::Ok();
  entries_ += 1;
  if (p.kind == EntryKind::kChunkedFile) {
    fd_ = p.pipe.Release();
    body_sha_->sha.Reset();
    state_ = State::kBody;
    return Status::Ok();
  }
  if (p.kind != EntryKind::kFile) return Status::Ok();

  const Section& s = sections_[p.section];
  std::string abs = p.path.empty() ? s.path : s.path + "/" + p.path;
  int fd = ::open(abs.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return FailedError("open " + abs + ": " + ErrnoText(errno));
  fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return FailedError("fstat " + abs + ": " + ErrnoText(errno));
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != p.size) {
    return FailedError(abs + " changed while streaming");
  }
  if (p.size > 0) ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  body_left_ = p.size;
  body_sha_->sha.Reset();
  state_ = State::kBody;
  return Status::Ok();
}

StatusOr<size_t> StreamEncoder::ReadBody(char* buf, size_t n) {
  const Planned& p = plan_[next_ - 1];
  auto label = [&] { return sections_[p.section].name + "/" + p.path; };
  if (p.kind == EntryKind::kChunkedFile) {
    if (n < 5) {  // no room for a chunk: make one in pending_
      std::string chunk(4 + std::min<size_t>(options_.max_read, 64 << 10), '\0');
      KMX_ASSIGN_OR_RETURN(size_t k, ReadBody(chunk.data(), chunk.size()));
      chunk.resize(k);
      if (k > 0) pending_ = std::move(chunk);
      return size_t{0};
    }
    // The content goes straight into buf after the chunk's length.
    size_t want = std::min({n - 4, options_.max_read, size_t{kMaxChunk}});
    KMX_ASSIGN_OR_RETURN(size_t got, ReadPipe(fd_, buf + 4, want, options_, label()));
    if (got > 0) {
      std::string len;
      PutU32(len, static_cast<uint32_t>(got));
      std::memcpy(buf, len.data(), 4);
      if (options_.content_digests) body_sha_->sha.Update(buf + 4, got);
      stats_.bytes += got;
      return 4 + got;
    }
    PutU32(pending_, 0);  // the writer closed the pipe: end of the chunks
  } else if (body_left_ > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>({n, body_left_, options_.max_read}));
    ssize_t got;
    do {
      got = ::read(fd_, buf, want);
    } while (got < 0 && errno == EINTR);
    if (got < 0) return FailedError("read " + label() + ": " + ErrnoText(errno));
    if (got == 0) return FailedError(label() + " shrank while streaming");
    if (options_.content_digests) body_sha_->sha.Update(buf, static_cast<size_t>(got));
    body_left_ -= static_cast<uint64_t>(got);
    stats_.bytes += static_cast<uint64_t>(got);
    return static_cast<size_t>(got);
  }
  if (options_.content_digests) {
    Digest d = body_sha_->sha.Final();
    pending_.append(reinterpret_cast<const char*>(d.data()), d.size());
  }
  ::close(fd_);
  fd_ = -1;
  stats_.files += 1;
  state_ = State::kRecords;
  return size_t{0};
}

StatusOr<size_t> StreamEncoder::Read(char* buf, size_t n) {
  if (!error_.ok()) return error_;
  // Whether the next step may wait for a producer: Read then first returns
  // what it has.
  auto may_wait = [&](size_t room) {
    std::vector<struct pollfd> fds;
    if (state_ == State::kBody) {
      if (plan_[next_ - 1].kind != EntryKind::kChunkedFile) return false;
      if (room < 5) return true;
      fds.push_back({fd_, POLLIN, 0});
    } else if (next_ < plan_.size()) {
      for (size_t i = next_; i < plan_.size() && plan_[i].pipe.valid(); ++i) {
        fds.push_back({plan_[i].pipe.get(), POLLIN, 0});
      }
      if (fds.empty()) return false;
    } else {
      size_t planned = plan_.empty() ? 0 : plan_.back().section + 1;
      return planned < sections_.size() && static_cast<bool>(sections_[planned].before_read);
    }
    return ::poll(fds.data(), fds.size(), 0) == 0;
  };
  size_t out = 0;
  while (out < n) {
    if (pending_off_ < pending_.size()) {
      size_t k = std::min(n - out, pending_.size() - pending_off_);
      std::memcpy(buf + out, pending_.data() + pending_off_, k);
      out += k;
      pending_off_ += k;
      continue;
    }
    pending_.clear();
    pending_off_ = 0;
    if (state_ == State::kDone || (out > 0 && may_wait(n - out))) break;
    Status s;
    if (state_ == State::kBody) {
      auto got = ReadBody(buf + out, n - out);
      if (got.ok()) {
        out += *got;
        continue;
      }
      s = got.status();
    } else {
      s = NextRecord();
    }
    if (!s.ok()) {
      error_ = s;
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
      plan_.clear();  // closes the pipes: their writers get EPIPE
      return error_;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Decoder

namespace {

struct Meta {
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t mtime_ns = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

Status ApplyFdMeta(int fd, const Meta& m, const std::string& label, bool times) {
  if (::fchown(fd, m.uid, m.gid) != 0)
    return FailedError("chown " + label + ": " + ErrnoText(errno));
  if (::fchmod(fd, m.mode) != 0) return FailedError("chmod " + label + ": " + ErrnoText(errno));
  for (const auto& [name, value] : m.xattrs) {
    if (::fsetxattr(fd, name.c_str(), value.data(), value.size(), 0) != 0) {
      return FailedError("setxattr " + name + " on " + label + ": " + ErrnoText(errno));
    }
  }
  if (times) {
    struct timespec ts[2] = {TimespecFromNs(m.mtime_ns), TimespecFromNs(m.mtime_ns)};
    if (::futimens(fd, ts) != 0) return FailedError("utimens " + label + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status WriteAll(int fd, const char* p, size_t n, const std::string& label) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return FailedError("write " + label + ": " + ErrnoText(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

}  // namespace

struct StreamDecoder::Impl {
  enum class State { kHeader, kLength, kRecord, kChunkLength, kDigest, kBody, kDone, kFailed };

  Landing landing;
  DecoderOptions options;
  State state = State::kHeader;
  Status error;
  std::string acc;  // bytes of the fixed-size item being assembled
  size_t need = kTransferHeaderSize;
  std::string length_bytes;  // the current record's length prefix
  Sha256 record_sha;
  bool open_totals = false;  // header flag kOpenTotals: no declared totals
  bool digests = true;       // no header flag kNoContentDigests: file digests follow
  uint64_t declared_files = 0;
  uint64_t declared_bytes = 0;
  uint64_t entries = 0;
  uint64_t announced_files = 0;
  uint64_t announced_bytes = 0;
  uint64_t consumed = 0;
  TransferStats stats;
  bool over_limits = false;  // the error is a DecoderOptions limit

  Status OverLimits(std::string message) {
    over_limits = true;
    return InvalidError(std::move(message));
  }

  // Sections.
  std::vector<bool> seen;
  std::vector<UniqueFd> roots;  // per landing section (directories)
  int cur = -1;                 // landing index of the current section
  uint64_t cur_entries = 0;

  // Parent directory cache.
  std::string cached_parent;
  UniqueFd cached_fd;
  int cached_section = -1;

  // The file being received.
  UniqueFd file;
  uint64_t body_left = 0;
  uint64_t file_size = 0;
  bool chunked = false;  // kChunkedFile: body_left is the current chunk's
  Sha256 body_sha;
  std::string file_label;
  Meta file_meta;
  std::vector<char> wbuf;
  size_t wlen = 0;

  struct DeferredDir {
    int section;
    std::string path;
    Meta meta;
  };
  std::vector<DeferredDir> dirs;

  Impl(Landing l, DecoderOptions o) : landing(std::move(l)), options(o) {
    seen.assign(landing.sections.size(), false);
    roots.resize(landing.sections.size());
    if (options.write_buffer < 4096) options.write_buffer = 4096;
  }

  std::string Label(std::string_view path) const {
    const std::string& name = landing.sections[cur].name;
    return path.empty() ? name : name + "/" + std::string(path);
  }

  Status Fail(Status s) {
    error = std::move(s);
    state = State::kFailed;
    file.Reset();
    return error;
  }

  Status Feed(const char* data, size_t n) {
    if (state == State::kFailed) return error;
    while (n > 0) {
      if (state == State::kDone) return Fail(InvalidError("trailing data after the end record"));
      if (state == State::kBody) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(n, body_left));
        Status s = WriteBody(data, k);
        if (!s.ok()) return Fail(s);
        data += k;
        n -= k;
        consumed += k;
        body_left -= k;
        if (body_left == 0) {
          s = chunked ? NextChunk() : EndOfBody();
          if (!s.ok()) return Fail(s);
        }
        continue;
      }
      size_t k = std::min(n, need - acc.size());
      acc.append(data, k);
      data += k;
      n -= k;
      consumed += k;
      if (acc.size() == need) {
        Status s = Complete();
        if (!s.ok()) return Fail(s);
      }
    }
    return Status::Ok();
  }

  Status Finish() {
    if (state == State::kFailed) return error;
    if (state != State::kDone) {
      return Fail(FailedError("truncated stream: input ended after " + std::to_string(consumed) +
                              " bytes, before the end record"));
    }
    return Status::Ok();
  }

  Status Complete() {
    std::string item = std::move(acc);
    acc.clear();
    switch (state) {
      case State::kHeader:
        return OnHeader(item);
      case State::kLength: {
        ByteReader r(item);
        uint64_t len = r.Uint(4);
        if (len == 0 || len > kMaxRecordSize) {
          return InvalidError("record length " + std::to_string(len) + " out of range");
        }
        length_bytes = std::move(item);
        state = State::kRecord;
        need = static_cast<size_t>(len);
        return Status::Ok();
      }
      case State::kRecord: {
        state = State::kLength;
        need = 4;
        uint8_t type = static_cast<uint8_t>(item[0]);
        if (type != kRecEnd) {
          record_sha.Update(length_bytes);
          record_sha.Update(item);
        }
        switch (type) {
          case kRecSection:
            return OnSection(item);
          case kRecEntry:
            return OnEntry(item);
          case kRecEnd:
            return OnEnd(item);
          default:
            return InvalidError("unknown record type " + std::to_string(type));
        }
      }
      case State::kChunkLength:
        return OnChunkLength(item);
      case State::kDigest:
        return OnDigest(item);
      default:
        return FailedError("decoder in a bad state");
    }
  }

  Status OnHeader(const std::string& item) {
    if (std::memcmp(item.data(), kMagic, sizeof(kMagic)) != 0) {
      return InvalidError("not a kmosix transfer stream (bad magic)");
    }
    ByteReader r(std::string_view(item).substr(sizeof(kMagic)));
    uint64_t version = r.Uint(4);
    uint64_t flags = r.Uint(4);
    declared_files = r.Uint(8);
    declared_bytes = r.Uint(8);
    if (version != kTransferStreamVersion) {
      return InvalidError("unsupported transfer stream version " + std::to_string(version));
    }
    if ((flags & ~uint64_t{kOpenTotals | kNoContentDigests}) != 0) {
      return InvalidError("unsupported transfer stream flags");
    }
    open_totals = (flags & kOpenTotals) != 0;
    digests = (flags & kNoContentDigests) == 0;
    if (!digests && !options.accept_undigested) {
      return InvalidError(
          "stream without file digests over a carrier that does not authenticate its data");
    }
    if (open_totals && (declared_files != 0 || declared_bytes != 0)) {
      return InvalidError("a stream with open totals declares totals");
    }
    if (options.max_files != 0 && declared_files > options.max_files) {
      return OverLimits("stream declares " + std::to_string(declared_files) +
                        " files, the limit is " + std::to_string(options.max_files));
    }
    if (options.max_bytes != 0 && declared_bytes > options.max_bytes) {
      return OverLimits("stream declares " + std::to_string(declared_bytes) +
                        " bytes, the limit is " + std::to_string(options.max_bytes));
    }
    record_sha.Update(item);
    state = State::kLength;
    need = 4;
    return Status::Ok();
  }

  Status CheckSectionComplete() {
    if (cur >= 0 && landing.sections[cur].is_file && cur_entries == 0) {
      return InvalidError("section " + landing.sections[cur].name + " has no file");
    }
    return Status::Ok();
  }

  Status OnSection(std::string_view rec) {
    ByteReader r(rec.substr(1));
    uint64_t is_file = r.Uint(1);
    std::string_view name = r.Str16();
    if (!r.ok() || !r.at_end() || is_file > 1) return InvalidError("malformed section record");
    KMX_RETURN_IF_ERROR(CheckSectionComplete());
    int idx = -1;
    for (size_t i = 0; i < landing.sections.size(); ++i) {
      if (landing.sections[i].name == name) idx = static_cast<int>(i);
    }
    std::string shown(name.substr(0, 64));
    if (HasNul(shown)) shown = "(binary)";
    if (idx < 0) return InvalidError("unknown section \"" + shown + "\"");
    if (seen[idx]) return InvalidError("duplicate section \"" + shown + "\"");
    const Section& s = landing.sections[idx];
    if (s.is_file != (is_file == 1)) {
      return InvalidError("section " + s.name + " is a " + (is_file ? "file" : "directory") +
                          " in the stream but not in the landing");
    }
    seen[idx] = true;
    cur = idx;
    cur_entries = 0;
    cached_fd.Reset();
    cached_section = -1;
    if (!s.is_file) {
      int fd = ::open(s.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0 && errno == ENOENT) {
        if (::mkdir(s.path.c_str(), 0700) != 0 && errno != EEXIST) {
          return FailedError("mkdir " + s.path + ": " + ErrnoText(errno));
        }
        fd = ::open(s.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      }
      if (fd < 0) return FailedError("open landing " + s.path + ": " + ErrnoText(errno));
      roots[idx].Reset(fd);
    }
    return Status::Ok();
  }

  // The parent directory of `path` in the current section (borrowed fd).
  StatusOr<int> Parent(std::string_view path) {
    size_t slash = path.rfind('/');
    if (slash == std::string_view::npos) return roots[cur].get();
    std::string_view parent = path.substr(0, slash);
    if (cached_section == cur && cached_fd.valid() && cached_parent == parent) {
      return cached_fd.get();
    }
    KMX_ASSIGN_OR_RETURN(UniqueFd fd, OpenDirBeneath(roots[cur].get(), parent, Label("")));
    cached_fd = std::move(fd);
    cached_parent = std::string(parent);
    cached_section = cur;
    return cached_fd.get();
  }

  Status OnEntry(std::string_view rec) {
    ByteReader r(rec.substr(1));
    uint64_t kind_raw = r.Uint(1);
    Meta m;
    m.mode = static_cast<uint32_t>(r.Uint(4));
    m.uid = static_cast<uint32_t>(r.Uint(4));
    m.gid = static_cast<uint32_t>(r.Uint(4));
    m.mtime_ns = static_cast<int64_t>(r.Uint(8));
    std::string path(r.Str16());
    std::string target(r.Str16());
    uint64_t nx = r.Uint(1);
    if (nx > kMaxXattrs) return InvalidError("too many xattrs in an entry");
    for (uint64_t i = 0; i < nx && r.ok(); ++i) {
      std::string name(r.Str8());
      std::string value(r.Str16());
      m.xattrs.emplace_back(std::move(name), std::move(value));
    }
    uint64_t size = r.Uint(8);
    if (!r.ok() || !r.at_end()) return InvalidError("malformed entry record");
    if (kind_raw < 1 || kind_raw > 6) {
      return InvalidError("unknown entry kind " + std::to_string(kind_raw));
    }
    EntryKind kind = static_cast<EntryKind>(kind_raw);
    if (kind == EntryKind::kChunkedFile && !open_totals) {
      return InvalidError("chunked file in a stream with declared totals");
    }
    bool regular = kind == EntryKind::kFile || kind == EntryKind::kChunkedFile;
    if (cur < 0) return InvalidError("entry before any section");
    KMX_RETURN_IF_ERROR(ValidatePath(path));
    std::string label = Label(path);
    if (m.mode > 07777) return InvalidError("bad mode for " + label);
    if (m.mtime_ns < -(int64_t{1} << 62) || m.mtime_ns > (int64_t{1} << 62)) {
      return InvalidError("bad mtime for " + label);
    }
    if (kind != EntryKind::kFile && size != 0) {
      return InvalidError(std::string(KindName(kind)) + " " + label + " has a size");
    }
    if (kind == EntryKind::kSymlink) {
      if (target.empty() || target.size() > kMaxPath || HasNul(target)) {
        return InvalidError("bad symlink target for " + label);
      }
    } else if (!target.empty()) {
      return InvalidError(std::string(KindName(kind)) + " " + label + " has a link target");
    }
    std::set<std::string> xnames;
    for (const auto& [name, value] : m.xattrs) {
      if (name != kOpaqueXattr) return InvalidError("xattr not allowed on " + label);
      if (kind != EntryKind::kDirectory)
        return InvalidError("opaque xattr on non-directory " + label);
      if (value.size() > kMaxXattrValue) return InvalidError("xattr value too long on " + label);
      if (!xnames.insert(name).second) return InvalidError("duplicate xattr on " + label);
    }
    entries += 1;
    if (options.max_entries != 0 && entries > options.max_entries) {
      return OverLimits("stream has more than " + std::to_string(options.max_entries) + " entries");
    }

    const Section& s = landing.sections[cur];
    if (s.is_file) {
      if (cur_entries != 0 || !path.empty() || !regular) {
        return InvalidError("file section " + s.name + " must hold exactly one file");
      }
    } else if (path.empty()) {
      if (cur_entries != 0 || kind != EntryKind::kDirectory) {
        return InvalidError("bad root entry in section " + s.name);
      }
    }
    cur_entries += 1;

    if (regular) {
      uint64_t max_files = open_totals ? options.max_files : declared_files;
      if ((!open_totals || max_files != 0) && announced_files + 1 > max_files) {
        std::string m = "more files than the " + std::to_string(max_files) +
                        (open_totals ? " allowed" : " declared");
        return open_totals ? OverLimits(std::move(m)) : InvalidError(std::move(m));
      }
      KMX_RETURN_IF_ERROR(Announce(size, label));
      announced_files += 1;
      int fd;
      if (s.is_file) {
        fd = ::open(s.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) return FailedError("open landing " + s.path + ": " + ErrnoText(errno));
      } else {
        KMX_ASSIGN_OR_RETURN(int parent, Parent(path));
        std::string name = path.substr(path.rfind('/') + 1);
        fd = ::openat(parent, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                      0600);
        if (fd < 0) {
          if (errno == EEXIST) return InvalidError(label + " already exists");
          return FailedError("create " + label + ": " + ErrnoText(errno));
        }
      }
      file.Reset(fd);
      file_label = label;
      file_meta = std::move(m);
      body_left = size;
      file_size = size;
      chunked = kind == EntryKind::kChunkedFile;
      body_sha.Reset();
      wlen = 0;
      if (chunked) return NextChunk();
      if (size == 0) return EndOfBody();
      state = State::kBody;
      return Status::Ok();
    }

    if (kind == EntryKind::kDirectory) {
      if (path.empty()) {
        KMX_RETURN_IF_ERROR(ApplyDirNow(roots[cur].get(), m, label));
        dirs.push_back({cur, path, std::move(m)});
        return Status::Ok();
      }
      KMX_ASSIGN_OR_RETURN(int parent, Parent(path));
      std::string name = path.substr(path.rfind('/') + 1);
      if (::mkdirat(parent, name.c_str(), 0700) != 0) {
        if (errno != EEXIST) return FailedError("mkdir " + label + ": " + ErrnoText(errno));
      }
      int fd = ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) {
        if (errno == ELOOP || errno == ENOTDIR) {
          return InvalidError(label + " exists and is not a directory");
        }
        return FailedError("open " + label + ": " + ErrnoText(errno));
      }
      UniqueFd dfd(fd);
      KMX_RETURN_IF_ERROR(ApplyDirNow(dfd.get(), m, label));
      dirs.push_back({cur, path, std::move(m)});
      return Status::Ok();
    }

    // Symlink, whiteout, fifo.
    if (path.empty()) return InvalidError("bad root entry in section " + s.name);
    KMX_ASSIGN_OR_RETURN(int parent, Parent(path));
    std::string name = path.substr(path.rfind('/') + 1);
    int rc;
    if (kind == EntryKind::kSymlink) {
      rc = ::symlinkat(target.c_str(), parent, name.c_str());
    } else if (kind == EntryKind::kWhiteout) {
      rc = ::mknodat(parent, name.c_str(), S_IFCHR | 0600, makedev(0, 0));
    } else {
      rc = ::mknodat(parent, name.c_str(), S_IFIFO | 0600, 0);
    }
    if (rc != 0) {
      if (errno == EEXIST) return InvalidError(label + " already exists");
      return FailedError("create " + std::string(KindName(kind)) + " " + label + ": " +
                         ErrnoText(errno));
    }
    if (::fchownat(parent, name.c_str(), m.uid, m.gid, AT_SYMLINK_NOFOLLOW) != 0) {
      return FailedError("chown " + label + ": " + ErrnoText(errno));
    }
    if (kind != EntryKind::kSymlink && ::fchmodat(parent, name.c_str(), m.mode, 0) != 0) {
      return FailedError("chmod " + label + ": " + ErrnoText(errno));
    }
    struct timespec ts[2] = {TimespecFromNs(m.mtime_ns), TimespecFromNs(m.mtime_ns)};
    if (::utimensat(parent, name.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) {
      return FailedError("utimens " + label + ": " + ErrnoText(errno));
    }
    return Status::Ok();
  }

  // Owner and xattrs now; mode and mtime once everything inside is written.
  static Status ApplyDirNow(int fd, const Meta& m, const std::string& label) {
    if (::fchown(fd, m.uid, m.gid) != 0) {
      return FailedError("chown " + label + ": " + ErrnoText(errno));
    }
    for (const auto& [name, value] : m.xattrs) {
      if (::fsetxattr(fd, name.c_str(), value.data(), value.size(), 0) != 0) {
        return FailedError("setxattr " + name + " on " + label + ": " + ErrnoText(errno));
      }
    }
    return Status::Ok();
  }

  Status WriteBody(const char* data, size_t n) {
    if (digests) body_sha.Update(data, n);
    if (n >= kDirectWrite) {  // big pieces go straight to the file, no copy
      KMX_RETURN_IF_ERROR(FlushBody());
      return WriteAll(file.get(), data, n, file_label);
    }
    if (wbuf.empty()) wbuf.resize(options.write_buffer);
    while (n > 0) {
      size_t k = std::min(n, wbuf.size() - wlen);
      std::memcpy(wbuf.data() + wlen, data, k);
      wlen += k;
      data += k;
      n -= k;
      if (wlen == wbuf.size()) KMX_RETURN_IF_ERROR(FlushBody());
    }
    return Status::Ok();
  }

  Status FlushBody() {
    if (wlen == 0) return Status::Ok();
    size_t n = wlen;
    wlen = 0;
    return WriteAll(file.get(), wbuf.data(), n, file_label);
  }

  // Counts `size` more payload bytes against the declared total, or the
  // limit when the stream has open totals.
  Status Announce(uint64_t size, const std::string& label) {
    uint64_t max_bytes = open_totals ? options.max_bytes : declared_bytes;
    if ((!open_totals || max_bytes != 0) && size > max_bytes - announced_bytes) {
      std::string m = "file " + label + " goes beyond the " + std::to_string(max_bytes) +
                      (open_totals ? " bytes allowed" : " bytes declared");
      return open_totals ? OverLimits(std::move(m)) : InvalidError(std::move(m));
    }
    announced_bytes += size;
    return Status::Ok();
  }

  Status EndOfBody() {
    KMX_RETURN_IF_ERROR(FlushBody());
    if (!digests) return FileDone();
    state = State::kDigest;
    need = kDigestSize;
    return Status::Ok();
  }

  Status NextChunk() {
    state = State::kChunkLength;
    need = 4;
    return Status::Ok();
  }

  Status OnChunkLength(const std::string& item) {
    uint64_t n = ByteReader(item).Uint(4);
    if (n == 0) return EndOfBody();
    if (n > kMaxChunk) {
      return InvalidError("chunk of " + std::to_string(n) + " bytes in " + file_label +
                          " is larger than " + std::to_string(kMaxChunk));
    }
    KMX_RETURN_IF_ERROR(Announce(n, file_label));
    body_left = n;
    file_size += n;
    state = State::kBody;
    return Status::Ok();
  }

  Status OnDigest(const std::string& item) {
    Digest d = body_sha.Final();
    if (std::memcmp(d.data(), item.data(), kDigestSize) != 0) {
      return FailedError("checksum mismatch for " + file_label);
    }
    return FileDone();
  }

  // The current file's content is complete (and verified, when digested).
  Status FileDone() {
    KMX_RETURN_IF_ERROR(ApplyFdMeta(file.get(), file_meta, file_label, /*times=*/true));
    if (::close(file.Release()) != 0) {
      return FailedError("close " + file_label + ": " + ErrnoText(errno));
    }
    stats.files += 1;
    stats.bytes += file_size;
    state = State::kLength;
    need = 4;
    return Status::Ok();
  }

  Status OnEnd(std::string_view rec) {
    ByteReader r(rec.substr(1));
    uint64_t n_entries = r.Uint(8);
    uint64_t n_files = r.Uint(8);
    uint64_t n_bytes = r.Uint(8);
    std::string_view digest = r.Bytes(kDigestSize);
    if (!r.ok() || !r.at_end()) return InvalidError("malformed end record");
    KMX_RETURN_IF_ERROR(CheckSectionComplete());
    if (n_entries != entries || n_files != stats.files || n_bytes != stats.bytes) {
      return InvalidError("end record counts (" + std::to_string(n_entries) + " entries, " +
                          std::to_string(n_files) + " files, " + std::to_string(n_bytes) +
                          " bytes) do not match the stream");
    }
    if (!open_totals && (n_files != declared_files || n_bytes != declared_bytes)) {
      return InvalidError("stream carried " + std::to_string(n_files) + " files and " +
                          std::to_string(n_bytes) + " bytes but declared " +
                          std::to_string(declared_files) + " and " +
                          std::to_string(declared_bytes));
    }
    Digest d = record_sha.Final();
    if (std::memcmp(d.data(), digest.data(), kDigestSize) != 0) {
      return FailedError("checksum mismatch for the stream's entry records");
    }
    cached_fd.Reset();
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
      cur = it->section;
      std::string label = Label(it->path);
      KMX_ASSIGN_OR_RETURN(UniqueFd fd, OpenDirBeneath(roots[it->section].get(), it->path, label));
      if (::fchmod(fd.get(), it->meta.mode) != 0) {
        return FailedError("chmod " + label + ": " + ErrnoText(errno));
      }
      struct timespec ts[2] = {TimespecFromNs(it->meta.mtime_ns),
                               TimespecFromNs(it->meta.mtime_ns)};
      if (::futimens(fd.get(), ts) != 0) {
        return FailedError("utimens " + label + ": " + ErrnoText(errno));
      }
    }
    dirs.clear();
    state = State::kDone;
    return Status::Ok();
  }
};

StreamDecoder::StreamDecoder(Landing landing, DecoderOptions options)
    : impl_(std::make_unique<Impl>(std::move(landing), options)) {}
StreamDecoder::~StreamDecoder() = default;
Status StreamDecoder::Feed(const char* data, size_t n) { return impl_->Feed(data, n); }
Status StreamDecoder::Finish() { return impl_->Finish(); }
bool StreamDecoder::complete() const { return impl_->state == Impl::State::kDone; }
TransferStats StreamDecoder::stats() const { return impl_->stats; }
uint64_t StreamDecoder::consumed() const { return impl_->consumed; }
bool StreamDecoder::over_limits() const { return impl_->over_limits; }

}  // namespace kmosix
