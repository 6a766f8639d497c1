// Which (batch, head, Q block) a CTA works on next. The grid is persistent (one CTA per SM); CTA i takes
// tiles i, i + gridDim.x, ...
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

}  // namespace sage::sm90
