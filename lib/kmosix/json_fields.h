// JsonFields: a strict reader over one JSON object, shared by the JSON
// faces of the typed API (kmosix/spec_json, cluster/records,
// controller/rest_codec). Every accessor checks the type (and range) and
// answers kInvalid naming the field; absent optional fields keep the
// caller's value. Never throws.
// Thread-safety: borrows the object; one reader per thread.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "api/validate.h"
#include "kmosix/status.h"

namespace kmosix {

// Strict reader over one JSON object: every accessor checks the type (and
// range) and answers kInvalid naming the field; absent optional fields keep
// the caller's default.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& j, std::string_view what) : j_(j), what_(what) {}

  Status Check(std::initializer_list<std::string_view> known) const {
    if (!j_.is_object()) return InvalidError(what_ + " must be a JSON object");
    for (const auto& [key, _] : j_.items()) {
      bool found = false;
      for (std::string_view k : known) found = found || k == key;
      if (!found) return InvalidError("unknown field \"" + key + "\" in " + what_);
    }
    return Status::Ok();
  }

  const nlohmann::json* Find(const std::string& key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  Status Missing(const std::string& key) const {
    return InvalidError("missing field \"" + key + "\" in " + what_);
  }
  Status Bad(const std::string& key, std::string_view must) const {
    return InvalidError("field \"" + key + "\" in " + what_ + " must be " + std::string(must));
  }

  Status String(const std::string& key, std::string& out, bool required = false) const {
    const nlohmann::json* v = Find(key);
    if (v == nullptr) return required ? Missing(key) : Status::Ok();
    if (!v->is_string()) return Bad(key, "a string");
    out = v->get<std::string>();
    return Status::Ok();
  }

  // A string that is empty (when allowed) or a valid name.
  Status Name(const std::string& key, std::string& out, bool required, bool allow_empty) const {
    KMX_RETURN_IF_ERROR(String(key, out, required));
    if (out.empty() && allow_empty) return Status::Ok();
    if (Status s = api::ValidateName(out); !s.ok()) {
      return InvalidError("field \"" + key + "\" in " + what_ + ": " + s.message());
    }
    return Status::Ok();
  }

  Status Bool(const std::string& key, bool& out) const {
    const nlohmann::json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_boolean()) return Bad(key, "a boolean");
    out = v->get<bool>();
    return Status::Ok();
  }

  Status Int(const std::string& key, int64_t& out, int64_t min = 0) const {
    const nlohmann::json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_number_integer()) return Bad(key, "an integer");
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Bad(key, "an integer in range");
      }
      out = static_cast<int64_t>(u);
    } else {
      out = v->get<int64_t>();
    }
    if (out < min) return Bad(key, ">= " + std::to_string(min));
    return Status::Ok();
  }

  Status Uint(const std::string& key, uint64_t& out) const {
    const nlohmann::json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_number_integer()) return Bad(key, "a non-negative integer");
    if (!v->is_number_unsigned()) {
      if (v->get<int64_t>() < 0) return Bad(key, "a non-negative integer");
      out = static_cast<uint64_t>(v->get<int64_t>());
      return Status::Ok();
    }
    out = v->get<uint64_t>();
    return Status::Ok();
  }

  Status Number(const std::string& key, double& out) const {
    const nlohmann::json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_number()) return Bad(key, "a number");
    double d = v->get<double>();
    if (!std::isfinite(d) || d < 0) return Bad(key, "a finite number >= 0");
    out = d;
    return Status::Ok();
  }

  // Absent or null -> nullopt.
  Status OptionalNumber(const std::string& key, std::optional<double>& out) const {
    const nlohmann::json* v = Find(key);
    if (v == nullptr || v->is_null()) {
      out.reset();
      return Status::Ok();
    }
    double d = 0;
    KMX_RETURN_IF_ERROR(Number(key, d));
    out = d;
    return Status::Ok();
  }

 private:
  const nlohmann::json& j_;
  std::string what_;
};

}  // namespace kmosix
