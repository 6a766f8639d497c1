"""GPU tests of the compiled kernels against numerics/ (the executable spec) and float64 attention.

Quantization: the CUDA buffers equal numerics.quantize_qk / quantize_v (through kernels.layout) buffer by
buffer: integer values equal except rare rounding ties (k_mean is summed with atomics, in another order
than torch), scales within a few ulps. Attention: every available family against
numerics.quantized_attention_core with the kernel's blk_k and row_sum, and against float64 attention, on fresh random
inputs with channel outliers; every buffer and output is poisoned before the run and checked written.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from sage_cli import kernels  # noqa: E402
from sage_cli.kernels import dispatch, layout, ops  # noqa: E402
from sage_cli.numerics import (  # noqa: E402
    error_metrics, quantize_qk, quantize_v, quantized_attention_core, reference_attention, unpack_int4,
)
from sage_cli.settings import SageSettings  # noqa: E402


@pytest.fixture(scope="module")
def arch() -> str:
    st = kernels.status()
    if st.arch is None:
        pytest.skip(st.reason)
    assert st.available, f"kernels unavailable on a supported GPU: {st.reason}"
    return st.arch


@pytest.fixture
def poisoned(monkeypatch):
    """Every kernel-written buffer starts as NaN (floats) or a value the kernels never write (ints)."""

    def poison(*shape, dtype, device):
        t = torch.empty(*shape, dtype=dtype, device=device)
        if dtype == torch.int8:
            return t.fill_(-128)  # quantized values are clamped to +-127
        if dtype == torch.uint8:
            return t.fill_(0x88)  # two INT4 -8s: the kernels clamp to +-7
        if dtype == torch.float8_e4m3fn:
            return t.view(torch.uint8).fill_(0x7F).view(dtype)  # e4m3 NaN
        return t.fill_(float("nan"))

    real_alloc = ops.alloc_output
    monkeypatch.setattr(ops, "_empty", poison)
    monkeypatch.setattr(ops, "alloc_output", lambda q: real_alloc(q).fill_(float("nan")))


def make_qkv(b, hq, hkv, nq, nk, d, dtype, layout="HND", seed=0):
    """Random Q/K/V with what real activations have: K channel means several times the spread, a few Q and
    V outlier channels. NHD inputs are returned as HND views (the strides say which)."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(h, n):
        shape = (b, h, n, d) if layout == "HND" else (b, n, h, d)
        return torch.randn(shape, generator=g, device="cuda", dtype=torch.float32)

    q, k, v = rnd(hq, nq), rnd(hkv, nk), rnd(hkv, nk)
    chan = torch.randn(d, generator=g, device="cuda")
    k = k + 4.0 * chan  # per-channel bias: what smooth K removes
    q[..., :4] *= 8.0
    v[..., -3:] *= 6.0
    q, k, v = (t.to(dtype) for t in (q, k, v))
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return q, k, v


def mismatch_fraction(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    diff = (a.to(torch.int16) - b.to(torch.int16)).abs()
    return float((diff != 0).float().mean()), int(diff.max())


QUANT_CASES = [  # b, hq, hkv, nq, nk, d, dtype, layout
    (1, 1, 1, 1, 1, 64, torch.float16, "HND"),
    (2, 3, 1, 17, 127, 128, torch.bfloat16, "NHD"),
    (1, 8, 2, 1000, 4096, 128, torch.float16, "HND"),
    (2, 4, 4, 128, 1000, 64, torch.bfloat16, "NHD"),
    (1, 2, 1, 64, 8192, 64, torch.bfloat16, "NHD"),  # 128 reduction blocks per head add into k_mean / v_scale
    (1, 4, 2, 200, 4097, 128, torch.bfloat16, "HND"),  # a last K/V slice of one real token (one read)
]
QUANT_SETTINGS = [
    SageSettings(),
    SageSettings(qk_dtype="int4", smooth_q=True),
    SageSettings(granularity="per_warp", smooth_q=True, smooth_v=True),
    SageSettings(qk_dtype="int4", granularity="per_block", smooth_v=True),
]


@pytest.fixture(params=["one read", "passes"])
def kv_route(request, monkeypatch):
    """How Q, K and V are read: once, in one launch (the default wherever a kv head fits the GPU: every
    QUANT_CASES head), or K and V twice by the two passes (SAGE_QUANT_KV=passes)."""
    if request.param == "passes":
        monkeypatch.setenv("SAGE_QUANT_KV", "passes")
    else:
        monkeypatch.delenv("SAGE_QUANT_KV", raising=False)
    return request.param


@pytest.mark.parametrize("case", QUANT_CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-{c[7]}")
@pytest.mark.parametrize("settings", QUANT_SETTINGS, ids=lambda s: s.label().replace(" ", "_"))
def test_quant_matches_numerics(arch, poisoned, kv_route, case, settings):
    b, hq, hkv, nq, nk, d, dtype, lay = case
    q, k, v = make_qkv(b, hq, hkv, nq, nk, d, dtype, lay, seed=nq + nk)
    got = kernels.quantize(q, k, v, settings)
    ref = layout.qk_to_abi(quantize_qk(q, k, settings), settings.qk_dtype)

    torch.testing.assert_close(got.k_mean, ref.k_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.q_scale, ref.q_scale, rtol=1e-5, atol=0)
    torch.testing.assert_close(got.k_scale, ref.k_scale, rtol=1e-4, atol=0)
    unpack = unpack_int4 if settings.qk_dtype == "int4" else (lambda t: t)
    for name in ("q_int", "k_int"):
        frac, worst = mismatch_fraction(unpack(getattr(got, name)), unpack(getattr(ref, name)))
        assert worst <= 1 and frac < 2e-3, f"{name}: {frac:.2e} of values differ (max {worst})"
    if settings.smooth_q:
        torch.testing.assert_close(got.q_mean, ref.q_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.ds, ref.ds, rtol=1e-4, atol=1e-3)

    v_ref, v_scale_ref, v_mean_ref = layout.v_to_abi(quantize_v(v, settings))
    torch.testing.assert_close(got.v_scale, v_scale_ref, rtol=1e-5, atol=0)
    if settings.smooth_v:
        torch.testing.assert_close(got.v_mean, v_mean_ref, rtol=1e-5, atol=1e-5)
    gv, rv = got.v_fp8.float(), v_ref.float()
    assert not gv.isnan().any(), "v_fp8 not fully written"
    off = gv != rv
    assert float(off.float().mean()) < 2e-3, f"v_fp8: {float(off.float().mean()):.2e} differ"
    # a differing value is one e4m3 step (12.5% relative) away: a rounding tie, never a wrong element
    assert bool(((gv - rv).abs()[off] <= 0.13 * rv.abs()[off] + 2**-9).all())


def _quant_kernels(q, k, v) -> set[str]:
    """Names of the kernels one kernels.quantize call launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        kernels.quantize(q, k, v, SageSettings())
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages() if e.device_time_total > 0}


def _too_long_to_hold(d: int) -> int:
    """A kv head length whose slices (64 KiB of rows each) outnumber the blocks of qkv_resident the GPU holds at
    once (at most 3 a SM), so that quantize takes the two passes."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return 4 * sms * (64 * 1024 // (2 * d))


@pytest.mark.parametrize("d", [64, 128])
def test_kv_route_by_head_length(arch, monkeypatch, d):
    """A kv head the GPU can hold is read once (qkv_resident alone), a longer one twice (q_tiles_and_stats then
    kv_tiles), and SAGE_QUANT_KV=passes forces the two passes."""
    monkeypatch.delenv("SAGE_QUANT_KV", raising=False)
    for nk, one_read in ((4096, True), (_too_long_to_hold(d), False)):
        q, k, v = make_qkv(1, 1, 1, 128, nk, d, torch.bfloat16)
        names = " ".join(_quant_kernels(q, k, v))
        assert ("qkv_resident" in names) == one_read and ("kv_tiles" in names) == (not one_read), (nk, names)
    monkeypatch.setenv("SAGE_QUANT_KV", "passes")
    q, k, v = make_qkv(1, 1, 1, 128, 4096, d, torch.bfloat16)
    names = " ".join(_quant_kernels(q, k, v))
    assert "kv_tiles" in names and "qkv_resident" not in names, names


def test_kv_routes_agree_with_many_heads_in_flight(arch, monkeypatch):
    """Thousands of slices, more than the GPU holds at once, so that blocks wait on heads whose slices are
    still being claimed: the one-read route gives the two-read route's buffers (up to the order in which the
    atomics add the means)."""
    q, k, v = make_qkv(4, 32, 32, 64, 4096, 128, torch.bfloat16, seed=7)
    monkeypatch.setenv("SAGE_QUANT_KV", "passes")
    a = kernels.quantize(q, k, v, SageSettings())
    monkeypatch.delenv("SAGE_QUANT_KV")
    b = kernels.quantize(q, k, v, SageSettings())
    torch.testing.assert_close(b.k_mean, a.k_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.k_scale, a.k_scale, rtol=1e-4, atol=0)
    torch.testing.assert_close(b.v_scale, a.v_scale, rtol=0, atol=0)
    frac, worst = mismatch_fraction(b.k_int, a.k_int)
    assert worst <= 1 and frac < 1e-3, f"k_int: {frac:.2e} differ (max {worst})"
    assert torch.equal(b.v_fp8.view(torch.uint8), a.v_fp8.view(torch.uint8))
    assert torch.equal(b.q_int, a.q_int)


@pytest.mark.parametrize("smooth_v", [False, True])
def test_static_v_scale_saturates(arch, poisoned, kv_route, smooth_v):
    q, k, v = make_qkv(1, 2, 2, 300, 300, 128, torch.float16)
    amax = v.float().abs().amax(dim=2)[0]  # [Hkv, D]
    s = SageSettings(v_scale=amax / 448.0 * 0.5, smooth_v=smooth_v)  # half the dynamic scale: values saturate
    got = kernels.quantize(q, k, v, s)
    v_ref, scale_ref, mean_ref = layout.v_to_abi(quantize_v(v, s))
    torch.testing.assert_close(got.v_scale, scale_ref, rtol=0, atol=0)
    if smooth_v:
        torch.testing.assert_close(got.v_mean, mean_ref, rtol=1e-5, atol=1e-5)
    assert float(got.v_fp8.float().abs().max()) == 448.0
    assert float((got.v_fp8.float() != v_ref.float()).float().mean()) < 2e-3


def families(arch: str) -> list[str]:
    return ["wgmma", "mma_sync"] if arch == "90a" else ["mma_sync"]


ATTN_CASES = [  # b, hq, hkv, nq, nk, d, causal, layout, dtype
    (1, 1, 1, 1, 1, 64, False, "HND", torch.float16),
    (2, 3, 1, 17, 127, 128, True, "NHD", torch.bfloat16),
    (1, 4, 1, 127, 128, 64, True, "HND", torch.float16),
    (2, 8, 1, 128, 1000, 128, False, "HND", torch.bfloat16),
    (1, 4, 4, 1000, 1000, 128, True, "NHD", torch.float16),
    (1, 8, 2, 1000, 4096, 64, True, "HND", torch.bfloat16),
    (1, 2, 2, 4096, 1000, 128, True, "HND", torch.float16),
    (1, 1, 1, 16384, 16384, 128, True, "HND", torch.bfloat16),
]
ATTN_SETTINGS = [
    SageSettings(),
    SageSettings(smooth_q=True),
    SageSettings(granularity="per_warp", smooth_v=True),
    SageSettings(pv_accum="narrow"),
    SageSettings(qk_dtype="int4", smooth_q=True),
    SageSettings(pv_dtype="fp16"),
    SageSettings(granularity="per_block"),
]


def _attn_check(arch, family, case, settings, return_lse=True):
    b, hq, hkv, nq, nk, d, causal, lay, dtype = case
    try:
        fam = dispatch.resolve_family(arch, settings, family)
        ref_settings = kernels.reference_settings(d, settings, fam)
        bk = ref_settings.blk_k
    except kernels.KernelUnavailable as e:
        pytest.skip(f"not served: {e}")
    q, k, v = make_qkv(b, hq, hkv, nq, nk, d, dtype, lay, seed=7 * nq + nk + d)
    sm_scale = 1.0 / math.sqrt(d)
    try:
        o, lse, k_mean = kernels.sageattn_cuda(q, k, v, is_causal=causal, sm_scale=sm_scale, return_lse=return_lse,
                                               settings=settings, family=fam)
    except kernels.KernelUnavailable as e:
        pytest.skip(f"the {fam} kernel does not serve this: {e}")
    torch.cuda.synchronize()
    assert o.shape == q.shape and o.dtype == q.dtype
    assert bool(torch.isfinite(o).all()), "output not fully written (NaN left from the poison) or non-finite"
    emu_o, emu_lse, emu_km = quantized_attention_core(q, k, v, is_causal=causal, sm_scale=sm_scale,
                                                      settings=ref_settings)
    exact, _ = reference_attention(q, k, v, is_causal=causal, sm_scale=sm_scale)
    m_emu = error_metrics(o, emu_o)
    m_kernel = error_metrics(o, exact)
    m_spec = error_metrics(emu_o, exact)
    msg = f"{fam} blk_k={bk}: vs emulation {m_emu}, kernel vs fp64 {m_kernel}, emulation vs fp64 {m_spec}"
    print(f"\nMETRICS {case[:7]} {lay} {str(dtype)[6:]} [{settings.label()}] {fam} blk_k={bk} relL1: kernel-emu "
          f"{m_emu['rel_l1']:.2e} kernel-fp64 {m_kernel['rel_l1']:.2e} emu-fp64 {m_spec['rel_l1']:.2e} "
          f"cos {m_kernel['cos']:.6f}")
    assert m_emu["rel_l1"] < max(0.01, 0.3 * m_spec["rel_l1"]), msg
    assert m_kernel["rel_l1"] < 1.1 * m_spec["rel_l1"] + 0.005, msg
    if return_lse:
        assert lse.shape == (b, hq, nq)
        fin = torch.isfinite(emu_lse)
        assert bool((torch.isfinite(lse) == fin).all()), "LSE finiteness differs (masked rows must be -inf)"
        # Per row: the kernel's ex2.approx and the reference's exact exp2 can round one P value to
        # neighbouring e4m3 steps (12.5% apart). The row's largest P is exactly 448 and never flips, so
        # another one is at most half the sum: one flip moves l by at most 1/16, the LSE by ln(17/16) =
        # 0.061 (measured up to 0.027 at 2048 x 700, D=64). Over all rows the flips are rare: the mean
        # difference stays far below that. Not so with the narrow accumulator: the tensor cores add FP8
        # products with fewer bits than fp32 (why the two-level scheme exists), which numerics/ does not
        # model, and l comes out biased by up to ~1% (mean |dLSE| 0.004-0.009 measured on the H200).
        d_lse = (lse[fin] - emu_lse[fin]).abs()
        assert float(d_lse.max()) < 0.061, msg
        if settings.pv_accum == "two_level":
            assert float(d_lse.mean()) < 2e-3, msg
    return m_emu, m_kernel


# Causal shapes with more work tiles than an H100 has SMs (132), so that the wgmma kernel's dynamic scheduler
# hands tiles out after the first round: Nq < Nk, and Nq > Nk (Q blocks that see no key at all).
MANY_TILE_CASES = [(2, 16, 4, 1000, 2000, 128, True, "HND", torch.bfloat16),
                   (1, 24, 8, 2048, 700, 64, True, "NHD", torch.float16)]


@pytest.mark.parametrize("case", MANY_TILE_CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_causal_many_tiles_matches_spec_and_repeats(arch, poisoned, case):
    """The kernel against the spec, then the kernel alone twice more on the same buffers: the tile counter
    it leaves behind must be zero again (bit-identical outputs)."""
    _attn_check(arch, "wgmma" if arch == "90a" else "mma_sync", case, SageSettings())
    b, hq, hkv, nq, nk, d, causal, lay, dtype = case
    q, k, v = make_qkv(b, hq, hkv, nq, nk, d, dtype, lay, seed=5)
    prep = ops.prepare(q, k, v, SageSettings(), is_causal=causal)
    first = ops.attention_only(prep).clone()
    for _ in range(2):
        prep.o.fill_(float("nan"))
        assert torch.equal(ops.attention_only(prep), first)


@pytest.mark.parametrize("smooth_v", [False, True])
def test_wgmma_d128_three_consumers_non_causal(arch, poisoned, smooth_v):
    """D=128 non-causal runs three consumers (192-row Q blocks) only where they cost the persistent grid no more
    rounds of rows than two (csrc/sm90/attn_sm90.cu, three_consumers_pay), which small shapes never do. With
    SMs // 3 heads of 500 rows, the 192-row tiles fit one round and the 128-row ones need two, on any SM count;
    the last 192-row block also passes the padded rows (512)."""
    if arch != "90a":
        pytest.skip("sm_90a kernel")
    heads = torch.cuda.get_device_properties(0).multi_processor_count // 3
    _attn_check(arch, "wgmma", (1, heads, 1, 500, 700, 128, False, "HND", torch.bfloat16), SageSettings(smooth_v=smooth_v))


@pytest.mark.parametrize("nk", [16384, 16385])
@pytest.mark.parametrize("smooth_v", [False, True])
def test_wgmma_epilogue_both_sides_of_the_v_constants_cut(arch, poisoned, nk, smooth_v):
    """The D=128 non-causal wgmma kernel reads the V scale and mean from shared memory up to 128 K tiles
    and from global memory beyond (csrc/sm90/attn_sm90.cu, kVSmemMaxKTiles): both, with and without smooth V."""
    if arch != "90a":
        pytest.skip("sm_90a kernel")
    _attn_check(arch, "wgmma", (1, 2, 1, 300, nk, 128, False, "HND", torch.bfloat16), SageSettings(smooth_v=smooth_v))


@pytest.mark.parametrize("family", ["wgmma", "mma_sync"])
@pytest.mark.parametrize("i", range(len(ATTN_CASES)), ids=lambda i: "x".join(map(str, ATTN_CASES[i][:6])))
def test_attention_matches_spec(arch, poisoned, family, i):
    if family not in families(arch):
        pytest.skip(f"{family} needs another arch")
    case = ATTN_CASES[i]
    settings = ATTN_SETTINGS[i % len(ATTN_SETTINGS)]
    if family == "wgmma" and (settings.qk_dtype != "int8" or settings.pv_dtype != "fp8"):
        settings = SageSettings(granularity=settings.granularity, smooth_q=settings.smooth_q)
    _attn_check(arch, family, case, settings)


@pytest.mark.parametrize("family", ["wgmma", "mma_sync"])
@pytest.mark.parametrize("settings", ATTN_SETTINGS, ids=lambda s: s.label().replace(" ", "_"))
def test_attention_settings(arch, poisoned, family, settings):
    if family not in families(arch):
        pytest.skip(f"{family} needs another arch")
    _attn_check(arch, family, (2, 8, 2, 300, 700, 128, True, "HND", torch.bfloat16), settings)


def test_quantize_rounding_matches_numerics(arch, tmp_path, nvcc_check_program):
    """The quantization kernels round x * __frcp_rn(scale) with one FMA (csrc/common/numeric.cuh,
    quantize_rn_bits); numerics/ rounds the float64 product with the float64 reciprocal rounded to float32.
    Both must agree bit for bit, ties included, and a group's amax must land on qmax exactly
    (tests/cuda/quantize_rn_check.cu, 2^28 pairs)."""
    exe = tmp_path / "quantize_rn_check"
    build = nvcc_check_program(Path(__file__).parent / "cuda" / "quantize_rn_check.cu", arch, exe)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(exe), "28"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_int4_auto_on_hopper_refused(arch):
    if arch != "90a":
        pytest.skip("sm_90a rule")
    q, k, v = make_qkv(1, 2, 2, 64, 64, 64, torch.float16)
    with pytest.raises(kernels.KernelUnavailable, match="INT4"):
        kernels.sageattn_cuda(q, k, v, settings=SageSettings(qk_dtype="int4"))


def test_compiled_and_graph_replay_match_eager(arch):
    """torch.compile(fullgraph) runs the custom op; a CUDA graph capture of the op replays identically."""
    q, k, v = make_qkv(1, 4, 2, 512, 512, 128, torch.bfloat16)
    s = SageSettings(smooth_q=True)

    def fn(q, k, v):
        return kernels.sageattn_cuda(q, k, v, is_causal=True, settings=s)[0]

    eager = fn(q, k, v)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v)
    # k_mean is summed with atomics, so a rounding tie of K may flip between runs: close, not bitwise
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-2)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(q, k, v)  # warm-up outside capture (library load, allocator)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(q, k, v)
    q2, k2, v2 = make_qkv(1, 4, 2, 512, 512, 128, torch.bfloat16, seed=99)
    q.copy_(q2), k.copy_(k2), v.copy_(v2)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, fn(q, k, v), rtol=1e-2, atol=1e-2)


def test_sageattn_cuda_backend_matches_reference_backend(arch):
    """The public op routes backend="cuda" through the custom op; same answer as backend="reference"
    (NHD layout, GQA, head dim 96 padded to 128, LSE with the K-smoothing correction)."""
    from sage_cli.attention import sageattn

    q, k, v = make_qkv(2, 8, 2, 333, 555, 96, torch.float16, "NHD")
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # the NHD tensors themselves
    s = SageSettings(smooth_q=True)
    fam = dispatch.resolve_family(arch, s)
    o, lse = sageattn(q, k, v, tensor_layout="NHD", is_causal=True, return_lse=True, backend="cuda", settings=s)
    ro, rlse = sageattn(q, k, v, tensor_layout="NHD", is_causal=True, return_lse=True, backend="reference",
                        settings=kernels.reference_settings(128, s, fam))
    assert o.shape == q.shape and o.dtype == q.dtype
    assert error_metrics(o, ro)["rel_l1"] < 0.01
    torch.testing.assert_close(lse, rlse, rtol=0, atol=0.02)


def test_settings_as_the_kernel_runs_agree_with_the_library(arch):
    """settings.as_the_kernel_runs (what calibration and artifacts use, GPU or not) says what the library
    says, for every candidate of every target that this GPU runs."""
    from sage_cli.calibrate.candidates import candidates
    from sage_cli.settings import as_the_kernel_runs

    for target in ("90", "89", "86"):
        for cand in candidates(target):
            try:
                served = kernels.reference_settings(128, cand)
            except kernels.KernelUnavailable:
                continue  # e.g. INT4 on an H100
            assert as_the_kernel_runs(cand, arch) == served, (target, cand)
