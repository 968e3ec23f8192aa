"""minilib.llama and minilib.rotary against Hugging Face's Llama: RMSNorm, rotary embeddings, logits, generation.

Every model here is randomly initialised (nothing is downloaded): PyTorch's default initialisation (weights of scale
1/√fan_in) with token embeddings of scale 0.1, so that activations and logits are of order one, as in a trained model.
"""
import math

import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama

from minilib.deploy.hf_llama import from_hf, llama_config, to_hf
from minilib.generation import KVCache, generate, speculative_generate
from minilib.llama import DecoderConfig, LlamaDecoder, RMSNorm
from minilib.rotary import RotaryEmbedding, apply_rotary

VOCAB = 101


def _decoder(seed=0, **sizes):
    torch.manual_seed(seed)
    config = DecoderConfig(**{"vocab_size": VOCAB, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                              "d_ff": 160, "max_len": 96, **sizes})
    model = LlamaDecoder(config).eval()
    torch.nn.init.normal_(model.embed.weight, std=0.1)
    return model


def _varied_decoder(seed, **sizes):
    """Untied, with unit-scale embeddings and output head: a random model whose greedy tokens vary."""
    model = _decoder(seed, tie_embeddings=False, max_len=128, **sizes)
    for weight in (model.embed.weight, model.lm_head.weight):
        torch.nn.init.normal_(weight, std=1.0)
    return model


def _tokens(batch, length, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the pieces
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rms_norm_equals_pytorch_and_hugging_face(dtype):
    x = (torch.randn(3, 7, 384) * 3 + 1).to(dtype)
    ours = RMSNorm(384, eps=1e-5)
    torch.nn.init.normal_(ours.weight, 1.0, 0.3)
    hf = modeling_llama.LlamaRMSNorm(384, eps=1e-5)
    hf.weight.data.copy_(ours.weight.data)
    with torch.no_grad():
        assert torch.equal(ours.to(dtype)(x), hf.to(dtype)(x))                      # the same algorithm, bit for bit
        if dtype == torch.float32:
            reference = torch.nn.RMSNorm(384, eps=1e-5)
            reference.weight.copy_(ours.weight)
            torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=1e-6)
    rms = (ours.float()(x.float()) / ours.weight.float()).pow(2).mean(-1).sqrt()     # the output has RMS ≈ 1
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-2, rtol=0)


@pytest.mark.parametrize("head_dim, base, start", [(64, 10000.0, 0), (64, 500000.0, 1000), (32, 10000.0, 37)])
def test_rotary_embeddings_equal_hugging_face(head_dim, base, start):
    """cos/sin tables and the rotated queries and keys, at positions offset as a KV cache offsets them."""
    config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                      max_position_embeddings=2048, rope_parameters={"rope_type": "default",
                                                                                     "rope_theta": base})
    positions = torch.arange(start, start + 23)
    q, k = torch.randn(2, 4, 23, head_dim), torch.randn(2, 2, 23, head_dim)
    cos, sin = modeling_llama.LlamaRotaryEmbedding(config)(q, positions[None])      # (1, 23, head_dim)
    ours = RotaryEmbedding(head_dim, base)(positions)                               # (23, head_dim)
    torch.testing.assert_close(ours, (cos[0], sin[0]), atol=0, rtol=0)
    expected = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close((apply_rotary(q, *ours), apply_rotary(k, *ours)), expected, atol=0, rtol=0)


def test_rotary_scores_depend_only_on_the_distance():
    """q_m · k_n after rotation is a function of m − n: shifting both positions leaves the score unchanged."""
    rotary = RotaryEmbedding(64)
    q, k = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)

    def score(m, n):
        cos, sin = (t.double() for t in rotary(torch.tensor([m, n])))
        return (apply_rotary(q, cos[0], sin[0]) @ apply_rotary(k, cos[1], sin[1])).item()

    assert score(5, 2) == pytest.approx(score(105, 102), rel=1e-5)       # angles in float32: 1e-6 relative
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-2)
    cos, sin = rotary(torch.tensor([7]))                                            # a rotation keeps lengths
    assert apply_rotary(q.float(), cos[0], sin[0]).norm() == pytest.approx(q.norm().item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ the model = HF's
@pytest.mark.parametrize("sizes, length", [
    (dict(n_kv_heads=1), 1),                                       # multi-query
    (dict(n_kv_heads=2), 17),                                      # grouped-query
    (dict(n_kv_heads=4), 33),                                      # multi-head
    (dict(d_model=96, n_heads=6, n_kv_heads=3, head_dim=32, tie_embeddings=False, rope_base=500000.0), 95),
])
def test_logits_equal_llama_for_causal_lm(sizes, length):
    ours = _decoder(**sizes)
    hf = to_hf(ours)
    assert isinstance(hf, transformers.LlamaForCausalLM) and hf.config.num_key_value_heads == ours.config.n_kv_heads
    tokens = _tokens(3, length)
    with torch.no_grad():
        logits = ours(tokens)
        assert logits.abs().max() > 1                               # order-one logits, not a near-zero model
        torch.testing.assert_close(logits, hf(tokens).logits, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_padded_batch_gives_hugging_faces_logits_at_every_real_token(side):
    ours = _decoder(3)
    hf = to_hf(ours)
    tokens = _tokens(3, 21)
    mask = torch.ones_like(tokens)
    for row, n_real in ((1, 13), (2, 4)):
        if side == "right":
            mask[row, n_real:] = 0
        else:
            mask[row, :21 - n_real] = 0
    with torch.no_grad():
        logits, expected = ours(tokens, attention_mask=mask), hf(tokens, attention_mask=mask).logits
        real = mask.bool()
        torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
        if side == "right":                                          # padding after a row changes nothing before it
            torch.testing.assert_close(logits[1, :13], ours(tokens[1:2, :13])[0], atol=1e-5, rtol=0)


def test_from_hf_carries_a_hugging_face_model_and_round_trips():
    torch.manual_seed(4)
    hf = transformers.LlamaForCausalLM(llama_config(_decoder().config)).eval()     # Hugging Face's own initialisation
    ours = from_hf(hf)
    tokens = _tokens(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-5, rtol=0)
        again = to_hf(ours)
    assert all(torch.equal(a, b) for a, b in zip(hf.state_dict().values(), again.state_dict().values()))


# ------------------------------------------------------------------------------------------------ generation
def test_greedy_generation_with_the_cache_equals_hugging_face_generate():
    ours = _varied_decoder(5)
    hf = to_hf(ours)
    prompt = _tokens(2, 11)
    tokens = generate(ours, prompt, 40)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=40,
                           min_new_tokens=40)
    assert torch.equal(tokens, expected)
    assert torch.equal(tokens, generate(ours, prompt, 40, use_cache=False))
    assert min(len(set(row[11:].tolist())) for row in tokens) > 10  # varied tokens, not one repeated


def test_logits_to_keep_runs_the_head_on_the_last_positions():
    model, tokens = _decoder(9), _tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, logits_to_keep=3), model(tokens)[:, -3:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="logits_to_keep must be an int ≥ 0"):
        model(tokens, logits_to_keep=-1)


def test_cached_chunks_give_the_logits_of_one_pass():
    """The new tokens' positions continue from the cache: prefill, then uneven chunks, equal one forward pass."""
    model = _decoder(6)
    tokens = _tokens(2, 40)
    cache = KVCache.for_model(model, batch=2, max_len=40)
    with torch.no_grad():
        chunks = [model(part, cache=cache) for part in tokens.split([9, 1, 13, 1, 16], dim=1)]
        torch.testing.assert_close(torch.cat(chunks, dim=1), model(tokens), atol=1e-5, rtol=1e-5)
    assert cache.keys.shape == (2, 2, 2, 40, 16) and cache.length == 40          # (layers, B, kv heads, T, hs)


def test_speculative_decoding_with_a_smaller_llama_draft_gives_the_targets_tokens():
    target = _varied_decoder(7)
    draft = _varied_decoder(8, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64)
    prompt = _tokens(1, 9)
    result = speculative_generate(target, draft, prompt, 30, k=3)
    assert torch.equal(result.tokens, generate(target, prompt, 30))
    assert result.drafted > 0 and result.target_calls + result.accepted == 30


# ------------------------------------------------------------------------------------------------ bad input
def test_from_hf_refuses_what_is_not_llama_style():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"model_type 'llama'.*got model_type 'gpt2'"):
        from_hf(gpt2)
    config = llama_config(_decoder().config)
    config.attention_bias = True                                     # Qwen2-like biases: not what LlamaDecoder computes
    with pytest.raises(ValueError, match=r"attention_bias=False.*attention_bias=True"):
        from_hf(transformers.LlamaForCausalLM(config))
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="LlamaDecoder"):
        to_hf(torch.nn.Linear(2, 2))


def test_a_prompt_longer_than_the_context_is_refused():
    model = _decoder(max_len=16)
    with pytest.raises(ValueError, match=r"max_len=16 positions, got 17"):
        model(_tokens(1, 17))
    with pytest.raises(ValueError, match=r"12 tokens \+ 5 new tokens = 17 positions; the model's context is 16"):
        generate(model, _tokens(1, 12), 5)
    cache = KVCache.for_model(model, batch=1)
    model(_tokens(1, 10), cache=cache)
    with pytest.raises(ValueError, match=r"positions 10 … 16 do not fit"):
        model(_tokens(1, 7), cache=cache)


@pytest.mark.parametrize("sizes, message", [
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads must divide n_heads=4, got 3"),
    (dict(d_model=60, n_heads=8, n_kv_heads=8), r"d_model \(60\) must be divisible by n_heads \(8\)"),
    (dict(head_dim=15), "head_dim must be a positive even int"),
    (dict(max_len=0), "max_len must be a positive integer, got 0"),
])
def test_config_errors_say_what_was_expected(sizes, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(vocab_size=VOCAB, **{"d_model": 64, "n_heads": 4, "n_kv_heads": 2, **sizes})


def test_parameter_count_of_the_chapters_model():
    """6 layers of width 384, 6 query / 2 key-value heads of 64, SwiGLU 1024, tied vocabulary of 8192."""
    config = DecoderConfig(vocab_size=8192)
    per_layer = 384 * 384 * 2 + 384 * 128 * 2 + 3 * 384 * 1024 + 2 * 384
    expected = 6 * per_layer + 8192 * 384 + 384
    model = LlamaDecoder(config)
    assert sum(p.numel() for p in model.parameters()) == expected == 12_587_904
    assert math.isclose(expected / 1e6, 12.59, abs_tol=0.01)
