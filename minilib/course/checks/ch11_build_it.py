"""Chapter 11's "build it" check: corpus BLEU against sacrebleu."""
import torch

from minilib.course.checks.core import exercise, expect_close
from minilib.course.checks.guards import forbidden_calls


@exercise(points=4)
def check_corpus_bleu(fn):
    """Your corpus BLEU (0–100, whitespace tokens, no smoothing) equals sacrebleu's on three small corpora."""
    import sacrebleu
    import sacrebleu.metrics.bleu as sacrebleu_bleu

    import minilib.metrics as metrics
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
    targets = [(metrics, "bleu"), (sacrebleu, "corpus_bleu"), (sacrebleu, "BLEU"), (sacrebleu_bleu, "BLEU")]
    for what, (hypotheses, references) in corpora.items():
        expected = sacrebleu_bleu.BLEU(tokenize="none", smooth_method="none").corpus_score(hypotheses, [references]).score
        with forbidden_calls(fn, targets, "sum the clipped matches and totals over the corpus yourself (your "
                                          "clipped_matches and brevity_penalty of 11.2 and 11.3 are your own code)"):
            got = fn(hypotheses, references)
        expect_close(f"{what}, against sacrebleu", torch.tensor(float(got)), torch.tensor(expected), atol=1e-4,
                     hint="corpus BLEU sums each order's clipped matches and n-gram totals over all sentences "
                          "before dividing (not an average of sentence scores), takes the geometric mean of "
                          "p_1 … p_4, and one brevity penalty from the total lengths; ×100")
