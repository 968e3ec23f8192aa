"""Chapter 11's exercise checks pass correct answers however they are written, and fail stubs, mistakes (an identity
test in the Pareto front included) and the library's or sacrebleu's own metrics."""
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
from minilib.metrics import lcs_length
from minilib.picker import Measurement, pareto_front


def ngram_counts(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def test_perplexity_from_logits(stub, refused):
    assert check_perplexity_from_logits(lambda logits, targets: math.exp(F.cross_entropy(logits, targets).item()))
    assert check_perplexity_from_logits(lambda logits, targets: torch.exp(F.cross_entropy(logits, targets)))
    assert check_perplexity_from_logits(lambda logits, targets: (-logits.log_softmax(-1).gather(1, targets[:, None])
                                                                 ).mean().exp())
    assert not check_perplexity_from_logits(stub)
    refused(check_perplexity_from_logits,  # averaging per-token perplexities instead of log-probabilities
            lambda logits, targets: torch.exp(F.cross_entropy(logits, targets, reduction="none")).mean(),
            "average the negative log-probabilities first")
    refused(check_perplexity_from_logits,  # treating logits as probabilities
            lambda logits, targets: math.exp(F.nll_loss(torch.log(logits.clamp_min(1e-9)), targets).item()),
            "uniform logits")


def clipped_matches(hyp, ref, n):
    hyp_counts, ref_counts = ngram_counts(hyp, n), ngram_counts(ref, n)
    return sum(min(c, ref_counts[g]) for g, c in hyp_counts.items()), sum(hyp_counts.values())


def clipped_by_intersection(hyp, ref, n):  # Counter's & keeps the smaller count of each n-gram
    hyp_counts = Counter(zip(*(hyp[i:] for i in range(n))))
    return [sum((hyp_counts & Counter(zip(*(ref[i:] for i in range(n))))).values()), sum(hyp_counts.values())]


def test_clipped_matches(stub, refused):
    assert check_clipped_matches(clipped_matches)
    assert check_clipped_matches(clipped_by_intersection)
    assert not check_clipped_matches(stub)

    def unclipped(hyp, ref, n):
        hyp_counts, ref_counts = ngram_counts(hyp, n), ngram_counts(ref, n)
        return sum(c for g, c in hyp_counts.items() if g in ref_counts), sum(hyp_counts.values())

    refused(check_clipped_matches, unclipped, "at most as often")
    refused(check_clipped_matches, lambda hyp, ref, n: clipped_matches(hyp, ref, n)[0], "the number 2")


def test_brevity_penalty(stub, refused):
    def brevity_penalty(hyp_len, ref_len):
        return 1.0 if hyp_len > ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)

    assert check_brevity_penalty(brevity_penalty)
    assert check_brevity_penalty(lambda c, r: min(1.0, math.exp(1 - r / c)) if c else 0)
    assert not check_brevity_penalty(stub)
    refused(check_brevity_penalty, lambda c, r: 1.0 if c > r else math.exp(1 - c / r), "hyp_len=5")  # upside down


def test_lcs_length(stub, refused):
    def dynamic_programme(a, b):                                           # the chapter's model answer
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a, 1):
            for j, y in enumerate(b, 1):
                table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
        return table[-1][-1]

    def recursive(a, b):                                                   # memoised recursion
        from functools import lru_cache

        @lru_cache(maxsize=None)
        def lcs(i, j):
            if i == len(a) or j == len(b):
                return 0
            return lcs(i + 1, j + 1) + 1 if a[i] == b[j] else max(lcs(i + 1, j), lcs(i, j + 1))
        return lcs(0, 0)

    assert check_lcs_length(dynamic_programme)
    assert check_lcs_length(recursive)
    assert not check_lcs_length(stub)
    refused(check_lcs_length, lambda a, b: lcs_length(a, b), "minilib.metrics.lcs_length")

    def by_rouge_score(a, b):
        from rouge_score.rouge_scorer import _lcs_table
        return _lcs_table(a, b)[-1][-1]

    refused(check_lcs_length, by_rouge_score, "rouge_score")

    def longest_common_substring(a, b):
        best = 0
        for i in range(len(a)):
            for j in range(len(b)):
                k = 0
                while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                    k += 1
                best = max(best, k)
        return best

    refused(check_lcs_length, longest_common_substring, "need not be next to each other")


def test_pareto_points(stub, refused):
    def library_pareto_points(points):
        candidates = [Measurement(str(i), latency, 0.0, accuracy) for i, (latency, accuracy) in enumerate(points)]
        return [(c.latency_ms, c.accuracy) for c in pareto_front(candidates, use_size=False)]

    def own_pareto_points(points):                                         # the chapter's model answer
        def dominated(p):
            return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)
        return sorted((p for p in points if not dominated(p)), key=lambda p: p[0])

    def sweep(points):                                                     # sorted sweep, equal points kept
        front = []
        for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
            if not front or accuracy > front[-1][1] or (latency, accuracy) == tuple(front[-1]):
                front.append([latency, accuracy])                          # lists are fine too
        return front

    def identity_test(points):  # skips itself by identity, then drops any point another one equals or beats
        return sorted((p for p in points if not any(q is not p and q[0] <= p[0] and q[1] >= p[1] for q in points)),
                      key=lambda p: p[0])

    assert check_pareto_points(own_pareto_points)
    assert check_pareto_points(sweep)
    assert not check_pareto_points(stub)
    refused(check_pareto_points, library_pareto_points, "minilib.picker")
    refused(check_pareto_points, identity_test, "two identical points", "is not p")

    def best_so_far_with_ties_dropped(points):  # a plausible sweep that forgets equal points
        front, best = [], -1.0
        for latency, accuracy in sorted(set(points)):
            if accuracy > best:
                front.append((latency, accuracy))
                best = accuracy
        return front

    refused(check_pareto_points, best_so_far_with_ties_dropped, "two identical points")
    refused(check_pareto_points, lambda points: sorted(points), "front of 6 models")  # no filtering at all


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


def corpus_bleu_with_helpers(hypotheses, references, max_order=4):
    """Another correct answer: the learner's own 11.2 and 11.3, and a product of precisions instead of logs."""
    pairs = [(h.split(), r.split()) for h, r in zip(hypotheses, references)]
    precisions = 1.0
    for n in range(1, max_order + 1):
        counts = [clipped_by_intersection(h, r, n) for h, r in pairs]
        matches, totals = sum(c[0] for c in counts), sum(c[1] for c in counts)
        precisions *= matches / totals if totals else 0.0
    hyp_len, ref_len = sum(len(h) for h, _ in pairs), sum(len(r) for _, r in pairs)
    penalty = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return torch.tensor(100 * penalty * precisions ** (1 / max_order))


def test_corpus_bleu(stub, refused):
    import sacrebleu

    from minilib.metrics import bleu

    assert check_corpus_bleu(corpus_bleu_answer)
    assert check_corpus_bleu(corpus_bleu_with_helpers)
    assert not check_corpus_bleu(stub)
    refused(check_corpus_bleu, lambda h, r: bleu(h, r).score, "minilib.metrics.bleu")
    refused(check_corpus_bleu, lambda h, r: sacrebleu.corpus_bleu(h, [r], tokenize="none", smooth_method="none").score,
            "sacrebleu")
    refused(check_corpus_bleu, lambda h, r: corpus_bleu_answer(h, r, clip=False), "against sacrebleu")
    refused(check_corpus_bleu,                                          # the mean of sentence scores
            lambda h, r: sum(corpus_bleu_answer([a], [b]) for a, b in zip(h, r)) / len(h), "not an average")
