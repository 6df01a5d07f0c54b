#include "private_containerd.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#ifndef KMX_TEST_IMAGE_SCRIPT
#error "KMX_TEST_IMAGE_SCRIPT must point at make_test_image.sh"
#endif

namespace kmosix::testing {
namespace {

bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string Which(const std::string& bin) {
  std::string out;
  if (RunCommand("command -v " + bin, &out) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// Mount points under `prefix`, deepest (latest) first.
std::vector<std::string> MountsUnder(const std::string& prefix) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt;
    ls >> id >> parent >> devno >> root >> mnt;
    if (mnt.rfind(prefix, 0) == 0) out.push_back(mnt);
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// Pids whose command line mentions `needle` and `must`.
std::vector<pid_t> PidsWithCmdline(const std::string& must, const std::string& needle) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    pid_t pid = atoi(e->d_name);
    if (pid <= 0 || pid == getpid()) continue;
    std::string cmd = ReadFile("/proc/" + std::string(e->d_name) + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(must) != std::string::npos && cmd.find(needle) != std::string::npos)
      out.push_back(pid);
  }
  closedir(d);
  return out;
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int RunCommand(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  if (output) *output = out;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string MissingCapability() {
  if (geteuid() != 0) return "not root";
  for (const char* bin : {"containerd", "ctr", "runc", "containerd-shim-runc-v2", "python3"}) {
    if (Which(bin).empty()) return std::string(bin) + " not on PATH";
  }
  if (!Exists("/bin/busybox")) return "/bin/busybox missing (apt install busybox-static)";
  if (!Exists("/sys/fs/cgroup/freezer")) return "cgroup v1 freezer hierarchy not mounted";
  return "";
}

std::string CriuProblem() {
  static const std::string problem = [] {
    std::string out;
    int rc = RunCommand("criu check", &out);
    if (rc != 0) return "`criu check` failed: " + out;
    return std::string();
  }();
  return problem;
}

PrivateContainerd::PrivateContainerd(std::string tag) : tag_(std::move(tag)) {
  char tmpl[] = "/tmp/kmx-ctd-XXXXXX";
  char* d = mkdtemp(tmpl);
  dir_ = d ? d : "/tmp/kmx-ctd-failed";
  socket_ = dir_ + "/c.sock";
  runc_root_ = dir_ + "/runc";
  std::string base = dir_.substr(dir_.rfind('/') + 1);
  cgroup_parent_ = "/" + base + "-" + tag_;
}

PrivateContainerd::~PrivateContainerd() { Stop(); }

ContainerdConfig PrivateContainerd::Config(const std::string& ns) const {
  ContainerdConfig c;
  c.socket_path = socket_;
  c.containerd_namespace = ns;
  if (ns == kDefaultNamespace) {
    c.node_name = tag_;
    c.runc_root = runc_root_;
    c.cgroup_parent = cgroup_parent_;
  } else {
    c.node_name = tag_ + "-" + ns;
    c.runc_root = runc_root_ + "-" + ns;
    c.cgroup_parent = cgroup_parent_ + "-" + ns;
  }
  c.criu_path = Which("criu");
  c.rpc_timeout = std::chrono::seconds(20);
  c.criu_timeout = std::chrono::seconds(120);
  return c;
}

std::unique_ptr<ContainerdRuntime> PrivateContainerd::NewRuntime(const std::string& ns) const {
  return std::make_unique<ContainerdRuntime>(Config(ns));
}

std::string PrivateContainerd::Start() {
  mkdir(runc_root_.c_str(), 0700);
  std::string cfg_path = dir_ + "/config.toml";
  {
    std::ofstream cfg(cfg_path);
    cfg << "version = 2\n"
        << "root = \"" << dir_ << "/root\"\n"
        << "state = \"" << dir_ << "/state\"\n"
        << "disabled_plugins = [\"io.containerd.grpc.v1.cri\", "
           "\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", "
           "\"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n"
        << "[grpc]\n  address = \"" << socket_ << "\"\n"
        << "[ttrpc]\n  address = \"" << socket_ << ".ttrpc\"\n"
        << "[debug]\n  address = \"\"\n"
        << "[metrics]\n  address = \"\"\n"
        << "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"" << dir_ << "/opt\"\n";
  }
  std::string log = dir_ + "/containerd.log";
  pid_ = fork();
  if (pid_ < 0) return "fork failed";
  if (pid_ == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    setsid();
    execlp("containerd", "containerd", "--config", cfg_path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  auto rt = NewRuntime();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return "containerd exited at startup: " + DaemonLogTail();
    }
    if (Exists(socket_) && rt->Ping().ok()) return "";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return "containerd did not answer within 20 s: " + DaemonLogTail();
}

std::string PrivateContainerd::DaemonLogTail() const {
  std::string s = ReadFile(dir_ + "/containerd.log");
  return s.size() > 3000 ? s.substr(s.size() - 3000) : s;
}

std::string PrivateContainerd::ImportTestImage(const std::string& image_name,
                                               const std::string& ns) {
  static std::mutex mu;
  static std::string tarball;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (tarball.empty()) {
      std::string path = "/tmp/kmx-ctd-test-image-" + std::to_string(getpid()) + ".tar";
      std::string out;
      int rc = RunCommand(
          std::string("sh ") + KMX_TEST_IMAGE_SCRIPT + " " + path + " " + image_name, &out);
      if (rc != 0) return "make_test_image.sh failed (" + std::to_string(rc) + "): " + out;
      tarball = path;
      static std::string to_remove;
      to_remove = path;
      std::atexit([] { unlink(to_remove.c_str()); });
    }
  }
  return ImportImage(tarball, ns);
}

std::string PrivateContainerd::ImportImage(const std::string& tarball, const std::string& ns) {
  namespaces_.insert(ns);
  mkdir(Config(ns).runc_root.c_str(), 0700);
  std::string out;
  int rc = RunCommand(
      "ctr -a " + socket_ + " -n " + ns + " images import --snapshotter overlayfs " + tarball,
      &out);
  if (rc != 0) return "ctr images import of " + tarball + " failed: " + out;
  return "";
}

std::string PrivateContainerd::CrashAndRestart() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
    pid_ = -1;
  }
  for (pid_t p : PidsWithCmdline("containerd-shim", socket_)) kill(p, SIGKILL);
  for (const std::string& ns : namespaces_) {
    // Every process of its containers (their cgroups, under the parent), as
    // a power cut would; then runc's records of them.
    RunCommand("for f in $(find /sys/fs/cgroup/memory" + Config(ns).cgroup_parent +
               " -name cgroup.procs 2>/dev/null); do for p in $(cat $f); do kill -9 $p; done; "
               "done; true");
    const std::string root = Config(ns).runc_root;
    if (Exists(root)) RunCommand("rm -rf " + root + "/*");
  }
  for (int round = 0; round < 3; ++round) {
    for (const auto& m : MountsUnder(dir_ + "/state/")) umount2(m.c_str(), MNT_DETACH);
  }
  RunCommand("rm -rf " + dir_ + "/state");
  return Start();
}

void PrivateContainerd::Stop() {
  if (pid_ > 0) {
    // Delete what this daemon runs (kills tasks, removes snapshots).
    for (const std::string& ns : namespaces_) {
      auto cfg = Config(ns);
      cfg.rpc_timeout = std::chrono::seconds(5);
      cfg.kill_timeout = std::chrono::seconds(5);
      ContainerdRuntime rt(cfg);
      auto list = rt.ListContainers();
      if (list.ok()) {
        for (const auto& name : *list) (void)rt.Delete(name);
      }
    }
    kill(pid_, SIGTERM);
    int st;
    bool gone = false;
    for (int i = 0; i < 100; ++i) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        gone = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!gone) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &st, 0);
    }
    pid_ = -1;
  }
  if (dir_.empty() || !Exists(dir_)) return;
  // Shims of this daemon carry its socket address on their command line.
  for (pid_t p : PidsWithCmdline("containerd-shim", socket_)) kill(p, SIGKILL);
  // Containers runc still knows under the nodes' roots.
  for (const std::string& ns : namespaces_) {
    const std::string root = Config(ns).runc_root;
    if (!Exists(root)) continue;
    std::string ids;
    if (RunCommand("runc --root " + root + " list -q", &ids) == 0) {
      std::istringstream is(ids);
      std::string id;
      while (is >> id) RunCommand("runc --root " + root + " delete --force " + id);
    }
  }
  for (int round = 0; round < 3; ++round) {
    for (const auto& m : MountsUnder(dir_ + "/")) umount2(m.c_str(), MNT_DETACH);
  }
  RunCommand("rm -rf " + dir_);
  // Cgroup parents in every v1 hierarchy.
  for (const std::string& ns : namespaces_) {
    RunCommand("for h in /sys/fs/cgroup/*; do d=\"$h" + Config(ns).cgroup_parent +
               "\"; [ -d \"$d\" ] && find \"$d\" -depth -type d -exec rmdir {} + ; done; true");
  }
  dir_.clear();
}

}  // namespace kmosix::testing
