// Host entry of the sm90 attention family beyond internal.h: the same launch with the K shared-memory
// order chosen explicitly (tests compare both; sm90_attn_fwd picks kPermuted and falls back to kNatural
// if the driver refuses the permuted tensor map).
#pragma once
#include <cuda_runtime.h>

#include "../common/internal.h"

namespace sage {

enum Sm90KOrderChoice { SM90_K_AUTO = 0, SM90_K_PERMUTED = 1, SM90_K_NATURAL = 2 };

int sm90_attn_fwd_k_order(const SageAttnParams& p, cudaStream_t stream, int k_order);

}  // namespace sage
