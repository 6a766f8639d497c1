// One 128-token tile of V to FP8 E4M3, per channel, transposed into [B, Hkv, D, Nk_pad] (conventions:
// sage_cli/numerics/quantize.py, quantize_v): (V - v_mean) / scale, RN, saturating to +-448.
#pragma once
#include "common.cuh"

namespace sage::quant {

constexpr int kVTile = 128;  // tokens per tile: one 128-byte row of V^T per channel
constexpr float kFp8Max = 448.f;

template <int D>
struct VTileSmem {
  __align__(16) uint32_t tile[D][kVTile / 4];
  float scale[D], inv[D], mean[D];  // filled by the caller (inv = __frcp_rn(scale); mean 0 without smooth V)
};

// Thread (k, quad) loads the 8 channels 8k..8k+7 of the 4 tokens 4*quad..4*quad+3 (a warp still reads
// whole rows), converts, and stores per channel one 32-bit word of 4 consecutive tokens into the
// transposed tile. Word column `quad` of channel row `ch` is stored at quad ^ 4*((ch/8) % 8): a warp's 32
// stores then hit at least 16 distinct banks instead of 4, and every aligned group of 4 words (16 tokens)
// stays together, so the read-out is one 16-byte load. `rows`: the tile's tokens, rows D elements apart (the
// staged copy); tokens from `valid` on are pad and written as zero.
template <int D, typename T>
__device__ void quantize_v_tile(const T* rows, int valid, uint8_t* dst, int64_t dst_stride, VTileSmem<D>& sm) {
  constexpr int kLanesPerRow = D / 8;
  constexpr int kQuadsPerPass = kThreads / kLanesPerRow;
  constexpr int kPasses = (kVTile / 4) / kQuadsPerPass;
  const int k = threadIdx.x % kLanesPerRow;
  const int c = 8 * k;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int quad = threadIdx.x / kLanesPerRow + pass * kQuadsPerPass;
    float x[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = 4 * quad + i;
      if (t < valid) {
        load8(rows + t * D + c, x[i]);
#pragma unroll
        for (int j = 0; j < 8; ++j) x[i][j] = div_rn_by(x[i][j] - sm.mean[c + j], sm.scale[c + j], sm.inv[c + j]);
      } else {
        fill(x[i], 0.f);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
      sm.tile[c + j][quad ^ (4 * (k % 8))] = pack_e4m3x4(x[0][j], x[1][j], x[2][j], x[3][j]);
  }
  __syncthreads();

  constexpr int kChunks = D * (kVTile / 16);  // 16-byte pieces of the D x 128 output tile
#pragma unroll
  for (int i = threadIdx.x; i < kChunks; i += kThreads) {
    const int ch = i / (kVTile / 16);
    const int m = i % (kVTile / 16);
    const uint4 w = *reinterpret_cast<const uint4*>(&sm.tile[ch][4 * (m ^ ((ch / 8) % 8))]);
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(ch) * dst_stride + 16 * m) = w;
  }
}

}  // namespace sage::quant
