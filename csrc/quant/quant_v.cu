// FP8 E4M3 quantization of V, per channel, transposed to [B, Hkv, D, Nk_pad]: sage::quant_v
// (conventions: sage_cli/numerics/quantize.py, quantize_v).
//
// Steps (stream-ordered; the first two only when needed):
//   smooth V:      v_mean = 0; blocks of 256 tokens add sum / Nk per channel (atomics).
//   dynamic scale: v_scale = 0; blocks of 256 tokens take max |V - v_mean| per channel and atomically
//                  max in max(amax, floor) / 448. That map is monotone, so the max of the per-block
//                  values is exactly the scale of the whole head, and no third step is needed.
//   quantize:      128-token tiles: (V - v_mean) / scale -> e4m3 (RN, saturating), transposed through
//                  shared memory so that both the 16-byte loads of V rows and the 16-byte stores of
//                  V^T rows are coalesced. Static scales skip the amax pass (one pass over V).
#include "../common/check.cuh"
#include "common.cuh"

namespace sage {
namespace quant {
namespace {

constexpr int kVTile = 128;  // tokens per quantization tile: one 128-byte row of V^T per channel
constexpr float kScaleFloor = 1e-8f;
constexpr float kFp8Max = 448.f;

template <int D, int DT>
__global__ void __launch_bounds__(kThreads) v_channel_stats(SageQuantVParams p, int chunks, int want_mean) {
  using T = typename ElemOf<DT>::type;
  __shared__ float red[Rows<D>::kRowsPerPass * D];
  const int chunk = blockIdx.x % chunks;
  const int bh = blockIdx.x / chunks;
  const int b = bh / p.heads_kv, h = bh % p.heads_kv;
  const T* src = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const int t0 = chunk * kReduceChunk;
  const int t1 = min(t0 + kReduceChunk, p.seq_k);
  const int64_t at = static_cast<int64_t>(bh) * D + threadIdx.x;
  if (want_mean) {
    const float s = reduce_channels<D, T, Reduce::kSum>(src, p.v_stride_n, t0, t1, nullptr, red);
    if (threadIdx.x < D) atomicAdd(p.v_mean + at, __fdiv_rn(s, static_cast<float>(p.seq_k)));
  } else {
    const float* center = p.smooth_v ? p.v_mean + static_cast<int64_t>(bh) * D : nullptr;
    const float a = reduce_channels<D, T, Reduce::kAbsMax>(src, p.v_stride_n, t0, t1, center, red);
    if (threadIdx.x < D) atomic_max_nonneg(p.v_scale + at, __fdiv_rn(fmaxf(a, kScaleFloor), kFp8Max));
  }
}

// One block: 128 tokens x D channels. Thread (k, quad) loads the 8 channels 8k..8k+7 of the 4 tokens
// 4*quad..4*quad+3 (a warp still reads whole rows), converts, and stores per channel one 32-bit word of
// 4 consecutive tokens into the transposed tile. Word column `quad` of channel row `ch` is stored at
// quad ^ 4*((ch/8) % 8): a warp's 32 stores then hit at least 16 distinct banks instead of 4, and every
// aligned group of 4 words (16 tokens) stays together, so the read-out is one 16-byte load.
template <int D, int DT>
__global__ void __launch_bounds__(kThreads) v_quant(SageQuantVParams p) {
  using T = typename ElemOf<DT>::type;
  constexpr int kLanesPerRow = D / 8;
  constexpr int kQuadsPerPass = kThreads / kLanesPerRow;
  constexpr int kPasses = (kVTile / 4) / kQuadsPerPass;
  constexpr int kWords = kVTile / 4;
  __shared__ __align__(16) uint32_t tile[D][kWords];
  __shared__ float scale[D], inv[D], mean[D];

  const int tiles = p.seq_k_pad / kVTile;
  const int t_idx = blockIdx.x % tiles;
  const int bh = blockIdx.x / tiles;
  const int b = bh / p.heads_kv, h = bh % p.heads_kv;
  const int64_t ch0 = static_cast<int64_t>(bh) * D;
  if (threadIdx.x < D) {
    const float s = p.static_scale ? p.static_scale[ch0 + threadIdx.x] : p.v_scale[ch0 + threadIdx.x];
    scale[threadIdx.x] = s;
    inv[threadIdx.x] = __frcp_rn(s);
    mean[threadIdx.x] = p.smooth_v ? p.v_mean[ch0 + threadIdx.x] : 0.f;
    if (p.static_scale && t_idx == 0) p.v_scale[ch0 + threadIdx.x] = s;  // report the scale used
  }
  __syncthreads();

  const int k = threadIdx.x % kLanesPerRow;
  const int c = 8 * k;
  const int t_base = t_idx * kVTile;
  const T* src = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int quad = threadIdx.x / kLanesPerRow + pass * kQuadsPerPass;
    float x[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = t_base + 4 * quad + i;
      if (t < p.seq_k) {
        load8(src + t * p.v_stride_n + c, x[i]);
#pragma unroll
        for (int j = 0; j < 8; ++j) x[i][j] = div_rn_by(x[i][j] - mean[c + j], scale[c + j], inv[c + j]);
      } else {
        fill(x[i], 0.f);  // pad tokens are zero in v_fp8
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
      tile[c + j][quad ^ (4 * (k % 8))] = pack_e4m3x4(x[0][j], x[1][j], x[2][j], x[3][j]);
  }
  __syncthreads();

  uint8_t* dst = static_cast<uint8_t*>(p.v_fp8) + ch0 * p.seq_k_pad + t_base;
  constexpr int kChunks = D * (kVTile / 16);  // 16-byte pieces of the D x 128 output tile
#pragma unroll
  for (int i = threadIdx.x; i < kChunks; i += kThreads) {
    const int ch = i / (kVTile / 16);
    const int m = i % (kVTile / 16);
    const uint4 w = *reinterpret_cast<const uint4*>(&tile[ch][4 * (m ^ ((ch / 8) % 8))]);
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(ch) * p.seq_k_pad + 16 * m) = w;
  }
}

template <int D, int DT>
int launch(const SageQuantVParams& p, cudaStream_t stream) {
  const size_t chan_bytes = sizeof(float) * static_cast<size_t>(p.batch) * p.heads_kv * D;
  const int chunks = ceil_div(p.seq_k, kReduceChunk);
  const int stat_blocks = p.batch * p.heads_kv * chunks;
  if (p.smooth_v) {
    SAGE_CUDA_TRY(cudaMemsetAsync(p.v_mean, 0, chan_bytes, stream));
    v_channel_stats<D, DT><<<stat_blocks, kThreads, 0, stream>>>(p, chunks, 1);
    SAGE_CHECK_LAUNCH("quant_v (V mean)");
  }
  if (p.static_scale == nullptr) {
    SAGE_CUDA_TRY(cudaMemsetAsync(p.v_scale, 0, chan_bytes, stream));
    v_channel_stats<D, DT><<<stat_blocks, kThreads, 0, stream>>>(p, chunks, 0);
    SAGE_CHECK_LAUNCH("quant_v (V amax)");
  }
  v_quant<D, DT><<<p.batch * p.heads_kv * (p.seq_k_pad / kVTile), kThreads, 0, stream>>>(p);
  SAGE_CHECK_LAUNCH("quant_v (quantize + transpose)");
  return SAGE_OK;
}

template <int D>
int by_dtype(const SageQuantVParams& p, cudaStream_t s) {
  return p.dtype == SAGE_FP16 ? launch<D, SAGE_FP16>(p, s) : launch<D, SAGE_BF16>(p, s);
}

}  // namespace
}  // namespace quant

// Parameters were validated by sage_quant_v (api.cu).
int quant_v(const SageQuantVParams& p, cudaStream_t stream) {
  return p.head_dim == 64 ? quant::by_dtype<64>(p, stream) : quant::by_dtype<128>(p, stream);
}

}  // namespace sage
