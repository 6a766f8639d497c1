// Thin PTX wrappers for the mma.sync family (sm_80 / sm_86 / sm_89, and sm_90a where the 4-bit and e4m3
// shapes are emulated but exact): async copies, ldmatrix, the four mma shapes the sm80 attention kernel
// uses, exp2 and the packing conversions. Each wrapper is one instruction; the fragment layouts they
// produce are described once here, because the kernel's correctness hangs on them.
//
// Fragment layouts of an m16n8kK mma (lane = 32 threads, g = lane / 4, t = lane % 4):
//   C/D (fp32 or s32, 4 regs): c0,c1 = row g, cols 2t, 2t+1;  c2,c3 = row g+8, same cols.
//   A, 8-bit k32 / 4-bit k64 (4 x b32): a0 = row g, bytes 4t..4t+3 of the first 16 bytes of the k step;
//       a1 = row g+8, same bytes; a2 / a3 = the same for bytes 16..31. (4-bit: even element = low nibble,
//       so in byte space both shapes are identical; that is why INT8 and INT4 share every load.)
//   B, 8-bit / 4-bit (2 x b32): b0 = column (n) g, bytes 4t..4t+3; b1 = bytes 16+4t..16+4t+3.
//   A, 16-bit k16 (4 x b32): a0 = row g, k 2t,2t+1; a1 = row g+8; a2 = row g, k 8+2t,8+2t+1; a3 = row g+8.
//   B, 16-bit k16 (2 x b32): b0 = k 2t,2t+1, column g; b1 = k 8+2t, 8+2t+1.
// ldmatrix.x4 (no .trans) hands lane l of each 8x(16 byte) matrix the 4 bytes at row l/4, bytes 4(l%4):
// exactly the 8-bit A/B layout above, so K (tokens x channels, channels contiguous) and V^T (channels x
// tokens) load straight into B fragments, and Q into A fragments.
#pragma once
#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "cp_async.cuh"

namespace sage::mma {

// ---- shared memory address and async copies (common/cp_async.cuh) ----------------------------------

using sage::cp_async_16;
using sage::cp_async_commit;
using sage::cp_async_wait;
using sage::smem_u32;

// ---- ldmatrix -----------------------------------------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// Transposed: lane l gets the two 16-bit elements at rows 2(l%4), 2(l%4)+1 of column l/4: the 16-bit
// B fragment read from a row-major (k x n, n contiguous) tile such as V [tokens, D].
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ---- mma ----------------------------------------------------------------------------------------------

// s8 x s8 -> s32, m16n8k32: the INT8 QK^T step (32 channels).
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// s4 x s4 -> s32, m16n8k64: the INT4 QK^T step (64 channels = 32 bytes, the same bytes as mma_s8).
__device__ __forceinline__ void mma_s4(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// e4m3 x e4m3 -> f32, m16n8k32: the FP8 P.V step (32 tokens). Needs sm_89+; older targets never launch
// the FP8 kernels (the host checks the binary's arch), so there the body only traps.
__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// f16 or bf16 x same -> f32, m16n8k16: the FP16 P.V step (16 tokens).
template <bool kBf16>
__device__ __forceinline__ void mma_16bit(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// ---- math and conversions -----------------------------------------------------------------------------

// 2^x on the special-function unit (MUFU.EX2, ~2 ulp); ex2(-inf) = +0, which the masking relies on.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two fp32 -> two e4m3 (round to nearest even, saturating to +-448), `lo` in the low byte.
__device__ __forceinline__ uint16_t cvt_e4m3x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  __trap();
  return 0;
#endif
}

// Two fp32 -> one register of two 16-bit floats (round to nearest even), `lo` in the low half.
template <bool kBf16>
__device__ __forceinline__ uint32_t pack_16bit(float lo, float hi) {
  if constexpr (kBf16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Byte permute: bytes 0-3 from a, 4-7 from b, selector nibbles pick the result's bytes low to high.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

}  // namespace sage::mma
