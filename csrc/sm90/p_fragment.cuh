// From the S accumulator of the QK wgmma to the A operand of the FP8 P.V wgmma, and which key token each
// accumulator column holds.
//
// The mismatch. In an m64nN accumulator, thread (warp w, lane = 4g + q) holds, for rows 16w+g and
// 16w+g+8, columns 8j + 2q + {0, 1} of every 8-column group j. The A fragment of an 8-bit m64k32 wgmma
// wants from that thread the k-indices 4q..4q+3 (register a0/a1, rows g / g+8) and 16+4q..19+4q (a2/a3).
// V^T arrives by TMA in natural token order, so k-index = token, and the thread holds the wrong tokens.
//
// Fix 1 (KOrder::kPermuted, the fast path): let the TMA write K's rows permuted inside every 32 tokens,
// so that accumulator column n = 8j + 2q + e (j < 4, e < 2) holds token 16*(j/2) + 4q + 2*(j%2) + e. Then
// the thread's columns of groups {0,1} are exactly tokens 4q..4q+3 and those of groups {2,3} are
// 16+4q..19+4q, in byte order: a0 = P(j0,e0) P(j0,e1) P(j1,e0) P(j1,e1), no data movement at all. The
// permutation is a pure relabelling of token bits (e, q, j%2) -> (e, j%2, q), which a 5-D tensor map
// with strides {1, 4, 2, 16} tokens expresses.
//
// Fix 2 (KOrder::kNatural): K in natural order; each thread packs its 16 values of a k-step into four
// words U_j = {row g pair, row g+8 pair} of group j and trades them inside its quad with four shuffles:
// the lane q needs groups q/2 and 2+q/2 from lanes 2(q%2) (low half of each a-register) and 2(q%2)+1
// (high half). Two shuffles where every lane is read by exactly one other (a permutation) each carry 64
// bits that the sender picks by its parity; a byte permute then interleaves the halves.
#pragma once
#include <stdint.h>

#include "traits.cuh"

namespace sage::sm90 {

// Token offset (inside the K tile) of accumulator column 8*j + 2*q + e, j in [0, kBlkK/8).
template <KOrder ORDER>
__device__ __forceinline__ int column_token(int j, int q, int e) {
  if constexpr (ORDER == KOrder::kPermuted) {
    const int jj = j & 3;
    return 32 * (j >> 2) + 16 * (jj >> 1) + 4 * q + 2 * (jj & 1) + e;
  } else {
    return 8 * j + 2 * q + e;
  }
}

// Two fp32 values -> two e4m3 bytes (lo in the low byte), round to nearest, saturating at +-448.
__device__ __forceinline__ uint32_t cvt_e4m3x2(float lo, float hi) {
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ uint32_t pack_u16x2(uint32_t lo, uint32_t hi) { return lo | (hi << 16); }

// x: the softmax output of one tile in accumulator order (x[4j + 2i + e]: group j, row g+8i, column e),
// already scaled to the FP8 range. a[kk]: the A fragment of P.V k-step kk (tokens 32kk..32kk+31).
template <KOrder ORDER, int NREG>
__device__ __forceinline__ void pack_p_fragment(const float (&x)[NREG], uint32_t (&a)[NREG / 16][4], int q) {
  constexpr int kSteps = NREG / 16;
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    // U[j][i]: group 4kk+j, row i, both columns, as two e4m3 bytes.
    uint32_t u[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int base = 4 * (4 * kk + j) + 2 * i;
        u[j][i] = cvt_e4m3x2(x[base], x[base + 1]);
      }
    if constexpr (ORDER == KOrder::kPermuted) {
      a[kk][0] = pack_u16x2(u[0][0], u[1][0]);
      a[kk][1] = pack_u16x2(u[0][1], u[1][1]);
      a[kk][2] = pack_u16x2(u[2][0], u[3][0]);
      a[kk][3] = pack_u16x2(u[2][1], u[3][1]);
    } else {
      // W_j = {row g pair, row g+8 pair} of group j.
      const uint32_t w0 = pack_u16x2(u[0][0], u[0][1]), w1 = pack_u16x2(u[1][0], u[1][1]);
      const uint32_t w2 = pack_u16x2(u[2][0], u[2][1]), w3 = pack_u16x2(u[3][0], u[3][1]);
      const bool odd = q & 1;
      // Shuffle A: lane q reads lane 2(q%2) + q/2; shuffle B: lane 2(q%2) + 1 - q/2 (both permutations of
      // the quad). A sender's reader wants groups {0,2} or {1,3}; which one follows from the sender's parity.
      const uint32_t send_a0 = odd ? w1 : w0, send_a1 = odd ? w3 : w2;
      const uint32_t send_b0 = odd ? w0 : w1, send_b1 = odd ? w2 : w3;
      const int lane = threadIdx.x & 31;
      const int quad = lane & ~3;
      const int src_a = quad + 2 * (q & 1) + (q >> 1);
      const int src_b = quad + 2 * (q & 1) + 1 - (q >> 1);
      const uint32_t ra0 = __shfl_sync(0xffffffffu, send_a0, src_a);
      const uint32_t ra1 = __shfl_sync(0xffffffffu, send_a1, src_a);
      const uint32_t rb0 = __shfl_sync(0xffffffffu, send_b0, src_b);
      const uint32_t rb1 = __shfl_sync(0xffffffffu, send_b1, src_b);
      // Lanes 0,1 got the lower-token source through A, lanes 2,3 through B.
      const bool a_low = q < 2;
      const uint32_t sel_row0 = a_low ? 0x5410u : 0x1054u;
      const uint32_t sel_row8 = a_low ? 0x7632u : 0x3276u;
      a[kk][0] = __byte_perm(ra0, rb0, sel_row0);
      a[kk][1] = __byte_perm(ra0, rb0, sel_row8);
      a[kk][2] = __byte_perm(ra1, rb1, sel_row0);
      a[kk][3] = __byte_perm(ra1, rb1, sel_row8);
    }
  }
}

}  // namespace sage::sm90
