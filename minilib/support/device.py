"""Devices: where the course computes, and the one rule that keeps model and data together.

The rule, for every function in ``minilib`` that takes a model and data: **the data moves to the
model's device** (:func:`model_device`, :func:`to_device`), never the other way round. So a model
that :func:`minilib.support.train.fit` trained on a GPU can be evaluated, distilled, pruned or timed with
inputs built on the CPU, and the same notebook runs on a laptop and on Colab's GPU.

:func:`get_device` is the course's default device: CUDA when present, else the CPU; the
environment variable ``MINILIB_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``) overrides it, for example
``MINILIB_DEVICE=cpu`` to reproduce the CPU timings on a GPU machine.

:func:`return_freed_memory` hands the memory PyTorch has freed back to the operating system (after training,
exporting or quantizing), so that a notebook's kernel does not keep it.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Mapping

import torch
from torch import nn


def available_devices() -> list[str]:
    """The devices this PyTorch can compute on: ``["cpu", "cuda:0", ...]``."""
    return ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def get_device() -> torch.device:
    """``$MINILIB_DEVICE`` if set, else ``cuda`` when a GPU is present, else ``cpu``.

    Raises ValueError when ``MINILIB_DEVICE`` names a device that is not there.
    """
    wanted = os.environ.get("MINILIB_DEVICE", "").strip()
    if not wanted:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError:
        device = None
    found = available_devices()
    if device is None or (device.type != "cpu" and f"{device.type}:{device.index or 0}" not in found):
        raise ValueError(f"MINILIB_DEVICE={wanted!r} is not a device of this machine; found: {', '.join(found)}")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(batch, device):
    """``batch`` (a tensor, or a tuple/list/dict of them, nested) with every tensor moved to ``device``.

    Anything that is not a tensor (a string, an int, None) is passed through unchanged.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):   # a dict, or a tokenizer's BatchEncoding
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def return_freed_memory() -> None:
    """Hand memory that PyTorch has freed back to the operating system.

    On Linux, glibc keeps freed memory for the process's next allocations, so after training a notebook kernel
    goes on holding the optimizer's state and the activations (about 270 MB after fine-tuning MiniLM); on a 2 GB
    Binder that decides whether the chapter fits. ``malloc_trim`` returns it. Elsewhere this does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
