"""Chapter 13's "build it" check: one decoding step of (grouped-query) attention with a KV cache."""
import torch
import torch.nn.functional as F

import minilib.attention as attention
import minilib.generation as generation
from minilib.attention import MultiHeadAttention
from minilib.course.checks.core import CheckFailed, exercise, expect_close
from minilib.course.checks.guards import forbidden_calls

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
