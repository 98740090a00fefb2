#include "alias_classes.hpp"

#include "parallel.hpp"
#include "simd.hpp"

namespace fastis {
namespace alias {

namespace {

#if FASTIS_HAVE_AVX512
// The unit scale and the fixed-point conversion for eight items at a time: the same
// operations in the same order as UnitScale and to_fixed_below_2048, so bit-identical.
struct Units8 {
  __m512d pre_a, pre_b, scale;
  __m512d one = _mm512_set1_pd(1.0);
  __m512d two52 = _mm512_set1_pd(0x1p52);
  __m512d half = _mm512_set1_pd(0.5);
  __m512i one_unit = _mm512_set1_epi64(static_cast<int64_t>(kOneUnit));
  __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);

  __attribute__((target("avx512f"))) explicit Units8(UnitScale units)
      : pre_a(_mm512_set1_pd(units.pre_a)),
        pre_b(_mm512_set1_pd(units.pre_b)),
        scale(_mm512_set1_pd(units.scale)) {}

  // u for w[0..7].
  __attribute__((target("avx512f"))) __m512d operator()(const double* w) const {
    return _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(w), pre_a), pre_b), scale);
  }

  // The indices k .. k + 7.
  __attribute__((target("avx512f"))) __m512i indices(uint64_t k) const {
    return _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(k)), lane);
  }

  // to_fixed_below_2048(u) per lane (meaningful for u < 2^11).
  __attribute__((target("avx512f,avx512dq"))) __m512i fixed(__m512d u) const {
    const __m512d scaled = _mm512_mul_pd(u, two52);
    const __mmask8 below_one = _mm512_cmp_pd_mask(scaled, two52, _CMP_LT_OQ);
    return _mm512_cvttpd_epi64(_mm512_mask_add_pd(scaled, below_one, scaled, half));
  }
};
#endif

// classify(), one item at a time.
// Light and heavy items alternate at random, so there is no branch on the kind: with
// c = min(q, 1), a light adds 1 - c to the deficits and a heavy q - c to the surpluses (the
// other sum gets 0). Deficits of up to 2^10 items fit in 64 bits.
void classify_scalar(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                     uint64_t* heavy_words, uint64_t* deficit, Mass* surplus) {
  uint64_t d = 0;
  Mass s = 0;
  for (uint64_t k = begin; k < end; k += 64) {
    uint64_t bits = 0;
    for (uint64_t i = k; i < std::min(end, k + 64); ++i) {
      const double u = units(w[i]);
      bits |= static_cast<uint64_t>(u >= 1.0) << (i - k);
      if (u >= 0x1p11) [[unlikely]] {  // q >= 2^63: the 128-bit path
        s += to_fixed(u) - kOneUnit;
        continue;
      }
      const uint64_t q = to_fixed_below_2048(u);
      const uint64_t c = std::min(q, kOneUnit);
      d += kOneUnit - c;
      s += q - c;
    }
    heavy_words[(k - begin) / 64] = bits;
  }
  *deficit += d;
  *surplus += s;
}

#if FASTIS_HAVE_AVX512
// classify_scalar, eight items per step; bit-identical (the same three products, the same
// rounding, exact integer sums). Surpluses below 2^63 are summed per lane as 32-bit halves,
// which cannot overflow within 2^10 items; a group of eight holding a u >= 2^11 goes to
// classify_scalar.
__attribute__((target("avx512f,avx512dq"))) void classify_avx512(
    const double* w, uint64_t begin, uint64_t end, UnitScale units, uint64_t* heavy_words,
    uint64_t* deficit, Mass* surplus) {
  const Units8 lanes(units);
  const __m512d big = _mm512_set1_pd(0x1p11);
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  __m512i d = _mm512_setzero_si512();
  __m512i s_low = _mm512_setzero_si512();
  __m512i s_high = _mm512_setzero_si512();
  uint64_t rest_deficit = 0;
  Mass rest_surplus = 0;
  uint64_t k = begin;
  for (; k + 64 <= end; k += 64) {
    uint64_t bits = 0;
    for (int g = 0; g < 8; ++g) {
      const __m512d u = lanes(w + k + 8 * g);
      const __mmask8 heavy = _mm512_cmp_pd_mask(u, lanes.one, _CMP_GE_OQ);
      bits |= static_cast<uint64_t>(heavy) << (8 * g);
      if (_mm512_cmp_pd_mask(u, big, _CMP_GE_OQ) != 0) [[unlikely]] {
        uint64_t unused;
        classify_scalar(w, k + 8 * g, k + 8 * g + 8, units, &unused, &rest_deficit,
                        &rest_surplus);
        continue;
      }
      const __m512i q = lanes.fixed(u);
      const __m512i c = _mm512_min_epu64(q, lanes.one_unit);
      d = _mm512_add_epi64(d, _mm512_sub_epi64(lanes.one_unit, c));
      const __m512i extra = _mm512_sub_epi64(q, c);
      s_low = _mm512_add_epi64(s_low, _mm512_and_si512(extra, low32));
      s_high = _mm512_add_epi64(s_high, _mm512_srli_epi64(extra, 32));
    }
    heavy_words[(k - begin) / 64] = bits;
  }
  if (k < end) {
    classify_scalar(w, k, end, units, heavy_words + (k - begin) / 64, &rest_deficit,
                    &rest_surplus);
  }
  alignas(64) uint64_t lanes_d[8], lanes_low[8], lanes_high[8];
  _mm512_store_si512(lanes_d, d);
  _mm512_store_si512(lanes_low, s_low);
  _mm512_store_si512(lanes_high, s_high);
  Mass s = rest_surplus;
  uint64_t total_d = rest_deficit;
  for (int l = 0; l < 8; ++l) {
    total_d += lanes_d[l];
    s += (static_cast<Mass>(lanes_high[l]) << 32) + lanes_low[l];
  }
  *deficit += total_d;
  *surplus += s;
}
#endif

size_t list_lights_scalar(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                          bool narrow, uint64_t* idx, uint64_t* keep, uint64_t* deficit) {
  size_t count = 0;
  for (uint64_t k = begin; k < end; ++k) {
    const double u = units(w[k]);
    idx[count] = k;
    keep[count] = keep_bits(u, narrow);
    deficit[count] = kOneUnit - to_fixed_below_2048(std::min(u, 1.0));
    count += u < 1.0;
  }
  return count;
}

#if FASTIS_HAVE_AVX512
// list_lights_scalar, eight items per step. Compressed in registers, then stored whole: a
// compressing store to memory is several times slower on Intel cores, and the 8-lane
// store stays inside the arrays (count + 8 <= k + 8 - begin <= end - begin). The float32
// narrowing rounds to nearest, as static_cast<float> does.
__attribute__((target("avx512f,avx512dq"))) size_t list_lights_avx512(
    const double* w, uint64_t begin, uint64_t end, UnitScale units, bool narrow,
    uint64_t* idx, uint64_t* keep, uint64_t* deficit) {
  const Units8 lanes(units);
  size_t count = 0;
  uint64_t k = begin;
  for (; k + 8 <= end; k += 8) {
    const __m512d u = lanes(w + k);
    const __mmask8 light = _mm512_cmp_pd_mask(u, lanes.one, _CMP_LT_OQ);
    const __m512i q = lanes.fixed(u);
    const __m512i bits = narrow ? _mm512_cvtepu32_epi64(_mm256_castps_si256(_mm512_cvtpd_ps(u)))
                                : _mm512_castpd_si512(u);
    _mm512_storeu_si512(idx + count, _mm512_maskz_compress_epi64(light, lanes.indices(k)));
    _mm512_storeu_si512(keep + count, _mm512_maskz_compress_epi64(light, bits));
    _mm512_storeu_si512(deficit + count,
                        _mm512_maskz_compress_epi64(light, _mm512_sub_epi64(lanes.one_unit, q)));
    count += static_cast<size_t>(__builtin_popcount(light));
  }
  return count + list_lights_scalar(w, k, end, units, narrow, idx + count, keep + count,
                                    deficit + count);
}
#endif

size_t list_heavies_scalar(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                           uint64_t* idx, uint64_t* surplus) {
  size_t count = 0;
  for (uint64_t k = begin; k < end; ++k) {
    const double u = units(w[k]);
    idx[count] = k;
    surplus[count] = u < 0x1p11 ? to_fixed_below_2048(std::max(u, 1.0)) - kOneUnit : kBigSurplus;
    count += u >= 1.0;
  }
  return count;
}

#if FASTIS_HAVE_AVX512
// list_heavies_scalar, eight items per step with compressing stores.
__attribute__((target("avx512f,avx512dq"))) size_t list_heavies_avx512(
    const double* w, uint64_t begin, uint64_t end, UnitScale units, uint64_t* idx,
    uint64_t* surplus) {
  const Units8 lanes(units);
  const __m512d big = _mm512_set1_pd(0x1p11);
  const __m512i big_surplus = _mm512_set1_epi64(static_cast<int64_t>(kBigSurplus));
  size_t count = 0;
  uint64_t k = begin;
  for (; k + 8 <= end; k += 8) {
    const __m512d u = lanes(w + k);
    const __mmask8 heavy = _mm512_cmp_pd_mask(u, lanes.one, _CMP_GE_OQ);
    const __mmask8 huge = _mm512_cmp_pd_mask(u, big, _CMP_GE_OQ);
    const __m512i q = lanes.fixed(u);
    const __m512i s =
        _mm512_mask_blend_epi64(huge, _mm512_sub_epi64(q, lanes.one_unit), big_surplus);
    // Compressed in registers and stored whole, as in list_lights_avx512.
    _mm512_storeu_si512(idx + count, _mm512_maskz_compress_epi64(heavy, lanes.indices(k)));
    _mm512_storeu_si512(surplus + count, _mm512_maskz_compress_epi64(heavy, s));
    count += static_cast<size_t>(__builtin_popcount(heavy));
  }
  return count + list_heavies_scalar(w, k, end, units, idx + count, surplus + count);
}
#endif

}  // namespace

size_t list_heavies(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                    uint64_t* idx, uint64_t* surplus) {
  return FASTIS_AVX512_OR_SCALAR(list_heavies, w, begin, end, units, idx, surplus);
}

size_t list_lights(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                   bool narrow, uint64_t* idx, uint64_t* keep, uint64_t* deficit) {
  return FASTIS_AVX512_OR_SCALAR(list_lights, w, begin, end, units, narrow, idx, keep,
                                 deficit);
}

void classify(const double* w, uint64_t begin, uint64_t end, UnitScale units,
              uint64_t* heavy_words, uint64_t* deficit, Mass* surplus) {
  FASTIS_AVX512_OR_SCALAR(classify, w, begin, end, units, heavy_words, deficit, surplus);
}

Classes::Classes(const double* w, uint64_t n, UnitScale units)
  : n_(n), words_((n + 63) / 64), blocks_((n + kBlock - 1) / kBlock) {
  heavy_.assign(words_, 0);
  deficit_before_.assign(blocks_ + 1, 0);
  surplus_before_.assign(blocks_ + 1, 0);
  std::vector<uint64_t> deficit(blocks_, 0);
  std::vector<Mass> surplus(blocks_, 0);
  parallel_for(blocks_, 1, 64, [&](uint64_t begin, uint64_t end) {
    for (uint64_t b = begin; b < end; ++b) {
      const uint64_t first = b * kBlock;
      classify(w, first, std::min(n_, first + kBlock), units, heavy_.data() + first / 64,
               &deficit[b], &surplus[b]);
    }
  });
  for (uint64_t b = 0; b < blocks_; ++b) {
    deficit_before_[b + 1] = deficit_before_[b] + deficit[b];
    surplus_before_[b + 1] = surplus_before_[b] + surplus[b];
  }
  last_heavy_ = previous(n_, true);
}


}  // namespace alias
}  // namespace fastis
