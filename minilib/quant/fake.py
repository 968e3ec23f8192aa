"""Fake quantization and quantization-aware training (QAT, as in Q8BERT, 2019).

*Fake* quantization rounds a float tensor to the values its integers would stand for,
``x̂ = s · (clamp(round(x / s) + z) − z)``, and keeps computing in float. It simulates the error of a
quantized model exactly, but it is never faster (it adds work): real speed needs integer kernels
(:class:`~minilib.quant.int8.QuantLinear`).

Training through rounding: ``round`` has zero gradient almost everywhere, so the *straight-through
estimator* (STE, Bengio et al., 2013) pretends it is the identity in the backward pass::

    forward:  x̂ = fake_quant(x)         backward:  ∂L/∂x := ∂L/∂x̂

written as ``x + (x̂ − x).detach()``: the value is ``x̂``, the gradient flows to ``x`` unchanged. Training
with fake-quantized weights lets the weights settle where rounding hurts least, which recovers most of
the accuracy that post-training quantization loses at low bit widths.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib.quant.affine import check_bits, dequantize, quantize
from minilib.quant.swap import linear_layer_names, replace_linears


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` in the forward pass; pass the gradient straight through in the backward pass."""
    return x + (dequantize(quantize(x, bits, symmetric, axis)) - x).detach()


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` that trains through quantization: per-channel ``weight_bits`` weights, per-token ``act_bits`` inputs.

    ``act_bits=None`` keeps activations in float (weight-only quantization). Same numbers as the integer
    layer would compute, in float, with STE gradients.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_bits: int = 8, act_bits: int | None = 8):
        super().__init__(in_features, out_features, bias)
        self.weight_bits = check_bits(weight_bits)
        self.act_bits = None if act_bits is None else check_bits(act_bits)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_bits: int = 8, act_bits: int | None = 8) -> "FakeQuantLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits, act_bits)
        layer.load_state_dict(linear.state_dict())
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quantize(self.weight, self.weight_bits, symmetric=True, axis=0)  # one scale per output row
        if self.act_bits is not None:  # one scale per token: rows of the flattened (tokens, features) input
            x = fake_quantize(x.reshape(-1, self.in_features), self.act_bits, symmetric=True, axis=0).reshape(x.shape)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}, act_bits={self.act_bits}"


def prepare_qat(model: nn.Module, weight_bits: int = 8, act_bits: int | None = 8, skip=()) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers (except names matching ``skip``) are :class:`FakeQuantLinear`.

    Train it as usual (e.g. ``minilib.support.train.fit``); evaluating it measures the quantized model's accuracy.
    """
    model = copy.deepcopy(model)
    return replace_linears(model, linear_layer_names(model, skip),
                           lambda layer: FakeQuantLinear.from_linear(layer, weight_bits, act_bits))
