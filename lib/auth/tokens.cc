#include "auth/tokens.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>

namespace kmosix::auth {
namespace {

constexpr size_t kMinToken = 16;
constexpr size_t kMaxToken = 512;
constexpr size_t kMaxName = 64;
constexpr int64_t kMaxFileBytes = 1 << 20;

bool IsSpace(char c) { return c == ' ' || c == '\t'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
bool TokenChar(char c) {
  return IsAlnum(c) || std::string_view("._~+/=-").find(c) != std::string_view::npos;
}
bool NameChar(char c) {
  return IsAlnum(c) || std::string_view("._@:-").find(c) != std::string_view::npos;
}

bool AllOf(std::string_view s, bool (*pred)(char)) {
  for (char c : s) {
    if (!pred(c)) return false;
  }
  return true;
}

Status LineError(int line, const std::string& what) {
  return InvalidError("line " + std::to_string(line) + ": " + what);
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// The file's contents and version, both from one open file description.
struct FileRead {
  std::string text;
  int64_t mtime_ns = 0;
  int64_t size = 0;
  uint64_t inode = 0;
  mode_t mode = 0;
};

StatusOr<FileRead> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    std::string m = "token file " + path + ": " + std::strerror(e);
    return e == ENOENT ? NotFoundError(m) : FailedError(m);
  }
  FileRead out;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return FailedError("token file " + path + ": " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidError("token file " + path + ": not a regular file");
  }
  if (st.st_size > kMaxFileBytes) {
    ::close(fd);
    return InvalidError("token file " + path + ": larger than 1 MiB");
  }
  out.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  out.size = st.st_size;
  out.inode = st.st_ino;
  out.mode = st.st_mode;
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return FailedError("token file " + path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    out.text.append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(out.text.size()) > kMaxFileBytes) {
      ::close(fd);
      return InvalidError("token file " + path + ": larger than 1 MiB");
    }
  }
  ::close(fd);
  return out;
}

std::string Summary(const TokenSet& t) {
  int admins = 0;
  for (const auto& e : t.entries) admins += e.role == Role::kAdmin ? 1 : 0;
  return std::to_string(t.entries.size()) + " tokens (" + std::to_string(admins) + " admin, " +
         std::to_string(t.entries.size() - admins) + " read-only)";
}

void WarnIfOpen(const std::string& path, mode_t mode) {
  if ((mode & 077) != 0) {
    spdlog::warn("token file {} is accessible to group or others (mode {:o}); chmod 600 it", path,
                 mode & 0777);
  }
}

}  // namespace

std::string_view RoleName(Role role) { return role == Role::kAdmin ? "admin" : "read-only"; }

StatusOr<TokenSet> ParseTokenFile(std::string_view text) {
  TokenSet set;
  std::map<std::string_view, int> tokens;  // token -> line (views into `text`)
  std::map<std::string_view, int> names;
  int line_no = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    line = Trim(line);
    if (line.empty() || line.front() == '#') continue;

    std::string_view fields[3];
    int n = 0;
    size_t start = 0;
    while (true) {
      size_t comma = line.find(',', start);
      std::string_view f = line.substr(
          start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
      if (n < 3) fields[n] = Trim(f);
      ++n;
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
    if (n != 3) {
      return LineError(line_no,
                       "expected TOKEN,ROLE,NAME (3 fields), got " + std::to_string(n) + " fields");
    }
    const std::string_view token = fields[0], role = fields[1], name = fields[2];
    if (token.size() < kMinToken) {
      return LineError(line_no, "token shorter than " + std::to_string(kMinToken) + " characters");
    }
    if (token.size() > kMaxToken) {
      return LineError(line_no, "token longer than " + std::to_string(kMaxToken) + " characters");
    }
    if (!AllOf(token, TokenChar)) {
      return LineError(line_no, "token has a character outside [A-Za-z0-9._~+/=-]");
    }
    Role r;
    if (role == "admin") {
      r = Role::kAdmin;
    } else if (role == "read-only") {
      r = Role::kReadOnly;
    } else {
      return LineError(line_no, "role must be admin or read-only");
    }
    if (name.empty() || name.size() > kMaxName || !AllOf(name, NameChar)) {
      return LineError(line_no, "name must be 1.." + std::to_string(kMaxName) +
                                    " characters of [A-Za-z0-9._@:-]");
    }
    if (auto it = tokens.find(token); it != tokens.end()) {
      return LineError(line_no, "the same token as line " + std::to_string(it->second));
    }
    if (auto it = names.find(name); it != names.end()) {
      return LineError(line_no, "name \"" + std::string(name) + "\" already used on line " +
                                    std::to_string(it->second));
    }
    tokens.emplace(token, line_no);
    names.emplace(name, line_no);
    set.entries.push_back({std::string(token), r, std::string(name), line_no});
  }
  if (set.entries.empty()) return InvalidError("no tokens (expected lines TOKEN,ROLE,NAME)");
  return set;
}

int AuthDecision::HttpStatus() const {
  switch (verdict) {
    case Verdict::kAllowed:
      return 200;
    case Verdict::kForbidden:
      return 403;
    case Verdict::kUnauthenticated:
      break;
  }
  return 401;
}

std::string_view AuthDecision::CodeName() const {
  switch (verdict) {
    case Verdict::kAllowed:
      return "";
    case Verdict::kForbidden:
      return "permission_denied";
    case Verdict::kUnauthenticated:
      break;
  }
  return "unauthenticated";
}

Authenticator::Authenticator(TokenSet tokens) : Authenticator(std::move(tokens), "", nullptr, {}) {}

Authenticator::Authenticator(TokenSet tokens, std::string path, Clock* clock, FileVersion version)
    : path_(std::move(path)), clock_(clock), entries_(Digests(tokens)), version_(version) {
  if (clock_ != nullptr) next_check_ = clock_->Now() + kReloadInterval;
}

StatusOr<std::unique_ptr<Authenticator>> Authenticator::Load(const std::string& path,
                                                             Clock& clock) {
  KMX_ASSIGN_OR_RETURN(FileRead f, ReadFile(path));
  auto parsed = ParseTokenFile(f.text);
  if (!parsed.ok()) return parsed.status().Annotate("token file " + path);
  WarnIfOpen(path, f.mode);
  spdlog::info("token file {}: {}", path, Summary(*parsed));
  return std::unique_ptr<Authenticator>(new Authenticator(
      std::move(parsed).value(), path, &clock, FileVersion{f.mtime_ns, f.size, f.inode}));
}

Authenticator::Digest Authenticator::Sha256(std::string_view s) {
  Digest d{};
  unsigned int len = 0;
  if (EVP_Digest(s.data(), s.size(), d.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != d.size()) {
    // Cannot happen with a working libcrypto; an all-0xff digest matches no token's.
    d.fill(0xff);
  }
  return d;
}

std::vector<Authenticator::Entry> Authenticator::Digests(const TokenSet& tokens) {
  std::vector<Entry> out;
  out.reserve(tokens.entries.size());
  for (const auto& t : tokens.entries) out.push_back({Sha256(t.token), t.role, t.name});
  return out;
}

void Authenticator::MaybeReloadLocked() {
  if (clock_ == nullptr) return;
  const auto now = clock_->Now();
  if (now < next_check_) return;
  next_check_ = now + kReloadInterval;

  struct stat st {};
  FileVersion seen;
  std::string error;
  if (::stat(path_.c_str(), &st) != 0) {
    seen = FileVersion{-1, -1, 0};  // "missing": logged once until it is back
    error = std::strerror(errno);
  } else {
    seen = FileVersion{static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
                       static_cast<int64_t>(st.st_size), static_cast<uint64_t>(st.st_ino)};
  }
  if (seen == version_ || seen == rejected_) return;
  if (error.empty()) {
    auto f = ReadFile(path_);
    if (!f.ok()) {
      error = f.status().message();
    } else {
      seen = FileVersion{f->mtime_ns, f->size, f->inode};
      if (seen == version_) return;
      auto parsed = ParseTokenFile(f->text);
      if (!parsed.ok()) {
        error = parsed.status().message();
      } else {
        entries_ = Digests(*parsed);
        version_ = seen;
        rejected_ = FileVersion{};
        WarnIfOpen(path_, f->mode);
        spdlog::info("token file {} changed: now {}", path_, Summary(*parsed));
        return;
      }
    }
  }
  rejected_ = seen;
  spdlog::error("token file {} changed but cannot be used ({}); keeping the {} tokens in force",
                path_, error, entries_.size());
}

size_t Authenticator::TokenCount() {
  std::lock_guard lock(mu_);
  MaybeReloadLocked();
  return entries_.size();
}

AuthDecision Authenticator::Authenticate(const std::string& authorization_header, bool write) {
  AuthDecision d;
  std::string_view h = Trim(authorization_header);
  if (h.empty()) {
    d.message = "this API needs a bearer token (Authorization: Bearer TOKEN)";
    return d;
  }
  constexpr std::string_view kScheme = "bearer";
  if (h.size() <= kScheme.size() || !EqualsIgnoreCase(h.substr(0, kScheme.size()), kScheme) ||
      !IsSpace(h[kScheme.size()])) {
    d.message = "the Authorization header must be \"Bearer TOKEN\"";
    return d;
  }
  std::string_view token = Trim(h.substr(kScheme.size()));
  if (token.empty()) {
    d.message = "empty bearer token";
    return d;
  }
  // Compare digests in constant time against every token (no early exit, and
  // the token's length does not show either).
  const Digest presented = Sha256(token);
  std::lock_guard lock(mu_);
  MaybeReloadLocked();
  const Entry* match = nullptr;
  for (const auto& e : entries_) {
    const bool eq = CRYPTO_memcmp(e.digest.data(), presented.data(), presented.size()) == 0;
    if (eq) match = &e;
  }
  if (match == nullptr) {
    d.message = "unknown bearer token";
    return d;
  }
  d.name = match->name;
  d.role = match->role;
  if (write && match->role != Role::kAdmin) {
    d.verdict = AuthDecision::Verdict::kForbidden;
    d.message = "the token of \"" + match->name + "\" is read-only; this request needs admin";
    return d;
  }
  d.verdict = AuthDecision::Verdict::kAllowed;
  return d;
}

void InstallAuth(httplib::Server& server, Authenticator& auth) {
  server.set_pre_routing_handler([&auth](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/healthz" || req.path == "/readyz") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const bool write = !(req.method == "GET" || req.method == "HEAD");
    AuthDecision d = auth.Authenticate(req.get_header_value("Authorization"), write);
    if (d.allowed()) return httplib::Server::HandlerResponse::Unhandled;
    spdlog::warn("auth: {} {} {} from {}:{}{}: {}", d.HttpStatus(), req.method, req.path,
                 req.remote_addr, req.remote_port, d.name.empty() ? "" : " by " + d.name,
                 d.message);
    ReplyDenied(res, d.HttpStatus(), d.CodeName(), d.message);
    return httplib::Server::HandlerResponse::Handled;
  });
}

void ReplyDenied(httplib::Response& res, int status, std::string_view code,
                 const std::string& message) {
  res.status = status;
  if (status == 401) res.set_header("WWW-Authenticate", "Bearer realm=\"kmosix\"");
  // The body is left unread: the connection must not carry another request.
  res.set_header("Connection", "close");
  nlohmann::json body = {{"code", std::string(code)}, {"message", message}};
  res.set_content(body.dump(2) + "\n", "application/json");
}

}  // namespace kmosix::auth
