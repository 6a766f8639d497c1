"""bench/tile_trace.py's arithmetic on clock stamps (the stamps themselves need a GPU; their reading does not):
the consumers' phase, the K step's two segments and the per-tile rows, on stamps built here with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from bench import tile_trace as tt


def qk_stamps(offsets, step=3000, ctas=4, n=tt.STEPS, jitter=0):
    """qk[cta, consumer, n]: consumer j's K step n returns at base + n * step + offsets[j] (+ a small jitter)."""
    rng = np.random.default_rng(0)
    base = 10_000 + 777 * np.arange(ctas)[:, None, None]
    qk = base + step * np.arange(n)[None, None, :] + np.asarray(offsets)[None, :, None]
    return qk + rng.integers(0, jitter + 1, size=qk.shape)


@pytest.mark.parametrize(
    "offsets, step, expect_bin",
    [
        ((0, 1000, 2000), 3000, 4),  # three consumers a third of a step apart: evenly spread, the last bin
        ((0, 2000, 1000), 3000, 4),  # the same, whichever consumer leads
        ((0, 5, 1000), 3000, 0),     # two of three in step: the first bin, whatever the third does
        ((0, 1250), 2500, 4),        # two consumers half a step apart
        ((0, 40), 2500, 0),          # two consumers in step
        ((0, 600), 2000, 3),         # 0.3 of a step apart: [0.3, 0.4) of the two-consumer range
    ],
)
def test_phase_table_puts_every_step_in_the_offset_bin_of_its_consumers(offsets, step, expect_bin) -> None:
    qk = qk_stamps(offsets, step=step)
    med, table = tt.phase_table(qk)
    assert med == pytest.approx(step)
    assert len(table) == 1, table
    lo, hi, count, mean = table[0]
    top = 1.0 / len(offsets)
    assert (lo, hi) == pytest.approx((top * expect_bin / 5, top * (expect_bin + 1) / 5))
    assert count == qk.shape[0] * (qk.shape[2] - 1)
    assert mean == pytest.approx(step)


def test_phase_table_skips_steps_a_consumer_did_not_stamp() -> None:
    qk = qk_stamps((0, 1000, 2000))
    qk[0, 2, 10:] = 0  # consumer 2 of CTA 0: a tile of 10 K steps
    _, table = tt.phase_table(qk)
    assert sum(t[2] for t in table) == 4 * 63 - 54
    assert tt.phase_table(np.zeros((2, 3, 8), dtype=np.int64)) == (None, [])


def test_step_segments_three_and_two_consumers() -> None:
    qk = qk_stamps((0, 1000, 2000))
    steps = np.stack([qk, qk + 2200], axis=-1)  # P.V(n) waited 2200 clocks after QK(n)
    steps[:, :, -1, tt.PV] = 0  # the tile's last P.V is not stamped with two consumers; harmless here
    assert tt.step_segments(steps) == pytest.approx((2200, 800))
    two = np.stack([qk[:, :2], qk[:, :2] + 3400], axis=-1)  # P.V(n) after QK(n + 1): in step n + 1
    assert tt.step_segments(two) == pytest.approx((3400, -400))


def tiles_for(consumers: int, k_tiles=10, step=1000):
    """Stamps of two work tiles per consumer on 2 CTAs; consumer j's tile ends 100 * j clocks after consumer 0's."""
    tiles = np.zeros((tt.CTAS, tt.ROLES, tt.SLOTS, 8), dtype=np.int64)
    for c in range(2):
        tiles[c, tt.PRODUCER, tt.SLOTS - 1, tt.START] = 1
        for j in range(consumers):
            t0 = 1000 + 100 * j
            for s in range(2):
                ev = tiles[c, 1 + j, s]
                ev[tt.START] = t0
                ev[tt.QWAIT] = t0 + 200
                ev[tt.FIRST] = t0 + 1400
                ev[tt.LAST] = ev[tt.FIRST] + (k_tiles - 1) * step
                ev[tt.LAST_PV] = ev[tt.LAST] + (300 if consumers == 2 else 0)
                ev[tt.EPILOGUE] = ev[tt.LAST_PV] + 500
                ev[tt.K_TILES] = k_tiles
                t0 = ev[tt.EPILOGUE] + 50
    return tiles


@pytest.mark.parametrize("consumers", [2, 3])
def test_tile_rows_reads_every_consumer(consumers: int) -> None:
    tiles = tiles_for(consumers)
    assert tt.consumer_roles(tiles, 2) == list(range(1, consumers + 1))
    rows = tt.tile_rows(tiles, 2)
    assert rows["per-step"].size == 2 * 2 * consumers
    assert np.all(rows["per-step"] == 1000)
    assert np.all(rows["q wait"] == 200) and np.all(rows["epilogue"] == 500)
    assert np.all(rows["gap"] == 50) and rows["gap"].size == 2 * consumers
    assert np.all(rows["last P.V"] == (300 if consumers == 2 else 0))
    assert np.all(rows["skew"] == 100 * (consumers - 1))


def test_report_prints_the_phase_and_segments(capsys: pytest.CaptureFixture) -> None:
    tiles = tiles_for(3)
    qk = np.zeros((tt.CTAS, tt.ROLES - 1, tt.STEPS), dtype=np.int64)
    qk[:2] = qk_stamps((0, 1000, 2000), ctas=2)
    steps = np.stack([qk, np.where(qk > 0, qk + 2200, 0)], axis=-1)
    tt.report(tiles, steps, 2)
    out = capsys.readouterr().out
    assert "3 consumers" in out
    assert "offset 0.27-0.33:    126 steps, mean step   3000" in out
    assert "QK(n) -> P.V(n)   2200" in out
