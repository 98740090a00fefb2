#include "parallel.hpp"

#include <atomic>
#include <stdexcept>

namespace fastis {

namespace {

int default_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::atomic<int> g_threads{default_threads()};

}  // namespace

int get_num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("the number of threads must be at least 1");
  g_threads.store(threads, std::memory_order_relaxed);
}

}  // namespace fastis
