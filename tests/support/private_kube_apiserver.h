// A private kube-apiserver for integration tests: its own etcd (PrivateEtcd)
// and a real kube-apiserver on free loopback ports, with certificates made
// by `openssl` at Start() in a private directory:
//   ca.crt/ca.key        the CA (serving and client certificates)
//   server.crt/.key      the serving certificate (IP:127.0.0.1, DNS:localhost)
//   admin.crt/.key       a client certificate, O=system:masters (cluster admin)
//   sa.key/sa.pub        the service-account token signing key pair
//   kubeconfig           for the admin certificate (the *-data fields)
// and the logs apiserver.log, openssl.log, kubectl.log (etcd's in its dir).
//
// Usage:
//   if (auto why = KubeApiserverSkipReason(); !why.empty())
//     GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: " << why;
//   PrivateKubeApiserver api;
//   ASSERT_TRUE(api.Start()) << api.dir() << "/apiserver.log";
//   auto cfg = kube::LoadKubeconfig(api.kubeconfig());
//   api.Kubectl({"apply", "-f", "crd.yaml"});
//   api.Stop(); ... api.Start();   // same etcd, ports and certificates
//
// Binaries: $KMX_KUBE_APISERVER_BIN / $KMX_KUBECTL_BIN, else
// kube-apiserver / kubectl in `scripts/kube-tools --print` (the repo's
// checkout is found from this header's path). The directory is removed at
// destruction unless $KMX_KEEP_KUBE is set.
// Header-only; link kmosix_etcd (PrivateEtcd) and kmosix_kube (the /readyz
// probe goes through kube's Transport).
// Ownership: owns both processes and the directory; the destructor stops
// the apiserver (SIGTERM, SIGKILL after 5 s: one stuck in shutdown ignores
// SIGTERM) and then etcd.
// Thread-safety: none; drive it from one thread.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kube/config.h"
#include "kube/transport.h"
#include "support/private_etcd.h"

namespace kmosix::testing {

// The repo root: KMX_SOURCE_DIR when the build defines it (ccache with
// CCACHE_BASEDIR makes __FILE__ relative to the build directory), else from
// this header's path (<root>/tests/support/...).
inline std::string KubeRepoRoot() {
#ifdef KMX_SOURCE_DIR
  return KMX_SOURCE_DIR;
#else
  std::filesystem::path p(__FILE__);
  return p.parent_path().parent_path().parent_path().string();
#endif
}

// `scripts/kube-tools --print`: the directory the lead's script builds into.
inline std::string KubeToolsDir() {
  std::string cmd = KubeRepoRoot() + "/scripts/kube-tools --print 2>/dev/null";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return "";
  std::array<char, 512> buf{};
  std::string out;
  while (std::fgets(buf.data(), buf.size(), f)) out += buf.data();
  ::pclose(f);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// $env if set (executable or ""), else <kube-tools dir>/<name> if executable, else "".
inline std::string FindKubeTool(const char* env, const char* name) {
  if (const char* e = std::getenv(env); e && *e) return ::access(e, X_OK) == 0 ? e : "";
  std::string dir = KubeToolsDir();
  if (dir.empty()) return "";
  std::string p = dir + "/" + name;
  return ::access(p.c_str(), X_OK) == 0 ? p : "";
}

// Why the kube-apiserver tests cannot run here ("" if they can).
inline std::string KubeApiserverSkipReason() {
  if (auto why = EtcdSkipReason(); !why.empty()) return why;
  if (FindKubeTool("KMX_KUBE_APISERVER_BIN", "kube-apiserver").empty()) {
    return "kube-apiserver not found (set KMX_KUBE_APISERVER_BIN, or build it with "
           "scripts/kube-tools into " +
           KubeToolsDir() + ")";
  }
  if (FindKubeTool("KMX_KUBECTL_BIN", "kubectl").empty()) {
    return "kubectl not found (set KMX_KUBECTL_BIN, or build it with scripts/kube-tools into " +
           KubeToolsDir() + ")";
  }
  if (std::system("openssl version >/dev/null 2>&1") != 0) return "openssl not on PATH";
  return "";
}

inline std::string KubeReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string KubeBase64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

// Single-quotes `s` for /bin/sh.
inline std::string KubeShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

class PrivateKubeApiserver {
 public:
  // `extra_args` are appended to kube-apiserver's command line.
  explicit PrivateKubeApiserver(std::vector<std::string> extra_args = {})
      : apiserver_(FindKubeTool("KMX_KUBE_APISERVER_BIN", "kube-apiserver")),
        kubectl_(FindKubeTool("KMX_KUBECTL_BIN", "kubectl")),
        extra_args_(std::move(extra_args)) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string t = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/kmx-kube-XXXXXX";
    std::vector<char> buf(t.begin(), t.end());
    buf.push_back('\0');
    if (char* made = ::mkdtemp(buf.data())) dir_ = made;
    port_ = FreePort();
  }
  ~PrivateKubeApiserver() {
    Stop();
    etcd_.Stop();
    std::error_code ec;
    if (!dir_.empty() && !std::getenv("KMX_KEEP_KUBE")) std::filesystem::remove_all(dir_, ec);
  }
  PrivateKubeApiserver(const PrivateKubeApiserver&) = delete;
  PrivateKubeApiserver& operator=(const PrivateKubeApiserver&) = delete;

  const std::string& dir() const { return dir_; }
  std::string server() const { return "https://127.0.0.1:" + std::to_string(port_); }
  std::string kubeconfig() const { return dir_ + "/kubeconfig"; }
  std::string ca_file() const { return dir_ + "/ca.crt"; }
  PrivateEtcd& etcd() { return etcd_; }
  bool running() const { return pid_ > 0; }
  // Why the last Start() failed ("" after a good one).
  const std::string& error() const { return error_; }

  // The admin's Config (client certificate), without reading the kubeconfig.
  kube::Config AdminConfig() const {
    kube::Config c;
    c.server = server();
    c.ca_pem = KubeReadFile(dir_ + "/ca.crt");
    c.client_cert_pem = KubeReadFile(dir_ + "/admin.crt");
    c.client_key_pem = KubeReadFile(dir_ + "/admin.key");
    return c;
  }

  // Starts etcd (first time), makes the certificates (first time), starts
  // kube-apiserver and waits until /readyz answers 200 (up to 90 s).
  bool Start() {
    error_.clear();
    if (pid_ > 0) return true;
    if (apiserver_.empty() || dir_.empty() || port_ == 0) return Fail("no binary, dir or port");
    if (!etcd_.running() && !etcd_.Start()) return Fail("etcd did not start: " + etcd_.dir());
    if (!std::filesystem::exists(dir_ + "/kubeconfig") && !MakeCerts()) return false;
    std::vector<std::string> args = {
        apiserver_,
        "--etcd-servers=http://" + etcd_.endpoint(),
        "--secure-port=" + std::to_string(port_),
        "--bind-address=127.0.0.1",
        "--tls-cert-file=" + dir_ + "/server.crt",
        "--tls-private-key-file=" + dir_ + "/server.key",
        "--client-ca-file=" + dir_ + "/ca.crt",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        "--disable-admission-plugins=ServiceAccount",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file=" + dir_ + "/sa.pub",
        "--service-account-signing-key-file=" + dir_ + "/sa.key",
        "--cert-dir=" + dir_ + "/cert-dir",
    };
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string log = dir_ + "/apiserver.log";
    pid_ = ::fork();
    if (pid_ < 0) return Fail("fork failed");
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      // Dies with the test process, even when that one crashes.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    auto transport = kube::NewHttpTransport(AdminConfig());
    if (!transport.ok()) return Fail("transport: " + transport.status().ToString());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = (*transport)->Do({"GET", "/readyz", {}, "", ""});
      if (r.ok() && r->status == 200) return true;
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return Fail("kube-apiserver exited; see " + log);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return Fail("kube-apiserver not ready after 90 s; see " + log);
  }

  // Stops the apiserver: SIGTERM, SIGKILL after 5 s. Idempotent. etcd stays.
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 50; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // Runs kubectl with the admin kubeconfig; returns its exit code; its
  // stdout goes to `out` (if given), stderr to <dir>/kubectl.log.
  int Kubectl(const std::vector<std::string>& args, std::string* out = nullptr) const {
    if (kubectl_.empty()) return 127;
    std::string cmd = KubeShellQuote(kubectl_) + " --kubeconfig=" + KubeShellQuote(kubeconfig());
    for (const auto& a : args) cmd += " " + KubeShellQuote(a);
    std::string out_file = dir_ + "/kubectl.out";
    cmd += " >" + KubeShellQuote(out_file) + " 2>>" + KubeShellQuote(dir_ + "/kubectl.log");
    int rc = std::system(cmd.c_str());
    if (out) *out = KubeReadFile(out_file);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
  }

  // Applies a manifest file and waits until every CRD in it is Established.
  bool ApplyCrds(const std::string& file) {
    if (Kubectl({"apply", "-f", file}) != 0) return Fail("kubectl apply -f " + file + " failed");
    if (Kubectl({"wait", "--for=condition=Established", "--timeout=60s", "-f", file}) != 0) {
      return Fail("CRDs of " + file + " not Established");
    }
    return true;
  }

 private:
  bool Fail(const std::string& why) {
    error_ = why;
    return false;
  }

  bool MakeCerts() {
    std::string d = KubeShellQuote(dir_);
    std::string script =
        "set -e\ncd " + d +
        "\n"
        "mkdir -p cert-dir\n"
        "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
        "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=kmx-test-ca\n"
        "openssl req $K -keyout server.key -out server.csr -subj /CN=kube-apiserver\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n' "
        "> server.ext\n"
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
        "-out server.crt -days 2 -extfile server.ext\n"
        "openssl req $K -keyout admin.key -out admin.csr -subj '/O=system:masters/CN=kmx-admin'\n"
        "printf 'extendedKeyUsage=clientAuth\\n' > admin.ext\n"
        "openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
        "-out admin.crt -days 2 -extfile admin.ext\n"
        "openssl genrsa -out sa.key 2048\n"
        "openssl rsa -in sa.key -pubout -out sa.pub\n";
    std::ofstream(dir_ + "/gen.sh") << script;
    std::string cmd = "/bin/sh " + KubeShellQuote(dir_ + "/gen.sh") + " >" +
                      KubeShellQuote(dir_ + "/openssl.log") + " 2>&1";
    if (std::system(cmd.c_str()) != 0) return Fail("openssl failed; see " + dir_ + "/openssl.log");
    std::ofstream kc(dir_ + "/kubeconfig");
    kc << "apiVersion: v1\nkind: Config\ncurrent-context: admin@kmx\n"
       << "clusters:\n- name: kmx\n  cluster:\n    server: " << server() << "\n"
       << "    certificate-authority-data: " << KubeBase64(KubeReadFile(dir_ + "/ca.crt")) << "\n"
       << "contexts:\n- name: admin@kmx\n  context: {cluster: kmx, user: admin, namespace: "
          "default}\n"
       << "users:\n- name: admin\n  user:\n"
       << "    client-certificate-data: " << KubeBase64(KubeReadFile(dir_ + "/admin.crt")) << "\n"
       << "    client-key-data: " << KubeBase64(KubeReadFile(dir_ + "/admin.key")) << "\n";
    kc.close();
    return kc.good() || Fail("cannot write " + kubeconfig());
  }

  std::string apiserver_;
  std::string kubectl_;
  std::vector<std::string> extra_args_;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  std::string error_;
  PrivateEtcd etcd_;
};

}  // namespace kmosix::testing
