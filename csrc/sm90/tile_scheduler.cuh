// Which (batch, head, Q block) a CTA works on next. The grid is persistent (one CTA per SM); CTA i takes
// tile i first. Non-causal: then i + gridDim.x, i + 2 * gridDim.x, ... (static; every tile costs the same).
// Causal: then whatever tile index a counter hands out next (gridDim.x, gridDim.x
// + 1, ...): a CTA that finishes early takes more tiles (causal tiles differ in length, 1 to 256 K tiles
// at 32k). The non-causal instances do not touch the counter and compile as with the static schedule only.
//
// Order: head-major, so the ~132 CTAs running at once share one or two heads and stream each K/V tile
// from HBM once (through L2) instead of once per CTA; within a head, causal runs the longest rows (the last
// Q blocks) first, so the short ones fill the tail of the schedule.
#pragma once
#include "params.cuh"

namespace sage::sm90 {

struct WorkTile {
  int b, h, q_block;
  int n_k_tiles;  // K tiles this Q block sees (0: every row fully masked)
};

template <bool CAUSAL, int BLK_Q, int BLK_K>
__device__ __forceinline__ WorkTile decode_tile(int idx, const Sm90Params& p) {
  WorkTile w;
  const int bh = idx / p.num_q_blocks;
  const int r = idx - bh * p.num_q_blocks;
  w.q_block = CAUSAL ? p.num_q_blocks - 1 - r : r;
  w.b = bh / p.heads_q;
  w.h = bh - w.b * p.heads_q;
  int kv_end = p.seq_k;
  if (CAUSAL) {
    // The block's last real row sees keys up to last_row + (Nk - Nq).
    const int last_row = min(w.q_block * BLK_Q + BLK_Q - 1, p.seq_q - 1);
    kv_end = min(kv_end, last_row + 1 + p.seq_k - p.seq_q);
  }
  w.n_k_tiles = kv_end > 0 ? (kv_end + BLK_K - 1) / BLK_K : 0;
  return w;
}

// The causal scheduler's state: two int32 of the call's own buffer (p.tile_counter: tiles handed out so far,
// then CTAs done), zero on entry (the quantization's memset, sage_abi.h) and put back to zero by the last CTA
// (finish_tiles), so that the kernel alone can run again on the same buffers. Being per call, concurrent
// calls on other streams never share it. Only the attention launch that follows on the stream could see it
// early: it is launched with programmatic dependent launch and may start before this one ends, which is
// why the kernel touches the counter only after pdl_wait() (kernel.cuh), by then this launch is over.

// The producer's next tile once its current one is issued. The first tile of CTA i is i (no atomic), so
// the counter starts at gridDim.x. The reduction over the one calling lane (the producer is thread 0)
// changes nothing but puts the index in a uniform register, as blockIdx.x + k * gridDim.x was: ptxas
// then keeps the producer's tile arithmetic on the uniform datapath, and the producer fits its 24
// registers (with the atomic's per-thread result it spilled ~130 bytes).
__device__ __forceinline__ int next_tile(const Sm90Params& p) {
  return static_cast<int>(gridDim.x) + __reduce_add_sync(1u, atomicAdd(p.tile_counter, 1));
}

// Called once per CTA, by its producer, when it holds an index >= num_tiles (from next_tile() or, were
// the grid larger than num_tiles, its own blockIdx.x). After that the CTA touches neither counter again,
// so once all gridDim.x CTAs have counted themselves here nobody in this launch will: the last one resets
// both. The fences order each CTA's draws before its count (release) and every count before the reset
// (acquire; the counts form one read-modify-write chain on the second counter).
__device__ __forceinline__ void finish_tiles(const Sm90Params& p) {
  __threadfence();
  if (atomicAdd(p.tile_counter + 1, 1) == static_cast<int>(gridDim.x) - 1) {
    __threadfence();
    p.tile_counter[0] = 0;
    p.tile_counter[1] = 0;
  }
}

}  // namespace sage::sm90
