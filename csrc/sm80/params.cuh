// The kernel-side parameters: SageAttnParams reduced to what the device needs, with the per-launch
// constants (group counts, the exp2 scale) computed once on the host.
#pragma once
#include <cstdint>

namespace sage::sm80 {

struct KernelParams {
  const uint8_t* q;       // q_int [B, Hq, Nq_pad, row bytes]
  const uint8_t* k;       // k_int [B, Hkv, Nk_pad, row bytes]
  const uint8_t* v;       // FP8: v_fp8 [B, Hkv, D, Nk_pad]; FP16: V [B, Hkv, Nk, D] with the strides below
  const float* q_scale;   // [B, Hq, q_groups]
  const float* k_scale;   // [B, Hkv, k_groups]
  const float* v_scale;   // [B, Hkv, D] (FP8 only)
  const float* v_mean;    // [B, Hkv, D] or null
  const float* ds;        // [B, Hq, Nq_pad / 64, Nk_pad] or null
  void* o;                // [B, Hq, Nq, D] with the strides below
  float* lse;             // [B, Hq, Nq] or null
  int64_t v_stride_b, v_stride_h, v_stride_n;  // elements (FP16 PV)
  int64_t o_stride_b, o_stride_h, o_stride_n;  // elements
  int heads_q, heads_kv, group_size, seq_q, seq_k, seq_q_pad, seq_k_pad;
  int q_groups, k_groups;  // scale groups per (batch, head)
  int granularity;         // SageGranularity
  int causal;
  int narrow;              // SAGE_PV_NARROW: no second accumulation level (FP8 only)
  float scale_log2;        // sm_scale * log2(e)
};

}  // namespace sage::sm80
