// Copying user weights into a new structure: one streaming pass that converts to float64,
// flags invalid values and sums. Used by constructors only, where nothing pre-existing can
// be corrupted, so the checks ride along with the copy instead of costing a pass of their
// own; a failing input is rescanned by check_weights() to name the offender.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "parallel.hpp"
#include "validate.hpp"

namespace fastis {

// Chunk size of the partial sums: the total is the in-order sum of per-chunk sums, so it is
// the same bit for bit whatever the thread count.
constexpr uint64_t kIngestChunk = uint64_t{1} << 16;

// Copies w[begin, end) to dst[begin, end) as float64 (+0.0 turns -0.0 into +0.0), ORs 1
// into *bad if any value is invalid, and returns their sum.
template <class T>
FASTIS_VECTOR_CLONES double ingest_chunk(const T* w, uint64_t begin, uint64_t end, double* dst,
                                         unsigned* bad) {
  // Eight independent accumulators: vectorisable without reassociation (no -ffast-math).
  // The flag is 64 bits wide like the doubles, and set through selects rather than a bool:
  // in this form the compiler vectorises the loop.
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint64_t flag = 0;
  uint64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    for (int l = 0; l < 8; ++l) {
      const double v = static_cast<double>(w[i + l]) + 0.0;
      flag |= (v >= 0.0 ? uint64_t{0} : uint64_t{1}) |
              (v <= std::numeric_limits<double>::max() ? uint64_t{0} : uint64_t{1});
      dst[i + l] = v;
      acc[l] += v;
    }
  }
  for (; i < end; ++i) {
    const double v = static_cast<double>(w[i]) + 0.0;
    flag |= static_cast<uint64_t>(!is_valid_weight(v));
    dst[i] = v;
    acc[0] += v;
  }
  *bad |= static_cast<unsigned>(flag != 0);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Copies all n weights into dst in parallel; throws std::invalid_argument naming the first
// invalid weight; returns the total (summed in fixed chunks). after_chunk(begin, end) runs
// on each chunk of dst right after it is written, while it is still in cache (a chunk is
// 512 KiB of float64, and kIngestChunk is a multiple of 8, so chunks hold whole lines).
template <class T, class AfterChunk>
double ingest(const T* w, uint64_t n, double* dst, AfterChunk&& after_chunk) {
  const uint64_t chunks = (n + kIngestChunk - 1) / kIngestChunk;
  std::vector<double> partial(chunks);
  std::vector<unsigned> bad(chunks, 0);
  parallel_for(chunks, 1, 4, [&](uint64_t begin, uint64_t end) {
    for (uint64_t c = begin; c < end; ++c) {
      const uint64_t first = c * kIngestChunk;
      const uint64_t stop = std::min(n, first + kIngestChunk);
      partial[c] = ingest_chunk(w, first, stop, dst, &bad[c]);
      after_chunk(first, stop);
    }
  });
  for (unsigned b : bad) {
    if (b) check_weights(w, n, "weights");
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template <class T>
double ingest(const T* w, uint64_t n, double* dst) {
  return ingest(w, n, dst, [](uint64_t, uint64_t) {});
}

}  // namespace fastis
