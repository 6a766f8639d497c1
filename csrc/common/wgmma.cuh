// wgmma (sm_90a warpgroup MMA) helpers: shared-memory matrix descriptors, the async fences, and the few
// fixed shapes the sm90 attention kernel issues. Every wrapper is one inline-PTX instruction; a wgmma is
// issued by all 128 threads of a warpgroup together and completes asynchronously, so accumulator
// registers must not be touched between the issue and the matching wgmma_wait<>() (see fence_regs).
//
// Descriptor layout (PTX ISA, "Matrix Descriptor Format"): start address >> 4 in bits 0-13, leading
// byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45, swizzle mode in 62-63. All our operands
// are K-major (8-bit wgmma accepts nothing else), rows of exactly one swizzle span (64 or 128 bytes), so
// one 8-row core-matrix group is 8 * row_bytes apart (the stride offset) and the leading offset is unused.
// A k32 step of 8-bit data is 32 bytes further along the row: descriptor + 2 (units of 16 bytes); the
// hardware applies the XOR swizzle on absolute shared addresses, so tiles must be 1024-byte aligned.
#pragma once
#include <stdint.h>

#include "smem.cuh"

namespace sage::sm90 {

enum class Swizzle : uint64_t { k128B = 1, k64B = 2, k32B = 3 };

__device__ __forceinline__ uint64_t make_smem_desc(const void* smem, uint32_t stride_bytes, Swizzle sw) {
  const uint32_t addr = smem_u32(smem);
  uint64_t desc = static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>(1) << 16;  // leading byte offset: ignored for swizzled K-major
  desc |= static_cast<uint64_t>(stride_bytes >> 4) << 32;
  desc |= static_cast<uint64_t>(sw) << 62;
  return desc;
}

// The same descriptor as two 32-bit halves: the high half (stride and swizzle) is a compile-time
// constant, and the low half (start address) advances with one 32-bit add per k-step, which keeps the
// per-wgmma address arithmetic to an IADD and a move to a uniform register.
__device__ __forceinline__ uint32_t smem_desc_lo(const void* smem) {
  const uint32_t addr = smem_u32(smem);
  return ((addr & 0x3FFFF) >> 4) | (1u << 16);
}
__host__ __device__ constexpr uint32_t smem_desc_hi(uint32_t stride_bytes, Swizzle sw) {
  return (stride_bytes >> 4) | (static_cast<uint32_t>(sw) << 30);
}
__device__ __forceinline__ uint64_t smem_desc(uint32_t lo, uint32_t hi) {
  uint64_t d;
  asm("mov.b64 %0, {%1, %2};\n" : "=l"(d) : "r"(lo), "r"(hi));
  return d;
}

// Advance a descriptor by `bytes` along K (bytes a multiple of 16, staying inside the swizzle span).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Orders prior register writes (accumulators, register A operands) before the next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Wait until at most N committed wgmma groups of this warpgroup are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// The compiler does not know that a wgmma writes its accumulators asynchronously: an empty volatile asm
// that "modifies" each register pins every read after the wait (and every write before the issue).
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Register budget of a warpgroup (setmaxnreg): producers give registers back, consumers take them.
template <int N>
__device__ __forceinline__ void warpgroup_reg_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void warpgroup_reg_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// ---- fixed shapes (the operand lists are regular; written out because PTX takes no register arrays) ----
// S[64 x 128] (+)= A[64 x 32] . B[128 x 32]^T, int8 -> int32; A and B K-major in shared memory. Two forms
// share the instruction and the 64 accumulator operands (constraint C): accumulate ("+r", scale_d picks
// D = A.B + D or A.B), and overwrite ("=r").
#define SAGE_WGMMA_M64N128K32_S8 \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" \
  "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p;\n}\n"
#define SAGE_WGMMA_D64(C) \
  C(d[0]), C(d[1]), C(d[2]), C(d[3]), C(d[4]), C(d[5]), C(d[6]), C(d[7]), \
  C(d[8]), C(d[9]), C(d[10]), C(d[11]), C(d[12]), C(d[13]), C(d[14]), C(d[15]), \
  C(d[16]), C(d[17]), C(d[18]), C(d[19]), C(d[20]), C(d[21]), C(d[22]), C(d[23]), \
  C(d[24]), C(d[25]), C(d[26]), C(d[27]), C(d[28]), C(d[29]), C(d[30]), C(d[31]), \
  C(d[32]), C(d[33]), C(d[34]), C(d[35]), C(d[36]), C(d[37]), C(d[38]), C(d[39]), \
  C(d[40]), C(d[41]), C(d[42]), C(d[43]), C(d[44]), C(d[45]), C(d[46]), C(d[47]), \
  C(d[48]), C(d[49]), C(d[50]), C(d[51]), C(d[52]), C(d[53]), C(d[54]), C(d[55]), \
  C(d[56]), C(d[57]), C(d[58]), C(d[59]), C(d[60]), C(d[61]), C(d[62]), C(d[63])

__device__ __forceinline__ void wgmma_m64n128k32_s32_s8_ss(uint32_t (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                       int scale_d) {
  asm volatile(SAGE_WGMMA_M64N128K32_S8 : SAGE_WGMMA_D64("+r") : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// D = A.B (the first k step of a chain): the accumulator is written only, so its registers carry nothing
// into the issue (with "+r", the values they held before must be kept alive until it).
__device__ __forceinline__ void wgmma_m64n128k32_s32_s8_ss_overwrite(uint32_t (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(SAGE_WGMMA_M64N128K32_S8 : SAGE_WGMMA_D64("=r") : "l"(desc_a), "l"(desc_b), "r"(0));
}

#undef SAGE_WGMMA_D64
#undef SAGE_WGMMA_M64N128K32_S8

// The P.V shapes with 8 extra columns: V^T carries one 8-row group of ones after its D channels, so the
// accumulator's last 8 columns receive the row sums of P~ (traits.cuh, kOnesRows).
// O[64 x 136] (+)= P[64 x 32] . V^T[136 x 32]^T, e4m3 -> f32; P from registers (A fragment), V^T K-major
// in shared memory.
__device__ __forceinline__ void wgmma_m64n136k32_f32_e4m3_rs(float (&d)[68], const uint32_t (&a)[4], uint64_t desc_b,
                                                         int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %73, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n136k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67}, {%68, %69, %70, %71}, %72, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// O[64 x 72] (+)= P[64 x 32] . V^T[72 x 32]^T, e4m3 -> f32; P from registers (A fragment), V^T K-major
// in shared memory.
__device__ __forceinline__ void wgmma_m64n72k32_f32_e4m3_rs(float (&d)[36], const uint32_t (&a)[4], uint64_t desc_b,
                                                         int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %41, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n72k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}, {%36, %37, %38, %39}, %40, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

}  // namespace sage::sm90
