"""Chapter 08's sparse-storage benchmark: when does a CSR matmul beat the dense one?

The pruning itself (masks, CSR conversion) is in :mod:`minilib.prune`; this module times ``W @ x`` for a
magnitude-pruned W, dense against ``torch.sparse`` CSR, over a range of sparsities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from minilib.prune import magnitude_mask, to_csr
from minilib.support.bench import compare


@dataclass
class MatmulPoint:
    """Dense vs CSR time for ``weight @ x`` at one sparsity (medians in seconds)."""

    sparsity: float
    dense_s: float
    sparse_s: float

    @property
    def speedup(self) -> float:
        """How many times faster the sparse matmul is (> 1: sparse wins)."""
        return self.dense_s / self.sparse_s


def sparse_vs_dense(
    sparsities: Iterable[float] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99),
    out_features: int = 1536,
    in_features: int = 384,
    tokens: int = 256,
    repeats: int = 10,
    seed: int = 0,
) -> list[MatmulPoint]:
    """Measure ``W @ x`` with W ``(out, in)`` pruned by magnitude and x ``(in, tokens)``: dense vs ``torch.sparse``
    CSR, interleaved with :func:`minilib.support.bench.compare`, at each sparsity. Defaults: a MiniLM FFN matrix.

    On the CPU, always: the lesson is the CPU's sparse kernel (a GPU has other kernels, another crossover).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(in_features, tokens, generator=generator, device="cpu")
    points = []
    for sparsity in sparsities:
        weight = torch.randn(out_features, in_features, generator=generator, device="cpu")
        weight = weight * magnitude_mask(weight, sparsity)
        csr = to_csr(weight)
        with torch.inference_mode():
            result = compare({"dense": lambda: weight @ x, "csr": lambda: csr @ x}, baseline="dense", repeats=repeats)
        points.append(MatmulPoint(sparsity, result.timings["dense"].median, result.timings["csr"].median))
    return points


def crossover_sparsity(points: list[MatmulPoint]) -> float | None:
    """The lowest measured sparsity from which CSR stays faster than dense (None if it never wins)."""
    winning = None
    for point in sorted(points, key=lambda p: p.sparsity, reverse=True):
        if point.speedup <= 1:
            break
        winning = point.sparsity
    return winning
