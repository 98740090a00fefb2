// Cross-entropy scores of small logit matrices on the CPU, one pass per row in double.
//
// The PyTorch reference (fastis/ops/reference.py) runs ~40 tensor operations per call; on a
// small batch ([128, 10] logits) right after a training step, those cost ~0.6 ms, 4% of a
// small CNN's step on 2 cores, while the arithmetic is ~2 us. This loop does the same math
// (docs/scoring.md) per row, in double, so float32 outputs are correctly rounded up to the
// last step:
//   m = max_j z_j, s = sum_j e^(z_j - m), lse = m + log s;
//   loss = log1p(d_y e^(m - z_y)) with d_y = sum_{j != y} e^(z_j - m) when z_y is near the
//          maximum (no cancellation for confident rows), else (m - z_y) + log s;
//   1 - p_y = -expm1(-loss); grad_norm = sqrt((1 - p_y)^2 + sum_{j != y} e^(2 (z_j - lse))).
#pragma once

#include <cstdint>

namespace fastis {

// Scores rows of logits z [num_rows, classes] (row-major, row stride `stride` elements):
// row rows[i] (or i when rows is null) against target[i]; loss[i], grad_norm[i], lse[i].
// A row whose target equals ignore_index scores 0 and 0 (lse still computed). A row index
// outside [0, num_rows) or a target outside [0, classes) (and not ignore_index) is never
// read: that row scores NaN (0 when ignored) and its lse is NaN. A NaN anywhere in a row
// makes that row's outputs NaN.
template <class T>
void cross_entropy_row_scores(const T* z, int64_t stride, int64_t num_rows, int64_t classes,
                              const int64_t* rows, const int64_t* target, int64_t count,
                              int64_t ignore_index, float* loss, float* grad_norm, float* lse);

// The gradient of sum_i scale[i] * loss[i] w.r.t. those rows of z, into grad [count, classes]
// (row-major, contiguous): scale[i] * (e^(z_ij - lse[i]) - [j = y_i]), the target entry as
// scale[i] * expm1(-loss[i]) so that confident rows keep it (p_y - 1 ~ -1e-7 does not round to
// 0). Rows whose target equals ignore_index get 0.
template <class T>
void cross_entropy_row_grad(const T* z, int64_t stride, int64_t classes, const int64_t* target,
                            int64_t count, int64_t ignore_index, const float* lse,
                            const float* loss, const float* scale, float* grad);

}  // namespace fastis
