#include "simd.hpp"

#include <atomic>

namespace fastis {

namespace {

bool cpu_supports_avx512() {
#if FASTIS_HAVE_AVX512
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

std::atomic<bool> g_avx512_allowed{true};

}  // namespace

bool simd_enabled(Simd isa) {
  static const bool supported = cpu_supports_avx512();
  switch (isa) {
    case Simd::kAvx512:
      return supported && g_avx512_allowed.load(std::memory_order_relaxed);
  }
  return false;
}

bool set_simd_enabled(Simd isa, bool enabled) {
  switch (isa) {
    case Simd::kAvx512:
      return g_avx512_allowed.exchange(enabled);
  }
  return false;
}

}  // namespace fastis
