#include "alias_table.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "ingest.hpp"
#include "parallel.hpp"

namespace fastis {

namespace {

constexpr uint64_t kLanes = 32;
// A piece of 1,024 draws is ~4 us of work, well above the pool's hand-off cost (~1 us).
constexpr uint64_t kMinDrawsPerThread = 1024;

}  // namespace

template <class T>
AliasTable::AliasTable(const T* w, uint64_t n) : n_(n) {
  if (n == 0) throw std::invalid_argument("an AliasTable needs at least one example (n = 0)");
  weights_ = LargeBuffer<double>(n);
  const double total = ingest(w, n, weights_.data());
  if (!(total > 0.0)) {
    throw std::invalid_argument("cannot build an AliasTable: all weights are zero (total = 0)");
  }
  if (!std::isfinite(total)) {
    throw std::overflow_error("the total weight overflows float64 (inf)");
  }
  total_ = total;
  if (n <= (uint64_t{1} << 32)) {
    build(&table32_);
  } else {
    build(&table64_);
  }
}

size_t AliasTable::nbytes() const {
  return sizeof(*this) + weights_.bytes() + table32_.bytes() + table64_.bytes();
}

// Bucket i holds n * w_i / total units of its own item ("light" if below 1, "heavy"
// otherwise). Cursor i walks the light items and j the heavy ones; the current heavy item
// tops up each light bucket to 1 until its own remainder drops below 1, then its bucket is
// closed with that remainder and topped up by the next heavy item. In exact arithmetic the
// remainders end at exactly 1; rounding can leave either kind over, and those buckets keep
// their own item with probability 1 (a zero-weight leftover instead points at a heavy item,
// so it is never drawn).
template <class Entry>
void AliasTable::build(LargeBuffer<Entry>* table) {
  using Alias = decltype(Entry::alias);
  using Keep = decltype(Entry::keep);
  *table = LargeBuffer<Entry>(n_);
  Entry* t = table->data();
  const double* w = weights_.data();
  // units(k) = n * w_k / total. A power-of-two prescale (exact, even for subnormal weights)
  // keeps n / total from overflowing when the total is tiny: an inf scale would turn zero
  // weights into NaN units, which count as neither light nor heavy.
  // The prescale is split in two factors so that each stays finite (a subnormal total
  // needs up to 2^1074).
  const int shift = -std::ilogb(total_);
  const double pre_a = std::ldexp(1.0, shift / 2);
  const double pre_b = std::ldexp(1.0, shift - shift / 2);
  const double scale = static_cast<double>(n_) / ((total_ * pre_a) * pre_b);
  const uint64_t n = n_;
  auto units = [&](uint64_t k) { return ((w[k] * pre_a) * pre_b) * scale; };
  auto next_light = [&](uint64_t k) {
    while (k < n && units(k) >= 1.0) ++k;
    return k;
  };
  auto next_heavy = [&](uint64_t k) {
    while (k < n && units(k) < 1.0) ++k;
    return k;
  };

  uint64_t i = next_light(0);
  uint64_t j = next_heavy(0);
  uint64_t last_heavy = j;
  double rest = j < n ? units(j) : 0.0;
  while (j < n) {
    if (rest >= 1.0) {
      if (i >= n) break;
      t[i] = Entry{static_cast<Keep>(units(i)), static_cast<Alias>(j)};
      rest -= 1.0 - units(i);
      i = next_light(i + 1);
    } else {
      const uint64_t jn = next_heavy(j + 1);
      if (jn >= n) break;
      t[j] = Entry{static_cast<Keep>(rest), static_cast<Alias>(jn)};
      rest = units(jn) - (1.0 - rest);
      j = jn;
      last_heavy = j;
    }
  }
  // Leftovers from rounding: the current heavy item and any heavy items after it, and any
  // light items the heavy ones did not reach.
  for (uint64_t k = j; k < n; k = next_heavy(k + 1)) {
    t[k] = Entry{Keep(1), static_cast<Alias>(k)};
  }
  for (uint64_t k = i; k < n; k = next_light(k + 1)) {
    t[k] = w[k] > 0.0 ? Entry{Keep(1), static_cast<Alias>(k)}
                      : Entry{Keep(0), static_cast<Alias>(last_heavy)};
  }
}

template <class Entry>
void AliasTable::sample_range(const Entry* table, uint64_t first_block, uint64_t begin,
                              uint64_t end, int64_t* out, double* prob_out) const {
  const __uint128_t n = n_;
  uint64_t bucket[2][kLanes];
  uint64_t within[2][kLanes];
  // Software pipeline: the buckets of group g + 1 are computed and prefetched while group g
  // is resolved, so each group's table lines are in flight for a whole group's work.
  auto fill = [&](uint64_t base, int slot) {
    const uint64_t lanes = std::min(kLanes, end - base);
    for (uint64_t g = 0; g < lanes; g += 4) {
      const PhiloxBlock r = philox4x64(first_block + (base + g) / 4, rng_.seed);
      for (uint64_t w = 0; w < 4 && g + w < lanes; ++w) {
        const __uint128_t product = r.word[w] * n;
        const uint64_t b = static_cast<uint64_t>(product >> 64);
        bucket[slot][g + w] = b;
        within[slot][g + w] = static_cast<uint64_t>(product);
        __builtin_prefetch(table + b);
      }
    }
  };
  int slot = 0;
  fill(begin, slot);
  for (uint64_t base = begin; base < end; base += kLanes) {
    const uint64_t lanes = std::min(kLanes, end - base);
    if (base + kLanes < end) fill(base + kLanes, slot ^ 1);
    for (uint64_t g = 0; g < lanes; ++g) {
      const uint64_t b = bucket[slot][g];
      const Entry e = table[b];
      const bool keep = unit_interval(within[slot][g]) < static_cast<double>(e.keep);
      out[base + g] = static_cast<int64_t>(keep ? b : static_cast<uint64_t>(e.alias));
    }
    if (prob_out != nullptr) {
      const double* w = weights_.data();
      for (uint64_t g = 0; g < lanes; ++g) prob_out[base + g] = w[out[base + g]] / total_;
    }
    slot ^= 1;
  }
}

void AliasTable::sample(uint64_t k, int64_t* out, double* prob_out) {
  const uint64_t first_block = rng_.reserve(k);
  parallel_for(k, kLanes, kMinDrawsPerThread, [&](uint64_t begin, uint64_t end) {
    if (table64_.size() != 0) {
      sample_range(table64_.data(), first_block, begin, end, out, prob_out);
    } else {
      sample_range(table32_.data(), first_block, begin, end, out, prob_out);
    }
  });
}

template AliasTable::AliasTable(const float*, uint64_t);
template AliasTable::AliasTable(const double*, uint64_t);

}  // namespace fastis
