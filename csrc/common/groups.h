// How many Q and K scale groups a padded sequence has, per granularity. The spec of the groups is
// sage_cli/settings.py (q_group_index / k_group_index); every family's host code sizes scales with these.
#pragma once
#include "../sage_abi.h"

namespace sage {

inline int num_q_groups(int seq_pad, int granularity) {
  return granularity == SAGE_PER_THREAD ? seq_pad / 2 : granularity == SAGE_PER_WARP ? seq_pad / 16 : seq_pad / 64;
}

inline int num_k_groups(int seq_pad, int granularity) {
  return granularity == SAGE_PER_THREAD ? seq_pad / 16 : seq_pad / SAGE_K_BLOCK;
}

}  // namespace sage
