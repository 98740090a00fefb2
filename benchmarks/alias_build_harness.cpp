// AliasTable build time without Python: builds the table `repeats` times from the same
// lognormal(0, 2) weights and prints the median. The weights sit on 2 MiB pages, as numpy
// puts large arrays; the table and its weight copy are fresh memory at every build, as in
// benchmarks/bench_sampler.py. For alternating two revisions of csrc/ in one session.
//
//   g++ -O3 -fno-math-errno -std=c++17 -Icsrc benchmarks/alias_build_harness.cpp \
//       csrc/alias_table.cpp csrc/alias_classes.cpp csrc/parallel.cpp csrc/simd.cpp \
//       -pthread -o /tmp/alias_build && /tmp/alias_build 10000000 2 11   # n threads repeats
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "alias_table.hpp"
#include "parallel.hpp"

int main(int argc, char** argv) {
  const uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10000000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 11;
  fastis::set_num_threads(threads);
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  void* mapped = mmap(nullptr, n * sizeof(double) + kHugePage, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return 1;
  auto* w = reinterpret_cast<double*>((reinterpret_cast<uintptr_t>(mapped) + kHugePage - 1) &
                                      ~(kHugePage - 1));
  madvise(w, n * sizeof(double), MADV_HUGEPAGE);
  std::mt19937_64 gen(0);
  std::lognormal_distribution<double> lognormal(0.0, 2.0);
  for (uint64_t i = 0; i < n; ++i) w[i] = lognormal(gen);
  std::vector<double> ms;
  int64_t drawn = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fastis::AliasTable table(w, n);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
    table.sample(1, &drawn, nullptr);  // use the table, so the build cannot be elided
  }
  std::sort(ms.begin(), ms.end());
  std::printf("n=%llu threads=%d repeats=%d: median %.1f ms, min %.1f ms (last draw %lld)\n",
              static_cast<unsigned long long>(n), threads, repeats, ms[ms.size() / 2], ms[0],
              static_cast<long long>(drawn));
}
