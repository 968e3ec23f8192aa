"""minilib.prune: exact masks, N:M patterns, CSR, and head/neuron removal equal to masking (minilib and HF BERT)."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn
from transformers import BertModel

from minilib import prune
from minilib.experiments import ch08_pruning
from minilib.support.bench import param_count
from minilib.transformer import Classifier, Encoder

N_LAYERS, N_HEADS, HEAD_DIM, D_FF = 3, 4, 8, 64


@pytest.fixture
def small_encoder(tiny_config):
    """Makes the pruning tests' encoder: N_LAYERS layers of N_HEADS heads of HEAD_DIM, D_FF neurons, eval mode."""
    def make() -> Encoder:
        torch.manual_seed(0)
        return Encoder(tiny_config(vocab_size=50, d_model=N_HEADS * HEAD_DIM, n_heads=N_HEADS, n_layers=N_LAYERS,
                                   d_ff=D_FF, max_len=16)).eval()

    return make


@pytest.fixture
def small_bert(tiny_bert):
    """Makes a Hugging Face BertModel of the same sizes as :func:`small_encoder`."""
    def make() -> BertModel:
        return tiny_bert(hidden_size=N_HEADS * HEAD_DIM, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                         intermediate_size=D_FF, max_position_embeddings=16, attn_implementation="eager")

    return make


def inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 50, (3, 9), generator=generator)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0  # padding must not matter either
    return input_ids, attention_mask


@torch.no_grad()
def hidden(model):
    return model(*inputs()).last_hidden_state


# ------------------------------------------------------------------------------------ unstructured

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_reach_the_requested_sparsity_exactly(sparsity, scope, small_encoder):
    model = small_encoder()
    masks = prune.magnitude_masks(model, sparsity, scope=scope)
    weights = prune.linear_weights(model)
    assert set(masks) == set(weights)
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    if scope == "global":
        assert pruned == round(sparsity * total)
    else:
        for name, mask in masks.items():
            assert int((~mask).sum()) == round(sparsity * mask.numel()), name


def test_masks_equal_pytorch_l1_pruning(small_encoder):
    """Reference: torch.nn.utils.prune (global_unstructured and l1_unstructured with L1 magnitude)."""
    ours_global = prune.magnitude_masks(small_encoder(), 0.6, scope="global")
    ours_layer = prune.magnitude_masks(small_encoder(), 0.6, scope="layer")
    reference = small_encoder()
    linears = {name: m for name, m in reference.named_modules() if isinstance(m, nn.Linear)}
    torch_prune.global_unstructured([(m, "weight") for m in linears.values()],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.6)
    for name, module in linears.items():
        assert torch.equal(ours_global[name], module.weight_mask.bool()), name
        layer_mask = torch_prune.L1Unstructured(amount=0.6).compute_mask(module.weight_orig, torch.ones_like(module.weight_orig))
        assert torch.equal(ours_layer[name], layer_mask.bool()), name


def test_global_and_layer_scopes_differ_on_layers_of_different_scale():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight.uniform_(-1, 1)
        model[1].weight.uniform_(2, 3)  # every weight of layer 1 is larger than layer 0's
    global_masks = prune.magnitude_masks(model, 0.5, scope="global")
    assert not global_masks["0"].any() and global_masks["1"].all()
    layer_masks = prune.magnitude_masks(model, 0.5, scope="layer")
    assert int(layer_masks["0"].sum()) == int(layer_masks["1"].sum()) == 32


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_outside_unit_interval_is_refused(bad, small_encoder):
    with pytest.raises(ValueError, match=r"\[0, 1\).*got"):
        prune.magnitude_masks(small_encoder(), bad)


def test_bad_sparsity_type_scope_and_model_are_refused(small_encoder):
    with pytest.raises(TypeError, match="number"):
        prune.magnitude_masks(small_encoder(), "0.5")
    with pytest.raises(ValueError, match="'global' or 'layer'.*'local'"):
        prune.magnitude_masks(small_encoder(), 0.5, scope="local")
    with pytest.raises(ValueError, match="no nn.Linear"):
        prune.magnitude_masks(nn.ReLU(), 0.5)


def test_apply_masks_zeroes_weights_freezes_them_in_training_and_can_be_undone(small_encoder):
    model = small_encoder()
    original = {name: w.detach().clone() for name, w in prune.linear_weights(model).items()}
    masks = prune.magnitude_masks(model, 0.75, scope="layer")
    prune.apply_masks(model, masks)
    assert prune.sparsity_report(model).overall == pytest.approx(0.75, abs=1e-3)
    hidden(model)  # the masked model runs
    model.train()
    model(*inputs()).last_hidden_state.sum().backward()
    for name, module in model.named_modules():
        if name in masks:
            grad = module.parametrizations.weight.original.grad
            assert grad[~masks[name]].abs().max() == 0 and grad[masks[name]].abs().max() > 0
    prune.remove_masks(model, keep_pruned=False)
    for name, weight in prune.linear_weights(model).items():
        assert torch.equal(weight, original[name])


def test_remove_masks_bakes_the_zeros_into_plain_weights(small_encoder):
    model = small_encoder()
    prune.apply_masks(model, prune.magnitude_masks(model, 0.5))
    masked = hidden(model)
    prune.remove_masks(model)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(hidden(model), masked)
    assert prune.sparsity_report(model).overall == pytest.approx(0.5, abs=1e-3)


def test_applying_new_masks_replaces_the_old_ones(small_encoder):
    model = small_encoder()
    prune.apply_masks(model, prune.magnitude_masks(model, 0.9))
    prune.apply_masks(model, {name: torch.ones_like(m) for name, m in prune.magnitude_masks(model, 0.0).items()})
    assert prune.sparsity_report(model).overall == 0.0


def test_apply_masks_refuses_wrong_names_and_shapes(small_encoder):
    model = small_encoder()
    with pytest.raises(ValueError, match="no nn.Linear named 'nope'"):
        prune.apply_masks(model, {"nope": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"bool tensor of shape \(32, 32\).*\(4, 4\)"):
        prune.apply_masks(model, {"layers.0.attn.q_proj": torch.ones(4, 4, dtype=torch.bool)})


def test_sparsity_report_counts_zeros_per_layer():
    model = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1, 0, 2], [3, 0, 0, 4]]))
        model[1].weight.fill_(1.0)
    report = prune.sparsity_report(model)
    assert [(row.name, row.zeros, row.size) for row in report.layers] == [("0", 4, 8), ("1", 0, 4)]
    assert report.overall == pytest.approx(4 / 12)
    assert "overall" in str(report) and "50.0%" in str(report)


def test_cubic_schedule_follows_zhu_and_gupta():
    assert prune.cubic_sparsity(0, 10, 0.9) == 0.0
    assert prune.cubic_sparsity(10, 10, 0.9) == pytest.approx(0.9)
    assert prune.cubic_sparsity(5, 10, 0.8, initial_sparsity=0.2) == pytest.approx(0.8 - 0.6 * 0.5 ** 3)
    steps = [prune.cubic_sparsity(t, 10, 0.9) for t in range(11)]
    increments = [b - a for a, b in zip(steps, steps[1:])]
    assert all(a > b for a, b in zip(increments, increments[1:]))  # fast first, slow at the end
    with pytest.raises(ValueError, match="step"):
        prune.cubic_sparsity(11, 10, 0.9)


def test_gradual_pruning_keeps_earlier_pruned_weights_pruned(small_encoder):
    model = small_encoder()
    seen = []

    def fine_tune(m):
        masks = {name: w != 0 for name, w in prune.linear_weights(m).items()}
        if seen:
            assert all((masks[name] <= seen[-1][name]).all() for name in masks)  # pruned stays pruned
        with torch.no_grad():  # a stand-in for training: move every weight
            for module in m.modules():
                if torch.nn.utils.parametrize.is_parametrized(module):
                    module.parametrizations.weight.original.add_(0.01)
        seen.append(masks)

    schedule = prune.gradual_prune(model, 0.8, n_steps=4, fine_tune=fine_tune)
    assert len(seen) == 4
    assert schedule == pytest.approx([prune.cubic_sparsity(t, 4, 0.8) for t in range(1, 5)])
    assert prune.sparsity_report(model).overall == pytest.approx(0.8, abs=1e-3)


def test_two_four_masks_keep_exactly_the_two_largest_of_every_four(small_encoder):
    torch.manual_seed(0)
    weight = torch.randn(6, 16)
    mask = prune.nm_mask(weight, 2, 4)
    groups = mask.view(6, 4, 4)
    assert (groups.sum(-1) == 2).all()
    smallest_kept = torch.where(groups, weight.abs().view(6, 4, 4), torch.inf).amin(-1)
    largest_dropped = torch.where(groups, -torch.inf, weight.abs().view(6, 4, 4)).amax(-1)
    assert (smallest_kept >= largest_dropped).all()
    model = small_encoder()
    for name, m in prune.nm_masks(model).items():
        assert (m.view(m.shape[0], -1, 4).sum(-1) == 2).all(), name


def test_nm_refuses_groups_that_do_not_divide_the_inputs():
    with pytest.raises(ValueError, match="divisible by 4.*in_features=6"):
        prune.nm_mask(torch.randn(3, 6))
    with pytest.raises(ValueError, match="0 < n <= m"):
        prune.nm_mask(torch.randn(4, 8), n=5, m=4)
    with pytest.raises(ValueError, match="layer 'lin'"):
        prune.nm_masks(nn.ModuleDict({"lin": nn.Linear(6, 3)}))


# ------------------------------------------------------------------------------------ CSR

def test_csr_matches_dense_and_its_size_is_values_plus_indices():
    torch.manual_seed(0)
    weight = torch.randn(20, 12)
    weight = weight * prune.magnitude_mask(weight, 0.75)
    csr = prune.to_csr(weight)
    assert torch.equal(csr.to_dense(), weight)
    x = torch.randn(12, 5)
    torch.testing.assert_close(csr @ x, weight @ x)
    nonzeros = 60
    assert prune.storage_bytes(csr) == nonzeros * 4 + nonzeros * 8 + 21 * 8  # float32 values, int64 indices
    assert prune.storage_bytes(weight) == 240 * 4
    with pytest.raises(ValueError, match="2-D"):
        prune.to_csr(torch.randn(2, 3, 4))


def test_sparse_vs_dense_measures_each_sparsity():
    points = ch08_pruning.sparse_vs_dense(sparsities=(0.5, 0.99), out_features=32, in_features=16, tokens=8, repeats=2)
    assert [p.sparsity for p in points] == [0.5, 0.99]
    assert all(p.dense_s > 0 and p.sparse_s > 0 for p in points)


def test_crossover_is_where_csr_starts_winning_for_good():
    points = [ch08_pruning.MatmulPoint(s, 1.0, t) for s, t in [(0.5, 3.0), (0.9, 0.9), (0.95, 1.1), (0.99, 0.5), (0.999, 0.2)]]
    assert ch08_pruning.crossover_sparsity(points) == 0.99
    assert ch08_pruning.crossover_sparsity(points[:1]) is None


# ------------------------------------------------------------------------------------ heads

HEADS = {0: [1, 3], 2: [0, 1, 2]}


def head_mask_for(removed, n_layers=N_LAYERS, n_heads=N_HEADS):
    mask = torch.ones(n_layers, n_heads)
    for layer, heads in removed.items():
        mask[layer, heads] = 0
    return mask


def test_pruning_heads_of_a_minilib_encoder_equals_masking_them(small_encoder):
    model = small_encoder()
    input_ids, attention_mask = inputs()
    with torch.no_grad():
        unmasked = hidden(model)
        masked = model(input_ids, attention_mask, head_mask=head_mask_for(HEADS)).last_hidden_state
    before = param_count(model)
    prune.prune_heads(model, HEADS)
    torch.testing.assert_close(hidden(model), masked, atol=1e-5, rtol=1e-5)
    assert (unmasked - masked).abs().max() > 1e-2  # the heads did matter
    assert [layer.attn.n_heads for layer in model.layers] == [2, 4, 1]
    # 5 heads × (3 projections of d_h rows with bias + d_h columns of the output projection)
    assert before - param_count(model) == 5 * HEAD_DIM * (3 * (32 + 1) + 32)
    attentions = model(*inputs(), output_attentions=True).attentions
    assert [a.shape[1] for a in attentions] == [2, 4, 1]


def test_gates_equal_the_core_head_mask(small_encoder):
    model = small_encoder()
    gates = list(head_mask_for(HEADS) * 0.5)
    with torch.no_grad(), prune.gates(model, heads=gates):
        gated = hidden(model)
    reference = model(*inputs(), head_mask=head_mask_for(HEADS) * 0.5).last_hidden_state
    torch.testing.assert_close(gated, reference.detach())
    torch.testing.assert_close(hidden(model), model(*inputs()).last_hidden_state.detach())  # hooks removed


def test_pruning_no_heads_changes_nothing(small_encoder):
    model = small_encoder()
    before, state = hidden(model), copy.deepcopy(model.state_dict())
    prune.prune_heads(model, {})
    prune.prune_heads(model, {1: []})
    assert torch.equal(hidden(model), before)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def zero_head_outputs(bert, removed):
    """Reference for HF: zero the output projection's columns that read the removed heads."""
    reference = copy.deepcopy(bert)
    with torch.no_grad():
        for layer, heads in removed.items():
            dense = reference.encoder.layer[layer].attention.output.dense
            for h in heads:
                dense.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
    return reference


def test_pruning_heads_of_a_hugging_face_bert_equals_masking_them(small_bert):
    bert = small_bert()
    expected = hidden(zero_head_outputs(bert, HEADS))
    prune.prune_heads(bert, HEADS)
    torch.testing.assert_close(hidden(bert), expected, atol=1e-5, rtol=1e-5)
    attention = bert.encoder.layer[2].attention.self
    assert (attention.num_attention_heads, attention.all_head_size) == (1, HEAD_DIM)
    assert attention.query.out_features == HEAD_DIM and bert.encoder.layer[2].attention.output.dense.in_features == HEAD_DIM


def test_heads_are_renumbered_after_pruning(small_encoder):
    model = small_encoder()
    prune.prune_heads(model, {0: [0]})
    heads_left = copy.deepcopy(model.layers[0].attn.v_proj.weight)
    prune.prune_heads(model, {0: [0]})  # now removes what was head 1
    assert torch.equal(model.layers[0].attn.v_proj.weight, heads_left[HEAD_DIM:])


def test_real_minilm_pruned_in_hf_and_in_minilib_agree():
    from minilib.deploy.hf import encoder_from_hf, load_minilm

    bert, tokenizer = load_minilm()
    batch = tokenizer(["not bad at all", "the plot was good but far too long"], padding=True, return_tensors="pt")
    removed = {0: [0, 5, 11], 3: list(range(6)), 5: [2]}
    ours = encoder_from_hf(bert)
    with torch.no_grad():
        mask = torch.ones(6, 12)
        for layer, heads in removed.items():
            mask[layer, heads] = 0
        masked = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], head_mask=mask).last_hidden_state
        prune.prune_heads(bert, removed)
        prune.prune_heads(ours, removed)
        from_hf = bert(**batch).last_hidden_state
        from_minilib = ours(**batch).last_hidden_state
    torch.testing.assert_close(from_hf, masked, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(from_minilib, masked, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", ["small_encoder", "small_bert"])
def test_bad_head_requests_are_refused(make, request):
    model = request.getfixturevalue(make)()
    with pytest.raises(ValueError, match=r"layer 1 has 4 heads \(indices 0…3\), got \[4\]"):
        prune.prune_heads(model, {1: [0, 4]})
    with pytest.raises(ValueError, match=r"layer index must be an int in \[0, 2\], got 3"):
        prune.prune_heads(model, {3: [0]})
    with pytest.raises(ValueError, match="refusing to prune all 4 heads of layer 2"):
        prune.prune_heads(model, {2: [0, 1, 2, 3]})
    with pytest.raises(TypeError, match="layer"):
        prune.prune_heads(model, [0, 1])
    assert hidden(model).shape == (3, 9, 32)  # nothing was half-pruned


def test_pruning_a_model_without_transformer_layers_is_refused():
    with pytest.raises(TypeError, match="no Transformer encoder layer in Sequential"):
        prune.prune_heads(nn.Sequential(nn.Linear(2, 2)), {0: [0]})


# ------------------------------------------------------------------------------------ FFN neurons

NEURONS = {0: list(range(0, D_FF, 2)), 1: [3, 7, 63]}


def zero_neuron_outputs(model, removed, down_of):
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer, neurons in removed.items():
            down_of(reference, layer).weight[:, neurons] = 0
    return reference


@pytest.mark.parametrize("make, down_of", [
    ("small_encoder", lambda m, i: m.layers[i].ffn.down),
    ("small_bert", lambda m, i: m.encoder.layer[i].output.dense),
])
def test_removing_ffn_neurons_equals_masking_them(make, down_of, request):
    model = request.getfixturevalue(make)()
    expected = hidden(zero_neuron_outputs(model, NEURONS, down_of))
    gates = [torch.ones(D_FF) for _ in range(N_LAYERS)]
    for layer, neurons in NEURONS.items():
        gates[layer][neurons] = 0
    with torch.no_grad(), prune.gates(model, neurons=gates):
        torch.testing.assert_close(hidden(model), expected)
    prune.prune_neurons(model, NEURONS)
    torch.testing.assert_close(hidden(model), expected, atol=1e-5, rtol=1e-5)
    assert [down_of(model, i).in_features for i in range(N_LAYERS)] == [32, 61, 64]
    with pytest.raises(ValueError, match="refusing to prune all 61 neurons of layer 1"):
        prune.prune_neurons(model, {1: range(61)})


# ------------------------------------------------------------------------------------ importance

def test_head_importance_is_the_mean_absolute_gradient_of_the_head_mask(small_encoder):
    torch.manual_seed(0)
    model = Classifier(small_encoder(), n_classes=2, dropout=0.0)
    input_ids, attention_mask = inputs()
    labels = torch.tensor([0, 1, 1])
    data = torch.utils.data.TensorDataset(input_ids, attention_mask, labels)
    scores = prune.head_importance(model, data, batch_size=2, normalize=False)
    expected = torch.zeros(N_LAYERS, N_HEADS)
    for start in (0, 2):  # reference: the core's head_mask argument, one batch at a time
        head_mask = torch.ones(N_LAYERS, N_HEADS, requires_grad=True)
        batch = slice(start, start + 2)
        logits = model(input_ids[batch], attention_mask[batch], head_mask=head_mask)
        F.cross_entropy(logits, labels[batch]).backward()
        expected += head_mask.grad.abs() / 2
    torch.testing.assert_close(scores, expected)
    normalized = prune.head_importance(model, data, batch_size=2)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(N_LAYERS))
    prune.prune_heads(model, {1: [0, 2]})
    after = prune.head_importance(model, data)
    assert after[1, 2:].isnan().all() and not after[1, :2].isnan().any() and not after[0].isnan().any()


def test_neuron_importance_has_one_score_per_neuron(small_encoder):
    model = Classifier(small_encoder(), n_classes=2, dropout=0.0)
    data = torch.utils.data.TensorDataset(*inputs(), torch.tensor([0, 1, 1]))
    scores = prune.neuron_importance(model, data)
    assert scores.shape == (N_LAYERS, D_FF) and (scores >= 0).all() and (scores > 0).any()
    with pytest.raises(ValueError, match="at least one batch"):
        prune.neuron_importance(model, data, max_batches=0)


def test_least_important_picks_the_global_lowest_but_never_a_whole_layer():
    importance = torch.tensor([[0.1, 0.2, 0.9], [0.05, 0.06, 0.07], [0.5, 0.6, float("nan")]])
    assert prune.least_important(importance, 0.25) == {1: [0, 1]}
    # layer 1 has the three lowest scores but must keep one head
    assert prune.least_important(importance, 0.5) == {0: [0, 1], 1: [0, 1]}
    assert prune.least_important(importance, 0.0) == {}
    with pytest.raises(ValueError, match="fraction must be in"):
        prune.least_important(importance, 1.0)


def test_head_columns_lists_each_kept_heads_features():
    assert prune.head_columns(torch.tensor([0, 2]), 2).tolist() == [0, 1, 4, 5]


def test_prune_least_important_removes_the_requested_fractions_of_the_lowest_scores(small_encoder):
    model = Classifier(small_encoder(), n_classes=2, dropout=0.0)
    data = torch.utils.data.TensorDataset(*inputs(), torch.tensor([0, 1, 1]))
    expected_heads = prune.least_important(prune.head_importance(model, data), 0.5)
    expected_neurons = prune.least_important(prune.neuron_importance(model, data), 0.25)
    removed = prune.prune_least_important(model, data, head_fraction=0.5, neuron_fraction=0.25)
    assert removed == prune.Removed(heads=expected_heads, neurons=expected_neurons)
    assert sum(layer.attn.n_heads for layer in model.encoder.layers) == N_LAYERS * N_HEADS // 2
    assert sum(layer.ffn.up.out_features for layer in model.encoder.layers) == N_LAYERS * D_FF * 3 // 4
    with pytest.raises(ValueError, match="head_fraction must be in"):
        prune.prune_least_important(model, data, head_fraction=1.0)


def test_magnitude_mask_is_exact_with_ties():
    weight = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 2.0, 0.5])
    assert prune.magnitude_mask(weight, 0.25).tolist() == [False, False, True, True, True, True, True, True]
    assert prune.magnitude_mask(weight, 0.75).tolist() == [False] * 4 + [False, True, True, False]
    assert prune.magnitude_mask(weight, 0.0).all()
