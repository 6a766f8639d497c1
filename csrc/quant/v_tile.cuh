// One 128-token tile of V to FP8 E4M3, per channel, transposed into [B, Hkv, D, Nk_pad] (conventions:
// sage_cli/numerics/quantize.py, quantize_v): (V - v_mean) * __frcp_rn(scale), each step rounded to nearest
// float, then RN to E4M3, saturating to +-448.
#pragma once
#include "common.cuh"

namespace sage::quant {

constexpr int kVTile = 128;  // tokens per tile
constexpr float kFp8Max = 448.f;

// Per-channel constants of the tile's kv head, filled by the caller (inv = __frcp_rn(scale); mean 0
// without smooth V).
template <int D>
struct VScales {
  float inv[D], mean[D];
};

// The transposition happens in registers, not in shared memory: each thread converts the 8 channels
// 8k..8k+7 of kTokens consecutive tokens (one 16-byte load per token from the staged rows) and writes
// per channel the kTokens bytes that follow each other in V^T's row. Lanes are laid out so that the
// kSectorLanes threads sharing k and consecutive token groups fill one 32-byte sector of a V^T row
// together in every store, and the loads of a warp are whole 64/128-byte row segments.
template <int D>
struct VTileLanes {
  static constexpr int kTokens = D == 128 ? 8 : 4;           // tokens per thread: 128 tokens per block
  static constexpr int kSectorLanes = 32 / kTokens;          // threads whose bytes make one sector
  static constexpr int kChannelGroupsPerWarp = 32 / kSectorLanes;
  static constexpr int kChannelBlocks = (D / 8) / kChannelGroupsPerWarp;
  static_assert(kThreads / 32 / kChannelBlocks * kSectorLanes * kTokens == kVTile, "one pass covers the tile");
  int k, group;  // channels 8k..8k+7; tokens kTokens * group ...
  __device__ VTileLanes() {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    k = (warp % kChannelBlocks) * kChannelGroupsPerWarp + lane / kSectorLanes;
    group = (warp / kChannelBlocks) * kSectorLanes + lane % kSectorLanes;
  }
};

// `rows`: the tile's tokens, rows D elements apart (the staged copy); tokens from `valid` on are pad and
// written as zero. dst: channel 0, token 0 of the tile in V^T (rows dst_stride bytes apart).
template <int D, typename T>
__device__ void quantize_v_tile(const T* rows, int valid, uint8_t* dst, int64_t dst_stride, const VScales<D>& sc) {
  using L = VTileLanes<D>;
  const L at;
  const int c = 8 * at.k, t0 = L::kTokens * at.group;
  float mean[8], inv[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    mean[j] = sc.mean[c + j];
    inv[j] = sc.inv[c + j];
  }
  uint32_t words[L::kTokens / 4][8];  // [4-token word][channel]
#pragma unroll
  for (int w = 0; w < L::kTokens / 4; ++w) {
    float x[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = t0 + 4 * w + i;
      if (t < valid) {
        load8(rows + t * D + c, x[i]);
#pragma unroll
        for (int j = 0; j < 8; ++j) x[i][j] = __fmul_rn(__fsub_rn(x[i][j], mean[j]), inv[j]);
      } else {
        fill(x[i], 0.f);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) words[w][j] = pack_e4m3x4(x[0][j], x[1][j], x[2][j], x[3][j]);
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    uint8_t* out = dst + static_cast<int64_t>(c + j) * dst_stride + t0;
    if constexpr (L::kTokens == 8)
      *reinterpret_cast<uint2*>(out) = make_uint2(words[0][j], words[1][j]);
    else
      *reinterpret_cast<uint32_t*>(out) = words[0][j];
  }
}

}  // namespace sage::quant
