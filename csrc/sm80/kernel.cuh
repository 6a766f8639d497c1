// The sm80-family attention kernel: one CTA = kWarps x 16 query rows (64 or 128, traits.cuh) of one
// (batch, head); each warp owns an m16 slice of Q rows and walks all visible K/V tiles of 64 tokens.
//
//   prologue : Q tile and the first K/V tiles by cp.async; Q -> registers (ldmatrix), kept for the loop
//   per tile : prefetch tile kt+S-1 (S = pipeline stages) | S = Q K^T (int mma, s32) | online softmax
//              (dequantize in the exp2 FMA) | O += P V (FP8 two-level, or FP16)
//   epilogue : O / l * v_scale (+ v_mean), store; LSE
//
// Visibility: row r sees key j iff j <= lim(r) = min(Nk - 1, causal ? r + Nk - Nq : inf). Tiles entirely
// below the CTA's smallest limit skip the per-element mask; tiles past the largest limit are not visited.
#pragma once
#include <math_constants.h>
#include "../common/mma_sync.cuh"
#include "params.cuh"
#include "pv.cuh"
#include "softmax.cuh"
#include "tile_load.cuh"
#include "traits.cuh"

namespace sage::sm80 {

__device__ __forceinline__ int visible_limit(const KernelParams& p, int row) {
  return p.causal ? min(p.seq_k - 1, row + p.seq_k - p.seq_q) : p.seq_k - 1;
}

// Index of the Q scale group of this thread's rows (g and g+8 always share one; see settings.py);
// slice16 = the absolute index of the warp's 16-row slice.
__device__ __forceinline__ int q_scale_index(int granularity, int slice16, int g) {
  if (granularity == SAGE_PER_THREAD) return slice16 * 8 + g;
  if (granularity == SAGE_PER_WARP) return slice16;
  return slice16 / 4;
}
// Index of the K scale group of this thread's columns in tile kt.
__device__ __forceinline__ int k_scale_index(int granularity, int kt, int t) {
  return granularity == SAGE_PER_THREAD ? kt * 4 + t : kt;
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, T::kMinBlocks) attn_fwd_kernel(const KernelParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (T::kFp8PV) {  // the host never launches these (no e4m3 mma before sm_89)
    __trap();
    return;
  }
#endif
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem0 = mma::smem_u32(smem);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int g = lane / 4;
  const int t = lane % 4;

  // Causal: the last Q blocks have the most tiles; launch them first so the tail of the grid is short.
  const int qblk = p.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hkv = h / p.group_size;
  const int q0 = qblk * T::kBlockQ;
  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0, row0 + 8
  const int lim[2] = {visible_limit(p, row0), visible_limit(p, row0 + 8)};
  const int cta_lim_lo = visible_limit(p, q0);
  const int cta_lim_hi = visible_limit(p, min(q0 + T::kBlockQ, p.seq_q) - 1);
  const int n_tiles = cta_lim_hi < 0 ? 0 : cta_lim_hi / T::kBlockK + 1;

  const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
  const int64_t bhkv = static_cast<int64_t>(b) * p.heads_kv + hkv;
  const uint8_t* q_src = p.q + (bh * p.seq_q_pad + q0) * T::kQKRowBytes;
  const uint8_t* k_src = p.k + bhkv * p.seq_k_pad * T::kQKRowBytes;
  const float* k_scale = p.k_scale + bhkv * p.k_groups;
  const int slice16 = q0 / 16 + warp;
  const float q_scale = p.q_scale[bh * p.q_groups + q_scale_index(p.granularity, slice16, g)];
  // ds has one row per 64-query block: the block of this warp's rows.
  const float* ds_row = p.ds ? p.ds + (bh * (p.seq_q_pad / 64) + slice16 / 4) * p.seq_k_pad : nullptr;

  auto load_k = [&](int kt, uint32_t stage) {
    copy_tile_async<T::kBlockK, T::kQKRowBytes, T::kThreads>(
        stage, k_src + static_cast<int64_t>(kt) * T::kBlockK * T::kQKRowBytes, T::kQKRowBytes);
  };
  auto load_v = [&](int kt, uint32_t stage) {
    const int tok0 = kt * T::kBlockK;
    if constexpr (T::kFp8PV) {  // V^T rows are channels; the tile is 64 tokens of each
      const uint8_t* v_src = p.v + bhkv * T::kD * p.seq_k_pad + tok0;
      copy_tile_async<T::kVRows, T::kVRowBytes, T::kThreads>(stage + T::kKBytes, v_src, p.seq_k_pad);
    } else {  // V rows are tokens, strided, ending at Nk (not padded): zero-fill past it
      const uint8_t* v_src = p.v + 2 * (b * p.v_stride_b + hkv * p.v_stride_h + tok0 * p.v_stride_n);
      copy_tile_async<T::kVRows, T::kVRowBytes, T::kThreads>(stage + T::kKBytes, v_src, 2 * p.v_stride_n,
                                                            p.seq_k - tok0);
    }
  };
  auto stage_of = [&](int kt) { return smem0 + (kt % T::kStages) * T::kStageBytes; };
  auto load_tile = [&](int kt) {
    load_k(kt, stage_of(kt));
    load_v(kt, stage_of(kt));
  };

  float o[T::kNTilesO][4];
#pragma unroll
  for (int n = 0; n < T::kNTilesO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  OnlineSoftmax<T::kNTilesS> softmax;
  softmax.init();

  if (n_tiles > 0) {
    // Pipeline: kStages shared memory stages, one cp.async group per K/V tile, one barrier per tile.
    //   prologue: {Q, tile 0} {tile 1} .. {tile S-2}; Q -> registers
    //   tile kt : wait for tile kt; barrier; issue tile kt+S-1 into the stage tile kt-1 used; QK^T;
    //             softmax; PV
    // The barrier both publishes tile kt to every warp and proves that every warp is done with tile
    // kt-1, whose stage is refilled right after it. Groups are committed even when empty (the last
    // tiles) so the wait count stays S-2. Q lives in the last stage, first refilled after the barrier
    // of tile 0, by which time every warp holds its Q fragments in registers.
    copy_tile_async<T::kBlockQ, T::kQKRowBytes, T::kThreads>(stage_of(T::kStages - 1), q_src, T::kQKRowBytes);
#pragma unroll
    for (int i = 0; i < T::kStages - 1; ++i) {
      if (i < n_tiles) load_tile(i);
      mma::cp_async_commit();
    }
    mma::cp_async_wait<T::kStages - 2>();
    __syncthreads();
    uint32_t q_frag[T::kQKSteps][4];
#pragma unroll
    for (int s = 0; s < T::kQKSteps; ++s) {
      mma::ldmatrix_x4(q_frag[s],
                       ldmatrix_addr<T::kQKRowBytes, true>(stage_of(T::kStages - 1), warp * 16, 2 * s, lane));
    }

    constexpr float kP8Gain = 8.807354922057604f;  // log2(448): FP8 P~ = 448 * p, folded into exp2
    const float p_gain = T::kFp8PV ? kP8Gain : 0.f;

    float k_scale_next = k_scale[k_scale_index(p.granularity, 0, t)];
    for (int kt = 0; kt < n_tiles; ++kt) {
      const uint32_t stage = stage_of(kt);
      // The K scale is fetched a tile ahead; ds is loaded before the wait so that the two overlap.
      const float dqc = q_scale * k_scale_next * p.scale_log2;
      if (kt + 1 < n_tiles) k_scale_next = k_scale[k_scale_index(p.granularity, kt + 1, t)];
      float2 ds_c[T::kNTilesS] = {};
      if (ds_row != nullptr) {
#pragma unroll
        for (int n = 0; n < T::kNTilesS; ++n) {
          const float2 d = *reinterpret_cast<const float2*>(ds_row + kt * T::kBlockK + 8 * n + 2 * t);
          ds_c[n] = make_float2(d.x * p.scale_log2, d.y * p.scale_log2);
        }
      }
      mma::cp_async_wait<T::kStages - 2>();  // tile kt landed (this thread's copies)
      __syncthreads();                       // ... and everyone's; tile kt-1's stage is free
      if (kt + T::kStages - 1 < n_tiles) load_tile(kt + T::kStages - 1);
      mma::cp_async_commit();

      // S = Q K^T, int32.
      int acc[T::kNTilesS][4];
#pragma unroll
      for (int n = 0; n < T::kNTilesS; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;
#pragma unroll
      for (int s = 0; s < T::kQKSteps; ++s) {
#pragma unroll
        for (int pair = 0; pair < T::kNTilesS / 2; ++pair) {
          uint32_t kb[4];
          mma::ldmatrix_x4(kb, ldmatrix_addr<T::kQKRowBytes, false>(stage, 16 * pair, 2 * s, lane));
          if constexpr (T::kInt4) {
            mma::mma_s4(acc[2 * pair], q_frag[s], kb[0], kb[1]);
            mma::mma_s4(acc[2 * pair + 1], q_frag[s], kb[2], kb[3]);
          } else {
            mma::mma_s8(acc[2 * pair], q_frag[s], kb[0], kb[1]);
            mma::mma_s8(acc[2 * pair + 1], q_frag[s], kb[2], kb[3]);
          }
        }
      }

      // Softmax. Only tiles reaching past the smallest row limit of the CTA need the per-element mask.
      const int tok0 = kt * T::kBlockK;
      const bool masked = tok0 + T::kBlockK - 1 > cta_lim_lo;
      auto visible = [&](int n, int e) { return tok0 + 8 * n + 2 * t + (e & 1) <= lim[e >> 1]; };
      float pr[T::kNTilesS][4];
      float alpha[2];
      softmax.update(acc, pr, dqc, ds_c, ds_row != nullptr, masked, visible, p_gain, alpha);
#pragma unroll
      for (int n = 0; n < T::kNTilesO; ++n) {
        o[n][0] *= alpha[0];
        o[n][1] *= alpha[0];
        o[n][2] *= alpha[1];
        o[n][3] *= alpha[1];
      }

      // O += P V.
      if constexpr (T::kFp8PV) {
        pv_fp8<T>(pr, stage + T::kKBytes, lane, p.narrow != 0, o);
      } else {
        pv_16bit<T>(pr, stage + T::kKBytes, lane, o);
      }
    }
  }

  // Epilogue.
  softmax.reduce_rows();
  const float p_scale = T::kFp8PV ? 448.f : 1.f;  // l sums the 448-scaled P~ on the FP8 path
  const float* v_scale = T::kFp8PV ? p.v_scale + bhkv * T::kD : nullptr;
  const float* v_mean = p.v_mean ? p.v_mean + bhkv * T::kD : nullptr;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + 8 * i;
    if (row >= p.seq_q) continue;
    const bool seen = softmax.l[i] > 0.f;
    const float inv_l = seen ? 1.f / softmax.l[i] : 0.f;
    uint8_t* o_row = static_cast<uint8_t*>(p.o) + 2 * (b * p.o_stride_b + h * p.o_stride_h + row * p.o_stride_n);
#pragma unroll
    for (int n = 0; n < T::kNTilesO; ++n) {
      const int col = 8 * n + 2 * t;
      float v0 = o[n][2 * i] * inv_l;
      float v1 = o[n][2 * i + 1] * inv_l;
      if constexpr (T::kFp8PV) {
        const float2 vs = *reinterpret_cast<const float2*>(v_scale + col);
        v0 *= vs.x;
        v1 *= vs.y;
        if (v_mean != nullptr && seen) {
          const float2 vm = *reinterpret_cast<const float2*>(v_mean + col);
          v0 += vm.x;
          v1 += vm.y;
        }
      }
      *reinterpret_cast<uint32_t*>(o_row + 2 * col) = mma::pack_16bit<T::kBf16>(v0, v1);
    }
    if (p.lse != nullptr && t == 0) {
      constexpr float kLn2 = 0.6931471805599453f;
      p.lse[bh * p.seq_q + row] =
          seen ? (softmax.m[i] + __log2f(softmax.l[i] / p_scale)) * kLn2 : -CUDART_INF_F;
    }
  }
}

}  // namespace sage::sm80
