// Clock stamps of the sm90 attention kernel for `bench/tile_trace.py`: where each work tile's time goes
// (waits, first K step, steady steps, last P.V, epilogue) and how the consumers' K steps line up.
// Compiled only with SAGE_TRACE defined, which the tool does in its own copy of csrc/ (a library of its
// own); without it every macro is empty and the kernel is what it is (cuobjdump: identical SASS).
//
// g_trace[cta][role][slot][event], clock64() of the SM (comparable within a CTA only):
//   role 0, the producer, slot = its tile count: 0 before the empty_q wait, 1 after it (the Q load is
//     issued next), 2 after the first K/V loads, 3 after the last; slot kTraceSlots - 1: 0 kernel entry,
//     1 after pdl_wait.
//   roles 1..3, thread 0 of consumer 0..2 (two or three, traits.cuh), slot = its tile count: 0 tile start,
//     1 after the full_q wait, 2 after the first K step, 3 after the last, 4 after the last P.V wait, 5
//     after the epilogue, 6 the tile's K-tile count (a value, not a clock); slot kTraceSlots - 1, event 7:
//     the consumer's exit. With three consumers P.V is waited for inside each step, so event 4 is event 3.
// g_trace_steps[cta][consumer][n][e], in each CTA's second tile, n < kTraceSteps: e = 0 the clock at which
//   K step n's QK wait returned, e = 1 the one at which the wait for P(n).V(n) returned (two consumers:
//   in step n + 1, where that P.V runs beside the next softmax; not stamped for the tile's last step).
#pragma once

#ifdef SAGE_TRACE
namespace sage::sm90 {
constexpr int kTraceCtas = 160, kTraceRoles = 4, kTraceSlots = 80, kTraceSteps = 64;
__device__ unsigned long long g_trace[kTraceCtas * kTraceRoles * kTraceSlots * 8];
__device__ unsigned long long g_trace_steps[kTraceCtas * (kTraceRoles - 1) * kTraceSteps * 2];

__device__ __forceinline__ void trace_put(int role, int slot, int event, unsigned long long v) {
  if (blockIdx.x < kTraceCtas)
    g_trace[((blockIdx.x * kTraceRoles + role) * kTraceSlots + min(slot, kTraceSlots - 1)) * 8 + event] = v;
}
__device__ __forceinline__ void trace_step(int cw, uint32_t tile_count, int n, int e) {
  if (tile_count == 2 && n >= 0 && n < kTraceSteps && blockIdx.x < kTraceCtas)
    g_trace_steps[((blockIdx.x * (kTraceRoles - 1) + cw) * kTraceSteps + n) * 2 + e] = clock64();
}
}  // namespace sage::sm90
#define SAGE_TRACE_EVENT(role, slot, event) ::sage::sm90::trace_put((role), (slot), (event), clock64())
#define SAGE_TRACE_VALUE(role, slot, event, v) ::sage::sm90::trace_put((role), (slot), (event), (v))
#define SAGE_TRACE_STEP(cw, tile_count, n) ::sage::sm90::trace_step((cw), (tile_count), (n), 0)
#define SAGE_TRACE_STEP_PV(cw, tile_count, n) ::sage::sm90::trace_step((cw), (tile_count), (n), 1)
#else
#define SAGE_TRACE_EVENT(role, slot, event) ((void)0)
#define SAGE_TRACE_VALUE(role, slot, event, v) ((void)0)
#define SAGE_TRACE_STEP(cw, tile_count, n) ((void)0)
#define SAGE_TRACE_STEP_PV(cw, tile_count, n) ((void)0)
#endif
