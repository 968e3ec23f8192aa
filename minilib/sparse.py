"""Sparse attention (chapter 04): each query looks at only some of the keys.

The seed names two patterns, *local attention* (each position looks at the positions around it)
and *global attention* (a few positions look at, and are looked at by, everything). Their
descendants, all built here:

- sliding window of width w: query i sees key j when |i - j| < w (Longformer 2020);
- dilated / strided windows: the same with a gap between the keys (Sparse Transformer 2019);
- global tokens: the first g tokens see all tokens and are seen by all;
- random blocks, and the BigBird union of window + global + random blocks (BigBird 2020).

A mask only says *which* scores count. Multiplying the whole n×n score matrix and then masking
most of it is as slow as dense attention. The kernels here are **blocked**: they cut the sequence
into blocks of b tokens and compute only the (query block, key block) tiles the pattern needs, so
time and memory grow as O(n·w) instead of O(n²):

- :func:`sliding_window_attention`: each query block meets its own key block and its neighbours;
- :func:`block_sparse_attention`: any pattern given as a ``layout`` of (query block, key block) pairs.

Both equal :func:`minilib.attention.scaled_dot_product_attention` under the matching mask, and both
plug into :class:`minilib.attention.MultiHeadAttention` through ``functools.partial``::

    MultiHeadAttention(256, 4, attention=partial(sliding_window_attention, window=64, global_tokens=1))
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minilib.attention import scaled_dot_product_attention

# ----------------------------------------------------------------------------------------------
# Masks: (n, n) bool, True = query i (row) may attend to key j (column)
# ----------------------------------------------------------------------------------------------


def sliding_window_mask(n, window, global_tokens=0, is_causal=False, dilation=1):
    """Local attention: query i sees key j when j = i ± t·dilation for t = 0 … window-1.

    dilation=1 is the plain sliding window (|i - j| < window); a larger dilation leaves gaps and
    reaches dilation times as far with the same number of keys (strided/dilated attention).
    The first ``global_tokens`` tokens see every key and are seen by every query.
    Returns (n, n) bool.
    """
    _check_window(n, window, global_tokens)
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer ≥ 1, got {dilation!r}")
    offset = _positions(n)[:, None] - _positions(n)[None, :]            # i - j
    mask = (offset.abs() < window * dilation) & (offset % dilation == 0)
    mask |= global_mask(n, global_tokens)
    return mask & causal_mask(n) if is_causal else mask


def global_mask(n, global_tokens):
    """The first g tokens see all tokens and all tokens see them: rows and columns 0 … g-1."""
    _check_window(n, 1, global_tokens)
    is_global = _positions(n) < global_tokens
    return is_global[:, None] | is_global[None, :]


def causal_mask(n):
    """Query i sees keys 0 … i (lower triangle)."""
    return torch.ones(n, n, dtype=torch.bool).tril()


def random_block_layout(n_blocks, blocks_per_row, seed=0):
    """Each query block sees ``blocks_per_row`` key blocks drawn at random (fixed by ``seed``).

    Returns (n_blocks, n_blocks) bool.
    """
    if not 0 <= blocks_per_row <= n_blocks:
        raise ValueError(f"blocks_per_row must be between 0 and n_blocks={n_blocks}, got {blocks_per_row}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.rand(n_blocks, n_blocks, generator=generator).argsort(dim=1)[:, :blocks_per_row]
    layout = torch.zeros(n_blocks, n_blocks, dtype=torch.bool)
    return layout.scatter(1, picks, True)


def bigbird_layout(n_blocks, window_blocks=1, global_blocks=1, random_blocks=1, seed=0):
    """BigBird's pattern at block level: the union of window, global and random blocks.

    Query block i sees key blocks i-window_blocks … i+window_blocks, the first ``global_blocks``
    blocks (which also see everything) and ``random_blocks`` random blocks. Returns (n_blocks, n_blocks) bool.
    """
    if global_blocks > n_blocks:
        raise ValueError(f"global_blocks ({global_blocks}) cannot exceed n_blocks ({n_blocks})")
    window = sliding_window_mask(n_blocks, window_blocks + 1, global_tokens=global_blocks)
    return window | random_block_layout(n_blocks, random_blocks, seed)


def block_layout(mask, block_size):
    """Which (query block, key block) tiles a mask needs: True where the tile has any True.

    mask: (n_q, n_k) bool; block_size must divide both. Returns (n_q / block_size, n_k / block_size) bool.
    A blocked kernel computes exactly the True tiles; the fraction of True tiles is its cost
    relative to dense attention.
    """
    n_q, n_k = mask.shape
    _check_block_size(block_size, n_q, n_k)
    tiles = mask.reshape(n_q // block_size, block_size, n_k // block_size, block_size)
    return tiles.any(dim=3).any(dim=1)


def layout_to_mask(layout, block_size):
    """Expand a block layout (n_q_blocks, n_k_blocks) to the token mask it stands for."""
    return layout.repeat_interleave(block_size, dim=0).repeat_interleave(block_size, dim=1)


# ----------------------------------------------------------------------------------------------
# Blocked kernels
# ----------------------------------------------------------------------------------------------


def sliding_window_attention(q, k, v, window, global_tokens=0, is_causal=False, attn_mask=None, block_size=None):
    """Sliding-window (+ global tokens) self-attention in O(n·w) time and memory.

    q, k, v: (batch, heads, n, d). Query i sees key j when |i - j| < window (and j ≤ i when
    ``is_causal``); the first ``global_tokens`` tokens see all and are seen by all.
    Equal to dense attention under ``sliding_window_mask(n, window, global_tokens, is_causal)``.

    How: cut the sequence into blocks of b tokens (default b = window, at least 16). Every key that
    query block t needs lies in key blocks t-r … t+r with r = ⌈(window-1)/b⌉ (causal: t-r … t), so
    each query block meets m = (2r+1)·b keys (3w when b = w) plus the g global keys:
    n/b blocks × b queries × (m + g) keys = O(n·w) scores instead of n².
    The g global queries attend to every key: O(g·n).

    attn_mask: optional bool key-padding mask broadcastable to (batch, heads, 1, n) (True = real
    token), as :class:`minilib.transformer.Encoder` passes it. Returns (batch, heads, n, d_v).
    A query that may see no key at all (local or global) gets zeros, as in PyTorch's attention.
    """
    n = _check_self_attention(q, k, v)
    _check_window(n, window, global_tokens)
    block_size = block_size or max(window, 16)
    _check_block_size(block_size)
    key_ok = _key_padding(attn_mask, q, n)                               # (batch, heads|1, n) or None
    reach = math.ceil((window - 1) / block_size)                         # neighbour blocks on each side
    shifts = range(-reach, 1 if is_causal else reach + 1)
    n_blocks = math.ceil(n / block_size)

    # Tiles: (batch, n_blocks, heads, tokens, d). Query block t and the m keys of blocks t+s, s in shifts.
    q_tiles = _blocks(q, block_size, n_blocks)
    k_tiles, v_tiles = (_neighbour_tiles(t, block_size, n_blocks, shifts) for t in (k, v))
    block_start = _positions(n_blocks, q.device)[:, None] * block_size
    key_pos = torch.cat([block_start + s * block_size + _positions(block_size, q.device) for s in shifts],
                        dim=1)                                           # (n_blocks, m): where those keys sit
    # i - j inside a tile is the same for every block: one (b, m) band.
    offset = _positions(block_size, q.device)[:, None] - key_pos[0]
    in_band = (offset >= 0) & (offset < window) if is_causal else offset.abs() < window
    key_in_range = (key_pos >= global_tokens) & (key_pos < n)           # globals are added below
    allowed = in_band & key_in_range[None, :, None, None, :]             # (1, n_blocks, 1, b, m)
    if key_ok is not None:                                               # (batch, n_blocks, heads|1, b, m)
        allowed = allowed & key_ok[..., key_pos.clamp(0, n - 1)].transpose(1, 2)[..., None, :]

    if global_tokens:                                                    # every block also meets the g global keys
        k_tiles, v_tiles, allowed = _append_global_keys(k, v, k_tiles, v_tiles, allowed, key_ok,
                                                        block_size, global_tokens, is_causal)
    out = _attend_tiles(q_tiles, k_tiles, v_tiles, allowed)             # (batch, n_blocks, heads, b, d_v)
    out = out.transpose(1, 2).flatten(2, 3)[..., :n, :]                 # back to (batch, heads, n, d_v)
    if global_tokens:                                                    # global queries see every key
        out = torch.cat([_global_queries(q, k, v, key_ok, global_tokens, is_causal), out[..., global_tokens:, :]], -2)
    return out


def block_sparse_attention(q, k, v, layout, block_size, is_causal=False, attn_mask=None):
    """Attention computed only on the (query block, key block) tiles where ``layout`` is True.

    q: (batch, heads, n_q, d), k, v: (batch, heads, n_k, d); layout: (n_q / block_size, n_k / block_size)
    bool. Equal to dense attention under ``layout_to_mask(layout, block_size)`` (and causality when
    ``is_causal``). Cost: (number of True tiles) × block_size² scores instead of n_q·n_k.

    How: for every query block, gather the key blocks its row of the layout selects (rows with
    fewer blocks are padded and masked) and attend to them in one batched call.
    attn_mask: optional bool key-padding mask broadcastable to (batch, heads, 1, n_k).
    Returns (batch, heads, n_q, d_v); a query that may see no key gets zeros, as in PyTorch's attention.
    """
    _check_qkv_4d(q, k, v)
    n_q, n_k = q.shape[-2], k.shape[-2]
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() != 2:
        raise TypeError(f"layout must be a 2-D bool tensor (query blocks, key blocks), got {_describe(layout)}")
    _check_block_size(block_size, n_q, n_k)
    n_qb, n_kb = n_q // block_size, n_k // block_size
    if tuple(layout.shape) != (n_qb, n_kb):
        raise ValueError(f"layout must have shape (n_q / block_size, n_k / block_size) = {(n_qb, n_kb)}, "
                         f"got {tuple(layout.shape)}")
    if not layout.any(dim=1).all():
        raise ValueError("every query block must attend to at least one key block; layout has an empty row")
    key_ok = _key_padding(attn_mask, q, n_k)
    layout = layout.to(q.device)

    # Per query block, the indices of its key blocks, True ones first: (n_qb, most blocks in a row).
    per_row = int(layout.sum(dim=1).max())
    chosen = torch.argsort((~layout).to(torch.int8), dim=1, stable=True)[:, :per_row]
    chosen_ok = layout.gather(1, chosen)                                 # False where a row was padded

    # Tiles: (batch, n_qb, heads, tokens, d); the keys of one tile are its chosen blocks side by side.
    q_tiles = _blocks(q, block_size, n_qb)
    k_tiles, v_tiles = (_blocks(t, block_size, n_kb)[:, chosen].transpose(2, 3).flatten(3, 4) for t in (k, v))
    key_pos = (chosen[:, :, None] * block_size + _positions(block_size, q.device)).flatten(1)   # (n_qb, m)
    allowed = chosen_ok.repeat_interleave(block_size, dim=1)[None, :, None, None, :]            # (1, n_qb, 1, 1, m)
    if is_causal:
        query_pos = _positions(n_q, q.device).view(n_qb, 1, block_size, 1)
        allowed = allowed & (key_pos[:, None, None, :] <= query_pos)
    if key_ok is not None:
        allowed = allowed & key_ok[..., key_pos].transpose(1, 2)[..., None, :]
    out = _attend_tiles(q_tiles, k_tiles, v_tiles, allowed)
    return out.transpose(1, 2).flatten(2, 3)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _blocks(t, block_size, n_blocks, before=0):
    """(batch, heads, n, d) → (batch, n_blocks, heads, b, d), a view of ``t`` zero-padded with
    ``before`` tokens in front and up to n_blocks·b tokens in all."""
    padded = F.pad(t, (0, 0, before, n_blocks * block_size - before - t.shape[-2]))
    return padded.unflatten(-2, (n_blocks, block_size)).transpose(1, 2)


def _neighbour_tiles(t, block_size, n_blocks, shifts):
    """(batch, heads, n, d) → (batch, n_blocks, heads, len(shifts)·b, d): for query block i, the key
    blocks i+s (s in shifts) side by side. Zero blocks pad both ends so that blocks -r … n_blocks-1+r
    exist; the mask hides them."""
    reach = -shifts[0]
    blocks = _blocks(t, block_size, n_blocks + reach + shifts[-1], before=reach * block_size)
    return torch.cat([blocks[:, reach + s:reach + s + n_blocks] for s in shifts], dim=-2)


def _attend_tiles(q_tiles, k_tiles, v_tiles, allowed):
    """Softmax attention of every query tile over its own keys, all tiles in one batched call.

    q_tiles (batch, tiles, heads, b, d), k_tiles/v_tiles (batch, tiles, heads, m, d), allowed bool
    broadcastable to (batch, tiles, heads, b, m). Returns (batch, tiles, heads, b, d_v).
    The maths is :func:`minilib.attention.scaled_dot_product_attention` (chapter 02); here we call
    PyTorch's fused kernel for it, the same kernel dense attention is timed with, so that a speed-up
    measures only the work the sparse pattern skips. Tiles are stacked on the batch axis because
    that kernel is fastest on 4-D (batch·tiles, heads, tokens, d) inputs.
    """
    batch, tiles = q_tiles.shape[:2]
    allowed = allowed.expand(batch, tiles, -1, -1, -1).flatten(0, 1)
    out = F.scaled_dot_product_attention(q_tiles.flatten(0, 1), k_tiles.flatten(0, 1), v_tiles.flatten(0, 1),
                                         attn_mask=_finite_bias(allowed, q_tiles.dtype))
    out = out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)      # a query that sees no key: zeros
    return out.unflatten(0, (batch, tiles))


def _append_global_keys(k, v, k_tiles, v_tiles, allowed, key_ok, block_size, g, is_causal):
    """Add the g global keys to every tile's keys, and the matching mask columns."""
    batch, n_blocks = k_tiles.shape[:2]
    k_glob, v_glob = (t[:, None, :, :g].expand(batch, n_blocks, -1, -1, -1) for t in (k, v))   # (batch, n_blocks, heads, g, d)
    glob_ok = torch.ones(1, 1, 1, 1, g, dtype=torch.bool, device=k.device)
    if is_causal:                                                        # query i sees global key j ≤ i
        query_pos = _positions(n_blocks * block_size, k.device).view(1, n_blocks, 1, block_size, 1)
        glob_ok = query_pos >= _positions(g, k.device)
    if key_ok is not None:
        glob_ok = glob_ok & key_ok[:, None, :, None, :g]
    lead = torch.broadcast_shapes(allowed.shape[:-1], glob_ok.shape[:-1])
    allowed = torch.cat([allowed.expand(*lead, -1), glob_ok.expand(*lead, -1)], dim=-1)
    return torch.cat([k_tiles, k_glob], -2), torch.cat([v_tiles, v_glob], -2), allowed


def _global_queries(q, k, v, key_ok, g, is_causal):
    """The g global queries attend to every key: O(g·n). Returns (batch, heads, g, d_v)."""
    mask = None if key_ok is None else key_ok[..., None, :]
    return scaled_dot_product_attention(q[..., :g, :], k, v, attn_mask=mask, is_causal=is_causal)


def _finite_bias(allowed, dtype):
    """Bool mask → additive bias: 0 where allowed, the most negative finite number elsewhere.

    A finite bias (not -∞) keeps a query with no allowed key from producing NaN in the fused kernel
    (whatever its backend): its weights come out uniform, and :func:`_attend_tiles` sets its output to 0.
    """
    zero, lowest = torch.tensor(0.0, dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero.to(allowed.device), lowest.to(allowed.device))


def _key_padding(attn_mask, q, n):
    """A key-padding mask broadcastable to (batch, heads, 1, n) → bool (batch, heads|1, n), or None."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be a bool key-padding mask (True = real token), got {_describe(attn_mask)}")
    if attn_mask.dim() != 4 or attn_mask.shape[-2] != 1 or attn_mask.shape[-1] != n:
        raise ValueError(f"sparse attention takes only a key-padding attn_mask of shape (batch|1, heads|1, 1, {n}); "
                         f"got {tuple(attn_mask.shape)} (a full (query, key) mask would need the dense n×n matrix)")
    return attn_mask[:, :, 0, :].to(q.device)


def _check_window(n, window, global_tokens):
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer ≥ 1 (1 = each token sees only itself), got {window!r}")
    if not isinstance(global_tokens, int) or not 0 <= global_tokens <= n:
        raise ValueError(f"global_tokens must be an integer between 0 and the sequence length {n}, got {global_tokens!r}")


def _check_block_size(block_size, *lengths):
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if any(n % block_size for n in lengths):
        raise ValueError(f"block_size {block_size} must divide the sequence lengths, got lengths {lengths}")


def _check_qkv_4d(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise ValueError(f"{name} must be a floating-point tensor (batch, heads, seq, dim), got {_describe(t)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def _check_self_attention(q, k, v):
    _check_qkv_4d(q, k, v)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"sliding-window attention is self-attention: q and k need the same length, "
                         f"got {q.shape[-2]} and {k.shape[-2]}")
    return q.shape[-2]


def _positions(n, device=None):
    return torch.arange(n, device=device)


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
