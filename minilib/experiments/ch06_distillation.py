"""Chapter 06's experiment: students trained four ways on the sentiment task, results cached on disk.

The techniques (losses, students, :func:`minilib.distill.distill`) are in :mod:`minilib.distill`; this
module trains the chapter's students by each of :data:`METHODS`, sweeps labels, depth and temperature
(:func:`chapter_runs`), and keeps each run's test accuracy: the chapter's runs are shipped in ``data/`` (the
``distill_students`` artefact), a learner's own runs go to their cache, so the chapter and
``python -m minilib bench 06`` share them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics

import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from minilib.deploy.hf import load_tokenizer
from minilib.distill import UNLABELLED, TransferColumns, distill, layer_map, student_from_teacher, teacher_targets
from minilib.experiments.artefacts import Artefact, cached_result
from minilib.experiments.teacher import TEACHER, sentiment_teacher
from minilib.support.bench import compare
from minilib.support.data import sentiment_dataset
from minilib.support.device import model_device, to_device
from minilib.support.train import TrainConfig, accuracy, fit
from minilib.transformer import Classifier

METHODS = ("labels only", "hard labels", "logits", "logits + layers")
"""How a student learns: from the labelled examples alone; from those plus the teacher's arg-max on the
unlabelled ones (self-training); from the teacher's soft targets (Hinton); and from its layers too (TinyBERT)."""


def hide_labels(data: TensorDataset, n_labelled: int, seed: int = 0) -> TensorDataset:
    """Keep ``n_labelled`` labels, equally many per class, drawn at random; mark the others :data:`UNLABELLED`.

    data holds (input_ids, attention_mask, labels); the sentences all stay, only labels are hidden.
    """
    input_ids, attention_mask, labels = data.tensors
    classes = labels.unique()
    if not 0 < n_labelled <= len(labels) or n_labelled % len(classes):
        raise ValueError(f"n_labelled must be a multiple of the {len(classes)} classes in [1, {len(labels)}]; "
                         f"got {n_labelled}")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for label in classes:
        members = (labels == label).nonzero().flatten()
        keep[members[torch.randperm(len(members), generator=generator)[:n_labelled // len(classes)]]] = True
    return TensorDataset(input_ids, attention_mask, torch.where(keep, labels, UNLABELLED))


def train_student(method: str, student: Classifier, transfer: TensorDataset, teacher_width: int,
                  config: TrainConfig = TrainConfig(epochs=4), temperature: float = 2.0, alpha: float = 0.5,
                  layer_weight: float = 1.0):
    """Train ``student`` in place by one of :data:`METHODS`, for the same number of optimiser steps whatever the method.

    transfer comes from :func:`teacher_targets` on a partly labelled set (see :func:`hide_labels`), with the
    teacher's hidden states and attentions for "logits + layers". ``config`` says how (its epochs are those of a
    method that trains on every sentence). "labels only" never sees the unlabelled sentences, so it runs more epochs
    over its few examples to get as many steps. Returns fit's History.
    """
    columns = TransferColumns.of(transfer)
    input_ids, attention_mask, labels = columns.input_ids, columns.attention_mask, columns.labels
    labelled = labels != UNLABELLED
    steps = config.epochs * math.ceil(len(labels) / config.batch_size)
    if method == "labels only":
        data = TensorDataset(input_ids[labelled], attention_mask[labelled], labels[labelled])
        epochs = max(1, round(steps / math.ceil(len(data) / config.batch_size)))
        return fit(student, data, dataclasses.replace(config, epochs=epochs))
    if method == "hard labels":
        pseudo_labels = torch.where(labelled, labels, columns.teacher_logits.argmax(-1))
        return fit(student, TensorDataset(input_ids, attention_mask, pseudo_labels), config)
    if method == "logits":
        return distill(student, columns.dataset(with_internals=False), teacher_width, temperature=temperature,
                       alpha=alpha, config=config)
    if method == "logits + layers":
        return distill(student, transfer, teacher_width, temperature=temperature, alpha=alpha,
                       hidden_weight=layer_weight, attention_weight=layer_weight, config=config)
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")


@dataclasses.dataclass(frozen=True)
class StudentRun:
    """One student trained on the sentiment task: how it learns, from how many labels, how big it is.

    It trains on the first ``n_sentences`` training sentences, ``n_labelled`` of which keep their label.
    The student keeps ``n_layers`` evenly spaced teacher layers (2 of 6: layers 0 and 3) and a rank-
    ``embedding_rank`` factorised embedding table (see :func:`chapter_student`).
    """

    method: str = "logits"
    seed: int = 0
    n_sentences: int = 2000
    n_labelled: int = 200
    n_layers: int = 2
    embedding_rank: int = 96
    temperature: float = 2.0
    epochs: int = 3
    lr: float = 3e-4


def chapter_student(teacher: Classifier, n_layers: int = 2, embedding_rank: int = 96) -> Classifier:
    """The chapter's student: ``n_layers`` teacher layers one stride apart (6 → 2 keeps 0 and 3), factorised embeddings."""
    stride = len(teacher.encoder.layers) // n_layers
    return student_from_teacher(teacher, list(range(0, stride * n_layers, stride)), embedding_rank)


def transfer_set(teacher: Classifier, train: TensorDataset, n_student_layers: int) -> TensorDataset:
    """The teacher's outputs on every training sentence, with the layers a student of that depth copies."""
    hidden_layers = layer_map(n_student_layers, len(teacher.encoder.layers))
    attention_layers = [i - 1 for i in hidden_layers[1:]]  # attentions[i - 1] is computed by layer i
    return teacher_targets(teacher, train, hidden_layers, attention_layers)


def run_students(teacher: Classifier, splits, runs: list[StudentRun], progress: bool = True) -> list[dict]:
    """Train and score each run (test accuracy), reusing results cached on disk; returns one dict per run.

    splits: the sentiment task's ``Splits`` of TensorDatasets (train is the transfer set, test is scored).
    A run's result is cached under a key of its settings and of the teacher's weights, so the chapter and
    ``python -m minilib bench 06`` share them and only missing runs are trained.
    """
    transfers: dict[tuple[int, int], TensorDataset] = {}

    def train_and_score(run: StudentRun) -> dict:
        key = (run.n_layers, run.n_sentences)
        if key not in transfers:
            sentences = TensorDataset(*(t[:run.n_sentences] for t in splits.train.tensors))
            transfers[key] = transfer_set(teacher, sentences, run.n_layers)
        columns = TransferColumns.of(transfers[key])
        sentences = TensorDataset(columns.input_ids, columns.attention_mask, columns.labels)
        transfer = columns._replace(labels=hide_labels(sentences, run.n_labelled, run.seed).tensors[2]).dataset()
        student = chapter_student(teacher, run.n_layers, run.embedding_rank)
        train_student(run.method, student, transfer, teacher.encoder.config.d_model,
                      TrainConfig(epochs=run.epochs, lr=run.lr, seed=run.seed, progress=False), run.temperature)
        return dataclasses.asdict(run) | {"accuracy": accuracy(student, splits.test)}

    teacher_id = _fingerprint(teacher)
    return [cached_result(STUDENTS, [teacher_id, dataclasses.asdict(run)], lambda run=run: train_and_score(run))
            for run in tqdm(runs, desc="students", disable=not progress)]


def teacher_accuracy(teacher: Classifier, test: TensorDataset) -> float:
    """The teacher's test accuracy (cached: the teacher is the slowest model to run)."""
    return cached_result(STUDENTS, [_fingerprint(teacher), "test accuracy", len(test)], lambda: accuracy(teacher, test))


def _fingerprint(model: nn.Module) -> str:
    """A short id of a model's weights, so cached results are dropped when the teacher is retrained."""
    digest = hashlib.sha1()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()[:12]


def chapter_runs(seeds=(0, 1, 2)) -> dict[str, list[StudentRun]]:
    """The chapter's experiments: every method over seeds, then (one seed) labels, student depth and T swept.

    Defaults (StudentRun): 200 labelled sentences of 2000, a 2-layer student with rank-96 embeddings,
    T = 2, 3 epochs. Runs shared between experiments are trained once (see :func:`run_students`).
    """
    return {
        "methods": [StudentRun(method, seed) for method in METHODS for seed in seeds],
        "labels": [StudentRun(method, n_labelled=n) for n in (40, 200, 2000) for method in ("labels only", "logits")],
        "depth": [StudentRun(method, n_layers=n) for n in (1, 2) for method in ("labels only", "logits")],
        "temperature": [StudentRun("logits", temperature=t) for t in (1.0, 2.0, 8.0)],
    }


def accuracy_by(results: list[dict], key: str = "method") -> dict:
    """Mean and spread (sample standard deviation; 0 for one run) of test accuracy, grouped by ``key``."""
    groups: dict = {}
    for result in results:
        groups.setdefault(result[key], []).append(result["accuracy"])
    return {value: (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0, len(accs))
            for value, accs in groups.items()}


def latency_comparison(models: dict[str, nn.Module], data: TensorDataset, batch_size: int = 32, repeats: int = 10):
    """Inference time of each model on one batch of ``data`` (padded as the task is), interleaved; first = baseline."""
    input_ids, attention_mask = data.tensors[0][:batch_size], data.tensors[1][:batch_size]

    def infer(model):
        batch = to_device((input_ids, attention_mask), model_device(model))

        def run():
            with torch.no_grad():
                model(*batch)
        return run

    for model in models.values():
        model.eval()
    return compare({name: infer(model) for name, model in models.items()}, warmup=3, repeats=repeats)


def _chapter_sweeps() -> None:
    """Every run of :func:`chapter_runs` and the teacher's accuracy, as chapter 06 and its headline ask for them."""
    teacher, splits = sentiment_teacher(), sentiment_dataset(load_tokenizer())
    for runs in chapter_runs().values():
        run_students(teacher, splits, runs, progress=False)
    teacher_accuracy(teacher, splits.test)


def _mean_accuracies(results: dict) -> dict:
    """Recorded metrics: each method's mean test accuracy over the seeds of the chapter's table, the teacher's."""
    defaults = dataclasses.asdict(StudentRun())
    table = [r for r in results.values() if isinstance(r, dict)
             and all(r[k] == v for k, v in defaults.items() if k not in ("method", "seed"))]
    teacher = [r for r in results.values() if isinstance(r, float)]
    return {f"{method}: mean test accuracy": mean for method, (mean, _, _) in accuracy_by(table).items()} | (
        {"teacher test accuracy": teacher[0]} if teacher else {})


STUDENTS = Artefact("distill_students", "chapter 06's sweeps: test accuracy of each of its 20 students, and the "
                    "teacher's", "results", run=_chapter_sweeps, metrics=_mean_accuracies,
                    depends=(run_students, chapter_runs, StudentRun, chapter_student, transfer_set, hide_labels,
                             train_student, teacher_accuracy),
                    params={"seed": 0, "seeds": [0, 1, 2],
                            "data": "sentiment_examples(seed=0, sizes=(4000, 500, 1000))"},
                    upstream=(TEACHER,))
ARTEFACTS = (TEACHER, STUDENTS)
"""What the chapter ships: the sentiment teacher (also used by chapters 07, 08, 11 and 12) and its students' results."""
