"""Chapter 03's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import pytest
import torch
import torch.nn.functional as F

from minilib.course.checks import (
    check_clip_by_global_norm,
    check_encoder_layer,
    check_pre_norm_residual,
    check_sinusoidal_positions,
    check_warmup_linear,
)
from minilib.support.train import lr_multiplier
from minilib.transformer import SinusoidalPositions


def sinusoidal(max_len, d_model, base=10000.0, swap=False):
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    frequency = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # 1 / base^(2i/d)
    table = torch.zeros(max_len, d_model)
    even, odd = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
    table[:, 0::2] = even(position * frequency)
    table[:, 1::2] = odd(position * frequency[: d_model // 2])
    return table


def test_sinusoidal_positions(stub):
    assert check_sinusoidal_positions(sinusoidal)
    assert not check_sinusoidal_positions(lambda max_len, d: SinusoidalPositions(max_len, d).table)   # the library's own
    assert not check_sinusoidal_positions(stub)
    assert not check_sinusoidal_positions(lambda n, d: sinusoidal(n, d, swap=True))       # sin and cos swapped
    assert not check_sinusoidal_positions(lambda n, d: sinusoidal(n, d, base=1000.0))     # wrong base


def test_pre_norm_residual(stub):
    assert check_pre_norm_residual(lambda x, sublayer, norm: x + sublayer(norm(x)))
    assert not check_pre_norm_residual(stub)
    assert not check_pre_norm_residual(lambda x, sublayer, norm: norm(x + sublayer(x)))      # post-norm
    assert not check_pre_norm_residual(lambda x, sublayer, norm: norm(x) + sublayer(norm(x)))  # normalised residual


def warmup_linear(step, total_steps, warmup_steps):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps)


def test_warmup_linear(stub):
    assert check_warmup_linear(warmup_linear)
    assert not check_warmup_linear(lambda step, total, warmup: lr_multiplier(step, total, warmup, "linear"))   # the library's
    assert not check_warmup_linear(stub)
    assert not check_warmup_linear(lambda s, t, w: s / w if s < w else 1 - (s - w) / (t - w))  # starts at 0
    assert not check_warmup_linear(lambda s, t, w: (s + 1) / w if s < w else 1 - s / t)        # decays from step 0


def clip_by_global_norm(grads, max_norm):
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    scale = min(1.0, max_norm / (norm + 1e-6))
    return [g * scale for g in grads]


def test_clip_by_global_norm(stub):
    assert check_clip_by_global_norm(clip_by_global_norm)
    assert not check_clip_by_global_norm(stub)
    assert not check_clip_by_global_norm(lambda grads, m: [g * min(1.0, m / g.norm()) for g in grads])  # per tensor
    assert not check_clip_by_global_norm(lambda grads, m: [g.clamp(-m, m) for g in grads])             # by value
    assert not check_clip_by_global_norm(lambda grads, m: [g * m / math.sqrt(sum(float(x.pow(2).sum()) for x in grads))
                                                           for g in grads])  # always rescales, even small ones


class BertEncoderLayer(torch.nn.Module):
    """The model answer of Exercise 3.6, with switches for the mistakes the check must catch."""

    def __init__(self, d_model=384, n_heads=12, d_ff=1536, eps=1e-12, pre_norm=False, approximate="none",
                 transposed=False):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.query, self.key, self.value = (torch.nn.Linear(d_model, d_model) for _ in range(3))
        self.attn_out, self.attn_norm = torch.nn.Linear(d_model, d_model), torch.nn.LayerNorm(d_model, eps=eps)
        self.ffn_up, self.ffn_down = torch.nn.Linear(d_model, d_ff), torch.nn.Linear(d_ff, d_model)
        self.ffn_norm = torch.nn.LayerNorm(d_model, eps=eps)
        self.pre_norm, self.approximate, self.transposed = pre_norm, approximate, transposed

    def attend(self, x, attention_mask):
        batch, seq, d_model = x.shape

        def heads(t):
            return t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)

        query = x @ self.query.weight + self.query.bias if self.transposed else self.query(x)
        q, k, v = heads(query), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        return self.attn_out((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, d_model))

    def ffn(self, h):
        return self.ffn_down(F.gelu(self.ffn_up(h), approximate=self.approximate))

    def forward(self, x, attention_mask):
        if self.pre_norm:
            h = x + self.attend(self.attn_norm(x), attention_mask)
            return h + self.ffn(self.ffn_norm(h))
        h = self.attn_norm(x + self.attend(x, attention_mask))
        return self.ffn_norm(h + self.ffn(h))


def encoder_variant(**mistake):
    return lambda *sizes: BertEncoderLayer(*sizes, **mistake)


class StubLayer(BertEncoderLayer):
    def forward(self, x, attention_mask):
        raise NotImplementedError


class LibraryResidual(BertEncoderLayer):
    """The shortcut: minilib's residual helper does the sublayer wiring."""

    def forward(self, x, attention_mask):
        from minilib.transformer import sublayer_connection
        h = sublayer_connection(x, lambda t: self.attend(t, attention_mask), self.attn_norm, torch.nn.Identity(), False)
        return sublayer_connection(h, self.ffn, self.ffn_norm, torch.nn.Identity(), False)


@pytest.fixture(scope="module")
def minilm():
    from minilib.deploy.hf import load_minilm
    return load_minilm()[0]


def test_encoder_layer(minilm):
    assert check_encoder_layer(BertEncoderLayer, minilm)
    assert not check_encoder_layer(StubLayer, minilm)
    assert not check_encoder_layer(LibraryResidual, minilm)
    assert not check_encoder_layer(encoder_variant(pre_norm=True), minilm)        # GPT-2's order, not BERT's
    assert not check_encoder_layer(encoder_variant(approximate="tanh"), minilm)   # MiniLM's gelu is the erf one
    assert not check_encoder_layer(encoder_variant(transposed=True), minilm)      # x @ W instead of x @ Wᵀ
