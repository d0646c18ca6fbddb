// Internal: exception-free accessors for nlohmann::json values (types are checked before every
// access, so no nlohmann exception can be thrown). Errors are InvalidArgument naming the field.
#ifndef FACTLENS_ANALYSIS_TOKENIZER_JSON_UTIL_H_
#define FACTLENS_ANALYSIS_TOKENIZER_JSON_UTIL_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace factlens::tok {

using Json = nlohmann::json;

// The member `key` of `obj`, or nullptr if `obj` is not an object or has no such member.
inline const Json* JsonFind(const Json& obj, absl::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  if (it == obj.end()) return nullptr;
  return &*it;
}

// Missing or null -> nullopt.
inline const Json* JsonFindNonNull(const Json& obj, absl::string_view key) {
  const Json* v = JsonFind(obj, key);
  return (v == nullptr || v->is_null()) ? nullptr : v;
}

inline absl::Status JsonTypeError(absl::string_view where, absl::string_view key,
                                  absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: ", where, ".", key, " must be ", expected));
}

inline absl::StatusOr<std::string> JsonString(const Json& obj, absl::string_view key,
                                              absl::string_view where) {
  const Json* v = JsonFind(obj, key);
  if (v == nullptr || !v->is_string()) return JsonTypeError(where, key, "a string");
  return v->get_ref<const std::string&>();
}

inline absl::StatusOr<std::optional<std::string>> JsonOptString(const Json& obj,
                                                                absl::string_view key,
                                                                absl::string_view where) {
  const Json* v = JsonFindNonNull(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return JsonTypeError(where, key, "a string or null");
  return std::optional<std::string>(v->get_ref<const std::string&>());
}

inline absl::StatusOr<bool> JsonBool(const Json& obj, absl::string_view key, bool dflt,
                                     absl::string_view where) {
  const Json* v = JsonFindNonNull(obj, key);
  if (v == nullptr) return dflt;
  if (!v->is_boolean()) return JsonTypeError(where, key, "a boolean");
  return v->get<bool>();
}

inline absl::StatusOr<int64_t> JsonInt(const Json& obj, absl::string_view key, int64_t dflt,
                                       absl::string_view where) {
  const Json* v = JsonFindNonNull(obj, key);
  if (v == nullptr) return dflt;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return JsonTypeError(where, key, "an integer");
    return static_cast<int64_t>(u);
  }
  if (!v->is_number_integer()) return JsonTypeError(where, key, "an integer");
  return v->get<int64_t>();
}

// A token id: an integer in [0, 2^31).
inline absl::StatusOr<int32_t> JsonTokenId(const Json& v, absl::string_view where) {
  if (!v.is_number_integer() && !v.is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", where, " must be an integer token id"));
  }
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT32_MAX)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: ", where, " token id ", u, " is out of range"));
    }
    return static_cast<int32_t>(u);
  }
  const int64_t i = v.get<int64_t>();
  if (i < 0 || i > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", where, " token id ", i, " is out of range"));
  }
  return static_cast<int32_t>(i);
}

// Limits the nesting of Sequence components (the parsers recurse), so that a hostile file
// cannot exhaust the stack. Construct one in every recursive parser; check ok().
class JsonDepthGuard {
 public:
  static constexpr int kMaxDepth = 32;
  JsonDepthGuard() { ++Depth(); }
  ~JsonDepthGuard() { --Depth(); }
  JsonDepthGuard(const JsonDepthGuard&) = delete;
  JsonDepthGuard& operator=(const JsonDepthGuard&) = delete;
  bool ok() const { return Depth() <= kMaxDepth; }
  absl::Status error(absl::string_view where) const {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", where, " components are nested too deeply"));
  }

 private:
  static int& Depth() {
    thread_local int depth = 0;
    return depth;
  }
};

// The "type" member of a component object.
inline absl::StatusOr<std::string> JsonComponentType(const Json& obj, absl::string_view where) {
  if (!obj.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: ", where, " must be an object or null"));
  }
  return JsonString(obj, "type", where);
}

}  // namespace factlens::tok

#endif  // FACTLENS_ANALYSIS_TOKENIZER_JSON_UTIL_H_
