"""Chapter 04's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch

from minilib.course.checks import check_add_global_tokens, check_window_mask, check_window_tile_count
from minilib.sparse import block_layout, global_mask, sliding_window_mask


def window_mask(n, window):
    positions = torch.arange(n)
    return (positions[:, None] - positions[None, :]).abs() < window


def test_window_mask(stub):
    assert check_window_mask(window_mask)
    assert not check_window_mask(stub)
    assert not check_window_mask(lambda n, w: window_mask(n, w + 1))               # ≤ instead of <
    assert not check_window_mask(lambda n, w: window_mask(n, w).float())           # not boolean
    assert not check_window_mask(lambda n, w: window_mask(n, w).tril())            # one-sided
    assert not check_window_mask(lambda n, w: sliding_window_mask(n, w))           # the library's own mask


def test_add_global_tokens(stub):
    def reference(mask, g):
        mask[:g, :] = True
        mask[:, :g] = True
        return mask

    def rows_only(mask, g):
        mask[:g, :] = True
        return mask

    assert check_add_global_tokens(reference)
    assert not check_add_global_tokens(stub)
    assert not check_add_global_tokens(rows_only)
    assert not check_add_global_tokens(lambda mask, g: reference(torch.zeros_like(mask), g))   # forgets the window
    assert not check_add_global_tokens(lambda mask, g: mask | global_mask(mask.shape[0], g))   # the library's own


def test_window_tile_count(stub):
    def reference(n, window, block):
        n_blocks = n // block
        reach = math.ceil((window - 1) / block)                  # neighbour blocks on each side
        return sum(min(i + reach, n_blocks - 1) - max(i - reach, 0) + 1 for i in range(n_blocks))

    assert check_window_tile_count(reference)
    assert not check_window_tile_count(stub)
    assert not check_window_tile_count(lambda n, w, b: (n // b) * (2 * math.ceil((w - 1) / b) + 1))   # ignores the ends
    # the check's own reference: the n × n mask and minilib's block_layout, not a count
    assert not check_window_tile_count(lambda n, w, b: int(block_layout(sliding_window_mask(n, w), b).sum()))
    assert not check_window_tile_count(lambda n, w, b: (n // b) ** 2)                                # dense
