#include "containerd/oci_spec.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace kmosix {
namespace {

using json = nlohmann::json;

ContainerSpec BaseSpec() {
  ContainerSpec s;
  s.name = "web";
  s.image = "kmosix.test/busybox:latest";
  return s;
}

OciImageConfig BaseImage() {
  OciImageConfig c;
  c.entrypoint = {"/bin/sh", "-c"};
  c.cmd = {"sleep 10"};
  c.env = {"PATH=/bin:/usr/bin", "A=image"};
  c.working_dir = "/srv";
  return c;
}

bool HasNamespace(const json& spec, const std::string& type) {
  for (const auto& ns : spec["linux"]["namespaces"])
    if (ns["type"] == type) return true;
  return false;
}

const json* FindMount(const json& spec, const std::string& dest) {
  for (const auto& m : spec["mounts"])
    if (m["destination"] == dest) return &m;
  return nullptr;
}

TEST(ParseOciImageConfig, ReadsConfigAndDiffIds) {
  auto c = ParseOciImageConfig(R"({"architecture":"amd64","os":"linux",
    "config":{"Entrypoint":["/e"],"Cmd":["a","b"],"Env":["X=1"],"WorkingDir":"/w","User":"5:6"},
    "rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->entrypoint, std::vector<std::string>{"/e"});
  EXPECT_EQ(c->cmd, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(c->env, std::vector<std::string>{"X=1"});
  EXPECT_EQ(c->working_dir, "/w");
  EXPECT_EQ(c->user, "5:6");
  EXPECT_EQ(c->diff_ids.size(), 2u);
}

TEST(ParseOciImageConfig, NullFieldsAndMissingConfigAreFine) {
  auto c =
      ParseOciImageConfig(R"({"config":{"Entrypoint":null,"Cmd":null},"rootfs":{"diff_ids":[]}})");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->entrypoint.empty());
  EXPECT_TRUE(ParseOciImageConfig(R"({"rootfs":{"diff_ids":[]}})").ok());
}

TEST(ParseOciImageConfig, RejectsMalformed) {
  EXPECT_EQ(ParseOciImageConfig("not json").status().code(), Code::kInvalid);
  EXPECT_EQ(ParseOciImageConfig("[]").status().code(), Code::kInvalid);
  EXPECT_EQ(ParseOciImageConfig(R"({"config":{}})").status().code(), Code::kInvalid);
  EXPECT_EQ(ParseOciImageConfig(R"({"config":{"Cmd":"x"},"rootfs":{}})").status().code(),
            Code::kInvalid);
  EXPECT_EQ(ParseOciImageConfig(R"({"rootfs":{"diff_ids":[1]}})").status().code(), Code::kInvalid);
}

TEST(ComputeChainId, SingleLayerIsItsDiffId) {
  std::string d = "sha256:" + std::string(64, 'a');
  auto c = ComputeChainId({d});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, d);
}

TEST(ComputeChainId, TwoLayersHashParentSpaceDiff) {
  // sha256("sha256:aaa...a sha256:bbb...b"), computed independently with sha256sum.
  std::string a = "sha256:" + std::string(64, 'a');
  std::string b = "sha256:" + std::string(64, 'b');
  auto c = ComputeChainId({a, b});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c");
}

TEST(ComputeChainId, RejectsEmptyAndBadDigests) {
  EXPECT_EQ(ComputeChainId({}).status().code(), Code::kInvalid);
  EXPECT_EQ(ComputeChainId({"sha512:abc"}).status().code(), Code::kInvalid);
}

TEST(BuildOciSpec, ArgsDefaultToEntrypointPlusCmd) {
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), {});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)["process"]["args"], json({"/bin/sh", "-c", "sleep 10"}));
  EXPECT_EQ((*s)["process"]["cwd"], "/srv");
  EXPECT_EQ((*s)["root"]["path"], "rootfs");
  EXPECT_EQ((*s)["hostname"], "web");
}

TEST(BuildOciSpec, SpecArgsReplaceImageCommand) {
  ContainerSpec spec = BaseSpec();
  spec.args = {"/bin/echo", "hi"};
  auto s = BuildOciSpec(spec, BaseImage(), {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)["process"]["args"], json({"/bin/echo", "hi"}));
}

TEST(BuildOciSpec, NoCommandIsInvalid) {
  EXPECT_EQ(BuildOciSpec(BaseSpec(), OciImageConfig{}, {}).status().code(), Code::kInvalid);
}

TEST(BuildOciSpec, EnvMergesImageAndSpec) {
  ContainerSpec spec = BaseSpec();
  spec.env = {{"A", "spec"}, {"B", "new"}};
  auto s = BuildOciSpec(spec, BaseImage(), {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)["process"]["env"], json({"PATH=/bin:/usr/bin", "A=spec", "B=new"}));
}

TEST(BuildOciSpec, DefaultPathWhenImageHasNone) {
  OciImageConfig img = BaseImage();
  img.env.clear();
  auto s = BuildOciSpec(BaseSpec(), img, {});
  ASSERT_TRUE(s.ok());
  ASSERT_FALSE((*s)["process"]["env"].empty());
  EXPECT_EQ((*s)["process"]["env"][0].get<std::string>().rfind("PATH=", 0), 0u);
}

TEST(BuildOciSpec, NamespacesWithoutNetwork) {
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), {});
  ASSERT_TRUE(s.ok());
  for (const char* t : {"pid", "ipc", "uts", "mount"}) EXPECT_TRUE(HasNamespace(*s, t)) << t;
  EXPECT_FALSE(HasNamespace(*s, "network")) << "no path: the container shares the node's netns";
  EXPECT_FALSE(HasNamespace(*s, "user"));
}

TEST(BuildOciSpec, JoinsTheWorkloadNetworkNamespaceByPath) {
  OciSpecOptions o;
  o.network_namespace_path = "/run/netns/kmx_node1_web";
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  int found = 0;
  for (const auto& ns : (*s)["linux"]["namespaces"]) {
    if (ns["type"] != "network") continue;
    ++found;
    EXPECT_EQ(ns["path"], "/run/netns/kmx_node1_web") << "runc joins it (and CRIU treats it as "
                                                         "external) instead of making a new one";
  }
  EXPECT_EQ(found, 1);
  for (const char* t : {"pid", "ipc", "uts", "mount"}) EXPECT_TRUE(HasNamespace(*s, t)) << t;
  o.network_namespace_path = "run/netns/x";
  EXPECT_EQ(BuildOciSpec(BaseSpec(), BaseImage(), o).status().code(), Code::kInvalid);
}

TEST(BuildOciSpec, NoNetRawInAnyCapabilitySet) {
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), {});
  ASSERT_TRUE(s.ok());
  const auto& caps = (*s)["process"]["capabilities"];
  ASSERT_FALSE(caps.empty());
  for (const auto& [set, list] : caps.items()) {
    EXPECT_EQ(std::find(list.begin(), list.end(), "CAP_NET_RAW"), list.end()) << set;
    // The rest of containerd's default set stays.
    EXPECT_NE(std::find(list.begin(), list.end(), "CAP_NET_BIND_SERVICE"), list.end()) << set;
    EXPECT_NE(std::find(list.begin(), list.end(), "CAP_CHOWN"), list.end()) << set;
  }
  for (const char* set : {"bounding", "effective", "permitted"}) EXPECT_TRUE(caps.contains(set));
}

// Names of every syscall a rule with `action` covers, without argument filters.
std::vector<std::string> Unconditional(const json& seccomp, const std::string& action) {
  std::vector<std::string> out;
  for (const auto& r : seccomp["syscalls"]) {
    if (r["action"] != action || r.contains("args")) continue;
    for (const auto& n : r["names"]) out.push_back(n.get<std::string>());
  }
  return out;
}

bool Has(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

TEST(BuildOciSpec, DefaultSeccompProfileLikeContainerd) {
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), {});
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)["linux"].contains("seccomp"));
  const json& sc = (*s)["linux"]["seccomp"];
  EXPECT_EQ(sc["defaultAction"], "SCMP_ACT_ERRNO") << "everything not listed is refused";
  EXPECT_NE(std::find(sc["architectures"].begin(), sc["architectures"].end(), "SCMP_ARCH_X86_64"),
            sc["architectures"].end());
  auto allowed = Unconditional(sc, "SCMP_ACT_ALLOW");
  // Ordinary programs and what CRIU-restored workloads use.
  for (const char* ok : {"read", "write", "openat", "mmap", "socket", "connect", "epoll_wait",
                         "futex", "rt_sigreturn", "exit_group", "arch_prctl", "ptrace", "chroot"})
    EXPECT_TRUE(Has(allowed, ok)) << ok;
  // Kernel-wide or namespace-escaping calls stay out for a container without
  // CAP_SYS_ADMIN and friends.
  for (const char* no : {"mount", "umount2", "unshare", "setns", "kexec_load", "init_module", "bpf",
                         "perf_event_open", "keyctl", "add_key", "reboot", "swapon",
                         "open_by_handle_at", "clone", "clone3", "userfaultfd"})
    EXPECT_FALSE(Has(allowed, no)) << no;
  // clone only without namespace flags; clone3 answers ENOSYS (libc falls back).
  bool clone_masked = false, clone3_enosys = false;
  for (const auto& r : sc["syscalls"]) {
    if (r["names"] == json::array({"clone"}) && r.contains("args")) {
      clone_masked = r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" &&
                     (r["args"][0]["value"].get<uint64_t>() & 0x40000000ULL) != 0;  // NEWNET
    }
    if (r["names"] == json::array({"clone3"}))
      clone3_enosys = r["action"] == "SCMP_ACT_ERRNO" && r["errnoRet"] == 38;
  }
  EXPECT_TRUE(clone_masked);
  EXPECT_TRUE(clone3_enosys);
}

TEST(BuildOciSpec, DefaultMountsAndHardening) {
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), {});
  ASSERT_TRUE(s.ok());
  for (const char* d :
       {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"})
    EXPECT_NE(FindMount(*s, d), nullptr) << d;
  auto ro = [](const json* m) {
    const auto& o = (*m)["options"];
    return std::find(o.begin(), o.end(), "ro") != o.end();
  };
  EXPECT_TRUE(ro(FindMount(*s, "/sys")));
  EXPECT_TRUE(ro(FindMount(*s, "/sys/fs/cgroup")));
  EXPECT_EQ((*FindMount(*s, "/dev"))["type"], "tmpfs");
  const auto& caps = (*s)["process"]["capabilities"]["bounding"];
  EXPECT_NE(std::find(caps.begin(), caps.end(), "CAP_KILL"), caps.end());
  EXPECT_EQ(std::find(caps.begin(), caps.end(), "CAP_SYS_ADMIN"), caps.end());
  EXPECT_EQ((*s)["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
  EXPECT_FALSE((*s)["linux"]["maskedPaths"].empty());
  EXPECT_FALSE((*s)["linux"]["readonlyPaths"].empty());
  EXPECT_TRUE((*s)["process"]["noNewPrivileges"].get<bool>());
}

TEST(BuildOciSpec, ResourcesCgroupsPathAndAnnotations) {
  ContainerSpec spec = BaseSpec();
  spec.memory_mib = 256;
  spec.cpus = 1.5;
  OciSpecOptions o;
  o.cgroup_parent = "/kmosix-node1/";
  o.annotations["io.kmosix.incarnation"] = "x1";
  auto s = BuildOciSpec(spec, BaseImage(), o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)["linux"]["resources"]["memory"]["limit"], 256LL * 1024 * 1024);
  EXPECT_EQ((*s)["linux"]["resources"]["cpu"]["quota"], 150000);
  EXPECT_EQ((*s)["linux"]["resources"]["cpu"]["period"], 100000);
  EXPECT_EQ((*s)["linux"]["cgroupsPath"], "/kmosix-node1/web");
  EXPECT_EQ((*s)["annotations"]["io.kmosix.incarnation"], "x1");
}

TEST(BuildOciSpec, NoLimitsWhenZero) {
  auto s = BuildOciSpec(BaseSpec(), BaseImage(), {});
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE((*s)["linux"]["resources"].contains("memory"));
  EXPECT_FALSE((*s)["linux"]["resources"].contains("cpu"));
  EXPECT_EQ((*s)["linux"]["cgroupsPath"], "/web");
}

TEST(BuildOciSpec, NumericUserOnly) {
  OciImageConfig img = BaseImage();
  img.user = "1000:100";
  auto s = BuildOciSpec(BaseSpec(), img, {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)["process"]["user"]["uid"], 1000);
  EXPECT_EQ((*s)["process"]["user"]["gid"], 100);
  img.user = "nobody";
  EXPECT_EQ(BuildOciSpec(BaseSpec(), img, {}).status().code(), Code::kInvalid);
}

TEST(BuildOciSpec, RejectsBadInput) {
  ContainerSpec spec = BaseSpec();
  spec.memory_mib = -1;
  EXPECT_EQ(BuildOciSpec(spec, BaseImage(), {}).status().code(), Code::kInvalid);
  spec = BaseSpec();
  spec.env = {{"A=B", "x"}};
  EXPECT_EQ(BuildOciSpec(spec, BaseImage(), {}).status().code(), Code::kInvalid);
  spec = BaseSpec();
  spec.name = "";
  EXPECT_EQ(BuildOciSpec(spec, BaseImage(), {}).status().code(), Code::kInvalid);
}

}  // namespace
}  // namespace kmosix
