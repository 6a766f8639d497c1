// Shared-memory mbarriers (the producer/consumer handshake of the TMA pipeline). sm_90.
//
// Phase convention: a barrier starts in phase 0; mbar_wait(bar, parity) returns once the phase with that
// parity has completed. A consumer waits on "full" with the stage's phase bit; a producer waits on "empty"
// with the bit flipped, which a fresh barrier satisfies at once (every slot starts empty).
#pragma once
#include <stdint.h>

#include "smem.cuh"

namespace sage::sm90 {

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals));
}

// Makes the initialised barriers visible to the async (TMA) proxy before anyone uses them.
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// One arrival plus the number of bytes the TMA copies that complete this phase will deliver.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_AGAIN:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_AGAIN;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

// The producer's wait: it is ahead of the consumers almost always, and a plain try_wait loop spun ~126
// times per wait there, taking issue slots from the consumer warps of its SM sub-partition (ncu,
// bench/NOTES.md). With a suspend-time hint the thread sleeps until the phase completes (or the hint,
// in ns, runs out) instead.
__device__ __forceinline__ void mbar_wait_sleep(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_AGAIN:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1, %2;\n"
      "@!done bra WAIT_AGAIN;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity), "r"(1000000u)
      : "memory");
}

// A 32-bit word of shared memory written / read through its shared-window address: the kernels reach their
// Smem struct through a generic pointer, which would take a 64-bit address and a generic access. Ordered
// against the mbarrier operations (volatile, "memory"): used to pass values along with a barrier phase.
__device__ __forceinline__ void st_shared_s32(void* p, int v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(smem_u32(p)), "r"(v) : "memory");
}
__device__ __forceinline__ int ld_shared_s32(const void* p) {
  int v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(smem_u32(p)) : "memory");
  return v;
}

// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

}  // namespace sage::sm90
