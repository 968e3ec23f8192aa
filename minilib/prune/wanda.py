"""Wanda, pruning by weights and activations (Sun et al., 2024): one pass, no update of the weights kept.

Magnitude pruning removes the smallest ``|W_ij|``. But a small weight that multiplies a large input matters more
than a larger one that multiplies a small input, and language models have a few input channels with very large
activations. Wanda scores each weight by its magnitude times the norm of its input channel over calibration text,
and compares weights only within the same output row (each output's weights compete for that output)::

    S_ij = |W_ij| · ‖X_j‖₂            (X_j: input feature j over all calibration tokens)

and removes, in every row, the fraction ``sparsity`` with the smallest scores (or, for N:M, the M − N smallest of
every group of M consecutive inputs). Nothing is re-fitted: it costs one forward pass per block.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from minilib.prune import _check_fraction, nm_mask
from minilib.quant.layerwise import compress_blocks, linear_layers, recording


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| · ‖X_j‖₂``: weight ``(out, in)``, input_norms ``(in,)`` → ``(out, in)``."""
    if input_norms.shape != (weight.shape[1],):
        raise ValueError(f"Wanda needs one activation norm per input of the weight {tuple(weight.shape)}: expected "
                         f"shape ({weight.shape[1]},), got {tuple(input_norms.shape)}")
    return weight.detach().abs() * input_norms


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask ``(out, in)`` removing, in every row, the ``round(sparsity · in)`` smallest scores."""
    n_pruned = round(_check_fraction(sparsity) * scores.shape[1])
    pruned = scores.argsort(dim=1, stable=True)[:, :n_pruned]
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, pruned, False)


def wanda_mask(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float = 0.5,
               n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """Wanda's keep-mask ``(out, in)``: per row (``sparsity``), or N:M (``n_m=(2, 4)`` keeps 2 of every 4 inputs)."""
    scores = wanda_scores(weight, input_norms)
    return nm_mask(scores, *n_m) if n_m is not None else row_mask(scores, sparsity)


def wanda(model: nn.Module, calibration: torch.Tensor, sparsity: float = 0.5, n_m: tuple[int, int] | None = None,
          batch_size: int = 8) -> nn.Module:
    """A copy of ``model`` whose blocks' linear weights are pruned by Wanda (zeros in the dense weights)."""
    if n_m is None:
        _check_fraction(sparsity)

    def prune(block: nn.Module, run) -> None:
        layers = linear_layers(block)
        with recording(layers, gram=False) as stats:
            run()
        for name, layer in layers.items():
            layer.weight.mul_(wanda_mask(layer.weight, stats[name].norms, sparsity, n_m))

    return compress_blocks(copy.deepcopy(model), calibration, prune, batch_size)
