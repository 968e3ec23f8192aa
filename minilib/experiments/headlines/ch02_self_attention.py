"""Chapter 02's claims: memory-efficient attention is exact, close to PyTorch's fused kernel in
speed, and needs memory that grows linearly in n where the plain formula's grows as n²."""
import torch
import torch.nn.functional as F

from minilib.attention import memory_efficient_attention, scaled_dot_product_attention
from minilib.support.bench import Headline, compare, peak_memory


def headlines():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2048, 64) for _ in range(3))
    timing = compare({
        "torch fused": lambda: F.scaled_dot_product_attention(q, k, v),
        "minilib memory-efficient": lambda: memory_efficient_attention(q, k, v),
        "minilib naive": lambda: scaled_dot_product_attention(q, k, v),
    }, baseline="torch fused", warmup=2, repeats=10)
    slowdown = 1 / timing.ratio("minilib memory-efficient")
    naive_slowdown = 1 / timing.ratio("minilib naive")
    growth = _memory_growth(lambda n: memory_efficient_attention(*(torch.randn(1, 6, n, 64) for _ in range(3))))
    naive_growth = _memory_growth(lambda n: scaled_dot_product_attention(*(torch.randn(1, 6, n, 64) for _ in range(3))))
    return [
        Headline.at_most("memory-efficient attention time / torch fused (n=2048, d=64, 6 heads)", slowdown, 1.5, "×",
                         f"naive formula: {naive_slowdown:.2f}×"),
        Headline.at_most("memory-efficient extra memory, n=4096 vs n=2048 (linear = 2)", growth, 2.2, "×",
                         f"naive formula: {naive_growth:.2f}× (quadratic = 4)"),
    ]


def _memory_growth(attend):
    """Peak extra memory at n=4096 over n=2048 (inputs created inside, so counted: O(n) either way)."""
    return peak_memory(lambda: attend(4096)) / peak_memory(lambda: attend(2048))
