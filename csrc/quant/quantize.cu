// Smoothing and quantization of Q, K and V: sage::quantize, behind sage_quantize (conventions:
// sage_cli/numerics/quantize.py).
//
// K needs its channel mean, and V its channel amax (and mean, with smooth V), before any of their tokens is
// quantized, so each is read twice; Q is read once. Three stream-ordered steps:
//   1. workspace = 0 (one memset): per channel the K mean, V mean, V max and V min accumulators.
//   2. q_tiles_and_stats, three kinds of blocks in one grid: Q tiles (64 rows of one head: optional block
//      mean and smoothing, group scales, quantization); K chunks (64 tokens: sum / Nk added into the K
//      mean); V chunks (64 tokens: sum / Nk into the V mean with smooth V; max and min with a dynamic
//      scale). Q depends on neither, so its tiles fill the GPU beside the reductions.
//   3. kv_tiles: K tiles (64 tokens: K - mean, group scales, quantization) and V tiles (128 tokens: scale
//      and mean from the statistics, FP8, transposed), in the reverse of the order step 2 read them, so
//      that what step 2 read last is read again first, while it is still in L2.
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

template <int D, bool SUM, bool MINMAX, typename T>
__device__ void v_chunk_stats(const SageQuantParams& p, const T* src, int t0, int t1, int64_t at, float* scratch) {
  const ChannelStats s = channel_stats<D, SUM, MINMAX>(src, p.v_stride_n, t0, t1, scratch);
  if (threadIdx.x < D) {
    const Workspace ws(p);
    if (SUM) atomicAdd(ws.v_mean + at, __fdiv_rn(s.sum, static_cast<float>(p.seq_k)));
    if (MINMAX) {
      atomic_max_ordered(ws.v_max + at, s.max);
      atomic_max_ordered(ws.v_negmin + at, -s.min);
    }
  }
}

// Blocks [0, q_blocks): Q tiles; then k_chunks K-mean chunks; then (when V needs statistics) as many V
// chunks. v_sum: accumulate the V mean (smooth V); v_minmax: the V max and min (dynamic scale).
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads) q_tiles_and_stats(SageQuantParams p, int q_blocks, int chunks, int v_sum,
                                                              int v_minmax) {
  using T = typename ElemOf<DT>::type;
  __shared__ TileSmem<D> sm;
  pdl_allow_dependents();  // kv_tiles may be scheduled beside this grid's last blocks; it waits for them
  int idx = blockIdx.x;
  if (idx < q_blocks) {
    const int tiles = p.seq_q_pad / kTile;
    const int tile = idx % tiles;
    const int bh = idx / tiles;
    const TileAt<D, T, QK, true> at(p, bh, tile);
    if (p.smooth_q) {
      float* mean = p.q_mean + (static_cast<int64_t>(bh) * tiles + tile) * D;
      quantize_tile<D, T, QK, true, Smooth::kBlockMean>(at.src, at.stride_n, at.valid, mean, p.granularity, at.dst,
                                                        at.scale_out, sm);
    } else {
      quantize_tile<D, T, QK, true, Smooth::kNone>(at.src, at.stride_n, at.valid, nullptr, p.granularity, at.dst,
                                                   at.scale_out, sm);
    }
    return;
  }
  idx -= q_blocks;
  const int kv_chunks = p.batch * p.heads_kv * chunks;
  const bool is_k = idx < kv_chunks;
  if (!is_k) idx -= kv_chunks;
  const int chunk = idx % chunks;
  const int bh = idx / chunks;
  const int b = bh / p.heads_kv, h = bh % p.heads_kv;
  const int t0 = chunk * kReduceChunk;
  const int t1 = min(t0 + kReduceChunk, p.seq_k);
  const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
  if (is_k) {
    const T* src = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    const ChannelStats s = channel_stats<D, true, false>(src, p.k_stride_n, t0, t1, sm.red);
    if (threadIdx.x < D) atomicAdd(Workspace(p).k_mean + at, __fdiv_rn(s.sum, static_cast<float>(p.seq_k)));
    return;
  }
  const T* src = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  if (v_sum && v_minmax) v_chunk_stats<D, true, true>(p, src, t0, t1, at, sm.red);
  else if (v_sum) v_chunk_stats<D, true, false>(p, src, t0, t1, at, sm.red);
  else v_chunk_stats<D, false, true>(p, src, t0, t1, at, sm.red);
}

// Tile f of the forward order [K tiles of every head..., V tiles of every head...] runs as block
// gridDim.x - 1 - f (see the file comment). The first tile of each head also writes the head's k_mean,
// v_scale and v_mean outputs.
template <int D, int DT, int QK>
__global__ void __launch_bounds__(kThreads) kv_tiles(SageQuantParams p, int k_blocks) {
  using T = typename ElemOf<DT>::type;
  __shared__ union {
    TileSmem<D> k;
    VTileSmem<D> v;
  } sm;
  pdl_allow_dependents();
  pdl_wait();  // the statistics (and, for the attention after us, Q) come from q_tiles_and_stats
  const Workspace ws(p);
  const int f = gridDim.x - 1 - blockIdx.x;
  if (f < k_blocks) {
    const int tiles = p.seq_k_pad / kTile;
    const int tile = f % tiles;
    const int bh = f / tiles;
    const TileAt<D, T, QK, false> at(p, bh, tile);
    float* mean = ws.k_mean + static_cast<int64_t>(bh) * D;
    quantize_tile<D, T, QK, false, Smooth::kGiven>(at.src, at.stride_n, at.valid, mean,
                                                   p.granularity, at.dst, at.scale_out, sm.k);
    if (tile == 0 && threadIdx.x < D) p.k_mean[static_cast<int64_t>(bh) * D + threadIdx.x] = mean[threadIdx.x];
    return;
  }
  const int tiles = p.seq_k_pad / kVTile;
  const int t_idx = (f - k_blocks) % tiles;
  const int bh = (f - k_blocks) / tiles;
  const int b = bh / p.heads_kv, h = bh % p.heads_kv;
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
  const T* src = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  uint8_t* dst = static_cast<uint8_t*>(p.v_fp8) + static_cast<int64_t>(bh) * D * p.seq_k_pad + t_idx * kVTile;
  quantize_v_tile<D>(src, p.v_stride_n, p.seq_k, t_idx * kVTile, dst, p.seq_k_pad, sm.v);
}

template <int D, int DT, int QK>
int launch(const SageQuantParams& p, cudaStream_t stream) {
  SAGE_CUDA_TRY(cudaMemsetAsync(p.workspace, 0, sizeof(float) * SAGE_QUANT_WORKSPACE_FLOATS(p.batch, p.heads_kv, D), stream));
  const bool has_v = p.v != nullptr;
  const int v_sum = has_v && p.smooth_v, v_minmax = has_v && p.v_static_scale == nullptr;
  const int chunks = ceil_div(p.seq_k, kReduceChunk);
  const int q_blocks = p.batch * p.heads_q * (p.seq_q_pad / kTile);
  const int kv_chunks = p.batch * p.heads_kv * chunks;
  q_tiles_and_stats<D, DT, QK><<<q_blocks + kv_chunks * (v_sum || v_minmax ? 2 : 1), kThreads, 0, stream>>>(
      p, q_blocks, chunks, v_sum, v_minmax);
  SAGE_CHECK_LAUNCH("sage_quantize (Q tiles + K/V statistics)");
  const int k_blocks = p.batch * p.heads_kv * (p.seq_k_pad / kTile);
  const int v_blocks = has_v ? p.batch * p.heads_kv * (p.seq_k_pad / kVTile) : 0;
  SAGE_CUDA_TRY(launch_pdl(kv_tiles<D, DT, QK>, k_blocks + v_blocks, kThreads, 0, stream, p, k_blocks));
  SAGE_CHECK_LAUNCH("sage_quantize (K and V tiles)");
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
