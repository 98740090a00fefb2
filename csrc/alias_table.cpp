#include "alias_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <vector>

#include "alias_classes.hpp"
#include "ingest.hpp"
#include "parallel.hpp"

namespace fastis {

namespace {

constexpr uint64_t kLanes = 32;
// A piece of 1,024 draws is ~4 us of work, well above the pool's hand-off cost (~1 us).
constexpr uint64_t kMinDrawsPerThread = 1024;
// Items scanned at a time for the heavies a block of lights may close.
constexpr uint64_t kHeavyWindow = 128;

// Stores an entry from its keep-probability's raw bits (alias::keep_bits) and its alias.
template <class Entry>
void store_entry(Entry* at, uint64_t keep, uint64_t alias) {
  if constexpr (sizeof(Entry) == 8) {  // {float keep, uint32 alias}: one 8-byte store
    const uint64_t packed = keep | (alias << 32);
    std::memcpy(at, &packed, sizeof packed);
  } else {
    std::memcpy(&at->keep, &keep, sizeof keep);
    at->alias = alias;
  }
}

}  // namespace

template <class T>
AliasTable::AliasTable(const T* w, uint64_t n, bool wide) : n_(n) {
  if (n == 0) throw std::invalid_argument("an AliasTable needs at least one example (n = 0)");
  weights_ = LargeBuffer<double>(n, Uninitialized{});  // all written by the copy
  const double total = ingest_streaming(w, n, weights_.data());
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
  *table = LargeBuffer<Entry>(n_, Uninitialized{});  // every bucket's entry is written below
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

  // The lights of blocks [begin, end), and the heavies closed at them, one block at a
  // time: first the block's lights (index, keep, threshold A_{m-1}) and the heavies it can
  // close (index, B_t) are listed, then the two lists are merged without branches, since
  // whether the next event serves a light or closes a heavy is a coin flip. Within a block
  // all thresholds are relative to A at its start, R: lights' lie in [0, 2^62] (at most 2^10
  // deficits of at most 2^52), heavies' are clamped into int64 (only the last listed heavy
  // can lie beyond the block's lights, and it is never closed in the block).
  auto walk = [&](uint64_t block_begin, uint64_t block_end) {
    // Local copies, so that the compiler keeps them in registers across the entry stores
    // (which may alias anything).
    Entry* const out = t;
    const uint64_t n = n_;
    uint64_t cur = kNone;  // the heavy serving the previous light, and B through it
    Mass b_cur = 0;
    std::vector<uint64_t> light_idx(alias::kBlock), light_deficit(alias::kBlock);
    std::vector<uint64_t> light_keep(alias::kBlock);
    std::vector<int64_t> light_thr(alias::kBlock);
    // Heavies listed for a block: room for a window more than the cursor plus kBlock, and
    // grown as needed; one spare for the one past the end.
    std::vector<uint64_t> heavy_idx(alias::kBlock + kHeavyWindow + 2);
    std::vector<int64_t> heavy_rel(heavy_idx.size());
    // The merge's event order: the heavy serving each light (a block has at most kBlock
    // lights) and the light closing each heavy (grown with the heavy list).
    std::vector<size_t> rank(alias::kBlock), closer(heavy_idx.size());
    uint64_t window_surplus[kHeavyWindow];
    for (uint64_t block = block_begin; block < block_end; ++block) {
      const uint64_t first = block * alias::kBlock;
      const uint64_t stop = std::min(n, first + alias::kBlock);
      const Mass r = classes.deficit_before(block);
      // The block's lights in order, with their thresholds relative to r.
      uint64_t* const li_idx = light_idx.data();
      uint64_t* const li_keep = light_keep.data();
      int64_t* const li_thr = light_thr.data();
      const size_t lights =
          alias::list_lights(w, first, stop, unit_scale, sizeof(Keep) == 4, li_idx, li_keep,
                             light_deficit.data());
      int64_t a = 0;
      for (size_t l = 0; l < lights; ++l) {
        li_thr[l] = a;
        a += static_cast<int64_t>(light_deficit[l]);
      }
      if (lights == 0) continue;
      if (cur == kNone) {  // the piece's first lights: find the cursor by search
        const uint64_t before = classes.previous(li_idx[0], false);
        const Mass reach = before == kNone ? Mass{0} : r - deficit(before);
        std::tie(cur, b_cur) = classes.first_heavy_reaching(reach, surplus);
        if (cur == kNone) {  // no heavy reaches: every light is left over
          for (size_t l = 0; l < lights; ++l) out[li_idx[l]] = leftover(li_idx[l]);
          continue;
        }
      }
      // The heavies from the cursor on, until one reaches past the block's last threshold,
      // listed a window of items at a time. Their running surpluses are kept as
      // top = min(B - r + 1, kClamp) in units: B - r >= -2^52 (the cursor reached the
      // threshold before the block's first light), so top >= 0; top never exceeds kClamp,
      // so top plus one surplus (< 2^63 for u < 2^11) stays below 2^64 and uint64
      // arithmetic is exact; and the clamp stays above every threshold of the block
      // (< 2^62). A surplus of 2^63 or more (kBigSurplus) clamps at once. The thresholds
      // relative to r are then top - 1.
      constexpr uint64_t kClamp = (uint64_t{1} << 62) + (uint64_t{1} << 53);
      const uint64_t stop_top = static_cast<uint64_t>(a) + kOneUnit;
      uint64_t top = static_cast<uint64_t>(
          std::min<Mass>(b_cur + Mass{kOneUnit} - r, Mass{kClamp}));
      bool exhausted = false;
      size_t heavies = 1;
      heavy_idx[0] = cur;
      heavy_rel[0] = static_cast<int64_t>(top) - static_cast<int64_t>(kOneUnit);
      for (uint64_t pos = cur + 1; top < stop_top; pos += kHeavyWindow) {
        if (pos >= n) {
          exhausted = true;
          break;
        }
        if (heavy_idx.size() < heavies + kHeavyWindow + 2) {
          heavy_idx.resize(2 * (heavies + kHeavyWindow + 2));
          heavy_rel.resize(heavy_idx.size());
          closer.resize(heavy_idx.size());
        }
        uint64_t* const found_idx = heavy_idx.data() + heavies;
        int64_t* const found_rel = heavy_rel.data() + heavies;
        const size_t found = alias::list_heavies(w, pos, std::min(n, pos + kHeavyWindow),
                                                 unit_scale, found_idx, window_surplus);
        // Every found heavy's running value; the list keeps those up to the first that
        // reaches the stop (tops never decrease, so that is a count of the earlier tops
        // still below it).
        size_t keep = 0;
        for (size_t h = 0; h < found; ++h) {
          keep += top < stop_top;
          const uint64_t s = window_surplus[h];
          top = s == alias::kBigSurplus ? kClamp : std::min(top + s, kClamp);
          found_rel[h] = static_cast<int64_t>(top) - static_cast<int64_t>(kOneUnit);
        }
        heavies += keep;
        top = static_cast<uint64_t>(heavy_rel[heavies - 1] + static_cast<int64_t>(kOneUnit));
      }
      // B of listed heavy j: r + rel_j exactly, unless clamped (only the last listed one
      // can be), which is then recomputed from the heavy before it.
      auto running_surplus = [&](size_t j) {
        const auto unclamped = [&](size_t i) {
          return r + Mass(static_cast<uint64_t>(heavy_rel[i] + static_cast<int64_t>(kOneUnit))) -
                 Mass{kOneUnit};
        };
        if (heavy_rel[j] + static_cast<int64_t>(kOneUnit) < static_cast<int64_t>(kClamp)) {
          return unclamped(j);
        }
        return j == 0 ? b_cur : unclamped(j - 1) + surplus(heavy_idx[j]);
      };
      // A heavy past the end, so that the merge may read heavy j + 1 without a check; with
      // the list exhausted it even serves lights, which the fix-up below turns into
      // leftovers.
      uint64_t* const hv_idx = heavy_idx.data();
      int64_t* const hv_rel = heavy_rel.data();
      size_t* const rk = rank.data();
      size_t* const cl = closer.data();
      hv_idx[heavies] = last_heavy;
      hv_rel[heavies] = std::numeric_limits<int64_t>::max();
      // The merge, in three passes. First the order of events alone: walking lights and
      // heavies together, light i is served by heavy rank[i] and heavy j is closed at
      // light closer[j]; the loop has no branch and a short dependency chain, since light
      // and heavy thresholds interleave at random. Then the lights' entries and the closed
      // heavies' entries, two loops whose iterations are independent.
      // Four independent stretches of the walk, interleaved to overlap their dependency
      // chains. The stretch from light i starts after the closes of every heavy below
      // thr[i] (both lists are sorted: a binary search) and ends with the closes that the
      // next stretch's first light triggers: (lights) + (closes) events in all.
      auto closed_before = [&](size_t light) {
        return static_cast<size_t>(std::lower_bound(hv_rel, hv_rel + heavies, li_thr[light]) -
                                   hv_rel);
      };
      size_t i0 = 0, i1 = lights / 4, i2 = lights / 2, i3 = lights * 3 / 4;
      size_t j0 = 0, j1 = closed_before(i1), j2 = closed_before(i2), j3 = closed_before(i3);
      const size_t j1_start = j1, j2_start = j2, j3_start = j3;
      const size_t j_end = closed_before(lights - 1);  // the heavy serving the last light
      const size_t steps[4] = {(i1 - i0) + (j1 - j0), (i2 - i1) + (j2 - j1),
                               (i3 - i2) + (j3 - j2), (lights - i3) + (j_end - j3)};
      // Both slots are written at every event; the last write to each is the one that
      // counts (rank[i] at i's serve, closer[j] at j's close), except where two stretches
      // meet, which is fixed after the walk.
      auto event = [hv_rel, li_thr, rk, cl](size_t& li, size_t& hj) {
        const size_t serve = hv_rel[hj] >= li_thr[li];
        rk[li] = hj;
        cl[hj] = li;
        li += serve;
        hj += 1 - serve;
      };
      const size_t common = std::min({steps[0], steps[1], steps[2], steps[3]});
      for (size_t e = 0; e < common; ++e) {
        event(i0, j0);
        event(i1, j1);
        event(i2, j2);
        event(i3, j3);
      }
      for (size_t e = common; e < steps[0]; ++e) event(i0, j0);
      for (size_t e = common; e < steps[1]; ++e) event(i1, j1);
      for (size_t e = common; e < steps[2]; ++e) event(i2, j2);
      for (size_t e = common; e < steps[3]; ++e) event(i3, j3);
      // Where stretch c meets stretch c + 1, at light i_{c+1} and heavy j_{c+1}, both wrote
      // the two slots: light i_{c+1} is served by heavy j_{c+1} (by the search's
      // definition), and heavy j_{c+1}, if closed, is closed at the first light above it.
      for (const auto& [first_light, first_heavy] :
           {std::pair{lights / 4, j1_start}, std::pair{lights / 2, j2_start},
            std::pair{lights * 3 / 4, j3_start}}) {
        rk[first_light] = first_heavy;
        if (first_heavy < j_end) {
          cl[first_heavy] = static_cast<size_t>(
              std::upper_bound(li_thr, li_thr + lights, hv_rel[first_heavy]) - li_thr);
        }
      }
      size_t j = j_end;
      for (size_t l = 0; l < lights; ++l) store_entry(out + li_idx[l], li_keep[l], hv_idx[rk[l]]);
      for (size_t h = 0; h < j; ++h) {
        // Closing heavy h keeps 1 - (thr - b) of its bucket: exact, as thr - b <= 2^52.
        const int64_t gap = li_thr[cl[h]] - hv_rel[h];
        const double kept = static_cast<double>(static_cast<int64_t>(kOneUnit) - gap) * 0x1p-52;
        store_entry(out + hv_idx[h], alias::keep_bits(kept, sizeof(Keep) == 4), hv_idx[h + 1]);
      }
      if (exhausted) {
        // Lights beyond the last heavy's reach are left over; the last heavy itself is
        // rewritten as a leftover by the final step.
        const int64_t reach = hv_rel[heavies - 1];
        for (size_t l = 0; l < lights; ++l) {
          if (li_thr[l] > reach) out[li_idx[l]] = leftover(li_idx[l]);
        }
        j = std::min(j, heavies - 1);
      }
      b_cur = running_surplus(j);
      cur = hv_idx[j];
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
