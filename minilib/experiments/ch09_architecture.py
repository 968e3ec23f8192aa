"""Chapter 09's designs: six small encoders, each one formula away from a 4-layer baseline, trained briefly on the
sentiment task. The trained classifiers are shipped in ``data/`` (:mod:`minilib.experiments.artefacts`), so the
chapter loads them; ``python -m minilib zoo rebuild ch09_base`` (etc.) trains them again.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from minilib.arch import build, task_token_ids, trim_vocabulary
from minilib.deploy.hf import load_tokenizer
from minilib.experiments.artefacts import Artefact, load_model
from minilib.support.data import sentiment_dataset, sentiment_examples
from minilib.support.train import TrainConfig, accuracy, fit
from minilib.transformer import Classifier, Encoder, TransformerConfig

DESIGNS = {  # name: (arch.build name or None for the baseline, options)
    "base (4×128)": (None, {}),
    "2 layers": ("fewer layers", dict(n_layers=2)),
    "narrow (d=64)": ("narrower", dict(d_model=64)),
    "bottleneck (b=64)": ("bottleneck", dict(d_bottleneck=64)),
    "grouped FFN (g=4)": ("grouped + shuffle", dict(groups=4)),
    "ALBERT (shared, e=32)": ("shared layers", dict(embedding_dim=32)),
}
RECIPE = dict(epochs=6, lr=1e-3, batch_size=32, seed=0)
"""Every design's training: 6 epochs of AdamW on the 4000 training sentences (``minilib.support.train.fit``)."""


def base_config(vocab_size: int) -> TransformerConfig:
    """The baseline: 4 post-norm layers of width 128, 4 heads, FFN width 512."""
    return TransformerConfig(vocab_size=vocab_size, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=64,
                             dropout=0.1)


def design_encoder(name: str, base: TransformerConfig, kept_ids: torch.Tensor, unk_id: int) -> Encoder:
    """The untrained encoder of design ``name`` (seed 0), its vocabulary trimmed to ``kept_ids``."""
    kind, options = DESIGNS[name]
    torch.manual_seed(0)
    encoder = Encoder(base) if kind is None else build(kind, base, **options)
    return trim_vocabulary(encoder, kept_ids, unk_id)


def trained_designs(train: TensorDataset, base: TransformerConfig, kept_ids: torch.Tensor, unk_id: int,
                    retrain: bool | None = None) -> dict[str, Classifier]:
    """{design name: its classifier trained on ``train`` by :data:`RECIPE`}, loaded from ``data/`` when shipped."""
    def trained(name):
        return load_model(ARTEFACTS[name], lambda: Classifier(design_encoder(name, base, kept_ids, unk_id), n_classes=2),
                          lambda model: fit(model, train, TrainConfig(progress=False, **RECIPE)), retrain)

    return {name: trained(name) for name in DESIGNS}


def _chapter_designs() -> dict[str, Classifier]:
    tokenizer = load_tokenizer()
    splits = sentiment_dataset(tokenizer)
    return trained_designs(splits.train, base_config(tokenizer.vocab_size), task_token_ids(*splits),
                           tokenizer.unk_token_id)


def _test_accuracy(model) -> dict:
    return {"test_accuracy": accuracy(model, sentiment_dataset(load_tokenizer()).test)}


def _slug(name: str) -> str:
    return "ch09_" + "".join(c if c.isalnum() else "_" for c in name.split(" (")[0].lower())


ARTEFACTS = {
    name: Artefact(_slug(name), f"chapter 09's {name} classifier, trained on the sentiment task", "model",
                   run=_chapter_designs, metrics=_test_accuracy,
                   depends=(trained_designs, design_encoder, base_config, sentiment_examples),
                   params={"seed": 0, "design": name, "options": DESIGNS[name][1], "recipe": RECIPE,
                           "data": "sentiment_examples(seed=0, sizes=(4000, 500, 1000))"})
    for name in DESIGNS
}


def grouped_ffn_breakdown(d_model: int = 256, d_ff: int = 1024, groups: int = 4, tokens: int = 32 * 128,
                          repeats: int = 10):
    """Why a grouped FFN with 1/groups of the FLOPs is not 1/groups of the time: the FFN alone and its parts,
    dense against grouped, timed interleaved on ``tokens`` vectors (untrained weights: time does not depend on
    training). Returns a :class:`~minilib.support.bench.Comparison` against the dense FFN.

    The grouped matrix products do 1/groups of the work, but in ``groups`` small products (an inner dimension of
    d_model / groups) that run less efficiently than one large one; the GELU and the bias run on the whole hidden
    layer in both designs; and the channel shuffle is one more copy of it, work the dense FFN never does.
    """
    import torch.nn.functional as F

    from minilib.arch import GroupedFeedForward, channel_shuffle
    from minilib.support.bench import compare
    from minilib.transformer import FeedForward

    torch.manual_seed(0)
    x = torch.randn(tokens, d_model)
    dense, grouped = FeedForward(d_model, d_ff).eval(), GroupedFeedForward(d_model, d_ff, groups).eval()
    hidden = grouped.up(x)
    dense_gemms = lambda: F.linear(F.linear(x, dense.up.weight), dense.down.weight)  # noqa: E731
    grouped_gemms = lambda: grouped.down(grouped.up(x))                              # noqa: E731  (bias included)
    with torch.inference_mode():
        return compare({"dense FFN": lambda: dense(x), f"grouped FFN (g={groups})": lambda: grouped(x),
                        "dense: the two matrix products": dense_gemms,
                        "grouped: the two grouped products": grouped_gemms,
                        "GELU on the hidden layer (both)": lambda: F.gelu(hidden),
                        "channel shuffle (grouped only)": lambda: channel_shuffle(hidden, groups)},
                       baseline="dense FFN", warmup=2, repeats=repeats)
