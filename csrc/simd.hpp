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

namespace fastis {

enum class Simd { kAvx512 };

// True if the CPU supports `isa` and it has not been switched off.
bool simd_enabled(Simd isa);

// Switches the vector paths for `isa` on or off (where supported); returns the previous
// setting. For tests and for measuring the scalar paths.
bool set_simd_enabled(Simd isa, bool enabled);

}  // namespace fastis
