"""CPU tests of the kernel layer: every target compiles, the cache and the lock behave, the ctypes structs
match the C header, errors are one clear line, and torch.compile traces the custom op with no graph break."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sage_cli import kernels
from sage_cli.kernels import builder as kbuild
from sage_cli.kernels import dispatch, layout, library
from sage_cli.settings import SageSettings

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def have_nvcc() -> bool:
    try:
        kbuild.find_nvcc()
        return True
    except kernels.KernelBuildError:
        return False


# CI (CI=true, as .ci/run is run) has nvcc and must compile every target: there a missing nvcc fails the
# build tests instead of skipping them, so a broken toolchain cannot pass as "skipped".
needs_nvcc = pytest.mark.skipif(not have_nvcc() and os.environ.get("CI", "").lower() != "true",
                                reason="no nvcc on this machine")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAGE_NO_JIT", raising=False)
    dispatch.reset()
    yield tmp_path / "cache" / "kernels"
    dispatch.reset()


@pytest.fixture
def fake_csrc(tmp_path, monkeypatch):
    """A minimal source tree: the real ABI header and api.cu, no kernels (fast to compile)."""
    root = tmp_path / "csrc"
    (root / "common").mkdir(parents=True)
    shutil.copy(CSRC / "sage_abi.h", root)
    shutil.copy(CSRC / "api.cu", root)
    for f in ("internal.h", "check.cuh"):
        shutil.copy(CSRC / "common" / f, root / "common")
    monkeypatch.setenv("SAGE_CSRC_DIR", str(root))
    return root


@pytest.fixture
def quant_only_csrc(fake_csrc):
    """The ABI, api.cu and the quantization kernels: a library with no attention family."""
    shutil.copytree(CSRC / "quant", fake_csrc / "quant")
    for f in ("numeric.cuh", "cp_async.cuh", "smem.cuh", "pdl.cuh", "divmod.cuh", "gpu_flags.cuh"):
        shutil.copy(CSRC / "common" / f, fake_csrc / "common")
    return fake_csrc


@pytest.mark.slow
@needs_nvcc
def test_every_target_builds(cache, tmp_path, monkeypatch):
    """The real sources compile and link for all four targets (in parallel), and a second call is cached."""
    shutil.copytree(CSRC, tmp_path / "csrc")  # a snapshot: the key must not move while we build
    monkeypatch.setenv("SAGE_CSRC_DIR", str(tmp_path / "csrc"))
    paths = kernels.build(list(kernels.ARCHS))
    assert [p.name for p in paths] == [f"libsage_sm{a}.so" for a in kernels.ARCHS]
    for arch, p in zip(kernels.ARCHS, paths):
        assert p.is_file() and p.parent.parent == cache
        syms = subprocess.run(["nm", "-D", "--defined-only", str(p)], capture_output=True, text=True).stdout
        for fn in ("sage_abi_version", "sage_compiled_arch", "sage_quantize", "sage_attn_fwd",
                   "sage_attn_blk_k", "sage_last_error"):
            assert f" T {fn}" in syms, f"{fn} not exported by {p.name}"
        assert kbuild.cached_library(arch) == p
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert kernels.build(list(kernels.ARCHS)) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # not rebuilt


@needs_nvcc
def test_cache_key_follows_sources_flags_and_target(fake_csrc, monkeypatch):
    nvcc = kbuild.find_nvcc()
    key = kbuild.cache_key("90a", nvcc)
    assert key.startswith("sm90a-") and key != kbuild.cache_key("89", nvcc)
    (fake_csrc / "api.cu").write_text((fake_csrc / "api.cu").read_text() + "\n// changed\n")
    changed = kbuild.cache_key("90a", nvcc)
    assert changed != key
    (fake_csrc / "common" / "new_helper.cuh").write_text("#pragma once\n")
    assert kbuild.cache_key("90a", nvcc) != changed  # a new header counts too
    before = kbuild.cache_key("90a", nvcc)
    monkeypatch.setenv("SAGE_NVCC_FLAGS", "-DSAGE_SOMETHING=1")
    assert kbuild.cache_key("90a", nvcc) != before


@needs_nvcc
def test_cache_key_does_not_depend_on_where_the_sources_are(fake_csrc, tmp_path, monkeypatch):
    """A build made in one checkout serves the same sources in another (a library built ahead of time and
    carried to another machine), though the include flag names the folder."""
    nvcc = kbuild.find_nvcc()
    key = kbuild.cache_key("90a", nvcc)
    moved = tmp_path / "elsewhere" / "csrc"
    shutil.copytree(fake_csrc, moved)
    monkeypatch.setenv("SAGE_CSRC_DIR", str(moved))
    assert f"-I{moved}" in kbuild.flags("90a") and kbuild.cache_key("90a", nvcc) == key
    (moved / "api.cu").write_text((moved / "api.cu").read_text() + "\n// changed\n")
    assert kbuild.cache_key("90a", nvcc) != key


def test_family_folders_become_defines(fake_csrc):
    assert "-DSAGE_HAVE_SM80" not in kbuild.flags("89", fake_csrc)
    assert "-DSAGE_WITH_SM90" in kbuild.flags("90a", fake_csrc)
    assert "-DSAGE_HAVE_SM90" not in kbuild.flags("90a", fake_csrc)
    (fake_csrc / "sm80").mkdir()
    (fake_csrc / "sm80" / "k.cu").write_text("")
    assert "-DSAGE_HAVE_SM80" in kbuild.flags("89", fake_csrc)
    assert [p.name for p in kbuild.sources("89", fake_csrc)] == ["api.cu", "k.cu"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in kbuild.flags("90a", fake_csrc)


@needs_nvcc
def test_library_without_families_links_and_says_unsupported(quant_only_csrc, cache):
    """Without sm80/sm90 sources the library still links; the families report themselves absent."""
    (path,) = kernels.build(["90a"])
    lib = library.Library(path)
    assert lib.arch == 90
    assert lib.blk_k(128, "int8", "fp8", "auto") == 0
    p = library.AttnParams()
    with pytest.raises(kernels.KernelError, match="batch must be >= 1"):
        lib.attn_fwd(p, 0)  # validation runs before any CUDA call: works without a GPU
    # A valid request (fake, aligned pointers are never dereferenced): each family says it is absent.
    fake = 1 << 20
    p = library.AttnParams(q_int=fake, k_int=fake, v=fake, q_scale=fake, k_scale=fake, v_scale=fake, o=fake,
                           o_stride_b=4 * 64 * 128, o_stride_h=64 * 128, o_stride_n=128, batch=1, heads_q=4,
                           heads_kv=4, seq_q=64, seq_k=64, head_dim=128, seq_q_pad=128, seq_k_pad=128, sm_scale=0.1)
    with pytest.raises(kernels.KernelUnavailable, match="without the wgmma family"):
        lib.attn_fwd(p, 0)
    p.family = library.FAMILY["mma_sync"]
    with pytest.raises(kernels.KernelUnavailable, match="without the mma.sync family"):
        lib.attn_fwd(p, 0)
    p.head_dim = 96
    with pytest.raises(kernels.KernelError, match="head_dim must be 64 or 128, got 96"):
        lib.attn_fwd(p, 0)


@needs_nvcc
def test_compile_error_quotes_nvcc(fake_csrc, cache):
    (fake_csrc / "quant").mkdir()
    (fake_csrc / "quant" / "broken.cu").write_text("int f() { return undefined_thing; }\n")
    with pytest.raises(kernels.KernelBuildError) as e:
        kernels.build(["89"])
    assert "broken.cu" in str(e.value) and "undefined_thing" in str(e.value)
    assert not list(cache.glob("*/libsage_sm89.so"))  # nothing half-built left behind


def test_no_nvcc_is_one_clear_line(monkeypatch, cache):
    monkeypatch.setattr(kbuild, "_nvcc_candidates", lambda: [])
    with pytest.raises(kernels.KernelBuildError) as e:
        kernels.build(["90a"])
    msg = str(e.value)
    assert "\n" not in msg and "nvcc not found" in msg and "nvidia-cuda-nvcc" in msg


def test_unknown_target(cache):
    with pytest.raises(kernels.KernelBuildError, match="unknown kernel target"):
        kernels.build(["75"])
    assert kbuild.check_arch("sm_90") == "90a"


@needs_nvcc
def test_no_jit_forbids_building(monkeypatch, cache):
    monkeypatch.setenv("SAGE_NO_JIT", "1")
    with pytest.raises(kernels.KernelBuildError, match="SAGE_NO_JIT=1 forbids building"):
        kbuild.library_path("89")
    with pytest.raises(kernels.KernelUnavailable, match="SAGE_NO_JIT"):
        dispatch.load("89")
    assert not cache.exists() or not list(cache.glob("*/*.so"))


def test_status_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    st = kernels.status()
    assert not st.available and st.arch is None and "no CUDA device" in st.reason


def test_sageattn_cuda_on_cpu_raises():
    q = torch.randn(1, 2, 8, 64, dtype=torch.float16)
    with pytest.raises(kernels.KernelUnavailable, match="CUDA tensors"):
        kernels.sageattn_cuda(q, q, q)
    assert "CUDA" in kernels.unsupported_reason(q, q, q, settings=SageSettings())


def test_unsupported_inputs_are_named():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 4, 8, 96, dtype=torch.float16, device="cuda")
        assert "head dim 96" in dispatch.input_problem(q, q, q)
        q32 = torch.empty(1, 4, 8, 64, dtype=torch.float32, device="cuda")
        assert "float16 or bfloat16" in dispatch.input_problem(q32, q32, q32)
        q = torch.empty(1, 3, 8, 64, dtype=torch.float16, device="cuda")
        k = torch.empty(1, 2, 8, 64, dtype=torch.float16, device="cuda")
        assert "multiple of Hkv" in dispatch.input_problem(q, k, k)


def test_family_rules():
    int8, int4, fp16 = SageSettings(), SageSettings(qk_dtype="int4"), SageSettings(pv_dtype="fp16")
    assert dispatch.resolve_family("90a", int8) == "wgmma"
    assert dispatch.resolve_family("90a", fp16) == "mma_sync"
    with pytest.raises(kernels.KernelUnavailable, match="emulated"):
        dispatch.resolve_family("90a", int4)
    assert dispatch.resolve_family("90a", int4, "mma_sync") == "mma_sync"  # forced, for tests
    assert dispatch.resolve_family("89", int4) == "mma_sync"
    with pytest.raises(kernels.KernelUnavailable, match="sm_89"):
        dispatch.resolve_family("86", int8)  # FP8 P.V needs Ada or Hopper
    with pytest.raises(kernels.KernelUnavailable, match="sm_90a"):
        dispatch.resolve_family("89", int8, "wgmma")
    with pytest.raises(ValueError):
        dispatch.resolve_family("89", int8, "tensor_cores")
    assert dispatch.arch_of((8, 7)) == "86" and dispatch.arch_of((9, 0)) == "90a"
    assert dispatch.arch_of((7, 5)) is None and dispatch.arch_of((10, 0)) is None


def test_ctypes_structs_match_the_c_header(tmp_path):
    """offsetof/sizeof of every field, printed by a C program compiled against csrc/sage_abi.h."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    structs = {"SageQuantParams": library.QuantParams,
               "SageAttnParams": library.AttnParams}
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "sage_abi.h"', "int main(void) {"]
    for cname, py in structs.items():
        lines.append(f'printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for field, _ in py._fields_:
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof({cname}, {field}));')
    # the workspace the Python side allocates for sage_quantize (library.py mirrors the header's macros)
    lines.append('printf("workspace %lld\\n", (long long)SAGE_QUANT_WORKSPACE_FLOATS(2, 3, 128));')
    lines += ["return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines))
    (tmp_path / "cuda_stub").mkdir()
    exe = tmp_path / "abi"
    subprocess.run([cc, f"-I{CSRC}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    want = set(filter(None, out))
    have = {f"workspace {library.quant_workspace_floats(2, 3, 128)}"}
    for cname, py in structs.items():
        have.add(f"{cname} sizeof {__import__('ctypes').sizeof(py)}")
        for field, _ in py._fields_:
            have.add(f"{cname} {field} {getattr(py, field).offset}")
    assert have == want


@pytest.mark.parametrize("via", ["sageattn", "sageattn_cuda"])
def test_compile_fullgraph_traces_the_custom_op(via):
    """sageattn(..., backend="cuda") / sageattn_cuda under torch.compile(fullgraph=True): one graph, holding
    sage::attn_fwd.

    Runs on a CPU-only machine: the inputs are fake CUDA tensors, so tracing runs the op's fake
    implementation (shapes only) and never the kernels. (A CPU-only torch cannot slice fake CUDA tensors,
    so sageattn's LSE path, which slices k_mean, is traced through sageattn_cuda only.)
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sage_cli.attention import sageattn

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fn(q, k, v):
        if via == "sageattn":
            return sageattn(q, k, v, is_causal=True, backend="cuda", smooth_q=True) * 2, None
        o, lse, _ = kernels.sageattn_cuda(q, k, v, is_causal=True, return_lse=True, settings=SageSettings(smooth_q=True))
        return o * 2, lse

    torch._dynamo.reset()
    with FakeTensorMode():
        q = torch.empty(2, 4, 100, 64, dtype=torch.bfloat16, device="cuda")
        k = torch.empty(2, 2, 90, 64, dtype=torch.bfloat16, device="cuda")
        o, lse = torch.compile(fn, backend=backend, fullgraph=True)(q, k, k)
        assert o.shape == q.shape and o.dtype == q.dtype
        assert lse is None if via == "sageattn" else lse.shape == (2, 4, 100)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert "sage.attn_fwd" in targets, targets


def test_fake_impl_keeps_layout():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        nhd = torch.empty(1, 50, 4, 128, dtype=torch.float16, device="cuda").transpose(1, 2)  # HND view
        kv = torch.empty(1, 50, 2, 128, dtype=torch.float16, device="cuda").transpose(1, 2)
        o, lse, k_mean = torch.ops.sage.attn_fwd(nhd, kv, kv, False, 0.1, False, "int8", "per_thread", False,
                                                 False, "fp8", "two_level", None, "auto")
        assert o.stride() == nhd.stride() and lse.shape == (0,) and k_mean.shape == (1, 2, 128)


def test_status_and_unsupported_reason_trace_as_constants():
    """`sageattn(backend="auto")` asks status() and unsupported_reason() inside compiled code: both must
    trace under fullgraph=True (they are taken as constants at trace time)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fn(q):
        ok = kernels.status().available and kernels.unsupported_reason(q, q, q, settings=SageSettings()) is None
        return q * 2 if ok else q * 3

    torch._dynamo.reset()
    with FakeTensorMode():
        q = torch.empty(1, 4, 16, 64, dtype=torch.float16, device="cuda")
        torch.compile(fn, backend=backend, fullgraph=True)(q)
    assert len(graphs) == 1


def test_smooth_q_bias_that_would_not_fit_is_refused_with_its_size():
    """ds = q_mean . K'^T is materialized in fp32 [B, Hq, Nq/64, Nk]: at video lengths it is refused (auto then
    falls back and counts the reason) instead of allocating gigabytes mid-generation."""
    small = dispatch.smooth_q_bias_problem((1, 32, 4096, 128), (1, 8, 4096, 128), smooth_q=True)
    assert small is None  # 4 * 32 * 64 * 4096 bytes = 32 MiB
    big = dispatch.smooth_q_bias_problem((1, 24, 75_000, 64), (1, 24, 75_000, 64), smooth_q=True)
    assert big is not None and "GiB" in big and "SAGE_MAX_SMOOTH_Q_BIAS_BYTES" in big
    assert dispatch.smooth_q_bias_problem((1, 24, 75_000, 64), (1, 24, 75_000, 64), smooth_q=False) is None


def test_kernel_entry_points_refuse_an_oversized_smooth_q_bias(monkeypatch):
    """The op's own input check (run before any CUDA work) applies the same guard, with the call's settings."""
    from sage_cli.kernels import ops
    from sage_cli.kernels.errors import KernelUnavailable
    from sage_cli.settings import SageSettings

    monkeypatch.setattr(dispatch, "input_problem", lambda q, k, v: None)  # CPU tensors stand in for CUDA ones
    q = torch.empty(1, 1, 1, 1).expand(1, 24, 75_000, 64)
    with pytest.raises(KernelUnavailable, match="GiB"):
        ops._check_inputs(q, q, q, SageSettings(smooth_q=True))
    ops._check_inputs(q, q, q, SageSettings(smooth_q=False))


def test_every_kernel_family_tells_the_reference_its_row_sum():
    """kernels.reference_settings gives numerics/ the denominator each family computes; a family without
    an entry would be compared against the wrong spec."""
    from sage_cli.kernels import ops
    from sage_cli.settings import ROW_SUMS

    families = [f for f in dispatch.FAMILIES if f != "auto"]
    assert sorted(ops.ROW_SUM) == sorted(families)
    assert all(v in ROW_SUMS for v in ops.ROW_SUM.values())
    assert ops.ROW_SUM["wgmma"] == "mma" and ops.ROW_SUM["mma_sync"] == "fp32"


@needs_nvcc
@pytest.mark.parametrize("arch", ["80", "90a"])
def test_gpu_check_programs_compile(arch, tmp_path, nvcc_check_program):
    """The standalone CUDA checks the GPU tests build (tests/cuda/) compile here too, so CI sees their errors."""
    for src in sorted((Path(__file__).parent / "cuda").glob("*.cu")):
        r = nvcc_check_program(src, arch, tmp_path / (src.stem + ".o"), compile_only=True)
        assert r.returncode == 0, f"{src.name} (sm_{arch}): {r.stderr[-2000:]}"
