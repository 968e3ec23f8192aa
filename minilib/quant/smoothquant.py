"""SmoothQuant (Xiao et al., 2023): move the activations' outliers into the weights, then run W8A8 on int8 kernels.

Weights quantize easily to 8 bits, activations do not: a few input channels of a language model's layers carry
values 10–100× larger than the rest (the *outlier features* of LLM.int8, Dettmers et al. 2022), and one per-token
int8 scale sized for them rounds every other channel of that token to a handful of levels. SmoothQuant divides each
input channel j by ``s_j`` and multiplies the weights' column j by ``s_j`` (the product is unchanged), choosing::

    s_j = max|X_j|^α / max|W_j|^(1−α)          (α = 0.5 by default: the difficulty is shared evenly)

The ``1 / s`` is folded into the RMSNorm that produces the input (in a Llama block: the attention norm before q, k, v
and the feed-forward norm before gate and up), so the smoothed float model computes exactly what the original did.
Then chapter 07's :class:`~minilib.quant.int8.QuantLinear` runs it with int8 per-channel weights and int8 per-token
activations on the u8·s8 integer kernel.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from minilib.quant.groupwise import DEFAULT_SKIP
from minilib.quant.layerwise import block_parts, compress_blocks, recording, scale_channels
from minilib.quant.model import quantize_model

ALPHA, MIN_SCALE = 0.5, 1e-5


def smoothing_scale(activation_max: torch.Tensor, weights: list[torch.Tensor], alpha: float = ALPHA) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1−α)`` ``(in,)``, the weights' maximum over every layer reading that input."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1] (0: nothing moves, 1: all of the activations' range moves), got {alpha}")
    for weight in weights:
        if weight.shape[1] != activation_max.shape[0]:
            raise ValueError(f"calibration activations of width {activation_max.shape[0]} do not fit a weight of "
                             f"shape {tuple(weight.shape)}: expected width {weight.shape[1]}")
    weight_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0)       # max_i |W_ij|, (in,)
    s = activation_max.pow(alpha) / weight_max.pow(1 - alpha)
    return s.clamp_min(MIN_SCALE)


def smoothquant(model: nn.Module, calibration: torch.Tensor, alpha: float = ALPHA, batch_size: int = 8) -> nn.Module:
    """A copy of ``model`` with SmoothQuant's scales folded into its norms and projections (still float32, same outputs).

    calibration: token ids ``(sequences, length)``; the largest ``|x_j|`` of each smoothed input is measured on them.
    """
    def smooth(block: nn.Module, run) -> None:
        parts = block_parts(block)
        pairs = {"attention": (parts.attn_norm, [parts.q, parts.k, parts.v]),
                 "feed-forward": (parts.ffn_norm, [parts.gate, parts.up])}
        with recording({name: targets[0] for name, (_, targets) in pairs.items()}, gram=False) as stats:
            run()
        for name, (norm, targets) in pairs.items():
            scale_channels(norm, targets, smoothing_scale(stats[name].max_abs, [t.weight for t in targets], alpha))

    return compress_blocks(copy.deepcopy(model), calibration, smooth, batch_size)


def smoothquant_w8a8(model: nn.Module, calibration: torch.Tensor, alpha: float = ALPHA, batch_size: int = 8,
                     compiled: bool = False) -> nn.Module:
    """:func:`smoothquant`, then int8 weights and int8 per-token activations in every linear layer but the output head."""
    return quantize_model(smoothquant(model, calibration, alpha, batch_size), bits=8, skip=DEFAULT_SKIP,
                          compiled=compiled, inplace=True)
