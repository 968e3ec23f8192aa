"""Rotary position embeddings, RoPE (chapter 14; Su et al. 2021), in Llama's "rotate half" layout.

Instead of adding a position vector to the input (chapter 03), RoPE *rotates* each query and key by an
angle proportional to its position m. The head's dimensions are paired, and pair i turns at its own
frequency θ_i = base^(-2i/d), i = 0 … d/2 - 1 (fast for small i, slow for large i):

    [x_i, x_{i+d/2}]  →  [x_i·cos mθ_i − x_{i+d/2}·sin mθ_i,  x_{i+d/2}·cos mθ_i + x_i·sin mθ_i]

which is, for the whole vector, ``x·cos + rotate_half(x)·sin``. A query at position m and a key at
position n then meet in q·k as a function of their difference m - n only: rotations compose, R(m)ᵀR(n) = R(n - m).
So a key rotated once, when it enters the KV cache, stays right for every later query; a cache only has
to give the new tokens their true positions (the offset ``cache.length``).

Llama (and Hugging Face's ``apply_rotary_pos_emb``) pairs dimension i with i + d/2 ("rotate half"); the
RoPE paper pairs 2i with 2i + 1. The two are the same rotation on permuted dimensions, but weights trained
with one do not work with the other.
"""
from __future__ import annotations

import torch
from torch import nn


def rotary_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """θ_i = base^(-2i/d) for i = 0 … d/2 - 1: (head_dim / 2,) float32, one angle per position per pair."""
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"rotary embeddings pair dimensions: head_dim must be a positive even int, got {head_dim!r}")
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


class RotaryEmbedding(nn.Module):
    """cos(mθ) and sin(mθ) for given positions m, laid out for :func:`apply_rotary` (nothing trained)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", rotary_frequencies(head_dim, base), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32):
        """positions: (seq,) or (batch, seq) integers → (cos, sin), each (…, seq, head_dim) in ``dtype``.

        The angles are computed in float32 whatever ``dtype`` is: positions in the thousands times θ_0 = 1
        would lose their fractional part in float16.
        """
        angles = positions[..., None].float() * self.inv_freq         # (…, seq, hs/2): m·θ_i
        angles = torch.cat([angles, angles], dim=-1)                  # (…, seq, hs): dims i and i + hs/2 share θ_i
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x_1, x_2] → [-x_2, x_1], halves of the last dimension: the 90° turn of each pair (i, i + d/2)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of ``x`` by its position's angle: x·cos + rotate_half(x)·sin.

    x: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim), or (batch, 1, seq, head_dim) for
    positions that differ per row. Returns x's shape.
    """
    return x * cos + rotate_half(x) * sin
