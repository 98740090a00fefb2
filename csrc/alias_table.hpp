// Walker's alias method with Vose's O(n) construction, built by a single forward sweep
// (Hübschle-Schneider & Sanders, "Parallel Weighted Random Sampling", ACM TOMS 2022,
// section 4: both cursors only move forward, so the build streams through memory instead
// of chasing the worklists of the textbook version).
//
// A draw takes one 64-bit random word r and the product r * n as a 128-bit number: its high
// half is a uniform bucket b, its low half the uniform position inside that bucket (spacing
// n / 2^64), so a draw costs one random word and one random cache line.
//
// Entry precision: the keep-probability of a bucket is stored as float32 when n <= 2^32
// (8-byte entries), so every item's probability is exact to ~6e-8 relative, and an item of
// tiny positive weight stays reachable (float32 keeps its exponent). Beyond 2^32 items the
// entries are 16 bytes (float64 + 64-bit alias).
#pragma once

#include <cstddef>
#include <cstdint>

#include "buffer.hpp"
#include "rng.hpp"

namespace fastis {

struct AliasEntry32 {
  float keep;
  uint32_t alias;
};

struct AliasEntry64 {
  double keep;
  uint64_t alias;
};

class AliasTable {
 public:
  // Copies and checks n weights: std::invalid_argument for a NaN, infinite or negative
  // weight or an all-zero vector, std::overflow_error if the total overflows. Entries are
  // 16 bytes (float64 keep) beyond 2^32 items, or always with wide = true (for tests).
  template <class T>
  AliasTable(const T* w, uint64_t n, bool wide = false);

  // Draws k indices with replacement, using and advancing rng(); prob_out (may be null)
  // receives w_i / total for each draw.
  void sample(uint64_t k, int64_t* out, double* prob_out);

  uint64_t size() const { return n_; }
  double total() const { return total_; }
  size_t nbytes() const;
  const double* weights() const { return weights_.data(); }
  RngState& rng() { return rng_; }
  // Copies the table: bucket k keeps item k with probability keep[k], else draws alias[k].
  void entries(double* keep, int64_t* alias) const;

 private:
  template <class Entry>
  void build(LargeBuffer<Entry>* table);
  template <class Entry>
  void sample_range(const Entry* table, uint64_t first_block, uint64_t begin, uint64_t end,
                    int64_t* out, double* prob_out) const;

  uint64_t n_;
  double total_ = 0.0;
  LargeBuffer<double> weights_;
  LargeBuffer<AliasEntry32> table32_;
  LargeBuffer<AliasEntry64> table64_;
  RngState rng_;
};

}  // namespace fastis
