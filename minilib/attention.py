"""Attention, written plainly (chapter 02).

    Attention(Q, K, V) = softmax(QKᵀ / √d_k) V

Three ways to compute the same thing:

- :func:`scaled_dot_product_attention`: the formula, line by line. It builds the whole
  ``(n_q, n_k)`` score matrix, so its memory grows as n².
- :func:`memory_efficient_attention`: the FlashAttention idea. It walks over blocks of queries
  and chunks of keys, keeping a running max and a running sum so that the softmax comes out
  exact without ever holding the n×n matrix.
- ``torch.nn.functional.scaled_dot_product_attention``: PyTorch's fused kernel, our reference.

:class:`MultiHeadAttention` projects the input into heads and calls any of them (or the sparse
and linear attentions of chapters 04–05) through its ``attention`` argument.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

LOG2_E = math.log2(math.e)    # e^x = 2^(x·log₂e)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, return_weights=False,
                                 dropout_p=0.0):
    """softmax(QKᵀ/√d_k + mask) V, the seed's formula.

    q: (..., n_q, d_k), k: (..., n_k, d_k), v: (..., n_k, d_v); leading dims (batch, heads) match.
    attn_mask: bool (True = may attend) or float (added to the scores), broadcastable to
    (..., n_q, n_k). is_causal: query i sees keys 0..i. Returns (..., n_q, d_v), and the
    weights (..., n_q, n_k) too when ``return_weights``. Same semantics as PyTorch's function,
    down to a fully masked query row (every score -∞): its weights and output are zeros, not NaN.
    """
    _check_qkv(q, k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])        # QKᵀ/√d_k
    bias = attention_bias(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.dtype, q.device)
    if bias is not None:
        scores = scores + bias                                          # masked scores → -∞
    weights = torch.softmax(scores, dim=-1)                             # each row sums to 1
    if bias is not None:                                                # a row with nothing to see: 0/0 → 0
        weights = weights.masked_fill((scores == -math.inf).all(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    output = weights @ v                                                # weighted sum of values
    return (output, weights) if return_weights else output


QUERY_BLOCK, KEY_CHUNK = 512, 256
"""memory_efficient_attention's default tile: 512 queries × 256 keys, 512 KiB of float32 scores per head. Larger
blocks mean fewer, larger matrix products and fewer trips through Python: at n = 2048 this tile took 1.15-1.17× the
fused kernel's time on an AMD EPYC with AVX-512 (1.19-1.26× with PyTorch held to AVX2), 128 × 512 took 1.33-1.39×
(``python -m minilib bench 02``, 2026-12-08)."""


def memory_efficient_attention(q, k, v, attn_mask=None, is_causal=False, chunk_size=KEY_CHUNK,
                               query_chunk_size=QUERY_BLOCK):
    """The same result as :func:`scaled_dot_product_attention`, without the n×n matrix.

    For a block of queries, keys arrive ``chunk_size`` at a time. With m the running row max,
    ℓ the running sum of exp(s - m) and a the running weighted sum of values, each chunk of
    scores s updates them:

        m' = max(m, max_j s_j)
        ℓ' = ℓ·exp(m - m') + Σ_j exp(s_j - m')
        a' = a·exp(m - m') + Σ_j exp(s_j - m') v_j

    and at the end softmax(s) V = a / ℓ exactly (online softmax; Milakov & Gimelshein 2018,
    FlashAttention 2022). Extra memory is one (query block × key chunk) tile: it grows as n, not n².
    Blocking over queries as well keeps each head's tile in a core's cache, and updating in place
    (``exp2_``, ``mul_``, ``baddbmm_``) saves passes over memory: that is where the speed comes from.

    The scores are kept in base 2, as FlashAttention's kernels do: with the products scaled by log₂e/√d_k
    (``baddbmm``'s alpha, free inside the matrix product), 2^(s₂ - m₂) = e^(s - m), the same numbers, and
    PyTorch's ``exp2`` is several times cheaper than ``exp`` on a CPU (chapter 02 times both).

    m stays -∞ until the row meets a score that is not masked, so that exp(s - m) is never taken
    against a stand-in maximum (which would underflow to 0/0 when the real scores are below about
    -88 in float32). A fully masked row ends with ℓ = 0 and returns zeros, as PyTorch does.

    q, k, v, attn_mask, is_causal: as in :func:`scaled_dot_product_attention`.
    chunk_size: keys per chunk; query_chunk_size: queries per block.
    """
    _check_qkv(q, k, v)
    for name, size in (("chunk_size", chunk_size), ("query_chunk_size", query_chunk_size)):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    lead, (n_q, d), (n_k, d_v) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    mask = _check_mask(attn_mask, n_q, n_k)
    q3 = q.reshape(-1, n_q, d)                                     # (batch·heads, n_q, d)
    k3_t = k.reshape(-1, n_k, d).transpose(1, 2)                   # (batch·heads, d, n_k)
    v3 = v.reshape(-1, n_k, d_v)
    needs_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k, v, attn_mask))
    in_place = not (torch.is_grad_enabled() and needs_grad)       # a learned bias needs its scores kept too
    # One buffer for every tile's scores, and each block's result written straight into the output: fresh memory
    # each time would cost the system's page faults too. Autograd keeps every tile, so with gradients each is new.
    buffer = q3.new_empty(q3.shape[0], min(query_chunk_size, n_q) * min(chunk_size, n_k)) if in_place else None
    output = q3.new_empty(q3.shape[0], n_q, d_v) if in_place else None
    blocks = []
    for i0 in range(0, n_q, query_chunk_size):
        i1 = min(i0 + query_chunk_size, n_q)
        last_key = min(n_k, i1) if is_causal else n_k              # causal: later keys are all masked
        tiles = (_scores_tile(q3, k3_t, mask, is_causal, lead, i0, i1, j0, min(j0 + chunk_size, last_key), buffer)
                 for j0 in range(0, last_key, chunk_size))
        blocks.append(_online_softmax(tiles, v3, rows_may_be_empty=mask is not None,
                                      out=None if output is None else output[:, i0:i1]))
    return (torch.cat(blocks, dim=1) if output is None else output).view(*lead, n_q, d_v)


def _online_softmax(tiles, v3, rows_may_be_empty, out=None):
    """Σ_j softmax(s)_j v_j from score tiles that arrive one key chunk at a time.

    out: (batch·heads, block, d_v), where to write the result; the updates are then made in place, which saves
    passes over memory. None when gradients are needed (autograd must keep the originals): the same updates, out of
    place. (The weighted sum accumulates in a tensor of its own: ``baddbmm_`` into a slice of the output, whose
    matrices are not adjacent in memory, would fall back to one product per head.)
    rows_may_be_empty: a mask may hide every key of a row (causality alone never does: key 0
    is always seen first); only then are the -∞ guards below needed.
    """
    running_max = running_sum = accumulator = None
    in_place = out is not None
    for (j0, j1), scores in tiles:
        chunk_max = scores.amax(dim=-1, keepdim=True)
        new_max = chunk_max if running_max is None else torch.maximum(running_max, chunk_max)   # -∞: nothing seen yet
        shift = new_max.masked_fill(new_max == -math.inf, 0.0) if rows_may_be_empty else new_max   # 2^(-∞ - 0) = 0, not ∞ - ∞
        probs = scores.sub_(shift).exp2_() if in_place else torch.exp2(scores - shift)   # 2^(s₂ - m₂') = e^(s - m')
        chunk_sum, values = probs.sum(dim=-1, keepdim=True), v3[:, j0:j1]
        if running_max is None:
            running_sum, accumulator = chunk_sum, probs @ values
        elif in_place:
            correction = torch.exp2(running_max - shift)                # e^(m - m'); 0 while m = -∞
            running_sum.mul_(correction).add_(chunk_sum)
            accumulator.mul_(correction).baddbmm_(probs, values)
        else:
            correction = torch.exp2(running_max - shift)
            running_sum = running_sum * correction + chunk_sum
            accumulator = torch.baddbmm(accumulator * correction, probs, values)
        running_max = new_max
    if rows_may_be_empty:
        running_sum = running_sum.masked_fill(running_sum == 0, 1.0)    # ℓ = 0: fully masked row → zeros
    return torch.div(accumulator, running_sum, out=out) if in_place else accumulator / running_sum


def _scores_tile(q3, k3_t, mask, is_causal, lead, i0, i1, j0, j1, buffer=None):
    """Base-2 scores of queries i0:i1 against keys j0:j1, with the mask's bias: ((j0, j1), (batch·heads, i1-i0, j1-j0)).

    buffer: (batch·heads, ≥ (i1-i0)·(j1-j0)) memory to write the scores into, or None for a new tensor.
    """
    products = q3[:, i0:i1], k3_t[:, :, j0:j1]
    scale = LOG2_E / math.sqrt(q3.shape[-1])                        # 1/√d_k, and log₂e for base 2
    if buffer is None:                                              # autograd keeps every tile: each is new
        scores = torch.bmm(*products).mul_(scale)
    else:                                                           # the scale inside the product, into the buffer
        scores = buffer[:, :(i1 - i0) * (j1 - j0)].view(-1, i1 - i0, j1 - j0)
        torch.baddbmm(scores, *products, beta=0, alpha=scale, out=scores)
    if mask is not None:                                            # a mask dim of size 1 broadcasts
        rows = slice(i0, i1) if mask.shape[-2] > 1 else slice(None)
        cols = slice(j0, j1) if mask.shape[-1] > 1 else slice(None)
        mask_tile = mask[..., rows, cols].expand(*lead, i1 - i0, j1 - j0).reshape(-1, i1 - i0, j1 - j0)
        bias = _as_bias(mask_tile, scores.dtype) * LOG2_E           # the bias is in natural units
        scores = scores + bias if buffer is None else scores.add_(bias)
    if is_causal and j1 - 1 > i0:                                   # the tile crosses the diagonal
        above = torch.arange(j0, j1, device=scores.device) > torch.arange(i0, i1, device=scores.device)[:, None]
        scores.masked_fill_(above, -math.inf)
    return (j0, j1), scores


def attention_bias(attn_mask, is_causal, n_q, n_k, dtype, device):
    """Turn a bool/float mask and/or causality into one additive bias (..., n_q, n_k), or None."""
    mask = _check_mask(attn_mask, n_q, n_k)
    bias = None if mask is None else _as_bias(mask, dtype)
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()   # query i sees keys ≤ i
        causal_bias = torch.zeros(n_q, n_k, dtype=dtype, device=device).masked_fill(~causal, -math.inf)
        bias = causal_bias if bias is None else bias + causal_bias
    return bias


def _as_bias(mask, dtype):
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)
    return mask.to(dtype)


def _check_mask(attn_mask, n_q, n_k):
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a tensor (bool or float) or None, got {type(attn_mask).__name__}")
    if not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
        raise TypeError(f"attn_mask must be bool (True = may attend) or float (added to scores), got dtype {attn_mask.dtype}")
    shape = tuple(attn_mask.shape)
    if len(shape) < 2 or shape[-1] not in (1, n_k) or shape[-2] not in (1, n_q):
        raise ValueError(f"attn_mask must be broadcastable to (..., {n_q}, {n_k}) (queries, keys), got shape {shape}")
    return attn_mask


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a floating-point tensor, got {got}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., seq, dim), got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension d_k: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys (dim -2): k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"q, k, v must share their leading (batch, heads) dims: "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


class MultiHeadAttention(nn.Module):
    """Multi-head attention: h heads, each attending in its own head_dim-wide subspace.

        head_i = Attention(X W_q^i, C W_k^g(i), C W_v^g(i)),   MHA(X, C) = [head_1; …; head_h] W_o

    C is X for self-attention and the encoder's output for cross-attention. Ordinary multi-head
    attention has one key/value head per query head (g(i) = i). With ``n_kv_heads`` < ``n_heads``,
    grouped-query attention (Ainslie et al. 2023) lets each run of n_heads / n_kv_heads query heads
    share one key/value head, g(i) = i // (n_heads / n_kv_heads); ``n_kv_heads=1`` is multi-query
    attention (Shazeer 2019). Fewer key/value heads mean a smaller KV cache when generating (chapter 13).

    ``attention`` is any ``fn(q, k, v, attn_mask=None, is_causal=False)`` on (batch, heads, seq, head_dim)
    tensors; the default is :func:`scaled_dot_product_attention`. While the layer trains with
    ``dropout`` > 0 the function is also given ``dropout_p`` (a function without that argument is an
    error, never a silent loss of dropout).
    """

    def __init__(self, d_model, n_heads, head_dim=None, dropout=0.0, bias=True, attention=None, n_kv_heads=None):
        super().__init__()
        if head_dim is None:
            if n_heads <= 0 or d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}), or give head_dim")
            head_dim = d_model // n_heads
        if n_kv_heads is not None and (not isinstance(n_kv_heads, int) or n_kv_heads <= 0 or n_heads % n_kv_heads):
            raise ValueError(f"n_kv_heads must be a positive divisor of n_heads={n_heads} (or None), got {n_kv_heads!r}")
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        self._n_kv_heads = n_kv_heads                     # None: one key/value head per query head
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        self.attention = attention or scaled_dot_product_attention

    @property
    def n_kv_heads(self):
        return self.n_heads if self._n_kv_heads is None else self._n_kv_heads

    def forward(self, x, context=None, attn_mask=None, is_causal=False, head_mask=None, output_attentions=False,
                cache=None, rotate=None):
        """x: (batch, n_q, d_model); context: (batch, n_k, d_model) or None (self-attention).

        attn_mask: bool, broadcastable to (batch, heads, n_q, n_k); head_mask: (n_heads,) scales
        each head's output. cache (self-attention while generating): x holds only the new positions,
        and ``cache.update(k, v)`` stores their keys and values (batch, n_kv_heads, n_q, head_dim) after
        the earlier ones and returns all of them (e.g. ``minilib.generation.KVCache.layer(i)``); a cache
        that stores them in a form attention reads directly (``minilib.generation.QuantizedKVCache``) has
        ``attend(q, k, v, attn_mask, is_causal)`` instead, which stores them and returns (heads, weights).
        rotate (self-attention): a function applied to the queries and to the keys, (batch, heads, n_q, head_dim)
        each, before the keys are cached: chapter 14's rotary position embeddings turn each by its position.
        Returns (out (batch, n_q, d_model), weights (batch, heads, n_q, n_k) or None).
        """
        context = x if context is None else context
        q = self._split_heads(self.q_proj(x), self.n_heads)                    # (B, nh, n_q, hs)
        k = self._split_heads(self.k_proj(context), self.n_kv_heads)           # (B, n_kv, n_k, hs)
        v = self._split_heads(self.v_proj(context), self.n_kv_heads)
        if rotate is not None:
            q, k = rotate(q), rotate(k)                                         # RoPE: position m turns pair i by mθ_i
        if cache is not None and hasattr(cache, "attend"):
            heads, weights = cache.attend(q, k, v, attn_mask, is_causal)
            weights = weights if output_attentions else None
        else:
            if cache is not None:
                k, v = cache.update(k, v)                                       # (B, n_kv, past + n_q, hs)
                if is_causal:
                    attn_mask, is_causal = causal_after_past(attn_mask, q.shape[-2], k.shape[-2], q.device), False
            heads, weights = self._attend(q, k, v, attn_mask, is_causal, output_attentions)
        if head_mask is not None:
            heads = heads * head_mask.view(1, -1, 1, 1).to(heads.dtype)
        batch, _, n_q, _ = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, n_q, self.n_heads * self.head_dim)   # (B, n_q, nh·hs)
        return self.out_proj(merged), weights

    def _split_heads(self, t, n_heads):
        """(batch, seq, heads·head_dim) → (batch, heads, seq, head_dim)."""
        batch, seq, _ = t.shape
        return t.view(batch, seq, n_heads, self.head_dim).transpose(1, 2)

    def _attend(self, q, k, v, attn_mask, is_causal, output_attentions):
        group = self.n_heads // self.n_kv_heads
        dropout_p = self.dropout if self.training else 0.0
        if self.attention is scaled_dot_product_attention:
            if group > 1:   # the queries that share a key/value head read it in one product: no copy of K, V
                attn_mask = fold_query_groups_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], self.n_kv_heads,
                                                   group, q.device)
                q, is_causal = fold_query_groups(q, self.n_kv_heads), False        # (B, n_kv, group·n_q, hs)
            out, weights = scaled_dot_product_attention(q, k, v, attn_mask, is_causal, return_weights=True,
                                                        dropout_p=dropout_p)
            if group > 1:
                out, weights = unfold_query_groups(out, self.n_heads), unfold_query_groups(weights, self.n_heads)
            return out, (weights if output_attentions else None)
        if group > 1:   # a plug-in function sees one key/value head per query head, as enable_gqa=True does
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)   # (B, nh, n_k, hs)
        name = getattr(self.attention, "__name__", self.attention)
        if output_attentions:
            raise ValueError(f"output_attentions=True needs the default softmax attention; this layer uses "
                             f"{name!r}, which does not expose weights")
        if dropout_p == 0:
            return self.attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal), None
        if not _takes_dropout(self.attention):
            raise ValueError(f"attention dropout={dropout_p} needs an attention function that takes dropout_p; "
                             f"{name!r} does not: build the layer with dropout=0.0 or give the function dropout_p")
        return self.attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p), None


# ------------------------------------------------------------------------------------------------
# Grouped-query attention without copying keys and values
# ------------------------------------------------------------------------------------------------

def fold_query_groups(q, n_kv_heads):
    """(B, n_heads, n_q, d) → (B, n_kv_heads, group·n_q, d): the group of query heads that share a key/value
    head stacked as more query rows, so that one product ``q @ kᵀ`` with k (B, n_kv_heads, n_k, d) serves them
    all (query head h = kv·group + j becomes rows j·n_q … (j+1)·n_q − 1 of head kv). A view: nothing is copied.
    """
    batch, n_heads, n_q, d = q.shape
    return q.reshape(batch, n_kv_heads, (n_heads // n_kv_heads) * n_q, d)


def unfold_query_groups(x, n_heads):
    """The inverse of :func:`fold_query_groups`: (B, n_kv_heads, group·n_q, d) → (B, n_heads, n_q, d)."""
    batch, n_kv_heads, rows, d = x.shape
    return x.reshape(batch, n_heads, rows * n_kv_heads // n_heads, d)


def fold_query_groups_mask(attn_mask, is_causal, n_q, n_k, n_kv_heads, group, device):
    """The mask for folded queries (:func:`fold_query_groups`): (…, n_kv_heads or 1, group·n_q, n_k), or None.

    attn_mask: bool or float, broadcastable to (batch, n_heads, n_q, n_k); is_causal: query i sees keys ≤ i.
    Folded rows are no longer positions, so causality becomes an explicit mask here.
    """
    mask = _check_mask(attn_mask, n_q, n_k)
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()
        mask = causal if mask is None else (mask & causal if mask.dtype == torch.bool else mask + _as_bias(causal, mask.dtype))
    if mask is None:
        return None
    mask = mask.expand(*mask.shape[:-2], n_q, n_k)                        # rows and columns in full
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    batch, heads = mask.shape[:2]
    if heads == 1:                                                         # the same mask for every head
        return mask.unsqueeze(2).expand(batch, 1, group, n_q, n_k).reshape(batch, 1, group * n_q, n_k)
    return mask.reshape(batch, n_kv_heads, group * n_q, n_k)


def _takes_dropout(fn):
    """Whether ``fn`` accepts a ``dropout_p`` keyword (PyTorch's built-in attention has no readable signature, and does)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except ValueError:
        return fn is F.scaled_dot_product_attention
    return any(p.name == "dropout_p" or p.kind is p.VAR_KEYWORD for p in parameters)


def causal_bias_after_past(n_q, n_k, dtype, device):
    """:func:`causal_after_past` as an additive bias (n_q, n_k) of 0 and −∞, or None for one new query: a model
    builds it once per forward pass and hands it to every layer, instead of each layer building its own."""
    mask = causal_after_past(None, n_q, n_k, device)
    return None if mask is None else _as_bias(mask, dtype)


def causal_after_past(attn_mask, n_q, n_k, device):
    """Causal mask for n_q new queries after n_k - n_q cached positions: query i sees keys ≤ past + i.

    (PyTorch's ``is_causal`` aligns query 0 with key 0, which is only right without a past.)
    Returns a bool mask (n_q, n_k) combined with ``attn_mask``; one new query sees every key, so then
    ``attn_mask`` comes back unchanged.
    """
    if n_q == 1:
        return attn_mask
    causal = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(diagonal=n_k - n_q)
    return causal if attn_mask is None else attn_mask & causal
