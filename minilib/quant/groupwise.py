"""Group-wise b-bit weights and round-to-nearest (chapter 14): the storage of GPTQ and AWQ, and the floor they beat.

Each row of a weight ``W`` ``(out, in)`` is cut into groups of ``group_size`` consecutive inputs; each
``(row, group)`` gets its own affine grid of ``2^b`` levels from the group's min and max (chapter 07's
:func:`~minilib.quant.affine.scale_and_zero_point`)::

    s = (max − min) / (2^b − 1),   z = round(−min / s)          one (s, z) per row and group
    q = clamp(round(w / s + z), 0, 2^b − 1),   ŵ = s · (q − z)

``group_size = in`` is one grid per output row (per-channel). **Round-to-nearest** (RTN) stops there:
every weight goes to its nearest level, on its own. GPTQ and AWQ keep the same grids and the same storage
and choose *which* levels to use more cleverly, so the three are compared at exactly the same size.

Storage (:class:`GroupQuantLinear`): the codes packed as a little-endian bit stream (:func:`pack_bits`; 3-bit
codes take 3 bytes per 8 weights), a float32 scale and a uint8 zero point per group: ``b + 40 / group_size``
bits per weight (4.31 for 4-bit groups of 128, against 32 for float32).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minilib.quant.affine import check_bits, scale_and_zero_point
from minilib.quant.swap import linear_layer_names, replace_linears

DEFAULT_SKIP = ("lm_head", "*.lm_head")  # a language model's output head: tied to the embeddings, kept in float


def check_group_size(in_features: int, group_size: int | None) -> int:
    """``group_size`` (None: the whole row), or a ValueError naming the input dimension it must divide."""
    if group_size is None:
        return in_features
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or in_features % group_size:
        divisors = sorted({g for g in (32, 64, 128, in_features) if in_features % g == 0})
        raise ValueError(f"group_size must be a positive divisor of the input dimension {in_features} "
                         f"(e.g. {', '.join(map(str, divisors))}), got {group_size!r}")
    return group_size


def check_quantizable(layers, bits: int, group_size: int | None) -> None:
    """A ValueError, before any work, unless ``bits`` is 2..8 and ``group_size`` divides every layer's input dimension."""
    check_bits(bits)
    for layer in layers:
        check_group_size(layer.in_features, group_size)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``bits``-bit codes into bytes, as one little-endian bit stream: code j fills bits j·b … j·b + b − 1.

    codes: ``(..., n)`` integers in ``[0, 2^bits)``, with ``n · bits`` a multiple of 8 → ``(..., n · bits / 8)`` uint8.
    For 4 bits this is :func:`~minilib.quant.int4.pack_int4`'s layout (even column in the low nibble).
    """
    check_bits(bits)
    n = codes.shape[-1]
    if (n * bits) % 8:
        raise ValueError(f"pack_bits needs n · bits to be a multiple of 8, got n={n} codes of {bits} bits")
    if codes.numel() and (codes.min() < 0 or codes.max() >= 2**bits):
        raise ValueError(f"pack_bits expects codes in [0, {2**bits - 1}], got [{codes.min().item()}, {codes.max().item()}]")
    stream = (codes.int().unsqueeze(-1) >> torch.arange(bits, device=codes.device)) & 1    # (..., n, bits)
    stream = stream.flatten(-2).unflatten(-1, (-1, 8))                                     # (..., n·bits/8, 8)
    return (stream << torch.arange(8, device=codes.device)).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(..., n · bits / 8)`` uint8 → ``(..., n)`` uint8 codes."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits expects uint8 bytes, got {packed.dtype}")
    stream = (packed.int().unsqueeze(-1) >> torch.arange(8, device=packed.device)) & 1     # (..., bytes, 8)
    stream = stream.flatten(-2).unflatten(-1, (-1, bits))                                  # (..., n, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(-1).to(torch.uint8)


@dataclass
class GroupGrid:
    """The b-bit grids of a weight ``(out, in)``: ``scale`` ``(out, groups)`` float32, ``zero`` ``(out, groups)``
    int32 in ``[0, 2^b − 1]``; input column j uses group ``j // group_size``."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

    def _broadcast(self, w: torch.Tensor, columns) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``w`` with the scale and zero of each of its weights, broadcastable: all columns (``columns=None``,
        ``w`` viewed as ``(out, groups, group_size)``) or the given column indices."""
        if columns is None:
            return w.reshape(*self.scale.shape, self.group_size), self.scale[..., None], self.zero[..., None]
        groups = torch.as_tensor(columns, device=self.scale.device) // self.group_size
        return w, self.scale[:, groups], self.zero[:, groups]

    def quantize(self, w: torch.Tensor, columns=None) -> torch.Tensor:
        """q = clamp(round(w / s + z), 0, 2^b − 1): ``w`` ``(out, k)`` (the given columns, or all) → uint8 codes."""
        w_, scale, zero = self._broadcast(w, columns)
        return torch.round(w_ / scale + zero).clamp(0, 2**self.bits - 1).to(torch.uint8).reshape(w.shape)

    def dequantize(self, codes: torch.Tensor, columns=None) -> torch.Tensor:
        """ŵ = s · (q − z), float32, shaped like ``codes``."""
        codes_, scale, zero = self._broadcast(codes, columns)
        return (scale * (codes_.float() - zero)).reshape(codes.shape)

    def round(self, w: torch.Tensor, columns=None) -> torch.Tensor:
        """The nearest level of each weight: ``dequantize(quantize(w))``."""
        return self.dequantize(self.quantize(w, columns), columns)


def group_grid(weight: torch.Tensor, bits: int, group_size: int | None = 128) -> GroupGrid:
    """The min-max affine grid of every ``(row, group)`` of ``weight`` ``(out, in)``; ``group_size=None``: per row."""
    check_bits(bits)
    out_features, in_features = weight.shape
    group_size = check_group_size(in_features, group_size)
    groups = weight.detach().float().reshape(out_features, -1, group_size)      # (out, groups, group_size)
    scale, zero = scale_and_zero_point(groups.amin(-1), groups.amax(-1), bits, symmetric=False)
    return GroupGrid(scale, zero, bits, group_size)


class GroupQuantLinear(nn.Module):
    """A weight-only quantized linear layer: b-bit codes with group-wise scales and zero points.

    Buffers: ``codes`` ``(out, in · b / 8)`` uint8 (packed), ``scale`` ``(out, groups)`` float32, ``zero``
    ``(out, groups)`` uint8, ``bias`` ``(out,)`` or None. Forward dequantizes the weight (``ŵ = s · (q − z)``) and runs
    a float matmul: it saves memory and bandwidth, not arithmetic.
    """

    def __init__(self, codes: torch.Tensor, grid: GroupGrid, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.bits, self.group_size = grid.bits, grid.group_size
        self.register_buffer("codes", pack_bits(codes, grid.bits))
        self.register_buffer("scale", grid.scale.float().clone())
        self.register_buffer("zero", grid.zero.to(torch.uint8))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int | None = 128) -> "GroupQuantLinear":
        """Round-to-nearest: every weight to the nearest level of its group's min-max grid."""
        grid = group_grid(linear.weight, bits, group_size)
        return cls(grid.quantize(linear.weight.detach().float()), grid, linear.bias)

    @property
    def grid(self) -> GroupGrid:
        return GroupGrid(self.scale, self.zero.int(), self.bits, self.group_size)

    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ ``(out, in)`` float32."""
        return self.grid.dequantize(unpack_bits(self.codes, self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., in)`` → ``(..., out)``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"GroupQuantLinear expects input (..., {self.in_features}), got {tuple(x.shape)}")
        weight = self.dequantized_weight().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}")


def round_to_nearest(model: nn.Module, bits: int = 4, group_size: int | None = 128, skip=DEFAULT_SKIP) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers (but ``skip``) are :class:`GroupQuantLinear`, rounded to nearest."""
    names = linear_layer_names(model, skip)
    check_quantizable([model.get_submodule(name) for name in names], bits, group_size)
    return replace_linears(copy.deepcopy(model), names, lambda layer: GroupQuantLinear.from_linear(layer, bits, group_size))
