"""Sparse attention: masks against hand-drawn cases, blocked kernels against dense attention."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from minilib.attention import MultiHeadAttention
from minilib.sparse import (
    bigbird_layout,
    block_layout,
    block_sparse_attention,
    causal_mask,
    global_mask,
    layout_to_mask,
    random_block_layout,
    sliding_window_attention,
    sliding_window_mask,
)
from minilib.support.bench import peak_memory


def _qkv(n, batch=2, heads=3, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3))


def _dense(q, k, v, mask):
    """PyTorch's own attention under a bool mask: the reference every kernel must equal."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ------------------------------------------------------------------------------------------ masks
def test_sliding_window_mask_matches_hand_drawn_band():
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [0, 1, 1, 1, 0],
                             [0, 0, 1, 1, 1],
                             [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(sliding_window_mask(5, 2), expected)
    assert torch.equal(sliding_window_mask(5, 2, is_causal=True), expected.tril())


def test_window_of_one_is_the_diagonal_and_global_tokens_add_rows_and_columns():
    assert torch.equal(sliding_window_mask(4, 1), torch.eye(4, dtype=torch.bool))
    expected = torch.tensor([[1, 1, 1, 1],
                             [1, 1, 0, 0],
                             [1, 0, 1, 0],
                             [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(sliding_window_mask(4, 1, global_tokens=1), expected)
    assert torch.equal(global_mask(4, 1) | torch.eye(4, dtype=torch.bool), expected)


def test_dilated_window_skips_positions():
    mask = sliding_window_mask(7, 2, dilation=3)
    assert mask[3].nonzero().flatten().tolist() == [0, 3, 6]
    assert mask[0].nonzero().flatten().tolist() == [0, 3]


def test_block_layout_marks_tiles_that_have_any_allowed_pair():
    layout = block_layout(sliding_window_mask(8, 2), block_size=2)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(layout, expected)
    assert torch.equal(block_layout(layout_to_mask(expected, 3), 3), expected)


def test_bigbird_layout_is_window_global_and_random_union():
    layout = bigbird_layout(8, window_blocks=1, global_blocks=1, random_blocks=2, seed=1)
    assert layout[0].all() and layout[:, 0].all()                                  # the global block
    assert all(layout[i, max(i - 1, 0):i + 2].all() for i in range(8))             # the window
    assert torch.equal(layout, bigbird_layout(8, 1, 1, 2, seed=1))                 # fixed by the seed
    assert (random_block_layout(8, 2, seed=1).sum(dim=1) == 2).all()


@pytest.mark.parametrize("call, message", [
    (lambda: sliding_window_mask(8, 0), "window must be an integer ≥ 1"),
    (lambda: sliding_window_mask(8, 2, global_tokens=9), "global_tokens must be an integer between 0 and"),
    (lambda: block_layout(causal_mask(10), 4), "must divide"),
    (lambda: sliding_window_attention(*_qkv(8), window=0), "window must be"),
    (lambda: sliding_window_attention(*_qkv(8), window=2, global_tokens=10), "global_tokens"),
    (lambda: block_sparse_attention(*_qkv(12), torch.ones(3, 3, dtype=torch.bool), block_size=5), "must divide"),
    (lambda: block_sparse_attention(*_qkv(12), torch.ones(2, 2, dtype=torch.bool), block_size=4), "layout must have shape"),
    (lambda: block_sparse_attention(*_qkv(8), torch.eye(2, dtype=torch.bool) & False, block_size=4), "empty row"),
    (lambda: sliding_window_attention(*_qkv(8), window=2, attn_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool)),
     "key-padding"),
])
def test_bad_input_says_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("n, window, global_tokens, is_causal, block_size", [
    (16, 3, 0, False, None), (37, 5, 2, True, 4), (64, 8, 1, False, 16), (50, 1, 0, True, None),
    (33, 4, 33, False, 8), (100, 17, 3, True, 20), (100, 40, 2, False, 7), (90, 30, 0, True, 8), (5, 9, 0, False, None),
])
def test_sliding_window_equals_dense_attention_under_its_mask(n, window, global_tokens, is_causal, block_size):
    q, k, v = _qkv(n, seed=n)
    mask = sliding_window_mask(n, window, global_tokens, is_causal)
    out = sliding_window_attention(q, k, v, window, global_tokens, is_causal, block_size=block_size)
    assert (out - _dense(q, k, v, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("global_tokens, is_causal", [(0, False), (2, True), (1, False)])
def test_sliding_window_honours_a_key_padding_mask(global_tokens, is_causal):
    q, k, v = _qkv(40)
    padding = torch.rand(2, 1, 1, 40, generator=torch.Generator().manual_seed(1)) > 0.3
    padding[..., :3] = True                                   # every query keeps a visible key
    mask = sliding_window_mask(40, 6, global_tokens, is_causal) & padding
    out = sliding_window_attention(q, k, v, 6, global_tokens, is_causal, attn_mask=padding, block_size=8)
    reference = _dense(q, k, v, mask)
    rows = ~reference.isnan().any(dim=-1)                     # rows with a visible key
    assert (out - reference)[rows].abs().max() <= 1e-5


def test_sliding_window_gradients_match_dense():
    q, k, v = (t.requires_grad_() for t in _qkv(24))
    sliding_window_attention(q, k, v, 5, global_tokens=1).square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    _dense(q, k, v, sliding_window_mask(24, 5, 1)).square().sum().backward()
    for ours, reference in zip(grads, (q.grad, k.grad, v.grad)):
        assert torch.allclose(ours, reference, atol=1e-5)


def test_sliding_window_memory_grows_linearly_in_n():
    """The blocked kernel never holds an n×n matrix: doubling n doubles its extra memory."""
    def extra(n):
        q, k, v = _qkv(n, batch=1, heads=2, dim=16)
        return peak_memory(lambda: sliding_window_attention(q, k, v, window=32))
    assert extra(2048) / extra(1024) < 2.3


@pytest.mark.parametrize("is_causal", [False, True])
def test_block_sparse_equals_dense_attention_under_the_layout(is_causal):
    layout = bigbird_layout(8, window_blocks=1, global_blocks=1, random_blocks=2, seed=3)
    q, k, v = _qkv(32)
    mask = layout_to_mask(layout, 4)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & causal_mask(32) if is_causal else mask)
    assert (block_sparse_attention(q, k, v, layout, 4, is_causal=is_causal) - reference).abs().max() <= 1e-5


def test_block_sparse_with_key_padding_and_rectangular_layout():
    q, _, _ = _qkv(16, seed=1)
    _, k, v = _qkv(24, seed=2)
    layout = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    layout[:, 0] = True
    padding = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    padding[1, ..., 20:] = False
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=layout_to_mask(layout, 4) & padding)
    assert (block_sparse_attention(q, k, v, layout, 4, attn_mask=padding) - reference).abs().max() <= 1e-5


def test_plugs_into_multi_head_attention():
    torch.manual_seed(0)
    dense = MultiHeadAttention(32, 4)
    windowed = MultiHeadAttention(32, 4, attention=partial(sliding_window_attention, window=3, global_tokens=1))
    windowed.load_state_dict(dense.state_dict())
    x = torch.randn(2, 20, 32)
    mask = sliding_window_mask(20, 3, global_tokens=1)
    assert torch.allclose(windowed(x)[0], dense(x, attn_mask=mask)[0], atol=1e-5)
    with pytest.raises(ValueError, match="output_attentions=True needs the default"):
        windowed(x, output_attentions=True)
