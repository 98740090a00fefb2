#include "alias_table.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "ingest.hpp"
#include "alias_classes.hpp"
#include "parallel.hpp"

namespace fastis {

namespace {

constexpr uint64_t kLanes = 32;
// A piece of 1,024 draws is ~4 us of work, well above the pool's hand-off cost (~1 us).
constexpr uint64_t kMinDrawsPerThread = 1024;

}  // namespace

template <class T>
AliasTable::AliasTable(const T* w, uint64_t n, bool wide) : n_(n) {
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
  if (n <= (uint64_t{1} << 32) && !wide) {
    build(&table32_);
  } else {
    build(&table64_);
  }
}

size_t AliasTable::nbytes() const {
  return sizeof(*this) + weights_.bytes() + table32_.bytes() + table64_.bytes();
}

// ---------------------------------------------------------------------------------------
// Construction: Vose's sweep, computed as a merge that threads can split anywhere.
//
// Bucket k holds u_k = n * w_k / total units of its own item: "light" if u_k < 1, "heavy"
// otherwise. Light item m (the m-th light in index order) lacks the deficit 1 - u; heavy
// item t has the surplus u - 1. Let A_m be the deficits of lights 1..m and B_t the surpluses
// of heavies 1..t. The textbook sweep (a light cursor and a heavy cursor, both moving
// forward; Hübschle-Schneider & Sanders, "Parallel Weighted Random Sampling", ACM TOMS 2022,
// section 4) keeps the current heavy's remainder rest = 1 + B_t - A_m, so that:
//   - light m aliases the first heavy t with B_t >= A_{m-1};
//   - heavy t is closed, when B_t < A_m for the light m being served, with keep
//     1 - (A_m - B_t) and alias the next heavy; that happens at light m_t + 1, where m_t is the
//     last light t serves, or after the last light.
// Each rule reads only prefix sums, so any stretch of lights can be processed on its own once
// A at its start and the heavy cursor there are known: both come from per-block prefix sums
// and a search. In exact arithmetic the remainders end at exactly 1; rounding can leave
// either kind over, and those buckets keep their own item with probability 1 (a zero-weight
// leftover instead points at the last heavy item, so it is never drawn).
//
// Masses are fixed point with 52 fraction bits in 128-bit integers. Heavy units (u >= 1) are
// exact in it; light units are rounded to 2^-52. Integer sums are exact and associative, so
// the table is the same bit for bit whatever the split across threads, and a heavy's keep
// 1 - (A_m - B_t) is exact to 2^-52 even at n = 1e10, where float64 prefix sums would keep
// only ~1e-6.
// ---------------------------------------------------------------------------------------


template <class Entry>
void AliasTable::build(LargeBuffer<Entry>* table) {
  using alias::Mass;
  using alias::kNone;
  using alias::kOneUnit;
  using alias::to_fixed;
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
  const alias::UnitScale unit_scale{pre_a, pre_b, scale};
  auto units = [w, unit_scale](uint64_t k) { return unit_scale(w[k]); };
  auto deficit = [units](uint64_t k) { return Mass{kOneUnit} - to_fixed(units(k)); };
  auto surplus = [units](uint64_t k) { return to_fixed(units(k)) - kOneUnit; };
  const alias::Classes classes(w, n_, unit_scale);
  const uint64_t last_heavy = classes.last_heavy();

  // Closes heavy `cur` (remainder 1 - (a - b_cur) < 1) toward the next heavy; false, with
  // nothing written, if there is no next heavy (cur is then a leftover).
  auto close = [&](uint64_t* cur, Mass* b_cur, Mass a) {
    const uint64_t following = classes.next(*cur + 1, true);
    if (following == kNone) return false;
    // kept <= 2^52: exact as a double, and scaling by 2^-52 is exact too.
    const auto kept = static_cast<uint64_t>(Mass{kOneUnit} - (a - *b_cur));
    t[*cur] = Entry{static_cast<Keep>(static_cast<double>(kept) * 0x1p-52),
                    static_cast<Alias>(following)};
    *b_cur += surplus(following);
    *cur = following;
    return true;
  };
  auto leftover = [w, last_heavy](uint64_t k) {
    return w[k] > 0.0 ? Entry{Keep(1), static_cast<Alias>(k)}
                      : Entry{Keep(0), static_cast<Alias>(last_heavy)};
  };

  // The lights of blocks [begin, end), and the heavies closed at them.
  auto walk = [&](uint64_t block_begin, uint64_t block_end) {
    const uint64_t stop = std::min(n_, block_end * alias::kBlock);
    uint64_t m = classes.next(block_begin * alias::kBlock, false);
    if (m == kNone || m >= stop) return;
    Mass a = classes.deficit_before(block_begin);  // A_{m-1}
    // The heavy cursor as it stood when the previous light was served.
    const uint64_t before = classes.previous(m, false);
    const Mass reach = before == kNone ? Mass{0} : a - deficit(before);
    auto [cur, b_cur] = classes.first_heavy_reaching(reach, surplus);
    bool exhausted = cur == kNone;
    // Lights word by word from the mask (m is the first; its word starts at m - m % 64).
    for (uint64_t base = m - m % 64; base < stop; base += 64) {
      uint64_t lights = classes.light_bits(base) & (~uint64_t{0} << (base < m ? m % 64 : 0));
      if (stop - base < 64) lights &= (uint64_t{1} << (stop - base)) - 1;
      for (; lights != 0; lights &= lights - 1) {
        const uint64_t k = base + static_cast<uint64_t>(__builtin_ctzll(lights));
        const double u = units(k);
        while (!exhausted && b_cur < a) exhausted = !close(&cur, &b_cur, a);
        t[k] = exhausted ? leftover(k) : Entry{static_cast<Keep>(u), static_cast<Alias>(cur)};
        a += Mass{kOneUnit} - to_fixed(u);
      }
    }
  };
  const uint64_t blocks = (n_ + alias::kBlock - 1) / alias::kBlock;
  parallel_for(blocks, 1, 16, walk);

  // After the last light: close the heavies its deficit overran, then every heavy not
  // closed keeps its own item (in exact arithmetic only the last heavy is left).
  const Mass a_total = classes.total_deficit();
  const uint64_t last_light = classes.previous(n_, false);
  uint64_t cur = kNone;
  if (last_light == kNone) {
    cur = classes.next(0, true);
  } else {
    auto [first, b_first] = classes.first_heavy_reaching(a_total - deficit(last_light), surplus);
    cur = first;
    Mass b_cur = b_first;
    while (cur != kNone && b_cur < a_total && close(&cur, &b_cur, a_total)) {
    }
  }
  for (; cur != kNone; cur = classes.next(cur + 1, true)) {
    t[cur] = Entry{Keep(1), static_cast<Alias>(cur)};
  }
  if (last_heavy != kNone) t[last_heavy] = Entry{Keep(1), static_cast<Alias>(last_heavy)};
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

void AliasTable::entries(double* keep, int64_t* alias) const {
  auto copy = [&](const auto* table) {
    for (uint64_t k = 0; k < n_; ++k) {
      keep[k] = static_cast<double>(table[k].keep);
      alias[k] = static_cast<int64_t>(table[k].alias);
    }
  };
  if (table64_.size() != 0) {
    copy(table64_.data());
  } else {
    copy(table32_.data());
  }
}

template AliasTable::AliasTable(const float*, uint64_t, bool);
template AliasTable::AliasTable(const double*, uint64_t, bool);

}  // namespace fastis
