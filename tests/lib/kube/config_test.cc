// Tests of lib/kube/config.h: kubeconfig parsing (data and file fields,
// contexts, errors naming the field) and the in-cluster configuration.
#include "kube/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>

namespace kmosix::kube {
namespace {

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/kmx-kubecfg-XXXXXX";
    path_ = ::mkdtemp(t);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  void Write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ + "/" + name) << content;
  }

 private:
  std::string path_;
};

// "hello CA" / "client cert" / "client key" in base64.
constexpr const char* kCaB64 = "aGVsbG8gQ0E=";
constexpr const char* kCertB64 = "Y2xpZW50IGNlcnQ=";
constexpr const char* kKeyB64 = "Y2xpZW50IGtleQ==";

std::string Kubeconfig(const std::string& user_fields, const std::string& cluster_fields,
                       const std::string& current = "admin@kmx") {
  return "apiVersion: v1\nkind: Config\ncurrent-context: " + current +
         "\n"
         "clusters:\n"
         "- name: kmx\n"
         "  cluster:\n"
         "    server: https://127.0.0.1:6443\n" +
         cluster_fields +
         "contexts:\n"
         "- name: admin@kmx\n"
         "  context: {cluster: kmx, user: admin, namespace: work}\n"
         "- name: other\n"
         "  context: {cluster: kmx, user: tok}\n"
         "users:\n"
         "- name: admin\n"
         "  user:\n" +
         user_fields +
         "- name: tok\n"
         "  user:\n"
         "    token: abc123\n";
}

TEST(KubeConfig, DataFieldsOfTheCurrentContext) {
  auto cfg =
      ParseKubeconfig(Kubeconfig(std::string("    client-certificate-data: ") + kCertB64 +
                                     "\n    client-key-data: " + kKeyB64 + "\n",
                                 std::string("    certificate-authority-data: ") + kCaB64 + "\n"),
                      "/nowhere");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->server, "https://127.0.0.1:6443");
  EXPECT_EQ(cfg->ca_pem, "hello CA");
  EXPECT_EQ(cfg->client_cert_pem, "client cert");
  EXPECT_EQ(cfg->client_key_pem, "client key");
  EXPECT_EQ(cfg->namespace_, "work");
  EXPECT_FALSE(cfg->insecure_skip_verify);
  EXPECT_TRUE(cfg->token.empty());
}

TEST(KubeConfig, NamedContextWithToken) {
  auto cfg = ParseKubeconfig(Kubeconfig("    token: x\n", "    insecure-skip-tls-verify: true\n"),
                             "/nowhere", "other");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->token, "abc123");
  EXPECT_TRUE(cfg->insecure_skip_verify);
  EXPECT_EQ(cfg->namespace_, "");
}

TEST(KubeConfig, FilesRelativeToTheKubeconfig) {
  TempDir dir;
  dir.Write("ca.crt", "CA FILE");
  dir.Write("admin.crt", "CERT FILE");
  dir.Write("admin.key", "KEY FILE");
  dir.Write("token", "tok-from-file\n");
  dir.Write("config", Kubeconfig("    client-certificate: admin.crt\n    client-key: " +
                                     dir.path() + "/admin.key\n    tokenFile: token\n",
                                 "    certificate-authority: ca.crt\n"));
  auto cfg = LoadKubeconfig(dir.path() + "/config");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->ca_pem, "CA FILE");
  EXPECT_EQ(cfg->client_cert_pem, "CERT FILE");
  EXPECT_EQ(cfg->client_key_pem, "KEY FILE");
  EXPECT_EQ(cfg->token_file, dir.path() + "/token");
}

struct Bad {
  std::string name;
  std::string yaml;
  std::string context;
  std::string want;  // in the message
};

TEST(KubeConfig, BadFilesNameTheField) {
  std::vector<Bad> cases = {
      {"bad base64",
       Kubeconfig("    client-certificate-data: '!!!'\n    client-key-data: eA==\n", ""), "",
       "users[admin].user.client-certificate-data: not base64"},
      {"missing CA file", Kubeconfig("", "    certificate-authority: /no/such/ca.crt\n"), "",
       "clusters[kmx].cluster.certificate-authority: cannot read /no/such/ca.crt"},
      {"cert without key",
       Kubeconfig(std::string("    client-certificate-data: ") + kCertB64 + "\n", ""), "",
       "go together"},
      {"exec", Kubeconfig("    exec: {command: aws}\n", ""), "",
       "users[admin].user.exec: not supported"},
      {"no such context", Kubeconfig("", ""), "nope", "contexts: no entry named \"nope\""},
      {"no current context", "apiVersion: v1\nclusters: []\n", "", "current-context: not set"},
      {"cluster missing",
       "current-context: c\ncontexts: [{name: c, context: {cluster: kmx}}]\n"
       "clusters: [{name: zzz, cluster: {server: 'https://x'}}]\n",
       "", "clusters: no entry named \"kmx\""},
      {"not yaml", "{{{ :", "", "bad YAML"},
      {"not a map", "- a\n- b\n", "", "not a YAML map"},
      {"server not a URL",
       "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\n"
       "clusters: [{name: k, cluster: {server: 'ftp://x'}}]\n",
       "", "clusters[k].cluster.server: \"ftp://x\" is not an http(s) URL"},
      {"server missing",
       "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\n"
       "clusters: [{name: k, cluster: {}}]\n",
       "", "clusters[k].cluster.server: missing"},
      {"server a map",
       "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\n"
       "clusters: [{name: k, cluster: {server: {a: b}}}]\n",
       "", "clusters[k].cluster.server: not a string"},
      {"clusters not a list",
       "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: 3\n", "",
       "clusters: not a list"},
  };
  for (const auto& c : cases) {
    auto cfg = ParseKubeconfig(c.yaml, "/nowhere", c.context);
    ASSERT_FALSE(cfg.ok()) << c.name;
    EXPECT_EQ(cfg.status().code(), Code::kInvalid) << c.name;
    EXPECT_NE(cfg.status().message().find(c.want), std::string::npos)
        << c.name << ": " << cfg.status().message();
  }
}

TEST(KubeConfig, MissingFileIsNotFound) {
  auto cfg = LoadKubeconfig("/no/such/kubeconfig");
  EXPECT_EQ(cfg.status().code(), Code::kNotFound);
}

TEST(KubeConfig, Base64) {
  EXPECT_EQ(Base64Decode("aGVsbG8=").value_or("?"), "hello");
  EXPECT_EQ(Base64Decode("aGVsbG8").value_or("?"), "hello");
  EXPECT_EQ(Base64Decode("aGVs\nbG8=\n").value_or("?"), "hello");
  EXPECT_EQ(Base64Decode("").value_or("?"), "");
  EXPECT_FALSE(Base64Decode("a"));
  EXPECT_FALSE(Base64Decode("aGVsbG8=x"));
  EXPECT_FALSE(Base64Decode("aGV*"));
}

EnvLookup Env(std::map<std::string, std::string> m) {
  return [m](const std::string& k) -> std::optional<std::string> {
    auto it = m.find(k);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
}

TEST(InClusterConfig, ReadsTheServiceAccountFiles) {
  TempDir dir;
  dir.Write("ca.crt", "CA");
  dir.Write("token", "tok\n");
  dir.Write("namespace", "kmosix-system\n");
  auto cfg = InClusterConfig(dir.path(), Env({{"KUBERNETES_SERVICE_HOST", "10.0.0.1"},
                                              {"KUBERNETES_SERVICE_PORT", "443"}}));
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->server, "https://10.0.0.1:443");
  EXPECT_EQ(cfg->ca_pem, "CA");
  EXPECT_EQ(cfg->token, "tok");
  EXPECT_EQ(cfg->token_file, dir.path() + "/token");
  EXPECT_EQ(cfg->namespace_, "kmosix-system");
  auto v6 = InClusterConfig(dir.path(), Env({{"KUBERNETES_SERVICE_HOST", "fd00::1"},
                                             {"KUBERNETES_SERVICE_PORT", "6443"}}));
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->server, "https://[fd00::1]:6443");
}

TEST(InClusterConfig, Errors) {
  TempDir dir;
  auto env = Env({{"KUBERNETES_SERVICE_HOST", "10.0.0.1"}, {"KUBERNETES_SERVICE_PORT", "443"}});
  EXPECT_EQ(InClusterConfig(dir.path(), Env({})).status().code(), Code::kNotFound);
  auto no_ca = InClusterConfig(dir.path(), env);
  EXPECT_EQ(no_ca.status().code(), Code::kInvalid);
  EXPECT_NE(no_ca.status().message().find("ca.crt"), std::string::npos);
  dir.Write("ca.crt", "CA");
  auto no_token = InClusterConfig(dir.path(), env);
  EXPECT_NE(no_token.status().message().find("token"), std::string::npos);
  dir.Write("token", "\n");
  EXPECT_NE(InClusterConfig(dir.path(), env).status().message().find("empty"), std::string::npos);
  dir.Write("token", "t");
  EXPECT_TRUE(InClusterConfig(dir.path(), env).ok());
  EXPECT_EQ(InClusterConfig(dir.path(), Env({{"KUBERNETES_SERVICE_HOST", "h"},
                                             {"KUBERNETES_SERVICE_PORT", "x1"}}))
                .status()
                .code(),
            Code::kInvalid);
}

}  // namespace
}  // namespace kmosix::kube
