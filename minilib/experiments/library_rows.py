"""Today's quantization libraries as reference rows beside ``minilib``'s own int8 and int4 (chapters 07, 10).

- **torchao** (``torchao.quantization.quantize_``), PyTorch's current quantization library:
  int8 dynamic activations + int8 weights, int8 weight-only, and int4 weight-only (its CPU "opaque"
  tinygemm layout, a prototype in torchao 0.18);
- **torch.ao** ``quantize_dynamic``: PyTorch's older API, deprecated in favour of torchao, kept as one
  labelled row while PyTorch 2.13 still has it;
- **ONNX Runtime** dynamic int8 (``onnxruntime.quantization.quantize_dynamic``) of an exported model.

Each builder returns a new model and leaves its input alone. A machine without the library gets an
:class:`minilib.support.optional.Unavailable` row through :func:`minilib.support.optional.optional_row`, never an error.
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from minilib.support.device import return_freed_memory
from minilib.support.optional import Unavailable, optional_row, require

TORCHAO_HINT = "pip install torchao (0.18 matches torch 2.13)"
ORT_HINT = "pip install onnxruntime"
TORCHAO_INT8_DYNAMIC, TORCHAO_INT8_WEIGHTS, TORCHAO_INT4_WEIGHTS, TORCH_AO_DEPRECATED = (
    "torchao int8 dynamic", "torchao int8 weight-only", "torchao int4 weight-only", "torch.ao quantize_dynamic (deprecated)")


def torchao_config(kind: str):
    """The torchao config for one of the three rows (``TORCHAO_INT8_DYNAMIC`` …); NotAvailable without torchao.

    ``set_inductor_config=False``: quantize_ must not change torch.compile's global settings for the rest
    of a notebook.
    """
    _import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if kind == TORCHAO_INT8_DYNAMIC:    # per-token int8 activations, per-channel int8 weights: our int8 recipe
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if kind == TORCHAO_INT8_WEIGHTS:    # int8 weights, float activations: dequantize inside the matmul
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if kind == TORCHAO_INT4_WEIGHTS:    # groups of 128, the CPU tinygemm kernel
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        return PrototypeInt4WeightOnlyConfig(group_size=128, set_inductor_config=False)
    raise ValueError(f"kind must be one of {TORCHAO_INT8_DYNAMIC!r}, {TORCHAO_INT8_WEIGHTS!r}, "
                     f"{TORCHAO_INT4_WEIGHTS!r}; got {kind!r}")


def torchao_quantized(model: nn.Module, kind: str) -> nn.Module:
    """A copy of ``model`` whose nn.Linear layers torchao quantized (``kind`` as in :func:`torchao_config`).

    The copy shares the float embeddings with ``model`` (torchao leaves them in float): less memory.
    """
    config = torchao_config(kind)
    from torchao.quantization import quantize_

    quantized = copy_sharing_embeddings(model).eval()
    quantize_(quantized, config, filter_fn=lambda module, name: _fits(module, kind))   # in place
    return quantized


def _fits(module: nn.Module, kind: str) -> bool:
    """Which layers torchao quantizes: every nn.Linear, except that the CPU int4 kernel packs 16 output
    channels at a time, so a layer with fewer or other (a 2-class head) stays float in the int4 row."""
    return isinstance(module, nn.Linear) and (kind != TORCHAO_INT4_WEIGHTS or module.out_features % 16 == 0)


def torch_ao_dynamic(model: nn.Module) -> nn.Module:
    """PyTorch's deprecated ``torch.ao.quantization.quantize_dynamic`` (int8, per-tensor weights), its warning silenced."""
    with warnings.catch_warnings():   # "deprecated ... will be removed ... use torchao": said once, in the row's name
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy_sharing_embeddings(model), {nn.Linear}, dtype=torch.qint8,
                                                      inplace=True)    # in place on our copy


def torchao_variants(model: nn.Module) -> dict[str, nn.Module | Unavailable]:
    """The three torchao rows; a row torchao cannot build here is an :class:`Unavailable`."""
    return {kind: optional_row(kind, lambda kind=kind: torchao_quantized(model, kind).eval(), TORCHAO_HINT)
            for kind in (TORCHAO_INT8_DYNAMIC, TORCHAO_INT8_WEIGHTS, TORCHAO_INT4_WEIGHTS)}


def onnx_dynamic_int8(onnx_path: str | Path, out_path: str | Path | None = None) -> Path:
    """ONNX Runtime's dynamic int8 quantization of an exported model: int8 weights (per channel),
    activations quantized per batch at run time. Returns the new file's path (default: ``*.int8.onnx``)."""
    require("onnxruntime", ORT_HINT)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValueError(f"onnx_path must be an existing .onnx file, got {str(onnx_path)!r}")
    out_path = Path(out_path) if out_path else onnx_path.with_suffix(".int8.onnx")
    root = logging.getLogger()   # ONNX Runtime logs a suggestion to pre-process the graph first on every call
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(onnx_path, out_path, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return_freed_memory()   # the two ONNX graphs it held in memory
    return out_path


def _import_torchao():
    """Import torchao, or raise NotAvailable. Its messages about CUDA-only extensions a CPU machine cannot load are
    dropped as soon as ``minilib`` is imported (``minilib/__init__.py``)."""
    return require("torchao", TORCHAO_HINT)


def copy_sharing_embeddings(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose embedding tables are the original's: every quantized variant keeps them in
    float, so sharing them saves MiniLM's 47 MB per variant."""
    shared = {id(m): m for m in model.modules() if isinstance(m, nn.Embedding)}
    return copy.deepcopy(model, memo=shared)
