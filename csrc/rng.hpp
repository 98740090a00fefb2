// Counter-based random numbers: Philox4x64-10 (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC 2011), the same generator as numpy.random.Philox.
//
// Why counter-based: draw number d of a call is a pure function of (seed, counter, d), so
// any split of a call across threads yields the same indices, and the whole generator state
// is two integers that a state_dict can carry.
#pragma once

#include <cstdint>
#include <stdexcept>

namespace fastis {

struct PhiloxBlock {
  uint64_t word[4];
};

namespace detail {

inline void mul_hi_lo(uint64_t a, uint64_t b, uint64_t* hi, uint64_t* lo) {
  const __uint128_t product = static_cast<__uint128_t>(a) * b;
  *hi = static_cast<uint64_t>(product >> 64);
  *lo = static_cast<uint64_t>(product);
}

}  // namespace detail

// One Philox4x64-10 block for counter (block, 0, 0, 0) and key (seed, 0). numpy's
// Philox(key=seed, counter=block - 1).random_raw(4) yields the same four words (numpy
// increments its counter before each block).
inline PhiloxBlock philox4x64(uint64_t block, uint64_t seed) {
  constexpr uint64_t kMul0 = 0xD2E7470EE14C6C93ULL;
  constexpr uint64_t kMul1 = 0xCA5A826395121157ULL;
  constexpr uint64_t kWeyl0 = 0x9E3779B97F4A7C15ULL;
  constexpr uint64_t kWeyl1 = 0xBB67AE8584CAA73BULL;
  uint64_t c0 = block, c1 = 0, c2 = 0, c3 = 0;
  uint64_t k0 = seed, k1 = 0;
  for (int round = 0; round < 10; ++round) {
    uint64_t hi0, lo0, hi1, lo1;
    detail::mul_hi_lo(kMul0, c0, &hi0, &lo0);
    detail::mul_hi_lo(kMul1, c2, &hi1, &lo1);
    const uint64_t n0 = hi1 ^ c1 ^ k0;
    const uint64_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

// A uniform double in [0, 1) from the top 53 bits of a random word.
inline double unit_interval(uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// The generator state of a structure: draw d of a call that starts at `counter` uses word
// d % 4 of block counter + d / 4; a call drawing k values advances counter by ceil(k / 4).
struct RngState {
  uint64_t seed = 0;
  uint64_t counter = 0;

  // Throws before changing anything when the counter would wrap past 2^64 - 1 (the
  // stream would then repeat itself from block 0).
  uint64_t reserve(uint64_t draws) {
    const uint64_t blocks = draws / 4 + (draws % 4 != 0);
    if (blocks > UINT64_MAX - counter) {
      throw std::overflow_error("the generator's counter would wrap past 2**64 - 1: this "
                                "structure's random stream is exhausted (reseed it)");
    }
    const uint64_t first = counter;
    counter += blocks;
    return first;
  }
};

}  // namespace fastis
