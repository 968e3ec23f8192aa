"""Speculative sampling keeps the target's distribution: chi-square tests over many draws, whatever the draft.

For a fixed prefix, three tokens are drawn N times with speculative_generate (k = 2: the first round drafts two,
so the first two tokens go through the rejection rule and the third is often the round's bonus token); the first
token, the first two, and the third are compared with the target's exact sampling distribution (softmax of its
logits at the temperature, top-k applied).
Each test uses its own fixed seed, so it is deterministic; a correct sampler would fail it at a given seed with
probability ALPHA (the false-alarm rate). A sampler that skips the rejection rule, or resamples from p instead of
max(0, p − q), gives distributions these tests tell apart (the draft's share shows in the counts).
"""
import copy

import pytest
import torch
from torch import nn

from minilib.generation import NGramDraft, speculative_generate, token_probabilities
from minilib.transformer import LanguageModel, TransformerConfig

VOCAB, DRAWS, ALPHA = 6, 2000, 1e-3
PREFIX = torch.tensor([[1, 4, 2]])


def _tiny_model(seed):
    """A random one-layer decoder over 6 tokens with an untied output head: distributions neither flat nor peaked."""
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=12, dropout=0.0,
                               norm_first=True)
    model = LanguageModel(config)
    model.lm_head.weight = nn.Parameter(torch.randn(VOCAB, 16) * 0.7)
    return model.eval()


TARGET = _tiny_model(0)


def _close_draft():
    """The target with a little noise on its output head: accepted most of the time."""
    draft = copy.deepcopy(TARGET)
    with torch.no_grad():
        draft.lm_head.weight.add_(0.1 * torch.randn(VOCAB, 16, generator=torch.Generator().manual_seed(9)))
    return draft


def _table_draft():
    """A 3-gram table counted from text that never contains the last token: the draft never proposes it, so every
    draw of it must come from the residual max(0, p − q)."""
    text = torch.randint(0, VOCAB - 1, (40, 25), generator=torch.Generator().manual_seed(3))
    return NGramDraft(text, VOCAB, n=3)


DRAFTS = {"a good draft": _close_draft, "a poor draft": lambda: _tiny_model(7), "the target itself": lambda: TARGET,
          "an n-gram table missing a token": _table_draft}
SETTINGS = {"a good draft": (1.0, None), "a poor draft": (0.8, 4), "the target itself": (1.3, None),
            "an n-gram table missing a token": (1.0, None)}


@torch.no_grad()
def _exact(temperature, top_k):
    """The target's own sampling distribution of the next token (V,), of the next two (V, V), and of the third (V,)."""
    first = token_probabilities(TARGET(PREFIX)[0, -1], temperature, top_k).double()
    ones = torch.arange(VOCAB)[:, None]
    continued = torch.cat([PREFIX.expand(VOCAB, -1), ones], dim=1)                               # prefix + each x1
    pair = first[:, None] * token_probabilities(TARGET(continued)[:, -1], temperature, top_k).double()   # (V, V)
    twice = torch.cat([PREFIX.expand(VOCAB * VOCAB, -1), ones.repeat_interleave(VOCAB, 0), ones.repeat(VOCAB, 1)], 1)
    third = token_probabilities(TARGET(twice)[:, -1], temperature, top_k).double()               # (V·V, V)
    return first, pair, (pair.flatten()[:, None] * third).sum(0)


def _p_value(observed, expected, draws):
    """Chi-square goodness of fit; cells expected fewer than 5 times are pooled into one."""
    possible = expected.flatten() > 0                                # (outside top_k: checked to be never drawn)
    expected, observed = expected.flatten()[possible] * draws, observed.flatten()[possible].double()
    small = expected < 5
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
    statistic = ((observed - expected) ** 2 / expected).sum()
    dof = len(expected) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.double), statistic / 2).item()   # P(χ²_dof ≥ stat)


@pytest.mark.parametrize("name", DRAFTS)
def test_speculative_sampling_draws_from_the_targets_distribution(name):
    draft, (temperature, top_k) = DRAFTS[name](), SETTINGS[name]
    generator = torch.Generator().manual_seed(2024)
    counts = torch.zeros(VOCAB), torch.zeros(VOCAB, VOCAB), torch.zeros(VOCAB)      # x1, (x1, x2), x3
    drafted = accepted = 0
    for _ in range(DRAWS):
        result = speculative_generate(TARGET, draft, PREFIX, 3, k=2, temperature=temperature, top_k=top_k,
                                      generator=generator)
        x1, x2, x3 = result.tokens[0, 3:].tolist()
        counts[0][x1] += 1
        counts[1][x1, x2] += 1
        counts[2][x3] += 1
        drafted, accepted = drafted + result.drafted, accepted + result.accepted
    for observed, expected in zip(counts, _exact(temperature, top_k)):
        assert torch.all(observed[expected == 0] == 0)                     # nothing outside the top_k is drawn
        assert _p_value(observed, expected, DRAWS) > ALPHA
    acceptance = accepted / drafted
    assert {"a good draft": acceptance > 0.8, "a poor draft": acceptance < 0.7, "the target itself": acceptance > 0.999,
            "an n-gram table missing a token": 0.1 < acceptance < 0.9}[name], acceptance


def test_speculative_sampling_is_reproducible_with_a_generator():
    draft = _tiny_model(7)
    runs = [speculative_generate(TARGET, draft, PREFIX, 8, k=3, temperature=1.0, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
