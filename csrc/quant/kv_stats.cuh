// The K and V channel statistics of the quantization: the workspace that holds them while they are
// gathered, where a K or V row comes from, and one chunk's contribution (conventions:
// sage_cli/numerics/quantize.py). Both routes of quantize.cu use them; the two passes add a 64-token chunk
// at a time and qkv_resident a whole slice, so their means may differ in a last bit, as the atomics' order
// already makes them do from run to run.
#pragma once
#include "../common/divmod.cuh"
#include "common.cuh"
#include "v_tile.cuh"

namespace sage::quant {

// The workspace (sage_abi.h, SAGE_QUANT_WORKSPACE_FLOATS), zeroed on the stream before the kernels run:
// four accumulators, each [B, Hkv, D]; then the counters of qkv_resident (qkv_resident.cuh): how many K and
// how many V slices of each kv head have added their statistics ([2, B, Hkv]), and the units claimed so
// far. The attention's tile counter follows; this code leaves it alone.
struct Workspace {
  float* k_mean;
  float* v_mean;
  unsigned* v_max;     // ordered_bits of the channel max
  unsigned* v_negmin;  // ordered_bits of minus the channel min (a max, so that zero is its identity)
  unsigned* arrived;   // [K or V][bh]
  unsigned* claimed;

  __host__ __device__ explicit Workspace(const SageQuantParams& p) {
    const int64_t heads = static_cast<int64_t>(p.batch) * p.heads_kv, n = heads * p.head_dim;
    k_mean = p.workspace;
    v_mean = p.workspace + n;
    v_max = reinterpret_cast<unsigned*>(p.workspace + 2 * n);
    v_negmin = reinterpret_cast<unsigned*>(p.workspace + 3 * n);
    arrived = reinterpret_cast<unsigned*>(p.workspace + 4 * n);
    claimed = arrived + 2 * heads;
  }
};

// Token t0 of kv head bh (b * Hkv + h) of K (is_k) or V, and that tensor's token stride.
template <typename T>
__device__ __forceinline__ const T* kv_rows(const SageQuantParams& p, bool is_k, int bh, int t0,
                                            const FastDivmod& by_heads_kv, int64_t& stride) {
  int h;
  const int b = by_heads_kv.divmod(bh, h);
  stride = is_k ? p.k_stride_n : p.v_stride_n;
  const T* base = static_cast<const T*>(is_k ? p.k : p.v);
  return base + b * (is_k ? p.k_stride_b : p.v_stride_b) + h * (is_k ? p.k_stride_h : p.v_stride_h) + t0 * stride;
}

// One K or V chunk's statistics (ROWS rows, `valid` of them real) added into the workspace: sum / Nk into
// `mean` (the K or V mean), and V's max and min. at: this thread's channel of the chunk's kv head.
template <int D, bool SUM, bool MINMAX, int ROWS = kReduceChunk, typename T>
__device__ void chunk_stats(const SageQuantParams& p, const T* rows, int valid, float* mean, int64_t at,
                            float* scratch) {
  const ChannelStats s = channel_stats<D, SUM, MINMAX, ROWS>(rows, valid, scratch);
  if (threadIdx.x < D) {
    const Workspace ws(p);
    if (SUM) atomicAdd(mean + at, __fdiv_rn(s.sum, static_cast<float>(p.seq_k)));
    if (MINMAX) {
      atomic_max_ordered(ws.v_max + at, s.max);
      atomic_max_ordered(ws.v_negmin + at, -s.min);
    }
  }
}

// The V scale of channel c from its statistics (dynamic) or the calibration (static). side: the head's
// statistics as the kernels stage them, [D] floats each: the ordered max, the ordered minus min and the mean
// (dynamic), or the static scale first. mean: the channel's mean with smooth V, else 0.
template <int D>
__device__ __forceinline__ float v_channel_scale(const SageQuantParams& p, const float* side, int c, float mean) {
  if (p.v_static_scale) return side[c];
  const float vmax = from_ordered_bits(__float_as_uint(side[c]));
  const float negmin = from_ordered_bits(__float_as_uint(side[D + c]));
  return __fdiv_rn(fmaxf(fmaxf(vmax - mean, mean + negmin), kScaleFloor), kFp8Max);
}

}  // namespace sage::quant
