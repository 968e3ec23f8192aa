"""minilib.generation: the KV cache against recomputation, speculative decoding against the target's own greedy
output, grouped-query attention against PyTorch's enable_gqa, and the quantized cache against its grid."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilib.attention import MultiHeadAttention, scaled_dot_product_attention
from minilib.generation import (
    KVCache,
    QuantizedKVCache,
    generate,
    group_kv_heads,
    grouped_query_model,
    speculative_generate,
)
from minilib.transformer import LanguageModel, TransformerConfig

VOCAB = 61


def _language_model(seed=0, n_layers=2, d_model=128, n_heads=2, n_kv_heads=None, max_len=96):
    """A random GPT-2-style model (head size 64) with an untied, unit-scale output head: varied greedy tokens."""
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=VOCAB, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                               d_ff=2 * d_model, max_len=max_len, dropout=0.0, norm_first=True,
                               n_kv_heads=n_kv_heads)
    model = LanguageModel(config)
    model.lm_head.weight = nn.Parameter(torch.randn(VOCAB, d_model))
    return model.eval()


@pytest.fixture(scope="module")
def target():
    return _language_model(0)


def _prompt(batch, length, seed=1):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- the KV cache
@pytest.mark.parametrize("batch, prompt_len, new", [(1, 1, 40), (1, 17, 30), (3, 5, 50), (4, 33, 20)])
def test_cached_and_uncached_greedy_tokens_are_identical(target, batch, prompt_len, new):
    prompt = _prompt(batch, prompt_len, seed=prompt_len)
    cached = generate(target, prompt, new)
    assert cached.shape == (batch, prompt_len + new) and torch.equal(cached[:, :prompt_len], prompt)
    assert torch.equal(cached, generate(target, prompt, new, use_cache=False))
    assert len(set(cached[0, prompt_len:].tolist())) > 3      # the model does not just repeat one token


def test_cached_logits_equal_a_full_forward_pass(target):
    """Prefill a prefix, then feed the rest in uneven chunks: every logit equals the one-pass forward."""
    tokens = _prompt(2, 40)
    cache = KVCache.for_model(target, batch=2, max_len=40)
    chunks = [target(part, cache=cache) for part in tokens.split([11, 1, 7, 1, 20], dim=1)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), target(tokens), atol=1e-5, rtol=1e-5)
    assert cache.length == 40


def test_grouped_query_model_generates_the_same_with_and_without_cache():
    model = _language_model(3, n_heads=4, d_model=256, n_kv_heads=2)
    prompt = _prompt(2, 9)
    assert torch.equal(generate(model, prompt, 30), generate(model, prompt, 30, use_cache=False))


def test_cache_size_and_bytes(target):
    cache = KVCache.for_model(target, batch=3, max_len=50)
    assert cache.keys.shape == (2, 3, 2, 50, 64)
    assert cache.nbytes == 2 * 2 * 3 * 2 * 50 * 64 * 4             # K and V, layers, batch, heads, positions, dim, fp32
    grouped = KVCache.for_model(_language_model(n_heads=4, d_model=256, n_kv_heads=1), batch=3, max_len=50)
    assert grouped.nbytes == cache.nbytes // 2 * 1                  # 1 kv head of 64 instead of 2
    assert QuantizedKVCache.for_model(target, batch=3, max_len=50).codes.dtype == torch.int8


def test_sampling_is_reproducible_with_a_generator(target):
    prompt = _prompt(2, 5)
    runs = [generate(target, prompt, 20, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], generate(target, prompt, 20))


def test_eos_stops_a_row_and_pads_it(target):
    prompt = _prompt(2, 4)
    free = generate(target, prompt, 15)
    eos = int(free[0, 6])                                            # the third token row 0 generates
    out = generate(target, prompt, 15, eos_id=eos)
    first = (out[0, 4:] == eos).nonzero()[0].item() + 4
    assert torch.all(out[0, first:] == eos) and torch.equal(out[0, :first], free[0, :first])


def test_generate_moves_the_prompt_to_the_model_device_and_leaves_train_mode(target):
    target.train()
    out = generate(target, _prompt(1, 3).int(), 5)
    assert target.training and out.dtype == torch.long
    target.eval()


# ------------------------------------------------------------------------------ quantized KV cache
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_cache_round_trips_within_half_a_grid_step(bits):
    cache = QuantizedKVCache(n_layers=1, batch=2, n_kv_heads=3, head_dim=64, max_len=10, bits=bits)
    k = torch.randn(2, 3, 10, 64) * torch.logspace(-3, 1, 10)[:, None]     # tokens of very different scales
    v = torch.randn(2, 3, 10, 64)
    k_out, v_out = cache.update(0, k, v)
    for x, out in ((k, k_out), (v, v_out)):
        step = (x.abs().amax(-1, keepdim=True) / cache.qmax).half().float()
        assert torch.all((x - out).abs() <= step / 2 * (1 + 1e-3) + 1e-7)
    assert cache.nbytes < KVCache(1, 2, 3, 64, 10).nbytes * (bits + 1) / 32


def test_quantized_cache_generates_close_to_float(target):
    prompt = _prompt(1, 16)
    exact = generate(target, prompt, 24)
    quantized = generate(target, prompt, 24, cache=QuantizedKVCache.for_model(target, 1, 40, bits=8))
    assert (quantized == exact).float().mean() > 0.8


# -------------------------------------------------------------------------------- speculative decoding
class AlwaysWrong(nn.Module):
    """A draft that proposes, after any prefix, a token the target would not choose (its choice + 1)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.lm_head = model, model.config, model.lm_head

    def forward(self, input_ids, cache=None):
        return self.model(input_ids, cache=cache).roll(1, dims=-1)


@pytest.mark.parametrize("k", range(1, 7))
def test_speculative_output_is_the_targets_greedy_output(target, k):
    prompt = _prompt(1, 12, seed=k)
    expected = generate(target, prompt, 40)
    for draft in (_language_model(5, n_layers=1), target, AlwaysWrong(target)):
        result = speculative_generate(target, draft, prompt, 40, k=k)
        assert torch.equal(result.tokens, expected)
    assert result.accepted == 0 and result.acceptance_rate == 0.0
    assert result.target_calls == 40                                 # one token per target pass, as without a draft


def test_a_perfect_draft_is_always_accepted(target):
    result = speculative_generate(target, target, _prompt(1, 8), 50, k=4)
    assert result.acceptance_rate == 1.0
    assert result.target_calls == 10                                 # 5 tokens per pass: 4 drafted + 1 of its own


@pytest.mark.parametrize("min_confidence", [0.5, 0.99])
def test_a_draft_that_stops_when_unsure_gives_the_same_tokens_with_fewer_drafts(target, min_confidence):
    prompt = _prompt(1, 12, seed=3)
    draft = _language_model(5, n_layers=1)
    fixed = speculative_generate(target, draft, prompt, 40, k=4)
    unsure = speculative_generate(target, draft, prompt, 40, k=4, min_confidence=min_confidence)
    assert torch.equal(unsure.tokens, generate(target, prompt, 40))
    assert unsure.drafted < fixed.drafted          # an untrained draft is never sure: rounds end early


def test_a_sure_draft_drafts_every_token_it_may(target):
    """The target as its own draft: confident wherever its top token stands out, so confidence stopping changes little."""
    sure = speculative_generate(target, target, _prompt(1, 8), 50, k=4, min_confidence=1e-6)
    assert sure.acceptance_rate == 1.0 and sure.target_calls == 10


# ------------------------------------------------------------------------------ grouped-query attention
@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])
def test_grouped_query_attention_equals_pytorch_enable_gqa(n_kv_heads):
    torch.manual_seed(0)
    attn = MultiHeadAttention(512, 8, n_kv_heads=n_kv_heads).eval()          # head size 64
    x = torch.randn(2, 33, 512)
    q = attn.q_proj(x).view(2, 33, 8, 64).transpose(1, 2)
    k, v = (p(x).view(2, 33, n_kv_heads, 64).transpose(1, 2) for p in (attn.k_proj, attn.v_proj))
    for causal in (False, True):
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        expected = attn.out_proj(heads.transpose(1, 2).reshape(2, 33, 512))
        torch.testing.assert_close(attn(x, is_causal=causal)[0], expected, atol=1e-5, rtol=1e-4)


def test_mean_pooled_heads_give_the_same_layer_when_heads_are_equal():
    """When the heads of each group are identical, pooling loses nothing: the grouped layer equals the original."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(256, 4).eval()
    with torch.no_grad():
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight.view(2, 2, 64, 256)[:, 1] = proj.weight.view(2, 2, 64, 256)[:, 0]
            proj.bias.view(2, 2, 64)[:, 1] = proj.bias.view(2, 2, 64)[:, 0]
    grouped = group_kv_heads(attn, 2)
    assert grouped.k_proj.weight.shape == (128, 256) and grouped.n_kv_heads == 2
    x = torch.randn(3, 10, 256)
    torch.testing.assert_close(grouped(x)[0], attn(x)[0])


def test_grouped_query_model_pools_each_group():
    model = _language_model(n_heads=4, d_model=256)
    grouped = grouped_query_model(model, 1)
    w = model.layers[0].attn.k_proj.weight
    torch.testing.assert_close(grouped.layers[0].attn.k_proj.weight, w.view(4, 64, 256).mean(0))
    assert grouped.config.n_kv_heads == 1 and model.layers[0].attn.n_kv_heads == 4


# ------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(target):
    with pytest.raises(ValueError, match="context is 96"):
        generate(target, _prompt(1, 90), 10)
    with pytest.raises(ValueError, match="capacity is 20"):
        generate(target, _prompt(1, 15), 10, cache=KVCache.for_model(target, 1, 20))
    with pytest.raises(ValueError, match="at most 8 positions"):
        target(_prompt(1, 9), cache=KVCache.for_model(target, 1, 8))
    with pytest.raises(ValueError, match="n_kv_heads must be a positive divisor of n_heads=8"):
        MultiHeadAttention(256, 8, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_kv_heads must be a positive divisor of n_heads=2"):
        TransformerConfig(vocab_size=10, d_model=64, n_heads=2, n_kv_heads=4)
    with pytest.raises(ValueError, match="n_heads=2"):
        group_kv_heads(target.layers[0].attn, 3)
    other = LanguageModel(TransformerConfig(vocab_size=VOCAB + 1, d_model=32, n_heads=1, n_layers=1, max_len=96))
    with pytest.raises(ValueError, match=f"target has {VOCAB} tokens, draft has {VOCAB + 1}"):
        speculative_generate(target, other, _prompt(1, 4), 5)
    with pytest.raises(ValueError, match="batch 1"):
        speculative_generate(target, target, _prompt(2, 4), 5)
    with pytest.raises(ValueError, match="min_confidence must be a probability between 0 and 1"):
        speculative_generate(target, target, _prompt(1, 4), 5, min_confidence=1.5)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        QuantizedKVCache(1, 1, 1, 8, 4, bits=2)
    with pytest.raises(ValueError, match=r"seq ≥ 1, got \(2, 0\)"):
        generate(target, torch.zeros(2, 0, dtype=torch.long), 5)


def test_no_new_tokens_returns_the_prompt(target):
    prompt = _prompt(2, 5)
    assert torch.equal(generate(target, prompt, 0), prompt)
    assert torch.equal(speculative_generate(target, target, prompt[:1], 0).tokens, prompt[:1])


# ------------------------------------------------------------------ attention dropout with plug-in functions
def test_attention_dropout_reaches_a_plugged_in_function():
    """A plug-in attention function gets the layer's dropout while training (it used to be dropped silently)."""
    torch.manual_seed(0)
    default = MultiHeadAttention(128, 2, dropout=0.5).train()
    plugged = MultiHeadAttention(128, 2, dropout=0.5, attention=functools.partial(scaled_dot_product_attention))
    plugged.load_state_dict(default.state_dict())
    plugged.train()
    x = torch.randn(2, 16, 128)
    torch.manual_seed(1)
    expected = default(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(plugged(x)[0], expected)
    assert not torch.allclose(expected, plugged.eval()(x)[0])
    pytorch = MultiHeadAttention(128, 2, dropout=0.5, attention=F.scaled_dot_product_attention).train()
    assert not torch.allclose(pytorch(x)[0], pytorch.eval()(x)[0])


def test_a_plugged_in_function_without_dropout_is_an_error_only_when_dropout_applies():
    attn = MultiHeadAttention(64, 2, dropout=0.1, attention=lambda q, k, v, attn_mask=None, is_causal=False: v)
    x = torch.randn(1, 4, 64)
    attn.eval()(x)                                                   # no dropout at inference: fine
    with pytest.raises(ValueError, match="dropout_p"):
        attn.train()(x)
