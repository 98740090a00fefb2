#include "sum_tree.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "ingest.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace fastis {

namespace {

constexpr uint64_t kFanout = 8;
// Descents in flight per thread: a level's prefetches are issued one level ahead, so the
// other lanes' work on a level must cover an L3 or DRAM miss (~50-100 ns). Measured at
// n = 1e6 (AVX-512 path, 1,024 draws): 32 lanes 23 us, 64 lanes 20 us, 128 lanes 26 us.
constexpr uint64_t kLanes = 64;
// A piece of 256 draws is ~5 us of work, well above the pool's hand-off cost (~1 us).
constexpr uint64_t kMinDrawsPerThread = 256;
constexpr uint64_t kMinNodesPerThread = uint64_t{1} << 16;
// Below this many updates a batch stays on one thread: splitting it costs each thread a pass
// over the whole batch.
constexpr size_t kMinParallelUpdate = size_t{1} << 14;

uint64_t round_up(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

// Left-to-right sum of one line; the descent's prefix sums use the same order.
inline double line_sum(const double* a) {
  double s = a[0];
  for (int i = 1; i < 8; ++i) s += a[i];
  return s;
}

// parent[j] = line_sum(child line j) for j in [begin, end). The compiler vectorises this
// across lines (each line's own sum keeps its left-to-right order), hence the clones.
FASTIS_VECTOR_CLONES void sum_lines(const double* child, double* parent, uint64_t begin,
                                    uint64_t end) {
  for (uint64_t j = begin; j < end; ++j) parent[j] = line_sum(child + j * kFanout);
}

// The largest double below x (x > 0 and finite).
inline double just_below(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits -= 1;
  std::memcpy(&x, &bits, sizeof bits);
  return x;
}

// Picks the child of one line that holds u, branch-free, and turns u into the offset inside
// that child. Clamping u below the line's own sum guarantees a child of positive weight:
// prefix sums taken left to right never decrease, and a zero child repeats its left
// neighbour's prefix, so the strict inequality prefix[j-1] <= u < prefix[j] cannot select it.
inline uint64_t choose_child(const double* line, double* u) {
  double prefix[9];
  prefix[0] = 0.0;
  double running = line[0];
  prefix[1] = running;
  for (int i = 1; i < 8; ++i) {
    running += line[i];
    prefix[i + 1] = running;
  }
  const double v = std::min(*u, just_below(prefix[8]));
  uint64_t j = 0;
  for (int i = 1; i < 8; ++i) j += prefix[i] <= v;
  *u = v - prefix[j];
  return j;
}

}  // namespace

SumTree::SumTree(uint64_t n) : n_(n) { allocate_levels(true); }

template <class T>
SumTree::SumTree(const T* w, uint64_t n) : n_(n) {
  allocate_levels(false);  // the copy and the sums below write every entry but the padding
  // Level 1 is summed chunk by chunk right behind the copy, while the leaves are in cache,
  // instead of in a second pass over all of them.
  const bool has_level1 = levels_.size() > 1;
  ingest(w, n, levels_[0].data(), [&](uint64_t begin, uint64_t end) {
    if (has_level1) recompute_level(1, begin / kFanout, (end + kFanout - 1) / kFanout);
  });
  recompute_above(1);
  // The tree's own total (its summation order differs from ingest's) is what draws use.
  if (!std::isfinite(total_)) throw std::overflow_error("the total weight overflows float64 (inf)");
}

void SumTree::allocate_levels(bool zeroed) {
  if (n_ == 0) throw std::invalid_argument("a SumTree needs at least one example (n = 0)");
  // Far beyond any memory (9 bytes per example), and small enough that no level size below
  // can wrap around 2^64 when rounded up.
  if (n_ > kMaxExamples) {
    throw std::length_error("a SumTree holds at most 2**60 examples, got " + std::to_string(n_));
  }
  // A level of `entries` whose first `used` hold weights or sums; the rest is zero padding.
  auto add_level = [&](uint64_t used, uint64_t entries) {
    if (zeroed) {
      levels_.emplace_back(entries);
      return;
    }
    levels_.emplace_back(entries, Uninitialized{});
    double* level = levels_.back().data();
    std::fill(level + used, level + entries, 0.0);
  };
  uint64_t entries = round_up(n_, kFanout);
  add_level(n_, entries);
  while (entries > kFanout) {
    const uint64_t used = entries / kFanout;
    entries = round_up(used, kFanout);
    add_level(used, entries);
  }
}

size_t SumTree::nbytes() const {
  size_t bytes = sizeof(*this);
  for (const auto& level : levels_) bytes += level.bytes();
  return bytes;
}

void SumTree::recompute_level(size_t level, uint64_t begin, uint64_t end) {
  sum_lines(levels_[level - 1].data(), levels_[level].data(), begin, end);
}

void SumTree::recompute_all() { recompute_above(0); }

void SumTree::recompute_above(size_t computed) {
  for (size_t level = computed + 1; level < levels_.size(); ++level) {
    const uint64_t nodes = levels_[level - 1].size() / kFanout;
    parallel_for(nodes, 512, kMinNodesPerThread, [&](uint64_t begin, uint64_t end) {
      recompute_level(level, begin, end);
    });
  }
  total_ = line_sum(levels_.back().data());
}

// Marks entry `node` of `level` dirty and queues it, once. A dirty entry is set to NaN: that
// flags it (so each ancestor is queued once) and costs no extra memory, since the line is
// about to be rewritten anyway. Weights are finite, so no clean entry is ever NaN.
inline void queue_once(double* level, uint64_t node, std::vector<uint64_t>* dirty) {
  if (!std::isnan(level[node])) {
    level[node] = std::numeric_limits<double>::quiet_NaN();
    dirty->push_back(node);
  }
}

// Writes the updates in batch order (so the last of duplicate indices wins), logging each
// overwritten value in `undo`. The level-1 and level-2 entries above a leaf are recomputed
// right after the write, while the leaf's line and its parent's line are still in L1:
// recomputing them later, after the whole batch, would miss on those lines a second time
// (level 1 of a 1e7 tree is 10 MB). Level-3 entries are queued in `dirty`.
template <class I, class T>
void SumTree::write_leaves(const I* idx, const T* weights, size_t count, UpdateScratch* scratch) {
  std::vector<Undo>* undo = &scratch->undo;
  std::vector<uint64_t>* dirty = &scratch->dirty;
  undo->clear();
  dirty->clear();
  double* leaves = levels_[0].data();
  double* level1 = levels_.size() > 1 ? levels_[1].data() : nullptr;
  double* level2 = levels_.size() > 2 ? levels_[2].data() : nullptr;
  double* level3 = levels_.size() > 3 ? levels_[3].data() : nullptr;
  constexpr size_t kAhead = 16;
  for (size_t i = 0; i < count; ++i) {
    if (i + kAhead < count) {
      const uint64_t ahead = static_cast<uint64_t>(idx[i + kAhead]);
      __builtin_prefetch(leaves + ahead, 1);
      if (level1 != nullptr) __builtin_prefetch(level1 + ahead / kFanout, 1);
      if (level2 != nullptr) __builtin_prefetch(level2 + ahead / (kFanout * kFanout), 1);
    }
    const uint64_t leaf = static_cast<uint64_t>(idx[i]);
    undo->push_back(Undo{leaf, leaves[leaf]});
    leaves[leaf] = static_cast<double>(weights[i]) + 0.0;
    if (level1 == nullptr) continue;
    const uint64_t node1 = leaf / kFanout;
    level1[node1] = line_sum(leaves + node1 * kFanout);
    if (level2 == nullptr) continue;
    const uint64_t node2 = node1 / kFanout;
    level2[node2] = line_sum(level1 + node2 * kFanout);
    if (level3 != nullptr) queue_once(level3, node2 / kFanout, dirty);
  }
}

// Recomputes the queued level-3 entries, then their queued parents, up to the top. Once
// the queue is a large share of a level, one sequential sweep of the level is cheaper than
// random visits.
void SumTree::recompute_dirty(std::vector<uint64_t>* dirty, std::vector<uint64_t>* next_dirty) {
  std::vector<uint64_t>& next = *next_dirty;
  constexpr size_t kAhead = 8;
  for (size_t level = 3; level < levels_.size(); ++level) {
    const uint64_t nodes = levels_[level - 1].size() / kFanout;
    const bool has_parent = level + 1 < levels_.size();
    double* parent = has_parent ? levels_[level + 1].data() : nullptr;
    next.clear();
    if (dirty->size() * 4 >= nodes) {
      recompute_level(level, 0, nodes);
      if (has_parent) {
        for (uint64_t j = 0; j < nodes; j += kFanout) queue_once(parent, j / kFanout, &next);
      }
    } else {
      const double* child = levels_[level - 1].data();
      const std::vector<uint64_t>& queue = *dirty;
      for (size_t q = 0; q < queue.size(); ++q) {
        if (q + kAhead < queue.size()) __builtin_prefetch(child + queue[q + kAhead] * kFanout);
        const uint64_t j = queue[q];
        recompute_level(level, j, j + 1);
        if (has_parent) queue_once(parent, j / kFanout, &next);
      }
    }
    dirty->swap(next);
  }
}

// Leaf-range boundaries for splitting a batch into `parts` pieces: multiples of 8^3 leaves,
// so the lines of levels 0-2 that write_leaves touches for one piece belong to that piece
// alone and the level-3 entries it queues are distinct from every other piece's. They come
// from a histogram (at most 256 bins) of an evenly strided sample of the batch, so each piece
// gets about count / parts updates whatever the index distribution.
template <class I>
std::vector<uint64_t> leaf_range_bounds(const I* idx, size_t count, uint64_t n, size_t parts) {
  const int width = 64 - __builtin_clzll(std::max<uint64_t>(n - 1, 1));
  const int shift = std::max(9, width - 8);  // 2^9 = 8^3 leaves per bin at least
  const uint64_t bins = ((n - 1) >> shift) + 1;
  const size_t stride = std::max<size_t>(1, count / 4096);
  std::vector<uint64_t> histogram(bins, 0);
  size_t sampled = 0;
  for (size_t i = 0; i < count; i += stride, ++sampled) {
    ++histogram[static_cast<uint64_t>(idx[i]) >> shift];
  }
  std::vector<uint64_t> bounds{0};
  uint64_t before = 0;
  for (uint64_t b = 0; b < bins && bounds.size() < parts; ++b) {
    before += histogram[b];
    if (before * parts >= sampled * bounds.size()) bounds.push_back(std::min(n, (b + 1) << shift));
  }
  while (bounds.size() <= parts) bounds.push_back(n);
  bounds.back() = n;
  return bounds;
}

// Copies, in batch order, the updates whose leaf lies in [lo, hi) into scratch (so the last
// of duplicate indices still wins within the piece). Branch-free: the index and weight are
// always stored and the cursor advances only for a leaf in range.
template <class I, class T>
size_t select_leaf_range(const I* idx, const T* weights, size_t count, uint64_t lo,
                         uint64_t hi, std::vector<uint64_t>* idx_out,
                         std::vector<double>* weight_out) {
  idx_out->resize(count + 1);
  weight_out->resize(count + 1);
  uint64_t* leaf_dst = idx_out->data();
  double* weight_dst = weight_out->data();
  size_t kept = 0;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t leaf = static_cast<uint64_t>(idx[i]);
    leaf_dst[kept] = leaf;
    weight_dst[kept] = static_cast<double>(weights[i]);  // exact: float32 widens exactly
    kept += static_cast<size_t>(leaf - lo < hi - lo);
  }
  return kept;
}

// Large batches on large trees are split by leaf range across the pool: each thread selects
// its range's updates from the whole batch (a fast sequential pass), then writes them; the
// threads' random leaf and level-1 misses overlap, which about doubles the memory
// parallelism of write_leaves, the part of an update that dominates at 1e7 leaves.
template <class I, class T>
void SumTree::update(const I* idx, const T* weights, size_t count) {
  if (count == 0) return;
  const size_t parts =
      count >= kMinParallelUpdate && levels_.size() > 3 ? static_cast<size_t>(get_num_threads())
                                                        : 1;
  scratch_.resize(parts);
  if (parts == 1) {
    write_leaves(idx, weights, count, &scratch_[0]);
  } else {
    const std::vector<uint64_t> bounds = leaf_range_bounds(idx, count, n_, parts);
    parallel_for(parts, 1, 1, [&](uint64_t begin, uint64_t end) {
      for (uint64_t p = begin; p < end; ++p) {
        UpdateScratch& s = scratch_[p];
        const size_t kept = select_leaf_range(idx, weights, count, bounds[p], bounds[p + 1],
                                              &s.idx, &s.weights);
        write_leaves(s.idx.data(), s.weights.data(), kept, &s);
      }
    });
    for (size_t p = 1; p < parts; ++p) {
      scratch_[0].dirty.insert(scratch_[0].dirty.end(), scratch_[p].dirty.begin(),
                               scratch_[p].dirty.end());
    }
  }
  recompute_dirty(&scratch_[0].dirty, &next_dirty_);
  total_ = line_sum(levels_.back().data());
  if (std::isfinite(total_)) return;
  // Undo newest-first (pieces touch disjoint leaves), then recompute everything above.
  double* leaves = levels_[0].data();
  for (const UpdateScratch& s : scratch_) {
    for (size_t i = s.undo.size(); i-- > 0;) leaves[s.undo[i].leaf] = s.undo[i].old;
  }
  recompute_all();
  throw std::overflow_error(
      "the total weight would overflow float64 (inf); the update was not applied");
}

// Fills u[0, lanes) with the uniform targets of draws base .. base + lanes - 1 (base is a
// multiple of 4: lane g uses word (base + g) % 4 of block first_block + (base + g) / 4).
// A subnormal total is a whole number of units of 2^-1074, and so is every weight: u is then
// drawn as a whole number of units, which keeps the descent exact (U * total would be
// rounded to the unit grid and skew the odds).
inline void draw_targets(const RngState& rng, uint64_t first_block, uint64_t base,
                         uint64_t lanes, double total, double* u) {
  constexpr double kUnit = std::numeric_limits<double>::denorm_min();
  const bool subnormal_total = total < std::numeric_limits<double>::min();
  const double total_units = total / kUnit;
  for (uint64_t g = 0; g < lanes; g += 4) {
    const PhiloxBlock r = philox4x64(first_block + (base + g) / 4, rng.seed);
    for (uint64_t w = 0; w < 4 && g + w < lanes; ++w) {
      const double fraction = unit_interval(r.word[w]);
      u[g + w] = subnormal_total ? std::floor(fraction * total_units) * kUnit : fraction * total;
    }
  }
}

void SumTree::sample_range(uint64_t first_block, uint64_t begin, uint64_t end, int64_t* out,
                           double* prob_out) const {
  const int top = static_cast<int>(levels_.size()) - 1;
  double u[kLanes];
  uint64_t node[kLanes];
  double leaf_weight[kLanes];
  for (uint64_t base = begin; base < end; base += kLanes) {
    const uint64_t lanes = std::min(kLanes, end - base);
    draw_targets(rng_, first_block, base, lanes, total_, u);
    std::fill(node, node + lanes, uint64_t{0});
    for (int level = top; level >= 0; --level) {
      const double* entries = levels_[level].data();
      const double* below = level > 0 ? levels_[level - 1].data() : nullptr;
      for (uint64_t g = 0; g < lanes; ++g) {
        const double* line = entries + node[g] * kFanout;
        const uint64_t j = choose_child(line, &u[g]);
        if (level == 0) leaf_weight[g] = line[j];
        node[g] = node[g] * kFanout + j;
        if (below != nullptr) __builtin_prefetch(below + node[g] * kFanout);
      }
    }
    for (uint64_t g = 0; g < lanes; ++g) out[base + g] = static_cast<int64_t>(node[g]);
    if (prob_out != nullptr) {
      for (uint64_t g = 0; g < lanes; ++g) prob_out[base + g] = leaf_weight[g] / total_;
    }
  }
}

#if FASTIS_HAVE_AVX512
// The same descent, eight lanes per AVX-512 register, bit for bit: each lane's prefix sums are
// still taken left to right (column c of the eight lines is added to the running sums in
// order c = 0..7), and, prefix sums being non-decreasing, the last i with prefix[i] <= v is
// the scalar count j, so blending prefix[i] under that mask selects prefix[j].

// choose_child for eight lanes, from their prefix sums prefix[1..7] and line sums: returns
// j and turns *u into the offset inside child j.
__attribute__((target("avx512f,avx512dq"))) inline __m512i choose_children(
    const __m512d* prefix, __m512d line_sum, __m512d* u) {
  // v = min(u, just_below(line sum)); the line sum is positive, so just_below is the bit
  // pattern minus one.
  const __m512d below_sum = _mm512_castsi512_pd(
      _mm512_sub_epi64(_mm512_castpd_si512(line_sum), _mm512_set1_epi64(1)));
  const __m512d target = _mm512_min_pd(*u, below_sum);
  __m512d chosen_prefix = _mm512_setzero_pd();
  __m512i j = _mm512_setzero_si512();
  for (int i = 1; i < 8; ++i) {
    const __mmask8 at_or_below = _mm512_cmp_pd_mask(prefix[i], target, _CMP_LE_OQ);
    j = _mm512_mask_add_epi64(j, at_or_below, j, _mm512_set1_epi64(1));
    chosen_prefix = _mm512_mask_blend_pd(at_or_below, chosen_prefix, prefix[i]);
  }
  *u = _mm512_sub_pd(target, chosen_prefix);
  return j;
}

// Column c of eight lanes' lines (child c of each lane's node), from one 64-byte load per
// line and an 8 x 8 transpose (24 shuffles). These are the values that eight gathers of the
// columns return (64 loads, one per lane and column); the draws are 6-15% faster this way
// (benchmarks/sum_tree_draw_ab.cpp).
__attribute__((target("avx512f"))) inline void load_columns(const double* entries,
                                                            const uint64_t* lines,
                                                            __m512d* column) {
  __m512d row[8];
  for (int l = 0; l < 8; ++l) row[l] = _mm512_loadu_pd(entries + lines[l] * kFanout);
  // Three regroupings, each doubling the run of rows that a 128-bit block holds for one
  // column.
  __m512d pair[8], quad[8];
  for (int l = 0; l < 8; l += 2) {
    // The four 128-bit blocks hold rows l, l + 1 of columns 0, 2, 4, 6 (pair[l]) and of
    // columns 1, 3, 5, 7 (pair[l + 1]).
    pair[l] = _mm512_unpacklo_pd(row[l], row[l + 1]);
    pair[l + 1] = _mm512_unpackhi_pd(row[l], row[l + 1]);
  }
  for (int h = 0; h < 8; h += 4) {
    // Blocks 0-3 hold rows h, h + 1 of columns a, b, then rows h + 2, h + 3 of a, b, with
    // (a, b) = (0, 4) in quad[h], (1, 5) in quad[h + 1], (2, 6) and (3, 7).
    for (int odd = 0; odd < 2; ++odd) {
      quad[h + odd] = _mm512_shuffle_f64x2(pair[h + odd], pair[h + 2 + odd], 0x88);
      quad[h + 2 + odd] = _mm512_shuffle_f64x2(pair[h + odd], pair[h + 2 + odd], 0xDD);
    }
  }
  // Blocks 0 and 2 of quad[c] and of quad[4 + c] are column c, rows 0-7; blocks 1 and 3
  // are column c + 4.
  column[0] = _mm512_shuffle_f64x2(quad[0], quad[4], 0x88);
  column[4] = _mm512_shuffle_f64x2(quad[0], quad[4], 0xDD);
  column[1] = _mm512_shuffle_f64x2(quad[1], quad[5], 0x88);
  column[5] = _mm512_shuffle_f64x2(quad[1], quad[5], 0xDD);
  column[2] = _mm512_shuffle_f64x2(quad[2], quad[6], 0x88);
  column[6] = _mm512_shuffle_f64x2(quad[2], quad[6], 0xDD);
  column[3] = _mm512_shuffle_f64x2(quad[3], quad[7], 0x88);
  column[7] = _mm512_shuffle_f64x2(quad[3], quad[7], 0xDD);
}

__attribute__((target("avx512f,avx512dq"))) void SumTree::sample_range_avx512(
    uint64_t first_block, uint64_t begin, uint64_t end, int64_t* out, double* prob_out) const {
  constexpr int kVectors = kLanes / 8;
  const int top = static_cast<int>(levels_.size()) - 1;
  // The top level is one line that every lane starts from: its prefix sums are computed
  // once and broadcast instead of gathered.
  __m512d top_prefix[8];
  const double* top_line = levels_[top].data();
  double running_top = top_line[0];
  top_prefix[1] = _mm512_set1_pd(running_top);
  for (int c = 1; c < 8; ++c) {
    running_top += top_line[c];
    if (c < 7) top_prefix[c + 1] = _mm512_set1_pd(running_top);
  }
  const __m512d top_sum = _mm512_set1_pd(running_top);
  alignas(64) double u_lanes[kLanes];
  alignas(64) uint64_t next[kLanes];
  for (uint64_t base = begin; base < end; base += kLanes) {
    const uint64_t lanes = std::min(kLanes, end - base);
    draw_targets(rng_, first_block, base, lanes, total_, u_lanes);
    // Only the vectors that hold draws descend; spare lanes of the last one descend with
    // u = 0 and are not stored.
    const int vectors = static_cast<int>((lanes + 7) / 8);
    std::fill(u_lanes + lanes, u_lanes + 8 * vectors, 0.0);
    __m512d u[kVectors];
    __m512i node[kVectors];
    __m512d leaf_weight[kVectors];
    for (int v = 0; v < vectors; ++v) {
      u[v] = _mm512_load_pd(u_lanes + 8 * v);
      node[v] = choose_children(top_prefix, top_sum, &u[v]);
      if (top == 0) leaf_weight[v] = _mm512_i64gather_pd(node[v], top_line, 8);
      _mm512_store_si512(next + 8 * v, node[v]);
    }
    if (top > 0) {
      const double* below = levels_[top - 1].data();
      for (uint64_t g = 0; g < lanes; ++g) __builtin_prefetch(below + next[g] * kFanout);
    }
    for (int level = top - 1; level >= 0; --level) {
      const double* entries = levels_[level].data();
      for (int v = 0; v < vectors; ++v) {
        const __m512i first = _mm512_slli_epi64(node[v], 3);  // node * kFanout
        __m512d column[8];
        load_columns(entries, next + 8 * v, column);
        __m512d prefix[8];
        __m512d running = column[0];
        prefix[1] = running;
        for (int c = 1; c < 8; ++c) {
          running = _mm512_add_pd(running, column[c]);
          if (c < 7) prefix[c + 1] = running;
        }
        const __m512i j = choose_children(prefix, running, &u[v]);
        node[v] = _mm512_add_epi64(first, j);
        if (level == 0 && prob_out != nullptr) {
          leaf_weight[v] = _mm512_i64gather_pd(node[v], entries, 8);
        }
        if (level > 0) _mm512_store_si512(next + 8 * v, node[v]);
      }
      if (level > 0) {
        const double* below = levels_[level - 1].data();
        for (uint64_t g = 0; g < lanes; ++g) __builtin_prefetch(below + next[g] * kFanout);
      }
    }
    alignas(64) int64_t idx[kLanes];
    for (int v = 0; v < vectors; ++v) _mm512_store_si512(idx + 8 * v, node[v]);
    std::copy(idx, idx + lanes, out + base);
    if (prob_out != nullptr) {
      alignas(64) double weight[kLanes];
      for (int v = 0; v < vectors; ++v) _mm512_store_pd(weight + 8 * v, leaf_weight[v]);
      for (uint64_t g = 0; g < lanes; ++g) prob_out[base + g] = weight[g] / total_;
    }
  }
}
#endif

void SumTree::sample(uint64_t k, int64_t* out, double* prob_out) {
  if (!(total_ > 0.0)) {
    throw std::invalid_argument("cannot sample: all weights are zero (total = 0)");
  }
  const uint64_t first_block = rng_.reserve(k);
  const bool vector = simd_enabled(Simd::kAvx512);
  parallel_for(k, kLanes, kMinDrawsPerThread, [&](uint64_t begin, uint64_t end) {
#if FASTIS_HAVE_AVX512
    if (vector) return sample_range_avx512(first_block, begin, end, out, prob_out);
#endif
    sample_range(first_block, begin, end, out, prob_out);
  });
}

template SumTree::SumTree(const float*, uint64_t);
template SumTree::SumTree(const double*, uint64_t);
template void SumTree::update<int32_t, float>(const int32_t*, const float*, size_t);
template void SumTree::update<int32_t, double>(const int32_t*, const double*, size_t);
template void SumTree::update<int64_t, float>(const int64_t*, const float*, size_t);
template void SumTree::update<int64_t, double>(const int64_t*, const double*, size_t);

}  // namespace fastis
