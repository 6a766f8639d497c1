// Issue rate of the instructions the sm90 softmax is made of, per SM and clock, measured on the GPU at hand.
// The attention kernel's per-score instruction mix only makes sense against these rates (bench/NOTES.md).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/pipe_rates.cu -o /tmp/pipe_rates && /tmp/pipe_rates
//
// Each test runs 8 dependency chains per thread (each step reads a neighbouring chain, so ptxas cannot fold
// a chain into one instruction), 1024 threads per SM, one block per SM, timed with CUDA events around the
// launch: result = thread-instructions per SM per clock at the device's rated clock (a lower bound when the
// clock runs below it).
#include <cstdint>
#include <cstdio>

#include <cuda_runtime.h>

constexpr int kChains = 8;
constexpr int kIters = 1 << 15;

#define OP_KERNEL(NAME, TYPE, INIT, BODY)                                                   \
  __global__ void NAME(TYPE* sink) {                                                        \
    TYPE v[kChains];                                                                        \
    for (int c = 0; c < kChains; ++c) v[c] = INIT;                                          \
    for (int it = 0; it < kIters; ++it) {                                                   \
      _Pragma("unroll") for (int c = 0; c < kChains; ++c) {                                 \
        const TYPE w = v[(c + 1) % kChains];                                                \
        BODY;                                                                               \
      }                                                                                     \
    }                                                                                       \
    TYPE acc = v[0];                                                                        \
    for (int c = 1; c < kChains; ++c) acc = acc + v[c];                                     \
    sink[blockIdx.x * blockDim.x + threadIdx.x] = acc;                                      \
  }

// One PTX instruction each, so that the kernel measures exactly that instruction.
#define PTX_OP1(NAME, OUT_T, OUT_C, IN_T, IN_C, PTX) \
  __device__ __forceinline__ OUT_T NAME(IN_T a) {     \
    OUT_T y;                                          \
    asm volatile(PTX " %0, %1;" : OUT_C(y) : IN_C(a)); \
    return y;                                         \
  }
#define PTX_OP2(NAME, OUT_T, OUT_C, IN_T, IN_C, PTX)         \
  __device__ __forceinline__ OUT_T NAME(IN_T a, IN_T b) {     \
    OUT_T y;                                                  \
    asm volatile(PTX " %0, %1, %2;" : OUT_C(y) : IN_C(a), IN_C(b)); \
    return y;                                                 \
  }
PTX_OP1(i2f_rn, float, "=f", int, "r", "cvt.rn.f32.s32")
PTX_OP1(ex2, float, "=f", float, "f", "ex2.approx.ftz.f32")
PTX_OP2(pack_e4m3, uint16_t, "=h", float, "f", "cvt.rn.satfinite.e4m3x2.f32")
PTX_OP2(fmax_v, float, "=f", float, "f", "max.f32")
PTX_OP2(iadd_v, int, "=r", int, "r", "add.s32")
PTX_OP2(imax_v, int, "=r", int, "r", "max.s32")
__device__ __forceinline__ float ffma_v(float a, float b, float c) {
  float y;
  asm volatile("fma.rn.f32 %0, %1, %2, %3;" : "=f"(y) : "f"(a), "f"(b), "f"(c));
  return y;
}

// int -> float, round to nearest (I2FP.F32.S32 on sm_90).
OP_KERNEL(k_i2f, int, (int)threadIdx.x + c, v[c] = __float_as_int(i2f_rn(w)))
// The magic-number conversion's integer half: bits(x + 0x4B400000) is 12582912 + x as a float.
OP_KERNEL(k_iadd, int, (int)threadIdx.x + c, v[c] = iadd_v(v[c], w))
OP_KERNEL(k_imax, int, (int)threadIdx.x + c, v[c] = imax_v(v[c] ^ 1, w))
// Three-input integer max (a Hopper DPX instruction): the row maxima take two scores per instruction with it.
OP_KERNEL(k_imax3, int, (int)threadIdx.x + c, v[c] = __vimax3_s32(v[c], w, v[(c + 2) % kChains]))
OP_KERNEL(k_ffma, float, 1.f + c, v[c] = ffma_v(v[c], 0.999f, w))
OP_KERNEL(k_fadd, float, 1.f + c, v[c] = v[c] + w)
OP_KERNEL(k_fmax, float, 1.f + c, v[c] = fmax_v(-v[c], w))
OP_KERNEL(k_ex2, float, 0.1f * c, v[c] = ex2(w))
// One instruction converts two scores: counted as one instruction.
OP_KERNEL(k_f2fp, float, 0.1f * c, v[c] = __int_as_float(pack_e4m3(v[c], w)))

int main() {
  int dev = 0, sms = 0, clk_khz = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&clk_khz, cudaDevAttrClockRate, dev);
  void* d_sink;
  cudaMalloc(&d_sink, sms * 1024 * sizeof(float));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const double ops = 1024.0 * kChains * kIters * sms;  // thread-instructions in one launch
  std::printf("%d SMs, rated clock %.0f MHz\n", sms, clk_khz / 1e3);
  for (int pass = 0; pass < 2; ++pass) {  // the first pass warms the clocks up; the second is printed
#define RUN(K, T, NAME)                                                              \
  {                                                                                  \
    cudaEventRecord(e0);                                                             \
    K<<<sms, 1024>>>(reinterpret_cast<T*>(d_sink));                                  \
    cudaEventRecord(e1);                                                             \
    cudaEventSynchronize(e1);                                                        \
    float ms = 0.f;                                                                  \
    cudaEventElapsedTime(&ms, e0, e1);                                               \
    if (pass) std::printf("%-44s %7.1f per SM per clock\n", NAME, ops / (ms * 1e-3 * clk_khz * 1e3 * sms)); \
  }
    RUN(k_i2f, int, "I2FP.F32.S32 (cvt.rn.f32.s32)")
    RUN(k_iadd, int, "IADD (int add)")
    RUN(k_imax, int, "IMNMX (max.s32; + a LOP3 per step)")
    RUN(k_imax3, int, "VIMNMX3 (__vimax3_s32)")
    RUN(k_ffma, float, "FFMA")
    RUN(k_fadd, float, "FADD")
    RUN(k_fmax, float, "FMNMX (max.f32 of a negation)")
    RUN(k_ex2, float, "MUFU.EX2 (ex2.approx.ftz.f32)")
    RUN(k_f2fp, float, "F2FP e4m3x2 pack (cvt.rn.satfinite.e4m3x2)")
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    std::printf("CUDA error: %s\n", cudaGetErrorString(e));
    return 1;
  }
  return 0;
}
