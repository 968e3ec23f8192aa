"""llama.cpp's block formats q8_0 and q4_0 (chapter 13): weights for decoding, one scale per 32 numbers.

A weight row is cut into blocks of 32 consecutive inputs; each block keeps one float16 scale d and
32 small integer codes q, and w ≈ d·q:

    q8_0:  d = max|w| / 127,          q = round(w / d)              ∈ [-127, 127]   (8.5 bits per weight)
    q4_0:  d = m / -8 (m: the signed   q = trunc(w / d + 8.5) - 8    ∈ [-8, 7]       (4.5 bits per weight)
           value of largest magnitude)

q4_0 maps the largest-magnitude weight exactly onto -8, the end of the 4-bit grid that has no positive
twin, so that grid step is one 8th of it. Codes are computed with the float32 d, which is then stored
as float16, exactly as llama.cpp does: :func:`quantize_blocks` gives bit for bit the codes and scales of
the ``gguf`` package (``gguf.quants.quantize``, llama.cpp's reference in numpy).

A small block (32) tracks local outliers better than chapter 07's one scale per row, at the cost of
a float16 per 32 weights. :class:`BlockQuantLinear` keeps only codes and scales, and dequantizes its
weight on the fly.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minilib.quant.affine import absmax_quantize
from minilib.quant.int4 import pack_int4, unpack_int4
from minilib.quant.swap import linear_layer_names, replace_linears

BLOCK = 32
FORMATS = ("q8_0", "q4_0")


class BlockQuantized(NamedTuple):
    """A weight (out, in) in a block format.

    codes: q8_0: int8 (out, in) in [-127, 127]; q4_0: uint8 (out, in / 2), two codes per byte stored as
    q + 8 ∈ [0, 15], with gguf's layout (in each block, byte j holds code j in its low nibble and code
    j + 16 in its high nibble). scales: float16 (out, in / 32), one per block.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    fmt: str

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def _check(w: torch.Tensor, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"expected a float weight of shape (out, in), got {got}")
    if w.shape[1] % BLOCK:
        raise ValueError(f"{fmt} needs an input dimension that is a multiple of {BLOCK}, got {w.shape[1]} "
                         f"(weight shape {tuple(w.shape)})")


def _reciprocal(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d = 0 (a block of zeros gets codes 0)."""
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


@torch.no_grad()
def quantize_blocks(w: torch.Tensor, fmt: str) -> BlockQuantized:
    """(out, in) float weight → :class:`BlockQuantized` in ``fmt`` ("q8_0" or "q4_0"); ``in`` a multiple of 32."""
    _check(w, fmt)
    blocks = w.detach().float().reshape(w.shape[0], -1, BLOCK)                 # (out, in/32, 32)
    if fmt == "q8_0":   # chapter 07's absmax quantizer on each block, with llama.cpp's arithmetic
        codes, d = absmax_quantize(blocks, 8, dim=-1, llama_cpp=True)
        codes = codes.reshape(w.shape)
    else:
        largest = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))  # signed, (out, in/32, 1)
        d = largest / -8
        nibbles = torch.trunc(blocks * _reciprocal(d) + 8.5).clamp(0, 15).to(torch.uint8)
        codes = pack_int4(_gguf_order(nibbles)).reshape(w.shape[0], -1)          # (out, in/2)
    return BlockQuantized(codes, d.squeeze(-1).to(torch.float16), fmt)


def _gguf_order(nibbles: torch.Tensor) -> torch.Tensor:
    """(..., 32) → (..., 32) as j, j + 16, j + 1, j + 17, ...: pack_int4 then puts code j in the low nibble of
    byte j and code j + 16 in its high nibble, gguf's layout."""
    return torch.stack([nibbles[..., :16], nibbles[..., 16:]], dim=-1).flatten(-2)


def block_codes(q: BlockQuantized) -> torch.Tensor:
    """The signed integer codes, int8 (out, in): q8_0 as stored, q4_0 unpacked to [-8, 7]."""
    if q.fmt == "q8_0":
        return q.codes
    pairs = unpack_int4(q.codes.reshape(q.codes.shape[0], -1, BLOCK // 2))     # (out, in/32, 32): j, j + 16, ...
    nibbles = pairs.unflatten(-1, (BLOCK // 2, 2)).transpose(-1, -2).flatten(-2)   # back to 0, 1, ..., 31
    return (nibbles.to(torch.int8) - 8).reshape(q.codes.shape[0], -1)


def dequantize_blocks(q: BlockQuantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:class:`BlockQuantized` → float weight (out, in): w = d·q, block by block."""
    codes = block_codes(q)
    out = codes.shape[0]
    blocks = codes.reshape(out, -1, BLOCK).to(dtype)                           # (out, in/32, 32)
    return (blocks * q.scales.to(dtype)[..., None]).reshape(out, -1)


class BlockQuantLinear(nn.Module):
    """A linear layer whose weight is kept in q8_0 or q4_0; forward dequantizes it and multiplies.

    llama.cpp fuses the dequantization into its dot products; here it is one extra pass over the
    weight per call, so the saving is in memory (what a token-by-token decoder reads), not in FLOPs.
    """

    def __init__(self, q: BlockQuantized, bias: torch.Tensor | None):
        super().__init__()
        self.fmt, self.out_features = q.fmt, q.codes.shape[0]
        self.in_features = q.scales.shape[1] * BLOCK
        self.register_buffer("codes", q.codes)
        self.register_buffer("scales", q.scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str) -> "BlockQuantLinear":
        return cls(quantize_blocks(linear.weight, fmt), linear.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_blocks(BlockQuantized(self.codes, self.scales, self.fmt), dtype)

    def forward(self, x):
        """x: (..., in_features) → (..., out_features)."""
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}"


def quantize_model_blocks(model: nn.Module, fmt: str, skip=("lm_head",)) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are :class:`BlockQuantLinear` in ``fmt``.

    skip: names or patterns of layers to keep in float (by default a language model's output head, which shares its
    weight with the token embeddings).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    model = copy.deepcopy(model)
    return replace_linears(model, linear_layer_names(model, skip), lambda layer: BlockQuantLinear.from_linear(layer, fmt))
