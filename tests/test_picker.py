"""minilib.picker: budgets, the Pareto front and measuring classifiers (chapters 09 to 12)."""
import math

import matplotlib

matplotlib.use("Agg")
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from minilib.picker import (
    Budget,
    Measurement,
    candidates_table,
    dominates,
    measure_classifiers,
    pareto_front,
    pick,
    plot_candidates,
)
from minilib.support.bench import model_size_bytes
from minilib.support.train import accuracy

BIG = Measurement("big", latency_ms=40.0, size_mb=90.0, accuracy=0.95)
INT8 = Measurement("int8", latency_ms=20.0, size_mb=25.0, accuracy=0.94)
SMALL = Measurement("small", latency_ms=8.0, size_mb=20.0, accuracy=0.88)
BAD = Measurement("bad", latency_ms=30.0, size_mb=30.0, accuracy=0.90)  # int8 beats it everywhere
CANDIDATES = [BIG, INT8, SMALL, BAD]


def test_pick_keeps_what_fits_best_accuracy_first():
    assert pick(CANDIDATES, Budget()) == [BIG, INT8, BAD, SMALL]
    assert pick(CANDIDATES, Budget(max_latency_ms=25)) == [INT8, SMALL]
    assert pick(CANDIDATES, Budget(max_size_mb=22)) == [SMALL]
    assert pick(CANDIDATES, Budget(max_latency_ms=25, min_accuracy=0.9)) == [INT8]
    assert pick(CANDIDATES, Budget(max_latency_ms=5)) == []


def test_budget_violations_name_each_limit():
    misses = Budget(max_latency_ms=10, max_size_mb=50, min_accuracy=0.99).violations(BIG)
    assert len(misses) == 3 and "latency" in misses[0] and "size" in misses[1] and "accuracy" in misses[2]
    assert Budget(max_latency_ms=100).violations(BIG) == []


def test_pareto_front_drops_dominated_candidates():
    assert dominates(INT8, BAD) and not dominates(BAD, INT8)
    assert not dominates(INT8, INT8)  # equal is not better
    assert pareto_front(CANDIDATES) == [SMALL, INT8, BIG]
    twin = Measurement("twin", 20.0, 25.0, 0.94)
    assert pareto_front([INT8, twin]) == [INT8, twin]  # equals do not dominate each other


def test_pareto_front_without_memory():
    light_but_slow = Measurement("light", latency_ms=50.0, size_mb=1.0, accuracy=0.95)
    assert light_but_slow in pareto_front([BIG, light_but_slow])
    assert pareto_front([BIG, light_but_slow], use_size=False) == [BIG]


@pytest.mark.parametrize("kwargs", [{"max_latency_ms": 0}, {"max_size_mb": -1}, {"min_accuracy": 1.5}, {"max_latency_ms": "fast"}])
def test_budget_rejects_bad_limits(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Budget(**kwargs)


def test_pick_rejects_empty_candidates():
    with pytest.raises(ValueError, match="non-empty"):
        pick([], Budget())


class TinyClassifier(nn.Module):
    def __init__(self, vocab=20, classes=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1))


def _classification_data(n=50):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (n, 6), generator=g)
    mask = torch.ones(n, 6, dtype=torch.long)
    mask[::3, 4:] = 0
    return TensorDataset(ids, mask, torch.randint(0, 2, (n,), generator=g))


def test_measure_classifiers_matches_minilib_train_accuracy_and_size():
    torch.manual_seed(0)
    a, b = TinyClassifier(), TinyClassifier(classes=2)
    data = _classification_data()
    result = measure_classifiers({"a": a, "b": b}, {"a": model_size_bytes(a), "b": 123_000}, data, batch_size=8, repeats=3)
    assert [c.name for c in result] == ["a", "b"]
    assert result[0].accuracy == pytest.approx(accuracy(a, data))
    assert result[1].accuracy == pytest.approx(accuracy(b, data))
    assert result[0].size_mb == pytest.approx(model_size_bytes(a) / 1e6) and result[1].size_mb == 0.123
    assert all(c.latency_ms > 0 for c in result)


def test_measure_classifiers_bad_input():
    model = TinyClassifier()
    with pytest.raises(ValueError, match="size for every model"):
        measure_classifiers({"a": model}, {}, _classification_data())
    with pytest.raises(ValueError, match="empty"):
        measure_classifiers({"a": model}, {"a": 1}, _classification_data(0))


def test_candidates_table_ratios_and_verdicts():
    table = candidates_table([BIG, INT8], baseline="big", budget=Budget(max_latency_ms=30))
    int8_row = table.splitlines()[-1]
    assert "| int8 | 25.0 | 20.0 | 2.00 | 3.60 | 0.940 | ✔ |" == int8_row
    assert "latency 40.0 ms > 30 ms" in table.splitlines()[-2]
    with pytest.raises(ValueError, match="baseline"):
        candidates_table([BIG], baseline="nope")


def test_plot_candidates_draws_front_and_budget_lines():
    ax = plot_candidates(CANDIDATES, Budget(max_latency_ms=25, max_size_mb=22, min_accuracy=0.9))
    labels = [t.get_text() for t in ax.texts]
    assert "✔ int8" not in labels and "✔ small" not in labels  # small misses accuracy, int8 misses size
    assert any("latency ≤ 25" in line.get_label() for line in ax.lines)
    assert any("accuracy ≥ 0.9" in line.get_label() for line in ax.lines)
    front_line = next(line for line in ax.lines if "Pareto" in line.get_label())
    assert list(front_line.get_xdata()) == [8.0, 20.0, 40.0]
    ax = plot_candidates(CANDIDATES, Budget(max_latency_ms=25))
    assert "✔ int8" in [t.get_text() for t in ax.texts]
    assert math.isclose(max(line.get_xdata()[0] for line in ax.lines if "latency" in line.get_label()), 25)
