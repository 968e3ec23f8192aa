"""Choosing a model under a budget (chapters 09 to 12): measure the candidates, keep the Pareto front, pick.

"For resource-limited settings choose a smaller, faster model": this module makes that sentence a
procedure. Every candidate is measured the same way (:func:`measure_classifiers`): latency of one batch
(median, all candidates interleaved in one run, :func:`minilib.bench.compare`), memory of its weights,
and accuracy on held-out data. A :class:`Budget` states the limits; :func:`pick` returns the candidates
inside them, best accuracy first; :func:`pareto_front` keeps the candidates no other candidate beats on
every axis; :func:`plot_candidates` draws all of it with the budget lines.

    budget = Budget(max_latency_ms=30, max_memory_mb=50, min_accuracy=0.9)
    pick(candidates, budget)            # [Candidate(name='int8', ...), ...] or [] when nothing fits
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from minilib.bench import compare
from minilib.device import model_device, to_device
from minilib.train import accuracy, trim_padding

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> (batch, classes)


@dataclass(frozen=True)
class Candidate:
    """One model, measured: latency of one batch in ms, weights in MB (10⁶ bytes), accuracy in [0, 1]."""

    name: str
    latency_ms: float
    memory_mb: float
    accuracy: float


@dataclass(frozen=True)
class Budget:
    """Limits a deployment sets: at most ``max_latency_ms`` and ``max_memory_mb``, at least ``min_accuracy``."""

    max_latency_ms: float = math.inf
    max_memory_mb: float = math.inf
    min_accuracy: float = 0.0

    def __post_init__(self):
        for name in ("max_latency_ms", "max_memory_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number (math.inf for no limit); got {value!r}")
        if not isinstance(self.min_accuracy, (int, float)) or not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be a fraction in [0, 1]; got {self.min_accuracy!r}")

    def violations(self, candidate: Candidate) -> list[str]:
        """What ``candidate`` misses, in words; empty when it fits the budget."""
        misses = []
        if candidate.latency_ms > self.max_latency_ms:
            misses.append(f"latency {candidate.latency_ms:.1f} ms > {self.max_latency_ms:g} ms")
        if candidate.memory_mb > self.max_memory_mb:
            misses.append(f"memory {candidate.memory_mb:.1f} MB > {self.max_memory_mb:g} MB")
        if candidate.accuracy < self.min_accuracy:
            misses.append(f"accuracy {candidate.accuracy:.3f} < {self.min_accuracy:g}")
        return misses


def _check_candidates(candidates: Sequence[Candidate]) -> None:
    if not candidates or not all(isinstance(c, Candidate) for c in candidates):
        raise ValueError(f"need a non-empty list of Candidate; got {candidates!r}")


def pick(candidates: Sequence[Candidate], budget: Budget) -> list[Candidate]:
    """The candidates that meet every limit of ``budget``, most accurate first (then fastest); may be empty."""
    _check_candidates(candidates)
    fitting = [c for c in candidates if not budget.violations(c)]
    return sorted(fitting, key=lambda c: (-c.accuracy, c.latency_ms, c.memory_mb))


def dominates(a: Candidate, b: Candidate, use_memory: bool = True) -> bool:
    """``a`` is at least as good as ``b`` on latency, accuracy (and memory), and strictly better on one."""
    a_costs, b_costs = (a.latency_ms, a.memory_mb), (b.latency_ms, b.memory_mb)
    if not use_memory:
        a_costs, b_costs = a_costs[:1], b_costs[:1]
    no_worse = all(x <= y for x, y in zip(a_costs, b_costs)) and a.accuracy >= b.accuracy
    better = any(x < y for x, y in zip(a_costs, b_costs)) or a.accuracy > b.accuracy
    return no_worse and better


def pareto_front(candidates: Sequence[Candidate], use_memory: bool = True) -> list[Candidate]:
    """The candidates no other candidate dominates, fastest first: the only ones worth choosing between.

    With ``use_memory=False`` only latency and accuracy count (the front you see on a 2-D plot).
    """
    _check_candidates(candidates)
    front = [c for c in candidates if not any(dominates(other, c, use_memory) for other in candidates)]
    return sorted(front, key=lambda c: c.latency_ms)


# ---------------------------------------------------------------------------------------- measuring


@torch.no_grad()
def _device_of(logits_fn: Logits) -> torch.device:
    """Where a classifier wants its inputs: a module's device; the CPU for any other callable (ONNX Runtime)."""
    return model_device(logits_fn) if isinstance(logits_fn, torch.nn.Module) else torch.device("cpu")


def measure_classifiers(models: dict[str, Logits], sizes_bytes: dict[str, int], data: Dataset,
                        batch_size: int = 32, warmup: int = 2, repeats: int = 10) -> list[Candidate]:
    """Measure every classifier the same way and return one :class:`Candidate` each.

    ``models[name](input_ids, attention_mask) -> logits (batch, classes)``: wrap any model this way (a
    ``minilib`` classifier as it is, a Hugging Face one as ``lambda i, m: hf(input_ids=i, attention_mask=m).logits``,
    an ONNX Runtime session likewise). ``sizes_bytes[name]``: its weights (``minilib.bench.model_size_bytes``,
    or the file size of an exported model). Latency: one batch of the first ``batch_size`` rows of ``data``,
    all models interleaved in one run (median). Accuracy: every row of ``data``.
    """
    if set(models) != set(sizes_bytes):
        raise ValueError(f"need a size for every model; models {sorted(models)}, sizes {sorted(sizes_bytes)}")
    if len(data) == 0:
        raise ValueError("need labelled data to measure accuracy; got an empty dataset")
    input_ids, attention_mask, _ = next(iter(DataLoader(data, batch_size=batch_size)))
    batch = trim_padding(input_ids, attention_mask)
    batches = {name: to_device(batch, _device_of(fn)) for name, fn in models.items()}
    with torch.inference_mode():
        timings = compare({name: (lambda fn=fn, name=name: fn(*batches[name])) for name, fn in models.items()},
                          warmup=warmup, repeats=repeats)
    return [Candidate(name, 1000 * timings.timings[name].median, sizes_bytes[name] / 1e6, accuracy(fn, data))
            for name, fn in models.items()]


def candidates_table(candidates: Sequence[Candidate], baseline: str | None = None, budget: Budget | None = None) -> str:
    """A Markdown table: size, latency, × faster and × smaller than ``baseline``, accuracy, and budget verdicts."""
    _check_candidates(candidates)
    by_name = {c.name: c for c in candidates}
    if baseline is not None and baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not a candidate; candidates: {sorted(by_name)}")
    header = ["model", "memory (MB)", "latency (ms)", "accuracy"]
    if baseline:
        header[3:3] = [f"× faster than {baseline}", f"× smaller than {baseline}"]
    if budget:
        header.append("meets budget?")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in candidates:
        row = [c.name, f"{c.memory_mb:.1f}", f"{c.latency_ms:.1f}", f"{c.accuracy:.3f}"]
        if baseline:
            base = by_name[baseline]
            row[3:3] = [f"{base.latency_ms / c.latency_ms:.2f}", f"{base.memory_mb / c.memory_mb:.2f}"]
        if budget:
            row.append("; ".join(budget.violations(c)) or "✔")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- plotting


def plot_candidates(candidates: Sequence[Candidate], budget: Budget | None = None, ax=None):
    """Accuracy against latency; marker area ∝ memory; the Pareto front as a line; the budget as lines.

    Candidates over the memory budget are drawn hollow; those that meet the whole budget are labelled ✔.
    Returns the matplotlib ``Axes``.
    """
    import matplotlib.pyplot as plt

    _check_candidates(candidates)
    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    chosen = set(pick(candidates, budget)) if budget else set()
    largest = max(c.memory_mb for c in candidates)
    for c in candidates:
        over_memory = budget is not None and c.memory_mb > budget.max_memory_mb
        ax.scatter(c.latency_ms, c.accuracy, s=30 + 400 * c.memory_mb / largest, alpha=0.7,
                   facecolors="none" if over_memory else "tab:blue", edgecolors="tab:blue")
        ax.annotate(("✔ " if c in chosen else "") + c.name, (c.latency_ms, c.accuracy),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = pareto_front(candidates, use_memory=False)  # a staircase: going right (slower), accuracy goes up
    ax.step([c.latency_ms for c in front], [c.accuracy for c in front], where="post",
            color="tab:orange", label="Pareto front (latency, accuracy)")
    if budget:
        if math.isfinite(budget.max_latency_ms):
            ax.axvline(budget.max_latency_ms, color="tab:red", ls="--", label=f"latency ≤ {budget.max_latency_ms:g} ms")
        if budget.min_accuracy > 0:
            ax.axhline(budget.min_accuracy, color="tab:green", ls="--", label=f"accuracy ≥ {budget.min_accuracy:g}")
    ax.set(xlabel="latency of one batch (ms, median)", ylabel="accuracy",
           title="Candidates (marker area ∝ memory; hollow = over the memory budget)")
    ax.legend(fontsize=8, loc="best")
    return ax
