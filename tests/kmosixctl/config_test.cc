// kmosixctl connection settings: precedence flag > env > file > default,
// server lists, the config file's YAML, where the file is looked for.
#include "kmosixctl/config.h"

#include <gtest/gtest.h>

namespace kmosix::ctl {
namespace {

FileConfig File(const std::string& yaml, const std::string& path = "/etc/kmosix/config.yaml") {
  auto f = ParseConfigFile(yaml, path);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? *f : FileConfig{};
}

TEST(ConfigTest, DefaultsWithNothingSet) {
  auto rc = ResolveConfig({}, {}, std::nullopt);
  ASSERT_TRUE(rc.ok()) << rc.status().ToString();
  EXPECT_EQ(rc->servers, std::vector<std::string>{"http://127.0.0.1:7800"});
  EXPECT_EQ(rc->server_source, "default");
  EXPECT_EQ(rc->token, "");
  EXPECT_EQ(rc->ca_file, "");
  EXPECT_FALSE(rc->insecure_skip_tls_verify);
}

TEST(ConfigTest, FileBeatsDefault) {
  auto file = File("server: https://10.77.0.1:7800\ntoken: filetoken\ncaFile: pki/ca.crt\n",
                   "/run/kmosix-cluster/kmosixctl.yaml");
  auto rc = ResolveConfig({}, {}, file, "/run/kmosix-cluster/kmosixctl.yaml");
  ASSERT_TRUE(rc.ok()) << rc.status().ToString();
  EXPECT_EQ(rc->servers, std::vector<std::string>{"https://10.77.0.1:7800"});
  EXPECT_EQ(rc->server_source, "config /run/kmosix-cluster/kmosixctl.yaml");
  EXPECT_EQ(rc->token, "filetoken");
  // A relative caFile is relative to the file's directory.
  EXPECT_EQ(rc->ca_file, "/run/kmosix-cluster/pki/ca.crt");
}

TEST(ConfigTest, EnvBeatsFile) {
  auto file = File("server: https://file:7800\ntoken: filetoken\ncaFile: /file/ca.crt\n");
  EnvMap env = {{"KMOSIX_SERVER", "https://env:7800"},
                {"KMOSIX_TOKEN", "envtoken"},
                {"KMOSIX_CA_FILE", "/env/ca.crt"}};
  auto rc = ResolveConfig({}, env, file, "/etc/kmosix/config.yaml");
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->servers, std::vector<std::string>{"https://env:7800"});
  EXPECT_EQ(rc->server_source, "env KMOSIX_SERVER");
  EXPECT_EQ(rc->token, "envtoken");
  EXPECT_EQ(rc->token_source, "env KMOSIX_TOKEN");
  EXPECT_EQ(rc->ca_file, "/env/ca.crt");
}

TEST(ConfigTest, FlagsBeatEnvAndFile) {
  auto file = File("server: https://file:7800\ntoken: filetoken\ncaFile: /file/ca.crt\n");
  EnvMap env = {{"KMOSIX_SERVER", "https://env:7800"},
                {"KMOSIX_TOKEN", "envtoken"},
                {"KMOSIX_CA_FILE", "/env/ca.crt"}};
  ConfigFlags flags;
  flags.server = "https://flag:7800";
  flags.token = "flagtoken";
  flags.ca_file = "/flag/ca.crt";
  flags.insecure_skip_tls_verify = true;
  auto rc = ResolveConfig(flags, env, file, "/etc/kmosix/config.yaml");
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->servers, std::vector<std::string>{"https://flag:7800"});
  EXPECT_EQ(rc->server_source, "--server");
  EXPECT_EQ(rc->token, "flagtoken");
  EXPECT_EQ(rc->token_source, "--token");
  EXPECT_EQ(rc->ca_file, "/flag/ca.crt");
  EXPECT_TRUE(rc->insecure_skip_tls_verify);
}

TEST(ConfigTest, EachSettingFallsBackOnItsOwn) {
  // Server from the flag, token from the env, CA from the file.
  auto file = File("server: https://file:7800\ntoken: filetoken\ncaFile: /file/ca.crt\n");
  ConfigFlags flags;
  flags.server = "http://flag:7800";
  auto rc = ResolveConfig(flags, {{"KMOSIX_TOKEN", "envtoken"}}, file, "/x.yaml");
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->servers[0], "http://flag:7800");
  EXPECT_EQ(rc->token, "envtoken");
  EXPECT_EQ(rc->ca_file, "/file/ca.crt");
}

TEST(ConfigTest, EmptyEnvValuesCountAsUnset) {
  auto file = File("server: https://file:7800\n");
  auto rc = ResolveConfig({}, {{"KMOSIX_SERVER", ""}, {"KMOSIX_TOKEN", "  "}}, file, "/x.yaml");
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->servers[0], "https://file:7800");
  EXPECT_EQ(rc->token, "");
}

TEST(ConfigTest, TokenIsTrimmedButMayNotContainSpaces) {
  ConfigFlags flags;
  flags.token = "abc\n";
  auto rc = ResolveConfig(flags, {}, std::nullopt);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->token, "abc");
  flags.token = "ab c";
  rc = ResolveConfig(flags, {}, std::nullopt);
  ASSERT_FALSE(rc.ok());
  EXPECT_EQ(rc.status().code(), Code::kInvalid);
  EXPECT_NE(rc.status().message().find("--token"), std::string::npos);
}

TEST(ConfigTest, ServerListsAreSplitAndCleaned) {
  auto s = ParseServerList(" https://a:7800/ ,http://b:7800,, https://[::1]:7800");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(*s,
            (std::vector<std::string>{"https://a:7800", "http://b:7800", "https://[::1]:7800"}));
}

TEST(ConfigTest, BadServersAreRejectedWithTheirSource) {
  for (const char* bad : {"a:7800", "ftp://a", "https://", "http://a:7800/v1", "", " , ",
                          "https://a:78\r00", "http://a\n:7800", "http://a\x7f:1"}) {
    EXPECT_FALSE(ParseServerList(bad).ok()) << bad;
  }
  EnvMap env = {{"KMOSIX_SERVER", "10.77.0.1:7800"}};
  auto rc = ResolveConfig({}, env, std::nullopt);
  ASSERT_FALSE(rc.ok());
  EXPECT_EQ(rc.status().code(), Code::kInvalid);
  EXPECT_EQ(rc.status().message(),
            "env KMOSIX_SERVER: server \"10.77.0.1:7800\": needs http:// or https://");
}

TEST(ConfigTest, ConfigFileServerMayBeAList) {
  auto file = File("server:\n  - https://c1:7800\n  - https://c2:7800\n");
  auto rc = ResolveConfig({}, {}, file, "/x.yaml");
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(rc->servers, (std::vector<std::string>{"https://c1:7800", "https://c2:7800"}));
}

TEST(ConfigTest, ConfigFileErrorsNameTheFileAndKey) {
  auto unknown =
      ParseConfigFile("server: http://a:1\ntokn: x\n", "/home/u/.config/kmosix/config.yaml");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), Code::kInvalid);
  EXPECT_NE(unknown.status().message().find("/home/u/.config/kmosix/config.yaml"),
            std::string::npos);
  EXPECT_NE(unknown.status().message().find("unknown key \"tokn\""), std::string::npos);

  auto bad_yaml = ParseConfigFile("server: [unclosed\n", "/c.yaml");
  ASSERT_FALSE(bad_yaml.ok());
  EXPECT_NE(bad_yaml.status().message().find("not valid YAML"), std::string::npos);

  auto not_map = ParseConfigFile("- a\n- b\n", "/c.yaml");
  EXPECT_FALSE(not_map.ok());
  auto bad_bool = ParseConfigFile("insecureSkipTlsVerify: maybe\n", "/c.yaml");
  EXPECT_FALSE(bad_bool.ok());
  auto nested = ParseConfigFile("token: {a: b}\n", "/c.yaml");
  EXPECT_FALSE(nested.ok());
}

TEST(ConfigTest, EmptyConfigFileAndCommentsAreFine) {
  auto empty = ParseConfigFile("", "/c.yaml");
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->server.has_value());
  auto comments = ParseConfigFile("# kmosixctl\ntoken:\ninsecureSkipTlsVerify: true\n", "/c.yaml");
  ASSERT_TRUE(comments.ok()) << comments.status().ToString();
  EXPECT_FALSE(comments->token.has_value());
  EXPECT_EQ(comments->insecure_skip_tls_verify, true);
}

TEST(ConfigTest, ConfigFileLocation) {
  ConfigFlags flags;
  EnvMap env = {{"KMOSIX_CONFIG", "/env.yaml"}, {"XDG_CONFIG_HOME", "/xdg"}, {"HOME", "/home/u"}};
  flags.config = "/flag.yaml";
  auto loc = LocateConfigFile(flags, env);
  EXPECT_EQ(loc.path, "/flag.yaml");
  EXPECT_TRUE(loc.required);
  flags.config.reset();
  loc = LocateConfigFile(flags, env);
  EXPECT_EQ(loc.path, "/env.yaml");
  EXPECT_TRUE(loc.required);
  env.erase("KMOSIX_CONFIG");
  loc = LocateConfigFile(flags, env);
  EXPECT_EQ(loc.path, "/xdg/kmosix/config.yaml");
  EXPECT_FALSE(loc.required);
  env.erase("XDG_CONFIG_HOME");
  loc = LocateConfigFile(flags, env);
  EXPECT_EQ(loc.path, "/home/u/.config/kmosix/config.yaml");
  EXPECT_FALSE(loc.required);
  env.clear();
  EXPECT_EQ(LocateConfigFile(flags, env).path, "");
}

}  // namespace
}  // namespace kmosix::ctl
