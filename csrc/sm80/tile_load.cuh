// Global -> shared tile copies (cp.async, 16 bytes a thread per round) into the swizzled layouts of
// traits.cuh, and the ldmatrix address of a fragment inside such a tile.
#pragma once
#include "../common/mma_sync.cuh"
#include "traits.cuh"

namespace sage::sm80 {

// Copy `kRows` rows of `kRowBytes` bytes. Row r starts at src + r * src_row_stride (bytes); rows at or
// past `valid_rows` are zero-filled without being read (the unpadded FP16 V ends at Nk).
// Consecutive threads take consecutive 16-byte units of a row, so every warp reads whole 128-byte lines.
template <int kRows, int kRowBytes, int kThreads>
__device__ __forceinline__ void copy_tile_async(uint32_t dst, const uint8_t* src, int64_t src_row_stride,
                                                int valid_rows = kRows) {
  using Swz = Swizzle<kRowBytes>;
  constexpr int kUnits = kRows * Swz::kUnits;
#pragma unroll
  for (int i = 0; i < (kUnits + kThreads - 1) / kThreads; ++i) {
    const int unit = i * kThreads + static_cast<int>(threadIdx.x);
    if (kUnits % kThreads != 0 && unit >= kUnits) break;
    const int row = unit / Swz::kUnits;
    const int col = unit % Swz::kUnits;
    const bool ok = row < valid_rows;
    const uint8_t* from = ok ? src + row * src_row_stride + col * 16 : src;
    mma::cp_async_16(dst + Swz::offset(row, col), from, ok ? 16 : 0);
  }
}

// Address for ldmatrix.x4 whose four 8x16-byte matrices are (rows r0..r0+7 | r0+8..r0+15) x
// (units u0 | u0+1). `rows_fast` picks the order: true -> matrices 0,1,2,3 = (r0,u0), (r0+8,u0),
// (r0,u0+1), (r0+8,u0+1), the A-fragment order a0..a3 and the order of a transposed 16-bit B pair;
// false -> (r0,u0), (r0,u0+1), (r0+8,u0), (r0+8,u0+1): b0,b1 of n-tile 0 then b0,b1 of n-tile 1.
template <int kRowBytes, bool kRowsFast>
__device__ __forceinline__ uint32_t ldmatrix_addr(uint32_t base, int r0, int u0, int lane) {
  const int mat = lane / 8;
  const int second_rows = kRowsFast ? (mat & 1) : (mat >> 1);
  const int second_unit = kRowsFast ? (mat >> 1) : (mat & 1);
  const int row = r0 + (lane % 8) + 8 * second_rows;
  return base + Swizzle<kRowBytes>::offset(row, u0 + second_unit);
}

}  // namespace sage::sm80
