#include "criu_probe.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <utility>

namespace kmosix::agent {
namespace {

// The first line of a command's output, trimmed, at most 300 bytes.
std::string FirstLine(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  auto nl = s.find('\n');
  std::string line(s.substr(0, nl));
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
  if (line.size() > 300) line = line.substr(0, 300) + "...";
  return line;
}

// The last non-empty line (criu check ends with its verdict or its error).
std::string LastLine(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  auto nl = s.rfind('\n');
  return FirstLine(nl == std::string_view::npos ? s : s.substr(nl + 1));
}

std::string LinkTarget(const std::string& path) {
  char buf[256];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

// Reads a decimal number at s[*i]; false if there is none (or it is absurd).
bool Number(std::string_view s, size_t* i, int* out) {
  size_t start = *i;
  int v = 0;
  while (*i < s.size() && std::isdigit(static_cast<unsigned char>(s[*i]))) {
    if (*i - start >= 6) return false;
    v = v * 10 + (s[*i] - '0');
    ++*i;
  }
  if (*i == start) return false;
  *out = v;
  return true;
}

}  // namespace

StatusOr<CriuCheckMode> ParseCriuCheckMode(std::string_view s) {
  if (s == "auto") return CriuCheckMode::kAuto;
  if (s == "off") return CriuCheckMode::kOff;
  if (s == "nsenter") return CriuCheckMode::kNsenter;
  if (s == "local") return CriuCheckMode::kLocal;
  return InvalidError("CRIU check mode must be auto, off, nsenter or local, not \"" +
                      std::string(s) + "\"");
}

std::string CriuCheckModeName(CriuCheckMode m) {
  switch (m) {
    case CriuCheckMode::kAuto:
      return "auto";
    case CriuCheckMode::kOff:
      return "off";
    case CriuCheckMode::kNsenter:
      return "nsenter";
    case CriuCheckMode::kLocal:
      return "local";
  }
  return "?";
}

StatusOr<CriuVersion> ParseCriuVersion(std::string_view output) {
  size_t pos = 0;
  while (pos < output.size()) {
    size_t nl = output.find('\n', pos);
    std::string_view line =
        output.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? output.size() : nl + 1;
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front())))
      line.remove_prefix(1);
    constexpr std::string_view kKey = "Version:";
    if (line.substr(0, kKey.size()) != kKey) continue;
    line.remove_prefix(kKey.size());
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    CriuVersion v;
    size_t i = 0;
    if (!Number(line, &i, &v.major) || i >= line.size() || line[i] != '.' ||
        !(++i, Number(line, &i, &v.minor)))
      return InvalidError("criu --version: bad version \"" + FirstLine(line) + "\"");
    if (i < line.size() && line[i] == '.') {
      ++i;
      if (!Number(line, &i, &v.sublevel))
        return InvalidError("criu --version: bad version \"" + FirstLine(line) + "\"");
    }
    v.text = std::string(line.substr(0, i));
    return v;
  }
  return InvalidError("criu --version printed no \"Version:\" line: \"" + FirstLine(output) + "\"");
}

CommandCriuProbe::CommandCriuProbe(CriuProbeOptions options, CommandRunner& runner)
    : options_(std::move(options)), runner_(runner) {}

int SocketServerPid(const std::string& path) {
  sockaddr_un a{};
  if (path.empty() || path.size() >= sizeof(a.sun_path)) return 0;
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  int pid = 0;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    pid = cred.pid;
  }
  ::close(fd);
  return pid;
}

int CommandCriuProbe::RuncPid() const {
  int pid = SocketServerPid(options_.containerd_socket);
  return pid > 0 ? pid : 1;
}

CriuCheckMode CommandCriuProbe::EffectiveMode() const {
  if (options_.mode != CriuCheckMode::kAuto) return options_.mode;
  std::string host =
      LinkTarget(!options_.host_mnt_ns.empty() ? options_.host_mnt_ns
                                               : "/proc/" + std::to_string(RuncPid()) + "/ns/mnt");
  std::string self = LinkTarget(options_.self_mnt_ns);
  return !host.empty() && !self.empty() && host != self ? CriuCheckMode::kNsenter
                                                        : CriuCheckMode::kLocal;
}

std::vector<std::string> CommandCriuProbe::Command(std::vector<std::string> args) const {
  std::vector<std::string> argv;
  if (EffectiveMode() == CriuCheckMode::kNsenter)
    argv = {"nsenter", "-t", std::to_string(RuncPid()), "-m", "--"};
  argv.push_back(options_.criu_path.empty() ? "criu" : options_.criu_path);
  for (auto& a : args) argv.push_back(std::move(a));
  return argv;
}

CriuProbeResult CommandCriuProbe::Probe() {
  CriuProbeResult r;
  const bool nsenter = EffectiveMode() == CriuCheckMode::kNsenter;
  r.where = nsenter ? "nsenter" : "local";
  const std::string criu = options_.criu_path.empty() ? "criu" : options_.criu_path;
  const std::string on =
      nsenter ? " in containerd's mount namespace (nsenter -t " + std::to_string(RuncPid()) + " -m)"
              : "";
  auto fail = [&](std::string why) {
    r.ok = false;
    r.reason = "CRIU not usable: " + std::move(why);
    return r;
  };

  auto version = runner_.Run(Command({"--version"}));
  if (!version.ok()) return fail(version.status().message());
  if (version->exit_code != 0) {
    // 127 from nsenter (or the shell convention): the program is not there.
    std::string out = FirstLine(version->output);
    return fail("`" + criu + " --version`" + on + " exited " + std::to_string(version->exit_code) +
                (out.empty() ? "" : ": " + out));
  }
  auto parsed = ParseCriuVersion(version->output);
  if (!parsed.ok()) return fail(parsed.status().message());
  r.version = parsed->text;
  if (parsed->major < options_.min_major)
    return fail(criu + on + " is version " + parsed->text +
                "; kmosix needs CRIU >= " + std::to_string(options_.min_major) + ".0");

  auto check = runner_.Run(Command({"check"}));
  if (!check.ok()) return fail(check.status().message());
  if (check->exit_code != 0) {
    std::string out = LastLine(check->output);
    return fail("`" + criu + " check`" + on + " (CRIU " + parsed->text + ") exited " +
                std::to_string(check->exit_code) + (out.empty() ? "" : ": " + out));
  }
  r.ok = true;
  return r;
}

CriuReadiness::CriuReadiness(CriuProbe& probe, Clock& clock, Clock::Duration recheck)
    : probe_(probe), clock_(clock), recheck_(recheck) {}

void CriuReadiness::Check() {
  CriuProbeResult r = probe_.Probe();
  bool was_failing;
  {
    std::lock_guard lock(mu_);
    was_failing = checked_ && reason_.has_value();
    checked_ = true;
    last_ = clock_.Now();
    if (r.ok) {
      reason_.reset();
    } else {
      reason_ = r.reason;
    }
  }
  if (r.ok) {
    spdlog::info("CRIU {} passes `criu check` ({}){}", r.version, r.where,
                 was_failing ? ": this node is ready for migrations again" : "");
  } else if (!was_failing) {
    spdlog::error(
        "node NotReady for migrations: {} (the agent keeps running; checked again every "
        "{} s)",
        r.reason, std::chrono::duration_cast<std::chrono::seconds>(recheck_).count());
  }
}

void CriuReadiness::Tick() {
  {
    std::lock_guard lock(mu_);
    if (!checked_ || !reason_ || clock_.Now() - last_ < recheck_) return;
  }
  Check();
}

std::optional<std::string> CriuReadiness::NotReadyReason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

}  // namespace kmosix::agent
