"""Linear attention against its quadratic form, the RNN step against the causal form, Performer
against softmax attention, Linformer against an explicit projection."""
import math

import pytest
import torch
import torch.nn.functional as F

from minilib.attention import MultiHeadAttention
from minilib.linear_attention import (
    FavorFeatures,
    LinformerAttention,
    delta_rule_attention,
    delta_rule_step,
    linear_attention,
    orthogonal_random_features,
    performer_error,
    quadratic_linear_attention,
    step,
)


def _qkv(n, batch=2, heads=3, dim=16, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3))


def _explicit(q, k, v, phi, is_causal):
    """φ(Q)φ(K)ᵀV normalised row by row, written from the formula with an explicit loop over queries."""
    phi_q, phi_k = phi(q), phi(k)
    rows = []
    for i in range(q.shape[-2]):
        keys = slice(0, i + 1) if is_causal else slice(None)
        weights = phi_q[..., i:i + 1, :] @ phi_k[..., keys, :].transpose(-2, -1)   # (…, 1, j)
        rows.append((weights @ v[..., keys, :]) / weights.sum(dim=-1, keepdim=True))
    return torch.cat(rows, dim=-2)


@pytest.mark.parametrize("feature_map, phi", [("elu", lambda x: F.elu(x) + 1), ("relu", F.relu)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("n, chunk_size", [(1, 64), (17, 4), (70, 16), (128, 64)])
def test_linear_attention_equals_the_quadratic_form(feature_map, phi, is_causal, n, chunk_size):
    q, k, v = _qkv(n, seed=n)
    if feature_map == "relu":                     # keep every row's normaliser well away from 0
        q, k = q.abs(), k.abs()
    out = linear_attention(q, k, v, feature_map, is_causal=is_causal, chunk_size=chunk_size)
    assert torch.allclose(out, _explicit(q, k, v, phi, is_causal), atol=1e-5, rtol=1e-4)
    assert torch.allclose(out, quadratic_linear_attention(q, k, v, feature_map, is_causal), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_favor_linear_attention_equals_its_quadratic_form(is_causal):
    q, k, v = _qkv(50)
    features = FavorFeatures(16, 32, seed=0)
    out = linear_attention(q, k, v, features, is_causal=is_causal, chunk_size=8)
    assert torch.allclose(out, quadratic_linear_attention(q, k, v, features, is_causal), atol=1e-5, rtol=1e-4)


def _performer_exact(q, k, v, features, is_causal):
    """The Performer estimator Σ_j φ(q)·φ(k_j) v_j / Σ_j φ(q)·φ(k_j) from the same random features,
    written from the formula in float64 without any stabiliser or epsilon."""
    def phi(x):
        x = x.double() * features.head_dim ** -0.25
        exponent = x @ features.projection.double().T - (x * x).sum(-1, keepdim=True) / 2
        return torch.exp(exponent) / math.sqrt(features.n_features)
    weights = phi(q) @ phi(k).transpose(-2, -1)                          # (batch, heads, n, n)
    if is_causal:
        weights = weights.tril()
    return (weights @ v.double()) / weights.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5, 2.0])
def test_favor_equals_the_exact_performer_estimator_at_ordinary_scales(is_causal, head_dim, scale):
    """Unit-variance inputs and head size 64 make exp(ω·x - |x|²/2) span dozens of orders of magnitude:
    the output must still be the estimator's, not collapse towards 0."""
    q, k, v = _qkv(200, dim=head_dim, seed=7)
    q, k = q * scale, k * scale
    features = FavorFeatures(head_dim, 64, seed=0)
    expected = _performer_exact(q, k, v, features, is_causal)
    for out in (linear_attention(q, k, v, features, is_causal=is_causal, chunk_size=32),
                quadratic_linear_attention(q, k, v, features, is_causal)):
        assert (out.double() - expected).norm() / expected.norm() < 1e-4


def test_causal_favor_does_not_see_the_future():
    q, k, v = _qkv(96, dim=64, seed=3)
    features = FavorFeatures(64, 64, seed=0)
    longer_last_key = k.clone()
    longer_last_key[..., -1, :] *= 4                                     # only the last key changes
    before = linear_attention(q, k, v, features, is_causal=True, chunk_size=32)
    after = linear_attention(q, longer_last_key, v, features, is_causal=True, chunk_size=32)
    assert torch.equal(before[..., :-1, :], after[..., :-1, :])
    assert not torch.allclose(before[..., -1, :], after[..., -1, :])


@pytest.mark.parametrize("is_causal", [False, True])
def test_favor_padded_keys_change_nothing_and_a_query_that_sees_no_key_gets_zeros(is_causal):
    q, k, v = _qkv(40, dim=64, seed=4)
    k[..., 30:, :] *= 5                                                  # large padded keys must not set the scale
    features = FavorFeatures(64, 64, seed=0)
    padding = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    padding[1, ..., 30:] = False
    out = linear_attention(q, k, v, features, is_causal=is_causal, attn_mask=padding, chunk_size=16)
    expected = _performer_exact(q[1:, :, :30], k[1:, :, :30], v[1:, :, :30], features, is_causal)
    assert torch.allclose(out[1:, :, :30].double(), expected, atol=1e-5)
    nothing = torch.zeros(2, 1, 1, 40, dtype=torch.bool)
    assert torch.equal(linear_attention(q, k, v, features, is_causal=is_causal, attn_mask=nothing),
                       torch.zeros_like(v))


def test_recurrent_step_equals_the_causal_form():
    q, k, v = _qkv(40)
    state, outputs = None, []
    for t in range(40):
        state, out = step(state, q[:, :, t], k[:, :, t], v[:, :, t])
        outputs.append(out)
    assert state[0].shape == (2, 3, 16, 16)          # the whole memory: f × d, whatever the length
    assert torch.allclose(torch.stack(outputs, dim=2), linear_attention(q, k, v, is_causal=True), atol=1e-5)


def test_key_padding_mask_drops_padded_keys():
    q, k, v = _qkv(12)
    padding = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    padding[1, ..., 8:] = False
    out = linear_attention(q, k, v, attn_mask=padding)
    assert torch.allclose(out[1], linear_attention(q[1:], k[1:, :, :8], v[1:, :, :8])[0], atol=1e-5)


def test_favor_features_estimate_the_softmax_kernel():
    """E[φ(q)·φ(k)] = exp(q·k/√d): averaged over many pairs, the estimate is unbiased (unstabilised features)."""
    q, k, _ = _qkv(32, batch=1, heads=1, dim=8, scale=0.5)
    features = FavorFeatures(8, 4096, seed=0)
    def unstabilised(x):
        x = x * 8 ** -0.25
        return torch.exp(x @ features.projection.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(4096)
    ratio = (unstabilised(q) @ unstabilised(k).transpose(-2, -1)) / torch.exp(q @ k.transpose(-2, -1) / math.sqrt(8))
    assert abs(ratio.mean().item() - 1) < 0.02          # unbiased
    assert (ratio - 1).abs().max() < 0.25               # and each pair close


def test_orthogonal_random_features_are_orthogonal_within_a_block():
    w = orthogonal_random_features(20, 8, seed=0)
    block = w[:8] / w[:8].norm(dim=1, keepdim=True)
    assert torch.allclose(block @ block.T, torch.eye(8), atol=1e-5)
    assert torch.equal(w, orthogonal_random_features(20, 8, seed=0))


def test_performer_error_falls_as_features_grow():
    q, k, v = _qkv(128, batch=1, heads=2, dim=32, scale=0.5)
    errors = performer_error(q, k, v, [8, 512], seeds=(0, 1, 2))
    assert errors[512].mean() < errors[8].mean() / 3          # ≈ 1/√m: 8× fewer error for 64× the features


def test_linformer_equals_softmax_over_projected_keys():
    torch.manual_seed(0)
    layer = LinformerAttention(seq_len=20, k=5, share_projection=False)
    q, k, v = _qkv(20)
    expected = F.scaled_dot_product_attention(q, layer.key_projection @ k, layer.value_projection @ v)
    assert torch.allclose(layer(q, k, v), expected, atol=1e-5)
    mha = MultiHeadAttention(32, 4, attention=LinformerAttention(20, 5))
    assert any(name.startswith("attention.") for name, _ in mha.named_parameters())   # E, F are learned
    assert mha(torch.randn(2, 20, 32))[0].shape == (2, 20, 32)


@pytest.mark.parametrize("call, message", [
    (lambda: linear_attention(*_qkv(4), feature_map="tanh"), "unknown feature_map 'tanh'"),
    (lambda: linear_attention(*_qkv(4), is_causal=True, chunk_size=0), "chunk_size must be a positive integer"),
    (lambda: FavorFeatures(16, 0), "n_features must be a positive integer"),
    (lambda: linear_attention(*_qkv(4), feature_map=FavorFeatures(8, 4)), "built for head_dim 8"),
    (lambda: LinformerAttention(10, 11), "between 1 and seq_len=10"),
    (lambda: LinformerAttention(10, 4)(*_qkv(12)), "built for sequences of 10 tokens"),
    (lambda: LinformerAttention(4, 2)(*_qkv(4), is_causal=True), "no causal form"),
    (lambda: step(None, *(t[:, :, 0] for t in _qkv(3)), feature_map=FavorFeatures(16, 4)), "one token"),
])
def test_bad_input_says_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_delta_rule_recalls_orthonormal_keys_exactly_where_plain_linear_attention_blurs():
    d, n = 32, 16
    keys = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0][:n][None, None]  # (1,1,n,d)
    values = torch.randn(1, 1, n, 8, generator=torch.Generator().manual_seed(1))
    stored, state = delta_rule_attention(keys, keys, values, return_state=True)   # the last state holds every pair
    recalled = keys[0, 0] @ state[0, 0]                         # read the final state at every stored key
    torch.testing.assert_close(recalled, values[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(stored[0, 0, -1], values[0, 0, -1], atol=1e-5, rtol=0)
    plain = linear_attention(keys, keys, values)                 # elu+1 features: every pair overlaps in S
    assert (plain - values).norm() / values.norm() > 0.5


def test_delta_rule_step_is_the_matrix_update_with_its_gate():
    """S ← α (I − β k kᵀ) S + β k vᵀ, written with explicit matrices, for unnormalised inputs and per-head gates."""
    g = torch.Generator().manual_seed(2)
    d, dv = 6, 5
    S = torch.randn(2, 3, d, dv, generator=g)
    q, k, v = torch.randn(2, 3, d, generator=g), 3 * torch.randn(2, 3, d, generator=g), torch.randn(2, 3, dv, generator=g)
    beta, decay = torch.rand(2, 3, generator=g), torch.rand(2, 3, generator=g)
    new, out = delta_rule_step(S, q, k, v, beta=beta, decay=decay)
    for b in range(2):
        for h in range(3):
            unit = k[b, h] / k[b, h].norm()
            expected = decay[b, h] * (torch.eye(d) - beta[b, h] * torch.outer(unit, unit)) @ S[b, h] \
                + beta[b, h] * torch.outer(unit, v[b, h])
            torch.testing.assert_close(new[b, h], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[b, h], expected.T @ (q[b, h] / q[b, h].norm()), atol=1e-5, rtol=1e-5)
    forgotten, _ = delta_rule_step(S, q, k, v, beta=1.0, decay=0.0)  # a closed gate keeps only the new pair
    torch.testing.assert_close(forgotten, (k / k.norm(dim=-1, keepdim=True))[..., :, None] * v[..., None, :])
