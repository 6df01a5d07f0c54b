#include "kmosix/status.h"

namespace kmosix {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "ok";
    case Code::kRetry:
      return "unavailable";
    case Code::kConflict:
      return "conflict";
    case Code::kInvalid:
      return "invalid_argument";
    case Code::kNotFound:
      return "not_found";
    case Code::kFailed:
      return "failed";
    case Code::kPermissionDenied:
      return "permission_denied";
  }
  return "unknown";
}

int HttpStatus(Code code) {
  switch (code) {
    case Code::kOk:
      return 200;
    case Code::kRetry:
      return 503;
    case Code::kConflict:
      return 409;
    case Code::kInvalid:
      return 400;
    case Code::kNotFound:
      return 404;
    case Code::kFailed:
      return 500;
    case Code::kPermissionDenied:
      return 403;
  }
  return 500;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::Annotate(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

}  // namespace kmosix
