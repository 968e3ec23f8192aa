"""SparseGPT (Frantar & Alistarh, 2023): prune a layer and update the weights kept, so that its outputs barely move.

The same Optimal Brain Surgeon sweep as GPTQ (:func:`minilib.quant.gptq.obs_sweep`), with "round to the grid"
replaced by "set to zero if pruned": column by column, the pruned weights' error is pushed onto the columns not
done yet through the inverse Hessian of the layer's inputs, ``H = 2XᵀX``. Which weights to prune is chosen as the
sweep reaches them, by OBS's saliency (the output error that removing ``w_ij`` alone would cause)::

    ε_ij = w_ij² / [H_F⁻¹]_jj

- unstructured: at the start of each block of 128 columns, the fraction ``sparsity`` of that block's weights with the
  smallest ``ε`` (adaptive mask selection: the choice sees the updates made so far);
- N:M: in every group of M consecutive columns, the M − N smallest ``ε`` of each row, chosen when the sweep reaches it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from minilib.prune import _check_fraction
from minilib.quant.gptq import BLOCK, DAMP, obs_sweep
from minilib.quant.layerwise import compress_blocks, linear_layers, recording


def _check_n_m(n_m, in_features: int) -> tuple[int, int]:
    n, m = n_m
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m) or BLOCK % m or in_features % m:
        raise ValueError(f"N:M needs integers 0 < N <= M with M dividing {BLOCK} and the input dimension "
                         f"{in_features}, got {n_m!r}")
    return n, m


def sparsegpt_weight(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5,
                     n_m: tuple[int, int] | None = None, damp: float = DAMP, block_size: int = BLOCK) -> torch.Tensor:
    """SparseGPT for one weight ``(out, in)`` given ``H = 2XᵀX/N`` ``(in, in)``: the pruned and updated weight."""
    n_m = None if n_m is None else _check_n_m(n_m, weight.shape[1])
    sparsity = _check_fraction(sparsity) if n_m is None else 1 - n_m[0] / n_m[1]
    pruned = torch.zeros(weight.shape, dtype=torch.bool)                      # (out, in), True = pruned
    chosen = torch.zeros(weight.shape[1], dtype=torch.bool)                   # columns whose fate is decided

    def decide(pending: torch.Tensor, columns: torch.Tensor, u_diag: torch.Tensor) -> torch.Tensor:
        if not chosen[columns[0]]:
            width = pending.shape[1] if n_m is None else n_m[1]               # the rest of the block, or M columns
            window, where = pending[:, :width], columns[:width]
            saliency = window.square() / u_diag[:width].square()              # ε = w² / [H_F⁻¹]_jj
            if n_m is None:                                                   # the smallest ε of the window
                k = round(sparsity * saliency.numel())
                lowest = saliency.flatten().topk(k, largest=False).indices
                mask = torch.zeros(saliency.numel(), dtype=torch.bool).index_fill_(0, lowest, True)
                pruned[:, where] = mask.view_as(saliency)
            else:                                                             # the M − N smallest ε of each row
                lowest = saliency.topk(n_m[1] - n_m[0], dim=1, largest=False).indices
                pruned[:, where] = torch.zeros_like(saliency, dtype=torch.bool).scatter_(1, lowest, True)
            chosen[where] = True
        return pending[:, 0].masked_fill(pruned[:, columns[0]], 0.0)

    return obs_sweep(weight, hessian, decide, damp, block_size)


def sparsegpt(model: nn.Module, calibration: torch.Tensor, sparsity: float = 0.5, n_m: tuple[int, int] | None = None,
              damp: float = DAMP, batch_size: int = 8) -> nn.Module:
    """A copy of ``model`` whose blocks' linear layers are pruned and updated by SparseGPT (zeros in dense weights)."""
    if n_m is None:
        _check_fraction(sparsity)

    def prune(block: nn.Module, run) -> None:
        layers = linear_layers(block)
        with recording(layers) as stats:
            run()
        for name, layer in layers.items():
            layer.weight.copy_(sparsegpt_weight(layer.weight, stats[name].hessian, sparsity, n_m, damp))

    return compress_blocks(copy.deepcopy(model), calibration, prune, batch_size)
