// GPU check behind csrc/common/numeric.cuh's quantize_rn_bits, over random pairs of the quantization ranges
// (s a normal float in [1e-10, 2e30], |x| <= 127.5 s; one pair in eight a rounding tie of x * inv, from a
// power-of-two s; one in eight x = +-amax with s = amax / 127 as the kernels compute it):
//   1. __frcp_rn(s) is the float64 quotient 1 / s rounded to float, as numerics/quantize.py's reciprocal;
//   2. quantize_rn_bits(x, inv) is rint of the exact product x * inv (taken in float64), low byte included;
//   3. with s = amax / 127, x = +-amax quantizes to +-127 exactly: the kernels need no clamp.
// Usage: quantize_rn_check [log2 of the pair count, default 28]. Prints one line; exit 1 on any difference.
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

__global__ void compare(uint64_t n, unsigned long long* rcp_differ, unsigned long long* int_differ,
                        unsigned long long* over_qmax) {
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h1 = mix(2 * i), h2 = mix(2 * i + 1);
    const float u = static_cast<int32_t>(h2) * (1.f / 2147483648.f);  // [-1, 1)
    float s = __powf(10.f, -10.f + 40.f * (h1 >> 8) * (1.f / 16777216.f)) * (1.f + (h1 & 255) / 256.f);
    float x;
    const int kind = h2 & 7;
    if (kind == 0) {  // a tie: s a power of two, so inv is exact and x * inv = k + 0.5
      s = exp2f(static_cast<float>(static_cast<int>(h1 % 160) - 100));
      x = (rintf(u * 126.f) + 0.5f) * s;
    } else if (kind == 1) {  // the group's amax itself
      const float amax = s;
      s = __fdiv_rn(amax, 127.f);
      x = (h2 & 8) ? amax : -amax;
    } else {
      x = u * 127.5f * s;
    }
    const float inv = __frcp_rn(s);
    if (__float_as_uint(inv) != __float_as_uint(static_cast<float>(1.0 / static_cast<double>(s))))
      atomicAdd(rcp_differ, 1ULL);
    const uint32_t bits = sage::quantize_rn_bits(x, inv);
    const int want = static_cast<int>(rint(static_cast<double>(x) * static_cast<double>(inv)));
    if (sage::rn_bits_to_int(bits) != want || (bits & 0xffu) != (static_cast<uint32_t>(want) & 0xffu))
      atomicAdd(int_differ, 1ULL);
    if (kind == 1 && abs(sage::rn_bits_to_int(bits)) != 127) atomicAdd(over_qmax, 1ULL);
  }
}

int main(int argc, char** argv) {
  const int log2n = argc > 1 ? atoi(argv[1]) : 28;
  const uint64_t n = 1ULL << log2n;
  unsigned long long *d = nullptr, h[3] = {0, 0, 0};
  if (cudaMalloc(&d, sizeof(h)) != cudaSuccess || cudaMemset(d, 0, sizeof(h)) != cudaSuccess) return 2;
  compare<<<132 * 16, 256>>>(n, d, d + 1, d + 2);
  const cudaError_t e = cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
  printf("over 2^%d pairs: __frcp_rn differs from the float64 reciprocal in %llu, quantize_rn_bits from rint of "
         "the exact product in %llu, amax not at 127 in %llu (%s)\n", log2n, h[0], h[1], h[2], cudaGetErrorString(e));
  return e != cudaSuccess ? 2 : (h[0] || h[1] || h[2]) ? 1 : 0;
}
