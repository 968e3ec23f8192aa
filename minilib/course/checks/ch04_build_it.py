"""Chapter 04's "build it" check: the blocked sliding-window kernel, exact and without an n×n buffer."""
import torch
import torch.nn.functional as F

from minilib.course.checks.core import exercise, expect_close
from minilib.course.checks.guards import TorchOps, expect_tensors_under, forbidden_calls


@exercise(points=4)
def check_blocked_window_attention(fn):
    """Equal to dense attention under the window mask, and never an (n, n) buffer: memory grows as n·w."""
    import minilib.sparse as sparse
    generator = torch.Generator().manual_seed(4)
    targets = [(sparse, "sliding_window_attention"), (sparse, "block_sparse_attention")]
    hint = "cut the sequence into blocks and attend tile by tile yourself: this is what sparse.sliding_window_attention does"
    for n, window in [(192, 32), (256, 64)]:
        q, k, v = (torch.randn(2, 2, n, 64, generator=generator) for _ in range(3))
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sparse.sliding_window_mask(n, window))
        with forbidden_calls(fn, targets, hint):
            got = fn(q, k, v, window)
        expect_close(f"q, k, v (2, 2, {n}, 64), window {window}, against dense attention under the window mask",
                     got, expected, atol=1e-5,
                     hint="query block t meets key blocks t-1, t, t+1; inside those 3·w keys still hide |i - j| ≥ w, "
                          "and hide the zero blocks padded before the first and after the last block")
    n, window = 4096, 16
    q, k, v = (torch.randn(1, 2, n, 64, generator=generator) for _ in range(3))
    expected = sparse.sliding_window_attention(q, k, v, window)
    with forbidden_calls(fn, targets, hint), TorchOps() as ops:
        got = fn(q, k, v, window)
    limit = 2 * n * n // 4  # a quarter of the (heads, n, n) scores
    expect_tensors_under(ops, limit, f"n = {n}, window {window}: your code",
                         f"every tensor under {limit:,} numbers (O(n·w))",
                         hint="an (n, n) score matrix or mask is what blocks avoid: at n = 100,000 it would take "
                              "40 GB per head; keep only (n/w) tiles of w × 3w scores")
    expect_close(f"q, k, v (1, 2, {n}, 64), window {window}, against minilib.sparse.sliding_window_attention",
                 got, expected, atol=1e-5)
