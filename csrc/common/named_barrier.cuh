// Named barriers (bar.sync with an id and a thread count): a barrier among some warps of a block, e.g. the
// four warps of one warpgroup, leaving the others running. Id 0 is __syncthreads'.
#pragma once

namespace sage {

// Blocks until `threads` threads (a multiple of 32, whole warps) have arrived at barrier `id` (1..15).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace sage
