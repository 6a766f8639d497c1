// Host side of the sm80 family: validation, the one place where kernel instantiations are generated
// (QK type x PV type x dtype x head dim), and the launch.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include "../common/groups.h"
#include "../common/internal.h"
#include "kernel.cuh"

namespace sage {
namespace {

using sm80::KernelParams;
using sm80::Traits;

template <int V>
using Int = std::integral_constant<int, V>;

// Calls f(Int<qk>, Int<pv>, Int<dtype>, Int<head_dim>) with the runtime values as compile-time constants.
// Every combination listed here is instantiated; the caller has validated the values first.
template <class F>
int dispatch(int qk, int pv, int dtype, int head_dim, F&& f) {
  auto with_d = [&](auto qk_c, auto pv_c, auto dt_c) {
    return head_dim == 64 ? f(qk_c, pv_c, dt_c, Int<64>{}) : f(qk_c, pv_c, dt_c, Int<128>{});
  };
  auto with_dt = [&](auto qk_c, auto pv_c) {
    return dtype == SAGE_BF16 ? with_d(qk_c, pv_c, Int<SAGE_BF16>{}) : with_d(qk_c, pv_c, Int<SAGE_FP16>{});
  };
  auto with_pv = [&](auto qk_c) {
    return pv == SAGE_PV_FP8 ? with_dt(qk_c, Int<SAGE_PV_FP8>{}) : with_dt(qk_c, Int<SAGE_PV_FP16>{});
  };
  return qk == SAGE_QK_INT4 ? with_pv(Int<SAGE_QK_INT4>{}) : with_pv(Int<SAGE_QK_INT8>{});
}

bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// What this kernel itself relies on (api.cu validates the ABI-level rules too; this keeps the family
// safe when called directly).
int validate(const SageAttnParams& p) {
  if (p.head_dim != 64 && p.head_dim != 128) return fail(SAGE_ERR_UNSUPPORTED, "mma_sync attention: head_dim %d (64 or 128)", p.head_dim);
  if (p.qk_type != SAGE_QK_INT8 && p.qk_type != SAGE_QK_INT4) return fail(SAGE_ERR_INVALID, "mma_sync attention: qk_type %d", p.qk_type);
  if (p.pv_type != SAGE_PV_FP8 && p.pv_type != SAGE_PV_FP16) return fail(SAGE_ERR_INVALID, "mma_sync attention: pv_type %d", p.pv_type);
  if (p.dtype != SAGE_FP16 && p.dtype != SAGE_BF16) return fail(SAGE_ERR_INVALID, "mma_sync attention: dtype %d", p.dtype);
  if (p.granularity < SAGE_PER_THREAD || p.granularity > SAGE_PER_BLOCK) return fail(SAGE_ERR_INVALID, "mma_sync attention: granularity %d", p.granularity);
  if (p.pv_accum != SAGE_PV_TWO_LEVEL && p.pv_accum != SAGE_PV_NARROW) return fail(SAGE_ERR_INVALID, "mma_sync attention: pv_accum %d", p.pv_accum);
  if (p.batch < 1 || p.heads_q < 1 || p.heads_kv < 1 || p.heads_q % p.heads_kv)
    return fail(SAGE_ERR_INVALID, "mma_sync attention: batch %d, heads %d/%d (Hq must be a multiple of Hkv)", p.batch, p.heads_q, p.heads_kv);
  if (p.seq_q < 1 || p.seq_k < 1) return fail(SAGE_ERR_INVALID, "mma_sync attention: empty sequence (Nq %d, Nk %d)", p.seq_q, p.seq_k);
  if (p.seq_q_pad < p.seq_q || p.seq_k_pad < p.seq_k || p.seq_q_pad % SAGE_SEQ_PAD || p.seq_k_pad % SAGE_SEQ_PAD)
    return fail(SAGE_ERR_INVALID, "mma_sync attention: padded lengths %d/%d must cover Nq/Nk and be multiples of %d", p.seq_q_pad, p.seq_k_pad, SAGE_SEQ_PAD);
  if (p.batch > 65535 || p.heads_q > 65535) return fail(SAGE_ERR_UNSUPPORTED, "mma_sync attention: batch or heads above 65535");
  if (!p.q_int || !p.k_int || !p.v || !p.q_scale || !p.k_scale || !p.o)
    return fail(SAGE_ERR_INVALID, "mma_sync attention: a required pointer is NULL");
  if (!aligned(p.q_int, 16) || !aligned(p.k_int, 16) || !aligned(p.v, 16) || !aligned(p.o, 4))
    return fail(SAGE_ERR_INVALID, "mma_sync attention: q_int/k_int/v must be 16-byte aligned and o 4-byte aligned");
  if (p.o_stride_b % 2 || p.o_stride_h % 2 || p.o_stride_n % 2)
    return fail(SAGE_ERR_INVALID, "mma_sync attention: o strides must be even (two outputs per 4-byte store)");
  if (p.pv_type == SAGE_PV_FP8) {
    if (!p.v_scale) return fail(SAGE_ERR_INVALID, "mma_sync attention: FP8 P.V needs v_scale");
  } else if (p.v_stride_b % 8 || p.v_stride_h % 8 || p.v_stride_n % 8) {
    return fail(SAGE_ERR_INVALID, "mma_sync attention: V strides must be multiples of 8 elements (16-byte rows)");
  }
  if (!(p.sm_scale > 0.f) || !std::isfinite(p.sm_scale)) return fail(SAGE_ERR_INVALID, "mma_sync attention: sm_scale must be positive and finite");
  return SAGE_OK;
}

template <class T>
int launch(const SageAttnParams& a, cudaStream_t stream) {
  auto kernel = sm80::attn_fwd_kernel<T>;
  // Once per instantiation: the arch of the code that will run (FP8 needs sm_89's e4m3 mma) and the
  // dynamic shared memory opt-in above 48 KB.
  static const int binary_arch = [&] {
    cudaFuncAttributes attr{};
    if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) return -1;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes) != cudaSuccess)
      return -1;
    return attr.binaryVersion;
  }();
  if (binary_arch < 0) {
    return fail(SAGE_ERR_CUDA, "mma_sync attention: cannot set up the kernel: %s", cudaGetErrorString(cudaGetLastError()));
  }
  if (T::kFp8PV && binary_arch < 89) {
    return fail(SAGE_ERR_UNSUPPORTED, "mma_sync attention: FP8 P.V needs sm_89+ (e4m3 mma.sync); this code is sm_%d", binary_arch);
  }

  KernelParams p{};
  p.q = static_cast<const uint8_t*>(a.q_int);
  p.k = static_cast<const uint8_t*>(a.k_int);
  p.v = static_cast<const uint8_t*>(a.v);
  p.q_scale = a.q_scale;
  p.k_scale = a.k_scale;
  p.v_scale = a.v_scale;
  p.v_mean = a.v_mean;
  p.ds = a.ds;
  p.o = a.o;
  p.lse = a.lse;
  p.v_stride_b = a.v_stride_b;
  p.v_stride_h = a.v_stride_h;
  p.v_stride_n = a.v_stride_n;
  p.o_stride_b = a.o_stride_b;
  p.o_stride_h = a.o_stride_h;
  p.o_stride_n = a.o_stride_n;
  p.heads_q = a.heads_q;
  p.heads_kv = a.heads_kv;
  p.group_size = a.heads_q / a.heads_kv;
  p.seq_q = a.seq_q;
  p.seq_k = a.seq_k;
  p.seq_q_pad = a.seq_q_pad;
  p.seq_k_pad = a.seq_k_pad;
  p.q_groups = num_q_groups(a.seq_q_pad, a.granularity);
  p.k_groups = num_k_groups(a.seq_k_pad, a.granularity);
  p.granularity = a.granularity;
  p.causal = a.causal != 0;
  p.narrow = a.pv_accum == SAGE_PV_NARROW;
  p.scale_log2 = a.sm_scale * 1.4426950408889634f;

  const dim3 grid((a.seq_q + T::kBlockQ - 1) / T::kBlockQ, a.heads_q, a.batch);
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return fail(SAGE_ERR_CUDA, "mma_sync attention launch: %s", cudaGetErrorString(err));
  return SAGE_OK;
}

}  // namespace

int sm80_attn_blk_k(int head_dim, int qk_type, int pv_type) {
  const bool ok = (head_dim == 64 || head_dim == 128) && (qk_type == SAGE_QK_INT8 || qk_type == SAGE_QK_INT4) &&
                  (pv_type == SAGE_PV_FP8 || pv_type == SAGE_PV_FP16);
  return ok ? 64 : 0;  // = Traits<...>::kBlockK for every instantiation
}

int sm80_attn_fwd(const SageAttnParams& p, cudaStream_t stream) {
  if (const int err = validate(p)) return err;
  return dispatch(p.qk_type, p.pv_type, p.dtype, p.head_dim, [&](auto qk, auto pv, auto dt, auto d) {
    return launch<Traits<decltype(qk)::value, decltype(pv)::value, decltype(dt)::value, decltype(d)::value>>(p, stream);
  });
}

}  // namespace sage
