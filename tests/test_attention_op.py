"""The public op sageattn: validation, layouts, head-dim padding, backends and fall-back accounting."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from sage_cli.attention import (
    AttentionInputError,
    KernelBackendError,
    fallback_counts,
    reset_fallback_counts,
    sageattn,
)
from sage_cli.numerics import error_metrics, quantized_attention, reference_attention
from sage_cli.numerics.synthetic import llm_like_qkv
from sage_cli.settings import SageSettings


@pytest.fixture(autouse=True)
def _fresh_counts():
    reset_fallback_counts()
    yield
    reset_fallback_counts()


def _nhd(*ts):
    """NHD views of HND tensors, backed by NHD storage (so the HND view inside sageattn is strided)."""
    return tuple(t.transpose(1, 2).contiguous() for t in ts)


def test_unknown_setting_keyword_is_a_type_error():
    q, k, v = llm_like_qkv(1, 2, 2, 16, 16, 64, seed=0)
    with pytest.raises(TypeError, match="qk_dtyp"):
        sageattn(q, k, v, backend="reference", qk_dtyp="int4")
    with pytest.raises(TypeError, match="not both"):
        sageattn(q, k, v, backend="reference", settings=SageSettings(), smooth_q=True)
    with pytest.raises(ValueError, match="qk_dtype"):
        sageattn(q, k, v, backend="reference", qk_dtype="int3")


def test_bad_inputs_are_value_errors():
    q, k, v = llm_like_qkv(1, 4, 2, 16, 16, 64, seed=1)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        sageattn(q, k[:, :1].expand(1, 3, 16, 64), v[:, :1].expand(1, 3, 16, 64), backend="sdpa")
    with pytest.raises(ValueError, match="share a dtype"):
        sageattn(q, k.float(), v, backend="auto")
    with pytest.raises(ValueError, match="4-D"):
        sageattn(q[0], k, v)
    with pytest.raises(ValueError, match="tensor_layout"):
        sageattn(q, k, v, tensor_layout="BHSD")
    with pytest.raises(ValueError, match="backend"):
        sageattn(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="same shape"):
        sageattn(q, k, v[:, :, :8])
    with pytest.raises(ValueError, match="CUDA tensors"):
        sageattn(q, k, v, backend="cuda")
    assert issubclass(AttentionInputError, ValueError)


def test_unsupported_head_dim_refused_by_sage_backends_and_counted_by_auto(caplog):
    q, k, v = llm_like_qkv(1, 4, 2, 40, 40, 72, seed=2)
    for backend in ("reference", "cuda"):
        with pytest.raises(ValueError, match="head dim 72"):
            sageattn(q, k, v, backend=backend)
    with caplog.at_level(logging.WARNING, logger="sage"):
        o1 = sageattn(q, k, v, is_causal=True)
        o2 = sageattn(q, k, v, is_causal=True)
    assert torch.equal(o1, o2)
    torch.testing.assert_close(o1, sageattn(q, k, v, is_causal=True, backend="sdpa"), rtol=0, atol=0)
    assert sum(fallback_counts().values()) == 2
    assert len([r for r in caplog.records if r.name == "sage"]) == 1  # logged once per distinct reason


def test_float32_is_a_fallback_for_auto_and_an_error_for_reference():
    q, k, v = llm_like_qkv(1, 2, 2, 32, 32, 64, seed=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="float32"):
        sageattn(q, k, v, backend="reference")
    sageattn(q, k, v)
    assert sum(fallback_counts().values()) == 1


SDPA_CASES = [
    # b, hq, hkv, nq, nk, d, causal, layout
    (1, 4, 4, 64, 64, 64, True, "HND"),
    (2, 9, 3, 17, 300, 64, True, "NHD"),  # bottom-right causal, GQA 3
    (1, 8, 2, 120, 50, 128, True, "HND"),  # Nq > Nk: leading rows see nothing
    (1, 6, 2, 33, 77, 80, False, "NHD"),
]


@pytest.mark.parametrize("case", SDPA_CASES, ids=lambda c: "x".join(map(str, c)))
def test_sdpa_backend_equals_fp64(case):
    b, hq, hkv, nq, nk, d, causal, layout = case
    q, k, v = llm_like_qkv(b, hq, hkv, nq, nk, d, seed=4)
    args = _nhd(q, k, v) if layout == "NHD" else (q, k, v)
    o, lse = sageattn(*args, tensor_layout=layout, is_causal=causal, return_lse=True, backend="sdpa")
    if layout == "NHD":
        o = o.transpose(1, 2)
    ref, ref_lse = reference_attention(q, k, v, is_causal=causal, return_lse=True)
    assert o.dtype == q.dtype and torch.isfinite(o).all()
    m = error_metrics(o, ref)
    assert m["cos"] > 0.99999 and m["max_abs"] < 4e-3, m  # fp16 output rounding
    assert lse.dtype == torch.float32 and lse.shape == (b, hq, nq)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin].double(), ref_lse[fin], rtol=0, atol=1e-4)


def test_lse_is_the_same_when_rows_are_processed_in_chunks(monkeypatch):
    """The sdpa backend's LSE comes from reference_attention, which bounds memory by chunking query rows."""
    from sage_cli.numerics import reference as ref_mod

    q, k, v = llm_like_qkv(1, 4, 2, 50, 60, 64, seed=11)
    _, whole = sageattn(q, k, v, is_causal=True, return_lse=True, backend="sdpa")
    monkeypatch.setattr(ref_mod, "MAX_SCORE_ELEMS", 4 * 60 * 7)  # 7 query rows a chunk
    _, chunked = sageattn(q, k, v, is_causal=True, return_lse=True, backend="sdpa")
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_reference_backend_is_the_numerics_with_layouts_and_strides():
    q, k, v = llm_like_qkv(2, 6, 2, 100, 130, 64, seed=5, dtype=torch.bfloat16)
    settings = dict(qk_dtype="int4", smooth_q=True, smooth_v=True)
    o, lse = sageattn(q, k, v, is_causal=True, return_lse=True, backend="reference", **settings)
    o_n, lse_n = quantized_attention(q, k, v, is_causal=True, return_lse=True, settings=SageSettings(**settings))
    assert torch.equal(o, o_n) and torch.equal(lse, lse_n)
    o_nhd, lse_nhd = sageattn(
        *_nhd(q, k, v), tensor_layout="NHD", is_causal=True, return_lse=True, backend="reference",
        settings=SageSettings(**settings),
    )
    assert o_nhd.shape == (2, 100, 6, 64)
    assert torch.equal(o_nhd.transpose(1, 2), o) and torch.equal(lse_nhd, lse)


@pytest.mark.parametrize("d", [80, 96])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_dim_padding(d, dtype):
    q, k, v = llm_like_qkv(1, 4, 2, 70, 140, d, seed=6, dtype=dtype)
    o, lse = sageattn(*_nhd(q, k, v), tensor_layout="NHD", is_causal=True, return_lse=True, backend="reference")
    assert o.shape == (1, 70, 4, d)
    o = o.transpose(1, 2)
    ref, ref_lse = reference_attention(q, k, v, is_causal=True, return_lse=True)
    m = error_metrics(o, ref)
    assert m["cos"] > 0.999 and m["rel_l1"] < 0.04, m
    assert (lse.double() - ref_lse).abs().median() < 0.02
    # Exactly the numerics on zero-padded inputs with the scale of the original D.
    pad = lambda t: torch.nn.functional.pad(t, (0, 128 - d))  # noqa: E731
    o_p, lse_p = quantized_attention(pad(q), pad(k), pad(v), is_causal=True, sm_scale=1 / math.sqrt(d), return_lse=True)
    assert torch.equal(o, o_p[..., :d]) and torch.equal(lse, lse_p)


def test_static_v_scale_with_padded_head_dim():
    q, k, v = llm_like_qkv(1, 4, 2, 30, 60, 80, seed=7)
    scale = v.float().abs().amax(dim=2)[0] / 448  # [Hkv, 80]
    o = sageattn(q, k, v, backend="reference", v_scale=scale)
    ref, _ = reference_attention(q, k, v)
    assert error_metrics(o, ref)["cos"] > 0.999


def test_sm_scale_is_honoured():
    q, k, v = llm_like_qkv(1, 2, 2, 50, 50, 64, seed=8)
    o = sageattn(q, k, v, sm_scale=0.05, backend="sdpa")
    ref, _ = reference_attention(q, k, v, sm_scale=0.05)
    assert error_metrics(o, ref)["cos"] > 0.99999
    assert error_metrics(sageattn(q, k, v, sm_scale=0.05, backend="reference"), ref)["cos"] > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_plumbing_with_a_stand_in_kernel(monkeypatch):
    # The kernels' contract, played by the reference: what sageattn does around them (padding D=96 to 128,
    # NHD views, the LSE correction, KernelUnavailable -> fall-back or error) must give the reference result.
    import types

    from sage_cli import attention
    from sage_cli.numerics import quantized_attention_core

    class KernelUnavailable(RuntimeError):
        pass

    seen = []

    def sageattn_cuda(q, k, v, *, is_causal, sm_scale, return_lse, settings):
        seen.append((q.shape[-1], sm_scale))
        if settings.qk_dtype == "int4":
            raise KernelUnavailable("int4 is not built here")
        o, lse, k_mean = quantized_attention_core(q, k, v, is_causal=is_causal, sm_scale=sm_scale, settings=settings)
        return o, (lse if return_lse else None), k_mean

    fake = types.SimpleNamespace(sageattn_cuda=sageattn_cuda, KernelUnavailable=KernelUnavailable)
    monkeypatch.setattr(attention, "_kernels", lambda: fake)
    q, k, v = llm_like_qkv(1, 6, 2, 70, 90, 96, seed=12, device="cuda")
    o, lse = sageattn(*_nhd(q, k, v), tensor_layout="NHD", is_causal=True, return_lse=True)
    o_r, lse_r = sageattn(*_nhd(q, k, v), tensor_layout="NHD", is_causal=True, return_lse=True, backend="reference")
    assert seen == [(128, 1 / math.sqrt(96))] and fallback_counts() == {}
    assert o.shape == (1, 70, 6, 96) and torch.equal(o, o_r) and torch.equal(lse, lse_r)
    sageattn(q, k, v, qk_dtype="int4")
    assert list(fallback_counts().values()) == [1] and "int4 is not built here" in next(iter(fallback_counts()))
    with pytest.raises(KernelBackendError, match="int4 is not built here"):
        sageattn(q, k, v, backend="cuda", qk_dtype="int4")


def _kernels_importable() -> bool:
    try:
        from sage_cli.kernels import sageattn_cuda  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("d", [64, 96, 128])
def test_cuda_backend_matches_reference(d):
    if not _kernels_importable():
        pytest.skip("sage_cli.kernels.sageattn_cuda not importable")
    q, k, v = llm_like_qkv(1, 8, 2, 300, 300, d, seed=9, device="cuda")
    o, lse = sageattn(q, k, v, is_causal=True, return_lse=True, backend="cuda")
    from sage_cli.kernels import reference_settings

    # The reference rounds P at the running max of the kernel's K blocks, and sums l as it does, when told.
    same_kernel = reference_settings(128 if d > 64 else 64)
    o_r, lse_r = sageattn(q, k, v, is_causal=True, return_lse=True, backend="reference", settings=same_kernel)
    ref, ref_lse = reference_attention(q, k, v, is_causal=True, return_lse=True)
    m, m_r = error_metrics(o, ref), error_metrics(o_r, ref)
    assert m["cos"] > 0.999 and m["rel_l1"] < 1.2 * m_r["rel_l1"] + 1e-3, (m, m_r)
    torch.testing.assert_close(lse, lse_r, rtol=0, atol=0.05)
    o_auto = sageattn(q, k, v, is_causal=True)
    # Not bit-equal: the kernels' K mean is summed with atomics, so a rounding tie of K can flip.
    assert error_metrics(o_auto, o)["cos"] > 0.99999 and fallback_counts() == {}


def test_auto_dispatch_traces_in_one_graph():
    # The auto decision reads only metadata, so torch.compile captures the whole op (fall-back included)
    # without a graph break, and the fall-back is still counted on every call.
    q, k, v = llm_like_qkv(1, 4, 2, 40, 40, 64, seed=10)
    f = torch.compile(lambda q, k, v: sageattn(q, k, v, is_causal=True, smooth_q=True), backend="eager", fullgraph=True)
    o = f(q, k, v)
    f(q, k, v)
    torch.testing.assert_close(o, sageattn(q, k, v, is_causal=True, backend="sdpa"), rtol=0, atol=0)
    assert sum(fallback_counts().values()) == 2  # the two compiled calls (backend="sdpa" never counts)
