"""Chapter 04's sparse patterns in PyTorch's FlexAttention, the tool a learner would use today.

FlexAttention (``torch.nn.attention.flex_attention``) takes a pattern as a ``mask_mod``: a function
``(batch, head, q_idx, kv_idx) -> bool`` that says whether query ``q_idx`` may see key ``kv_idx``,
the same rule as the masks of :mod:`minilib.sparse`, written for one pair. ``create_block_mask``
evaluates it once per (128 × 128) tile and keeps a **block mask**: which tiles are empty (skipped),
full (no mask needed) or partial (mask applied inside), the same block-sparsity idea as our tiles.

- :func:`window_mask_mod`: sliding window (+ global tokens, + causal), as :func:`minilib.sparse.sliding_window_mask`;
- :func:`layout_mask_mod`: any block layout (random blocks, BigBird), as :func:`minilib.sparse.layout_to_mask`;
- :func:`with_key_padding`: adds a key-padding mask (True = real token);
- :func:`block_mask`, :func:`block_mask_picture`: the block mask, and a (query block, key block) picture of it;
- :func:`flex_attention`: eager or compiled. Eager FlexAttention builds the full n × n score matrix and
  masks it (correct, slow); only ``torch.compile`` turns the block mask into a fused kernel that skips
  tiles. On a CPU, compiling needs a C++ compiler (:func:`compiler_status`), and FlexAttention on a CPU
  is for inference only in PyTorch 2.13 (no backward pass).
"""
from __future__ import annotations

import functools
import os
import shutil
import warnings
from dataclasses import dataclass

import torch
from torch.nn.attention import flex_attention as _flex

from minilib.support.optional import NotAvailable

COMPILER_HINT = "install a C++ compiler (Debian/Ubuntu: apt install g++; macOS: xcode-select --install)"


def window_mask_mod(window: int, global_tokens: int = 0, is_causal: bool = False):
    """Sliding window: query i sees key j when |i - j| < window (and j ≤ i when causal);
    the first ``global_tokens`` tokens see all keys and are seen by all queries."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer ≥ 1, got {window!r}")
    if not isinstance(global_tokens, int) or global_tokens < 0:
        raise ValueError(f"global_tokens must be an integer ≥ 0, got {global_tokens!r}")

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = (q_idx - kv_idx).abs() < window
        allowed = allowed | (q_idx < global_tokens) | (kv_idx < global_tokens)
        return allowed & (kv_idx <= q_idx) if is_causal else allowed

    return mask_mod


def layout_mask_mod(layout: torch.Tensor, block_size: int, is_causal: bool = False):
    """Block-sparse pattern: query i sees key j when ``layout[i // block_size, j // block_size]``.

    layout: (n_q / block_size, n_k / block_size) bool, e.g. :func:`minilib.sparse.bigbird_layout`.
    """
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() != 2:
        raise ValueError(f"layout must be a 2-D bool tensor (query blocks, key blocks), got {layout!r:.60}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = layout[q_idx // block_size, kv_idx // block_size]
        return allowed & (kv_idx <= q_idx) if is_causal else allowed

    return mask_mod


def with_key_padding(mask_mod, key_ok: torch.Tensor):
    """``mask_mod`` and "key j is a real token": key_ok is (batch, n) bool, True = real token.

    The result depends on the batch index: it carries its batch size and device, which :func:`block_mask` uses.
    """
    if not isinstance(key_ok, torch.Tensor) or key_ok.dtype != torch.bool or key_ok.dim() != 2:
        raise ValueError(f"key_ok must be a (batch, n) bool tensor, got {key_ok!r:.60}")
    padded = _flex.and_masks(mask_mod, lambda b, h, q_idx, kv_idx: key_ok[b, kv_idx])
    padded.batch, padded.device = key_ok.shape[0], key_ok.device
    return padded


def block_mask(mask_mod, n: int, batch: int | None = None, block_size: int = 128, device=None):
    """FlexAttention's block mask of ``mask_mod`` for self-attention over n tokens (any n: the last
    block is padded).

    batch: only for a mask that depends on the batch index; one from :func:`with_key_padding` knows its own
    (one block mask per batch element, not element 0's for all). device: where to build it; by default
    where the mask's own tensors are (key padding), else the CPU (:func:`flex_attention` moves a block
    mask to the queries' device).
    """
    own = getattr(mask_mod, "batch", None)
    if batch is not None and own is not None and batch != own:
        raise ValueError(f"the mask depends on the batch index and was built for batch {own}, got batch={batch}")
    device = device or getattr(mask_mod, "device", None) or "cpu"
    return _flex.create_block_mask(mask_mod, batch or own, None, n, n, device=device, BLOCK_SIZE=block_size)


def block_mask_picture(mask) -> torch.Tensor:
    """(query blocks, key blocks) int tensor of a block mask (first batch element and head):
    0 = skipped tile, 1 = partial tile (mask_mod applied inside), 2 = full tile (no mask needed)."""
    n_q_blocks = mask.kv_num_blocks.shape[-1]
    n_k_blocks = -(-mask.seq_lengths[1] // mask.BLOCK_SIZE[1])
    picture = torch.zeros(n_q_blocks, n_k_blocks, dtype=torch.int64)
    for value, counts, indices in ((1, mask.kv_num_blocks, mask.kv_indices), (2, mask.full_kv_num_blocks, mask.full_kv_indices)):
        if counts is None:
            continue
        for row in range(n_q_blocks):
            picture[row, indices[0, 0, row, :counts[0, 0, row]].cpu()] = value
    return picture


@dataclass(frozen=True)
class CompilerStatus:
    """Whether ``torch.compile`` can build CPU kernels here (``available``), and why (``reason``)."""

    available: bool
    reason: str

    def __str__(self) -> str:
        return self.reason


def compiler_status() -> CompilerStatus:
    """Can torch.compile build CPU kernels here? It needs a C++ compiler (``$CXX`` or g++/c++/clang++)."""
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        if shutil.which(name):
            return CompilerStatus(True, f"C++ compiler found: {shutil.which(name)}")
    return CompilerStatus(False, "torch.compile on a CPU needs a C++ compiler, and none was found")


def flex_attention(q, k, v, mask, compiled: bool = False) -> torch.Tensor:
    """FlexAttention of q, k, v (batch, heads, n, d) under a block mask from :func:`block_mask`.

    compiled=False: the eager reference (materialises the n × n scores; PyTorch warns once, we know).
    compiled=True: the fused kernel from ``torch.compile``; raises :class:`NotAvailable` when it cannot
    be built here (no C++ compiler on a CPU, or the compile itself fails).
    Returns (batch, heads, n, d_v); a query with no allowed key gets zeros.
    """
    if mask.kv_num_blocks.device != q.device:             # built elsewhere (by default on the CPU)
        mask = mask.to(q.device)
    if compiled:
        return _compiled_flex(q.device.type)(q, k, v, block_mask=mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return _flex.flex_attention(q, k, v, block_mask=mask)


def _compiled_flex(device_type: str):
    """torch.compile(flex_attention) for this device type; NotAvailable when it cannot be built here."""
    compiled = _try_compile(device_type)
    if isinstance(compiled, NotAvailable):
        raise NotAvailable(compiled.reason, compiled.hint)
    return compiled


@functools.cache
def _try_compile(device_type: str):
    """torch.compile(flex_attention), tried once per device type on a small input, or the NotAvailable saying why
    not: a failure is remembered too (a compile that failed once is not retried at every call)."""
    if device_type == "cpu":
        status = compiler_status()
        if not status.available:
            return NotAvailable(status.reason, COMPILER_HINT)
    compiled = torch.compile(_flex.flex_attention, dynamic=False)
    probe = torch.zeros(1, 1, 128, 16, device=device_type)
    try:
        with torch.no_grad():
            compiled(probe, probe, probe, block_mask=block_mask(window_mask_mod(16), 128, device=device_type))
    except Exception as error:  # any compiler failure means "no compiled row here", not a broken notebook
        return NotAvailable(f"torch.compile(flex_attention) failed: {type(error).__name__}: {error}", COMPILER_HINT)
    return compiled
