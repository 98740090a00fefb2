// A sum tree over float64 weights with 8-wide nodes (one 64-byte cache line of children),
// batched updates and interleaved, branch-free descents.
//
// Layout: level 0 holds the weights themselves, padded with zeros to a multiple of 8;
// entry j of level L + 1 is the sum of entries 8j..8j+7 of level L; the top level is a
// single line, and `total` is the sum of that line. About 9.1 bytes per example.
//
// Exactness: every internal entry is recomputed from its children (never adjusted by a
// delta), always summed left to right, so the tree is a pure function of its leaves: no
// drift after any number of updates, and a state_dict rebuild is bit-identical. A descent
// sums a line left to right too, so its running prefix ends exactly on the parent entry.
//
// Thread safety: none inside; the Python binding holds a per-object mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "buffer.hpp"
#include "rng.hpp"

namespace fastis {

// The most examples a SumTree holds: far beyond any memory, and small enough that no size
// computation can wrap around 2^64.
constexpr uint64_t kMaxExamples = uint64_t{1} << 60;

class SumTree {
 public:
  // A tree of n zero weights (n >= 1).
  explicit SumTree(uint64_t n);

  // A tree of the n weights w (copied); std::invalid_argument names the first NaN,
  // infinite or negative weight, std::overflow_error reports a total that overflows.
  template <class T>
  SumTree(const T* w, uint64_t n);

  // Sets w[idx[i]] = weights[i] for i in order (so the last of duplicate indices wins) and
  // recomputes each dirty ancestor once; large batches on large trees are split across
  // threads by leaf range. The caller checks the inputs; if the new total would overflow
  // to inf, the tree is restored and std::overflow_error is thrown.
  template <class I, class T>
  void update(const I* idx, const T* weights, size_t count);

  // Draws k indices with replacement, P(i) = w_i / total, using and advancing rng().
  // prob_out (may be null) receives w_i / total for each draw. Requires total() > 0.
  void sample(uint64_t k, int64_t* out, double* prob_out);

  uint64_t size() const { return n_; }
  double total() const { return total_; }
  size_t nbytes() const;
  const double* weights() const { return levels_[0].data(); }
  RngState& rng() { return rng_; }

 private:
  // The levels for n_ leaves: all zero, or (zeroed = false) with only the padding zeroed,
  // for a constructor that writes every other entry.
  void allocate_levels(bool zeroed);
  void recompute_all();
  // Recomputes levels computed + 1 .. top from level `computed` and the total.
  void recompute_above(size_t computed);
  void recompute_level(size_t level, uint64_t begin, uint64_t end);
  void recompute_dirty(std::vector<uint64_t>* dirty, std::vector<uint64_t>* next);
  struct Undo {
    uint64_t leaf;
    double old;
  };
  // One thread's share of an update: its piece of the batch (when the batch is split), the
  // values it overwrote (to undo an overflowing batch) and the level-3 entries it queued.
  struct UpdateScratch {
    std::vector<uint64_t> idx;
    std::vector<double> weights;
    std::vector<Undo> undo;
    std::vector<uint64_t> dirty;
  };
  template <class I, class T>
  void write_leaves(const I* idx, const T* weights, size_t count, UpdateScratch* scratch);
  void sample_range(uint64_t first_block, uint64_t begin, uint64_t end, int64_t* out,
                    double* prob_out) const;
  void sample_range_avx512(uint64_t first_block, uint64_t begin, uint64_t end, int64_t* out,
                           double* prob_out) const;

  uint64_t n_;
  std::vector<LargeBuffer<double>> levels_;
  // update()'s working memory, kept between calls: allocating ~2.5 MB per batch of 65,536
  // afresh costs page faults on every call (and more when pool threads free it).
  std::vector<UpdateScratch> scratch_;
  std::vector<uint64_t> next_dirty_;
  double total_ = 0.0;
  RngState rng_;
};

}  // namespace fastis
