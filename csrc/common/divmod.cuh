// Integer division by a divisor that is fixed for a whole kernel (a head count, tiles per head), as one
// multiply-high and a shift instead of the ~20 dependent instructions (with a MUFU.RCP) of a general 32-bit
// division. Built once per thread from the divisor; exact for dividends in [0, 2^31).
//
// Why it is exact, for d >= 2: let s = ceil(log2 d), so 2^(s-1) < d <= 2^s, and m = ceil(2^(31+s) / d),
// which is below 2^32. Then n * m / 2^(31+s) = n / d + n * e / (d * 2^(31+s)) with e = m * d - 2^(31+s) in
// [0, d); the second term is below n / 2^(31+s) <= 1 / d for n < 2^31, too little to carry n / d past the
// next integer. So n / d = floor(n * m / 2^(31+s)) = umulhi(n, m) >> (s - 1). d = 1 is passed through.
#pragma once
#include <stdint.h>

namespace sage {

struct FastDivmod {
  int d;
  uint32_t mul;  // 0 for d = 1
  int shift;

  __device__ explicit FastDivmod(int divisor) : d(divisor), mul(0), shift(0) {
    if (d > 1) {
      const int s = 32 - __clz(d - 1);
      mul = static_cast<uint32_t>(((1ull << (31 + s)) + d - 1) / static_cast<uint64_t>(d));
      shift = s - 1;
    }
  }
  __device__ __forceinline__ int div(int n) const {
    return mul ? static_cast<int>(__umulhi(static_cast<uint32_t>(n), mul) >> shift) : n;
  }
  // n = q * d + r
  __device__ __forceinline__ int divmod(int n, int& r) const {
    const int q = div(n);
    r = n - q * d;
    return q;
  }
};

}  // namespace sage
