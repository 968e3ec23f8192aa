"""Checks for chapter 13 (fast generation): KV-cache bytes, speculative acceptance, q8_0."""
from __future__ import annotations

import torch

from minilib.attention import MultiHeadAttention
from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal
from minilib.quant.blocks import quantize_blocks


@exercise(points=1)
def check_kv_cache_bytes(fn):
    """fn(n_layers, batch, n_kv_heads, seq, head_dim, bytes_per_number) → bytes of keys and values."""
    cases = [((4, 1, 8, 512, 32, 4), 2 * 4 * 1 * 8 * 512 * 32 * 4, "keys and values: two tensors"),
             ((32, 8, 8, 4096, 128, 2), 2 * 32 * 8 * 8 * 4096 * 128 * 2, "a Llama-style 8B model in float16"),
             ((4, 1, 1, 512, 32, 1), 2 * 4 * 512 * 32, "multi-query attention, int8 entries")]
    for args, expected, hint in cases:
        expect_equal(f"kv_cache_bytes{args}", fn(*args), expected, hint=hint)


@exercise(points=2)
def check_accepted_count(fn):
    """fn(proposal (k,), choices (k+1,)) → how many leading drafted tokens equal the target's choices."""
    cases = [([5, 7, 9], [5, 7, 9, 2], 3, "all agree: every drafted token is kept"),
             ([5, 7, 9], [5, 8, 9, 2], 1, "stop at the first disagreement, even if later tokens agree again"),
             ([5, 7, 9], [4, 7, 9, 2], 0, "the first drafted token already differs"),
             ([3], [3, 1], 1, "k = 1")]
    for proposal, choices, expected, hint in cases:
        got = fn(torch.tensor(proposal), torch.tensor(choices))
        expect_equal(f"accepted_count({proposal}, {choices})", int(got), expected, hint=hint)


@exercise(points=2)
def check_q8_0(fn):
    """fn(w (out, in)) → (codes int8 (out, in), scales float16 (out, in/32)), equal to llama.cpp's q8_0."""
    generator = torch.Generator().manual_seed(3)
    for w, what in ((torch.randn(4, 64, generator=generator), "a random (4, 64) weight"),
                    (torch.cat([torch.zeros(1, 32), torch.full((1, 32), 0.5)]), "a block of zeros and a constant one")):
        reference = quantize_blocks(w, "q8_0")
        got = fn(w)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(what, "a pair (codes, scales)", type(got).__name__)
        codes, scales = got
        expect_close(f"scales for {what}", scales, reference.scales, atol=0, rtol=1e-3,
                     hint="one scale per block of 32 along the input dimension: max|w| / 127, stored as float16")
        expect_close(f"codes for {what}", codes, reference.codes, atol=0,
                     hint="round(w / scale) with the unrounded float32 scale; a block of zeros gets codes 0")
