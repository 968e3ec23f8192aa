"""Training: one small fit loop with the tricks that make Transformers train (chapter 03).

* **AdamW**: Adam with weight decay applied to the weights directly (Loshchilov & Hutter, 2019);
  biases and LayerNorm gains are not decayed.
* **learning-rate warm-up, then decay**: the rate grows linearly from 0 over the first ``warmup``
  fraction of the steps, then falls to 0 along a cosine (or a straight line).
* **gradient clipping**: when the gradient's global L2 norm exceeds ``clip_grad`` it is scaled down
  to that norm, so one bad batch cannot throw the weights far away.

A batch is a tuple of tensors (a row of a ``TensorDataset``); a loss function maps
``(model, batch)`` to a scalar. :func:`classification_loss`, :func:`seq2seq_loss` and
:func:`lm_loss` cover the course's three tasks. A training run is the model, its data and a
:class:`TrainConfig` record, which says how:

    history = fit(model, train, TrainConfig(epochs=4, lr=2e-3), val_data=val)
    history = fit(translator, task.train, TrainConfig(loss_fn=seq2seq_loss, metric_fn=None, epochs=6))
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from minilib.support.device import get_device, model_device, return_freed_memory, to_device
from minilib.support.threads import threads, training_threads

SCHEDULES = ("cosine", "linear", "constant")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """BERT's and GPT-2's initialisation, for a model trained from scratch: weights ~ N(0, std²), biases 0.

    Linear and embedding weights (embeddings of d = 64 drawn from PyTorch's default N(0, 1) give tied
    output logits of size ~√d, and a first loss far above log(vocab)); LayerNorm keeps gain 1, shift 0.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    return model


# ------------------------------------------------------------------------------------------------
# Losses: (model, batch) -> scalar
# ------------------------------------------------------------------------------------------------

def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Drop the padding columns no row of this batch needs (rows are padded on the right).

    input_ids, attention_mask ``(batch, seq)`` -> ``(batch, longest real length in the batch)``.
    """
    longest = int(attention_mask.sum(dim=1).max())
    return input_ids[:, :longest], attention_mask[:, :longest]


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of ``model(input_ids, attention_mask)`` against the labels.

    batch = ``(input_ids (batch, seq), attention_mask (batch, seq), labels (batch,))``.
    """
    input_ids, attention_mask, labels = batch
    logits = model(*trim_padding(input_ids, attention_mask))
    return F.cross_entropy(logits, labels)


def seq2seq_loss(model: nn.Module, batch, pad_id: int = 0) -> torch.Tensor:
    """Teacher forcing: the decoder reads ``<bos> y1 … yn`` and must predict ``y1 … yn <eos>``.

    batch = ``(src_ids (batch, src_len), tgt_ids (batch, tgt_len))``, both padded with ``pad_id``;
    ``model(src_ids, tgt_in, src_mask)`` returns logits ``(batch, tgt_len - 1, vocab)``.
    Padding positions are left out of the average.
    """
    src_ids, tgt_ids = batch
    tgt_in, tgt_out = tgt_ids[:, :-1], tgt_ids[:, 1:]
    logits = model(src_ids, tgt_in, src_mask=(src_ids != pad_id).long())
    return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=pad_id)


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy: batch = ``(inputs (batch, seq), targets (batch, seq))``, logits ``(batch, seq, vocab)``.

    ``exp(lm_loss)`` is the perplexity.
    """
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def evaluating(*models: nn.Module):
    """Run a block with ``models`` in eval mode (no dropout), then give each its own mode back, even after an error.

        with evaluating(model):          # an interrupted evaluation leaves a training model training
            logits = model(inputs)
    """
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def _batches(data: Dataset, batch_size: int, device) -> "iter[tuple[torch.Tensor, ...]]":
    for batch in DataLoader(data, batch_size=batch_size):
        yield to_device(tuple(batch), device)


@torch.no_grad()
def predict_logits(model: Callable, data: Dataset, batch_size: int = 256) -> torch.Tensor:
    """Logits ``(n, n_classes)`` of a classifier on ``data`` = ``(input_ids, attention_mask, labels)`` rows, on CPU.

    ``model`` is an ``nn.Module`` (run in eval mode, fed on its own device) or any other callable
    ``(input_ids, attention_mask) -> logits``, such as an ONNX Runtime session (fed CPU tensors).
    """
    is_module = isinstance(model, nn.Module)
    device = model_device(model) if is_module else torch.device("cpu")
    with evaluating(*([model] if is_module else [])):
        logits = [torch.as_tensor(model(*trim_padding(ids, mask))).float().cpu()
                  for ids, mask, *_ in _batches(data, batch_size, device)]
    return torch.cat(logits)


def accuracy(model: Callable, data: Dataset, batch_size: int = 256) -> float:
    """Fraction of rows of ``data`` whose arg-max logit equals the label (the last tensor of each row).

    ``model``: a classifier module or any callable ``(input_ids, attention_mask) -> logits`` (see :func:`predict_logits`).
    """
    labels = data.tensors[-1] if hasattr(data, "tensors") else torch.stack([row[-1] for row in data])
    return (predict_logits(model, data, batch_size).argmax(dim=-1) == labels).float().mean().item()


@torch.no_grad()
def mean_loss(model: nn.Module, data: Dataset, loss_fn: Callable = classification_loss, batch_size: int = 256) -> float:
    """``loss_fn`` averaged over every row of ``data`` (batches weighted by their size), in eval mode."""
    total, count = 0.0, 0
    with evaluating(model):
        for batch in _batches(data, batch_size, model_device(model)):
            total += loss_fn(model, batch).item() * len(batch[0])
            count += len(batch[0])
    return total / count


def evaluate(model: nn.Module, data: Dataset, metric_fn: Callable | None = accuracy, batch_size: int = 256,
             loss_fn: Callable | None = None) -> dict[str, float]:
    """``{"loss": mean loss_fn, <metric_fn's name>: metric_fn(model, data)}``, each only when given."""
    results = {}
    if loss_fn is not None:
        results["loss"] = mean_loss(model, data, loss_fn, batch_size)
    if metric_fn is not None:
        results[metric_fn.__name__] = metric_fn(model, data)
    return results


# ------------------------------------------------------------------------------------------------
# The learning-rate schedule
# ------------------------------------------------------------------------------------------------

def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Factor applied to the peak learning rate at optimiser step ``step`` (0-based).

    Warm-up: (step + 1) / warmup_steps. After it, with progress p from 0 to 1:
    cosine ½(1 + cos πp), linear 1 − p, constant 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1 - progress
    return 1.0


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW that decays matrices (weights, embeddings) but not vectors (biases, LayerNorm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


# ------------------------------------------------------------------------------------------------
# The fit loop
# ------------------------------------------------------------------------------------------------

@dataclass
class History:
    """What happened during :func:`fit`: one entry per optimiser step, and one metric dict per epoch.

    ``grad_norms`` are global L2 norms *before* clipping; ``val`` entries look like
    ``{"epoch": 1, "loss": 0.31, "accuracy": 0.9}``.
    """

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)

    def record(self, step: "Step") -> None:
        """A callback of :func:`fit`: keeps each step's loss, learning rate and gradient norm."""
        self.losses.append(step.loss)
        self.lrs.append(step.lr)
        self.grad_norms.append(step.grad_norm)


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`fit` trains: what it minimises and reports, for how long, how fast, where.

    ``loss_fn(model, batch)`` is minimised (:func:`classification_loss`, :func:`seq2seq_loss`, :func:`lm_loss`, or
    your own) and reported on the validation data with ``metric_fn(model, data)`` (None: the loss only). ``warmup`` is
    the fraction of all steps spent warming up (0 = none); ``clip_grad=None`` turns clipping off. ``device``
    defaults to :func:`minilib.support.device.get_device` (CUDA when present). ``progress`` shows a bar named
    ``desc``. A variant of a recipe is ``dataclasses.replace(config, lr=3e-3)``.
    """

    loss_fn: Callable = classification_loss
    metric_fn: Callable | None = accuracy
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    schedule: str = "cosine"
    clip_grad: float | None = 1.0
    seed: int = 0
    device: str | torch.device | None = None
    progress: bool = True
    desc: str | None = None

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is the fraction of steps spent warming up, in [0, 1); got {self.warmup!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be a positive max norm or None (no clipping), got {self.clip_grad!r}")
        lr_multiplier(0, 1, 0, self.schedule)  # rejects an unknown schedule
        if not callable(self.loss_fn) or (self.metric_fn is not None and not callable(self.metric_fn)):
            raise TypeError("loss_fn must be a function (model, batch) -> loss, and metric_fn one (model, data) -> "
                            "float or None")


@dataclass(frozen=True)
class Step:
    """What a callback of :func:`fit` sees after each optimiser step (``step`` counts from 1 over the whole run)."""

    model: nn.Module
    epoch: int
    step: int
    loss: float
    lr: float
    grad_norm: float


@torch.enable_grad()   # train even where a notebook turned gradients off (torch.set_grad_enabled(False))
def fit(model: nn.Module, train_data: Dataset, config: TrainConfig = TrainConfig(), val_data: Dataset | None = None,
        callbacks: Sequence[Callable[[Step], object]] = ()) -> History:
    """Train ``model`` in place on ``train_data`` as ``config`` says: AdamW, warm-up then decay, gradient clipping.

    After each optimiser step every callback is called with a :class:`Step`; after each epoch ``val_data`` (if
    given) is scored with the config's ``loss_fn`` and ``metric_fn``. Returns the :class:`History`. The model ends in
    eval mode on the config's device; every helper that takes it with data moves the data there. On the CPU a small
    model trains on one thread (:func:`minilib.support.threads.training_threads`: many small operations, which a
    second thread slows down on a shared or busy CPU).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (e.g. TrainConfig(epochs=3, lr=1e-3)), got "
                        f"{type(config).__name__}")
    if not hasattr(train_data, "__len__") or len(train_data) == 0:
        raise ValueError(f"train_data must be a non-empty dataset, got {type(train_data).__name__}")
    device = torch.device(config.device) if config.device is not None else get_device()
    examples = config.batch_size * _example_tokens(train_data)
    n_threads = training_threads(model, examples) if device.type == "cpu" else None
    with threads(n_threads or torch.get_num_threads()):
        return _fit(model, train_data, config, device, val_data, callbacks)


def _example_tokens(data: Dataset) -> int:
    """Tokens in one example: the size of its first tensor (its input ids), or 1 for anything else."""
    first = data[0]
    first = first[0] if isinstance(first, (tuple, list)) else first
    return first.numel() if isinstance(first, torch.Tensor) else 1


def _fit(model: nn.Module, train_data: Dataset, config: TrainConfig, device: torch.device,
         val_data: Dataset | None, callbacks: Sequence[Callable[[Step], object]]) -> History:
    set_seed(config.seed)
    model.to(device)
    loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed))
    total_steps = config.epochs * len(loader)
    warmup_steps = round(config.warmup * total_steps)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, config.schedule))
    history = History()
    # At most ~100 redraws however long the run: in a notebook each redraw is a widget message,
    # and a kernel that sends thousands of them drops some (nbval then waits for output forever).
    bar = tqdm(total=total_steps, desc=config.desc or "training", disable=not config.progress,
               miniters=max(1, total_steps // 100), mininterval=0.5)

    def show(step: Step) -> None:
        bar.set_postfix(loss=f"{step.loss:.3f}", lr=f"{step.lr:.2g}", refresh=False)
        bar.update()

    for epoch in range(1, config.epochs + 1):
        model.train()
        for batch in loader:
            batch = to_device(tuple(batch), device)
            loss = config.loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # clip_grad_norm_ returns the norm before clipping; with max_norm=inf it only measures it
            norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad or math.inf)
            step = Step(model, epoch, len(history.losses) + 1, loss.item(), scheduler.get_last_lr()[0], norm.item())
            optimizer.step()
            scheduler.step()
            for callback in (history.record, show, *callbacks):
                callback(step)
        if val_data is not None:
            history.val.append({"epoch": epoch, **evaluate(model, val_data, config.metric_fn,
                                                           loss_fn=config.loss_fn)})
            bar.set_postfix({f"val_{k}": f"{v:.3f}" for k, v in history.val[-1].items() if k != "epoch"})
    bar.close()
    model.eval()
    del optimizer, scheduler  # AdamW's two moments per weight: as large as the model, twice
    return_freed_memory()
    return history
