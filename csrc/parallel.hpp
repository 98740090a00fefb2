// A minimal fork-join helper. Results never depend on the thread count: callers split work
// on boundaries that the computation itself defines (RNG blocks, fixed-size chunks).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace fastis {

// Threads used by large calls; set from Python with fastis.set_num_threads().
int get_num_threads();
void set_num_threads(int threads);

// Calls fn(begin, end) on contiguous pieces of [0, total) whose boundaries are multiples of
// `align`, one piece per thread. Work below `min_per_thread` items per thread stays on the
// calling thread: starting a thread costs ~20-50 us.
template <class Fn>
void parallel_for(uint64_t total, uint64_t align, uint64_t min_per_thread, Fn&& fn) {
  const uint64_t by_size = std::max<uint64_t>(1, total / std::max<uint64_t>(1, min_per_thread));
  const uint64_t threads = std::min<uint64_t>(static_cast<uint64_t>(get_num_threads()), by_size);
  if (threads <= 1) {
    fn(uint64_t{0}, total);
    return;
  }
  const uint64_t units = (total + align - 1) / align;
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(threads);
  auto piece = [&](uint64_t t) {
    const uint64_t begin = std::min(total, units * t / threads * align);
    const uint64_t end = std::min(total, units * (t + 1) / threads * align);
    try {
      if (begin < end) fn(begin, end);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  workers.reserve(threads - 1);
  for (uint64_t t = 1; t < threads; ++t) workers.emplace_back(piece, t);
  piece(0);
  for (auto& w : workers) w.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace fastis
