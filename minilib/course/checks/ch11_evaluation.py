"""Checks for chapter 11 (evaluation): perplexity, BLEU's pieces, ROUGE-L's LCS, and the Pareto front.

The chapter's "build it" check: corpus BLEU against sacrebleu.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minilib.metrics as metrics
import minilib.picker as picker
from minilib.course.checks.core import exercise, expect_equal, expect_number
from minilib.course.checks.guards import COURSE, guarded

_METRICS = [metrics, picker, COURSE, "sacrebleu", "rouge_score", "nltk", "evaluate", "torchmetrics"]


@exercise(points=2)
def check_perplexity_from_logits(fn):
    """exp(mean cross-entropy): uniform logits give the vocabulary size; a hand case; random logits."""
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    generator = torch.Generator().manual_seed(11)
    random, targets = 3 * torch.randn(20, 7, generator=generator), torch.randint(0, 7, (20,), generator=generator)
    with guarded(fn, _METRICS, "take exp of the mean cross-entropy yourself"):
        uniform, hand, got = fn(torch.zeros(5, 10), torch.arange(5)), fn(logits, torch.tensor([0, 2])), fn(random, targets)
    expect_number("uniform logits over 10 tokens", uniform, 10.0, rel=1e-5,
                  hint="a model that hesitates between V tokens equally has perplexity V")
    expected = math.exp(-(math.log(0.5) + math.log(0.25)) / 2)  # the targets get p = 0.5 and p = 0.25
    expect_number("two tokens predicted with p = 0.5 and p = 0.25", hand, expected, rel=1e-5,
                  hint="average the negative log-probabilities first, then take exp")
    expect_number("20 random tokens, vocabulary 7", got, torch.exp(F.cross_entropy(random, targets)).item(), rel=1e-5,
                  hint="log-softmax the logits (they are not probabilities)")


@exercise(points=2)
def check_clipped_matches(fn):
    """(matches, total) of BLEU's modified n-gram precision, on hand cases including repeated words."""
    cases = [
        ("the the the the".split(), "the cat sat on the mat".split(), 1, (2, 4),
         "a hypothesis word counts at most as often as it appears in the reference (here 'the' twice)"),
        ("the cat sat on the mat".split(), "the cat sat on the mat".split(), 2, (5, 5), "a perfect match"),
        ("the cat the cat".split(), "the cat sat".split(), 2, (1, 3),
         "n-grams are tuples of n consecutive tokens: ('the','cat') ×2 clipped to 1, ('cat','the') ×0"),
        ("a b".split(), "a b c".split(), 3, (0, 0), "a 2-token hypothesis has no 3-grams"),
    ]
    with guarded(fn, _METRICS, "count and clip the n-grams yourself (collections.Counter is fine)"):
        got = [fn(list(hyp), list(ref), n) for hyp, ref, n, _, _ in cases]
    for (hyp, ref, n, expected, hint), answer in zip(cases, got):
        expect_equal(f"clipped_matches({hyp}, {ref}, n={n})", answer, expected, hint=hint)


@exercise(points=1)
def check_brevity_penalty(fn):
    """BP = 1 when the hypothesis is longer than the reference, else exp(1 − r/c); 0 for an empty hypothesis."""
    cases = [(12, 10, 1.0), (10, 10, 1.0), (5, 10, math.exp(1 - 10 / 5)), (9, 10, math.exp(1 - 10 / 9)), (0, 4, 0.0)]
    with guarded(fn, _METRICS, "write the penalty yourself"):
        got = [fn(c, r) for c, r, _ in cases]
    for (c, r, expected), answer in zip(cases, got):
        expect_number(f"brevity_penalty(hyp_len={c}, ref_len={r})", answer, expected, rel=1e-5,
                      hint="only short hypotheses are penalised: exp(1 − ref_len / hyp_len); no tokens at all scores 0")


@exercise(points=2)
def check_lcs_length(fn):
    """Longest common *subsequence* (gaps allowed), not the longest common substring."""
    cases = [("police killed the gunman".split(), "the gunman killed police".split(), 2),
             (list("abcbdab"), list("bdcaba"), 4), ([], list("abc"), 0), (list("abc"), list("abc"), 3),
             (list("axbxc"), list("abc"), 3)]
    with guarded(fn, _METRICS, "write the dynamic programme yourself: minilib.metrics.lcs_length (and rouge_score) "
                               "is the answer"):
        got = [fn(list(a), list(b)) for a, b, _ in cases]
    for (a, b, expected), answer in zip(cases, got):
        expect_number(f"lcs_length({a}, {b})", answer, expected,
                      hint="dynamic programming: L[i][j] = L[i-1][j-1] + 1 if a[i] == b[j] else max(L[i-1][j], "
                           "L[i][j-1]); the matched tokens need not be next to each other")


@exercise(points=2)
def check_pareto_points(fn):
    """The (latency, accuracy) points no other point beats on both, sorted by latency."""
    points = [(10.0, 0.80), (20.0, 0.90), (15.0, 0.78), (30.0, 0.90), (40.0, 0.95), (5.0, 0.70)]
    twins = [tuple(pair) for pair in ([1.0, 0.5], [1.0, 0.5])]  # equal, and two objects (as two measured models)
    crowd = [tuple(pair) for pair in ([3.0, 0.6], [2.0, 0.6], [2.0, 0.6], [2.0, 0.55], [1.0, 0.4])]
    with guarded(fn, _METRICS, "compare the points yourself: minilib.picker.pareto_front is the answer"):
        got = fn(list(points)), fn(list(twins)), fn(list(crowd))
    expect_equal("front of 6 models", got[0], [(5.0, 0.70), (10.0, 0.80), (20.0, 0.90), (40.0, 0.95)],
                 hint="drop a point when another is at least as fast AND at least as accurate, and better on one of them")
    expect_equal("two identical points (two models measured alike)", got[1], [(1.0, 0.5), (1.0, 0.5)],
                 hint="an equal point does not dominate: it must be strictly better on one axis (and compare "
                      "values, not objects: `q is not p` does not tell two equal measurements apart)")
    expect_equal("5 models, two of them equal", got[2], [(1.0, 0.4), (2.0, 0.6), (2.0, 0.6)],
                 hint="(3.0, 0.6) is dominated by the faster (2.0, 0.6); the two equal (2.0, 0.6) both stay")


# --- the "build it" exercise ------------------------------------------------------------

@exercise(points=4)
def check_corpus_bleu(fn):
    """Your corpus BLEU (0–100, whitespace tokens, no smoothing) equals sacrebleu's on three small corpora."""
    import sacrebleu
    import sacrebleu.metrics.bleu as sacrebleu_bleu

    corpora = {
        "three sentences, one of them 3 tokens long (no 4-grams)": (
            ["the cat sat on the mat today", "a dog runs", "it is raining in paris again"],
            ["the cat sat on a mat today", "the dog runs fast", "it rains in paris again today"]),
        "a repeated word (clipping) and a hypothesis longer than its reference": (
            ["the the the the cat", "we went to the sea and swam for hours and hours"],
            ["the cat is on the mat", "we went to the sea and swam"]),
        "no 4-gram matches anywhere (BLEU is 0, not an error)": (
            ["good film", "bad plot but nice music"], ["a good film", "the plot was bad"]),
    }
    hint = ("sum the clipped matches and totals over the corpus yourself (your clipped_matches and brevity_penalty of "
            "11.2 and 11.3 are your own code)")
    for what, (hypotheses, references) in corpora.items():
        expected = sacrebleu_bleu.BLEU(tokenize="none", smooth_method="none").corpus_score(hypotheses, [references]).score
        with guarded(fn, [*_METRICS, sacrebleu, sacrebleu_bleu], hint):
            got = fn(list(hypotheses), list(references))
        expect_number(f"{what}, against sacrebleu", got, expected, abs_=1e-4,
                      hint="corpus BLEU sums each order's clipped matches and n-gram totals over all sentences "
                           "before dividing (not an average of sentence scores), takes the geometric mean of "
                           "p_1 … p_4, and one brevity penalty from the total lengths; ×100")
