"""Chapter 04's claims: blocked sliding-window attention (w=256) is at least 3× faster than PyTorch's
fused dense attention at n=8192, and its memory grows linearly in n."""
import torch
import torch.nn.functional as F

from minilib.bench import Headline, compare, peak_memory
from minilib.sparse import sliding_window_attention

HEADS, HEAD_DIM, WINDOW = 6, 64, 256


def headlines():
    q, k, v = _qkv(8192)
    with torch.no_grad():
        timing = compare({
            "torch fused dense": lambda: F.scaled_dot_product_attention(q, k, v),
            "sliding window": lambda: sliding_window_attention(q, k, v, WINDOW),
            "sliding window + 16 global": lambda: sliding_window_attention(q, k, v, WINDOW, global_tokens=16),
        }, baseline="torch fused dense", warmup=1, repeats=5)
        growth = _memory_growth(4096, 8192)
    speedup = timing.ratio("sliding window")
    return [
        Headline(f"sliding window (w={WINDOW}) speed-up over torch fused SDPA (n=8192, d={HEAD_DIM}, {HEADS} heads)",
                 speedup, 3.0, "×", speedup >= 3.0,
                 f"with 16 global tokens: {timing.ratio('sliding window + 16 global'):.2f}×"),
        Headline("sliding window extra memory, n=8192 vs n=4096 (linear = 2, quadratic = 4)", growth, 2.2, "×",
                 growth <= 2.2),
    ]


def _qkv(n):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, HEADS, n, HEAD_DIM, generator=generator) for _ in range(3))


def _memory_growth(small, large):
    """Peak extra memory of the kernel at n=large over n=small (inputs created outside, not counted)."""
    def extra(n):
        q, k, v = _qkv(n)
        return peak_memory(lambda: sliding_window_attention(q, k, v, WINDOW))
    return extra(large) / extra(small)
