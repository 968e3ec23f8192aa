"""Checks for chapter 05 (linear attention): the elu+1 feature map, attention by the kernel trick, one RNN step.

The chapter's "build it" check: causal linear attention by chunked prefix sums, without an n×n buffer.
"""
import torch
import torch.nn.functional as F

import minilib.linear_attention as linear
from minilib.course.checks.core import exercise, expect_close
from minilib.course.checks.guards import TorchOps, expect_tensors_under, forbidden_calls
from minilib.linear_attention import elu_features, step

_KERNEL_TRICK = [(linear, "elu_features"), (linear, "linear_attention"), (linear, "causal_linear_attention"),
                 (linear, "quadratic_linear_attention"), (linear, "step")]


@exercise(points=1)
def check_elu_feature_map(fn):
    """φ(x) = elu(x) + 1, elementwise."""
    hint = "write it with torch.nn.functional.elu: minilib.linear_attention.elu_features is the answer it is checked against"
    x = torch.tensor([-2.0, 0.0, 3.0])
    with forbidden_calls(fn, _KERNEL_TRICK, hint):
        got = fn(x)
    expect_close("φ([-2, 0, 3])", got, elu_features(x),
                 hint="elu(x) = x for x > 0 and e^x - 1 for x ≤ 0; then add 1 so that φ > 0")
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    with forbidden_calls(fn, _KERNEL_TRICK, hint):
        got = fn(x)
    expect_close("φ of a random (2, 3, 5) tensor", got, elu_features(x))


@exercise(points=3)
def check_kernel_attention(fn):
    """kernel_attention(q, k, v) = φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1) with φ = elu + 1; q, k (n, d), v (n, d_v);
    without minilib's linear attention, and without any n × n tensor (checked at n = 2048)."""
    hint = "write the kernel trick yourself: minilib's linear_attention is the answer it is checked against"
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zeros = torch.zeros(2, 2)
    with forbidden_calls(fn, _KERNEL_TRICK, hint):
        got = fn(zeros, zeros, v)
    expect_close("q = k = 0: φ = 1 everywhere, so every output row is the mean of v", got,
                 torch.full((2, 2), 0.5), hint="divide by φ(q_i)·Σ_j φ(k_j), the row sums of φ(Q)φ(K)ᵀ")
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(6, 4, generator=generator) for _ in range(3))
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).T
    with forbidden_calls(fn, _KERNEL_TRICK, hint):
        got = fn(q, k, v)
    expect_close("random q, k, v (6, 4) against the quadratic form φ(Q)φ(K)ᵀV / rows sums", got,
                 weights @ v / weights.sum(dim=-1, keepdim=True), atol=1e-4,
                 hint="compute S = φ(K)ᵀ V (d × d_v) and z = φ(K)ᵀ 1 first; never build the n × n matrix")
    n = 2048
    q, k, v = (torch.randn(n, 8, generator=generator) for _ in range(3))
    with forbidden_calls(fn, _KERNEL_TRICK, hint), TorchOps() as ops:
        got = fn(q, k, v)
    expect_tensors_under(ops, n * n // 4, f"n = {n}, d = 8: your code", f"every tensor under {n * n // 4:,} numbers",
                         hint="that is the n × n matrix φ(Q)φ(K)ᵀ, which the kernel trick exists to avoid: "
                              "compute φ(K)ᵀV (d × d_v) first, then multiply by φ(Q)")
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).T
    expect_close(f"random q, k, v ({n}, 8)", got, weights @ v / weights.sum(dim=-1, keepdim=True), atol=1e-4)


@exercise(points=3)
def check_rnn_step(fn):
    """rnn_step(S, z, q_t, k_t, v_t) → (S, z, out_t): one token of causal linear attention (φ = elu + 1)."""
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(5, 3, generator=generator) for _ in range(3))
    S, z = torch.zeros(3, 3), torch.zeros(3)
    state = None
    for t in range(5):
        with forbidden_calls(fn, _KERNEL_TRICK, "write the update of S and z yourself: minilib.linear_attention.step "
                                               "is the answer it is checked against"):
            S, z, out = fn(S, z, q[t], k[t], v[t])
        state, expected = step(state, q[t], k[t], v[t])
        expect_close(f"S after token {t}", S, state[0], hint="S ← S + φ(k_t) v_tᵀ (an outer product, d × d_v)")
        expect_close(f"z after token {t}", z, state[1], hint="z ← z + φ(k_t)")
        expect_close(f"output for token {t}", out, expected,
                     hint="update S and z first (token t sees itself), then out = φ(q_t)ᵀS / φ(q_t)ᵀz")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_chunked_causal_linear_attention(fn):
    """Equal to causal linear attention written as a masked n×n matrix, without any n×n (or n·d·d_v) buffer."""
    import minilib.linear_attention as linear
    generator = torch.Generator().manual_seed(5)
    targets = [(linear, "linear_attention"), (linear, "causal_linear_attention"),
               (linear, "quadratic_linear_attention"), (linear, "step")]
    hint = "carry the state (S, z) from chunk to chunk yourself: this is what linear_attention(is_causal=True) does"
    for n, chunk in [(200, 64), (37, 16)]:  # the last chunk is shorter than the others
        q, k, v = (torch.randn(2, 2, n, 64, generator=generator) for _ in range(3))
        expected = linear.quadratic_linear_attention(q, k, v, "elu", is_causal=True)
        with forbidden_calls(fn, targets, hint):
            got = fn(q, k, v, chunk_size=chunk)
        expect_close(f"q, k, v (2, 2, {n}, 64), chunks of {chunk}, against the masked n×n form", got, expected,
                     atol=1e-5, hint="inside a chunk, query i sees keys j ≤ i of the chunk (a lower-triangular c×c "
                                     "matrix) plus the state S, z of all earlier chunks; fold each chunk into S and "
                                     "z only after its queries are done")
    n = 1024
    q, k, v = (torch.randn(1, 2, n, 64, generator=generator) for _ in range(3))
    expected = linear.linear_attention(q, k, v, "elu", is_causal=True)
    with forbidden_calls(fn, targets, hint), TorchOps() as ops:
        got = fn(q, k, v, chunk_size=64)
    limit = 2 * n * n // 4  # a quarter of the (heads, n, n) weights
    expect_tensors_under(ops, limit, f"n = {n}, head size 64: your code", f"every tensor under {limit:,} numbers",
                         hint="an (n, n) matrix is what linear attention avoids; and a prefix sum (cumsum) of the "
                              "outer products φ(k_j) v_jᵀ holds n·d·d_v numbers, more than n² until n > 4,096 at head "
                              "size 64: keep one (d, d_v) state and carry it across chunks")
    expect_close(f"q, k, v (1, 2, {n}, 64), chunks of 64, against minilib.linear_attention(is_causal=True)",
                 got, expected, atol=1e-5)
