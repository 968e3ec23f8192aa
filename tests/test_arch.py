"""minilib.arch: every variant's shapes, exact parameter and FLOP counts computed by hand."""
import pytest
import torch
from torch.utils.data import TensorDataset

from minilib.arch import (
    GroupedLinear,
    build,
    channel_shuffle,
    drop_layers,
    shared_layers,
    task_token_ids,
    trim_vocabulary,
)
from minilib.support.bench import count_flops, param_count
from minilib.transformer import Classifier, Encoder, TransformerConfig

V, D, H, L, F, N, SEQ = 100, 64, 4, 2, 256, 32, 10
CONFIG = TransformerConfig(vocab_size=V, d_model=D, n_heads=H, n_layers=L, d_ff=F, max_len=N, dropout=0.0)


def layer_params(d, d_ff):
    """Q, K, V, O (d·d + d each), FFN (d·d_ff + d_ff + d_ff·d + d), two LayerNorms (2d each)."""
    return 4 * (d * d + d) + (d * d_ff + d_ff + d_ff * d + d) + 2 * 2 * d


def embedding_params(d, vocab=V):
    return vocab * d + N * d + 2 * d                       # tokens, positions, LayerNorm


def layer_flops(d, d_ff, heads, seq=SEQ):
    """2·m·n·k per matmul: four d×d projections, QKᵀ and P·V, two FFN matrices."""
    return 4 * 2 * seq * d * d + 2 * 2 * seq * seq * d + 2 * 2 * seq * d * d_ff


CASES = {
    # name: (options, parameters, FLOPs) — counted by hand from the formulas above
    "fewer layers": (dict(n_layers=1), embedding_params(D) + layer_params(D, F), layer_flops(D, F, H)),
    "narrower": (dict(d_model=32), embedding_params(32) + L * layer_params(32, 128), L * layer_flops(32, 128, H)),
    "bottleneck": (dict(d_bottleneck=32),
                   embedding_params(D) + L * (D * 32 + 32 + layer_params(32, 128) + 32 * D + D + 2 * D),
                   L * (2 * 2 * SEQ * D * 32 + layer_flops(32, 128, H))),
    "grouped + shuffle": (dict(groups=4),
                          embedding_params(D) + L * (layer_params(D, F) - 2 * D * F + 2 * D * F // 4),
                          L * (layer_flops(D, F, H) - 2 * 2 * SEQ * D * F * 3 // 4)),
    "shared layers": (dict(embedding_dim=16), V * 16 + 16 * D + N * D + 2 * D + layer_params(D, F),
                      2 * SEQ * 16 * D + L * layer_flops(D, F, H)),
}


@pytest.mark.parametrize("name", CASES)
def test_counts_and_shapes(name):
    torch.manual_seed(0)
    options, params, flops = CASES[name]
    encoder = build(name, CONFIG, **options)
    assert param_count(encoder) == params
    assert count_flops(encoder, SEQ) == flops
    out = encoder(torch.randint(1, V, (3, SEQ)), attention_mask=torch.ones(3, SEQ)).last_hidden_state
    assert out.shape == (3, SEQ, encoder.config.d_model)
    logits = Classifier(encoder, 2)(torch.randint(1, V, (3, SEQ)))
    assert logits.shape == (3, 2)
    logits.sum().backward()                                # every variant trains


def test_the_base_encoder_counts():
    encoder = Encoder(CONFIG)
    assert param_count(encoder) == embedding_params(D) + L * layer_params(D, F)
    assert count_flops(encoder, SEQ) == L * layer_flops(D, F, H)


def test_shared_layers_really_share_storage():
    encoder = shared_layers(CONFIG)
    first, second = encoder.layers
    assert first is second
    assert first.attn.q_proj.weight.data_ptr() == second.attn.q_proj.weight.data_ptr()
    assert param_count(encoder) == embedding_params(D) + layer_params(D, F)


def test_grouped_linear_is_block_diagonal_linear():
    torch.manual_seed(0)
    grouped = GroupedLinear(8, 12, groups=2)
    dense = torch.zeros(12, 8)                             # the same map as one dense block-diagonal matrix
    dense[:6, :4] = grouped.weight[0].T
    dense[6:, 4:] = grouped.weight[1].T
    x = torch.randn(5, 8)
    torch.testing.assert_close(grouped(x), torch.nn.functional.linear(x, dense, grouped.bias))


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6)                       # groups [0 1 2] [3 4 5]
    assert channel_shuffle(x, 2).tolist() == [[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]]


def test_drop_layers_runs_the_kept_layers_only():
    torch.manual_seed(0)
    encoder = Encoder(CONFIG).eval()
    ids = torch.randint(1, V, (2, SEQ))
    shallow = drop_layers(encoder, [0])
    expected = encoder.layers[0](encoder.embeddings(ids))[0]
    torch.testing.assert_close(shallow(ids).last_hidden_state, expected)
    assert shallow.layers[0] is encoder.layers[0] and len(shallow.layers) == 1


@pytest.mark.parametrize("call, words", [
    (lambda: build("tiny", CONFIG), "unknown architecture"),
    (lambda: GroupedLinear(10, 12, groups=4), "must divide"),
    (lambda: drop_layers(Encoder(CONFIG), [5]), "distinct layer indices"),
    (lambda: drop_layers(Encoder(CONFIG), []), "distinct layer indices"),
    (lambda: count_flops(Encoder(CONFIG), 0), "positive"),
])
def test_bad_input(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_trimmed_vocabulary_keeps_outputs_and_drops_rows():
    torch.manual_seed(0)
    for encoder in (Encoder(CONFIG), build("shared layers", CONFIG, embedding_dim=16)):
        ids = torch.tensor([[1, 5, 7, 5], [7, 7, 1, 0]])
        before = encoder.eval()(ids).last_hidden_state
        rows_before = param_count(encoder)
        trim_vocabulary(encoder, task_token_ids(TensorDataset(ids)), unk_id=3)
        assert torch.allclose(encoder(ids).last_hidden_state, before, atol=1e-6)
        width = 16 if encoder.layers[0] is encoder.layers[1] else D
        assert param_count(encoder) == rows_before - (V - 5) * width          # kept 0, 1, 3 (unk), 5, 7
        unknown = encoder(torch.tensor([[1, 42]])).last_hidden_state          # 42 was not kept: reads [UNK]
        assert torch.allclose(unknown, encoder(torch.tensor([[1, 3]])).last_hidden_state)
    with pytest.raises(ValueError, match="token ids must be in"):
        trim_vocabulary(Encoder(CONFIG), torch.tensor([1, V + 5]), unk_id=3)
    with pytest.raises(ValueError, match="at least one TensorDataset"):
        task_token_ids()
