"""Chapter 04's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch
import torch.nn.functional as F

from minilib.course.checks import (
    check_add_global_tokens,
    check_blocked_window_attention,
    check_window_mask,
    check_window_tile_count,
)
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


def blocked_window(q, k, v, window, band=True, ends=True):
    """The model answer of Exercise 4.5; band=False or ends=False are the mistakes the check must catch."""
    batch, heads, n, d = q.shape
    b, n_blocks = window, n // window
    q_tiles = q.view(batch, heads, n_blocks, b, d)

    def neighbours(t):
        padded = F.pad(t, (0, 0, b, b)).view(batch, heads, n_blocks + 2, b, d)
        return torch.cat([padded[:, :, :-2], padded[:, :, 1:-1], padded[:, :, 2:]], dim=-2)

    query_pos = torch.arange(n).view(n_blocks, b, 1)
    key_pos = query_pos[:, :1] - b + torch.arange(3 * b)
    allowed = torch.ones(n_blocks, b, 3 * b, dtype=torch.bool)
    if band:
        allowed &= (query_pos - key_pos).abs() < window
    if ends:
        allowed &= (key_pos >= 0) & (key_pos < n)
    scores = q_tiles @ neighbours(k).transpose(-2, -1) / math.sqrt(d)
    return (scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ neighbours(v)).reshape(batch, heads, n, d)


def test_blocked_window_attention(stub):
    from minilib.sparse import sliding_window_attention, sliding_window_mask

    assert check_blocked_window_attention(blocked_window)
    assert not check_blocked_window_attention(stub)
    assert not check_blocked_window_attention(lambda q, k, v, w: sliding_window_attention(q, k, v, w))
    assert not check_blocked_window_attention(                       # right values, but an n × n mask and scores
        lambda q, k, v, w: F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(q.shape[-2], w)))
    assert not check_blocked_window_attention(lambda q, k, v, w: blocked_window(q, k, v, w, band=False))
    assert not check_blocked_window_attention(lambda q, k, v, w: blocked_window(q, k, v, w, ends=False))
