// The warp-specialized sm90 attention kernel: INT8 QK^T by wgmma s8 (both operands from shared memory),
// FP8 P.V by wgmma e4m3 (P from registers), TMA loads through an mbarrier pipeline.
//
// Roles (one CTA of 128 * (1 + kConsumers) threads, persistent over work tiles; see tile_scheduler.cuh):
//   warpgroup 0, one thread: producer. Causal: draws the tiles and passes each index on with its Q block
//     (dynamic scheduling, tile_scheduler.cuh). Loads the Q block once per tile, then K and V^T tiles into
//     kStages slots (full/empty mbarrier pairs; K and V separately, since K frees after QK and V after
//     P.V). Gives its registers to the consumers (setmaxnreg).
//   warpgroups 1..kConsumers: consumers, 64 Q rows each, running independently.
//   Three consumers of 160 registers (D = 64, and D = 128 where the host picks them: traits.cuh), each
//     wgmma waited for where it is issued. Per K tile n: QK(n), softmax(n), P(n).V(n), the fold of P.V(n)
//     into acc_o (the two-level accumulation); at D = 64 QK(n+1) is issued before that fold, which its
//     latency then covers. Three warps per scheduler hide each other's waits, where two consumers overlap
//     P.V with the softmax instead.
//   Two consumers of 240 registers (D = 128). Per K tile n:
//       issue QK(n) -> S;  issue P(n-1).V(n-1) -> acc_pv            (two commit groups)
//       wait QK(n) only; free the K slot
//       softmax(n) (dequantize, mask, online max, exp2; the row sum comes from the P.V wgmma)
//         while the tensor cores still work on P(n-1).V(n-1)
//       wait P.V(n-1); free its V slot; acc_o = acc_o * alpha(n-1) + acc_pv   (the two-level accumulation)
//       P(n) = e4m3(448 * p), already in A-fragment order (p_fragment.cuh)
//     Keeping P.V(n-1) in flight through the softmax holds its accumulator and P(n-1) live beside S and
//     acc_o: at D = 128 that is 68 + 16 + 64 + 68 registers before any scalar, and ptxas spills ~100
//     bytes of the 240 a consumer has. Measured on the H100 it is still 8% faster than waiting for
//     P.V(n-1) before the softmax (bench/NOTES.md), as is each consumer running on its own rather than in
//     a ping-pong with the other (named barriers around the wgmma issue: 6% slower at D = 128).
#pragma once
#include <cuda.h>
#include <math_constants.h>
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "../common/cp_async.cuh"
#include "../common/mbarrier.cuh"
#include "../common/named_barrier.cuh"
#include "../common/pdl.cuh"
#include "../sage_abi.h"
#include "../common/tma.cuh"
#include "../common/wgmma.cuh"
#include "epilogue.cuh"
#include "p_fragment.cuh"
#include "params.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"
#include "trace.cuh"
#include "traits.cuh"

namespace sage::sm90 {

// Group index of Q row r / K token t (sage_cli/settings.py; SageGranularity order).
__device__ __forceinline__ int q_group(int r, int gran) {
  return gran == 0 ? (r >> 4) * 8 + (r & 7) : gran == 1 ? (r >> 4) : (r >> 6);
}
__device__ __forceinline__ int k_group(int t, int gran) { return gran == 0 ? (t >> 6) * 4 + ((t & 7) >> 1) : (t >> 6); }

template <class Traits, bool CAUSAL>
__device__ __forceinline__ void producer_loop(typename Traits::Smem& sm, const Sm90Params& p, const CUtensorMap* tm_q,
                                              const CUtensorMap* tm_k, const CUtensorMap* tm_v) {
  constexpr int S = Traits::kStages;
  uint32_t k_iter = 0, q_count = 0;
  // Non-causal: the static schedule (tile += gridDim.x). Causal (dynamic schedule): each tile goes to the
  // consumers in sm.tile (as its distance from the one before: consumer_loop says why), written before the
  // arrive on full_q that completes its phase with the Q load: mbarrier.arrive has release and try_wait
  // acquire semantics at CTA scope, so a consumer that has waited on full_q sees the write. The next write
  // comes only after the wait on empty_q, which every consumer warp arrives on after its read. A tile with
  // no visible key (Nq > Nk) gets a plain arrive (no Q load): its consumers write zeros and arrive on
  // empty_q. The next index (next_tile(), through advance() in the loop header) is drawn once a tile's
  // loads are issued (the consumers are then at most kStages K tiles from its end) and before the wait on
  // empty_q, in which the atomic's latency hides.
  int tile = blockIdx.x, prev = blockIdx.x;  // prev: causal only
  auto advance = [&]() {
    if constexpr (CAUSAL)
      tile = next_tile(p);
    else
      tile += gridDim.x;
  };
  for (; tile < p.num_tiles; advance()) {
    const WorkTile w = decode_tile<CAUSAL, Traits::kBlkQ, Traits::kBlkK>(tile, p);
    if constexpr (!CAUSAL) {
      if (w.n_k_tiles == 0) continue;
    }
    const int hk = w.h / p.group;
    const int kv_head = w.b * p.heads_kv + hk;
    SAGE_TRACE_EVENT(0, q_count, 0);
    mbar_wait_sleep(&sm.empty_q, (q_count & 1) ^ 1);
    SAGE_TRACE_EVENT(0, q_count, 1);
    if constexpr (CAUSAL) {
      st_shared_s32(&sm.tile, tile - prev);
      prev = tile;
    }
    if (CAUSAL && w.n_k_tiles == 0) {
      mbar_arrive(&sm.full_q);
    } else {
      mbar_arrive_expect_tx(&sm.full_q, Traits::kQBytes);
      tma_load_3d(sm.q, tm_q, &sm.full_q, 0, w.q_block * Traits::kBlkQ, w.b * p.heads_q + w.h);
    }
    ++q_count;
    for (int n = 0; n < w.n_k_tiles; ++n, ++k_iter) {
      const int st = k_iter % S;
      const uint32_t ph = (k_iter / S) & 1;
      mbar_wait_sleep(&sm.empty_k[st], ph ^ 1);
      mbar_arrive_expect_tx(&sm.full_k[st], Traits::kKBytes);
      if constexpr (Traits::kKOrder == KOrder::kPermuted) {
        // Coordinates: channel, e, q, j', 16-token chunk (the map flattens B * Hkv * Nk_pad / 16).
        const int chunk = (kv_head * p.seq_k_pad + n * Traits::kBlkK) / 16;
        tma_load_5d(sm.k[st], tm_k, &sm.full_k[st], 0, 0, 0, 0, chunk);
      } else {
        tma_load_3d(sm.k[st], tm_k, &sm.full_k[st], 0, n * Traits::kBlkK, kv_head);
      }
      mbar_wait_sleep(&sm.empty_v[st], ph ^ 1);
      mbar_arrive_expect_tx(&sm.full_v[st], Traits::kVBytes);
      tma_load_3d(sm.v[st], tm_v, &sm.full_v[st], n * Traits::kBlkK, 0, kv_head);
      if (n == 0) SAGE_TRACE_EVENT(0, q_count - 1, 2);
    }
    SAGE_TRACE_EVENT(0, q_count - 1, 3);
  }
  if constexpr (CAUSAL) {
    finish_tiles(p);
    // The end: the index drawn last (>= num_tiles), published like a tile (once the last tile's Q is
    // free) but without a load; the consumers leave their loop on it.
    mbar_wait_sleep(&sm.empty_q, (q_count & 1) ^ 1);
    st_shared_s32(&sm.tile, tile - prev);
    mbar_arrive(&sm.full_q);
  }
}

template <class Traits>
__device__ __forceinline__ void issue_pv(float (&acc_pv)[Traits::kPVRegs], const uint32_t (&pa)[Traits::kPVSteps][4],
                                         uint32_t desc_v_lo, bool accumulate) {
  constexpr uint32_t hi = smem_desc_hi(Traits::kVGroupStride, Swizzle::k128B);
#pragma unroll
  for (int kk = 0; kk < Traits::kPVSteps; ++kk) {
    const uint64_t dv = smem_desc(desc_v_lo + 2 * kk, hi);  // +32 bytes per k32 step
    if constexpr (Traits::D == 128)
      wgmma_m64n136k32_f32_e4m3_rs(acc_pv, pa[kk], dv, accumulate || kk > 0);
    else
      wgmma_m64n72k32_f32_e4m3_rs(acc_pv, pa[kk], dv, accumulate || kk > 0);
  }
}

template <class Traits>
__device__ __forceinline__ void issue_qk(uint32_t (&s)[Traits::kSRegs], uint32_t desc_q_lo, uint32_t desc_k_lo) {
  constexpr uint32_t hi = smem_desc_hi(Traits::kQKGroupStride, Traits::kQKSwizzle);
#pragma unroll
  for (int kk = 0; kk < Traits::kQKSteps; ++kk)
    wgmma_m64n128k32_s32_s8_ss(s, smem_desc(desc_q_lo + 2 * kk, hi), smem_desc(desc_k_lo + 2 * kk, hi), kk > 0);
}

// issue_qk into an accumulator whose old values are dead (kept across a loop's back edge: see
// wgmma_m64n128k32_s32_s8_ss_overwrite).
template <class Traits>
__device__ __forceinline__ void issue_qk_overwrite(uint32_t (&s)[Traits::kSRegs], uint32_t desc_q_lo, uint32_t desc_k_lo) {
  constexpr uint32_t hi = smem_desc_hi(Traits::kQKGroupStride, Traits::kQKSwizzle);
  wgmma_m64n128k32_s32_s8_ss_overwrite(s, smem_desc(desc_q_lo, hi), smem_desc(desc_k_lo, hi));
#pragma unroll
  for (int kk = 1; kk < Traits::kQKSteps; ++kk)
    wgmma_m64n128k32_s32_s8_ss(s, smem_desc(desc_q_lo + 2 * kk, hi), smem_desc(desc_k_lo + 2 * kk, hi), 1);
}

// The register A operand of an in-flight wgmma is read asynchronously: keep it live past the wait.
template <int K>
__device__ __forceinline__ void fence_p(uint32_t (&pa)[K][4]) {
#pragma unroll
  for (int k = 0; k < K; ++k) fence_regs(pa[k]);
}

template <int N>
__device__ __forceinline__ void scale_rows(float (&acc)[N], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] *= alpha[(i >> 1) & 1];
}

// V_SMEM: the epilogue reads the head's V scale and mean from shared memory, copied by cp.async at the
// tile's start (their L2 latency hidden by the K-tile loop), instead of from L2 after its first stores.
template <class Traits, bool CAUSAL, bool HAS_DS, bool NARROW, bool V_SMEM>
__device__ __forceinline__ void consumer_loop(typename Traits::Smem& sm, const Sm90Params& p, int cw) {
  constexpr int S = Traits::kStages;
  constexpr int D = Traits::D;
  constexpr KOrder ORDER = Traits::kKOrder;
  const int tid = threadIdx.x - 128 * (cw + 1);
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const float c = p.scale_log2;
  uint32_t q_count = 0;
  // Pipeline position of the next K tile: slot and phase bit, advanced incrementally (no div/mod).
  int stg = 0;
  uint32_t ph = 0;

  // Registers are the scarce resource here (D = 128 holds S, two O accumulators and P at once), so
  // per-thread constants are kept few: one descriptor base (Q, K and V slots are fixed offsets from it)
  // and one k-scale offset; masks and scale strides are rederived from kernel parameters when used.
  const uint32_t desc_base_lo = smem_desc_lo(sm.q);
  constexpr uint32_t kDescK = (offsetof(typename Traits::Smem, k) - offsetof(typename Traits::Smem, q)) >> 4;
  constexpr uint32_t kDescV = (offsetof(typename Traits::Smem, v) - offsetof(typename Traits::Smem, q)) >> 4;
  const uint32_t desc_q_lo = desc_base_lo + cw * (Traits::kRowsPerConsumer * D >> 4);

  // The four k scales this thread needs per tile (slot t = 2 * half + j%2) sit at
  // k_scale[n * per_tile + ks_off + {0, d1, d2, d1 + d2}] for every granularity.
  const int ks_off = k_group(column_token<ORDER>(0, q, 0), p.granularity);

  // Tiles. Non-causal: the static schedule (tile += gridDim.x). Causal (dynamic schedule): the first is
  // blockIdx.x, as for the producer. Each later one comes with the next full_q phase (producer_loop), read
  // from sm.tile once that phase has completed; the body then waits for the same phase again, as for the
  // first tile, and returns at once (the phase cannot advance before this warp arrives on empty_q). The
  // last one read is >= num_tiles: the end.
  // It comes as the distance from the tile before, and through a warp-wide max, only so that ptxas sees
  // `tile` as uniform, as with the static tile += gridDim.x, and keeps it and the per-tile values in
  // uniform registers. Read per thread or as the index itself, they took general registers from the K-tile
  // loop (D = 128 causal: 3 to 12 more LDL in it, 3 to 8 STL).
  int tile = blockIdx.x;
  auto advance = [&]() {
    if constexpr (CAUSAL) {
      mbar_wait(&sm.full_q, q_count & 1);
      // Lane 0 alone reads (the distance is >= 0, so the other lanes' 0 leaves the max alone): the lane
      // that reads is then the lane that later arrives on empty_q and lets the producer overwrite it.
      tile += __reduce_max_sync(0xffffffffu, lane == 0 ? ld_shared_s32(&sm.tile) : 0);
    } else {
      tile += gridDim.x;
    }
  };
  for (; tile < p.num_tiles; advance()) {
    const WorkTile w = decode_tile<CAUSAL, Traits::kBlkQ, Traits::kBlkK>(tile, p);
    if (tid == 0) {
      SAGE_TRACE_EVENT(1 + cw, q_count, 0);
      SAGE_TRACE_VALUE(1 + cw, q_count, 6, w.n_k_tiles);
    }
    const int wg_row0 = w.q_block * Traits::kBlkQ + cw * Traits::kRowsPerConsumer;
    const int row0 = wg_row0 + warp * 16 + g;
    if (w.n_k_tiles == 0) {
      if constexpr (CAUSAL) {
        // No Q was loaded; the phase is waited for (the first tile's may not have completed yet) and
        // freed all the same. The warp syncs first, so that no lane still has sm.tile to read when lane 0
        // lets the producer overwrite it (the reduction above already orders the reads; this says so).
        mbar_wait(&sm.full_q, q_count & 1);
        ++q_count;
        __syncwarp();
        if (lane == 0) mbar_arrive(&sm.empty_q);
      }
      store_masked_rows<D, Traits::kWideStores>(p, w.b, w.h, row0, q);
      continue;
    }
    const int hk = w.h / p.group;
    const int64_t q_head = static_cast<int64_t>(w.b) * p.heads_q + w.h;
    const int64_t kv_head = static_cast<int64_t>(w.b) * p.heads_kv + hk;
    const float* k_scale = p.k_scale + kv_head * p.nk_groups + ks_off;
    float* vc = &sm.v_consts[cw][0][0];
    if constexpr (V_SMEM) {
      // Once every warp of this consumer is past the previous tile's epilogue (which read the same slot):
      // this tile's V scale, then V mean, 16 bytes a thread.
      named_barrier_sync(1 + cw, 128);
      if (tid < D / 4)
        cp_async_16(smem_u32(vc + 4 * tid), p.v_scale + kv_head * D + 4 * tid);
      else if (tid < D / 2 && p.v_mean)
        cp_async_16(smem_u32(vc + D + 4 * (tid - D / 4)), p.v_mean + kv_head * D + 4 * (tid - D / 4));
      cp_async_commit();
    } else if constexpr (Traits::kWideStores) {
      // The epilogue reads them from global memory: into L1 now (a line a thread), off its critical path.
      if (tid < D / 32)
        prefetch_l1(p.v_scale + kv_head * D + 32 * tid);
      else if (tid < D / 16 && p.v_mean)
        prefetch_l1(p.v_mean + kv_head * D + 32 * (tid - D / 32));
    }
    // A 192-row block may pass the head's padded rows (traits.cuh): their scales are read from its last row
    // instead (what they compute is never stored).
    constexpr bool kClampRows = Traits::kBlkQ % SAGE_SEQ_PAD != 0;
    float q_sc[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = kClampRows ? min(row0 + 8 * i, p.seq_q_pad - 1) : row0 + 8 * i;
      q_sc[i] = p.q_scale[q_head * p.nq_groups + q_group(r, p.granularity)] * c;
    }
    const int ds_block = (kClampRows ? min(wg_row0, p.seq_q_pad - 64) : wg_row0) / 64;
    const float* ds_row = HAS_DS ? p.ds + (q_head * (p.seq_q_pad / 64) + ds_block) * p.seq_k_pad : nullptr;
    // Tokens at or past this are masked for some row of this warpgroup (its first row sees the fewest).
    const int first_masked_tok = CAUSAL ? min(p.seq_k, wg_row0 + 1 + p.seq_k - p.seq_q) : p.seq_k;

    RowState st;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      st.m[i] = -CUDART_INF_F;
      st.alpha[i] = 0.f;
    }
    float alpha_prev[2] = {0.f, 0.f};
    // The D output channels and, in the last 4 registers, the row sums l (traits.cuh, kOnesRows).
    float acc_o[Traits::kPVRegs], acc_pv[Traits::kPVRegs];
#pragma unroll
    for (int i = 0; i < Traits::kPVRegs; ++i) acc_o[i] = acc_pv[i] = 0.f;
    uint32_t pa[Traits::kPVSteps][4];

    mbar_wait(&sm.full_q, q_count & 1);
    if (tid == 0) SAGE_TRACE_EVENT(1 + cw, q_count, 1);
    ++q_count;

    // acc_o <- acc_o * alpha + acc_pv: the two-level accumulation of one tile's P.V.
    auto fold_into_o = [&](const float(&alpha)[2]) {
#pragma unroll
      for (int i = 0; i < Traits::kPVRegs; ++i) acc_o[i] = acc_o[i] * alpha[(i >> 1) & 1] + acc_pv[i];
    };
    // K tile n's columns for this thread's rows g, g+8 (causal: bottom-right aligned diagonal).
    auto tile_columns = [&](int n) {
      TileColumns cols;
      cols.tok0 = n * Traits::kBlkK;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        cols.limit[i] = CAUSAL ? min(p.seq_k, row0 + 8 * i + 1 + p.seq_k - p.seq_q) : p.seq_k;
      cols.ds = HAS_DS ? ds_row + cols.tok0 : nullptr;
      return cols;
    };
    auto next_slot = [&]() {
      if (++stg == S) {
        stg = 0;
        ph ^= 1;
      }
    };
    // P(n).V(n) from V slot `slot` (phase `phase`), issued and waited for; the slot is then freed.
    auto pv_waited = [&](int slot, uint32_t phase) {
      mbar_wait(&sm.full_v[slot], phase);
      wgmma_fence();
      issue_pv<Traits>(acc_pv, pa, desc_base_lo + kDescV + slot * (Traits::kVStageBytes >> 4), NARROW);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc_pv);
      fence_p(pa);  // P(n) stays allocated until its wgmma has read it
      if (lane == 0) mbar_arrive(&sm.empty_v[slot]);
    };
    // scale[i][t] = q_scale(row i) * k_scale(slot t of K tile n) * sm_scale * log2(e) (softmax.cuh).
    auto k_tile_scales = [&](int n, float(&scale)[2][4]) {
      const bool per_thread = p.granularity == SAGE_PER_THREAD;
      const int d1 = ORDER == KOrder::kPermuted && per_thread ? 1 : 0;  // the other slot of a 64-token half
      const int d2 = per_thread ? 4 : 1;                                 // the next 64-token half
      const float* ks = k_scale + n * (per_thread ? Traits::kBlkK / 16 : Traits::kBlkK / 64);
      const float k4[4] = {__ldg(ks), __ldg(ks + d1), __ldg(ks + d2), __ldg(ks + d1 + d2)};
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        scale[0][t] = q_sc[0] * k4[t];
        scale[1][t] = q_sc[1] * k4[t];
      }
    };

    // Three consumers (traits.cuh): one K tile at a time, every wgmma waited for in the step that issues it
    // (ptxas serializes wgmmas in flight across a loop's back edge). kQKAhead (D = 64): QK(n + 1) is issued
    // at the end of step n, once P.V(n) is done and before P.V(n) is folded into acc_o, so that its latency
    // covers the fold. At D = 128 its 64 registers beside the two 68-register accumulators do not fit 160
    // (ptxas spills ~700 bytes, and as much with QK(n + 1) issued after the fold): QK(n) opens step n.
    constexpr bool kQKAhead = D == 64;
    uint32_t s_in[Traits::kSRegs];
    float scale_in[2][4];
    auto issue_qk_of = [&](int n) {
      k_tile_scales(n, scale_in);
      mbar_wait(&sm.full_k[stg], ph);
      wgmma_fence();
      // The overwrite form keeps s_in's dead values from living across the loop (D = 128: without it the
      // loop spills); at D = 64 there is room, and the plain form measured 2% faster (bench/NOTES.md).
      if constexpr (kQKAhead)
        issue_qk<Traits>(s_in, desc_q_lo, desc_base_lo + kDescK + stg * (Traits::kKBytes >> 4));
      else
        issue_qk_overwrite<Traits>(s_in, desc_q_lo, desc_base_lo + kDescK + stg * (Traits::kKBytes >> 4));
      wgmma_commit();
    };
    auto finish_qk_of = [&](int n) {
      wgmma_wait<0>();
      if (tid == 0) SAGE_TRACE_STEP(cw, q_count, n);
      fence_regs(s_in);
      if (lane == 0) {
        mbar_arrive(&sm.empty_k[stg]);
        if (n == w.n_k_tiles - 1) mbar_arrive(&sm.empty_q);  // the last read of this Q block
      }
    };
    auto step_in_order = [&](int n, auto last_tag) {
      constexpr bool LAST = decltype(last_tag)::value;  // kQKAhead: no QK(n + 1) to issue
      if constexpr (!kQKAhead) {
        issue_qk_of(n);
        finish_qk_of(n);
      }
      const TileColumns cols = tile_columns(n);
      float x[Traits::kSRegs];
      if (cols.tok0 + Traits::kBlkK > first_masked_tok)
        softmax_tile<ORDER, true, HAS_DS, D == 64>(s_in, x, st, scale_in, cols, c, q, [] {});
      else
        softmax_tile<ORDER, false, HAS_DS, D == 64>(s_in, x, st, scale_in, cols, c, q, [] {});
      pack_p_fragment<ORDER>(x, pa, q);
      if constexpr (NARROW) scale_rows(acc_pv, st.alpha);
      pv_waited(stg, ph);
      if (tid == 0) SAGE_TRACE_STEP_PV(cw, q_count, n);
      next_slot();
      if constexpr (kQKAhead && !LAST) issue_qk_of(n + 1);
      if constexpr (!NARROW) fold_into_o(st.alpha);
      if constexpr (kQKAhead && !LAST) finish_qk_of(n + 1);
      if (tid == 0 && n == 0) SAGE_TRACE_EVENT(1 + cw, q_count - 1, 2);
    };

    // One K tile. FIRST has no P.V of a previous tile to issue; keeping that a compile-time difference
    // (rather than `if (n > 0)`) leaves no wgmma on a divergent path, which ptxas would serialize.
    auto step = [&](int n, auto first_tag) {
      constexpr bool FIRST = decltype(first_tag)::value;
      const int prev = stg == 0 ? S - 1 : stg - 1;  // the previous tile's V slot (not FIRST)
      const uint32_t prev_ph = stg == 0 ? ph ^ 1 : ph;
      float scale[2][4];
      k_tile_scales(n, scale);

      mbar_wait(&sm.full_k[stg], ph);
      // V(n-1) was loaded before K(n), so waiting for it here costs nothing, and it keeps the spin loop
      // out of the stretch between wgmma_fence and the last wgmma (ptxas serializes wgmmas otherwise).
      if constexpr (!FIRST) mbar_wait(&sm.full_v[prev], prev_ph);
      uint32_t s[Traits::kSRegs];
      wgmma_fence();
      issue_qk<Traits>(s, desc_q_lo, desc_base_lo + kDescK + stg * (Traits::kKBytes >> 4));
      wgmma_commit();
      if constexpr (!FIRST) {
        issue_pv<Traits>(acc_pv, pa, desc_base_lo + kDescV + prev * (Traits::kVStageBytes >> 4), NARROW);
        wgmma_commit();
      }

      // Finishing P.V(n-1) (wait, free its V slot, fold it into acc_o).
      auto finish_pv = [&]() {
        fence_regs(acc_pv);
        fence_p(pa);  // P(n-1) stays allocated until its wgmma has read it
        if (lane == 0) mbar_arrive(&sm.empty_v[prev]);
        if constexpr (!NARROW) fold_into_o(alpha_prev);
      };
      if constexpr (FIRST) wgmma_wait<0>(); else wgmma_wait<1>();  // QK(n) done; P.V(n-1) may run on
      if (tid == 0) SAGE_TRACE_STEP(cw, q_count, n);
      fence_regs(s);
      if (lane == 0) {
        mbar_arrive(&sm.empty_k[stg]);
        if (n == w.n_k_tiles - 1) mbar_arrive(&sm.empty_q);  // the last read of this Q block
      }

      const TileColumns cols = tile_columns(n);
      float x[Traits::kSRegs];
      // Where P.V(n-1) is finished: kFoldEarly between the row maxima and the exp2s (it has had the QK
      // wait and the maxima to run), so that its 68 FMAs fill the exp2 loop's idle issue slots and its
      // accumulator is free during that loop; otherwise after the exp2s. Early measured +7% at D = 128
      // non-causal (ptxas then spills 24 B instead of 88) and 5-6% slower at D = 64 and causal D = 128,
      // whose spills it makes worse, as it does with ds (not timed there): bench/NOTES.md.
      constexpr bool kFoldEarly = D == 128 && !CAUSAL && !HAS_DS;
      auto fold_pv = [&]() {
        if constexpr (!FIRST) {
          wgmma_wait<0>();
          if (tid == 0) SAGE_TRACE_STEP_PV(cw, q_count, n - 1);
          finish_pv();
        }
      };
      auto fold_early = [&]() {
        if constexpr (kFoldEarly) fold_pv();
      };
      if (cols.tok0 + Traits::kBlkK > first_masked_tok)
        softmax_tile<ORDER, true, HAS_DS, D == 64>(s, x, st, scale, cols, c, q, fold_early);
      else
        softmax_tile<ORDER, false, HAS_DS, D == 64>(s, x, st, scale, cols, c, q, fold_early);
      if constexpr (!kFoldEarly) fold_pv();
      // Narrow: the one accumulator follows the running max before P(n).V(n) lands in it.
      if constexpr (NARROW) scale_rows(acc_pv, st.alpha);
      pack_p_fragment<ORDER>(x, pa, q);
      alpha_prev[0] = st.alpha[0];
      alpha_prev[1] = st.alpha[1];
      next_slot();
    };

    if constexpr (!Traits::kOverlapPV) {
      if constexpr (kQKAhead) {
        issue_qk_of(0);
        finish_qk_of(0);
        for (int n = 0; n + 1 < w.n_k_tiles; ++n) step_in_order(n, std::false_type{});
        step_in_order(w.n_k_tiles - 1, std::true_type{});
      } else {
        for (int n = 0; n < w.n_k_tiles; ++n) step_in_order(n, std::false_type{});
      }
      if (tid == 0) {
        SAGE_TRACE_EVENT(1 + cw, q_count - 1, 3);
        SAGE_TRACE_EVENT(1 + cw, q_count - 1, 4);
      }
    } else {
      step(0, std::true_type{});
      if (tid == 0) SAGE_TRACE_EVENT(1 + cw, q_count - 1, 2);
      for (int n = 1; n < w.n_k_tiles; ++n) step(n, std::false_type{});
      if (tid == 0) SAGE_TRACE_EVENT(1 + cw, q_count - 1, 3);

      // P.V of the last tile.
      pv_waited(stg == 0 ? S - 1 : stg - 1, stg == 0 ? ph ^ 1 : ph);
      if (tid == 0) SAGE_TRACE_EVENT(1 + cw, q_count - 1, 4);
      if constexpr (!NARROW) fold_into_o(alpha_prev);
    }
    if constexpr (NARROW) {  // the one accumulator holds the whole row
#pragma unroll
      for (int i = 0; i < Traits::kPVRegs; ++i) acc_o[i] = acc_pv[i];
    }
    if constexpr (V_SMEM) {
      cp_async_wait<0>();
      named_barrier_sync(1 + cw, 128);  // every thread's piece of vc has landed
    }
    store_output<D, Traits::kWideStores, V_SMEM>(acc_o, st, p, w.b, w.h, row0, q, vc);
    if (tid == 0) SAGE_TRACE_EVENT(1 + cw, q_count - 1, 5);
  }
  if (tid == 0) SAGE_TRACE_EVENT(1 + cw, kTraceSlots - 1, 7);
}

template <class Traits, bool CAUSAL, bool HAS_DS, bool NARROW, bool V_SMEM>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    sm90_attn_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                     const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ Sm90Params p) {
  extern __shared__ uint8_t smem_raw[];
  // 1024-byte alignment: the 128B swizzle pattern repeats every 1024 bytes of shared address space.
  auto& sm = *reinterpret_cast<typename Traits::Smem*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                                       ~static_cast<uintptr_t>(1023));
  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) SAGE_TRACE_EVENT(0, kTraceSlots - 1, 0);
  if (threadIdx.x == 0) {
    mbar_init(&sm.full_q, 1);
    mbar_init(&sm.empty_q, 4 * Traits::kConsumers);  // lane 0 of every consumer warp
    for (int s = 0; s < Traits::kStages; ++s) {
      mbar_init(&sm.full_k[s], 1);
      mbar_init(&sm.empty_k[s], 4 * Traits::kConsumers);
      mbar_init(&sm.full_v[s], 1);
      mbar_init(&sm.empty_v[s], 4 * Traits::kConsumers);
    }
    mbar_fence_init();
  }
  // The ones rows after each V^T stage (traits.cuh, kOnesRows): e4m3 1.0 = 0x38, written once (the TMA
  // writes only the D channel rows), then made visible to the async proxy the wgmmas read through.
  for (int i = threadIdx.x; i < Traits::kStages * Traits::kOnesRows * Traits::kBlkK / 4; i += blockDim.x) {
    const int stage = i / (Traits::kOnesRows * Traits::kBlkK / 4), word = i % (Traits::kOnesRows * Traits::kBlkK / 4);
    reinterpret_cast<uint32_t*>(sm.v[stage] + Traits::kVBytes)[word] = 0x38383838u;
  }
  fence_proxy_async_smem();
  __syncthreads();
  // Launched with programmatic dependent launch: everything above overlapped the quantization's last
  // blocks; its outputs (Q, K, V and their scales) are read only after this. Causal instances: the
  // dynamic scheduler's counter (tile_scheduler.cuh) is touched only after this too: a PDL-launched kernel
  // may start while the launch before it (another attention on the same buffers, when the kernel alone
  // is timed) is still running; the wait returns once that launch has completed, its reset included.
  pdl_wait();
  if (threadIdx.x == 0) SAGE_TRACE_EVENT(0, kTraceSlots - 1, 1);

  if (wg == 0) {
    warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) producer_loop<Traits, CAUSAL>(sm, p, &tm_q, &tm_k, &tm_v);
    // The two roles never rejoin: ptxas allocates each branch's general registers under its own budget. Not
    // the uniform registers: any code that a thread other than thread 0 runs here caps them at ~24 for the
    // whole kernel and slows the consumers by up to 2% (bench/NOTES.md, ninth session).
    return;
  } else {
    warpgroup_reg_alloc<Traits::kConsumerRegs>();
    consumer_loop<Traits, CAUSAL, HAS_DS, NARROW, V_SMEM>(sm, p, wg - 1);
    return;
  }
}

}  // namespace sage::sm90
