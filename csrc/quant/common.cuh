// Pieces shared by the quantization kernels: how a 256-thread block covers [tokens, D] rows with 16-byte
// vectors, and the per-channel statistics over tokens (K mean, V mean, V max and min).
#pragma once
#include <math_constants.h>
#include <stdint.h>

#include "../common/cp_async.cuh"
#include "../common/numeric.cuh"

namespace sage::quant {

constexpr int kThreads = 256;
// Tokens one block reduces in the channel reductions: small, so that even one 4k-token kv head spreads
// over 64 blocks (a reduction must fill the GPU like any pass over memory: at 256 tokens a block, 8 kv
// heads gave one block per SM and ran at a third of the bandwidth); each block adds D atomics.
constexpr int kReduceChunk = 64;

constexpr float kScaleFloor = 1e-8f;  // settings.SCALE_FLOOR

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

// Rows [0, valid) of a [rows, D] piece of a slab (rows `stride_n` elements apart) copied asynchronously
// into `dst`, rows D elements apart: each thread issues its 16-byte pieces (cp.async) and the caller commits
// and waits. Rows from `valid` on are not touched (readers never look at them).
template <int D, typename T>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int64_t stride_n, int valid) {
  using R = Rows<D>;
  for (int r = R::row(); r < valid; r += R::kRowsPerPass)
    cp_async_16(smem_u32(dst + r * D + R::col()), src + r * stride_n + R::col());
}

// Per-channel statistics of tokens [t0, t1) of one [N, D] slab with token stride `stride_n`: the sum
// (SUM) and the max and min (MINMAX), returned to threads threadIdx.x < D for channel threadIdx.x.
// `scratch` holds kRowsPerPass * D floats; every thread of the block must call this.
struct ChannelStats {
  float sum, max, min;
};

template <int D, bool SUM, bool MINMAX, typename T>
__device__ ChannelStats channel_stats(const T* src, int64_t stride_n, int t0, int t1, float* scratch) {
  using R = Rows<D>;
  const int c = R::col();
  float s[8], mx[8], mn[8];
  fill(s, 0.f);
  fill(mx, -CUDART_INF_F);
  fill(mn, CUDART_INF_F);
  // Four independent 16-byte loads in flight per thread before the first use.
  constexpr int U = 4;
  for (int t = t0 + R::row(); t < t1; t += U * R::kRowsPerPass) {
    float x[U][8];
    bool real[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int tt = t + u * R::kRowsPerPass;
      real[u] = tt < t1;
      if (real[u]) load8(src + tt * stride_n + c, x[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!real[u]) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (SUM) s[j] += x[u][j];
        if (MINMAX) {
          mx[j] = fmaxf(mx[j], x[u][j]);
          mn[j] = fminf(mn[j], x[u][j]);
        }
      }
    }
  }
  ChannelStats out{0.f, -CUDART_INF_F, CUDART_INF_F};
  // One block-wide reduction per statistic, through `scratch`.
  auto reduce = [&](const float(&part)[8], auto op, float& res) {
#pragma unroll
    for (int j = 0; j < 8; ++j) scratch[R::row() * D + c + j] = part[j];
    __syncthreads();
    if (threadIdx.x < D) {
#pragma unroll 4
      for (int i = 0; i < R::kRowsPerPass; ++i) res = op(res, scratch[i * D + threadIdx.x]);
    }
    __syncthreads();  // scratch is reused by the next statistic or the caller
  };
  if (SUM) reduce(s, [](float a, float b) { return a + b; }, out.sum);
  if (MINMAX) {
    reduce(mx, [](float a, float b) { return fmaxf(a, b); }, out.max);
    reduce(mn, [](float a, float b) { return fminf(a, b); }, out.min);
  }
  return out;
}

}  // namespace sage::quant
