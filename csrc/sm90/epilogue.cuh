// Output of one consumer warpgroup: O = acc / l * v_scale[c] (+ v_mean[c]) in the output dtype, written
// from the accumulator fragment at the caller's strides, and the natural-log LSE. WIDE (traits.cuh,
// kWideStores): 8 channels, 16 bytes, a store (the ABI keeps O's rows 16-byte aligned); else 2 channels.
// Rows that saw no visible key (l == 0) get O = 0 and LSE = -inf, never NaN.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "params.cuh"
#include "softmax.cuh"

namespace sage::sm90 {

__device__ __forceinline__ uint32_t pack_out(float a, float b, bool bf16) {
  if (bf16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  const __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Lane q of a quad holds w[t] = M[q][t]; afterwards it holds M[t][q] (a 4 x 4 transpose over the quad: two
// exchanges, across lane bit 0 and then bit 1, each swapping the half of the words whose index bit differs
// from the lane's).
__device__ __forceinline__ void quad_transpose(uint32_t (&w)[4], int q) {
#pragma unroll
  for (int bit = 1; bit <= 2; bit <<= 1) {
    const bool upper = q & bit;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (t & bit) continue;
      const uint32_t got = __shfl_xor_sync(0xffffffffu, upper ? w[t] : w[t + bit], bit);
      if (upper)
        w[t] = got;
      else
        w[t + bit] = got;
    }
  }
}

// V's scale and mean at channels ch and ch + 1 (m2 = 0 without a mean), from shared memory (SMEM_CONSTS) or
// global memory.
template <bool SMEM_CONSTS>
__device__ __forceinline__ void v_channel_consts(const float* vs, const float* vm, int ch, float2& s2, float2& m2) {
  m2 = make_float2(0.f, 0.f);
  if constexpr (SMEM_CONSTS) {
    s2 = *reinterpret_cast<const float2*>(vs + ch);
    if (vm) m2 = *reinterpret_cast<const float2*>(vm + ch);
  } else {
    s2 = __ldg(reinterpret_cast<const float2*>(vs + ch));
    if (vm) m2 = __ldg(reinterpret_cast<const float2*>(vm + ch));
  }
}

// acc: the m64n(D+8) P.V accumulator (acc[4j + 2i + e]: column 8j + 2q + e of row `row0 + 8i`); its
// columns D..D+7 are the ones rows' products, so acc[D/2 + 2i] is row i's full sum l (times 448).
// SMEM_CONSTS: the head's V scale and V mean are read from `vc` ([2][D] in shared memory, filled by the
// caller), else from global memory.
template <int D, bool WIDE, bool SMEM_CONSTS = false>
__device__ __forceinline__ void store_output(const float (&acc)[D / 2 + 4], const RowState& st, const Sm90Params& p,
                                             int b, int h, int row0, int q, const float* vc = nullptr) {
  const int hk = h / p.group;
  const float* vs = SMEM_CONSTS ? vc : p.v_scale + (static_cast<int64_t>(b) * p.heads_kv + hk) * D;
  const float* vm = !p.v_mean ? nullptr : SMEM_CONSTS ? vc + D : p.v_mean + (static_cast<int64_t>(b) * p.heads_kv + hk) * D;
  char* o_head = static_cast<char*>(p.o) + 2 * (b * p.o_stride_b + h * p.o_stride_h);
  float l[2], inv[2];
  bool seen[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] = acc[D / 2 + 2 * i];
    seen[i] = l[i] > 0.f;
    inv[i] = seen[i] ? 1.f / l[i] : 0.f;
  }
  // Channels 8j + 2q and 8j + 2q + 1 of row half i, finished and packed into the output dtype.
  auto out_pair = [&](int j, int i, float2 s2, float2 m2) {
    float a = acc[4 * j + 2 * i] * inv[i] * s2.x + m2.x;
    float c = acc[4 * j + 2 * i + 1] * inv[i] * s2.y + m2.y;
    if (!seen[i]) a = c = 0.f;
    return pack_out(a, c, p.out_bf16);
  };
  if constexpr (WIDE) {
    // Four column groups (32 channels) at a time: each lane packs its two channels of each group, the quad
    // transposes them, and each lane then holds 8 consecutive channels of its row: one 16-byte store where
    // there were four 4-byte ones (a quarter of the store instructions, each writing whole 32-byte sectors).
#pragma unroll
    for (int g = 0; g < D / 32; ++g) {
      float2 s2[4], m2[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) v_channel_consts<SMEM_CONSTS>(vs, vm, 8 * (4 * g + t) + 2 * q, s2[t], m2[t]);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = row0 + 8 * i;
        uint32_t w[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) w[t] = out_pair(4 * g + t, i, s2[t], m2[t]);
        quad_transpose(w, q);  // every lane of the quad takes part, whatever its row
        if (row < p.seq_q)
          *reinterpret_cast<uint4*>(o_head + 2 * (row * p.o_stride_n + 8 * (4 * g + q))) =
              make_uint4(w[0], w[1], w[2], w[3]);
      }
    }
  } else {  // two channels, 4 bytes, a store (the two-consumer instances compile as they did before WIDE)
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int ch = 8 * j + 2 * q;
      float2 s2, m2;
      v_channel_consts<SMEM_CONSTS>(vs, vm, ch, s2, m2);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = row0 + 8 * i;
        if (row >= p.seq_q) continue;
        *reinterpret_cast<uint32_t*>(o_head + 2 * (row * p.o_stride_n + ch)) = out_pair(j, i, s2, m2);
      }
    }
  }
  if (p.lse && q == 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = row0 + 8 * i;
      if (row >= p.seq_q) continue;
      const float lse = seen[i] ? (st.m[i] + log2f(l[i]) - kLog2FP8Max) * 0.6931471805599453f : -CUDART_INF_F;
      p.lse[(static_cast<int64_t>(b) * p.heads_q + h) * p.seq_q + row] = lse;
    }
  }
}

// A Q block none of whose rows sees a key (causal with Nq > Nk): O = 0, LSE = -inf.
template <int D, bool WIDE>
__device__ __forceinline__ void store_masked_rows(const Sm90Params& p, int b, int h, int row0, int q) {
  float zero[D / 2 + 4];
#pragma unroll
  for (int i = 0; i < D / 2 + 4; ++i) zero[i] = 0.f;
  RowState st;
  st.m[0] = st.m[1] = -CUDART_INF_F;
  st.alpha[0] = st.alpha[1] = 0.f;
  store_output<D, WIDE>(zero, st, p, b, h, row0, q);
}

}  // namespace sage::sm90
