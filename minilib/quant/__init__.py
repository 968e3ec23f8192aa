"""Quantization from scratch (chapter 07): store numbers in 8, 4 or fewer bits, and compute on integers.

- :mod:`~minilib.quant.affine` — ``quantize`` / ``dequantize``: scale, zero point, per-tensor and per-channel.
- :mod:`~minilib.quant.observers` — calibration: min-max, percentile and MSE-optimal clipping ranges.
- :mod:`~minilib.quant.int8` — ``QuantLinear``: int8 weights × int8 activations on a real int8 GEMM.
- :mod:`~minilib.quant.int4` — ``Int4Linear``: weight-only int4, group-wise scales, two codes per byte.
- :mod:`~minilib.quant.model` — ``quantize_model``: swap a model's ``nn.Linear`` layers (minilib or HF BERT).
- :mod:`~minilib.quant.fake` — fake quantization with a straight-through estimator, and QAT.
- :mod:`~minilib.quant.blocks` — llama.cpp's q8_0 / q4_0 block formats and ``BlockQuantLinear`` (chapter 13).
"""
from minilib.quant.affine import QuantizedTensor, dequantize, qrange, quantize, scale_and_zero_point
from minilib.quant.blocks import (
                                   BlockQuantized,
                                   BlockQuantLinear,
                                   dequantize_blocks,
                                   quantize_blocks,
                                   quantize_model_blocks,
)
from minilib.quant.fake import FakeQuantLinear, fake_quantize, prepare_qat
from minilib.quant.int4 import Int4Linear, pack_int4, unpack_int4
from minilib.quant.int8 import QuantLinear, int8_matmul, quantize_rows
from minilib.quant.model import quantize_model
from minilib.quant.observers import MinMaxObserver, MSEObserver, Observer, PercentileObserver

__all__ = [
    "QuantizedTensor", "quantize", "dequantize", "qrange", "scale_and_zero_point",
    "MinMaxObserver", "PercentileObserver", "MSEObserver", "Observer",
    "QuantLinear", "int8_matmul", "quantize_rows",
    "Int4Linear", "pack_int4", "unpack_int4",
    "quantize_model",
    "fake_quantize", "FakeQuantLinear", "prepare_qat",
    "quantize_blocks", "dequantize_blocks", "BlockQuantized", "BlockQuantLinear", "quantize_model_blocks",
]
