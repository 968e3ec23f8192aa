"""Training: one small fit loop with the tricks that make Transformers train (chapter 03).

* **AdamW**: Adam with weight decay applied to the weights directly (Loshchilov & Hutter, 2019);
  biases and LayerNorm gains are not decayed.
* **learning-rate warm-up, then decay**: the rate grows linearly from 0 over the first ``warmup``
  fraction of the steps, then falls to 0 along a cosine (or a straight line).
* **gradient clipping**: when the gradient's global L2 norm exceeds ``clip_grad`` it is scaled down
  to that norm, so one bad batch cannot throw the weights far away.

A batch is a tuple of tensors (a row of a ``TensorDataset``); a loss function maps
``(model, batch)`` to a scalar. :func:`classification_loss`, :func:`seq2seq_loss` and
:func:`lm_loss` cover the course's three tasks.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from minilib.support.device import get_device, model_device, to_device  # noqa: F401  (get_device: the course's device)
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


def _check_fit_args(train_data, epochs, batch_size, lr, warmup, clip_grad):
    if not hasattr(train_data, "__len__") or len(train_data) == 0:
        raise ValueError(f"train_data must be a non-empty dataset, got {type(train_data).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is the fraction of steps spent warming up, in [0, 1); got {warmup!r}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be a positive max norm or None (no clipping), got {clip_grad!r}")


@torch.enable_grad()   # train even where a notebook turned gradients off (torch.set_grad_enabled(False))
def fit(model: nn.Module, train_data: Dataset, val_data: Dataset | None = None,
        loss_fn: Callable = classification_loss, metric_fn: Callable | None = accuracy, epochs: int = 1,
        batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.01, warmup: float = 0.1,
        schedule: str = "cosine", clip_grad: float | None = 1.0, seed: int = 0, device=None,
        progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` in place with AdamW, warm-up then ``schedule`` decay, and gradient clipping.

    ``warmup`` is the fraction of all steps spent warming up (0 = none); ``clip_grad=None`` turns
    clipping off. After each epoch, ``val_data`` (if given) is scored with ``loss_fn`` and ``metric_fn``.
    The model ends in eval mode on ``device`` (default: :func:`minilib.support.device.get_device`, CUDA when present);
    every helper that takes it with data moves the data there. On the CPU a small model trains on one thread
    (:func:`minilib.support.threads.training_threads`: many small operations, which a second thread slows down
    on a shared or busy CPU).
    """
    _check_fit_args(train_data, epochs, batch_size, lr, warmup, clip_grad)
    device = torch.device(device) if device is not None else get_device()
    n_threads = training_threads(model, batch_size * _example_tokens(train_data)) if device.type == "cpu" else None
    with threads(n_threads or torch.get_num_threads()):
        return _fit(model, train_data, val_data, loss_fn, metric_fn, epochs, batch_size, lr, weight_decay, warmup,
                    schedule, clip_grad, seed, device, progress, desc)


def _example_tokens(data: Dataset) -> int:
    """Tokens in one example: the size of its first tensor (its input ids), or 1 for anything else."""
    first = data[0]
    first = first[0] if isinstance(first, (tuple, list)) else first
    return first.numel() if isinstance(first, torch.Tensor) else 1


def _fit(model, train_data, val_data, loss_fn, metric_fn, epochs, batch_size, lr, weight_decay, warmup, schedule,
         clip_grad, seed, device, progress, desc) -> History:
    lr_multiplier(0, 1, 0, schedule)  # rejects an unknown schedule before any work
    set_seed(seed)
    model.to(device)
    loader = DataLoader(train_data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    total_steps = epochs * len(loader)
    warmup_steps = round(warmup * total_steps)
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, schedule))
    history = History()
    # At most ~100 redraws however long the run: in a notebook each redraw is a widget message,
    # and a kernel that sends thousands of them drops some (nbval then waits for output forever).
    bar = tqdm(total=total_steps, desc=desc or "training", disable=not progress,
               miniters=max(1, total_steps // 100), mininterval=0.5)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in loader:
            batch = to_device(tuple(batch), device)
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # clip_grad_norm_ returns the norm before clipping; with max_norm=inf it only measures it
            norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
            history.losses.append(loss.item())
            history.lrs.append(scheduler.get_last_lr()[0])
            history.grad_norms.append(norm.item())
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{history.lrs[-1]:.2g}", refresh=False)
            bar.update()
        if val_data is not None:
            history.val.append({"epoch": epoch, **evaluate(model, val_data, metric_fn, loss_fn=loss_fn)})
            bar.set_postfix({f"val_{k}": f"{v:.3f}" for k, v in history.val[-1].items() if k != "epoch"})
    bar.close()
    model.eval()
    del optimizer, scheduler  # AdamW's two moments per weight: as large as the model, twice
    return_freed_memory()
    return history


def return_freed_memory() -> None:
    """Hand memory that PyTorch has freed back to the operating system.

    On Linux, glibc keeps freed memory for the process's next allocations, so after training a notebook kernel
    goes on holding the optimizer's state and the activations (about 270 MB after fine-tuning MiniLM); on a 2 GB
    Binder that decides whether the chapter fits. ``malloc_trim`` returns it. Elsewhere this does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
