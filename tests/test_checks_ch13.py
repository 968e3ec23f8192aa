"""Chapter 13's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch

from minilib.course.checks import check_accepted_count, check_cached_attention_step, check_kv_cache_bytes, check_q8_0
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


def test_q8_0(stub):
    assert check_q8_0(lambda w: tuple(quantize_blocks(w, "q8_0"))[:2])
    assert not check_q8_0(stub)

    def per_row(w):  # one scale per row (chapter 07) instead of per block of 32
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return (w / scale).round().to(torch.int8), scale.expand(-1, w.shape[1] // 32).half()
    assert not check_q8_0(per_row)
