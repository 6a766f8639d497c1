// Smoothing and quantization of Q, K and V: sage::quantize, behind sage_quantize (conventions:
// sage_cli/numerics/quantize.py).
//
// K needs its channel mean, and V its channel amax (and mean, with smooth V), before any of their tokens is
// quantized, so each is read twice; Q is read once. Three stream-ordered steps:
//   1. workspace = 0 (one memset): per channel the K mean, V mean, V max and V min accumulators.
//   2. q_tiles_and_stats, three kinds of units: Q tiles (64 rows of one head: optional block mean and
//      smoothing, group scales, quantization); K chunks (64 tokens: sum / Nk added into the K mean); V
//      chunks (64 tokens: sum / Nk into the V mean with smooth V; max and min with a dynamic scale). Q
//      depends on neither, so its tiles fill the GPU beside the reductions.
//   3. kv_tiles: K (two 64-token tiles: K - mean, group scales, quantization) and V (a 128-token tile: scale
//      and mean from the statistics, FP8, transposed) in units of 128 tokens, in the reverse of the order
//      step 2 read them, so that what step 2 read last is read again first, while it is still in L2.
// Both grids are persistent (run_units): each block stages its next unit's rows into shared memory while
// it works on the current one. Step 3 is launched with programmatic dependent launch (common/pdl.cuh).
// The V amax needs no pass of its own: max |x - m| over a channel is max(vmax - m, m - vmin) exactly
// (float subtraction is monotone in x), so the mean, max and min come from one pass. The atomics make the
// means order-dependent in their last bit, which can flip a rounding tie now and then; nothing else is.
#include "../common/check.cuh"
#include "../common/pdl.cuh"
#include "qk_tile.cuh"
#include "v_tile.cuh"

namespace sage {
namespace quant {
namespace {

// The four accumulators of the workspace, each [B, Hkv, D].
struct Workspace {
  float* k_mean;
  float* v_mean;
  unsigned* v_max;     // ordered_bits of the channel max
  unsigned* v_negmin;  // ordered_bits of minus the channel min (a max, so that zero is its identity)

  __host__ __device__ explicit Workspace(const SageQuantParams& p) {
    const int64_t n = static_cast<int64_t>(p.batch) * p.heads_kv * p.head_dim;
    k_mean = p.workspace;
    v_mean = p.workspace + n;
    v_max = reinterpret_cast<unsigned*>(p.workspace + 2 * n);
    v_negmin = reinterpret_cast<unsigned*>(p.workspace + 3 * n);
  }
};

// Token t0 of kv head bh (b * Hkv + h) of K (is_k) or V, and that tensor's token stride.
template <typename T>
__device__ __forceinline__ const T* kv_rows(const SageQuantParams& p, bool is_k, int bh, int t0, int64_t& stride) {
  const int b = bh / p.heads_kv, h = bh % p.heads_kv;
  stride = is_k ? p.k_stride_n : p.v_stride_n;
  const T* base = static_cast<const T*>(is_k ? p.k : p.v);
  return base + b * (is_k ? p.k_stride_b : p.v_stride_b) + h * (is_k ? p.k_stride_h : p.v_stride_h) + t0 * stride;
}

template <int D, bool SUM, bool MINMAX, typename T>
__device__ void v_chunk_stats(const SageQuantParams& p, const T* rows, int valid, int64_t at, float* scratch) {
  const ChannelStats s = channel_stats<D, SUM, MINMAX>(rows, D, 0, valid, scratch);
  if (threadIdx.x < D) {
    const Workspace ws(p);
    if (SUM) atomicAdd(ws.v_mean + at, __fdiv_rn(s.sum, static_cast<float>(p.seq_k)));
    if (MINMAX) {
      atomic_max_ordered(ws.v_max + at, s.max);
      atomic_max_ordered(ws.v_negmin + at, -s.min);
    }
  }
}

// Each block runs units u = blockIdx.x, blockIdx.x + gridDim.x, ... (a grid of a few blocks per SM), and
// stages unit u + gridDim.x's rows into shared memory (cp.async) while it works on unit u: a block always
// has a unit's loads in flight, where one block per unit spent most of its life between its loads and its
// stores (the passes ran at half the bandwidth). UNIT_ROWS rows of D elements per stage.
template <int D, typename T, int UNIT_ROWS, class Source, class Work>
__device__ void run_units(int units, T* stages, Source source, Work work) {
  auto stage = [&](int buf) { return stages + buf * (UNIT_ROWS * D); };
  auto issue = [&](int u, T* dst) {
    if (u < units) {
      int64_t stride;
      int valid;
      const T* src = source(u, stride, valid);
      stage_rows<D>(dst, src, stride, min(valid, UNIT_ROWS));
    }
    cp_async_commit();  // an empty group past the end keeps the wait below uniform
  };
  int buf = 0;
  issue(blockIdx.x, stage(0));
  for (int u = blockIdx.x; u < units; u += gridDim.x) {
    issue(u + gridDim.x, stage(buf ^ 1));
    cp_async_wait<1>();  // this thread's copies of unit u have landed
    __syncthreads();     // ... and everyone's
    work(u, stage(buf));
    __syncthreads();  // stage(buf) is refilled by the next iteration's issue
    buf ^= 1;
  }
}

// Units [0, q_units): Q tiles (64 rows); then kv_chunks K-mean chunks (64 tokens); then (when V needs
// statistics) as many V chunks. v_sum: accumulate the V mean (smooth V); v_minmax: the V max and min.
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads) q_tiles_and_stats(SageQuantParams p, int q_units, int chunks, int v_sum,
                                                              int v_minmax, int units) {
  using T = typename ElemOf<DT>::type;
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  __shared__ TileSmem<D> sm;
  pdl_allow_dependents();  // kv_tiles may be scheduled beside this grid's last blocks; it waits for them
  const int kv_chunks = p.batch * p.heads_kv * chunks;
  const int q_tiles = p.seq_q_pad / kTile;
  // Unit u of the K or V chunks: which slab, kv head and first token.
  auto chunk_of = [&](int u, bool& is_k, int& bh, int& t0) {
    u -= q_units;
    is_k = u < kv_chunks;
    if (!is_k) u -= kv_chunks;
    bh = u / chunks;
    t0 = (u % chunks) * kReduceChunk;
  };
  auto source = [&](int u, int64_t& stride, int& valid) -> const T* {
    if (u < q_units) {
      const TileAt<D, T, QK, true> at(p, u / q_tiles, u % q_tiles);
      stride = at.stride_n;
      valid = at.valid;
      return at.src;
    }
    bool is_k;
    int bh, t0;
    chunk_of(u, is_k, bh, t0);
    valid = min(kReduceChunk, p.seq_k - t0);
    return kv_rows<T>(p, is_k, bh, t0, stride);
  };
  auto work = [&](int u, const T* rows) {
    if (u < q_units) {
      const int bh = u / q_tiles, tile = u % q_tiles;
      const TileAt<D, T, QK, true> at(p, bh, tile);
      if (p.smooth_q) {
        float* mean = p.q_mean + (static_cast<int64_t>(bh) * q_tiles + tile) * D;
        quantize_tile<D, T, QK, true, Smooth::kBlockMean>(rows, D, at.valid, mean, p.granularity, at.dst,
                                                          at.scale_out, sm);
      } else {
        quantize_tile<D, T, QK, true, Smooth::kNone>(rows, D, at.valid, nullptr, p.granularity, at.dst,
                                                     at.scale_out, sm);
      }
      return;
    }
    bool is_k;
    int bh, t0;
    chunk_of(u, is_k, bh, t0);
    const int valid = min(kReduceChunk, p.seq_k - t0);
    const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
    if (is_k) {
      const ChannelStats s = channel_stats<D, true, false>(rows, D, 0, valid, sm.red);
      if (threadIdx.x < D) atomicAdd(Workspace(p).k_mean + at, __fdiv_rn(s.sum, static_cast<float>(p.seq_k)));
    } else if (v_sum && v_minmax) {
      v_chunk_stats<D, true, true>(p, rows, valid, at, sm.red);
    } else if (v_sum) {
      v_chunk_stats<D, true, false>(p, rows, valid, at, sm.red);
    } else {
      v_chunk_stats<D, false, true>(p, rows, valid, at, sm.red);
    }
  };
  static_assert(kTile == kReduceChunk, "one staged unit is a Q tile or a K/V chunk");
  run_units<D, T, kTile>(units, reinterpret_cast<T*>(dyn_smem), source, work);
}

// Units of 128 tokens, in the forward order [K of every kv head..., V of every kv head...], run as
// f = units - 1 - u (see the file comment). A K unit is two 64-token K tiles (two scale blocks); a V unit one
// V tile. The first unit of each head also writes the head's k_mean, v_scale and v_mean outputs.
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads) kv_tiles(SageQuantParams p, int k_units, int units) {
  using T = typename ElemOf<DT>::type;
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  __shared__ union {
    TileSmem<D> k;
    VTileSmem<D> v;
  } sm;
  pdl_allow_dependents();
  pdl_wait();  // the statistics (and, for the attention after us, Q) come from q_tiles_and_stats
  const Workspace ws(p);
  const int per_head = p.seq_k_pad / kVTile;
  auto source = [&](int u, int64_t& stride, int& valid) -> const T* {
    int f = units - 1 - u;
    const bool is_k = f < k_units;
    if (!is_k) f -= k_units;
    const int bh = f / per_head, t0 = (f % per_head) * kVTile;
    valid = min(kVTile, p.seq_k - t0);
    return kv_rows<T>(p, is_k, bh, t0, stride);
  };
  auto work = [&](int u, const T* rows) {
    int f = units - 1 - u;
    if (f < k_units) {
      const int bh = f / per_head, unit = f % per_head;
      float* mean = ws.k_mean + static_cast<int64_t>(bh) * D;
#pragma unroll 1
      for (int half = 0; half < kVTile / kTile; ++half) {
        const int tile = unit * (kVTile / kTile) + half;
        const TileAt<D, T, QK, false> at(p, bh, tile);
        quantize_tile<D, T, QK, false, Smooth::kGiven>(rows + half * kTile * D, D, at.valid, mean, p.granularity,
                                                       at.dst, at.scale_out, sm.k);
        __syncthreads();  // sm.k is reused by the second tile
      }
      if (unit == 0 && threadIdx.x < D) p.k_mean[static_cast<int64_t>(bh) * D + threadIdx.x] = mean[threadIdx.x];
      return;
    }
    f -= k_units;
    const int bh = f / per_head, t_idx = f % per_head;
    if (threadIdx.x < D) {
      const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
      const float mean = p.smooth_v ? ws.v_mean[at] : 0.f;
      float s;
      if (p.v_static_scale) {
        s = p.v_static_scale[at];
      } else {
        const float amax = fmaxf(from_ordered_bits(ws.v_max[at]) - mean, mean + from_ordered_bits(ws.v_negmin[at]));
        s = __fdiv_rn(fmaxf(amax, kScaleFloor), kFp8Max);
      }
      sm.v.scale[threadIdx.x] = s;
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
  run_units<D, T, kVTile>(units, reinterpret_cast<T*>(dyn_smem), source, work);
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

template <int D, int DT, int QK>
int launch(const SageQuantParams& p, cudaStream_t stream) {
  using T = typename ElemOf<DT>::type;
  SAGE_CUDA_TRY(cudaMemsetAsync(p.workspace, 0, sizeof(float) * SAGE_QUANT_WORKSPACE_FLOATS(p.batch, p.heads_kv, D), stream));
  const bool has_v = p.v != nullptr;
  const int v_sum = has_v && p.smooth_v, v_minmax = has_v && p.v_static_scale == nullptr;
  const int chunks = ceil_div(p.seq_k, kReduceChunk);
  const int q_units = p.batch * p.heads_q * (p.seq_q_pad / kTile);
  const int kv_chunks = p.batch * p.heads_kv * chunks;
  const int units1 = q_units + kv_chunks * (v_sum || v_minmax ? 2 : 1);
  const size_t smem1 = 2 * kTile * D * sizeof(T);
  int grid1 = 0;
  if (int r = grid_for(q_tiles_and_stats<D, DT, QK>, smem1, units1, grid1)) return r;
  q_tiles_and_stats<D, DT, QK><<<grid1, kThreads, smem1, stream>>>(p, q_units, chunks, v_sum, v_minmax, units1);
  SAGE_CHECK_LAUNCH("sage_quantize (Q tiles + K/V statistics)");
  const int k_units = p.batch * p.heads_kv * (p.seq_k_pad / kVTile);
  const int units2 = k_units * (has_v ? 2 : 1);
  const size_t smem2 = 2 * kVTile * D * sizeof(T);
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
