#include "task_sampler.h"

#include <sstream>

namespace kmosix::e2e {

using nlohmann::json;
using std::chrono::milliseconds;

std::string JsonStr(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

int64_t JsonInt(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}

std::string StatusStr(const json& w, const char* key) {
  return w.is_object() && w.contains("status") ? JsonStr(w["status"], key) : "";
}

bool IsFinalMigrationPhase(const std::string& p) {
  return p == "Succeeded" || p == "RolledBack" || p == "Failed";
}

TaskSampler::TaskSampler(const Cluster& c, std::string name) : name_(std::move(name)) {
  // One shell round asks every node at once; each line: "<node> <task> <pid> <status>".
  std::string cmd = "(";
  for (const auto& n : c.Nodes()) {
    cmd += "(timeout 2 ctr -a " + ShellQuote(n.sock) + " -n " + Cluster::kNamespace +
           " tasks ls 2>/dev/null | sed 's/^/" + n.name + " /') & ";
  }
  cmd_ = cmd + "wait)";
  thread_ = std::thread([this] { Loop(); });
}

TaskSampler::~TaskSampler() { Stop(); }

void TaskSampler::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> TaskSampler::Twice() {
  std::lock_guard lock(mu_);
  return twice_;
}

int TaskSampler::Samples() {
  std::lock_guard lock(mu_);
  return samples_;
}

std::string TaskSampler::Last(const std::string& node) {
  std::lock_guard lock(mu_);
  auto it = last_.find(node);
  return it == last_.end() ? "" : it->second;
}

std::optional<TaskSampler::SteadyClock::time_point> TaskSampler::FirstSeen(
    const std::string& node, const std::string& status) {
  std::lock_guard lock(mu_);
  auto it = first_.find(node + " " + status);
  if (it == first_.end()) return std::nullopt;
  return it->second;
}

void TaskSampler::Mark() {
  std::lock_guard lock(mu_);
  first_.clear();
}

void TaskSampler::AwaitSamples(int n) {
  const int target = Samples() + n;
  for (int i = 0; i < 600 && Samples() < target; ++i) std::this_thread::sleep_for(milliseconds(50));
}

std::string TaskSampler::NeverTwice() {
  std::lock_guard lock(mu_);
  if (twice_.empty()) return "";
  return std::to_string(twice_.size()) + " of " + std::to_string(samples_) +
         " samples saw two running copies of " + name_ + ", first: " + twice_.front();
}

void TaskSampler::Loop() {
  while (!stop_) {
    const auto started = SteadyClock::now();
    auto r = RunCommand(cmd_);
    std::map<std::string, std::string> seen;  // node -> status of the workload's task
    std::istringstream in(r.output);
    for (std::string line; std::getline(in, line);) {
      std::istringstream words(line);
      std::string node, task, pid, status;
      if (words >> node >> task >> pid >> status && task == name_) seen[node] = status;
    }
    {
      std::lock_guard lock(mu_);
      ++samples_;
      int running = 0;
      std::string where;
      for (const auto& [node, status] : seen) {
        if (!first_.contains(node + " " + status)) first_[node + " " + status] = started;
        if (status == "RUNNING") {
          ++running;
          where += " " + node;
        }
      }
      if (running > 1) twice_.push_back("RUNNING on" + where);
      last_ = seen;
    }
    auto spent = SteadyClock::now() - started;
    if (spent < milliseconds(100)) std::this_thread::sleep_for(milliseconds(100) - spent);
  }
}

Endpoint AnyController(const Cluster& c) {
  if (const ControllerProc* l = c.Leader()) return *l;
  for (const auto& ctl : c.Controllers()) {
    if (HttpGet(ctl, "/healthz", std::chrono::seconds(2)).status == 200) return ctl;
  }
  return c.controller(1);
}

RecordWait AwaitWorkloadRecord(const Cluster& c, const std::string& name, const std::string& what,
                               milliseconds timeout, const std::function<bool(const json&)>& pred) {
  RecordWait out;
  out.wait = WaitFor(
      name + " " + what, timeout,
      [&]() -> Observation {
        std::string err;
        auto j = GetObject(AnyController(c), "/v1/workloads/" + name, &err);
        if (!j) return {false, err};
        out.last = *j;
        return {pred(*j), "phase=" + StatusStr(*j, "phase") + " node=" + StatusStr(*j, "node") +
                              " migration=" + StatusStr(*j, "migration") +
                              " message=" + StatusStr(*j, "message")};
      },
      milliseconds(250));
  return out;
}

RecordWait AwaitMigrationEnd(const Cluster& c, const std::string& id, milliseconds timeout) {
  RecordWait out;
  out.wait = WaitFor(
      "migration " + id + " to end", timeout,
      [&]() -> Observation {
        std::string err;
        auto m = GetObject(AnyController(c), "/v1/migrations/" + id, &err);
        if (!m) return {false, err};
        out.last = *m;
        return {IsFinalMigrationPhase(JsonStr(*m, "phase")),
                "phase=" + JsonStr(*m, "phase") + " error=" + JsonStr(*m, "error")};
      },
      milliseconds(250));
  return out;
}

}  // namespace kmosix::e2e
