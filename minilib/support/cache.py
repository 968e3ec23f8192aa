"""The learner's disk cache: what a run trained or computed once, kept for the next run.

Where: :func:`cache_dir`, ``$MINILIB_CACHE`` when it is set, else this user's own cache folder (the
platform's, from ``platformdirs`` when it is installed: ``~/.cache/minilib`` on Linux,
``~/Library/Caches/minilib`` on macOS, ``%LOCALAPPDATA%\\minilib\\Cache`` on Windows). On a shared
JupyterHub each user has their own; nothing here reads, replaces or deletes another user's files.

One scheme for everything: an entry is named by **what made it**, ``<name>/<key id>.<suffix>``, where the key
is any JSON-able description of the recipe (its settings, a version, the code hash of
:mod:`minilib.experiments.artefacts`) and the key id is the first 16 hex digits of its SHA-1. A changed
recipe has another key, so it gets a new file and the old one is simply no longer read.

* a model (:func:`cached_model`) is stored as a safetensors file of what training changed: the tensors that
  differ from its untrained skeleton's (the shipped artefacts use the same format);
* a result (:func:`cached_json`) as JSON.

Every write goes to a uniquely named temporary file in the same folder, then is renamed over the entry in one
step (:func:`write_atomically`): two kernels writing the same entry at once leave one whole file, never half of
one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn


def default_cache_dir() -> Path:
    """This user's cache folder for the course: the platform's user cache directory, else ``~/.cache/minilib``."""
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "minilib"
    return Path(user_cache_dir("minilib", appauthor=False))


def cache_dir() -> Path:
    """The folder of cached entries (created if missing): ``$MINILIB_CACHE``, else :func:`default_cache_dir`."""
    path = Path(os.environ.get("MINILIB_CACHE") or default_cache_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_id(key: Any) -> str:
    """16 hex digits naming a JSON-able ``key`` (dict order does not matter); a name, not a security measure."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def entry_path(name: str, key: Any, suffix: str) -> Path:
    """Where the entry ``name`` made by ``key`` lives: ``cache_dir() / name / <key id>.<suffix>``."""
    if not name or any(sep in name for sep in "/\\") or name.startswith("."):
        raise ValueError(f"a cache entry's name is a plain file name such as 'ch10_minilm_sentiment', got {name!r}")
    return cache_dir() / name / f"{key_id(key)}.{suffix}"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named temporary file renamed over it in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(partial, 0o644)  # mkstemp makes it private; a cache entry or a shipped file is readable as usual
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)  # our own temporary file, never the entry
        raise


# ------------------------------------------------------------------------------------------------ results
def load_json(name: str, key: Any) -> Any | None:
    """The cached JSON result of ``name`` for ``key``, or None when there is none (or it cannot be read)."""
    path = entry_path(name, key, "json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as error:
        warnings.warn(f"the cached {path} is unreadable ({type(error).__name__}); computing it again", stacklevel=3)
        return None


def save_json(name: str, key: Any, value: Any) -> None:
    write_atomically(entry_path(name, key, "json"), json.dumps(value).encode())


def cached_json(name: str, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-able result (not None), computed once per ``key`` and then read from the cache."""
    value = load_json(name, key)
    if value is None:
        value = compute()
        save_json(name, key, value)
    return value


# ------------------------------------------------------------------------------------------------ models
def changed_tensors(model: nn.Module, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``model``'s state dict that differ from ``base`` (its untrained skeleton's), as CPU copies."""
    changed, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in seen:
            continue  # a weight shared by several layers (ALBERT) is stored once: loading it fills them all
        seen.add(tensor.data_ptr())
        if key not in base or base[key].shape != tensor.shape or not torch.equal(base[key], tensor.cpu()):
            changed[key] = tensor.detach().cpu().clone().contiguous()  # clones: tied weights are saved apart
    return changed


def apply_tensors(skeleton: nn.Module, tensors: dict[str, torch.Tensor], label: str) -> nn.Module:
    """Load ``tensors`` (part of a state dict) into ``skeleton``, in eval mode; ValueError when they do not fit."""
    expected = skeleton.state_dict()
    wrong = [key for key, t in tensors.items() if key not in expected or expected[key].shape != t.shape]
    if wrong:
        raise ValueError(f"{label} does not fit its model: {len(wrong)} tensors unknown or of another shape, "
                         f"e.g. {wrong[0]!r}")
    skeleton.load_state_dict(tensors, strict=False)
    return skeleton.eval()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; FileNotFoundError when there is no such file (or it was removed while being
    opened: another kernel clearing the cache), ValueError naming the file when it cannot be read."""
    try:
        return safetensors.torch.load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:   # torch's mmap raises RuntimeError
        if not path.exists():
            raise FileNotFoundError(f"no file {path}") from None
        raise ValueError(f"{path.name} cannot be read as safetensors ({error})") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    write_atomically(path, safetensors.torch.save(tensors))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_fresh(skeleton: Callable[[], nn.Module], build: Callable[[nn.Module], object]):
    """``(model, base)``: ``skeleton()`` trained in place by ``build``, in eval mode on CPU, and what a fresh
    skeleton always holds (what :func:`changed_tensors` compares with).

    A tensor that two calls of ``skeleton()`` fill differently (drawn at random, say) is left out of ``base``, so it
    is stored even when training left it as it was: loading never relies on drawing the same numbers again.
    """
    model = skeleton()
    base = _state(model)
    build(model)
    with torch.random.fork_rng(devices=[]):  # the second skeleton draws from a copy of the generator
        again = _state(skeleton())
    base = {key: tensor for key, tensor in base.items() if key in again and torch.equal(tensor, again[key])}
    return model.cpu().eval(), base


def load_model(name: str, key: Any, skeleton: Callable[[], nn.Module]) -> nn.Module | None:
    """``skeleton()`` with the cached weights of ``name`` for ``key``, or None when there are none usable."""
    path = entry_path(name, key, "safetensors")
    try:
        tensors = read_tensors(path)
        return apply_tensors(skeleton(), tensors, str(path))
    except FileNotFoundError:
        return None            # never cached, or removed since it was found
    except ValueError as error:
        warnings.warn(f"the cached {path} is unusable ({error}); building it again", stacklevel=3)
        return None


def save_model(name: str, key: Any, model: nn.Module, base: dict[str, torch.Tensor]) -> None:
    """Cache what training changed in ``model`` (relative to ``base``) as ``name`` for ``key``."""
    save_tensors(entry_path(name, key, "safetensors"), changed_tensors(model, base))


def cached_model(name: str, key: Any, skeleton: Callable[[], nn.Module],
                 build: Callable[[nn.Module], object]) -> nn.Module:
    """``skeleton()`` with its weights cached under ``name`` for ``key``, or, the first time, trained by ``build``.

    ``key`` says what the weights depend on (a version such as ``"v2"``, or the settings as a dict): other
    settings are another entry. ``build(model)`` trains the fresh skeleton in place. Returns the model in eval
    mode on CPU.
    """
    model = load_model(name, key, skeleton)
    if model is None:
        model, base = train_fresh(skeleton, build)
        save_model(name, key, model, base)
    return model
