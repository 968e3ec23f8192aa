"""minilib.transformer: shapes, masks, causality and the pieces against PyTorch's own layers."""
import pytest
import torch

from minilib.attention import memory_efficient_attention
from minilib.transformer import (
    Classifier,
    Encoder,
    EncoderDecoder,
    LanguageModel,
    SinusoidalPositions,
    TransformerConfig,
    mean_pool,
)

CONFIG = dict(vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=40, dropout=0.0)


def tokens(batch=3, seq=11, vocab=50, seed=0):
    return torch.randint(1, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_encoder_shapes_and_outputs(norm_first, position):
    torch.manual_seed(0)
    encoder = Encoder(TransformerConfig(**CONFIG, norm_first=norm_first, position=position)).eval()
    out = encoder(tokens(), output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (3, 11, 32)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (3, 4, 11, 11)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    encoder = Encoder(TransformerConfig(**CONFIG)).eval()
    ids = tokens(batch=1, seq=7)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 7 + [0] * 4])
    short = encoder(ids).last_hidden_state
    long = encoder(padded, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(long[:, :7], short, atol=1e-5, rtol=1e-4)


def test_encoder_layer_equals_torch_transformer_encoder_layer():
    """Our post-norm layer is the same computation as nn.TransformerEncoderLayer (norm_first=False)."""
    torch.manual_seed(0)
    config = TransformerConfig(**CONFIG, layer_norm_eps=1e-5)
    ours = Encoder(config).layers[0].eval()
    theirs = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True).eval()
    with torch.no_grad():
        theirs.self_attn.in_proj_weight.copy_(torch.cat([ours.attn.q_proj.weight, ours.attn.k_proj.weight, ours.attn.v_proj.weight]))
        theirs.self_attn.in_proj_bias.copy_(torch.cat([ours.attn.q_proj.bias, ours.attn.k_proj.bias, ours.attn.v_proj.bias]))
        theirs.self_attn.out_proj.load_state_dict(ours.attn.out_proj.state_dict())
        theirs.linear1.load_state_dict(ours.ffn.up.state_dict())
        theirs.linear2.load_state_dict(ours.ffn.down.state_dict())
        theirs.norm1.load_state_dict(ours.attn_norm.state_dict())
        theirs.norm2.load_state_dict(ours.ffn_norm.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x)[0], theirs(x), atol=1e-5, rtol=1e-4)


def test_language_model_is_causal():
    torch.manual_seed(0)
    lm = LanguageModel(TransformerConfig(**CONFIG, norm_first=True)).eval()
    ids = tokens(batch=1, seq=10)
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] % 49) + 1               # change only the future
    torch.testing.assert_close(lm(ids)[:, :6], lm(changed)[:, :6])
    assert not torch.allclose(lm(ids)[:, 6:], lm(changed)[:, 6:])


def test_encoder_decoder_and_greedy_generation():
    torch.manual_seed(0)
    model = EncoderDecoder(TransformerConfig(**CONFIG), tgt_vocab_size=20).eval()
    src, tgt = tokens(batch=2, seq=8), tokens(batch=2, seq=5, vocab=20)
    assert model(src, tgt).shape == (2, 5, 20)
    # the decoder is causal: target position t does not depend on later targets
    later = tgt.clone()
    later[:, 3:] = (later[:, 3:] % 19) + 1
    torch.testing.assert_close(model(src, tgt)[:, :3], model(src, later)[:, :3])
    generated = model.generate(src, max_new_tokens=6, bos_id=1, eos_id=2)
    assert generated.shape[0] == 2 and generated.shape[1] <= 6


def test_classifier_pools_real_tokens():
    torch.manual_seed(0)
    classifier = Classifier(Encoder(TransformerConfig(**CONFIG)), n_classes=3).eval()
    assert classifier(tokens(), torch.ones(3, 11, dtype=torch.long)).shape == (3, 3)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_plugged_attention_reaches_every_layer():
    torch.manual_seed(0)
    config = TransformerConfig(**CONFIG)
    plain = Encoder(config).eval()
    plugged = Encoder(config, attention=memory_efficient_attention).eval()
    plugged.load_state_dict(plain.state_dict())
    assert all(layer.attn.attention is memory_efficient_attention for layer in plugged.layers)
    torch.testing.assert_close(plugged(tokens()).last_hidden_state, plain(tokens()).last_hidden_state, atol=1e-5, rtol=1e-4)


def test_sinusoidal_positions_formula():
    table = SinusoidalPositions(10, 6).table
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    torch.testing.assert_close(table[3, 3], torch.cos(torch.tensor(3.0 / 10000 ** (2 / 6))))


@pytest.mark.parametrize("change, words", [
    (dict(d_model=30), "divisible"), (dict(n_layers=0), "positive integer"),
    (dict(position="rotary"), "position must be one of"), (dict(activation="tanh"), "activation"),
    (dict(dropout=1.5), "dropout"),
])
def test_config_errors(change, words):
    with pytest.raises(ValueError, match=words):
        TransformerConfig(**{**CONFIG, **change})


def test_input_errors():
    encoder = Encoder(TransformerConfig(**CONFIG))
    with pytest.raises(TypeError, match="integer tensor"):
        encoder(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        encoder(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than max_len=40"):
        encoder(torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        encoder(torch.ones(1, 5, dtype=torch.long), attention_mask=torch.ones(5))
    with pytest.raises(ValueError, match="pooling"):
        Classifier(encoder, 2, pooling="max")


def test_encoder_decoder_generates_in_eval_mode_and_gives_the_model_its_mode_back():
    """Called on a training model, generate used to decode with dropout on: a different output at every call."""
    torch.manual_seed(0)
    model = EncoderDecoder(TransformerConfig(**{**CONFIG, "dropout": 0.5}), tgt_vocab_size=20)
    src = tokens(batch=2, seq=8)
    expected = model.eval().generate(src, max_new_tokens=6, bos_id=1, eos_id=2)
    model.train()
    for seed in (1, 2):
        torch.manual_seed(seed)
        assert torch.equal(model.generate(src, max_new_tokens=6, bos_id=1, eos_id=2), expected)
    assert model.training


def test_encoder_decoder_greedy_decoding_is_the_shared_loop():
    """The same tokens as choosing each argmax by hand, rows that produced eos padded with it."""
    torch.manual_seed(0)
    model = EncoderDecoder(TransformerConfig(**CONFIG), tgt_vocab_size=20).eval()
    src = tokens(batch=3, seq=8)
    out = torch.full((3, 1), 1)
    for _ in range(5):
        out = torch.cat([out, model(src, out)[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = int(out[0, 2])                                                 # row 0's second token stops it
    expected = out[:, 1:].clone()
    for row in expected:
        hits = (row == eos).nonzero()
        if len(hits):
            row[hits[0, 0]:] = eos
    generated = model.generate(src, max_new_tokens=5, bos_id=1, eos_id=eos)
    assert torch.equal(generated, expected[:, :generated.shape[1]])
    assert generated.shape[1] == 5 or (generated == eos).any(dim=1).all()   # stops early only when every row ended
