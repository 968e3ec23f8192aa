"""Checks for chapter 05 (linear attention): the elu+1 feature map, attention by the kernel trick, one RNN step.

The chapter's "build it" check: causal linear attention read chunk by chunk, with nothing that grows as n² (the
masked matrix) or as n·d·d_v (prefix sums over every token), and without dense work done in pieces.
"""
import torch
import torch.nn.functional as F

import minilib.linear_attention as linear
from minilib.course.checks.core import exercise, expect_close, expect_tensors
from minilib.course.checks.guards import COURSE, FUSED_ATTENTION, NUMPY, guarded
from minilib.linear_attention import elu_features, step

_KERNEL_TRICK = [linear, COURSE]


def _quadratic(q, k, v):
    """The reference by the n × n route: φ(Q)φ(K)ᵀV over row sums."""
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)
    return weights @ v / weights.sum(dim=-1, keepdim=True)


@exercise(points=1)
def check_elu_feature_map(fn):
    """φ(x) = elu(x) + 1, elementwise."""
    hint = "write it with torch.nn.functional.elu: minilib.linear_attention.elu_features is the answer it is checked against"
    small, x = torch.tensor([-2.0, 0.0, 3.0]), torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    with guarded(fn, _KERNEL_TRICK, hint):
        got_small, got = fn(small), fn(x)
    expect_close("φ([-2, 0, 3])", got_small, elu_features(small),
                 hint="elu(x) = x for x > 0 and e^x - 1 for x ≤ 0; then add 1 so that φ > 0")
    expect_close("φ of a random (2, 3, 5) tensor", got, elu_features(x))


@exercise(points=3)
def check_kernel_attention(fn):
    """kernel_attention(q, k, v) = φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1) with φ = elu + 1; q, k (n, d), v (n, d_v);
    without minilib's linear attention, and without any n × n tensor or n × n work (checked at n = 2048)."""
    hint = "write the kernel trick yourself: minilib's linear_attention is the answer it is checked against"
    forbid = [*_KERNEL_TRICK, NUMPY, *FUSED_ATTENTION]
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zeros = torch.zeros(2, 2)
    generator = torch.Generator().manual_seed(1)
    q, k, v6 = (torch.randn(6, 4, generator=generator) for _ in range(3))
    with guarded(fn, forbid, hint):
        got_zeros, got = fn(zeros, zeros, v), fn(q, k, v6)
    expect_close("q = k = 0: φ = 1 everywhere, so every output row is the mean of v", got_zeros,
                 torch.full((2, 2), 0.5), hint="divide by φ(q_i)·Σ_j φ(k_j), the row sums of φ(Q)φ(K)ᵀ")
    expect_close("random q, k, v (6, 4) against the quadratic form φ(Q)φ(K)ᵀV / rows sums", got, _quadratic(q, k, v6),
                 atol=1e-4, hint="compute S = φ(K)ᵀ V (d × d_v) and z = φ(K)ᵀ 1 first; never build the n × n matrix")
    n, d = 2048, 8
    q, k, v = (torch.randn(n, d, generator=generator) for _ in range(3))
    with guarded(fn, forbid, hint) as run:
        got = fn(q, k, v)
    who = f"at n = {n}, d = {d}, your code"
    run.expect_tensors_under(n * n // 4, who, "that is the n × n matrix φ(Q)φ(K)ᵀ, which the kernel trick exists "
                             "to avoid: compute φ(K)ᵀV (d × d_v) first, then multiply by φ(Q)")
    run.expect_work_under(n * n * d // 2, who, "that is the n × n product's work (n²·d per matrix product), done in "
                          "pieces: φ(K)ᵀV first costs n·d·d_v")
    expect_close(f"random q, k, v ({n}, {d})", got, _quadratic(q, k, v), atol=1e-4)


@exercise(points=3)
def check_rnn_step(fn):
    """rnn_step(S, z, q_t, k_t, v_t) → (S, z, out_t): one token of causal linear attention (φ = elu + 1)."""
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(5, 3, generator=generator) for _ in range(3))
    S, z = torch.zeros(3, 3), torch.zeros(3)
    state = None
    for t in range(5):
        state, expected = step(state, q[t], k[t], v[t])
        with guarded(fn, _KERNEL_TRICK, "write the update of S and z yourself: minilib.linear_attention.step "
                                        "is the answer it is checked against"):
            got = fn(S.clone(), z.clone(), q[t], k[t], v[t])
        S, z, out = expect_tensors(f"rnn_step at token {t}", got, 3, hint="return the tuple (S, z, out_t)")
        expect_close(f"S after token {t}", S, state[0], hint="S ← S + φ(k_t) v_tᵀ (an outer product, d × d_v)")
        expect_close(f"z after token {t}", z, state[1], hint="z ← z + φ(k_t)")
        expect_close(f"output for token {t}", out, expected,
                     hint="update S and z first (token t sees itself), then out = φ(q_t)ᵀS / φ(q_t)ᵀz")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_chunked_causal_linear_attention(fn):
    """Equal to causal linear attention written as a masked n×n matrix, and at n = 4096 every tensor under n²/8
    numbers per head and the work under an eighth of the n×n form's: a chunk's (c, d, d_v) tensor is fine."""
    generator = torch.Generator().manual_seed(5)
    hint = "carry the state (S, z) from chunk to chunk yourself: this is what linear_attention(is_causal=True) does"
    forbid = [*_KERNEL_TRICK, NUMPY, *FUSED_ATTENTION]
    for n, chunk in [(200, 64), (37, 16)]:  # the last chunk is shorter than the others
        q, k, v = (torch.randn(2, 2, n, 64, generator=generator) for _ in range(3))
        expected = linear.quadratic_linear_attention(q, k, v, "elu", is_causal=True)
        with guarded(fn, forbid, hint):
            got = fn(q, k, v, chunk_size=chunk)
        expect_close(f"q, k, v (2, 2, {n}, 64), chunks of {chunk}, against the masked n×n form", got, expected,
                     atol=1e-5, hint="inside a chunk, query i sees keys j ≤ i of the chunk (a lower-triangular c×c "
                                     "matrix) plus the state S, z of all earlier chunks; fold each chunk into S and "
                                     "z only after its queries are done")
    n, heads, d = 4096, 1, 64
    q, k, v = (torch.randn(1, heads, n, d, generator=generator) for _ in range(3))
    expected = linear.linear_attention(q, k, v, "elu", is_causal=True)
    with guarded(fn, forbid, hint) as run:
        got = fn(q, k, v, chunk_size=64)
    who = f"at n = {n}, head size {d}, chunks of 64, your code"
    run.expect_tensors_under(heads * n * n // 8, who,
                             "an (n, n) matrix, or prefix sums over all n tokens (n·d·d_v numbers: as many at head "
                             "size 64), is what chunks avoid: keep one (d, d_v) state and carry it across chunks "
                             "(a chunk's own (c, d, d_v) tensor is fine)")
    run.expect_work_under(heads * n * n * d // 4, who,
                          "that is the masked n×n form's work (2·n²·d per head), done in pieces: each query needs "
                          "the state S (d × d_v) and the c keys of its own chunk, not every earlier key")
    expect_close(f"q, k, v (1, {heads}, {n}, {d}), chunks of 64, against minilib.linear_attention(is_causal=True)",
                 got, expected, atol=1e-4)
