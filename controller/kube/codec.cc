#include "controller/kube/codec.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <set>

#include "api/validate.h"

namespace kmosix::bridge {
namespace {

using nlohmann::json;

std::string HexSha256(const std::string& in, size_t hex_digits) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(in.data(), in.size(), md, &len, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len && out.size() < hex_digits; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  out.resize(std::min(out.size(), hex_digits));
  return out;
}

// A field of an object that must be an object when present.
const json* Child(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

StatusOr<std::string> OptString(const json& j, const char* key, const std::string& path) {
  const json* v = Child(j, key);
  if (!v) return std::string();
  if (!v->is_string()) return InvalidError(path + ": must be a string");
  return v->get<std::string>();
}

StatusOr<bool> OptBool(const json& j, const char* key, const std::string& path, bool def) {
  const json* v = Child(j, key);
  if (!v) return def;
  if (!v->is_boolean()) return InvalidError(path + ": must be a boolean");
  return v->get<bool>();
}

// A decimal number with an optional SI/binary suffix, as resource.Quantity.
StatusOr<double> ParseQuantity(const json& q, const std::string& path) {
  if (q.is_number()) {
    // int-or-string: the API server refuses 0.5 and 1.0 as JSON numbers.
    if (!q.is_number_integer())
      return InvalidError(path + ": a number must be an integer (write \"0.5\" as a string)");
    double v = q.get<double>();
    if (!std::isfinite(v) || v < 0) return InvalidError(path + ": must be a non-negative quantity");
    return v;
  }
  if (!q.is_string())
    return InvalidError(path + ": must be a quantity (a string like \"500m\" or \"64Mi\")");
  const std::string s = q.get<std::string>();
  if (s.empty() || s.size() > 64)
    return InvalidError(path + ": must be a quantity like \"500m\" or \"64Mi\"");
  size_t i = 0;
  const bool negative = s[i] == '-';
  if (s[i] == '+' || s[i] == '-') ++i;
  const size_t digits_start = i;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  std::string number = s.substr(digits_start, i - digits_start);
  if (number.empty() || std::count(number.begin(), number.end(), '.') > 1 || number == ".")
    return InvalidError(path + ": \"" + s + "\" is not a quantity");
  std::string suffix = s.substr(i);
  double exp10 = 0, mult = 1;
  static const std::map<std::string, double> kBinary = {{"Ki", 1024.0},
                                                        {"Mi", 1024.0 * 1024},
                                                        {"Gi", 1024.0 * 1024 * 1024},
                                                        {"Ti", 1024.0 * 1024 * 1024 * 1024},
                                                        {"Pi", std::pow(1024.0, 5)},
                                                        {"Ei", std::pow(1024.0, 6)}};
  static const std::map<std::string, double> kDecimal = {{"n", -9}, {"u", -6}, {"m", -3}, {"", 0},
                                                         {"k", 3},  {"M", 6},  {"G", 9},  {"T", 12},
                                                         {"P", 15}, {"E", 18}};
  if (auto b = kBinary.find(suffix); b != kBinary.end()) {
    mult = b->second;
  } else if (auto d = kDecimal.find(suffix); d != kDecimal.end()) {
    exp10 = d->second;
  } else if (!suffix.empty() && (suffix[0] == 'e' || suffix[0] == 'E')) {
    std::string e = suffix.substr(1);
    size_t k = (!e.empty() && (e[0] == '+' || e[0] == '-')) ? 1 : 0;
    if (e.size() <= k || !std::all_of(e.begin() + k, e.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        }))
      return InvalidError(path + ": \"" + s + "\" is not a quantity");
    // Leading zeros are allowed ("1e003"), then at most 3 digits: the CRD's
    // limit (kube-apiserver hangs comparing "1e2147483647").
    size_t first = e.find_first_not_of('0', k);
    if (first != std::string::npos && e.size() - first > 3)
      return InvalidError(path + ": \"" + s + "\" has an exponent of more than 3 digits");
    exp10 = first == std::string::npos ? 0.0 : std::stod(e.substr(first));
    if (k == 1 && e[0] == '-') exp10 = -exp10;
  } else {
    return InvalidError(path + ": \"" + s + "\" has an unknown suffix \"" + suffix + "\"");
  }
  // One correctly rounded conversion of number x 10^exp10 (strtod, which
  // does not throw; an underflow is 0): a value written back with %.17g
  // reads back as the same double, which number * pow(10, exp10) did not
  // ("0.00010000m" came back 1 ulp off; found by kube_codec_fuzz).
  const std::string decimal = number + "e" + std::to_string(static_cast<int>(exp10));
  double v = std::strtod(decimal.c_str(), nullptr) * mult;
  if (!std::isfinite(v)) return InvalidError(path + ": \"" + s + "\" is out of range");
  if (negative && v != 0) return InvalidError(path + ": must be a non-negative quantity");
  return v == 0 ? 0.0 : v;
}

// Characters (UTF-8 code points), as the schema's maxLength counts them.
size_t Chars(const std::string& s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// A JSON number with an integral value (the server reads 30.0 as 30).
bool IsIntegral(const json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && std::floor(d) == d;
}

// Limits the CRDs' schema (crd/*.yaml) puts on top of api/validate.h, so an
// object gets the same verdict from the codec as from the API server
// (tests/controller/kube/crd_schema_test.cc).
constexpr size_t kMaxCommandItemChars = 4096;
constexpr size_t kMaxEnvVars = 1024;
constexpr size_t kMaxEnvNameChars = 256;
constexpr size_t kMaxEnvValueChars = 4096;
constexpr size_t kMaxSelectorTerms = 64;
constexpr size_t kMaxLabelValueChars = 63;
constexpr size_t kMaxSelectorKeyChars = 317;

std::string PhaseOf(const api::Migration& m) {
  return std::string(api::MigrationPhaseName(m.phase));
}

}  // namespace

std::string WorkloadNameFor(const std::string& ns, const std::string& name) {
  std::string base = ns + "-" + name;
  if (base.size() > 54) base.resize(54);
  while (!base.empty() && base.back() == '-') base.pop_back();
  return base + "-" + HexSha256(ns + "/" + name, 8);
}

std::string MigrationIdFor(const std::string& uid) { return "m-" + HexSha256("uid/" + uid, 16); }

std::string MigrationIdForMove(const std::string& uid, int64_t generation) {
  return "m-" + HexSha256("move/" + uid + "/" + std::to_string(generation), 16);
}

StatusOr<double> ParseCpuQuantity(const json& q) { return ParseQuantity(q, "spec.resources.cpu"); }

StatusOr<int64_t> ParseMemoryQuantityMiB(const json& q) {
  KMX_ASSIGN_OR_RETURN(double bytes, ParseQuantity(q, "spec.resources.memory"));
  const double mib = std::ceil(bytes / (1024.0 * 1024.0));
  if (mib > static_cast<double>(api::kMaxMemoryMiB))
    return InvalidError("spec.resources.memory: at most " + std::to_string(api::kMaxMemoryMiB) +
                        " MiB");
  return static_cast<int64_t>(mib);
}

std::string FormatTime(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool ObjectMeta::HasFinalizer(const std::string& f) const {
  return std::find(finalizers.begin(), finalizers.end(), f) != finalizers.end();
}

StatusOr<ObjectMeta> DecodeMeta(const json& object) {
  const json* meta = Child(object, "metadata");
  if (!meta || !meta->is_object()) return InvalidError("metadata: missing");
  ObjectMeta m;
  KMX_ASSIGN_OR_RETURN(m.namespace_, OptString(*meta, "namespace", "metadata.namespace"));
  KMX_ASSIGN_OR_RETURN(m.name, OptString(*meta, "name", "metadata.name"));
  KMX_ASSIGN_OR_RETURN(m.uid, OptString(*meta, "uid", "metadata.uid"));
  KMX_ASSIGN_OR_RETURN(m.resource_version,
                       OptString(*meta, "resourceVersion", "metadata.resourceVersion"));
  KMX_ASSIGN_OR_RETURN(m.creation_timestamp,
                       OptString(*meta, "creationTimestamp", "metadata.creationTimestamp"));
  if (m.name.empty()) return InvalidError("metadata.name: missing");
  if (const json* g = Child(*meta, "generation")) {
    if (!g->is_number_integer()) return InvalidError("metadata.generation: must be an integer");
    m.generation = g->get<int64_t>();
  }
  m.deleting = Child(*meta, "deletionTimestamp") != nullptr;
  if (const json* f = Child(*meta, "finalizers")) {
    if (!f->is_array()) return InvalidError("metadata.finalizers: must be a list");
    for (const auto& e : *f) {
      if (!e.is_string()) return InvalidError("metadata.finalizers: must be strings");
      m.finalizers.push_back(e.get<std::string>());
    }
  }
  if (const json* l = Child(*meta, "labels")) {
    if (!l->is_object()) return InvalidError("metadata.labels: must be a map");
    for (const auto& [k, v] : l->items()) {
      if (!v.is_string()) return InvalidError("metadata.labels." + k + ": must be a string");
      m.labels[k] = v.get<std::string>();
    }
  }
  return m;
}

StatusOr<api::WorkloadSpec> DecodeMigratableWorkload(const json& object) {
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(object));
  const json* spec = Child(object, "spec");
  if (!spec || !spec->is_object()) return InvalidError("spec: missing");
  static const std::set<std::string> kFields = {
      "image",      "command",       "env",
      "resources",  "nodeName",      "pinned",
      "migratable", "restartPolicy", "checkpointIntervalSeconds"};
  for (const auto& [k, v] : spec->items())
    if (!kFields.count(k)) return InvalidError("spec." + k + ": unknown field");
  // The schema's: the object's own name is a DNS label (WorkloadNameFor
  // would make a valid kmosix name of almost anything).
  if (Status n = api::ValidateName(meta.name); !n.ok()) return n.Annotate("metadata.name");
  api::WorkloadSpec s;
  s.name = WorkloadNameFor(meta.namespace_, meta.name);
  s.origin = api::WorkloadOrigin{kOriginKind, meta.namespace_, meta.name, meta.uid};
  KMX_ASSIGN_OR_RETURN(s.image, OptString(*spec, "image", "spec.image"));
  if (s.image.empty()) return InvalidError("spec.image: required");
  if (const json* c = Child(*spec, "command")) {
    if (!c->is_array()) return InvalidError("spec.command: must be a list of strings");
    for (const auto& a : *c) {
      if (!a.is_string()) return InvalidError("spec.command: must be a list of strings");
      s.args.push_back(a.get<std::string>());
      if (Chars(s.args.back()) > kMaxCommandItemChars)
        return InvalidError("spec.command: an item longer than 4096 characters");
    }
  }
  if (const json* e = Child(*spec, "env")) {
    if (!e->is_array()) return InvalidError("spec.env: must be a list of {name, value}");
    if (e->size() > kMaxEnvVars) return InvalidError("spec.env: at most 1024 variables");
    for (const auto& var : *e) {
      if (!var.is_object()) return InvalidError("spec.env: must be a list of {name, value}");
      KMX_ASSIGN_OR_RETURN(std::string name, OptString(var, "name", "spec.env.name"));
      KMX_ASSIGN_OR_RETURN(std::string value,
                           OptString(var, "value", "spec.env[" + name + "].value"));
      for (const auto& [k, v] : var.items())
        if (k != "name" && k != "value")
          return InvalidError("spec.env[" + name + "]." + k + ": unknown field");
      if (Chars(name) > kMaxEnvNameChars)
        return InvalidError("spec.env.name: at most 256 characters");
      if (Chars(value) > kMaxEnvValueChars)
        return InvalidError("spec.env[" + name + "].value: at most 4096 characters");
      if (s.env.count(name)) return InvalidError("spec.env: \"" + name + "\" appears twice");
      s.env[name] = value;
    }
  }
  if (const json* r = Child(*spec, "resources")) {
    if (!r->is_object()) return InvalidError("spec.resources: must be {cpu, memory}");
    for (const auto& [k, v] : r->items()) {
      if (v.is_null()) continue;  // the API server drops nulls
      if (k == "cpu") {
        KMX_ASSIGN_OR_RETURN(s.cpus, ParseCpuQuantity(v));
      } else if (k == "memory") {
        KMX_ASSIGN_OR_RETURN(s.memory_mib, ParseMemoryQuantityMiB(v));
      } else {
        return InvalidError("spec.resources." + k + ": unknown field");
      }
    }
  }
  KMX_ASSIGN_OR_RETURN(s.node, OptString(*spec, "nodeName", "spec.nodeName"));
  if (Child(*spec, "nodeName") && s.node.empty())
    return InvalidError("spec.nodeName: must be a node's name (leave it out to let kmosix place)");
  KMX_ASSIGN_OR_RETURN(s.pinned, OptBool(*spec, "pinned", "spec.pinned", false));
  KMX_ASSIGN_OR_RETURN(s.migratable, OptBool(*spec, "migratable", "spec.migratable", true));
  if (const json* p = Child(*spec, "restartPolicy")) {
    if (!p->is_string())
      return InvalidError("spec.restartPolicy: must be one of Never, FromImage, FromCheckpoint");
    auto policy = api::ParseRestartPolicy(p->get_ref<const std::string&>());
    if (!policy.ok()) return policy.status().Annotate("spec.restartPolicy");
    s.restart_policy = *policy;
  }
  if (const json* c = Child(*spec, "checkpointIntervalSeconds")) {
    // The server reads 30.0 as 30; the schema's limits decide the range.
    if (!IsIntegral(*c) || c->get<double>() < 0 ||
        c->get<double>() > static_cast<double>(api::kMaxCheckpointIntervalSeconds))
      return InvalidError("spec.checkpointIntervalSeconds: must be an integer from " +
                          std::to_string(api::kMinCheckpointIntervalSeconds) + " to " +
                          std::to_string(api::kMaxCheckpointIntervalSeconds));
    s.checkpoint_interval_seconds = static_cast<int64_t>(c->get<double>());
  }
  Status valid = api::ValidateWorkloadSpec(s, "MigratableWorkload");
  if (!valid.ok()) return valid;
  return s;
}

json MigratableWorkloadObject(const api::WorkloadSpec& spec) {
  json meta = json::object();
  if (spec.origin) {
    meta = {{"name", spec.origin->name}, {"namespace", spec.origin->namespace_}};
    if (!spec.origin->uid.empty()) meta["uid"] = spec.origin->uid;
  }
  json s = {{"image", spec.image}, {"pinned", spec.pinned}, {"migratable", spec.migratable}};
  if (!spec.args.empty()) s["command"] = spec.args;
  if (!spec.env.empty()) {
    json env = json::array();
    for (const auto& [k, v] : spec.env) env.push_back({{"name", k}, {"value", v}});
    s["env"] = env;
  }
  json resources = json::object();
  if (spec.cpus > 0) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", spec.cpus);
    resources["cpu"] = buf;
  }
  if (spec.memory_mib > 0) resources["memory"] = std::to_string(spec.memory_mib) + "Mi";
  if (!resources.empty()) s["resources"] = resources;
  if (!spec.node.empty()) s["nodeName"] = spec.node;
  s["restartPolicy"] = api::RestartPolicyName(spec.restart_policy);
  if (spec.checkpoint_interval_seconds != 0)
    s["checkpointIntervalSeconds"] = spec.checkpoint_interval_seconds;
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "MigratableWorkload"},
          {"metadata", meta},
          {"spec", s}};
}

json MergeConditions(const json& old_status, const std::vector<Condition>& now, int64_t generation,
                     int64_t now_ms) {
  std::map<std::string, json> old;
  if (const json* c = Child(old_status, "conditions"); c && c->is_array())
    for (const auto& e : *c)
      if (e.is_object() && e.contains("type") && e["type"].is_string()) old[e["type"]] = e;
  json out = json::array();
  for (const auto& c : now) {
    std::string since = FormatTime(now_ms);
    if (auto o = old.find(c.type); o != old.end() && o->second.value("status", "") == c.status &&
                                   o->second.contains("lastTransitionTime") &&
                                   o->second["lastTransitionTime"].is_string())
      since = o->second["lastTransitionTime"];
    out.push_back({{"type", c.type},
                   {"status", c.status},
                   {"reason", c.reason},
                   {"message", c.message},
                   {"lastTransitionTime", since},
                   {"observedGeneration", generation}});
  }
  return out;
}

json MigratableWorkloadStatus(const json& old_status, const WorkloadStatusInput& in,
                              int64_t now_ms) {
  json s = json::object();
  s["observedGeneration"] = in.generation;
  s["workload"] = in.workload;
  std::vector<Condition> conds;
  if (in.rejected) {
    Condition c = *in.rejected;
    c.type = "Accepted";
    c.status = "False";
    conds.push_back(c);
    s["phase"] =
        in.view ? std::string(api::WorkloadPhaseName(in.view->workload.status.phase)) : "Pending";
    s["message"] = c.message;
  } else {
    conds.push_back({"Accepted", "True", "Accepted", "kmosix runs it as workload " + in.workload});
  }
  if (in.view) {
    const api::WorkloadStatus& st = in.view->workload.status;
    const std::string phase(api::WorkloadPhaseName(st.phase));
    s["phase"] = phase;
    if (!st.node.empty()) s["node"] = st.node;
    s["epoch"] = st.epoch;
    s["migrations"] = static_cast<int64_t>(st.migrations.size());
    s["restarts"] = st.restarts;
    if (st.started_ms > 0) s["startTime"] = FormatTime(st.started_ms);
    if (!in.rejected) s["message"] = !in.migration_note.empty() ? in.migration_note : st.message;
    if (!st.restore_checkpoint.empty()) s["restoreCheckpoint"] = st.restore_checkpoint;
    if (st.recovery) {
      const api::Recovery& r = *st.recovery;
      s["recovery"] = {{"policy", api::RestartPolicyName(r.policy)},
                       {"lostNode", r.lost_node},
                       {"lostMs", r.lost_ms},
                       {"restartedMs", r.restarted_ms},
                       {"checkpoint", r.checkpoint},
                       {"checkpointTakenMs", r.checkpoint_taken_ms},
                       {"progressLostMs", r.progress_lost_ms},
                       {"count", r.count}};
    }
    const bool placed = !st.node.empty();
    conds.push_back({"Placed", placed ? "True" : "False", placed ? "Placed" : "Pending",
                     placed ? "owned by node " + st.node + " at epoch " + std::to_string(st.epoch)
                            : "waiting for a node"});
    const bool running =
        st.phase == api::WorkloadPhase::kRunning || st.phase == api::WorkloadPhase::kMigrating;
    conds.push_back({"Running", running ? "True" : "False", running ? "Running" : phase,
                     running ? "running on " + st.node : st.message});
    const bool migrating = st.phase == api::WorkloadPhase::kMigrating;
    conds.push_back({"Migrating", migrating ? "True" : "False", migrating ? "Migrating" : "Idle",
                     migrating ? "migration " + st.migration + " in flight" : ""});
  } else if (!s.contains("phase")) {
    s["phase"] = "Pending";
  }
  if (s.contains("message") && s["message"].is_string() && s["message"].get<std::string>().empty())
    s.erase("message");
  s["conditions"] = MergeConditions(old_status, conds, in.generation, now_ms);
  return s;
}

StatusOr<MigrationSpec> DecodeMigration(const json& object) {
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(object));
  if (Status n = api::ValidateName(meta.name); !n.ok()) return n.Annotate("metadata.name");
  const json* spec = Child(object, "spec");
  if (!spec || !spec->is_object()) return InvalidError("spec: missing");
  for (const auto& [k, v] : spec->items())
    if (k != "workload" && k != "targetNode") return InvalidError("spec." + k + ": unknown field");
  MigrationSpec m;
  KMX_ASSIGN_OR_RETURN(m.workload, OptString(*spec, "workload", "spec.workload"));
  KMX_ASSIGN_OR_RETURN(m.target_node, OptString(*spec, "targetNode", "spec.targetNode"));
  if (Status s = api::ValidateName(m.workload); !s.ok()) return s.Annotate("spec.workload");
  if (Child(*spec, "targetNode"))
    if (Status s = api::ValidateName(m.target_node); !s.ok()) return s.Annotate("spec.targetNode");
  return m;
}

json MigrationObject(const std::string& ns, const std::string& name, const MigrationSpec& spec) {
  json s = {{"workload", spec.workload}};
  if (!spec.target_node.empty()) s["targetNode"] = spec.target_node;
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "Migration"},
          {"metadata", {{"name", name}, {"namespace", ns}}},
          {"spec", s}};
}

json MigrationStatus(const json& old_status, int64_t generation, const api::Migration& m,
                     int64_t now_ms) {
  json s = {{"observedGeneration", generation}, {"phase", PhaseOf(m)},    {"id", m.id},
            {"sourceNode", m.source},           {"targetNode", m.target}, {"reason", m.reason}};
  if (!m.error.empty()) s["message"] = m.error;
  if (m.created_ms > 0) s["startTime"] = FormatTime(m.created_ms);
  const bool final = api::IsFinal(m.phase);
  if (final && m.finished_ms > 0) s["completionTime"] = FormatTime(m.finished_ms);
  if (m.report) {
    // Milliseconds are what a person reads (kubectl's Downtime column).
    if (m.report->timings.downtime > 0)
      s["downtimeSeconds"] = std::round(m.report->timings.downtime * 1000.0) / 1000.0;
    if (m.report->bytes > 0) s["bytes"] = static_cast<int64_t>(m.report->bytes);
  }
  // Which fault it met and how it ended (the REST record's, less its times).
  if (m.fault) {
    json f = {{"kind", api::FaultKindName(m.fault->kind)},
              {"phase", api::MigrationPhaseName(m.fault->phase)}};
    if (!m.fault->node.empty()) f["node"] = m.fault->node;
    if (!m.fault->message.empty()) f["message"] = m.fault->message;
    s["fault"] = std::move(f);
  }
  if (final && m.resolution) {
    s["resolution"] = {{"outcome", api::MigrationOutcomeName(m.resolution->outcome)},
                       {"decidedBy", api::DeciderName(m.resolution->decided_by)}};
  }
  std::vector<Condition> conds = {{"Accepted", "True", "Ordered", m.reason}};
  // Past the commit point a delete no longer cancels it.
  const bool committed =
      m.phase == api::MigrationPhase::kCommitting || m.phase == api::MigrationPhase::kSucceeded;
  conds.push_back({"Committed", committed ? "True" : "False", PhaseOf(m),
                   committed ? "ownership moved to " + m.target : ""});
  if (!final) {
    conds.push_back({"Succeeded", "Unknown", PhaseOf(m), "in flight"});
  } else if (m.phase == api::MigrationPhase::kSucceeded) {
    conds.push_back({"Succeeded", "True", "Succeeded", "moved " + m.source + " -> " + m.target});
  } else {
    conds.push_back({"Succeeded", "False", PhaseOf(m), m.error});
  }
  s["conditions"] = MergeConditions(old_status, conds, generation, now_ms);
  return s;
}

json MigrationRefusedStatus(const json& old_status, int64_t generation, const std::string& reason,
                            const std::string& message, int64_t now_ms) {
  json s = {{"observedGeneration", generation}, {"phase", "Failed"}, {"message", message}};
  if (const json* c = Child(old_status, "completionTime"); c && c->is_string())
    s["completionTime"] = *c;
  else
    s["completionTime"] = FormatTime(now_ms);
  s["conditions"] = MergeConditions(old_status,
                                    {{"Accepted", "False", reason, message},
                                     {"Committed", "False", reason, ""},
                                     {"Succeeded", "False", reason, message}},
                                    generation, now_ms);
  return s;
}

bool IsFinalMigrationStatus(const json& object) {
  const json* st = Child(object, "status");
  if (!st) return false;
  const json* p = Child(*st, "phase");
  if (!p || !p->is_string()) return false;
  auto phase = api::ParseMigrationPhase(p->get<std::string>());
  return phase.ok() && api::IsFinal(*phase);
}

std::string RequestedByLabel(const std::string& requested_by) {
  return requested_by == api::kRequestedByPolicy ? "balancer" : requested_by;
}

json MirrorMigrationObject(const api::Migration& m, const api::WorkloadOrigin& origin) {
  json spec = {{"workload", origin.name}};
  if (!m.target.empty()) spec["targetNode"] = m.target;
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "Migration"},
          {"metadata",
           {{"name", m.id},
            {"namespace", origin.namespace_},
            {"labels",
             {{kLabelRequestedBy, RequestedByLabel(m.requested_by)},
              {kLabelMigrationId, m.id},
              {kLabelWorkload, origin.name}}},
            {"finalizers", json::array({kFinalizer})}}},
          {"spec", spec}};
}

bool LabelSelector::Matches(const std::map<std::string, std::string>& labels) const {
  for (const auto& [k, v] : match_labels) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  for (const auto& e : match_expressions) {
    auto it = labels.find(e.key);
    const bool has = it != labels.end();
    const bool in =
        has && std::find(e.values.begin(), e.values.end(), it->second) != e.values.end();
    if (e.op == "In" && !in) return false;
    if (e.op == "NotIn" && in) return false;
    if (e.op == "Exists" && !has) return false;
    if (e.op == "DoesNotExist" && has) return false;
  }
  return true;
}

StatusOr<MigrationPolicy> DecodeMigrationPolicy(const json& object) {
  KMX_ASSIGN_OR_RETURN(ObjectMeta meta, DecodeMeta(object));
  MigrationPolicy p;
  p.name = meta.name;
  const json* spec = Child(object, "spec");
  if (!spec) return p;
  if (!spec->is_object()) return InvalidError("spec: must be an object");
  // A number in [lo, hi] (the schema's bounds), integral when `integer`.
  auto number = [&](const char* key, auto& out, double scale, double lo, double hi,
                    bool integer) -> Status {
    const json* v = Child(*spec, key);
    if (!v) return Status::Ok();
    const std::string path = std::string("spec.") + key;
    if (!v->is_number()) return InvalidError(path + ": must be a number");
    if (integer && !IsIntegral(*v)) return InvalidError(path + ": must be an integer");
    const double d = v->get<double>();
    if (!std::isfinite(d) || d < lo || d > hi) {
      char buf[96];
      std::snprintf(buf, sizeof buf, ": must be from %g to %g", lo, hi);
      return InvalidError(path + buf);
    }
    using T = typename std::decay_t<decltype(out)>::value_type;
    out = static_cast<T>(d * scale);
    return Status::Ok();
  };
  for (const auto& [k, v] : spec->items()) {
    if (v.is_null()) continue;  // the API server drops nulls
    if (k == "selector") {
      const std::string sel = "spec.selector";
      if (!v.is_object()) return InvalidError(sel + ": must be a label selector");
      for (const auto& [sk, sv] : v.items())
        if (sk != "matchLabels" && sk != "matchExpressions")
          return InvalidError(sel + "." + sk + ": unknown field");
      if (const json* ml = Child(v, "matchLabels")) {
        if (!ml->is_object()) return InvalidError(sel + ".matchLabels: must be a map");
        if (ml->size() > kMaxSelectorTerms)
          return InvalidError(sel + ".matchLabels: at most 64 labels");
        for (const auto& [lk, lv] : ml->items()) {
          if (lv.is_null()) continue;  // the API server drops nulls
          if (!lv.is_string())
            return InvalidError(sel + ".matchLabels." + lk + ": must be a string");
          if (Chars(lv.get<std::string>()) > kMaxLabelValueChars)
            return InvalidError(sel + ".matchLabels." + lk + ": at most 63 characters");
          p.selector.match_labels[lk] = lv.get<std::string>();
        }
      }
      if (const json* me = Child(v, "matchExpressions")) {
        const std::string path = sel + ".matchExpressions";
        if (!me->is_array()) return InvalidError(path + ": must be a list");
        if (me->size() > kMaxSelectorTerms) return InvalidError(path + ": at most 64 requirements");
        for (const auto& e : *me) {
          if (!e.is_object()) return InvalidError(path + ": must be a list of requirements");
          for (const auto& [ek, ev] : e.items())
            if (ek != "key" && ek != "operator" && ek != "values")
              return InvalidError(path + "." + ek + ": unknown field");
          LabelSelector::Expression x;
          KMX_ASSIGN_OR_RETURN(x.key, OptString(e, "key", path + ".key"));
          if (x.key.empty() || Chars(x.key) > kMaxSelectorKeyChars)
            return InvalidError(path + ".key: must be 1 to 317 characters");
          KMX_ASSIGN_OR_RETURN(x.op, OptString(e, "operator", path + ".operator"));
          if (x.op != "In" && x.op != "NotIn" && x.op != "Exists" && x.op != "DoesNotExist")
            return InvalidError(path + ".operator: \"" + x.op +
                                "\" is not In, NotIn, Exists or DoesNotExist");
          if (const json* vals = Child(e, "values")) {
            if (!vals->is_array()) return InvalidError(path + ".values: must be a list");
            if (vals->size() > kMaxSelectorTerms)
              return InvalidError(path + ".values: at most 64 values");
            for (const auto& s : *vals) {
              if (!s.is_string()) return InvalidError(path + ".values: must be strings");
              if (Chars(s.get<std::string>()) > kMaxLabelValueChars)
                return InvalidError(path + ".values: at most 63 characters each");
              x.values.push_back(s.get<std::string>());
            }
          }
          if ((x.op == "In" || x.op == "NotIn") == x.values.empty())
            return InvalidError(path +
                                ": operators In and NotIn need a non-empty values; Exists and "
                                "DoesNotExist take no values");
          p.selector.match_expressions.push_back(std::move(x));
        }
      }
    } else if (k == "enabled") {
      if (!v.is_boolean()) return InvalidError("spec.enabled: must be a boolean");
      p.settings.enabled = v.get<bool>();
    } else if (k == "stabilityFactor") {
      KMX_RETURN_IF_ERROR(number("stabilityFactor", p.settings.stability, 1, 1, 10, false));
    } else if (k == "minResidencySeconds") {
      KMX_RETURN_IF_ERROR(
          number("minResidencySeconds", p.settings.min_residency_ms, 1000, 0, 86400, true));
    } else if (k == "maxMigrationsPerNode") {
      KMX_RETURN_IF_ERROR(number("maxMigrationsPerNode", p.settings.max_per_node, 1, 1, 64, true));
    } else if (k == "maxMigrationsInCluster") {
      KMX_RETURN_IF_ERROR(
          number("maxMigrationsInCluster", p.settings.max_cluster, 1, 1, 1024, true));
    } else if (k == "lowMemoryFraction") {
      KMX_RETURN_IF_ERROR(
          number("lowMemoryFraction", p.settings.low_memory_fraction, 1, 0, 0.9, false));
    } else if (k == "memoryPsiThreshold") {
      KMX_RETURN_IF_ERROR(
          number("memoryPsiThreshold", p.settings.memory_psi_threshold, 1, 0, 100, false));
    } else {
      return InvalidError("spec." + k + ": unknown field");
    }
  }
  KMX_RETURN_IF_ERROR(api::ValidatePolicySettings(p.settings));
  return p;
}

json MigrationPolicyObject(const MigrationPolicy& p) {
  json spec = json::object();
  json selector = json::object();
  if (!p.selector.match_labels.empty()) selector["matchLabels"] = p.selector.match_labels;
  if (!p.selector.match_expressions.empty()) {
    json exprs = json::array();
    for (const auto& e : p.selector.match_expressions) {
      json x = {{"key", e.key}, {"operator", e.op}};
      if (!e.values.empty()) x["values"] = e.values;
      exprs.push_back(x);
    }
    selector["matchExpressions"] = exprs;
  }
  spec["selector"] = selector;
  const api::PolicySettings& s = p.settings;
  if (s.enabled) spec["enabled"] = *s.enabled;
  if (s.stability) spec["stabilityFactor"] = *s.stability;
  if (s.min_residency_ms) spec["minResidencySeconds"] = *s.min_residency_ms / 1000.0;
  if (s.max_per_node) spec["maxMigrationsPerNode"] = *s.max_per_node;
  if (s.max_cluster) spec["maxMigrationsInCluster"] = *s.max_cluster;
  if (s.low_memory_fraction) spec["lowMemoryFraction"] = *s.low_memory_fraction;
  if (s.memory_psi_threshold) spec["memoryPsiThreshold"] = *s.memory_psi_threshold;
  return {{"apiVersion", "kmosix.io/v1alpha1"},
          {"kind", "MigrationPolicy"},
          {"metadata", {{"name", p.name}}},
          {"spec", spec}};
}

json MigrationPolicyStatus(const json& old_status, int64_t generation, const Status& valid,
                           int64_t matched, int64_t now_ms) {
  json s = {{"observedGeneration", generation}, {"matchedWorkloads", matched}};
  s["conditions"] = MergeConditions(
      old_status,
      {valid.ok() ? Condition{"Accepted", "True", "Accepted",
                              "applies to " + std::to_string(matched) + " workload(s)"}
                  : Condition{"Accepted", "False", "Invalid", valid.message()}},
      generation, now_ms);
  return s;
}

}  // namespace kmosix::bridge
