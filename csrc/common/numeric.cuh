// Numeric helpers shared by the quantization kernels: 16-byte vector loads of fp16/bf16 as fp32,
// round-to-nearest-even integer quantization, INT4/INT8 packing, FP8 E4M3 packing, warp reductions.
//
// Everything here is exact IEEE arithmetic on purpose (the callers' __fdiv_rn and __frcp_rn, one FMA with the
// product kept exact): sage_cli/numerics/quantize.py states each rounding, and an approximate reciprocal
// or division would flip the rounding of values near .5 far more often than the rare ties the tests allow.
// The files are therefore safe to build with or without --use_fast_math.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "../sage_abi.h"

namespace sage {

// SageDType -> element type.
template <int DTYPE> struct ElemOf;
template <> struct ElemOf<SAGE_FP16> { using type = __half; };
template <> struct ElemOf<SAGE_BF16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float2 to_float2(uint32_t w, __half) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}
__device__ __forceinline__ float2 to_float2(uint32_t w, __nv_bfloat16) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
}

// Eight consecutive 16-bit elements (one 16-byte load from global or shared memory; p must be 16-byte
// aligned) -> fp32.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = to_float2(w[i], T{});
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

template <int N>
__device__ __forceinline__ void fill(float (&x)[N], float v) {
#pragma unroll
  for (int i = 0; i < N; ++i) x[i] = v;
}

// Symmetric quantization of one value: round(x * inv) to nearest even, with inv = __frcp_rn(scale) and the
// product x * inv exact, not rounded to a float first (numerics/quantize.py computes it in float64, where a
// product of two floats is exact). Returned as the bits of the float 1.5 * 2^23 + round(x * inv): one FMA
// with that constant rounds the exact x * inv + 1.5 * 2^23 to an integer-spaced float, which for
// |x * inv| < 2^22 is the constant plus round(x * inv) (the constant is even, so ties go to even as in
// __float2int_rn). The integer is bits - 0x4B400000; its two's complement low byte (and nibble) are the
// bits' own, since the constant's low byte is 0.
// No clamp is needed when scale = max(amax, floor) / qmax over the values quantized with it: scale and inv
// are each within half an ulp, so |x| * inv <= qmax * (1 + 2^-22), which rounds to qmax at most.
__device__ __forceinline__ uint32_t quantize_rn_bits(float x, float inv) {
  return __float_as_uint(__fmaf_rn(x, inv, 12582912.f));
}
__device__ __forceinline__ int rn_bits_to_int(uint32_t bits) { return static_cast<int>(bits - 0x4B400000u); }

// Eight INT8 values given as quantize_rn_bits -> 8 bytes, channel order preserved (the low bytes, gathered).
__device__ __forceinline__ uint2 pack_int8x8_bits(const uint32_t (&b)[8]) {
  const uint32_t lo = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
  const uint32_t hi = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
  return make_uint2(lo, hi);
}

// Eight signed INT4 values -> 4 bytes, the even channel in the low nibble (the mma fragment order).
__device__ __forceinline__ uint32_t pack_int4x8(const int (&q)[8]) {
  uint32_t w = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) w |= (static_cast<uint32_t>(q[i]) & 0xfu) << (4 * i);
  return w;
}

// Four floats -> four FP8 E4M3 bytes (first value in the low byte), round to nearest even, saturating
// to +-448 (__NV_SATFINITE): the "static scales saturate, never overflow" rule of the contract.
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return (lo & 0xffffu) | (hi << 16);
}

// Max / sum over `WIDTH` consecutive lanes (WIDTH a power of two <= 32; all lanes of the warp call it).
template <int WIDTH>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Floats as unsigned ints that order like the values (non-negative: sign bit set; negative: all bits
// flipped), so that one atomicMax on memory zeroed beforehand keeps the largest float: every finite
// float encodes above 0.
__device__ __forceinline__ unsigned ordered_bits(float v) {
  const unsigned u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(unsigned e) {
  return __uint_as_float((e & 0x80000000u) ? (e & 0x7fffffffu) : ~e);
}
__device__ __forceinline__ void atomic_max_ordered(unsigned* addr, float v) { atomicMax(addr, ordered_bits(v)); }

}  // namespace sage
