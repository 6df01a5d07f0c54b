#include "kmosix/lazy_pages.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "kmosix/files.h"

namespace kmosix {
namespace {

namespace fs = std::filesystem;

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
int PidfdGetfd(int pidfd, int fd) {
  return static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0));
}
int PidfdSignal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& s, size_t n = 1500) {
  return s.size() > n ? s.substr(s.size() - n) : s;
}

// A network namespace holding only a loopback, up; its fd (O_CLOEXEC).
StatusOr<int> MakeLoopbackNetns() {
  StatusOr<int> out = FailedError("network namespace: not made");
  std::thread t([&out] {
    if (::unshare(CLONE_NEWNET) != 0) {
      out = FailedError(Errno("unshare(CLONE_NEWNET)"));
      return;
    }
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
      out = FailedError(Errno("socket"));
      return;
    }
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    bool up = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    up = up && ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
    if (!up) {
      out = FailedError(Errno("bringing lo up"));
      ::close(s);
      return;
    }
    ::close(s);
    int fd = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      out = FailedError(Errno("open /proc/thread-self/ns/net"));
      return;
    }
    out = fd;
  });
  t.join();
  return out;
}

// A TCP socket on 127.0.0.1:port of the namespace `netns_fd`, made on a
// thread that joined it (the socket stays in that namespace): listening when
// `listen`, else connected.
StatusOr<int> LoopbackSocketIn(int netns_fd, uint16_t port, bool listen) {
  StatusOr<int> out = FailedError("socket: not made");
  std::thread t([&] {
    if (::setns(netns_fd, CLONE_NEWNET) != 0) {
      out = FailedError(Errno("setns"));
      return;
    }
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
      out = FailedError(Errno("socket"));
      return;
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listen) {
      int one = 1;
      ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(s, 4) != 0) {
        out = FailedError(Errno("listen on 127.0.0.1:" + std::to_string(port)));
        ::close(s);
        return;
      }
    } else if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      out = FailedError(Errno("connect to 127.0.0.1:" + std::to_string(port)));
      ::close(s);
      return;
    }
    out = s;
  });
  t.join();
  return out;
}

// argv[0] as an absolute path: itself when it has a '/', else found on PATH
// plus the sbin directories.
std::string Resolve(const std::string& bin) {
  if (bin.find('/') != std::string::npos) return bin;
  const char* env = ::getenv("PATH");
  std::string path = env ? env : "";
  path += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    std::string p = dir + "/" + bin;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return bin;
}

struct Spawned {
  pid_t pid = -1;
  int pidfd = -1;
};

// Starts argv in the network namespace netns_fd with fd 3 = status_wfd,
// stdin /dev/null, stdout and stderr appended to out_path, no other fd.
StatusOr<Spawned> Spawn(const std::vector<std::string>& argv, int netns_fd, int status_wfd,
                        const std::string& out_path) {
  std::vector<std::string> args = argv;
  args[0] = Resolve(args[0]);
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (out < 0) return FailedError(Errno("open " + out_path));
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Above the fds the child sets, so the dup2s below never clobber a source.
  int hi_out = ::fcntl(out, F_DUPFD_CLOEXEC, 10);
  int hi_null = ::fcntl(devnull, F_DUPFD_CLOEXEC, 10);
  int hi_status = ::fcntl(status_wfd, F_DUPFD_CLOEXEC, 10);
  ::close(out);
  ::close(devnull);
  auto close_all = [&] {
    for (int fd : {hi_out, hi_null, hi_status})
      if (fd >= 0) ::close(fd);
  };
  if (hi_out < 0 || hi_null < 0 || hi_status < 0) {
    close_all();
    return FailedError(Errno("fcntl(F_DUPFD)"));
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    close_all();
    return FailedError(Errno("fork"));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls from here.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::setns(netns_fd, CLONE_NEWNET) != 0) ::_exit(126);
    if (::dup2(hi_null, 0) < 0 || ::dup2(hi_out, 1) < 0 || ::dup2(hi_out, 2) < 0 ||
        ::dup2(hi_status, 3) < 0)
      ::_exit(126);
    ::syscall(SYS_close_range, 4u, ~0u, 0u);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  close_all();
  Spawned s;
  s.pid = pid;
  s.pidfd = PidfdOpen(pid);
  if (s.pidfd < 0) {
    Status err = FailedError(Errno("pidfd_open"));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return err;
  }
  return s;
}

// Waits for the '\0' CRIU writes to its status fd once ready. kFailed when
// the fd reached EOF first (the process ended), kRetry on timeout.
Status WaitReady(int rfd, Clock& clock, std::chrono::milliseconds timeout) {
  const auto deadline = clock.Now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock.Now());
    if (left.count() <= 0)
      return RetryError("not ready within " + std::to_string(timeout.count()) + " ms");
    pollfd p{rfd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedError(Errno("poll"));
    if (n == 0) continue;
    char c = 1;
    ssize_t r = ::read(rfd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r == 1 && c == '\0') return Status::Ok();
    return FailedError(r == 0 ? "it exited before it was ready" : "unexpected status byte");
  }
}

int DecodeWait(int wstatus) { return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1; }

// Blocks until the process behind pidfd has exited (no reaping).
void WaitPidfd(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
}

// The freezer of a task's cgroup (v1 freezer.state, or v2 cgroup.freeze).
struct Freezer {
  std::string dir;
  bool v2 = false;
  bool ok() const { return !dir.empty(); }
};

StatusOr<Freezer> FreezerOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  if (!in) return FailedError("cannot read /proc/" + std::to_string(pid) + "/cgroup");
  std::string line, unified;
  while (std::getline(in, line)) {
    auto a = line.find(':');
    auto b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    std::stringstream cs(controllers);
    std::string c;
    while (std::getline(cs, c, ',')) {
      if (c == "freezer") return Freezer{"/sys/fs/cgroup/freezer" + path, false};
    }
    if (controllers.empty()) unified = path;
  }
  if (!unified.empty() && fs::exists("/sys/fs/cgroup" + unified + "/cgroup.freeze"))
    return Freezer{"/sys/fs/cgroup" + unified, true};
  return FailedError("no freezer cgroup for pid " + std::to_string(pid));
}

Status WriteFreezer(const Freezer& f, bool frozen) {
  const std::string file = f.dir + (f.v2 ? "/cgroup.freeze" : "/freezer.state");
  const char* value = f.v2 ? (frozen ? "1" : "0") : (frozen ? "FROZEN" : "THAWED");
  int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return FailedError(Errno("open " + file));
  ssize_t n = ::write(fd, value, std::strlen(value));
  int err = errno;
  ::close(fd);
  if (n < 0) {
    errno = err;
    return FailedError(Errno("write " + file));
  }
  return Status::Ok();
}

std::vector<pid_t> ProcsOf(const Freezer& f) {
  std::vector<pid_t> out;
  std::ifstream in(f.dir + "/cgroup.procs");
  long p;
  while (in >> p) out.push_back(static_cast<pid_t>(p));
  return out;
}

// Kills every process of the cgroup without letting one run an instruction
// of its own: freeze, SIGKILL all, thaw (a frozen task dies once thawed).
// Repeated while processes remain (a fork racing the first pass).
void FreezeAndKill(const Freezer& f) {
  (void)WriteFreezer(f, true);
  for (int round = 0; round < 50; ++round) {
    auto procs = ProcsOf(f);
    if (procs.empty()) break;
    for (pid_t p : procs) ::kill(p, SIGKILL);
    (void)WriteFreezer(f, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (ProcsOf(f).empty()) break;
    (void)WriteFreezer(f, true);
  }
  (void)WriteFreezer(f, false);
}

// Children of `parent` whose comm is `comm`.
pid_t FindChild(pid_t parent, const std::string& comm) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = Slurp(e.path().string() + "/stat");
    auto open = stat.find('(');
    auto close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close + 4 > stat.size())
      continue;
    if (stat.substr(open + 1, close - open - 1) != comm) continue;
    std::stringstream rest(stat.substr(close + 2));
    char state;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) return static_cast<pid_t>(std::stol(name));
  }
  return -1;
}

// Whether fd `their` of process `pid` and our fd `ours` are the same open
// file (kcmp; CRIU needs CONFIG_CHECKPOINT_RESTORE, which provides it).
bool SameFile(pid_t pid, int their, int ours) {
  constexpr int kKcmpFile = 0;
  return ::syscall(SYS_kcmp, pid, ::getpid(), kKcmpFile, their, ours) == 0;
}

// The fd numbers of `pid` that are userfaultfds.
// *open counts every fd (0: the process has no fd table: it is exiting,
// whose first step drops the whole table at once).
std::vector<int> UffdsOf(pid_t pid, int* open) {
  std::vector<int> out;
  *open = 0;
  std::error_code ec;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    *open += 1;
    std::error_code lec;
    std::string target = fs::read_symlink(e.path(), lec).string();
    if (!lec && target == "anon_inode:[userfaultfd]") {
      out.push_back(std::stoi(e.path().filename().string()));
    }
  }
  return out;
}

}  // namespace

TransferSummary ParseLazyPagesLog(const std::string& log) {
  TransferSummary s;
  static constexpr char kKey[] = "UFFD transferred pages: (";
  bool all = true;
  size_t pos = 0;
  while ((pos = log.find(kKey, pos)) != std::string::npos) {
    pos += sizeof(kKey) - 1;
    unsigned long long a = 0, b = 0;
    if (std::sscanf(log.c_str() + pos, "%llu/%llu)", &a, &b) != 2) {
      all = false;
      continue;
    }
    s.processes += 1;
    s.copied += a;
    s.total += b;
    all = all && a == b;
  }
  s.complete = s.processes > 0 && all;
  return s;
}

RelayCounts RelayBytes(int a, int b) {
  struct Dir {
    uint64_t bytes = 0;
    Status status;
  };
  auto pump = [](int from, int to, Dir* d) {
    std::vector<char> buf(256 << 10);
    for (;;) {
      ssize_t n = ::read(from, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        d->status = FailedError(Errno("relay read"));
        break;
      }
      if (n == 0) {
        ::shutdown(to, SHUT_WR);
        return;
      }
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = ::send(to, buf.data() + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
          d->status = FailedError(Errno("relay write"));
          break;
        }
        off += w;
      }
      if (!d->status.ok()) break;
      d->bytes += static_cast<uint64_t>(n);
    }
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
  };
  Dir ab, ba;
  std::thread t([&] { pump(b, a, &ba); });
  pump(a, b, &ab);
  t.join();
  return RelayCounts{ab.bytes, ba.bytes, !ab.status.ok() ? ab.status : ba.status};
}

// ---------------------------------------------------------------- source

struct LazySource::State {
  ContainerRuntime* runtime = nullptr;
  Clock* clock = nullptr;
  LazyPagesOptions options;
  std::string name, images, work;
  Freezer freezer;
  int netns = -1;
  Spawned runc;
  int criu_pidfd = -1;
  pid_t criu_pid = -1;
  double freeze_seconds = 0, dump_seconds = 0;
  std::thread watcher;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool exited = false;
  int runc_status = -1;
  int refreezes = 0;
  std::vector<int> connections;  // dups of what ConnectPageServer handed out
  bool released = false;

  void Watch() {
    // The first of runc and CRIU to exit: CRIU no longer holds the tasks.
    std::vector<pollfd> fds{{runc.pidfd, POLLIN, 0}};
    if (criu_pidfd >= 0) fds.push_back({criu_pidfd, POLLIN, 0});
    while (::poll(fds.data(), fds.size(), -1) < 0 && errno == EINTR) {
    }
    Refreeze();
    int ws = 0;
    while (::waitpid(runc.pid, &ws, 0) < 0 && errno == EINTR) {
    }
    if (criu_pidfd >= 0) WaitPidfd(criu_pidfd);
    Refreeze();
    std::lock_guard l(mu);
    exited = true;
    runc_status = DecodeWait(ws);
    cv.notify_all();
  }
  void Refreeze() {
    Status s = WriteFreezer(freezer, true);
    std::lock_guard l(mu);
    refreezes += 1;
    if (!s.ok()) spdlog::error("{}: re-freezing after CRIU: {}", name, s.ToString());
  }
  bool WaitExit(std::chrono::milliseconds timeout) {
    std::unique_lock l(mu);
    return cv.wait_for(l, timeout, [&] { return exited; });
  }
  // Ends the page stream: shuts the connections down, or connects and
  // closes when there was none (CRIU serves one client, then exits).
  void EndStream() {
    std::vector<int> conns;
    {
      std::lock_guard l(mu);
      if (exited) return;
      conns = connections;
    }
    if (conns.empty()) {
      auto s = LoopbackSocketIn(netns, options.port, /*listen=*/false);
      if (s.ok()) ::close(*s);
      return;
    }
    for (int fd : conns) ::shutdown(fd, SHUT_RDWR);
  }
  ~State() {
    if (watcher.joinable()) watcher.join();
    for (int fd : connections) ::close(fd);
    CloseFd(criu_pidfd);
    CloseFd(runc.pidfd);
    CloseFd(netns);
  }
};

LazySource::LazySource(std::unique_ptr<State> state) : s_(std::move(state)) {}

LazySource::~LazySource() {
  if (!s_) return;
  // Never thaws: the stream ends, CRIU exits, the watcher leaves it frozen.
  s_->EndStream();
  if (!s_->WaitExit(s_->options.exit_timeout)) {
    // Never killed (the source would run): its watcher goes on, and keeps
    // the state it uses, until CRIU exits; then it re-freezes the task.
    spdlog::error("{}: CRIU still serving pages at teardown; left to end on its own", s_->name);
    s_->watcher.detach();
    (void)s_.release();
  }
}

StatusOr<std::unique_ptr<LazySource>> LazySource::Start(ContainerRuntime& runtime, Clock& clock,
                                                        const LazyPagesOptions& options,
                                                        const std::string& name,
                                                        const std::string& scratch_dir) {
  if (options.runc_root.empty()) return InvalidError("lazy pages: runc_root is not set");
  auto st = std::make_unique<State>();
  st->runtime = &runtime;
  st->clock = &clock;
  st->options = options;
  st->name = name;
  st->images = scratch_dir + "/criu";
  st->work = scratch_dir + "/work";
  std::error_code ec;
  for (const std::string& d : {st->images, st->work}) {
    KMX_RETURN_IF_ERROR(RemoveTree(d));  // a killed restore's mounts included
    fs::create_directories(d, ec);
    if (ec) return FailedError("cannot create " + d + ": " + ec.message());
  }
  auto info = runtime.Inspect(name);
  if (!info.ok()) return info.status().Annotate("inspect");
  if (info->state != TaskState::kRunning)
    return ConflictError(name + " is " + std::string(TaskStateName(info->state)) + ", not running");
  KMX_ASSIGN_OR_RETURN(st->freezer, FreezerOf(static_cast<pid_t>(info->pid)));
  KMX_ASSIGN_OR_RETURN(st->netns, MakeLoopbackNetns());

  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return FailedError(Errno("pipe"));
  const auto t0 = clock.Now();
  if (Status s = runtime.Pause(name); !s.ok()) {
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return s.Annotate("pause");
  }
  const auto t1 = clock.Now();
  st->freeze_seconds = Seconds(t1 - t0);
  std::vector<std::string> argv{options.runc,
                                "--root",
                                options.runc_root,
                                "--criu",
                                Resolve(options.criu),
                                "checkpoint",
                                "--lazy-pages",
                                "--page-server",
                                "127.0.0.1:" + std::to_string(options.port),
                                "--status-fd",
                                "3",
                                "--leave-running",
                                "--image-path",
                                st->images,
                                "--work-path",
                                st->work,
                                name};
  auto spawned = Spawn(argv, st->netns, pipefd[1], st->work + "/runc.out");
  ::close(pipefd[1]);
  auto resume = [&](Status why) -> Status {
    if (Status r = runtime.Resume(name); !r.ok())
      return why.Annotate("and resume failed (" + r.ToString() + ")");
    return why;
  };
  if (!spawned.ok()) {
    ::close(pipefd[0]);
    return resume(spawned.status().Annotate("runc checkpoint"));
  }
  st->runc = *spawned;
  Status ready = WaitReady(pipefd[0], clock, options.ready_timeout);
  ::close(pipefd[0]);
  if (ready.ok()) {
    pid_t criu = FindChild(st->runc.pid, "criu");
    if (criu > 0) st->criu_pidfd = PidfdOpen(criu);
    if (st->criu_pidfd >= 0) st->criu_pid = criu;
    // CRIU thawed the freezer and holds the tasks through ptrace only while
    // it serves pages: freeze them again under it (they stay traced), so
    // that a CRIU that dies finds them frozen and none runs an instruction.
    // CRIU ends as usual on success (it restores the FROZEN state it found).
    // Measured: with this alone the source stayed frozen when its CRIU was
    // killed; with neither this nor the watcher it ran on (ticks 8 -> 14).
    if (Status f = WriteFreezer(st->freezer, true); !f.ok()) {
      spdlog::error("{}: freezing the source under CRIU: {} (the watcher re-freezes on exit)", name,
                    f.ToString());
    }
    if (st->criu_pidfd < 0) spdlog::warn("{}: CRIU's pid not found; watching runc only", name);
  }
  State* raw = st.get();
  st->watcher = std::thread([raw] { raw->Watch(); });
  if (!ready.ok()) {
    // No page server, no images a target could run from: ending CRIU here
    // loses nothing. The watcher re-freezes; then the task resumes.
    ::kill(st->runc.pid, SIGKILL);
    if (pid_t criu = FindChild(st->runc.pid, "criu"); criu > 0) ::kill(criu, SIGKILL);
    (void)st->WaitExit(options.exit_timeout);
    return resume(ready.Annotate("lazy checkpoint (" + st->work +
                                 "/dump.log: " + Tail(Slurp(st->work + "/dump.log"), 600) +
                                 "; runc: " + Tail(Slurp(st->work + "/runc.out"), 300) + ")"));
  }
  st->dump_seconds = Seconds(clock.Now() - t1);
  return std::unique_ptr<LazySource>(new LazySource(std::move(st)));
}

const std::string& LazySource::images_dir() const { return s_->images; }
double LazySource::freeze_seconds() const { return s_->freeze_seconds; }
double LazySource::dump_seconds() const { return s_->dump_seconds; }

StatusOr<int> LazySource::ConnectPageServer() {
  {
    std::lock_guard l(s_->mu);
    if (s_->exited) return FailedError("the page server has ended");
  }
  KMX_ASSIGN_OR_RETURN(int fd, LoopbackSocketIn(s_->netns, s_->options.port, /*listen=*/false));
  int keep = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  std::lock_guard l(s_->mu);
  if (keep >= 0) s_->connections.push_back(keep);
  return fd;
}

Status LazySource::Finish() {
  if (!s_->WaitExit(s_->options.exit_timeout))
    return RetryError("CRIU is still serving pages (" + s_->work + "/dump.log)");
  std::lock_guard l(s_->mu);
  if (s_->runc_status != 0)
    return FailedError("lazy checkpoint ended with status " + std::to_string(s_->runc_status) +
                       " (" + s_->work + "/dump.log)");
  return Status::Ok();
}

Status LazySource::Thaw() {
  s_->EndStream();
  if (!s_->WaitExit(s_->options.exit_timeout))
    return RetryError("CRIU is still serving pages (" + s_->work + "/dump.log)");
  return s_->runtime->Resume(s_->name).Annotate("thaw");
}

Status LazySource::Release() {
  if (!s_->WaitExit(s_->options.exit_timeout))
    return RetryError("CRIU is still serving pages (" + s_->work + "/dump.log)");
  // Frozen: SIGKILL now, the runtime's resume lets the kill land, Delete.
  for (pid_t p : ProcsOf(s_->freezer)) ::kill(p, SIGKILL);
  (void)s_->runtime->Resume(s_->name);
  return s_->runtime->Delete(s_->name).Annotate("release");
}

bool LazySource::criu_exited() const {
  std::lock_guard l(s_->mu);
  return s_->exited;
}

int LazySource::refreezes() const {
  std::lock_guard l(s_->mu);
  return s_->refreezes;
}

pid_t LazySource::criu_pid() const { return s_->criu_pid; }

// ---------------------------------------------------------------- target

struct LazyTarget::State {
  Clock* clock = nullptr;
  LazyPagesOptions options;
  std::string images, work;
  PageDialer dial;
  int netns = -1;
  int listener = -1;
  Spawned daemon;
  std::thread watcher, relay;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool exited = false;
  LazyResult result;
  // The guard: the restored task and the userfaultfds held for it.
  Freezer task;
  std::vector<int> uffds;
  int taken = 0;     // userfaultfds duplicated so far
  int released = 0;  // and let go because the daemon closed its own
  int relay_fds[2] = {-1, -1};
  Clock::TimePoint restored{};
  bool has_restored = false;

  void Watch() {
    // Until the daemon exits, also take the userfaultfds it gets later (a
    // process forked in the lazy window: its own comes with the fork event).
    for (;;) {
      pollfd p{daemon.pidfd, POLLIN, 0};
      int n = ::poll(&p, 1, 50);
      if (n > 0) break;
      if (n < 0 && errno != EINTR) break;
      bool restored_yet;
      {
        std::lock_guard l(mu);
        restored_yet = has_restored;
      }
      if (restored_yet) (void)GrabUffds();
    }
    int ws = 0;
    while (::waitpid(daemon.pid, &ws, 0) < 0 && errno == EINTR) {
    }
    const int status = DecodeWait(ws);
    TransferSummary sum = ParseLazyPagesLog(Slurp(work + "/lazy-pages.log"));
    const bool done = status == 0 && sum.complete;
    Freezer victim;
    std::vector<int> held;
    {
      std::lock_guard l(mu);
      result.exit_status = status;
      result.pages = sum.copied;
      result.total_pages = sum.total;
      result.done = done;
      if (has_restored) result.seconds = Seconds(clock->Now() - restored);
      if (!done) {
        result.error = status != 0
                           ? "lazy-pages daemon exited with status " + std::to_string(status)
                           : "lazy-pages daemon exited 0 without every page (" +
                                 std::to_string(sum.copied) + "/" + std::to_string(sum.total) +
                                 " in " + std::to_string(sum.processes) + " processes)";
        victim = task;
        result.task_killed = victim.ok();
      }
      held.swap(uffds);
    }
    // Missing pages block on the held userfaultfds meanwhile: kill first,
    // then let them go.
    if (victim.ok()) FreezeAndKill(victim);
    for (int fd : held) ::close(fd);
    // The relay ends with the daemon's connection; make sure of it.
    {
      std::lock_guard l(mu);
      for (int fd : relay_fds)
        if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
      if (listener >= 0) ::shutdown(listener, SHUT_RDWR);
    }
    if (relay.joinable()) relay.join();
    std::lock_guard l(mu);
    exited = true;
    cv.notify_all();
  }

  void Relay() {
    int conn = -1;
    for (;;) {
      conn = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn >= 0 || errno != EINTR) break;
    }
    if (conn < 0) return;  // shut down: the daemon ended first
    auto src = dial();
    if (!src.ok()) {
      spdlog::error("lazy pages: dialing the source's page server: {}", src.status().ToString());
      ::close(conn);
      return;
    }
    {
      std::lock_guard l(mu);
      relay_fds[0] = conn;
      relay_fds[1] = *src;
    }
    RelayCounts counts = RelayBytes(conn, *src);
    if (!counts.status.ok()) spdlog::warn("lazy pages: page stream: {}", counts.status.ToString());
    std::lock_guard l(mu);
    result.bytes_out = counts.a_to_b;
    result.bytes_in = counts.b_to_a;
    ::close(conn);
    ::close(*src);
    relay_fds[0] = relay_fds[1] = -1;
  }

  // Duplicates the daemon's userfaultfds not held yet; how many are held.
  //
  // Also lets go of the ones the daemon closed itself while it runs (it
  // closes a process's userfaultfd when it is done with it and expects epoll
  // to forget it, which epoll does only once no fd refers to the file: held
  // here, the daemon spins on EBADF, "excess message in queue", and never
  // ends; seen with two processes). Never while the daemon exits: its fd
  // table is then gone as a whole (0 open fds), not one uffd.
  int GrabUffds() {
    int open = 0;
    std::vector<int> nums = UffdsOf(daemon.pid, &open);
    std::lock_guard l(mu);
    if (exited) return static_cast<int>(uffds.size());
    if (open > 0) {
      std::vector<int> keep;
      for (int fd : uffds) {
        bool theirs = false;
        for (int n : nums) theirs = theirs || SameFile(daemon.pid, n, fd);
        if (theirs) {
          keep.push_back(fd);
        } else {
          ::close(fd);
          released += 1;
        }
      }
      uffds.swap(keep);
    }
    for (int n : nums) {
      // Held already? (Compared as open files: fd numbers are reused.)
      bool held = false;
      for (int fd : uffds) held = held || SameFile(daemon.pid, n, fd);
      if (held) continue;
      int fd = PidfdGetfd(daemon.pidfd, n);
      if (fd < 0) continue;
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      taken += 1;
      uffds.push_back(fd);
    }
    return static_cast<int>(uffds.size());
  }

  ~State() {
    if (watcher.joinable()) watcher.join();
    for (int fd : uffds) ::close(fd);
    CloseFd(listener);
    CloseFd(daemon.pidfd);
    CloseFd(netns);
  }
};

LazyTarget::LazyTarget(std::unique_ptr<State> state) : s_(std::move(state)) {}

LazyTarget::~LazyTarget() {
  if (!s_) return;
  bool exited;
  {
    std::lock_guard l(s_->mu);
    exited = s_->exited;
  }
  if (!exited) (void)Abort();
}

StatusOr<std::unique_ptr<LazyTarget>> LazyTarget::Start(Clock& clock,
                                                        const LazyPagesOptions& options,
                                                        const std::string& images_dir,
                                                        const std::string& work_dir,
                                                        PageDialer dial) {
  if (!dial) return InvalidError("lazy pages: no page dialer");
  auto st = std::make_unique<State>();
  st->clock = &clock;
  st->options = options;
  st->images = images_dir;
  st->work = work_dir;
  st->dial = std::move(dial);
  std::error_code ec;
  fs::create_directories(work_dir, ec);
  fs::remove(work_dir + "/lazy-pages.socket", ec);
  fs::remove(work_dir + "/lazy-pages.log", ec);
  KMX_ASSIGN_OR_RETURN(st->netns, MakeLoopbackNetns());
  KMX_ASSIGN_OR_RETURN(st->listener, LoopbackSocketIn(st->netns, options.port, /*listen=*/true));
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return FailedError(Errno("pipe"));
  std::vector<std::string> argv{options.criu,
                                "lazy-pages",
                                "--images-dir",
                                images_dir,
                                "--work-dir",
                                work_dir,
                                "--page-server",
                                "--address",
                                "127.0.0.1",
                                "--port",
                                std::to_string(options.port),
                                "--status-fd",
                                "3",
                                "-v4",
                                "-o",
                                "lazy-pages.log"};
  auto spawned = Spawn(argv, st->netns, pipefd[1], work_dir + "/lazy-pages.out");
  ::close(pipefd[1]);
  if (!spawned.ok()) {
    ::close(pipefd[0]);
    return spawned.status().Annotate("criu lazy-pages");
  }
  st->daemon = *spawned;
  State* raw = st.get();
  st->relay = std::thread([raw] { raw->Relay(); });
  st->watcher = std::thread([raw] { raw->Watch(); });
  Status ready = WaitReady(pipefd[0], clock, options.ready_timeout);
  ::close(pipefd[0]);
  auto target = std::unique_ptr<LazyTarget>(new LazyTarget(std::move(st)));
  if (!ready.ok()) {
    (void)target->Abort();
    return ready.Annotate("criu lazy-pages (" + work_dir + "/lazy-pages.log: " +
                          Tail(Slurp(work_dir + "/lazy-pages.log"), 600) + ")");
  }
  return target;
}

Status LazyTarget::Restore(ContainerRuntime& runtime, const std::string& name) {
  RestoreRequest req{s_->images, s_->work};
  req.leave_stopped = true;
  req.lazy_pages = true;
  KMX_RETURN_IF_ERROR(runtime.RestoreTask(name, req));
  auto kill_task = [&](const Freezer& f, Status why) {
    if (f.ok()) FreezeAndKill(f);
    return why;
  };
  auto info = runtime.Inspect(name);
  if (!info.ok()) return info.status().Annotate("inspect after restore");
  auto freezer = FreezerOf(static_cast<pid_t>(info->pid));
  if (!freezer.ok()) {
    (void)runtime.Delete(name);
    return freezer.status().Annotate("restored task");
  }
  bool exited, done;
  {
    std::lock_guard l(s_->mu);
    s_->task = *freezer;
    s_->restored = s_->clock->Now();
    s_->has_restored = true;
    exited = s_->exited;
    done = s_->result.done;
  }
  if (exited && !done) {
    std::string why;
    {
      std::lock_guard l(s_->mu);
      why = s_->result.error;
    }
    return kill_task(*freezer,
                     FailedError("the lazy-pages daemon ended during the restore: " + why));
  }
  // Hold a duplicate of each process's userfaultfd before anything runs.
  const size_t want = ProcsOf(*freezer).size();
  const auto deadline = s_->clock->Now() + s_->options.uffd_timeout;
  int held = s_->GrabUffds();
  while (static_cast<size_t>(held) < want && s_->clock->Now() < deadline) {
    {
      std::lock_guard l(s_->mu);
      if (s_->exited) break;
    }
    s_->clock->SleepFor(std::chrono::milliseconds(5));
    held = s_->GrabUffds();
  }
  {
    std::lock_guard l(s_->mu);
    if (s_->exited && !s_->result.done) {
      // The watcher killed the task (it was armed).
      return FailedError("the lazy-pages daemon ended before the task ran: " + s_->result.error);
    }
  }
  spdlog::info("{}: restored lazily, {} processes, {} userfaultfds held ({})", name, want, held,
               freezer->dir);
  if (static_cast<size_t>(held) < want) {
    spdlog::warn("{}: holding {} userfaultfds for {} processes; the others rely on the kill", name,
                 held, want);
  }
  if (Status s = runtime.Continue(name); !s.ok()) {
    return kill_task(*freezer, s.Annotate("continue the restored task"));
  }
  return Status::Ok();
}

StatusOr<LazyResult> LazyTarget::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock l(s_->mu);
  if (!s_->cv.wait_for(l, timeout, [&] { return s_->exited; }))
    return RetryError("pages still arriving after " + std::to_string(timeout.count()) + " ms");
  return s_->result;
}

LazyResult LazyTarget::Abort() {
  {
    std::lock_guard l(s_->mu);
    if (!s_->exited) PidfdSignal(s_->daemon.pidfd, SIGKILL);
  }
  std::unique_lock l(s_->mu);
  s_->cv.wait(l, [&] { return s_->exited; });
  return s_->result;
}

pid_t LazyTarget::daemon_pid() const { return s_->daemon.pid; }

int LazyTarget::guarded_uffds() const {
  std::lock_guard l(s_->mu);
  return s_->taken;
}

}  // namespace kmosix
