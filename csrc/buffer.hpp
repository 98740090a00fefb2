// 64-byte aligned storage for large arrays, zero-initialised unless asked otherwise.
//
// Large buffers come straight from mmap: the kernel hands out zeroed pages lazily (a tree
// of billions of zero weights costs nothing until written), MAP_NORESERVE lets such a tree
// exist beyond the overcommit heuristic, and MADV_HUGEPAGE asks for 2 MiB pages, which cut
// TLB misses on the random accesses that dominate draws (docs/core.md). A buffer
// whose owner overwrites all of it can take over a freed buffer's mapping instead of fresh
// pages (recycled_memory.hpp); every freed mapping is offered for that reuse.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include <sys/mman.h>

#include "recycled_memory.hpp"

namespace fastis {

// Tag for a LargeBuffer whose contents start arbitrary: the owner writes all of it.
struct Uninitialized {};

template <class T>
class LargeBuffer {
 public:
  LargeBuffer() = default;

  explicit LargeBuffer(size_t count) : LargeBuffer(count, true) {}
  LargeBuffer(size_t count, Uninitialized) : LargeBuffer(count, false) {}

  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;
  LargeBuffer(LargeBuffer&& other) noexcept { swap(other); }
  LargeBuffer& operator=(LargeBuffer&& other) noexcept {
    LargeBuffer tmp(std::move(other));
    swap(tmp);
    return *this;
  }
  ~LargeBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kMmapThreshold = size_t{1} << 20;

  LargeBuffer(size_t count, bool zeroed) : count_(count) {
    if (count == 0) return;
    if (count > SIZE_MAX / sizeof(T) - 2 * kHugePage) throw std::bad_alloc();
    const size_t bytes = count * sizeof(T);
    if (bytes < kMmapThreshold) {
      const size_t rounded = (bytes + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, rounded);
      if (p == nullptr) throw std::bad_alloc();
      if (zeroed) std::memset(p, 0, rounded);
      data_ = static_cast<T*>(p);
      return;
    }
    // Whole huge pages, plus one so that the data can start on a 2 MiB boundary; sizes
    // rounded this way let buffers of slightly different lengths share recycled mappings.
    map_bytes_ = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    void* base = zeroed ? nullptr : recycled::take(map_bytes_);
    const bool fresh = base == nullptr;
    if (fresh) {
      base = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) throw std::bad_alloc();
    }
    map_base_ = base;
    const uintptr_t aligned =
        (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) / kHugePage * kHugePage;
#ifdef MADV_HUGEPAGE
    if (fresh) madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
    data_ = reinterpret_cast<T*>(aligned);
  }

  void swap(LargeBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    std::swap(map_base_, other.map_base_);
    std::swap(map_bytes_, other.map_bytes_);
  }

  void release() {
    if (map_base_ != nullptr) {
      recycled::give(map_base_, map_bytes_);
    } else {
      std::free(data_);
    }
    data_ = nullptr;
    map_base_ = nullptr;
    count_ = 0;
  }

  T* data_ = nullptr;
  size_t count_ = 0;
  void* map_base_ = nullptr;
  size_t map_bytes_ = 0;
};

}  // namespace fastis
