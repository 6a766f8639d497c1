// Counters that blocks of one grid use to wait for each other (device scope): a block raises a count
// with release semantics once its writes are issued, another reads it with acquire semantics before it
// reads them. Waiting on other blocks is safe only where they are sure to be resident or to become so
// (see the caller's argument: qkv_resident.cuh).
#pragma once
#include <cstdint>

namespace sage {

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void add_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

}  // namespace sage
