"""Fast generation (chapter 13): KV caches (float and quantized), sampling, and speculative decoding.

A decoder generates one token at a time. Without a cache, step t runs the model over all t tokens
again, although the keys and values of the first t - 1 did not change (attention is causal). A KV
cache keeps them: each step then runs the model over one token, and attention reads the stored
keys and values:

    prefill:  K, V = [k_0 … k_{p-1}], [v_0 … v_{p-1}]        (the prompt, in one pass)
    step t:   K ← [K; k_t],  V ← [V; v_t],  out_t = softmax(q_t Kᵀ / √d) V

Its size is 2 · layers · batch · kv_heads · length · head_dim numbers: grouped-query attention
(fewer kv_heads) and quantized entries (:class:`QuantizedKVCache`) shrink it.

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k
tokens one by one; the large target model scores all of them in one forward pass. Greedy: the longest
prefix that agrees with the target's own choices is kept, plus the target's next token. Sampling:
drafted token d_i, drawn from the draft's distribution q_i, is kept with probability min(1, p_i(d_i) / q_i(d_i))
(p_i: the target's); the first rejected one is replaced by a draw from max(0, p_i − q_i), renormalised.
Either way the output has exactly the target's distribution (for greedy: its tokens); the speed-up
comes from running the target once per round. The draft need not be a network: :class:`NGramDraft` proposes
the tokens that most often followed the last few in a text, for the cost of a table lookup.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
from typing import Callable, NamedTuple

import torch
from torch import nn

from minilib.attention import (
    MultiHeadAttention,
    attention_bias,
    causal_after_past,
    fold_query_groups,
    fold_query_groups_mask,
    unfold_query_groups,
)
from minilib.quant.affine import absmax_quantize
from minilib.quant.int4 import pack_int4, unpack_int4
from minilib.support.data import check_token_ids
from minilib.support.device import model_device
from minilib.support.threads import decoding_threads, threads
from minilib.support.train import evaluating

# ------------------------------------------------------------------------------------------------
# The KV cache
# ------------------------------------------------------------------------------------------------

class CacheSlot(NamedTuple):
    """One layer's view of a :class:`KVCache`: what :class:`~minilib.attention.MultiHeadAttention` calls ``update`` on."""

    cache: "KVCache"
    layer: int

    def update(self, k, v):
        return self.cache.update(self.layer, k, v)


class _Cache:
    """What every cache shares: its shape, how many positions it holds, and rolling back."""

    def __init__(self, n_layers, batch, n_kv_heads, head_dim, max_len):
        self.n_layers, self.batch, self.n_kv_heads, self.head_dim = n_layers, batch, n_kv_heads, head_dim
        self.max_len, self.length = max_len, 0

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int | None = None, **kwargs):
        """A cache shaped for ``model`` (a LanguageModel), on its device, with its dtype; ``max_len`` defaults to its context."""
        layers = _attention_layers(model)
        parameter = next(model.parameters())
        kwargs.setdefault("dtype", parameter.dtype)
        return cls(len(layers), batch, layers[0].n_kv_heads, layers[0].head_dim, max_len or model.config.max_len,
                   device=parameter.device, **kwargs)

    def _check_new(self, layer, k, v) -> int:
        """ValueError naming what does not fit (layer, batch, key/value heads, head size, room); else the new end."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"the cache was built for {self.n_layers} layers; got layer {layer}")
        for name, t in (("keys", k), ("values", v)):
            if t.dim() != 4:
                raise ValueError(f"{name} must be (batch, kv_heads, new positions, head_dim), got {tuple(t.shape)}")
            for what, expected, got in (("batch", self.batch, t.shape[0]), ("key/value heads", self.n_kv_heads, t.shape[1]),
                                        ("head_dim", self.head_dim, t.shape[3])):
                if got != expected:
                    raise ValueError(f"the cache was built for {what} {expected}; got {name} with {what} {got} "
                                     f"(shape {tuple(t.shape)}): build it with KVCache.for_model(model, batch)")
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"keys and values must have as many new positions: {k.shape[2]} and {v.shape[2]}")
        return self._check_room(k.shape[2])

    def _check_room(self, n_new):
        end = self.length + n_new
        if end > self.max_len:
            raise ValueError(f"the KV cache holds at most {self.max_len} positions; "
                             f"{self.length} stored + {n_new} new = {end}")
        return end

    def advance(self, n_new: int) -> None:
        """Count ``n_new`` more positions as stored (after every layer has been updated)."""
        self.length = self._check_room(n_new)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding rejects drafted tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can truncate to 0 … {self.length} positions, got {length}")
        self.length = length

    @property
    def nbytes(self) -> int:
        """Bytes the cache occupies (all max_len positions: it is preallocated)."""
        return sum(t.numel() * t.element_size() for t in self._storage())

    def _storage(self):
        raise NotImplementedError


class KVCache(_Cache):
    """Every layer's keys and values, preallocated for ``max_len`` positions.

    keys, values: (n_layers, batch, n_kv_heads, max_len, head_dim); the first ``length`` positions are
    filled. A model's forward pass calls ``update`` once per layer, then ``advance`` once.
    """

    def __init__(self, n_layers, batch, n_kv_heads, head_dim, max_len, dtype=torch.float32, device=None):
        super().__init__(n_layers, batch, n_kv_heads, head_dim, max_len)
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    def layer(self, i: int) -> CacheSlot:
        return CacheSlot(self, i)

    def update(self, layer, k, v):
        """Store k, v (batch, n_kv_heads, n_new, head_dim) at positions length … length + n_new - 1 of ``layer``.

        Returns that layer's keys and values so far, (batch, n_kv_heads, length + n_new, head_dim).
        """
        end = self._check_new(layer, k, v)
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def _storage(self):
        return self.keys, self.values


# ------------------------------------------------------------------------------------------------
# The quantized KV cache
# ------------------------------------------------------------------------------------------------

LAYOUTS = ("per_token", "kivi")


class QuantizedCacheSlot(NamedTuple):
    """One layer's view of a :class:`QuantizedKVCache`: attention calls ``attend``, which reads the codes."""

    cache: "QuantizedKVCache"
    layer: int

    def attend(self, q, k, v, attn_mask=None, is_causal=False):
        return self.cache.attend(self.layer, q, k, v, attn_mask, is_causal)


class QuantizedKVCache(_Cache):
    """A KV cache that stores keys and values as ``bits``-bit integer codes with float16 scales.

    Symmetric absmax (chapter 07's formula): s = max|x| / (2^(bits-1) − 1), q = round(x / s), over

    * ``layout="per_token"``: each key and each value vector (one token, one head): one scale per head_dim numbers;
    * ``layout="kivi"`` (Liu et al. 2024): values per token, keys **per channel**: one scale per channel of a head
      for each ``group`` consecutive positions. Keys have outlier channels (a few dimensions much larger than the
      rest, the same at every position); a per-token scale set by them rounds the other channels to zero.
      The newest keys, of a group not yet full, stay in float until it fills (KIVI's full-precision residual).

    bits=8: int8 codes; bits=4: two codes per byte. Attention reads the codes directly (:meth:`attend`): the
    scales come out of the dot products, block by block, so the whole cache is never turned back into floats.
    KIVI itself quantizes asymmetrically (min/max with a zero point) and keeps recent values in float too.
    """

    def __init__(self, n_layers, batch, n_kv_heads, head_dim, max_len, bits=8, layout="per_token", group=32,
                 dtype=torch.float32, device=None, block=128):
        if bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {bits!r}")
        if bits == 4 and head_dim % 2:
            raise ValueError(f"bits=4 packs two codes per byte and needs an even head_dim, got {head_dim}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not isinstance(group, int) or group < 1:
            raise ValueError(f"group (positions sharing a key scale) must be a positive int, got {group!r}")
        super().__init__(n_layers, batch, n_kv_heads, head_dim, max_len)
        self.bits, self.layout, self.group, self.dtype = bits, layout, group, dtype
        self.block = max(block // group, 1) * group if layout == "kivi" else block   # whole groups per block
        positions = (n_layers, batch, n_kv_heads, max_len)
        code_dim, code_type = (head_dim, torch.int8) if bits == 8 else (head_dim // 2, torch.uint8)
        self.key_codes = torch.zeros(positions + (code_dim,), dtype=code_type, device=device)
        self.value_codes = torch.zeros(positions + (code_dim,), dtype=code_type, device=device)
        self.value_scales = torch.zeros(positions + (1,), dtype=torch.float16, device=device)
        if layout == "per_token":
            self.key_scales = torch.zeros(positions + (1,), dtype=torch.float16, device=device)
            self.key_residual = None
        else:
            n_groups = max_len // group
            self.key_scales = torch.zeros((n_layers, batch, n_kv_heads, n_groups, head_dim), dtype=torch.float16,
                                          device=device)
            self.key_residual = torch.zeros((n_layers, batch, n_kv_heads, group, head_dim), dtype=dtype, device=device)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def layer(self, i: int) -> QuantizedCacheSlot:
        return QuantizedCacheSlot(self, i)

    # ---- codes
    def quantize(self, x, dim=-1):
        """x → (codes, float16 scales), one scale per slice along ``dim`` (−1: per vector, −2: per channel).

        bits=4 codes are packed two per byte along the last dimension: (..., head_dim / 2).
        """
        q, scale = absmax_quantize(x, self.bits, dim=dim, scale_dtype=torch.float16)   # chapter 07's quantizer
        if self.bits == 8:
            return q, scale
        return pack_int4((q + 8).to(torch.uint8)), scale                        # codes + 8 ∈ [1, 15], two per byte

    def codes_as_numbers(self, codes):
        """Codes (packed or not) → their integer values as floats in the cache's dtype, (..., head_dim)."""
        if self.bits == 4:
            codes = unpack_int4(codes).to(torch.int8) - 8
        return codes.to(self.dtype)

    def _quantized_until(self, end):
        """Keys at positions before this are stored as codes; per channel, a group not yet full stays in float."""
        return end if self.layout == "per_token" else end // self.group * self.group

    # ---- storing
    def store(self, layer, k, v) -> int:
        """Quantize and store k, v (batch, n_kv_heads, n_new, head_dim) after the stored positions; returns the new end."""
        end = self._check_new(layer, k, v)
        start = self.length
        self.value_codes[layer, :, :, start:end], self.value_scales[layer, :, :, start:end] = self.quantize(v)
        if self.layout == "per_token":
            self.key_codes[layer, :, :, start:end], self.key_scales[layer, :, :, start:end] = self.quantize(k)
            return end
        g = self.group
        for first in range(start // g * g, end, g):                 # each group the new keys fall into
            lo, hi = max(start, first), min(end, first + g)
            self.key_residual[layer, :, :, lo - first:hi - first] = k[:, :, lo - start:hi - start]
            if hi == first + g:                                     # the group is full: one scale per channel
                codes, scale = self.quantize(self.key_residual[layer], dim=-2)
                self.key_codes[layer, :, :, first:hi], self.key_scales[layer, :, :, first // g] = codes, scale[:, :, 0]
        return end

    # ---- attention from the codes
    def attend(self, layer, q, k, v, attn_mask=None, is_causal=False):
        """Store k, v, then attention of q (batch, n_heads, n_q, head_dim) over every stored position.

        softmax(q Kᵀ / √d) V without the dequantized K and V: per-token key scales multiply the scores,
        per-channel ones the query, (q ⊙ s) · c = q · (s ⊙ c), and per-token value scales the weights;
        the codes are read ``block`` positions at a time. Query heads that share a key/value head are folded
        into one product (grouped-query attention without copies). Returns (heads (B, nh, n_q, hd),
        weights (B, nh, n_q, n_k)).
        """
        end = self.store(layer, k, v)
        n_heads, n_q = q.shape[1], q.shape[2]
        group = n_heads // self.n_kv_heads
        if is_causal:
            attn_mask = causal_after_past(attn_mask, n_q, end, q.device)
        mask = fold_query_groups_mask(attn_mask, False, n_q, end, self.n_kv_heads, group, q.device)
        q = fold_query_groups(q, self.n_kv_heads) / math.sqrt(self.head_dim)     # (B, n_kv, group·n_q, hd)
        blocks = [(lo, min(lo + self.block, end)) for lo in range(0, end, self.block)]
        scores = torch.cat([self._key_scores(layer, q, lo, hi, end) for lo, hi in blocks], dim=-1)
        if mask is not None:
            scores = scores + attention_bias(mask, False, scores.shape[-2], end, scores.dtype, scores.device)
        weights = torch.softmax(scores, dim=-1)                                  # (B, n_kv, group·n_q, n_k)
        heads = sum(self._value_sum(layer, weights, lo, hi) for lo, hi in blocks)
        return unfold_query_groups(heads, n_heads), unfold_query_groups(weights, n_heads)

    def _key_scores(self, layer, q, lo, hi, end):
        """q · k_j for positions lo … hi − 1, from their codes: (B, n_kv, rows, hi − lo)."""
        quantized = min(hi, self._quantized_until(end))
        parts = []
        if quantized > lo:
            codes = self.codes_as_numbers(self.key_codes[layer, :, :, lo:quantized])      # (B, n_kv, n, hd)
            if self.layout == "per_token":                                            # s_j · (q · c_j)
                scale = self.key_scales[layer, :, :, lo:quantized].to(q.dtype).transpose(-2, -1)
                parts.append(q @ codes.transpose(-2, -1) * scale)
            else:                                                                     # (q ⊙ s_g) · c_j, group by group
                batch, heads, n, d = codes.shape
                scale = self.key_scales[layer, :, :, lo // self.group:quantized // self.group].to(q.dtype)
                by_group = (q.unsqueeze(2) * scale.unsqueeze(3)) @ codes.view(batch, heads, -1, self.group, d).transpose(-2, -1)
                parts.append(by_group.transpose(2, 3).reshape(batch, heads, q.shape[2], n))   # (B, n_kv, rows, n)
        if hi > quantized:                                                            # the float residual
            first = max(lo, quantized)
            residual = self.key_residual[layer, :, :, first % self.group:first % self.group + hi - first]
            parts.append(q @ residual.transpose(-2, -1))
        return torch.cat(parts, dim=-1)

    def _value_sum(self, layer, weights, lo, hi):
        """Σ_j w_j v_j over positions lo … hi − 1 = Σ_j (w_j · s_j) c_j: (B, n_kv, rows, head_dim)."""
        codes = self.codes_as_numbers(self.value_codes[layer, :, :, lo:hi])
        scale = self.value_scales[layer, :, :, lo:hi].to(weights.dtype).transpose(-2, -1)   # (B, n_kv, 1, n)
        return (weights[..., lo:hi] * scale) @ codes

    # ---- looking inside
    def dequantized(self, layer):
        """The keys and values attention reads, as floats: (batch, n_kv_heads, length, head_dim) each.

        For inspection (the error of the codes); attention itself never builds these.
        """
        end, g = self.length, self.group
        values = self.codes_as_numbers(self.value_codes[layer, :, :, :end]) * self.value_scales[layer, :, :, :end].to(self.dtype)
        codes = self.codes_as_numbers(self.key_codes[layer, :, :, :self._quantized_until(end)])
        if self.layout == "per_token":
            return codes * self.key_scales[layer, :, :, :end].to(self.dtype), values
        scales = self.key_scales[layer, :, :, :end // g].to(self.dtype).repeat_interleave(g, dim=-2)
        keys = torch.cat([codes * scales, self.key_residual[layer, :, :, :end % g]], dim=-2)
        return keys, values

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on. Per channel, a group cut open again goes back to the residual
        from its codes (its float keys are gone) and is quantized again when it refills."""
        before = self.length
        super().truncate(length)
        g = self.group
        first = length // g * g
        if self.layout == "kivi" and length % g and before >= first + g:
            codes = self.codes_as_numbers(self.key_codes[:, :, :, first:first + g])
            self.key_residual.copy_(codes * self.key_scales[:, :, :, first // g, None].to(self.dtype))

    def _storage(self):
        return tuple(t for t in (self.key_codes, self.key_scales, self.value_codes, self.value_scales,
                                 self.key_residual) if t is not None)


def _attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(f"expected a model with minilib MultiHeadAttention layers, got {type(model).__name__}")
    return layers


# ------------------------------------------------------------------------------------------------
# Sampling and the decoding loop
# ------------------------------------------------------------------------------------------------

def _check_sampling(temperature, top_k):
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number ≥ 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"top_k must be None or an int ≥ 0 (0 or None = no filter, as in Hugging Face), got {top_k!r}")


def token_probabilities(logits, temperature=1.0, top_k=None):
    """logits (..., vocab) → the distribution a sampler draws the next token from, (..., vocab).

    softmax(logits / temperature) over the ``top_k`` likeliest tokens (every token when top_k is None or 0);
    temperature 0 gives all the probability to the argmax (greedy decoding is the limit T → 0).
    """
    _check_sampling(temperature, top_k)
    if temperature == 0:
        return torch.zeros_like(logits, dtype=torch.float).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def _draw(probabilities, temperature, generator=None):
    """One token per row of (rows, vocab) weights (need not sum to 1): the argmax when temperature is 0, else a sample."""
    if temperature == 0:
        return probabilities.argmax(dim=-1, keepdim=True)
    return torch.multinomial(probabilities, 1, generator=generator)


def next_token(logits, temperature=0.0, top_k=None, generator=None):
    """logits (batch, vocab) → next tokens (batch, 1): argmax when temperature is 0, else a sample.

    Sampling draws from :func:`token_probabilities` (softmax(logits / temperature), restricted to the ``top_k``
    likeliest tokens when top_k ≥ 1).
    """
    _check_sampling(temperature, top_k)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return _draw(token_probabilities(logits, temperature, top_k), temperature, generator)


def decode(step: Callable[[torch.Tensor], torch.Tensor], tokens, max_new_tokens, *, temperature=0.0, top_k=None,
           eos_id=None, generator=None):
    """The decoding loop every generator here shares: append up to ``max_new_tokens`` tokens to ``tokens``.

    step(tokens (batch, seq)) → next-token logits (batch, vocab) after the whole sequence so far (a cached
    step runs only what its cache has not seen). Rows that produced ``eos_id`` continue with ``eos_id``;
    the loop stops when all have. Returns (batch, seq + n_new).
    """
    _check_sampling(temperature, top_k)
    finished = torch.zeros(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
    for _ in range(max_new_tokens):
        token = next_token(step(tokens), temperature, top_k, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        tokens = torch.cat([tokens, token], dim=1)
        if eos_id is not None and finished.all():
            break
    return tokens


def _check_prompt(model, input_ids, max_new_tokens, cache=None):
    """The prompt as a (batch, seq) long tensor on the model's device; ValueError if it cannot fit."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, seq) tensor of token ids with seq ≥ 1, got {got}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    total, context = input_ids.shape[1] + max_new_tokens, model.config.max_len
    if total > context:
        raise ValueError(f"a prompt of {input_ids.shape[1]} tokens + {max_new_tokens} new tokens = {total} "
                         f"positions; the model's context is {context}")
    if cache is not None and total > cache.max_len:
        raise ValueError(f"a prompt of {input_ids.shape[1]} tokens + {max_new_tokens} new tokens = {total} "
                         f"positions; the cache's capacity is {cache.max_len}")
    if cache is not None and cache.batch != input_ids.shape[0]:
        raise ValueError(f"the cache was built for batch {cache.batch}; the prompt has batch {input_ids.shape[0]}")
    return input_ids.to(model_device(model), torch.long)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, *, use_cache=True, cache=None, temperature=0.0, top_k=None,
             eos_id=None, generator=None):
    """Append up to ``max_new_tokens`` tokens to ``input_ids`` (batch, seq) → (batch, seq + n_new).

    use_cache: prefill the prompt in one pass, then run one token per step against a KV cache
    (``cache``, emptied first, e.g. a :class:`QuantizedKVCache`; by default a :class:`KVCache` sized
    to the prompt and new tokens). Without it every step reruns the whole sequence: the same tokens,
    much more work. Sampling: see :func:`next_token`; ``eos_id``: see :func:`decode`. Runs in eval mode,
    then gives the model its own mode back.
    """
    _check_sampling(temperature, top_k)
    input_ids = _check_prompt(model, input_ids, max_new_tokens, cache)
    if use_cache:
        cache = cache or new_cache(model, input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        cache.truncate(0)
        step = lambda tokens: model(tokens[:, cache.length:], cache=cache, logits_to_keep=1)[:, -1]  # noqa: E731
    else:
        step = lambda tokens: model(tokens, logits_to_keep=1)[:, -1]  # noqa: E731
    per_pass = input_ids.shape[0] * (1 if use_cache else input_ids.shape[1] + max_new_tokens)
    with evaluating(model), threads(decoding_threads(model, per_pass)):
        return decode(step, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=eos_id,
                      generator=generator)


# ------------------------------------------------------------------------------------------------
# Speculative decoding
# ------------------------------------------------------------------------------------------------

class SpeculativeRound(NamedTuple):
    tokens: torch.Tensor        # (1, seq + accepted + 1): the sequence with the round's tokens
    drafted: int                # tokens the draft proposed
    accepted: int               # of those, tokens kept
    draft_calls: int            # forward passes of the draft


class SpeculativeResult(NamedTuple):
    tokens: torch.Tensor        # (1, prompt + max_new_tokens): distributed as the target's own output
    drafted: int                # tokens the draft proposed
    accepted: int               # of those, tokens kept
    target_calls: int           # forward passes of the target (prefill included)
    draft_calls: int            # forward passes of the draft (prefill included)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)


def _draft(draft, cache, tokens, k, temperature, top_k, generator, min_confidence):
    """Up to k draft tokens after ``tokens`` (1, seq), fewer if it becomes unsure (see :func:`speculative_round`).

    Returns (proposal (1, n), q (n, vocab): the distributions they were drawn from). The draft is fed what
    its cache has not seen yet, then each of its own tokens.
    """
    proposal, q, new = [], [], tokens[:, cache.length:]
    for _ in range(k):
        logits = draft(new, cache=cache, logits_to_keep=1)[:, -1]            # (1, vocab)
        q.append(token_probabilities(logits, temperature, top_k))
        new = _draw(q[-1], temperature, generator)                           # (1, 1)
        proposal.append(new)
        if min_confidence is not None and torch.softmax(logits.float(), dim=-1)[0, new[0, 0]] < min_confidence:
            break
    if not proposal:
        return tokens[:, :0], torch.zeros(0, draft.config.vocab_size, device=tokens.device)
    return torch.cat(proposal, dim=1), torch.cat(q)


def _verify(proposal, q, p, temperature, generator):
    """How many drafted tokens to keep, and the token that follows them.

    proposal (n,); q (n, vocab), the draft's distributions; p (n + 1, vocab), the target's after the same
    prefix and each drafted token. d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)) (greedy: one-hot
    distributions, so: when the target's choice is d_i), up to the first rejection, which is replaced by a
    draw from max(0, p_i − q_i) renormalised; when every d_i is kept, a bonus token is drawn from p_n.
    """
    n = proposal.shape[0]
    rows = torch.arange(n, device=p.device)
    p_d, q_d = p[rows, proposal], q[rows, proposal]
    u = torch.rand(n, generator=generator, device=p.device) if temperature > 0 else torch.zeros(n, device=p.device)
    kept = int((u * q_d < p_d).long().cumprod(dim=0).sum())              # u < p/q, with q(d) > 0: d was drawn from q
    if kept == n:
        return kept, _draw(p[n:], temperature, generator)
    residual = (p[kept] - q[kept]).clamp(min=0)                         # mass the draft under-proposed
    return kept, _draw((residual if residual.sum() > 0 else p[kept])[None], temperature, generator)


@torch.no_grad()
def speculative_round(target, draft, tokens, target_cache, draft_cache, k, *, temperature=0.0, top_k=None,
                      generator=None, min_confidence=None) -> SpeculativeRound:
    """One round: the draft proposes up to k tokens, the target checks them in one pass, both caches roll back.

    tokens (1, seq): the sequence so far; each cache holds the keys and values of the first ``length`` tokens
    (fewer than seq). The target scores [what its cache has not seen, d_1 … d_n] in one pass, giving its
    distributions p_0 … p_n; :func:`_verify` keeps a prefix of the drafts and adds one token. Both caches are
    then cut back to the tokens kept, minus the newest (no model has seen it yet).

    min_confidence: the draft ends the round early, after a token its softmax gave a probability below this
    (a guess it is unsure of is likely to be rejected). The output is the same; only the cost changes.
    """
    proposal, q = _draft(draft, draft_cache, tokens, k, temperature, top_k, generator, min_confidence)
    n = proposal.shape[1]
    seen = target_cache.length                                               # the target has seen tokens[:seen]
    logits = target(torch.cat([tokens[:, seen:], proposal], dim=1), cache=target_cache, logits_to_keep=n + 1)
    p = token_probabilities(logits[0], temperature, top_k)                   # p_0 … p_n, (n + 1, vocab)
    kept, follow = _verify(proposal[0], q, p, temperature, generator)
    tokens = torch.cat([tokens, proposal[:, :kept], follow.view(1, 1)], dim=1)
    for cache in (target_cache, draft_cache):
        cache.truncate(min(cache.length, tokens.shape[1] - 1))              # roll back the rejected positions
    return SpeculativeRound(tokens, n, kept, n)


@torch.no_grad()
def speculative_generate(target, draft, input_ids, max_new_tokens, *, k=4, min_confidence=None, temperature=0.0,
                         top_k=None, generator=None) -> SpeculativeResult:
    """Speculative decoding: ``target``'s output, with ``draft`` guessing ``k`` tokens at a time (batch 1).

    temperature 0 (greedy): exactly the tokens of ``generate(target, input_ids, max_new_tokens)``.
    temperature > 0 (with ``top_k``): sequences distributed exactly as ``generate(target, ..., temperature,
    top_k)`` samples them (speculative sampling), whatever the draft. Rounds: :func:`speculative_round`.
    input_ids: (1, seq) → :class:`SpeculativeResult`. Both models run in eval mode and get their own mode back.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (tokens drafted per round) must be a positive int, got {k!r}")
    if min_confidence is not None and not 0 < min_confidence < 1:
        raise ValueError(f"min_confidence must be a probability between 0 and 1 (or None), got {min_confidence!r}")
    _check_sampling(temperature, top_k)
    vocab = (target.config.vocab_size, draft.config.vocab_size)
    if vocab[0] != vocab[1]:
        raise ValueError(f"the draft must share the target's vocabulary: target has {vocab[0]} tokens, "
                         f"draft has {vocab[1]}")
    input_ids = _check_prompt(target, input_ids, max_new_tokens)
    _check_prompt(draft, input_ids, max_new_tokens)
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence at a time: expected batch 1, got {input_ids.shape[0]}")
    total = input_ids.shape[1] + max_new_tokens
    caches = new_cache(target, 1, total), new_cache(draft, 1, total)
    tokens, drafted, accepted, target_calls, draft_calls = input_ids, 0, 0, 0, 0
    with evaluating(target, draft), threads(decoding_threads(target, k + 1)):   # the verification: k + 1 tokens
        while tokens.shape[1] < total:
            n_draft = min(k, total - tokens.shape[1] - 1)                   # never draft past max_new_tokens
            tokens, n, kept, calls = speculative_round(target, draft, tokens, *caches, n_draft, temperature=temperature,
                                                       top_k=top_k, generator=generator, min_confidence=min_confidence)
            drafted, accepted, target_calls, draft_calls = drafted + n, accepted + kept, target_calls + 1, draft_calls + calls
    return SpeculativeResult(tokens, drafted, accepted, target_calls, draft_calls)


def new_cache(model, batch: int, max_len: int):
    """An empty cache of the kind ``model`` keeps: a :class:`KVCache`, or an n-gram draft's :class:`TokenHistory`."""
    if isinstance(model, NGramDraft):
        return TokenHistory(batch, max_len)
    return KVCache.for_model(model, batch, max_len)


class TokenHistory:
    """An :class:`NGramDraft`'s cache: the tokens it has been fed, for batch 1 (a table needs no keys or values).

    Like a :class:`KVCache` it has a ``length`` and forgets its newest tokens with ``truncate``.
    """

    def __init__(self, batch: int = 1, max_len: int = sys.maxsize):
        if batch != 1:
            raise ValueError(f"an n-gram draft keeps one sequence's history: expected batch 1, got {batch}")
        self.tokens: list[int] = []
        self.max_len = max_len

    @property
    def length(self) -> int:
        return len(self.tokens)

    def truncate(self, length: int) -> None:
        """Forget every token from ``length`` on (speculative decoding rejects drafted tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can truncate to 0 … {self.length} tokens, got {length}")
        del self.tokens[length:]


@dataclasses.dataclass(frozen=True)
class NGramConfig:
    """What speculative decoding and generate read of a draft: its vocabulary and how far back it looks."""

    vocab_size: int
    n: int                              # a context is up to n - 1 tokens
    max_len: int = sys.maxsize          # no context window: the table looks at the last n - 1 tokens only


class NGramDraft(nn.Module):
    """A draft without a network: the tokens that followed the last n − 1 most often in a text.

    Counting the text gives, for every context of 0 … n − 1 tokens that occurs in it, how often each token followed
    it. A pass looks up the longest context that ends the sequence and was seen (backing off to shorter ones; the
    empty context, the unigram counts, always is) and returns log counts as logits: greedy drafting proposes the
    most frequent follower, sampling draws in proportion to the counts (any draft distribution keeps speculative
    sampling exact). No weights and no matrix products: a pass is a dictionary lookup, where even a one-layer
    network is dozens of PyTorch operations. vLLM's "ngram" speculator and llama.cpp's lookup decoding draft the
    same way, from the prompt and from a corpus.

    sequences: (n_sequences, seq) token ids to count (windows never cross from one sequence into the next).
    """

    def __init__(self, sequences: torch.Tensor, vocab_size: int, n: int = 5):
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (the n-gram's length: context + next token) must be a positive int, got {n!r}")
        if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2 or sequences.dtype != torch.long:
            raise ValueError("sequences must be a (n_sequences, seq) tensor of token ids (torch.long), got "
                             f"{tuple(sequences.shape) if isinstance(sequences, torch.Tensor) else type(sequences).__name__}")
        if sequences.numel() and not 0 <= int(sequences.min()) <= int(sequences.max()) < vocab_size:
            raise ValueError(f"token ids must lie in 0 … {vocab_size - 1}, got {int(sequences.min())} … {int(sequences.max())}")
        if vocab_size ** n >= 2 ** 63:                                      # a window is counted as one int64
            raise ValueError(f"vocab_size ** n must stay below 2**63 (windows are counted as 64-bit numbers): "
                             f"{vocab_size} ** {n} does not; use a smaller n")
        self.config = NGramConfig(vocab_size, n)
        contexts, log_counts = _count_ngrams(sequences, vocab_size, n)
        self.register_buffer("log_counts", log_counts, persistent=False)        # (contexts, vocab)
        self.row = {context: i for i, context in enumerate(contexts)}           # context tuple → its row

    def forward(self, input_ids, cache: TokenHistory | None = None, logits_to_keep: int = 0):
        """input_ids (1, seq), after the tokens ``cache`` holds (appended to it) → logits (1, positions, vocab) for
        the last ``logits_to_keep`` positions (0: every position of input_ids), as a network's forward gives."""
        check_token_ids(input_ids)
        if input_ids.shape[0] != 1:
            raise ValueError(f"an n-gram draft reads one sequence: expected batch 1, got {input_ids.shape[0]}")
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int ≥ 0 (0 = every position), got {logits_to_keep!r}")
        past, new = ([] if cache is None else cache.tokens), input_ids[0].tolist()
        history = past[max(0, len(past) - self.config.n + 1):] + new        # a lookup reads n − 1 tokens at most
        if cache is not None:
            cache.tokens.extend(new)
        keep = len(new) if logits_to_keep == 0 else min(logits_to_keep, len(new))
        ends = range(len(history) - keep, len(history))                      # positions whose next token we predict
        return torch.stack([self.log_counts[self._longest_context(history[:end + 1])] for end in ends])[None]

    def _longest_context(self, history: list[int]) -> int:
        """The row of the longest context, of at most n − 1 tokens, that ends ``history`` and occurs in the text."""
        for width in range(min(self.config.n - 1, len(history)), -1, -1):
            row = self.row.get(tuple(history[len(history) - width:]))
            if row is not None:
                return row
        raise ValueError("the n-gram table counted no tokens")


def _count_ngrams(sequences: torch.Tensor, vocab_size: int, n: int) -> tuple[list[tuple], torch.Tensor]:
    """Every context of 0 … n − 1 tokens in ``sequences`` (n_sequences, seq), and the log counts of the tokens that
    followed it: (contexts, (len(contexts), vocab_size) with −∞ for a token that never followed)."""
    contexts, rows = [], []
    for width in range(min(n, sequences.shape[1])):                       # context lengths 0 … n - 1
        windows = sequences.unfold(1, width + 1, 1).reshape(-1, width + 1)   # (all windows, context + next)
        places = vocab_size ** torch.arange(width, -1, -1)                # a window as one number, base vocab
        grams, counts = torch.unique((windows * places).sum(dim=1), return_counts=True)
        seen, which = torch.unique(grams // vocab_size, return_inverse=True)   # each distinct context
        table = torch.full((len(seen), vocab_size), -math.inf)
        table[which, grams % vocab_size] = counts.float().log()         # log count of each follower
        contexts += [tuple(context) for context in (seen[:, None] // places[1:] % vocab_size).tolist()]
        rows.append(table)
    return contexts, torch.cat(rows)


# ------------------------------------------------------------------------------------------------
# When speculation pays: the cost model
# ------------------------------------------------------------------------------------------------

def expected_tokens_per_round(alpha: float, k: int) -> float:
    """1 + α + … + α^k = (1 − α^(k+1)) / (1 − α): tokens a round yields when each drafted token is accepted with
    probability α, independently of the others (the first rejection ends the round; the target adds one token)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (acceptance rate) must be in [0, 1], got {alpha!r}")
    return k + 1.0 if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, draft_cost: float, verify_cost: float = 1.0) -> float:
    """Expected speed-up over the target alone: tokens per round / the round's cost in one-token target passes.

        S = (1 − α^(k+1)) / ((1 − α) (k · c_draft + c_verify))

    draft_cost: one draft pass / one target pass; verify_cost: the target's (k+1)-token pass / its one-token pass
    (1 where the pass is bound by reading the weights, as on a GPU; more on a CPU, where k+1 tokens cost more).
    """
    return expected_tokens_per_round(alpha, k) / (k * draft_cost + verify_cost)


# ------------------------------------------------------------------------------------------------
# Grouped-query attention from a trained multi-head model
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def group_kv_heads(attn: MultiHeadAttention, n_kv_heads: int) -> MultiHeadAttention:
    """A grouped-query copy of a trained attention layer: each group's key and value heads mean-pooled.

    Head h of the key (and value) projection is rows h·head_dim … (h+1)·head_dim - 1 of its weight; the
    new key head j is the mean of heads j·g … (j+1)·g - 1 (g = n_heads / n_kv_heads), as in the GQA
    paper (Ainslie et al. 2023). The queries and the output projection are copied as they are.
    """
    if not isinstance(n_kv_heads, int) or n_kv_heads <= 0 or attn.n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads must be a positive divisor of n_heads={attn.n_heads}, got {n_kv_heads!r}")
    if attn.n_kv_heads != attn.n_heads:
        raise ValueError(f"expected a multi-head layer (n_kv_heads = n_heads = {attn.n_heads}), "
                         f"got n_kv_heads={attn.n_kv_heads}")
    bias = attn.q_proj.bias is not None
    grouped = MultiHeadAttention(attn.q_proj.in_features, attn.n_heads, attn.head_dim, attn.dropout, bias,
                                 attn.attention, n_kv_heads).to(attn.q_proj.weight.device, attn.q_proj.weight.dtype)
    grouped.q_proj.load_state_dict(attn.q_proj.state_dict())
    grouped.out_proj.load_state_dict(attn.out_proj.state_dict())
    group = attn.n_heads // n_kv_heads
    for old, new in ((attn.k_proj, grouped.k_proj), (attn.v_proj, grouped.v_proj)):
        d_in = old.in_features
        new.weight.copy_(old.weight.view(n_kv_heads, group, attn.head_dim, d_in).mean(dim=1).reshape(-1, d_in))
        if bias:
            new.bias.copy_(old.bias.view(n_kv_heads, group, attn.head_dim).mean(dim=1).flatten())
    return grouped


def grouped_query_model(model: nn.Module, n_kv_heads: int) -> nn.Module:
    """A copy of a LanguageModel whose self-attention layers are grouped with :func:`group_kv_heads`."""
    model = copy.deepcopy(model)
    for layer in model.layers:
        layer.attn = group_kv_heads(layer.attn, n_kv_heads)
    model.config = dataclasses.replace(model.config, n_kv_heads=n_kv_heads)
    return model
