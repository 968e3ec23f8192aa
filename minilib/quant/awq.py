"""AWQ, activation-aware weight quantization (Lin et al., 2024): protect the weights that meet large inputs.

A weight's error matters in proportion to the input it multiplies: an input channel whose activations are large
(a *salient* channel, often under 1% of them) turns a small rounding error into a large output error. AWQ scales
those channels' weights up before rounding, so that they land on a relatively finer grid, and the inputs down by
the same factor, so that the product is unchanged::

    y = (X / s) · (W · s)ᵀ,        Ŵ = Q(W · diag(s)) · diag(s)⁻¹,     s = mean|X|^α  (per input channel)

``α`` is searched on a grid of 20 values in ``[0, 1]`` (α = 0 is round-to-nearest) to minimise the layers' output
error on calibration inputs, ``‖(Ŵ − W) Xᵀ‖²``, computed from ``XᵀX`` without keeping ``X``; ``s`` is normalised by
``√(max s · min s)``. The ``1 / s`` is folded into what produces the input (a RMSNorm's gain, or the up projection
feeding the down projection), so nothing is added to the model; then the weights are rounded group-wise to 4 bits,
with exactly round-to-nearest's grids and storage.

In a Llama block, the pairs that can be scaled this way (as llmcompressor's mappings): the attention norm → q, k,
v; the feed-forward norm → gate, up; up → down; and v → o when every query head has its own value head (with
grouped-query attention one value channel feeds several heads' columns of o, so no per-channel scale folds into v).
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from minilib.quant.groupwise import GroupQuantLinear, check_quantizable, group_grid
from minilib.quant.layerwise import (
    BlockParts,
    InputStatistics,
    block_linears,
    block_parts,
    compress_blocks,
    linear_layers,
    recording,
    scale_channels,
)

N_GRID = 20


def output_error(weight: torch.Tensor, approximation: torch.Tensor, xtx: torch.Tensor) -> float:
    """‖(Ŵ − W) Xᵀ‖² = Σ_rows (ŵ − w) XᵀX (ŵ − w)ᵀ, from ``xtx = XᵀX`` ``(in, in)``: the layer's squared output error."""
    delta = approximation.detach() - weight.detach()
    return float(((delta @ xtx) * delta).sum())


class ScaleSearch(NamedTuple):
    """AWQ's search for one input: the chosen ``scale`` ``(in,)`` and ``alpha``, and the output error at every α."""

    scale: torch.Tensor
    alpha: float
    errors: dict[float, float]


def awq_scale(weights: list[torch.Tensor], stats: InputStatistics, bits: int = 4, group_size: int | None = 128,
              n_grid: int = N_GRID) -> ScaleSearch:
    """The per-input-channel scale ``s`` and the ``α`` that minimise the output error of ``weights``.

    weights: the layers ``(out_i, in)`` that read the same input, all scaled by the same ``s``; stats: that input's
    :class:`InputStatistics` (with ``XᵀX``).
    """
    for weight in weights:
        if weight.shape[1] != stats.features:
            raise ValueError(f"calibration activations of width {stats.features} do not fit a weight of shape "
                             f"{tuple(weight.shape)}: expected width {weight.shape[1]}")
    weights = [w.detach().float() for w in weights]
    scales, errors = {}, {}
    for alpha in torch.linspace(0, 1, n_grid).tolist():
        s = stats.mean_abs.pow(alpha).clamp_min(1e-4)                        # s = mean|X|^α
        scales[alpha] = s = s / (s.max() * s.min()).sqrt()
        errors[alpha] = sum(output_error(w, group_grid(w * s, bits, group_size).round(w * s) / s, stats.xtx)
                            for w in weights)                                # Ŵ = Q(W·s) / s
    alpha = min(errors, key=errors.get)
    return ScaleSearch(scales[alpha], alpha, errors)


def scaling_pairs(parts: BlockParts) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """(what produces an input, the layers that read it) for each input AWQ scales in a Llama block."""
    pairs = [(parts.attn_norm, [parts.q, parts.k, parts.v])]
    if parts.v.out_features == parts.o.in_features:                          # no grouped-query sharing
        pairs.append((parts.v, [parts.o]))
    return pairs + [(parts.ffn_norm, [parts.gate, parts.up]), (parts.up, [parts.down])]


def awq(model: nn.Module, calibration: torch.Tensor, bits: int = 4, group_size: int | None = 128,
        n_grid: int = N_GRID, batch_size: int = 8) -> nn.Module:
    """A copy of ``model`` with AWQ's scales folded in and its blocks' linear layers rounded to ``bits``-bit groups.

    calibration: token ids ``(sequences, length)``; blocks are done one by one
    (:func:`~minilib.quant.layerwise.compress_blocks`), each from one pass of its calibration inputs.
    """
    check_quantizable(block_linears(model), bits, group_size)

    def compress(block: nn.Module, run) -> None:
        layers = linear_layers(block)
        with recording(layers) as stats:
            run()
        name_of = {layer: name for name, layer in layers.items()}
        for source, targets in scaling_pairs(block_parts(block)):
            search = awq_scale([t.weight for t in targets], stats[name_of[targets[0]]], bits, group_size, n_grid)
            scale_channels(source, targets, search.scale)
        for name, layer in layers.items():
            block.set_submodule(name, GroupQuantLinear.from_linear(layer, bits, group_size))

    return compress_blocks(copy.deepcopy(model), calibration, compress, batch_size)
