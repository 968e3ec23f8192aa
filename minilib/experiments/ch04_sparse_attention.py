"""A long-range task: what sparse and linear attention can and cannot reach.

Every sequence is ``seq_len`` tokens (512 … 2048): a ``[CLS]`` token first, filler tokens, and,
somewhere, a *message* of ``signal_len`` identical signal tokens. The label is the message's class.
The classifier reads only the ``[CLS]`` token (``pooling="cls"``), so the answer has to travel from
the message to position 0, often hundreds of tokens away:

- dense attention: [CLS] sees every token, the message included;
- a sliding window of width w: [CLS] sees tokens 0 … w-1 only (one layer), so a message further
  away is invisible: chance accuracy;
- window + 1 global token: [CLS] is global, it sees everything again;
- linear attention: [CLS] sees everything through the sums S, z — but blurred.

:func:`long_range_dataset` generates the data,
:func:`long_range_experiment` trains one small model per attention and returns the accuracy table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import TensorDataset

from minilib.experiments.artefacts import Artefact, load_model
from minilib.linear_attention import linear_attention
from minilib.sparse import sliding_window_attention
from minilib.support.cache import cached_model
from minilib.support.data import Splits
from minilib.support.train import TrainConfig, fit, predict_logits, set_seed
from minilib.transformer import Classifier, Encoder, TransformerConfig

PAD, CLS, FIRST_FILLER = 0, 1, 2
EXPERIMENT_VERSION = "v1"


def vocab_size(n_classes=4, n_fillers=1):
    """[PAD], [CLS], the filler tokens, then one signal token per class."""
    return FIRST_FILLER + n_fillers + n_classes


def long_range_examples(n_examples, seq_len=512, n_classes=4, signal_len=8, n_fillers=1, seed=0):
    """``n_examples`` sequences as a TensorDataset (input_ids, attention_mask, labels).

    input_ids (n_examples, seq_len): [CLS], fillers drawn from ``n_fillers`` tokens, and a message of
    ``signal_len`` copies of signal token ``label`` starting at a uniformly random position ≥ 1.
    Deterministic for a given ``seed``.
    """
    for name, value, low in (("n_examples", n_examples, 1), ("seq_len", seq_len, 2), ("n_classes", n_classes, 2),
                             ("signal_len", signal_len, 1), ("n_fillers", n_fillers, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if signal_len > seq_len - 1:
        raise ValueError(f"the message ({signal_len} tokens) must fit after [CLS] in seq_len={seq_len}")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(FIRST_FILLER, FIRST_FILLER + n_fillers, (n_examples, seq_len), generator=generator)
    input_ids[:, 0] = CLS
    labels = torch.randint(0, n_classes, (n_examples,), generator=generator)
    starts = torch.randint(1, seq_len - signal_len + 1, (n_examples,), generator=generator)
    message = starts[:, None] + torch.arange(signal_len)                 # (n_examples, signal_len)
    input_ids.scatter_(1, message, (FIRST_FILLER + n_fillers + labels)[:, None].expand(-1, signal_len))
    return TensorDataset(input_ids, torch.ones_like(input_ids), labels)


def long_range_dataset(seed=0, seq_len=512, sizes=(1000, 300, 300), n_classes=4, signal_len=8, n_fillers=1):
    """Train / validation / test splits of :func:`long_range_examples`, each from its own seed."""
    if len(sizes) != 3:
        raise ValueError(f"sizes must be (train, validation, test), got {sizes!r}")
    return Splits(*(long_range_examples(size, seq_len, n_classes, signal_len, n_fillers, seed=3 * seed + i)
                    for i, size in enumerate(sizes)))


def message_distance(input_ids, n_fillers=1):
    """How far each message starts from [CLS]: (batch, seq) → (batch,) positions of the first signal token."""
    is_signal = input_ids >= FIRST_FILLER + n_fillers
    if not is_signal.any(dim=1).all():
        raise ValueError("every sequence must contain a message (a token ≥ FIRST_FILLER + n_fillers)")
    return is_signal.int().argmax(dim=1)


def attentions(window=32):
    """The four attentions the experiment compares, as plug-ins for :class:`MultiHeadAttention`."""
    return {
        "dense": None,
        f"window {window}": partial(sliding_window_attention, window=window),
        f"window {window} + 1 global": partial(sliding_window_attention, window=window, global_tokens=1),
        "linear (elu+1)": partial(linear_attention, feature_map="elu"),
    }


def long_range_model(attention=None, seq_len=512, n_classes=4, n_fillers=1, d_model=32, n_heads=1, n_layers=1):
    """A one-layer, one-head encoder (d_model 32) that classifies from its [CLS] token."""
    config = TransformerConfig(vocab_size=vocab_size(n_classes, n_fillers), d_model=d_model, n_heads=n_heads,
                               n_layers=n_layers, d_ff=2 * d_model, max_len=seq_len, dropout=0.0,
                               position="sinusoidal")
    return Classifier(Encoder(config, attention=attention), n_classes, pooling="cls", dropout=0.0)


@dataclass
class LongRangeResult:
    """One row of the accuracy table."""

    attention: str
    accuracy: float          # on the test split
    near_accuracy: float     # messages that start inside the window of [CLS]
    far_accuracy: float      # messages beyond it
    train_seconds: float     # seconds to train it (or to load it from the cache)


CHAPTER_SETTINGS = dict(seq_len=512, window=32, train_size=1000, epochs=1, batch_size=16, lr=3e-3, seed=0)
"""The settings of chapters 04 and 05: their four trained models are shipped in ``data/``."""


def long_range_experiment(seq_len=512, window=32, train_size=1000, epochs=1, batch_size=16, lr=3e-3, seed=0,
                          progress=True, cache=True, retrain=None):
    """Train one small model per attention on the long-range task; return (results, models).

    results: a list of :class:`LongRangeResult`; models: {attention name: trained Classifier}.
    With ``cache`` the trained weights are loaded instead of trained: with the chapter's settings
    (:data:`CHAPTER_SETTINGS`) from ``data/``, where they are shipped (``retrain=True`` trains them here
    when the shipped copy is unusable); with other settings from the learner's cache
    (:func:`minilib.support.cache.cached_model`), where the first call keeps them.
    """
    data = long_range_dataset(seed=seed, seq_len=seq_len, sizes=(train_size, 300, 300))
    near = message_distance(data.test.tensors[0]) < window
    results, models = [], {}
    for name, attention in attentions(window).items():
        def skeleton():
            set_seed(seed)                                               # the same initial weights every time
            return long_range_model(attention, seq_len)

        def train(model):
            fit(model, data.train, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                               progress=progress, desc=name))

        start = time.perf_counter()
        settings = dict(seq_len=seq_len, window=window, train_size=train_size, epochs=epochs,
                        batch_size=batch_size, lr=lr, seed=seed)
        if cache and settings == CHAPTER_SETTINGS:
            model = load_model(ARTEFACTS[name], skeleton, train, retrain)
        elif cache:
            tag = "".join(c if c.isalnum() else "_" for c in name)
            recipe = f"n{seq_len}_w{window}_t{train_size}_e{epochs}_b{batch_size}_lr{lr:g}_s{seed}"
            model = cached_model(f"long_range_{tag}_{recipe}", EXPERIMENT_VERSION,
                                 skeleton, train)
        else:
            model = skeleton()
            train(model)
        seconds = time.perf_counter() - start
        # batches of 32: at n = 512 a dense layer's scores are 32 · heads · 512² floats, not 256 · heads · 512²
        correct = predict_logits(model, data.test, batch_size=32).argmax(dim=-1) == data.test.tensors[2]
        results.append(LongRangeResult(name, correct.float().mean().item(), _mean(correct[near]),
                                       _mean(correct[~near]), seconds))
        models[name] = model
    return results, models


def results_table(results):
    """The accuracy table as text (a notebook can also show it as a DataFrame-free HTML table)."""
    header = f"{'attention':<26}{'accuracy':>10}{'near':>8}{'far':>8}{'train s':>9}"
    rows = [f"{r.attention:<26}{r.accuracy:>10.3f}{r.near_accuracy:>8.3f}{r.far_accuracy:>8.3f}{r.train_seconds:>9.1f}"
            for r in results]
    return "\n".join([header, "-" * len(header), *rows])


def _mean(flags):
    return flags.float().mean().item() if flags.numel() else float("nan")


def _chapter_experiment():
    return long_range_experiment(progress=False)


def _chapter_accuracy(model) -> dict:
    settings = CHAPTER_SETTINGS
    data = long_range_dataset(seed=settings["seed"], seq_len=settings["seq_len"],
                              sizes=(settings["train_size"], 300, 300))
    correct = predict_logits(model, data.test).argmax(dim=-1) == data.test.tensors[2]
    return {"test_accuracy": correct.float().mean().item()}


ARTEFACTS = {
    name: Artefact("long_range_" + "_".join("".join(c if c.isalnum() else " " for c in name).split()),
                   f"chapter 04's one-layer {name} classifier on the long-range task", "model",
                   run=_chapter_experiment, metrics=_chapter_accuracy,
                   depends=(long_range_experiment, long_range_model, long_range_examples, long_range_dataset,
                            attentions),
                   params=CHAPTER_SETTINGS | {"attention": name})
    for name in attentions(CHAPTER_SETTINGS["window"])
}
"""The chapter's four trained models, by attention name."""
