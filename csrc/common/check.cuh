// Error handling shared by api.cu and the quantization kernels: every failure becomes a SAGE_ERR_* code
// plus one line in sage_last_error() (through sage::fail, defined in api.cu). Host code only.
#pragma once
#include <cuda_runtime.h>

#include "internal.h"

// Return SAGE_ERR_CUDA with the failing expression and CUDA's message when a runtime call fails.
#define SAGE_CUDA_TRY(expr)                                                                   \
  do {                                                                                        \
    cudaError_t sage_err_ = (expr);                                                           \
    if (sage_err_ != cudaSuccess)                                                             \
      return ::sage::fail(SAGE_ERR_CUDA, "%s: %s", #expr, cudaGetErrorString(sage_err_));     \
  } while (0)

// After a kernel launch: a bad configuration (too much shared memory, no kernel image for this GPU)
// only shows up in cudaGetLastError, and reading it here keeps it from surfacing in torch's next call.
#define SAGE_CHECK_LAUNCH(what)                                                               \
  do {                                                                                        \
    cudaError_t sage_err_ = cudaGetLastError();                                               \
    if (sage_err_ != cudaSuccess)                                                             \
      return ::sage::fail(SAGE_ERR_CUDA, "launch of %s failed: %s", what,                     \
                          cudaGetErrorString(sage_err_));                                     \
  } while (0)

// Parameter validation: SAGE_ERR_INVALID and a one-line reason when cond is false.
#define SAGE_REQUIRE(cond, ...)                                                               \
  do {                                                                                        \
    if (!(cond)) return ::sage::fail(SAGE_ERR_INVALID, __VA_ARGS__);                          \
  } while (0)
