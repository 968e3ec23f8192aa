"""Checks for chapter 04 (sparse attention): a window mask, global tokens, the tiles a blocked kernel computes.

The chapter's "build it" check: the blocked sliding-window kernel, exact, without an n×n buffer and without
dense work done in pieces.
"""
import torch
import torch.nn.functional as F

import minilib.sparse as sparse
from minilib.course.checks.core import CheckFailed, exercise, expect_close, expect_number, expect_tensor
from minilib.course.checks.guards import COURSE, FUSED_ATTENTION, NUMPY, guarded
from minilib.sparse import block_layout, global_mask, sliding_window_mask

_MASKS = [sparse, COURSE]


@exercise(points=2)
def check_window_mask(fn):
    """window_mask(n, window) → (n, n) bool, True where |i - j| < window."""
    hint = "compare |i - j| with the window yourself: minilib.sparse.sliding_window_mask is the answer it is checked against"
    cases = [(4, 2), (7, 1), (9, 3), (6, 10)]
    with guarded(fn, _MASKS, hint):
        got = [fn(n, window) for n, window in cases]
    band = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    expect_close("window_mask(4, 2): each token sees itself and its neighbour on each side", got[0], band,
                 dtype=torch.bool, hint="compare the distance |i - j| between row i and column j with the window")
    for (n, window), answer in zip(cases[1:], got[1:]):
        expect_close(f"window_mask({n}, {window})", answer, sliding_window_mask(n, window), dtype=torch.bool,
                     hint="strictly less than the window: window=1 keeps only the diagonal")


@exercise(points=2)
def check_add_global_tokens(fn):
    """add_global_tokens(mask, g) → the mask with the first g tokens seeing, and seen by, every token."""
    diagonal = torch.eye(4, dtype=torch.bool)
    expected = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    mask = sliding_window_mask(10, 2)
    hint = "set the rows and columns yourself: minilib.sparse.global_mask is the answer it is checked against"
    with guarded(fn, _MASKS, hint):
        got = fn(diagonal.clone(), 1), fn(mask.clone(), 3), fn(mask.clone(), 0)
    for what, given, answer in (("add_global_tokens(eye(4), 1)", diagonal, got[0]),
                                ("add_global_tokens(window mask (10, 2), 3)", mask, got[1])):
        expect_tensor(what, answer, tuple(given.shape), torch.bool)
        dropped = given & ~answer
        if bool(dropped.any()):
            raise CheckFailed(f"{what} dropped pairs the mask allowed", "every pair of the mask still True",
                              f"{int(dropped.sum())} pairs now False, first at {dropped.nonzero()[0].tolist()}",
                              "keep every pair the mask already allows: combine with |, do not overwrite")
    expect_close("add_global_tokens(eye(4), 1)", got[0], expected, dtype=torch.bool,
                 hint="global tokens need both their row (they see all) and their column (all see them)")
    expect_close("add_global_tokens(window mask (10, 2), 3)", got[1], mask | global_mask(10, 3), dtype=torch.bool,
                 hint="keep every pair the mask already allows: combine with |, do not overwrite")
    expect_close("add_global_tokens(mask, 0) leaves the mask unchanged", got[2], mask, dtype=torch.bool)


def _tiles_by_distance(n: int, window: int, block: int) -> int:
    """Tiles holding a window pair, from the closest distance between two blocks (checked against the mask below)."""
    blocks = n // block
    return sum(1 for i in range(blocks) for j in range(blocks)
               if i == j or (abs(i - j) - 1) * block + 1 < window)


@exercise(points=3)
def check_window_tile_count(fn):
    """window_tile_count(n, window, block_size) → how many (query block, key block) tiles hold a window pair,
    counted from the sizes (building the mask and calling minilib's block_layout is the reference, not an answer)."""
    hint = ("count from the window and the block size: building the n × n mask (or looping over every pair of tokens) "
            "is how this check computes the answer, and it grows as n²")
    for n, window, block in [(16, 2, 4), (32, 5, 4), (64, 8, 8), (24, 1, 8), (40, 16, 8)]:
        expected = int(block_layout(sliding_window_mask(n, window), block).sum())
        assert expected == _tiles_by_distance(n, window, block)
        with guarded(fn, [*_MASKS, NUMPY], hint):
            got = fn(n, window, block)
        expect_number(f"window_tile_count({n}, {window}, {block})", got, expected,
                      hint="a key block is needed when its nearest key is within window - 1 of the query block; "
                           "blocks at the two ends have fewer neighbours")
    n, window, block = 4096, 100, 16  # 256 blocks: a loop over block pairs is fine, one over token pairs is not
    with guarded(fn, [*_MASKS, NUMPY], hint, max_python_lines=500_000) as run:
        got = fn(n, window, block)
    run.expect_tensors_under(n * block, f"window_tile_count({n}, {window}, {block})", hint)
    expect_number(f"window_tile_count({n}, {window}, {block})", got, _tiles_by_distance(n, window, block),
                  hint="the reach on each side is ceil((window - 1) / block) blocks, fewer at the two ends")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_blocked_window_attention(fn):
    """Equal to dense attention under the window mask; no (n, n) buffer and no dense work: both grow as n·w."""
    generator = torch.Generator().manual_seed(4)
    hint = ("cut the sequence into blocks and attend tile by tile yourself (scores, mask and softmax of each tile): "
            "this is what sparse.sliding_window_attention does")
    forbid = [sparse, COURSE, NUMPY, *FUSED_ATTENTION]
    for n, window in [(192, 32), (256, 64)]:
        q, k, v = (torch.randn(2, 2, n, 64, generator=generator) for _ in range(3))
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sparse.sliding_window_mask(n, window))
        with guarded(fn, forbid, hint):
            got = fn(q, k, v, window)
        expect_close(f"q, k, v (2, 2, {n}, 64), window {window}, against dense attention under the window mask",
                     got, expected, atol=1e-5,
                     hint="query block t meets key blocks t-1, t, t+1; inside those 3·w keys still hide |i - j| ≥ w, "
                          "and hide the zero blocks padded before the first and after the last block")
    n, window, heads, d = 4096, 16, 2, 64
    q, k, v = (torch.randn(1, heads, n, d, generator=generator) for _ in range(3))
    expected = sparse.sliding_window_attention(q, k, v, window)
    with guarded(fn, forbid, hint) as run:
        got = fn(q, k, v, window)
    who = f"at n = {n}, window {window}, your code"
    run.expect_tensors_under(heads * n * n // 4, who, "an (n, n) score matrix or mask is what blocks avoid: at "
                             "n = 100,000 it would take 40 GB per head; keep only (n/w) tiles of w × 3w scores")
    run.expect_work_under(heads * n * n * d // 2, who, "that is dense attention's work (2·n²·d per head), done in "
                          "pieces: the blocks exist to skip the tiles outside the band, (n/w)·w·3w·d per product")
    expect_close(f"q, k, v (1, {heads}, {n}, {d}), window {window}, against minilib.sparse.sliding_window_attention",
                 got, expected, atol=1e-5)
