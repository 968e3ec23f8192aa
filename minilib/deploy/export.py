"""Exporting a classifier to ONNX and running it with ONNX Runtime (chapter 10).

ONNX is a file format for a computation graph plus its weights; ONNX Runtime (and NVIDIA Triton,
TensorRT, phones' runtimes...) run that file without Python or PyTorch. The round trip:

    path = export_onnx(model, example_input_ids, example_attention_mask, "model.onnx")
    onnx_model = OnnxClassifier(path)
    logits = onnx_model(input_ids, attention_mask)      # a torch tensor, like the original model's

``export_onnx`` uses PyTorch's older TorchScript-based exporter (``dynamo=False``, ``dynamic_axes=``): it traces
one forward pass in a few seconds, which keeps chapter 10 within its run time. It is deprecated: since PyTorch 2.9
the default is the ``torch.export``-based exporter (``dynamo=True``, dynamic dimensions as ``dynamic_shapes=`` with
``torch.export.Dim``), which handles more models (control flow, dynamic shapes checked symbolically) and is what new
code should use (chapter 10's Exercise 10.5 does), but it takes tens of seconds for chapter 10's 3-layer student on
a 2-core CPU. The file runs in ONNX Runtime either way.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from minilib.support.device import return_freed_memory

INPUT_NAMES = ("input_ids", "attention_mask")


class LogitsOnly(nn.Module):
    """Wrap a Hugging Face classifier so that ``forward(input_ids, attention_mask)`` returns logits only.

    Exporters and ``minilib.picker`` want a plain tensor out, not a ``SequenceClassifierOutput``.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, path) -> Path:
    """Export ``model(input_ids, attention_mask) -> logits`` to an ONNX file; batch and sequence stay dynamic.

    ``input_ids``, ``attention_mask``: one example batch ``(batch, seq)`` (any values: it is only traced).
    The model is exported in eval mode and left in eval mode. Returns the path.
    """
    for name, tensor in zip(INPUT_NAMES, (input_ids, attention_mask)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
            raise ValueError(f"{name} must be a (batch, seq) tensor; got {getattr(tensor, 'shape', type(tensor).__name__)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()  # the exporter restores this mode afterwards; eval keeps dropout out of the graph
    dynamic = {"batch": 0, "seq": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice and tracer warnings about Python control flow
        torch.onnx.export(
            model, (input_ids, attention_mask), str(path), input_names=list(INPUT_NAMES), output_names=["logits"],
            dynamic_axes={name: {axis: label for label, axis in dynamic.items()} for name in INPUT_NAMES},
            dynamo=False,
        )
    return_freed_memory()   # the tracer's copies of the graph and weights
    return path


class OnnxClassifier:
    """An ONNX file run by ONNX Runtime on the CPU, called like the PyTorch model: ``(input_ids, attention_mask) -> logits``."""

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}; create it with export_onnx(...)")
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False   # no arena kept per session: a notebook holds several sessions
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, classes)``; the inputs go in as NumPy int64 arrays, named as when exported."""
        feeds = {name: t.detach().cpu().long().numpy() for name, t in zip(INPUT_NAMES, (input_ids, attention_mask))}
        (logits,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(logits)

    @property
    def size_bytes(self) -> int:
        """Size of the ONNX file on disk (graph and weights)."""
        return os.path.getsize(self.path)
