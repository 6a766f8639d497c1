// Clock stamps of the sm90 attention kernel for `bench/tile_trace.py`: where each work tile's time goes
// (waits, first K step, steady steps, last P.V, epilogue) and how the two consumers' K steps line up.
// Compiled only with SAGE_TRACE defined, which the tool does in its own copy of csrc/ (a library of its
// own); without it every macro is empty and the kernel is what it is (cuobjdump: identical SASS).
//
// g_trace[cta][role][slot][event], clock64() of the SM (comparable within a CTA only):
//   role 0, the producer, slot = its tile count: 0 before the empty_q wait, 1 after it (the Q load is
//     issued next), 2 after the first K/V loads, 3 after the last; slot kTraceSlots - 1: 0 kernel entry,
//     1 after pdl_wait.
//   roles 1 and 2, thread 0 of consumer 0 / 1, slot = its tile count: 0 tile start, 1 after the full_q
//     wait, 2 after the first K step, 3 after the last, 4 after the last P.V wait, 5 after the epilogue,
//     6 the tile's K-tile count (a value, not a clock); slot kTraceSlots - 1, event 7: the consumer's exit.
// g_trace_steps[cta][consumer][n]: the clock at which K step n's QK wait returned, in each CTA's second
//   tile, n < kTraceSteps.
// Instances with three consumers (traits.cuh) stamp their first two only; event 4 (the last P.V) is then
// the last K step's end, as their P.V is waited for inside the step.
#pragma once

#ifdef SAGE_TRACE
namespace sage::sm90 {
constexpr int kTraceCtas = 160, kTraceSlots = 80, kTraceSteps = 64;
__device__ unsigned long long g_trace[kTraceCtas * 3 * kTraceSlots * 8];
__device__ unsigned long long g_trace_steps[kTraceCtas * 2 * kTraceSteps];

__device__ __forceinline__ void trace_put(int role, int slot, int event, unsigned long long v) {
  if (blockIdx.x < kTraceCtas && role < 3)  // a third consumer (traits.cuh) is not traced
    g_trace[((blockIdx.x * 3 + role) * kTraceSlots + min(slot, kTraceSlots - 1)) * 8 + event] = v;
}
}  // namespace sage::sm90
#define SAGE_TRACE_EVENT(role, slot, event) ::sage::sm90::trace_put((role), (slot), (event), clock64())
#define SAGE_TRACE_VALUE(role, slot, event, v) ::sage::sm90::trace_put((role), (slot), (event), (v))
#define SAGE_TRACE_STEP(cw, tile_count, n)                                                              \
  do {                                                                                                  \
    if ((tile_count) == 2 && (n) < ::sage::sm90::kTraceSteps && blockIdx.x < ::sage::sm90::kTraceCtas && \
        (cw) < 2)                                                                                       \
      ::sage::sm90::g_trace_steps[(blockIdx.x * 2 + (cw)) * ::sage::sm90::kTraceSteps + (n)] = clock64(); \
  } while (0)
#else
#define SAGE_TRACE_EVENT(role, slot, event) ((void)0)
#define SAGE_TRACE_VALUE(role, slot, event, v) ((void)0)
#define SAGE_TRACE_STEP(cw, tile_count, n) ((void)0)
#endif
