// Construction support for AliasTable: item masses in exact fixed point, the heavy/light
// classification as a bitmask, and per-block prefix sums of deficits and surpluses, which
// let any stretch of the alias sweep start on its own (see alias_table.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace fastis {
namespace alias {

using Mass = unsigned __int128;
constexpr int kFractionBits = 52;
constexpr uint64_t kOneUnit = uint64_t{1} << kFractionBits;
// Items per block of the prefix-sum index (a multiple of 64: whole words of the mask).
constexpr uint64_t kBlock = 1024;
constexpr uint64_t kNone = ~uint64_t{0};

// u in fixed point: exact for u >= 1 (u * 2^52 is then an integer); below 1, rounded half
// up (scaled + 0.5 is exact there, and truncation is then the rounding). This is the form
// for u < 2^11 (all lights, most heavies): no branch, since light and heavy items alternate
// at random.
inline uint64_t to_fixed_below_2048(double u) {
  const double scaled = u * 0x1p52;
  const double half = 0.5 * static_cast<double>(scaled < 0x1p52);
  return static_cast<uint64_t>(static_cast<int64_t>(scaled + half));
}

// u in fixed point, any u.
inline Mass to_fixed(double u) {
  if (u < 0x1p11) return to_fixed_below_2048(u);
  const double scaled = u * 0x1p52;
  int exponent;
  const double mantissa = std::frexp(scaled, &exponent);  // scaled = mantissa * 2^exponent
  return static_cast<Mass>(static_cast<uint64_t>(std::ldexp(mantissa, 64))) << (exponent - 64);
}

// The raw bits of a keep-probability as a table entry stores it: float32 bits
// (zero-extended) if narrow, else float64 bits, so that the build stores entries with
// integer operations.
inline uint64_t keep_bits(double keep, bool narrow) {
  if (narrow) {
    const float f = static_cast<float>(keep);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
  }
  uint64_t bits;
  std::memcpy(&bits, &keep, sizeof bits);
  return bits;
}

// The scale that turns a weight into units: u = ((w * pre_a) * pre_b) * scale.
struct UnitScale {
  double pre_a, pre_b, scale;
  double operator()(double w) const { return ((w * pre_a) * pre_b) * scale; }
};

// Classifies items [begin, end) (begin a multiple of 64): sets their heavy bits in
// heavy_words (word 0 = items begin .. begin + 63) and adds their deficits and surpluses.
void classify(const double* w, uint64_t begin, uint64_t end, UnitScale units,
              uint64_t* heavy_words, uint64_t* deficit, Mass* surplus);

// Lists the lights among items [begin, end) in index order: their indices, their units u
// as the raw bits of a table entry's keep-probability (float32 bits, zero-extended, if
// narrow; else float64 bits) and their deficits 1 - u in fixed point, into arrays with room
// for end - begin entries. Returns how many there are.
size_t list_lights(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                   bool narrow, uint64_t* idx, uint64_t* keep, uint64_t* deficit);

// Lists the heavies among items [begin, end) in index order: their indices and surpluses
// u - 1 in fixed point, into arrays with room for end - begin entries; a surplus of
// kBigSurplus stands for one of 2^63 or more (u >= 2^11), to be recomputed with to_fixed.
// Returns how many there are.
constexpr uint64_t kBigSurplus = ~uint64_t{0};
size_t list_heavies(const double* w, uint64_t begin, uint64_t end, UnitScale units,
                    uint64_t* idx, uint64_t* surplus);

// The heavy items as a bitmask, plus per-block deficit and surplus sums for the searches.
class Classes {
 public:
  // Classifies the n items of w (in parallel) and sums their masses per block.
  Classes(const double* w, uint64_t n, UnitScale units);

  // The light bits of the 64 items from `base` (a multiple of 64); bits beyond n are set.
  uint64_t light_bits(uint64_t base) const { return ~heavy_[base / 64]; }

  // The first item >= k of the given kind, or kNone.
  uint64_t next(uint64_t k, bool heavy) const {
    if (k >= n_) return kNone;
    uint64_t w = k / 64;
    uint64_t bits = (heavy ? heavy_[w] : ~heavy_[w]) & (~uint64_t{0} << (k % 64));
    while (bits == 0) {
      if (++w >= words_) return kNone;
      bits = heavy ? heavy_[w] : ~heavy_[w];
    }
    const uint64_t found = w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits));
    return found < n_ ? found : kNone;
  }

  // The last item < k of the given kind, or kNone.
  uint64_t previous(uint64_t k, bool heavy) const {
    if (k == 0) return kNone;
    uint64_t w = (k - 1) / 64;
    const int top = static_cast<int>((k - 1) % 64);
    const uint64_t keep = top == 63 ? ~uint64_t{0} : (uint64_t{2} << top) - 1;
    uint64_t bits = (heavy ? heavy_[w] : ~heavy_[w]) & keep;
    while (bits == 0) {
      if (w == 0) return kNone;
      --w;
      bits = heavy ? heavy_[w] : ~heavy_[w];
    }
    return w * 64 + 63 - static_cast<uint64_t>(__builtin_clzll(bits));
  }

  // Deficits of the lights before block b, and surpluses of the heavies before it.
  Mass deficit_before(uint64_t b) const { return deficit_before_[b]; }
  Mass total_deficit() const { return deficit_before_[blocks_]; }

  // The first heavy t with B_t >= x, and B_t; {kNone, 0} if there is none.
  template <class Surplus>
  std::pair<uint64_t, Mass> first_heavy_reaching(Mass x, const Surplus& surplus) const {
    // The first block whose heavies bring the running surplus to x.
    const auto it = std::lower_bound(surplus_before_.begin() + 1, surplus_before_.end(), x);
    if (it == surplus_before_.end()) return {kNone, 0};
    const uint64_t b = static_cast<uint64_t>(it - surplus_before_.begin()) - 1;
    Mass running = surplus_before_[b];
    for (uint64_t t = next(b * kBlock, true); t != kNone; t = next(t + 1, true)) {
      running += surplus(t);
      if (running >= x) return {t, running};
    }
    return {kNone, 0};
  }

  uint64_t last_heavy() const { return last_heavy_; }

 private:
  uint64_t n_, words_, blocks_;
  std::vector<uint64_t> heavy_;
  std::vector<Mass> deficit_before_, surplus_before_;
  uint64_t last_heavy_ = kNone;
};


}  // namespace alias
}  // namespace fastis
