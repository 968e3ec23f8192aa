"""Chapter 04's claims: blocked sliding-window attention (w=256) is at least 3× faster than PyTorch's
fused dense attention at n=8192, and its memory grows linearly in n.

Reference row: PyTorch's FlexAttention with the same window as a ``mask_mod``, compiled (a fused kernel
that skips empty 128 × 128 tiles). Where ``torch.compile`` cannot build it (no C++ compiler on a CPU),
the row says so and the headline is not counted as missed.
"""

import torch
import torch.nn.functional as F

from minilib.flex import COMPILER_HINT, block_mask, flex_attention, window_mask_mod
from minilib.sparse import sliding_window_attention
from minilib.support.bench import Headline, compare, peak_memory
from minilib.support.optional import Unavailable, optional_row

HEADS, HEAD_DIM, WINDOW, N = 6, 64, 256, 8192
FLEX_TARGET = 0.5   # our window's speed / compiled FlexAttention's: within 2× of a fused library kernel


def headlines():
    q, k, v = _qkv(N)
    with torch.no_grad():
        window_blocks = block_mask(window_mask_mod(WINDOW), N)
        # First call outside the timing: it compiles (tens of seconds on a CPU).
        flex = optional_row("FlexAttention compiled", lambda: flex_attention(q, k, v, window_blocks, compiled=True),
                            COMPILER_HINT)
        variants = {
            "torch fused dense": lambda: F.scaled_dot_product_attention(q, k, v),
            "sliding window": lambda: sliding_window_attention(q, k, v, WINDOW),
            "sliding window + 16 global": lambda: sliding_window_attention(q, k, v, WINDOW, global_tokens=16),
        }
        if not isinstance(flex, Unavailable):
            variants["FlexAttention compiled"] = lambda: flex_attention(q, k, v, window_blocks, compiled=True)
        timing = compare(variants, baseline="torch fused dense", warmup=1, repeats=5)
        growth = _memory_growth(4096, N)
    speedup = timing.ratio("sliding window")
    return [
        Headline.at_least(f"sliding window (w={WINDOW}) speed-up over torch fused SDPA (n={N}, d={HEAD_DIM}, {HEADS} heads)",
                          speedup, 3.0, "×",
                 f"with 16 global tokens: {timing.ratio('sliding window + 16 global'):.2f}×"),
        Headline.at_most(f"sliding window extra memory, n={N} vs n=4096 (linear = 2, quadratic = 4)", growth, 2.2, "×"),
        _flex_headline(timing, flex),
    ]


def _flex_headline(timing, flex):
    name = f"sliding window speed / compiled FlexAttention's (n={N}, w={WINDOW}; reference row)"
    if isinstance(flex, Unavailable):
        return Headline.unavailable(name, FLEX_TARGET, "×", "≥", str(flex))
    relative = timing.ratio("sliding window") / timing.ratio("FlexAttention compiled")
    return Headline.at_least(name, relative, FLEX_TARGET, "×",
                             f"FlexAttention {timing.ratio('FlexAttention compiled'):.2f}× over dense: one fused kernel "
                             "(scores, mask, online softmax, ·V) per 128-tile, empty tiles skipped, mask only in partial "
                             "tiles; ours writes each tile's scores, a bias and the copied neighbour keys to memory")


def _qkv(n):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, HEADS, n, HEAD_DIM, generator=generator) for _ in range(3))


def _memory_growth(small, large):
    """Peak extra memory of the kernel at n=large over n=small (inputs created outside, not counted)."""
    def extra(n):
        q, k, v = _qkv(n)
        return peak_memory(lambda: sliding_window_attention(q, k, v, WINDOW))
    return extra(large) / extra(small)
