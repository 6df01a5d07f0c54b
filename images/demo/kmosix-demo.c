/*
 * kmosix-demo: the demo workload for live-migration tests.
 *
 * Ticks every --interval-ms and prints one line per tick to stdout:
 *
 *   tick=<n> t_ms=<CLOCK_REALTIME ms> mem_ok=<1|0> mem_mib=<N> mem_passes=<k>
 *     child_tick=<n|-1> child_alive=<1|0|-1> file_ok=<1|0|-1> rootfs_ok=<1|0|-1> pid=<pid>
 *
 * (one line). The tick counter lives in process memory, so after a migration it
 * continues where it was; the gap in t_ms between consecutive tick lines is
 * the downtime. Parse lines that START with "tick=": the child's lines start
 * with "child_tick=", startup/diagnostic lines with "demo:".
 *
 * Flags (each also settable through the environment variable in brackets;
 * a flag wins over the variable):
 *   --mem MiB          [KMOSIX_DEMO_MEM_MIB]     allocate and touch MiB with a
 *                      deterministic pattern; every tick verifies a rolling
 *                      window of it (--verify-mib per tick, default 32), so a
 *                      whole pass takes ceil(mem/verify) ticks. mem_ok is sticky:
 *                      once a mismatch is seen it stays 0 (and the first bad
 *                      offset is printed as a "demo: MEMORY CORRUPTION" line).
 *   --verify-mib MiB   [KMOSIX_DEMO_VERIFY_MIB]  window verified per tick (0 = all).
 *   --dirty-mib MiB    [KMOSIX_DEMO_DIRTY_MIB]   rewrite MiB per tick with a new
 *                      generation of the pattern (dirties pages; default 0).
 *   --interval-ms MS   [KMOSIX_DEMO_INTERVAL_MS] default 100.
 *   --ticks N          [KMOSIX_DEMO_TICKS]       exit 0 after N ticks (default 0 = forever).
 *   --child            [KMOSIX_DEMO_CHILD=1]     fork a child that ticks with its own
 *                      counter (prints "child_tick=<n> t_ms=.. pid=.."); its
 *                      counter is shared with the parent through a MAP_SHARED page.
 *   --append-file PATH [KMOSIX_DEMO_APPEND_FILE] keep an O_APPEND fd open and append
 *                      one line per tick; file_ok=1 while the file size equals
 *                      what this process has written to it since it opened it.
 *   --write-rootfs PATH [KMOSIX_DEMO_WRITE_ROOTFS] write a marker file at start;
 *                      rootfs_ok=1 while it still exists with the same content.
 *   --status PATH      [KMOSIX_DEMO_STATUS]      rewrite PATH (atomically, via
 *                      PATH.tmp + rename) every tick with key=value lines:
 *                      tick, t_ms, mem_ok, mem_mib, mem_passes, child_tick,
 *                      child_alive, file_ok, rootfs_ok, pid.
 *   --incarnation      [KMOSIX_DEMO_INCARNATION=1] end every tick line (stdout
 *                      and --append-file) with " inc=<id>": the process's start
 *                      time (field 22 of /proc/self/stat, clock ticks since
 *                      boot), read every tick. CRIU cannot restore a start
 *                      time, so every copy (the first start, each restore,
 *                      each restart) has its own id while its counter goes
 *                      on: a journal checker tells two copies apart (the
 *                      fault soak, scripts/soak). -1 if unreadable.
 *
 *   --probe-raw-socket  try socket(AF_PACKET, SOCK_RAW), socket(AF_INET,
 *                      SOCK_RAW, IPPROTO_ICMP) and socket(AF_INET, SOCK_DGRAM,
 *                      IPPROTO_ICMP), print "demo: raw_packet=<ok|ERRNO>
 *                      raw_inet=<ok|ERRNO> icmp_dgram=<ok|ERRNO>" (ERRNO like
 *                      EPERM) and exit 0 (checks that a workload lacks
 *                      CAP_NET_RAW but may still ping).
 *
 * SIGTERM/SIGINT: exit 0 (kills the child). Exit 3 on a memory mismatch only
 * with --exit-on-corruption.
 *
 * Build: gcc -static -O2 -o kmosix-demo kmosix-demo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE_WORDS (4096 / sizeof(uint64_t))
#define MIB_WORDS ((1024 * 1024) / sizeof(uint64_t))

static volatile sig_atomic_t stop_flag;

static void on_term(int sig) { (void)sig; stop_flag = 1; }

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* Expected value of word i when its page is at generation g. */
static inline uint64_t pattern(uint64_t i, uint32_t g) {
  return mix64(i ^ ((uint64_t)g << 40) ^ 0x6b6d6f736978ULL /* "kmosix" */);
}

/* ---- options ---- */
struct opts {
  long mem_mib, verify_mib, dirty_mib, interval_ms, ticks;
  int child, exit_on_corruption, incarnation;
  const char *append_file, *write_rootfs, *status;
};

static long env_long(const char *name, long def) {
  const char *v = getenv(name);
  if (!v || !*v) return def;
  char *end;
  long x = strtol(v, &end, 10);
  if (*end) {
    fprintf(stderr, "demo: bad %s=%s\n", name, v);
    exit(2);
  }
  return x;
}

static const char *env_str(const char *name) {
  const char *v = getenv(name);
  return (v && *v) ? v : NULL;
}

static void usage(int code) {
  fprintf(code ? stderr : stdout,
          "usage: kmosix-demo [--mem MiB] [--interval-ms MS] [--ticks N] [--child]\n"
          "                   [--append-file PATH] [--write-rootfs PATH] [--status PATH]\n"
          "                   [--verify-mib MiB] [--dirty-mib MiB] [--exit-on-corruption]\n"
          "                   [--incarnation]\n"
          "       kmosix-demo --probe-raw-socket\n");
  exit(code);
}

static long arg_long(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) usage(2);
  char *end;
  long x = strtol(argv[++*i], &end, 10);
  if (*end || x < 0) {
    fprintf(stderr, "demo: bad number for %s: %s\n", argv[*i - 1], argv[*i]);
    exit(2);
  }
  return x;
}

static const char *arg_str(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) usage(2);
  return argv[++*i];
}

static const char *socket_result(int domain, int type, int protocol) {
  int fd = socket(domain, type, protocol);
  if (fd >= 0) {
    close(fd);
    return "ok";
  }
  switch (errno) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    default: return strerror(errno);
  }
}

static void probe_raw_socket(void) {
  const char *packet = socket_result(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  const char *inet = socket_result(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  const char *dgram = socket_result(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
  printf("demo: raw_packet=%s raw_inet=%s icmp_dgram=%s\n", packet, inet, dgram);
  exit(0);
}

static void parse(struct opts *o, int argc, char **argv) {
  o->mem_mib = env_long("KMOSIX_DEMO_MEM_MIB", 0);
  o->verify_mib = env_long("KMOSIX_DEMO_VERIFY_MIB", 32);
  o->dirty_mib = env_long("KMOSIX_DEMO_DIRTY_MIB", 0);
  o->interval_ms = env_long("KMOSIX_DEMO_INTERVAL_MS", 100);
  o->ticks = env_long("KMOSIX_DEMO_TICKS", 0);
  o->child = env_long("KMOSIX_DEMO_CHILD", 0) != 0;
  o->exit_on_corruption = 0;
  o->incarnation = env_long("KMOSIX_DEMO_INCARNATION", 0) != 0;
  o->append_file = env_str("KMOSIX_DEMO_APPEND_FILE");
  o->write_rootfs = env_str("KMOSIX_DEMO_WRITE_ROOTFS");
  o->status = env_str("KMOSIX_DEMO_STATUS");
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--mem")) o->mem_mib = arg_long(argc, argv, &i);
    else if (!strcmp(a, "--verify-mib")) o->verify_mib = arg_long(argc, argv, &i);
    else if (!strcmp(a, "--dirty-mib")) o->dirty_mib = arg_long(argc, argv, &i);
    else if (!strcmp(a, "--interval-ms")) o->interval_ms = arg_long(argc, argv, &i);
    else if (!strcmp(a, "--ticks")) o->ticks = arg_long(argc, argv, &i);
    else if (!strcmp(a, "--child")) o->child = 1;
    else if (!strcmp(a, "--exit-on-corruption")) o->exit_on_corruption = 1;
    else if (!strcmp(a, "--incarnation")) o->incarnation = 1;
    else if (!strcmp(a, "--append-file")) o->append_file = arg_str(argc, argv, &i);
    else if (!strcmp(a, "--write-rootfs")) o->write_rootfs = arg_str(argc, argv, &i);
    else if (!strcmp(a, "--status")) o->status = arg_str(argc, argv, &i);
    else if (!strcmp(a, "--probe-raw-socket")) probe_raw_socket();
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(0);
    else {
      fprintf(stderr, "demo: unknown argument %s\n", a);
      usage(2);
    }
  }
  if (o->interval_ms <= 0) o->interval_ms = 100;
}

static void sleep_until_next(long long tick_start_ns, long interval_ms) {
  long long elapsed = mono_ns() - tick_start_ns;
  long long want = (long long)interval_ms * 1000000LL - elapsed;
  /* Clamp: after a restore the monotonic clock may have jumped either way. */
  if (want <= 0) return;
  if (want > (long long)interval_ms * 1000000LL) want = (long long)interval_ms * 1000000LL;
  struct timespec ts = {want / 1000000000LL, want % 1000000000LL};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_flag) {
  }
}

/* This process's start time in clock ticks since boot (field 22 of
 * /proc/self/stat), or -1. The comm field (2) may hold spaces and ')': parse
 * after the last ')'. */
static long long start_time_ticks(void) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  /* after ") ": field 3 (state) is the first; field 22 is the 20th from there */
  p++;
  for (int field = 3; field <= 22; field++) {
    while (*p == ' ') p++;
    if (!*p) return -1;
    if (field == 22) return strtoll(p, NULL, 10);
    while (*p && *p != ' ') p++;
  }
  return -1;
}

/* Write all of buf; returns 0 or -1. */
static int write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += w;
    n -= (size_t)w;
  }
  return 0;
}

/* ---- child ---- */
static void child_loop(volatile long *shared_tick, pid_t parent, long interval_ms) {
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  long n = 0;
  while (1) {
    long long t0 = mono_ns();
    if (getppid() != parent) _exit(0); /* parent gone */
    n++;
    *shared_tick = n;
    printf("child_tick=%ld t_ms=%lld pid=%d\n", n, now_ms(), (int)getpid());
    fflush(stdout);
    sleep_until_next(t0, interval_ms);
  }
}

int main(int argc, char **argv) {
  struct opts o;
  parse(&o, argc, argv);
  setvbuf(stdout, NULL, _IOLBF, 0);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  printf("demo: start pid=%d mem_mib=%ld interval_ms=%ld child=%d append_file=%s "
         "write_rootfs=%s status=%s t_ms=%lld\n",
         (int)getpid(), o.mem_mib, o.interval_ms, o.child, o.append_file ? o.append_file : "-",
         o.write_rootfs ? o.write_rootfs : "-", o.status ? o.status : "-", now_ms());

  /* Memory: words + one generation counter per 4 KiB page. */
  size_t nwords = (size_t)o.mem_mib * MIB_WORDS;
  size_t npages = nwords / PAGE_WORDS;
  uint64_t *mem = NULL;
  uint32_t *gen = NULL;
  if (nwords) {
    mem = mmap(NULL, nwords * sizeof(uint64_t), PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    gen = calloc(npages, sizeof(uint32_t));
    if (mem == MAP_FAILED || !gen) {
      fprintf(stderr, "demo: cannot allocate %ld MiB\n", o.mem_mib);
      return 1;
    }
    for (size_t i = 0; i < nwords; i++) mem[i] = pattern(i, 0);
  }
  size_t verify_words = o.verify_mib > 0 ? (size_t)o.verify_mib * MIB_WORDS : nwords;
  if (verify_words > nwords) verify_words = nwords;
  size_t dirty_pages = (size_t)o.dirty_mib * MIB_WORDS / PAGE_WORDS;
  size_t vpos = 0, dpos = 0;
  unsigned long passes = 0;
  int mem_ok = 1;

  /* Child, sharing its counter through a MAP_SHARED anonymous page. */
  volatile long *child_tick = NULL;
  pid_t child = -1;
  int child_alive = -1;
  if (o.child) {
    child_tick = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (child_tick == MAP_FAILED) {
      perror("demo: mmap shared");
      return 1;
    }
    *child_tick = 0;
    pid_t me = getpid();
    fflush(stdout);
    child = fork();
    if (child < 0) {
      perror("demo: fork");
      return 1;
    }
    if (child == 0) child_loop(child_tick, me, o.interval_ms);
    child_alive = 1;
  }

  /* Rootfs marker. */
  char marker[256];
  int rootfs_ok = -1;
  if (o.write_rootfs) {
    snprintf(marker, sizeof marker, "kmosix-demo marker pid=%d t_ms=%lld\n", (int)getpid(),
             now_ms());
    int fd = open(o.write_rootfs, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, marker, strlen(marker)) < 0 || fsync(fd) < 0) {
      fprintf(stderr, "demo: cannot write marker %s: %s\n", o.write_rootfs, strerror(errno));
      return 1;
    }
    close(fd);
    rootfs_ok = 1;
  }

  /* Append file, kept open. */
  int afd = -1;
  off_t a_base = 0, a_written = 0;
  int file_ok = -1;
  if (o.append_file) {
    afd = open(o.append_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (afd < 0) {
      fprintf(stderr, "demo: cannot open %s: %s\n", o.append_file, strerror(errno));
      return 1;
    }
    a_base = lseek(afd, 0, SEEK_END);
    file_ok = 1;
  }

  unsigned long tick = 0;
  char line[512];
  while (!stop_flag) {
    long long t0 = mono_ns();
    tick++;

    /* Dirty: move a window of pages to the next generation. */
    for (size_t k = 0; k < dirty_pages && npages; k++) {
      size_t p = dpos;
      dpos = (dpos + 1) % npages;
      uint32_t g = ++gen[p];
      for (size_t w = p * PAGE_WORDS; w < (p + 1) * PAGE_WORDS; w++) mem[w] = pattern(w, g);
    }
    /* Verify a rolling window. */
    for (size_t k = 0; k < verify_words && nwords; k++) {
      size_t w = vpos;
      uint64_t want = pattern(w, gen[w / PAGE_WORDS]);
      if (mem[w] != want) {
        if (mem_ok)
          printf("demo: MEMORY CORRUPTION at byte offset %zu: got %016llx want %016llx\n",
                 w * sizeof(uint64_t), (unsigned long long)mem[w], (unsigned long long)want);
        mem_ok = 0;
        mem[w] = want; /* repair so a single bad word is reported once */
      }
      if (++vpos == nwords) {
        vpos = 0;
        passes++;
      }
    }

    long ct = -1;
    if (child > 0) {
      int st;
      if (child_alive == 1 && waitpid(child, &st, WNOHANG) == child) child_alive = 0;
      ct = *child_tick;
    }
    if (rootfs_ok >= 0) {
      char buf[256];
      int fd = open(o.write_rootfs, O_RDONLY | O_CLOEXEC);
      ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
      if (fd >= 0) close(fd);
      rootfs_ok = (n == (ssize_t)strlen(marker) && !memcmp(buf, marker, (size_t)n)) ? 1 : 0;
    }
    long long t_ms = now_ms();
    char inc[40] = "";
    if (o.incarnation) snprintf(inc, sizeof inc, " inc=%lld", start_time_ticks());
    if (afd >= 0) {
      int n = snprintf(line, sizeof line, "tick=%lu t_ms=%lld pid=%d%s\n", tick, t_ms,
                       (int)getpid(), inc);
      if (write_all(afd, line, (size_t)n) < 0) {
        file_ok = 0;
      } else {
        a_written += n;
        struct stat st;
        file_ok = (fstat(afd, &st) == 0 && st.st_size == a_base + a_written) ? 1 : 0;
      }
    }
    printf("tick=%lu t_ms=%lld mem_ok=%d mem_mib=%ld mem_passes=%lu child_tick=%ld "
           "child_alive=%d file_ok=%d rootfs_ok=%d pid=%d%s\n",
           tick, t_ms, mem_ok, o.mem_mib, passes, ct, child_alive, file_ok, rootfs_ok,
           (int)getpid(), inc);
    fflush(stdout);

    if (o.status) {
      char tmp[4096];
      snprintf(tmp, sizeof tmp, "%s.tmp", o.status);
      int n = snprintf(line, sizeof line,
                       "tick=%lu\nt_ms=%lld\nmem_ok=%d\nmem_mib=%ld\nmem_passes=%lu\n"
                       "child_tick=%ld\nchild_alive=%d\nfile_ok=%d\nrootfs_ok=%d\npid=%d\n",
                       tick, t_ms, mem_ok, o.mem_mib, passes, ct, child_alive, file_ok,
                       rootfs_ok, (int)getpid());
      int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        int bad = write_all(fd, line, (size_t)n) < 0;
        close(fd);
        if (bad || rename(tmp, o.status) < 0) unlink(tmp);
      }
    }

    if (!mem_ok && o.exit_on_corruption) {
      if (child > 0) kill(child, SIGKILL);
      return 3;
    }
    if (o.ticks > 0 && tick >= (unsigned long)o.ticks) break;
    sleep_until_next(t0, o.interval_ms);
  }
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
  }
  printf("demo: exit tick=%lu mem_ok=%d\n", tick, mem_ok);
  return 0;
}
