// GPU check behind csrc/common/numeric.cuh's div_rn_by: with inv = __frcp_rn(s), it returns the same float
// as __fdiv_rn(x, s), bit for bit, over random (x, s) pairs of the quantization ranges: s a normal float in
// [1e-10, 2e30]; |x / s| <= 127.5 (INT8), one pair in eight on a rounding tie of x / s, one in eight up to
// 1e4 (FP8 V under a static scale, which saturates). Where |x / s| <= 127.5 it also checks quantize_rn_bits
// (the integer rounding by adding 1.5 * 2^23) against __float2int_rn(__fdiv_rn(x, s)), and its low byte.
// Usage: div_rn_by_check [log2 of the pair count, default 28]. Prints one line; exit 1 on any difference.
#include <cstdio>
#include <cstdint>
#include <cstdlib>

#include "../../csrc/common/numeric.cuh"

__device__ uint32_t mix(uint64_t i) {
  i ^= i >> 33;
  i *= 0xff51afd7ed558ccdULL;
  i ^= i >> 33;
  i *= 0xc4ceb9fe1a85ec53ULL;
  i ^= i >> 33;
  return static_cast<uint32_t>(i);
}

__global__ void compare(uint64_t n, unsigned long long* bits_differ, unsigned long long* ints_differ,
                        unsigned long long* rn_bits_differ) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h1 = mix(2 * i), h2 = mix(2 * i + 1);
    const float s = __powf(10.f, -10.f + 40.f * (h1 >> 8) * (1.f / 16777216.f)) * (1.f + (h1 & 255) / 256.f);
    const float u = static_cast<int32_t>(h2) * (1.f / 2147483648.f);  // [-1, 1)
    const float x = (h2 & 7) == 0 ? rintf(u * 127.f) * s + 0.5f * s : (h2 & 7) == 1 ? u * 1e4f * s : u * 127.5f * s;
    const float a = sage::div_rn_by(x, s, __frcp_rn(s)), b = __fdiv_rn(x, s);
    if (__float_as_uint(a) != __float_as_uint(b)) atomicAdd(bits_differ, 1ULL);
    if (__float2int_rn(a) != __float2int_rn(b)) atomicAdd(ints_differ, 1ULL);
    if ((h2 & 7) != 1) {
      const uint32_t rb = sage::quantize_rn_bits(x, s, __frcp_rn(s));
      const int want = __float2int_rn(b);
      if (sage::rn_bits_to_int(rb) != want || (rb & 0xffu) != (static_cast<uint32_t>(want) & 0xffu))
        atomicAdd(rn_bits_differ, 1ULL);
    }
  }
}

int main(int argc, char** argv) {
  const int log2n = argc > 1 ? atoi(argv[1]) : 28;
  const uint64_t n = 1ULL << log2n;
  unsigned long long *d = nullptr, h[3] = {0, 0, 0};
  if (cudaMalloc(&d, sizeof(h)) != cudaSuccess || cudaMemset(d, 0, sizeof(h)) != cudaSuccess) return 2;
  compare<<<132 * 16, 256>>>(n, d, d + 1, d + 2);
  const cudaError_t e = cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
  printf("div_rn_by vs __fdiv_rn over 2^%d pairs: %llu differ in bits, %llu round to another integer; "
         "quantize_rn_bits: %llu differ (%s)\n", log2n, h[0], h[1], h[2], cudaGetErrorString(e));
  return e != cudaSuccess ? 2 : (h[0] || h[1] || h[2]) ? 1 : 0;
}
