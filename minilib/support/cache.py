"""The course's disk cache for expensive artefacts: trained weights, measured results.

The cache lives in ``cache_dir()`` (``<repo>/data/cache``, or ``$MINILIB_CACHE``). Files are named
``<name>-<version>.pt``: changing a recipe means bumping its version, and the stale file is replaced.
The recipes themselves (what is trained, how) are the experiments' business: ``minilib.experiments.zoo``.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def cache_dir() -> Path:
    """The folder for cached artefacts (created if missing): ``$MINILIB_CACHE`` or ``<repo>/data/cache``."""
    path = Path(os.environ.get("MINILIB_CACHE") or Path(__file__).resolve().parents[2] / "data" / "cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_model(name: str, version: str, skeleton: Callable[[], nn.Module],
                 build: Callable[[nn.Module], None]) -> nn.Module:
    """``skeleton()`` with the weights cached as ``<name>-<version>.pt``, or, the first time, with ``build`` run on it.

    ``build(model)`` trains the fresh skeleton in place; its state dict is then saved. A cache file
    that cannot be read or does not fit the skeleton is rebuilt; other versions of ``name`` are removed.
    """
    path = cache_dir() / f"{name}-{version}.pt"
    model = skeleton()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, EOFError, OSError, KeyError, pickle.UnpicklingError) as error:
            warnings.warn(f"the cached {path.name} is unreadable ({type(error).__name__}); building it again", stacklevel=2)
            model = skeleton()
    build(model)
    model.cpu()
    partial = path.with_suffix(f".{os.getpid()}.partial")  # write, then rename: a half-written file is never loaded
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)
    for stale in cache_dir().glob(f"{name}-*.pt"):
        if stale != path:
            stale.unlink()
    return model.eval()
