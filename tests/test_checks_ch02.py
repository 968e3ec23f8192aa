"""Chapter 02's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
shortcuts (the library, PyTorch's fused attention, reference modules) by whatever route they are reached."""
import importlib
import math

import torch
import torch.nn.functional as F

import minilib.attention
from minilib.attention import scaled_dot_product_attention
from minilib.course.checks import (
    check_causal_padding_mask,
    check_multihead_attention,
    check_online_softmax_step,
    check_softmax_attention,
    check_split_heads,
)


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v


def softmax_attention_by_hand(q, k, v):  # einsum, an explicit max-subtracted softmax
    scores = torch.einsum("id,jd->ij", q, k) * q.shape[-1] ** -0.5
    weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    return torch.einsum("ij,jv->iv", weights / weights.sum(dim=-1, keepdim=True), v)


def softmax_attention_row_by_row(q, k, v):  # a loop over the queries
    return torch.stack([F.softmax(k @ row / math.sqrt(len(row)), dim=0) @ v for row in q])


def test_softmax_attention(stub, refused):
    assert check_softmax_attention(softmax_attention)
    assert check_softmax_attention(softmax_attention_by_hand)
    assert check_softmax_attention(softmax_attention_row_by_row)
    assert not check_softmax_attention(stub)
    refused(check_softmax_attention, lambda q, k, v: torch.softmax(q @ k.T, dim=-1) @ v, "√d")       # no 1/√d
    refused(check_softmax_attention, lambda q, k, v: torch.softmax(q @ k.T / 8, dim=0) @ v, "last dimension")  # axis
    refused(check_softmax_attention, lambda q, k, v: None, "return a tensor of shape (1, 1)", "None")
    refused(check_softmax_attention,
            lambda q, k, v: (softmax_attention(q, k, v), torch.softmax(q @ k.T, -1)), "got:      a tuple of 2")


def test_softmax_attention_refuses_the_reference_by_any_route(refused):
    named = "scaled_dot_product_attention"
    refused(check_softmax_attention, lambda q, k, v: scaled_dot_product_attention(q, k, v), f"minilib.attention.{named}")
    refused(check_softmax_attention, scaled_dot_product_attention, f"your answer is minilib.attention.{named} itself")
    refused(check_softmax_attention, lambda q, k, v: F.scaled_dot_product_attention(q, k, v),  # the check's reference
            f"torch.nn.functional.{named}")
    refused(check_softmax_attention, lambda q, k, v: torch._C._nn.scaled_dot_product_attention(q, k, v), named)
    refused(check_softmax_attention, lambda q, k, v: torch.ops.aten.scaled_dot_product_attention(q, k, v), named)

    def bound_default(q, k, v, attend=F.scaled_dot_product_attention):
        return attend(q, k, v)

    refused(check_softmax_attention, bound_default, "attend=", "the default arguments of")

    def through_another_module(q, k, v):
        import minilib.experiments.ch02_self_attention as lesson
        return lesson.scaled_dot_product_attention(q, k, v)

    refused(check_softmax_attention, through_another_module, "minilib.experiments.ch02_self_attention")

    def hidden_and_caught(q, k, v):  # a name the reader cannot see, and a fallback when the tripwire fires
        attend = getattr(importlib.import_module("".join(["mini", "lib.attention"])), named)
        try:
            return attend(q, k, v)
        except Exception:  # noqa: BLE001
            return softmax_attention(q, k, v)

    refused(check_softmax_attention, hidden_and_caught, f"calls minilib.attention.{named}", "carries on")
    assert minilib.attention.scaled_dot_product_attention is scaled_dot_product_attention  # all put back
    assert torch.allclose(scaled_dot_product_attention(torch.ones(2, 4), torch.ones(3, 4), torch.ones(3, 2)),
                          torch.ones(2, 2))


def test_split_heads(stub, refused):
    def reference(x, n_heads):
        batch, seq, d_model = x.shape
        return x.view(batch, seq, n_heads, d_model // n_heads).transpose(1, 2)

    def direct_view(x, n_heads):  # right shape, tokens mixed across heads
        batch, seq, d_model = x.shape
        return x.view(batch, n_heads, seq, d_model // n_heads)

    assert check_split_heads(reference)
    assert check_split_heads(lambda x, h: torch.stack(x.chunk(h, dim=-1), dim=1))             # chunks, stacked
    assert check_split_heads(lambda x, h: x.unflatten(-1, (h, -1)).permute(0, 2, 1, 3).contiguous())
    assert not check_split_heads(stub)
    refused(check_split_heads, direct_view, "x = arange(8).view(1, 2, 4)", "mixes tokens")
    refused(check_split_heads, lambda x, h: x.reshape(len(x), h, -1), "shape (1, 2, 2, 2)", "order")


def test_causal_padding_mask(stub, refused):
    def reference(attention_mask):
        seq = attention_mask.shape[-1]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        return causal & attention_mask.bool()[:, None, None, :]

    def by_positions(attention_mask):  # compares positions, then multiplies 0/1 masks and converts
        positions = torch.arange(attention_mask.shape[1])
        keep = (positions[None, :] <= positions[:, None]).long() * attention_mask[:, None, :]
        return keep.unsqueeze(1) == 1

    assert check_causal_padding_mask(reference)
    assert check_causal_padding_mask(by_positions)
    assert not check_causal_padding_mask(stub)
    refused(check_causal_padding_mask, lambda mask: reference(mask).float(), "dtype bool", "float32")
    refused(check_causal_padding_mask, lambda mask: reference(torch.ones_like(mask)), "padding")  # padding ignored
    refused(check_causal_padding_mask,                                                            # queries masked
            lambda mask: torch.ones(mask.shape[-1], mask.shape[-1], dtype=torch.bool).tril() & mask.bool()[:, None, :, None],
            "the first sentence ends with padding")
    refused(check_causal_padding_mask, lambda mask: reference(mask)[:, 0], "shape (2, 1, 3, 3)", "shape (2, 3, 3)")


def online_step(m, l, acc, scores, v, rescale=True, subtract_max=True):
    m_new = torch.maximum(m, scores.max(dim=-1).values) if subtract_max else torch.zeros_like(m)
    correction = torch.exp(m - m_new) if rescale else torch.ones_like(m)
    p = torch.exp(scores - m_new[:, None])
    return m_new, l * correction + p.sum(dim=-1), acc * correction[:, None] + p @ v


def online_step_logsumexp(m, l, acc, scores, v):  # the same update written with logsumexp and a loop-free where
    m_new = torch.where(scores.amax(-1) > m, scores.amax(-1), m)
    l_new = l * (m - m_new).exp() + torch.logsumexp(scores - m_new[:, None], dim=-1).exp()
    return m_new, l_new, acc * (m - m_new).exp()[:, None] + torch.exp(scores - m_new[:, None]) @ v


def test_online_softmax_step(stub, refused):
    assert check_online_softmax_step(online_step)
    assert check_online_softmax_step(online_step_logsumexp)
    assert check_online_softmax_step(lambda *state: list(online_step(*state)))  # a list is a fine container
    assert not check_online_softmax_step(stub)
    refused(check_online_softmax_step, lambda *a: online_step(*a, rescale=False), "exp(m − m_new)")
    refused(check_online_softmax_step, lambda *a: online_step(*a, subtract_max=False), "running max")
    refused(check_online_softmax_step, lambda *a: online_step(*a)[1:], "what one step returns", "3")


def test_online_softmax_step_reference_matches_full_softmax():
    """The reference above is the real thing: chunked, it reproduces attention on a long row."""
    scores, v = 30 * torch.randn(4, 100), torch.randn(100, 8)
    state = torch.full((4,), -math.inf), torch.zeros(4), torch.zeros(4, 8)
    for chunk in range(0, 100, 7):
        state = online_step(*state, scores[:, chunk:chunk + 7], v[chunk:chunk + 7])
    torch.testing.assert_close(state[2] / state[1][:, None], torch.softmax(scores, -1) @ v)


class MultiHeadSelfAttention(torch.nn.Module):
    """The model answer of Exercise 2.6, with switches for the mistakes the check must catch."""

    def __init__(self, d_model, n_heads, scale_by_d_model=False, transposed_out=False, mask=True, fused=None):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.in_proj = torch.nn.Linear(d_model, 3 * d_model)
        self.out_proj = torch.nn.Linear(d_model, d_model)
        self.scale_by_d_model, self.transposed_out, self.mask, self.fused = scale_by_d_model, transposed_out, mask, fused

    def forward(self, x, key_padding_mask=None):
        batch, seq, d_model = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k, v = (t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.fused is not None:  # the shortcut: a fused attention kernel
            allowed = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            heads = self.fused(q, k, v, attn_mask=allowed)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d_model if self.scale_by_d_model else self.head_dim)
            if key_padding_mask is not None and self.mask:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            heads = torch.softmax(scores, dim=-1) @ v
        merged = heads.transpose(1, 2).reshape(batch, seq, d_model)
        if self.transposed_out:
            return merged @ self.out_proj.weight + self.out_proj.bias
        return self.out_proj(merged)


class EinsumAttention(torch.nn.Module):
    """Another correct answer: einsum throughout, an additive mask, the heads merged by einsum too."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.in_proj, self.out_proj = torch.nn.Linear(d_model, 3 * d_model), torch.nn.Linear(d_model, d_model)

    def forward(self, x, key_padding_mask=None):
        qkv = self.in_proj(x).unflatten(-1, (3, self.h, -1))        # (B, T, 3, h, hd)
        q, k, v = qkv.unbind(dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        if key_padding_mask is not None:
            scores = scores + torch.zeros_like(key_padding_mask, dtype=x.dtype).masked_fill(
                key_padding_mask, -1e9)[:, None, None, :]
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)
        return self.out_proj(out)


def variant(**mistake):
    return lambda d_model, n_heads: MultiHeadSelfAttention(d_model, n_heads, **mistake)


class StubAttention(MultiHeadSelfAttention):
    def forward(self, x, key_padding_mask=None):
        raise NotImplementedError


def test_multihead_attention(refused):
    assert check_multihead_attention(MultiHeadSelfAttention)
    assert check_multihead_attention(EinsumAttention)
    assert check_multihead_attention(variant())            # a function that builds the module is fine too
    assert not check_multihead_attention(StubAttention)
    refused(check_multihead_attention, variant(scale_by_d_model=True), "no padding", "√head_dim")
    refused(check_multihead_attention, variant(transposed_out=True), "no padding")     # x @ W instead of x @ Wᵀ
    refused(check_multihead_attention, variant(mask=False), "padded", "-inf")


def test_multihead_attention_says_what_to_return_and_pass(refused):
    class ReturnsWeightsToo(MultiHeadSelfAttention):
        def forward(self, x, key_padding_mask=None):
            return super().forward(x, key_padding_mask), None

    refused(check_multihead_attention, ReturnsWeightsToo, "return a tensor of shape (2, 7, 128)", "a tuple of 2")
    refused(check_multihead_attention, MultiHeadSelfAttention(128, 2), "pass the class MultiHeadSelfAttention",
            "an instance")
    refused(check_multihead_attention, lambda d_model, n_heads: None, "should build your layer", "None")

    class Renamed(EinsumAttention):
        def __init__(self, d_model, n_heads):
            super().__init__(d_model, n_heads)
            self.qkv = self.in_proj
            del self.in_proj

    refused(check_multihead_attention, Renamed, "in_proj", "keep the names")


class CopiesIntoReference(torch.nn.Module):
    """A shortcut: PyTorch's own module, built in __init__, given the check's weights before each call."""

    def __init__(self, d_model, n_heads, build=lambda d, h: torch.nn.MultiheadAttention(d, h, batch_first=True)):
        super().__init__()
        self.in_proj, self.out_proj = torch.nn.Linear(d_model, 3 * d_model), torch.nn.Linear(d_model, d_model)
        self.reference = build(d_model, n_heads)

    def forward(self, x, key_padding_mask=None):
        with torch.no_grad():
            self.reference.in_proj_weight.copy_(self.in_proj.weight)
            self.reference.in_proj_bias.copy_(self.in_proj.bias)
            self.reference.out_proj.load_state_dict(self.out_proj.state_dict())
        return type(self.reference).forward(self.reference, x, x, x, key_padding_mask=key_padding_mask)[0]


def test_multihead_attention_refuses_shortcuts_by_any_route(refused):
    refused(check_multihead_attention, variant(fused=F.scaled_dot_product_attention), "scaled_dot_product_attention")
    refused(check_multihead_attention, variant(fused=torch._C._nn.scaled_dot_product_attention),
            "scaled_dot_product_attention")
    refused(check_multihead_attention, variant(fused=scaled_dot_product_attention), "minilib.attention")
    refused(check_multihead_attention, CopiesIntoReference, "torch.nn.MultiheadAttention")
    from torch.nn.modules import activation
    refused(check_multihead_attention,
            lambda d, h: CopiesIntoReference(d, h, build=lambda d, h: activation.MultiheadAttention(d, h, batch_first=True)),
            "torch.nn.MultiheadAttention")


class UnboundReference(MultiHeadSelfAttention):
    """A shortcut the reader cannot see: PyTorch's module found by a computed name, its forward called unbound."""

    def forward(self, x, key_padding_mask=None):
        cls = vars(torch.nn.modules.activation)["Multihead" + "Attention"]
        reference = cls(x.shape[-1], self.n_heads, batch_first=True)
        return cls.forward(reference, x, x, x, key_padding_mask=key_padding_mask)[0]


def test_multihead_attention_refuses_an_unbound_forward(refused):
    refused(check_multihead_attention, UnboundReference, "calls torch.nn.MultiheadAttention")


def test_multihead_attention_rejects_minilib_attention_imported_by_name(refused):
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
    refused(check_multihead_attention, namespace["Borrowed"], "minilib.attention.scaled_dot_product_attention")
    assert namespace["attend"] is scaled_dot_product_attention  # untouched
