"""Chapter 12's exercise checks pass correct answers however they are written, and fail stubs, mistakes and a plan
weighed by building it."""
import copy

import torch

from minilib.course.checks import (
    check_changed_fraction,
    check_plan_for_budget,
    check_shortfall,
    check_throughput_per_core,
)
from minilib.picker import Budget, Measurement


def test_throughput_per_core(stub, refused):
    assert check_throughput_per_core(lambda b, ms, t: b / (ms / 1000) / t)
    assert check_throughput_per_core(lambda b, ms, t: 1000 * b // 1 / (ms * t))
    assert not check_throughput_per_core(stub)
    refused(check_throughput_per_core, lambda b, ms, t: b / (ms / 1000), "divide by the threads")  # per machine
    refused(check_throughput_per_core, lambda b, ms, t: b / ms / t, "latency in seconds")         # per millisecond
    refused(check_throughput_per_core, lambda b, ms, t: f"{b / ms * 1000 / t:.0f}/s", "a number", "str")


def reference_shortfall(size, ms, acc, max_size, max_ms, floor):
    over = [size / max_size - 1, ms / max_ms - 1, 1 - acc / floor if floor else 0.0]
    return sum(max(0.0, x) for x in over)


def test_shortfall(stub, refused):
    def by_list(size, ms, acc, max_size, max_ms, floor):  # the excesses listed, then clipped and summed by torch
        excess = torch.tensor([size / max_size - 1, ms / max_ms - 1, (1 - acc / floor) if floor > 0 else 0.0])
        return excess.clamp(min=0).sum()

    assert check_shortfall(reference_shortfall)
    assert check_shortfall(by_list)
    assert not check_shortfall(stub)
    refused(check_shortfall, lambda s, ms, a, S, MS, f: (s / S - 1) + (ms / MS - 1) + (1 - a / f if f else 0),
            "max(0")                                                                           # no clip
    refused(check_shortfall, lambda s, ms, a, S, MS, f: max(0, s - S) + max(0, ms - MS) + max(0, f - a),
            "value / limit")                                                                   # absolute
    refused(check_shortfall, lambda s, ms, a, S, MS, f: Budget(S, MS, f).shortfall(Measurement("x", ms, s, a)),
            "minilib.picker")


def test_changed_fraction(stub, refused):
    assert check_changed_fraction(lambda b, a, t, k: (b[t == k] != a[t == k]).float().mean().item())
    assert check_changed_fraction(lambda b, a, t, k: ((b != a) & (t == k)).sum() / (t == k).sum())   # a 0-d tensor
    assert not check_changed_fraction(stub)
    refused(check_changed_fraction, lambda b, a, t, k: (b != a).float().mean().item(), "templates == template")
    refused(check_changed_fraction, lambda b, a, t, k: (b[t == k] != a[t == k]).sum().item(), "changed / selected")


def plan_answer(model, max_size_mb, n_task_tokens, int8_row_bytes=8):
    """The model answer of Exercise 12.5; int8_row_bytes=0 forgets the scales and biases."""
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
            rest = nbytes(model, int8) - sum(nbytes(layer, int8) for layer in layers)
            size = rest - table.numel() * 4 + trimmed + n_layers * nbytes(layers[0], int8)
            if size <= max_size_mb * 1e6:
                return n_layers, int8, size / 1e6
    return None


def plan_with_param_count(model, max_size_mb, n_task_tokens):
    """Another correct answer: the course's param_count (allowed), a list of candidates, a list returned."""
    from minilib.support.bench import param_count
    vocab, d_model = model.encoder.embeddings.token.weight.shape
    linear_rows = sum(m.out_features for m in model.encoder.layers[0].modules() if isinstance(m, torch.nn.Linear))
    linear_weights = sum(m.weight.numel() for m in model.encoder.layers[0].modules() if isinstance(m, torch.nn.Linear))
    per_layer = {False: 4 * param_count(model.encoder.layers[0]),
                 True: 4 * param_count(model.encoder.layers[0]) - 3 * linear_weights + 4 * linear_rows}
    rest = 4 * (param_count(model) - len(model.encoder.layers) * param_count(model.encoder.layers[0]))
    rest += 4 * sum(b.numel() for b in model.buffers()) - 4 * vocab * d_model + 4 * n_task_tokens * d_model + 4 * vocab
    head = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not name.startswith("encoder.layers")]
    candidates = [(n, q) for n in range(len(model.encoder.layers), 0, -1) for q in (False, True)]
    for n, q in candidates:
        size = rest + n * per_layer[q] - (sum(3 * m.weight.numel() - 4 * m.out_features for m in head) if q else 0)
        if size <= max_size_mb * 1e6:
            return [n, q, size / 1e6]
    return None


def plan_by_building(model, max_size_mb, n_task_tokens):
    """The shortcut: copy the model, drop layers, weigh it."""
    for n_layers in range(len(model.encoder.layers), 0, -1):
        built = copy.deepcopy(model)
        built.encoder.layers = built.encoder.layers[:n_layers]
        size = sum(t.numel() * t.element_size() for t in built.parameters()) / 1e6
        if size <= max_size_mb:
            return n_layers, False, size
    return None


def test_plan_for_budget(stub, refused):
    assert check_plan_for_budget(plan_answer)
    assert check_plan_for_budget(plan_with_param_count)
    assert not check_plan_for_budget(stub)
    refused(check_plan_for_budget, lambda *args: plan_answer(*args, int8_row_bytes=0), "4 bytes of scale and 4 of bias")
    refused(check_plan_for_budget, plan_by_building, "built a tensor", "without building the plans")

    def library(model, max_size_mb, n_task_tokens):
        from minilib.arch import drop_layers
        from minilib.support.bench import model_size_bytes
        built = copy.deepcopy(model)
        built.encoder = drop_layers(built.encoder, [0])
        return 1, False, model_size_bytes(built) / 1e6

    refused(check_plan_for_budget, library, "minilib.arch")
