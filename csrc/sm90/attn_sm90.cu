// Host side of the sm90 attention: validate SageAttnParams, build the TMA tensor maps, pick the kernel
// instance (head dim x causal x smooth-Q bias x K order x accumulator x epilogue constants), launch a
// persistent grid.
#include <cuda.h>
#include <cuda_runtime.h>

#include "../common/check.cuh"
#include "../common/groups.h"
#include "../common/internal.h"
#include "../common/pdl.cuh"
#include "../common/tma.cuh"
#include "kernel.cuh"
#include "sm90_attn.h"

namespace sage {
namespace {

using sm90::KOrder;
using sm90::Sm90AttnTraits;
using sm90::Sm90Params;

template <class Traits>
int make_maps(const SageAttnParams& p, CUtensorMap* tq, CUtensorMap* tk, CUtensorMap* tv) {
  constexpr int D = Traits::D;
  const uint64_t bhq = static_cast<uint64_t>(p.batch) * p.heads_q;
  const uint64_t bhk = static_cast<uint64_t>(p.batch) * p.heads_kv;
  {  // Q: [B*Hq][Nq_pad][D], box = one Q block (kBlkQ rows; those past Nq_pad read as zeros).
    const uint64_t dims[3] = {D, static_cast<uint64_t>(p.seq_q_pad), bhq};
    const uint64_t strides[2] = {D, static_cast<uint64_t>(p.seq_q_pad) * D};
    const uint32_t box[3] = {D, Traits::kBlkQ, 1};
    if (int r = sm90::encode_byte_tensor_map(tq, p.q_int, 3, dims, strides, box, Traits::kQKTmaSwizzle))
      return fail(SAGE_ERR_CUDA, "sm90: cuTensorMapEncodeTiled(Q) failed with CUresult %d", r);
  }
  if constexpr (Traits::kKOrder == KOrder::kPermuted) {
    // K: token t = 16 * chunk + 4 * q + 2 * j' + e, laid out in shared memory in the order (e, q, j', chunk):
    // row n = e + 2q + 8j' + 16 * chunk (see p_fragment.cuh).
    const uint64_t dims[5] = {D, 2, 4, 2, bhk * p.seq_k_pad / 16};
    const uint64_t strides[4] = {D, 4ull * D, 2ull * D, 16ull * D};
    const uint32_t box[5] = {D, 2, 4, 2, Traits::kBlkK / 16};
    if (int r = sm90::encode_byte_tensor_map(tk, p.k_int, 5, dims, strides, box, Traits::kQKTmaSwizzle))
      return fail(SAGE_ERR_CUDA, "sm90: cuTensorMapEncodeTiled(K, permuted) failed with CUresult %d", r);
  } else {
    const uint64_t dims[3] = {D, static_cast<uint64_t>(p.seq_k_pad), bhk};
    const uint64_t strides[2] = {D, static_cast<uint64_t>(p.seq_k_pad) * D};
    const uint32_t box[3] = {D, Traits::kBlkK, 1};
    if (int r = sm90::encode_byte_tensor_map(tk, p.k_int, 3, dims, strides, box, Traits::kQKTmaSwizzle))
      return fail(SAGE_ERR_CUDA, "sm90: cuTensorMapEncodeTiled(K) failed with CUresult %d", r);
  }
  {  // V^T: [B*Hkv][D][Nk_pad], box = D channels x 128 tokens.
    const uint64_t dims[3] = {static_cast<uint64_t>(p.seq_k_pad), D, bhk};
    const uint64_t strides[2] = {static_cast<uint64_t>(p.seq_k_pad), static_cast<uint64_t>(p.seq_k_pad) * D};
    const uint32_t box[3] = {Traits::kBlkK, D, 1};
    if (int r = sm90::encode_byte_tensor_map(tv, p.v, 3, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B))
      return fail(SAGE_ERR_CUDA, "sm90: cuTensorMapEncodeTiled(V) failed with CUresult %d", r);
  }
  return SAGE_OK;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 132;
  return n;
}

template <int D, KOrder ORDER, int CONSUMERS, bool CAUSAL, bool HAS_DS, bool NARROW, bool V_SMEM>
int launch(const SageAttnParams& p, const Sm90Params& params, cudaStream_t stream) {
  using Traits = Sm90AttnTraits<D, ORDER, CONSUMERS>;
  Sm90Params kp = params;  // the work tiles: Q blocks of this instance's kBlkQ rows
  kp.num_q_blocks = (p.seq_q + Traits::kBlkQ - 1) / Traits::kBlkQ;
  kp.num_tiles = p.batch * p.heads_q * kp.num_q_blocks;
  CUtensorMap tq, tk, tv;
  if (int r = make_maps<Traits>(p, &tq, &tk, &tv)) return r;
  auto kernel = sm90::sm90_attn_kernel<Traits, CAUSAL, HAS_DS, NARROW, V_SMEM>;
  SAGE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(Traits::kSmemBytes)));
  const int sms = sm_count();
  const int grid = kp.num_tiles < sms ? kp.num_tiles : sms;
  SAGE_CUDA_TRY(launch_pdl(kernel, grid, Traits::kThreads, Traits::kSmemBytes, stream, tq, tk, tv, kp));
  SAGE_CHECK_LAUNCH("sm90_attn_kernel");
  return SAGE_OK;
}

// The epilogue's V constants from shared memory (kernel.cuh, V_SMEM) pay where work tiles are short: measured
// on an H200 at D=128 non-causal +1.9% (4k), +0.9% (8k), +0.5% (16k), but -0.4% at 32k and -1.1% at D=64
// 32k (bench/NOTES.md), so only D=128 non-causal instances have it, for Nk up to kVSmemMaxKTiles K tiles
// (and V constants 16-byte aligned, as its cp.async needs; the ABI asks for 8). Two-consumer instances only:
// the three-consumer ones serve long sequences (three_consumers_pay).
constexpr int kVSmemMaxKTiles = 128;

template <int D, KOrder ORDER, int CONSUMERS, bool CAUSAL, bool HAS_DS, bool NARROW>
int dispatch_v_consts(const SageAttnParams& p, const Sm90Params& kp, cudaStream_t s) {
  if constexpr (CONSUMERS == 2 && !CAUSAL) {
    if (p.seq_k_pad / Sm90AttnTraits<D, ORDER, CONSUMERS>::kBlkK <= kVSmemMaxKTiles && aligned16(p.v_scale) &&
        (!p.v_mean || aligned16(p.v_mean)))
      return launch<D, ORDER, CONSUMERS, CAUSAL, HAS_DS, NARROW, true>(p, kp, s);
  }
  return launch<D, ORDER, CONSUMERS, CAUSAL, HAS_DS, NARROW, false>(p, kp, s);
}

template <int D, KOrder ORDER, int CONSUMERS, bool CAUSAL, bool HAS_DS>
int dispatch_narrow(const SageAttnParams& p, const Sm90Params& kp, cudaStream_t s) {
  return kp.narrow ? dispatch_v_consts<D, ORDER, CONSUMERS, CAUSAL, HAS_DS, true>(p, kp, s)
                   : dispatch_v_consts<D, ORDER, CONSUMERS, CAUSAL, HAS_DS, false>(p, kp, s);
}

template <int D, KOrder ORDER, int CONSUMERS, bool CAUSAL>
int dispatch_ds(const SageAttnParams& p, const Sm90Params& kp, cudaStream_t s) {
  return p.ds ? dispatch_narrow<D, ORDER, CONSUMERS, CAUSAL, true>(p, kp, s)
              : dispatch_narrow<D, ORDER, CONSUMERS, CAUSAL, false>(p, kp, s);
}

// D = 128 non-causal: three consumers (192-row Q blocks, each row faster) unless they cost the persistent grid
// more rounds of Q rows than two (128-row blocks). B=1, H=32: at 4k 704 tiles are 6 rounds of 192 rows on
// 132 SMs against 1024 = 8 rounds of 128 (1152 rows > 1024: two); at 32k 42 x 192 = 63 x 128 (three).
// Causal tiles differ in length and are handed out dynamically, so rounds do not quantize them: three.
bool three_consumers_pay(const SageAttnParams& p) {
  const int64_t bh = static_cast<int64_t>(p.batch) * p.heads_q, sms = sm_count();
  auto row_rounds = [&](int64_t blk_q) {
    const int64_t tiles = bh * ((p.seq_q + blk_q - 1) / blk_q);
    return (tiles + sms - 1) / sms * blk_q;
  };
  return row_rounds(Sm90AttnTraits<128, KOrder::kPermuted, 3>::kBlkQ) <=
         row_rounds(Sm90AttnTraits<128, KOrder::kPermuted, 2>::kBlkQ);
}

template <int D, KOrder ORDER>
int dispatch_flags(const SageAttnParams& p, const Sm90Params& kp, cudaStream_t s) {
  if (p.causal) return dispatch_ds<D, ORDER, 3, true>(p, kp, s);
  if constexpr (D == 128) {
    if (!three_consumers_pay(p)) return dispatch_ds<D, ORDER, 2, false>(p, kp, s);
  }
  return dispatch_ds<D, ORDER, 3, false>(p, kp, s);
}

template <KOrder ORDER>
int dispatch(const SageAttnParams& p, const Sm90Params& kp, cudaStream_t s) {
  return p.head_dim == 128 ? dispatch_flags<128, ORDER>(p, kp, s) : dispatch_flags<64, ORDER>(p, kp, s);
}

int validate(const SageAttnParams& p) {
  SAGE_REQUIRE(p.qk_type == SAGE_QK_INT8, "sm90 kernel: only INT8 QK (INT4 mma is emulated on Hopper), got qk_type %d", p.qk_type);
  SAGE_REQUIRE(p.pv_type == SAGE_PV_FP8, "sm90 kernel: only FP8 PV, got pv_type %d", p.pv_type);
  SAGE_REQUIRE(p.head_dim == 64 || p.head_dim == 128, "sm90 kernel: head_dim must be 64 or 128, got %d", p.head_dim);
  SAGE_REQUIRE(p.dtype == SAGE_FP16 || p.dtype == SAGE_BF16, "sm90 kernel: dtype must be fp16 or bf16, got %d", p.dtype);
  SAGE_REQUIRE(p.granularity >= SAGE_PER_THREAD && p.granularity <= SAGE_PER_BLOCK, "sm90 kernel: bad granularity %d", p.granularity);
  SAGE_REQUIRE(p.pv_accum == SAGE_PV_TWO_LEVEL || p.pv_accum == SAGE_PV_NARROW, "sm90 kernel: bad pv_accum %d", p.pv_accum);
  SAGE_REQUIRE(p.batch > 0 && p.heads_q > 0 && p.heads_kv > 0 && p.heads_q % p.heads_kv == 0,
               "sm90 kernel: need batch, heads > 0 and heads_q %% heads_kv == 0 (got %d, %d, %d)", p.batch, p.heads_q, p.heads_kv);
  SAGE_REQUIRE(p.seq_q > 0 && p.seq_k > 0, "sm90 kernel: empty sequence (seq_q %d, seq_k %d)", p.seq_q, p.seq_k);
  SAGE_REQUIRE(p.seq_q_pad >= p.seq_q && p.seq_q_pad % SAGE_SEQ_PAD == 0 && p.seq_k_pad >= p.seq_k &&
                   p.seq_k_pad % SAGE_SEQ_PAD == 0,
               "sm90 kernel: seq pads (%d, %d) must be multiples of %d covering (%d, %d)", p.seq_q_pad, p.seq_k_pad,
               SAGE_SEQ_PAD, p.seq_q, p.seq_k);
  SAGE_REQUIRE(p.q_int && p.k_int && p.v && p.q_scale && p.k_scale && p.v_scale && p.o, "sm90 kernel: a required pointer is NULL");
  SAGE_REQUIRE(!p.causal || p.tile_counter, "sm90 kernel: causal attention needs tile_counter (SAGE_TILE_COUNTER_INTS zeros)");
  SAGE_REQUIRE(aligned16(p.q_int) && aligned16(p.k_int) && aligned16(p.v), "sm90 kernel: q_int, k_int and v must be 16-byte aligned");
  SAGE_REQUIRE(aligned16(p.o) && p.o_stride_b % 8 == 0 && p.o_stride_h % 8 == 0 && p.o_stride_n % 8 == 0,
               "sm90 kernel: O must be 16-byte aligned with strides of whole 16-byte rows (8 channels are stored at once)");
  SAGE_REQUIRE((reinterpret_cast<uintptr_t>(p.v_scale) & 7) == 0 && (!p.v_mean || (reinterpret_cast<uintptr_t>(p.v_mean) & 7) == 0) &&
                   (!p.ds || (reinterpret_cast<uintptr_t>(p.ds) & 7) == 0),
               "sm90 kernel: v_scale, v_mean and ds must be 8-byte aligned");
  return SAGE_OK;
}

}  // namespace

int sm90_attn_blk_k(int head_dim, int qk_type, int pv_type) {
  const bool ok = (head_dim == 64 || head_dim == 128) && qk_type == SAGE_QK_INT8 && pv_type == SAGE_PV_FP8;
  return ok ? Sm90AttnTraits<128, KOrder::kPermuted, 2>::kBlkK : 0;
}

int sm90_attn_fwd_k_order(const SageAttnParams& p, cudaStream_t stream, int k_order) {
  if (int r = validate(p)) return r;
  Sm90Params kp{};
  kp.q_scale = p.q_scale;
  kp.k_scale = p.k_scale;
  kp.v_scale = p.v_scale;
  kp.v_mean = p.v_mean;
  kp.ds = p.ds;
  kp.o = p.o;
  kp.o_stride_b = p.o_stride_b;
  kp.o_stride_h = p.o_stride_h;
  kp.o_stride_n = p.o_stride_n;
  kp.lse = p.lse;
  kp.tile_counter = p.tile_counter;
  kp.batch = p.batch;
  kp.heads_q = p.heads_q;
  kp.heads_kv = p.heads_kv;
  kp.seq_q = p.seq_q;
  kp.seq_k = p.seq_k;
  kp.seq_q_pad = p.seq_q_pad;
  kp.seq_k_pad = p.seq_k_pad;
  kp.group = p.heads_q / p.heads_kv;
  kp.granularity = p.granularity;
  kp.narrow = p.pv_accum == SAGE_PV_NARROW;
  kp.out_bf16 = p.dtype == SAGE_BF16;
  kp.nq_groups = num_q_groups(p.seq_q_pad, p.granularity);
  kp.nk_groups = num_k_groups(p.seq_k_pad, p.granularity);
  kp.scale_log2 = p.sm_scale * 1.4426950408889634f;

  if (k_order == SM90_K_NATURAL) return dispatch<KOrder::kNatural>(p, kp, stream);
  const int r = dispatch<KOrder::kPermuted>(p, kp, stream);
  // The permuted K map uses non-monotonic strides; should a driver refuse it, the shuffle path serves.
  if (r == SAGE_ERR_CUDA && k_order == SM90_K_AUTO) return dispatch<KOrder::kNatural>(p, kp, stream);
  return r;
}

int sm90_attn_fwd(const SageAttnParams& p, cudaStream_t stream) { return sm90_attn_fwd_k_order(p, stream, SM90_K_AUTO); }

}  // namespace sage

#ifdef SAGE_TRACE
// bench/tile_trace.py's reads of the clock stamps (trace.cuh); only in its own build of the library.
extern "C" int sage_trace_read(void* tiles, size_t tile_bytes, void* steps, size_t step_bytes) {
  if (tile_bytes != sizeof(sage::sm90::g_trace) || step_bytes != sizeof(sage::sm90::g_trace_steps)) return 1;
  return cudaMemcpyFromSymbol(tiles, sage::sm90::g_trace, tile_bytes) == cudaSuccess &&
                 cudaMemcpyFromSymbol(steps, sage::sm90::g_trace_steps, step_bytes) == cudaSuccess
             ? 0
             : 1;
}
extern "C" int sage_trace_clear() {
  void* tiles = nullptr;
  void* steps = nullptr;
  if (cudaGetSymbolAddress(&tiles, sage::sm90::g_trace) != cudaSuccess ||
      cudaGetSymbolAddress(&steps, sage::sm90::g_trace_steps) != cudaSuccess)
    return 1;
  return cudaMemset(tiles, 0, sizeof(sage::sm90::g_trace)) == cudaSuccess &&
                 cudaMemset(steps, 0, sizeof(sage::sm90::g_trace_steps)) == cudaSuccess
             ? 0
             : 1;
}
#endif
