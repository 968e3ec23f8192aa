"""Finding a model's ``nn.Linear`` layers and swapping them for quantized ones.

Every quantizer in this package does the same walk: int8/int4 (:mod:`minilib.quant.model`), fake
quantization for QAT (:mod:`minilib.quant.fake`) and llama.cpp's blocks (:mod:`minilib.quant.blocks`).
Layers are named as ``model.named_modules()`` names them (``"encoder.layers.0.ffn.up"``); ``skip`` holds names
or ``fnmatch`` patterns (``"head"``, ``"*.pooler.*"``) of layers to keep in float.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn


def skipped(name: str, skip) -> bool:
    """Whether the layer called ``name`` matches one of the ``skip`` patterns."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def linear_layer_names(model: nn.Module, skip=()) -> list[str]:
    """Names of the plain ``nn.Linear`` layers of ``model`` not matching a ``skip`` pattern; a clear error if none."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear and not skipped(name, skip)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize (skip={tuple(skip)!r})")
    return names


def replace_linears(model: nn.Module, names: list[str], make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Set each named layer of ``model`` (in place) to ``make(layer)``; one that is no longer a plain
    ``nn.Linear`` (already replaced, e.g. by a fused Q/K/V slice) is left as it is. Returns ``model``."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        if type(layer) is nn.Linear:
            setattr(parent, child, make(layer))
    return model
