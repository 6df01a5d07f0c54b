// A throwaway PKI for tests, made with the openssl CLI (EC P-256) in a
// directory the test owns: CAs and leaf certificates with a CN, O groups
// (kmosix:nodes, ...), SANs and an extended key usage. Header-only; tests
// only. Paths must not contain a single quote (they go through a shell).
// Thread-safety: none (one per fixture). Errors: Make* answer "" on success,
// else what failed (openssl's output).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace kmosix::testing {

class TestPki {
 public:
  explicit TestPki(std::string dir) : dir_(std::move(dir)) {}

  const std::string& dir() const { return dir_; }
  std::string Ca(const std::string& ca = "ca") const { return dir_ + "/" + ca + ".crt"; }
  std::string Cert(const std::string& who) const { return dir_ + "/" + who + ".crt"; }
  std::string Key(const std::string& who) const { return dir_ + "/" + who + ".key"; }

  static bool OpensslPresent() { return Run("command -v openssl >/dev/null 2>&1").empty(); }

  // A self-signed CA named `ca` (files <ca>.crt, <ca>.key).
  std::string MakeCa(const std::string& ca = "ca") const {
    return Run("mkdir -p '" + dir_ + "' && cd '" + dir_ +
               "' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
               "-keyout " +
               ca + ".key -out " + ca + ".crt -days 2 -subj '/CN=" + ca + " test CA' 2>&1");
  }

  // A leaf `who` (files <who>.crt/.key, replaced by rename: a watcher never
  // sees half a pair) signed by `ca`: subject CN=cn with one O per group, SAN
  // IP:127.0.0.1, DNS:localhost plus `sans` (e.g. "IP:10.77.0.11"),
  // extendedKeyUsage `eku`.
  std::string MakeLeaf(const std::string& who, const std::string& cn,
                       const std::vector<std::string>& groups = {},
                       const std::vector<std::string>& sans = {}, const std::string& ca = "ca",
                       const std::string& eku = "serverAuth,clientAuth") const {
    std::string subj;
    for (const auto& g : groups) subj += "/O=" + g;
    subj += "/CN=" + cn;
    std::string san = "IP:127.0.0.1,DNS:localhost";
    for (const auto& s : sans) san += "," + s;
    return Run("cd '" + dir_ + "' && printf 'subjectAltName=" + san + "\\nextendedKeyUsage=" + eku +
               "\\n' > " + who +
               ".ext && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
               "-keyout " +
               who + ".key.new -out " + who + ".csr -subj '" + subj +
               "' && openssl x509 -req -in " + who + ".csr -CA " + ca + ".crt -CAkey " + ca +
               ".key -set_serial 0x$(openssl rand -hex 16) -days 2 -out " + who +
               ".crt.new -extfile " + who + ".ext && mv -f " + who + ".key.new " + who +
               ".key && mv -f " + who + ".crt.new " + who + ".crt 2>&1");
  }

  // A CA `name` signed by `ca` (an intermediate, path length 0).
  std::string MakeIntermediate(const std::string& name, const std::string& ca = "ca") const {
    return Run("cd '" + dir_ +
               "' && printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\n"
               "keyUsage=critical,keyCertSign,cRLSign\\n' > " +
               name +
               ".ext && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
               "-keyout " +
               name + ".key -out " + name + ".csr -subj '/CN=" + name +
               " test intermediate' && openssl x509 -req -in " + name + ".csr -CA " + ca +
               ".crt -CAkey " + ca + ".key -set_serial 0x$(openssl rand -hex 16) -days 2 -out " +
               name + ".crt -extfile " + name + ".ext 2>&1");
  }

  // A PKCS#10 request as a kubelet makes one for a pod certificate (empty
  // subject, DER) for a new key `who` (files <who>.csr.der, <who>.key);
  // `newkey` is openssl's -newkey argument plus options ("ec -pkeyopt
  // ec_paramgen_curve:prime256v1", "rsa:2048", "ed25519").
  std::string MakeCsr(
      const std::string& who,
      const std::string& newkey = "ec -pkeyopt ec_paramgen_curve:prime256v1") const {
    return Run("mkdir -p '" + dir_ + "' && cd '" + dir_ + "' && openssl req -new -newkey " +
               newkey + " -nodes -keyout " + who + ".key -subj / -outform DER -out " + who +
               ".csr.der 2>&1");
  }

 private:
  static std::string Run(const std::string& cmd) {
    std::string out;
    FILE* p = ::popen(("(" + cmd + ") 2>&1").c_str(), "r");
    if (p == nullptr) return "popen failed: " + cmd;
    char buf[512];
    while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    const int rc = ::pclose(p);
    if (rc == 0) return "";
    return out.empty() ? "failed: " + cmd : out;
  }

  std::string dir_;
};

}  // namespace kmosix::testing
