"""minilib.metrics against the references: sacrebleu (BLEU), rouge-score (ROUGE), and the uniform model (perplexity)."""
import math
import random

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer
from torch.utils.data import TensorDataset

from minilib.metrics import bleu, lcs_length, mean_nll, perplexity, rouge, rouge_scores

# ---------------------------------------------------------------- BLEU vs sacrebleu

WORDS = "the cat sat on a mat dog ran in park red blue big small".split()


def _random_sentence(rng, low=0, high=12):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


BLEU_CASES = {
    "perfect match": (["the cat sat on the mat", "a dog ran in the park"], ["the cat sat on the mat", "a dog ran in the park"]),
    "no overlap": (["red blue green"], ["the cat sat on the mat"]),
    "shorter hypothesis (brevity penalty)": (["the cat sat on"], ["the cat sat on the mat today"]),
    "longer hypothesis": (["the cat sat on the mat and then the cat sat again"], ["the cat sat on the mat"]),
    "empty hypothesis among others": (["", "the cat sat on the mat"], ["a dog ran", "the cat sat on the mat"]),
    "all hypotheses empty": (["", ""], ["a dog", "the cat"]),
    "empty reference": (["the cat sat on the mat"], [""]),
    "no 4-gram match": (["the cat sat down", "a dog ran off"], ["the cat sat up", "a dog ran in"]),
    "hypotheses shorter than 4 tokens": (["the cat", "a dog"], ["the cat", "a dog"]),
    "repeated words are clipped": (["the the the the the the"], ["the cat sat on the mat"]),
    "punctuation stays attached (pre-tokenised input)": (["the cat , sat ."], ["the cat sat ."]),
}


@pytest.mark.parametrize("smooth", ["none", "exp"])
@pytest.mark.parametrize("case", list(BLEU_CASES))
def test_bleu_equals_sacrebleu(case, smooth):
    hyps, refs = BLEU_CASES[case]
    ours = bleu(hyps, refs, smooth=smooth)
    ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method=smooth)
    assert ours.score == pytest.approx(ref.score, abs=0.1)
    assert ours.brevity_penalty == pytest.approx(ref.bp, abs=1e-9)
    assert (ours.hyp_length, ours.ref_length) == (ref.sys_len, ref.ref_len)


def test_bleu_perfect_is_100_and_no_overlap_is_0():
    assert bleu(["a b c d e"], ["a b c d e"]).score == pytest.approx(100.0)
    assert bleu(["x y z w"], ["a b c d"]).score == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_bleu_random_corpora_with_multiple_references(seed):
    rng = random.Random(seed)
    n = 30
    hyps = [_random_sentence(rng, 0, 12) for _ in range(n)]
    refs_a = [_random_sentence(rng, 1, 12) for _ in range(n)]
    refs_b = [_random_sentence(rng, 1, 12) for _ in range(n)]
    for smooth in ("none", "exp"):
        expected = sacrebleu.corpus_bleu(hyps, [refs_a, refs_b], tokenize="none", smooth_method=smooth).score
        got = bleu(hyps, [[a, b] for a, b in zip(refs_a, refs_b)], smooth=smooth).score
        assert got == pytest.approx(expected, abs=0.1)


def test_bleu_closest_reference_length_prefers_the_shorter_on_a_tie():
    hyps = ["a b c d e"]  # 5 tokens; references of 4 and 6 tokens are equally close: r = 4, so no penalty
    refs = [["a b c d", "a b c d e f"]]
    ours = bleu(hyps, refs)
    expected = sacrebleu.corpus_bleu(hyps, [[refs[0][0]], [refs[0][1]]], tokenize="none", smooth_method="none")
    assert ours.ref_length == expected.ref_len == 4
    assert ours.score == pytest.approx(expected.score, abs=0.1)


def test_bleu_max_order_matches_sacrebleu():
    rng = random.Random(7)
    hyps = [_random_sentence(rng, 2, 10) for _ in range(20)]
    refs = [_random_sentence(rng, 2, 10) for _ in range(20)]
    metric = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=2)
    assert bleu(hyps, refs, max_order=2).score == pytest.approx(metric.corpus_score(hyps, [refs]).score, abs=0.1)


@pytest.mark.parametrize(
    "hyps, refs, error, words",
    [
        ([], [], ValueError, "empty"),
        (["a b"], ["a b", "c d"], ValueError, "1 hypotheses and 2 references"),
        ("a b", "a b", TypeError, "lists of strings"),
        ([3], ["a"], TypeError, "hypothesis 0"),
        (["a"], [[]], TypeError, "references[0]"),
    ],
)
def test_bleu_bad_input(hyps, refs, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        bleu(hyps, refs)


def test_bleu_bad_options():
    with pytest.raises(ValueError, match="smooth"):
        bleu(["a"], ["a"], smooth="add-k")
    with pytest.raises(ValueError, match="max_order"):
        bleu(["a"], ["a"], max_order=0)


# ---------------------------------------------------------------- ROUGE vs rouge-score

SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)

ROUGE_CASES = [
    ("the cat sat on the mat", "the cat sat on the mat"),  # perfect
    ("red blue green", "the cat sat on the mat"),  # no overlap
    ("", "the cat sat on the mat"),  # empty hypothesis
    ("the cat", ""),  # empty reference
    ("", ""),
    ("The Cat, sat!! on-the mat.", "the cat sat on the mat"),  # case and punctuation
    ("the mat sat on the cat", "the cat sat on the mat"),  # same words, other order
    ("the cat the cat the cat", "the cat sat"),  # repetitions
    ("police killed the gunman", "the gunman killed police"),  # Lin's example: LCS vs bigrams
    ("Café 42 costs €3.50", "cafe 42 costs 3 50"),  # non-ASCII characters are separators
    ("a", "a b c d e f g h"),  # very different lengths
]


@pytest.mark.parametrize("hyp, ref", ROUGE_CASES)
def test_rouge_pair_equals_rouge_score(hyp, ref):
    expected = SCORER.score(ref, hyp)  # rouge-score takes (target, prediction)
    ours = rouge_scores(hyp, ref)
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert ours[kind].precision == pytest.approx(expected[kind].precision, abs=1e-6)
        assert ours[kind].recall == pytest.approx(expected[kind].recall, abs=1e-6)
        assert ours[kind].fmeasure == pytest.approx(expected[kind].fmeasure, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_rouge_corpus_mean_and_multi_reference(seed):
    rng = random.Random(seed)
    hyps = [_random_sentence(rng) for _ in range(25)]
    refs = [[_random_sentence(rng), _random_sentence(rng)] for _ in range(25)]
    ours = rouge(hyps, refs)
    for kind in ("rouge1", "rouge2", "rougeL"):
        expected = sum(SCORER.score_multi(r, h)[kind].fmeasure for h, r in zip(hyps, refs)) / len(hyps)
        assert ours[kind] == pytest.approx(expected, abs=1e-6)


def test_rouge_bad_input():
    with pytest.raises(ValueError, match="empty"):
        rouge([], [])
    with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
        rouge(["a", "b"], ["a"])


def test_lcs_length_hand_cases():
    assert lcs_length("abcbdab", "bdcaba") == 4  # CLRS's example
    assert lcs_length([], ["a"]) == 0


# ---------------------------------------------------------------- perplexity


class UniformLM(torch.nn.Module):
    """Gives every token of the vocabulary the same logit: perplexity must be the vocabulary size."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.vocab_size) + self.dummy


class ConstantLM(torch.nn.Module):
    """Fixed next-token distribution ``probs`` at every position."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.log(probs))

    def forward(self, input_ids):
        return self.log_probs.expand(*input_ids.shape, -1)


def _lm_data(vocab_size, n=10, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (n, seq + 1), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


@pytest.mark.parametrize("vocab_size", [2, 65, 1000])
def test_uniform_model_perplexity_is_vocab_size(vocab_size):
    assert perplexity(UniformLM(vocab_size), _lm_data(vocab_size), batch_size=3) == pytest.approx(vocab_size, rel=1e-5)


def test_perplexity_is_exp_of_hand_computed_nll():
    probs = torch.tensor([0.5, 0.25, 0.25])
    data = TensorDataset(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 1, 2, 0]]))
    expected_nll = -(math.log(0.5) * 2 + math.log(0.25) * 2) / 4
    assert mean_nll(ConstantLM(probs), data) == pytest.approx(expected_nll, rel=1e-6)
    assert perplexity(ConstantLM(probs), data) == pytest.approx(math.exp(expected_nll), rel=1e-6)


def test_perplexity_ignores_padding_targets():
    probs = torch.tensor([0.5, 0.25, 0.25])
    data = TensorDataset(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 0, -100, -100]]))
    assert perplexity(ConstantLM(probs), data) == pytest.approx(2.0, rel=1e-6)


def test_perplexity_accepts_hugging_face_style_outputs():
    class WithLogits(UniformLM):
        def forward(self, input_ids):
            return type("Output", (), {"logits": super().forward(input_ids)})()

    assert perplexity(WithLogits(7), _lm_data(7)) == pytest.approx(7, rel=1e-5)


def test_perplexity_bad_input():
    class NoLogits(UniformLM):
        def forward(self, input_ids):
            return {"hidden": input_ids}

    with pytest.raises(TypeError, match="returns logits"):
        perplexity(NoLogits(5), _lm_data(5))

    class Pooled(UniformLM):
        def forward(self, input_ids):
            return super().forward(input_ids)[:, 0]

    with pytest.raises(ValueError, match=r"\(batch, seq, vocab\)"):
        perplexity(Pooled(5), _lm_data(5))
    with pytest.raises(ValueError, match="empty"):
        perplexity(UniformLM(5), TensorDataset(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)))


class _Interrupted(Exception):
    pass


def _interrupt(module, args):
    raise _Interrupted


def test_an_interrupted_perplexity_leaves_a_training_model_training():
    model = UniformLM(5).train()
    model.register_forward_pre_hook(_interrupt)
    with pytest.raises(_Interrupted):
        mean_nll(model, _lm_data(5))
    assert model.training                                   # it used to stay in eval mode
