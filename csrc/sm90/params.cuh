// The kernel-side view of SageAttnParams: plain values the device reads (pointers, sizes, and what the
// host derives once: scale in log2 units, tile counts, scale-row lengths).
#pragma once
#include <stdint.h>

namespace sage::sm90 {

struct Sm90Params {
  const float* q_scale;  // [B, Hq, nq_groups]
  const float* k_scale;  // [B, Hkv, nk_groups]
  const float* v_scale;  // [B, Hkv, D]
  const float* v_mean;   // [B, Hkv, D] or nullptr
  const float* ds;       // [B, Hq, Nq_pad/64, Nk_pad] or nullptr
  void* o;
  int64_t o_stride_b, o_stride_h, o_stride_n;
  float* lse;  // [B, Hq, Nq] or nullptr
  int* tile_counter;  // causal: the dynamic scheduler's two counters (tile_scheduler.cuh), zero on entry
  int batch, heads_q, heads_kv, seq_q, seq_k, seq_q_pad, seq_k_pad;
  int group;        // Hq / Hkv
  int granularity;  // SageGranularity
  int narrow;       // 1: SAGE_PV_NARROW (one wgmma accumulator for the whole row)
  int out_bf16;     // 1: O is bf16, 0: fp16
  int nq_groups, nk_groups;
  int num_q_blocks;  // ceil(Nq / kBlkQ) (traits.cuh)
  int num_tiles;     // B * Hq * num_q_blocks
  float scale_log2;  // sm_scale * log2(e)
};

}  // namespace sage::sm90
