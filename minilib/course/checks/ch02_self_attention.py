"""Checks for chapter 02 (self-attention): attention in one line, heads, masks, one online-softmax step.

The chapter's "build it" check: a multi-head attention module against torch.nn.MultiheadAttention.
"""
import math

import torch
import torch.nn.functional as F

import minilib.attention as attention
from minilib.course.checks.core import exercise, expect_close, expect_equal
from minilib.course.checks.guards import forbidden_calls


@exercise(points=2)
def check_softmax_attention(fn):
    """softmax(QKᵀ/√d)V for one sequence: a hand case, then random cases against PyTorch's fused kernel."""
    with forbidden_calls(fn, [(attention, "scaled_dot_product_attention"), (attention, "memory_efficient_attention")],
                         "write softmax(QKᵀ/√d)V with matmul and softmax: minilib.attention.scaled_dot_product_attention is the answer"):
        q = torch.zeros(1, 2)
        k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        v = torch.tensor([[3.0], [6.0], [0.0]])
        expect_close("q = [[0, 0]]: every score is 0, so the output is the mean of v's rows", fn(q, k, v),
                     torch.tensor([[3.0]]), hint="softmax over the keys (the last dimension of the scores), then weights @ v")
        generator = torch.Generator().manual_seed(2)
        for seq_q, seq_k, d, d_v in [(3, 5, 16, 4), (4, 4, 64, 8)]:
            q, k = torch.randn(seq_q, d, generator=generator), torch.randn(seq_k, d, generator=generator)
            v = torch.randn(seq_k, d_v, generator=generator)
            expect_close(f"random q ({seq_q}, {d}), k ({seq_k}, {d}), v ({seq_k}, {d_v}) against "
                         "torch.nn.functional.scaled_dot_product_attention",
                         fn(q, k, v), F.scaled_dot_product_attention(q, k, v),
                         hint="divide the scores by √d, where d = q.shape[-1], before the softmax")


@exercise(points=2)
def check_split_heads(fn):
    """(batch, seq, d_model) -> (batch, heads, seq, head_dim): head h holds features h·head_dim … (h+1)·head_dim − 1."""
    x = torch.arange(8.0).view(1, 2, 4)  # tokens [0 1 2 3] and [4 5 6 7]
    expected = torch.tensor([[[[0.0, 1.0], [4.0, 5.0]], [[2.0, 3.0], [6.0, 7.0]]]])
    expect_close("x = arange(8).view(1, 2, 4), 2 heads", fn(x, 2), expected,
                 hint="view as (batch, seq, heads, head_dim) first, then swap seq and heads; "
                      "a direct view to (batch, heads, seq, head_dim) mixes tokens")
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    got = fn(x, 3)
    expect_equal("shape for x (2, 5, 12) and 3 heads", tuple(got.shape), (2, 3, 5, 4))
    for head in range(3):
        expect_close(f"head {head} of x (2, 5, 12) with 3 heads", got[:, head], x[..., 4 * head:4 * (head + 1)],
                     hint="head h of token t is x[batch, t, h * head_dim:(h + 1) * head_dim]")


@exercise(points=2)
def check_causal_padding_mask(fn):
    """Boolean (batch, 1, seq, seq) mask: query i may see key j when j ≤ i and key j is a real token."""
    attention_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = fn(attention_mask)
    expect_equal("dtype", getattr(got, "dtype", type(got)), torch.bool,
                 hint="return a boolean tensor: True means 'may attend', as in scaled_dot_product_attention")
    causal = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    padded = torch.tensor([[True, False, False], [True, True, False], [True, True, False]])
    expect_close("attention_mask [[1, 1, 0], [1, 1, 1]] (the first sentence ends with padding)", got,
                 torch.stack([padded, causal])[:, None],
                 hint="combine a lower-triangular (seq, seq) mask with the padding of the *keys* (the columns), "
                      "and keep a head dimension of size 1 so it broadcasts over heads")


@exercise(points=3)
def check_online_softmax_step(fn):
    """One chunk of online softmax: a hand case, then a whole row in chunks against softmax(scores) @ v."""
    start = torch.tensor([-math.inf]), torch.zeros(1), torch.zeros(1, 1)
    scores, v = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0], [0.0]])
    m, l, acc = fn(*start, scores, v)
    expect_close("running max after scores [[0, ln 3]] from the start state", m, torch.tensor([math.log(3.0)]),
                 hint="m_new = max(m, the largest score of the new chunk), per query")
    expect_close("running sum after scores [[0, ln 3]]", l, torch.tensor([4 / 3]),
                 hint="l_new = l · exp(m − m_new) + Σ_j exp(s_j − m_new)")
    expect_close("running weighted sum after scores [[0, ln 3]], v = [[1], [0]]", acc, torch.tensor([[1 / 3]]),
                 hint="acc_new = acc · exp(m − m_new) + exp(s − m_new) @ v")
    generator = torch.Generator().manual_seed(2)
    scores, v = 100 * torch.randn(3, 12, generator=generator), torch.randn(12, 5, generator=generator)
    state = torch.full((3,), -math.inf), torch.zeros(3), torch.zeros(3, 5)
    for chunk in range(0, 12, 4):
        state = fn(*state, scores[:, chunk:chunk + 4], v[chunk:chunk + 4])
    m, l, acc = state
    expect_close("3 chunks of 4 keys, scores of size ~100 (exp(100) overflows float32 without the max): acc / l",
                 acc / l[:, None], torch.softmax(scores, dim=-1) @ v,
                 hint="rescale the old l and acc by exp(m − m_new) whenever the running max grows")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_multihead_attention(cls):
    """Your module, given torch.nn.MultiheadAttention's weights, returns its output, without and with padding."""
    import minilib.attention as attention
    generator = torch.Generator().manual_seed(2)
    d_model, n_heads = 128, 2  # head size 64, as in BERT-base
    reference = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_bias.copy_(0.1 * torch.randn(3 * d_model, generator=generator))
        reference.out_proj.bias.copy_(0.1 * torch.randn(d_model, generator=generator))
    module = cls(d_model, n_heads)
    with torch.no_grad():
        module.in_proj.weight.copy_(reference.in_proj_weight)
        module.in_proj.bias.copy_(reference.in_proj_bias)
        module.out_proj.load_state_dict(reference.out_proj.state_dict())
    x = torch.randn(2, 7, d_model, generator=generator)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # the second sentence: 4 tokens, 3 pads
    with torch.no_grad():
        expected = [reference(x, x, x, need_weights=False)[0],
                    reference(x, x, x, key_padding_mask=padding, need_weights=False)[0]]
    targets = [(attention, "scaled_dot_product_attention"), (attention, "memory_efficient_attention"),
               (attention, "MultiHeadAttention"), (F, "scaled_dot_product_attention"),
               (F, "multi_head_attention_forward")]
    with forbidden_calls(cls, targets, "write the scores, the softmax and the weighted sum of the values yourself "
                                       "(your softmax_attention of exercise 2.1 is your own code: reuse it if you like)"):
        with torch.no_grad():
            got = module(x), module(x, key_padding_mask=padding)
    expect_close("x (2, 7, 128), 2 heads of 64, no padding, against torch.nn.MultiheadAttention", got[0], expected[0],
                 atol=1e-5, hint="in_proj(x) holds q, k and v side by side (.chunk(3, dim=-1)); split each into "
                                 "(batch, heads, seq, head_dim) by view then transpose; divide the scores by "
                                 "√head_dim (not √d_model); merge the heads back and apply out_proj")
    expect_close("the same x with the second sentence's last 3 tokens padded (key_padding_mask True there)",
                 got[1], expected[1], atol=1e-5,
                 hint="padding hides *keys*: set the scores of the padded columns to -inf before the softmax, "
                      "key_padding_mask[:, None, None, :] broadcasting over heads and queries")
