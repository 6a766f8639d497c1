"""The kernel library through ctypes: parameter structs mirroring csrc/sage_abi.h, and checked calls.

Why ctypes: the library is plain C (no torch headers), so binding it with ctypes keeps it independent of
torch's C++ ABI: a torch upgrade never forces a rebuild, CI compiles every target without torch or a GPU,
and loading needs no compiler. The cost is a few microseconds of Python per call, which CUDA graphs
remove entirely (the launches are captured, not the Python).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from .builder import ABI_VERSION
from .errors import KernelError, KernelUnavailable

c_i32, c_i64, c_ptr, c_fptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)

SAGE_OK, SAGE_ERR_INVALID, SAGE_ERR_UNSUPPORTED, SAGE_ERR_CUDA = 0, 1, 2, 3
DTYPE = {"float16": 0, "bfloat16": 1}
QK_TYPE = {"int8": 0, "int4": 1}
PV_TYPE = {"fp8": 0, "fp16": 1}
GRANULARITY = {"per_thread": 0, "per_warp": 1, "per_block": 2}
PV_ACCUM = {"two_level": 0, "narrow": 1}
FAMILY = {"auto": 0, "mma_sync": 1, "wgmma": 2}
TILE_COUNTER_INTS = 4  # SAGE_TILE_COUNTER_INTS: the workspace's last words, the attention's tile counter


def quant_workspace_floats(batch: int, heads_kv: int, head_dim: int) -> int:
    """SAGE_QUANT_WORKSPACE_FLOATS (sage_abi.h): four statistics per channel, two counters per kv head, one
    per call, then the tile counter."""
    heads = batch * heads_kv
    return 4 * heads * head_dim + 2 * heads + 1 + TILE_COUNTER_INTS


class QuantParams(ctypes.Structure):
    _fields_ = [
        ("q", c_ptr), ("k", c_ptr), ("v", c_ptr),
        ("q_stride_b", c_i64), ("q_stride_h", c_i64), ("q_stride_n", c_i64),
        ("k_stride_b", c_i64), ("k_stride_h", c_i64), ("k_stride_n", c_i64),
        ("v_stride_b", c_i64), ("v_stride_h", c_i64), ("v_stride_n", c_i64),
        ("batch", c_i32), ("heads_q", c_i32), ("heads_kv", c_i32), ("seq_q", c_i32), ("seq_k", c_i32),
        ("head_dim", c_i32), ("seq_q_pad", c_i32), ("seq_k_pad", c_i32),
        ("dtype", c_i32), ("qk_type", c_i32), ("granularity", c_i32), ("smooth_q", c_i32), ("smooth_v", c_i32),
        ("v_static_scale", c_ptr),
        ("q_int", c_ptr), ("k_int", c_ptr),
        ("q_scale", c_ptr), ("k_scale", c_ptr), ("k_mean", c_ptr), ("q_mean", c_ptr),
        ("v_fp8", c_ptr), ("v_scale", c_ptr), ("v_mean", c_ptr),
        ("workspace", c_ptr),
    ]


class AttnParams(ctypes.Structure):
    _fields_ = [
        ("q_int", c_ptr), ("k_int", c_ptr), ("v", c_ptr),
        ("v_stride_b", c_i64), ("v_stride_h", c_i64), ("v_stride_n", c_i64),
        ("q_scale", c_ptr), ("k_scale", c_ptr), ("v_scale", c_ptr), ("v_mean", c_ptr), ("ds", c_ptr),
        ("o", c_ptr),
        ("o_stride_b", c_i64), ("o_stride_h", c_i64), ("o_stride_n", c_i64),
        ("lse", c_ptr), ("tile_counter", c_ptr),
        ("batch", c_i32), ("heads_q", c_i32), ("heads_kv", c_i32), ("seq_q", c_i32), ("seq_k", c_i32),
        ("head_dim", c_i32), ("seq_q_pad", c_i32), ("seq_k_pad", c_i32),
        ("dtype", c_i32), ("qk_type", c_i32), ("granularity", c_i32), ("pv_type", c_i32), ("pv_accum", c_i32),
        ("causal", c_i32), ("family", c_i32), ("sm_scale", ctypes.c_float),
    ]


_ERROR_NAMES = {SAGE_ERR_INVALID: "invalid parameter", SAGE_ERR_UNSUPPORTED: "unsupported", SAGE_ERR_CUDA: "CUDA error"}


class Library:
    """One loaded ``libsage_sm<arch>.so``; its ABI version is checked on load.

    The ``quantize`` / ``attn_fwd`` methods take a filled params struct and a raw
    ``cudaStream_t`` (an int), and raise `KernelUnavailable` for ``SAGE_ERR_UNSUPPORTED`` (a valid request
    this library has no kernel for) or `KernelError` otherwise, with the library's one-line reason.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._lib = ctypes.CDLL(str(self.path))
        except OSError as e:
            raise KernelUnavailable(f"cannot load {self.path.name}: {e}") from e
        lib = self._lib
        for name in ("sage_abi_version", "sage_compiled_arch"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = []
        lib.sage_last_error.restype = ctypes.c_char_p
        lib.sage_last_error.argtypes = []
        lib.sage_attn_blk_k.restype = ctypes.c_int
        lib.sage_attn_blk_k.argtypes = [c_i32, c_i32, c_i32, c_i32]
        for name, struct in (("sage_quantize", QuantParams), ("sage_attn_fwd", AttnParams)):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(struct), c_ptr]
        version = lib.sage_abi_version()
        if version != ABI_VERSION:
            raise KernelUnavailable(f"{self.path.name} speaks ABI {version}, this sage needs {ABI_VERSION}; rebuild it (`sage build`)")
        self.arch = lib.sage_compiled_arch()

    def last_error(self) -> str:
        """The reason of this thread's last failed call (thread-local in the library)."""
        return (self._lib.sage_last_error() or b"").decode(errors="replace")

    def _check(self, what: str, rc: int) -> None:
        if rc == SAGE_OK:
            return
        msg = f"{what}: {self.last_error() or _ERROR_NAMES.get(rc, f'error {rc}')}"
        if rc == SAGE_ERR_UNSUPPORTED:
            raise KernelUnavailable(msg)
        raise KernelError(f"{msg} ({_ERROR_NAMES.get(rc, rc)})")

    def quantize(self, p: QuantParams, stream: int) -> None:
        self._check("sage_quantize", self._lib.sage_quantize(ctypes.byref(p), c_ptr(stream)))

    def attn_fwd(self, p: AttnParams, stream: int) -> None:
        self._check("sage_attn_fwd", self._lib.sage_attn_fwd(ctypes.byref(p), c_ptr(stream)))

    def blk_k(self, head_dim: int, qk_type: str, pv_type: str, family: str) -> int:
        return int(self._lib.sage_attn_blk_k(head_dim, QK_TYPE[qk_type], PV_TYPE[pv_type], FAMILY[family]))
