"""Affine (uniform) quantization: the number line with a scale and a zero point.

A real value ``x`` is stored as a small integer ``q`` on an evenly spaced grid::

    q = clamp(round(x / s) + z, q_min, q_max)        # quantize
    x̂ = s · (q − z)                                   # dequantize

``s`` (the *scale*) is the grid step and ``z`` (the *zero point*) is the integer that stands for 0.0.
Both come from the clipping range ``[lo, hi]`` that the grid must cover:

- **symmetric**: ``z = 0``, ``s = max(|lo|, |hi|) / (2^(b−1) − 1)``, ``q ∈ [−(2^(b−1) − 1), 2^(b−1) − 1]``
  (for 8 bits: ``[−127, 127]``; dropping −128 keeps the grid symmetric around 0);
- **asymmetric (affine)**: ``s = (hi − lo) / (2^b − 1)``, ``z = round(−lo / s)``, ``q ∈ [0, 2^b − 1]``
  (for 8 bits: ``[0, 255]``); the range is first widened to contain 0 so that 0.0 is stored exactly.

Every value inside ``[lo, hi]`` comes back with an error of at most ``s / 2`` (half a grid step);
values outside are clipped to the ends of the range. *Per-tensor* quantization uses one ``(s, z)``
for the whole tensor; *per-channel* (``axis=k``) uses one pair per index along dimension ``k``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits) -> int:
    """Return ``bits`` if it is an int in 2..8, else raise a ValueError that says what was given."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """The integer range ``(q_min, q_max)``: ``(−(2^(b−1)−1), 2^(b−1)−1)`` symmetric, ``(0, 2^b−1)`` affine."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass
class QuantizedTensor:
    """Integers plus the scale and zero point that map them back to real numbers.

    ``q``: integer tensor, same shape as the original (``int8`` if symmetric, ``uint8`` if affine).
    ``scale``, ``zero_point``: float / int tensors broadcastable to ``q`` (shape ``()`` per-tensor;
    size 1 everywhere except ``axis`` per-channel).
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None

    def dequantize(self) -> torch.Tensor:
        """x̂ = s · (q − z), as float32."""
        return dequantize(self)


def _channel_range(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of ``x`` over everything (``axis=None``) or over all dims but ``axis`` (kept, size-1 elsewhere)."""
    if axis is None:
        return x.amin(), x.amax()
    dims = [d for d in range(x.dim()) if d != axis]
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def _normalise_axis(x: torch.Tensor, axis) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be None or an int in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d tensor, got {axis!r}")
    return axis % x.dim()


def scale_and_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid step ``s`` and zero point ``z`` that cover the clipping range ``[lo, hi]`` (see the module docstring)."""
    q_min, q_max = qrange(bits, symmetric)
    tiny = torch.finfo(torch.float32).tiny  # an all-zero channel still gets a valid (non-zero) scale
    if symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / q_max).clamp_min(tiny)  # s = max|x| / (2^(b−1) − 1)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # the grid must contain 0.0 exactly
    scale = ((hi - lo) / (q_max - q_min)).clamp_min(tiny)  # s = (hi − lo) / (2^b − 1)
    zero_point = torch.round(-lo / scale).clamp(q_min, q_max).to(torch.int32)  # z = round(−lo / s)
    return scale, zero_point


def quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
             clip: tuple | None = None) -> QuantizedTensor:
    """Quantize a float tensor to ``bits``-bit integers: ``q = clamp(round(x / s) + z, q_min, q_max)``.

    x: float tensor of any shape. bits: 2..8. symmetric: ``z = 0`` (True) or affine with a zero point (False).
    axis: ``None`` for one scale for the whole tensor, or the dimension that gets one scale per index
    (per-channel; e.g. ``axis=0`` on an ``nn.Linear`` weight ``(out, in)`` gives one scale per output row).
    clip: optional ``(lo, hi)`` clipping range (numbers or tensors broadcastable like the scales), e.g. from a
    calibration observer; by default the tensor's own min and max, so nothing is clipped.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"quantize expects a floating-point tensor, got {kind}")
    check_bits(bits)
    axis = _normalise_axis(x, axis)
    x = x.detach().float()
    lo, hi = _channel_range(x, axis) if clip is None else (torch.as_tensor(clip[0]).float(), torch.as_tensor(clip[1]).float())
    scale, zero_point = scale_and_zero_point(lo, hi, bits, symmetric)
    q_min, q_max = qrange(bits, symmetric)
    q = torch.round(x / scale) + zero_point  # round(x / s) + z
    q = q.clamp(q_min, q_max).to(torch.int8 if symmetric else torch.uint8)
    return QuantizedTensor(q, scale, zero_point, bits, symmetric, axis)


def roundf(x: torch.Tensor) -> torch.Tensor:
    """C's ``roundf``: halves away from zero (``torch.round`` sends them to the even integer), written as llama.cpp's
    reference code in the ``gguf`` package writes it, so that float32 ties come out the same."""
    a = x.abs()
    floored = a.floor()
    return x.sign() * (floored + (2 * (a - floored)).floor())


def absmax_quantize(x: torch.Tensor, bits: int = 8, dim: int = -1, scale_dtype: torch.dtype | None = None,
                    llama_cpp: bool = False, unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ("absmax") quantization with one scale per slice along ``dim``: a token's row of activations,
    a block of 32 weights, a head's key vector. The one quantizer of chapters 07 and 13::

        s = max|x| / (2^(b−1) − 1),      q = round(x / s) ∈ [−(2^(b−1) − 1), 2^(b−1) − 1]

    Returns ``(q, s)``: ``q`` int8 like ``x``, ``s`` like ``x`` with ``dim`` of size 1. An all-zero slice gets
    codes 0. One reduction (``aminmax``: no copy of ``|x|``) and one divide-and-round: as few passes over
    memory as eager PyTorch allows.

    - ``scale_dtype``: the precision ``s`` is stored in (float16 for a quantized KV cache); the codes are then
      computed with the stored value, so ``s · q`` is within half a step of ``x``.
    - ``llama_cpp``: llama.cpp's q8_0 arithmetic, ``q = roundf(x · (1/s))`` (multiply by the reciprocal, round
      halves away from zero), for codes bit for bit equal to its own.
    - ``unsigned``: the codes plus 2^(b−1) as uint8 (1 … 255 for 8 bits), for x86's u8·s8 int8 kernel.
    """
    q_max = qrange(bits)[1]
    low, high = torch.aminmax(x, dim=dim, keepdim=True)
    scale = torch.maximum(high, -low) / q_max                         # s = max|x| / q_max
    if scale_dtype is not None:
        scale = scale.to(scale_dtype)
    step = scale.to(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)      # all zeros: 0 / tiny = 0, never 0 / 0
    q = roundf(x * (1 / step)) if llama_cpp else torch.div(x, step).round_()
    if scale_dtype is not None:                                        # a rounded-down stored s can push |q| past q_max
        q = q.clamp_(-q_max, q_max)
    if unsigned:
        return q.add_(q_max + 1).to(torch.uint8), scale
    return q.to(torch.int8), scale


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """Back to float32: ``x̂ = s · (q − z)``."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize expects a QuantizedTensor (from quantize), got {type(qt).__name__}")
    return qt.scale * (qt.q.to(torch.int32) - qt.zero_point).float()

