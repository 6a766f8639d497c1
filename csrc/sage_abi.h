/* sage kernel ABI: the only header Python (ctypes) and the CUDA sources share.
 *
 * Plain C, no torch, no CUDA headers beyond the stream type: every entry point takes one parameter
 * struct by pointer and a cudaStream_t, returns 0 on success or a SAGE_ERR_* code, and leaves a
 * one-line reason in sage_last_error(). One shared library is built per target (sm_80, sm_86, sm_89,
 * sm_90a); each exports all entry points and says through sage_abi_version() which ABI it speaks.
 *
 * Layouts (element strides; the last dimension, D, is always contiguous):
 *   Q in       [B, Hq,  Nq, D]  fp16/bf16, strides q_stride_{b,h,n}   (HND or NHD: strides say which)
 *   K, V in    [B, Hkv, Nk, D]  fp16/bf16, strides {k,v}_stride_{b,h,n}
 *   q_int      [B, Hq,  Nq_pad, D]   int8, contiguous  (INT4: [B, Hq, Nq_pad, D/2] bytes, two values a
 *                                     byte, the even channel in the low nibble: the mma fragment order)
 *   k_int      [B, Hkv, Nk_pad, D]   int8 / packed int4 as q_int, K already smoothed (K - mean_tokens K)
 *   q_scale    [B, Hq,  nq_groups]   float32, groups as in sage_cli/settings.py
 *   k_scale    [B, Hkv, nk_groups]   float32
 *   v_fp8      [B, Hkv, D, Nk_pad]   float8 e4m3, TRANSPOSED (tokens contiguous): the K-major B operand
 *                                     that both wgmma e4m3 and mma.sync e4m3 read
 *   v_scale    [B, Hkv, D]           float32 per channel (dynamic amax/448, or the static one given)
 *   v_mean     [B, Hkv, D]           float32, only with smooth V (added back after normalizing), else NULL
 *   k_mean     [B, Hkv, D]           float32, written by quantization (Python adds q.k_mean*sm_scale to LSE)
 *   q_mean     [B, Hq, Nq_pad/64, D] float32, the Q block means, only with smooth Q
 *   ds         [B, Hq, Nq_pad/64, Nk_pad] float32, only with smooth Q: (q_mean . K'^T), added to the
 *                                     dequantized scores before the softmax scale; NULL otherwise
 *   O out      [B, Hq, Nq, D] fp16/bf16 (the input dtype), strides o_stride_{b,h,n}; every valid element
 *                                     written; fully masked rows are written as 0, never NaN
 *   lse out    [B, Hq, Nq] float32 natural-log LSE of sm_scale * (Q K'^T + ds), or NULL
 * Nq_pad and Nk_pad are Nq and Nk rounded up to SAGE_SEQ_PAD; pad tokens are zero and always masked.
 * GQA: query head h reads kv head h / (Hq / Hkv). Causal: query i sees key j iff j <= i + (Nk - Nq)
 * (bottom-right aligned; top-left when Nq == Nk, which is the same formula).
 */
#ifndef SAGE_ABI_H
#define SAGE_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAGE_ABI_VERSION 3
#define SAGE_SEQ_PAD 128
#define SAGE_SMOOTH_Q_BLOCK 64
#define SAGE_K_BLOCK 64

typedef struct CUstream_st* sage_stream_t; /* the same type as cudaStream_t */

enum SageDType { SAGE_FP16 = 0, SAGE_BF16 = 1 };
enum SageQKType { SAGE_QK_INT8 = 0, SAGE_QK_INT4 = 1 };
enum SagePVType { SAGE_PV_FP8 = 0, SAGE_PV_FP16 = 1 };
enum SageGranularity { SAGE_PER_THREAD = 0, SAGE_PER_WARP = 1, SAGE_PER_BLOCK = 2 };
enum SagePVAccum { SAGE_PV_TWO_LEVEL = 0, SAGE_PV_NARROW = 1 };
enum SageKernelFamily { SAGE_FAMILY_AUTO = 0, SAGE_FAMILY_MMA_SYNC = 1, SAGE_FAMILY_WGMMA = 2 };

enum SageError {
  SAGE_OK = 0,
  SAGE_ERR_INVALID = 1,     /* a parameter outside what this library serves (see sage_last_error) */
  SAGE_ERR_UNSUPPORTED = 2, /* a valid request this target has no kernel for */
  SAGE_ERR_CUDA = 3         /* a CUDA call failed */
};

/* Smoothing and quantization of Q, K and (for FP8 P.V) V, in one call: a zeroing of `workspace`, then
 * either one launch that reads Q, K and V once (wherever the GPU can hold every slice of a kv head at once)
 * or two: the first reads Q (quantizing it) and takes the K and V channel statistics, the second quantizes
 * K and V with them. */
typedef struct SageQuantParams {
  const void* q;
  const void* k;
  const void* v;               /* NULL: V is not quantized (FP16 P.V reads the original V) */
  int64_t q_stride_b, q_stride_h, q_stride_n;
  int64_t k_stride_b, k_stride_h, k_stride_n;
  int64_t v_stride_b, v_stride_h, v_stride_n;
  int32_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim, seq_q_pad, seq_k_pad;
  int32_t dtype;               /* SageDType of Q, K and V */
  int32_t qk_type;             /* SageQKType */
  int32_t granularity;         /* SageGranularity */
  int32_t smooth_q;            /* 0/1: write q_mean and quantize Q - mean(block) */
  int32_t smooth_v;            /* 0/1: subtract the V channel mean (written to v_mean) first */
  const float* v_static_scale; /* [B, Hkv, D] calibrated V scales (saturating), or NULL for amax/448 */
  void* q_int;
  void* k_int;
  float* q_scale;
  float* k_scale;
  float* k_mean;               /* always written */
  float* q_mean;               /* written when smooth_q, else may be NULL */
  void* v_fp8;                 /* with v */
  float* v_scale;              /* with v: [B, Hkv, D] the scale used (the static one when given) */
  float* v_mean;               /* with v and smooth_v: [B, Hkv, D] */
  float* workspace;            /* SAGE_QUANT_WORKSPACE_FLOATS(batch, heads_kv, head_dim) floats of scratch;
                                  any content on entry (the call zeroes it on its stream) */
} SageQuantParams;

/* Scratch of sage_quantize: the K sum, V sum, V max and V min of every channel; two counters per kv head
 * and one per call (how far the K and V statistics of each head are, and the work claimed); then
 * SAGE_TILE_COUNTER_INTS words it only zeroes: the tile counter a later sage_attn_fwd of the same call may
 * take (tile_counter). */
#define SAGE_TILE_COUNTER_INTS 4
#define SAGE_QUANT_WORKSPACE_FLOATS(batch, heads_kv, head_dim) \
  (4 * (int64_t)(batch) * (heads_kv) * (head_dim) + 2 * (int64_t)(batch) * (heads_kv) + 1 + SAGE_TILE_COUNTER_INTS)

/* The attention itself, on quantized Q/K (and FP8 or original-dtype V). */
typedef struct SageAttnParams {
  const void* q_int;
  const void* k_int;
  const void* v;               /* v_fp8 (transposed) for SAGE_PV_FP8; the original V for SAGE_PV_FP16 */
  int64_t v_stride_b, v_stride_h, v_stride_n; /* used for SAGE_PV_FP16 only */
  const float* q_scale;
  const float* k_scale;
  const float* v_scale;        /* SAGE_PV_FP8 only */
  const float* v_mean;         /* smooth V, or NULL */
  const float* ds;             /* smooth Q bias, or NULL */
  void* o;
  int64_t o_stride_b, o_stride_h, o_stride_n;
  float* lse;                  /* [B, Hq, Nq] or NULL */
  int32_t* tile_counter;       /* SAGE_TILE_COUNTER_INTS int32, zero on entry and left zero: the causal wgmma
                                  kernel hands out work tiles through it (required there, else unused). The
                                  tail of the call's quantization workspace is such a buffer. */
  int32_t batch, heads_q, heads_kv, seq_q, seq_k, head_dim, seq_q_pad, seq_k_pad;
  int32_t dtype;               /* of V (fp16 PV) and of O */
  int32_t qk_type, granularity, pv_type, pv_accum;
  int32_t causal;
  int32_t family;              /* SageKernelFamily: AUTO picks by arch; MMA_SYNC forces the sm80-family
                                  kernel (it also runs, emulated where the arch lacks the instruction, on
                                  sm_90a: that is how the GPU tests check it on an H100) */
  float sm_scale;              /* softmax scale; kernels fold sm_scale*log2(e) into the exp2 FMA */
} SageAttnParams;

int sage_abi_version(void);
/* The arch this library was compiled for, e.g. 90 for sm_90a, 89, 86, 80. */
int sage_compiled_arch(void);
/* The K block (tokens) the attention kernel uses for this configuration; the reference uses the same so
 * that P is rounded at the same running maximum. 0 when unsupported. */
int sage_attn_blk_k(int32_t head_dim, int32_t qk_type, int32_t pv_type, int32_t family);
int sage_quantize(const SageQuantParams* p, sage_stream_t stream);
int sage_attn_fwd(const SageAttnParams* p, sage_stream_t stream);
const char* sage_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* SAGE_ABI_H */
