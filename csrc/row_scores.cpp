#include "row_scores.hpp"

#include <cmath>
#include <limits>

namespace fastis {

namespace {
// Below this gap m - z_y the loss comes from log1p. In double the direct form
// (m - z_y) + log s cancels only when the loss is small, which needs a gap below 1 (s >= 1
// makes the loss at least the gap), so 1 suffices here; the float32 reference keeps log1p up
// to a gap of 60 for its own rounding of the statistics.
constexpr double kLog1pGap = 1.0;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}  // namespace

template <class T>
void cross_entropy_row_scores(const T* z, int64_t stride, int64_t num_rows, int64_t classes,
                              const int64_t* rows, const int64_t* target, int64_t count,
                              int64_t ignore_index, float* loss, float* grad_norm, float* lse) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = rows != nullptr ? rows[i] : i;
    const int64_t y = target[i];
    const bool ignored = y == ignore_index;
    // Unchecked input (validate=False): a row or target out of range is never read, and the
    // row scores NaN (0 when ignored), as on the other backends.
    if (r < 0 || r >= num_rows || (!ignored && (y < 0 || y >= classes))) {
      lse[i] = static_cast<float>(kNaN);
      loss[i] = grad_norm[i] = ignored ? 0.0f : static_cast<float>(kNaN);
      continue;
    }
    const T* row = z + r * stride;
    bool has_nan = false;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < classes; ++j) {
      const double v = static_cast<double>(row[j]);
      has_nan |= std::isnan(v);
      m = v > m ? v : m;
    }
    double s = 0.0, d_y = 0.0, q_y = 0.0;
    for (int64_t j = 0; j < classes; ++j) {
      const double e = std::exp(static_cast<double>(row[j]) - m);
      s += e;
      const double other = (ignored || j != y) ? e : 0.0;
      d_y += other;
      q_y += other * other;
    }
    const double log_s = std::log(s);
    lse[i] = static_cast<float>(has_nan ? kNaN : m + log_s);
    if (ignored) {
      loss[i] = 0.0f;
      grad_norm[i] = 0.0f;
      continue;
    }
    const double gap = m - static_cast<double>(row[y]);
    const double l = gap < kLog1pGap ? std::log1p(d_y * std::exp(gap)) : gap + log_s;
    const double one_minus_p = -std::expm1(-l);
    const double g = std::sqrt(one_minus_p * one_minus_p + q_y / (s * s));
    loss[i] = static_cast<float>(has_nan ? kNaN : l);
    grad_norm[i] = static_cast<float>(has_nan ? kNaN : g);
  }
}

template <class T>
void cross_entropy_row_grad(const T* z, int64_t stride, int64_t classes, const int64_t* target,
                            int64_t count, int64_t ignore_index, const float* lse,
                            const float* loss, const float* scale, float* grad) {
  for (int64_t i = 0; i < count; ++i) {
    const T* row = z + i * stride;
    float* out = grad + i * classes;
    const int64_t y = target[i];
    if (y == ignore_index || y < 0 || y >= classes) {
      // Targets are checked by the forward; an unchecked bad one is never written through.
      const float fill = y == ignore_index ? 0.0f : static_cast<float>(kNaN);
      for (int64_t j = 0; j < classes; ++j) out[j] = fill;
      continue;
    }
    const double s = scale[i], shift = lse[i];
    for (int64_t j = 0; j < classes; ++j) {
      out[j] = static_cast<float>(s * std::exp(static_cast<double>(row[j]) - shift));
    }
    out[y] = static_cast<float>(s * std::expm1(-static_cast<double>(loss[i])));
  }
}

template void cross_entropy_row_grad(const float*, int64_t, int64_t, const int64_t*, int64_t,
                                     int64_t, const float*, const float*, const float*, float*);
template void cross_entropy_row_grad(const double*, int64_t, int64_t, const int64_t*, int64_t,
                                     int64_t, const float*, const float*, const float*, float*);

template void cross_entropy_row_scores(const float*, int64_t, int64_t, int64_t, const int64_t*,
                                       const int64_t*, int64_t, int64_t, float*, float*, float*);
template void cross_entropy_row_scores(const double*, int64_t, int64_t, int64_t, const int64_t*,
                                       const int64_t*, int64_t, int64_t, float*, float*, float*);

}  // namespace fastis
