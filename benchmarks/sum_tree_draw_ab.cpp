// SumTree draw time of two revisions of csrc/ in one process, timed alternately.
//
// Between processes, this VM's speed drifts by tens of percent within minutes, which hides a
// 10% change. Here both revisions are linked into one binary and timed in turn on the same
// weights. The baseline's sources are compiled with `fastis` renamed to `fastis_base`.
// Reported per case: the median call time of each revision, their ratio, and whether both
// drew the same indices (they must, if the change keeps draws bit for bit).
//
// Build and run from the repository root (/tmp/base: a source export of the baseline):
//   git archive e975f5e csrc | tar -x -C /tmp/base
//   g++ -O3 -fno-math-errno -std=c++17 -DAB_PART=1 -DAB_ROOT=/tmp/base/csrc -c
//     benchmarks/sum_tree_draw_ab.cpp -o /tmp/ab_base.o
//   g++ -O3 -fno-math-errno -std=c++17 -I. -DAB_PART=2 -DAB_ROOT=csrc -c
//     benchmarks/sum_tree_draw_ab.cpp -o /tmp/ab_new.o
//   g++ -O3 -std=c++17 -I. -DAB_ROOT_BASE=/tmp/base/csrc -DAB_ROOT_NEW=csrc
//     benchmarks/sum_tree_draw_ab.cpp /tmp/ab_base.o /tmp/ab_new.o -pthread -o /tmp/ab_tree
//   /tmp/ab_tree 1 && /tmp/ab_tree 2      (argument: threads)
#define AB_STRINGIFY(x) #x
#define AB_PATH(root, file) AB_STRINGIFY(root/file)

#if defined(AB_PART)
// One revision's library sources, the baseline's (AB_PART 1) in its own namespace.
#if AB_PART == 1
#define fastis fastis_base
#endif
#include AB_PATH(AB_ROOT, sum_tree.cpp)
#include AB_PATH(AB_ROOT, parallel.cpp)
#include AB_PATH(AB_ROOT, simd.cpp)

#else
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define fastis fastis_base
#include AB_PATH(AB_ROOT_BASE, sum_tree.hpp)
#include AB_PATH(AB_ROOT_BASE, parallel.hpp)
#undef fastis
#include AB_PATH(AB_ROOT_NEW, sum_tree.hpp)
#include AB_PATH(AB_ROOT_NEW, parallel.hpp)

namespace {

template <class F>
double mean_call_us(F call, int repeats) {
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) call();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
             .count() /
         repeats;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  fastis::set_num_threads(threads);
  fastis_base::set_num_threads(threads);
  // The cases: one call of 1,024 draws (n = 1e5, 1e6), the draw rate and the
  // training step at 1e7.
  for (const uint64_t n : {uint64_t{100000}, uint64_t{1000000}, uint64_t{10000000}}) {
    std::mt19937_64 gen(1);
    std::lognormal_distribution<double> lognormal(0.0, 2.0);
    std::vector<double> w(n);
    for (double& x : w) x = lognormal(gen);
    fastis_base::SumTree base(w.data(), n);
    fastis::SumTree changed(w.data(), n);
    const uint64_t k = n >= 10000000 ? 1000000 : 1024;
    const int repeats = k == 1024 ? 2000 : 3;
    std::vector<int64_t> base_out(k), changed_out(k);
    std::vector<double> base_us, changed_us;
    for (int round = 0; round < 15; ++round) {
      base_us.push_back(mean_call_us([&] { base.sample(k, base_out.data(), nullptr); }, repeats));
      changed_us.push_back(
          mean_call_us([&] { changed.sample(k, changed_out.data(), nullptr); }, repeats));
    }
    // Both generators have made the same calls: the next draws must agree.
    base.sample(k, base_out.data(), nullptr);
    changed.sample(k, changed_out.data(), nullptr);
    const double b = median(base_us), c = median(changed_us);
    std::printf("n=%llu threads=%d k=%llu: base %.2f us, this checkout %.2f us, ratio %.3f, "
                "same draws: %s\n",
                static_cast<unsigned long long>(n), threads, static_cast<unsigned long long>(k),
                b, c, c / b, base_out == changed_out ? "yes" : "NO");
    if (n < 10000000) continue;
    // The training step at n = 1e7: update 65,536 random weights, then draw 1,024. Each
    // step of a round gets its own indices, as in training (repeating one batch would
    // find its leaves in cache); both revisions see the same batches.
    constexpr size_t kUpdates = 65536;
    constexpr int kSteps = 20;
    std::vector<int64_t> idx(kUpdates * kSteps);
    std::vector<double> fresh(kUpdates * kSteps);
    base_us.clear();
    changed_us.clear();
    for (int round = 0; round < 15; ++round) {
      for (size_t i = 0; i < idx.size(); ++i) {
        idx[i] = static_cast<int64_t>(gen() % n);
        fresh[i] = lognormal(gen);
      }
      const auto steps = [&](auto& tree, std::vector<int64_t>& out) {
        return [&] {
          for (int step = 0; step < kSteps; ++step) {
            tree.update(idx.data() + step * kUpdates, fresh.data() + step * kUpdates, kUpdates);
            tree.sample(1024, out.data(), nullptr);
          }
        };
      };
      base_us.push_back(mean_call_us(steps(base, base_out), 1) / kSteps);
      changed_us.push_back(mean_call_us(steps(changed, changed_out), 1) / kSteps);
    }
    const bool same = std::equal(base_out.begin(), base_out.begin() + 1024, changed_out.begin());
    std::printf("n=%llu threads=%d step (update %zu, draw 1024): base %.1f us, this checkout "
                "%.1f us, ratio %.3f, same draws: %s\n",
                static_cast<unsigned long long>(n), threads, kUpdates, median(base_us),
                median(changed_us), median(changed_us) / median(base_us), same ? "yes" : "NO");
  }
  return 0;
}
#endif
