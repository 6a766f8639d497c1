// One 64-row tile of Q or K: optional smoothing (Q block mean, or K minus its channel mean), group
// scales, INT8/INT4 quantization (conventions: sage_cli/numerics/quantize.py, quantize_qk).
#pragma once
#include "../common/divmod.cuh"
#include "common.cuh"

namespace sage::quant {

constexpr int kTile = 64;  // rows per Q tile and tokens per K tile
static_assert(kTile == SAGE_SMOOTH_Q_BLOCK && kTile == SAGE_K_BLOCK, "one tile = one smoothing/scale block");

// The group of row r (0..63) inside its tile: settings.q_group_index / k_group_index with the tile's
// first group subtracted. A 64-row tile always holds whole groups, so tile t's groups start at
// t * groups_per_tile.
template <bool IS_Q>
__device__ __forceinline__ int local_group(int r, int gran) {
  if (IS_Q) {
    if (gran == SAGE_PER_THREAD) return (r / 16) * 8 + r % 8;  // rows r and r+8 of each 16-row slice
    if (gran == SAGE_PER_WARP) return r / 16;
    return 0;
  }
  if (gran == SAGE_PER_THREAD) return (r % 8) / 2;  // tokens 2g, 2g+1 of every 8
  return 0;
}

// amax of tile-local group g from the row maxima: the rows of each group written out (the inverse of
// local_group), so one thread reads only its group's rows.
template <bool IS_Q>
__device__ __forceinline__ float group_amax(const float* row_amax, int g, int gran) {
  float a = 0.f;
  if (IS_Q && gran == SAGE_PER_THREAD) {
    const int r0 = (g / 8) * 16 + g % 8;
    a = fmaxf(row_amax[r0], row_amax[r0 + 8]);
  } else if (IS_Q && gran == SAGE_PER_WARP) {
#pragma unroll
    for (int i = 0; i < 16; ++i) a = fmaxf(a, row_amax[16 * g + i]);
  } else if (!IS_Q && gran == SAGE_PER_THREAD) {
#pragma unroll
    for (int j = 0; j < 8; ++j) a = fmaxf(a, fmaxf(row_amax[8 * j + 2 * g], row_amax[8 * j + 2 * g + 1]));
  } else {  // one group per tile
#pragma unroll
    for (int r = 0; r < kTile; ++r) a = fmaxf(a, row_amax[r]);
  }
  return a;
}

__host__ __device__ inline int groups_per_tile(bool is_q, int gran) {
  if (is_q) return gran == SAGE_PER_THREAD ? 32 : gran == SAGE_PER_WARP ? 4 : 1;
  return gran == SAGE_PER_THREAD ? 4 : 1;
}

// Scratch of the block-wide channel reductions (block mean, K mean, V statistics): one row of partials
// per pass of Rows<D>.
template <int D>
struct ReduceSmem {
  float red[Rows<D>::kRowsPerPass * D];
};

template <int D>
struct TileSmem {
  float mean[D];
  float row_amax[kTile];
  float inv[32];  // __frcp_rn of each group's scale
};

enum class Smooth { kNone, kBlockMean, kGiven };

// Quantize one tile of up to 64 rows (`valid` of them real; the rest are written as zero).
//   src:  row 0 of the tile, rows `stride_n` elements apart
//   mean: kBlockMean -> the block mean is computed and written there ([D] floats);
//         kGiven -> subtracted from every real row; kNone -> unused
//   dst:  row 0 of the tile in the quantized buffer; scale_out: the tile's first group scale
//   red:  kBlockMean only, the reduction scratch
template <int D, typename T, int QK, bool IS_Q, Smooth SMOOTH>
__device__ void quantize_tile(const T* src, int64_t stride_n, int valid, float* mean, int gran,
                              uint8_t* dst, float* scale_out, TileSmem<D>& sm, ReduceSmem<D>* red) {
  using R = Rows<D>;
  constexpr int kPasses = kTile / R::kRowsPerPass;
  constexpr int kQmax = QK == SAGE_QK_INT8 ? 127 : 7;
  const int c = R::col();

  float x[kPasses][8];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = R::row() + i * R::kRowsPerPass;
    if (r < valid) load8(src + r * stride_n + c, x[i]);
    else fill(x[i], 0.f);
  }

  if (SMOOTH == Smooth::kBlockMean) {
    float s[8];
    fill(s, 0.f);
#pragma unroll
    for (int i = 0; i < kPasses; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) s[j] += x[i][j];  // pad rows are zero
#pragma unroll
    for (int j = 0; j < 8; ++j) red->red[R::row() * D + c + j] = s[j];
    __syncthreads();
    if (threadIdx.x < D) {
      float t = 0.f;
      for (int i = 0; i < R::kRowsPerPass; ++i) t += red->red[i * D + threadIdx.x];
      const float m = __fdiv_rn(t, static_cast<float>(max(valid, 1)));  // an all-pad tile has mean 0
      sm.mean[threadIdx.x] = m;
      mean[threadIdx.x] = m;
    }
  } else if (SMOOTH == Smooth::kGiven) {
    if (threadIdx.x < D) sm.mean[threadIdx.x] = mean[threadIdx.x];
  }
  if (SMOOTH != Smooth::kNone) {
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      if (R::row() + i * R::kRowsPerPass < valid) {  // pad rows stay zero, not -mean
#pragma unroll
        for (int j = 0; j < 8; ++j) x[i][j] -= sm.mean[c + j];
      }
    }
  }

  // Row amax over the D / 8 lanes that share the row, then each group's amax from the row maxima.
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    float a = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) a = fmaxf(a, fabsf(x[i][j]));
    a = group_max<R::kLanesPerRow>(a);
    if (threadIdx.x % R::kLanesPerRow == 0) sm.row_amax[R::row() + i * R::kRowsPerPass] = a;
  }
  __syncthreads();
  const int ngroups = groups_per_tile(IS_Q, gran);
  if (static_cast<int>(threadIdx.x) < ngroups) {
    const float a = group_amax<IS_Q>(sm.row_amax, threadIdx.x, gran);
    const float s = __fdiv_rn(fmaxf(a, kScaleFloor), static_cast<float>(kQmax));
    sm.inv[threadIdx.x] = __frcp_rn(s);
    scale_out[threadIdx.x] = s;
  }
  __syncthreads();

#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = R::row() + i * R::kRowsPerPass;
    const float inv = sm.inv[local_group<IS_Q>(r, gran)];
    uint32_t bits[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) bits[j] = quantize_rn_bits(x[i][j], inv);
    if (QK == SAGE_QK_INT8) {
      *reinterpret_cast<uint2*>(dst + static_cast<int64_t>(r) * D + c) = pack_int8x8_bits(bits);
    } else {
      int q[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) q[j] = rn_bits_to_int(bits[j]);
      *reinterpret_cast<uint32_t*>(dst + static_cast<int64_t>(r) * (D / 2) + c / 2) = pack_int4x8(q);
    }
  }
}

template <int QK>
__host__ __device__ inline int row_bytes(int d) { return QK == SAGE_QK_INT8 ? d : d / 2; }

// Where tile `tile` (64 rows) of Q head or kv head `bh` (b * heads + h) lives: its first source row, how
// many of its rows are real, its first quantized row and its first scale group. by_heads divides by the
// head count of Q (IS_Q) or of K.
template <int D, typename T, int QK, bool IS_Q>
struct TileAt {
  const T* src;
  int64_t stride_n;
  int valid;
  uint8_t* dst;
  float* scale_out;

  __device__ TileAt(const SageQuantParams& p, int bh, int tile, const FastDivmod& by_heads) {
    const int seq = IS_Q ? p.seq_q : p.seq_k, seq_pad = IS_Q ? p.seq_q_pad : p.seq_k_pad;
    int h;
    const int b = by_heads.divmod(bh, h);
    const int row0 = tile * kTile;
    stride_n = IS_Q ? p.q_stride_n : p.k_stride_n;
    src = static_cast<const T*>(IS_Q ? p.q : p.k) + b * (IS_Q ? p.q_stride_b : p.k_stride_b) +
          h * (IS_Q ? p.q_stride_h : p.k_stride_h) + row0 * stride_n;
    valid = min(kTile, seq - row0);
    dst = static_cast<uint8_t*>(IS_Q ? p.q_int : p.k_int) + (static_cast<int64_t>(bh) * seq_pad + row0) * row_bytes<QK>(D);
    const int gpt = groups_per_tile(IS_Q, p.granularity);
    scale_out = (IS_Q ? p.q_scale : p.k_scale) + static_cast<int64_t>(bh) * (seq_pad / kTile) * gpt + tile * gpt;
  }
};

}  // namespace sage::quant
