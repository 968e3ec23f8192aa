"""Quantize a whole model: swap its ``nn.Linear`` layers for int8 or int4 ones.

Works on ``minilib`` models (``MultiHeadAttention.q_proj/k_proj/v_proj``, ``FeedForward.up/down``, ...)
and on Hugging Face BERT models (``BertSelfAttention.query/key/value``, ``...dense``), because it only
looks for ``nn.Linear`` layers and for attention blocks with three projections of the same input.

The Q, K and V projections of self-attention all read the same ``x``. Quantized one by one, ``x`` is
quantized three times and three small GEMMs run. :class:`SharedInputProjections` stacks the three int8
weights into one ``(3·d, d)`` matrix: ``x`` is quantized once and one larger GEMM runs (fewer passes over
memory, better GEMM efficiency); each projection then receives its third of the result.

``compiled=True`` fuses what ONNX Runtime fuses (:func:`fuse_for_inference`): attention runs through PyTorch's
fused ``scaled_dot_product_attention`` (no score matrix written to memory; the lessons that need the attention
weights use the unfused model), and ``torch.compile`` turns each encoder layer into a few loops around its
int8 GEMMs: the LayerNorm, the GELU, the bias and residual additions, the activations' quantization (min/max,
scale, round, shift to uint8: one pass per row) and the rescale after each GEMM each stop being a separate pass
over memory.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib.attention import MultiHeadAttention, scaled_dot_product_attention
from minilib.quant.int4 import Int4Linear
from minilib.quant.int8 import QuantLinear
from minilib.quant.swap import linear_layer_names, replace_linears, skipped

QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))  # minilib, Hugging Face BERT


class SharedInputProjections(nn.Module):
    """One int8 GEMM for several projections of the same input (Q, K and V of self-attention).

    ``fused``: a :class:`QuantLinear` whose output rows are the projections' rows stacked; ``sizes``: the
    output size of each projection. :meth:`project` computes all projections the first time it sees an
    input tensor and hands out the others when they are asked for with that same tensor. A different
    input (e.g. cross-attention's keys and values read the encoder's output) simply triggers a new GEMM.
    """

    def __init__(self, fused: QuantLinear, sizes: list[int]):
        super().__init__()
        self.fused, self.sizes = fused, sizes
        self._input, self._pending = None, {}

    @classmethod
    def from_linears(cls, linears: list[nn.Linear], compiled: bool = False) -> "SharedInputProjections":
        """Stack the float weights ``[W_q; W_k; W_v]`` and biases, then quantize once (per output channel)."""
        stacked = nn.Linear(linears[0].in_features, sum(l.out_features for l in linears), bias=linears[0].bias is not None)
        stacked = stacked.to(linears[0].weight.device)
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([l.weight for l in linears]))
            if stacked.bias is not None:
                stacked.bias.copy_(torch.cat([l.bias for l in linears]))
        return cls(QuantLinear.from_linear(stacked, compiled), [l.out_features for l in linears])

    def project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Output of projection ``index`` for input ``x`` ``(..., in)`` → ``(..., sizes[index])``.

        Attention asks for Q, K, V in that order, so after computing all of them only the outputs of the
        projections still to come are kept, and nothing is kept once V has been handed out.
        """
        if x is self._input and index in self._pending:
            out = self._pending.pop(index)
        else:
            outputs = self.fused(x).split(self.sizes, dim=-1)  # one quantization of x, one int8 GEMM
            out, self._pending = outputs[index], {j: o for j, o in enumerate(outputs) if j > index}
        self._input = x if self._pending else None  # let go of the input once every output is handed out
        return out


class ProjectionSlice(nn.Module):
    """Stands in for one of the fused projections (e.g. ``k_proj``): returns its slice of the shared GEMM."""

    def __init__(self, shared: SharedInputProjections, index: int):
        super().__init__()
        self.shared, self.index = shared, index
        self.in_features, self.out_features = shared.fused.in_features, shared.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.project(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of a shared int8 GEMM, out_features={self.out_features}"


def _qkv_groups(model: nn.Module, skip) -> list[tuple[nn.Module, tuple[str, str, str]]]:
    """Attention blocks whose Q, K, V projections are plain ``nn.Linear`` layers of one input size, none skipped."""
    groups = []
    for name, module in model.named_modules():
        for names in QKV_NAMES:
            layers = [getattr(module, n, None) for n in names]
            full_names = [f"{name}.{n}" if name else n for n in names]
            if (all(type(l) is nn.Linear for l in layers) and len({l.in_features for l in layers}) == 1
                    and not any(skipped(n, skip) for n in full_names)):
                groups.append((module, names))
    return groups


def quantize_model(model: nn.Module, bits: int = 8, skip=(), fuse_qkv: bool = True, compiled: bool = False,
                   group_size: int = 128, inplace: bool = False) -> nn.Module:
    """Replace the ``nn.Linear`` layers of ``model`` by quantized ones.

    bits=8: :class:`QuantLinear` (int8 per-channel weights, dynamic int8 per-token activations, int8 GEMM);
    with ``fuse_qkv`` the Q/K/V projections of each attention block share one quantization and one GEMM;
    ``compiled`` fuses each layer with ``torch.compile`` and PyTorch's fused attention (:func:`fuse_for_inference`;
    the first call compiles, tens of seconds).
    bits=4: :class:`Int4Linear` (weight-only, group-wise scales with ``group_size`` inputs per group).
    skip: layer names or ``fnmatch`` patterns to keep in float, e.g. ``("head", "*.pooler.*")``.
    Returns the quantized model (a copy unless ``inplace``); call ``.eval()`` on it for inference.
    """
    if bits not in (4, 8):
        raise ValueError(f"quantize_model supports bits=8 (int8 weights and activations) or bits=4 (int4 weights), got {bits!r}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    targets = linear_layer_names(model, skip)
    model = model if inplace else copy.deepcopy(model)
    if bits == 4:
        return replace_linears(model, targets, lambda layer: Int4Linear.from_linear(layer, group_size))
    if fuse_qkv:
        for module, names in _qkv_groups(model, skip):
            shared = SharedInputProjections.from_linears([getattr(module, n) for n in names])
            for index, n in enumerate(names):
                setattr(module, n, ProjectionSlice(shared, index))
    model = replace_linears(model, targets, QuantLinear.from_linear)
    return fuse_for_inference(model) if compiled else model


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fuse ``model`` (float or quantized) for inference, in place: PyTorch's fused attention, then
    ``torch.compile`` on each layer of its stack (:func:`layer_stack`).

    Attention: a Hugging Face model switches to its ``"sdpa"`` implementation; a ``minilib``
    :class:`~minilib.attention.MultiHeadAttention` with the plain formula calls
    ``torch.nn.functional.scaled_dot_product_attention`` instead (the same result; ``output_attentions=True``
    then raises, since a fused kernel never holds the weights). Each layer is compiled once for all shapes
    (``dynamic=True``): the layers share their code, so the six layers of MiniLM compile once, on the first call.
    """
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
    for module in model.modules():
        if isinstance(module, MultiHeadAttention) and module.attention is scaled_dot_product_attention:
            module.attention = F.scaled_dot_product_attention
    for layer in layer_stack(model):
        layer.compile(dynamic=True)
    return model


def layer_stack(model: nn.Module) -> list[nn.Module]:
    """The layers of the model's largest stack of layers of one kind (an ``nn.ModuleList``): ``Encoder.layers``,
    Hugging Face BERT's ``encoder.layer``. Empty for a model without one."""
    stacks = [list(m) for m in model.modules() if isinstance(m, nn.ModuleList) and len({type(c) for c in m}) == 1]
    return max(stacks, key=len, default=[])
