// Attribute parsing shared by the operators of masked_opt's native library (ops.cc,
// dense_cols.cc, lookup.cc). MXNet hands a library operator its attributes as strings.
#ifndef MASKED_OPT_NATIVE_ATTRS_H_
#define MASKED_OPT_NATIVE_ATTRS_H_

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <unordered_map>

#include "mxnet/lib_api.h"

namespace masked_opt_native {

// Parse attribute `key` as a plain decimal integer in [lo, hi]; false (with a message naming
// `op`) if it is absent (the message adds `whose`, e.g. " (Embedding's)") or anything else.
// `range` words the bounds in that message ("in [1, 2^31)").
inline bool get_int(const std::unordered_map<std::string, std::string>& attrs, const char* op,
                    const char* key, long long lo, long long hi, const char* range,
                    const char* whose, int64_t* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << op << ": missing integer attribute '" << key << "'" << whose;
    return false;
  }
  const char* s = it->second.c_str();
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
    MX_ERROR_MSG << op << ": attribute '" << key << "' must be an integer " << range
                 << ", got '" << it->second << "'";
    return false;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

// Parse attribute `key` as a non-negative integer; false (with a message naming `op`) if it
// is absent or not a plain decimal integer >= 0.
inline bool get_index(const std::unordered_map<std::string, std::string>& attrs,
                      const char* op, const char* key, int64_t* out) {
  return get_int(attrs, op, key, 0, LLONG_MAX, ">= 0", "", out);
}

}  // namespace masked_opt_native

#endif  // MASKED_OPT_NATIVE_ATTRS_H_
