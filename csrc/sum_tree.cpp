#include "sum_tree.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "ingest.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace fastis {

namespace {

constexpr uint64_t kFanout = 8;
// Descents in flight per thread: enough independent work to hide a DRAM miss (~100 ns)
// behind the other lanes' compare/select work.
constexpr uint64_t kLanes = 32;
// A piece of 256 draws is ~5 us of work, well above the pool's hand-off cost (~1 us).
constexpr uint64_t kMinDrawsPerThread = 256;
constexpr uint64_t kMinNodesPerThread = uint64_t{1} << 16;

uint64_t round_up(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

// Left-to-right sum of one line; the descent's prefix sums use the same order.
inline double line_sum(const double* a) {
  double s = a[0];
  for (int i = 1; i < 8; ++i) s += a[i];
  return s;
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

SumTree::SumTree(uint64_t n) : n_(n) { allocate_levels(); }

template <class T>
SumTree::SumTree(const T* w, uint64_t n) : n_(n) {
  allocate_levels();
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

void SumTree::allocate_levels() {
  if (n_ == 0) throw std::invalid_argument("a SumTree needs at least one example (n = 0)");
  uint64_t entries = round_up(n_, kFanout);
  levels_.emplace_back(entries);
  while (entries > kFanout) {
    entries = round_up(entries / kFanout, kFanout);
    levels_.emplace_back(entries);
  }
}

size_t SumTree::nbytes() const {
  size_t bytes = sizeof(*this);
  for (const auto& level : levels_) bytes += level.bytes();
  return bytes;
}

void SumTree::recompute_level(size_t level, uint64_t begin, uint64_t end) {
  const double* child = levels_[level - 1].data();
  double* parent = levels_[level].data();
  for (uint64_t j = begin; j < end; ++j) parent[j] = line_sum(child + j * kFanout);
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
// overwritten value in `undo`. The level-1 entry above a leaf is recomputed right after the
// write, while the leaf's line is still in L1: recomputing it later, after the whole batch,
// would miss on that line a second time. Level-2 entries are queued in `dirty`.
template <class I, class T>
void SumTree::write_leaves(const I* idx, const T* weights, size_t count,
                           std::vector<Undo>* undo, std::vector<uint64_t>* dirty) {
  double* leaves = levels_[0].data();
  double* level1 = levels_.size() > 1 ? levels_[1].data() : nullptr;
  double* level2 = levels_.size() > 2 ? levels_[2].data() : nullptr;
  constexpr size_t kAhead = 16;
  for (size_t i = 0; i < count; ++i) {
    if (i + kAhead < count) {
      const uint64_t ahead = static_cast<uint64_t>(idx[i + kAhead]);
      __builtin_prefetch(leaves + ahead, 1);
      if (level1 != nullptr) __builtin_prefetch(level1 + ahead / kFanout, 1);
    }
    const uint64_t leaf = static_cast<uint64_t>(idx[i]);
    undo->push_back(Undo{leaf, leaves[leaf]});
    leaves[leaf] = static_cast<double>(weights[i]) + 0.0;
    if (level1 == nullptr) continue;
    const uint64_t node = leaf / kFanout;
    level1[node] = line_sum(leaves + node * kFanout);
    if (level2 != nullptr) queue_once(level2, node / kFanout, dirty);
  }
}

// Recomputes the queued level-2 entries, then their queued parents, up to the top. Once
// the queue is a large share of a level, one sequential sweep of the level is cheaper than
// random visits.
void SumTree::recompute_dirty(std::vector<uint64_t>* dirty) {
  std::vector<uint64_t> next;
  constexpr size_t kAhead = 8;
  for (size_t level = 2; level < levels_.size(); ++level) {
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

// Single-threaded: splitting a batch across two threads by owned subtrees measured 2x
// slower than one thread on this 2-core machine (see the README's benchmark notes).
template <class I, class T>
void SumTree::update(const I* idx, const T* weights, size_t count) {
  if (count == 0) return;
  std::vector<Undo> undo;  // overwritten values, so an overflowing batch can be undone
  undo.reserve(count);
  std::vector<uint64_t> dirty;
  dirty.reserve(count);
  write_leaves(idx, weights, count, &undo, &dirty);
  recompute_dirty(&dirty);
  total_ = line_sum(levels_.back().data());
  if (std::isfinite(total_)) return;
  // Undo newest-first, then recompute everything above the leaves.
  double* leaves = levels_[0].data();
  for (size_t i = undo.size(); i-- > 0;) leaves[undo[i].leaf] = undo[i].old;
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
__attribute__((target("avx512f,avx512dq"))) void SumTree::sample_range_avx512(
    uint64_t first_block, uint64_t begin, uint64_t end, int64_t* out, double* prob_out) const {
  constexpr int kVectors = kLanes / 8;
  const int top = static_cast<int>(levels_.size()) - 1;
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
      node[v] = _mm512_setzero_si512();
    }
    for (int level = top; level >= 0; --level) {
      const double* entries = levels_[level].data();
      for (int v = 0; v < vectors; ++v) {
        const __m512i first = _mm512_slli_epi64(node[v], 3);  // node * kFanout
        __m512d column = _mm512_i64gather_pd(first, entries, 8);
        __m512d running = column;
        __m512d chosen_prefix = _mm512_setzero_pd();
        __m512i j = _mm512_setzero_si512();
        __m512d prefix[8];
        prefix[1] = running;
        for (int c = 1; c < 8; ++c) {
          column = _mm512_i64gather_pd(_mm512_add_epi64(first, _mm512_set1_epi64(c)), entries, 8);
          running = _mm512_add_pd(running, column);
          if (c < 7) prefix[c + 1] = running;
        }
        // v = min(u, just_below(line sum)); the line sum is positive, so just_below is the
        // bit pattern minus one.
        const __m512d below_sum = _mm512_castsi512_pd(
            _mm512_sub_epi64(_mm512_castpd_si512(running), _mm512_set1_epi64(1)));
        const __m512d target = _mm512_min_pd(u[v], below_sum);
        for (int i = 1; i < 8; ++i) {
          const __mmask8 at_or_below = _mm512_cmp_pd_mask(prefix[i], target, _CMP_LE_OQ);
          j = _mm512_mask_add_epi64(j, at_or_below, j, _mm512_set1_epi64(1));
          chosen_prefix = _mm512_mask_blend_pd(at_or_below, chosen_prefix, prefix[i]);
        }
        u[v] = _mm512_sub_pd(target, chosen_prefix);
        if (level == 0) {
          leaf_weight[v] = _mm512_i64gather_pd(_mm512_add_epi64(first, j), entries, 8);
        }
        node[v] = _mm512_add_epi64(first, j);
        if (level > 0) _mm512_store_si512(next + 8 * v, node[v]);
      }
      if (level > 0) {
        const double* below = levels_[level - 1].data();
        for (uint64_t g = 0; g < lanes; ++g) __builtin_prefetch(below + next[g] * kFanout);
      }
    }
    alignas(64) int64_t idx[kLanes];
    alignas(64) double weight[kLanes];
    for (int v = 0; v < vectors; ++v) {
      _mm512_store_si512(idx + 8 * v, node[v]);
      _mm512_store_pd(weight + 8 * v, leaf_weight[v]);
    }
    std::copy(idx, idx + lanes, out + base);
    if (prob_out != nullptr) {
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
