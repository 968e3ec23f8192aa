"""Fast generation (chapter 13): a KV cache, a quantized KV cache, and speculative decoding.

A decoder generates one token at a time. Without a cache, step t runs the model over all t tokens
again, although the keys and values of the first t - 1 did not change (attention is causal). A KV
cache keeps them: each step then runs the model over one token, and attention reads the stored
keys and values:

    prefill:  K, V = [k_0 … k_{p-1}], [v_0 … v_{p-1}]        (the prompt, in one pass)
    step t:   K ← [K; k_t],  V ← [V; v_t],  out_t = softmax(q_t Kᵀ / √d) V

Its size is 2 · layers · batch · kv_heads · length · head_dim numbers: grouped-query attention
(fewer kv_heads) and quantized entries (:class:`QuantizedKVCache`) shrink it.

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k
tokens one by one; the large target model checks all of them in one forward pass and keeps the
longest prefix that agrees with its own greedy choices, plus its own next token. The output is
exactly the target's greedy output; the speed-up comes from running the target once per round.
A draft that stops a round early when it is unsure (``min_confidence``) wastes fewer of its own passes
and fewer of the target's positions on tokens that would be rejected anyway.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from minilib.attention import MultiHeadAttention
from minilib.quant.affine import absmax_quantize
from minilib.quant.int4 import pack_int4, unpack_int4
from minilib.support.device import model_device

# ------------------------------------------------------------------------------------------------
# The KV cache
# ------------------------------------------------------------------------------------------------

class CacheSlot(NamedTuple):
    """One layer's view of a cache: what :class:`~minilib.attention.MultiHeadAttention` calls ``update`` on."""

    cache: "KVCache"
    layer: int

    def update(self, k, v):
        return self.cache.update(self.layer, k, v)


class KVCache:
    """Every layer's keys and values, preallocated for ``max_len`` positions.

    keys, values: (n_layers, batch, n_kv_heads, max_len, head_dim); the first ``length`` positions are
    filled. A model's forward pass calls ``update`` once per layer, then ``advance`` once.
    """

    def __init__(self, n_layers, batch, n_kv_heads, head_dim, max_len, dtype=torch.float32, device=None):
        self.max_len, self.length = max_len, 0
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int | None = None, **kwargs) -> "KVCache":
        """A cache shaped for ``model`` (a LanguageModel), on its device, with its dtype; ``max_len`` defaults to its context."""
        attn = _attention_layers(model)[0]
        parameter = next(model.parameters())
        kwargs.setdefault("dtype", parameter.dtype)
        return cls(len(_attention_layers(model)), batch, attn.n_kv_heads, attn.head_dim,
                   max_len or model.config.max_len, device=parameter.device, **kwargs)

    def layer(self, i: int) -> CacheSlot:
        return CacheSlot(self, i)

    def update(self, layer, k, v):
        """Store k, v (batch, n_kv_heads, n_new, head_dim) at positions length … length + n_new - 1 of ``layer``.

        Returns that layer's keys and values so far, (batch, n_kv_heads, length + n_new, head_dim).
        """
        end = self._check_room(k.shape[-2])
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

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
        return self.keys, self.values


class QuantizedKVCache(KVCache):
    """A KV cache that stores each key and value vector as ``bits``-bit integers with one float16 scale.

    Symmetric absmax per token and per head (chapter 07's formula on a head_dim-long vector):
    s = max|x| / (2^(bits-1) - 1), q = round(x / s). bits=8: int8 codes; bits=4: two codes per byte.
    ``update`` returns dequantized keys and values, so attention itself is unchanged.
    """

    def __init__(self, n_layers, batch, n_kv_heads, head_dim, max_len, bits=8, dtype=torch.float32, device=None):
        if bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {bits!r}")
        if bits == 4 and head_dim % 2:
            raise ValueError(f"bits=4 packs two codes per byte and needs an even head_dim, got {head_dim}")
        self.max_len, self.length, self.bits, self.dtype = max_len, 0, bits, dtype
        code_dim = head_dim if bits == 8 else head_dim // 2
        codes = (2, n_layers, batch, n_kv_heads, max_len, code_dim)           # keys and values
        self.codes = torch.zeros(codes, dtype=torch.int8 if bits == 8 else torch.uint8, device=device)
        self.scales = torch.zeros(codes[:-1] + (1,), dtype=torch.float16, device=device)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def quantize(self, x):
        """x (..., head_dim) → (codes, float16 scales (..., 1)); bits=4 codes packed (..., head_dim / 2)."""
        q, scale = absmax_quantize(x, self.bits, dim=-1, scale_dtype=torch.float16)   # chapter 07's quantizer
        if self.bits == 8:
            return q, scale
        return pack_int4((q + 8).to(torch.uint8)), scale                        # codes + 8 ∈ [1, 15], two per byte

    def dequantize(self, codes, scale):
        """The inverse of :meth:`quantize`: (codes, scales) → (..., head_dim) in the cache's dtype."""
        if self.bits == 4:
            codes = unpack_int4(codes).to(torch.int8) - 8
        return codes.to(self.dtype) * scale.to(self.dtype)

    def update(self, layer, k, v):
        end = self._check_room(k.shape[-2])
        for i, x in enumerate((k, v)):
            codes, scale = self.quantize(x)
            self.codes[i, layer, :, :, self.length:end] = codes
            self.scales[i, layer, :, :, self.length:end] = scale
        return tuple(self.dequantize(self.codes[i, layer, :, :, :end], self.scales[i, layer, :, :, :end])
                     for i in (0, 1))

    def _storage(self):
        return self.codes, self.scales


def _attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(f"expected a model with minilib MultiHeadAttention layers, got {type(model).__name__}")
    return layers


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------

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
    return input_ids.to(model_device(model), torch.long)


def next_token(logits, temperature=0.0, top_k=None, generator=None):
    """logits (batch, vocab) → next tokens (batch, 1): argmax when temperature is 0, else a sample.

    Sampling draws from softmax(logits / temperature), restricted to the ``top_k`` likeliest tokens if given.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {temperature}")
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, *, use_cache=True, cache=None, temperature=0.0, top_k=None,
             eos_id=None, generator=None):
    """Append up to ``max_new_tokens`` tokens to ``input_ids`` (batch, seq) → (batch, seq + n_new).

    use_cache: prefill the prompt in one pass, then run one token per step against a KV cache
    (``cache``, emptied first, e.g. a :class:`QuantizedKVCache`; by default a :class:`KVCache` sized
    to the prompt and new tokens). Without it every step reruns the whole sequence: the same tokens,
    much more work. Rows that produced ``eos_id`` continue with ``eos_id``; generation stops when all have.
    """
    input_ids = _check_prompt(model, input_ids, max_new_tokens, cache)
    if use_cache:
        cache = cache or KVCache.for_model(model, input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        cache.truncate(0)
    was_training = model.training
    model.eval()
    tokens, new = input_ids, input_ids                                  # new: what the model has not seen yet
    finished = torch.zeros(input_ids.shape[0], 1, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model(new, cache=cache)[:, -1] if use_cache else model(tokens)[:, -1]
        token = next_token(logits, temperature, top_k, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        tokens, new = torch.cat([tokens, token], dim=1), token
        if eos_id is not None and finished.all():
            break
    model.train(was_training)
    return tokens


# ------------------------------------------------------------------------------------------------
# Speculative decoding
# ------------------------------------------------------------------------------------------------

class SpeculativeResult(NamedTuple):
    tokens: torch.Tensor        # (1, prompt + max_new_tokens): the target's own greedy output
    drafted: int                # tokens the draft proposed
    accepted: int               # of those, tokens the target agreed with
    target_calls: int           # forward passes of the target (prefill included)
    draft_calls: int            # forward passes of the draft (prefill included)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)


@torch.no_grad()
def speculative_generate(target, draft, input_ids, max_new_tokens, *, k=4, min_confidence=None):
    """Greedy speculative decoding: ``target``'s greedy tokens, with ``draft`` guessing ``k`` at a time.

    Each round: the draft proposes d_1 … d_k (k cheap passes); the target scores [last, d_1 … d_k]
    in one pass, giving its own choices p_0 … p_k; the first n drafts with d_i = p_{i-1} are kept, then
    p_n (the target's correction, or a bonus token when all k agree). Both caches are then cut back
    to the tokens kept. input_ids: (1, seq) → :class:`SpeculativeResult`.

    min_confidence: the draft ends a round early, after a token it gave a probability below this
    (a guess it is unsure of is likely to be rejected). The output is the same; only the cost changes.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens drafted per round) must be a positive int, got {k!r}")
    if min_confidence is not None and not 0 < min_confidence < 1:
        raise ValueError(f"min_confidence must be a probability between 0 and 1 (or None), got {min_confidence!r}")
    vocab = (target.lm_head.out_features, draft.lm_head.out_features)
    if vocab[0] != vocab[1]:
        raise ValueError(f"the draft must share the target's vocabulary: target has {vocab[0]} tokens, "
                         f"draft has {vocab[1]}")
    input_ids = _check_prompt(target, input_ids, max_new_tokens)
    _check_prompt(draft, input_ids, max_new_tokens)
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence at a time: expected batch 1, got {input_ids.shape[0]}")
    target.eval()
    draft.eval()
    total = input_ids.shape[1] + max_new_tokens
    caches = KVCache.for_model(target, 1, total), KVCache.for_model(draft, 1, total)
    tokens = input_ids
    stats = dict(drafted=0, accepted=0, target_calls=0, draft_calls=0)
    while tokens.shape[1] < total:
        n_draft = min(k, total - tokens.shape[1] - 1)               # never draft past max_new_tokens
        proposal = _draft(draft, caches[1], tokens, n_draft, stats, min_confidence)  # (1, ≤ n_draft)
        n_draft = proposal.shape[1]
        seen = caches[0].length                                             # the target has seen tokens[:seen]
        logits = target(torch.cat([tokens[:, seen:], proposal], dim=1), cache=caches[0])
        stats["target_calls"] += 1
        choices = logits[:, -(n_draft + 1):].argmax(dim=-1)                 # p_0 … p_n_draft, (1, n_draft + 1)
        agree = (proposal == choices[:, :-1]).long().cumprod(dim=1).sum().item()
        stats["drafted"], stats["accepted"] = stats["drafted"] + n_draft, stats["accepted"] + agree
        tokens = torch.cat([tokens, proposal[:, :agree], choices[:, agree:agree + 1]], dim=1)
        for cache in caches:             # keep only positions of accepted tokens (the newest is not seen yet)
            cache.truncate(min(cache.length, tokens.shape[1] - 1))
    return SpeculativeResult(tokens, **stats)


def _draft(draft, cache, tokens, n, stats, min_confidence=None):
    """The draft's greedy tokens after ``tokens`` (1, seq), n of them or fewer if it becomes unsure (see
    :func:`speculative_generate`), feeding it what its cache has not seen yet."""
    proposal, new = [], tokens[:, cache.length:]
    for _ in range(n):
        logits = draft(new, cache=cache)[:, -1]                             # (1, vocab)
        new = logits.argmax(dim=-1, keepdim=True)                           # (1, 1)
        proposal.append(new)
        stats["draft_calls"] += 1
        if min_confidence is not None and torch.softmax(logits.float(), dim=-1).max() < min_confidence:
            break
    return torch.cat(proposal, dim=1) if proposal else tokens[:, :0]


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
