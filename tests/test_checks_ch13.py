"""Chapter 13's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch

from minilib.course.checks import (
    check_accepted_count,
    check_cached_attention_step,
    check_kv_cache_bytes,
    check_q8_0,
    check_speculative_round,
)
from minilib.generation import speculative_round as library_round
from minilib.quant import quantize_blocks


def test_kv_cache_bytes(stub):
    assert check_kv_cache_bytes(lambda layers, batch, kv, seq, hd, b: 2 * layers * batch * kv * seq * hd * b)
    assert not check_kv_cache_bytes(stub)
    assert not check_kv_cache_bytes(lambda layers, batch, kv, seq, hd, b: layers * batch * kv * seq * hd * b)  # keys only


def cached_attention_step(attn, x_new, k_cache, v_cache, length, repeat=True):
    batch, hs = x_new.shape[0], attn.head_dim
    q = attn.q_proj(x_new).view(batch, 1, attn.n_heads, hs).transpose(1, 2)
    k = attn.k_proj(x_new).view(batch, 1, attn.n_kv_heads, hs).transpose(1, 2)
    v = attn.v_proj(x_new).view(batch, 1, attn.n_kv_heads, hs).transpose(1, 2)
    k_cache[:, :, length], v_cache[:, :, length] = k[:, :, 0], v[:, :, 0]
    group = attn.n_heads // attn.n_kv_heads
    expand = (lambda t: t.repeat_interleave(group, dim=1)) if repeat else (lambda t: t.repeat(1, group, 1, 1))
    keys, values = expand(k_cache[:, :, :length + 1]), expand(v_cache[:, :, :length + 1])
    weights = torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(hs), dim=-1)
    return attn.out_proj((weights @ values).transpose(1, 2).reshape(batch, 1, attn.n_heads * hs))


def test_cached_attention_step(stub):
    assert check_cached_attention_step(cached_attention_step)
    assert not check_cached_attention_step(stub)
    # kv heads tiled (0, 1, 0, 1) instead of repeated per group (0, 0, 1, 1): wrong for grouped-query layers
    assert not check_cached_attention_step(lambda *a: cached_attention_step(*a, repeat=False))

    def attends_to_the_new_token_only(attn, x_new, k_cache, v_cache, length):
        return cached_attention_step(attn, x_new, k_cache[:, :, length:], v_cache[:, :, length:], 0)
    assert not check_cached_attention_step(attends_to_the_new_token_only)

    def calls_the_layer(attn, x_new, k_cache, v_cache, length):   # right numbers, but the layer does the work
        k_cache[:, :, length] = attn.k_proj(x_new).view(x_new.shape[0], attn.n_kv_heads, -1)
        return attn(x_new)[0] if length == 0 else cached_attention_step(attn, x_new, k_cache, v_cache, length)
    assert not check_cached_attention_step(calls_the_layer)


def test_accepted_count(stub):
    assert check_accepted_count(lambda p, c: int((p == c[:len(p)]).long().cumprod(0).sum()))
    assert not check_accepted_count(stub)
    assert not check_accepted_count(lambda p, c: int((p == c[:len(p)]).sum()))     # counts later agreements too


def q8_0(w, rounding=None, scale_dtype=torch.float16, code_dtype=torch.int8):
    """The model answer of exercise 13.4 (halves away from zero, as ggml); the keywords make the plausible mistakes."""
    blocks = w.reshape(w.shape[0], -1, 32)                                            # (out, in/32, 32)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)
    x = blocks * inverse
    codes = (rounding or (lambda x: x.sign() * (x.abs() + 0.5).floor()))(x)
    return codes.to(code_dtype).reshape(w.shape), scale.squeeze(-1).to(scale_dtype)


def test_q8_0(stub):
    assert check_q8_0(q8_0)
    assert check_q8_0(lambda w: tuple(quantize_blocks(w.clone(), "q8_0"))[:2]) is False   # the reference, called
    assert not check_q8_0(stub)

    def per_row(w):  # one scale per row (chapter 07) instead of per block of 32
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return (w / scale).round().to(torch.int8), scale.expand(-1, w.shape[1] // 32).half()
    assert not check_q8_0(per_row)
    assert not check_q8_0(lambda w: q8_0(w, rounding=torch.round))                  # halves to even, not away from 0
    assert not check_q8_0(lambda w: q8_0(w, scale_dtype=torch.float32))             # gguf keeps float16 scales
    assert not check_q8_0(lambda w: q8_0(w, code_dtype=torch.float32))              # and int8 codes

    def zero_over_zero(w):  # 0/0 = NaN for the zero block, cast to int8: 0 on x86 by accident
        blocks = w.reshape(w.shape[0], -1, 32)
        scale = blocks.abs().amax(dim=-1, keepdim=True) / 127
        x = blocks / scale
        return (x.sign() * (x.abs() + 0.5).floor()).to(torch.int8).reshape(w.shape), scale.squeeze(-1).half()
    assert not check_q8_0(zero_over_zero)

    def through_gguf(w):
        import gguf

        raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0).reshape(w.shape[0], -1, 34)
        scales = torch.from_numpy(raw[..., :2].copy().view("float16")[..., 0])
        return torch.from_numpy(raw[..., 2:].copy().view("int8")).reshape(w.shape), scales
    assert not check_q8_0(through_gguf)


def speculative_round(target, draft, tokens, target_cache, draft_cache, k, keep=None, rollback=lambda n: n - 1,
                      correction=True):
    """The model answer of the speculative round; the keyword arguments make the plausible mistakes."""
    new, proposal = tokens[:, draft_cache.length:], []
    for _ in range(k):
        new = draft(new, cache=draft_cache)[:, -1:].argmax(-1)                       # (1, 1)
        proposal.append(new)
    proposal = torch.cat(proposal, dim=1)                                            # (1, k)
    logits = target(torch.cat([tokens[:, target_cache.length:], proposal], dim=1), cache=target_cache)
    choices = logits[:, -(k + 1):].argmax(-1)                                        # (1, k + 1)
    agree = (proposal == choices[:, :k]).long()
    kept = int(agree.cumprod(dim=1).sum()) if keep is None else keep(agree)
    tokens = torch.cat([tokens, proposal[:, :kept], choices[:, kept:kept + 1] if correction else proposal[:, :0]], 1)
    for cache in (target_cache, draft_cache):
        cache.truncate(min(cache.length, rollback(tokens.shape[1])))
    return tokens


def test_speculative_round(stub):
    assert check_speculative_round(speculative_round)
    assert not check_speculative_round(stub)
    mistakes = {
        "counts later agreements too": lambda *a: speculative_round(*a, keep=lambda agree: int(agree.sum())),
        "keeps the rejected drafts' keys": lambda *a: speculative_round(*a, rollback=lambda n: 10_000),
        "keeps the newest token's slot": lambda *a: speculative_round(*a, rollback=lambda n: n),
        "forgets the target's own token": lambda *a: speculative_round(*a, correction=False),
        "calls the library": lambda *a: library_round(*a).tokens,
    }
    for name, mistake in mistakes.items():
        assert not check_speculative_round(mistake), name
