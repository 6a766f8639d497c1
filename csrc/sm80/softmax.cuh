// Online softmax over K tiles, in fp32 and base 2, for the two rows (g and g+8) of one thread's m16 slice.
//
// Per tile the thread holds int32 scores acc[n][e] (n = n8 tile, e = 0,1 row g, 2,3 row g+8). The
// dequantization scale q_scale * k_scale is one number per thread and tile (that is what the per_thread
// groups guarantee), so it is folded with sm_scale * log2(e) into the exponent's FMA:
//   x = acc * (sq * sk * sm_scale * log2 e) [+ ds * sm_scale * log2 e],  p = exp2(x - m).
// (The reference rounds acc * sq * sk, then * sm_scale * log2 e: the kernel differs by an ulp or two.)
// Matches sage_cli/numerics/quantized.py: m = -inf until a row sees a key (then exp2 uses m = 0 so that
// masked entries give 0 and never NaN), the row sum l sums the fp32 p before any rounding of P.
#pragma once
#include <math_constants.h>
#include "../common/mma_sync.cuh"

namespace sage::sm80 {

template <int kNTiles>
struct OnlineSoftmax {
  float m[2];  // running max of x, log2 units (-inf: nothing visible yet)
  float l[2];  // this thread's partial row sums (the quad's four partials are added at the end)

  __device__ __forceinline__ void init() {
    m[0] = m[1] = -CUDART_INF_F;
    l[0] = l[1] = 0.f;
  }

  // Turn one tile of int32 scores into probabilities, in place in `x`.
  //   dqc        : sq * sk * sm_scale * log2(e) for this thread and tile (> 0)
  //   ds_c       : ds * sm_scale * log2(e) for the thread's columns, read only when `has_ds` (smooth Q)
  //   visible(n, e): false where the key is masked (only called when `masked`)
  //   p_log2_gain: log2 of the factor P is produced at (log2(448) for FP8, whose P~ = 448 p; 0 for FP16)
  // Returns alpha[2], the factor the caller must scale the row's output accumulator by.
  // Without ds each thread takes the max of its raw scores and scales that one number (dqc > 0 keeps the
  // order, so max(a) * dqc is exactly max(a * dqc)); each probability then costs a single FMA before the
  // exp2: p = exp2(a * dqc - m').
  template <class Visible>
  __device__ __forceinline__ void update(const int (&acc)[kNTiles][4], float (&x)[kNTiles][4], float dqc,
                                         const float2 (&ds_c)[kNTiles], bool has_ds, bool masked,
                                         Visible visible, float p_log2_gain, float (&alpha)[2]) {
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float a = static_cast<float>(acc[n][e]);
        x[n][e] = has_ds ? fmaf(a, dqc, (e & 1) ? ds_c[n].y : ds_c[n].x) : a;
        if (masked && !visible(n, e)) x[n][e] = -CUDART_INF_F;
      }
    }
    float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
      tile_max[0] = fmaxf(tile_max[0], fmaxf(x[n][0], x[n][1]));
      tile_max[1] = fmaxf(tile_max[1], fmaxf(x[n][2], x[n][3]));
    }
    const float x_scale = has_ds ? 1.f : dqc;  // what turns x into log2 units
    float neg_m[2];  // -(m_use) + gain: the FMA's addend
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // Into log2 units before the quad exchange: with per_thread groups the four threads of a quad hold
      // different K groups, hence different dqc.
      tile_max[i] *= x_scale;
      // The four threads of a quad hold the row's 64 columns.
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
      const float m_new = fmaxf(m[i], tile_max[i]);
      const float m_use = m_new == -CUDART_INF_F ? 0.f : m_new;
      alpha[i] = mma::exp2_approx(m[i] - m_use);
      m[i] = m_new;
      neg_m[i] = p_log2_gain - m_use;
    }
    float row_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e >> 1;
        x[n][e] = mma::exp2_approx(fmaf(x[n][e], x_scale, neg_m[i]));
        row_sum[i] += x[n][e];
      }
    }
    l[0] = l[0] * alpha[0] + row_sum[0];
    l[1] = l[1] * alpha[1] + row_sum[1];
  }

  // The quad's full row sums (call once, after the last tile).
  __device__ __forceinline__ void reduce_rows() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
  }
};

}  // namespace sage::sm80
