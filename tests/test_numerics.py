"""The reference numerics (sage_cli.numerics) against float64 attention and against its own spec."""
from __future__ import annotations

import math

import pytest
import torch

from sage_cli.numerics import (
    error_metrics,
    lse_smoothing_correction,
    quantize_qk,
    quantize_v,
    quantized_attention,
    quantized_attention_core,
    reference_attention,
)
from sage_cli.numerics.accumulate import truncate_mantissa
from sage_cli.numerics.synthetic import llm_like_qkv
from sage_cli.settings import (
    FP8_MAX,
    QMAX,
    SCALE_FLOOR,
    SEQ_PAD,
    SageSettings,
    k_group_index,
    num_k_groups,
    num_q_groups,
    q_group_index,
)

S = SageSettings

# Bounds for INT8 QK + FP8 PV against float64, on llm_like_qkv inputs (V plain normal, so the output is an
# average of many signed values and its relative error is dominated by FP8 E4M3's 3-bit mantissa: RN
# rounding of P and of V each leaves a relative error uniform in +-2^-4, ~0.036 rms each, of which the
# averaging keeps ~0.02-0.03 of |o| in L1; INT8 QK adds ~0.005). Measured over SHAPES below: rel_l1
# 0.025-0.030, cos >= 0.9995. The bounds leave ~35% headroom and still fail on a real bug (a wrong group,
# mask or scale gives rel_l1 > 0.1 or cos < 0.99).
INT8_FP8_COS = 0.999
INT8_FP8_REL_L1 = 0.04
INT8_FP16_REL_L1 = 0.02  # no FP8 rounding left: INT8 QK only


def _check_close_to_fp64(q, k, v, *, is_causal, settings=S(), cos=INT8_FP8_COS, rel=INT8_FP8_REL_L1):
    out, _ = quantized_attention(q, k, v, is_causal=is_causal, settings=settings)
    ref, _ = reference_attention(q, k, v, is_causal=is_causal)
    assert out.dtype == q.dtype and out.shape == ref.shape
    m = error_metrics(out, ref)
    assert m["cos"] >= cos and m["rel_l1"] <= rel, m
    return m


SHAPES = [
    # b, hq, hkv, nq, nk, d, causal
    (1, 4, 4, 128, 128, 64, False),
    (2, 6, 2, 127, 127, 64, True),  # GQA 3, ragged, top-left causal
    (1, 9, 3, 17, 300, 64, True),  # Hq=9, Hkv=3, Nq < Nk: bottom-right causal
    (1, 8, 1, 1, 1000, 128, True),  # decode-like: one query, GQA 8
    (2, 8, 2, 200, 77, 128, False),  # Nq > Nk, GQA 4
    (1, 4, 2, 1000, 1000, 64, True),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int8_fp8_matches_fp64(shape, dtype):
    b, hq, hkv, nq, nk, d, causal = shape
    q, k, v = llm_like_qkv(b, hq, hkv, nq, nk, d, seed=hash(shape) % 1000, dtype=dtype)
    _check_close_to_fp64(q, k, v, is_causal=causal)


def test_fp16_pv_and_float32_inputs():
    q, k, v = llm_like_qkv(1, 4, 2, 150, 260, 64, seed=3, dtype=torch.float32)
    m = _check_close_to_fp64(q, k, v, is_causal=True, settings=S(pv_dtype="fp16"), rel=INT8_FP16_REL_L1)
    assert m["cos"] > 0.9999


def test_causal_with_more_queries_than_keys_masks_leading_rows():
    q, k, v = llm_like_qkv(1, 4, 2, 100, 40, 64, seed=4)
    o, lse = quantized_attention(q, k, v, is_causal=True, return_lse=True)
    assert torch.isfinite(o).all()
    dead = 100 - 40  # query i sees key j iff j <= i - 60: rows 0..59 see nothing
    assert (o[:, :, :dead] == 0).all()
    assert torch.isneginf(lse[:, :, :dead]).all() and torch.isfinite(lse[:, :, dead:]).all()
    ref, ref_lse = reference_attention(q, k, v, is_causal=True, return_lse=True)
    assert (ref[:, :, :dead] == 0).all() and torch.isneginf(ref_lse[:, :, :dead]).all()
    assert error_metrics(o[:, :, dead:], ref[:, :, dead:])["cos"] > INT8_FP8_COS


def test_reference_chunks_query_rows_identically(monkeypatch):
    import sage_cli.numerics.reference as reference

    q, k, v = llm_like_qkv(1, 4, 2, 50, 60, 64, seed=18)
    whole = reference_attention(q, k, v, is_causal=True, return_lse=True)
    monkeypatch.setattr(reference, "MAX_SCORE_ELEMS", 4 * 60 * 7)  # 7 rows per chunk
    chunked = reference_attention(q, k, v, is_causal=True, return_lse=True)
    # Float64 BLAS is not bitwise the same across row counts (MKL's AVX-512 kernels round a 7-row P.V one ulp
    # apart from a 50-row one), so "identically" means to float64 rounding. A chunk that took the wrong rows,
    # mask or LSE would be off by ~1e-2, not 1e-16.
    assert (whole[0] - chunked[0]).abs().max().item() < 1e-13
    assert torch.equal(torch.isinf(whole[1]), torch.isinf(chunked[1]))
    finite = torch.isfinite(whole[1])
    assert (whole[1][finite] - chunked[1][finite]).abs().max().item() < 1e-13


def test_causal_alignment_is_bottom_right():
    # The last query row of a causal call with Nq < Nk sees every key: it must equal the non-causal row.
    q, k, v = llm_like_qkv(1, 2, 2, 5, 300, 64, seed=5)
    causal, _ = reference_attention(q, k, v, is_causal=True)
    full, _ = reference_attention(q, k, v, is_causal=False)
    torch.testing.assert_close(causal[:, :, -1], full[:, :, -1])
    assert not torch.allclose(causal[:, :, 0], full[:, :, 0])
    o_c, _ = quantized_attention(q, k, v, is_causal=True)
    o_f, _ = quantized_attention(q, k, v, is_causal=False)
    torch.testing.assert_close(o_c[:, :, -1], o_f[:, :, -1], rtol=0, atol=0)


def test_strides_and_gqa_mapping_are_exact():
    q, k, v = llm_like_qkv(2, 9, 3, 70, 130, 64, seed=6)
    base, base_lse = quantized_attention(q, k, v, is_causal=True, return_lse=True)
    # Non-contiguous views (NHD storage seen as HND) must give bit-identical results.
    qn, kn, vn = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qn.is_contiguous()
    o, lse = quantized_attention(qn, kn, vn, is_causal=True, return_lse=True)
    assert torch.equal(o, base) and torch.equal(lse, base_lse)
    # GQA: query head h reads kv head h // 3, exactly as if K/V were repeated per query head.
    o_rep, lse_rep = quantized_attention(
        q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), is_causal=True, return_lse=True
    )
    assert torch.equal(o_rep, base) and torch.equal(lse_rep, base_lse)


def _dequantized_scores(q, k, settings):
    """sm_scale-free fp64 scores from the quantized buffers: (q_int*sq) . (k_int*sk)^T + ds."""
    qk = quantize_qk(q, k, settings)
    nq_pad, nk_pad = qk.q_int.shape[2], qk.k_int.shape[2]
    sq = qk.q_scale[..., q_group_index(torch.arange(nq_pad), settings.granularity)].double()
    sk = qk.k_scale[..., k_group_index(torch.arange(nk_pad), settings.granularity)].double()
    qd = qk.q_int.double() * sq[..., None]
    kd = (qk.k_int.double() * sk[..., None]).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = qd @ kd.transpose(-1, -2)
    if qk.ds is not None:
        s = s + qk.ds.double().repeat_interleave(64, dim=2)
    return s[:, :, : q.shape[2], : k.shape[2]], qk


@pytest.mark.parametrize("smooth_q,blk_k", [(False, 64), (True, 64), (True, 192)])
def test_online_softmax_equals_softmax_of_dequantized_scores(smooth_q, blk_k):
    # With float32 inputs and FP16 PV nothing is rounded after the scores, so the blockwise online softmax
    # must equal a one-shot float64 softmax of the dequantized scores (up to fp32 arithmetic).
    q, k, v = llm_like_qkv(1, 4, 2, 90, 333, 64, seed=7, dtype=torch.float32)
    settings = S(pv_dtype="fp16", smooth_q=smooth_q, blk_k=blk_k)
    sm = 1 / 8
    s, _ = _dequantized_scores(q, k, settings)
    rows, cols = torch.arange(90)[:, None], torch.arange(333)[None, :]
    s = (s * sm).masked_fill(cols > rows + 333 - 90, float("-inf"))
    lse_ref = torch.logsumexp(s, dim=-1)
    o_ref = torch.softmax(s, dim=-1) @ v.double().repeat_interleave(2, dim=1)
    o, lse, _ = quantized_attention_core(q, k, v, is_causal=True, sm_scale=sm, settings=settings)
    torch.testing.assert_close(lse.double(), lse_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(o.double(), o_ref, rtol=0, atol=2e-5)


def test_lse_matches_fp64_with_smoothing_correction():
    q, k, v = llm_like_qkv(1, 4, 2, 128, 256, 64, seed=8, dtype=torch.float32)
    k = k + 3.0 * k.std()  # a large common offset makes the correction large
    _, ref_lse = reference_attention(q, k, v, return_lse=True)
    _, lse = quantized_attention(q, k, v, return_lse=True)
    _, lse_uncorrected, k_mean = quantized_attention_core(q, k, v)
    corr = lse_smoothing_correction(q, k_mean, 1 / math.sqrt(64))
    assert corr.dtype == torch.float32 and corr.shape == (1, 4, 128)
    torch.testing.assert_close(lse, lse_uncorrected + corr)
    err = (lse.double() - ref_lse).abs()
    # An INT8 score's error is a sum of D=64 rounding errors (each at most half a step, amax/254, times the
    # other operand); where outlier channels and 8x tokens set the group amax it reaches a few percent of
    # the row's logit range (measured max 2.6%). The LSE follows the largest logits, so bound it by that.
    ks = (k.double() - k.double().mean(dim=2, keepdim=True)).repeat_interleave(2, dim=1)
    row_range = (q.double() @ ks.transpose(-1, -2) / 8).abs().amax(dim=-1)
    assert err.median() < 0.02 and (err <= 0.05 * row_range + 1e-3).all(), (err.median(), (err / row_range).max())
    assert (lse_uncorrected.double() - ref_lse).abs().median() > 1.0  # the correction is not a no-op


def test_int4_is_clearly_worse_than_int8():
    q, k, v = llm_like_qkv(1, 4, 2, 256, 256, 64, seed=9)
    ref, _ = reference_attention(q, k, v)
    e8 = error_metrics(quantized_attention(q, k, v, settings=S(pv_dtype="fp16"))[0], ref)["rel_l1"]
    e4 = error_metrics(quantized_attention(q, k, v, settings=S(qk_dtype="int4", pv_dtype="fp16"))[0], ref)["rel_l1"]
    assert e4 > 3 * e8, (e4, e8)


def test_coarser_groups_are_not_better_on_outliers():
    q, k, v = llm_like_qkv(1, 4, 2, 256, 512, 64, seed=10)
    ref, _ = reference_attention(q, k, v)
    errs = {
        g: error_metrics(quantized_attention(q, k, v, settings=S(granularity=g, pv_dtype="fp16"))[0], ref)["rel_l1"]
        for g in ("per_thread", "per_warp", "per_block")
    }
    assert errs["per_block"] >= errs["per_warp"] >= errs["per_thread"], errs
    assert errs["per_block"] > 1.2 * errs["per_thread"], errs


def test_smooth_q_helps_with_per_block_offsets():
    q, k, v = llm_like_qkv(1, 4, 2, 256, 256, 64, seed=11, q_offset=0.0)
    gen = torch.Generator().manual_seed(0)
    # A different large offset per 64-row block: per-block smoothing removes it entirely.
    offs = 6 * q.float().std() * torch.randn(1, 4, 4, 1, 64, generator=gen)
    q = (q.float().reshape(1, 4, 4, 64, 64) + offs).reshape(1, 4, 256, 64).half()
    ref, _ = reference_attention(q, k, v)
    for qk_dtype, factor in (("int8", 1.5), ("int4", 1.5)):
        plain = error_metrics(quantized_attention(q, k, v, settings=S(qk_dtype=qk_dtype, pv_dtype="fp16"))[0], ref)
        smooth = error_metrics(
            quantized_attention(q, k, v, settings=S(qk_dtype=qk_dtype, pv_dtype="fp16", smooth_q=True))[0], ref
        )
        assert plain["rel_l1"] > factor * smooth["rel_l1"], (qk_dtype, plain, smooth)


def test_smooth_v_helps_with_large_channel_mean():
    q, k, v = llm_like_qkv(1, 4, 2, 128, 512, 64, seed=12)
    gen = torch.Generator().manual_seed(1)
    v = (v.float() + 20 * torch.randn(1, 2, 1, 64, generator=gen)).half()
    ref, _ = reference_attention(q, k, v)
    plain = error_metrics(quantized_attention(q, k, v)[0], ref)
    smooth = error_metrics(quantized_attention(q, k, v, settings=S(smooth_v=True))[0], ref)
    assert plain["rel_l1"] > 3 * smooth["rel_l1"], (plain, smooth)


def test_narrow_accumulator_loses_precision_over_long_rows():
    gen = torch.Generator().manual_seed(13)
    nk = 16384
    q = (0.3 * torch.randn(1, 1, 64, 64, generator=gen)).half()
    k = torch.randn(1, 1, nk, 64, generator=gen).half()
    v = (torch.randn(1, 1, nk, 64, generator=gen) + 1).half()  # same-sign sums show the truncation bias
    ref, _ = reference_attention(q, k, v)
    two = error_metrics(quantized_attention(q, k, v, settings=S(pv_accum="two_level"))[0], ref)["rel_l1"]
    narrow = error_metrics(quantized_attention(q, k, v, settings=S(pv_accum="narrow"))[0], ref)["rel_l1"]
    # narrow: ~2^-14 relative loss per k-step over 512 steps (measured ~0.013); two-level ~0.0015.
    assert narrow > 4 * two and two < 0.004, (narrow, two)


@pytest.mark.parametrize("shape", SHAPES[:3] + SHAPES[5:], ids=lambda s: "x".join(map(str, s)))
def test_row_sum_through_the_mma_is_as_accurate_as_the_fp32_sum(shape):
    """row_sum="mma" (the wgmma kernel: l sums the rounded P~ like a ones column of V) stays within rounding
    of row_sum="fp32": the same bounds against float64, and within ~1% relL1 of each other."""
    b, hq, hkv, nq, nk, d, causal = shape
    q, k, v = llm_like_qkv(b, hq, hkv, nq, nk, d, seed=nq + nk)
    ref, _ = reference_attention(q, k, v, is_causal=causal)
    o32, lse32 = quantized_attention(q, k, v, is_causal=causal, settings=S(blk_k=128), return_lse=True)
    omma, lsemma = quantized_attention(q, k, v, is_causal=causal, settings=S(blk_k=128, row_sum="mma"),
                                       return_lse=True)
    m32, mmma = error_metrics(o32, ref), error_metrics(omma, ref)
    assert mmma["cos"] >= INT8_FP8_COS and mmma["rel_l1"] <= INT8_FP8_REL_L1, mmma
    assert mmma["rel_l1"] <= 1.1 * m32["rel_l1"], (mmma, m32)
    assert 0 < error_metrics(omma, o32)["rel_l1"] < 0.01
    finite = torch.isfinite(lse32)
    assert torch.equal(torch.isfinite(lsemma), finite)
    # l sums terms each rounded (RN, 3 mantissa bits) by at most 2^-4 relative, so the LSEs can differ by
    # up to log(1 + 2^-4) = 0.061 where one key dominates a row (measured: max 0.022, mean 0.003).
    d_lse = (lsemma[finite] - lse32[finite]).abs()
    assert d_lse.max() <= math.log1p(2.0**-4) and d_lse.mean() < 0.006, (d_lse.max(), d_lse.mean())


def test_row_sum_through_the_mma_is_exact_when_p_is_representable():
    """With every score equal, p = 1 and P~ = 448 exactly: both row sums are the same number of keys."""
    q, k, v = llm_like_qkv(1, 2, 2, 130, 300, 64, seed=5)
    k = torch.zeros_like(k)
    o32, lse32 = quantized_attention(q, k, v, is_causal=True, settings=S(blk_k=128), return_lse=True)
    omma, lsemma = quantized_attention(q, k, v, is_causal=True, settings=S(blk_k=128, row_sum="mma"),
                                       return_lse=True)
    assert torch.equal(o32, omma) and torch.equal(lse32, lsemma)


def test_static_v_scale_too_small_saturates():
    q, k, v = llm_like_qkv(1, 4, 2, 64, 128, 64, seed=14)
    true_scale = v.float().abs().amax(dim=2)[0] / FP8_MAX  # [Hkv, D]
    small = true_scale / 50
    o, _ = quantized_attention(q, k, v, settings=S(v_scale=small))
    assert torch.isfinite(o).all()
    # Every V element saturates at +-448 * small: the output can be no larger than that.
    assert (o.float().abs() <= (FP8_MAX * small)[None, :, None, :].repeat_interleave(2, dim=1) * 1.01).all()
    qv = quantize_v(v, S(v_scale=small))
    assert torch.isfinite(qv.v_fp8.float()).all() and qv.v_fp8.float().abs().max() == FP8_MAX
    # Static scales that fit give the same result quality as dynamic ones.
    fit, _ = quantized_attention(q, k, v, settings=S(v_scale=true_scale.expand(1, 2, 64)))
    ref, _ = reference_attention(q, k, v)
    assert error_metrics(fit, ref)["cos"] > INT8_FP8_COS
    with pytest.raises(ValueError, match="v_scale"):
        quantize_v(v, S(v_scale=torch.ones(3, 64)))


@pytest.mark.parametrize("qk_dtype", ["int8", "int4"])
@pytest.mark.parametrize("granularity", ["per_thread", "per_warp", "per_block"])
@pytest.mark.parametrize("smooth_q", [False, True])
def test_quantize_qk_groups(qk_dtype, granularity, smooth_q):
    q, k, _ = llm_like_qkv(2, 4, 2, 150, 70, 64, seed=15)
    settings = S(qk_dtype=qk_dtype, granularity=granularity, smooth_q=smooth_q)
    qk = quantize_qk(q, k, settings)
    qmax = QMAX[qk_dtype]
    nq_pad, nk_pad = 2 * SEQ_PAD, SEQ_PAD
    assert qk.q_int.shape == (2, 4, nq_pad, 64) and qk.q_int.dtype == torch.int8
    assert qk.k_int.shape == (2, 2, nk_pad, 64) and qk.k_int.dtype == torch.int8
    assert qk.q_scale.shape == (2, 4, num_q_groups(nq_pad, granularity)) and qk.q_scale.dtype == torch.float32
    assert qk.k_scale.shape == (2, 2, num_k_groups(nk_pad, granularity))
    assert qk.k_mean.shape == (2, 2, 64)
    assert (qk.q_int[:, :, 150:] == 0).all() and (qk.k_int[:, :, 70:] == 0).all()  # pad rows are zero
    torch.testing.assert_close(qk.k_mean, k.float().mean(dim=2))

    q_src = q.float()
    if smooth_q:
        assert qk.q_mean.shape == (2, 4, nq_pad // 64, 64) and qk.ds.shape == (2, 4, nq_pad // 64, nk_pad)
        torch.testing.assert_close(qk.q_mean[:, :, 2], q_src[:, :, 128:150].mean(dim=2))  # partial block
        assert (qk.q_mean[:, :, 3] == 0).all()  # a block of pad rows only
        q_src = q_src - qk.q_mean.repeat_interleave(64, dim=2)[:, :, :150]
    else:
        assert qk.q_mean is None and qk.ds is None
    k_src = k.float() - qk.k_mean[:, :, None]

    for x_int, scale, src, n, index in (
        (qk.q_int, qk.q_scale, q_src, 150, q_group_index),
        (qk.k_int, qk.k_scale, k_src, 70, k_group_index),
    ):
        n_pad = x_int.shape[2]
        group = index(torch.arange(n_pad), granularity)
        assert x_int.abs().max() <= qmax
        for gid in range(scale.shape[-1]):
            members = group == gid
            g_int = x_int[:, :, members].abs().amax(dim=(-1, -2))  # [B, H]
            real = members[:n].any()
            if real:
                assert (g_int == qmax).all(), (gid, g_int)  # the group's amax maps to qmax
            else:
                assert (g_int == 0).all() and (scale[..., gid] == torch.tensor(SCALE_FLOOR) / qmax).all()
        row_scale = scale[..., group][:, :, :n, None]
        recon = x_int[:, :, :n].float() * row_scale
        assert ((recon - src).abs() <= row_scale / 2 * (1 + 1e-5) + 1e-6).all()


def test_quantize_v_per_channel():
    _, _, v = llm_like_qkv(1, 2, 2, 8, 100, 64, seed=16)
    v = v * torch.linspace(0.01, 10, 64).half()  # channels of very different ranges
    qv = quantize_v(v, S())
    assert qv.v_fp8.dtype == torch.float8_e4m3fn and qv.v_fp8.shape == (1, 2, SEQ_PAD, 64)
    assert qv.v_mean is None and (qv.v_fp8[:, :, 100:].float() == 0).all()
    torch.testing.assert_close(qv.v_scale, v.float().abs().amax(dim=2) / FP8_MAX)
    assert (qv.v_fp8.float().abs().amax(dim=2) == FP8_MAX).all()  # each channel's amax maps to 448
    recon = qv.v_fp8[:, :, :100].float() * qv.v_scale[:, :, None]
    assert ((recon - v.float()).abs() <= v.float().abs() * 2**-4 + qv.v_scale[:, :, None] * 2**-9).all()
    qs = quantize_v(v + 5, S(smooth_v=True))
    torch.testing.assert_close(qs.v_mean, (v + 5).float().mean(dim=2))


def test_int4_packing_matches_the_abi():
    from sage_cli.numerics import pack_int4, unpack_int4

    x = torch.tensor([[1, -2, 7, -7, 0, -8]], dtype=torch.int8)
    packed = pack_int4(x)
    # even channel in the low nibble: (1, -2) -> 0xE1, (7, -7) -> 0x97, (0, -8) -> 0x80
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0xE1, 0x97, 0x80]]
    assert torch.equal(unpack_int4(packed), x)
    qk = quantize_qk(*llm_like_qkv(1, 2, 2, 64, 64, 64, seed=19)[:2], S(qk_dtype="int4"))
    assert torch.equal(unpack_int4(pack_int4(qk.q_int)), qk.q_int)


def test_truncate_mantissa_is_toward_zero():
    x = torch.tensor([1 + 2**-13 + 2**-14, -(1 + 2**-13 + 2**-20), 3.0, 0.0], dtype=torch.float32)
    t = truncate_mantissa(x, 13)
    assert t.tolist() == [1 + 2**-13, -(1 + 2**-13), 3.0, 0.0]


def test_error_metrics():
    r = torch.randn(1000, dtype=torch.float64)
    m = error_metrics(r.float(), r)
    assert m["cos"] > 0.999999 and m["rel_l1"] < 1e-6
    m = error_metrics(2 * r, r)
    assert abs(m["rel_l1"] - 1) < 1e-12 and abs(m["cos"] - 1) < 1e-12
    bad = r.clone()
    bad[3] = float("nan")
    assert math.isnan(error_metrics(bad, r)["cos"])
    with pytest.raises(ValueError):
        error_metrics(r[:10], r)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reference_runs_on_cuda_like_on_cpu():
    q, k, v = llm_like_qkv(1, 4, 2, 200, 300, 64, seed=17)
    o_cpu, lse_cpu = quantized_attention(q, k, v, is_causal=True, return_lse=True)
    o_gpu, lse_gpu = quantized_attention(q.cuda(), k.cuda(), v.cuda(), is_causal=True, return_lse=True)
    m = error_metrics(o_gpu.cpu(), o_cpu)
    assert m["cos"] > 0.99999, m
    torch.testing.assert_close(lse_gpu.cpu(), lse_cpu, rtol=0, atol=1e-3)
