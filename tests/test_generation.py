"""minilib.generation: the KV cache against recomputation, speculative decoding against the target's own greedy
output, grouped-query attention against PyTorch's enable_gqa, and the quantized cache against its grid."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minilib.attention import MultiHeadAttention, scaled_dot_product_attention
from minilib.generation import (
    KVCache,
    QuantizedKVCache,
    expected_speedup,
    expected_tokens_per_round,
    generate,
    group_kv_heads,
    grouped_query_model,
    speculative_generate,
    speculative_round,
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
    assert QuantizedKVCache.for_model(target, batch=3, max_len=50).key_codes.dtype == torch.int8


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
def _outlier_keys(batch=2, heads=3, length=64, dim=64, seed=0):
    """Keys with a few outlier channels (the same large dimensions at every position, as KIVI observed) and values."""
    generator = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, heads, length, dim, generator=generator)
    k[..., :3] *= 20                                                      # channels 0-2: outliers
    return k, torch.randn(batch, heads, length, dim, generator=generator)


def _half_steps(x, dim, bits):
    """Half the grid step of symmetric absmax quantization along ``dim`` (with the float16 scale), broadcast to x."""
    return (x.abs().amax(dim, keepdim=True) / (2 ** (bits - 1) - 1)).half().float().expand_as(x) / 2


@pytest.mark.parametrize("layout", ["per_token", "kivi"])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_cache_round_trips_within_half_a_grid_step(bits, layout):
    cache = QuantizedKVCache(n_layers=1, batch=2, n_kv_heads=3, head_dim=64, max_len=80, bits=bits, layout=layout)
    k, v = _outlier_keys(length=70)
    k = k * torch.logspace(-3, 1, 70)[:, None]                           # tokens of very different scales
    for lo, hi in ((0, 40), (40, 70)):                                    # in two passes: a group spans both
        cache.store(0, k[:, :, lo:hi], v[:, :, lo:hi])
        cache.advance(hi - lo)
    k_out, v_out = cache.dequantized(0)
    if layout == "per_token":
        key_tolerance = _half_steps(k, -1, bits)
    else:                                                                 # per channel over each group of 32 positions
        key_tolerance = _half_steps(k[:, :, :64].unflatten(2, (2, 32)), -2, bits).flatten(2, 3)
        assert torch.equal(k_out[:, :, 64:], k[:, :, 64:])                # the unfilled group's 6 keys stay float
        k, k_out = k[:, :, :64], k_out[:, :, :64]
    assert torch.all((k - k_out).abs() <= key_tolerance * (1 + 1e-3) + 1e-7)
    assert torch.all((v - v_out).abs() <= _half_steps(v, -1, bits) * (1 + 1e-3) + 1e-7)
    codes = 2 * 2 * 3 * 80 * 64 * bits // 8                              # keys and values, batch, heads, positions, dims
    value_scales = 2 * 3 * 80 * 2
    key_scales = value_scales if layout == "per_token" else 2 * 3 * (80 // 32) * 64 * 2
    residual = 0 if layout == "per_token" else 2 * 3 * 32 * 64 * 4
    assert cache.nbytes == codes + value_scales + key_scales + residual


@pytest.mark.parametrize("layout", ["per_token", "kivi"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_attention_read_from_the_codes_equals_attention_over_the_dequantized_cache(bits, layout, n_kv_heads):
    """Prefill 45 positions, then 3 steps of one: each output equals softmax(q K̂ᵀ/√d) V̂ over what is stored (float64)."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(256, 4, n_kv_heads=n_kv_heads).double().eval()     # head size 64
    cache = QuantizedKVCache(1, 2, n_kv_heads, 64, 60, bits=bits, layout=layout, dtype=torch.float64, block=16)
    x = torch.randn(2, 48, 256, dtype=torch.float64)
    for lo, hi in ((0, 45), (45, 46), (46, 47), (47, 48)):
        out, weights = attn(x[:, lo:hi], is_causal=True, cache=cache.layer(0), output_attentions=True)
        cache.advance(hi - lo)
        k_hat, v_hat = cache.dequantized(0)
        q = attn.q_proj(x[:, lo:hi]).view(2, hi - lo, 4, 64).transpose(1, 2)
        mask = torch.ones(hi - lo, hi, dtype=torch.bool).tril(diagonal=lo)
        heads = F.scaled_dot_product_attention(q, k_hat, v_hat, attn_mask=mask, enable_gqa=True)
        torch.testing.assert_close(out, attn.out_proj(heads.transpose(1, 2).reshape(2, hi - lo, 256)))
        assert weights.shape == (2, 4, hi - lo, hi)


def test_keys_with_outlier_channels_need_per_channel_scales_at_4_bits():
    """KIVI's observation: a per-token scale set by the outlier channels rounds the others away; per channel keeps them."""
    k, v = _outlier_keys()
    errors = {}
    for layout in ("per_token", "kivi"):
        cache = QuantizedKVCache(1, 2, 3, 64, 64, bits=4, layout=layout)
        cache.store(0, k, v)
        cache.advance(64)
        errors[layout] = ((cache.dequantized(0)[0] - k)[..., 3:].norm() / k[..., 3:].norm()).item()
    assert errors["kivi"] < errors["per_token"] / 3, errors


def test_a_decoding_step_never_turns_the_whole_quantized_cache_into_floats():
    """Attention reads the codes a block at a time: no float tensor as large as the keys is made at any step."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(256, 4).eval()
    x = torch.randn(1, 513, 256)
    for layout in ("per_token", "kivi"):
        cache = QuantizedKVCache(1, 1, 4, 64, 600, bits=4, layout=layout, block=64)
        with torch.no_grad():
            attn(x[:, :512], is_causal=True, cache=cache.layer(0))
            cache.advance(512)
            with _LargestNewTensor() as largest:
                attn(x[:, 512:], is_causal=True, cache=cache.layer(0))
        assert largest.numel <= 4 * 64 * 64, (layout, largest.numel)    # one block of 64 positions, 4 heads


class _LargestNewTensor(TorchDispatchMode):
    """Records the largest floating-point tensor any operation writes into new memory (views of existing
    tensors, such as a weight's transpose, share their input's storage and are not counted)."""

    numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.is_floating_point()
                    and t.untyped_storage().data_ptr() not in inputs):
                self.numel = max(self.numel, t.numel())
        return out


def test_grouped_query_attention_reads_the_shared_heads_without_copying_them():
    torch.manual_seed(0)
    attn = MultiHeadAttention(256, 8, n_kv_heads=2).eval()         # head size 32, groups of 4 query heads
    cache = KVCache(1, 1, 2, 32, 600)
    x = torch.randn(1, 513, 256)
    with torch.no_grad():
        attn(x[:, :512], is_causal=True, cache=cache.layer(0))
        cache.advance(512)
        with _LargestNewTensor() as largest:
            attn(x[:, 512:], is_causal=True, cache=cache.layer(0))
    assert largest.numel < 8 * 513 * 32                               # a copy of K for 8 heads would be this large


@pytest.mark.parametrize("layout", ["per_token", "kivi"])
def test_quantized_cache_generates_close_to_float(target, layout):
    prompt = _prompt(1, 16)
    exact = generate(target, prompt, 24)
    quantized = generate(target, prompt, 24, cache=QuantizedKVCache.for_model(target, 1, 40, bits=8, layout=layout,
                                                                              group=8))
    assert (quantized == exact).float().mean() > 0.8


def test_a_kivi_cache_rolled_back_into_a_quantized_group_keeps_what_its_codes_say():
    k, v = _outlier_keys(length=40)
    cache = QuantizedKVCache(1, 2, 3, 64, 64, bits=8, layout="kivi", group=16)
    cache.store(0, k, v)
    cache.advance(40)
    before = cache.dequantized(0)[0]
    cache.truncate(20)                                                   # inside the second group (16 … 31)
    assert torch.equal(cache.dequantized(0)[0], before[:, :, :20])
    cache.store(0, k[:, :, 20:32], v[:, :, 20:32])                       # refill it: quantized again
    cache.advance(12)
    assert cache._quantized_until(cache.length) == 32


# -------------------------------------------------------------------------------- speculative decoding
class AlwaysWrong(nn.Module):
    """A draft that proposes, after any prefix, a token the target would not choose (its choice + 1)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.lm_head = model, model.config, model.lm_head

    def forward(self, input_ids, cache=None, logits_to_keep=0):
        return self.model(input_ids, cache=cache, logits_to_keep=logits_to_keep).roll(1, dims=-1)


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
    with pytest.raises(ValueError, match="layout must be one of"):
        QuantizedKVCache(1, 1, 1, 8, 4, layout="per_head")
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


# ------------------------------------------------------------------------------------- the loose ends
class _Interrupted(Exception):
    pass


def _interrupt_on_forward(model):
    """Make the model's next forward pass raise (a learner pressing stop), as a removable hook."""
    def hook(module, args):
        raise _Interrupted
    return model.register_forward_pre_hook(hook)


def test_training_mode_survives_generation_and_an_interrupted_generation(target):
    draft = _language_model(5, n_layers=1)
    target.train(), draft.train()
    try:
        speculative_generate(target, draft, _prompt(1, 4), 6, k=2)
        assert target.training and draft.training                # both used to be left in eval mode
        handle = _interrupt_on_forward(target)
        with pytest.raises(_Interrupted):
            generate(target, _prompt(1, 4), 5)
        handle.remove()
        assert target.training                                     # the error used to skip model.train(...)
    finally:
        target.eval(), draft.eval()


@pytest.mark.parametrize("no_filter", [0, None])
def test_top_k_zero_means_no_filter_as_in_hugging_face(target, no_filter):
    prompt = _prompt(2, 5)
    runs = [generate(target, prompt, 12, temperature=1.0, top_k=top_k, generator=torch.Generator().manual_seed(3))
            for top_k in (no_filter, VOCAB, 10_000)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="top_k must be None or an int ≥ 0"):
            generate(target, prompt, 3, temperature=1.0, top_k=bad)


def test_a_cache_built_for_another_model_or_batch_is_a_clear_error(target):
    prompt = _prompt(1, 4)
    with pytest.raises(ValueError, match="built for batch 2; the prompt has batch 1"):
        generate(target, prompt, 3, cache=KVCache.for_model(target, batch=2, max_len=10))
    with pytest.raises(ValueError, match="built for batch 3; got keys with batch 1"):
        target(prompt, cache=KVCache.for_model(target, batch=3, max_len=10))
    one_layer = _language_model(n_layers=1)
    with pytest.raises(ValueError, match="cache was built for 1 layers; this model has 2"):
        target(prompt, cache=KVCache.for_model(one_layer, 1, 10))
    grouped = _language_model(3, n_heads=4, d_model=256, n_kv_heads=2)
    with pytest.raises(ValueError, match="built for key/value heads 2; got keys with key/value heads 4"):
        _language_model(3, n_heads=4, d_model=256)(prompt, cache=KVCache.for_model(grouped, 1, 10))
    with pytest.raises(ValueError, match="built for key/value heads 2; got keys with key/value heads 4"):
        _language_model(3, n_heads=4, d_model=256)(prompt, cache=QuantizedKVCache.for_model(grouped, 1, 10))


def test_the_output_head_runs_only_where_logits_are_kept(target):
    tokens = _prompt(2, 20)
    torch.testing.assert_close(target(tokens, logits_to_keep=3), target(tokens)[:, -3:])
    with pytest.raises(ValueError, match="logits_to_keep must be an int ≥ 0"):
        target(tokens, logits_to_keep=-1)


def test_one_speculative_round_keeps_a_prefix_adds_a_token_and_rolls_both_caches_back(target):
    draft = _language_model(5, n_layers=1)
    prompt = _prompt(1, 10, seed=4)
    caches = KVCache.for_model(target, 1, 30), KVCache.for_model(draft, 1, 30)
    tokens = prompt
    for _ in range(4):
        before = tokens.shape[1]
        tokens, drafted, kept, draft_calls = speculative_round(target, draft, tokens, *caches, 4)
        assert tokens.shape[1] == before + kept + 1 and drafted == draft_calls == 4
        assert caches[0].length == tokens.shape[1] - 1                 # every token but the newest, seen
        assert caches[1].length <= tokens.shape[1] - 1
    assert torch.equal(tokens, generate(target, prompt, tokens.shape[1] - 10))
    fresh = KVCache.for_model(target, 1, 30)                             # the rolled-back cache holds exactly
    target(tokens[:, :-1], cache=fresh)                                  # what a fresh prefill would
    torch.testing.assert_close(caches[0].keys[:, :, :, :fresh.length], fresh.keys[:, :, :, :fresh.length])


def test_the_speed_up_formula():
    assert expected_tokens_per_round(0.5, 4) == pytest.approx(1.9375)
    assert expected_tokens_per_round(1.0, 4) == 5 and expected_tokens_per_round(0.0, 4) == 1
    assert expected_speedup(0.5, 4, draft_cost=0.0) == pytest.approx(1.9375)
    assert expected_speedup(0.5, 4, draft_cost=0.25) == pytest.approx(1.9375 / 2)
    assert expected_speedup(0.8, 4, draft_cost=0.1, verify_cost=2.0) == pytest.approx(3.3616 / 2.4)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_round(1.5, 4)
