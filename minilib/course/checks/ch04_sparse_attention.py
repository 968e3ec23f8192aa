"""Checks for chapter 04 (sparse attention): a window mask, global tokens, the tiles a blocked kernel computes.

The chapter's "build it" check: the blocked sliding-window kernel, exact and without an n×n buffer.
"""
import torch
import torch.nn.functional as F

import minilib.sparse as sparse
from minilib.course.checks.core import exercise, expect_close, expect_equal
from minilib.course.checks.guards import TorchOps, expect_tensors_under, forbidden_calls
from minilib.sparse import block_layout, global_mask, sliding_window_mask

_MASKS = [(sparse, "sliding_window_mask"), (sparse, "global_mask"), (sparse, "block_layout"), (sparse, "layout_to_mask")]


@exercise(points=2)
def check_window_mask(fn):
    """window_mask(n, window) → (n, n) bool, True where |i - j| < window."""
    hint = "compare |i - j| with the window yourself: minilib.sparse.sliding_window_mask is the answer it is checked against"
    with forbidden_calls(fn, _MASKS, hint):
        got = fn(4, 2)
    expect_equal("dtype of window_mask(4, 2)", getattr(got, "dtype", type(got)), torch.bool,
                 hint="return a bool tensor: True = may attend")
    band = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    expect_close("window_mask(4, 2): each token sees itself and its two neighbours", got, band,
                 hint="compare the distance |i - j| between row i and column j with the window")
    for n, window in [(7, 1), (9, 3), (6, 10)]:
        with forbidden_calls(fn, _MASKS, hint):
            got = fn(n, window)
        expect_close(f"window_mask({n}, {window})", got, sliding_window_mask(n, window),
                     hint="strictly less than the window: window=1 keeps only the diagonal")


@exercise(points=2)
def check_add_global_tokens(fn):
    """add_global_tokens(mask, g) → the mask with the first g tokens seeing, and seen by, every token."""
    diagonal = torch.eye(4, dtype=torch.bool)
    expected = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    mask = sliding_window_mask(10, 2)
    hint = "set the rows and columns yourself: minilib.sparse.global_mask is the answer it is checked against"
    with forbidden_calls(fn, _MASKS, hint):
        got = fn(diagonal.clone(), 1), fn(mask.clone(), 3), fn(mask.clone(), 0)
    expect_close("add_global_tokens(eye(4), 1)", got[0], expected,
                 hint="global tokens need both their row (they see all) and their column (all see them)")
    expect_close("add_global_tokens(window mask (10, 2), 3)", got[1], mask | global_mask(10, 3),
                 hint="keep every pair the mask already allows: combine with |, do not overwrite")
    expect_close("add_global_tokens(mask, 0) leaves the mask unchanged", got[2], mask)


@exercise(points=3)
def check_window_tile_count(fn):
    """window_tile_count(n, window, block_size) → how many (query block, key block) tiles hold a window pair,
    counted from the sizes (building the mask and calling minilib's block_layout is the reference, not an answer)."""
    hint = ("count from the window and the block size: building the n × n mask and calling minilib.sparse.block_layout "
            "is how this check computes the answer")
    for n, window, block in [(16, 2, 4), (32, 5, 4), (64, 8, 8), (24, 1, 8), (40, 16, 8)]:
        expected = int(block_layout(sliding_window_mask(n, window), block).sum())
        with forbidden_calls(fn, _MASKS, hint):
            got = fn(n, window, block)
        expect_equal(f"window_tile_count({n}, {window}, {block})", got, expected,
                     hint="a key block is needed when its nearest key is within window - 1 of the query block; "
                          "blocks at the two ends have fewer neighbours")


# --- the "build it" exercise ------------------------------------------------------------

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
