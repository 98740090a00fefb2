// Large mappings kept for reuse after their structure is freed.
//
// A structure built from a weight vector writes every byte of its large buffers, so it has
// no use for the zeroed pages that fresh memory brings, yet it pays for them: the kernel
// faults in and zeroes each new page (~6 ms per 80 MB here, so ~12 ms of a ~50 ms AliasTable
// build at n = 1e7, README "Benchmarks"). Rebuilding a structure of the same size, the usual
// way to use an alias table on epoch-level weights (docs/core.md), can take over the
// pages of the one it replaces instead.
//
// Kept mappings are marked MADV_FREE: the kernel may reclaim their pages whenever memory is
// short (a reclaimed page then reads as zeros), so keeping them never forces memory to stay
// in use; until then a reused page costs no fault and no zeroing. release_all() (Python:
// fastis.empty_cache()) unmaps them at once.
#pragma once

#include <cstddef>

namespace fastis {
namespace recycled {

// A kept mapping of exactly `bytes` (its contents arbitrary), or nullptr if there is none.
void* take(size_t bytes);

// Hands over the mapping [base, base + bytes): it is kept for reuse if it fits in the limit
// (the oldest kept mappings are unmapped to make room), else unmapped.
void give(void* base, size_t bytes);

// Unmaps every kept mapping; returns how many bytes they held.
size_t release_all();

// Sets the most bytes kept at once (0 turns keeping off), unmapping the oldest mappings
// beyond it; returns the previous limit.
size_t set_limit(size_t bytes);

// Bytes held by kept mappings.
size_t kept_bytes();

}  // namespace recycled
}  // namespace fastis
