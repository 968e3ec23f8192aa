"""Checks for chapter 12 (the capstone).

The chapter's "build it" check: a compression plan that meets a size budget, predicted without building it.
"""
import copy
import math

import torch

import minilib.picker as picker
from minilib.course.checks.core import CheckFailed, describe_value, exercise, expect_equal, expect_number
from minilib.course.checks.guards import COURSE, guarded
from minilib.picker import Budget, Measurement


def _expect_number(what, got, expected, hint):
    expect_number(what, got, expected, rel=1e-6, abs_=1e-6, hint=hint)


@exercise(points=1)
def check_throughput_per_core(fn):
    """Sentences per second per core on hand-made cases."""
    cases = [(32, 100.0, 1, 320.0), (8, 40.0, 2, 100.0), (1, 4.0, 1, 250.0)]
    with guarded(fn, [picker, COURSE], "write the rate yourself"):
        got = [fn(batch, ms, threads) for batch, ms, threads, _ in cases]
    for (batch, ms, threads, expected), answer in zip(cases, got):
        _expect_number(f"throughput_per_core({batch}, {ms}, {threads})", answer, expected,
                       hint="sentences per second = batch_size / (latency in seconds); then divide by the threads")


@exercise(points=2)
def check_shortfall(fn):
    """Sum of fractional excesses, against minilib.picker.Budget.shortfall."""
    cases = [(15.0, 30.0, 0.95, 10.0, 20.0, 0.9), (9.0, 10.0, 0.95, 10.0, 20.0, 0.9),
             (1.0, 5.0, 0.45, math.inf, math.inf, 0.9), (40.0, 5.0, 0.5, 10.0, math.inf, 0.0)]
    expected = [Budget(max_size_mb=max_size, max_latency_ms=max_ms, min_accuracy=floor).shortfall(
        Measurement("x", latency_ms=ms, size_mb=size, accuracy=acc)) for size, ms, acc, max_size, max_ms, floor in cases]
    with guarded(fn, [picker, COURSE], "add up the excesses yourself: minilib.picker.Budget.shortfall is the "
                                       "answer it is checked against"):
        got = [fn(*case) for case in cases]
    for case, answer, value in zip(cases, got, expected):
        _expect_number(f"shortfall{case}", answer, value,
                       hint="each limit: max(0, value / limit − 1) for size and latency, max(0, 1 − accuracy / floor) "
                            "for accuracy (none when the floor is 0); add them up")


@exercise(points=2)
def check_changed_fraction(fn):
    """Fraction of one template's predictions that changed, on a hand-made case."""
    before = torch.tensor([1, 0, 1, 1, 0, 0])
    after = torch.tensor([1, 1, 0, 1, 0, 0])
    templates = torch.tensor([3, 3, 3, 7, 7, 7])
    cases = [(3, 2 / 3), (7, 0.0)]
    with guarded(fn, [picker, COURSE], "select and compare the predictions yourself"):
        got = [fn(before.clone(), after.clone(), templates.clone(), template) for template, _ in cases]
    for (template, expected), answer in zip(cases, got):
        _expect_number(f"changed_fraction(before={before.tolist()}, after={after.tolist()}, "
                       f"templates={templates.tolist()}, template={template})", answer, expected,
                       hint="select the rows of this template (templates == template), then compare before and after "
                            "there; the fraction is changed / selected")


# --- the "build it" exercise ------------------------------------------------------------

def _build_plan(model, n_layers, int8, kept_ids, unk_id):
    """The plan built with the library: a trimmed, shallower, maybe int8 copy of ``model``."""
    from minilib.arch import drop_layers, trim_vocabulary
    from minilib.quant import quantize_model
    built = copy.deepcopy(model)
    trim_vocabulary(built.encoder, kept_ids, unk_id)
    built.encoder = drop_layers(built.encoder, list(range(0, len(model.encoder.layers)))[:n_layers])
    return quantize_model(built) if int8 else built


@exercise(points=4)
def check_plan_for_budget(fn):
    """Your plan, built with the library, fits the budget; the next less compressed plan does not; sizes predicted to 0.1 %."""
    import minilib.arch as arch
    import minilib.quant as quant
    import minilib.support.bench as bench
    from minilib.transformer import Classifier, Encoder, TransformerConfig
    torch.manual_seed(12)
    config = TransformerConfig(vocab_size=3000, d_model=64, n_heads=2, n_layers=4, d_ff=256, type_vocab_size=2)
    model = Classifier(Encoder(config), n_classes=2)
    kept_ids, unk_id = torch.arange(100, 300), 100  # 200 task tokens, [UNK] among them
    order = [(n, int8) for n in range(4, 0, -1) for int8 in (False, True)]  # least compressed first
    sizes = {plan: bench.model_size_bytes(_build_plan(model, *plan, kept_ids, unk_id)) / 1e6 for plan in order}
    why = ("predict the sizes from the parameter counts, without building the plans: a planner that has to build "
           "(or copy) every candidate to weigh it is slow on a real model")
    for budget in (2.0, 0.5, 0.4, 0.3, 0.1):
        with guarded(fn, [bench, quant, arch, COURSE], why, allow=[bench.param_count]) as run:
            plan = fn(model, budget, len(kept_ids))
        run.expect_tensors_under(1_000, f"plan_for_budget(model, {budget}, {len(kept_ids)})", why)
        fitting = [p for p in order if sizes[p] <= budget]
        if not fitting:
            expect_equal(f"plan for {budget} MB (even 1 int8 layer needs {sizes[order[-1]]:.3f} MB)", plan, None,
                         hint="return None when no plan fits")
            continue
        if not isinstance(plan, (tuple, list)) or len(plan) != 3:
            raise CheckFailed(f"plan for {budget} MB", "(n_layers, int8, size in MB)", describe_value(plan),
                              "return a tuple (n_layers, int8, predicted size in MB), or None when nothing fits")
        expect_equal(f"plan for {budget} MB: (n_layers, int8)", (plan[0], bool(plan[1])), fitting[0],
                     hint="built with the library, the plans weigh "
                          + ", ".join(f"{n} layers{' int8' if q else ''}: {sizes[(n, q)]:.3f} MB" for n, q in order)
                          + "; int8 stores 1 byte a weight plus a float32 scale and bias per output row; embeddings, "
                            "LayerNorms and the trimmed table's int32 index stay as they are")
        expect_number(f"predicted size of the plan for {budget} MB", plan[2], sizes[fitting[0]], rel=1e-3,
                      hint="weights = parameters and buffers, 4 bytes each in float32; an int8 linear keeps 1 byte "
                           "a weight, and 4 bytes of scale and 4 of bias per output row")
