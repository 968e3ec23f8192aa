"""Chapter 05's exercise checks pass correct answers however they are written, and fail stubs, mistakes and
shortcuts (the library by any route, an n × n matrix, prefix sums over every token, dense work done in pieces)."""

import torch
import torch.nn.functional as F

from minilib.course.checks import (
    check_chunked_causal_linear_attention,
    check_elu_feature_map,
    check_kernel_attention,
    check_rnn_step,
)
from minilib.linear_attention import elu_features, linear_attention, step


def phi(x):
    return F.elu(x) + 1


def test_elu_feature_map(stub, refused):
    assert check_elu_feature_map(phi)
    assert check_elu_feature_map(lambda x: torch.where(x > 0, x + 1, torch.exp(x)))   # the two branches by hand
    assert check_elu_feature_map(lambda x: torch.nn.ELU()(x).add(1))                  # PyTorch's module
    assert not check_elu_feature_map(stub)
    refused(check_elu_feature_map, F.elu, "φ([-2, 0, 3])", "add 1")                   # forgets the + 1
    refused(check_elu_feature_map, lambda x: F.relu(x) + 1, "φ([-2, 0, 3])")
    refused(check_elu_feature_map, lambda x: elu_features(x), "minilib.linear_attention.elu_features")

    def through_the_lesson(x):  # the same function, reached through another module
        import minilib.experiments.ch05_linear_attention as lesson
        return lesson.linear.elu_features(x)

    refused(check_elu_feature_map, through_the_lesson, "minilib")


def test_kernel_attention(stub, refused):
    def reference(q, k, v):
        kv, z = phi(k).T @ v, phi(k).sum(dim=0)
        return (phi(q) @ kv) / (phi(q) @ z)[:, None]

    def with_einsum(q, k, v):  # the normaliser as an extra column of ones in v
        ones = torch.cat([v, torch.ones(len(v), 1)], dim=1)
        both = torch.einsum("nd,ne,md->me", phi(k), ones, phi(q))
        return both[:, :-1] / both[:, -1:]

    assert check_kernel_attention(reference)
    assert check_kernel_attention(with_einsum)
    assert not check_kernel_attention(stub)
    refused(check_kernel_attention, lambda q, k, v: phi(q) @ (phi(k).T @ v), "every output row is the mean of v")
    refused(check_kernel_attention, lambda q, k, v: torch.softmax(q @ k.T, dim=-1) @ v, "random q, k, v (6, 4)")

    def numpy_n_by_n(q, k, v):  # the n × n matrix, in NumPy where the recording cannot see it
        import numpy
        weights = numpy.asarray(phi(q)) @ numpy.asarray(phi(k)).T
        return torch.from_numpy(weights @ numpy.asarray(v) / weights.sum(axis=-1, keepdims=True))

    refused(check_kernel_attention, numpy_n_by_n, "numpy")

    def rows_in_chunks(q, k, v):  # small tensors, but the n × n work, one block of rows at a time
        out = []
        for rows in phi(q).split(256):
            weights = rows @ phi(k).T
            out.append(weights @ v / weights.sum(dim=-1, keepdim=True))
        return torch.cat(out)

    refused(check_kernel_attention, rows_in_chunks, "operations", "n × n product's work")

    def builds_the_n_by_n_matrix(q, k, v):                     # right numbers, but the (n, n) matrix the trick avoids
        weights = phi(q) @ phi(k).T
        return weights @ v / weights.sum(dim=-1, keepdim=True)

    refused(check_kernel_attention, builds_the_n_by_n_matrix, "built a tensor", "n × n matrix")
    refused(check_kernel_attention, lambda q, k, v: linear_attention(q[None, None], k[None, None], v[None, None])[0, 0],
            "minilib.linear_attention.linear_attention")


def test_rnn_step(stub, refused):
    def reference(S, z, q, k, v):
        S = S + torch.outer(phi(k), v)
        z = z + phi(k)
        return S, z, (phi(q) @ S) / (phi(q) @ z)

    def output_before_update(S, z, q, k, v):                   # token t does not see itself
        new_S, new_z = S + torch.outer(phi(k), v), z + phi(k)
        return new_S, new_z, (phi(q) @ S) / (phi(q) @ z + 1e-6)

    def library_step(S, z, q, k, v):                           # minilib's own step: not the exercise
        (S, z), out = step((S, z), q, k, v)
        return S, z, out

    def in_place(S, z, q, k, v):  # broadcasting instead of outer, the state updated in place
        S += phi(k)[:, None] * v[None, :]
        z += phi(k)
        return S, z, torch.einsum("d,de->e", phi(q), S) / phi(q).dot(z)

    assert check_rnn_step(reference)
    assert check_rnn_step(in_place)
    assert not check_rnn_step(stub)
    refused(check_rnn_step, library_step, "minilib.linear_attention.step")
    refused(check_rnn_step, output_before_update, "output for token 0", "sees itself")
    refused(check_rnn_step, lambda S, z, q, k, v: (S + torch.outer(v, phi(k)), z + phi(k),     # transposed outer product
                                                   (phi(q) @ (S + torch.outer(v, phi(k)))) / (phi(q) @ (z + phi(k)))),
            "S after token 0")
    refused(check_rnn_step, lambda S, z, q, k, v: reference(S, z, q, k, v)[2], "return a list of 3 tensors")


def chunked_linear(q, k, v, chunk_size=64, causal_within=True):
    """The model answer of Exercise 5.5; causal_within=False lets a query see later keys of its chunk."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    S = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
    z = q.new_zeros(*q.shape[:-2], q.shape[-1], 1)
    outputs = []
    for start in range(0, q.shape[-2], chunk_size):
        pq, pk, vc = (t[..., start:start + chunk_size, :] for t in (phi_q, phi_k, v))
        within = pq @ pk.transpose(-2, -1)
        within = within.tril() if causal_within else within
        outputs.append((pq @ S + within @ vc) / (pq @ z + within.sum(dim=-1, keepdim=True)))
        S = S + pk.transpose(-2, -1) @ vc
        z = z + pk.sum(dim=-2)[..., None]
    return torch.cat(outputs, dim=-2)


def cumsum_linear(q, k, v, chunk_size=64):
    """Right values, but the prefix sums of the outer products hold n·d·d_v numbers."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    S = torch.cumsum(phi_k[..., :, None] * v[..., None, :], dim=-3)
    z = torch.cumsum(phi_k, dim=-2)
    return (phi_q[..., None, :] @ S).squeeze(-2) / (phi_q * z).sum(dim=-1, keepdim=True)


def masked_linear(q, k, v, chunk_size=64):
    """Right values, but the n × n matrix linear attention exists to avoid."""
    weights = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)).tril()
    return (weights @ v) / weights.sum(dim=-1, keepdim=True)


def chunked_all_at_once(q, k, v, chunk_size=64):
    """Another correct answer: every chunk at once, the states of the earlier chunks by an exclusive cumsum over
    chunks ((n/c)·d·d_v numbers), and a masked c × c matrix inside each chunk."""
    *lead, n, d = q.shape
    pad = -n % chunk_size
    phi_q, phi_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (phi(q), phi(k), v))
    phi_k = phi_k * (torch.arange(n + pad) < n)[:, None]                          # padded keys add nothing
    pq, pk, vc = (t.unflatten(-2, (-1, chunk_size)) for t in (phi_q, phi_k, v))    # (..., nc, c, ·)
    states = torch.einsum("...ncd,...nce->...nde", pk, vc).cumsum(-3) - torch.einsum("...ncd,...nce->...nde", pk, vc)
    normalisers = pk.sum(-2).cumsum(-2) - pk.sum(-2)                             # (..., nc, d)
    within = (pq @ pk.transpose(-1, -2)).tril()                                   # (..., nc, c, c)
    numerator = pq @ states + within @ vc
    denominator = (pq * normalisers[..., None, :]).sum(-1, keepdim=True) + within.sum(-1, keepdim=True)
    return (numerator / denominator).flatten(-3, -2)[..., :n, :]


def chunk_prefix_sums(q, k, v, chunk_size=64):
    """Another correct answer, the one once refused at the limit: inside each chunk, the prefix sums of the outer
    products as a (c, d, d_v) tensor (constant in n), plus the state of the earlier chunks."""
    S = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
    z = q.new_zeros(*q.shape[:-2], q.shape[-1])
    outputs = []
    for start in range(0, q.shape[-2], chunk_size):
        pq, pk, vc = phi(q[..., start:start + chunk_size, :]), phi(k[..., start:start + chunk_size, :]), \
            v[..., start:start + chunk_size, :]
        prefix = S[..., None, :, :] + (pk[..., :, None] * vc[..., None, :]).cumsum(-3)   # (..., c, d, d_v)
        norm = z[..., None, :] + pk.cumsum(-2)                                          # (..., c, d)
        outputs.append((pq[..., None, :] @ prefix).squeeze(-2) / (pq * norm).sum(-1, keepdim=True))
        S, z = prefix[..., -1, :, :], norm[..., -1, :]
    return torch.cat(outputs, dim=-2)


def causal_rows_in_chunks(q, k, v, chunk_size=64):
    """Right values and small tensors, but each chunk of queries is scored against every earlier key: n² work."""
    outputs = []
    for start in range(0, q.shape[-2], chunk_size):
        stop = min(start + chunk_size, q.shape[-2])
        weights = phi(q[..., start:stop, :]) @ phi(k[..., :stop, :]).transpose(-2, -1)
        weights = weights * (torch.arange(start, stop)[:, None] >= torch.arange(stop))
        outputs.append(weights @ v[..., :stop, :] / weights.sum(-1, keepdim=True))
    return torch.cat(outputs, dim=-2)


def test_chunked_causal_linear_attention(stub, refused):
    assert check_chunked_causal_linear_attention(chunked_linear)
    assert check_chunked_causal_linear_attention(chunked_all_at_once)
    assert check_chunked_causal_linear_attention(chunk_prefix_sums)
    assert not check_chunked_causal_linear_attention(stub)
    refused(check_chunked_causal_linear_attention,
            lambda q, k, v, chunk_size=64: linear_attention(q, k, v, "elu", is_causal=True, chunk_size=chunk_size),
            "minilib.linear_attention.linear_attention")
    refused(check_chunked_causal_linear_attention, cumsum_linear, "built a tensor", "prefix sums over all n tokens")
    refused(check_chunked_causal_linear_attention, masked_linear, "built a tensor", "(n, n) matrix")
    refused(check_chunked_causal_linear_attention, causal_rows_in_chunks, "operations", "n×n form's work")
    refused(check_chunked_causal_linear_attention,
            lambda q, k, v, chunk_size=64: chunked_linear(q, k, v, chunk_size, causal_within=False), "j ≤ i")
