// Q, K and V quantized in one launch that reads each once (the "resident" route of quantize.cu), for kv
// heads short enough. A K or V block holds one slice of a kv head (Slice::kBytes of rows) in shared memory
// from its loads to its stores: it adds the slice's statistics into the workspace, counts itself in its
// head's K or V count, waits until every slice of the head has counted itself, then quantizes its rows
// with the head's complete mean and scales, value for value as kv_tiles does. A Q block quantizes a few Q
// tiles as q_tiles_and_stats does. The two passes read K and V twice (once for the statistics, once to
// quantize), this route once.
//
// Blocks are independent apart from that one wait, so a block that finishes makes room for the next at
// once, and the Q blocks mixed in keep loading while the K and V blocks beside them compute (thread block
// clusters, which are gang-scheduled, kept the SMs' loads and arithmetic in lockstep: bench/NOTES.md, 21st
// session).
//
// Why the wait cannot hang. Blocks take their units from a counter (claimed), in order, not by blockIdx,
// and a head's slices are consecutive units; there is one block per unit, and a block waits only after
// its own loads and atomics, which wait on nothing. Take the first head, in unit order, with a slice
// still waiting. If all its slices are claimed, their blocks are resident and have counted or will count
// themselves, so the wait ends. If one is not, no later unit is claimed either, so every waiting block
// holds a slice of that head: fewer than `slices` blocks, and the route is taken only where the GPU holds
// at least `slices` of these blocks at once (quantize.cu); the other resident blocks (earlier heads' or Q
// units) finish without waiting, and the grid's next block then claims the unit. The attention launched
// after this grid cannot take the room first: it is scheduled only once every block of this grid has
// started.
#pragma once
#include "../common/cp_async.cuh"
#include "../common/gpu_flags.cuh"
#include "../common/pdl.cuh"
#include "kv_stats.cuh"
#include "qk_tile.cuh"
#include "v_tile.cuh"

namespace sage::quant {

// A slice: 64 KiB of rows, whole 128-token V tiles (256 tokens at D = 128, 512 at D = 64, fp16 or bf16).
template <int D, typename T>
struct Slice {
  static constexpr int kBytes = 64 * 1024;
  static constexpr int kTokens = kBytes / (D * static_cast<int>(sizeof(T)));
  static_assert(kTokens % kVTile == 0 && kVTile % kTile == 0 && kTile == kReduceChunk, "whole tiles and chunks");
};

// Slices of a kv head of seq_k tokens, and Q units of a Q head of seq_q_pad rows.
template <int D>
__host__ __device__ inline int resident_slices(int seq_k) {
  return (seq_k + Slice<D, __half>::kTokens - 1) / Slice<D, __half>::kTokens;
}
template <int D>
__host__ __device__ inline int resident_q_units(int seq_q_pad) {
  return (seq_q_pad + Slice<D, __half>::kTokens - 1) / Slice<D, __half>::kTokens;
}

// K's scratch while a slice is quantized: each row's amax, then each group's reciprocal scale.
template <int D, typename T>
struct KSliceSmem {
  float row_amax[Slice<D, T>::kTokens];
  float inv[Slice<D, T>::kTokens / kTile * 4];  // at most 4 groups a 64-token tile (settings.k_group_index)
};

// Shared memory besides the slice: the reduction scratch (K and V statistics, or a Q tile's block mean),
// then the head's K or V statistics (side, laid out as v_channel_scale reads them) and K's or V's own
// scratch; a Q tile's scratch apart, since smooth Q needs it beside the reduction's.
template <int D, typename T>
struct ResidentSmem {
  union {
    ReduceSmem<D> red;
    struct {
      float side[3 * D];
      union {
        KSliceSmem<D, T> k;
        VScales<D> v;
      } tile;
    } kv;
  };
  TileSmem<D> q_tile;
};

// One slice's statistics, added into the workspace: every row of the slice in one block-wide reduction
// (one atomic a channel and statistic, where the two passes add one a 64-token chunk).
template <int D, typename T>
__device__ void slice_stats(const SageQuantParams& p, const T* rows, int valid, bool is_k, int bh, int v_sum,
                            int v_minmax, float* scratch) {
  constexpr int N = Slice<D, T>::kTokens;
  const Workspace ws(p);
  const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
  if (is_k)
    chunk_stats<D, true, false, N>(p, rows, valid, ws.k_mean, at, scratch);
  else if (v_sum && v_minmax)
    chunk_stats<D, true, true, N>(p, rows, valid, ws.v_mean, at, scratch);
  else if (v_sum)
    chunk_stats<D, true, false, N>(p, rows, valid, ws.v_mean, at, scratch);
  else
    chunk_stats<D, false, true, N>(p, rows, valid, ws.v_mean, at, scratch);
}

// The slice's K tiles quantized as quantize_tile<..., Smooth::kGiven> quantizes each (the same roundings,
// value for value), with two block barriers for the whole slice instead of three a tile: every row's amax
// first, then every group's scale, then the values. A thread's rows (Rows<D>: kRowsPerPass apart) all
// fall in one per-thread group of each tile, and it keeps only the mean of its 8 channels in registers,
// reading its rows from shared memory twice.
//   rows: the slice (valid real rows, then pad); tiles: the 64-token tiles to write (pad included);
//   tile0: the slice's first tile in the head; mean: the head's channel means (shared memory).
template <int D, typename T, int QK>
__device__ void quantize_k_slice(const SageQuantParams& p, const T* rows, int valid, int tiles, int bh, int tile0,
                                 const float* mean, KSliceSmem<D, T>& sm) {
  using R = Rows<D>;
  constexpr int kRows = Slice<D, T>::kTokens / R::kRowsPerPass;  // rows a thread: 16
  constexpr int kQmax = QK == SAGE_QK_INT8 ? 127 : 7;
  const int c = R::col();
  const int gran = p.granularity;
  float m[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) m[j] = mean[c + j];
  auto smoothed = [&](int r, float (&x)[8]) {  // row r minus the mean; pad rows are zero, not -mean
    if (r < valid) {
      load8(rows + r * D + c, x);
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] -= m[j];
    } else {
      fill(x, 0.f);
    }
  };

#pragma unroll 4
  for (int i = 0; i < kRows; ++i) {
    const int r = R::row() + i * R::kRowsPerPass;
    float x[8];
    smoothed(r, x);
    float a = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) a = fmaxf(a, fabsf(x[j]));
    a = group_max<R::kLanesPerRow>(a);
    if (threadIdx.x % R::kLanesPerRow == 0) sm.row_amax[r] = a;
  }
  __syncthreads();
  const int gpt = groups_per_tile(false, gran);
  if (static_cast<int>(threadIdx.x) < tiles * gpt) {
    const int t = threadIdx.x / gpt, g = threadIdx.x % gpt;
    const float a = group_amax<false>(sm.row_amax + t * kTile, g, gran);
    const float s = __fdiv_rn(fmaxf(a, kScaleFloor), static_cast<float>(kQmax));
    sm.inv[threadIdx.x] = __frcp_rn(s);
    p.k_scale[(static_cast<int64_t>(bh) * (p.seq_k_pad / kTile) + tile0 + t) * gpt + g] = s;
  }
  __syncthreads();

  const int64_t row0 = static_cast<int64_t>(bh) * p.seq_k_pad + tile0 * kTile;
  uint8_t* dst = static_cast<uint8_t*>(p.k_int) + row0 * row_bytes<QK>(D);
#pragma unroll 4
  for (int i = 0; i < kRows; ++i) {
    const int r = R::row() + i * R::kRowsPerPass;
    if (r >= tiles * kTile) break;  // rows grow with i
    float x[8];
    smoothed(r, x);
    const float inv = sm.inv[(r / kTile) * gpt + local_group<false>(r % kTile, gran)];
    uint32_t bits[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) bits[j] = quantize_rn_bits(x[j], inv);
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

// Up to Slice::kTokens / kTile Q tiles of one Q head (a Q unit), quantized as q_tiles_and_stats quantizes
// each; they need no statistics from anyone, so these blocks never wait.
template <int D, typename T, int QK>
__device__ void quantize_q_unit(const SageQuantParams& p, T* rows, int bhq, int tile0, ResidentSmem<D, T>& sm) {
  const FastDivmod by_heads_q(p.heads_q);
  const int q_tiles = p.seq_q_pad / kTile;
  const int tiles = min(Slice<D, T>::kTokens / kTile, q_tiles - tile0);
  {
    const TileAt<D, T, QK, true> at(p, bhq, tile0, by_heads_q);
    stage_rows<D>(rows, at.src, at.stride_n, min(Slice<D, T>::kTokens, p.seq_q - tile0 * kTile));
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll 1
  for (int i = 0; i < tiles; ++i) {
    const TileAt<D, T, QK, true> at(p, bhq, tile0 + i, by_heads_q);
    const T* tile_rows = rows + i * kTile * D;
    if (p.smooth_q) {
      float* mean = p.q_mean + (static_cast<int64_t>(bhq) * q_tiles + tile0 + i) * D;
      quantize_tile<D, T, QK, true, Smooth::kBlockMean>(tile_rows, D, at.valid, mean, p.granularity, at.dst,
                                                        at.scale_out, sm.q_tile, &sm.red);
    } else {
      quantize_tile<D, T, QK, true, Smooth::kNone>(tile_rows, D, at.valid, nullptr, p.granularity, at.dst,
                                                   at.scale_out, sm.q_tile, nullptr);
    }
    __syncthreads();  // sm.q_tile and sm.red are reused by the next tile
  }
}

// Grid: one block per unit, taken in order from ws.claimed: kv heads last to first (the attention starts on
// the first heads, which are then the last written, still in L2); for each, its K slices, its V slices,
// then the Q units of the query heads that read it. The Q units, which never wait, keep the SMs loading
// while the K and V blocks beside them reduce, wait and quantize.
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads, 3) qkv_resident(SageQuantParams p, int slices, int v_sum, int v_minmax) {
  using T = typename ElemOf<DT>::type;
  using S = Slice<D, T>;
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  __shared__ ResidentSmem<D, T> sm;
  __shared__ int claimed;
  pdl_allow_dependents();  // the attention may be scheduled once every block has started; it waits for us
  const Workspace ws(p);
  if (threadIdx.x == 0) claimed = static_cast<int>(atomicAdd(ws.claimed, 1u));
  __syncthreads();
  const int heads = p.batch * p.heads_kv;
  const int kv_units = (p.v != nullptr ? 2 : 1) * slices;
  const int group = p.heads_q / p.heads_kv;
  const int q_units = resident_q_units<D>(p.seq_q_pad);  // a Q head's
  const int u = claimed;
  const int bh = heads - 1 - u / (kv_units + group * q_units);
  int r = u % (kv_units + group * q_units);
  T* rows = reinterpret_cast<T*>(dyn_smem);
  const FastDivmod by_heads_kv(p.heads_kv);
  if (r >= kv_units) {
    r -= kv_units;
    int h;
    const int b = by_heads_kv.divmod(bh, h);
    const int bhq = b * p.heads_q + h * group + r / q_units;
    quantize_q_unit<D, T, QK>(p, rows, bhq, (r % q_units) * (S::kTokens / kTile), sm);
    return;
  }
  const bool is_k = r < slices;
  const int t0 = (is_k ? r : r - slices) * S::kTokens;
  const int valid = min(S::kTokens, p.seq_k - t0);  // >= 1: slices = ceil(seq_k / kTokens)

  int64_t stride;
  stage_rows<D>(rows, kv_rows<T>(p, is_k, bh, t0, by_heads_kv, stride), stride, valid);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  if (is_k || v_sum || v_minmax) {
    slice_stats<D>(p, rows, valid, is_k, bh, v_sum, v_minmax, sm.red.red);
    __syncthreads();  // every thread's atomics are issued: the release below orders them before the count
    if (threadIdx.x == 0) {
      unsigned* count = ws.arrived + (is_k ? 0 : heads) + bh;
      add_release(count, 1u);
      while (load_acquire(count) < static_cast<unsigned>(slices)) __nanosleep(256);
    }
    __syncthreads();  // thread 0's acquire, then this barrier, orders everyone's reads below after the sums
  }

  float* side = sm.kv.side;
  if (threadIdx.x < D) {
    const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
    if (is_k) {
      side[threadIdx.x] = __ldcg(ws.k_mean + at);
    } else {
      if (p.v_static_scale) {
        side[threadIdx.x] = p.v_static_scale[at];
      } else {
        side[threadIdx.x] = __uint_as_float(__ldcg(ws.v_max + at));
        side[D + threadIdx.x] = __uint_as_float(__ldcg(ws.v_negmin + at));
      }
      if (p.smooth_v) side[2 * D + threadIdx.x] = __ldcg(ws.v_mean + at);
    }
  }
  __syncthreads();

  const int pad_tokens = min(S::kTokens, p.seq_k_pad - t0);  // pad tokens are written as zero
  if (is_k) {
    quantize_k_slice<D, T, QK>(p, rows, valid, pad_tokens / kTile, bh, t0 / kTile, side, sm.kv.tile.k);
    if (t0 == 0 && threadIdx.x < D) p.k_mean[static_cast<int64_t>(bh) * D + threadIdx.x] = side[threadIdx.x];
  } else {
    if (threadIdx.x < D) {
      const float mean = p.smooth_v ? side[2 * D + threadIdx.x] : 0.f;
      const float s = v_channel_scale<D>(p, side, threadIdx.x, mean);
      sm.kv.tile.v.inv[threadIdx.x] = __frcp_rn(s);
      sm.kv.tile.v.mean[threadIdx.x] = mean;
      if (t0 == 0) {
        const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
        p.v_scale[at] = s;
        if (p.smooth_v) p.v_mean[at] = mean;
      }
    }
    __syncthreads();
    uint8_t* dst = static_cast<uint8_t*>(p.v_fp8) + static_cast<int64_t>(bh) * D * p.seq_k_pad + t0;
#pragma unroll 1
    for (int i = 0; i < pad_tokens / kVTile; ++i)
      quantize_v_tile<D>(rows + i * kVTile * D, valid - i * kVTile, dst + i * kVTile, p.seq_k_pad, sm.kv.tile.v);
  }
}

}  // namespace sage::quant
