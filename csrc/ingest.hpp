// Copying user weights into a new structure: one streaming pass that converts to float64,
// flags invalid values and sums. Used by constructors only, where nothing pre-existing can
// be corrupted, so the checks ride along with the copy instead of costing a pass of their
// own; a failing input is rescanned by check_weights() to name the offender.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
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

#if FASTIS_HAVE_AVX512
// ingest_chunk for a copy that is read again only after much else (AliasTable's): the
// same values, flags and sum, bit for bit (lane l holds acc[l]), but written with
// streaming stores, which skip reading each destination line before overwriting it (a
// third of the copy's memory traffic). dst + begin must be 64-byte aligned.
template <class T>
__attribute__((target("avx512f"))) double ingest_chunk_streaming_avx512(
    const T* w, uint64_t begin, uint64_t end, double* dst, unsigned* bad) {
  const __m512d zero = _mm512_setzero_pd();
  const __m512d largest = _mm512_set1_pd(std::numeric_limits<double>::max());
  __m512d acc = _mm512_setzero_pd();
  __mmask8 valid = 0xFF;
  uint64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    __m512d v;
    if constexpr (std::is_same_v<T, float>) {
      v = _mm512_cvtps_pd(_mm256_loadu_ps(w + i));
    } else {
      v = _mm512_loadu_pd(w + i);
    }
    v = _mm512_add_pd(v, zero);  // -0.0 + 0.0 = +0.0
    valid &= _mm512_cmp_pd_mask(v, zero, _CMP_GE_OQ) & _mm512_cmp_pd_mask(v, largest, _CMP_LE_OQ);
    _mm512_stream_pd(dst + i, v);
    acc = _mm512_add_pd(acc, v);
  }
  _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, acc);
  uint64_t flag = valid != 0xFF;
  for (; i < end; ++i) {
    const double v = static_cast<double>(w[i]) + 0.0;
    flag |= static_cast<uint64_t>(!is_valid_weight(v));
    dst[i] = v;
    lanes[0] += v;
  }
  *bad |= static_cast<unsigned>(flag != 0);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}
#endif

template <class T>
double ingest_chunk_streaming_scalar(const T* w, uint64_t begin, uint64_t end, double* dst,
                                     unsigned* bad) {
  return ingest_chunk(w, begin, end, dst, bad);
}

// Runs copy_chunk(begin, end, &bad) -> partial sum on fixed chunks of [0, n) in parallel;
// throws std::invalid_argument naming the first invalid weight if any chunk flagged one;
// returns the total (the in-order sum of the chunks' sums).
template <class T, class CopyChunk>
double ingest_chunks(const T* w, uint64_t n, CopyChunk&& copy_chunk) {
  const uint64_t chunks = (n + kIngestChunk - 1) / kIngestChunk;
  std::vector<double> partial(chunks);
  std::vector<unsigned> bad(chunks, 0);
  parallel_for(chunks, 1, 4, [&](uint64_t begin, uint64_t end) {
    for (uint64_t c = begin; c < end; ++c) {
      const uint64_t first = c * kIngestChunk;
      partial[c] = copy_chunk(first, std::min(n, first + kIngestChunk), &bad[c]);
    }
  });
  for (unsigned b : bad) {
    if (b) check_weights(w, n, "weights");
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// Copies all n weights into dst in parallel; throws std::invalid_argument naming the first
// invalid weight; returns the total (summed in fixed chunks). after_chunk(begin, end) runs
// on each chunk of dst right after it is written, while it is still in cache (a chunk is
// 512 KiB of float64, and kIngestChunk is a multiple of 8, so chunks hold whole lines).
template <class T, class AfterChunk>
double ingest(const T* w, uint64_t n, double* dst, AfterChunk&& after_chunk) {
  return ingest_chunks(w, n, [&](uint64_t first, uint64_t stop, unsigned* bad) {
    const double partial = ingest_chunk(w, first, stop, dst, bad);
    after_chunk(first, stop);
    return partial;
  });
}

// ingest() for a destination that is not read again right away: streaming stores where
// the CPU has AVX-512 and dst is 64-byte aligned (chunks start at multiples of 64 bytes).
template <class T>
double ingest_streaming(const T* w, uint64_t n, double* dst) {
  const bool aligned = reinterpret_cast<uintptr_t>(dst) % 64 == 0;
  return ingest_chunks(w, n, [&](uint64_t first, uint64_t stop, unsigned* bad) {
    return aligned ? FASTIS_AVX512_OR_SCALAR(ingest_chunk_streaming, w, first, stop, dst, bad)
                   : ingest_chunk(w, first, stop, dst, bad);
  });
}

}  // namespace fastis
