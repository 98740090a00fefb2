#include "parallel.hpp"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTIS_CPU_RELAX() _mm_pause()
#else
#define FASTIS_CPU_RELAX() std::this_thread::yield()
#endif

namespace fastis {

namespace {

// How long an idle worker keeps polling for the next job before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(100);

int default_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::atomic<int> g_threads{default_threads()};

// The claim word packs, for the job in progress, its generation (16 bits), the next piece
// to hand out (24 bits) and the number of pieces (24 bits). Claiming a piece is one
// compare-and-swap on it, which fails for a worker that still holds an older generation:
// a worker can never claim a piece of a job other than the one it read.
constexpr int kPieceBits = 24;
constexpr uint64_t kPieceMask = (uint64_t{1} << kPieceBits) - 1;

uint64_t pack(uint64_t generation, uint64_t next, uint64_t pieces) {
  return (generation << (2 * kPieceBits)) | (next << kPieceBits) | pieces;
}
uint64_t generation_of(uint64_t word) { return word >> (2 * kPieceBits); }
uint64_t next_of(uint64_t word) { return (word >> kPieceBits) & kPieceMask; }
uint64_t pieces_of(uint64_t word) { return word & kPieceMask; }

class Pool {
 public:
  explicit Pool(int workers) {
    threads_.reserve(workers);
    for (int t = 0; t < workers; ++t) threads_.emplace_back([this] { work(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int workers() const { return static_cast<int>(threads_.size()); }

  // One job at a time: the caller holds g_pool_mutex.
  void run(uint64_t total, uint64_t piece, detail::PieceFn fn, void* context) {
    uint64_t pieces = (total + piece - 1) / piece;
    if (pieces > kPieceMask) {  // keep the count within its 24 bits
      piece = (total + kPieceMask - 1) / kPieceMask;
      pieces = (total + piece - 1) / piece;
    }
    total_ = total;
    piece_ = piece;
    fn_ = fn;
    context_ = context;
    error_ = nullptr;
    finished_.store(0, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & 0xFFFF;
    claim_.store(pack(generation_, 0, pieces), std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    run_pieces(generation_);
    while (finished_.load(std::memory_order_acquire) < pieces) FASTIS_CPU_RELAX();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs pieces of job `generation` until none is left.
  void run_pieces(uint64_t generation) {
    uint64_t word = claim_.load(std::memory_order_acquire);
    for (;;) {
      if (generation_of(word) != generation || next_of(word) >= pieces_of(word)) return;
      const uint64_t index = next_of(word);
      if (!claim_.compare_exchange_weak(word, word + (uint64_t{1} << kPieceBits),
                                        std::memory_order_acq_rel)) {
        continue;  // word now holds the current value
      }
      // The job cannot change while one of its pieces is unfinished, so its fields are
      // stable here.
      const uint64_t begin = index * piece_;
      const uint64_t end = std::min(total_, begin + piece_);
      try {
        fn_(context_, begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      finished_.fetch_add(1, std::memory_order_acq_rel);
      word = claim_.load(std::memory_order_acquire);
    }
  }

  void work() {
    uint64_t seen = generation_of(claim_.load(std::memory_order_acquire));
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kSpin;
      uint64_t word = claim_.load(std::memory_order_acquire);
      int polls = 0;
      while (generation_of(word) == seen && !stop_.load(std::memory_order_relaxed)) {
        FASTIS_CPU_RELAX();
        word = claim_.load(std::memory_order_acquire);
        if (++polls % 64 == 0 && std::chrono::steady_clock::now() > until) break;
      }
      if (generation_of(word) == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        wake_.wait(lock, [&] {
          return stop_.load() || generation_of(claim_.load(std::memory_order_acquire)) != seen;
        });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      }
      if (stop_.load()) return;
      word = claim_.load(std::memory_order_acquire);
      seen = generation_of(word);
      run_pieces(seen);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> claim_{0};
  std::atomic<uint64_t> finished_{0};
  uint64_t generation_ = 0;
  // The job in progress; written only while no piece of the previous job is running.
  uint64_t total_ = 0;
  uint64_t piece_ = 1;
  detail::PieceFn fn_ = nullptr;
  void* context_ = nullptr;
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

// The pool is created on first use and recreated when the thread count changes. A forked
// child has none of the parent's threads, so it drops (and deliberately leaks: destroying
// std::thread objects without threads would abort) the parent's pool and starts its own.
std::mutex g_pool_mutex;
Pool* g_pool = nullptr;

void forget_pool_in_child() {
  new (&g_pool_mutex) std::mutex();  // the parent may have held it at fork time
  g_pool = nullptr;
}

}  // namespace

int get_num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("the number of threads must be at least 1");
  if (threads > kMaxThreads) {
    throw std::invalid_argument("the number of threads must be at most " +
                                std::to_string(kMaxThreads));
  }
  g_threads.store(threads, std::memory_order_relaxed);
}

namespace detail {

void run_on_pool(uint64_t total, uint64_t piece, PieceFn fn, void* context) {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, forget_pool_in_child);
    return true;
  }();
  (void)registered;
  // Another thread's job in progress (calls on different structures from several Python
  // threads): run this one on the calling thread rather than wait.
  std::unique_lock<std::mutex> pool_lock(g_pool_mutex, std::try_to_lock);
  if (!pool_lock.owns_lock()) {
    fn(context, 0, total);
    return;
  }
  const int workers = get_num_threads() - 1;
  if (g_pool == nullptr || g_pool->workers() != workers) {
    delete g_pool;
    g_pool = nullptr;
    g_pool = new Pool(workers);
  }
  g_pool->run(total, piece, fn, context);
}

}  // namespace detail

}  // namespace fastis
