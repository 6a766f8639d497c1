// Dequantization and the online softmax of one K tile, per consumer thread (two rows: g and g+8 of its
// warp's 16), in the structure of sage_cli/numerics/quantized.py:
//   x = (acc * q_scale * k_scale [+ ds]) * sm_scale * log2(e)     (masked -> -inf)
//   m_new = max(m, rowmax x);  m_use = m_new, or 0 while the row has seen no visible key
//   alpha = exp2(m - m_use);  p = exp2(x - m_use)
// The row sum l is not taken here: the P.V wgmma computes it from the FP8 P~ (a ones column in V^T,
// traits.cuh), which numerics/ calls row_sum="mma".
// Differences of rounding only: q_scale*k_scale*sm_scale*log2(e) is one product per (row, k group);
// x - m_use is one FMA; P's static FP8 scale 448 is folded into the exponent (x - m_use + log2 448), so p
// and l both carry the factor 448, which cancels in acc / l.
//
// Cost is what matters here (per score: the exp2 is a quarter-rate MUFU op, everything else competes
// for one issue slot per clock with it). Without the smooth-Q bias the row max is taken on the raw
// integers of each k-scale group and scaled once per group (scales are positive and rounding is
// monotonic, so max(v * s) == max(v) * s exactly). The integers become floats by the magic-number trick:
// bits(s + 0x4B400000) is the float 1.5 * 2^23 + s exactly for |s| < 2^22 (|s| <= 128 * 127^2 < 2^21),
// an integer add on a full-rate pipe, where I2FP and FMNMX share the half-rate one (bench/pipe_rates.cu);
// the offset folds into the exp2 FMA's addend. Per score that leaves IADD, FMNMX, one FFMA and the exp2.
// The FMA's addend -(1.5 * 2^23 * scale + shift) is one rounding, about one integer step of the score,
// far below INT8 quantization's own error (the GPU tests hold the kernel to numerics/ at ~1e-3 relL1).
#pragma once
#include <math_constants.h>
#include <stdint.h>

#include "p_fragment.cuh"

namespace sage::sm90 {

constexpr float kLog2FP8Max = 8.807354922057604f;  // log2(448)
constexpr int kMagicBits = 0x4B400000;             // the float 1.5 * 2^23: bits(kMagic) + s == kMagic + s
constexpr float kMagic = 12582912.f;

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

struct RowState {
  float m[2];      // running max (log2 units), -inf until a visible key
  float alpha[2];  // rescale factor of the tile just processed
};

// Column geometry of one tile for this thread.
struct TileColumns {
  int tok0;         // first token of the tile
  int limit[2];     // rows g, g+8: tokens >= limit are masked (causal diagonal and Nk)
  const float* ds;  // this 64-row block's ds row at tok0, or nullptr
};

// The k-scale group of accumulator group j: t = 2 * (64-token half) + j%2 (a permuted-K thread touches
// two k groups per 64 tokens; in natural order both t of a half hold the same scale).
__device__ __forceinline__ constexpr int scale_slot(int j) { return 2 * (j / 8) + (j & 1); }

// Takes the tile maxima (log2 units) of this thread's two rows, shares them across the quad, updates
// st.m / st.alpha and returns in shift[i] the exponent offset: p = exp2(x - shift) = 448 * exp2(x - m_use).
// Both rows go through each step together: their shuffles and exp2s overlap (one warp per scheduler
// is often all there is to hide latency with).
__device__ __forceinline__ void update_rows(RowState& st, float (&mx)[2], float (&shift)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
#pragma unroll
  for (int i = 0; i < 2; ++i) mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float m_new = fmaxf(st.m[i], mx[i]);
    const float m_use = m_new == -CUDART_INF_F ? 0.f : m_new;
    st.alpha[i] = ex2_approx(st.m[i] - m_use);
    st.m[i] = m_new;
    shift[i] = m_use - kLog2FP8Max;
  }
}

// x[4j + 2i + e] <- 448 * exp2(score - m_use) of accumulator element (group j, row i, column e).
// scale[i][t]: q_scale(row i) * k_scale(slot t) * sm_scale * log2(e).
// between_phases() runs after the row maxima and before the exp2s.
template <KOrder ORDER, bool MASK, bool HAS_DS, bool INT_ROW_MAX, int NREG, class Between>
__device__ __forceinline__ void softmax_tile(const uint32_t (&s)[NREG], float (&x)[NREG], RowState& st,
                                             const float (&scale)[2][4], const TileColumns& cols, float c, int q,
                                             Between&& between_phases) {
  constexpr int kGroups = NREG / 4;
  // INT_ROW_MAX: a tile with neither the ds bias nor a mask (almost all of them) takes its row maxima
  // on the integers themselves and converts each score only inside the exp2 loop below, where the issue
  // slots sit idle behind the quarter-rate MUFU; the max, on the critical path between the QK wait and
  // the exp2s, then issues half the instructions. Measured (bench/NOTES.md): +5% at D = 64; at D = 128,
  // where registers are already short, the longer-lived integers spill more and it is 2-8% slower.
  constexpr bool kIntMax = INT_ROW_MAX && !HAS_DS && !MASK;
  // 1. Scores (or, without ds, the raw integers as floats offset by kMagic) and masking.
#pragma unroll
  for (int j = 0; j < kGroups && !kIntMax; ++j) {
    float2 ds2 = make_float2(0.f, 0.f);
    if constexpr (HAS_DS) ds2 = __ldg(reinterpret_cast<const float2*>(cols.ds + column_token<ORDER>(j, q, 0)));
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int idx = 4 * j + 2 * i + e;
        float v;
        if constexpr (HAS_DS)  // exact conversion (|acc| < 2^21), then dequantize and add the bias
          v = fmaf(__int2float_rn(static_cast<int>(s[idx])), scale[i][scale_slot(j)], (e ? ds2.y : ds2.x) * c);
        else
          v = __int_as_float(static_cast<int>(s[idx]) + kMagicBits);
        if (MASK && cols.tok0 + column_token<ORDER>(j, q, e) >= cols.limit[i]) v = -CUDART_INF_F;
        x[idx] = v;
      }
  }
  // 2. Row maxima of both rows.
  float mx[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if constexpr (HAS_DS) {
      float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F;
#pragma unroll
      for (int j = 0; j < kGroups; j += 2) {
        m0 = fmaxf(m0, fmaxf(x[4 * j + 2 * i], x[4 * j + 2 * i + 1]));
        m1 = fmaxf(m1, fmaxf(x[4 * j + 4 + 2 * i], x[4 * j + 4 + 2 * i + 1]));
      }
      mx[i] = fmaxf(m0, m1);
    } else if constexpr (kIntMax) {
      int mt[4];  // per scale slot; slot t first appears at j = 8 * (t / 2) + t % 2, i.e. j % 8 < 2
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
        const int pair = max(static_cast<int>(s[4 * j + 2 * i]), static_cast<int>(s[4 * j + 2 * i + 1]));
        mt[scale_slot(j)] = j % 8 < 2 ? pair : max(mt[scale_slot(j)], pair);
      }
      float m4[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) m4[t] = __int2float_rn(mt[t]) * scale[i][t];  // exact conversion, then scale
      mx[i] = fmaxf(fmaxf(m4[0], m4[1]), fmaxf(m4[2], m4[3]));
    } else {
      float mt[4] = {-CUDART_INF_F, -CUDART_INF_F, -CUDART_INF_F, -CUDART_INF_F};  // per scale slot
#pragma unroll
      for (int j = 0; j < kGroups; ++j)
        mt[scale_slot(j)] = fmaxf(mt[scale_slot(j)], fmaxf(x[4 * j + 2 * i], x[4 * j + 2 * i + 1]));
      float m4[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) m4[t] = (mt[t] - kMagic) * scale[i][t];  // exact subtraction, then scale
      mx[i] = fmaxf(fmaxf(m4[0], m4[1]), fmaxf(m4[2], m4[3]));
    }
  }
  float shift[2];
  update_rows(st, mx, shift);
  between_phases();
  // exp2's argument without ds: x * scale + bias, with the magic offset folded into the bias.
  float bias[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int t = 0; t < 4; ++t) bias[i][t] = HAS_DS ? 0.f : -fmaf(kMagic, scale[i][t], shift[i]);
  // 3. exp2, both rows interleaved.
#pragma unroll
  for (int j = 0; j < kGroups; ++j)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int idx = 4 * j + 2 * i + e;
        // Without ds, x holds the offset integer score (kIntMax: s is converted here): scale it inside the FMA.
        const float y = kIntMax ? __int_as_float(static_cast<int>(s[idx]) + kMagicBits) : x[idx];
        const float arg = HAS_DS ? y - shift[i] : fmaf(y, scale[i][scale_slot(j)], bias[i][scale_slot(j)]);
        x[idx] = ex2_approx(arg);
      }
}

}  // namespace sage::sm90
