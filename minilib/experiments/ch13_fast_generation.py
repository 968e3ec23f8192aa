"""Chapter 13's models and measurements: a character-level decoder on Python's documentation, its draft.

``decoder()`` (4 layers, width 256, 8 heads, context 512, 3.3 M parameters), ``draft_model()`` (1 layer,
width 128, distilled from the decoder) and ``grouped_decoder()`` (the decoder with 2 key/value heads,
uptrained) are shipped artefacts (``minilib.experiments.artefacts``): their recipes (``train_decoder``,
``train_draft``, ``uptrain``, seeded) take about a minute on a GPU together, an hour or more on a laptop CPU.
The chapter and its headline rows measure them with the functions below.
"""
from __future__ import annotations

import functools
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from minilib.experiments.artefacts import Artefact, load_model
from minilib.generation import grouped_query_model
from minilib.support.data import CharLMData, char_lm_dataset
from minilib.support.train import TrainConfig, fit, init_weights, lm_loss, set_seed
from minilib.transformer import LanguageModel, TransformerConfig

UPTRAIN_STEPS = 320         # 13% of the decoder's 2,490 training steps (the GQA paper uptrains with 5%)
CONTEXT = 512
DECODER = dict(d_model=256, n_heads=8, n_layers=4, d_ff=1024, dropout=0.1)
DRAFT = dict(d_model=128, n_heads=2, n_layers=1, d_ff=512)
GQA_KV_HEADS = 2            # n_heads / 4


@functools.cache
def lm_data() -> CharLMData:
    """Python's help topics in blocks of 512 characters (train / validation / test by whole documents)."""
    return char_lm_dataset(block_size=CONTEXT, seed=0)


def lm_config(dropout: float = 0.0, **sizes) -> TransformerConfig:
    """A GPT-2-style (pre-norm) character-level decoder config with the course's vocabulary and context 512."""
    return TransformerConfig(vocab_size=len(lm_data().vocab), max_len=CONTEXT, dropout=dropout, norm_first=True,
                             layer_norm_eps=1e-5, **sizes)


def _fresh(sizes: dict, seed: int):
    def skeleton():
        set_seed(seed)
        return init_weights(LanguageModel(lm_config(**sizes)))
    return skeleton


def train_decoder(model: LanguageModel, epochs: int = 30, seed: int = 0, device=None) -> None:
    """The decoder's recipe: AdamW, lr 2e-3, warm-up then cosine, batches of 8 × 512 characters, 30 epochs.

    About 20 s on a GPU (2,490 steps); on a laptop CPU an hour or more: the trained weights are shipped.
    """
    fit(model, lm_data().train, TrainConfig(loss_fn=lm_loss, metric_fn=None, epochs=epochs, batch_size=8, lr=2e-3,
                                            warmup=0.05, seed=seed, device=device, desc="training chapter 13's decoder"))
    model.cpu().eval()


def distillation_loss(teacher: LanguageModel):
    """loss_fn for ``fit``: KL(teacher ‖ student) of the next-character distributions (chapter 06's soft targets).

    A draft trained to imitate the decoder agrees with its greedy choices more often than one trained on the text.
    """
    def loss(student, batch):
        inputs, _ = batch
        with torch.no_grad():
            target = torch.log_softmax(teacher.to(inputs.device)(inputs), dim=-1)
        return F.kl_div(torch.log_softmax(student(inputs), dim=-1), target, log_target=True, reduction="batchmean") / inputs.shape[1]
    return loss


def train_draft(model: LanguageModel, epochs: int = 24, seed: int = 0, device=None) -> None:
    """The draft's recipe: distilled from :func:`decoder` on the training text, lr 3e-3, 24 epochs (seconds on a GPU)."""
    teacher = decoder()
    fit(model, lm_data().train, TrainConfig(loss_fn=distillation_loss(teacher), metric_fn=None, epochs=epochs,
                                            batch_size=8, lr=3e-3, warmup=0.05, seed=seed, device=device,
                                            desc="distilling chapter 13's draft model"))
    model.cpu().eval()
    teacher.cpu()


def decoder(retrain: bool | None = None) -> LanguageModel:
    """Chapter 13's decoder (eval mode, CPU), as shipped in ``data/``."""
    return load_model(ARTEFACTS["ch13_decoder"], _fresh(DECODER, 0), train_decoder, retrain)


def draft_model(retrain: bool | None = None) -> LanguageModel:
    """Chapter 13's one-layer draft model for speculative decoding (same vocabulary), as shipped."""
    return load_model(ARTEFACTS["ch13_draft"], _fresh(DRAFT, 1), train_draft, retrain)


def _grouped_and_uptrained(model: LanguageModel) -> None:
    model.load_state_dict(grouped_query_model(decoder(), GQA_KV_HEADS).state_dict())
    uptrain(model, steps=UPTRAIN_STEPS, device=None)


def grouped_decoder(retrain: bool | None = None) -> LanguageModel:
    """The decoder with its key/value heads mean-pooled to 2 and uptrained for ``UPTRAIN_STEPS`` steps, as shipped."""
    return load_model(ARTEFACTS["ch13_decoder_gqa2"], _fresh(dict(DECODER, n_kv_heads=GQA_KV_HEADS), 0),
                      _grouped_and_uptrained, retrain)


def _validation_loss(model) -> dict:
    """The recorded metric: mean next-character loss (nats) on 22 held-out blocks; perplexity = exp of it."""
    return {"validation_loss": math.log(perplexity(model, lm_data().validation, n_blocks=22))}


@torch.no_grad()
def perplexity(model, data: TensorDataset, n_blocks: int = 8, cache_factory=None) -> float:
    """exp(mean next-character loss) over the first ``n_blocks`` blocks of ``data``.

    cache_factory(model, batch) → a cache to run each batch through (e.g. a quantized KV cache: the
    keys and values attention reads are then the stored ones, exactly as when generating).
    """
    inputs, targets = data[:n_blocks]
    device = next(model.parameters()).device
    inputs, targets = inputs.to(device), targets.to(device)
    cache = None if cache_factory is None else cache_factory(model, inputs.shape[0])
    logits = model(inputs) if cache is None else model(inputs, cache=cache)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return loss.exp().item()


def uptrain(model: LanguageModel, steps: int = 30, batch_size: int = 8, seed: int = 0, lr: float = 1e-3,
            device="cpu") -> LanguageModel:
    """A short uptraining run (the GQA paper's): ``steps`` batches of ``batch_size`` × 512 training characters."""
    train = lm_data().train
    subset = Subset(train, [i % len(train) for i in range(batch_size * steps)])   # wraps round after an epoch
    fit(model, subset, TrainConfig(loss_fn=lm_loss, metric_fn=None, batch_size=batch_size, lr=lr, warmup=0.1,
                                   seed=seed, device=device, progress=False))
    return model.cpu().eval()


def time_per_token(fn, n_tokens: int, repeats: int = 3) -> float:
    """Best of ``repeats`` wall-clock times of ``fn()`` divided by ``n_tokens``: seconds per token."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / n_tokens


_DATA = "char_lm_dataset(block_size=512, seed=0) of Python's help topics"
_DECODER = Artefact("ch13_decoder", "chapter 13's character-level decoder (4 layers, width 256, 8 heads, context 512)",
                    "model", run=decoder, metrics=_validation_loss, depends=(train_decoder, lm_config, _fresh, lm_data),
                    params={"seed": 0, "sizes": DECODER, "epochs": 30, "lr": 2e-3, "batch_size": 8, "data": _DATA})
ARTEFACTS = {
    "ch13_decoder": _DECODER,
    "ch13_draft": Artefact("ch13_draft", "chapter 13's one-layer draft model, distilled from its decoder", "model",
                           run=draft_model, metrics=_validation_loss,
                           depends=(train_draft, distillation_loss, lm_config, _fresh, lm_data),
                           params={"seed": 0, "init_seed": 1, "sizes": DRAFT, "epochs": 24, "lr": 3e-3, "batch_size": 8,
                                   "data": _DATA},
                           upstream=(_DECODER,)),
    "ch13_decoder_gqa2": Artefact("ch13_decoder_gqa2", "chapter 13's decoder with 2 key/value heads (mean-pooled), "
                                  "uptrained", "model", run=grouped_decoder, metrics=_validation_loss,
                                  depends=(_grouped_and_uptrained, uptrain, lm_config, _fresh, lm_data),
                                  params={"seed": 0, "n_kv_heads": GQA_KV_HEADS, "steps": UPTRAIN_STEPS, "lr": 1e-3,
                                          "batch_size": 8, "data": _DATA},
                                  upstream=(_DECODER,)),
}
