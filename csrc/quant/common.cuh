// Pieces shared by the Q/K and V quantization kernels: how a 256-thread block covers [tokens, D] rows
// with 16-byte vectors, and the per-channel reductions over tokens (K mean, V mean, V amax).
#pragma once
#include <stdint.h>

#include "../common/numeric.cuh"

namespace sage::quant {

constexpr int kThreads = 256;
// Tokens one block reduces in the channel reductions: small, so that even one 4k-token kv head spreads
// over 64 blocks (a reduction must fill the GPU like any pass over memory: at 256 tokens a block, 8 kv
// heads gave one block per SM and ran at a third of the bandwidth); each block adds D atomics.
constexpr int kReduceChunk = 64;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Each thread owns one 16-byte vector (8 channels) of a row; D / 8 consecutive lanes cover one row, so a
// warp reads 2 (D=128) or 4 (D=64) whole rows: every access is a full, coalesced 256/128-byte row.
template <int D>
struct Rows {
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static constexpr int kLanesPerRow = D / 8;
  static constexpr int kRowsPerPass = kThreads / kLanesPerRow;
  __device__ static int col() { return (threadIdx.x % kLanesPerRow) * 8; }
  __device__ static int row() { return threadIdx.x / kLanesPerRow; }
};

enum class Reduce { kSum, kAbsMax };

// Per-channel reduction over tokens [t0, t1) of one [N, D] slab with token stride `stride_n`:
// kSum gives sum(x), kAbsMax gives max |x - center[c]| (center may be null for 0). The result for
// channel threadIdx.x is returned to threads threadIdx.x < D. `scratch` holds kRowsPerPass * D floats.
template <int D, typename T, Reduce OP>
__device__ float reduce_channels(const T* src, int64_t stride_n, int t0, int t1, const float* center,
                                 float* scratch) {
  using R = Rows<D>;
  const int c = R::col();
  float cen[8];
  fill(cen, 0.f);
  if (OP == Reduce::kAbsMax && center != nullptr) {
#pragma unroll
    for (int j = 0; j < 8; ++j) cen[j] = center[c + j];
  }
  float acc[8];
  fill(acc, 0.f);
  // Four independent 16-byte loads in flight per thread before the first use.
  constexpr int U = 4;
  for (int t = t0 + R::row(); t < t1; t += U * R::kRowsPerPass) {
    float x[U][8];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int tt = t + u * R::kRowsPerPass;
      if (tt < t1) {
        load8(src + tt * stride_n + c, x[u]);
      } else {  // a token past the end adds nothing: 0 to a sum, |cen - cen| = 0 to a max
#pragma unroll
        for (int j = 0; j < 8; ++j) x[u][j] = OP == Reduce::kSum ? 0.f : cen[j];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        acc[j] = OP == Reduce::kSum ? acc[j] + x[u][j] : fmaxf(acc[j], fabsf(x[u][j] - cen[j]));
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) scratch[R::row() * D + c + j] = acc[j];
  __syncthreads();
  float r = 0.f;
  if (threadIdx.x < D) {
#pragma unroll 4
    for (int i = 0; i < R::kRowsPerPass; ++i) {
      const float v = scratch[i * D + threadIdx.x];
      r = OP == Reduce::kSum ? r + v : fmaxf(r, v);
    }
  }
  __syncthreads();  // scratch may be reused by the caller
  return r;
}

}  // namespace sage::quant
