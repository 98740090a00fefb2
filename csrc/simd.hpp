// Runtime choice of vector code paths. The extension is built for baseline x86-64 (or any
// other target), and kernels compiled for a wider instruction set run only where the CPU
// reports it. Every vector path is bit-identical to its scalar twin; tests switch the
// vector paths off to check exactly that.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTIS_HAVE_AVX512 1
#include <immintrin.h>
#else
#define FASTIS_HAVE_AVX512 0
#endif

// Simple streaming loops (input checks, the build's copy) are compiled twice on x86-64
// Linux, for AVX2 and for the baseline, and the loader picks one for the CPU (an ifunc):
// baseline x86-64 lacks the 64-bit compares they need to vectorise at all.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define FASTIS_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTIS_VECTOR_CLONES
#endif

// name##_avx512(args) where the AVX-512 paths run, else name##_scalar(args).
#if FASTIS_HAVE_AVX512
#define FASTIS_AVX512_OR_SCALAR(name, ...)                                         \
  (::fastis::simd_enabled(::fastis::Simd::kAvx512) ? name##_avx512(__VA_ARGS__) \
                                                   : name##_scalar(__VA_ARGS__))
#else
#define FASTIS_AVX512_OR_SCALAR(name, ...) name##_scalar(__VA_ARGS__)
#endif

namespace fastis {

enum class Simd { kAvx512 };

// True if the CPU supports `isa` and it has not been switched off.
bool simd_enabled(Simd isa);

// Switches the vector paths for `isa` on or off (where supported); returns the previous
// setting. For tests and for measuring the scalar paths.
bool set_simd_enabled(Simd isa, bool enabled);

}  // namespace fastis
