// Input checks that run before a structure changes, so a rejected call leaves it untouched.
// The fast path is one branch-free pass; only a failing input pays for locating and naming
// the first offending element.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "simd.hpp"

namespace fastis {

template <class T>
inline bool is_valid_weight(T w) {
  // False for NaN (every comparison with NaN is false), +inf and negative values.
  return w >= T(0) && w <= std::numeric_limits<T>::max();
}

// 1 if any of w[0..count) is invalid. Bitwise, not short-circuit, operators keep the loop
// branch-free so that it vectorises.
template <class T>
FASTIS_VECTOR_CLONES unsigned any_invalid_weight(const T* w, size_t count) {
  unsigned bad = 0;
  for (size_t i = 0; i < count; ++i) {
    bad |= static_cast<unsigned>(!(w[i] >= T(0))) |
           static_cast<unsigned>(!(w[i] <= std::numeric_limits<T>::max()));
  }
  return bad;
}

// Throws std::invalid_argument (ValueError in Python) naming the first weight that is NaN,
// infinite or negative.
template <class T>
void check_weights(const T* w, size_t count, const char* name) {
  if (!any_invalid_weight(w, count)) return;
  for (size_t i = 0; i < count; ++i) {
    if (is_valid_weight(w[i])) continue;
    const double v = static_cast<double>(w[i]);
    std::ostringstream msg;
    msg << name << "[" << i << "] is ";
    if (std::isnan(v)) {
      msg << "NaN";
    } else if (std::isinf(v)) {
      msg << (v > 0 ? "+inf" : "-inf");
    } else {
      msg << "negative (" << v << ")";
    }
    msg << "; weights must be finite and non-negative";
    throw std::invalid_argument(msg.str());
  }
}

// 1 if any of idx[0..count) lies outside [0, n).
template <class I>
FASTIS_VECTOR_CLONES unsigned any_index_out_of_range(const I* idx, size_t count,
                                                     uint64_t n) {
  unsigned bad = 0;
  for (size_t i = 0; i < count; ++i) {
    bad |= static_cast<unsigned>(static_cast<uint64_t>(static_cast<int64_t>(idx[i])) >= n);
  }
  return bad;
}

// Throws std::out_of_range (IndexError in Python) naming the first index outside [0, n).
template <class I>
void check_indices(const I* idx, size_t count, uint64_t n, const char* name) {
  if (!any_index_out_of_range(idx, count, n)) return;
  for (size_t i = 0; i < count; ++i) {
    if (static_cast<uint64_t>(static_cast<int64_t>(idx[i])) < n) continue;
    std::ostringstream msg;
    msg << name << "[" << i << "] = " << static_cast<int64_t>(idx[i])
        << (idx[i] < 0 ? " is negative" : " is out of range")
        << "; valid indices are 0.." << n - 1;
    throw std::out_of_range(msg.str());
  }
}

}  // namespace fastis
