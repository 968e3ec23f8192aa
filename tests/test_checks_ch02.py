"""Chapter 02's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math

import torch

from minilib.attention import scaled_dot_product_attention
from minilib.course.checks import (
    check_causal_padding_mask,
    check_multihead_attention,
    check_online_softmax_step,
    check_softmax_attention,
    check_split_heads,
)


def test_softmax_attention(stub):
    assert check_softmax_attention(lambda q, k, v: torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v)
    assert not check_softmax_attention(lambda q, k, v: scaled_dot_product_attention(q, k, v))   # the library's own
    assert not check_softmax_attention(scaled_dot_product_attention)                            # ... passed as it is
    assert not check_softmax_attention(stub)
    assert not check_softmax_attention(lambda q, k, v: torch.softmax(q @ k.T, dim=-1) @ v)          # no 1/√d
    assert not check_softmax_attention(lambda q, k, v: torch.softmax(q @ k.T / 8, dim=0) @ v)      # wrong axis


def test_split_heads(stub):
    def reference(x, n_heads):
        batch, seq, d_model = x.shape
        return x.view(batch, seq, n_heads, d_model // n_heads).transpose(1, 2)

    def direct_view(x, n_heads):  # right shape, tokens mixed across heads
        batch, seq, d_model = x.shape
        return x.view(batch, n_heads, seq, d_model // n_heads)

    assert check_split_heads(reference)
    assert not check_split_heads(stub)
    assert not check_split_heads(direct_view)


def test_causal_padding_mask(stub):
    def reference(attention_mask):
        seq = attention_mask.shape[-1]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        return causal & attention_mask.bool()[:, None, None, :]

    assert check_causal_padding_mask(reference)
    assert not check_causal_padding_mask(stub)
    assert not check_causal_padding_mask(lambda mask: reference(mask).float())                    # not boolean
    assert not check_causal_padding_mask(lambda mask: reference(torch.ones_like(mask)))            # padding ignored
    assert not check_causal_padding_mask(                                                          # queries masked
        lambda mask: torch.ones(mask.shape[-1], mask.shape[-1], dtype=torch.bool).tril() & mask.bool()[:, None, :, None])


def online_step(m, l, acc, scores, v, rescale=True, subtract_max=True):
    m_new = torch.maximum(m, scores.max(dim=-1).values) if subtract_max else torch.zeros_like(m)
    correction = torch.exp(m - m_new) if rescale else torch.ones_like(m)
    p = torch.exp(scores - m_new[:, None])
    return m_new, l * correction + p.sum(dim=-1), acc * correction[:, None] + p @ v


def test_online_softmax_step(stub):
    assert check_online_softmax_step(online_step)
    assert not check_online_softmax_step(stub)
    assert not check_online_softmax_step(lambda *a: online_step(*a, rescale=False))
    assert not check_online_softmax_step(lambda *a: online_step(*a, subtract_max=False))


def test_online_softmax_step_reference_matches_full_softmax():
    """The reference above is the real thing: chunked, it reproduces attention on a long row."""
    scores, v = 30 * torch.randn(4, 100), torch.randn(100, 8)
    state = torch.full((4,), -math.inf), torch.zeros(4), torch.zeros(4, 8)
    for chunk in range(0, 100, 7):
        state = online_step(*state, scores[:, chunk:chunk + 7], v[chunk:chunk + 7])
    torch.testing.assert_close(state[2] / state[1][:, None], torch.softmax(scores, -1) @ v)


class MultiHeadSelfAttention(torch.nn.Module):
    """The model answer of Exercise 2.6, with switches for the mistakes the check must catch."""

    def __init__(self, d_model, n_heads, scale_by_d_model=False, transposed_out=False, mask=True, fused=False):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.in_proj = torch.nn.Linear(d_model, 3 * d_model)
        self.out_proj = torch.nn.Linear(d_model, d_model)
        self.scale_by_d_model, self.transposed_out, self.mask, self.fused = scale_by_d_model, transposed_out, mask, fused

    def forward(self, x, key_padding_mask=None):
        batch, seq, d_model = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k, v = (t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.fused:  # the shortcut: PyTorch's fused attention
            allowed = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d_model if self.scale_by_d_model else self.head_dim)
            if key_padding_mask is not None and self.mask:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            heads = torch.softmax(scores, dim=-1) @ v
        merged = heads.transpose(1, 2).reshape(batch, seq, d_model)
        if self.transposed_out:
            return merged @ self.out_proj.weight + self.out_proj.bias
        return self.out_proj(merged)


def variant(**mistake):
    return lambda d_model, n_heads: MultiHeadSelfAttention(d_model, n_heads, **mistake)


class StubAttention(MultiHeadSelfAttention):
    def forward(self, x, key_padding_mask=None):
        raise NotImplementedError


def test_multihead_attention():
    assert check_multihead_attention(MultiHeadSelfAttention)
    assert not check_multihead_attention(StubAttention)
    assert not check_multihead_attention(variant(fused=True))              # PyTorch's fused kernel
    assert not check_multihead_attention(variant(scale_by_d_model=True))   # √d_model instead of √head_dim
    assert not check_multihead_attention(variant(transposed_out=True))     # x @ W instead of x @ Wᵀ
    assert not check_multihead_attention(variant(mask=False))              # padding ignored


def test_multihead_attention_rejects_minilib_attention_imported_by_name():
    """A notebook that imported the function under study under its own name is caught too."""
    namespace = {}
    exec("import math, torch\n"
         "from minilib.attention import scaled_dot_product_attention as attend\n"
         "class Borrowed(torch.nn.Module):\n"
         "    def __init__(self, d_model, n_heads):\n"
         "        super().__init__()\n"
         "        self.n_heads, self.head_dim = n_heads, d_model // n_heads\n"
         "        self.in_proj, self.out_proj = torch.nn.Linear(d_model, 3 * d_model), torch.nn.Linear(d_model, d_model)\n"
         "    def forward(self, x, key_padding_mask=None):\n"
         "        b, t, d = x.shape\n"
         "        q, k, v = (s.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for s in self.in_proj(x).chunk(3, -1))\n"
         "        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]\n"
         "        return self.out_proj(attend(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, d))\n",
         namespace)
    assert not check_multihead_attention(namespace["Borrowed"])
    assert namespace["attend"] is scaled_dot_product_attention  # restored afterwards
