"""Checks for chapter 13 (fast generation): KV-cache bytes, speculative acceptance, q8_0.

The chapter's "build it" check: one decoding step of (grouped-query) attention with a KV cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import minilib.attention as attention
import minilib.generation as generation
from minilib.attention import MultiHeadAttention
from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_equal
from minilib.course.checks.guards import forbidden_calls
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


# --- the "build it" exercise ------------------------------------------------------------

_LIBRARY = [(attention, "scaled_dot_product_attention"), (F, "scaled_dot_product_attention"), (generation, "KVCache")]
_HINT = ("write the step yourself: the layer's projections (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj), "
         "the cache writes and the softmax")


def _refuse_layer_call(*args, **kwargs):
    raise CheckFailed("your step called the layer itself (attn(...))", "the step written out", "a call of attn.forward",
                      hint=_HINT)


def _layer(n_kv_heads, seed):
    torch.manual_seed(seed)
    return MultiHeadAttention(64, 4, n_kv_heads=n_kv_heads).eval()


@exercise(points=3)
def check_cached_attention_step(fn):
    """fn(attn, x_new (B, 1, d), k_cache, v_cache (B, n_kv, max_len, hd), length) → (B, 1, d), filling the caches.

    Fed one token at a time, it must give what causal attention over the whole sequence gives at each
    position, and leave that token's key and value at position ``length`` of the caches.
    """
    for n_kv_heads in (4, 2):
        attn = _layer(n_kv_heads, seed=n_kv_heads)
        x = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = attn(x, is_causal=True)[0]
            k_cache, v_cache = torch.zeros(2, n_kv_heads, 8, 16), torch.zeros(2, n_kv_heads, 8, 16)
            for t in range(6):
                attn.forward = _refuse_layer_call            # on this instance only: attn(...) trips
                try:
                    with forbidden_calls(fn, _LIBRARY, _HINT):
                        out = fn(attn, x[:, t:t + 1], k_cache, v_cache, t)
                finally:
                    del attn.forward
                what = f"output for token {t} (n_heads 4, n_kv_heads {n_kv_heads})"
                if not isinstance(out, torch.Tensor):
                    raise CheckFailed(what, "a tensor (batch, 1, d_model)", type(out).__name__)
                expect_close(what, out, full[:, t:t + 1], atol=1e-5,
                             hint="write k, v at position `length`, attend over positions 0 … length (no mask "
                                  "needed), and with fewer kv heads repeat each one for its group of query heads")
            expected_k = attn.k_proj(x).view(2, 6, n_kv_heads, 16).transpose(1, 2)
            expect_close(f"k_cache[:, :, :6] after 6 steps (n_kv_heads {n_kv_heads})", k_cache[:, :, :6], expected_k,
                         hint="store the new key in the cache in place: k_cache[:, :, length] = …")
