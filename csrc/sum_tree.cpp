#include "sum_tree.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "ingest.hpp"
#include "parallel.hpp"

namespace fastis {

namespace {

constexpr uint64_t kFanout = 8;
// Descents in flight per thread: enough independent work to hide a DRAM miss (~100 ns)
// behind the other lanes' compare/select work.
constexpr uint64_t kLanes = 32;
constexpr uint64_t kMinDrawsPerThread = uint64_t{1} << 15;
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
  ingest(w, n, levels_[0].data());
  recompute_all();
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

void SumTree::recompute_all() {
  for (size_t level = 1; level < levels_.size(); ++level) {
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

void SumTree::sample_range(uint64_t first_block, uint64_t begin, uint64_t end, int64_t* out,
                           double* prob_out) const {
  const double total = total_;
  // A subnormal total is a whole number of units of 2^-1074, and so is every weight: u is
  // then drawn as a whole number of units, which keeps the descent exact (U * total would be
  // rounded to the unit grid and skew the odds).
  constexpr double kUnit = std::numeric_limits<double>::denorm_min();
  const bool subnormal_total = total < std::numeric_limits<double>::min();
  const double total_units = total / kUnit;
  const int top = static_cast<int>(levels_.size()) - 1;
  double u[kLanes];
  uint64_t node[kLanes];
  double leaf_weight[kLanes];
  for (uint64_t base = begin; base < end; base += kLanes) {
    const uint64_t lanes = std::min(kLanes, end - base);
    // begin is a multiple of 4, so lane g uses word (base + g) % 4 of block (base + g) / 4.
    for (uint64_t g = 0; g < lanes; g += 4) {
      const PhiloxBlock r = philox4x64(first_block + (base + g) / 4, rng_.seed);
      for (uint64_t w = 0; w < 4 && g + w < lanes; ++w) {
        const double fraction = unit_interval(r.word[w]);
        u[g + w] = subnormal_total ? std::floor(fraction * total_units) * kUnit : fraction * total;
        node[g + w] = 0;
      }
    }
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
      for (uint64_t g = 0; g < lanes; ++g) prob_out[base + g] = leaf_weight[g] / total;
    }
  }
}

void SumTree::sample(uint64_t k, int64_t* out, double* prob_out) {
  if (!(total_ > 0.0)) {
    throw std::invalid_argument("cannot sample: all weights are zero (total = 0)");
  }
  const uint64_t first_block = rng_.reserve(k);
  parallel_for(k, kLanes, kMinDrawsPerThread, [&](uint64_t begin, uint64_t end) {
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
