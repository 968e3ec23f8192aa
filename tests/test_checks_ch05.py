"""Chapter 05's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
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


def test_elu_feature_map(stub):
    assert check_elu_feature_map(phi)
    assert not check_elu_feature_map(stub)
    assert not check_elu_feature_map(F.elu)                    # forgets the + 1
    assert not check_elu_feature_map(lambda x: F.relu(x) + 1)
    assert not check_elu_feature_map(lambda x: elu_features(x))    # the library's own φ: not the exercise


def test_kernel_attention(stub):
    def reference(q, k, v):
        kv, z = phi(k).T @ v, phi(k).sum(dim=0)
        return (phi(q) @ kv) / (phi(q) @ z)[:, None]

    assert check_kernel_attention(reference)
    assert not check_kernel_attention(stub)
    assert not check_kernel_attention(lambda q, k, v: phi(q) @ (phi(k).T @ v))                  # not normalised
    assert not check_kernel_attention(lambda q, k, v: torch.softmax(q @ k.T, dim=-1) @ v)       # softmax instead

    def builds_the_n_by_n_matrix(q, k, v):                     # right numbers, but the (n, n) matrix the trick avoids
        weights = phi(q) @ phi(k).T
        return weights @ v / weights.sum(dim=-1, keepdim=True)

    assert not check_kernel_attention(builds_the_n_by_n_matrix)
    assert not check_kernel_attention(lambda q, k, v: linear_attention(q[None, None], k[None, None], v[None, None])[0, 0])


def test_rnn_step(stub):
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

    assert check_rnn_step(reference)
    assert not check_rnn_step(stub)
    assert not check_rnn_step(library_step)
    assert not check_rnn_step(output_before_update)
    assert not check_rnn_step(lambda S, z, q, k, v: (S + torch.outer(v, phi(k)), z + phi(k),     # transposed outer product
                                                      (phi(q) @ (S + torch.outer(v, phi(k)))) / (phi(q) @ (z + phi(k)))))


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


def test_chunked_causal_linear_attention(stub):
    from minilib.linear_attention import linear_attention

    assert check_chunked_causal_linear_attention(chunked_linear)
    assert not check_chunked_causal_linear_attention(stub)
    assert not check_chunked_causal_linear_attention(
        lambda q, k, v, chunk_size=64: linear_attention(q, k, v, "elu", is_causal=True, chunk_size=chunk_size))
    assert not check_chunked_causal_linear_attention(cumsum_linear)
    assert not check_chunked_causal_linear_attention(masked_linear)
    assert not check_chunked_causal_linear_attention(
        lambda q, k, v, chunk_size=64: chunked_linear(q, k, v, chunk_size, causal_within=False))
