// Fork-join over a persistent pool of worker threads. Results never depend on the thread
// count or on which thread runs which piece: callers split work on boundaries that the
// computation itself defines (RNG blocks, fixed-size chunks), and every piece writes only
// its own part of the output.
//
// Why a persistent pool: starting a std::thread costs 20-50 us, more than a whole draw of
// 1,024 indices, so per-call threads only paid off for huge calls. Pool workers instead
// spin briefly after each job (100 us, kSpin in parallel.cpp, as OpenMP runtimes do) and
// then sleep; back-to-back calls, as in a training loop, find them awake. Pieces are
// claimed one at a time from a shared counter, so the calling thread never waits for a
// sleeping worker to wake: if the worker is late, the caller simply runs more pieces itself.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fastis {

// Threads used by large calls (the caller plus get_num_threads() - 1 pool workers); set
// from Python with fastis.set_num_threads(), which bounds it by the CPUs available. This is
// the hard limit behind that bound.
constexpr int kMaxThreads = 1024;
int get_num_threads();
void set_num_threads(int threads);

namespace detail {

using PieceFn = void (*)(void* context, uint64_t begin, uint64_t end);

// Runs fn(context, begin, end) over [0, total) in pieces of `piece` items (the last may be
// shorter), on the pool and the calling thread. Rethrows the first exception of any piece.
void run_on_pool(uint64_t total, uint64_t piece, PieceFn fn, void* context);

}  // namespace detail

// Calls fn(begin, end) on pieces that cover [0, total), with boundaries at multiples of
// `align`, in parallel when there are at least 2 * min_per_thread items; otherwise in one
// call on the calling thread.
template <class Fn>
void parallel_for(uint64_t total, uint64_t align, uint64_t min_per_thread, Fn&& fn) {
  const uint64_t threads = static_cast<uint64_t>(get_num_threads());
  if (threads <= 1 || total < 2 * std::max<uint64_t>(1, min_per_thread)) {
    if (total > 0) fn(uint64_t{0}, total);
    return;
  }
  // About eight pieces per thread balance the load when the threads run at different
  // speeds, while each piece still holds at least min_per_thread items: every claim is an
  // atomic operation on a cache line that the threads pass back and forth.
  const uint64_t target = std::max<uint64_t>(total / (threads * 8), min_per_thread);
  const uint64_t piece = std::max<uint64_t>(1, (target + align - 1) / align) * align;
  using Body = std::remove_reference_t<Fn>;
  auto call = [](void* context, uint64_t begin, uint64_t end) {
    (*static_cast<Body*>(context))(begin, end);
  };
  detail::run_on_pool(total, piece, call, const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace fastis
