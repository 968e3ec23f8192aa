"""Weight-only int4: group-wise scales, two 4-bit values packed per byte (the GPTQ / AWQ storage format).

Each row of a weight ``W`` ``(out, in)`` is cut into groups of ``group_size`` consecutive inputs; each
group gets its own affine 4-bit grid (``q ∈ [0, 15]``, scale ``s`` and zero point ``z``), so an outlier
only coarsens its own group. Two 4-bit codes share one byte::

    byte = q[2i] | (q[2i + 1] << 4)          # low nibble: even column, high nibble: odd column

Storage per weight: 4 bits + (float32 scale + uint8 zero point) / group_size, i.e. about 7.4× smaller than
float32 with groups of 128. The layer dequantizes its weight on the fly (``Ŵ = s · (q − z)``) and runs a
float matmul: this saves memory and memory bandwidth (what limits batch-1 text generation on GPUs), not
arithmetic, so on a CPU at large batch it is *slower* than float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib.quant.affine import scale_and_zero_point

INT4_BITS = 4


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte. q: ``(..., n)`` integers in ``[0, 15]``, n even → ``(..., n / 2)`` uint8."""
    if q.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"pack_int4 expects an integer tensor, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension to pair values, got shape {tuple(q.shape)}")
    if q.numel() and (q.min() < 0 or q.max() > 15):
        raise ValueError(f"pack_int4 expects codes in [0, 15], got values in [{q.min().item()}, {q.max().item()}]")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)  # low nibble = even column, high nibble = odd column


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(..., n / 2)`` uint8 → ``(..., n)`` uint8 codes in ``[0, 15]``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects uint8 bytes, got {packed.dtype}")
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


class Int4Linear(nn.Module):
    """Weight-only int4 linear layer with group-wise affine scales.

    Buffers: ``weight_packed`` ``(out, in / 2)`` uint8, ``scale`` ``(out, in / group_size, 1)`` float32,
    ``zero_point`` ``(out, in / group_size, 1)`` uint8, ``bias`` ``(out,)`` float32 or None.
    Input ``(..., in)`` float → output ``(..., out)`` float32.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, bias: bool = True):
        super().__init__()
        if group_size < 2 or group_size % 2 or in_features % group_size:
            raise ValueError(f"group_size must be even and divide in_features={in_features}, got {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups, 1))
        self.register_buffer("zero_point", torch.zeros(out_features, groups, 1, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> "Int4Linear":
        """Quantize ``linear.weight`` group by group: each ``(row, group)`` gets its own 4-bit affine grid."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int4Linear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, group_size, bias=linear.bias is not None)
        groups = linear.weight.detach().float().reshape(linear.out_features, -1, group_size)  # (out, groups, group_size)
        lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale, zero_point = scale_and_zero_point(lo, hi, INT4_BITS, symmetric=False)
        codes = torch.round(groups / scale + zero_point).clamp(0, 15).to(torch.uint8)  # q = round(w / s) + z
        layer.weight_packed.copy_(pack_int4(codes.reshape(linear.out_features, -1)))
        layer.scale.copy_(scale)
        layer.zero_point.copy_(zero_point.to(torch.uint8))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ = s · (q − z), unpacked group by group: ``(out, in)`` float32."""
        codes = unpack_int4(self.weight_packed).reshape(self.out_features, -1, self.group_size)
        weight = self.scale * (codes.float() - self.zero_point.float())
        return weight.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int4Linear expects input (..., {self.in_features}), got {tuple(x.shape)}")
        return F.linear(x.float(), self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, int4 weight-only")

