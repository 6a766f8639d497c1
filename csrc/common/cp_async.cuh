// Asynchronous 16-byte global -> shared copies (cp.async, sm_80 and newer), used by the mma.sync attention
// kernel's K/V pipeline and by the quantization kernels' staging of input rows.
#pragma once
#include <cstdint>

#include "smem.cuh"

namespace sage {

// 16-byte global -> shared copy that bypasses L1 (.cg). src_bytes == 0 writes 16 zero bytes without
// reading global memory: that is how rows past the end of an unpadded tensor are filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A hint: bring the 128-byte line holding `ptr` into L1, so that a later load of it need not wait for L2.
__device__ __forceinline__ void prefetch_l1(const void* ptr) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(ptr));
}

}  // namespace sage
