"""Checks for chapter 12 (the capstone)."""
import math

import torch

from minilib.course.checks.core import CheckFailed, exercise, expect_close
from minilib.experiments.picker import Budget, Measurement


def _expect_number(what, got, expected, hint):
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        raise CheckFailed(what, "a number", type(got).__name__, hint)
    expect_close(what, torch.tensor(float(got)), torch.tensor(float(expected)), atol=1e-6, rtol=1e-6, hint=hint)


@exercise(points=1)
def check_throughput_per_core(fn):
    """Sentences per second per core on hand-made cases."""
    for batch, ms, threads, expected in [(32, 100.0, 1, 320.0), (8, 40.0, 2, 100.0), (1, 4.0, 1, 250.0)]:
        _expect_number(f"throughput_per_core({batch}, {ms}, {threads})", fn(batch, ms, threads), expected,
                       hint="sentences per second = batch_size / (latency in seconds); then divide by the threads")


@exercise(points=2)
def check_shortfall(fn):
    """Sum of fractional excesses, against minilib.experiments.picker.Budget.shortfall."""
    cases = [(15.0, 30.0, 0.95, 10.0, 20.0, 0.9), (9.0, 10.0, 0.95, 10.0, 20.0, 0.9),
             (1.0, 5.0, 0.45, math.inf, math.inf, 0.9), (40.0, 5.0, 0.5, 10.0, math.inf, 0.0)]
    for size, ms, acc, max_size, max_ms, floor in cases:
        budget = Budget(max_size_mb=max_size, max_latency_ms=max_ms, min_accuracy=floor)
        expected = budget.shortfall(Measurement("x", latency_ms=ms, size_mb=size, accuracy=acc))
        _expect_number(f"shortfall({size}, {ms}, {acc}, {max_size}, {max_ms}, {floor})",
                       fn(size, ms, acc, max_size, max_ms, floor), expected,
                       hint="each limit: max(0, value / limit − 1) for size and latency, max(0, 1 − accuracy / floor) "
                            "for accuracy (none when the floor is 0); add them up")


@exercise(points=2)
def check_changed_fraction(fn):
    """Fraction of one template's predictions that changed, on a hand-made case."""
    before = torch.tensor([1, 0, 1, 1, 0, 0])
    after = torch.tensor([1, 1, 0, 1, 0, 0])
    templates = torch.tensor([3, 3, 3, 7, 7, 7])
    for template, expected in [(3, 2 / 3), (7, 0.0)]:
        _expect_number(f"changed_fraction(before={before.tolist()}, after={after.tolist()}, "
                       f"templates={templates.tolist()}, template={template})",
                       fn(before, after, templates, template), expected,
                       hint="select the rows of this template (templates == template), then compare before and after "
                            "there; return a Python float (.item())")
