"""Chapter 12's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import copy

import torch

from minilib.course.checks import (
    check_changed_fraction,
    check_plan_for_budget,
    check_shortfall,
    check_throughput_per_core,
)


def test_throughput_per_core(stub):
    assert check_throughput_per_core(lambda b, ms, t: b / (ms / 1000) / t)
    assert not check_throughput_per_core(stub)
    assert not check_throughput_per_core(lambda b, ms, t: b / (ms / 1000))          # per machine, not per core
    assert not check_throughput_per_core(lambda b, ms, t: b / ms / t)                # per millisecond


def reference_shortfall(size, ms, acc, max_size, max_ms, floor):
    over = [size / max_size - 1, ms / max_ms - 1, 1 - acc / floor if floor else 0.0]
    return sum(max(0.0, x) for x in over)


def test_shortfall(stub):
    assert check_shortfall(reference_shortfall)
    assert not check_shortfall(stub)
    assert not check_shortfall(lambda s, ms, a, S, MS, f: (s / S - 1) + (ms / MS - 1) + (1 - a / f if f else 0))  # no clip
    assert not check_shortfall(lambda s, ms, a, S, MS, f: max(0, s - S) + max(0, ms - MS) + max(0, f - a))  # absolute


def test_changed_fraction(stub):
    assert check_changed_fraction(lambda b, a, t, k: (b[t == k] != a[t == k]).float().mean().item())
    assert not check_changed_fraction(stub)
    assert not check_changed_fraction(lambda b, a, t, k: (b != a).float().mean().item())          # all templates
    assert not check_changed_fraction(lambda b, a, t, k: (b[t == k] != a[t == k]).sum().item())   # a count


def plan_answer(model, max_size_mb, n_task_tokens, int8_row_bytes=8, build=False):
    """The model answer of Exercise 12.5; int8_row_bytes=0 forgets the scales and biases, build=True weighs built plans."""
    import itertools

    def nbytes(module, int8=False):
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)] if int8 else []
        total = sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))
        return total - sum(3 * l.weight.numel() - (int8_row_bytes - 4) * l.out_features for l in linears)

    table = model.encoder.embeddings.token.weight
    trimmed = n_task_tokens * table.shape[1] * 4 + table.shape[0] * 4
    layers = list(model.encoder.layers)
    for n_layers in range(len(layers), 0, -1):
        for int8 in (False, True):
            if build:
                from minilib.arch import drop_layers
                from minilib.support.bench import model_size_bytes
                built = copy.deepcopy(model)
                built.encoder = drop_layers(built.encoder, list(range(n_layers)))
                size = model_size_bytes(built)
            else:
                rest = nbytes(model, int8) - sum(nbytes(layer, int8) for layer in layers)
                size = rest - table.numel() * 4 + trimmed + n_layers * nbytes(layers[0], int8)
            if size <= max_size_mb * 1e6:
                return n_layers, int8, size / 1e6
    return None


def test_plan_for_budget(stub):
    assert check_plan_for_budget(plan_answer)
    assert not check_plan_for_budget(stub)
    assert not check_plan_for_budget(lambda *args: plan_answer(*args, build=True))
    assert not check_plan_for_budget(lambda *args: plan_answer(*args, int8_row_bytes=0))
