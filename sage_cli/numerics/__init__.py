"""The reference implementation of sage's quantized attention: plain torch, CPU or CUDA, slow and exact.

It is the executable spec the CUDA kernels are tested against; every convention is stated in the module
that implements it (quantize.py: smoothing and quantization; accumulate.py: FP8 P.V and the narrow
accumulator; quantized.py: online softmax and output; masks.py: causal alignment).
"""
from .metrics import error_metrics
from .quantize import QuantizedQK, QuantizedV, pack_int4, padded_len, quantize_qk, quantize_v, unpack_int4
from .quantized import lse_smoothing_correction, quantized_attention, quantized_attention_core
from .reference import reference_attention

__all__ = [
    "QuantizedQK",
    "QuantizedV",
    "error_metrics",
    "lse_smoothing_correction",
    "pack_int4",
    "padded_len",
    "quantize_qk",
    "quantize_v",
    "quantized_attention",
    "quantized_attention_core",
    "reference_attention",
    "unpack_int4",
]
