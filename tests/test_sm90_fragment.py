"""CPU proof of the two ways csrc/sm90 turns the QK accumulator into the A operand of the FP8 P.V wgmma.

The kernel (csrc/sm90/p_fragment.cuh) relies on two facts that this test checks by brute force over every
lane of a warp, using the PTX fragment layouts:

* wgmma m64nN accumulator: lane ``4g + q`` holds, for rows g and g+8, columns ``8j + 2q + e``.
* 8-bit m64k32 A fragment: lane ``4g + q`` holds k = ``4q + b`` in a0 (row g), a1 (row g+8) and
  ``16 + 4q + b`` in a2, a3 (byte b = 0..3).

1. kPermuted: the 5-D tensor map (token strides 1, 4, 2, 16 over dims e, q, j', chunk) puts token
   ``16c + 4q + 2j' + e`` into shared row ``e + 2q + 8j' + 16c``; then the accumulator bytes a lane already
   holds are exactly its A fragment (no data movement).
2. kNatural: four quad shuffles plus byte permutes deliver the same A fragment from natural order.
"""
from __future__ import annotations

import itertools


def column_token_permuted(j: int, q: int, e: int) -> int:  # mirrors column_token<kPermuted>
    jj = j & 3
    return 32 * (j >> 2) + 16 * (jj >> 1) + 4 * q + 2 * (jj & 1) + e


def tma_row_of_token(t: int) -> int:
    """Shared-memory row of token t under the 5-D map: dims (e, q, j', chunk) laid out innermost first."""
    e, q, jp, c = t & 1, (t >> 2) & 3, (t >> 1) & 1, t >> 4
    return e + 2 * q + 8 * jp + 16 * c


def test_tma_map_is_a_permutation_matching_column_token():
    rows = [tma_row_of_token(t) for t in range(128)]
    assert sorted(rows) == list(range(128))
    for j, q, e in itertools.product(range(16), range(4), range(2)):
        n = 8 * j + 2 * q + e  # accumulator column
        assert rows[column_token_permuted(j, q, e)] == n


def a_fragment_tokens(q: int, kk: int) -> list[list[int]]:
    """Tokens (within the tile) the A fragment of k-step kk wants in a0..a3, byte order (rows implied)."""
    lo = [32 * kk + 4 * q + b for b in range(4)]
    hi = [32 * kk + 16 + 4 * q + b for b in range(4)]
    return [lo, lo, hi, hi]


def test_permuted_accumulator_is_the_a_fragment():
    for q, kk in itertools.product(range(4), range(4)):
        # pack_p_fragment<kPermuted>: a0 = (group 4kk, e0 e1), (group 4kk+1, e0 e1); a2 = groups 4kk+2, 4kk+3.
        got_lo = [column_token_permuted(4 * kk + j, q, e) for j in (0, 1) for e in (0, 1)]
        got_hi = [column_token_permuted(4 * kk + j, q, e) for j in (2, 3) for e in (0, 1)]
        want = a_fragment_tokens(q, kk)
        assert got_lo == want[0] and got_hi == want[2]


def byte_perm(x: list, y: list, sel: int) -> list:
    src = x + y
    return [src[(sel >> (4 * i)) & 0xF] for i in range(4)]


def test_natural_order_shuffles_deliver_the_a_fragment():
    # Each lane's value bytes are (token, row) labels; rows 0 = g, 1 = g+8. Natural order: column = token.
    for kk in range(4):
        words = {}
        for q in range(4):
            u = [[(32 * kk + 8 * j + 2 * q + e, i) for e in (0, 1)] for j in range(4) for i in (0, 1)]
            u = [u[2 * j: 2 * j + 2] for j in range(4)]  # u[j][i] = two bytes of group j, row i
            w = [u[j][0] + u[j][1] for j in range(4)]    # W_j = {row g pair, row g+8 pair}
            odd = q & 1
            words[q] = {"a0": w[1] if odd else w[0], "a1": w[3] if odd else w[2],
                        "b0": w[0] if odd else w[1], "b1": w[2] if odd else w[3]}
        for q in range(4):
            src_a = 2 * (q & 1) + (q >> 1)
            src_b = 2 * (q & 1) + 1 - (q >> 1)
            ra0, ra1 = words[src_a]["a0"], words[src_a]["a1"]
            rb0, rb1 = words[src_b]["b0"], words[src_b]["b1"]
            a_low = q < 2
            s0, s8 = (0x5410, 0x7632) if a_low else (0x1054, 0x3276)
            a = [byte_perm(ra0, rb0, s0), byte_perm(ra0, rb0, s8), byte_perm(ra1, rb1, s0), byte_perm(ra1, rb1, s8)]
            want = a_fragment_tokens(q, kk)
            for r in range(4):
                assert [tok for tok, _ in a[r]] == want[r], (kk, q, r, a[r])
                assert all(row == (r & 1) for _, row in a[r]), (kk, q, r, a[r])
