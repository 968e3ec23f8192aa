"""minilib.experiments.ch12_capstone: budgets checked on known cases, the closest result reported, fairness per template."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from minilib.experiments.ch12_capstone import (
    TARGETS,
    BudgetReport,
    budget_report,
    changes_by_template,
    measure,
    plot_waterfall,
    threads,
)
from minilib.picker import Budget, Measurement
from minilib.support.bench import model_size_bytes


class FirstToken(nn.Module):
    """Predicts class = input_ids[:, 1] % 2, optionally flipped: a classifier whose answers we know."""

    def __init__(self, flip=False, width=10):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))  # width floats = 4·width bytes of "weights"
        self.flip = flip

    def forward(self, input_ids, attention_mask=None):
        cls = (input_ids[:, 1] % 2) ^ int(self.flip)
        return nn.functional.one_hot(cls, 2).float()


def data(n=12):
    ids = torch.arange(n * 3).view(n, 3)
    return TensorDataset(ids, torch.ones_like(ids), ids[:, 1] % 2)


def test_measure_reports_size_accuracy_and_throughput():
    model = FirstToken(width=250_000)                     # 1 MB of float32
    m = measure(model, Budget("t", batch_size=4, threads=1), data(), "first")
    assert m.name == "first" and m.accuracy == 1.0
    assert m.size_mb == pytest.approx(model_size_bytes(model) / 1e6) and m.size_mb == pytest.approx(1.0)
    assert m.throughput == pytest.approx(4 / (m.latency_ms / 1000))
    assert measure(FirstToken(flip=True), "phone", data()).accuracy == 0.0


def test_misses_and_shortfall_by_hand():
    phone = TARGETS["phone"]                              # ≤ 10 MB, ≤ 20 ms, accuracy ≥ 0.9
    assert phone.violations(Measurement("ok", 19.0, 9.9, 0.95, 50)) == []
    big_slow = Measurement("big", 30.0, 15.0, 0.95, 30)
    assert [m.split()[0] for m in phone.violations(big_slow)] == ["latency", "size"]
    assert phone.shortfall(big_slow) == pytest.approx(0.5 + 0.5)
    cloud = Budget("c", batch_size=32, threads=1, min_accuracy=0.9, min_throughput=100)
    assert cloud.violations(Measurement("slow", 1, 1, 0.9, 50)) == ["throughput 50 < 100 sentences/s per core"]
    assert cloud.shortfall(Measurement("slow", 1, 1, 0.45, 50)) == pytest.approx(0.5 + 0.5)


def test_budget_report_meets_and_picks_the_best():
    report = budget_report({"right": FirstToken(), "wrong": FirstToken(flip=True)}, "edge box", data(), repeats=2)
    assert report.meets and [m.name for m in report.meeting] == ["right"]
    assert report.best.name == "right"
    assert "Meets the budget: right" in str(report) and "accuracy 0.000 < 0.9" in str(report)


def test_an_impossible_budget_reports_the_closest_without_raising():
    impossible = Budget("tiny", batch_size=2, threads=1, max_size_mb=1e-4, min_accuracy=0.9)
    models = {"small": FirstToken(width=100), "large": FirstToken(width=10_000),
              "broken": nn.Linear(3, 2)}                  # takes one input, is called with two: crashes
    report = budget_report(models, impossible, data(), repeats=2)
    assert not report.meets and report.best.name == "small"
    text = str(report)
    assert "Nothing meets the budget. Closest: small" in text and "size 0.0 MB > 0.0001 MB" in text
    assert "broken: could not be measured: TypeError" in text
    nothing = budget_report({"broken": nn.Linear(3, 2)}, impossible, data(), repeats=2)
    assert nothing.best is None and "no model could be measured" in str(nothing)


def test_a_real_classifier_under_every_target(tiny_classifier):
    model = tiny_classifier(vocab_size=50, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    for name in TARGETS:
        report = budget_report(model, name, data(), repeats=2)
        assert isinstance(report, BudgetReport) and len(report.measurements) == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one of"):
        budget_report(FirstToken(), "satellite", data())
    with pytest.raises(TypeError, match="dict of name"):
        budget_report([FirstToken()], "phone", data())
    with pytest.raises(ValueError, match="threads"):
        Budget("t", batch_size=1, threads=0)
    with pytest.raises(ValueError, match="max_size_mb"):
        Budget("t", batch_size=1, threads=1, max_size_mb=-1)


def test_threads_are_restored():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_changes_by_template():
    d = data(8)                                           # labels alternate 1, 0, 1, ...? (ids[:,1] % 2)
    templates = [0, 0, 0, 0, 1, 1, 1, 1]

    class FlipSecondHalf(FirstToken):
        def forward(self, input_ids, attention_mask=None):
            logits = super().forward(input_ids)
            return torch.where((input_ids[:, 0] >= 12)[:, None], logits.flip(-1), logits)  # rows 4..7

    rows = changes_by_template(FirstToken(), FlipSecondHalf(), d, templates)
    assert [(r["template"], r["n"], r["changed"]) for r in rows] == [(1, 4, 1.0), (0, 4, 0.0)]
    assert rows[0]["reference_accuracy"] == 1.0 and rows[0]["compressed_accuracy"] == 0.0
    with pytest.raises(ValueError, match="one template id per sentence"):
        changes_by_template(FirstToken(), FirstToken(), d, templates[:3])


def test_waterfall_draws_one_bar_per_step():
    import matplotlib
    matplotlib.use("Agg")
    steps = [Measurement("teacher", 30, 90, 0.99, 30), Measurement("int8", 12, 25, 0.98, 80)]
    size_ax, latency_ax = plot_waterfall(steps, "phone")
    assert len(size_ax.patches) == 2 and [t.get_text() for t in size_ax.get_xticklabels()] == ["teacher", "int8"]
    assert size_ax.patches[1].get_height() == pytest.approx(65) and latency_ax.patches[1].get_y() == pytest.approx(12)
    with pytest.raises(ValueError, match="Measurement"):
        plot_waterfall([], "phone")
    assert math.isinf(TARGETS["cloud"].max_latency_ms)


def test_the_cloud_prefers_throughput_the_phone_accuracy():
    accurate, fast = Measurement("accurate", 10, 5, 0.99, 100), Measurement("fast", 5, 5, 0.96, 200)
    assert BudgetReport(TARGETS["cloud"], [accurate, fast]).best.name == "fast"
    assert BudgetReport(TARGETS["phone"], [fast, accurate]).best.name == "accurate"
