"""Attention at the edges, against PyTorch's own attention and the formula written in float64:
fully masked query rows, long padding in half precision, very negative biases, broadcast masks and a
learned bias that needs its gradient. Unit-variance inputs, head size 64."""
import math

import pytest
import torch
import torch.nn.functional as F

from minilib.attention import memory_efficient_attention, scaled_dot_product_attention
from minilib.sparse import block_sparse_attention, layout_to_mask, sliding_window_attention, sliding_window_mask

ATTENTIONS = [scaled_dot_product_attention,
              lambda *args, **kwargs: memory_efficient_attention(*args, chunk_size=64, query_chunk_size=32, **kwargs)]


def _qkv(n, batch=2, heads=3, dim=64, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n, dim, generator=generator).to(dtype) for _ in range(3))


def _close(out, expected, tolerance):
    """Relative error of the whole output (half precision keeps about 3 digits per number)."""
    return ((out.double() - expected.double()).norm() / expected.double().norm()).item() < tolerance


def _naive(q, k, v, bias):
    """softmax(QKᵀ/√d + bias) V in float64, with PyTorch's rule for a row that sees nothing: zeros."""
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias.double()
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v.double()


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fully_masked_query_rows_give_zeros_like_pytorch(attention, dtype):
    q, k, v = _qkv(100, dtype=dtype)
    mask = torch.rand(2, 1, 100, 100, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[:, :, 10:20] = False                                            # ten queries that may see no key
    out = attention(q, k, v, attn_mask=mask)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert torch.equal(out[:, :, 10:20], torch.zeros_like(out[:, :, 10:20]))
    assert _close(out, expected, 3e-3 if dtype == torch.float16 else 1e-6)


def test_weights_of_a_fully_masked_row_are_zeros():
    q, k, v = _qkv(8)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[3] = False
    _, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert torch.equal(weights[..., 3, :], torch.zeros_like(weights[..., 3, :]))
    assert torch.allclose(weights[..., [0, 1, 2, 4], :].sum(-1), torch.ones(2, 3, 4))


def test_long_left_padding_in_half_precision_is_finite():
    """Scores below -17 underflow exp in float16: with the first key chunk all padding, a stand-in maximum
    of 0 turned every later weight into 0 and the row into 0/0."""
    q, k, v = _qkv(256, dtype=torch.float16)
    distance = (torch.arange(256)[:, None] - torch.arange(256)[None, :]).abs()
    bias = (-20.0 - 0.05 * distance).to(torch.float16)                   # a steep ALiBi-like slope
    bias[:, :100] = -math.inf                                            # 100 padding keys on the left
    bias = bias.expand(2, 3, 256, 256)
    out = memory_efficient_attention(q, k, v, attn_mask=bias, chunk_size=64, query_chunk_size=64)
    assert torch.isfinite(out).all()
    # scores near -30 are rounded to 1/32 when the bias is added in float16: a few 1e-3 of relative error
    assert _close(out, _naive(q, k, v, bias), 1e-2)
    assert _close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), 1e-2)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_large_negative_float_bias_in_float32(attention):
    q, k, v = _qkv(200)
    bias = torch.full((200, 200), -150.0)
    bias[:, :64] = -math.inf                                             # the whole first key chunk masked
    out = attention(q, k, v, attn_mask=bias)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), _naive(q, k, v, bias), atol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("shape", [(2, 1, 70, 1), (70, 1), (2, 3, 1, 1)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_of_one_key_column_broadcast_like_pytorch(attention, shape, kind):
    q, k, v = _qkv(70)
    generator = torch.Generator().manual_seed(2)
    mask = torch.rand(shape, generator=generator) < 0.7 if kind == "bool" else torch.randn(shape, generator=generator)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(attention(q, k, v, attn_mask=mask), expected, atol=1e-5)


@pytest.mark.parametrize("chunks", [(64, 32), (512, 128)])
def test_gradient_flows_into_a_learned_bias(chunks):
    """A relative-position / ALiBi-style bias that is learned while q, k, v are not: the in-place path
    would overwrite the scores autograd needs."""
    q, k, v = _qkv(150, heads=4)
    distance = (torch.arange(150)[:, None] - torch.arange(150)[None, :]).abs().float()
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], requires_grad=True)
    bias = -slopes[:, None, None] * distance                             # (heads, n, n), requires grad
    out = memory_efficient_attention(q, k, v, attn_mask=bias, chunk_size=chunks[0], query_chunk_size=chunks[1])
    grad_out = torch.randn_like(out)
    (slope_grad,) = torch.autograd.grad(out, slopes, grad_out)

    slopes64 = slopes.detach().double().requires_grad_()
    expected = _naive(q, k, v, -slopes64[:, None, None] * distance.double())
    (expected_grad,) = torch.autograd.grad(expected, slopes64, grad_out.double())
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert torch.allclose(slope_grad.double(), expected_grad, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- the sparse kernels


@pytest.mark.parametrize("global_tokens", [0, 2])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sliding_window_rows_that_see_nothing_give_zeros_like_pytorch(global_tokens, is_causal):
    """All keys padded in one sequence: local rows and global rows alike give zeros, as dense attention does."""
    q, k, v = _qkv(64)
    padding = torch.ones(2, 1, 1, 64, dtype=torch.bool)
    padding[1] = False                                                   # the second sequence is all padding
    padding[0, ..., 40:] = False                                         # the first: window rows past 40+w see nothing
    out = sliding_window_attention(q, k, v, window=8, global_tokens=global_tokens, is_causal=is_causal,
                                   attn_mask=padding)
    mask = sliding_window_mask(64, 8, global_tokens, is_causal) & padding
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.allclose(out, expected, atol=1e-5)


def test_block_sparse_rows_that_see_nothing_give_zeros_like_pytorch():
    q, k, v = _qkv(64)
    layout = torch.eye(4, dtype=torch.bool)
    padding = torch.ones(2, 1, 1, 64, dtype=torch.bool)
    padding[0, ..., 16:32] = False                                       # the second block sees only padding
    out = block_sparse_attention(q, k, v, layout, block_size=16, attn_mask=padding)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=layout_to_mask(layout, 16) & padding)
    assert torch.equal(out[0, :, 16:32], torch.zeros_like(out[0, :, 16:32]))
    assert torch.allclose(out, expected, atol=1e-5)
