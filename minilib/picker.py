"""Choosing a model under a budget (chapters 09 to 12): measure the candidates, keep the Pareto front, pick.

"For resource-limited settings choose a smaller, faster model": this module makes that sentence a
procedure. Every candidate is measured the same way (:func:`measure_classifiers`): latency of one batch
(median, all candidates interleaved in one run, :func:`minilib.support.bench.compare`), the size of its weights,
and accuracy on held-out data. A :class:`Budget` states the limits; :func:`pick` returns the candidates
inside them, best accuracy first; :func:`pareto_front` keeps the candidates no other candidate beats on
every axis; :func:`plot_candidates` draws all of it with the budget lines.

    budget = Budget(max_latency_ms=30, max_size_mb=50, min_accuracy=0.9)
    pick(candidates, budget)            # [Measurement(name='int8', ...), ...] or [] when nothing fits
"""
from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from minilib.support.bench import compare
from minilib.support.device import model_device, to_device
from minilib.support.train import accuracy, trim_padding

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> (batch, classes)


@dataclass(frozen=True)
class Measurement:
    """One model, measured: ``latency_ms`` per call (one batch), weights in ``size_mb`` (10⁶ bytes), ``accuracy``
    in [0, 1], and ``throughput`` in sentences/s per core where it was measured (``None`` where it was not)."""

    name: str
    latency_ms: float
    size_mb: float
    accuracy: float
    throughput: float | None = None


@dataclass(frozen=True)
class Budget:
    """Limits a deployment sets, and the conditions they are measured under.

    At most ``max_latency_ms`` per call and ``max_size_mb`` of weights; at least ``min_accuracy`` and
    ``min_throughput`` sentences/s per core. ``batch_size`` sentences per call on ``threads`` threads: how
    chapter 12's ``capstone.measure`` runs a model for this budget. Every field but ``name`` is a keyword:
    ``Budget(max_latency_ms=30)``, ``Budget("phone", batch_size=1, max_size_mb=10)``.
    """

    name: str = "budget"
    _: KW_ONLY
    max_latency_ms: float = math.inf
    max_size_mb: float = math.inf
    min_accuracy: float = 0.0
    min_throughput: float = 0.0
    batch_size: int = 1
    threads: int = 1

    def __post_init__(self):
        for name in ("max_latency_ms", "max_size_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number (math.inf for no limit); got {value!r}")
        if not isinstance(self.min_accuracy, (int, float)) or not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be a fraction in [0, 1]; got {self.min_accuracy!r}")
        if not isinstance(self.min_throughput, (int, float)) or not self.min_throughput >= 0:
            raise ValueError(f"min_throughput must be >= 0 sentences/s per core; got {self.min_throughput!r}")
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")

    def violations(self, m: Measurement) -> list[str]:
        """What ``m`` misses of this budget, in words; empty when it fits."""
        misses = []
        if m.latency_ms > self.max_latency_ms:
            misses.append(f"latency {m.latency_ms:.1f} ms > {self.max_latency_ms:g} ms")
        if m.size_mb > self.max_size_mb:
            misses.append(f"size {m.size_mb:.1f} MB > {self.max_size_mb:g} MB")
        if m.accuracy < self.min_accuracy:
            misses.append(f"accuracy {m.accuracy:.3f} < {self.min_accuracy:g}")
        if self.min_throughput and m.throughput is None:
            misses.append("throughput not measured")
        elif self.min_throughput and m.throughput < self.min_throughput:
            misses.append(f"throughput {m.throughput:.0f} < {self.min_throughput:g} sentences/s per core")
        return misses

    def shortfall(self, m: Measurement) -> float:
        """How far ``m`` is outside the budget, summed over limits as fractions: 0 inside; 0.5 = 50 % over one limit."""
        over = [m.size_mb / self.max_size_mb - 1, m.latency_ms / self.max_latency_ms - 1,
                1 - m.accuracy / self.min_accuracy if self.min_accuracy else 0.0,
                1 - (m.throughput or 0.0) / self.min_throughput if self.min_throughput else 0.0]
        return sum(max(0.0, x) for x in over)

    def describe(self) -> str:
        """The budget in words, e.g. ``phone: ≤ 10 MB, ≤ 20 ms per call (batch 1, 1 thread), accuracy ≥ 0.9``."""
        limits = [f"≤ {self.max_size_mb:g} MB" if math.isfinite(self.max_size_mb) else "",
                  f"≤ {self.max_latency_ms:g} ms per call" if math.isfinite(self.max_latency_ms) else "",
                  f"≥ {self.min_throughput:g} sentences/s per core" if self.min_throughput else "",
                  f"accuracy ≥ {self.min_accuracy:g}" if self.min_accuracy else ""]
        threads = f"{self.threads} thread{'s' * (self.threads > 1)}"
        return f"{self.name}: {', '.join(l for l in limits if l)} (batch {self.batch_size}, {threads})"


def _check_candidates(candidates: Sequence[Measurement]) -> None:
    if not candidates or not all(isinstance(c, Measurement) for c in candidates):
        raise ValueError(f"need a non-empty list of Measurement; got {candidates!r}")


def pick(candidates: Sequence[Measurement], budget: Budget) -> list[Measurement]:
    """The candidates that meet every limit of ``budget``, most accurate first (then fastest); may be empty."""
    _check_candidates(candidates)
    fitting = [c for c in candidates if not budget.violations(c)]
    return sorted(fitting, key=lambda c: (-c.accuracy, c.latency_ms, c.size_mb))


def dominates(a: Measurement, b: Measurement, use_size: bool = True) -> bool:
    """``a`` is at least as good as ``b`` on latency, accuracy (and size), and strictly better on one."""
    a_costs, b_costs = (a.latency_ms, a.size_mb), (b.latency_ms, b.size_mb)
    if not use_size:
        a_costs, b_costs = a_costs[:1], b_costs[:1]
    no_worse = all(x <= y for x, y in zip(a_costs, b_costs)) and a.accuracy >= b.accuracy
    better = any(x < y for x, y in zip(a_costs, b_costs)) or a.accuracy > b.accuracy
    return no_worse and better


def pareto_front(candidates: Sequence[Measurement], use_size: bool = True) -> list[Measurement]:
    """The candidates no other candidate dominates, fastest first: the only ones worth choosing between.

    With ``use_size=False`` only latency and accuracy count (the front you see on a 2-D plot).
    """
    _check_candidates(candidates)
    front = [c for c in candidates if not any(dominates(other, c, use_size) for other in candidates)]
    return sorted(front, key=lambda c: c.latency_ms)


# ---------------------------------------------------------------------------------------- measuring


@torch.no_grad()
def _device_of(logits_fn: Logits) -> torch.device:
    """Where a classifier wants its inputs: a module's device; the CPU for any other callable (ONNX Runtime)."""
    return model_device(logits_fn) if isinstance(logits_fn, torch.nn.Module) else torch.device("cpu")


def measure_classifiers(models: dict[str, Logits], sizes_bytes: dict[str, int], data: Dataset,
                        batch_size: int = 32, warmup: int = 2, repeats: int = 10) -> list[Measurement]:
    """Measure every classifier the same way and return one :class:`Measurement` each.

    ``models[name](input_ids, attention_mask) -> logits (batch, classes)``: wrap any model this way (a
    ``minilib`` classifier as it is, a Hugging Face one as ``lambda i, m: hf(input_ids=i, attention_mask=m).logits``,
    an ONNX Runtime session likewise). ``sizes_bytes[name]``: its weights (``minilib.support.bench.model_size_bytes``,
    or the file size of an exported model). Latency: one batch of the first ``batch_size`` rows of ``data``,
    all models interleaved in one run (median). Accuracy: every row of ``data``, ``batch_size`` rows at a time
    (a larger batch would hold more activations in memory at once).
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
    return [Measurement(name, 1000 * timings.timings[name].median, sizes_bytes[name] / 1e6,
                        accuracy(fn, data, batch_size)) for name, fn in models.items()]


def candidates_table(candidates: Sequence[Measurement], baseline: str | None = None, budget: Budget | None = None) -> str:
    """A Markdown table: size, latency, × faster and × smaller than ``baseline``, accuracy, and budget verdicts."""
    _check_candidates(candidates)
    by_name = {c.name: c for c in candidates}
    if baseline is not None and baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not a candidate; candidates: {sorted(by_name)}")
    header = ["model", "size (MB)", "latency (ms)", "accuracy"]
    if baseline:
        header[3:3] = [f"× faster than {baseline}", f"× smaller than {baseline}"]
    if budget:
        header.append("meets budget?")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in candidates:
        row = [c.name, f"{c.size_mb:.1f}", f"{c.latency_ms:.1f}", f"{c.accuracy:.3f}"]
        if baseline:
            base = by_name[baseline]
            row[3:3] = [f"{base.latency_ms / c.latency_ms:.2f}", f"{base.size_mb / c.size_mb:.2f}"]
        if budget:
            row.append("; ".join(budget.violations(c)) or "✔")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- plotting


def plot_candidates(candidates: Sequence[Measurement], budget: Budget | None = None, ax=None):
    """Accuracy against latency; marker area ∝ size; the Pareto front as a line; the budget as lines.

    Candidates over the size limit are drawn hollow; those that meet the whole budget are labelled ✔.
    Returns the matplotlib ``Axes``.
    """
    import matplotlib.pyplot as plt

    _check_candidates(candidates)
    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    chosen = set(pick(candidates, budget)) if budget else set()
    largest = max(c.size_mb for c in candidates)
    for c in candidates:
        over_size = budget is not None and c.size_mb > budget.max_size_mb
        ax.scatter(c.latency_ms, c.accuracy, s=30 + 400 * c.size_mb / largest, alpha=0.7,
                   facecolors="none" if over_size else "tab:blue", edgecolors="tab:blue")
        ax.annotate(("✔ " if c in chosen else "") + c.name, (c.latency_ms, c.accuracy),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = pareto_front(candidates, use_size=False)  # a staircase: going right (slower), accuracy goes up
    ax.step([c.latency_ms for c in front], [c.accuracy for c in front], where="post",
            color="tab:orange", label="Pareto front (latency, accuracy)")
    if budget:
        if math.isfinite(budget.max_latency_ms):
            ax.axvline(budget.max_latency_ms, color="tab:red", ls="--", label=f"latency ≤ {budget.max_latency_ms:g} ms")
        if budget.min_accuracy > 0:
            ax.axhline(budget.min_accuracy, color="tab:green", ls="--", label=f"accuracy ≥ {budget.min_accuracy:g}")
    ax.set(xlabel="latency of one batch (ms, median)", ylabel="accuracy",
           title="Candidates (marker area ∝ size; hollow = over the size limit)")
    ax.legend(fontsize=8, loc="best")
    return ax
