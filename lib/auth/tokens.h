// Bearer-token authentication and two roles for the controller's REST API.
//
// Tokens come from a CSV file (--token-file), one "TOKEN,ROLE,NAME" per line:
//   # comments and blank lines are ignored
//   3f9a0c12d4e5b6a7c8d9e0f1a2b3c4d5,admin,alice
//   0a1b2c3d4e5f60718293a4b5c6d7e8f9,read-only,dashboard
// ROLE is admin (everything) or read-only (GET and HEAD). Requests carry
// "Authorization: Bearer TOKEN". /healthz and /readyz are open (probes).
//
// Error contract: ParseTokenFile answers kInvalid ("line N: ...") for a bad
// file; Authenticator::Load answers kNotFound/kFailed when the file cannot be
// read and kInvalid when it does not parse. A denied request is an AuthDecision
// (401 Unauthenticated / 403 Forbidden), not a Status: those two outcomes have
// no Status code. Messages and logs never contain a token.
//
// Thread-safety: ParseTokenFile is pure. An Authenticator is thread-safe
// (httplib calls it from its worker threads); it borrows the Clock.
#pragma once

#include <httplib.h>

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kmosix/clock.h"
#include "kmosix/status.h"

namespace kmosix::auth {

enum class Role { kReadOnly, kAdmin };
// "read-only" / "admin", as written in the token file.
std::string_view RoleName(Role role);

struct TokenEntry {
  std::string token;
  Role role = Role::kReadOnly;
  std::string name;  // who, for logs
  int line = 0;      // where it was in the file
};
struct TokenSet {
  std::vector<TokenEntry> entries;  // in file order; tokens and names unique
};

// Parses a token file's text. Rules: fields separated by ',' (spaces around a
// field are trimmed; a trailing '\r' is ignored); exactly three fields; TOKEN
// at least 16 and at most 512 characters of [A-Za-z0-9._~+/=-]; ROLE "admin" or
// "read-only"; NAME 1..64 characters of [A-Za-z0-9._@:-]; no token and no name
// twice; at least one token. Errors are kInvalid "line N: ..." (1-based) and
// never quote the token.
// Pure and total (no I/O, no exceptions, any input): it is fuzzed, so keep
// exactly this signature.
StatusOr<TokenSet> ParseTokenFile(std::string_view text);

// The outcome of authenticating one request.
struct AuthDecision {
  enum class Verdict { kAllowed, kUnauthenticated, kForbidden };
  Verdict verdict = Verdict::kUnauthenticated;
  std::string name;  // who presented the token (allowed or forbidden), else ""
  Role role = Role::kReadOnly;
  std::string message;  // why it was denied (no token in it)

  bool allowed() const { return verdict == Verdict::kAllowed; }
  // 200 (allowed), 401 or 403.
  int HttpStatus() const;
  // "" (allowed), "Unauthenticated" or "Forbidden": the JSON error "code".
  std::string_view CodeName() const;
};

// Checks bearer tokens against a token set; with a file, re-reads it when it
// changed (mtime, size or inode; looked at no more often than every
// kReloadInterval of the injected clock). A new file that does not parse or
// cannot be read keeps the tokens in force, and the error is logged once per
// version of the file.
class Authenticator {
 public:
  static constexpr Clock::Duration kReloadInterval = std::chrono::seconds(2);

  // A fixed token set (never reloaded).
  explicit Authenticator(TokenSet tokens);
  // Reads and parses `path` now; the Authenticator keeps the path and borrows
  // `clock` for reloads.
  static StatusOr<std::unique_ptr<Authenticator>> Load(const std::string& path, Clock& clock);

  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  // `authorization_header`: the request's Authorization header ("" if none).
  // `write`: the request changes something (needs admin).
  AuthDecision Authenticate(const std::string& authorization_header, bool write);

  // How many tokens are in force (after a reload check).
  size_t TokenCount();

 private:
  using Digest = std::array<unsigned char, 32>;  // SHA-256 of a token
  struct Entry {
    Digest digest;
    Role role;
    std::string name;
  };
  struct FileVersion {
    int64_t mtime_ns = 0;
    int64_t size = -1;
    uint64_t inode = 0;
    bool operator==(const FileVersion&) const = default;
  };

  Authenticator(TokenSet tokens, std::string path, Clock* clock, FileVersion version);
  static std::vector<Entry> Digests(const TokenSet& tokens);
  static Digest Sha256(std::string_view s);
  void MaybeReloadLocked();

  const std::string path_;  // "" for a fixed set
  Clock* const clock_;      // null for a fixed set
  std::mutex mu_;
  std::vector<Entry> entries_;     // guarded by mu_
  FileVersion version_;            // of the file the entries came from; mu_
  FileVersion rejected_;           // last version that failed to load; mu_
  Clock::TimePoint next_check_{};  // mu_
};

// Installs a pre-routing handler on `server` that lets /healthz and /readyz
// through, requires a read-only or admin token for GET and HEAD and an admin
// token for every other method, and answers denials itself with a JSON
// {"code":"Unauthenticated"|"Forbidden","message"} (401 with
// WWW-Authenticate: Bearer realm="kmosix", or 403) before any handler runs.
// Denials are logged (method, path, peer, who; never the token). Borrows
// `auth`, which must outlive the server.
void InstallAuth(httplib::Server& server, Authenticator& auth);

// The answer to a refused request, as every kmosix listener gives it before
// reading the body: `status` (401 adds WWW-Authenticate: Bearer
// realm="kmosix"), Connection: close (the body stays unread) and the JSON
// {"code","message"}.
void ReplyDenied(httplib::Response& res, int status, std::string_view code,
                 const std::string& message);

}  // namespace kmosix::auth
