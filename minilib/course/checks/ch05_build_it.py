"""Chapter 05's "build it" check: causal linear attention by chunked prefix sums, without an n×n buffer."""
import torch

from minilib.course.checks.core import exercise, expect_close
from minilib.course.checks.guards import TorchOps, expect_tensors_under, forbidden_calls


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
