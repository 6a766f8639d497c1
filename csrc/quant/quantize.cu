// Smoothing and quantization of Q, K and V: sage::quantize, behind sage_quantize (conventions:
// sage_cli/numerics/quantize.py).
//
// K needs its channel mean, and V its channel amax (and mean, with smooth V), before any of their tokens is
// quantized. Two routes:
//  - resident (wherever the GPU holds all slices of a kv head at once: up to ~100k tokens a head on an H100):
//    a memset, then qkv_resident, which reads Q, K and V once, holding each slice of a kv head in shared
//    memory until the head's statistics are complete (qkv_resident.cuh). 17% less time than the two passes
//    at the bench's 4k shape (bench/NOTES.md, 22nd session): it moves a third less and mixes blocks that
//    load with blocks that compute.
//  - two passes (longer heads, or SAGE_QUANT_KV=passes), which read K and V twice and Q once, in three
//    stream-ordered steps:
//   1. workspace = 0 (one memset): per channel the K mean, V mean, V max and V min accumulators.
//   2. q_tiles_and_stats, three kinds of units: Q tiles (64 rows of one head: optional block mean and
//      smoothing, group scales, quantization); K chunks (64 tokens: sum / Nk added into the K mean); V
//      chunks (64 tokens: sum / Nk into the V mean with smooth V; max and min with a dynamic scale). Q
//      depends on neither, so its tiles fill the GPU beside the reductions.
//   3. kv_tiles: K (two 64-token tiles: K - mean, group scales, quantization) and V (a 128-token tile: scale
//      and mean from the statistics, FP8, transposed) in units of 128 tokens, in the reverse of the order
//      step 2 read them, so that what step 2 read last is read again first, while it is still in L2.
// Both grids of the two passes are persistent (run_units): each block stages its next unit's rows into shared
// memory while it works on the current one. Step 3 is launched with programmatic dependent launch
// (common/pdl.cuh).
// The V amax needs no pass of its own: max |x - m| over a channel is max(vmax - m, m - vmin) exactly
// (float subtraction is monotone in x), so the mean, max and min come from one pass. The atomics make the
// means order-dependent in their last bit, which can flip a rounding tie now and then; nothing else is.
#include <cstdlib>
#include <cstring>

#include "../common/check.cuh"
#include "../common/pdl.cuh"
#include "qkv_resident.cuh"
#include "kv_stats.cuh"
#include "qk_tile.cuh"
#include "v_tile.cuh"

namespace sage {
namespace quant {
namespace {

// Each block runs units u = blockIdx.x, blockIdx.x + gridDim.x, ... (a grid of a few blocks per SM), and
// stages unit u + gridDim.x into shared memory (cp.async) while it works on unit u: a block always has a
// unit's loads in flight, where one block per unit spent most of its life between its loads and its
// stores (the passes ran at half the bandwidth). A stage is STAGE_BYTES; stage_unit(u, stage) issues the
// copies of unit u, work(u, stage) runs once they have landed.
template <int STAGE_BYTES, class StageUnit, class Work>
__device__ void run_units(int units, uint8_t* stages, StageUnit stage_unit, Work work) {
  auto issue = [&](int u, uint8_t* dst) {
    if (u < units) stage_unit(u, dst);
    cp_async_commit();  // an empty group past the end keeps the wait below uniform
  };
  int buf = 0;
  issue(blockIdx.x, stages);
  for (int u = blockIdx.x; u < units; u += gridDim.x) {
    issue(u + gridDim.x, stages + (buf ^ 1) * STAGE_BYTES);
    cp_async_wait<1>();  // this thread's copies of unit u have landed
    __syncthreads();     // ... and everyone's
    work(u, stages + buf * STAGE_BYTES);
    __syncthreads();  // the stage is refilled by the next iteration's issue
    buf ^= 1;
  }
}

// Bytes of one stage: q_tiles_and_stats stages a Q tile or a K/V chunk (64 rows); kv_tiles a 128-token unit
// and, after its rows, three [D] float vectors of statistics.
template <int D, typename T>
constexpr int kQStageBytes = kTile * D * sizeof(T);
template <int D, typename T>
constexpr int kKVRowBytes = kVTile * D * sizeof(T);
template <int D, typename T>
constexpr int kKVStageBytes = kKVRowBytes<D, T> + 3 * D * sizeof(float);

// Copies `n` floats (a multiple of 4, 16-byte aligned) with threads [first, first + n / 4), one 16-byte
// piece each, in the caller's cp.async group.
__device__ __forceinline__ void stage_floats(float* dst, const void* src, int n, int first) {
  const int i = static_cast<int>(threadIdx.x) - first;
  if (i >= 0 && i < n / 4) cp_async_16(smem_u32(dst + 4 * i), static_cast<const float*>(src) + 4 * i);
}

// Units [0, q_units): Q tiles (64 rows); then kv_chunks K-mean chunks (64 tokens); then (when V needs
// statistics) as many V chunks. v_sum: accumulate the V mean (smooth V); v_minmax: the V max and min.
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads) q_tiles_and_stats(SageQuantParams p, int q_units, int chunks, int v_sum,
                                                              int v_minmax, int units) {
  using T = typename ElemOf<DT>::type;
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  __shared__ TileSmem<D> sm;
  __shared__ ReduceSmem<D> red;
  pdl_allow_dependents();  // kv_tiles may be scheduled beside this grid's last blocks; it waits for them
  const int kv_chunks = p.batch * p.heads_kv * chunks;
  const int q_tiles = p.seq_q_pad / kTile;
  const FastDivmod by_q_tiles(q_tiles), by_chunks(chunks), by_heads_q(p.heads_q), by_heads_kv(p.heads_kv);
  // Unit u of the K or V chunks: which slab, kv head and first token.
  auto chunk_of = [&](int u, bool& is_k, int& bh, int& t0) {
    u -= q_units;
    is_k = u < kv_chunks;
    if (!is_k) u -= kv_chunks;
    bh = by_chunks.divmod(u, t0);
    t0 *= kReduceChunk;
  };
  auto stage_unit = [&](int u, uint8_t* stage) {
    T* dst = reinterpret_cast<T*>(stage);
    if (u < q_units) {
      int tile;
      const int bh = by_q_tiles.divmod(u, tile);
      const TileAt<D, T, QK, true> at(p, bh, tile, by_heads_q);
      stage_rows<D>(dst, at.src, at.stride_n, at.valid);
      return;
    }
    bool is_k;
    int bh, t0;
    chunk_of(u, is_k, bh, t0);
    int64_t stride;
    const T* src = kv_rows<T>(p, is_k, bh, t0, by_heads_kv, stride);
    stage_rows<D>(dst, src, stride, min(kReduceChunk, p.seq_k - t0));
  };
  auto work = [&](int u, uint8_t* stage) {
    const T* rows = reinterpret_cast<const T*>(stage);
    if (u < q_units) {
      int tile;
      const int bh = by_q_tiles.divmod(u, tile);
      const TileAt<D, T, QK, true> at(p, bh, tile, by_heads_q);
      if (p.smooth_q) {
        float* mean = p.q_mean + (static_cast<int64_t>(bh) * q_tiles + tile) * D;
        quantize_tile<D, T, QK, true, Smooth::kBlockMean>(rows, D, at.valid, mean, p.granularity, at.dst,
                                                          at.scale_out, sm, &red);
      } else {
        quantize_tile<D, T, QK, true, Smooth::kNone>(rows, D, at.valid, nullptr, p.granularity, at.dst,
                                                     at.scale_out, sm, nullptr);
      }
      return;
    }
    bool is_k;
    int bh, t0;
    chunk_of(u, is_k, bh, t0);
    const int valid = min(kReduceChunk, p.seq_k - t0);
    const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
    const Workspace ws(p);
    if (is_k)
      chunk_stats<D, true, false>(p, rows, valid, ws.k_mean, at, red.red);
    else if (v_sum && v_minmax)
      chunk_stats<D, true, true>(p, rows, valid, ws.v_mean, at, red.red);
    else if (v_sum)
      chunk_stats<D, true, false>(p, rows, valid, ws.v_mean, at, red.red);
    else
      chunk_stats<D, false, true>(p, rows, valid, ws.v_mean, at, red.red);
  };
  static_assert(kTile == kReduceChunk, "one staged unit is a Q tile or a K/V chunk");
  run_units<kQStageBytes<D, T>>(units, dyn_smem, stage_unit, work);
}

// Units of 128 tokens, in the forward order [K of every kv head..., V of every kv head...], run as
// f = units - 1 - u (see the file comment). A K unit is two 64-token K tiles (two scale blocks); a V unit one
// V tile. Each unit's stage holds, after its rows, what it needs of the statistics (K: the mean; V: max,
// min, mean, or the static scale), copied with the rows rather than read when the work starts, where the
// L2 round trip stood between the block and its stores. The first unit of each head also writes the
// head's k_mean, v_scale and v_mean outputs. Three blocks per SM (at most 85 registers and ~70 KiB of shared
// memory each; with two, the blocks' barriers and the statistics' L2 round trips left the SM's loads idle).
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads, 3) kv_tiles(SageQuantParams p, int k_units, int units) {
  using T = typename ElemOf<DT>::type;
  constexpr int kRowBytes = kKVRowBytes<D, T>;
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  __shared__ union {
    TileSmem<D> k;
    VScales<D> v;
  } sm;
  pdl_allow_dependents();
  pdl_wait();  // the statistics (and, for the attention after us, Q) come from q_tiles_and_stats
  const Workspace ws(p);
  const FastDivmod by_per_head(p.seq_k_pad / kVTile), by_heads_kv(p.heads_kv);
  auto unit_of = [&](int u, bool& is_k, int& bh, int& t_idx) {
    int f = units - 1 - u;
    is_k = f < k_units;
    if (!is_k) f -= k_units;
    bh = by_per_head.divmod(f, t_idx);
  };
  auto stage_unit = [&](int u, uint8_t* stage) {
    bool is_k;
    int bh, t_idx;
    unit_of(u, is_k, bh, t_idx);
    int64_t stride;
    const T* src = kv_rows<T>(p, is_k, bh, t_idx * kVTile, by_heads_kv, stride);
    stage_rows<D>(reinterpret_cast<T*>(stage), src, stride, min(kVTile, p.seq_k - t_idx * kVTile));
    float* side = reinterpret_cast<float*>(stage + kRowBytes);
    const int64_t at = static_cast<int64_t>(bh) * D;
    if (is_k) {
      stage_floats(side, ws.k_mean + at, D, 0);
    } else {
      if (p.v_static_scale) {
        stage_floats(side, p.v_static_scale + at, D, 0);
      } else {
        stage_floats(side, ws.v_max + at, D, 0);
        stage_floats(side + D, ws.v_negmin + at, D, D / 4);
      }
      if (p.smooth_v) stage_floats(side + 2 * D, ws.v_mean + at, D, D / 2);
    }
  };
  auto work = [&](int u, uint8_t* stage) {
    const T* rows = reinterpret_cast<const T*>(stage);
    float* side = reinterpret_cast<float*>(stage + kRowBytes);
    bool is_k;
    int bh, t_idx;
    unit_of(u, is_k, bh, t_idx);
    if (is_k) {
#pragma unroll 1
      for (int half = 0; half < kVTile / kTile; ++half) {
        const int tile = t_idx * (kVTile / kTile) + half;
        const TileAt<D, T, QK, false> at(p, bh, tile, by_heads_kv);
        quantize_tile<D, T, QK, false, Smooth::kGiven>(rows + half * kTile * D, D, at.valid, side, p.granularity,
                                                       at.dst, at.scale_out, sm.k, nullptr);
        __syncthreads();  // sm.k is reused by the second tile
      }
      if (t_idx == 0 && threadIdx.x < D) p.k_mean[static_cast<int64_t>(bh) * D + threadIdx.x] = side[threadIdx.x];
      return;
    }
    if (threadIdx.x < D) {
      const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
      const float mean = p.smooth_v ? side[2 * D + threadIdx.x] : 0.f;
      const float s = v_channel_scale<D>(p, side, threadIdx.x, mean);
      sm.v.inv[threadIdx.x] = __frcp_rn(s);
      sm.v.mean[threadIdx.x] = mean;
      if (t_idx == 0) {
        p.v_scale[at] = s;
        if (p.smooth_v) p.v_mean[at] = mean;
      }
    }
    __syncthreads();
    uint8_t* dst = static_cast<uint8_t*>(p.v_fp8) + static_cast<int64_t>(bh) * D * p.seq_k_pad + t_idx * kVTile;
    quantize_v_tile<D>(rows, min(kVTile, p.seq_k - t_idx * kVTile), dst, p.seq_k_pad, sm.v);
  };
  run_units<kKVStageBytes<D, T>>(units, dyn_smem, stage_unit, work);
}

// A persistent grid: as many blocks as fit on the GPU at once (at most one per unit).
template <class Kernel>
int grid_for(Kernel kernel, size_t dyn_smem, int units, int& grid) {
  int dev = 0, sms = 0, per_sm = 0;
  SAGE_CUDA_TRY(cudaGetDevice(&dev));
  SAGE_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  SAGE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn_smem)));
  SAGE_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dyn_smem));
  grid = max(1, min(units, sms * max(per_sm, 1)));
  return SAGE_OK;
}

// How Q, K and V are read: in one launch, each once (qkv_resident), wherever the GPU holds a whole kv
// head's slices at once (up to ~100k tokens a head on an H100), else by the two passes. SAGE_QUANT_KV=passes
// forces the two passes (tests and benchmarks compare the routes).
bool two_passes_asked() {
  const char* e = std::getenv("SAGE_QUANT_KV");
  return e != nullptr && std::strcmp(e, "passes") == 0;
}

// The resident route: one launch of qkv_resident after the memset. Returns SAGE_ERR_UNSUPPORTED, having
// launched nothing, where the route does not apply.
template <int D, int DT, int QK>
int launch_resident(const SageQuantParams& p, cudaStream_t stream) {
  using T = typename ElemOf<DT>::type;
  if (two_passes_asked()) return SAGE_ERR_UNSUPPORTED;
  const int slices = resident_slices<D>(p.seq_k);
  const size_t smem = Slice<D, T>::kBytes;
  int room = 0;  // qkv_resident blocks the GPU holds at once
  if (int r = grid_for(qkv_resident<D, DT, QK>, smem, 1 << 30, room)) return r;
  if (room < slices) return SAGE_ERR_UNSUPPORTED;  // the wait in qkv_resident needs a head's slices resident
  const int per_head = (p.v != nullptr ? 2 : 1) * slices + (p.heads_q / p.heads_kv) * resident_q_units<D>(p.seq_q_pad);
  const int units = p.batch * p.heads_kv * per_head;
  const int v_sum = p.v != nullptr && p.smooth_v, v_minmax = p.v != nullptr && p.v_static_scale == nullptr;
  qkv_resident<D, DT, QK><<<units, kThreads, smem, stream>>>(p, slices, v_sum, v_minmax);
  SAGE_CHECK_LAUNCH("sage_quantize (Q, K and V, one read)");
  return SAGE_OK;
}

template <int D, int DT, int QK>
int launch(const SageQuantParams& p, cudaStream_t stream) {
  using T = typename ElemOf<DT>::type;
  SAGE_CUDA_TRY(cudaMemsetAsync(p.workspace, 0, sizeof(float) * SAGE_QUANT_WORKSPACE_FLOATS(p.batch, p.heads_kv, D), stream));
  const int resident = launch_resident<D, DT, QK>(p, stream);
  if (resident != SAGE_ERR_UNSUPPORTED) return resident;
  const bool has_v = p.v != nullptr;
  const int v_sum = has_v && p.smooth_v, v_minmax = has_v && p.v_static_scale == nullptr;
  const int chunks = ceil_div(p.seq_k, kReduceChunk);
  const int q_units = p.batch * p.heads_q * (p.seq_q_pad / kTile);
  const int kv_chunks = p.batch * p.heads_kv * chunks;
  const int units1 = q_units + kv_chunks * (v_sum || v_minmax ? 2 : 1);
  const size_t smem1 = 2 * kQStageBytes<D, T>;
  int grid1 = 0;
  if (int r = grid_for(q_tiles_and_stats<D, DT, QK>, smem1, units1, grid1)) return r;
  q_tiles_and_stats<D, DT, QK><<<grid1, kThreads, smem1, stream>>>(p, q_units, chunks, v_sum, v_minmax, units1);
  SAGE_CHECK_LAUNCH("sage_quantize (Q tiles + K/V statistics)");
  const int k_units = p.batch * p.heads_kv * (p.seq_k_pad / kVTile);
  const int units2 = k_units * (has_v ? 2 : 1);
  const size_t smem2 = 2 * kKVStageBytes<D, T>;
  int grid2 = 0;
  if (int r = grid_for(kv_tiles<D, DT, QK>, smem2, units2, grid2)) return r;
  SAGE_CUDA_TRY(launch_pdl(kv_tiles<D, DT, QK>, grid2, kThreads, smem2, stream, p, k_units, units2));
  return SAGE_OK;
}

template <int D, int DT>
int by_qk(const SageQuantParams& p, cudaStream_t s) {
  return p.qk_type == SAGE_QK_INT8 ? launch<D, DT, SAGE_QK_INT8>(p, s) : launch<D, DT, SAGE_QK_INT4>(p, s);
}
template <int D>
int by_dtype(const SageQuantParams& p, cudaStream_t s) {
  return p.dtype == SAGE_FP16 ? by_qk<D, SAGE_FP16>(p, s) : by_qk<D, SAGE_BF16>(p, s);
}

}  // namespace
}  // namespace quant

// Parameters were validated by sage_quantize (api.cu).
int quantize(const SageQuantParams& p, cudaStream_t stream) {
  return p.head_dim == 64 ? quant::by_dtype<64>(p, stream) : quant::by_dtype<128>(p, stream);
}

}  // namespace sage
