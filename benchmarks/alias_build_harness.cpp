// AliasTable build time without Python, and where it goes. The weights are n lognormal(0, 2)
// values on 2 MiB pages, as numpy puts large arrays. Two kinds of build, as in
// benchmarks/bench_structures.py: a rebuild, whose table and weight copy reuse the memory of
// the table freed before it (recycled_memory.hpp), and a build into fresh memory (nothing
// kept for reuse). Each timed step includes freeing its table.
//   - Without `profile`: the median times of both, for alternating two revisions of csrc/
//     in one session.
//   - With `profile`: the fresh build next to its first two phases run alone with the library's
//     own code (the checked copy into fresh memory, the classification) and next to what this
//     machine's memory allows (reading the weights, first touch of 8 bytes per item, writing
//     8 bytes per item), all interleaved round-robin. The rest of the build (the table's
//     first touch and the sweep) follows by difference. This is the profile behind the
//     AliasTable build target (benchmarks/README.md, docs/core.md).
//
// Build and run (arguments: n threads repeats [profile]):
//   g++ -O3 -fno-math-errno -std=c++17 -Icsrc benchmarks/alias_build_harness.cpp
//     csrc/alias_table.cpp csrc/alias_classes.cpp csrc/parallel.cpp csrc/simd.cpp
//     csrc/recycled_memory.cpp -pthread -o /tmp/alias_build
//   /tmp/alias_build 10000000 2 11 profile
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "alias_classes.hpp"
#include "alias_table.hpp"
#include "buffer.hpp"
#include "ingest.hpp"
#include "parallel.hpp"
#include "recycled_memory.hpp"

namespace {

// A timed step, and what runs untimed right before it.
struct Step {
  template <class Run, class Before = void (*)()>
  Step(Run run_step, Before before_step = [] {}) : run(run_step), before(before_step) {}
  std::function<void()> run;
  std::function<void()> before;
};

// Runs the timed steps round-robin `repeats` times, so that all of them see the same drift
// of this VM's speed, and returns each one's median in milliseconds.
std::vector<double> interleaved_medians(int repeats, const std::vector<Step>& steps) {
  std::vector<std::vector<double>> ms(steps.size());
  for (int r = 0; r < repeats; ++r) {
    for (size_t s = 0; s < steps.size(); ++s) {
      steps[s].before();
      const auto start = std::chrono::steady_clock::now();
      steps[s].run();
      ms[s].push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
    }
  }
  std::vector<double> medians;
  for (auto& m : ms) {
    std::sort(m.begin(), m.end());
    medians.push_back(m[m.size() / 2]);
  }
  return medians;
}

volatile double g_sink;  // keeps the timed passes from being optimised away

}  // namespace

int main(int argc, char** argv) {
  const uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10000000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 11;
  const bool profile = argc > 4 && std::strcmp(argv[4], "profile") == 0;
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

  int64_t drawn = 0;
  auto build_table = [&] {
    fastis::AliasTable table(w, n);
    table.sample(1, &drawn, nullptr);  // use the table, so the build cannot be elided
  };
  // The memory of the table freed before it (or of other freed buffers of its size).
  const Step rebuild{build_table, [&] {
                       if (fastis::recycled::kept_bytes() == 0) build_table();
                     }};
  // Fresh memory: nothing kept before it, and nothing kept from it (its table is unmapped
  // when freed, as every table was before memory was recycled).
  const Step build{[&] {
                     const size_t limit = fastis::recycled::set_limit(0);
                     build_table();
                     fastis::recycled::set_limit(limit);
                   },
                   [] { fastis::recycled::release_all(); }};
  if (!profile) {
    const std::vector<double> ms = interleaved_medians(repeats, {rebuild, build});
    std::printf("n=%llu threads=%d repeats=%d: median rebuild %.1f ms, build into fresh "
                "memory %.1f ms (last draw %lld)\n",
                static_cast<unsigned long long>(n), threads, repeats, ms[0], ms[1],
                static_cast<long long>(drawn));
    return 0;
  }

  // The profile is of the build into fresh memory: nothing is kept for reuse from here on.
  fastis::recycled::set_limit(0);
  // The build's first two phases with the library's own code, each from fresh memory as in
  // the build. The classification runs on a copy with a plain scale n / total (the build's
  // power-of-two prescale changes no timing for weights like these).
  fastis::LargeBuffer<double> copied(n);
  const double total = fastis::ingest_streaming(w, n, copied.data());
  const fastis::alias::UnitScale scale{1.0, 1.0, static_cast<double>(n) / total};
  auto copy = [&] {
    fastis::LargeBuffer<double> fresh(n);
    g_sink = fastis::ingest_streaming(w, n, fresh.data());
  };
  auto classify = [&] {
    const fastis::alias::Classes classes(copied.data(), n, scale);
    g_sink = static_cast<double>(classes.last_heavy());
  };
  // The machine: a read of the weights, the first touch of an 8-byte-per-item buffer (the
  // kernel zeroing fresh pages), plain sequential stores of 8 bytes per item.
  auto read = [&] {
    fastis::parallel_for(n, 8, 1 << 20, [&](uint64_t begin, uint64_t end) {
      double sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (uint64_t i = begin; i + 8 <= end; i += 8) {
        for (int l = 0; l < 8; ++l) sums[l] += w[i + l];
      }
      g_sink = sums[0] + sums[1] + sums[2] + sums[3] + sums[4] + sums[5] + sums[6] + sums[7];
    });
  };
  auto first_touch = [&] {
    fastis::LargeBuffer<uint64_t> fresh(n);
    uint64_t* p = fresh.data();
    fastis::parallel_for(n, 512, 1 << 20, [&](uint64_t begin, uint64_t end) {
      for (uint64_t i = begin; i < end; i += 512) p[i] = 1;  // one store per 4 KiB
    });
  };
  // Its own mapped buffer: the copy above must keep the weights for the classification.
  fastis::LargeBuffer<double> written(n);
  auto write = [&] {
    fastis::parallel_for(n, 8, 1 << 20, [&](uint64_t begin, uint64_t end) {
      std::memset(written.data() + begin, 0, (end - begin) * sizeof(double));
    });
  };
  write();  // map its pages before the timed rounds
  const std::vector<double> ms =
      interleaved_medians(repeats, {build, copy, classify, read, first_touch, write});
  const double mb = static_cast<double>(n) * 8e-6;
  std::printf("n=%llu threads=%d repeats=%d (last draw %lld), medians:\n",
              static_cast<unsigned long long>(n), threads, repeats,
              static_cast<long long>(drawn));
  std::printf("  build %.1f ms = copy into fresh memory %.1f + classify %.1f + the rest %.1f "
              "(first touch of the table ~%.1f, sweep ~%.1f)\n",
              ms[0], ms[1], ms[2], ms[0] - ms[1] - ms[2], ms[4], ms[0] - ms[1] - ms[2] - ms[4]);
  std::printf("  machine: read %.0f MB %.1f ms, first touch %.0f MB %.1f ms, write %.0f MB %.1f ms\n",
              mb, ms[3], mb, ms[4], mb, ms[5]);
  // Any build of this layout (an 8-byte weight copy and 8-byte entries, in fresh memory)
  // reads the weights at least twice (lights and heavies are known only once the total is),
  // first touches both buffers and writes both.
  const double floor = 2 * ms[3] + 2 * ms[4] + 2 * ms[5];
  std::printf("  memory floor of the layout (2 reads, 2 first touches, 2 writes) %.1f ms; "
              "build / floor %.2f\n",
              floor, ms[0] / floor);
  return 0;
}
