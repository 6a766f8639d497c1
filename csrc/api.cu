// The extern "C" entry points of sage_abi.h: validate every parameter (one-line reason on failure),
// dispatch to the kernel family, and turn launch failures into SAGE_ERR_CUDA.
//
// The attention families are linked in only where their sources exist: the build defines
// SAGE_HAVE_SM80 / SAGE_HAVE_SM90 when csrc/sm80 / csrc/sm90 hold .cu files (and SAGE_WITH_SM90 for the
// sm_90a target). Their entry points are also declared weak, so a family whose sources are present but
// do not (yet) define the function still links, and a call reports SAGE_ERR_UNSUPPORTED instead of the
// whole library failing to load.
#include <cmath>
#include <cstdarg>
#include <cstdio>

#include "common/check.cuh"
#include "common/internal.h"

#ifndef SAGE_TARGET_ARCH
#error "SAGE_TARGET_ARCH (80, 86, 89 or 90) must be defined by the build"
#endif

namespace sage {

#ifdef SAGE_HAVE_SM80
__attribute__((weak)) int sm80_attn_fwd(const SageAttnParams& p, cudaStream_t stream);
__attribute__((weak)) int sm80_attn_blk_k(int head_dim, int qk_type, int pv_type);
#endif
#if defined(SAGE_WITH_SM90) && defined(SAGE_HAVE_SM90)
__attribute__((weak)) int sm90_attn_fwd(const SageAttnParams& p, cudaStream_t stream);
__attribute__((weak)) int sm90_attn_blk_k(int head_dim, int qk_type, int pv_type);
#endif

namespace {
thread_local char g_last_error[512] = "";

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Sequence lengths and their padded sizes: pads are multiples of SAGE_SEQ_PAD covering the sequence.
int check_seq(const char* name, int32_t n, int32_t n_pad) {
  SAGE_REQUIRE(n >= 1, "%s must be >= 1, got %d", name, n);
  SAGE_REQUIRE(n_pad >= n && n_pad % SAGE_SEQ_PAD == 0,
               "%s_pad must be a multiple of %d that is >= %s=%d, got %d", name, SAGE_SEQ_PAD, name, n, n_pad);
  return SAGE_OK;
}

int check_shape(int32_t batch, int32_t heads_q, int32_t heads_kv, int32_t head_dim) {
  SAGE_REQUIRE(batch >= 1, "batch must be >= 1, got %d", batch);
  SAGE_REQUIRE(heads_q >= 1 && heads_kv >= 1, "head counts must be >= 1, got Hq=%d Hkv=%d", heads_q, heads_kv);
  SAGE_REQUIRE(heads_q % heads_kv == 0, "Hq=%d must be a multiple of Hkv=%d", heads_q, heads_kv);
  SAGE_REQUIRE(head_dim == 64 || head_dim == 128, "head_dim must be 64 or 128, got %d", head_dim);
  return SAGE_OK;
}

// A fp16/bf16 input read with 16-byte vector loads: base and every stride must keep rows 16-byte aligned.
int check_input(const char* name, const void* ptr, int64_t sb, int64_t sh, int64_t sn) {
  SAGE_REQUIRE(ptr != nullptr, "%s is NULL", name);
  SAGE_REQUIRE(aligned16(ptr), "%s must be 16-byte aligned", name);
  SAGE_REQUIRE(sb % 8 == 0 && sh % 8 == 0 && sn % 8 == 0,
               "%s strides (%lld, %lld, %lld) must be multiples of 8 elements (16-byte rows)", name,
               (long long)sb, (long long)sh, (long long)sn);
  SAGE_REQUIRE(sb >= 0 && sh >= 0 && sn >= 0, "%s strides must be non-negative", name);
  return SAGE_OK;
}

int check_out(const char* name, const void* ptr) {
  SAGE_REQUIRE(ptr != nullptr, "%s is NULL", name);
  SAGE_REQUIRE(aligned16(ptr), "%s must be 16-byte aligned", name);
  return SAGE_OK;
}

#define SAGE_TRY(expr)             \
  do {                             \
    const int sage_rc_ = (expr);   \
    if (sage_rc_ != SAGE_OK) return sage_rc_; \
  } while (0)

// The family AUTO resolves to on this target, or -1 with sage_last_error set.
int resolve_family(int32_t family, int32_t qk_type, int32_t pv_type) {
  if (family != SAGE_FAMILY_AUTO) return family;
#if SAGE_TARGET_ARCH == 90
  if (qk_type == SAGE_QK_INT8 && pv_type == SAGE_PV_FP8) return SAGE_FAMILY_WGMMA;
  if (qk_type == SAGE_QK_INT4) {
    fail(SAGE_ERR_UNSUPPORTED,
         "INT4 QK on sm_90a runs emulated (~25x slower than INT8), so AUTO never picks it; use INT8 or force "
         "family MMA_SYNC");
    return -1;
  }
  return SAGE_FAMILY_MMA_SYNC;  // FP16 PV: mma.sync is native on Hopper
#else
  (void)qk_type;
  (void)pv_type;
  return SAGE_FAMILY_MMA_SYNC;
#endif
}

int check_attn(const SageAttnParams& p) {
  SAGE_TRY(check_shape(p.batch, p.heads_q, p.heads_kv, p.head_dim));
  SAGE_TRY(check_seq("seq_q", p.seq_q, p.seq_q_pad));
  SAGE_TRY(check_seq("seq_k", p.seq_k, p.seq_k_pad));
  SAGE_REQUIRE(p.dtype == SAGE_FP16 || p.dtype == SAGE_BF16, "dtype must be SAGE_FP16 or SAGE_BF16, got %d", p.dtype);
  SAGE_REQUIRE(p.qk_type == SAGE_QK_INT8 || p.qk_type == SAGE_QK_INT4, "qk_type must be INT8 or INT4, got %d", p.qk_type);
  SAGE_REQUIRE(p.granularity >= SAGE_PER_THREAD && p.granularity <= SAGE_PER_BLOCK, "granularity out of range: %d", p.granularity);
  SAGE_REQUIRE(p.pv_type == SAGE_PV_FP8 || p.pv_type == SAGE_PV_FP16, "pv_type must be FP8 or FP16, got %d", p.pv_type);
  SAGE_REQUIRE(p.pv_accum == SAGE_PV_TWO_LEVEL || p.pv_accum == SAGE_PV_NARROW, "pv_accum out of range: %d", p.pv_accum);
  SAGE_REQUIRE(p.causal == 0 || p.causal == 1, "causal must be 0 or 1, got %d", p.causal);
  SAGE_REQUIRE(p.family >= SAGE_FAMILY_AUTO && p.family <= SAGE_FAMILY_WGMMA, "family out of range: %d", p.family);
  SAGE_REQUIRE(std::isfinite(p.sm_scale) && p.sm_scale > 0.f, "sm_scale must be finite and > 0, got %g", (double)p.sm_scale);
  SAGE_TRY(check_out("q_int", p.q_int));
  SAGE_TRY(check_out("k_int", p.k_int));
  SAGE_REQUIRE(p.q_scale != nullptr && p.k_scale != nullptr, "q_scale and k_scale must not be NULL");
  if (p.pv_type == SAGE_PV_FP8) {
    SAGE_TRY(check_out("v (fp8, transposed)", p.v));
    SAGE_REQUIRE(p.v_scale != nullptr, "v_scale must not be NULL with FP8 PV");
  } else {
    SAGE_TRY(check_input("v", p.v, p.v_stride_b, p.v_stride_h, p.v_stride_n));
  }
  SAGE_TRY(check_input("o", p.o, p.o_stride_b, p.o_stride_h, p.o_stride_n));
  return SAGE_OK;
}

}  // namespace

int fail(int code, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
  va_end(args);
  return code;
}

}  // namespace sage

using sage::check_input;
using sage::check_out;
using sage::check_seq;
using sage::check_shape;

extern "C" {

int sage_abi_version(void) { return SAGE_ABI_VERSION; }

int sage_compiled_arch(void) { return SAGE_TARGET_ARCH; }

const char* sage_last_error(void) { return sage::g_last_error; }

int sage_attn_blk_k(int32_t head_dim, int32_t qk_type, int32_t pv_type, int32_t family) {
  const int fam = sage::resolve_family(family, qk_type, pv_type);
  if (fam == SAGE_FAMILY_MMA_SYNC) {
#ifdef SAGE_HAVE_SM80
    if (sage::sm80_attn_blk_k != nullptr) return sage::sm80_attn_blk_k(head_dim, qk_type, pv_type);
#endif
  } else if (fam == SAGE_FAMILY_WGMMA) {
#if defined(SAGE_WITH_SM90) && defined(SAGE_HAVE_SM90)
    if (sage::sm90_attn_blk_k != nullptr) return sage::sm90_attn_blk_k(head_dim, qk_type, pv_type);
#endif
  }
  return 0;
}

int sage_quantize(const SageQuantParams* p, sage_stream_t stream) {
  SAGE_REQUIRE(p != nullptr, "sage_quantize: params is NULL");
  SAGE_TRY(check_shape(p->batch, p->heads_q, p->heads_kv, p->head_dim));
  SAGE_TRY(check_seq("seq_q", p->seq_q, p->seq_q_pad));
  SAGE_TRY(check_seq("seq_k", p->seq_k, p->seq_k_pad));
  SAGE_REQUIRE(p->dtype == SAGE_FP16 || p->dtype == SAGE_BF16, "dtype must be SAGE_FP16 or SAGE_BF16, got %d", p->dtype);
  SAGE_REQUIRE(p->qk_type == SAGE_QK_INT8 || p->qk_type == SAGE_QK_INT4, "qk_type must be INT8 or INT4, got %d", p->qk_type);
  SAGE_REQUIRE(p->granularity >= SAGE_PER_THREAD && p->granularity <= SAGE_PER_BLOCK, "granularity out of range: %d", p->granularity);
  SAGE_REQUIRE(p->smooth_q == 0 || p->smooth_q == 1, "smooth_q must be 0 or 1, got %d", p->smooth_q);
  SAGE_REQUIRE(p->smooth_v == 0 || p->smooth_v == 1, "smooth_v must be 0 or 1, got %d", p->smooth_v);
  SAGE_TRY(check_input("q", p->q, p->q_stride_b, p->q_stride_h, p->q_stride_n));
  SAGE_TRY(check_input("k", p->k, p->k_stride_b, p->k_stride_h, p->k_stride_n));
  SAGE_TRY(check_out("q_int", p->q_int));
  SAGE_TRY(check_out("k_int", p->k_int));
  SAGE_REQUIRE(p->q_scale && p->k_scale && p->k_mean, "q_scale, k_scale and k_mean must not be NULL");
  SAGE_REQUIRE(!p->smooth_q || p->q_mean, "q_mean must not be NULL with smooth_q");
  SAGE_TRY(check_out("workspace", p->workspace));
  if (p->v != nullptr) {
    SAGE_TRY(check_input("v", p->v, p->v_stride_b, p->v_stride_h, p->v_stride_n));
    SAGE_TRY(check_out("v_fp8", p->v_fp8));
    SAGE_REQUIRE(p->v_scale != nullptr, "v_scale must not be NULL");
    SAGE_REQUIRE(!p->smooth_v || p->v_mean, "v_mean must not be NULL with smooth_v");
  }
  const int rc = sage::quantize(*p, reinterpret_cast<cudaStream_t>(stream));
  if (rc != SAGE_OK) return rc;
  SAGE_CHECK_LAUNCH("sage_quantize");
  return SAGE_OK;
}

int sage_attn_fwd(const SageAttnParams* p, sage_stream_t stream) {
  SAGE_REQUIRE(p != nullptr, "sage_attn_fwd: params is NULL");
  SAGE_TRY(sage::check_attn(*p));
  const int fam = sage::resolve_family(p->family, p->qk_type, p->pv_type);
  if (fam < 0) return SAGE_ERR_UNSUPPORTED;
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  int rc = SAGE_ERR_UNSUPPORTED;
  if (fam == SAGE_FAMILY_MMA_SYNC) {
#ifdef SAGE_HAVE_SM80
    if (sage::sm80_attn_fwd == nullptr)
      return sage::fail(SAGE_ERR_UNSUPPORTED, "csrc/sm80 was compiled in but does not define sage::sm80_attn_fwd");
    rc = sage::sm80_attn_fwd(*p, s);
#else
    return sage::fail(SAGE_ERR_UNSUPPORTED, "this library was built without the mma.sync family (no csrc/sm80 sources)");
#endif
  } else {
#if defined(SAGE_WITH_SM90) && defined(SAGE_HAVE_SM90)
    if (sage::sm90_attn_fwd == nullptr)
      return sage::fail(SAGE_ERR_UNSUPPORTED, "csrc/sm90 was compiled in but does not define sage::sm90_attn_fwd");
    rc = sage::sm90_attn_fwd(*p, s);
#elif defined(SAGE_WITH_SM90)
    return sage::fail(SAGE_ERR_UNSUPPORTED, "this library was built without the wgmma family (no csrc/sm90 sources)");
#else
    return sage::fail(SAGE_ERR_UNSUPPORTED, "the wgmma family needs the sm_90a library; this one is for sm_%d", SAGE_TARGET_ARCH);
#endif
  }
  if (rc != SAGE_OK) return rc;
  SAGE_CHECK_LAUNCH("sage_attn_fwd");
  return SAGE_OK;
}

}  // extern "C"
