"""GPTQ (Frantar et al., 2023): quantize a layer column by column, pushing each rounding error onto the columns
not quantized yet, through the inverse Hessian of the layer's inputs.

On calibration inputs ``X`` ``(tokens, in)``, a row ``w`` of a linear layer changed to ``ŵ`` changes its outputs by
``‖(w − ŵ) Xᵀ‖² = ½ (w − ŵ) H (w − ŵ)ᵀ`` with ``H = 2 XᵀX`` (the same ``H`` for every row). Rounding one weight
``w_q`` and letting the weights ``F`` not yet rounded absorb the error is the Optimal Brain Surgeon step::

    δ_F = − (w_q − quant(w_q)) / [H_F⁻¹]_qq · (H_F⁻¹)_{q,F}                      (GPTQ, eq. 2)
    H_{F−q}⁻¹ = (H_F⁻¹ − (H_F⁻¹)_{:,q} (H_F⁻¹)_{q,:} / [H_F⁻¹]_qq)_{−q}          (eq. 3: q leaves F)

GPTQ makes it fast and stable with three changes:

1. every row visits the columns in the same order, so a whole column is rounded at once;
2. the rows ``(H_F⁻¹)_{q,F} / √[H_F⁻¹]_qq`` that the sweep needs, one per step of eq. 3, are the rows of the
   upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``): one factorization replaces every update of eq. 3, and
   damping (``λ = 1%`` of the mean of ``diag H`` added to the diagonal) keeps it well conditioned;
3. lazy batches: inside a block of 128 columns the updates are immediate, the columns after it get the block's
   updates at once, as one matrix product.

:func:`obs_sweep` is that sweep with the choice of each column's new values left open: GPTQ rounds them to the grid
(:func:`gptq_weight`), SparseGPT (:mod:`minilib.prune.sparsegpt`) sets the pruned ones to zero.

The grids are those of round-to-nearest (:mod:`minilib.quant.groupwise`), fixed from the original weights ("static
groups", as llmcompressor and vLLM's kernels store them): GPTQ only chooses better levels on the same grids, so it
costs exactly the bytes of round-to-nearest. ``act_order=True`` visits the columns in decreasing order of
``diag H`` (the inputs with the most energy first, while many columns remain to absorb their errors).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from minilib.quant.groupwise import GroupGrid, GroupQuantLinear, check_quantizable, group_grid
from minilib.quant.layerwise import block_linears, compress_blocks, linear_layers, recording
from minilib.support.threads import threads

DAMP, BLOCK = 0.01, 128


def check_hessian(weight: torch.Tensor, hessian: torch.Tensor) -> None:
    """A ValueError unless ``hessian`` is ``(in, in)`` for ``weight`` ``(out, in)``: inputs of the layer's width."""
    in_features = weight.shape[1]
    if hessian.shape != (in_features, in_features):
        raise ValueError(f"the Hessian of a weight of shape {tuple(weight.shape)} must be ({in_features}, {in_features}), "
                         f"built from calibration activations of width {in_features}; got shape {tuple(hessian.shape)}")


def inverse_hessian_cholesky(hessian: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """``U`` upper-triangular ``(in, in)`` with ``(H + λI)⁻¹ = UᵀU``, ``λ = damp · mean(diag H)``."""
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1) (a fraction of the mean of diag H), got {damp}")
    H = hessian.float().clone()
    H.diagonal().add_(damp * H.diagonal().mean())                             # H + λI
    H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))                  # (H + λI)⁻¹ from H = LLᵀ
    return torch.linalg.cholesky(H_inv, upper=True)                            # H⁻¹ = UᵀU


Decide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def obs_sweep(weight: torch.Tensor, hessian: torch.Tensor, decide: Decide, damp: float = DAMP, block_size: int = BLOCK,
              order: torch.Tensor | None = None) -> torch.Tensor:
    """The column sweep of GPTQ and SparseGPT: returns the new weight ``(out, in)`` float32.

    Columns are visited in ``order`` (default: left to right), in blocks of ``block_size``. For each column,
    ``decide(pending, columns, u_diag)`` gives its new values ``(out,)``: ``pending`` ``(out, k)`` holds the current
    weights of the columns of this block not done yet (the one to decide first), ``columns`` ``(k,)`` their indices in
    ``weight`` and ``u_diag`` ``(k,)`` their ``U_qq`` (``U_qq² = [H_F⁻¹]_qq``, OBS's denominator). Its error then moves
    onto the pending columns (eq. 2).
    """
    check_hessian(weight, hessian)
    W, H = weight.detach().float().clone(), hessian.detach().float().clone()
    dead = H.diagonal() == 0                                                  # inputs that are always 0
    H[dead, dead], W[:, dead] = 1, 0
    order = torch.arange(W.shape[1]) if order is None else order
    W, H = W[:, order], H[order][:, order]
    U = inverse_hessian_cholesky(H, damp)
    with threads(1):            # thousands of small updates: a second thread costs more than it gives (20× on a busy CPU)
        _sweep(W, U, order, decide, block_size)
    return W[:, torch.argsort(order)]


def _sweep(W: torch.Tensor, U: torch.Tensor, order: torch.Tensor, decide: Decide, block_size: int) -> None:
    """obs_sweep's loop, updating ``W`` (its columns already in ``order``) in place."""
    for start in range(0, W.shape[1], block_size):
        end = min(start + block_size, W.shape[1])
        block, errors = W[:, start:end], torch.zeros(W.shape[0], end - start)  # block: a view into W
        for i, q in enumerate(range(start, end)):
            new = decide(block[:, i:], order[q:end], U.diagonal()[q:end])
            errors[:, i] = (block[:, i] - new) / U[q, q]                      # (w_q − quant(w_q)) / √[H_F⁻¹]_qq
            block[:, i:] -= errors[:, i:i + 1] * U[q, q:end]                  # eq. 2 inside the block
            block[:, i] = new
        W[:, end:] -= errors @ U[start:end, end:]                             # eq. 2 for the rest, once per block


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                act_order: bool = False, damp: float = DAMP, block_size: int = BLOCK) -> tuple[torch.Tensor, GroupGrid]:
    """GPTQ for one weight ``(out, in)`` given ``H = 2XᵀX/N`` ``(in, in)``: uint8 codes ``(out, in)`` and their grids."""
    grid = group_grid(weight, bits, group_size)                               # round-to-nearest's grids
    order = torch.argsort(hessian.diagonal(), descending=True) if act_order else None
    rounded = obs_sweep(weight, hessian, lambda pending, columns, _: grid.round(pending[:, 0], columns[0]),
                        damp, block_size, order)
    return grid.quantize(rounded), grid


def gptq(model: nn.Module, calibration: torch.Tensor, bits: int = 4, group_size: int | None = 128,
         act_order: bool = False, damp: float = DAMP, batch_size: int = 8) -> nn.Module:
    """A copy of ``model`` whose blocks' linear layers are GPTQ-quantized :class:`GroupQuantLinear` layers.

    calibration: token ids ``(sequences, length)``; blocks are done one by one (:func:`compress_blocks`).
    """
    check_quantizable(block_linears(model), bits, group_size)

    def compress(block: nn.Module, run) -> None:
        layers = linear_layers(block)
        with recording(layers) as stats:
            run()
        for name, layer in layers.items():
            codes, grid = gptq_weight(layer.weight, stats[name].hessian, bits, group_size, act_order, damp)
            block.set_submodule(name, GroupQuantLinear(codes, grid, layer.bias))

    return compress_blocks(copy.deepcopy(model), calibration, compress, batch_size)
