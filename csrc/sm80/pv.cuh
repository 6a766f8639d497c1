// O += P . V for one K tile of 64 tokens, with P (fp32 in the score-accumulator layout) as the A operand.
//
// FP16/BF16 (m16n8k16): the accumulator of two adjacent n8 score tiles is already the A fragment of a
// k16 step (row g holds k 2t, 2t+1 and 8+2t, 8+2t+1): pack and go. V [tokens, D] is read with
// ldmatrix.trans.
//
// FP8 (m16n8k32 e4m3): the A fragment of a k32 step wants row g's tokens 4t..4t+3 (a0) and 16+4t..16+4t+3
// (a2) in thread t of the quad, but the score accumulator gives thread t the token pairs 2t,2t+1 of each
// n8 tile. Tokens 4t..4t+3 of a 32-token chunk sit in n8 tile t/2, in the pairs of threads 2(t%2) and
// 2(t%2)+1. So each thread packs, per n8 tile j, W_j = {row g pair, row g+8 pair} as four e4m3 bytes, and
// the quad exchanges them in two shuffle rounds per tile pair:
//   round 1: thread t reads from s1 = 2(t%2) + t/2, round 2 from s1 ^ 1;
//   a thread s is read in round 1 by the thread that wants tile s%2, in round 2 by the one that wants
//   1 - s%2, so it offers W_{s%2} then W_{1-s%2}: every value crossing the quad is used (4 shuffles per
//   32 tokens). The pair from thread 2(t%2) is the lower two tokens. A prmt splits rows g / g+8.
// V^T [D, tokens] then loads with plain ldmatrix in natural token order. (Checked end to end against the
// reference by the GPU tests: a wrong permutation gives errors of order 1, not 1e-3.)
#pragma once
#include "../common/mma_sync.cuh"
#include "tile_load.cuh"

namespace sage::sm80 {

// FP8: pack and exchange one 32-token chunk (n8 tiles 4c .. 4c+3) of 448-scaled P into an A fragment.
template <int kNTiles>
__device__ __forceinline__ void p_to_a_fp8(const float (&p)[kNTiles][4], int chunk, int lane, uint32_t (&a)[4]) {
  const int t = lane & 3;
  const int src1 = (lane & ~3) | ((t & 1) << 1) | (t >> 1);
  const int src2 = src1 ^ 1;
  const bool odd = t & 1;
  const bool upper = t >> 1;
#pragma unroll
  for (int half = 0; half < 2; ++half) {  // tokens 0..15 (a0, a1) and 16..31 (a2, a3) of the chunk
    uint32_t w[2];
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      const int n = 4 * chunk + 2 * half + jj;
      const uint32_t row_g = mma::cvt_e4m3x2(p[n][0], p[n][1]);
      const uint32_t row_g8 = mma::cvt_e4m3x2(p[n][2], p[n][3]);
      w[jj] = row_g | (row_g8 << 16);
    }
    const uint32_t x1 = __shfl_sync(0xffffffffu, odd ? w[1] : w[0], src1);
    const uint32_t x2 = __shfl_sync(0xffffffffu, odd ? w[0] : w[1], src2);
    const uint32_t lo = upper ? x2 : x1;  // from thread 2(t%2): the tokens 4t, 4t+1
    const uint32_t hi = upper ? x1 : x2;  // from thread 2(t%2)+1: the tokens 4t+2, 4t+3
    a[2 * half + 0] = mma::prmt(lo, hi, 0x5410);  // row g
    a[2 * half + 1] = mma::prmt(lo, hi, 0x7632);  // row g+8
  }
}

// FP8 P~ . V~ of one tile into o. `narrow`: accumulate straight into o (one narrow accumulator for the
// whole row); otherwise the tile is summed in a zeroed register quad first and added to o in fp32.
template <class T>
__device__ __forceinline__ void pv_fp8(const float (&p)[T::kNTilesS][4], uint32_t v_smem, int lane, bool narrow,
                                       float (&o)[T::kNTilesO][4]) {
  static_assert(T::kBlockK == 64, "two 32-token chunks per tile");
  uint32_t a[2][4];
  p_to_a_fp8(p, 0, lane, a[0]);
  p_to_a_fp8(p, 1, lane, a[1]);
#pragma unroll
  for (int pair = 0; pair < T::kNTilesO / 2; ++pair) {  // 16 channels: two n8 output tiles
    uint32_t b[2][4];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      mma::ldmatrix_x4(b[c], ldmatrix_addr<T::kVRowBytes, false>(v_smem, 16 * pair, 2 * c, lane));
    }
#pragma unroll
    for (int nn = 0; nn < 2; ++nn) {
      float(&dst)[4] = o[2 * pair + nn];
      if (narrow) {
        mma::mma_e4m3(dst, a[0], b[0][2 * nn], b[0][2 * nn + 1]);
        mma::mma_e4m3(dst, a[1], b[1][2 * nn], b[1][2 * nn + 1]);
      } else {
        float blk[4] = {0.f, 0.f, 0.f, 0.f};
        mma::mma_e4m3(blk, a[0], b[0][2 * nn], b[0][2 * nn + 1]);
        mma::mma_e4m3(blk, a[1], b[1][2 * nn], b[1][2 * nn + 1]);
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[e] += blk[e];
      }
    }
  }
}

// FP16/BF16 P . V of one tile into o (fp32 accumulate; P rounded to the input dtype).
template <class T>
__device__ __forceinline__ void pv_16bit(const float (&p)[T::kNTilesS][4], uint32_t v_smem, int lane,
                                         float (&o)[T::kNTilesO][4]) {
#pragma unroll
  for (int kk = 0; kk < T::kBlockK / 16; ++kk) {
    uint32_t a[4];
    a[0] = mma::pack_16bit<T::kBf16>(p[2 * kk][0], p[2 * kk][1]);
    a[1] = mma::pack_16bit<T::kBf16>(p[2 * kk][2], p[2 * kk][3]);
    a[2] = mma::pack_16bit<T::kBf16>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = mma::pack_16bit<T::kBf16>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int pair = 0; pair < T::kNTilesO / 2; ++pair) {
      uint32_t b[4];
      mma::ldmatrix_x4_trans(b, ldmatrix_addr<T::kVRowBytes, true>(v_smem, 16 * kk, 2 * pair, lane));
      mma::mma_16bit<T::kBf16>(o[2 * pair], a, b[0], b[1]);
      mma::mma_16bit<T::kBf16>(o[2 * pair + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace sage::sm80
