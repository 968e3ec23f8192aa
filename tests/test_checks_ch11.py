"""Chapter 11's exercise checks pass the reference answers and fail stubs and plausible mistakes."""
import math
from collections import Counter

import torch
import torch.nn.functional as F

from minilib.course.checks import (
    check_brevity_penalty,
    check_clipped_matches,
    check_corpus_bleu,
    check_lcs_length,
    check_pareto_points,
    check_perplexity_from_logits,
)
from minilib.metrics import lcs_length, ngram_counts
from minilib.picker import Measurement, pareto_front


def test_perplexity_from_logits(stub):
    assert check_perplexity_from_logits(lambda logits, targets: math.exp(F.cross_entropy(logits, targets).item()))
    assert check_perplexity_from_logits(lambda logits, targets: torch.exp(F.cross_entropy(logits, targets)))
    assert not check_perplexity_from_logits(stub)
    # averaging per-token perplexities instead of log-probabilities
    assert not check_perplexity_from_logits(
        lambda logits, targets: torch.exp(F.cross_entropy(logits, targets, reduction="none")).mean())
    # treating logits as probabilities
    assert not check_perplexity_from_logits(
        lambda logits, targets: math.exp(F.nll_loss(torch.log(logits.clamp_min(1e-9)), targets).item()))


def clipped_matches(hyp, ref, n):
    hyp_counts, ref_counts = ngram_counts(hyp, n), ngram_counts(ref, n)
    return sum(min(c, ref_counts[g]) for g, c in hyp_counts.items()), sum(hyp_counts.values())


def test_clipped_matches(stub):
    assert check_clipped_matches(clipped_matches)
    assert not check_clipped_matches(stub)

    def unclipped(hyp, ref, n):
        hyp_counts, ref_counts = ngram_counts(hyp, n), ngram_counts(ref, n)
        return sum(c for g, c in hyp_counts.items() if g in ref_counts), sum(hyp_counts.values())

    assert not check_clipped_matches(unclipped)


def test_brevity_penalty(stub):
    def brevity_penalty(hyp_len, ref_len):
        return 1.0 if hyp_len > ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)

    assert check_brevity_penalty(brevity_penalty)
    assert not check_brevity_penalty(stub)
    assert not check_brevity_penalty(lambda c, r: 1.0 if c > r else math.exp(1 - c / r))  # ratio upside down


def test_lcs_length(stub):
    def dynamic_programme(a, b):                                           # the chapter's model answer
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a, 1):
            for j, y in enumerate(b, 1):
                table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
        return table[-1][-1]

    assert check_lcs_length(dynamic_programme)
    assert not check_lcs_length(lambda a, b: lcs_length(a, b))                         # the library's own
    assert not check_lcs_length(stub)

    def longest_common_substring(a, b):
        best = 0
        for i in range(len(a)):
            for j in range(len(b)):
                k = 0
                while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                    k += 1
                best = max(best, k)
        return best

    assert not check_lcs_length(longest_common_substring)


def test_pareto_points(stub):
    def pareto_points(points):
        candidates = [Measurement(str(i), latency, 0.0, accuracy) for i, (latency, accuracy) in enumerate(points)]
        return [(c.latency_ms, c.accuracy) for c in pareto_front(candidates, use_size=False)]

    def own_pareto_points(points):                                         # the chapter's model answer
        def dominated(p):
            return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)
        return sorted((p for p in points if not dominated(p)), key=lambda p: p[0])

    assert check_pareto_points(own_pareto_points)
    assert not check_pareto_points(pareto_points)                                      # calls the library's front
    assert not check_pareto_points(stub)

    def best_so_far_with_ties_dropped(points):  # a plausible sweep that forgets equal points
        front, best = [], -1.0
        for latency, accuracy in sorted(set(points)):
            if accuracy > best:
                front.append((latency, accuracy))
                best = accuracy
        return front

    assert not check_pareto_points(best_so_far_with_ties_dropped)
    assert not check_pareto_points(lambda points: sorted(points))  # no filtering at all


def corpus_bleu_answer(hypotheses, references, max_order=4, clip=True):
    """The model answer of Exercise 11.7; clip=False counts every matching n-gram."""
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = hypothesis.split(), reference.split()
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, max_order + 1):
            hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(count, ref_ngrams[g]) if clip else count * (g in ref_ngrams)
                                  for g, count in hyp_ngrams.items())
            totals[n - 1] += sum(hyp_ngrams.values())
    if min(matches) == 0:
        return 0.0
    log_mean = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    return 100 * (1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)) * math.exp(log_mean)


def test_corpus_bleu(stub):
    import sacrebleu

    from minilib.metrics import bleu

    assert check_corpus_bleu(corpus_bleu_answer)
    assert not check_corpus_bleu(stub)
    assert not check_corpus_bleu(lambda h, r: bleu(h, r).score)
    assert not check_corpus_bleu(lambda h, r: sacrebleu.corpus_bleu(h, [r], tokenize="none", smooth_method="none").score)
    assert not check_corpus_bleu(lambda h, r: corpus_bleu_answer(h, r, clip=False))
    assert not check_corpus_bleu(                                       # the mean of sentence scores
        lambda h, r: sum(corpus_bleu_answer([a], [b]) for a, b in zip(h, r)) / len(h))
