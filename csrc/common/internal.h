// Internal (C++) entry points of each kernel family, called by csrc/api.cu's dispatch. Not part of the ABI.
#pragma once
#include "../sage_abi.h"
#include <cuda_runtime.h>

namespace sage {

// Records a one-line reason for sage_last_error() and returns the code (thread-local; defined in api.cu).
int fail(int code, const char* fmt, ...);

// mma.sync family (csrc/sm80/): sm_80, sm_86, sm_89, and sm_90a for testing. INT4/INT8 QK, FP8/FP16 PV.
int sm80_attn_fwd(const SageAttnParams& p, cudaStream_t stream);
int sm80_attn_blk_k(int head_dim, int qk_type, int pv_type);

#ifdef SAGE_WITH_SM90
// wgmma + TMA family (csrc/sm90/): sm_90a only. INT8 QK, FP8 PV.
int sm90_attn_fwd(const SageAttnParams& p, cudaStream_t stream);
int sm90_attn_blk_k(int head_dim, int qk_type, int pv_type);
#endif

// Quantization (csrc/quant/), shared by every family.
int quantize(const SageQuantParams& p, cudaStream_t stream);

}  // namespace sage
