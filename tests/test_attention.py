"""minilib.attention against PyTorch's own attention."""
import pytest
import torch
import torch.nn.functional as F

from minilib.attention import (
    KEY_CHUNK,
    QUERY_BLOCK,
    MultiHeadAttention,
    memory_efficient_attention,
    scaled_dot_product_attention,
)

SHAPES = [(1, 1, 1, 4), (2, 3, 17, 8), (2, 4, 64, 16), (3, 33, 5), (1, 2, 130, 32)]


def qkv(shape, seed=0, n_k=None):
    g = torch.Generator().manual_seed(seed)
    kv_shape = (*shape[:-2], n_k or shape[-2], shape[-1])
    return torch.randn(shape, generator=g), torch.randn(kv_shape, generator=g), torch.randn(kv_shape, generator=g)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("attention", [scaled_dot_product_attention, memory_efficient_attention])
def test_equals_pytorch(shape, is_causal, attention):
    q, k, v = qkv(shape)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(attention(q, k, v, is_causal=is_causal), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunks", [(1, 1), (3, 7), (16, 5), (1000, 1000)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_memory_efficient_any_chunking(chunks, is_causal):
    q, k, v = qkv((2, 3, 41, 8), seed=1)
    out = memory_efficient_attention(q, k, v, is_causal=is_causal, query_chunk_size=chunks[0], chunk_size=chunks[1])
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_memory_efficient_default_tiles_over_several_blocks_and_a_ragged_edge(is_causal):
    n = 2 * QUERY_BLOCK + KEY_CHUNK // 3                       # 3 query blocks, the last short; 5 key chunks
    q, k, v = qkv((1, 2, n, 32), seed=5)
    mask = torch.rand(n, n, generator=torch.Generator().manual_seed(6)) > 0.3
    for attn_mask in (None, mask):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        got = memory_efficient_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", [scaled_dot_product_attention, memory_efficient_attention])
@pytest.mark.parametrize("mask_shape", [(2, 3, 19, 23), (2, 1, 19, 23), (2, 1, 1, 23), (19, 23)])
def test_boolean_and_float_masks(attention, mask_shape):
    q, k, v = qkv((2, 3, 19, 8), seed=2, n_k=23)
    g = torch.Generator().manual_seed(3)
    bool_mask = torch.rand(mask_shape, generator=g) > 0.4
    bool_mask[..., 0] = True                                 # no fully masked row
    float_mask = torch.randn(mask_shape, generator=g)
    for mask in (bool_mask, float_mask):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = attention(q, k, v, attn_mask=mask, **({"chunk_size": 6, "query_chunk_size": 5}
                                                      if attention is memory_efficient_attention else {}))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_cross_attention_lengths_and_causal_alignment():
    q, k, v = qkv((2, 2, 7, 8), seed=4, n_k=11)
    for is_causal in (False, True):                          # causal is top-left aligned, as in PyTorch
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=is_causal), expected)
        torch.testing.assert_close(memory_efficient_attention(q, k, v, is_causal=is_causal, chunk_size=3), expected)


def test_return_weights_are_a_softmax():
    q, k, v = qkv((2, 3, 9, 4))
    out, weights = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 9))
    assert torch.all(weights.triu(1) == 0)                   # nothing attends to the future
    torch.testing.assert_close(weights @ v, out)


def test_gradients_match_pytorch():
    q, k, v = (t.requires_grad_() for t in qkv((1, 2, 12, 4)))
    memory_efficient_attention(q, k, v, is_causal=True, chunk_size=5).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    for a, b in zip(ours, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad, error, words", [
    (dict(k=torch.randn(2, 5, 3)), ValueError, "last dimension"),
    (dict(v=torch.randn(2, 6, 4)), ValueError, "number of keys"),
    (dict(q=torch.ones(2, 5, 4, dtype=torch.long)), TypeError, "floating-point"),
    (dict(attn_mask=torch.ones(5, 4)), ValueError, "broadcastable"),
    (dict(attn_mask=torch.ones(5, 5, dtype=torch.int32)), TypeError, "bool"),
    (dict(attn_mask=[[True]]), TypeError, "tensor"),
])
def test_bad_input_is_explained(bad, error, words):
    args = dict(q=torch.randn(2, 5, 4), k=torch.randn(2, 5, 4), v=torch.randn(2, 5, 4), attn_mask=None)
    args.update(bad)
    for attention in (scaled_dot_product_attention, memory_efficient_attention):
        with pytest.raises(error, match=words):
            attention(**args)


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_non_positive_chunk_size(size):
    q, k, v = qkv((1, 4, 2))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        memory_efficient_attention(q, k, v, chunk_size=size)


def test_multi_head_attention_equals_torch_nn():
    torch.manual_seed(0)
    d_model, heads = 32, 4
    ours = MultiHeadAttention(d_model, heads)
    theirs = torch.nn.MultiheadAttention(d_model, heads, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    x, context = torch.randn(2, 10, d_model), torch.randn(2, 13, d_model)
    padding = torch.ones(2, 13, dtype=torch.bool)
    padding[1, 9:] = False
    out, weights = ours(x, context, attn_mask=padding[:, None, None, :], output_attentions=True)
    expected, expected_weights = theirs(x, context, context, key_padding_mask=~padding, average_attn_weights=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-4)
    causal_out, _ = ours(x, is_causal=True)
    causal_mask = torch.ones(10, 10, dtype=torch.bool).triu(1)
    torch.testing.assert_close(causal_out, theirs(x, x, x, attn_mask=causal_mask)[0], atol=1e-5, rtol=1e-4)


def test_multi_head_attention_plug_in_and_head_mask():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    plugged = MultiHeadAttention(16, 4, attention=memory_efficient_attention).eval()
    plugged.load_state_dict(mha.state_dict())
    torch.testing.assert_close(plugged(x)[0], mha(x)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="does not expose weights"):
        plugged(x, output_attentions=True)
    # a head mask of zeros on head 2 equals zeroing that head's slice of the output projection
    head_mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    masked, _ = mha(x, head_mask=head_mask)
    with torch.no_grad():
        mha.out_proj.weight[:, 8:12] = 0
    torch.testing.assert_close(masked, mha(x)[0])


def test_multi_head_attention_shape_errors():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
