// The CRDs' schema (crd/*.yaml, enforced by a real kube-apiserver 1.37) and
// the model (controller/kube/codec.h decoders, which run api/validate.h)
// give the same verdict on the same objects.
//
// A seeded, deterministic generator makes a few hundred MigratableWorkload,
// Migration and MigrationPolicy objects: a valid random object, then zero,
// one or two mutations each (types, lengths at and past every limit,
// quantities in every syntax, bad suffixes, negative and too large values,
// env names with '=' or empty or twice, names that are no DNS label or are
// 64 characters, unknown fields, nulls, pinned without nodeName...). Each is
// created on the server with dryRun=All and fieldValidation=Strict (what
// kubectl sends; nothing is stored) and decoded by the codec. The model's
// verdict for a create is: Decode* ok AND the create-only rule "pinned needs
// nodeName" (the schema's transition rule; the bridge cannot see creates).
// Every object must get the same verdict; a disagreement prints the object
// and both messages. Where both accept, the server's answer (defaults
// applied) must decode to the same spec as what was sent.
//
// Known classes the two cannot agree on by design, and so not generated:
//  - quantities that differ from a limit by less than a double's precision
//    (cpu "4096.0000000000000001", memory 1Pi plus a milli-byte): the codec
//    computes in double, the server in exact decimals;
//  - strings with multi-byte UTF-8 at a length limit: the schema counts
//    characters, api/validate.h counts bytes (image "1 to 512 bytes");
//  - MigrationPolicy metadata.name: the server's generic DNS-subdomain rule;
//    the codec does not use the name as a kmosix name (MigratableWorkload and
//    Migration names are generated, both agree on DNS labels).
//  - unknown fields at the top level or in metadata (the codec reads spec).
// KMX_CRD_SCHEMA_SEED=<n> picks another seed; KMX_CRD_SCHEMA_CASES=<n> another count.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "controller/kube/codec.h"
#include "kmosix/clock.h"
#include "kube/config.h"
#include "kube/http_client.h"
#include "support/private_kube_apiserver.h"

namespace kmosix::bridge {
namespace {

using kmosix::testing::PrivateKubeApiserver;
using nlohmann::json;

constexpr char kNs[] = "default";
constexpr char kUid[] = "6f1c3f5e-2b4d-4a44-9a51-0c4e1f7d2a10";

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed) {}
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool Coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng_); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(Int(0, static_cast<int>(v.size()) - 1))];
  }
  // A DNS-1123 label of `len` characters.
  std::string Label(int len) {
    static const std::string inner = "abcdefghijklmnopqrstuvwxyz0123456789-";
    static const std::string edge = "abcdefghijklmnopqrstuvwxyz0123456789";
    std::string s;
    for (int i = 0; i < len; ++i) {
      const std::string& from = (i == 0 || i == len - 1) ? edge : inner;
      s += from[static_cast<size_t>(Int(0, static_cast<int>(from.size()) - 1))];
    }
    return s;
  }
  std::string Label() { return Label(Coin(0.8) ? Int(1, 12) : Int(1, 63)); }
  // Printable ASCII of `len` characters (no '=' when `no_equals`).
  std::string Ascii(int len, bool no_equals = false) {
    std::string s;
    while (static_cast<int>(s.size()) < len) {
      char c = static_cast<char>(Int(0x20, 0x7e));
      if (no_equals && c == '=') continue;
      s += c;
    }
    return s;
  }

 private:
  std::mt19937_64 rng_;
};

// Quantities: strings in every syntax the schema's pattern and the codec
// know, valid and not, and JSON numbers.
const std::vector<json>& CpuQuantities() {
  // clang-format off
  static const std::vector<json> v = {
      "0", "1", "2", "0.5", "500m", "1500m", "+1", ".5", "1.", "250u", "1000000n",
      "1e3", "1E3", "1e+3", "1e-3", "1E-3", "1.5e2", ".5e1", "5.e-1", "4096", "4096000m",
      "4Ki", "4.096k", "4k", "4097", "4096001m", "5Ki", "1M", "1Mi", "1e4", "-1", "-0.5",
      "-0", "-500m", "-0.0", "", " 1", "1 ", "1KB", "1K", "1mi", "1kb", "1e", "e3", "m",
      "1.2.3", "..5", "abc", "1Gi", "0.001", "1m", "0x10", "1_000", "++1", "+-1", "1e1.5",
      "1e00003", "1e-00003", "1e999", "1e-999", "1e2147483647", "1e-2147483648",
      "1e99999999999", "1e-99999999999",
      "0000000000000000000000000000000000000000000000000000000000000000000001",
      0, 1, 4096, 4097, -1, 0.5, 1.0, true, json::array({"1"}), json::object(), nullptr};
  // clang-format on
  return v;
}
const std::vector<json>& MemoryQuantities() {
  static const std::vector<json> v = {"0",
                                      "1",
                                      "64Mi",
                                      "1Gi",
                                      "1.5Gi",
                                      "2G",
                                      "128974848",
                                      "1e9",
                                      "1Pi",
                                      "1024Ti",
                                      "1125899906842624",
                                      "1125899906842625",
                                      "1P",
                                      "1.0000001Pi",
                                      "2Pi",
                                      "1Ei",
                                      "1E",
                                      "1e15",
                                      "1e16",
                                      "-1",
                                      "-1Mi",
                                      "-0",
                                      "100m",
                                      "1k",
                                      "1Ki",
                                      "1KB",
                                      "1M",
                                      "1m",
                                      "",
                                      "Mi",
                                      "1Mb",
                                      "1 Mi",
                                      "0.5Mi",
                                      "1e400",
                                      "1e-400",
                                      "1Zi",
                                      "64MiB",
                                      0,
                                      1048576,
                                      -1,
                                      1125899906842624,
                                      1125899906842625,
                                      1.5,
                                      nullptr,
                                      false};
  return v;
}

json RandomEnv(Gen& g, int n) {
  json env = json::array();
  std::set<std::string> names;
  while (static_cast<int>(env.size()) < n) {
    std::string name = g.Coin(0.7) ? "V" + g.Label(g.Int(1, 8)) : g.Ascii(g.Int(1, 20), true);
    if (!names.insert(name).second) continue;
    json e = {{"name", name}};
    if (g.Coin(0.8)) e["value"] = g.Ascii(g.Int(0, 30));
    env.push_back(e);
  }
  return env;
}

json ValidWorkload(Gen& g) {
  json spec = {{"image", g.Coin(0.7) ? "kmosix.local/demo:latest" : g.Ascii(g.Int(1, 80))}};
  if (g.Coin(0.5)) {
    json cmd = json::array();
    for (int i = g.Int(0, 5); i > 0; --i) cmd.push_back(g.Ascii(g.Int(0, 20)));
    spec["command"] = cmd;
  }
  if (g.Coin(0.5)) spec["env"] = RandomEnv(g, g.Int(0, 4));
  if (g.Coin(0.6)) {
    json r = json::object();
    if (g.Coin()) r["cpu"] = g.Pick(std::vector<json>{"500m", "1", "2", "0.25", 1, 4096, "4Ki"});
    if (g.Coin()) r["memory"] = g.Pick(std::vector<json>{"64Mi", "1Gi", "128974848", "1Pi", 1024});
    spec["resources"] = r;
  }
  if (g.Coin(0.5)) spec["nodeName"] = g.Label();
  if (spec.contains("nodeName") && g.Coin(0.3)) spec["pinned"] = true;
  if (g.Coin(0.2)) spec["pinned"] = spec.contains("nodeName") && g.Coin();
  if (g.Coin(0.3)) spec["migratable"] = g.Coin();
  if (g.Coin(0.4)) {
    spec["restartPolicy"] =
        g.Pick(std::vector<std::string>{"Never", "FromImage", "FromCheckpoint"});
    if (spec["restartPolicy"] == "FromCheckpoint")
      spec["checkpointIntervalSeconds"] = g.Pick(std::vector<json>{10, 60, 3600, 86400});
    else if (g.Coin(0.2))
      spec["checkpointIntervalSeconds"] = 0;
  }
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "MigratableWorkload"},
          {"metadata", {{"name", g.Label()}}},
          {"spec", spec}};
}

json ValidMigration(Gen& g) {
  json spec = {{"workload", g.Label()}};
  if (g.Coin(0.6)) spec["targetNode"] = g.Label();
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "Migration"},
          {"metadata", {{"name", g.Label()}}},
          {"spec", spec}};
}

json ValidExpression(Gen& g) {
  std::string op = g.Pick(std::vector<std::string>{"In", "NotIn", "Exists", "DoesNotExist"});
  json e = {{"key", g.Coin() ? "app" : "kmosix.io/" + g.Label()}, {"operator", op}};
  if (op == "In" || op == "NotIn") {
    json vals = json::array();
    for (int i = g.Int(1, 3); i > 0; --i) vals.push_back(g.Label());
    e["values"] = vals;
  } else if (g.Coin(0.2)) {
    e["values"] = json::array();
  }
  return e;
}

json ValidPolicy(Gen& g) {
  json spec = json::object();
  if (g.Coin(0.7)) {
    json sel = json::object();
    if (g.Coin()) sel["matchLabels"] = {{"app", g.Label()}};
    if (g.Coin()) sel["matchExpressions"] = json::array({ValidExpression(g)});
    spec["selector"] = sel;
  }
  if (g.Coin(0.3)) spec["enabled"] = g.Coin();
  if (g.Coin(0.3)) spec["stabilityFactor"] = g.Pick(std::vector<json>{1, 1.5, 2, 10});
  if (g.Coin(0.3)) spec["minResidencySeconds"] = g.Pick(std::vector<json>{0, 30, 86400});
  if (g.Coin(0.3)) spec["maxMigrationsPerNode"] = g.Int(1, 64);
  if (g.Coin(0.3)) spec["maxMigrationsInCluster"] = g.Int(1, 1024);
  if (g.Coin(0.3)) spec["lowMemoryFraction"] = g.Pick(std::vector<json>{0, 0.1, 0.5, 0.9});
  if (g.Coin(0.3)) spec["memoryPsiThreshold"] = g.Pick(std::vector<json>{0, 10, 55.5, 100});
  json o = {{"apiVersion", "kmosix.io/v1alpha1"},
            {"kind", "MigrationPolicy"},
            {"metadata", {{"name", g.Label()}}}};
  if (!spec.empty() || g.Coin(0.5)) o["spec"] = spec;
  return o;
}

// A mutation names what it did and changes the object.
using Mutation = std::function<std::string(Gen&, json&)>;

// metadata.name: at and past 63, not a DNS label.
std::vector<Mutation> NameMutations() {
  return {
      [](Gen& g, json& o) {
        int len = g.Pick(std::vector<int>{62, 63, 64, 65, 100});
        o["metadata"]["name"] = g.Label(len);
        return "name of " + std::to_string(len);
      },
      [](Gen& g, json& o) {
        std::string bad = g.Pick(
            std::vector<std::string>{"Upper", "a.b", "a_b", "-a", "a-", "a b", "ab.", "x..y", "é"});
        o["metadata"]["name"] = bad;
        return "name " + bad;
      },
  };
}

std::vector<Mutation> WorkloadMutations() {
  std::vector<Mutation> m = NameMutations();
  m.insert(
      m.end(),
      {
          [](Gen& g, json& o) {
            int len = g.Pick(std::vector<int>{0, 1, 511, 512, 513});
            o["spec"]["image"] = g.Ascii(len);
            return "image of " + std::to_string(len);
          },
          [](Gen&, json& o) {
            o["spec"].erase("image");
            return std::string("no image");
          },
          [](Gen& g, json& o) {
            o["spec"]["image"] = g.Pick(std::vector<json>{nullptr, 7, true, json::array()});
            return "image " + o["spec"]["image"].dump();
          },
          [](Gen& g, json& o) {
            o["spec"]["command"] =
                g.Pick(std::vector<json>{"/bin/sh", 1, json::object(), json::array(),
                                         json::array({"a", 1}), json::array({"a", nullptr}),
                                         json::array({json::array()}), json::array({""}), nullptr});
            return "command " + o["spec"]["command"].dump();
          },
          [](Gen& g, json& o) {
            int len = g.Pick(std::vector<int>{4095, 4096, 4097});
            o["spec"]["command"] = json::array({"/bin/x", g.Ascii(len)});
            return "command item of " + std::to_string(len);
          },
          [](Gen& g, json& o) {
            int n = g.Pick(std::vector<int>{4096, 4097});
            json c = json::array();
            for (int i = 0; i < n; ++i) c.push_back("a");
            o["spec"]["command"] = c;
            return "command of " + std::to_string(n) + " items";
          },
          [](Gen& g, json& o) {
            std::string name = g.Pick(std::vector<std::string>{
                "A=B", "=", "=A", "A=", "", std::string("A\0B", 3), "A B", "_x", "ü", "1"});
            json env = o["spec"].value("env", json::array());
            if (!env.is_array()) env = json::array();
            env.push_back({{"name", name}, {"value", "v"}});
            o["spec"]["env"] = env;
            return "env name " + json(name).dump();
          },
          [](Gen& g, json& o) {
            json env = RandomEnv(g, g.Int(1, 3));
            env.push_back(env[0]);
            if (g.Coin()) env.back()["value"] = "other";
            o["spec"]["env"] = env;
            return std::string("duplicate env name");
          },
          [](Gen& g, json& o) {
            json env = RandomEnv(g, 1);
            env[0].erase("name");
            if (g.Coin()) env[0]["name"] = nullptr;
            o["spec"]["env"] = env;
            return "env item without name " + env.dump();
          },
          [](Gen& g, json& o) {
            int len = g.Pick(std::vector<int>{255, 256, 257});
            o["spec"]["env"] = json::array({{{"name", g.Ascii(len, true)}, {"value", "1"}}});
            return "env name of " + std::to_string(len);
          },
          [](Gen& g, json& o) {
            int len = g.Pick(std::vector<int>{4095, 4096, 4097});
            o["spec"]["env"] = json::array({{{"name", "A"}, {"value", g.Ascii(len)}}});
            return "env value of " + std::to_string(len);
          },
          [](Gen& g, json& o) {
            json v = g.Pick(std::vector<json>{1, true, nullptr, json::array(), ""});
            o["spec"]["env"] = json::array({{{"name", "A"}, {"value", v}}});
            return "env value " + v.dump();
          },
          [](Gen& g, json& o) {
            int n = g.Pick(std::vector<int>{1024, 1025});
            o["spec"]["env"] = RandomEnv(g, n);
            return "env of " + std::to_string(n) + " items";
          },
          [](Gen& g, json& o) {
            json v = g.Pick(std::vector<json>{"A=1", json::object(), json::array({"A=1"}), 1,
                                              json::array({{{"name", "A"}, {"valueFrom", "x"}}}),
                                              nullptr});
            o["spec"]["env"] = v;
            return "env " + v.dump();
          },
          [](Gen& g, json& o) {
            json q = g.Pick(CpuQuantities());
            if (!o["spec"]["resources"].is_object()) o["spec"]["resources"] = json::object();
            o["spec"]["resources"]["cpu"] = q;
            return "cpu " + q.dump();
          },
          [](Gen& g, json& o) {
            json q = g.Pick(MemoryQuantities());
            if (!o["spec"]["resources"].is_object()) o["spec"]["resources"] = json::object();
            o["spec"]["resources"]["memory"] = q;
            return "memory " + q.dump();
          },
          [](Gen& g, json& o) {
            json v = g.Pick(std::vector<json>{"1",
                                              json::array(),
                                              json::object(),
                                              nullptr,
                                              {{"gpu", "1"}},
                                              {{"cpu", "1"}, {"disk", "1Gi"}}});
            o["spec"]["resources"] = v;
            return "resources " + v.dump();
          },
          [](Gen& g, json& o) {
            json v = g.Pick(std::vector<json>{"", "Node1", "node_1", "node.1", "-n", "n-", 5,
                                              nullptr, g.Label(63), g.Label(64), "n1"});
            o["spec"]["nodeName"] = v;
            return "nodeName " + v.dump();
          },
          [](Gen& g, json& o) {
            o["spec"].erase("nodeName");
            o["spec"]["pinned"] = true;
            if (g.Coin()) o["spec"]["nodeName"] = nullptr;
            return std::string("pinned without nodeName");
          },
          [](Gen& g, json& o) {
            o["spec"]["pinned"] = g.Pick(std::vector<json>{"true", 1, nullptr, false});
            return "pinned " + o["spec"]["pinned"].dump();
          },
          [](Gen& g, json& o) {
            o["spec"]["migratable"] = g.Pick(std::vector<json>{"false", 0, nullptr, true, false});
            return "migratable " + o["spec"]["migratable"].dump();
          },
          [](Gen& g, json& o) {
            o["spec"]["restartPolicy"] = g.Pick(std::vector<json>{
                "Always", "never", "", 5, nullptr, "Never", "FromImage", "FromCheckpoint"});
            return "restartPolicy " + o["spec"]["restartPolicy"].dump();
          },
          [](Gen& g, json& o) {
            o["spec"]["checkpointIntervalSeconds"] = g.Pick(
                std::vector<json>{0, 9, 10, 86400, 86401, -1, 30.5, 60.0, "30", nullptr, 60});
            if (g.Coin(0.6)) o["spec"]["restartPolicy"] = "FromCheckpoint";
            return "checkpointIntervalSeconds " + o["spec"]["checkpointIntervalSeconds"].dump() +
                   " restartPolicy " + o["spec"].value("restartPolicy", json("absent")).dump();
          },
          [](Gen& g, json& o) {
            std::string f =
                g.Pick(std::vector<std::string>{"args", "replicas", "nodename", "Image", "status"});
            o["spec"][f] = "x";
            return "unknown spec." + f;
          },
          [](Gen& g, json& o) {
            json v = g.Pick(std::vector<json>{nullptr, "x", json::array(), json::object()});
            if (v.is_null() && g.Coin()) {
              o.erase("spec");
              return std::string("no spec");
            }
            o["spec"] = v;
            return "spec " + v.dump();
          },
      });
  return m;
}

std::vector<Mutation> MigrationMutations() {
  std::vector<Mutation> m = NameMutations();
  for (const char* field : {"workload", "targetNode"}) {
    std::string f = field;
    m.push_back([f](Gen& g, json& o) {
      json v = g.Pick(std::vector<json>{"", "W", "w_1", "w.1", "-w", "w-", 3, nullptr, true,
                                        g.Label(63), g.Label(64), json::array()});
      o["spec"][f] = v;
      return f + " " + v.dump();
    });
    m.push_back([f](Gen&, json& o) {
      o["spec"].erase(f);
      return "no " + f;
    });
  }
  m.push_back([](Gen& g, json& o) {
    std::string f = g.Pick(std::vector<std::string>{"target", "node", "force", "Workload"});
    o["spec"][f] = "x";
    return "unknown spec." + f;
  });
  m.push_back([](Gen& g, json& o) {
    json v = g.Pick(std::vector<json>{nullptr, "x", json::object()});
    o["spec"] = v;
    return "spec " + v.dump();
  });
  return m;
}

std::vector<Mutation> PolicyMutations() {
  std::vector<Mutation> m;
  auto number = [](const char* field, std::vector<json> values) {
    std::string f = field;
    return Mutation([f, values](Gen& g, json& o) {
      json v = g.Pick(values);
      o["spec"][f] = v;
      return f + " " + v.dump();
    });
  };
  m.push_back(number("stabilityFactor", {0.99, 1, 1.0, 10, 10.01, 11, -1, "2", nullptr, 0}));
  m.push_back(number("minResidencySeconds",
                     {-1, 0, 1, 86400, 86401, 1.5, 30.0, "30", 1e10, 2147483648LL, nullptr}));
  m.push_back(number("maxMigrationsPerNode", {0, 1, 64, 65, 1.0, 2.5, -3, "4", nullptr}));
  m.push_back(number("maxMigrationsInCluster", {0, 1, 1024, 1025, 3.5, 100.0, "9", nullptr}));
  m.push_back(number("lowMemoryFraction", {-0.1, 0, 0.9, 0.91, 1, 0.5, "0.5", nullptr}));
  m.push_back(number("memoryPsiThreshold", {-1, 0, 100, 100.5, 50, "10", nullptr}));
  m.push_back(number("enabled", {"yes", 1, true, false, nullptr}));
  m.push_back([](Gen& g, json& o) {
    std::string f = g.Pick(std::vector<std::string>{"stability", "selectors", "Enabled", "x"});
    o["spec"][f] = 1;
    return "unknown spec." + f;
  });
  m.push_back([](Gen& g, json& o) {
    json v = g.Pick(std::vector<json>{"app=x",
                                      json::array(),
                                      nullptr,
                                      json::object(),
                                      {{"matchLabels", {{"a", "b"}}}, {"match", 1}}});
    o["spec"]["selector"] = v;
    return "selector " + v.dump();
  });
  m.push_back([](Gen& g, json& o) {
    int n = g.Pick(std::vector<int>{64, 65});
    json ml = json::object();
    for (int i = 0; i < n; ++i) ml["k" + std::to_string(i)] = "v";
    o["spec"]["selector"] = {{"matchLabels", ml}};
    return std::to_string(n) + " matchLabels";
  });
  m.push_back([](Gen& g, json& o) {
    json v = g.Pick(std::vector<json>{g.Label(63), g.Ascii(64), "", 1, nullptr, true});
    o["spec"]["selector"] = {{"matchLabels", {{"app", v}}}};
    return "matchLabels value " + v.dump();
  });
  m.push_back([](Gen& g, json& o) {
    json e = ValidExpression(g);
    int what = g.Int(0, 9);
    std::string said;
    switch (what) {
      case 0:
        e["operator"] = g.Pick(std::vector<json>{"in", "Equals", "", 1, nullptr});
        said = "operator " + e["operator"].dump();
        break;
      case 1:
        e["operator"] = g.Pick(std::vector<std::string>{"In", "NotIn"});
        if (g.Coin()) {
          e.erase("values");
        } else {
          e["values"] = json::array();
        }
        said = "In/NotIn without values";
        break;
      case 2:
        e["operator"] = g.Pick(std::vector<std::string>{"Exists", "DoesNotExist"});
        e["values"] = json::array({"x"});
        said = "Exists with values";
        break;
      case 3:
        e["key"] = g.Pick(std::vector<json>{"", nullptr, 5});
        said = "key " + e["key"].dump();
        break;
      case 4:
        e.erase("key");
        said = "no key";
        break;
      case 5: {
        int len = g.Pick(std::vector<int>{316, 317, 318});
        e["key"] = g.Ascii(len);
        said = "key of " + std::to_string(len);
        break;
      }
      case 6:
        e["operator"] = "In";
        e["values"] = json::array({g.Pick(std::vector<json>{g.Ascii(63), g.Ascii(64), 1, ""})});
        said = "values item " + e["values"][0].dump();
        break;
      case 7: {
        int n = g.Pick(std::vector<int>{64, 65});
        e["operator"] = "NotIn";
        e["values"] = json::array();
        for (int i = 0; i < n; ++i) e["values"].push_back("v" + std::to_string(i));
        said = std::to_string(n) + " values";
        break;
      }
      case 8:
        e[g.Pick(std::vector<std::string>{"op", "value", "Key"})] = "x";
        said = "unknown field in an expression";
        break;
      default:
        e = g.Pick(std::vector<json>{"app", nullptr, json::array()});
        said = "expression " + e.dump();
        break;
    }
    o["spec"]["selector"] = {{"matchExpressions", json::array({e})}};
    return said;
  });
  m.push_back([](Gen& g, json& o) {
    int n = g.Pick(std::vector<int>{64, 65});
    json exprs = json::array();
    for (int i = 0; i < n; ++i)
      exprs.push_back({{"key", "k" + std::to_string(i)}, {"operator", "Exists"}});
    o["spec"]["selector"] = {{"matchExpressions", exprs}};
    return std::to_string(n) + " matchExpressions";
  });
  m.push_back([](Gen& g, json& o) {
    json v = g.Pick(std::vector<json>{nullptr, "x", json::array()});
    o["spec"] = v;
    return "spec " + v.dump();
  });
  return m;
}

struct Case {
  kube::Resource resource;
  std::string what;
  json object;
};

std::vector<Case> Generate(uint64_t seed, int count) {
  Gen g(seed);
  const std::vector<Mutation> mw = WorkloadMutations(), mig = MigrationMutations(),
                              pol = PolicyMutations();
  std::vector<Case> out;
  for (int i = 0; i < count; ++i) {
    Case c;
    const std::vector<Mutation>* muts = nullptr;
    switch (i % 5) {  // workloads have the most rules: 3 of 5
      case 0:
      case 1:
      case 2:
        c.resource = kube::MigratableWorkloads();
        c.object = ValidWorkload(g);
        muts = &mw;
        break;
      case 3:
        c.resource = kube::Migrations();
        c.object = ValidMigration(g);
        muts = &mig;
        break;
      default:
        c.resource = kube::MigrationPolicies();
        c.object = ValidPolicy(g);
        muts = &pol;
        break;
    }
    c.what = c.resource.kind + " #" + std::to_string(i) + ":";
    const int n = g.Int(0, 9) < 2 ? 0 : (g.Coin(0.7) ? 1 : 2);
    for (int k = 0; k < n; ++k) {
      if (!c.object.contains("spec") || !c.object["spec"].is_object()) {
        c.object["spec"] = json::object();  // a later mutation needs a spec to change
        if (c.resource.kind == "MigratableWorkload") c.object["spec"]["image"] = "i";
        if (c.resource.kind == "Migration") c.object["spec"]["workload"] = "w";
      }
      c.what += " " + g.Pick(*muts)(g, c.object) + ";";
    }
    if (n == 0) c.what += " valid";
    out.push_back(std::move(c));
  }
  // Every quantity of the lists, once each, on a plain workload.
  for (const char* field : {"cpu", "memory"}) {
    const auto& qs = std::string(field) == "cpu" ? CpuQuantities() : MemoryQuantities();
    for (const json& q : qs) {
      Case c;
      c.resource = kube::MigratableWorkloads();
      c.object = {{"apiVersion", "kmosix.io/v1alpha1"},
                  {"kind", "MigratableWorkload"},
                  {"metadata", {{"name", "q" + std::to_string(out.size())}}},
                  {"spec", {{"image", "i"}, {"resources", {{field, q}}}}}};
      c.what = "MigratableWorkload #" + std::to_string(out.size()) + ": " + field + " " + q.dump();
      out.push_back(std::move(c));
    }
  }
  return out;
}

// The model's verdict: the decoder (with what the server would fill in:
// namespace, uid) and, for a create, "pinned needs nodeName".
Status ModelVerdict(const Case& c, json* decoded) {
  json o = c.object;
  if (o.contains("metadata") && o["metadata"].is_object()) {
    o["metadata"]["uid"] = kUid;
    if (c.resource.namespaced) o["metadata"]["namespace"] = kNs;
  }
  if (c.resource.kind == "MigratableWorkload") {
    auto s = DecodeMigratableWorkload(o);
    if (!s.ok()) return s.status();
    if (s->pinned && s->node.empty())
      return InvalidError("spec.pinned needs spec.nodeName at creation");
    *decoded = MigratableWorkloadObject(*s)["spec"];
    return Status::Ok();
  }
  if (c.resource.kind == "Migration") {
    auto s = DecodeMigration(o);
    if (!s.ok()) return s.status();
    *decoded = MigrationObject(kNs, "x", *s)["spec"];
    return Status::Ok();
  }
  auto s = DecodeMigrationPolicy(o);
  if (!s.ok()) return s.status();
  *decoded = MigrationPolicyObject(*s)["spec"];
  return Status::Ok();
}

std::string Short(const std::string& s, size_t n = 1500) {
  return s.size() <= n ? s : s.substr(0, n) + "... (" + std::to_string(s.size()) + " bytes)";
}

TEST(CrdSchemaTest, ModelAndSchemaGiveTheSameVerdict) {
  if (auto why = kmosix::testing::KubeApiserverSkipReason(); !why.empty()) {
    GTEST_SKIP() << "KUBE-APISERVER TEST SKIPPED: " << why;
  }
  PrivateKubeApiserver api;
  ASSERT_TRUE(api.Start()) << api.error();
  const std::string crd = kmosix::testing::KubeRepoRoot() + "/crd/";
  for (const char* f : {"kmosix.io_migratableworkloads.yaml", "kmosix.io_migrations.yaml",
                        "kmosix.io_migrationpolicies.yaml"}) {
    ASSERT_TRUE(api.ApplyCrds(crd + f)) << api.error() << " (" << api.dir() << "/kubectl.log)";
  }
  SystemClock clock;
  kube::HttpClient::Options o;
  o.dry_run = true;
  o.field_validation = "Strict";
  auto client = kube::HttpClient::New(api.AdminConfig(), clock, o);
  ASSERT_TRUE(client.ok()) << client.status().ToString();

  // Discovery of a new CRD lags Established by a moment: the first create
  // of each kind may answer 404; wait for it (bounded).
  for (const auto& r :
       {kube::MigratableWorkloads(), kube::Migrations(), kube::MigrationPolicies()}) {
    bool served = false;
    for (int i = 0; i < 120 && !served; ++i) {
      served = (*client)->List(r, r.namespaced ? kNs : "", {}).ok();
      if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ASSERT_TRUE(served) << r.plural << " never served";
  }

  uint64_t seed = 20260517;
  int count = 450;
  if (const char* s = std::getenv("KMX_CRD_SCHEMA_SEED")) seed = std::strtoull(s, nullptr, 10);
  if (const char* s = std::getenv("KMX_CRD_SCHEMA_CASES")) count = std::atoi(s);
  std::vector<Case> cases = Generate(seed, count);

  std::map<std::string, std::pair<int, int>> tally;  // kind -> (accepted, refused)
  int disagreements = 0;
  for (const Case& c : cases) {
    json decoded;
    Status model = ModelVerdict(c, &decoded);
    auto server = (*client)->Create(c.resource, c.resource.namespaced ? kNs : "", c.object);
    ASSERT_TRUE(server.ok() || server.status().code() == Code::kInvalid)
        << c.what << ": the server neither accepted nor refused it: " << server.status().ToString();
    if (server.ok() != model.ok()) {
      ++disagreements;
      ADD_FAILURE() << c.what << "\n  object: " << Short(c.object.dump())
                    << "\n  server: " << (server.ok() ? "ACCEPTED" : server.status().ToString())
                    << "\n  model:  " << (model.ok() ? "ACCEPTED" : model.ToString());
      continue;
    }
    auto& t = tally[c.resource.kind];
    (server.ok() ? t.first : t.second)++;
    if (server.ok()) {
      // The server's object (defaults applied) decodes to the same spec.
      Case back{c.resource, c.what, *server};
      json again;
      Status s = ModelVerdict(back, &again);
      EXPECT_TRUE(s.ok()) << c.what << ": the server's answer does not decode: " << s.ToString()
                          << "\n  " << Short(server->dump());
      EXPECT_EQ(again, decoded) << c.what << ": the server's defaults change the decoded spec"
                                << "\n  sent: " << Short(c.object.dump())
                                << "\n  answer: " << Short(server->dump());
    }
  }
  std::string summary;
  for (const auto& [kind, t] : tally)
    summary += kind + ": " + std::to_string(t.first) + " accepted, " + std::to_string(t.second) +
               " refused; ";
  std::cout << "[ verdicts ] seed " << seed << ", " << cases.size() << " objects, " << disagreements
            << " disagreements; " << summary << "\n";
  // The generator must exercise both verdicts for every kind (else the
  // agreement above proves little).
  for (const char* kind : {"MigratableWorkload", "Migration", "MigrationPolicy"}) {
    EXPECT_GE(tally[kind].first, 15) << kind << ": too few accepted objects: " << summary;
    EXPECT_GE(tally[kind].second, 15) << kind << ": too few refused objects: " << summary;
  }
}

}  // namespace
}  // namespace kmosix::bridge
