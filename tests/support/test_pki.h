// A throwaway PKI for tests: EC P-256 CAs and certificates made with the
// `openssl` command line in a directory the test owns.
//
// Usage:
//   if (!HaveOpenssl()) GTEST_SKIP() << "... SKIPPED: openssl not on PATH";
//   ASSERT_TRUE(MakeTestCa(dir, "ca"));                       // dir/ca.{crt,key}
//   ASSERT_TRUE(IssueTestCert(dir, "ca", "server", "etcd", "IP:127.0.0.1", "serverAuth"));
//
// Header-only. Paths must not contain a single quote (they go through a shell).
// Ownership: the files belong to the caller's directory. Thread-safety: none.
// Errors: each function returns false when openssl failed (its output is in
// <dir>/openssl.log).
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

namespace kmosix::testing {

inline bool HaveOpenssl() { return std::system("openssl version >/dev/null 2>&1") == 0; }

// dir/name.crt and dir/name.key: a self-signed CA "CN=<name>".
inline bool MakeTestCa(const std::string& dir, const std::string& name) {
  const std::string cmd = "cd '" + dir +
                          "' && openssl req -x509 -newkey ec -pkeyopt "
                          "ec_paramgen_curve:prime256v1 -nodes -keyout '" +
                          name + ".key' -out '" + name +
                          ".crt' -days 2 -subj '/O=kmosix-test/CN=" + name + "' >>openssl.log 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// dir/name.crt and dir/name.key signed by dir/ca.{crt,key}: subject CN=cn,
// extendedKeyUsage eku ("serverAuth", "clientAuth", ...), SAN san ("" = none).
// Overwrites the pair (written beside, then renamed: a watcher never sees half).
inline bool IssueTestCert(const std::string& dir, const std::string& ca, const std::string& name,
                          const std::string& cn, const std::string& san, const std::string& eku) {
  {
    std::ofstream ext(dir + "/" + name + ".ext");
    ext << "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        << "extendedKeyUsage=" << eku << "\n";
    if (!san.empty()) ext << "subjectAltName=" << san << "\n";
    if (!ext) return false;
  }
  const std::string cmd =
      "cd '" + dir + "' && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 " +
      "-nodes -keyout '" + name + ".key.new' -out '" + name +
      ".csr' -subj '/O=kmosix-test/CN=" + cn + "' >>openssl.log 2>&1 && openssl x509 -req -in '" +
      name + ".csr' -CA '" + ca + ".crt' -CAkey '" + ca +
      ".key' -set_serial 0x$(openssl rand -hex 16) -days 2 -extfile '" + name + ".ext' -out '" +
      name + ".crt.new' >>openssl.log 2>&1 && mv -f '" + name + ".key.new' '" + name +
      ".key' && mv -f '" + name + ".crt.new' '" + name + ".crt' && rm -f '" + name + ".csr' '" +
      name + ".ext'";
  return std::system(cmd.c_str()) == 0;
}

}  // namespace kmosix::testing
