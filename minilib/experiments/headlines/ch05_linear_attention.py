"""Chapter 05's claims: elu+1 linear attention is at least 10× faster than PyTorch's fused softmax
attention at n=4096, and overtakes it at n ≤ 512."""
import torch
import torch.nn.functional as F

from minilib.linear_attention import linear_attention
from minilib.support.bench import Headline, compare

HEADS, HEAD_DIM = 6, 64
LENGTHS = (128, 256, 512, 1024, 2048)


def headlines():
    with torch.no_grad():
        speedup = _speedup(4096, repeats=5)
        ratios = {n: _speedup(n, repeats=7) for n in LENGTHS}
    crossover = next((n for n in LENGTHS if ratios[n] > 1.0), float("inf"))
    return [
        Headline.at_least(f"elu+1 linear attention speed-up over torch fused SDPA (n=4096, d={HEAD_DIM}, {HEADS} heads)",
                 speedup, 10.0, "×"),
        Headline.at_most("crossover: shortest n where linear attention is faster", crossover, 512, "tokens",
                         "ratios " + ", ".join(f"n={n}: {r:.2f}×" for n, r in ratios.items())),
    ]


def _speedup(n, repeats):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=generator) for _ in range(3))
    timing = compare({
        "torch fused softmax": lambda: F.scaled_dot_product_attention(q, k, v),
        "linear elu+1": lambda: linear_attention(q, k, v, feature_map="elu"),
    }, baseline="torch fused softmax", warmup=2, repeats=repeats)
    return timing.ratio("linear elu+1")
