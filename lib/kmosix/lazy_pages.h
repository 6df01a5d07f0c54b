// Post-copy (lazy pages) migration of a container over containerd, runc and
// CRIU >= 4: the two ends of the page stream and the guards that keep a
// workload from running twice or on zero-filled memory (issue 14).
//
// Source (LazySource): pauses the task through the ContainerRuntime, then
// runs `runc checkpoint --lazy-pages --page-server 127.0.0.1:PORT
// --status-fd 3 --leave-running` itself (containerd 1.6's shim cannot ask
// for lazy pages, and would hold its lock for the whole transfer). runc,
// CRIU and so CRIU's page server run in a network namespace of their own
// that holds only a loopback: the page server listens on every address and
// serves the first client without authentication, so nothing on any network
// can reach it; the agent reaches it through a socket it makes inside that
// namespace (ConnectPageServer). The dump returns once CRIU wrote its (tiny)
// images and the page server listens; the images go to the target with the
// ordinary stream, the memory only through the page stream.
// While pages are served CRIU holds the tasks through ptrace and has thawed
// their freezer (containerd still says PAUSED; a CRIU that dies then lets
// them run): once CRIU is ready the task's cgroup is frozen again under it
// (traced tasks freeze too, and a CRIU exit then finds them frozen), and a
// watcher writes FROZEN again the moment CRIU (or runc) exits, for whatever
// reason, so the source never runs after the dump unless Thaw says so.
// Nothing here kills the source's CRIU once it is ready: the page stream
// ends (and with it CRIU) when its connection closes.
//
// Target (LazyTarget): starts `criu lazy-pages` (work dir = the restore's
// work dir, where it listens on lazy-pages.socket) in a network namespace of
// its own, where the agent listens on 127.0.0.1:PORT for the daemon's page
// server connection and relays it to a PageDialer's stream; then restores the
// task through the runtime with lazy_pages and leave_stopped, takes a
// duplicate of every userfaultfd the daemon received (pidfd_getfd), and only
// then lets the task run. Holding those duplicates, a missing page faults and
// blocks if the daemon dies (instead of being filled with zeros when its
// userfaultfd closes); the daemon's watcher then freezes and SIGKILLs every
// process of the task at once. While the daemon runs, the watcher takes the
// userfaultfds it gets later (fork events) and lets go of the ones it closed
// itself (else its epoll keeps reporting the file and it never ends).
// Note: the lazy restore fills each process's pages separately, so memory a
// parent and child shared copy-on-write on the source is two copies here
// (the task's memory limit must allow it). Done means: the daemon exited 0 AND its log
// says every process got all its pages ("UFFD transferred pages: (n/n)");
// CRIU's exit status alone proves nothing (an early close counts as success).
//
// The page stream between the two (PageDialer): any connected byte stream to
// the source's page server. On one machine (tests) it is
// LazySource::ConnectPageServer itself; between agents it is a stream of the
// authenticated data channel whose far end the source agent joins to its own
// ConnectPageServer socket with RelayBytes.
//
// Ownership: each object owns its CRIU/runc processes, their watcher thread,
// its network namespace and its relay thread; it borrows the runtime and the
// clock. Destroying a LazySource never thaws (the task stays as the watcher
// left it: frozen); destroying a LazyTarget kills its daemon and, unless Wait
// returned Done, the restored task.
// Thread-safety: the methods of one object may be called from several
// threads; the watchers run on their own.
// Errors: kFailed for a step that failed (the message says which and names
// CRIU's log), kRetry for a deadline that passed with CRIU still running,
// kInvalid for bad arguments. Never throws.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "kmosix/clock.h"
#include "kmosix/runtime.h"
#include "kmosix/status.h"

namespace kmosix {

struct LazyPagesOptions {
  std::string runc = "runc";
  // runc --root of the node's containers: containerd's runc root plus the
  // containerd namespace (the shim appends it), e.g. /run/kmosix/runc/kmosix.
  std::string runc_root;
  // criu (>= 4) for both ends; runc gets it as --criu.
  std::string criu = "criu";
  // Port of the page server inside the private namespaces (nothing else
  // listens there).
  uint16_t port = 27027;
  // Longest wait for CRIU's "ready" byte (the dump of every VMA's layout,
  // not its pages, on the source; the daemon's start on the target).
  std::chrono::milliseconds ready_timeout{120000};
  // Longest wait for the source's CRIU to exit once its page stream closed.
  std::chrono::milliseconds exit_timeout{30000};
  // Longest wait, after the restore, for the daemon to hold the
  // userfaultfd of every restored process.
  std::chrono::milliseconds uffd_timeout{5000};
};

// Connects to the source's page server: returns a connected stream socket
// (the caller owns the fd) or why not.
using PageDialer = std::function<StatusOr<int>()>;

// Copies bytes both ways between two connected sockets until both directions
// reached end of file (each end's EOF is passed on with shutdown(SHUT_WR)) or
// one failed; a failed direction shuts both sockets down. Counts what went
// each way, also when it failed (status). Does not close the fds. Blocks;
// shutdown(SHUT_RDWR) of either socket from another thread ends it.
struct RelayCounts {
  uint64_t a_to_b = 0;
  uint64_t b_to_a = 0;
  Status status;  // the first failure of either direction
};
RelayCounts RelayBytes(int a, int b);

class LazySource {
 public:
  // Pauses `name`, dumps it lazily into scratch_dir/criu (work files and
  // CRIU's dump.log in scratch_dir/work) and returns once the page server is
  // ready. On failure the task runs again (resumed through the runtime, once
  // CRIU has exited).
  static StatusOr<std::unique_ptr<LazySource>> Start(ContainerRuntime& runtime, Clock& clock,
                                                     const LazyPagesOptions& options,
                                                     const std::string& name,
                                                     const std::string& scratch_dir);
  ~LazySource();
  LazySource(const LazySource&) = delete;
  LazySource& operator=(const LazySource&) = delete;

  // The CRIU images (no memory) the target restores from.
  const std::string& images_dir() const;
  double freeze_seconds() const;  // the pause
  double dump_seconds() const;    // pause end to "ready"

  // A connection to the page server (the caller owns the fd). CRIU serves
  // one client: the first connection's close ends the dump.
  StatusOr<int> ConnectPageServer();

  // The target has every page: waits until CRIU has exited (its page
  // stream closed) and the task is frozen again. Ok when runc exited 0.
  Status Finish();
  // Rollback: ends the page stream (its connection shut down, or a
  // connection made and closed when none was), waits for CRIU to exit,
  // re-freezes, then resumes the task through the runtime. kRetry when CRIU
  // did not exit within exit_timeout (the task is still held; try again).
  Status Thaw();
  // After the commit: CRIU ended (as Finish), then the task is deleted
  // without running (SIGKILL while frozen, then the runtime's Delete).
  Status Release();

  // Whether CRIU has exited, and how many times the watcher wrote FROZEN.
  bool criu_exited() const;
  int refreezes() const;
  // The CRIU process serving pages (-1: not found), for diagnostics and
  // fault-injection tests.
  pid_t criu_pid() const;

 private:
  struct State;
  explicit LazySource(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

struct LazyResult {
  bool done = false;         // every page arrived (daemon exit 0 and its log)
  uint64_t pages = 0;        // pages the daemon copied, over all processes
  uint64_t total_pages = 0;  // pages it had to copy
  uint64_t bytes_in = 0;     // relayed from the source to the daemon
  uint64_t bytes_out = 0;    // relayed from the daemon to the source
  double seconds = 0;        // restore end to daemon exit
  int exit_status = -1;      // the daemon's (wait status decoded; -1 signal)
  bool task_killed = false;  // the guard killed the restored task
  std::string error;         // why not done
};

class LazyTarget {
 public:
  // Starts the lazy-pages daemon for the images in images_dir (landed from
  // the source) with work_dir as its work dir (the restore's), and the relay
  // of its page-server connection to `dial`. Returns once the daemon is
  // ready for the restore.
  static StatusOr<std::unique_ptr<LazyTarget>> Start(Clock& clock, const LazyPagesOptions& options,
                                                     const std::string& images_dir,
                                                     const std::string& work_dir, PageDialer dial);
  ~LazyTarget();
  LazyTarget(const LazyTarget&) = delete;
  LazyTarget& operator=(const LazyTarget&) = delete;

  // Restores the created container `name` through `runtime` (lazy pages,
  // stopped), arms the guard, then continues the task: on success it runs,
  // its missing pages flowing in. On failure nothing of it runs (the task
  // is killed; the container stays for the caller's Delete).
  Status Restore(ContainerRuntime& runtime, const std::string& name);
  // Waits until the daemon has exited (at most `timeout`; kRetry after it,
  // nothing changed). The result says whether every page arrived; when not,
  // the restored task was killed before the daemon's exit was reported.
  StatusOr<LazyResult> Wait(std::chrono::milliseconds timeout);
  // Rollback: kills the daemon (SIGKILL); the guard kills the task. Then
  // waits for the watcher as Wait does.
  LazyResult Abort();

  pid_t daemon_pid() const;
  // How many userfaultfds the guard took (it lets them go when the daemon
  // exits).
  int guarded_uffds() const;

 private:
  struct State;
  explicit LazyTarget(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

// Parses the lazy-pages daemon's log (-v4): the "UFFD transferred pages:
// (a/b)" lines, one per process. Ok with the sums when there is at least
// one and every one has a == b.
struct TransferSummary {
  int processes = 0;
  uint64_t copied = 0;
  uint64_t total = 0;
  bool complete = false;
};
TransferSummary ParseLazyPagesLog(const std::string& log);

}  // namespace kmosix
