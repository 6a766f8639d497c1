// The 32-bit shared-window address of a pointer into shared memory, as PTX's .shared instructions
// (cp.async, ld/st.shared, mbarrier, TMA, wgmma descriptors) take it.
#pragma once
#include <stdint.h>

namespace sage {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

}  // namespace sage
