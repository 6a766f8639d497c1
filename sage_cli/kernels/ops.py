"""Running the kernels from torch: buffers, the two library calls, and the ``sage::attn_fwd`` custom op.

Flow of one call (``sageattn_cuda``): allocate the ABI buffers, ``sage_quantize`` (smooth + INT8/INT4 Q
and K, and FP8 V transposed unless P.V is FP16), the smooth-Q bias ``ds`` (below), ``sage_attn_fwd``;
everything on torch's current stream, nothing synchronizes, so the whole op can be captured in a CUDA graph.

``ds = q_mean . K'^T`` (smooth Q only) is computed here with torch in fp32 (see `_smooth_q_bias`): it is
the largest cost of smooth Q today (~90 us at B=1, Hq=32, Hkv=8, N=4096 on an H100, vs ~40 us for all
the quantization kernels).

The LSE the kernels return is that of ``sm_scale * (Q K'^T + ds)``: without the K-smoothing term, like
``numerics.quantized_attention_core``; ``sageattn`` adds ``lse_smoothing_correction(q, k_mean, sm_scale)``.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..numerics.quantize import padded_len
from ..settings import SMOOTH_Q_BLOCK, SageSettings, num_k_groups, num_q_groups
from . import dispatch
from .errors import KernelUnavailable
from .library import (
    DTYPE, FAMILY, GRANULARITY, PV_ACCUM, PV_TYPE, QK_TYPE, TILE_COUNTER_INTS, AttnParams,
    Library, QuantParams, quant_workspace_floats,
)

FP8 = torch.float8_e4m3fn


@dataclass
class QuantBuffers:
    """The ABI buffers (csrc/sage_abi.h) of one call. ``*_int`` are int8, or uint8 with two INT4 values a byte.

    q_int ``[B, Hq, Nq_pad, D or D/2]``, q_scale ``[B, Hq, n_q_groups]``, k_int ``[B, Hkv, Nk_pad, D or D/2]``,
    k_scale ``[B, Hkv, n_k_groups]``, k_mean ``[B, Hkv, D]``; with smooth Q: q_mean ``[B, Hq, Nq_pad/64, D]``,
    ds ``[B, Hq, Nq_pad/64, Nk_pad]``; with FP8 PV: v_fp8 ``[B, Hkv, D, Nk_pad]`` (transposed), v_scale
    ``[B, Hkv, D]``, and v_mean ``[B, Hkv, D]`` with smooth V.
    """

    q_int: torch.Tensor
    q_scale: torch.Tensor
    k_int: torch.Tensor
    k_scale: torch.Tensor
    k_mean: torch.Tensor
    q_mean: Optional[torch.Tensor] = None
    ds: Optional[torch.Tensor] = None
    v_fp8: Optional[torch.Tensor] = None
    v_scale: Optional[torch.Tensor] = None
    v_mean: Optional[torch.Tensor] = None
    workspace: Optional[torch.Tensor] = None  # sage_quantize's scratch; its tail is the attention's tile counter


@dataclass
class Prepared:
    """Everything ``attention_only`` needs: quantized buffers, the output, and the call's options."""

    lib: Library
    family: str
    settings: SageSettings
    buffers: QuantBuffers
    v: torch.Tensor  # V as the kernel reads it with FP16 PV (rows 16-byte aligned)
    o: torch.Tensor
    lse: Optional[torch.Tensor]
    is_causal: bool
    sm_scale: float


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels write is allocated here (tests replace it to poison the memory)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _rows_aligned(t: torch.Tensor) -> bool:
    """Rows the kernels can read with 16-byte loads: last dim contiguous, strides and base 16-byte aligned."""
    return t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0


def _readable(t: torch.Tensor) -> torch.Tensor:
    return t if _rows_aligned(t) else t.contiguous()


def alloc_output(q: torch.Tensor) -> torch.Tensor:
    """O in q's dtype, shape and (when it keeps D contiguous) q's layout, so NHD in gives NHD out."""
    o = torch.empty_like(q)
    return o if o.stride(-1) == 1 else q.new_empty(q.shape)


def _static_v_scale(settings: SageSettings, b: int, hkv: int, d: int, device: torch.device) -> Optional[torch.Tensor]:
    s = settings.v_scale
    if s is None:
        return None
    if tuple(s.shape) not in ((hkv, d), (b, hkv, d)):
        raise ValueError(f"static v_scale must have shape [Hkv, D]={[hkv, d]} or [B, Hkv, D]={[b, hkv, d]}, got {list(s.shape)}")
    s = s.to(device=device, dtype=torch.float32).expand(b, hkv, d).contiguous()
    if not torch.cuda.is_current_stream_capturing() and not bool(((s > 0) & torch.isfinite(s)).all()):
        raise ValueError("static v_scale must be finite and positive")
    return s


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, settings: SageSettings) -> None:
    problem = dispatch.input_problem(q, k, v) or dispatch.smooth_q_bias_problem(tuple(q.shape), tuple(k.shape), settings.smooth_q)
    if problem is not None:
        raise KernelUnavailable(problem)


def _smooth_q_bias(q_mean: torch.Tensor, k: torch.Tensor, k_mean: torch.Tensor, nk_pad: int) -> torch.Tensor:
    """``ds = q_mean . K'^T`` ``[B, Hq, Nq_pad/64, Nk_pad]`` fp32 (0 on pad tokens), as numerics/ defines it:
    the unquantized ``K' = K - k_mean`` in fp32, one batched fp32 GEMM per kv head with the G query heads'
    block means stacked as rows.

    Cost (H100, B=1, Hq=32, Hkv=8, N=4096): ~20 us for K' and ~66 us for the GEMM, which runs on the CUDA
    cores. Two tensor-core versions were measured and lost: q_mean split into three 16-bit parts against
    [K | K | K] (building the 3x-wide K costs more than the GEMM saves), and a 3xTF32 mma.sync kernel of
    64 x 64 tiles inside the Q/K quantization (78 us here, slower at 16k; it needs a pipelined GEMM with larger
    tiles to win: bench/NOTES.md).
    """
    b, hq, nqb, d = q_mean.shape
    hkv, nk = k.shape[1], k.shape[2]
    f32 = torch.float32
    k_s = torch.empty(b, hkv, nk_pad, d, dtype=f32, device=k.device)
    torch.sub(k, k_mean[:, :, None], out=k_s[:, :, :nk])  # one pass: fp16/bf16 -> fp32 minus the mean
    k_s[:, :, nk:] = 0.0
    ds = _empty(b, hkv, (hq // hkv) * nqb, nk_pad, dtype=f32, device=k.device)
    torch.matmul(q_mean.reshape(b, hkv, (hq // hkv) * nqb, d), k_s.transpose(-1, -2), out=ds)
    return ds.reshape(b, hq, nqb, nk_pad)


def _quantize(lib: Library, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, settings: SageSettings) -> QuantBuffers:
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    nq_pad, nk_pad = padded_len(nq), padded_len(nk)
    dev, gran, f32 = q.device, settings.granularity, torch.float32
    int4 = settings.qk_dtype == "int4"
    cols, idt = (d // 2, torch.uint8) if int4 else (d, torch.int8)
    q, k = _readable(q), _readable(k)
    bufs = QuantBuffers(
        q_int=_empty(b, hq, nq_pad, cols, dtype=idt, device=dev),
        q_scale=_empty(b, hq, num_q_groups(nq_pad, gran), dtype=f32, device=dev),
        k_int=_empty(b, hkv, nk_pad, cols, dtype=idt, device=dev),
        k_scale=_empty(b, hkv, num_k_groups(nk_pad, gran), dtype=f32, device=dev),
        k_mean=_empty(b, hkv, d, dtype=f32, device=dev),
        q_mean=_empty(b, hq, nq_pad // SMOOTH_Q_BLOCK, d, dtype=f32, device=dev) if settings.smooth_q else None,
    )
    fp8_v = settings.pv_dtype == "fp8"
    static = None
    if fp8_v:
        v = _readable(v)
        static = _static_v_scale(settings, b, hkv, d, dev)
        bufs.v_fp8 = _empty(b, hkv, d, nk_pad, dtype=FP8, device=dev)
        bufs.v_scale = _empty(b, hkv, d, dtype=f32, device=dev)
        bufs.v_mean = _empty(b, hkv, d, dtype=f32, device=dev) if settings.smooth_v else None
    # zeroed by the call; kept with the buffers, since its tail is the attention's tile counter
    bufs.workspace = _empty(quant_workspace_floats(b, hkv, d), dtype=f32, device=dev)
    v_strides = v.stride()[:3] if fp8_v else (0, 0, 0)
    lib.quantize(QuantParams(
        q.data_ptr(), k.data_ptr(), v.data_ptr() if fp8_v else None,
        *q.stride()[:3], *k.stride()[:3], *v_strides,
        b, hq, hkv, nq, nk, d, nq_pad, nk_pad,
        DTYPE[str(q.dtype).removeprefix("torch.")], QK_TYPE[settings.qk_dtype], GRANULARITY[gran],
        int(settings.smooth_q), int(fp8_v and settings.smooth_v), _ptr(static),
        bufs.q_int.data_ptr(), bufs.k_int.data_ptr(), bufs.q_scale.data_ptr(), bufs.k_scale.data_ptr(),
        bufs.k_mean.data_ptr(), _ptr(bufs.q_mean),
        _ptr(bufs.v_fp8), _ptr(bufs.v_scale), _ptr(bufs.v_mean), bufs.workspace.data_ptr(),
    ), _stream(dev))

    if settings.smooth_q:
        bufs.ds = _smooth_q_bias(bufs.q_mean, k, bufs.k_mean, nk_pad)
    return bufs


def quantize(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, settings: Optional[SageSettings] = None) -> QuantBuffers:
    """Run only the quantization kernels (and ``ds``); the ABI buffers, for tests and inspection.

    q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` CUDA fp16/bf16 (HND; any strides with D contiguous).
    """
    settings = settings or SageSettings()
    _check_inputs(q, k, v, settings)
    with _on(q.device):
        return _quantize(dispatch.library_for(q.device), q, k, v, settings)


def prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, settings: Optional[SageSettings] = None, *,
    is_causal: bool = False, sm_scale: Optional[float] = None, return_lse: bool = False, family: str = "auto",
) -> Prepared:
    """Quantize once and allocate the output, so that ``attention_only`` can time the attention kernel alone.

    Raises KernelUnavailable (one-line reason) for anything the kernels do not serve.
    """
    settings = settings or SageSettings()
    _check_inputs(q, k, v, settings)
    with _on(q.device):
        lib, fam = _kernel_for(q.device.index, q.shape[-1], settings.qk_dtype, settings.pv_dtype, family)
        bufs = _quantize(lib, q, k, v, settings)
        b, hq, nq, _ = q.shape
        lse = _empty(b, hq, nq, dtype=torch.float32, device=q.device) if return_lse else None
        v_read = v if settings.pv_dtype == "fp8" else _readable(v)  # FP16 PV: the kernel reads V itself
        return Prepared(lib, fam, settings, bufs, v_read, alloc_output(q), lse, bool(is_causal),
                        float(sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])))


@functools.lru_cache(maxsize=256)
def _kernel_for(device_index: Optional[int], head_dim: int, qk_dtype: str, pv_dtype: str, family: str) -> tuple[Library, str]:
    """Library and family for one configuration on one device, looked up once (eager calls are host-bound
    at small sizes). Raises KernelUnavailable; exceptions are not cached, so a fixed cause is seen again."""
    device = torch.device("cuda", device_index) if device_index is not None else None
    arch = dispatch.device_arch(device)
    fam = dispatch.resolve_family(arch, SageSettings(qk_dtype=qk_dtype, pv_dtype=pv_dtype), family)
    lib = dispatch.load(arch)
    if lib.blk_k(head_dim, qk_dtype, pv_dtype, fam) == 0:
        raise KernelUnavailable(f"no {fam} kernel for head dim {head_dim}, {qk_dtype} QK, {pv_dtype} PV in {lib.path.name}")
    return lib, fam


def _on(device: torch.device):
    """A device guard only when ``device`` is not already current (the guard costs microseconds)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def attention_only(prepared: Prepared) -> torch.Tensor:
    """Run ``sage_attn_fwd`` on prepared buffers (writes ``prepared.o`` / ``prepared.lse``); returns o."""
    p, bufs, s = prepared, prepared.buffers, prepared.settings
    o, v = p.o, p.v
    b, hq, nq, d = o.shape
    hkv, nk = v.shape[1], v.shape[2]
    fp8 = s.pv_dtype == "fp8"
    params = AttnParams(
        bufs.q_int.data_ptr(), bufs.k_int.data_ptr(), (bufs.v_fp8 if fp8 else v).data_ptr(),
        *v.stride()[:3],
        bufs.q_scale.data_ptr(), bufs.k_scale.data_ptr(), _ptr(bufs.v_scale) if fp8 else None,
        _ptr(bufs.v_mean) if fp8 else None, _ptr(bufs.ds),
        o.data_ptr(), *o.stride()[:3], _ptr(p.lse), bufs.workspace[-TILE_COUNTER_INTS:].data_ptr(),
        b, hq, hkv, nq, nk, d, bufs.q_int.shape[2], bufs.k_int.shape[2],
        DTYPE[str(o.dtype).removeprefix("torch.")], QK_TYPE[s.qk_dtype], GRANULARITY[s.granularity],
        PV_TYPE[s.pv_dtype], PV_ACCUM[s.pv_accum], int(p.is_causal), FAMILY[p.family], p.sm_scale,
    )
    with _on(o.device):
        p.lib.attn_fwd(params, _stream(o.device))
    return o


# How each family sums the softmax denominator (settings.py, row_sum): the wgmma kernel takes it from the
# P.V wgmma (a ones column in V^T, csrc/sm90/traits.cuh), the mma.sync kernels from the fp32 P.
ROW_SUM = {"wgmma": "mma", "mma_sync": "fp32"}


def reference_settings(head_dim: int, settings: Optional[SageSettings] = None, family: str = "auto",
                       device: Optional[torch.device] = None) -> SageSettings:
    """``settings`` with the properties of the kernel that would run it here (its K block ``blk_k`` and its
    ``row_sum``), for the reference: numerics/ then computes what that kernel computes, rounding P at the
    same running maximum and summing the same denominator.

    Raises KernelUnavailable when no kernel serves the configuration here.
    """
    settings = settings or SageSettings()
    arch = dispatch.device_arch(device)
    fam = dispatch.resolve_family(arch, settings, family)
    n = dispatch.load(arch).blk_k(head_dim, settings.qk_dtype, settings.pv_dtype, fam)
    if n <= 0:
        raise KernelUnavailable(f"no {fam} kernel for head dim {head_dim}, {settings.qk_dtype} QK, {settings.pv_dtype} PV")
    return settings.replace(blk_k=n, row_sum=ROW_SUM[fam])


# ---- the custom op ------------------------------------------------------------------------------------


def _attn_fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, sm_scale: float, return_lse: bool,
    qk_dtype: str, granularity: str, smooth_q: bool, smooth_v: bool, pv_dtype: str, pv_accum: str,
    v_scale: Optional[torch.Tensor], family: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole op (quantization + attention). Returns (o, lse or an empty [0] tensor, k_mean)."""
    settings = SageSettings(qk_dtype=qk_dtype, granularity=granularity, smooth_q=smooth_q, smooth_v=smooth_v,
                            pv_dtype=pv_dtype, pv_accum=pv_accum, v_scale=v_scale)
    prep = prepare(q, k, v, settings, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse, family=family)
    o = attention_only(prep)
    lse = prep.lse if prep.lse is not None else q.new_empty((0,), dtype=torch.float32)
    return o, lse, prep.buffers.k_mean


attn_fwd = torch.library.custom_op("sage::attn_fwd", mutates_args=())(_attn_fwd_impl)


@attn_fwd.register_fake
def _attn_fwd_fake(q, k, v, is_causal, sm_scale, return_lse, qk_dtype, granularity, smooth_q, smooth_v,
                   pv_dtype, pv_accum, v_scale, family):
    b, hq, nq, d = q.shape
    lse = q.new_empty((b, hq, nq) if return_lse else (0,), dtype=torch.float32)
    return alloc_output(q), lse, q.new_empty((b, k.shape[1], d), dtype=torch.float32)


def sageattn_cuda(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False, sm_scale: Optional[float] = None,
    return_lse: bool = False, settings: Optional[SageSettings] = None, family: str = "auto",
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Quantized attention on the CUDA kernels (through the ``sage::attn_fwd`` custom op).

    Parameters
    ----------
    q : ``[B, Hq, Nq, D]`` (HND; any strides with D contiguous, e.g. an NHD tensor's transpose view).
    k, v : ``[B, Hkv, Nk, D]``, ``Hq % Hkv == 0``. float16 or bfloat16, D in {64, 128}, CUDA.
    is_causal : bottom-right aligned causal mask.
    sm_scale : default ``1 / sqrt(D)``.
    return_lse : also return the LSE (of the smoothed scores: see the module docstring).
    settings : `SageSettings` (default INT8 per_thread, FP8 PV); ``settings.blk_k`` and ``settings.row_sum`` are ignored (see `reference_settings`).
    family : ``"auto"``, or ``"mma_sync"`` / ``"wgmma"`` to force a kernel family (tests).

    Returns
    -------
    (o ``[B, Hq, Nq, D]`` in q.dtype and q's layout, lse ``[B, Hq, Nq]`` float32 or None, k_mean ``[B, Hkv, D]``)

    Raises
    ------
    KernelUnavailable : no GPU, unsupported arch, head dim, dtype, or setting (e.g. INT4 on sm_90a with
        family "auto"), or no built library; the message is one line. Under torch.compile the inputs'
        metadata is checked at trace time, the rest when the op runs.
    """
    settings = settings or SageSettings()
    problem = dispatch.input_problem(q, k, v)
    if problem is not None:
        raise KernelUnavailable(problem)
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    args = (q, k, v, bool(is_causal), scale, bool(return_lse), settings.qk_dtype, settings.granularity,
            bool(settings.smooth_q), bool(settings.smooth_v), settings.pv_dtype, settings.pv_accum, settings.v_scale, family)
    if torch.compiler.is_compiling() or not all(type(t) is torch.Tensor for t in (q, k, v)):
        o, lse, k_mean = torch.ops.sage.attn_fwd(*args)  # traced: the op (and its fake) goes into the graph
    else:
        # Plain eager tensors: call the implementation directly. The custom-op dispatcher costs ~100 us a
        # call from Python (measured on an H100: 234 us per tiny call in total), as much as the kernels.
        o, lse, k_mean = _attn_fwd_impl(*args)
    return o, (lse if return_lse else None), k_mean
