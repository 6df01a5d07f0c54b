#include "kmosix/runtime.h"

namespace kmosix {

ContainerSpec ContainerSpecFor(const api::WorkloadSpec& spec) {
  ContainerSpec c;
  c.name = spec.name;
  c.image = spec.image;
  c.args = spec.args;
  c.env = spec.env;
  c.memory_mib = spec.memory_mib;
  c.cpus = spec.cpus;
  return c;
}

api::WorkloadSpec WorkloadSpecOf(const ContainerSpec& c) {
  api::WorkloadSpec s;
  s.name = c.name;
  s.image = c.image;
  s.args = c.args;
  s.env = c.env;
  s.memory_mib = c.memory_mib;
  s.cpus = c.cpus;
  return s;
}

std::string_view TaskStateName(TaskState s) {
  switch (s) {
    case TaskState::kNone:
      return "none";
    case TaskState::kCreated:
      return "created";
    case TaskState::kRunning:
      return "running";
    case TaskState::kPaused:
      return "paused";
    case TaskState::kStopped:
      return "stopped";
    case TaskState::kUnknown:
      return "unknown";
  }
  return "unknown";
}

}  // namespace kmosix
