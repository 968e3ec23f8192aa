"""The capstone (chapter 12): compress one model until it fits a deployment target, and say what it cost.

A deployment target is a *stated budget* (a named :class:`~minilib.picker.Budget`), measured the
way that device runs the model:

- ``phone``: at most 10 MB of weights and 20 ms per sentence, one sentence at a time, on one thread;
- ``edge box``: at most 50 ms for a batch of 8 sentences on two threads (on one where this machine has only one
  free: :func:`timing_threads`);
- ``cloud``: sentences per second per core (batch 32, one thread), at an accuracy floor.

:func:`measure` runs a classifier under a target's conditions (batch size, thread count) and returns a
:class:`Measurement`; :func:`budget_report` measures one model or several and returns a :class:`BudgetReport`
that says which meet the budget and, when none does, which came closest and by how much it misses: it
never raises because a budget was missed. :func:`plot_waterfall` draws size and latency after each
compression step with the accuracy alongside; :func:`changes_by_template` is the fairness check (does
compression change predictions more for some sentence patterns than for others?).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from minilib.arch import task_token_ids, trim_vocabulary
from minilib.deploy.hf import load_tokenizer
from minilib.distill import distill, student_from_teacher, teacher_targets
from minilib.experiments.artefacts import Artefact, load_model
from minilib.experiments.teacher import TEACHER, sentiment_teacher
from minilib.picker import Budget, Measurement
from minilib.prune import prune_least_important
from minilib.support.bench import model_size_bytes, time_fn
from minilib.support.cache import cached_model
from minilib.support.data import sentiment_dataset
from minilib.support.device import model_device, to_device
from minilib.support.threads import course_threads, threads
from minilib.support.train import TrainConfig, accuracy, predict_logits, trim_padding
from minilib.transformer import Classifier

TARGETS = {
    "phone": Budget("phone", batch_size=1, threads=1, max_size_mb=10, max_latency_ms=20, min_accuracy=0.9),
    "edge box": Budget("edge box", batch_size=8, threads=2, max_latency_ms=50, min_accuracy=0.9),
    "cloud": Budget("cloud", batch_size=32, threads=1, min_accuracy=0.95),
}
"""The three deployment targets of chapter 12 (a phone, an edge device, the cloud). The cloud one has no latency limit: its score is throughput per core."""




def resolve_target(target) -> Budget:
    """A :class:`~minilib.picker.Budget`, or the name of one in :data:`TARGETS`."""
    if isinstance(target, Budget):
        return target
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]
    raise ValueError(f"target must be a Budget or one of {sorted(TARGETS)}, got {target!r}")


def timing_threads(target) -> int:
    """Threads to time ``target`` on here: its own count, unless this machine has fewer free (a CPU quota, or cores
    a busy neighbour keeps: :func:`~minilib.support.threads.course_threads`). Two threads on one free core would
    time the threads waiting for each other, not the model."""
    return min(resolve_target(target).threads, course_threads())


def latency_seconds(model: nn.Module, target, data: TensorDataset, repeats: int = 10,
                    n_threads: int | None = None) -> float:
    """Median seconds of one call on the first ``batch_size`` sentences of ``data`` (padding trimmed), on
    ``n_threads`` threads (default :func:`timing_threads`: the target's, where this machine has them free)."""
    target = resolve_target(target)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a classifier (an nn.Module), got {type(model).__name__}")
    model.eval()
    input_ids, attention_mask = to_device(trim_padding(*[t[:target.batch_size] for t in data.tensors[:2]]),
                                          model_device(model))
    with threads(n_threads or timing_threads(target)), torch.inference_mode():
        return time_fn(lambda: model(input_ids, attention_mask), warmup=2, repeats=repeats).median


def measure(model: nn.Module, target, data: TensorDataset, name: str = "model", repeats: int = 10) -> Measurement:
    """Size, latency, throughput and accuracy of ``model`` under ``target``'s conditions.

    Latency: :func:`latency_seconds`. Throughput per core = batch_size / latency / threads it ran on.
    Accuracy: every sentence of ``data`` = (input_ids, attention_mask, labels).
    """
    return measure_steps({name: model}, [target], data, repeats)[resolve_target(target).name][0]


def measure_steps(models: dict, targets, data: TensorDataset, repeats: int = 10) -> dict[str, list[Measurement]]:
    """Every model under every target: ``{target name: [Measurement per model, in order]}``.

    Size and accuracy do not depend on the target, so they are measured once per model.
    """
    targets = [resolve_target(t) for t in targets]
    results = {t.name: [] for t in targets}
    used = {t.name: timing_threads(t) for t in targets}       # once, so latency and throughput agree
    for name, model in models.items():
        seconds = {t.name: latency_seconds(model, t, data, repeats, used[t.name]) for t in targets}
        size_mb, correct = model_size_bytes(model) / 1e6, accuracy(model, data)
        for t in targets:
            results[t.name].append(Measurement(name, 1000 * seconds[t.name], size_mb, correct,
                                               throughput=t.batch_size / seconds[t.name] / used[t.name]))
    return results


@dataclass
class BudgetReport:
    """What :func:`budget_report` found: every measurement, which meet the target, and the best or the closest."""

    target: Budget
    measurements: list[Measurement]
    failures: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> why it could not be measured

    @property
    def meeting(self) -> list[Measurement]:
        """The measurements inside the budget, best first (highest throughput for the cloud, else accuracy)."""
        return sorted((m for m in self.measurements if not self.target.violations(m)), key=self._rank)

    def _rank(self, m: Measurement) -> tuple:
        """A target without a latency limit (the cloud) prefers throughput; the others accuracy, then speed."""
        if math.isinf(self.target.max_latency_ms):
            return (-m.throughput, -m.accuracy)
        return (-m.accuracy, m.latency_ms)

    @property
    def meets(self) -> bool:
        return bool(self.meeting)

    @property
    def best(self) -> Measurement | None:
        """The best model inside the budget or, when none is, the one with the smallest shortfall."""
        if self.meeting:
            return self.meeting[0]
        return min(self.measurements, key=self.target.shortfall, default=None)

    def __str__(self) -> str:
        lines = [f"Budget: {self.target.describe()}"]
        for m in self.measurements:
            misses = self.target.violations(m)
            lines.append(f"  {'✔' if not misses else '✘'} {m.name}: {m.size_mb:.1f} MB, {m.latency_ms:.1f} ms per call, "
                         f"{m.throughput:.0f} sentences/s per core, accuracy {m.accuracy:.3f}"
                         + (f" — misses: {'; '.join(misses)}" if misses else ""))
        lines += [f"  ✘ {name}: could not be measured: {why}" for name, why in self.failures.items()]
        if self.meets:
            lines.append(f"Meets the budget: {self.best.name}.")
        elif self.best is not None:
            lines.append(f"Nothing meets the budget. Closest: {self.best.name} "
                         f"({self.target.shortfall(self.best):.0%} outside it in total): {'; '.join(self.target.violations(self.best))}.")
        else:
            lines.append("Nothing meets the budget: no model could be measured.")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def budget_report(models, target, data: TensorDataset, repeats: int = 10) -> BudgetReport:
    """Measure ``models`` (one classifier, or a dict name -> classifier) under ``target`` and report.

    (Not named ``check_budget``: ``check_*`` names are reserved for exercise checks, see ``minilib.course.checks``.)

    A model that misses the budget, or even crashes when run, is reported, not raised: ``print(report)``
    says what each one misses, and when nothing meets the budget, which model came closest.
    """
    target = resolve_target(target)
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not isinstance(models, dict) or not models:
        raise TypeError(f"expected a classifier or a non-empty dict of name -> classifier, got {type(models).__name__}")
    report = BudgetReport(target, [])
    for name, model in models.items():
        try:
            report.measurements.append(measure(model, target, data, name, repeats))
        except Exception as error:  # a learner's model that cannot run is a finding to report, not a crash
            report.failures[name] = f"{type(error).__name__}: {error}"
    return report


# ------------------------------------------------------------------------------------ the compression steps
STUDENT_LAYERS = (0, 2, 4)
"""The teacher layers the student keeps (DistilBERT's every other layer of MiniLM's six)."""


def trimmed_copy(model: Classifier, datasets, unk_id: int) -> Classifier:
    """A copy of ``model`` whose token embedding keeps only the ids that occur in ``datasets`` (lossless on them)."""
    model = copy.deepcopy(model)
    trim_vocabulary(model.encoder, task_token_ids(*datasets), unk_id)
    return model.eval()


def distilled_student(teacher: Classifier, transfer: Callable[[], TensorDataset], layers=STUDENT_LAYERS,
                      epochs: int = 2, lr: float = 2e-4, name: str = "capstone-student",
                      retrain: bool | None = None) -> Classifier:
    """The teacher's ``layers`` (weights copied), then distilled on the teacher's soft targets.

    With the chapter's settings (the defaults) it is shipped in ``data/`` for the chapter's trimmed teacher;
    other settings are trained once and cached. transfer() returns ``minilib.distill.teacher_targets(teacher,
    data)``: it is only called when the student is trained (running the teacher over the data is the expensive
    part).
    """
    def skeleton():
        return student_from_teacher(teacher, list(layers))

    def build(student):
        distill(student, transfer(), teacher.encoder.config.d_model, temperature=2.0, alpha=0.5,
                config=TrainConfig(epochs=epochs, lr=lr, progress=False))

    if (tuple(layers), epochs, lr, name) == (STUDENT_LAYERS, 2, 2e-4, "capstone-student"):
        return load_model(STUDENT, skeleton, build, retrain)
    return cached_model(name, f"{'-'.join(map(str, layers))}-e{epochs}-lr{lr:g}", skeleton, build)


def pruned_student(student: Classifier, data: TensorDataset, transfer: Callable[[], TensorDataset],
                   fraction: float = 0.5, recovery_epochs: int = 1, lr: float = 2e-4,
                   name: str = "capstone-pruned", retrain: bool | None = None) -> Classifier:
    """``student`` without the least important ``fraction`` of its heads and FFN neurons, then distilled again
    for ``recovery_epochs`` to recover; shipped in ``data/`` with the chapter's settings (the defaults), else
    trained once and cached.

    Importance is scored on ``data`` (a few batches): deterministic, so the pruned shape is rebuilt the same
    way before the cached weights are loaded into it.
    """
    def pruned_shape():
        model = copy.deepcopy(student)
        prune_least_important(model, data, head_fraction=fraction, neuron_fraction=fraction, max_batches=8)
        return model.eval()

    def recover(model):
        if recovery_epochs:
            distill(model, transfer(), student.encoder.config.d_model,
                    config=TrainConfig(epochs=recovery_epochs, lr=lr, progress=False))

    if (fraction, recovery_epochs, lr, name) == (0.5, 1, 2e-4, "capstone-pruned"):
        return load_model(PRUNED, pruned_shape, recover, retrain)
    return cached_model(name, f"f{fraction}-e{recovery_epochs}-lr{lr:g}", pruned_shape, recover)


def chapter_steps(up_to: str = "pruned") -> dict[str, Classifier]:
    """Chapter 12's compression steps on the sentiment teacher: {"trimmed", "student", ["pruned"]}.

    The chapter's cell in a function, for ``python -m minilib zoo rebuild``: the vocabulary trimmed
    to the task, a 3-layer student distilled on 2000 sentences, and that student pruned by half and recovered.
    """
    teacher = sentiment_teacher()
    tokenizer = load_tokenizer()
    splits = sentiment_dataset(tokenizer)
    train_subset = TensorDataset(*[t[:2000] for t in splits.train.tensors])
    steps = {"trimmed": trimmed_copy(teacher, splits, tokenizer.unk_token_id)}

    def transfer():  # the teacher's logits: computed only when a student is trained
        return teacher_targets(teacher, train_subset)

    steps["student"] = distilled_student(steps["trimmed"], transfer)
    if up_to == "pruned":
        steps["pruned"] = pruned_student(steps["student"], train_subset, transfer, fraction=0.5)
    return steps


def _chapter_student():
    return chapter_steps(up_to="student")


def _test_accuracy(model) -> dict:
    return {"test_accuracy": accuracy(model, sentiment_dataset(load_tokenizer()).test)}


_SETTINGS = {"seed": 0, "layers": list(STUDENT_LAYERS), "distil_epochs": 2, "lr": 2e-4, "temperature": 2.0,
             "alpha": 0.5, "transfer": "the teacher's logits on the first 2000 training sentences"}
STUDENT = Artefact("capstone_student", "chapter 12's 3-layer student of the trimmed teacher, distilled", "model",
                   run=_chapter_student, metrics=_test_accuracy,
                   depends=(distilled_student, chapter_steps, trimmed_copy), params=_SETTINGS, upstream=(TEACHER,))
PRUNED = Artefact("capstone_pruned", "chapter 12's student with half its heads and FFN neurons pruned, recovered",
                  "model", run=chapter_steps, metrics=_test_accuracy, depends=(pruned_student, chapter_steps),
                  params=_SETTINGS | {"fraction": 0.5, "recovery_epochs": 1, "scoring_batches": 8},
                  upstream=(STUDENT,))
ARTEFACTS = (STUDENT, PRUNED)


# ------------------------------------------------------------------------------------------- fairness
@torch.no_grad()
def changes_by_template(reference: nn.Module, compressed: nn.Module, data: TensorDataset,
                        templates: Sequence[int]) -> list[dict]:
    """Per sentence template: how often the compressed model's prediction differs from the reference's.

    data = (input_ids, attention_mask, labels), one row per sentence; ``templates[i]`` is row i's
    ``Example.template``. Returns one dict per template, most changed first: ``template``, ``n``,
    ``changed`` (fraction of its sentences whose predicted class changed), ``reference_accuracy``,
    ``compressed_accuracy``.
    """
    templates = torch.as_tensor(list(templates))
    labels = data.tensors[2]
    if len(templates) != len(labels):
        raise ValueError(f"need one template id per sentence: {len(labels)} sentences, {len(templates)} templates")
    before, after = predict_logits(reference, data).argmax(-1), predict_logits(compressed, data).argmax(-1)
    rows = []
    for template in templates.unique().tolist():
        rows_of = templates == template
        rows.append({"template": template, "n": int(rows_of.sum()),
                     "changed": (before[rows_of] != after[rows_of]).float().mean().item(),
                     "reference_accuracy": (before[rows_of] == labels[rows_of]).float().mean().item(),
                     "compressed_accuracy": (after[rows_of] == labels[rows_of]).float().mean().item()})
    return sorted(rows, key=lambda row: -row["changed"])


# ------------------------------------------------------------------------------------------- plotting
def plot_waterfall(steps: Sequence[Measurement], target=None, axes=None):
    """Size and latency after each compression step, as waterfall bars, with each step's accuracy on top.

    steps: measurements in the order the steps were applied (the first is the starting model). Each bar
    spans from the previous step's value to this one's: green when the step saved, red when it cost.
    The target's size and latency limits are drawn as dashed lines. Returns the two matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if not steps or not all(isinstance(s, Measurement) for s in steps):
        raise ValueError(f"steps must be a non-empty list of Measurement, got {steps!r}")
    target = None if target is None else resolve_target(target)
    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(11, 4))[1]
    names = [s.name for s in steps]
    for ax, field, unit, limit in ((axes[0], "size_mb", "size (MB)", target and target.max_size_mb),
                                   (axes[1], "latency_ms", "latency per call (ms, median)", target and target.max_latency_ms)):
        values = [getattr(s, field) for s in steps]
        starts = [0.0] + values[:-1]
        bottoms = [0.0] + [min(a, b) for a, b in zip(starts[1:], values[1:])]
        heights = [values[0]] + [abs(b - a) for a, b in zip(starts[1:], values[1:])]
        colors = ["tab:gray"] + ["tab:green" if b <= a else "tab:red" for a, b in zip(starts[1:], values[1:])]
        ax.bar(range(len(steps)), heights, bottom=bottoms, color=colors)
        ax.plot(range(len(steps)), values, "k_", markersize=18)  # where each step ends up
        for i, (value, step) in enumerate(zip(values, steps)):
            ax.annotate(f"{value:.3g}\nacc {step.accuracy:.3f}", (i, max(value, bottoms[i] + heights[i])),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
        if limit is not None and math.isfinite(limit):
            ax.axhline(limit, color="tab:red", ls="--", label=f"{target.name} limit {limit:g}")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(steps)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        ax.margins(y=0.2)
    if target is not None:
        axes[0].figure.suptitle(f"Each step's saving ({target.describe()})", fontsize=10)
    axes[0].figure.tight_layout()
    return axes
