"""Chapter 04's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
shortcuts (the library, an n × n mask, dense work done in pieces, PyTorch's fused attention)."""
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


def test_window_mask(stub, refused):
    assert check_window_mask(window_mask)
    assert check_window_mask(lambda n, w: torch.ones(n, n, dtype=torch.bool).triu(1 - w).tril(w - 1))  # a band
    assert check_window_mask(lambda n, w: torch.tensor([[abs(i - j) < w for j in range(n)] for i in range(n)]))
    assert not check_window_mask(stub)
    refused(check_window_mask, lambda n, w: window_mask(n, w + 1), "window_mask(4, 2)")           # ≤ instead of <
    refused(check_window_mask, lambda n, w: window_mask(n, w).float(), "dtype bool", "float32")    # not boolean
    refused(check_window_mask, lambda n, w: window_mask(n, w).tril(), "window_mask(4, 2)")         # one-sided
    refused(check_window_mask, lambda n, w: sliding_window_mask(n, w), "minilib.sparse.sliding_window_mask")


def test_add_global_tokens(stub, refused):
    def reference(mask, g):
        mask[:g, :] = True
        mask[:, :g] = True
        return mask

    def rows_only(mask, g):
        mask[:g, :] = True
        return mask

    def by_broadcasting(mask, g):  # an "is global" vector, or-ed along both axes
        is_global = torch.arange(mask.shape[0]) < g
        return mask | is_global[:, None] | is_global[None, :]

    assert check_add_global_tokens(reference)
    assert check_add_global_tokens(by_broadcasting)
    assert not check_add_global_tokens(stub)
    refused(check_add_global_tokens, rows_only, "their column")
    refused(check_add_global_tokens, lambda mask, g: reference(torch.zeros_like(mask), g), "keep every pair")
    refused(check_add_global_tokens, lambda mask, g: mask | global_mask(mask.shape[0], g), "minilib.sparse.global_mask")


def test_window_tile_count(stub, refused):
    def reference(n, window, block):
        n_blocks = n // block
        reach = math.ceil((window - 1) / block)                  # neighbour blocks on each side
        return sum(min(i + reach, n_blocks - 1) - max(i - reach, 0) + 1 for i in range(n_blocks))

    def closed_form(n, window, block):  # every diagonal band of tiles, minus the tiles cut off at the ends
        blocks, reach = n // block, min(-(-(window - 1) // block), n // block - 1)
        return blocks * (2 * reach + 1) - reach * (reach + 1)

    def block_pairs(n, window, block):  # a loop over pairs of blocks: the nearest keys of block j to block i
        blocks = n // block
        return sum(1 for i in range(blocks) for j in range(blocks) if max(0, (abs(i - j) - 1) * block + 1) < window)

    assert check_window_tile_count(reference)
    assert check_window_tile_count(closed_form)
    assert check_window_tile_count(block_pairs)
    assert not check_window_tile_count(stub)
    refused(check_window_tile_count, lambda n, w, b: (n // b) * (2 * math.ceil((w - 1) / b) + 1), "at the two ends")
    refused(check_window_tile_count, lambda n, w, b: int(block_layout(sliding_window_mask(n, w), b).sum()),
            "minilib.sparse")  # the check's own reference: the n × n mask and minilib's block_layout
    refused(check_window_tile_count, lambda n, w, b: (n // b) ** 2, "window_tile_count(16, 2, 4)")   # dense

    def own_mask(n, window, block):  # right answer, from an n × n mask built by hand
        positions = torch.arange(n)
        mask = (positions[:, None] - positions[None, :]).abs() < window
        return int(mask.view(n // block, block, n // block, block).any(dim=(1, 3)).sum())

    refused(check_window_tile_count, own_mask, "window_tile_count(4096, 100, 16)", "built a tensor", "n²")

    def token_pairs(n, window, block):  # right answer, from a loop over every pair of tokens
        return len({(i // block, j // block) for i in range(n) for j in range(n) if abs(i - j) < window})

    refused(check_window_tile_count, token_pairs, "lines of Python", "n²")


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


def blocked_window_loop(q, k, v, window):
    """Another correct answer: a Python loop over the query blocks, each against its slice of up to 3w keys."""
    n, outputs = q.shape[-2], []
    for start in range(0, n, window):
        lo, hi = max(0, start - window), min(n, start + 2 * window)
        scores = torch.einsum("bhqd,bhkd->bhqk", q[..., start:start + window, :], k[..., lo:hi, :]) / q.shape[-1] ** 0.5
        distance = (torch.arange(start, start + window)[:, None] - torch.arange(lo, hi)[None, :]).abs()
        outputs.append(scores.masked_fill(distance >= window, -math.inf).softmax(-1) @ v[..., lo:hi, :])
    return torch.cat(outputs, dim=-2)


def dense_in_row_blocks(q, k, v, window):
    """Right values and small tensors, but each block of queries is scored against every key: n² work."""
    n, outputs = q.shape[-2], []
    for start in range(0, n, 4 * window):
        rows = torch.arange(start, min(n, start + 4 * window))
        scores = q[..., rows, :] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        outputs.append(scores.masked_fill((rows[:, None] - torch.arange(n)).abs() >= window, -math.inf).softmax(-1) @ v)
    return torch.cat(outputs, dim=-2)


def fused_tiles(q, k, v, window):
    """Right values, blocks and all, but PyTorch's fused kernel attends each tile."""
    batch, heads, n, d = q.shape
    padded = [F.pad(t, (0, 0, window, window)).unfold(-2, 3 * window, window)[..., :n // window, :, :]
              for t in (k, v)]                                                   # (B, nh, nb, d, 3w)
    positions = torch.arange(n).view(-1, window, 1)
    keys = positions[:, :1] - window + torch.arange(3 * window)
    allowed = ((positions - keys).abs() < window) & (keys >= 0) & (keys < n)
    tiles = F.scaled_dot_product_attention(q.view(batch, heads, -1, window, d), padded[0].transpose(-1, -2),
                                           padded[1].transpose(-1, -2), attn_mask=allowed)
    return tiles.reshape(batch, heads, n, d)


def test_blocked_window_attention(stub, refused):
    from minilib.sparse import sliding_window_attention

    assert check_blocked_window_attention(blocked_window)
    assert check_blocked_window_attention(blocked_window_loop)
    assert not check_blocked_window_attention(stub)
    refused(check_blocked_window_attention, lambda q, k, v, w: sliding_window_attention(q, k, v, w),
            "minilib.sparse.sliding_window_attention")
    refused(check_blocked_window_attention, lambda q, k, v, w: blocked_window(q, k, v, w, band=False), "|i - j| ≥ w")
    refused(check_blocked_window_attention, lambda q, k, v, w: blocked_window(q, k, v, w, ends=False), "padded")


def test_blocked_window_attention_refuses_dense_work(refused):
    from minilib.sparse import sliding_window_mask

    def dense_with_mask(q, k, v, w):  # right values, but an n × n mask and scores
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return scores.masked_fill(~sliding_window_mask(q.shape[-2], w), -math.inf).softmax(-1) @ v

    refused(check_blocked_window_attention, dense_with_mask, "minilib.sparse.sliding_window_mask")

    def dense_own_mask(q, k, v, w):  # right values, an n × n mask and scores built by hand
        distance = (torch.arange(q.shape[-2])[:, None] - torch.arange(q.shape[-2])).abs()
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return scores.masked_fill(distance >= w, -math.inf).softmax(-1) @ v

    refused(check_blocked_window_attention, dense_own_mask, "built a tensor", "(n, n)")
    refused(check_blocked_window_attention, dense_in_row_blocks, "operations", "dense attention's work")
    refused(check_blocked_window_attention, fused_tiles, "scaled_dot_product_attention")
