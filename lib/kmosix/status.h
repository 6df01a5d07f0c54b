// Errors as values.
//
// A Status carries a Code chosen by what the caller should do next:
//   kRetry      - transient (peer down, timeout, busy): retry with backoff.
//   kConflict   - the world changed under you (revision/epoch mismatch, name in
//                 use, wrong state): re-read and retry.
//   kInvalid    - the request is malformed; fix the input, do not retry.
//   kNotFound   - the named thing does not exist.
//   kFailed     - an operation failed for good (restore error, checksum
//                 mismatch, internal error): stop and report.
// Thread-safety: value types, no shared state.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kmosix {

// kPermissionDenied: the caller is not allowed this (403): retrying with the
// same identity will not help.
enum class Code { kOk, kRetry, kConflict, kInvalid, kNotFound, kFailed, kPermissionDenied };

std::string_view CodeName(Code code);
// HTTP status a REST handler answers for a code.
int HttpStatus(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "code: message", for logs.
  std::string ToString() const;
  // Returns a copy whose message is prefixed with `context: `.
  Status Annotate(std::string_view context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status RetryError(std::string m) { return {Code::kRetry, std::move(m)}; }
inline Status ConflictError(std::string m) { return {Code::kConflict, std::move(m)}; }
inline Status InvalidError(std::string m) { return {Code::kInvalid, std::move(m)}; }
inline Status NotFoundError(std::string m) { return {Code::kNotFound, std::move(m)}; }
inline Status FailedError(std::string m) { return {Code::kFailed, std::move(m)}; }
inline Status PermissionDeniedError(std::string m) {
  return {Code::kPermissionDenied, std::move(m)};
}

// A value or a non-ok Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok()) status_ = FailedError("StatusOr built from an ok Status");
  }
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace kmosix

#define KMX_CONCAT_INNER(a, b) a##b
#define KMX_CONCAT(a, b) KMX_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when it is not ok.
#define KMX_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::kmosix::Status kmx_status_ = (expr);     \
    if (!kmx_status_.ok()) return kmx_status_; \
  } while (0)

// `KMX_ASSIGN_OR_RETURN(auto x, Foo());`
#define KMX_ASSIGN_OR_RETURN(lhs, expr) \
  KMX_ASSIGN_OR_RETURN_IMPL(KMX_CONCAT(kmx_or_, __LINE__), lhs, expr)
#define KMX_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
