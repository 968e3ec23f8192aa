"""Chapter 11's two small models, shipped in ``data/``: a character-level language model (for perplexity) and a
date translator (for BLEU and exact match).

Both are the chapter's recipes, kept here so that ``python -m minilib zoo rebuild ch11_char_lm``
(or ``ch11_date_translator``) can train them again: on a 2-core laptop about a minute each, which a first run of
the chapter no longer spends.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from minilib.experiments.artefacts import Artefact, load_model
from minilib.metrics import perplexity
from minilib.support.data import CharLMData, TranslationData, char_lm_dataset, translation_dataset
from minilib.support.train import TrainConfig, fit, lm_loss, seq2seq_loss, set_seed
from minilib.transformer import EncoderDecoder, LanguageModel, TransformerConfig


@functools.cache
def lm_data() -> CharLMData:
    """Python's help topics in blocks of 64 characters."""
    return char_lm_dataset(block_size=64)


@functools.cache
def dates() -> TranslationData:
    """The date-normalisation task of chapter 03 ("march 3rd, 1998" → "1998-03-03")."""
    return translation_dataset()


def lm_config() -> TransformerConfig:
    """2 pre-norm layers of width 64, context 64: about 0.1 M parameters."""
    return TransformerConfig(vocab_size=len(lm_data().vocab), d_model=64, n_heads=4, n_layers=2, d_ff=256, max_len=64,
                             dropout=0.0, norm_first=True)


def translator_config() -> TransformerConfig:
    """A 2 + 2-layer encoder-decoder of width 64 over the dates' characters."""
    return TransformerConfig(vocab_size=len(dates().source_vocab), d_model=64, n_heads=4, n_layers=2, d_ff=256,
                             max_len=64, dropout=0.0)


def _new_language_model() -> LanguageModel:
    set_seed(0)
    return LanguageModel(lm_config())


def _new_translator() -> EncoderDecoder:
    set_seed(0)
    return EncoderDecoder(translator_config(), tgt_vocab_size=len(dates().target_vocab))


def train_language_model(model: LanguageModel) -> None:
    """The recipe: 6 epochs of next-character prediction, AdamW at lr 5e-3, batches of 32 blocks (about 1 000 steps)."""
    fit(model, lm_data().train, TrainConfig(loss_fn=lm_loss, metric_fn=None, epochs=6, batch_size=32, lr=5e-3, seed=0,
                                            desc="training chapter 11's character LM"))


def train_translator(model: EncoderDecoder) -> None:
    """The recipe: 4 epochs of teacher forcing on 4 000 dates, AdamW at lr 2e-3, batches of 32 (500 steps)."""
    fit(model, dates().train, TrainConfig(loss_fn=seq2seq_loss, metric_fn=None, epochs=4, batch_size=32, lr=2e-3,
                                          seed=0, desc="training chapter 11's date translator"))


def char_language_model(retrain: bool | None = None) -> LanguageModel:
    """Chapter 11's character-level language model (eval mode, CPU), as shipped."""
    return load_model(ARTEFACTS["ch11_char_lm"], _new_language_model, train_language_model, retrain)


def date_translator(retrain: bool | None = None) -> EncoderDecoder:
    """Chapter 11's date translator (eval mode, CPU), as shipped."""
    return load_model(ARTEFACTS["ch11_date_translator"], _new_translator, train_translator, retrain)


@dataclass(frozen=True)
class Translations:
    """A split's dates translated: ``sources``, the model's ``hypotheses`` and the ``references``, one string each."""

    sources: list[str]
    hypotheses: list[str]
    references: list[str]

    @property
    def exact_match(self) -> float:
        """Fraction of hypotheses equal to their reference."""
        return exact_match(self.hypotheses, self.references)


@torch.no_grad()
def translations(model: EncoderDecoder, data: TranslationData, split: str = "test") -> Translations:
    """Greedy translations of a split, one per date."""
    src_ids, tgt_ids = getattr(data, split).tensors
    generated = model.eval().generate(src_ids, max_new_tokens=tgt_ids.shape[1], bos_id=data.target_vocab.bos_id,
                                      eos_id=data.target_vocab.eos_id, src_mask=(src_ids != data.source_vocab.pad_id).long())
    sources = [data.source_vocab.decode(row) for row in src_ids]
    hypotheses = [data.target_vocab.decode(row) for row in generated]
    references = [data.target_vocab.decode(row[1:]) for row in tgt_ids]        # drop <bos>
    return Translations(sources, hypotheses, references)


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """Fraction of hypotheses equal to their reference."""
    return sum(h == r for h, r in zip(hypotheses, references)) / len(references)


ARTEFACTS = {
    "ch11_char_lm": Artefact(
        "ch11_char_lm", "chapter 11's character-level language model (2 layers, width 64, context 64)", "model",
        run=char_language_model, metrics=lambda model: {"test_perplexity": perplexity(model, lm_data().test)},
        depends=(train_language_model, _new_language_model, lm_config, lm_data),
        params={"seed": 0, "epochs": 6, "lr": 5e-3, "batch_size": 32, "data": "char_lm_dataset(block_size=64)"}),
    "ch11_date_translator": Artefact(
        "ch11_date_translator", "chapter 11's date translator (2 + 2 layers, width 64)", "model",
        run=date_translator, metrics=lambda model: {"test_exact_match": translations(model, dates()).exact_match},
        depends=(train_translator, _new_translator, translator_config, dates),
        params={"seed": 0, "epochs": 4, "lr": 2e-3, "batch_size": 32, "data": "translation_dataset()"}),
}
