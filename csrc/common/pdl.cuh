// Programmatic dependent launch (Hopper and newer): a kernel launched by launch_pdl() may be scheduled while
// the kernel before it on the stream is still running its last blocks, so that its launch and prologue
// hide under that tail. It must call pdl_wait() before it reads anything the earlier kernel writes (the
// wait returns once that grid has completed and its writes are visible). pdl_allow_dependents() lets the
// next kernel be scheduled before this one ends. Older targets launch normally and both calls are no-ops,
// as they are for a kernel launched without the attribute.
#pragma once
#include <cuda_runtime.h>

#include <utility>

namespace sage {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = SAGE_TARGET_ARCH >= 90 ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace sage
