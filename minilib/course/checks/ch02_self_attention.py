"""Checks for chapter 02 (self-attention): attention in one line, heads, masks, one online-softmax step.

The chapter's "build it" check: a multi-head attention module against torch.nn.MultiheadAttention.
"""
import math

import torch
import torch.nn.functional as F

import minilib.attention as attention
from minilib.course.checks.core import exercise, expect_attribute, expect_close, expect_tensor, expect_tensors
from minilib.course.checks.guards import COURSE, FUSED_ATTENTION, guarded

# The chapter's attention code, PyTorch's fused attention and reference modules: what exercise 2.1 and 2.6 write.
_ATTENTION = [attention, COURSE, *FUSED_ATTENTION, "transformers"]


@exercise(points=2)
def check_softmax_attention(fn):
    """softmax(QKᵀ/√d)V for one sequence: a hand case, then random cases against PyTorch's fused kernel."""
    q = torch.zeros(1, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = torch.tensor([[3.0], [6.0], [0.0]])
    generator = torch.Generator().manual_seed(2)
    cases = []
    for seq_q, seq_k, d, d_v in [(3, 5, 16, 4), (4, 4, 64, 8)]:
        q_r, k_r = torch.randn(seq_q, d, generator=generator), torch.randn(seq_k, d, generator=generator)
        v_r = torch.randn(seq_k, d_v, generator=generator)
        cases.append(((q_r, k_r, v_r), F.scaled_dot_product_attention(q_r, k_r, v_r)))
    with guarded(fn, _ATTENTION, "write softmax(QKᵀ/√d)V with a matmul and a softmax: PyTorch's "
                                 "scaled_dot_product_attention is what the check compares with"):
        got = fn(q, k, v)
        random_got = [fn(*inputs) for inputs, _ in cases]
    expect_close("q = [[0, 0]]: every score is 0, so the output is the mean of v's rows", got,
                 torch.tensor([[3.0]]), hint="softmax over the keys (the last dimension of the scores), then weights @ v")
    for ((q_r, k_r, v_r), expected), answer in zip(cases, random_got):
        expect_close(f"random q {tuple(q_r.shape)}, k {tuple(k_r.shape)}, v {tuple(v_r.shape)} against "
                     "torch.nn.functional.scaled_dot_product_attention", answer, expected,
                     hint="divide the scores by √d, where d = q.shape[-1], before the softmax")


@exercise(points=2)
def check_split_heads(fn):
    """(batch, seq, d_model) -> (batch, heads, seq, head_dim): head h holds features h·head_dim … (h+1)·head_dim − 1."""
    x = torch.arange(8.0).view(1, 2, 4)  # tokens [0 1 2 3] and [4 5 6 7]
    batch = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    with guarded(fn, [attention, COURSE], "view and transpose the tensor yourself"):
        small, got = fn(x, 2), fn(batch, 3)
    expect_close("x = arange(8).view(1, 2, 4), 2 heads", small,
                 torch.tensor([[[[0.0, 1.0], [4.0, 5.0]], [[2.0, 3.0], [6.0, 7.0]]]]),
                 hint="view as (batch, seq, heads, head_dim) first, then swap seq and heads; "
                      "a direct view to (batch, heads, seq, head_dim) mixes tokens")
    expect_tensor("x (2, 5, 12) and 3 heads", got, (2, 3, 5, 4))
    for head in range(3):
        expect_close(f"head {head} of x (2, 5, 12) with 3 heads", got[:, head], batch[..., 4 * head:4 * (head + 1)],
                     hint="head h of token t is x[batch, t, h * head_dim:(h + 1) * head_dim]")


@exercise(points=2)
def check_causal_padding_mask(fn):
    """Boolean (batch, 1, seq, seq) mask: query i may see key j when j ≤ i and key j is a real token."""
    attention_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    generator = torch.Generator().manual_seed(2)
    long_mask = (torch.arange(9) < torch.randint(1, 10, (4, 1), generator=generator)).long()
    with guarded(fn, [attention, COURSE], "combine the two masks yourself"):
        got, long_got = fn(attention_mask.clone()), fn(long_mask.clone())
    causal = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    padded = torch.tensor([[True, False, False], [True, True, False], [True, True, False]])
    hint = ("combine a lower-triangular (seq, seq) mask with the padding of the *keys* (the columns), and keep a head "
            "dimension of size 1 so it broadcasts over heads")
    expect_close("attention_mask [[1, 1, 0], [1, 1, 1]] (the first sentence ends with padding)", got,
                 torch.stack([padded, causal])[:, None], hint=hint, dtype=torch.bool)
    expected = torch.ones(9, 9, dtype=torch.bool).tril() & long_mask.bool()[:, None, None, :]
    expect_close("4 sentences of 9 positions, each padded after its own length", long_got, expected, hint=hint,
                 dtype=torch.bool)


@exercise(points=3)
def check_online_softmax_step(fn):
    """One chunk of online softmax: a hand case, then a whole row in chunks against softmax(scores) @ v."""
    with guarded(fn, [attention, COURSE], "write the update of m, l and acc yourself"):
        start = torch.tensor([-math.inf]), torch.zeros(1), torch.zeros(1, 1)
        state = fn(*start, torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0], [0.0]]))
        m, l, acc = _triple(state)
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
            state = _triple(fn(*state, scores[:, chunk:chunk + 4], v[chunk:chunk + 4]))
    m, l, acc = state
    expect_tensor("the running sum l after 3 chunks of 4 keys", l, (3,))
    expect_close("3 chunks of 4 keys, scores of size ~100 (exp(100) overflows float32 without the max): acc / l",
                 acc / l[:, None], torch.softmax(scores, dim=-1) @ v,
                 hint="rescale the old l and acc by exp(m − m_new) whenever the running max grows")


def _triple(state):
    return expect_tensors("what one step returns", state, 3, hint="return the new state as a tuple (m, l, acc)")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_multihead_attention(cls):
    """Your module, given torch.nn.MultiheadAttention's weights, returns its output, without and with padding."""
    generator = torch.Generator().manual_seed(2)
    d_model, n_heads = 128, 2  # head size 64, as in BERT-base
    reference = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_bias.copy_(0.1 * torch.randn(3 * d_model, generator=generator))
        reference.out_proj.bias.copy_(0.1 * torch.randn(d_model, generator=generator))
    x = torch.randn(2, 7, d_model, generator=generator)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # the second sentence: 4 tokens, 3 pads
    with torch.no_grad():
        expected = [reference(x, x, x, need_weights=False)[0],
                    reference(x, x, x, key_padding_mask=padding, need_weights=False)[0]]
    hint = ("write the scores, the softmax and the weighted sum of the values yourself (your softmax_attention of "
            "exercise 2.1 is your own code: reuse it if you like)")
    with guarded(cls, _ATTENTION, hint) as run, torch.no_grad():
        module = run.build(d_model, n_heads)
        what = "your module's layout"
        expect_attribute(what, module, "in_proj", torch.nn.Linear).weight.copy_(reference.in_proj_weight)
        module.in_proj.bias.copy_(reference.in_proj_bias)
        expect_attribute(what, module, "out_proj", torch.nn.Linear).load_state_dict(reference.out_proj.state_dict())
        got = module(x), module(x, key_padding_mask=padding)
    expect_close("x (2, 7, 128), 2 heads of 64, no padding, against torch.nn.MultiheadAttention", got[0], expected[0],
                 atol=1e-5, hint="in_proj(x) holds q, k and v side by side (.chunk(3, dim=-1)); split each into "
                                 "(batch, heads, seq, head_dim) by view then transpose; divide the scores by "
                                 "√head_dim (not √d_model); merge the heads back and apply out_proj")
    expect_close("the same x with the second sentence's last 3 tokens padded (key_padding_mask True there)",
                 got[1], expected[1], atol=1e-5,
                 hint="padding hides *keys*: set the scores of the padded columns to -inf before the softmax, "
                      "key_padding_mask[:, None, None, :] broadcasting over heads and queries")
