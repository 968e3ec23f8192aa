"""Chapter 02's claims: memory-efficient attention is exact, close to PyTorch's fused kernel in
speed, and needs memory that grows linearly in n where the plain formula's grows as n²."""
import torch
import torch.nn.functional as F

from minilib.attention import KEY_CHUNK, QUERY_BLOCK, memory_efficient_attention, scaled_dot_product_attention
from minilib.support.bench import Headline, compare, peak_memory


def headlines():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2048, 64) for _ in range(3))
    fused = lambda: F.scaled_dot_product_attention(q, k, v)
    # Each ratio from its own interleaved pair: the naive formula's 192 MiB of scores would evict
    # the caches that the other two rely on, slowing whichever runs after it.
    slowdown = _slowdown(lambda: memory_efficient_attention(q, k, v), fused, repeats=25)
    naive_slowdown = _slowdown(lambda: scaled_dot_product_attention(q, k, v), fused, repeats=5)
    products_slowdown = _slowdown(lambda: _tile_products(q, k, v), fused, repeats=5)
    growth = _memory_growth(lambda n: memory_efficient_attention(*(torch.randn(1, 6, n, 64) for _ in range(3))))
    naive_growth = _memory_growth(lambda n: scaled_dot_product_attention(*(torch.randn(1, 6, n, 64) for _ in range(3))))
    return [
        Headline.at_most("memory-efficient attention time / torch fused (n=2048, d=64, 6 heads)", slowdown, 1.3, "×",
                         f"its two matrix products alone: {products_slowdown:.2f}×; naive formula: {naive_slowdown:.2f}×"),
        Headline.at_most("memory-efficient extra memory, n=4096 vs n=2048 (linear = 2)", growth, 2.2, "×",
                         f"naive formula: {naive_growth:.2f}× (quadratic = 4)"),
    ]


def _slowdown(attend, fused, repeats):
    """attend's median time over the fused kernel's, timed interleaved."""
    return 1 / compare({"torch fused": fused, "ours": attend}, warmup=2, repeats=repeats).ratio("ours")


def _tile_products(q, k, v):
    """Only the QKᵀ and PV products of memory_efficient_attention, on its default tiles and written into reused
    buffers as it does: the floor that the softmax's passes over each tile add to (random P: the values do not
    change the time)."""
    q3, k3, v3 = (t.flatten(0, 1) for t in (q, k, v))                    # (batch·heads, n, d)
    probs = torch.rand(q3.shape[0], QUERY_BLOCK, KEY_CHUNK)
    scores, weighted = torch.empty_like(probs), torch.empty(q3.shape[0], QUERY_BLOCK, v3.shape[-1])
    for i0 in range(0, q3.shape[1], QUERY_BLOCK):
        for j0 in range(0, k3.shape[1], KEY_CHUNK):
            torch.bmm(q3[:, i0:i0 + QUERY_BLOCK], k3[:, j0:j0 + KEY_CHUNK].transpose(1, 2), out=scores)
            torch.bmm(probs, v3[:, j0:j0 + KEY_CHUNK], out=weighted)            # (batch·heads, rows, d)


def _memory_growth(attend):
    """Peak extra memory at n=4096 over n=2048 (inputs created inside, so counted: O(n) either way)."""
    return peak_memory(lambda: attend(4096)) / peak_memory(lambda: attend(2048))
