"""The chapter's experiment on the real MiniLM: fp32 vs ``minilib`` int8 and int4 vs PyTorch's libraries.

The libraries are reference rows (:mod:`minilib.experiments.library_rows`): PyTorch's deprecated
``quantize_dynamic`` always, torchao's int8 and int4 with ``torchao=True`` (an
:class:`minilib.support.optional.Unavailable` row where torchao is missing; the measuring functions skip it).

Shared by the notebook and ``python -m minilib bench 07`` so that both measure the same thing:
size in MB, latency (median, ratios measured interleaved in one run), and output fidelity (cosine
similarity of sentence embeddings to fp32's, on real English sentences).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from minilib.deploy.hf import sentence_embeddings
from minilib.experiments.library_rows import (
    TORCH_AO_DEPRECATED,
    copy_sharing_embeddings,
    torch_ao_dynamic,
    torchao_variants,
)
from minilib.quant.int4 import Int4Linear
from minilib.quant.int8 import QuantLinear
from minilib.quant.model import quantize_model
from minilib.support.bench import Comparison, compare, model_size_bytes
from minilib.support.data import lm_text
from minilib.support.device import return_freed_memory
from minilib.support.optional import Unavailable, runnable

FP32, INT8, INT8_COMPILED, INT4 = "fp32", "minilib int8", "minilib int8 + compile", "minilib int4 weights"
TORCH_AO = TORCH_AO_DEPRECATED


def real_sentences(n: int = 64, min_words: int = 6, max_words: int = 40) -> list[str]:
    """``n`` English sentences from Python's own documentation prose (``minilib.support.data.lm_text``), in order."""
    sentences = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(lm_text().split())):
        if min_words <= len(sentence.split()) <= max_words and sentence[0].isupper():
            sentences.append(sentence)
            if len(sentences) == n:
                return sentences
    raise ValueError(f"lm_text() has only {len(sentences)} sentences of {min_words}-{max_words} words, asked for {n}")


def quantized_variants(model: nn.Module, compiled: bool = False, skip=(), torchao: bool = False
                       ) -> dict[str, nn.Module | Unavailable]:
    """The float model and its quantized versions, all in eval mode. ``compiled`` adds the torch.compile int8
    path, ``torchao`` the three torchao rows (each an Unavailable where torchao cannot build it)."""
    def ours(**options):   # quantize_model on a copy that shares the float embeddings with ``model``
        return quantize_model(copy_sharing_embeddings(model), skip=skip, inplace=True, **options).eval()

    variants = {FP32: model.eval(), TORCH_AO: torch_ao_dynamic(model).eval(), INT8: ours(bits=8)}
    if compiled:
        variants[INT8_COMPILED] = ours(bits=8, compiled=True)
    variants[INT4] = ours(bits=4)
    if torchao:
        variants.update(torchao_variants(model))
    return_freed_memory()   # the float copies each quantizer started from
    return variants


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's linear layers (float, int8 or int4; each layer counted once)."""
    kinds = (nn.Linear, QuantLinear, Int4Linear, torch.ao.nn.quantized.Linear)  # the last: quantize_dynamic's layers
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    return sum(model_size_bytes(m) for m in layers)


def sizes_mb(variants: dict[str, nn.Module]) -> dict[str, float]:
    """Whole-model size in MB (weights, buffers and packed integers at their real size); Unavailable rows skipped."""
    return {name: model_size_bytes(m) / 1e6 for name, m in runnable(variants).items()}


def embedding_cosines(variants: dict[str, nn.Module], tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    """Per sentence, cosine similarity of each variant's sentence embedding to the fp32 one: ``(n_sentences,)``.
    Unavailable rows are skipped."""
    reference = sentence_embeddings(variants[FP32], tokenizer, sentences)
    return {name: (sentence_embeddings(m, tokenizer, sentences) * reference).sum(-1)
            for name, m in runnable(variants).items() if name != FP32}


def latency(variants: dict[str, nn.Module], batch: int = 32, seq: int = 128, warmup: int = 1, repeats: int = 5,
            vocab_size: int = 30522) -> Comparison:
    """Interleaved timing of one forward pass on ``(batch, seq)`` random token ids; ratios against fp32.
    Unavailable rows are skipped."""
    variants = runnable(variants)
    ids = torch.randint(1, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))  # 0 is padding
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for model in variants.values():  # first call: lazy initialisation (and compilation) outside the timing
            model(input_ids=ids, attention_mask=mask)
        return compare({name: (lambda m=m: m(input_ids=ids, attention_mask=mask)) for name, m in variants.items()},
                       baseline=FP32, warmup=warmup, repeats=repeats)
