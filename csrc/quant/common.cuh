// Pieces shared by the quantization kernels: how a 256-thread block covers [tokens, D] rows with 16-byte
// vectors, and the per-channel statistics over tokens (K mean, V mean, V max and min).
#pragma once
#include <math_constants.h>
#include <stdint.h>

#include <type_traits>

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

// Per-channel statistics of rows [0, valid) of a staged [ROWS, D] chunk (rows D elements apart):
// the sum (SUM) and the max and min (MINMAX), returned to threads threadIdx.x < D for channel threadIdx.x.
// `scratch` holds kRowsPerPass * D floats; every thread of the block must call this.
// The max and min are taken on the 16-bit pairs themselves (one HMNMX2 per pair and statistic, exact) and
// converted once at the end; only the sum needs every element as fp32.
struct ChannelStats {
  float sum, max, min;
};

template <typename T> struct PairOf;
template <> struct PairOf<__half> { using type = __half2; };
template <> struct PairOf<__nv_bfloat16> { using type = __nv_bfloat162; };

template <int D, bool SUM, bool MINMAX, int ROWS = kReduceChunk, typename T>
__device__ ChannelStats channel_stats(const T* rows, int valid, float* scratch) {
  using R = Rows<D>;
  using T2 = typename PairOf<T>::type;
  // Rows a thread loads before it adds them: 4 (D=128) or 2 (D=64) in a kReduceChunk chunk.
  constexpr int kPasses = kReduceChunk / R::kRowsPerPass;
  static_assert(ROWS % kReduceChunk == 0, "whole chunks");
  const int c = R::col();
  float s[8];
  T2 mx[4], mn[4];
  fill(s, 0.f);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    mx[i] = T2(T(-CUDART_INF_F), T(-CUDART_INF_F));
    mn[i] = T2(T(CUDART_INF_F), T(CUDART_INF_F));
  }
  // A chunk's loads first, then their arithmetic; full chunks (almost all of them) run without row checks.
  auto body = [&](auto full_tag, int base) {
    constexpr bool kFull = decltype(full_tag)::value;
    uint4 raw[kPasses];
#pragma unroll
    for (int u = 0; u < kPasses; ++u) {
      const int t = base + R::row() + u * R::kRowsPerPass;
      if (kFull || t < valid) raw[u] = *reinterpret_cast<const uint4*>(rows + t * D + c);
    }
#pragma unroll
    for (int u = 0; u < kPasses; ++u) {
      if (!kFull && base + R::row() + u * R::kRowsPerPass >= valid) continue;
      const uint32_t w[4] = {raw[u].x, raw[u].y, raw[u].z, raw[u].w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (SUM) {
          const float2 f = to_float2(w[i], T{});
          s[2 * i] += f.x;
          s[2 * i + 1] += f.y;
        }
        if (MINMAX) {
          const T2 v = *reinterpret_cast<const T2*>(&w[i]);
          mx[i] = __hmax2(mx[i], v);
          mn[i] = __hmin2(mn[i], v);
        }
      }
    }
  };
  auto chunk = [&](int base) {
    if (valid - base >= kReduceChunk)
      body(std::true_type{}, base);
    else
      body(std::false_type{}, base);
  };
  if constexpr (ROWS == kReduceChunk) {
    chunk(0);
  } else {
#pragma unroll 1
    for (int base = 0; base < ROWS && base < valid; base += kReduceChunk) chunk(base);
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
    float fmx[8], fmn[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t a = *reinterpret_cast<const uint32_t*>(&mx[i]), b = *reinterpret_cast<const uint32_t*>(&mn[i]);
      const float2 x = to_float2(a, T{}), y = to_float2(b, T{});
      fmx[2 * i] = x.x;
      fmx[2 * i + 1] = x.y;
      fmn[2 * i] = y.x;
      fmn[2 * i + 1] = y.y;
    }
    reduce(fmx, [](float a, float b) { return fmaxf(a, b); }, out.max);
    reduce(fmn, [](float a, float b) { return fminf(a, b); }, out.min);
  }
  return out;
}

}  // namespace sage::quant
