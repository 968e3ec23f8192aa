"""Chapter 14's pruning of language models, Wanda and SparseGPT, against llmcompressor and magnitude pruning.

Real layers: chapter 13's shipped character-level decoder and the inputs its layers see on held-out text.
"""
import numpy as np
import pytest
import torch

from minilib.prune import magnitude_mask, nm_mask
from minilib.prune.sparsegpt import sparsegpt, sparsegpt_weight
from minilib.prune.wanda import wanda, wanda_mask, wanda_scores
from minilib.quant.awq import output_error

SPARSE_FORMATS = [None, (2, 4)]


def as_linear(weight):
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    return layer


def llmcompressor_n_m(n_m):
    """llmcompressor's (prune_n, prune_m): how many of every M to remove; (0, 0) for unstructured."""
    return (0, 0) if n_m is None else (n_m[1] - n_m[0], n_m[1])


# ------------------------------------------------------------------------------------------ Wanda
@pytest.mark.parametrize("name", ["q", "down"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_mask_is_exactly_that_of_the_reference_scores(chapter13_layers, name, sparsity):
    weight, x, stats = chapter13_layers[name]
    reference_scores = weight.abs() * x.double().norm(dim=0).float()                # |W_ij| · ‖X_j‖₂, from X itself
    n_pruned = round(sparsity * weight.shape[1])
    lowest = np.argsort(reference_scores.numpy(), axis=1, kind="stable")[:, :n_pruned]   # the lowest of each row
    expected = torch.ones_like(weight, dtype=torch.bool)
    expected[torch.arange(weight.shape[0])[:, None], torch.from_numpy(lowest)] = False
    assert torch.equal(wanda_mask(weight, stats.norms, sparsity), expected)
    assert (wanda_mask(weight, stats.norms, sparsity).sum(1) == weight.shape[1] - n_pruned).all()


@pytest.mark.parametrize("n_m", SPARSE_FORMATS)
def test_wanda_mask_equals_llmcompressors(chapter13_layers, n_m):
    from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import sparsify_weight

    weight, _, stats = chapter13_layers["down"]
    layer = as_linear(weight)
    theirs = sparsify_weight(layer, {layer: stats.sum_sq / 16}, 0.5, *llmcompressor_n_m(n_m)) != 0
    assert torch.equal(wanda_mask(weight, stats.norms, 0.5, n_m), theirs)


def test_wanda_two_four_keeps_the_two_best_scores_of_every_four(chapter13_layers):
    weight, _, stats = chapter13_layers["q"]
    mask = wanda_mask(weight, stats.norms, n_m=(2, 4))
    assert torch.equal(mask, nm_mask(wanda_scores(weight, stats.norms), 2, 4))
    assert (mask.view(256, -1, 4).sum(-1) == 2).all()


@pytest.mark.parametrize("name", ["q", "down"])
@pytest.mark.parametrize("n_m", SPARSE_FORMATS)
def test_wanda_and_sparsegpt_beat_magnitude_pruning_on_a_real_layer(chapter13_layers, name, n_m):
    weight, _, stats = chapter13_layers[name]
    magnitude = weight * (magnitude_mask(weight, 0.5) if n_m is None else nm_mask(weight, *n_m))
    wanda_weight = weight * wanda_mask(weight, stats.norms, 0.5, n_m)
    sparse = sparsegpt_weight(weight, stats.hessian, 0.5, n_m)
    errors = [output_error(weight, w, stats.xtx) for w in (magnitude, wanda_weight, sparse)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.5 * errors[0]                                                  # the update pays off


# ------------------------------------------------------------------------------------------ SparseGPT
@pytest.mark.parametrize("n_m", SPARSE_FORMATS)
def test_sparsegpt_equals_llmcompressors_on_a_real_layer(chapter13_layers, n_m):
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    weight, _, stats = chapter13_layers["q"]
    layer = as_linear(weight)
    _, theirs = sparsify_weight(layer, {layer: stats.hessian.clone()}, 0.5, *llmcompressor_n_m(n_m), 128, 0.01, False)
    ours = sparsegpt_weight(weight, stats.hessian, 0.5, n_m)
    assert ((ours == 0) == (theirs == 0)).float().mean() > 0.999
    assert output_error(weight, ours, stats.xtx) == pytest.approx(output_error(weight, theirs, stats.xtx), rel=1e-3)


def test_sparsegpt_prunes_exactly_what_is_asked(chapter13_layers):
    weight, _, stats = chapter13_layers["down"]
    assert (sparsegpt_weight(weight, stats.hessian, 0.6) == 0).float().mean().item() == pytest.approx(0.6, abs=1e-4)
    two_four = sparsegpt_weight(weight, stats.hessian, n_m=(2, 4))
    assert ((two_four != 0).view(256, -1, 4).sum(-1) == 2).all()


# ------------------------------------------------------------------------------------------ whole models
@pytest.mark.parametrize("prune", [wanda, sparsegpt])
def test_pruning_a_model_zeroes_half_of_every_block_layer_and_leaves_the_original_alone(prune, compressible_llama, calibration_ids):
    model = compressible_llama()
    pruned = prune(model, calibration_ids(8), 0.5)
    for (name, layer), original in zip(pruned.model.layers.named_modules(), model.model.layers.modules()):
        if isinstance(layer, torch.nn.Linear):
            assert (layer.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), name
            assert (original.weight != 0).all()
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("prune", [wanda, sparsegpt])
@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_zero_one_is_refused(prune, sparsity, compressible_llama, calibration_ids):
    with pytest.raises(ValueError, match=rf"sparsity must be in \[0, 1\) \(the fraction removed\), got {sparsity}"):
        prune(compressible_llama(), calibration_ids(), sparsity)


def test_activation_norms_of_another_width_are_refused(chapter13_layers):
    weight, _, _ = chapter13_layers["q"]
    with pytest.raises(ValueError, match=r"expected shape \(256,\), got \(1024,\)"):
        wanda_mask(weight, torch.ones(1024))
    with pytest.raises(ValueError, match=r"must be \(256, 256\).*got shape \(1024, 1024\)"):
        sparsegpt_weight(weight, torch.eye(1024))
