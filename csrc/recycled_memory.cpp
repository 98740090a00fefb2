#include "recycled_memory.hpp"

#include <atomic>
#include <mutex>
#include <new>

#include <pthread.h>
#include <sys/mman.h>

namespace fastis {
namespace recycled {

namespace {

// Enough for the buffers of a few structures (an AliasTable has two, a SumTree one large
// level); at n = 1e8 an AliasTable's two buffers take 1.6 GB.
constexpr size_t kDefaultLimit = size_t{2} << 30;
constexpr int kMaxKept = 16;

struct Kept {
  void* base;
  size_t bytes;
};

// Oldest first. Guarded by g_mutex; the limit is also read without it, by give().
std::mutex g_mutex;
Kept g_kept[kMaxKept];
int g_count = 0;
size_t g_bytes = 0;
std::atomic<size_t> g_limit{kDefaultLimit};

// A forked child may have been forked while another thread held the mutex or was halfway
// through an update, so it starts with nothing kept. The parent's mappings stay mapped in
// the child (copy-on-write, untouched: no memory) and are simply never reused there.
void forget_in_child() {
  new (&g_mutex) std::mutex();
  g_count = 0;
  g_bytes = 0;
}

void register_fork_handler() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, forget_in_child);
    return true;
  }();
  (void)registered;
}

// Removes kept mapping i and returns it. Requires g_mutex.
Kept remove_at(int i) {
  const Kept out = g_kept[i];
  for (int j = i; j + 1 < g_count; ++j) g_kept[j] = g_kept[j + 1];
  --g_count;
  g_bytes -= out.bytes;
  return out;
}

// Removes the oldest kept mappings until `bytes` more fit in the limit (and, with
// need_slot, a slot is free); returns how many it removed, into `evicted`. Requires g_mutex.
int evict_for(size_t bytes, bool need_slot, Kept* evicted) {
  int removed = 0;
  while (g_count > 0 && ((need_slot && g_count == kMaxKept) || g_bytes + bytes > g_limit)) {
    evicted[removed++] = remove_at(0);
  }
  return removed;
}

// Unmaps what evict_for() removed; called after releasing g_mutex, as unmapping is slow next
// to the list updates.
void unmap(const Kept* evicted, int count) {
  for (int i = 0; i < count; ++i) munmap(evicted[i].base, evicted[i].bytes);
}

}  // namespace

void* take(size_t bytes) {
  register_fork_handler();
  std::lock_guard<std::mutex> lock(g_mutex);
  for (int i = g_count - 1; i >= 0; --i) {  // the newest first: its pages are likeliest kept
    if (g_kept[i].bytes == bytes) return remove_at(i).base;
  }
  return nullptr;
}

void give(void* base, size_t bytes) {
  register_fork_handler();
  // Marked before taking the lock (it walks the page tables), and only if it may be kept.
  // Without MADV_FREE (kernels before 4.5) the pages could not be handed back under
  // pressure: such a mapping is unmapped.
  bool keep = false;
#ifdef MADV_FREE
  keep = bytes <= g_limit.load() && madvise(base, bytes, MADV_FREE) == 0;
#endif
  Kept evicted[kMaxKept];
  int removed = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    keep = keep && bytes <= g_limit;
    if (keep) {
      removed = evict_for(bytes, true, evicted);
      g_kept[g_count++] = Kept{base, bytes};
      g_bytes += bytes;
    }
  }
  unmap(evicted, removed);
  if (!keep) munmap(base, bytes);
}

size_t release_all() {
  Kept evicted[kMaxKept];
  int removed = 0;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    bytes = g_bytes;
    while (g_count > 0) evicted[removed++] = remove_at(0);
  }
  unmap(evicted, removed);
  return bytes;
}

size_t set_limit(size_t bytes) {
  Kept evicted[kMaxKept];
  int removed = 0;
  size_t previous = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    previous = g_limit.exchange(bytes);
    removed = evict_for(0, false, evicted);
  }
  unmap(evicted, removed);
  return previous;
}

size_t kept_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_bytes;
}

}  // namespace recycled
}  // namespace fastis
