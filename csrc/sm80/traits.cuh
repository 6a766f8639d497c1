// Compile-time description of one sm80-family attention kernel: tile sizes, bytes per row of every shared
// memory tile, and the shared memory layout. One traits struct, parameterised by the QK type, the PV type,
// the output dtype and the head dim; everything else in the kernel is derived from it.
#pragma once
#include "../sage_abi.h"

namespace sage::sm80 {

// 16-byte-unit XOR swizzle of a shared memory tile with `kRowBytes` bytes per row. ldmatrix reads the
// same 16-byte column of 8 consecutive rows; the swizzle spreads those 8 units over the 8 distinct
// 16-byte bank groups of a 128-byte line, whatever the row length (32, 64, 128 or 256 bytes).
template <int kRowBytes>
struct Swizzle {
  static constexpr int kUnits = kRowBytes / 16;  // 16-byte units per row
  static_assert(kUnits >= 2 && (kUnits & (kUnits - 1)) == 0, "row bytes must be a power of two >= 32");
  // Rows sharing one 128-byte line (kUnits < 8) differ in their line offset already; only the rows that
  // start a new line at the same offset need a different unit, hence the row / (8 / kUnits) key.
  __host__ __device__ static constexpr int unit(int row, int u) {
    return kUnits >= 8 ? (u ^ (row & 7)) : (u ^ ((row / (8 / kUnits)) & (kUnits - 1)));
  }
  __host__ __device__ static constexpr int offset(int row, int u) { return row * kRowBytes + unit(row, u) * 16; }
};

// Warps per CTA (16 query rows each), the tile-size decision that depends on the configuration.
// D=128: 8 warps = 128 rows share every K/V tile fetched into shared memory, which halves the L2 -> SM
// traffic per score compared with 4 (at INT8/FP8 rates a 64-row CTA needs ~5 TB/s from L2 on an RTX 4090).
// D=64: 4 warps (12-16 resident an SM). On the H100 proxy (INT8 QK / FP16 PV, N=4k, H=32) 8 vs 4 warps
// measured 308-315 vs 274 TOPS at D=128, and 217-262 vs 248-256 at D=64: within run-to-run noise there,
// so D=64 keeps the smaller CTA (more CTAs for short sequences). bench/NOTES.md has the runs.
// -DSAGE_SM80_WARPS=4 or 8 forces one count everywhere, for such comparisons.
constexpr int default_warps(int head_dim) {
#ifdef SAGE_SM80_WARPS
  return SAGE_SM80_WARPS;
#else
  return head_dim >= 128 ? 8 : 4;
#endif
}

// Shared memory stages of the K/V pipeline (one barrier a tile whatever the count). Three fetch a tile two
// tiles ahead, for the longer latencies of GDDR6X parts; D=64 keeps two so that three 4-warp CTAs still fit
// in the 100 KB of an sm_86/89 SM. (H100 proxy: 2 and 3 stages time the same, within 2%.)
// -DSAGE_SM80_STAGES=2 or 3 forces one count, for comparisons.
constexpr int default_stages(int head_dim) {
#ifdef SAGE_SM80_STAGES
  return SAGE_SM80_STAGES;
#else
  return head_dim >= 128 ? 3 : 2;
#endif
}

template <int kQK, int kPV, int kDType, int kHeadDim, int kNumWarps = default_warps(kHeadDim),
          int kNumStages = default_stages(kHeadDim)>
struct Traits {
  static constexpr int kQKType = kQK;
  static constexpr int kPVType = kPV;
  static constexpr bool kInt4 = kQK == SAGE_QK_INT4;
  static constexpr bool kFp8PV = kPV == SAGE_PV_FP8;
  static constexpr bool kBf16 = kDType == SAGE_BF16;
  static constexpr int kD = kHeadDim;

  static constexpr int kWarps = kNumWarps;
  static constexpr int kThreads = kWarps * 32;
  // CTAs an SM should hold (the register cap of __launch_bounds__): D=64 at least 12 warps an SM
  // (<= 168 registers; a cap of 128 for 16 warps spills on sm_80); D=128 keeps a 64-float O accumulator
  // a thread and gets what it needs (one 8-warp CTA, or two 4-warp ones).
  static constexpr int kMinBlocks = kHeadDim == 64 ? (12 + kWarps - 1) / kWarps : 1;
  static constexpr int kBlockQ = kWarps * 16;  // one m16 slice per warp
  static constexpr int kBlockK = 64;           // = SAGE_K_BLOCK: one K scale block per tile
  static_assert(kBlockQ % SAGE_SMOOTH_Q_BLOCK == 0, "a CTA covers whole 64-row ds / per_block groups");
  static_assert(kBlockK == SAGE_K_BLOCK, "k scales assume one K block per tile");

  // Q and K rows in bytes (INT4 packs two channels a byte); a QK mma step consumes 32 bytes either way.
  static constexpr int kQKRowBytes = kInt4 ? kD / 2 : kD;
  static constexpr int kQKSteps = kQKRowBytes / 32;
  static constexpr int kNTilesS = kBlockK / 8;  // n8 tiles of the score fragment
  static constexpr int kNTilesO = kD / 8;       // n8 tiles of the output fragment

  // V tile in shared memory: FP8 is V^T [D, kBlockK] (tokens contiguous); FP16 is V [kBlockK, D].
  static constexpr int kVRows = kFp8PV ? kD : kBlockK;
  static constexpr int kVRowBytes = kFp8PV ? kBlockK : kD * 2;

  using SwzQK = Swizzle<kQKRowBytes>;
  using SwzV = Swizzle<kVRowBytes>;

  static constexpr int kQBytes = kBlockQ * kQKRowBytes;
  static constexpr int kKBytes = kBlockK * kQKRowBytes;
  static constexpr int kVBytes = kVRows * kVRowBytes;
  static constexpr int kStageBytes = kKBytes + kVBytes;
  static constexpr int kStages = kNumStages;
  static_assert(kStages >= 2, "the pipeline needs at least two stages");
  // Q is read into registers once, before the last stage is first written, so it lives in that space.
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kQBytes <= kStageBytes, "Q must fit in one stage");
};

}  // namespace sage::sm80
