#include "kmosix/runtime.h"

namespace kmosix {

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
