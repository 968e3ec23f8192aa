"""Evaluation metrics from scratch (chapter 11): perplexity, BLEU and ROUGE.

Each function is written plainly, with the formula next to the line that computes it, and is tested
against the reference implementation the field uses:

- :func:`perplexity` — ``exp`` of the mean token negative log-likelihood; a model that spreads its
  probability uniformly over ``V`` tokens has perplexity exactly ``V``.
- :func:`bleu` — corpus BLEU-4 with brevity penalty (Papineni et al., 2002), equal to
  ``sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method=...)`` (same 0–100 scale).
  Tokenisation is **whitespace splitting** (``str.split()``): pass text that is already tokenised
  (words separated by spaces, or characters separated by spaces for a character-level task).
  sacrebleu's default ``tokenize="13a"`` also splits off punctuation, so compare with ``tokenize="none"``.
- :func:`rouge` — ROUGE-1, ROUGE-2 and ROUGE-L F-scores (Lin, 2004), equal to Google's ``rouge-score``
  package with its defaults (``RougeScorer([...], use_stemmer=False)``): lower-case, every run of
  characters other than ``a-z0-9`` is a separator, no stemming.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from minilib.support.device import model_device
from minilib.support.train import evaluating

# ----------------------------------------------------------------------------------------------
# Perplexity
# ----------------------------------------------------------------------------------------------


def _logits_of(output) -> torch.Tensor:
    """The logits tensor of a model's output: a tensor, or an object with ``.logits`` (Hugging Face)."""
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            "perplexity needs a model that returns logits (batch, seq, vocab) as a tensor or as `.logits`; "
            f"the model returned {type(output).__name__}"
        )
    return logits


@torch.no_grad()
def mean_nll(model: torch.nn.Module, data, batch_size: int = 64, device=None, cache_factory=None) -> float:
    """Mean negative log-likelihood per predicted token, in nats.

    ``data`` yields pairs ``(input_ids (seq,), target_ids (seq,))`` (e.g. a ``TensorDataset``) where
    ``target_ids[t]`` is the token that follows ``input_ids[:t+1]``; targets equal to ``-100`` are ignored.
    ``model(input_ids (batch, seq))`` must return logits ``(batch, seq, vocab)``. cache_factory(model, batch) → a
    KV cache to run each batch through (chapter 13: a quantized cache, whose stored keys and values attention
    then reads exactly as when generating).

        NLL = −(1/N) Σ_t log p(target_t | input_≤t)      over the N predicted tokens
    """
    if len(data) == 0:
        raise ValueError("perplexity needs at least one (input_ids, target_ids) example; got an empty dataset")
    device = device or model_device(model)
    total_nll, total_tokens = 0.0, 0
    with evaluating(model):
        for input_ids, target_ids in DataLoader(data, batch_size=batch_size):
            input_ids, target_ids = input_ids.to(device), target_ids.to(device)
            if cache_factory is None:
                output = model(input_ids)
            else:
                output = model(input_ids, cache=cache_factory(model, input_ids.shape[0]))
            logits = _logits_of(output)
            if logits.shape[:-1] != target_ids.shape:
                raise ValueError(
                    f"logits must have shape (batch, seq, vocab) matching targets {tuple(target_ids.shape)}; "
                    f"got {tuple(logits.shape)}"
                )
            total_nll += F.cross_entropy(logits.flatten(0, -2).float(), target_ids.flatten(), reduction="sum").item()
            total_tokens += (target_ids != -100).sum().item()
    return total_nll / total_tokens


def perplexity(model: torch.nn.Module, data, batch_size: int = 64, device=None, cache_factory=None) -> float:
    """Perplexity = exp(mean NLL per token): the number of equally likely tokens the model hesitates between.

    A uniform model over ``V`` tokens has perplexity ``V``; a perfect model has 1. See :func:`mean_nll` for ``data``
    and ``cache_factory``.
    """
    return math.exp(mean_nll(model, data, batch_size=batch_size, device=device, cache_factory=cache_factory))


# ----------------------------------------------------------------------------------------------
# Shared input checks for BLEU and ROUGE
# ----------------------------------------------------------------------------------------------


def _reference_lists(hypotheses: Sequence[str], references: Sequence) -> list[list[str]]:
    """Check the inputs and return, for every hypothesis, its list of references.

    ``references[i]`` is a string (one reference) or a list of strings (several references).
    """
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists of strings, not a single string; wrap it: [text]")
    if len(hypotheses) == 0:
        raise ValueError("need at least one hypothesis; got an empty list")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"need one reference (or list of references) per hypothesis; "
            f"got {len(hypotheses)} hypotheses and {len(references)} references"
        )
    ref_lists = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, (hyp, refs) in enumerate(zip(hypotheses, ref_lists)):
        if not isinstance(hyp, str):
            raise TypeError(f"hypothesis {i} must be a string; got {type(hyp).__name__}")
        if not refs or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i}] must be a string or a non-empty list of strings; got {refs!r}")
    return ref_lists


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """How often each n-gram (a tuple of ``n`` tokens) occurs in ``tokens``."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# ----------------------------------------------------------------------------------------------
# BLEU
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BleuScore:
    """Corpus BLEU (0–100, like sacrebleu) with the pieces it is made of."""

    score: float
    precisions: tuple[float, ...]  # modified n-gram precisions p_1..p_N, in percent
    brevity_penalty: float
    hyp_length: int  # c: total hypothesis tokens
    ref_length: int  # r: total length of the closest reference of every hypothesis

    def __str__(self) -> str:
        ps = "/".join(f"{p:.1f}" for p in self.precisions)
        return f"BLEU = {self.score:.2f} {ps} (BP = {self.brevity_penalty:.3f} hyp_len = {self.hyp_length} ref_len = {self.ref_length})"


def _closest_length(hyp_len: int, ref_lens: list[int]) -> int:
    """The reference length closest to the hypothesis length (the shorter one on a tie)."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def bleu(hypotheses: Sequence[str], references: Sequence, max_order: int = 4, smooth: str = "none") -> BleuScore:
    """Corpus BLEU of whitespace-tokenised ``hypotheses`` against ``references``.

    ``references[i]`` is one reference string or a list of them. The counts are summed over the corpus
    first, then combined (that is what "corpus" BLEU means — not an average of sentence scores):

        p_n  = Σ min(count_hyp(g), max_ref count_ref(g)) / Σ count_hyp(g)     over n-grams g  (clipped precision)
        BP   = 1 if c > r else exp(1 − r/c)                                   c = hyp tokens, r = closest ref tokens
        BLEU = BP · exp( (1/N) Σ_n log p_n )                                  geometric mean of p_1..p_N

    ``smooth="none"`` is the paper's formula: one p_n = 0 makes BLEU 0. ``smooth="exp"`` (sacrebleu's default)
    replaces the k-th zero p_n by 1 / (2^k · Σ count_hyp), which keeps short sentences from scoring exactly 0.
    """
    if smooth not in ("none", "exp"):
        raise ValueError(f"smooth must be 'none' or 'exp'; got {smooth!r}")
    if max_order < 1:
        raise ValueError(f"max_order must be ≥ 1; got {max_order}")
    ref_lists = _reference_lists(hypotheses, references)
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hyp, refs in zip(hypotheses, ref_lists):
        hyp_tokens, ref_tokens = hyp.split(), [r.split() for r in refs]
        hyp_length += len(hyp_tokens)
        ref_length += _closest_length(len(hyp_tokens), [len(r) for r in ref_tokens])
        for n in range(1, max_order + 1):
            hyp_ngrams = ngram_counts(hyp_tokens, n)
            max_ref_ngrams = Counter()  # each n-gram's largest count in any one reference: the clip
            for r in ref_tokens:
                max_ref_ngrams |= ngram_counts(r, n)
            matches[n - 1] += sum(min(count, max_ref_ngrams[g]) for g, count in hyp_ngrams.items())
            totals[n - 1] += sum(hyp_ngrams.values())

    brevity_penalty = 1.0 if hyp_length > ref_length else (math.exp(1 - ref_length / hyp_length) if hyp_length else 0.0)
    precisions = _precisions(matches, totals, smooth)
    if matches[0] == 0 or min(precisions) == 0:  # no word matches at all, or log 0: BLEU is 0
        score = 0.0
    else:
        score = brevity_penalty * math.exp(sum(math.log(p) for p in precisions) / max_order)
    return BleuScore(100 * score, tuple(100 * p for p in precisions), brevity_penalty, hyp_length, ref_length)


def _precisions(matches: list[int], totals: list[int], smooth: str) -> list[float]:
    """Modified precisions p_n = matches_n / totals_n, with sacrebleu's "exp" smoothing of zero matches."""
    precisions, zeros = [], 0
    for m, t in zip(matches, totals):
        if t == 0:  # no hypothesis is n tokens long: p_n undefined, BLEU is 0
            precisions.append(0.0)
        elif m == 0 and smooth == "exp":
            zeros += 1
            precisions.append(1 / (2**zeros * t))
        else:
            precisions.append(m / t)
    return precisions


# ----------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer: lower-case, split on anything that is not a-z or 0-9, no stemming."""
    return _NOT_ALPHANUMERIC.sub(" ", text.lower()).split()


@dataclass(frozen=True)
class PRF:
    """Precision, recall and their harmonic mean F = 2PR / (P + R)."""

    precision: float
    recall: float
    fmeasure: float

    @classmethod
    def from_counts(cls, overlap: int, hyp_total: int, ref_total: int) -> "PRF":
        p, r = overlap / max(hyp_total, 1), overlap / max(ref_total, 1)
        return cls(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


def rouge_n(hyp_tokens: Sequence[str], ref_tokens: Sequence[str], n: int) -> PRF:
    """ROUGE-N: n-gram overlap Σ min(count_hyp, count_ref); recall divides by the reference's n-grams."""
    hyp, ref = ngram_counts(hyp_tokens, n), ngram_counts(ref_tokens, n)
    overlap = sum(min(count, hyp[g]) for g, count in ref.items())
    return PRF.from_counts(overlap, sum(hyp.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (in order, gaps allowed), by dynamic programming, O(|a|·|b|)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            # L[i][j] = L[i-1][j-1] + 1 if a_i == b_j else max(L[i-1][j], L[i][j-1])
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hyp_tokens: Sequence[str], ref_tokens: Sequence[str]) -> PRF:
    """ROUGE-L: P = LCS/|hyp|, R = LCS/|ref| with LCS the longest common subsequence."""
    return PRF.from_counts(lcs_length(hyp_tokens, ref_tokens), len(hyp_tokens), len(ref_tokens))


def rouge_scores(hypothesis: str, reference: str) -> dict[str, PRF]:
    """ROUGE-1, ROUGE-2 and ROUGE-L of one hypothesis against one reference (keys as in rouge-score)."""
    hyp, ref = rouge_tokenize(hypothesis), rouge_tokenize(reference)
    return {"rouge1": rouge_n(hyp, ref, 1), "rouge2": rouge_n(hyp, ref, 2), "rougeL": rouge_l(hyp, ref)}


def rouge(hypotheses: Sequence[str], references: Sequence) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-scores over the pairs, ``{"rouge1": F, "rouge2": F, "rougeL": F}`` in [0, 1].

    ``references[i]`` is one reference or a list of them; with several, each ROUGE type takes the reference
    with the best F (as ``RougeScorer.score_multi`` does).
    """
    ref_lists = _reference_lists(hypotheses, references)
    totals = Counter()
    for hyp, refs in zip(hypotheses, ref_lists):
        per_ref = [rouge_scores(hyp, r) for r in refs]
        for kind in ("rouge1", "rouge2", "rougeL"):
            totals[kind] += max(s[kind].fmeasure for s in per_ref)
    return {kind: totals[kind] / len(hypotheses) for kind in ("rouge1", "rouge2", "rougeL")}
