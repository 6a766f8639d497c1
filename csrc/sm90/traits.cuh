// Tile sizes, register budgets and the shared-memory layout of the sm90 attention kernel, in one place.
//
// One CTA = a producer warpgroup (TMA loads, few registers) and two or three consumers of 64 Q rows each
// (BLK_Q = 128 or 192), so each consumer's QK tile is one wgmma m64n128 and its P.V one m64n(D+8).
// Why BLK_K = 128 at both head dims: the S accumulator (64 regs), the P.V block accumulator (D/2 + 4) and
// the fp32 output accumulator of the two-level scheme (D/2 + 4) must live at once; with two consumers P in
// FP8 (16) too, while the P.V wgmma of the previous tile overlaps this tile's softmax: at D = 128 that is
// 216 of the 240 registers such a consumer gets, and ptxas spills ~100 bytes.
#pragma once
#include <cuda.h>
#include <stdint.h>

#include "../common/wgmma.cuh"

namespace sage::sm90 {

// How K tiles are laid out in shared memory (see p_fragment.cuh for why this matters).
//   kPermuted: tokens reordered within each 32 by the TMA itself (a 5-D tensor map), so that the S
//              accumulator a thread holds is already the A fragment of the FP8 P.V wgmma.
//   kNatural:  plain token order; P is moved into A-fragment order with four shuffles per k-step.
enum class KOrder : int { kPermuted = 0, kNatural = 1 };

// CONSUMERS: consumer warpgroups of 64 Q rows each.
//   3: 160 registers each, every wgmma waited for where it is issued (P.V in flight through the softmax
//      needs ~205 registers at D = 64): three warps per scheduler hide each other's waits. D = 64 always;
//      D = 128 causal, and non-causal when 192-row Q blocks cost the grid no more rounds (attn_sm90.cu).
//   2: 240 registers each, P.V(n-1) overlapping softmax(n) (D = 128 only; kernel.cuh).
template <int HEAD_DIM, KOrder K_ORDER, int CONSUMERS>
struct Sm90AttnTraits {
  static constexpr int D = HEAD_DIM;
  static constexpr KOrder kKOrder = K_ORDER;
  static_assert(D == 64 || D == 128, "sm90 attention serves head dims 64 and 128");
  static_assert(CONSUMERS == 3 || (CONSUMERS == 2 && D == 128), "two consumers: D = 128 only");

  static constexpr int kConsumers = CONSUMERS;
  static constexpr bool kOverlapPV = kConsumers == 2;
  // The epilogue stores O 16 bytes a lane (epilogue.cuh) with three consumers. The two-consumer loop keeps
  // 4-byte stores: with the shorter epilogue its consumers fall into step at 4k D=128 and its K steps slow
  // down more than the epilogue gains (12% slower, bench/NOTES.md, seventeenth session).
  static constexpr bool kWideStores = kConsumers == 3;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kRowsPerConsumer = 64;
  // 128 (= SAGE_SEQ_PAD: a Q block never passes its head's padded rows) or 192 (the last block of a head
  // may: the TMA fills those rows with zeros, and their scale reads are clamped in kernel.cuh).
  static constexpr int kBlkQ = kRowsPerConsumer * kConsumers;
  static constexpr int kBlkK = 128;
  static constexpr int kStages = D == 128 ? 3 : 4;  // K and V tiles in flight (1 CTA per SM either way)

  static constexpr int kProducerRegs = 24;                          // the producer only issues TMA
  static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : 240;  // 128 * 24 + 128 * kConsumers * regs <= 64K

  static constexpr int kQKSteps = D / 32;      // k32 steps of the int8 QK wgmma
  static constexpr int kPVSteps = kBlkK / 32;  // k32 steps of the e4m3 P.V wgmma
  static constexpr int kSRegs = kBlkK / 2;     // int32 S accumulator per thread (64 x 128 / 128 threads)
  static constexpr int kORegs = D / 2;         // fp32 O accumulator per thread (the D output channels)
  // The row sum of P~ comes out of the P.V wgmma: V^T carries kOnesRows extra rows of 1.0 after its D
  // channels, so accumulator columns D..D+7 each hold sum_j P~[r, j] (every thread gets its rows' full
  // sums, no quad reduction). It replaces one FADD per score in the softmax; the price is N = D + 8 on the
  // tensor cores (+6% at D = 128, +12.5% at D = 64), which have time to spare here. numerics/ names this
  // row_sum="mma" (the sum of the FP8-rounded P~, accumulated like O).
  static constexpr int kOnesRows = 8;
  static constexpr int kPVN = D + kOnesRows;   // N of the P.V wgmma
  static constexpr int kPVRegs = kPVN / 2;     // its fp32 accumulator per thread; [kORegs + 2 * i] = l(row i)

  // Q and K tiles: rows of D bytes, swizzled over exactly one row (128B for D=128, 64B for D=64).
  static constexpr Swizzle kQKSwizzle = D == 128 ? Swizzle::k128B : Swizzle::k64B;
  static constexpr CUtensorMapSwizzle kQKTmaSwizzle =
      D == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  static constexpr uint32_t kQKGroupStride = 8 * D;  // bytes between 8-row core-matrix groups
  // V^T tiles: D rows (channels) of kBlkK = 128 token bytes, 128B swizzle.
  static constexpr uint32_t kVGroupStride = 8 * kBlkK;

  static constexpr uint32_t kQBytes = kBlkQ * D;
  static constexpr uint32_t kKBytes = kBlkK * D;
  static constexpr uint32_t kVBytes = D * kBlkK;                          // what the TMA writes per stage
  static constexpr uint32_t kVStageBytes = kVBytes + kOnesRows * kBlkK;   // + the ones rows (set once)

  struct alignas(1024) Smem {
    alignas(1024) int8_t q[kQBytes];
    alignas(1024) int8_t k[kStages][kKBytes];
    alignas(1024) uint8_t v[kStages][kVStageBytes];
    uint64_t full_q, empty_q;
    uint64_t full_k[kStages], empty_k[kStages];
    uint64_t full_v[kStages], empty_v[kStages];
    // Causal instances only (dynamic schedule), with each full_q phase: the tile's index minus the previous
    // one's (kernel.cuh). After the barriers, so that no other offset moved when it came.
    int tile;
    // Per consumer: the current tile's V scale and V mean ([2][D]) for its epilogue (kernel.cuh, V_SMEM).
    // After the barriers, so that the other instances' code is what it was when measured.
    alignas(16) float v_consts[kConsumers][2][D];
  };
  static constexpr size_t kSmemBytes = sizeof(Smem) + 1024;  // + slack to align the dynamic base
};

}  // namespace sage::sm90
